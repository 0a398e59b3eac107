/*
 * Path: CShims/include/sluice_tpm.h — thin wrappers over tpm2-tss ESAPI for NV counters (tpm.c).
 *
 * Every function returns 0 or a TSS2_RC (the TPM's or the stack's response code; sluice_tpm_rc_text
 * names it). A `struct sluice_tpm` is one ESAPI context over one TCTI connection: one thread at a time.
 * Authorization: the owner hierarchy with an empty owner auth (a fresh TPM, swtpm); each counter index
 * has its own auth value, given at definition and to every call on it.
 */
#ifndef SLUICE_TPM_H
#define SLUICE_TPM_H

#include <stddef.h>
#include <stdint.h>

struct sluice_tpm;

/* TPM2_RC_NV_UNINITIALIZED (a counter not incremented since it was defined) and TPM2_RC_HANDLE for an
 * index that is not defined, as they come back from NV_Read / TR_FromTPMPublic (format-one bits masked). */
#define SLUICE_TPM_RC_NV_UNINITIALIZED 0x14Au
#define SLUICE_TPM_RC_HANDLE 0x08Bu
#define SLUICE_TPM_RC_NV_DEFINED 0x14Cu
/* The NV attributes a Sluice counter index has: type counter, owner and auth read/write, no dictionary
 * attack lockout, never ORDERLY (an orderly counter jumps forward after a power loss). */
uint32_t sluice_tpm_counter_attributes(void);

/* Every TPM command answers within this or fails (Esys_SetTimeout). */
#define SLUICE_TPM_TIMEOUT_MS 5000
/* Connects through the TCTI described by `tcti_conf` (e.g. "swtpm:host=127.0.0.1,port=2321") and runs
 * TPM2_Startup(CLEAR) (a TPM already started is fine). *out is set only on success. */
uint32_t sluice_tpm_open(const char *tcti_conf, struct sluice_tpm **out);
void sluice_tpm_close(struct sluice_tpm *tpm);

/* The ESAPI handle of NV index `index` (TPM2_NV_ReadPublic through Esys_TR_FromTPMPublic), with `auth`
 * (at most 64 bytes) set as its auth value. Cache it: each call is a TPM round trip. */
uint32_t sluice_tpm_nv_handle(struct sluice_tpm *tpm, uint32_t index, const uint8_t *auth, size_t auth_len,
                              uint32_t *handle);
/* Defines `index` as a counter (sluice_tpm_counter_attributes, 8 bytes, SHA-256 name, empty policy). */
uint32_t sluice_tpm_nv_define_counter(struct sluice_tpm *tpm, uint32_t index, const uint8_t *auth, size_t auth_len);
/* Releases ESAPI's object for `handle` (it does not touch the TPM). */
void sluice_tpm_nv_close_handle(struct sluice_tpm *tpm, uint32_t handle);
/* Deletes `index` (owner authorization). `handle` is from sluice_tpm_nv_handle and is gone after. */
uint32_t sluice_tpm_nv_undefine(struct sluice_tpm *tpm, uint32_t handle);
/* TPM2_NV_Increment with the index's own authorization. */
uint32_t sluice_tpm_nv_increment(struct sluice_tpm *tpm, uint32_t handle);
/* The counter's value (TPM2_NV_Read of 8 big-endian bytes). SLUICE_TPM_RC_NV_UNINITIALIZED before the
 * first increment. */
uint32_t sluice_tpm_nv_read_counter(struct sluice_tpm *tpm, uint32_t handle, uint64_t *value);
/* The index's public area: its attributes and data size. */
uint32_t sluice_tpm_nv_read_public(struct sluice_tpm *tpm, uint32_t handle, uint32_t *attributes, uint16_t *data_size);
/* A static text for `rc` (Tss2_RC_Decode). */
const char *sluice_tpm_rc_text(uint32_t rc);

#endif
