/* Path: scripts/bench-afxdp.c — the AF_XDP vs AF_PACKET benchmark driver (scripts/bench-afxdp.sh builds
 * it with gcc -O2 against CShims/xdp.c and CShims/afpacket.c, so it runs Sluice's own ring code).
 *
 * One measurement, printed as one line of key=value pairs:
 *   rx-xdp-native | rx-xdp-generic | rx-packet: a sender thread in namespace A sends 64-byte frames at
 *       top speed through an AF_PACKET TPACKET_V2 TX ring (Sluice's sluice_afpacket_tx_fill + kick); a
 *       receiver thread in namespace B takes them through AF_XDP (sluice_xdp ring bursts, each frame's
 *       bytes copied out as Sluice's receiver copies them into pool buffers) or a TPACKET_V3 ring
 *       (sluice_afpacket_rx_next, copied out the same way). pps = frames received / window.
 *   tx-xdp | tx-packet: one sender thread in namespace A, AF_XDP TX (copy mode) or the AF_PACKET TX
 *       ring; nothing receives (the peer drops frames for a foreign MAC). pps = completions / window.
 * CPU: /proc/stat busy time of all cores over the window (both ends and the kernel's softirq work),
 * and getrusage(RUSAGE_SELF) of this process (both threads), each divided by the packets counted.
 */
#define _GNU_SOURCE
#include "sluice_afpacket.h"
#include "sluice_xdp.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static atomic_int stop_flag;
static atomic_int receiver_ready;
static atomic_ulong received_count;
static atomic_ulong sent_count;
static const char *ns_a, *ns_b, *if_a, *if_b;
static double seconds = 3.0;

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void die(const char *what, int rc) {
    fprintf(stderr, "bench-afxdp: %s: %s\n", what, strerror(rc < 0 ? -rc : rc));
    exit(1);
}

static void enter(const char *ns) {
    char path[256];
    snprintf(path, sizeof path, "/var/run/netns/%s", ns);
    int rc = sluice_afpacket_enter_netns(path);
    if (rc) die("setns", rc);
}

static void frame(uint8_t *p, uint64_t seq) {
    static const uint8_t head[42] = {
        0x02, 0x53, 0x4c, 0xff, 0xff, 0xfe, 0x02, 0x53, 0x4c, 0x00, 0x00, 0x01, 0x08, 0x00,
        0x45, 0, 0, 50, 0, 0, 0x40, 0, 64, 17, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2,
        0x9c, 0x40, 0, 9, 0, 30, 0, 0};
    memcpy(p, head, sizeof head);
    memset(p + 42, 0, 22);
    memcpy(p + 50, &seq, sizeof seq);
}

/* ---- AF_PACKET TX ring sender (top speed) ---- */
struct packet_tx { int fd; void *map; struct sluice_afpacket_tx_ring ring; uint32_t *tags; };

static void packet_tx_open(struct packet_tx *t) {
    const uint32_t frame_size = 2048, frame_count = 4096, block = 1 << 16;
    t->fd = sluice_afpacket_socket();
    if (t->fd < 0) die("socket", t->fd);
    int index = sluice_afpacket_interface_index(if_a);
    if (index < 0) die("ifindex", index);
    int rc = sluice_afpacket_set_version(t->fd, SLUICE_AFPACKET_TPACKET_V2);
    if (rc) die("version", rc);
    sluice_afpacket_set_qdisc_bypass(t->fd, 1);
    rc = sluice_afpacket_set_tx_ring(t->fd, block, frame_count * frame_size / block, frame_size);
    if (rc) die("tx ring", rc);
    rc = sluice_afpacket_map(t->fd, (size_t)frame_count * frame_size, &t->map);
    if (rc) die("mmap", rc);
    rc = sluice_afpacket_bind(t->fd, index, 0);
    if (rc) die("bind", rc);
    t->tags = calloc(frame_count, sizeof *t->tags);
    memset(&t->ring, 0, sizeof t->ring);
    t->ring.ring = t->map;
    t->ring.tags = t->tags;
    t->ring.frame_size = frame_size;
    t->ring.frame_count = frame_count;
    t->ring.mask = frame_count - 1;
    t->ring.data_size_max = frame_size - SLUICE_AFPACKET_TX_DATA_OFFSET;
}

/* One burst of up to 32 frames, one kick, one completion scan. Returns frames completed. */
static uint32_t packet_tx_step(struct packet_tx *t, uint64_t *seq) {
    uint8_t buffer[64];
    for (int i = 0; i < 32; i++) {
        frame(buffer, *seq);
        if (sluice_afpacket_tx_fill(&t->ring, buffer, 64, 0) != 1) break;
        (*seq)++;
    }
    sluice_afpacket_kick(t->fd);
    struct sluice_afpacket_tx_scan scan;
    return sluice_afpacket_tx_complete(&t->ring, t->ring.frame_count, NULL, NULL, &scan);
}

/* ---- AF_XDP TX sender ---- */
static uint32_t xdp_tx_step(struct sluice_xdp_socket *s, uint32_t *free_frames, uint32_t *free_count, uint64_t *seq,
                            uint32_t *lengths, uint32_t *tags, uint32_t *scratch) {
    uint32_t n = *free_count < 32 ? *free_count : 32;
    uint32_t slots = sluice_xdp_prod_free(&s->tx, n);
    if (n > slots) n = slots;
    uint32_t first = s->tx.cached_prod;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t f = free_frames[--*free_count];
        uint8_t buffer[64];
        frame(buffer, (*seq)++);
        memcpy(s->area + (size_t)f * s->frame_size, buffer, 64);  /* the copy Sluice's transmitter makes */
        lengths[f] = 64;
        struct sluice_xdp_desc *d = sluice_xdp_desc_at(&s->tx, first + i);
        d->addr = (uint64_t)f * s->frame_size;
        d->len = 64;
        d->options = 0;
    }
    if (n) {
        s->tx.cached_prod += n;
        sluice_xdp_prod_submit(&s->tx, n);
    }
    if (sluice_xdp_needs_wakeup(&s->tx)) sluice_xdp_kick_tx(s->fd);
    uint64_t bytes = 0;
    uint32_t done = 0;
    (void)sluice_xdp_tx_complete(&s->completion, s->frame_size, s->frame_count, 4096, tags, lengths, NULL, NULL, NULL,
                                 scratch, &done, &bytes);
    for (uint32_t i = 0; i < done; i++) free_frames[(*free_count)++] = scratch[i];
    return done;
}

static void *sender_main(void *arg) {
    (void)arg;
    enter(ns_a);
    struct packet_tx t;
    packet_tx_open(&t);
    while (!atomic_load(&receiver_ready)) usleep(100);
    uint64_t seq = 0;
    while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
        uint32_t done = packet_tx_step(&t, &seq);
        if (done) atomic_fetch_add_explicit(&sent_count, done, memory_order_relaxed);
    }
    return NULL;
}

static void *receiver_main(void *arg) {
    const char *mode = arg;
    enter(ns_b);
    uint8_t copy[2048];
    volatile uint8_t sink = 0;
    if (strcmp(mode, "rx-packet") == 0) {
        int fd = sluice_afpacket_socket();
        int index = sluice_afpacket_interface_index(if_b);
        sluice_afpacket_set_version(fd, SLUICE_AFPACKET_TPACKET_V3);
        const uint32_t block = 1 << 20, blocks = 16;  /* 16 MiB, as large as the UMEM below */
        int rc = sluice_afpacket_set_rx_ring(fd, block, blocks, 2048, 8);
        if (rc) die("rx ring", rc);
        void *map;
        rc = sluice_afpacket_map(fd, (size_t)block * blocks, &map);
        if (rc) die("mmap", rc);
        rc = sluice_afpacket_bind(fd, index, 0x0003);
        if (rc) die("bind", rc);
        struct sluice_afpacket_rx_cursor c;
        memset(&c, 0, sizeof c);
        c.ring = map;
        c.block_size = block;
        c.block_count = blocks;
        atomic_store(&receiver_ready, 1);
        struct sluice_afpacket_frame f;
        while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
            uint32_t n = 0;
            while (n < 32 && sluice_afpacket_rx_next(&c, &f) == 1) {
                memcpy(copy, f.data, f.snap_length);
                sink ^= copy[50];
                n++;
            }
            sluice_afpacket_rx_finish(&c);
            if (n) atomic_fetch_add_explicit(&received_count, n, memory_order_relaxed);
        }
        return NULL;
    }
    int xdp_mode = strcmp(mode, "rx-xdp-native") == 0 ? SLUICE_XDP_MODE_NATIVE : SLUICE_XDP_MODE_GENERIC;
    struct sluice_xdp_socket s;
    int step = 0;
    int rc = sluice_xdp_open(&s, if_b, 0, 1, xdp_mode, 8192, 2048, 4096, -1, &step);
    if (rc) die("xsk open", rc);
    uint64_t addrs[4096];
    for (uint32_t i = 0; i < 4096; i++) addrs[i] = (uint64_t)i * 2048;
    if (sluice_xdp_fill_burst(&s.fill, addrs, 4096) != 4096) die("fill", EINVAL);
    atomic_store(&receiver_ready, 1);
    while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
        uint32_t first;
        uint32_t n = sluice_xdp_cons_peek(&s.rx, 32, &first);
        if (!n) continue;
        for (uint32_t i = 0; i < n; i++) {
            struct sluice_xdp_desc *d = sluice_xdp_desc_at(&s.rx, first + i);
            memcpy(copy, s.area + d->addr, d->len);
            sink ^= copy[50];
            addrs[i] = d->addr - d->addr % 2048;
        }
        sluice_xdp_cons_release(&s.rx, n);
        sluice_xdp_fill_burst(&s.fill, addrs, n);
        if (sluice_xdp_needs_wakeup(&s.fill)) sluice_xdp_kick_rx(s.fd);
        atomic_fetch_add_explicit(&received_count, n, memory_order_relaxed);
    }
    struct sluice_xdp_stats st;
    sluice_xdp_statistics(s.fd, &st);
    fprintf(stderr, "xsk rx: dropped %llu ring_full %llu fill_empty %llu\n", (unsigned long long)st.rx_dropped,
            (unsigned long long)st.rx_ring_full, (unsigned long long)st.rx_fill_ring_empty_descs);
    sluice_xdp_close(&s);
    return NULL;
}

static void *tx_only_main(void *arg) {
    const char *mode = arg;
    enter(ns_a);
    if (strcmp(mode, "tx-packet") == 0) {
        struct packet_tx t;
        packet_tx_open(&t);
        atomic_store(&receiver_ready, 1);
        uint64_t seq = 0;
        while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
            uint32_t done = packet_tx_step(&t, &seq);
            if (done) atomic_fetch_add_explicit(&sent_count, done, memory_order_relaxed);
        }
        return NULL;
    }
    struct sluice_xdp_socket s;
    int step = 0;
    int rc = sluice_xdp_open(&s, if_a, 0, 0, SLUICE_XDP_MODE_NONE, 4096, 2048, 2048, -1, &step);
    if (rc) die("xsk tx open", rc);
    static uint32_t free_frames[4096], lengths[4096], tags[4096], scratch[4096];
    uint32_t free_count = 0;
    for (uint32_t i = 0; i < 4096; i++) free_frames[free_count++] = i;
    atomic_store(&receiver_ready, 1);
    uint64_t seq = 0;
    while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
        uint32_t done = xdp_tx_step(&s, free_frames, &free_count, &seq, lengths, tags, scratch);
        if (done) atomic_fetch_add_explicit(&sent_count, done, memory_order_relaxed);
    }
    sluice_xdp_close(&s);
    return NULL;
}

static void cpu_busy(uint64_t *busy, uint64_t *total) {
    FILE *f = fopen("/proc/stat", "r");
    unsigned long long v[10] = {0};
    if (!f || fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4],
                     &v[5], &v[6], &v[7], &v[8], &v[9]) < 8) die("/proc/stat", EIO);
    fclose(f);
    *total = v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
    *busy = *total - v[3] - v[4];
}

static uint64_t rusage_ns(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (uint64_t)(u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1000000000u +
           (uint64_t)(u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1000u;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s MODE NS_A IF_A NS_B IF_B [SECONDS]\n", argv[0]);
        return 2;
    }
    const char *mode = argv[1];
    ns_a = argv[2]; if_a = argv[3]; ns_b = argv[4]; if_b = argv[5];
    if (argc > 6) seconds = atof(argv[6]);
    sluice_xdp_silence_library_logs();
    int rx = strncmp(mode, "rx-", 3) == 0;
    pthread_t a, b;
    if (rx) {
        pthread_create(&b, NULL, receiver_main, (void *)mode);
        pthread_create(&a, NULL, sender_main, NULL);
    } else {
        pthread_create(&a, NULL, tx_only_main, (void *)mode);
    }
    while (!atomic_load(&receiver_ready)) usleep(100);
    usleep(300000);  /* warm-up: rings full of traffic before the window opens */
    atomic_ulong *counter = rx ? &received_count : &sent_count;
    uint64_t busy0, total0, busy1, total1;
    uint64_t c0 = atomic_load(counter), t0 = now_ns(), r0 = rusage_ns();
    cpu_busy(&busy0, &total0);
    usleep((useconds_t)(seconds * 1e6));
    uint64_t c1 = atomic_load(counter), t1 = now_ns(), r1 = rusage_ns();
    cpu_busy(&busy1, &total1);
    uint64_t sent0 = atomic_load(&sent_count);
    atomic_store(&stop_flag, 1);
    pthread_join(a, NULL);
    if (rx) pthread_join(b, NULL);
    double window = (double)(t1 - t0) / 1e9;
    double packets = (double)(c1 - c0);
    long hz = sysconf(_SC_CLK_TCK);
    double busy_ns = (double)(busy1 - busy0) * 1e9 / (double)hz;
    printf("mode=%s pps=%.0f packets=%.0f window_s=%.3f cpu_all_ns_per_pkt=%.1f cpu_proc_ns_per_pkt=%.1f cores_busy=%.2f sent_total=%llu\n",
           mode, packets / window, packets, window, busy_ns / packets, (double)(r1 - r0) / packets,
           busy_ns / 1e9 / window, (unsigned long long)sent0);
    return 0;
}
