/* Path: CShims/mpmc.c — the cold half of the MPMC free list: creation and destruction. */
#include "sluice_mpmc.h"

#include <stdlib.h>

struct sluice_mpmc *sluice_mpmc_new(uint32_t size) {
    if (size < 2 || (size & (size - 1)) != 0) return NULL;
    void *memory = NULL;
    if (posix_memalign(&memory, 64, sizeof(struct sluice_mpmc)) != 0) return NULL;
    struct sluice_mpmc *q = memory;
    q->cells = aligned_alloc(64, ((size_t)size * sizeof(struct sluice_mpmc_cell) + 63) & ~(size_t)63);
    if (q->cells == NULL) {
        free(q);
        return NULL;
    }
    q->mask = size - 1;
    for (uint32_t i = 0; i < size; i++) atomic_init(&q->cells[i].seq, i);
    atomic_init(&q->enqueue_pos, 0);
    atomic_init(&q->dequeue_pos, 0);
    return q;
}

void sluice_mpmc_delete(struct sluice_mpmc *q) {
    if (q == NULL) return;
    free(q->cells);
    free(q);
}
