/*
 * Path: Benchmarks/Sources/CPacketHarness/include/packet_harness.h — plain-C AF_PACKET anchors for
 * afpacket-compare: a TX-ring sender and a recvfrom() receiver, independent of Sluice's code.
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

/* A recvfrom() receiver on a raw AF_PACKET socket (ETH_P_ALL, PACKET_IGNORE_OUTGOING, SO_RCVBUF forced
 * to rcvbuf_bytes): blocking receives with a 20 ms timeout, until `expected` frames arrived or, once
 * *sender_done, the link was quiet for quiet_ns. Sets *ready once it receives. */
struct pkth_receiver_config {
    const char *netns_path;
    const char *interface;
    int cpu;
    uint64_t expected;
    int rcvbuf_bytes;
    uint64_t quiet_ns;
    int *ready;
    const int *sender_done;
};

struct pkth_receiver_result {
    uint64_t packets;
    uint64_t bytes;
    uint64_t kernel_packets;    /* PACKET_STATISTICS tp_packets (drops included) */
    uint64_t kernel_drops;      /* tp_drops: the socket's receive queue was full */
    uint64_t cpu_ns;            /* the receiving thread's CPU time from ready to the end */
};

int pkth_recvfrom_receive(const struct pkth_receiver_config *config, struct pkth_receiver_result *result);

/* Flags between threads: release store, acquire load. */
void pkth_flag_set(int *flag, int value);
int pkth_flag_get(const int *flag);

#pragma clang assume_nonnull end

#endif /* PKTH_PACKET_HARNESS_H */
