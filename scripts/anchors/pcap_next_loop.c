/* Path: scripts/anchors/pcap_next_loop.c — the anchor for the replay benchmark: a plain libpcap read
 * loop over a savefile, touching each packet's first and last byte so the data is really read.
 * Prints packets, bytes and packets per second as JSON. Build: cc -O2 pcap_next_loop.c -lpcap */
#include <pcap/pcap.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s CAPTURE\n", argv[0]);
        return 2;
    }
    char errbuf[PCAP_ERRBUF_SIZE];
    double start = now_seconds();
    pcap_t *p = pcap_open_offline_with_tstamp_precision(argv[1], PCAP_TSTAMP_PRECISION_NANO, errbuf);
    if (p == NULL) {
        fprintf(stderr, "%s\n", errbuf);
        return 1;
    }
    struct pcap_pkthdr *header;
    const u_char *data;
    uint64_t packets = 0, bytes = 0, checksum = 0;
    int rc;
    while ((rc = pcap_next_ex(p, &header, &data)) == 1) {
        packets++;
        bytes += header->caplen;
        checksum += data[0] + data[header->caplen - 1];
    }
    double elapsed = now_seconds() - start;
    pcap_close(p);
    if (rc != PCAP_ERROR_BREAK) return 1;
    printf("{\"packets\":%llu,\"bytes\":%llu,\"elapsedNs\":%.0f,\"packetsPerSecond\":%.1f,\"checksum\":%llu}\n",
           (unsigned long long)packets, (unsigned long long)bytes, elapsed * 1e9, packets / elapsed,
           (unsigned long long)checksum);
    return 0;
}
