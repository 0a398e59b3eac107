/* Path: Benchmarks/Sources/CRingHarness/sluice_c64.c — Sluice's C ring rebuilt with the producer and
 * consumer lines 64 bytes apart, to measure against the default 128. */
#define SLUICE_SPSC_ALIGN 64
#define RINGH_VARIANT ringh_sluice_c64
#include "sluice_variant.h"
