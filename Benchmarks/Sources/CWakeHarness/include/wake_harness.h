/* Path: Benchmarks/Sources/CWakeHarness/include/wake_harness.h — the cost of waking a sleeping core.
 *
 * The floor under any sleeping wait mode: thread A, pinned to one CPU, stamps the time and wakes
 * thread B, pinned to another and asleep in FUTEX_WAIT; B records how long it took to run. Plain C
 * and raw futex calls, independent of Sluice, so it anchors the pipeline benchmark's latencies.
 */
#ifndef WAKE_HARNESS_H
#define WAKE_HARNESS_H
#include <stdint.h>

/* Runs `rounds` wake-ups from cpu_a to cpu_b, B asleep each time (A waits gap_ns between them).
 * Fills the p50, p99 and max latencies in ns. Returns 0, or -errno when a thread could not start or pin. */
int wakeh_futex_latency(int cpu_a, int cpu_b, uint32_t rounds, uint64_t gap_ns, uint64_t *p50_ns,
                        uint64_t *p99_ns, uint64_t *max_ns);

#endif
