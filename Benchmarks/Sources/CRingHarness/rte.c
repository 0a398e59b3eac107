/*
 * Path: Benchmarks/Sources/CRingHarness/rte.c — DPDK's rte_ring (22.11) as the anchor variant.
 *
 * Made with rte_ring_get_memsize + rte_ring_init, which need no EAL, with RING_F_SP_ENQ|RING_F_SC_DEQ,
 * and driven through the explicit single-producer/single-consumer calls (rte_ring_sp_* / _sc_*), the
 * fastest path a DPDK user has. Items are 8-byte values carried as void *. Without RING_F_EXACT_SZ a
 * ring of `capacity` slots holds capacity - 1 items.
 */
#include <rte_config.h>
#include <rte_ring.h>

#include <errno.h>
#include <stdlib.h>

#define RINGH_RING struct rte_ring
#define RINGH_ENQUEUE_BURST(r, items, n, free_space) \
    rte_ring_sp_enqueue_burst(r, (void *const *)(items), n, free_space)
#define RINGH_DEQUEUE_BURST(r, items, n, available) rte_ring_sc_dequeue_burst(r, (void **)(items), n, available)
#define RINGH_ENQUEUE(r, item) (rte_ring_sp_enqueue(r, (void *)(uintptr_t)(item)) == 0)
#define RINGH_DEQUEUE(r, item_pointer) ringh_rte_dequeue(r, item_pointer)
#define RINGH_VARIANT ringh_rte

/* rte_ring_sc_dequeue hands back a void *; the loops want the 8-byte value. */
static inline int ringh_rte_dequeue(struct rte_ring *r, uint64_t *item) {
    void *object;
    if (rte_ring_sc_dequeue(r, &object) != 0) return 0;
    *item = (uintptr_t)object;
    return 1;
}

/* Both handles are the ring. Aligned to 128 like Sluice's, above rte_ring's own cache-line alignment. */
static int ringh_create(uint32_t capacity, void **tx, void **rx) {
    ssize_t bytes = rte_ring_get_memsize(capacity);
    if (bytes < 0) return (int)bytes;
    struct rte_ring *r = aligned_alloc(128, ((size_t)bytes + 127) & ~(size_t)127);
    if (r == NULL) return -ENOMEM;
    int rc = rte_ring_init(r, "ringh", capacity, RING_F_SP_ENQ | RING_F_SC_DEQ);
    if (rc != 0) {
        free(r);
        return rc;
    }
    *tx = r;
    *rx = r;
    return 0;
}

static void ringh_destroy(void *tx, void *rx) {
    (void)rx;
    free(tx);
}

#include "loops.h"
