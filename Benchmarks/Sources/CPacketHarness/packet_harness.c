/* Path: Benchmarks/Sources/CPacketHarness/packet_harness.c — the plain-C AF_PACKET anchors. */
#define _GNU_SOURCE
#include "packet_harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <stdio.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint64_t clock_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void pkth_flag_set(int *flag, int value) { __atomic_store_n(flag, value, __ATOMIC_RELEASE); }
int pkth_flag_get(const int *flag) { return __atomic_load_n(flag, __ATOMIC_ACQUIRE); }

/* setns into the namespace, then pin. 0 or -errno. */
static int enter(const char *netns_path, int cpu) {
    int fd = open(netns_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    int rc = setns(fd, CLONE_NEWNET) == 0 ? 0 : -errno;
    close(fd);
    if (rc != 0 || cpu < 0) return rc;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return -pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

static int set_int(int fd, int level, int option, int value) {
    return setsockopt(fd, level, option, &value, sizeof(value)) == 0 ? 0 : -errno;
}

static int bind_to(int fd, const char *interface, uint16_t protocol) {
    struct sockaddr_ll address;
    memset(&address, 0, sizeof(address));
    address.sll_family = AF_PACKET;
    address.sll_protocol = htons(protocol);
    address.sll_ifindex = (int)if_nametoindex(interface);
    if (address.sll_ifindex == 0) return -errno;
    return bind(fd, (struct sockaddr *)&address, sizeof(address)) == 0 ? 0 : -errno;
}

static void put_sequence(uint8_t *at, uint64_t sequence) {
    for (int i = 7; i >= 0; i--) { at[i] = (uint8_t)sequence; sequence >>= 8; }
}

int pkth_txring_send(const struct pkth_sender_config *c, struct pkth_sender_result *r) {
    memset(r, 0, sizeof(*r));
    int rc = enter(c->netns_path, c->cpu);
    if (rc != 0) return rc;
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    long page = sysconf(_SC_PAGESIZE);
    uint32_t block_size = c->frame_size > (uint32_t)page ? c->frame_size : (uint32_t)page;
    struct tpacket_req request = {
        .tp_block_size = block_size,
        .tp_block_nr = c->frame_count / (block_size / c->frame_size),
        .tp_frame_size = c->frame_size,
        .tp_frame_nr = c->frame_count,
    };
    size_t ring_bytes = (size_t)c->frame_size * c->frame_count;
    uint8_t *ring = MAP_FAILED;
    if ((rc = set_int(fd, SOL_PACKET, PACKET_VERSION, TPACKET_V2)) != 0) goto out;
    if (c->qdisc_bypass && (rc = set_int(fd, SOL_PACKET, PACKET_QDISC_BYPASS, 1)) != 0) goto out;
    if ((rc = set_int(fd, SOL_PACKET, PACKET_LOSS, 1)) != 0) goto out;  /* as Sluice: skip bad frames */
    if (setsockopt(fd, SOL_PACKET, PACKET_TX_RING, &request, sizeof(request)) != 0) { rc = -errno; goto out; }
    ring = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (ring == MAP_FAILED) { rc = -errno; goto out; }
    if ((rc = bind_to(fd, c->interface, 0)) != 0) goto out;
    if (c->start) {
        uint64_t deadline = clock_ns(CLOCK_MONOTONIC) + 10000000000ull;
        while (!pkth_flag_get(c->start) && clock_ns(CLOCK_MONOTONIC) < deadline) sched_yield();
    }
    const uint32_t data_offset = TPACKET2_HDRLEN - sizeof(struct sockaddr_ll);
    const uint32_t mask = c->frame_count - 1;
    uint64_t wall0 = clock_ns(CLOCK_MONOTONIC), cpu0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    uint64_t head = 0;
    while (head < c->count) {
        uint64_t end = head + c->burst < c->count ? head + c->burst : c->count;
        for (; head < end; head++) {
            struct tpacket2_hdr *h = (struct tpacket2_hdr *)(ring + (size_t)(head & mask) * c->frame_size);
            /* Wait for the slot; kick so the kernel drains what is queued (bounded by the kernel's progress). */
            while (__atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE) & (TP_STATUS_SEND_REQUEST | TP_STATUS_SENDING)) {
                r->kicks++;
                if (sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0) < 0) r->kick_retries++;
            }
            uint8_t *data = (uint8_t *)h + data_offset;
            memcpy(data, c->frame, c->frame_length);
            put_sequence(data + c->sequence_offset, head);
            h->tp_len = c->frame_length;
            __atomic_store_n(&h->tp_status, TP_STATUS_SEND_REQUEST, __ATOMIC_RELEASE);
        }
        r->kicks++;
        if (sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0) < 0) r->kick_retries++;
    }
    r->sent = head;
    /* Wait (bounded, 5 s) until every slot is back. */
    uint64_t deadline = clock_ns(CLOCK_MONOTONIC) + 5000000000ull;
    for (uint32_t slot = 0; slot < c->frame_count && clock_ns(CLOCK_MONOTONIC) < deadline;) {
        struct tpacket2_hdr *h = (struct tpacket2_hdr *)(ring + (size_t)slot * c->frame_size);
        if (__atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE) & (TP_STATUS_SEND_REQUEST | TP_STATUS_SENDING)) {
            r->kicks++;
            if (sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0) < 0) r->kick_retries++;
        } else {
            slot++;
        }
    }
    r->wall_ns = clock_ns(CLOCK_MONOTONIC) - wall0;
    r->cpu_ns = clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0;
    rc = 0;
out:
    if (ring != MAP_FAILED) munmap(ring, ring_bytes);
    close(fd);
    return rc;
}

/* The receivers' shared socket set-up: a raw socket in the namespace, pinned, IGNORE_OUTGOING, 20 ms
 * receive timeout; SO_RCVBUFFORCE when rcvbuf_bytes > 0. Bound later (a ring must exist before bind).
 * The socket or -errno. */
static int open_receiver(const struct pkth_receiver_config *c) {
    int rc = enter(c->netns_path, c->cpu);
    if (rc != 0) return rc;
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    struct timeval timeout = {.tv_sec = 0, .tv_usec = 20000};
    if (c->rcvbuf_bytes > 0 && (rc = set_int(fd, SOL_SOCKET, SO_RCVBUFFORCE, c->rcvbuf_bytes)) != 0) goto fail;
    if ((rc = set_int(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)) != 0) goto fail;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout)) != 0) { rc = -errno; goto fail; }
    return fd;
fail:
    close(fd);
    return rc;
}

/* After an empty wait: true once the sender is done and the link has been quiet for quiet_ns. */
static bool quiet_long_enough(const struct pkth_receiver_config *c, uint64_t *quiet_since) {
    uint64_t now = clock_ns(CLOCK_MONOTONIC);
    if (!pkth_flag_get(c->sender_done)) {
        *quiet_since = now;
        return false;
    }
    return now - *quiet_since > c->quiet_ns;
}

static void read_statistics(int fd, struct pkth_receiver_result *r) {
    struct tpacket_stats stats;
    socklen_t stats_length = sizeof(stats);
    if (getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &stats, &stats_length) == 0) {
        r->kernel_packets = stats.tp_packets;
        r->kernel_drops = stats.tp_drops;
    }
}

int pkth_recvfrom_receive(const struct pkth_receiver_config *c, struct pkth_receiver_result *r) {
    memset(r, 0, sizeof(*r));
    int fd = open_receiver(c);
    if (fd < 0) return fd;
    int rc = bind_to(fd, c->interface, ETH_P_ALL);
    if (rc != 0) goto out;
    uint8_t buffer[2048];
    pkth_flag_set(c->ready, 1);
    uint64_t cpu0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    uint64_t quiet_since = clock_ns(CLOCK_MONOTONIC);
    while (r->packets < c->expected) {
        ssize_t length = recvfrom(fd, buffer, sizeof(buffer), 0, NULL, NULL);
        if (length >= 0) {
            r->packets++;
            r->bytes += (uint64_t)length;
            continue;
        }
        if (errno != EAGAIN && errno != EINTR) { rc = -errno; goto out; }
        if (quiet_long_enough(c, &quiet_since)) break;
    }
    r->cpu_ns = clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0;
    read_statistics(fd, r);
out:
    close(fd);
    return rc;
}

int pkth_recvmmsg_receive(const struct pkth_receiver_config *c, struct pkth_receiver_result *r) {
    memset(r, 0, sizeof(*r));
    if (c->batch < 1 || c->batch > PKTH_RECVMMSG_BATCH_MAX) return -EINVAL;
    int fd = open_receiver(c);
    if (fd < 0) return fd;
    int rc = bind_to(fd, c->interface, ETH_P_ALL);
    if (rc != 0) goto out;
    static _Thread_local uint8_t buffers[PKTH_RECVMMSG_BATCH_MAX][2048];
    struct iovec vectors[PKTH_RECVMMSG_BATCH_MAX];
    struct mmsghdr messages[PKTH_RECVMMSG_BATCH_MAX];
    memset(messages, 0, sizeof(messages));
    for (uint32_t i = 0; i < c->batch; i++) {
        vectors[i] = (struct iovec){.iov_base = buffers[i], .iov_len = sizeof(buffers[i])};
        messages[i].msg_hdr.msg_iov = &vectors[i];
        messages[i].msg_hdr.msg_iovlen = 1;
    }
    pkth_flag_set(c->ready, 1);
    uint64_t cpu0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    uint64_t quiet_since = clock_ns(CLOCK_MONOTONIC);
    while (r->packets < c->expected) {
        uint64_t left = c->expected - r->packets;
        unsigned int wanted = left < c->batch ? (unsigned int)left : c->batch;
        int count = recvmmsg(fd, messages, wanted, MSG_WAITFORONE, NULL);
        if (count > 0) {
            for (int i = 0; i < count; i++) r->bytes += messages[i].msg_len;
            r->packets += (uint64_t)count;
            continue;
        }
        if (count < 0 && errno != EAGAIN && errno != EINTR) { rc = -errno; goto out; }
        if (quiet_long_enough(c, &quiet_since)) break;
    }
    r->cpu_ns = clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0;
    read_statistics(fd, r);
out:
    close(fd);
    return rc;
}

static volatile uint64_t touched_bytes_sink;

int pkth_v2ring_receive(const struct pkth_receiver_config *c, struct pkth_receiver_result *r) {
    memset(r, 0, sizeof(*r));
    const uint32_t frame_size = 2048;
    if (c->ring_block_size < frame_size || c->ring_block_size % frame_size != 0 || c->ring_block_count == 0) return -EINVAL;
    int fd = open_receiver(c);
    if (fd < 0) return fd;
    uint32_t frames_per_block = c->ring_block_size / frame_size;
    struct tpacket_req request = {
        .tp_block_size = c->ring_block_size,
        .tp_block_nr = c->ring_block_count,
        .tp_frame_size = frame_size,
        .tp_frame_nr = c->ring_block_count * frames_per_block,
    };
    size_t ring_bytes = (size_t)c->ring_block_size * c->ring_block_count;
    uint8_t *ring = MAP_FAILED;
    int rc = set_int(fd, SOL_PACKET, PACKET_VERSION, TPACKET_V2);
    if (rc != 0) goto out;
    if (setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &request, sizeof(request)) != 0) { rc = -errno; goto out; }
    ring = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (ring == MAP_FAILED) { rc = -errno; goto out; }
    if ((rc = bind_to(fd, c->interface, ETH_P_ALL)) != 0) goto out;
    pkth_flag_set(c->ready, 1);
    uint64_t cpu0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    uint64_t quiet_since = clock_ns(CLOCK_MONOTONIC);
    uint64_t checksum = 0;
    uint32_t slot = 0;
    while (r->packets < c->expected) {
        /* Frames sit frame_size apart inside a block and blocks are contiguous, so slot i is at i * 2048. */
        struct tpacket2_hdr *h = (struct tpacket2_hdr *)(ring + (size_t)slot * frame_size);
        /* Acquire pairs with the kernel's release of the slot (smp_wmb before TP_STATUS_USER). */
        if (__atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER) {
            const uint8_t *data = (const uint8_t *)h + h->tp_mac;
            checksum += data[0] + data[h->tp_snaplen - 1];
            r->packets++;
            r->bytes += h->tp_len;
            /* Release: our reads of the frame are done before the kernel may reuse the slot. */
            __atomic_store_n(&h->tp_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
            slot = slot + 1 == request.tp_frame_nr ? 0 : slot + 1;
            continue;
        }
        struct pollfd waiter = {.fd = fd, .events = POLLIN};
        int ready = poll(&waiter, 1, 20);
        if (ready < 0 && errno != EINTR) { rc = -errno; goto out; }
        if (ready == 0 && quiet_long_enough(c, &quiet_since)) break;
    }
    r->cpu_ns = clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0;
    touched_bytes_sink = checksum;  /* so the compiler keeps the reads of each frame's bytes */
    read_statistics(fd, r);
out:
    if (ring != MAP_FAILED) munmap(ring, ring_bytes);
    close(fd);
    return rc;
}

int pkth_v3ring_receive(const struct pkth_receiver_config *c, struct pkth_receiver_result *r) {
    memset(r, 0, sizeof(*r));
    if (c->ring_block_size < 4096 || c->ring_block_size % 4096 != 0 || c->ring_block_count == 0) return -EINVAL;
    int fd = open_receiver(c);
    if (fd < 0) return fd;
    /* The same ring Sluice's receiver asks for: blocks of ring_block_size, retired after 1 ms. */
    struct tpacket_req3 request = {
        .tp_block_size = c->ring_block_size,
        .tp_block_nr = c->ring_block_count,
        .tp_frame_size = 2048,
        .tp_frame_nr = c->ring_block_count * (c->ring_block_size / 2048),
        .tp_retire_blk_tov = 1,
    };
    size_t ring_bytes = (size_t)c->ring_block_size * c->ring_block_count;
    uint8_t *ring = MAP_FAILED;
    int rc = set_int(fd, SOL_PACKET, PACKET_VERSION, TPACKET_V3);
    if (rc != 0) goto out;
    if (setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &request, sizeof(request)) != 0) { rc = -errno; goto out; }
    ring = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (ring == MAP_FAILED) { rc = -errno; goto out; }
    if ((rc = bind_to(fd, c->interface, ETH_P_ALL)) != 0) goto out;
    pkth_flag_set(c->ready, 1);
    uint64_t cpu0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    uint64_t quiet_since = clock_ns(CLOCK_MONOTONIC);
    uint64_t checksum = 0;
    uint32_t block = 0;
    while (r->packets < c->expected) {
        struct tpacket_block_desc *desc = (struct tpacket_block_desc *)(ring + (size_t)block * c->ring_block_size);
        /* Acquire pairs with the kernel's release of the block (smp_wmb before TP_STATUS_USER). */
        if (__atomic_load_n(&desc->hdr.bh1.block_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER) {
            uint32_t count = desc->hdr.bh1.num_pkts;
            const uint8_t *frame = (const uint8_t *)desc + desc->hdr.bh1.offset_to_first_pkt;
            for (uint32_t i = 0; i < count; i++) {
                const struct tpacket3_hdr *h = (const struct tpacket3_hdr *)frame;
                const uint8_t *data = frame + h->tp_mac;
                checksum += data[0] + data[h->tp_snaplen - 1];
                r->bytes += h->tp_len;
                frame += h->tp_next_offset;
            }
            r->packets += count;
            /* Release: our reads of the block are done before the kernel may refill it. */
            __atomic_store_n(&desc->hdr.bh1.block_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
            block = block + 1 == c->ring_block_count ? 0 : block + 1;
            continue;
        }
        struct pollfd waiter = {.fd = fd, .events = POLLIN};
        int ready = poll(&waiter, 1, 20);
        if (ready < 0 && errno != EINTR) { rc = -errno; goto out; }
        if (ready == 0 && quiet_long_enough(c, &quiet_since)) break;
    }
    r->cpu_ns = clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0;
    touched_bytes_sink = checksum;
    read_statistics(fd, r);
out:
    if (ring != MAP_FAILED) munmap(ring, ring_bytes);
    close(fd);
    return rc;
}

uint64_t pkth_system_busy_ns(void) {
    FILE *stat = fopen("/proc/stat", "re");
    if (stat == NULL) {  /* a 0 would read as "no CPU used": stop the benchmark instead */
        perror("pkth_system_busy_ns: /proc/stat");
        exit(2);
    }
    unsigned long long user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0;
    int fields = fscanf(stat, "cpu %llu %llu %llu %llu %llu %llu %llu", &user, &nice, &system, &idle, &iowait,
                        &irq, &softirq);
    fclose(stat);
    if (fields != 7) {
        fprintf(stderr, "pkth_system_busy_ns: /proc/stat's cpu line has %d of 7 fields\n", fields);
        exit(2);
    }
    long ticks_per_second = sysconf(_SC_CLK_TCK);
    return (uint64_t)(user + nice + system + irq + softirq) * (1000000000ull / (uint64_t)ticks_per_second);
}

uint64_t pkth_process_cpu_ns(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return ((uint64_t)usage.ru_utime.tv_sec + (uint64_t)usage.ru_stime.tv_sec) * 1000000000u +
           ((uint64_t)usage.ru_utime.tv_usec + (uint64_t)usage.ru_stime.tv_usec) * 1000u;
}
