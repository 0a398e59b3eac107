/*
 * Path: Benchmarks/Sources/CRingHarness/sluice_variant.h — Sluice's C ring as a harness variant.
 *
 * Included by sluice_c128.c and sluice_c64.c after they define SLUICE_SPSC_ALIGN and RINGH_VARIANT.
 * The ring's hot half is static inline, so each file compiles its own copy at its own alignment. Its
 * cold half (CShims/spsc.c) is built once, at the default 128, so both files make rings with
 * ringh_sluice_new below, which lays them out as spsc.c does at the file's alignment; at 128 each new
 * ring's header is checked against sluice_spsc_init's, so the two cannot drift apart unnoticed.
 */
#include "sluice_spsc.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define RINGH_RING struct sluice_spsc
#define RINGH_ENQUEUE_BURST(r, items, n, free_space) sluice_spsc_enqueue_burst(r, items, n, free_space)
#define RINGH_DEQUEUE_BURST(r, items, n, available) sluice_spsc_dequeue_burst(r, items, n, available)
#define RINGH_ENQUEUE(r, item) sluice_spsc_enqueue(r, item)
#define RINGH_DEQUEUE(r, item_pointer) sluice_spsc_dequeue(r, item_pointer)

/* A ring of `capacity` items (a power of two up to SLUICE_SPSC_SIZE_MAX) at this file's alignment, as
 * sluice_spsc_memsize and sluice_spsc_init make one without SLUICE_SPSC_F_EXACT. NULL if invalid or
 * out of memory. */
static struct sluice_spsc *ringh_sluice_new(uint32_t capacity) {
    if (capacity == 0 || capacity > SLUICE_SPSC_SIZE_MAX || (capacity & (capacity - 1)) != 0) return NULL;
    size_t bytes = sizeof(struct sluice_spsc) + (size_t)capacity * sizeof(uint64_t);
    bytes = (bytes + SLUICE_SPSC_ALIGN - 1) & ~((size_t)SLUICE_SPSC_ALIGN - 1);
    struct sluice_spsc *r = aligned_alloc(SLUICE_SPSC_ALIGN, bytes);
    if (r == NULL) return NULL;
    memset(r, 0, sizeof(*r));
    r->size = capacity;
    r->mask = capacity - 1;
    r->capacity = capacity;
    r->flags = 0;
    return r;
}

/* Both handles are the ring: its two ends live inside it. */
static int ringh_create(uint32_t capacity, void **tx, void **rx) {
    struct sluice_spsc *r = ringh_sluice_new(capacity);
    if (r == NULL) return -EINVAL;
#if SLUICE_SPSC_ALIGN == 128
    /* The layout CShims was built with: the header must be byte for byte what sluice_spsc_init makes. */
    _Alignas(SLUICE_SPSC_ALIGN) struct sluice_spsc reference;
    if (sluice_spsc_init(&reference, capacity, 0) != 0 || memcmp(&reference, r, sizeof(reference)) != 0) {
        free(r);
        return -EPROTO;
    }
#endif
    *tx = r;
    *rx = r;
    return 0;
}

static void ringh_destroy(void *tx, void *rx) {
    (void)rx;
    free(tx);
}

#include "loops.h"
