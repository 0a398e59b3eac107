/* Path: CShims/pcap.c — libpcap glue: open, read, write savefiles; open live captures. */
#include "sluice_pcap.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

pcap_t *sluice_pcap_open_file(const char *path, char *errbuf) {
    return pcap_open_offline_with_tstamp_precision(path, PCAP_TSTAMP_PRECISION_NANO, errbuf);
}

pcap_t *sluice_pcap_open_live(const char *device, int snapshot_length, int promiscuous, int timeout_ms,
                              char *errbuf) {
    pcap_t *p = pcap_create(device, errbuf);
    if (p == NULL) return NULL;
    int rc = pcap_set_snaplen(p, snapshot_length);
    if (rc == 0) rc = pcap_set_promisc(p, promiscuous);
    if (rc == 0) rc = pcap_set_timeout(p, timeout_ms);
    if (rc == 0) rc = pcap_set_immediate_mode(p, 1);
    /* libpcap's default ring (2 MiB, fewer frames in immediate mode) overflows on short stalls. */
    if (rc == 0) rc = pcap_set_buffer_size(p, SLUICE_PCAP_LIVE_BUFFER_BYTES);
    if (rc == 0) (void)pcap_set_tstamp_precision(p, PCAP_TSTAMP_PRECISION_NANO); /* best effort */
    if (rc == 0) rc = pcap_activate(p);
    if (rc < 0) {
        snprintf(errbuf, PCAP_ERRBUF_SIZE, "%s: %s", device, pcap_geterr(p));
        pcap_close(p);
        return NULL;
    }
    return p;
}

int sluice_pcap_next(pcap_t *p, struct sluice_pcap_record *out) {
    struct pcap_pkthdr *header = NULL;
    const u_char *data = NULL;
    int rc = pcap_next_ex(p, &header, &data);
    if (rc != 1) return rc == PCAP_ERROR_BREAK ? SLUICE_PCAP_END : (rc == 0 ? SLUICE_PCAP_TIMEOUT : SLUICE_PCAP_ERROR);
    uint64_t fraction = (uint64_t)header->ts.tv_usec;
    if (pcap_get_tstamp_precision(p) == PCAP_TSTAMP_PRECISION_MICRO) fraction *= 1000u;
    out->timestamp_ns = (uint64_t)header->ts.tv_sec * 1000000000u + fraction;
    out->captured_length = header->caplen;
    out->wire_length = header->len;
    out->data = data;
    return 1;
}

int64_t sluice_pcap_file_offset(pcap_t *p) {
    FILE *file = pcap_file(p);
    return file == NULL ? -1 : (int64_t)ftello(file);
}

pcap_dumper_t *sluice_pcap_writer_open(const char *path, int link_type, int snapshot_length, int nano,
                                       char *errbuf) {
    pcap_t *dead = pcap_open_dead_with_tstamp_precision(
        link_type, snapshot_length, nano ? PCAP_TSTAMP_PRECISION_NANO : PCAP_TSTAMP_PRECISION_MICRO);
    if (dead == NULL) {
        snprintf(errbuf, PCAP_ERRBUF_SIZE, "pcap_open_dead failed for link type %d", link_type);
        return NULL;
    }
    pcap_dumper_t *d = pcap_dump_open(dead, path);
    if (d == NULL) snprintf(errbuf, PCAP_ERRBUF_SIZE, "%s", pcap_geterr(dead));
    /* The dumper keeps what it needs (link type, snapshot length, precision) in the file header. */
    pcap_close(dead);
    return d;
}

int sluice_pcap_writer_write(pcap_dumper_t *d, uint64_t timestamp_ns, uint32_t captured_length,
                             uint32_t wire_length, const uint8_t *data, int nano) {
    if (captured_length > INT32_MAX || wire_length > INT32_MAX) return -EINVAL;
    struct pcap_pkthdr header;
    header.ts.tv_sec = (time_t)(timestamp_ns / 1000000000u);
    uint64_t fraction = timestamp_ns % 1000000000u;
    header.ts.tv_usec = (suseconds_t)(nano ? fraction : fraction / 1000u);
    header.caplen = captured_length;
    header.len = wire_length;
    pcap_dump((u_char *)d, &header, data);
    return 0;
}

int sluice_pcap_writer_flush(pcap_dumper_t *d) {
    errno = 0;
    int failed = pcap_dump_flush(d) != 0;
    /* An earlier buffered fwrite may have failed (and dropped its data) without a trace but the
     * stream's error flag: check it too, or a full disk would pass unnoticed. */
    FILE *file = pcap_dump_file(d);
    if (!failed && (file == NULL || !ferror(file))) return 0;
    return -(errno != 0 ? errno : EIO);
}

int sluice_pcap_writer_close(pcap_dumper_t *d) {
    int rc = sluice_pcap_writer_flush(d);
    pcap_dump_close(d);
    return rc;
}
