/* Path: Benchmarks/Sources/CWakeHarness/wake.c — futex wake-up latency between two pinned threads. */
#define _GNU_SOURCE
#include "wake_harness.h"

#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct wake_pair {
    _Alignas(64) _Atomic uint32_t word;  /* 0: B should sleep, 1: woken */
    _Alignas(64) _Atomic uint64_t stamp; /* A's clock at the wake call */
    _Alignas(64) _Atomic uint32_t asleep; /* B is about to wait */
    _Atomic uint32_t done;
    uint64_t *samples;
    uint32_t rounds;
    int cpu;
    int error;
};

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return -pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

static void *sleeper(void *context) {
    struct wake_pair *pair = context;
    if ((pair->error = pin(pair->cpu)) != 0) return NULL;
    for (uint32_t round = 0; round < pair->rounds; round++) {
        atomic_store(&pair->asleep, 1);
        while (atomic_load(&pair->word) == 0)
            syscall(SYS_futex, (uint32_t *)&pair->word, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
        pair->samples[round] = now_ns() - atomic_load(&pair->stamp);
        atomic_store(&pair->word, 0);
        atomic_store(&pair->done, round + 1);
    }
    return NULL;
}

static int compare(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int wakeh_futex_latency(int cpu_a, int cpu_b, uint32_t rounds, uint64_t gap_ns, uint64_t *p50_ns,
                        uint64_t *p99_ns, uint64_t *max_ns) {
    if (rounds == 0) return -EINVAL;
    struct wake_pair *pair = aligned_alloc(64, sizeof(struct wake_pair));
    uint64_t *samples = calloc(rounds, sizeof(uint64_t));
    if (pair == NULL || samples == NULL) {
        free(pair);
        free(samples);
        return -ENOMEM;
    }
    atomic_init(&pair->word, 0);
    atomic_init(&pair->stamp, 0);
    atomic_init(&pair->asleep, 0);
    atomic_init(&pair->done, 0);
    pair->samples = samples;
    pair->rounds = rounds;
    pair->cpu = cpu_b;
    pair->error = 0;
    int rc = pin(cpu_a);
    pthread_t thread;
    if (rc == 0) rc = -pthread_create(&thread, NULL, sleeper, pair);
    if (rc != 0) {
        free(samples);
        free(pair);
        return rc;
    }
    for (uint32_t round = 0; round < rounds && pair->error == 0; round++) {
        while (atomic_load(&pair->asleep) == 0) sched_yield();
        /* Give B time to enter FUTEX_WAIT and its core time to go idle, as between real bursts. */
        uint64_t until = now_ns() + gap_ns;
        while (now_ns() < until) {}
        atomic_store(&pair->asleep, 0);
        atomic_store(&pair->stamp, now_ns());
        atomic_store(&pair->word, 1);
        syscall(SYS_futex, (uint32_t *)&pair->word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
        while (atomic_load(&pair->done) != round + 1 && pair->error == 0) {}
    }
    pthread_join(thread, NULL);
    rc = pair->error;
    if (rc == 0) {
        qsort(samples, rounds, sizeof(uint64_t), compare);
        *p50_ns = samples[rounds / 2];
        *p99_ns = samples[(uint64_t)rounds * 99 / 100];
        *max_ns = samples[rounds - 1];
    }
    free(samples);
    free(pair);
    return rc;
}
