/* Path: Benchmarks/Sources/CRingHarness/sluice_c128.c — Sluice's C ring with the header's 128-byte
 * separation of the producer and consumer lines (what SluiceCore ships). */
#define SLUICE_SPSC_ALIGN 128
#define RINGH_VARIANT ringh_sluice_c128
#include "sluice_variant.h"
