/* Path: Benchmarks/Sources/CRingHarness/pair.c — two pinned threads started together and timed. */
#define _GNU_SOURCE
#include "ring_harness.h"
#include "sluice_sys.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

/* Start gate: each thread bumps `arrived` and spins until the runner sets `go` (RUN or ABORT). Then
 * each takes its real-time priority, if asked, and both meet again at `ready` before starting: the
 * runner is not real-time, so it must have set `go` before either thread could starve it. */
enum { RINGH_WAIT = 0, RINGH_RUN = 1, RINGH_ABORT = 2 };

struct ringh_gate {
    _Atomic int arrived;
    _Atomic int go;
    _Atomic int ready;
    int realtime_priority;
};

struct ringh_side {
    ringh_loop_fn loop;
    struct ringh_job *job;
    struct ringh_gate *gate;
    int error; /* positive errno from taking the real-time priority, else 0 */
    uint64_t start_ns;
    uint64_t end_ns;
};

/* Moves the calling thread to SCHED_FIFO at `priority`. 0 or a positive errno (EPERM without CAP_SYS_NICE). */
static int ringh_set_fifo(int priority) {
    struct sched_param param = {.sched_priority = priority};
    return pthread_setschedparam(pthread_self(), SCHED_FIFO, &param);
}

int ringh_realtime_probe(int priority) {
    int policy;
    struct sched_param old;
    int rc = pthread_getschedparam(pthread_self(), &policy, &old);
    if (rc == 0) rc = ringh_set_fifo(priority);
    if (rc == 0) rc = pthread_setschedparam(pthread_self(), policy, &old);
    return -rc;
}

static void *ringh_side_main(void *arg) {
    struct ringh_side *side = arg;
    struct ringh_gate *gate = side->gate;
    atomic_fetch_add_explicit(&gate->arrived, 1, memory_order_relaxed);
    int go;
    /* Acquire pairs with the runner's release of `go`: the job it handed over is visible. */
    while ((go = atomic_load_explicit(&gate->go, memory_order_acquire)) == RINGH_WAIT) sluice_cpu_relax();
    if (go == RINGH_ABORT) return NULL;
    if (gate->realtime_priority > 0) side->error = ringh_set_fifo(gate->realtime_priority);
    atomic_fetch_add_explicit(&gate->ready, 1, memory_order_relaxed);
    while (atomic_load_explicit(&gate->ready, memory_order_relaxed) < 2) sluice_cpu_relax();
    side->start_ns = sluice_monotonic_ns();
    side->loop(side->job);
    side->end_ns = sluice_monotonic_ns();
    return NULL;
}

/* Creates a thread already pinned to `cpu`, so it never runs anywhere else. 0 or a positive errno. */
static int ringh_spawn(pthread_t *thread, struct ringh_side *side, int cpu) {
    pthread_attr_t attr;
    int rc = pthread_attr_init(&attr);
    if (rc != 0) return rc;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    rc = pthread_attr_setaffinity_np(&attr, sizeof(set), &set);
    if (rc == 0) rc = pthread_create(thread, &attr, ringh_side_main, side);
    pthread_attr_destroy(&attr);
    return rc;
}

int64_t ringh_run_pair(ringh_loop_fn first, struct ringh_job *first_job, int first_cpu,
                       ringh_loop_fn second, struct ringh_job *second_job, int second_cpu, int realtime_priority) {
    struct ringh_gate gate = {0, RINGH_WAIT, 0, realtime_priority};
    struct ringh_side sides[2] = {
        {first, first_job, &gate, 0, 0, 0},
        {second, second_job, &gate, 0, 0, 0},
    };
    pthread_t threads[2];
    int rc = ringh_spawn(&threads[0], &sides[0], first_cpu);
    if (rc != 0) return -rc;
    rc = ringh_spawn(&threads[1], &sides[1], second_cpu);
    if (rc != 0) {
        atomic_store_explicit(&gate.go, RINGH_ABORT, memory_order_release);
        pthread_join(threads[0], NULL);
        return -rc;
    }
    /* Both threads spin once they arrive; yield so the second gets its CPU to arrive at all. */
    while (atomic_load_explicit(&gate.arrived, memory_order_relaxed) < 2) sched_yield();
    atomic_store_explicit(&gate.go, RINGH_RUN, memory_order_release);
    pthread_join(threads[0], NULL);
    pthread_join(threads[1], NULL);
    if (sides[0].error != 0) return -sides[0].error;
    if (sides[1].error != 0) return -sides[1].error;
    uint64_t start = sides[0].start_ns < sides[1].start_ns ? sides[0].start_ns : sides[1].start_ns;
    uint64_t end = sides[0].end_ns > sides[1].end_ns ? sides[0].end_ns : sides[1].end_ns;
    return (int64_t)(end - start);
}
