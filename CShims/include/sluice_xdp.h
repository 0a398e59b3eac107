/*
 * Path: CShims/include/sluice_xdp.h — AF_XDP sockets (libxdp's xsk API): set-up glue and the ring
 * bursts of the hot path.
 *
 * An AF_XDP socket shares four single-producer single-consumer rings with the kernel, all indexing one
 * UMEM (a page-aligned area cut into equal frames):
 *   fill       user -> kernel  frame addresses the kernel may receive into
 *   rx         kernel -> user  descriptors (addr, len) of received frames
 *   tx         user -> kernel  descriptors of frames to send
 *   completion kernel -> user  addresses of frames the kernel has finished sending
 * An RX socket gets an XDP program on its interface (libxdp's default, which redirects every frame of
 * the bound queue into the socket's XSKMAP entry); a TX-only socket needs none.
 *
 * The ring and descriptor layouts are mirrored here (sluice_xdp_ring, sluice_xdp_desc) instead of
 * including <xdp/xsk.h>, which pulls <bpf/libbpf.h> and <linux/if_xdp.h> into every Swift file that
 * imports CShims; xdp.c checks each mirrored offset against libxdp's own structs, so the inline
 * functions below are libxdp's (xsk.h) restated on the mirror.
 *
 * Memory ordering. Producer and consumer words are shared with the kernel (net/xdp/xsk_queue.h):
 *   P1 producer: write descriptors, then store-release *producer   <- kernel load-acquire of it
 *   P2 producer: load-acquire *consumer before reusing slots        <- kernel store-release after reading
 *   C1 consumer: load-acquire *producer, then read descriptors      <- kernel store-release after writing
 *   C2 consumer: read descriptors, then store-release *consumer     -> kernel load-acquire before reuse
 *
 * Functions in xdp.c return a value >= 0 or -errno.
 */
#ifndef SLUICE_XDP_H
#define SLUICE_XDP_H

#include <stddef.h>
#include <stdint.h>

/* ---- constants (checked against <linux/if_xdp.h> and <linux/if_link.h> in xdp.c) ---- */

/* Where an RX socket's XDP program runs: in the driver (native) or on the skb path (generic). */
#define SLUICE_XDP_MODE_NATIVE 1
#define SLUICE_XDP_MODE_GENERIC 2
/* A TX-only socket: no program is attached. */
#define SLUICE_XDP_MODE_NONE 0
/* XDP_RING_NEED_WAKEUP in a ring's flags word. */
#define SLUICE_XDP_RING_NEED_WAKEUP 1u

/* ---- ring mirrors ---- */

/* struct xsk_ring_prod / xsk_ring_cons (DEFINE_XSK_RING in <xdp/xsk.h>). Owned by one thread. */
struct sluice_xdp_ring {
    uint32_t cached_prod;
    uint32_t cached_cons;
    uint32_t mask;
    uint32_t size;
    uint32_t *producer;
    uint32_t *consumer;
    void *ring;
    uint32_t *flags;
};

/* struct xdp_desc: one RX or TX descriptor. */
struct sluice_xdp_desc {
    uint64_t addr;    /* byte offset of the frame's data in the UMEM */
    uint32_t len;
    uint32_t options;
};

/* ---- set-up (xdp.c; control path, none called per packet) ---- */

/* A UMEM and the socket on it, as xdp.c made them. Opaque to Swift except for the rings and fd. */
struct sluice_xdp_socket {
    void *umem;                  /* struct xsk_umem * */
    void *xsk;                   /* struct xsk_socket * */
    uint8_t *area;               /* the UMEM: frame_count frames of frame_size bytes */
    size_t area_size;
    uint32_t frame_size;
    uint32_t frame_count;
    int fd;
    int mode;                    /* SLUICE_XDP_MODE_* actually attached */
    int netns_fd;                /* the opening thread's network namespace, for the detach at close */
    struct sluice_xdp_ring fill;
    struct sluice_xdp_ring completion;
    struct sluice_xdp_ring rx;   /* zeroed on a TX-only socket */
    struct sluice_xdp_ring tx;   /* zeroed on an RX-only socket */
};

/* Which libxdp call failed, for the caller's typed error (the errno comes back as the return value). */
#define SLUICE_XDP_STEP_IFINDEX 1   /* if_nametoindex */
#define SLUICE_XDP_STEP_MMAP 2      /* mmap of the UMEM */
#define SLUICE_XDP_STEP_UMEM 3      /* xsk_umem__create */
#define SLUICE_XDP_STEP_SOCKET 4    /* xsk_socket__create (with program attach when receiving) */

/* Maps the UMEM (anonymous, private, populated: no huge pages; mbind to `numa_node` when >= 0, a hint
 * that is ignored if it fails), registers it, and creates the socket on `ifname` queue `queue` in the
 * calling thread's network namespace. `receive` makes an RX socket: libxdp loads and attaches its
 * default redirect program in `mode` (native or generic; auto is the caller's retry) and the fill
 * ring is left empty (the caller fills it). Otherwise a TX-only socket with no program. Ring sizes
 * are powers of two. Returns 0, or -errno with *step naming the failed call; on failure nothing is
 * left allocated. */
int sluice_xdp_open(struct sluice_xdp_socket *s, const char *ifname, uint32_t queue, int receive, int mode,
                    uint32_t frame_count, uint32_t frame_size, uint32_t ring_size, int numa_node, int *step);
/* Deletes the socket (detaching the program libxdp attached for it), the UMEM and its mapping. The
 * detach goes by interface index over netlink, so when the calling thread is in another network
 * namespace than the opening one, it moves into that namespace for the delete and back after. */
void sluice_xdp_close(struct sluice_xdp_socket *s);

/* Learns, once on a fresh TX-only socket, whether this kernel puts the frames of descriptors it refuses on
 * the completion ring (6.18 does; older kernels never do). Puts one descriptor for frame 0 (60 zero
 * bytes) with `bad_option` set (an option bit no kernel defines: refused, never sent) on the TX ring,
 * kicks, and watches the completion ring for up to `rounds` rounds of 100 us. Returns 1 when frame 0
 * came back refused (the entry is taken off the ring, tx_invalid_descs one higher), 0 when the kernel
 * consumed and counted the descriptor as invalid without completing it. Neither clear: -ENOMSG when
 * frame 0 is back, -EPROTO when it may still complete (the caller must never reuse frame 0), another
 * -errno when nothing was submitted. *invalid gets tx_invalid_descs afterwards (the probe's refusal
 * included), so the caller can count from there. Blocks at most rounds * 100 us; control path only. */
int sluice_xdp_tx_learn_refused(struct sluice_xdp_socket *s, uint32_t bad_option, uint32_t rounds,
                                uint64_t *invalid);

/* getsockopt(SOL_XDP, XDP_STATISTICS): running totals kept by the kernel (never reset by reading). */
struct sluice_xdp_stats {
    uint64_t rx_dropped;             /* frames dropped for other reasons (RX ring full among them) */
    uint64_t rx_invalid_descs;
    uint64_t tx_invalid_descs;
    uint64_t rx_ring_full;
    uint64_t rx_fill_ring_empty_descs;
    uint64_t tx_ring_empty_descs;
};
int sluice_xdp_statistics(int fd, struct sluice_xdp_stats *stats);

/* sendto(fd, NULL, 0, MSG_DONTWAIT): makes the kernel transmit from the TX ring (copy mode sends a
 * bounded batch per call). 0, or -errno: -EAGAIN, -EBUSY and -ENOBUFS mean "kick again later". */
int sluice_xdp_kick_tx(int fd);
/* recvfrom(fd, NULL, 0, MSG_DONTWAIT): wakes the kernel's RX side after the fill ring was refilled
 * while it slept (XDP_USE_NEED_WAKEUP). 0 or -errno (-EAGAIN is normal). */
int sluice_xdp_kick_rx(int fd);
/* poll(POLLIN) at most timeout_ms. 1 ready, 0 timeout, -errno. */
int sluice_xdp_poll_rx(int fd, int timeout_ms);
/* Where libxdp loads its default XSK program from: $LIBXDP_OBJECT_PATH or its compiled-in directory. */
const char *sluice_xdp_object_path(void);
/* The XDP program attached to `ifname` in the calling thread's namespace, as the kernel reports it:
 * SLUICE_XDP_MODE_NATIVE / _GENERIC, 0 for none, or -errno. */
int sluice_xdp_attached_mode(const char *ifname);
/* Silences libbpf's and libxdp's stderr diagnostics for the process (errors still come back as -errno). */
void sluice_xdp_silence_library_logs(void);

/* ---- hot path: ring bursts (one thread per ring) ---- */

/* Producer side: slots free, refreshing the cached consumer only when fewer than `wanted` look free.
 * P2: the acquire pairs with the kernel's release after it consumed the entries. */
static inline uint32_t sluice_xdp_prod_free(struct sluice_xdp_ring *r, uint32_t wanted) {
    uint32_t free_entries = r->cached_cons - r->cached_prod;
    if (free_entries >= wanted) return free_entries;
    r->cached_cons = __atomic_load_n(r->consumer, __ATOMIC_ACQUIRE) + r->size;
    return r->cached_cons - r->cached_prod;
}

/* Reserves exactly n producer slots (bulk: all or nothing); returns n and the first index, or 0. */
static inline uint32_t sluice_xdp_prod_reserve(struct sluice_xdp_ring *r, uint32_t n, uint32_t *index) {
    if (sluice_xdp_prod_free(r, n) < n) return 0;
    *index = r->cached_prod;
    r->cached_prod += n;
    return n;
}

/* Hands n reserved slots to the kernel. P1: every slot written before the producer moves. */
static inline void sluice_xdp_prod_submit(struct sluice_xdp_ring *r, uint32_t n) {
    __atomic_store_n(r->producer, *r->producer + n, __ATOMIC_RELEASE);
}

/* Consumer side: takes up to n entries (burst); returns how many and the first index.
 * C1: the acquire pairs with the kernel's release after it wrote the entries. */
static inline uint32_t sluice_xdp_cons_peek(struct sluice_xdp_ring *r, uint32_t n, uint32_t *index) {
    uint32_t entries = r->cached_prod - r->cached_cons;
    if (entries == 0) {
        r->cached_prod = __atomic_load_n(r->producer, __ATOMIC_ACQUIRE);
        entries = r->cached_prod - r->cached_cons;
    }
    if (entries > n) entries = n;
    *index = r->cached_cons;
    r->cached_cons += entries;
    return entries;
}

/* Entries a consumer could take now (C1 acquire, as in peek), without taking any. */
static inline uint32_t sluice_xdp_cons_ready(const struct sluice_xdp_ring *r) {
    if (r->cached_prod != r->cached_cons) return r->cached_prod - r->cached_cons;
    return __atomic_load_n(r->producer, __ATOMIC_ACQUIRE) - r->cached_cons;
}

/* Gives n peeked entries back. C2: every read of them done before the kernel may overwrite them. */
static inline void sluice_xdp_cons_release(struct sluice_xdp_ring *r, uint32_t n) {
    __atomic_store_n(r->consumer, *r->consumer + n, __ATOMIC_RELEASE);
}

/* 1 when the kernel asks for a wakeup (sendto for TX, recvfrom for the fill ring). */
static inline int sluice_xdp_needs_wakeup(const struct sluice_xdp_ring *r) {
    return (__atomic_load_n(r->flags, __ATOMIC_RELAXED) & SLUICE_XDP_RING_NEED_WAKEUP) != 0;
}

/* Slot accessors (index masked). Fill and completion rings carry UMEM addresses; rx and tx rings
 * carry descriptors. */
static inline uint64_t *sluice_xdp_addr_at(struct sluice_xdp_ring *r, uint32_t index) {
    return &((uint64_t *)r->ring)[index & r->mask];
}
static inline struct sluice_xdp_desc *sluice_xdp_desc_at(struct sluice_xdp_ring *r, uint32_t index) {
    return &((struct sluice_xdp_desc *)r->ring)[index & r->mask];
}

/* Gives up to n frame addresses from `addrs` to the fill ring; returns how many it took (0..n). */
static inline uint32_t sluice_xdp_fill_burst(struct sluice_xdp_ring *fill, const uint64_t *addrs, uint32_t n) {
    uint32_t free_entries = sluice_xdp_prod_free(fill, n);
    if (n > free_entries) n = free_entries;
    if (n == 0) return 0;
    uint32_t index = fill->cached_prod;
    for (uint32_t i = 0; i < n; i++) *sluice_xdp_addr_at(fill, index + i) = addrs[i];
    fill->cached_prod += n;
    sluice_xdp_prod_submit(fill, n);
    return n;
}

/* Called once per completed TX frame by sluice_xdp_tx_complete, oldest first, with the frame's UMEM
 * address (the slot it came from) and the tag the transmitter stored for it. Same shape as the
 * AF_PACKET TX ring's hook argument list, so one Swift hook serves both (status is always 0: sent). */
typedef void (*sluice_xdp_tx_completion_fn)(void *context, uint32_t slot, uint32_t tag, uint32_t length,
                                            uint32_t status);

/* Entries the kernel has not yet consumed from a producer ring (tx, fill), seen with P2's acquire:
 * 0 once it took every descriptor submitted. */
static inline uint32_t sluice_xdp_prod_outstanding(const struct sluice_xdp_ring *r) {
    return r->cached_prod - __atomic_load_n(r->consumer, __ATOMIC_ACQUIRE);
}

/* Scans up to max completion entries and returns how many it took off the ring. Each entry's UMEM
 * address is checked before it is used: its frame (addr / frame_size) must be below frame_count and,
 * when in_flight is not NULL, marked in flight there (the mark is then cleared, so a frame completes
 * once). A valid frame gets fn (if not NULL) with tags[frame] and lengths[frame], and is appended to
 * free_slots; *freed gets how many were. free_slots needs room for max entries, or, with in_flight, for
 * as many as are marked there (a marked frame is appended at most once; the transmitter passes the
 * top of its free stack, whose room is exactly its in-flight count). Entries that fail the check are skipped
 * (taken - *freed of them) and never index tags, lengths or in_flight. C2 ordering via
 * sluice_xdp_cons_release. */
static inline uint32_t sluice_xdp_tx_complete(struct sluice_xdp_ring *completion, uint32_t frame_size,
                                              uint32_t frame_count, uint32_t max, const uint32_t *tags,
                                              const uint32_t *lengths, uint8_t *in_flight,
                                              sluice_xdp_tx_completion_fn fn, void *context,
                                              uint32_t *free_slots, uint32_t *freed, uint64_t *bytes) {
    uint32_t index;
    uint32_t n = sluice_xdp_cons_peek(completion, max, &index);
    uint32_t valid = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t frame = *sluice_xdp_addr_at(completion, index + i) / frame_size;
        if (frame >= frame_count) continue;
        uint32_t slot = (uint32_t)frame;
        if (in_flight) {
            if (!in_flight[slot]) continue;
            in_flight[slot] = 0;
        }
        *bytes += lengths[slot];
        if (fn) fn(context, slot, tags[slot], lengths[slot], 0);
        free_slots[valid++] = slot;
    }
    if (n) sluice_xdp_cons_release(completion, n);
    *freed = valid;
    return n;
}

#endif /* SLUICE_XDP_H */
