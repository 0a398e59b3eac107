/*
 * Path: Benchmarks/Sources/CRingHarness/include/ring_harness.h — SPSC rings between two pinned threads.
 *
 * Each ring under test is a struct ringh_variant: how to make one, and six loops of a single shape
 * (loops.h for the C rings, RingHarness/SwiftLoops.swift for the Swift wrapper; keep them in step).
 * ringh_run_pair runs two loops at once, each on its own pinned thread, and times them.
 */
#ifndef RINGH_RING_HARNESS_H
#define RINGH_RING_HARNESS_H

#include <stdint.h>

#pragma clang assume_nonnull begin

/* One thread's work. Owned by the caller and valid until ringh_run_pair returns; the loop only reads
 * it, except `mismatches`. */
struct ringh_job {
    void *_Nullable tx;          /* handle of the ring this loop enqueues to (NULL if it only dequeues) */
    void *_Nullable rx;          /* handle of the ring this loop dequeues from (NULL if it only enqueues) */
    uint64_t count;              /* items to move, or round trips to make */
    uint32_t burst;              /* items per call, 1..SLUICE_BURST_MAX; burst loops only */
    uint64_t *_Nullable buffer;  /* burst loops: `burst` slots of scratch; ping: `count` samples (TSC ticks) */
    uint64_t mismatches;         /* set by receiving loops: items out of sequence (not 0: the ring is broken) */
};

/* A loop: runs `job` to the end, spinning (never sleeping) while its ring is full or empty. */
typedef void (*ringh_loop_fn)(struct ringh_job *job);

/* One ring implementation under test. */
struct ringh_variant {
    /* Makes a ring holding `capacity` items (a power of two; rte_ring holds one fewer) and sets the
     * handles its producer and consumer loops take. 0, or -errno (nothing to destroy). */
    int (*create)(uint32_t capacity, void *_Nullable *_Nonnull tx, void *_Nullable *_Nonnull rx);
    /* Frees what create made. */
    void (*destroy)(void *tx, void *rx);
    ringh_loop_fn produce_single;  /* sends 0, 1, ... count-1 on tx, one item per call */
    ringh_loop_fn consume_single;  /* takes count items from rx, one per call, checking the sequence */
    ringh_loop_fn produce_burst;   /* sends 0, 1, ... count-1 on tx, `burst` items per call */
    ringh_loop_fn consume_burst;   /* takes count items from rx, up to `burst` per call, checking them */
    ringh_loop_fn ping;            /* count rounds: one item out on tx, back on rx; ticks per round trip */
    ringh_loop_fn pong;            /* count rounds: echoes one item from rx to tx */
};

extern const struct ringh_variant ringh_sluice_c128; /* sluice_spsc.h called from C, ends 128 bytes apart */
extern const struct ringh_variant ringh_sluice_c64;  /* the same ring rebuilt with SLUICE_SPSC_ALIGN 64 */
extern const struct ringh_variant ringh_rte;         /* DPDK's rte_ring, SP/SC, without the EAL */

/* Runs first(first_job) on first_cpu and second(second_job) on second_cpu, each on a new thread created
 * pinned there, released together once both are up. With realtime_priority > 0 both run under
 * SCHED_FIFO at that priority, so other work on the machine cannot preempt them (the kernel's RT
 * throttling still leaves it 5%). Blocks until both return. Returns nanoseconds (CLOCK_MONOTONIC) from
 * the earlier start to the later end, or -errno: a thread could not be made (then neither loop ran)
 * or could not take the priority (then the loops ran at normal priority). */
int64_t ringh_run_pair(ringh_loop_fn first, struct ringh_job *first_job, int first_cpu,
                       ringh_loop_fn second, struct ringh_job *second_job, int second_cpu, int realtime_priority);

/* Whether this process may use SCHED_FIFO at `priority`: tries it on the calling thread and restores
 * the thread's policy. 0, or -errno (-EPERM without CAP_SYS_NICE). */
int ringh_realtime_probe(int priority);

#pragma clang assume_nonnull end

#endif /* RINGH_RING_HARNESS_H */
