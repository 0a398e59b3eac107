/* Path: CShims/numa.c — libnuma placement: thin wrappers that degrade to node 0 without NUMA. */
#include "sluice_sys.h"

#include <errno.h>
#include <numa.h>
#include <sys/mman.h>

int sluice_numa_available(void) { return numa_available(); }

int sluice_numa_node_of_cpu(int cpu) {
    if (numa_available() < 0) return 0;
    int node = numa_node_of_cpu(cpu);
    return node < 0 ? -errno : node;
}

int sluice_numa_max_node(void) { return numa_available() < 0 ? 0 : numa_max_node(); }

void *sluice_numa_alloc_onnode(size_t size, int node) { return numa_alloc_onnode(size, node); }

void sluice_numa_free(void *memory, size_t size) { numa_free(memory, size); }

int sluice_mem_advise_hugepages(void *memory, size_t size) {
    return madvise(memory, size, MADV_HUGEPAGE) == 0 ? 0 : -errno;
}

int sluice_mem_release(void *memory, size_t size) {
    return madvise(memory, size, MADV_DONTNEED) == 0 ? 0 : -errno;
}
