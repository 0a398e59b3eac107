/*
 * Path: CShims/include/sluice_pcap.h — thin wrappers over libpcap: savefiles in and out, live capture.
 *
 * Swift sees `pcap_t` and `pcap_dumper_t` as opaque pointers. Timestamps cross the boundary as
 * nanoseconds since the Unix epoch whatever the file's own precision. Functions return 0/1 or a
 * negative value as documented; libpcap's message is in the errbuf or pcap_geterr.
 */
#ifndef SLUICE_PCAP_H
#define SLUICE_PCAP_H

#include <pcap/pcap.h>
#include <stdint.h>

#define SLUICE_PCAP_ERRBUF_SIZE PCAP_ERRBUF_SIZE
/* Kernel buffer of a live capture (libpcap's ring). */
#define SLUICE_PCAP_LIVE_BUFFER_BYTES (32 << 20)

/* One record as libpcap returned it. `data` stays valid only until the next sluice_pcap_next. */
struct sluice_pcap_record {
    uint64_t timestamp_ns;
    uint32_t captured_length;
    uint32_t wire_length;
    const uint8_t *data;
};

/* sluice_pcap_next results besides 1 (a record). */
#define SLUICE_PCAP_TIMEOUT 0   /* live capture: no packet within the timeout */
#define SLUICE_PCAP_END (-2)    /* savefile: no more records */
#define SLUICE_PCAP_ERROR (-1)  /* read error or corrupt/truncated record: see pcap_geterr */

/* Opens a pcap or pcapng savefile with nanosecond timestamps. NULL on failure, errbuf filled. */
pcap_t *sluice_pcap_open_file(const char *path, char *errbuf);

/* Opens a live capture on `device` in immediate mode (each packet delivered at once), nanosecond
 * timestamps when the kernel offers them, a SLUICE_PCAP_LIVE_BUFFER_BYTES kernel buffer. NULL on
 * failure, errbuf filled. */
pcap_t *sluice_pcap_open_live(const char *device, int snapshot_length, int promiscuous, int timeout_ms,
                              char *errbuf);

/* Reads the next record into *out: 1, SLUICE_PCAP_TIMEOUT, SLUICE_PCAP_END or SLUICE_PCAP_ERROR. */
int sluice_pcap_next(pcap_t *p, struct sluice_pcap_record *out);

/* Byte offset reached in a savefile, or -1 (live capture, or unknown). */
int64_t sluice_pcap_file_offset(pcap_t *p);

/* Opens `path` for writing a pcap savefile of `link_type`, timestamps in nanoseconds if `nano`, else
 * microseconds. NULL on failure, errbuf filled. Close with sluice_pcap_writer_close. */
pcap_dumper_t *sluice_pcap_writer_open(const char *path, int link_type, int snapshot_length, int nano,
                                       char *errbuf);

/* Appends one record (buffered by stdio). Returns 0, or -EINVAL for a record longer than 2^31. */
int sluice_pcap_writer_write(pcap_dumper_t *d, uint64_t timestamp_ns, uint32_t captured_length,
                             uint32_t wire_length, const uint8_t *data, int nano);

/* Flushes buffered records to the file. 0, or -errno (a full disk shows up here or at close). */
int sluice_pcap_writer_flush(pcap_dumper_t *d);

/* Flushes and closes. 0, or -errno if the final flush failed (the file is closed either way). */
int sluice_pcap_writer_close(pcap_dumper_t *d);

#endif /* SLUICE_PCAP_H */
