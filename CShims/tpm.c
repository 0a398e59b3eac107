/*
 * Path: CShims/tpm.c — tpm2-tss ESAPI glue for NV counters: connection (TCTI loader), startup,
 * NV define / undefine / increment / read / read-public. Policy and state live in Swift
 * (Sources/SluiceFirmware); this file only marshals.
 */
#include "sluice_tpm.h"

#include <stdlib.h>
#include <string.h>
#include <tss2/tss2_esys.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

struct sluice_tpm {
    TSS2_TCTI_CONTEXT *tcti;
    ESYS_CONTEXT *esys;
};

/* Response codes of the TPM carry the handle/session/parameter number in bits 8..11 for format-one
 * codes; the NV codes Swift tests for are compared without them. */
static uint32_t normalized(TSS2_RC rc) {
    if (rc == TSS2_RC_SUCCESS) return 0;
    if ((rc & TSS2_RC_LAYER_MASK) == TSS2_TPM_RC_LAYER && (rc & TPM2_RC_FMT1)) return rc & (TSS2_RC_LAYER_MASK | 0xBF);
    return rc;
}

uint32_t sluice_tpm_counter_attributes(void) {
    return (TPM2_NT_COUNTER << TPMA_NV_TPM2_NT_SHIFT) | TPMA_NV_OWNERWRITE | TPMA_NV_AUTHWRITE | TPMA_NV_OWNERREAD |
           TPMA_NV_AUTHREAD | TPMA_NV_NO_DA;
}

static int set_auth(TPM2B_AUTH *out, const uint8_t *auth, size_t auth_len) {
    if (auth_len > sizeof(out->buffer)) return -1;
    memset(out, 0, sizeof(*out));
    out->size = (UINT16)auth_len;
    if (auth_len > 0) memcpy(out->buffer, auth, auth_len);
    return 0;
}

uint32_t sluice_tpm_open(const char *tcti_conf, struct sluice_tpm **out) {
    struct sluice_tpm *tpm = calloc(1, sizeof(*tpm));
    if (tpm == NULL) return TSS2_BASE_RC_MEMORY | TSS2_TCTI_RC_LAYER;
    TSS2_RC rc = Tss2_TctiLdr_Initialize(tcti_conf, &tpm->tcti);
    if (rc != TSS2_RC_SUCCESS) {
        free(tpm);
        return rc;
    }
    rc = Esys_Initialize(&tpm->esys, tpm->tcti, NULL);
    if (rc != TSS2_RC_SUCCESS) {
        Tss2_TctiLdr_Finalize(&tpm->tcti);
        free(tpm);
        return rc;
    }
    /* A TPM that takes the connection but never answers must not hang the caller (the default waits forever). */
    rc = Esys_SetTimeout(tpm->esys, SLUICE_TPM_TIMEOUT_MS);
    if (rc != TSS2_RC_SUCCESS) {
        Esys_Finalize(&tpm->esys);
        Tss2_TctiLdr_Finalize(&tpm->tcti);
        free(tpm);
        return rc;
    }
    rc = Esys_Startup(tpm->esys, TPM2_SU_CLEAR);
    if (rc != TSS2_RC_SUCCESS && (rc & ~TSS2_RC_LAYER_MASK) != TPM2_RC_INITIALIZE) {
        Esys_Finalize(&tpm->esys);
        Tss2_TctiLdr_Finalize(&tpm->tcti);
        free(tpm);
        return rc;
    }
    *out = tpm;
    return 0;
}

void sluice_tpm_close(struct sluice_tpm *tpm) {
    if (tpm == NULL) return;
    Esys_Finalize(&tpm->esys);
    Tss2_TctiLdr_Finalize(&tpm->tcti);
    free(tpm);
}

uint32_t sluice_tpm_nv_handle(struct sluice_tpm *tpm, uint32_t index, const uint8_t *auth, size_t auth_len,
                              uint32_t *handle) {
    TPM2B_AUTH value;
    if (set_auth(&value, auth, auth_len) != 0) return TSS2_ESYS_RC_BAD_VALUE;
    ESYS_TR tr = ESYS_TR_NONE;
    TSS2_RC rc = Esys_TR_FromTPMPublic(tpm->esys, index, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &tr);
    if (rc != TSS2_RC_SUCCESS) return normalized(rc);
    rc = Esys_TR_SetAuth(tpm->esys, tr, &value);
    if (rc != TSS2_RC_SUCCESS) {
        Esys_TR_Close(tpm->esys, &tr);
        return rc;
    }
    *handle = tr;
    return 0;
}

uint32_t sluice_tpm_nv_define_counter(struct sluice_tpm *tpm, uint32_t index, const uint8_t *auth, size_t auth_len) {
    TPM2B_AUTH value;
    if (set_auth(&value, auth, auth_len) != 0) return TSS2_ESYS_RC_BAD_VALUE;
    TPM2B_NV_PUBLIC public_info = {
        .size = 0,
        .nvPublic = {
            .nvIndex = index,
            .nameAlg = TPM2_ALG_SHA256,
            .attributes = sluice_tpm_counter_attributes(),
            .authPolicy = {.size = 0},
            .dataSize = 8,
        },
    };
    ESYS_TR tr = ESYS_TR_NONE;
    TSS2_RC rc = Esys_NV_DefineSpace(tpm->esys, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                     &value, &public_info, &tr);
    if (rc == TSS2_RC_SUCCESS) Esys_TR_Close(tpm->esys, &tr);
    return normalized(rc);
}

void sluice_tpm_nv_close_handle(struct sluice_tpm *tpm, uint32_t handle) {
    ESYS_TR tr = handle;
    Esys_TR_Close(tpm->esys, &tr);
}

uint32_t sluice_tpm_nv_undefine(struct sluice_tpm *tpm, uint32_t handle) {
    return normalized(Esys_NV_UndefineSpace(tpm->esys, ESYS_TR_RH_OWNER, handle, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                            ESYS_TR_NONE));
}

uint32_t sluice_tpm_nv_increment(struct sluice_tpm *tpm, uint32_t handle) {
    return normalized(Esys_NV_Increment(tpm->esys, handle, handle, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE));
}

uint32_t sluice_tpm_nv_read_counter(struct sluice_tpm *tpm, uint32_t handle, uint64_t *value) {
    TPM2B_MAX_NV_BUFFER *data = NULL;
    TSS2_RC rc = Esys_NV_Read(tpm->esys, handle, handle, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, 8, 0, &data);
    if (rc != TSS2_RC_SUCCESS) return normalized(rc);
    uint32_t result = 0;
    if (data->size != 8) {
        result = TSS2_ESYS_RC_MALFORMED_RESPONSE;
    } else {
        uint64_t v = 0;
        for (int i = 0; i < 8; i++) v = (v << 8) | data->buffer[i];
        *value = v;
    }
    Esys_Free(data);
    return result;
}

uint32_t sluice_tpm_nv_read_public(struct sluice_tpm *tpm, uint32_t handle, uint32_t *attributes, uint16_t *data_size) {
    TPM2B_NV_PUBLIC *public_info = NULL;
    TPM2B_NAME *name = NULL;
    TSS2_RC rc = Esys_NV_ReadPublic(tpm->esys, handle, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &public_info, &name);
    if (rc != TSS2_RC_SUCCESS) return normalized(rc);
    *attributes = public_info->nvPublic.attributes;
    *data_size = public_info->nvPublic.dataSize;
    Esys_Free(public_info);
    Esys_Free(name);
    return 0;
}

const char *sluice_tpm_rc_text(uint32_t rc) { return Tss2_RC_Decode(rc); }
