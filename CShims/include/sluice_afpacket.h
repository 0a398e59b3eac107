/*
 * Path: CShims/include/sluice_afpacket.h — AF_PACKET mmap rings: socket glue and the hot-path walkers.
 *
 * RX is a TPACKET_V3 ring: the kernel fills blocks of variable-length frames and hands a block over
 * by setting TP_STATUS_USER in its descriptor; user space walks the block's frames by
 * tp_next_offset and gives it back by storing TP_STATUS_KERNEL. TX is a TPACKET_V2 ring of fixed
 * frames: user space writes a frame and sets TP_STATUS_SEND_REQUEST, one sendto() kicks the kernel,
 * which sets TP_STATUS_AVAILABLE again once the frame's skb is freed (or TP_STATUS_WRONG_FORMAT when
 * it rejects the frame and PACKET_LOSS is off).
 *
 * The ring headers are mirrored here (sluice_afpacket_*_header) instead of including
 * <linux/if_packet.h>, which would clash with glibc's <netpacket/packet.h> in any file that also
 * includes this one; afpacket.c checks every mirrored offset and constant against the kernel's.
 *
 * Memory ordering. The ring words are plain __u32 shared with the kernel, so GCC __atomic builtins
 * stand in for C11 atomics (which need _Atomic objects). Each pairs with a kernel barrier:
 *   R1 RX: load-acquire block_status (USER), then read frames  <- kernel smp_wmb() before it stores USER
 *   R2 RX: read frames, then store-release block_status KERNEL -> kernel reads status before reusing it
 *   T1 TX: write frame and tp_len, then store-release SEND_REQUEST -> kernel smp_rmb() after reading it
 *   T2 TX: load-acquire tp_status (AVAILABLE), then reuse frame  <- kernel smp_wmb() after it stores it
 *
 * Functions in afpacket.c return a value >= 0 or -errno (the liburing convention).
 */
#ifndef SLUICE_AFPACKET_H
#define SLUICE_AFPACKET_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---- constants (checked against <linux/if_packet.h> in afpacket.c) ---- */

#define SLUICE_AFPACKET_TPACKET_V2 1
#define SLUICE_AFPACKET_TPACKET_V3 2
#define SLUICE_AFPACKET_STATUS_KERNEL 0u
#define SLUICE_AFPACKET_STATUS_USER 1u
#define SLUICE_AFPACKET_STATUS_AVAILABLE 0u
#define SLUICE_AFPACKET_STATUS_SEND_REQUEST 1u
#define SLUICE_AFPACKET_STATUS_SENDING 2u
#define SLUICE_AFPACKET_STATUS_WRONG_FORMAT 4u
#define SLUICE_AFPACKET_STATUS_VLAN_VALID 0x10u
#define SLUICE_AFPACKET_STATUS_VLAN_TPID_VALID 0x40u
#define SLUICE_AFPACKET_FANOUT_HASH 0u
#define SLUICE_AFPACKET_FANOUT_FLAG_DEFRAG 0x8000u
/* Offset of packet data in a TX frame: TPACKET_ALIGN(sizeof(struct tpacket2_hdr)). The kernel sends
 * from TPACKET2_HDRLEN - sizeof(struct sockaddr_ll) when PACKET_TX_HAS_OFF is off. */
#define SLUICE_AFPACKET_TX_DATA_OFFSET 32u
/* The smallest frame the kernel accepts on an Ethernet device (dev->hard_header_len). */
#define SLUICE_AFPACKET_ETHERNET_HEADER_BYTES 14u

/* ---- ring headers, mirrored from <linux/if_packet.h> ---- */

/* struct tpacket_block_desc with its tpacket_hdr_v1: the head of every RX block. */
struct sluice_afpacket_block_header {
    uint32_t version;
    uint32_t offset_to_priv;
    uint32_t block_status; /* TP_STATUS_KERNEL or TP_STATUS_USER (+ TP_STATUS_BLK_TMO) */
    uint32_t packet_count;
    uint32_t first_frame_offset;
    uint32_t block_length;
    uint64_t sequence;
};

/* struct tpacket3_hdr: the head of every RX frame. */
struct sluice_afpacket_v3_frame_header {
    uint32_t next_offset; /* from this frame to the next one in the block; 0 on the last */
    uint32_t seconds;
    uint32_t nanoseconds;
    uint32_t snap_length; /* bytes captured */
    uint32_t wire_length; /* bytes on the wire */
    uint32_t status;
    uint16_t mac_offset; /* from this header to the link-layer header */
    uint16_t network_offset;
    uint32_t rx_hash;
    uint32_t vlan_tci;   /* the tag the kernel (or a NIC) took off the frame, when STATUS_VLAN_VALID */
    uint16_t vlan_tpid;  /* its TPID, when STATUS_VLAN_TPID_VALID (else 0x8100) */
    uint16_t variant_padding;
    uint8_t padding[8];
};

/* struct tpacket2_hdr: the head of every TX frame. */
struct sluice_afpacket_v2_frame_header {
    uint32_t status;
    uint32_t length; /* tp_len: bytes to send, from SLUICE_AFPACKET_TX_DATA_OFFSET */
    uint32_t snap_length;
    uint16_t mac_offset;
    uint16_t network_offset;
    uint32_t seconds;
    uint32_t nanoseconds;
    uint16_t vlan_tci;
    uint16_t vlan_tpid;
    uint8_t padding[4];
};

/* ---- sockets and rings (afpacket.c; control path, none called per packet) ---- */

/* socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0): receives nothing until bound with a protocol.
 * Returns the fd or -errno. */
int sluice_afpacket_socket(void);
/* close(fd). 0 or -errno. */
int sluice_afpacket_close(int fd);
/* if_nametoindex(name): the index (> 0) or -errno (-ENODEV when there is no such interface). */
int sluice_afpacket_interface_index(const char *name);
/* The interface's MTU (ioctl SIOCGIFMTU on `fd`), or -errno. */
int sluice_afpacket_interface_mtu(int fd, const char *name);
/* setsockopt(PACKET_VERSION, version). 0 or -errno. */
int sluice_afpacket_set_version(int fd, int version);
/* setsockopt(PACKET_RX_RING) with a tpacket_req3 (frame count derived from the sizes). 0 or -errno. */
int sluice_afpacket_set_rx_ring(int fd, uint32_t block_size, uint32_t block_count, uint32_t frame_size,
                                uint32_t block_timeout_ms);
/* setsockopt(PACKET_TX_RING) with a tpacket_req; frames are block_size / frame_size per block.
 * 0 or -errno. */
int sluice_afpacket_set_tx_ring(int fd, uint32_t block_size, uint32_t block_count, uint32_t frame_size);
/* An int-valued SOL_PACKET option: PACKET_QDISC_BYPASS, PACKET_LOSS, PACKET_IGNORE_OUTGOING.
 * One wrapper per option, so each failure names its option. 0 or -errno. */
int sluice_afpacket_set_qdisc_bypass(int fd, int on);
int sluice_afpacket_set_loss(int fd, int on);
int sluice_afpacket_set_ignore_outgoing(int fd, int on);
/* mmap(size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE) of the socket's ring(s).
 * 0 and *map set, or -errno. */
int sluice_afpacket_map(int fd, size_t size, void **map);
/* munmap. 0 or -errno. */
int sluice_afpacket_unmap(void *map, size_t size);
/* bind() to ifindex with `protocol` (host order; 0x0003 is ETH_P_ALL, 0 receives nothing). 0 or -errno. */
int sluice_afpacket_bind(int fd, int ifindex, uint16_t protocol);
/* setsockopt(PACKET_FANOUT, group | (mode | flags) << 16). The socket must be bound. 0 or -errno. */
int sluice_afpacket_join_fanout(int fd, uint16_t group, uint16_t mode, uint16_t flags);

/* getsockopt(PACKET_STATISTICS) of a TPACKET_V3 socket. The kernel resets its counters on every
 * read, so the caller accumulates. `packets` includes `drops` (the kernel adds them). */
struct sluice_afpacket_rx_stats {
    uint32_t packets;
    uint32_t drops;
    uint32_t freeze_queue_count;
};
int sluice_afpacket_rx_statistics(int fd, struct sluice_afpacket_rx_stats *stats);
/* The same for a socket without a V3 ring (tpacket_stats; freeze_queue_count stays 0). */
int sluice_afpacket_statistics(int fd, struct sluice_afpacket_rx_stats *stats);

/* sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0): asks the kernel to send every SEND_REQUEST frame of the
 * TX ring from its position on. Returns the bytes it sent (>= 0) or -errno; -EAGAIN and -ENOBUFS mean
 * the device pushed back and the frames stay queued for the next kick. */
int sluice_afpacket_kick(int fd);
/* poll() for `events` (POLLIN = 1, POLLOUT = 4), at most timeout_ms (< 0: no limit).
 * 1 when ready, 0 on timeout, or -errno (-EINTR on a signal). */
int sluice_afpacket_poll(int fd, short events, int timeout_ms);
/* Moves the calling thread (only it) into the network namespace at `path` (/var/run/netns/NAME):
 * open, setns(CLONE_NEWNET), close. Sockets the thread makes afterwards belong to that namespace.
 * 0 or -errno. */
int sluice_afpacket_enter_netns(const char *path);
/* sysconf(_SC_PAGESIZE). */
int sluice_afpacket_page_size(void);

/* ---- RX hot path: walking retired TPACKET_V3 blocks (one consumer thread per ring) ---- */

/* Where a receiver is in its ring. Plain fields, owned by the one thread that receives. */
struct sluice_afpacket_rx_cursor {
    uint8_t *ring;          /* the mapped ring: block_count blocks of block_size bytes */
    uint32_t block_size;
    uint32_t block_count;
    uint32_t block_index;   /* the block held now, or the next one to check when none is */
    uint32_t frames_left;   /* frames of the held block not yet taken */
    uint32_t frame_offset;  /* offset of the held block's next frame from the block's start */
    uint32_t held;          /* 1 while block_index is ours (TP_STATUS_USER seen, not yet returned) */
    uint64_t blocks_taken;  /* blocks taken from the kernel so far */
};

/* One received frame, valid until the next sluice_afpacket_rx_next or rx_finish call. */
struct sluice_afpacket_frame {
    const uint8_t *data;    /* the link-layer header, snap_length bytes */
    uint32_t snap_length;
    uint32_t wire_length;
    uint64_t timestamp_ns;  /* CLOCK_REALTIME, from tp_sec and tp_nsec */
    /* The outer 802.1Q/802.1ad tag the kernel stripped (VLAN offload), to be put back after the MAC
     * addresses as libpcap does; has_vlan 0 when the frame arrived untagged or kept its tag. */
    uint16_t vlan_tci;
    uint16_t vlan_tpid;
    uint32_t has_vlan;
};

static inline struct sluice_afpacket_block_header *sluice_afpacket_rx_block(
    const struct sluice_afpacket_rx_cursor *c, uint32_t index) {
    return (struct sluice_afpacket_block_header *)(c->ring + (size_t)index * c->block_size);
}

/* True if a block is ours to read. R1: the acquire pairs with the kernel's smp_wmb() before it
 * stores TP_STATUS_USER, so the frames it wrote are visible once the status is. */
static inline int sluice_afpacket_rx_block_is_user(struct sluice_afpacket_block_header *block) {
    return (__atomic_load_n(&block->block_status, __ATOMIC_ACQUIRE) & SLUICE_AFPACKET_STATUS_USER) != 0;
}

/* Gives the held block back to the kernel and moves to the next. R2: the release orders every read
 * of the block's frames (the copies out) before the kernel can see the block free and refill it. */
static inline void sluice_afpacket_rx_release(struct sluice_afpacket_rx_cursor *c) {
    struct sluice_afpacket_block_header *block = sluice_afpacket_rx_block(c, c->block_index);
    __atomic_store_n(&block->block_status, SLUICE_AFPACKET_STATUS_KERNEL, __ATOMIC_RELEASE);
    c->held = 0;
    c->frames_left = 0;
    c->block_index = c->block_index + 1 == c->block_count ? 0 : c->block_index + 1;
}

/* True if a frame can be taken now (the held block has frames left or the next block is retired). */
static inline int sluice_afpacket_rx_ready(const struct sluice_afpacket_rx_cursor *c) {
    if (c->held && c->frames_left > 0) return 1;
    uint32_t index = c->block_index;
    if (c->held) index = index + 1 == c->block_count ? 0 : index + 1;
    return sluice_afpacket_rx_block_is_user(sluice_afpacket_rx_block(c, index));
}

/* Takes the next frame: from the held block, or from the next retired block (returning the finished
 * one first). Returns 1 and fills *frame, or 0 when the kernel has retired no further block.
 * The frame's bytes stay valid until the next call: copy them out before calling again. */
static inline int sluice_afpacket_rx_next(struct sluice_afpacket_rx_cursor *c, struct sluice_afpacket_frame *frame) {
    /* Bounded: a retired block with no frames is returned at once; at most one pass over the ring. */
    for (uint32_t turns = 0; c->frames_left == 0; turns++) {
        if (c->held) sluice_afpacket_rx_release(c);
        if (turns == c->block_count) return 0;
        struct sluice_afpacket_block_header *block = sluice_afpacket_rx_block(c, c->block_index);
        if (!sluice_afpacket_rx_block_is_user(block)) return 0;
        c->held = 1;
        c->blocks_taken++;
        c->frames_left = block->packet_count;
        c->frame_offset = block->first_frame_offset;
    }
    const uint8_t *base = c->ring + (size_t)c->block_index * c->block_size;
    const struct sluice_afpacket_v3_frame_header *header =
        (const struct sluice_afpacket_v3_frame_header *)(base + c->frame_offset);
    frame->data = (const uint8_t *)header + header->mac_offset;
    frame->snap_length = header->snap_length;
    frame->wire_length = header->wire_length;
    frame->timestamp_ns = (uint64_t)header->seconds * 1000000000u + header->nanoseconds;
    uint32_t status = header->status;
    frame->has_vlan = (status & SLUICE_AFPACKET_STATUS_VLAN_VALID) != 0;
    frame->vlan_tci = (uint16_t)header->vlan_tci;
    frame->vlan_tpid = (status & SLUICE_AFPACKET_STATUS_VLAN_TPID_VALID) ? header->vlan_tpid : 0x8100;
    c->frame_offset += header->next_offset;
    c->frames_left--;
    return 1;
}

/* Ends a burst: returns the held block if every frame in it was taken, so the kernel can refill it
 * while the receiver does other work. */
static inline void sluice_afpacket_rx_finish(struct sluice_afpacket_rx_cursor *c) {
    if (c->held && c->frames_left == 0) sluice_afpacket_rx_release(c);
}

/* ---- TX hot path: filling frames and scanning completions (one producer thread per ring) ---- */

/* Called once per completed slot by the completion scan, oldest first: `slot` is the ring slot,
 * `tag` what sluice_afpacket_tx_fill stored with it, `length` the bytes it carried and `status`
 * SLUICE_AFPACKET_STATUS_AVAILABLE (sent) or _WRONG_FORMAT (rejected by the kernel). The slot is
 * reusable once this returns. A C function pointer and context: no closure, no reference count. */
typedef void (*sluice_afpacket_tx_completion_fn)(void *context, uint32_t slot, uint32_t tag, uint32_t length,
                                                 uint32_t status);

/* A TX ring's user-side state. Plain fields, owned by the one thread that transmits.
 * `head` and `tail` run free over uint32_t and are masked on use; head - tail frames are pending. */
struct sluice_afpacket_tx_ring {
    uint8_t *ring;             /* the mapped ring: frame_count frames of frame_size bytes, contiguous */
    uint32_t *tags;            /* frame_count tags, one per slot */
    uint32_t frame_size;
    uint32_t frame_count;      /* a power of two */
    uint32_t mask;             /* frame_count - 1 */
    uint32_t data_size_max;    /* frame_size - SLUICE_AFPACKET_TX_DATA_OFFSET */
    uint32_t head;             /* next slot to fill */
    uint32_t tail;             /* oldest slot handed to the kernel and not seen complete */
};

/* What one completion scan found. */
struct sluice_afpacket_tx_scan {
    uint32_t completed;        /* slots reclaimed, sent or rejected */
    uint32_t wrong_format;     /* of those, rejected (TP_STATUS_WRONG_FORMAT) */
    uint64_t bytes;            /* bytes of the sent ones */
};

static inline struct sluice_afpacket_v2_frame_header *sluice_afpacket_tx_header(
    const struct sluice_afpacket_tx_ring *r, uint32_t slot) {
    return (struct sluice_afpacket_v2_frame_header *)(r->ring + (size_t)(slot & r->mask) * r->frame_size);
}

/* Frames that can be filled now without scanning. */
static inline uint32_t sluice_afpacket_tx_free_count(const struct sluice_afpacket_tx_ring *r) {
    return r->frame_count - (r->head - r->tail);
}

/* 1 if the newest filled frame still waits for the kernel to take it (SEND_REQUEST): a kick that
 * met a full socket buffer part-way reports success for what it took and leaves the rest. */
static inline int sluice_afpacket_tx_has_untaken(const struct sluice_afpacket_tx_ring *r) {
    if (r->head == r->tail) return 0;
    const struct sluice_afpacket_v2_frame_header *header = sluice_afpacket_tx_header(r, r->head - 1);
    return (__atomic_load_n(&header->status, __ATOMIC_ACQUIRE) & SLUICE_AFPACKET_STATUS_SEND_REQUEST) != 0;
}

/* Frames handed to the kernel and not yet seen complete. */
static inline uint32_t sluice_afpacket_tx_pending_count(const struct sluice_afpacket_tx_ring *r) {
    return r->head - r->tail;
}

/* Copies `length` bytes into the next free frame and hands it to the kernel (SEND_REQUEST); the
 * frame goes out at the next kick. Returns 1, 0 if no frame is free (scan completions first), or
 * -EMSGSIZE if length is outside SLUICE_AFPACKET_ETHERNET_HEADER_BYTES...data_size_max. */
static inline int sluice_afpacket_tx_fill(struct sluice_afpacket_tx_ring *r, const void *data, uint32_t length,
                                          uint32_t tag) {
    if (length < SLUICE_AFPACKET_ETHERNET_HEADER_BYTES || length > r->data_size_max) return -EMSGSIZE;
    if (r->head - r->tail == r->frame_count) return 0;
    struct sluice_afpacket_v2_frame_header *header = sluice_afpacket_tx_header(r, r->head);
    /* Slots between tail and head + frame_count were all seen AVAILABLE by the scan; this guards
     * the ring against a kernel that disagrees, at the cost of one load of a line we write anyway. */
    uint32_t busy = SLUICE_AFPACKET_STATUS_SEND_REQUEST | SLUICE_AFPACKET_STATUS_SENDING |
                    SLUICE_AFPACKET_STATUS_WRONG_FORMAT;  /* timestamp bits may ride on AVAILABLE */
    if (__atomic_load_n(&header->status, __ATOMIC_ACQUIRE) & busy) return 0;
    memcpy((uint8_t *)header + SLUICE_AFPACKET_TX_DATA_OFFSET, data, length);
    header->length = length;
    header->snap_length = length;
    r->tags[r->head & r->mask] = tag;
    /* T1: the frame and its length are visible before the kernel sees SEND_REQUEST. */
    __atomic_store_n(&header->status, SLUICE_AFPACKET_STATUS_SEND_REQUEST, __ATOMIC_RELEASE);
    r->head++;
    return 1;
}

/* The completion scan, the TX free-buffer path: from the oldest pending slot forwards, reclaims slots
 * the kernel finished with (AVAILABLE: sent; WRONG_FORMAT: rejected, reset to AVAILABLE here) and
 * stops at the first it still owns (SEND_REQUEST or SENDING), or after `max` slots. Calls `fn` (if not
 * NULL) once per reclaimed slot, oldest first. Fills *scan; returns scan->completed. */
static inline uint32_t sluice_afpacket_tx_complete(struct sluice_afpacket_tx_ring *r, uint32_t max,
                                                   sluice_afpacket_tx_completion_fn fn, void *context,
                                                   struct sluice_afpacket_tx_scan *scan) {
    scan->completed = 0;
    scan->wrong_format = 0;
    scan->bytes = 0;
    while (r->tail != r->head && scan->completed < max) {
        struct sluice_afpacket_v2_frame_header *header = sluice_afpacket_tx_header(r, r->tail);
        /* T2: the kernel has stopped reading the frame before we see AVAILABLE and reuse it. */
        uint32_t status = __atomic_load_n(&header->status, __ATOMIC_ACQUIRE);
        if (status & (SLUICE_AFPACKET_STATUS_SEND_REQUEST | SLUICE_AFPACKET_STATUS_SENDING)) break;
        uint32_t length = header->length;
        if (status & SLUICE_AFPACKET_STATUS_WRONG_FORMAT) {
            scan->wrong_format++;
            __atomic_store_n(&header->status, SLUICE_AFPACKET_STATUS_AVAILABLE, __ATOMIC_RELAXED);
            status = SLUICE_AFPACKET_STATUS_WRONG_FORMAT;
        } else {
            scan->bytes += length;
            status = SLUICE_AFPACKET_STATUS_AVAILABLE;
        }
        if (fn) fn(context, r->tail & r->mask, r->tags[r->tail & r->mask], length, status);
        r->tail++;
        scan->completed++;
    }
    return scan->completed;
}

#endif /* SLUICE_AFPACKET_H */
