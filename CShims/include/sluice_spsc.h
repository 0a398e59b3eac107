/*
 * Path: CShims/include/sluice_spsc.h — the single-producer/single-consumer ring, hot path.
 *
 * A bounded FIFO of 64-bit items (buffer indices, pointers, timestamps) between exactly one producer
 * thread and exactly one consumer thread. Lock-free and wait-free: no call blocks, loops or allocates.
 *
 * Layout (DPDK lib/ring, with each side caching the other's index as in Folly's ProducerConsumerQueue):
 *   - a read-only line: size, mask, capacity;
 *   - the producer's line: `head` (published, next slot to write) and `cached_tail` (private copy of
 *     the consumer's index, refreshed only when the ring looks full);
 *   - the consumer's line: `tail` (published, next slot to read) and `cached_head`;
 *   - the slots.
 * Indices run free over uint32_t and are masked on use, so all `size` slots are usable and
 * `head - tail` is the occupancy even across wraparound (size <= 2^31).
 *
 * Each side's line is SLUICE_SPSC_ALIGN bytes apart from the other. 128 keeps the two ends out of
 * the same adjacent-line-prefetch pair on x86; docs/BENCHMARKS.md has the 64 vs 128 measurement.
 *
 * Memory ordering (C11), each release paired with the acquire on the other side:
 *   P1 producer stores items, then store-release prod.head   -> pairs with C1
 *   C1 consumer load-acquire prod.head, then reads items     <- pairs with P1
 *   C2 consumer reads items, then store-release cons.tail    -> pairs with P2
 *   P2 producer load-acquire cons.tail, then overwrites slots <- pairs with C2
 * Each side loads its own index relaxed: only it ever writes it.
 */
#ifndef SLUICE_SPSC_H
#define SLUICE_SPSC_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define SLUICE_CACHE_LINE 64
#ifndef SLUICE_SPSC_ALIGN
#define SLUICE_SPSC_ALIGN 128
#endif

/* Largest ring (slots) and largest burst; mirrored by Limits in SluiceCore and checked by a test. */
#define SLUICE_SPSC_SIZE_MAX (1u << 20)
#define SLUICE_BURST_MAX 256u

/* sluice_spsc_init flags. EXACT: capacity is the requested count, slots round up to a power of two. */
#define SLUICE_SPSC_F_EXACT 1u

struct sluice_spsc_prod {
    _Alignas(SLUICE_SPSC_ALIGN) _Atomic uint32_t head; /* written by producer only */
    uint32_t cached_tail;                              /* producer-private */
};

struct sluice_spsc_cons {
    _Alignas(SLUICE_SPSC_ALIGN) _Atomic uint32_t tail; /* written by consumer only */
    uint32_t cached_head;                              /* consumer-private */
};

struct sluice_spsc {
    _Alignas(SLUICE_SPSC_ALIGN) uint32_t size; /* slots: a power of two */
    uint32_t mask;                              /* size - 1 */
    uint32_t capacity;                          /* items that fit: size, or the exact count */
    uint32_t flags;
    struct sluice_spsc_prod prod;
    struct sluice_spsc_cons cons;
    /* The slots follow the struct (sizeof is a multiple of SLUICE_SPSC_ALIGN): see sluice_spsc_slots_. */
};

_Static_assert(_Alignof(struct sluice_spsc_prod) == SLUICE_SPSC_ALIGN, "each ring end owns its line");
_Static_assert(_Alignof(struct sluice_spsc_cons) == SLUICE_SPSC_ALIGN, "each ring end owns its line");
_Static_assert(offsetof(struct sluice_spsc, cons) - offsetof(struct sluice_spsc, prod) >= SLUICE_SPSC_ALIGN,
               "producer and consumer indices are a full separation apart");
_Static_assert(SLUICE_SPSC_ALIGN % SLUICE_CACHE_LINE == 0, "separation is whole cache lines");
_Static_assert(sizeof(struct sluice_spsc) % SLUICE_SPSC_ALIGN == 0, "slots start on their own line");

/* Bytes to allocate (aligned to SLUICE_SPSC_ALIGN) for a ring of `count` items; 0 if count is invalid.
 * Without EXACT, count must be a power of two. */
size_t sluice_spsc_memsize(uint32_t count, uint32_t flags);
/* Initialises `r` in memory of sluice_spsc_memsize(count, flags) bytes. Returns 0 or -EINVAL. */
int sluice_spsc_init(struct sluice_spsc *r, uint32_t count, uint32_t flags);
/* Test seam: moves both indices of an empty ring, which no thread is using, to `index`, so tests can
 * cross the uint32_t wrap without pushing 4 billion items. Returns 0, or -EBUSY if not empty. */
int sluice_spsc_debug_set_index(struct sluice_spsc *r, uint32_t index);

/* Any thread. Items the ring holds when full (constant after init). Swift sees the ring as an opaque
 * pointer (over-aligned records are not imported), so it reads fields through functions like this. */
static inline uint32_t sluice_spsc_capacity(const struct sluice_spsc *r) { return r->capacity; }

/* The slot array, placed right after the header (no flexible array member: Swift cannot import one). */
static inline uint64_t *sluice_spsc_slots_(const struct sluice_spsc *r) { return (uint64_t *)(uintptr_t)(r + 1); }

static inline uint32_t sluice_spsc_min_(uint32_t a, uint32_t b) { return a < b ? a : b; }

/* Copies n items into the slots starting at index `at`, wrapping once at most. */
static inline void sluice_spsc_copy_in_(struct sluice_spsc *r, uint32_t at, const uint64_t *items, uint32_t n) {
    uint32_t index = at & r->mask;
    uint32_t first = sluice_spsc_min_(n, r->size - index);
    uint64_t *restrict slots = sluice_spsc_slots_(r);
    for (uint32_t i = 0; i < first; i++) slots[index + i] = items[i];
    for (uint32_t i = first; i < n; i++) slots[i - first] = items[i];
}

/* Copies n items out of the slots starting at index `at`, wrapping once at most. */
static inline void sluice_spsc_copy_out_(const struct sluice_spsc *r, uint32_t at, uint64_t *items, uint32_t n) {
    uint32_t index = at & r->mask;
    uint32_t first = sluice_spsc_min_(n, r->size - index);
    const uint64_t *restrict slots = sluice_spsc_slots_(r);
    for (uint32_t i = 0; i < first; i++) items[i] = slots[index + i];
    for (uint32_t i = first; i < n; i++) items[i] = slots[i - first];
}

/* Producer side only. Free slots as the producer sees them, refreshing its cached tail if fewer than
 * `want` look free. Never more than the truth: the consumer only ever frees more. */
static inline uint32_t sluice_spsc_producer_free_(struct sluice_spsc *r, uint32_t head, uint32_t want) {
    uint32_t free = r->capacity - (head - r->prod.cached_tail);
    if (free < want) {
        /* P2: acquire pairs with the consumer's release of cons.tail (C2): its reads of those slots are done. */
        r->prod.cached_tail = atomic_load_explicit(&r->cons.tail, memory_order_acquire);
        free = r->capacity - (head - r->prod.cached_tail);
    }
    return free;
}

/* Consumer side only. Items available as the consumer sees them, refreshing its cached head if fewer
 * than `want` are known. */
static inline uint32_t sluice_spsc_consumer_avail_(struct sluice_spsc *r, uint32_t tail, uint32_t want) {
    uint32_t avail = r->cons.cached_head - tail;
    if (avail < want) {
        /* C1: acquire pairs with the producer's release of prod.head (P1): those slots are written. */
        r->cons.cached_head = atomic_load_explicit(&r->prod.head, memory_order_acquire);
        avail = r->cons.cached_head - tail;
    }
    return avail;
}

/* Producer side only. Adds up to n items (best effort); returns how many (0..n).
 * *free_space, if not NULL, gets the free slots left after the call as this producer sees them: a
 * lower bound (the consumer may have freed more since the cached tail was refreshed). */
static inline uint32_t sluice_spsc_enqueue_burst(struct sluice_spsc *r, const uint64_t *items, uint32_t n,
                                                 uint32_t *free_space) {
    uint32_t head = atomic_load_explicit(&r->prod.head, memory_order_relaxed); /* ours alone */
    uint32_t free = sluice_spsc_producer_free_(r, head, n);
    n = sluice_spsc_min_(n, free);
    if (n != 0) {
        sluice_spsc_copy_in_(r, head, items, n);
        /* P1: release publishes the items written above; pairs with the consumer's acquire (C1). */
        atomic_store_explicit(&r->prod.head, head + n, memory_order_release);
    }
    if (free_space != NULL) *free_space = free - n;
    return n;
}

/* Producer side only. Adds all n items or none; returns n or 0. *free_space as for burst. */
static inline uint32_t sluice_spsc_enqueue_bulk(struct sluice_spsc *r, const uint64_t *items, uint32_t n,
                                                uint32_t *free_space) {
    uint32_t head = atomic_load_explicit(&r->prod.head, memory_order_relaxed);
    uint32_t free = sluice_spsc_producer_free_(r, head, n);
    if (free < n) {
        if (free_space != NULL) *free_space = free;
        return 0;
    }
    sluice_spsc_copy_in_(r, head, items, n);
    /* P1: as in enqueue_burst. */
    atomic_store_explicit(&r->prod.head, head + n, memory_order_release);
    if (free_space != NULL) *free_space = free - n;
    return n;
}

/* Producer side only. Adds one item; returns 1, or 0 if the ring is full. */
static inline uint32_t sluice_spsc_enqueue(struct sluice_spsc *r, uint64_t item) {
    uint32_t head = atomic_load_explicit(&r->prod.head, memory_order_relaxed);
    if (sluice_spsc_producer_free_(r, head, 1) == 0) return 0;
    sluice_spsc_slots_(r)[head & r->mask] = item;
    /* P1: as in enqueue_burst. */
    atomic_store_explicit(&r->prod.head, head + 1, memory_order_release);
    return 1;
}

/* Producer side only. Free slots, exact at the moment of the call (refreshes the cached tail). */
static inline uint32_t sluice_spsc_free_count(struct sluice_spsc *r) {
    uint32_t head = atomic_load_explicit(&r->prod.head, memory_order_relaxed);
    return sluice_spsc_producer_free_(r, head, r->capacity);
}

/* Producer side only. Free slots, reading the consumer's index only if fewer than `want` look free:
 * no cross-core traffic while there is room, exact when it matters. */
static inline uint32_t sluice_spsc_free_count_wanting(struct sluice_spsc *r, uint32_t want) {
    uint32_t head = atomic_load_explicit(&r->prod.head, memory_order_relaxed);
    return sluice_spsc_producer_free_(r, head, want);
}

/* Consumer side only. Takes up to n items (best effort); returns how many (0..n).
 * *available, if not NULL, gets how many items are left after the call as this consumer sees them:
 * a lower bound (the producer may have added more). */
static inline uint32_t sluice_spsc_dequeue_burst(struct sluice_spsc *r, uint64_t *items, uint32_t n,
                                                 uint32_t *available) {
    uint32_t tail = atomic_load_explicit(&r->cons.tail, memory_order_relaxed); /* ours alone */
    uint32_t avail = sluice_spsc_consumer_avail_(r, tail, n);
    n = sluice_spsc_min_(n, avail);
    if (n != 0) {
        sluice_spsc_copy_out_(r, tail, items, n);
        /* C2: release orders the reads above before the slots are handed back; pairs with P2. */
        atomic_store_explicit(&r->cons.tail, tail + n, memory_order_release);
    }
    if (available != NULL) *available = avail - n;
    return n;
}

/* Consumer side only. Takes all n items or none; returns n or 0. *available as for burst. */
static inline uint32_t sluice_spsc_dequeue_bulk(struct sluice_spsc *r, uint64_t *items, uint32_t n,
                                                uint32_t *available) {
    uint32_t tail = atomic_load_explicit(&r->cons.tail, memory_order_relaxed);
    uint32_t avail = sluice_spsc_consumer_avail_(r, tail, n);
    if (avail < n) {
        if (available != NULL) *available = avail;
        return 0;
    }
    sluice_spsc_copy_out_(r, tail, items, n);
    /* C2: as in dequeue_burst. */
    atomic_store_explicit(&r->cons.tail, tail + n, memory_order_release);
    if (available != NULL) *available = avail - n;
    return n;
}

/* Consumer side only. Takes one item into *item; returns 1, or 0 if the ring is empty. */
static inline uint32_t sluice_spsc_dequeue(struct sluice_spsc *r, uint64_t *item) {
    uint32_t tail = atomic_load_explicit(&r->cons.tail, memory_order_relaxed);
    if (sluice_spsc_consumer_avail_(r, tail, 1) == 0) return 0;
    *item = sluice_spsc_slots_(r)[tail & r->mask];
    /* C2: as in dequeue_burst. */
    atomic_store_explicit(&r->cons.tail, tail + 1, memory_order_release);
    return 1;
}

/* Consumer side only. Copies up to n items from the front without taking them; returns how many. */
static inline uint32_t sluice_spsc_peek_burst(struct sluice_spsc *r, uint64_t *items, uint32_t n) {
    uint32_t tail = atomic_load_explicit(&r->cons.tail, memory_order_relaxed);
    n = sluice_spsc_min_(n, sluice_spsc_consumer_avail_(r, tail, n));
    if (n != 0) sluice_spsc_copy_out_(r, tail, items, n);
    return n;
}

/* Consumer side only. Items available, exact at the moment of the call (refreshes the cached head). */
static inline uint32_t sluice_spsc_available_count(struct sluice_spsc *r) {
    uint32_t tail = atomic_load_explicit(&r->cons.tail, memory_order_relaxed);
    return sluice_spsc_consumer_avail_(r, tail, r->capacity);
}

/* Any thread. Occupancy; a snapshot that may be stale by the time it returns, never above capacity.
 * Reads tail before head so the difference cannot go negative (head only grows past tail). */
static inline uint32_t sluice_spsc_count(const struct sluice_spsc *r) {
    uint32_t tail = atomic_load_explicit(&r->cons.tail, memory_order_acquire);
    uint32_t head = atomic_load_explicit(&r->prod.head, memory_order_acquire);
    uint32_t count = head - tail;
    return count > r->capacity ? r->capacity : count;
}

/* Any thread. True when nothing is queued at the moment of the call. Used by idle prediction. */
static inline int sluice_spsc_is_empty(const struct sluice_spsc *r) { return sluice_spsc_count(r) == 0; }

#endif /* SLUICE_SPSC_H */
