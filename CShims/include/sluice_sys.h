/*
 * Path: CShims/include/sluice_sys.h — thin wrappers over the kernel, libnuma and the CPU.
 *
 * Functions here return 0 or a negative errno (the liburing convention): Swift turns that into a
 * SyscallError at the wrapper. Macros Swift cannot import (CPU_SET, futex) get a one-line function.
 */
#ifndef SLUICE_SYS_H
#define SLUICE_SYS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#endif

/* ---- CPUs and threads (sys.c) ---- */

/* CPUs configured in the system (sysconf(_SC_NPROCESSORS_CONF)). */
int sluice_cpu_count_configured(void);
/* 1 if this process may run on `cpu` (sched_getaffinity), 0 if not, -errno on failure. */
int sluice_cpu_is_allowed(int cpu);
/* Number of CPUs in this process's affinity mask, or -errno. */
int sluice_cpu_count_allowed(void);
/* Pins the calling thread to one CPU (pthread_setaffinity_np; CPU_SET is a macro). 0 or -errno. */
int sluice_thread_pin_self(int cpu);
/* Sets thread `tid`'s affinity to the `count` CPUs in `cpus` (sched_setaffinity; a thread of this
 * process, any CPU its cgroup allows). 0 or -errno (-EINVAL for a CPU out of range). */
int sluice_thread_set_affinity(int tid, const int *cpus, int count);
/* The CPU the calling thread runs on now (sched_getcpu), or -errno. */
int sluice_thread_current_cpu(void);
/* Lowers the calling thread's timer slack (PR_SET_TIMERSLACK) so timed sleeps end on time. 0 or -errno. */
int sluice_thread_set_timer_slack_ns(unsigned long ns);
/* Names the calling thread (pthread_setname_np, 15 bytes kept). 0 or -errno. */
int sluice_thread_set_name(const char *name);

/* ---- futex (sys.c) ---- */

/* Sleeps while *word == expected, at most timeout_ns (< 0: no timeout). FUTEX_WAIT_PRIVATE.
 * 0 when woken, -ETIMEDOUT, -EAGAIN if *word != expected at entry, -EINTR on a signal. */
int sluice_futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t timeout_ns);
/* Wakes up to `count` sleepers on word. Returns how many woke, or -errno. */
int sluice_futex_wake(_Atomic uint32_t *word, int count);

/* ---- NUMA (numa.c, libnuma) ---- */

/* numa_available(): >= 0 when the kernel and libnuma support NUMA placement. */
int sluice_numa_available(void);
/* NUMA node of a CPU, or -errno; 0 when NUMA is unavailable. */
int sluice_numa_node_of_cpu(int cpu);
/* Highest node number (numa_max_node), 0 when NUMA is unavailable. */
int sluice_numa_max_node(void);
/* size bytes on `node` (numa_alloc_onnode: page aligned, zeroed on first touch), NULL on failure. */
void *sluice_numa_alloc_onnode(size_t size, int node);
/* Asks for transparent huge pages on [memory, memory + size) (madvise MADV_HUGEPAGE; memory page
 * aligned), before first touch: fewer faults when a pool is faulted in, fewer TLB misses after.
 * 0, or -errno (EINVAL where THP is compiled out). Advisory: callers go on without it. */
int sluice_mem_advise_hugepages(void *memory, size_t size);
/* Gives the pages of [memory, memory + size) back to the kernel (madvise MADV_DONTNEED; memory page
 * aligned, size a multiple of the page size): private anonymous pages read as zero when next touched,
 * faulted in again on the node the memory was bound to. 0, or -errno. */
int sluice_mem_release(void *memory, size_t size);
/* Frees memory from sluice_numa_alloc_onnode. */
void sluice_numa_free(void *memory, size_t size);

/* ---- clocks and the CPU (inline: called per burst) ---- */

/* CPU timestamp counter; cheap, for cycle accounting only (never for wall time). */
static inline uint64_t sluice_cycles(void) {
#if defined(__x86_64__) || defined(__i386__)
    return __rdtsc();
#elif defined(__aarch64__)
    uint64_t value;
    __asm__ volatile("mrs %0, cntvct_el0" : "=r"(value));
    return value;
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
#endif
}

/* CLOCK_MONOTONIC in nanoseconds (vDSO, no system call). */
static inline uint64_t sluice_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* CPU time the calling thread has used, in nanoseconds (CLOCK_THREAD_CPUTIME_ID). */
static inline uint64_t sluice_thread_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Cache prefetch hints for burst loops (DPDK's rte_prefetch0 / rte_prefetch0_write): start pulling
 * a line another core wrote before we need it. */
static inline void sluice_prefetch_read(const void *p) { __builtin_prefetch(p, 0, 3); }
static inline void sluice_prefetch_write(const void *p) {
#if defined(__x86_64__)
    /* PREFETCHW fetches the line for ownership, so the store after it does not stall on a read-for-
     * ownership from the core that last wrote it. __builtin_prefetch(p, 1) emits a plain PREFETCHT0 at
     * Swift's baseline target; CPUs without PREFETCHW treat the encoding as a no-op. */
    __asm__ volatile("prefetchw (%0)" : : "r"(p));
#else
    __builtin_prefetch(p, 1, 3);
#endif
}

/* Copies n bytes between buffers that do not overlap, in 32-byte steps the compiler turns into
 * vector moves (may read and write up to 31 bytes past n: both buffers must have that room). For the
 * small copies of packet paths, where a memmove call costs more than the copy. */
static inline void sluice_copy_padded(void *restrict dst, const void *restrict src, size_t n) {
    unsigned char *d = dst;
    const unsigned char *s = src;
    for (size_t i = 0; i < n; i += 32) __builtin_memcpy(d + i, s + i, 32);
}

/* Spin-wait hint: PAUSE on x86, YIELD on arm64. */
static inline void sluice_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

/* ---- the sleep/wake handshake (inline: the waker's check runs on every burst) ----
 *
 * One waiter per worker. The worker announces sleep, re-checks its input rings, then sleeps on the
 * futex; a producer that published work checks the announcement and wakes it only then, so the fast
 * path makes no system call. Dekker-style: each side stores, fences seq_cst, then loads the other's
 * word, so at least one of them sees the other (no lost wake-up):
 *   sleeper: state = SLEEPING; fence(F_s); re-check rings; futex_wait(state, SLEEPING)
 *   waker:   publish ring head (release); fence(F_w); if state == SLEEPING: exchange AWAKE, futex_wake
 */
#define SLUICE_WAITER_AWAKE 0u
#define SLUICE_WAITER_SLEEPING 1u

struct sluice_waiter {
    _Alignas(64) _Atomic uint32_t state;
};

/* A zeroed (AWAKE) waiter on its own cache line, or NULL. Swift sees it as an opaque pointer. */
struct sluice_waiter *sluice_waiter_new(void);
void sluice_waiter_delete(struct sluice_waiter *w);

/* Sleeper only: announce sleep. The caller must re-check for work after this and before waiting. */
static inline void sluice_waiter_announce(struct sluice_waiter *w) {
    atomic_store_explicit(&w->state, SLUICE_WAITER_SLEEPING, memory_order_relaxed);
    /* F_s: orders the store above before the ring re-check loads; pairs with F_w in notify. */
    atomic_thread_fence(memory_order_seq_cst);
}

/* Sleeper only: work turned up after announcing; take the announcement back. */
static inline void sluice_waiter_cancel(struct sluice_waiter *w) {
    atomic_store_explicit(&w->state, SLUICE_WAITER_AWAKE, memory_order_relaxed);
}

/* Sleeper only: sleep until notified or timeout_ns (< 0: none) from now, however many spurious
 * returns the futex makes. Returns 0 if woken or the wake came first, -ETIMEDOUT on timeout, -EINTR
 * on a signal. Always leaves the state AWAKE. */
int sluice_waiter_sleep(struct sluice_waiter *w, int64_t timeout_ns);

/* A full fence (F_w), for callers that must order their ring publish before reading which waiter
 * to notify; they then call sluice_waiter_notify_fenced. */
static inline void sluice_fence_seq_cst(void) { atomic_thread_fence(memory_order_seq_cst); }

/* Any producer, after publishing work for this waiter and fencing (F_w). Returns 1 if it made a
 * futex wake call. */
static inline int sluice_waiter_notify_fenced(struct sluice_waiter *w) {
    if (atomic_load_explicit(&w->state, memory_order_relaxed) != SLUICE_WAITER_SLEEPING) return 0;
    if (atomic_exchange_explicit(&w->state, SLUICE_WAITER_AWAKE, memory_order_relaxed) != SLUICE_WAITER_SLEEPING)
        return 0; /* another producer woke it */
    sluice_futex_wake(&w->state, 1);
    return 1;
}

/* Any producer, after publishing work for this waiter. Returns 1 if it made a futex wake call. */
static inline int sluice_waiter_notify(struct sluice_waiter *w) {
    /* F_w: orders the caller's ring publish before the state load; pairs with F_s in announce. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&w->state, memory_order_relaxed) != SLUICE_WAITER_SLEEPING) return 0;
    if (atomic_exchange_explicit(&w->state, SLUICE_WAITER_AWAKE, memory_order_relaxed) != SLUICE_WAITER_SLEEPING)
        return 0; /* another producer woke it */
    sluice_futex_wake(&w->state, 1);
    return 1;
}

/* ---- A QEMU guest's memory, read from the host (guestmem.c) ---- */

/* The process listening on the unix stream socket at `path` (SO_PEERCRED of a non-blocking connection
 * made and closed at once; -EAGAIN when the listener's backlog is full). *pid set; 0 or -errno. */
int sluice_unix_socket_peer_pid(const char *path, int32_t *pid);

/* What one scan of another process's memory range found, in 4 KiB pages. */
struct sluice_mem_scan {
    uint64_t pages;     /* pages in the range */
    uint64_t present;   /* resident or swapped (/proc/<pid>/pagemap bits 63, 62) */
    uint64_t nonzero;   /* present pages holding a non-zero byte (read through /proc/<pid>/mem) */
};

/* Scans [address, address + length) of process `pid` (address and length 4 KiB aligned): which pages
 * are present and, of those, which hold a non-zero byte. Only pages in RAM are read (runs of them, at
 * most 2 MiB at a time into one buffer); pages never faulted in count as zero, swapped pages as data,
 * neither is read. Needs ptrace-read access to `pid` (root). Blocks for the whole scan (about 0.1 s per
 * GiB present). 0 or -errno; -ENOTSUP on a host whose page size is not 4 KiB. */
int sluice_mem_scan_range(int32_t pid, uint64_t address, uint64_t length, struct sluice_mem_scan *out);

#endif /* SLUICE_SYS_H */
