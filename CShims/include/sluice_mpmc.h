/*
 * Path: CShims/include/sluice_mpmc.h — bounded multi-producer/multi-consumer queue of indices.
 *
 * The buffer pool's free list: any worker may allocate and any may free. Dmitry Vyukov's bounded
 * MPMC queue: each cell carries a sequence number telling whose turn it is, so producers and
 * consumers claim positions with one CAS and never touch the same cell at once.
 *   E1 enqueuer: load-acquire cell.seq == pos (cell is free), CAS enqueue_pos, write value,
 *      store-release cell.seq = pos + 1                      -> pairs with D1
 *   D1 dequeuer: load-acquire cell.seq == pos + 1 (value written), CAS dequeue_pos, read value,
 *      store-release cell.seq = pos + size                   -> pairs with E1 of the next lap
 * A caveat of the design: a dequeuer stalled between its CAS and its release keeps its cell busy, so
 * an enqueue reaching that cell one lap later reports full although other cells are free (and a
 * stalled enqueuer makes a dequeue report empty). Callers that know the queue cannot be full (the
 * pool: more cells than buffers) retry; see BufferPool.freeIndex.
 */
#ifndef SLUICE_MPMC_H
#define SLUICE_MPMC_H

#include <stdatomic.h>
#include <stdint.h>

struct sluice_mpmc_cell {
    _Atomic uint64_t seq;
    uint64_t value;
};

struct sluice_mpmc {
    _Alignas(64) uint64_t mask;
    struct sluice_mpmc_cell *cells;
    _Alignas(64) _Atomic uint64_t enqueue_pos;
    _Alignas(64) _Atomic uint64_t dequeue_pos;
};

/* A queue of `size` cells (a power of two), empty; NULL on failure or a bad size. */
struct sluice_mpmc *sluice_mpmc_new(uint32_t size);
void sluice_mpmc_delete(struct sluice_mpmc *q);

/* Any thread. Adds value; returns 1, or 0 if the queue is full. */
static inline int sluice_mpmc_enqueue(struct sluice_mpmc *q, uint64_t value) {
    uint64_t pos = atomic_load_explicit(&q->enqueue_pos, memory_order_relaxed);
    struct sluice_mpmc_cell *cell;
    for (;;) {
        cell = &q->cells[pos & q->mask];
        /* E1: acquire pairs with the release of the dequeuer that last emptied this cell. */
        uint64_t seq = atomic_load_explicit(&cell->seq, memory_order_acquire);
        int64_t diff = (int64_t)(seq - pos);
        if (diff == 0) {
            if (atomic_compare_exchange_weak_explicit(&q->enqueue_pos, &pos, pos + 1, memory_order_relaxed,
                                                      memory_order_relaxed))
                break;
        } else if (diff < 0) {
            return 0; /* full: the cell still holds last lap's value */
        } else {
            pos = atomic_load_explicit(&q->enqueue_pos, memory_order_relaxed);
        }
    }
    cell->value = value;
    /* E1: release publishes value; pairs with the dequeuer's acquire (D1). */
    atomic_store_explicit(&cell->seq, pos + 1, memory_order_release);
    return 1;
}

/* Any thread. Takes one value into *value; returns 1, or 0 if the queue is empty. */
static inline int sluice_mpmc_dequeue(struct sluice_mpmc *q, uint64_t *value) {
    uint64_t pos = atomic_load_explicit(&q->dequeue_pos, memory_order_relaxed);
    struct sluice_mpmc_cell *cell;
    for (;;) {
        cell = &q->cells[pos & q->mask];
        /* D1: acquire pairs with the enqueuer's release (E1): value is written. */
        uint64_t seq = atomic_load_explicit(&cell->seq, memory_order_acquire);
        int64_t diff = (int64_t)(seq - (pos + 1));
        if (diff == 0) {
            if (atomic_compare_exchange_weak_explicit(&q->dequeue_pos, &pos, pos + 1, memory_order_relaxed,
                                                      memory_order_relaxed))
                break;
        } else if (diff < 0) {
            return 0; /* empty */
        } else {
            pos = atomic_load_explicit(&q->dequeue_pos, memory_order_relaxed);
        }
    }
    *value = cell->value;
    /* D1: release hands the cell to the enqueuer one lap later. */
    atomic_store_explicit(&cell->seq, pos + q->mask + 1, memory_order_release);
    return 1;
}

/* Any thread. Values queued now; a snapshot. */
static inline uint64_t sluice_mpmc_count(struct sluice_mpmc *q) {
    uint64_t dequeued = atomic_load_explicit(&q->dequeue_pos, memory_order_acquire);
    uint64_t enqueued = atomic_load_explicit(&q->enqueue_pos, memory_order_acquire);
    return enqueued >= dequeued ? enqueued - dequeued : 0;
}

#endif /* SLUICE_MPMC_H */
