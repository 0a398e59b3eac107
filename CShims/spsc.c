/* Path: CShims/spsc.c — the cold half of the SPSC ring: sizing and initialisation. */
#include "sluice_spsc.h"

#include <errno.h>
#include <string.h>

static uint32_t sluice_spsc_size_for(uint32_t count, uint32_t flags) {
    if (count == 0 || count > SLUICE_SPSC_SIZE_MAX) return 0;
    if ((flags & SLUICE_SPSC_F_EXACT) == 0) return (count & (count - 1)) == 0 ? count : 0;
    uint32_t size = 1;
    while (size < count) size <<= 1;
    return size;
}

size_t sluice_spsc_memsize(uint32_t count, uint32_t flags) {
    uint32_t size = sluice_spsc_size_for(count, flags);
    if (size == 0) return 0;
    size_t bytes = sizeof(struct sluice_spsc) + (size_t)size * sizeof(uint64_t);
    return (bytes + SLUICE_SPSC_ALIGN - 1) & ~((size_t)SLUICE_SPSC_ALIGN - 1);
}

int sluice_spsc_init(struct sluice_spsc *r, uint32_t count, uint32_t flags) {
    uint32_t size = sluice_spsc_size_for(count, flags);
    if (size == 0 || r == NULL) return -EINVAL;
    memset(r, 0, sizeof(*r));
    r->size = size;
    r->mask = size - 1;
    r->capacity = count;
    r->flags = flags;
    atomic_init(&r->prod.head, 0);
    atomic_init(&r->cons.tail, 0);
    return 0;
}

int sluice_spsc_debug_set_index(struct sluice_spsc *r, uint32_t index) {
    if (atomic_load(&r->prod.head) != atomic_load(&r->cons.tail)) return -EBUSY;
    atomic_store(&r->prod.head, index);
    atomic_store(&r->cons.tail, index);
    r->prod.cached_tail = index;
    r->cons.cached_head = index;
    return 0;
}
