/*
 * Path: Benchmarks/Sources/CPacketHarness/include/packet_harness.h — plain-C AF_PACKET anchors for
 * afpacket-compare: a TX-ring sender and three receivers (recvfrom(), recvmmsg(), a TPACKET_V2 ring),
 * independent of Sluice's code, and the CPU clocks the benchmarks read (/proc/stat, getrusage).
 *
 * Each function runs on the calling thread and first moves that thread into a network namespace
 * (setns) and pins it, so call it from a thread made for the purpose. Flags shared with the Swift
 * driver are plain ints touched only through pkth_flag_*, which use atomic builtins.
 */
#ifndef PKTH_PACKET_HARNESS_H
#define PKTH_PACKET_HARNESS_H

#include <stdint.h>

#pragma clang assume_nonnull begin

/* A TX-ring sender: `count` copies of `frame`, a 64-bit big-endian sequence number written at
 * `sequence_offset` into each, `burst` frames per sendto(MSG_DONTWAIT) kick. */
struct pkth_sender_config {
    const char *netns_path;     /* /var/run/netns/NAME */
    const char *interface;
    int cpu;                    /* pin here; < 0: leave unpinned */
    uint64_t count;
    uint32_t burst;
    uint32_t frame_size;        /* TX ring slot bytes, a power of two */
    uint32_t frame_count;       /* TX ring slots, a power of two */
    int qdisc_bypass;
    const uint8_t *frame;
    uint32_t frame_length;
    uint32_t sequence_offset;
    const int *_Nullable start; /* if set, wait (spinning, bounded 10 s) for *start != 0 before timing */
};

struct pkth_sender_result {
    uint64_t sent;              /* frames queued */
    uint64_t kicks;
    uint64_t kick_retries;      /* EAGAIN / ENOBUFS */
    uint64_t wall_ns;           /* first frame queued to every frame complete */
    uint64_t cpu_ns;            /* the sending thread's CPU time over the same span */
};

/* The plain C TX-ring loop: for each slot wait until it is AVAILABLE (kicking while it is not), copy
 * the frame in, mark it SEND_REQUEST; one kick per burst; at the end wait for every slot. 0 or -errno. */
int pkth_txring_send(const struct pkth_sender_config *config, struct pkth_sender_result *result);

/* The anchor receivers on a raw AF_PACKET socket (ETH_P_ALL, PACKET_IGNORE_OUTGOING) all wait in the
 * kernel when nothing is there (a 20 ms timeout), and run until `expected` frames arrived or, once
 * *sender_done, the link was quiet for quiet_ns. Each sets *ready once it can receive. */
struct pkth_receiver_config {
    const char *netns_path;
    const char *interface;
    int cpu;
    uint64_t expected;
    int rcvbuf_bytes;           /* recvfrom, recvmmsg: SO_RCVBUFFORCE */
    uint64_t quiet_ns;
    int *ready;
    const int *sender_done;
    uint32_t batch;             /* recvmmsg: messages per call, 1..PKTH_RECVMMSG_BATCH_MAX */
    uint32_t ring_block_size;   /* TPACKET_V2/V3 rings: block bytes, a multiple of the page size */
    uint32_t ring_block_count;  /* TPACKET_V2/V3 rings: blocks; frames are 2048 bytes each */
};

/* Largest recvmmsg batch: the receiver keeps that many 2 KiB buffers on its stack. */
#define PKTH_RECVMMSG_BATCH_MAX 64

struct pkth_receiver_result {
    uint64_t packets;
    uint64_t bytes;
    uint64_t kernel_packets;    /* PACKET_STATISTICS tp_packets (drops included) */
    uint64_t kernel_drops;      /* tp_drops: the socket's receive queue was full */
    uint64_t cpu_ns;            /* the receiving thread's CPU time from ready to the end */
};

/* One recvfrom() per frame, blocking (SO_RCVTIMEO 20 ms). 0 or -errno. */
int pkth_recvfrom_receive(const struct pkth_receiver_config *config, struct pkth_receiver_result *result);

/* recvmmsg() of up to `batch` frames per call: blocks (SO_RCVTIMEO 20 ms) for the first, returns with
 * what is queued (MSG_WAITFORONE). 0 or -errno. */
int pkth_recvmmsg_receive(const struct pkth_receiver_config *config, struct pkth_receiver_result *result);

/* A TPACKET_V2 RX ring (ring_block_count blocks of ring_block_size bytes, 2048-byte frames): reads each
 * frame the kernel hands over (TP_STATUS_USER), touches its first and last byte and gives the slot
 * back; poll(POLLIN, 20 ms) when the next slot is still the kernel's. 0 or -errno. */
int pkth_v2ring_receive(const struct pkth_receiver_config *config, struct pkth_receiver_result *result);
/* A TPACKET_V3 RX ring of the same blocks (1 ms block timeout, as Sluice's receiver): walks each ready
 * block's frames in place, reading each frame's first and last byte, then hands the block back.
 * The strongest plain-C form of what Sluice's ring receiver does (it also copies into pool buffers). */
int pkth_v3ring_receive(const struct pkth_receiver_config *config, struct pkth_receiver_result *result);

/* CPU time of the whole machine, summed over every CPU: user + nice + system + irq + softirq from
 * /proc/stat (kernel work on any core, softirq receive paths included; idle, iowait and steal left
 * out), in ns (at USER_HZ resolution, 10 ms per CPU). 0 if /proc/stat cannot be read. */
uint64_t pkth_system_busy_ns(void);

/* User + system CPU time of every thread of this process (getrusage RUSAGE_SELF), in ns. */
uint64_t pkth_process_cpu_ns(void);

/* Flags between threads: release store, acquire load. */
void pkth_flag_set(int *flag, int value);
int pkth_flag_get(const int *flag);

#pragma clang assume_nonnull end

#endif /* PKTH_PACKET_HARNESS_H */
