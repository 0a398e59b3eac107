/*
 * Path: Benchmarks/Sources/CRingHarness/loops.h — the benchmark loops, one shape for every C ring.
 *
 * Included once per variant (sluice_c128.c, sluice_c64.c, rte.c), after it defines:
 *   RINGH_RING                                   the ring type behind the handles
 *   RINGH_ENQUEUE_BURST(r, items, n, free_space) items taken (0..n); writes *free_space
 *   RINGH_DEQUEUE_BURST(r, items, n, available)  items given (0..n); writes *available
 *   RINGH_ENQUEUE(r, item)                       1 if taken, 0 if full
 *   RINGH_DEQUEUE(r, item_pointer)               1 if given, 0 if empty
 *   RINGH_VARIANT                                name of the struct ringh_variant to define
 * and the static functions ringh_create and ringh_destroy for that variant's struct.
 * Sources/RingHarness/SwiftLoops.swift has the same loops over the Swift wrapper: change both together.
 */
#include "ring_harness.h"
#include "sluice_sys.h"

static void ringh_produce_single(struct ringh_job *job) {
    RINGH_RING *r = job->tx;
    uint64_t count = job->count;
    uint64_t next = 0;
    while (next < count) next += RINGH_ENQUEUE(r, next);
}

static void ringh_consume_single(struct ringh_job *job) {
    RINGH_RING *r = job->rx;
    uint64_t count = job->count;
    uint64_t expected = 0;
    uint64_t mismatches = 0;
    while (expected < count) {
        uint64_t item;
        if (RINGH_DEQUEUE(r, &item)) {
            mismatches += item != expected;
            expected++;
        }
    }
    job->mismatches = mismatches;
}

static void ringh_produce_burst(struct ringh_job *job) {
    RINGH_RING *r = job->tx;
    uint64_t count = job->count;
    uint32_t burst = job->burst;
    uint64_t *items = job->buffer;
    uint64_t next = 0;
    while (next < count) {
        uint32_t n = count - next < burst ? (uint32_t)(count - next) : burst;
        for (uint32_t i = 0; i < n; i++) items[i] = next + i;
        uint32_t free_space;
        next += RINGH_ENQUEUE_BURST(r, items, n, &free_space);
    }
}

static void ringh_consume_burst(struct ringh_job *job) {
    RINGH_RING *r = job->rx;
    uint64_t count = job->count;
    uint32_t burst = job->burst;
    uint64_t *items = job->buffer;
    uint64_t expected = 0;
    uint64_t mismatches = 0;
    while (expected < count) {
        uint32_t available;
        uint32_t n = RINGH_DEQUEUE_BURST(r, items, burst, &available);
        for (uint32_t i = 0; i < n; i++) mismatches += items[i] != expected + i;
        expected += n;
    }
    job->mismatches = mismatches;
}

static void ringh_ping(struct ringh_job *job) {
    RINGH_RING *tx = job->tx;
    RINGH_RING *rx = job->rx;
    uint64_t count = job->count;
    uint64_t *samples = job->buffer;
    uint64_t mismatches = 0;
    for (uint64_t round = 0; round < count; round++) {
        uint64_t start = sluice_cycles();
        while (!RINGH_ENQUEUE(tx, round)) {}
        uint64_t reply;
        while (!RINGH_DEQUEUE(rx, &reply)) {}
        samples[round] = sluice_cycles() - start;
        mismatches += reply != round;
    }
    job->mismatches = mismatches;
}

static void ringh_pong(struct ringh_job *job) {
    RINGH_RING *tx = job->tx;
    RINGH_RING *rx = job->rx;
    uint64_t count = job->count;
    for (uint64_t round = 0; round < count; round++) {
        uint64_t item;
        while (!RINGH_DEQUEUE(rx, &item)) {}
        while (!RINGH_ENQUEUE(tx, item)) {}
    }
}

const struct ringh_variant RINGH_VARIANT = {
    .create = ringh_create,
    .destroy = ringh_destroy,
    .produce_single = ringh_produce_single,
    .consume_single = ringh_consume_single,
    .produce_burst = ringh_produce_burst,
    .consume_burst = ringh_consume_burst,
    .ping = ringh_ping,
    .pong = ringh_pong,
};
