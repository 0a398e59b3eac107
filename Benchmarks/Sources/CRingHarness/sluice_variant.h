/*
 * Path: Benchmarks/Sources/CRingHarness/sluice_variant.h — Sluice's C ring as a harness variant.
 *
 * Included by sluice_c128.c and sluice_c64.c after they define SLUICE_SPSC_ALIGN, RINGH_VARIANT, and
 * new names for sluice_spsc_memsize and sluice_spsc_init. The ring's cold half (CShims/spsc.c) is built
 * into each file under those names because its sizes and offsets depend on SLUICE_SPSC_ALIGN; the hot
 * half is static inline, so each file gets its own copy at its own alignment.
 */
#include <errno.h>
#include <stdlib.h>

#include "spsc.c"

#define RINGH_RING struct sluice_spsc
#define RINGH_ENQUEUE_BURST(r, items, n, free_space) sluice_spsc_enqueue_burst(r, items, n, free_space)
#define RINGH_DEQUEUE_BURST(r, items, n, available) sluice_spsc_dequeue_burst(r, items, n, available)
#define RINGH_ENQUEUE(r, item) sluice_spsc_enqueue(r, item)
#define RINGH_DEQUEUE(r, item_pointer) sluice_spsc_dequeue(r, item_pointer)

/* Both handles are the ring: its two ends live inside it. */
static int ringh_create(uint32_t capacity, void **tx, void **rx) {
    size_t bytes = sluice_spsc_memsize(capacity, 0);
    if (bytes == 0) return -EINVAL;
    struct sluice_spsc *r = aligned_alloc(SLUICE_SPSC_ALIGN, bytes); /* memsize is a multiple of it */
    if (r == NULL) return -ENOMEM;
    int rc = sluice_spsc_init(r, capacity, 0);
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
