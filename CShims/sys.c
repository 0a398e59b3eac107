/* Path: CShims/sys.c — CPU affinity, thread attributes and futex: thin wrappers, -errno on failure. */
#define _GNU_SOURCE
#include "sluice_sys.h"

#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int sluice_cpu_count_configured(void) {
    long n = sysconf(_SC_NPROCESSORS_CONF);
    return n < 0 ? -errno : (int)n;
}

int sluice_cpu_is_allowed(int cpu) {
    if (cpu < 0 || cpu >= CPU_SETSIZE) return 0;
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) != 0) return -errno;
    return CPU_ISSET(cpu, &set) ? 1 : 0;
}

int sluice_cpu_count_allowed(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) != 0) return -errno;
    return CPU_COUNT(&set);
}

int sluice_thread_pin_self(int cpu) {
    if (cpu < 0 || cpu >= CPU_SETSIZE) return -EINVAL;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    /* pthread_* return the error number instead of setting errno. */
    int rc = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    return -rc;
}

int sluice_thread_set_affinity(int tid, const int *cpus, int count) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int i = 0; i < count; i++) {
        if (cpus[i] < 0 || cpus[i] >= CPU_SETSIZE) return -EINVAL;
        CPU_SET(cpus[i], &set);
    }
    if (count <= 0) return -EINVAL;
    return sched_setaffinity((pid_t)tid, sizeof(set), &set) == 0 ? 0 : -errno;
}

int sluice_thread_current_cpu(void) {
    int cpu = sched_getcpu();
    return cpu < 0 ? -errno : cpu;
}

int sluice_thread_set_timer_slack_ns(unsigned long ns) {
    return prctl(PR_SET_TIMERSLACK, ns, 0, 0, 0) == 0 ? 0 : -errno;
}

int sluice_thread_set_name(const char *name) {
    char truncated[16];
    size_t i = 0;
    for (; i < sizeof(truncated) - 1 && name[i] != 0; i++) truncated[i] = name[i];
    truncated[i] = 0;
    return -pthread_setname_np(pthread_self(), truncated);
}

int sluice_futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t timeout_ns) {
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = (time_t)(timeout_ns / 1000000000);
        ts.tv_nsec = (long)(timeout_ns % 1000000000);
        tsp = &ts;
    }
    long rc = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, expected, tsp, NULL, 0);
    return rc == 0 ? 0 : -errno;
}

int sluice_futex_wake(_Atomic uint32_t *word, int count) {
    long rc = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, count, NULL, NULL, 0);
    return rc < 0 ? -errno : (int)rc;
}

int sluice_waiter_sleep(struct sluice_waiter *w, int64_t timeout_ns) {
    int rc = 0;
    uint64_t deadline = timeout_ns < 0 ? 0 : sluice_monotonic_ns() + (uint64_t)timeout_ns;
    /* Re-wait on spurious returns with what is left of the timeout: only a notify (state AWAKE), the
     * deadline or a signal ends the sleep. */
    while (atomic_load_explicit(&w->state, memory_order_acquire) == SLUICE_WAITER_SLEEPING) {
        int64_t left = -1;
        if (timeout_ns >= 0) {
            uint64_t now = sluice_monotonic_ns();
            if (now >= deadline) {
                rc = -ETIMEDOUT;
                break;
            }
            left = (int64_t)(deadline - now);
        }
        rc = sluice_futex_wait(&w->state, SLUICE_WAITER_SLEEPING, left);
        if (rc == -ETIMEDOUT || rc == -EINTR) break;
        rc = 0;
    }
    atomic_store_explicit(&w->state, SLUICE_WAITER_AWAKE, memory_order_relaxed);
    return rc;
}

struct sluice_waiter *sluice_waiter_new(void) {
    void *memory = NULL;
    if (posix_memalign(&memory, _Alignof(struct sluice_waiter), sizeof(struct sluice_waiter)) != 0) return NULL;
    struct sluice_waiter *w = memory;
    atomic_init(&w->state, SLUICE_WAITER_AWAKE);
    return w;
}

void sluice_waiter_delete(struct sluice_waiter *w) { free(w); }
