/* Path: scripts/anchors/pcap_next_loop.c — the anchor for the replay and service benchmarks: a plain
 * libpcap read loop over a savefile on one thread, touching each packet's first and last byte so the
 * data is really read. With LOOPS > 1 it reads the file LOOPS times, reopening it for each pass as
 * `sluice replay --loop` does.
 *
 * Prints JSON with the same span as `sluice replay --json`: wallNsFromOpen is CLOCK_MONOTONIC from
 * just before the first pcap_open to the last packet read, processCpuNs is getrusage(RUSAGE_SELF)
 * (user + system) over that span; elapsedNs is the same as wallNsFromOpen, and packetsPerSecond is
 * packets / wallNsFromOpen. Exits 1 on any error, including a capture that ends in a bad record.
 * Build: cc -O2 pcap_next_loop.c -lpcap. Usage: pcap_next_loop CAPTURE [LOOPS] */
#include <pcap/pcap.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

enum { loops_max = 1000 };

static uint64_t monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* User plus system CPU time of every thread of this process. */
static uint64_t process_cpu_ns(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return ((uint64_t)usage.ru_utime.tv_sec + (uint64_t)usage.ru_stime.tv_sec) * 1000000000u +
           ((uint64_t)usage.ru_utime.tv_usec + (uint64_t)usage.ru_stime.tv_usec) * 1000u;
}

struct totals {
    uint64_t packets, bytes, checksum;
    uint64_t end_wall_ns, end_cpu_ns;  /* read after each pass's last record, before pcap_close */
};

/* One pass over the file: open, read every record, close. 0, or 1 after printing why. */
static int read_once(const char *path, struct totals *t) {
    char errbuf[PCAP_ERRBUF_SIZE];
    pcap_t *p = pcap_open_offline_with_tstamp_precision(path, PCAP_TSTAMP_PRECISION_NANO, errbuf);
    if (p == NULL) {
        fprintf(stderr, "%s\n", errbuf);
        return 1;
    }
    struct pcap_pkthdr *header;
    const u_char *data;
    int rc;
    while ((rc = pcap_next_ex(p, &header, &data)) == 1) {
        t->packets++;
        t->bytes += header->caplen;
        t->checksum += data[0] + data[header->caplen - 1];
    }
    t->end_wall_ns = monotonic_ns();
    t->end_cpu_ns = process_cpu_ns();
    if (rc != PCAP_ERROR_BREAK) fprintf(stderr, "%s\n", pcap_geterr(p));
    pcap_close(p);
    return rc == PCAP_ERROR_BREAK ? 0 : 1;
}

int main(int argc, char **argv) {
    long loops = argc == 3 ? strtol(argv[2], NULL, 10) : 1;
    if (argc < 2 || argc > 3 || loops < 1 || loops > loops_max) {
        fprintf(stderr, "usage: %s CAPTURE [LOOPS (1-%d)]\n", argv[0], loops_max);
        return 2;
    }
    struct totals t = {0, 0, 0, 0, 0};
    uint64_t cpu0 = process_cpu_ns();
    uint64_t wall0 = monotonic_ns();
    for (long loop = 0; loop < loops; loop++) {
        if (read_once(argv[1], &t) != 0) return 1;
    }
    /* The span ends after the last pass's final pcap_next_ex (the end-of-file one, right after
     * the last packet); its pcap_close is left out, as sluice's clock leaves out its shutdown. */
    uint64_t wall_ns = t.end_wall_ns - wall0;
    uint64_t cpu_ns = t.end_cpu_ns - cpu0;
    printf("{\"packets\":%llu,\"bytes\":%llu,\"loops\":%ld,\"wallNsFromOpen\":%llu,\"processCpuNs\":%llu,"
           "\"elapsedNs\":%llu,\"packetsPerSecond\":%.1f,\"checksum\":%llu}\n",
           (unsigned long long)t.packets, (unsigned long long)t.bytes, loops, (unsigned long long)wall_ns,
           (unsigned long long)cpu_ns, (unsigned long long)wall_ns, (double)t.packets / ((double)wall_ns / 1e9),
           (unsigned long long)t.checksum);
    return 0;
}
