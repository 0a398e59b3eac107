/*
 * Path: CShims/include/sluice_uring.h — thin wrappers over liburing for the page store: one ring with
 * registered buffers and files, fixed-buffer reads and writes, fsync, batched submit and reap.
 * Functions return 0 or a count, or -errno (liburing's convention). Swift sees the ring as opaque.
 */
#ifndef SLUICE_URING_H
#define SLUICE_URING_H

#include <stdint.h>
#include <sys/uio.h>

struct sluice_uring;

/* One completion: the submitter's tag and the result (bytes moved, or -errno). */
struct sluice_uring_completion {
    uint64_t user_data;
    int32_t result;
    uint32_t flags;
};

/* A ring of `entries` submission slots (a power of two is best). NULL with *error = -errno on failure. */
struct sluice_uring *sluice_uring_new(unsigned entries, int *error);
void sluice_uring_delete(struct sluice_uring *r);

/* Registers `count` buffers (pinned for fixed-buffer I/O) and files (index = position). 0 or -errno. */
int sluice_uring_register_buffers(struct sluice_uring *r, const struct iovec *buffers, unsigned count);
int sluice_uring_register_files(struct sluice_uring *r, const int *fds, unsigned count);

/* Queues one operation on registered file `file_index` with registered buffer `buffer_index`.
 * 0, or -EBUSY when every submission slot is taken (submit first). */
int sluice_uring_prep_read_fixed(struct sluice_uring *r, int file_index, void *buffer, unsigned length,
                                 uint64_t offset, int buffer_index, uint64_t user_data);
int sluice_uring_prep_write_fixed(struct sluice_uring *r, int file_index, const void *buffer, unsigned length,
                                  uint64_t offset, int buffer_index, uint64_t user_data);
/* A write from an unregistered buffer (the log's records) to registered file `file_index`; with
 * `link`, the next queued operation starts only after this one succeeds (IOSQE_IO_LINK). */
int sluice_uring_prep_write(struct sluice_uring *r, int file_index, const void *buffer, unsigned length,
                            uint64_t offset, int link, uint64_t user_data);
/* fdatasync (datasync != 0) or fsync of a registered file; with `drain`, only after every earlier
 * operation completes (IOSQE_IO_DRAIN): a group commit's barrier. */
int sluice_uring_prep_fsync(struct sluice_uring *r, int file_index, int datasync, int drain, uint64_t user_data);

/* Submits what is queued; with wait_count > 0 also waits for that many completions. Returns the
 * number submitted or -errno (EINTR retried). */
int sluice_uring_submit(struct sluice_uring *r, unsigned wait_count);

/* Takes up to `max` completions without waiting (the completion scan). Returns how many. */
unsigned sluice_uring_reap(struct sluice_uring *r, struct sluice_uring_completion *out, unsigned max);

/* CRC-32C (Castagnoli) of `length` bytes, continuing from `crc` (start with 0). SSE4.2 when the CPU
 * has it, a table otherwise. */
uint32_t sluice_crc32c(uint32_t crc, const void *data, size_t length);

/* O_DIRECT, which needs _GNU_SOURCE (and differs between architectures). */
int sluice_open_flag_direct(void);

#endif /* SLUICE_URING_H */
