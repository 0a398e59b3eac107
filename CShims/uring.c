/* Path: CShims/uring.c — liburing glue for the page store, and CRC-32C. */
#define _GNU_SOURCE
#include "sluice_uring.h"

#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <fcntl.h>
#include <string.h>

struct sluice_uring {
    struct io_uring ring;
};

struct sluice_uring *sluice_uring_new(unsigned entries, int *error) {
    struct sluice_uring *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        *error = -ENOMEM;
        return NULL;
    }
    int rc = io_uring_queue_init(entries, &r->ring, 0);
    if (rc < 0) {
        free(r);
        *error = rc;
        return NULL;
    }
    *error = 0;
    return r;
}

void sluice_uring_delete(struct sluice_uring *r) {
    if (r == NULL) return;
    io_uring_queue_exit(&r->ring);
    free(r);
}

int sluice_uring_register_buffers(struct sluice_uring *r, const struct iovec *buffers, unsigned count) {
    return io_uring_register_buffers(&r->ring, buffers, count);
}

int sluice_uring_register_files(struct sluice_uring *r, const int *fds, unsigned count) {
    return io_uring_register_files(&r->ring, fds, count);
}

int sluice_uring_prep_read_fixed(struct sluice_uring *r, int file_index, void *buffer, unsigned length,
                                 uint64_t offset, int buffer_index, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (sqe == NULL) return -EBUSY;
    io_uring_prep_read_fixed(sqe, file_index, buffer, length, offset, buffer_index);
    sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int sluice_uring_prep_write_fixed(struct sluice_uring *r, int file_index, const void *buffer, unsigned length,
                                  uint64_t offset, int buffer_index, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (sqe == NULL) return -EBUSY;
    io_uring_prep_write_fixed(sqe, file_index, buffer, length, offset, buffer_index);
    sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int sluice_uring_prep_write(struct sluice_uring *r, int file_index, const void *buffer, unsigned length,
                            uint64_t offset, int link, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (sqe == NULL) return -EBUSY;
    io_uring_prep_write(sqe, file_index, buffer, length, offset);
    sqe->flags |= IOSQE_FIXED_FILE | (link ? IOSQE_IO_LINK : 0);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int sluice_uring_prep_fsync(struct sluice_uring *r, int file_index, int datasync, int drain, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (sqe == NULL) return -EBUSY;
    io_uring_prep_fsync(sqe, file_index, datasync ? IORING_FSYNC_DATASYNC : 0);
    sqe->flags |= IOSQE_FIXED_FILE | (drain ? IOSQE_IO_DRAIN : 0);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int sluice_uring_submit(struct sluice_uring *r, unsigned wait_count) {
    for (;;) {
        int rc = wait_count > 0 ? io_uring_submit_and_wait(&r->ring, wait_count) : io_uring_submit(&r->ring);
        if (rc != -EINTR) return rc;
    }
}

unsigned sluice_uring_reap(struct sluice_uring *r, struct sluice_uring_completion *out, unsigned max) {
    struct io_uring_cqe *cqes[64];
    unsigned total = 0;
    while (total < max) {
        unsigned want = max - total < 64 ? max - total : 64;
        unsigned got = io_uring_peek_batch_cqe(&r->ring, cqes, want);
        if (got == 0) break;
        for (unsigned i = 0; i < got; i++) {
            out[total + i].user_data = io_uring_cqe_get_data64(cqes[i]);
            out[total + i].result = cqes[i]->res;
            out[total + i].flags = cqes[i]->flags;
        }
        io_uring_cq_advance(&r->ring, got);
        total += got;
    }
    return total;
}

/* ---- CRC-32C ---- */

static uint32_t crc32c_table[256];

static void crc32c_init_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t crc = i;
        for (int bit = 0; bit < 8; bit++) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
        crc32c_table[i] = crc;
    }
}

static uint32_t crc32c_software(uint32_t crc, const uint8_t *data, size_t length) {
    static int ready;
    if (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE)) {
        crc32c_init_table();  /* idempotent: racing initialisers write the same table */
        __atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
    }
    crc = ~crc;
    for (size_t i = 0; i < length; i++) crc = crc32c_table[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc32c_hardware(uint32_t crc, const uint8_t *data, size_t length) {
    uint64_t value = ~crc & 0xFFFFFFFFu;
    size_t i = 0;
    for (; i + 8 <= length; i += 8) {
        uint64_t word;
        memcpy(&word, data + i, 8);
        value = __builtin_ia32_crc32di(value, word);
    }
    uint32_t tail = (uint32_t)value;
    for (; i < length; i++) tail = __builtin_ia32_crc32qi(tail, data[i]);
    return ~tail;
}
#endif

uint32_t sluice_crc32c(uint32_t crc, const void *data, size_t length) {
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2")) return crc32c_hardware(crc, data, length);
#endif
    return crc32c_software(crc, data, length);
}

int sluice_open_flag_direct(void) { return O_DIRECT; }
