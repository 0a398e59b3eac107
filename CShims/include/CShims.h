/* Umbrella header for the CShims module. Not public API: only Sluice modules import it. */
#ifndef SLUICE_CSHIMS_H
#define SLUICE_CSHIMS_H
#include "sluice_afpacket.h"
#include "sluice_mpmc.h"
#include "sluice_pcap.h"
#include "sluice_spsc.h"
#include "sluice_sys.h"
#include "sluice_tpm.h"
#include "sluice_uring.h"
#include "sluice_xdp.h"
#endif
