/*
 * enrol_request.c — CKG_GUARDIAN_REQ_ENROL_ROOT sent as a given login, the
 * way guardianctl enroll-oem sends it but with the caller's choice of who is
 * logged in, so that the test can show an operator (CKU_USER) being refused:
 *
 *   enrol_request MODULE LABEL so|user PIN ROOT.der OEM-IDS [--plant]
 *
 * One line "login CKR" and, after a successful login, one line "enrol CKR"
 * (hex).  With --plant, straight on a backend module: what someone holding
 * that backend PIN could do beside the Guardian — a token certificate of
 * ROOT.der with CKA_TRUSTED TRUE and the label an enrolment gives
 * ("guardian-root:OEM-IDS"); the line is "plant CKR".  Exit 0 when both
 * lines were printed.  A test tool only (tests/backends/test_enrol.sh).
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/x509.h>

#include "test_p11.h"
/* after p11.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"

int main(int argc, char **argv)
{
    CK_FUNCTION_LIST *f = NULL;
    CK_C_GetFunctionList gf;
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_OBJECT_CLASS cls = CKO_GUARDIAN_REQUEST;
    CK_ULONG type = CKG_GUARDIAN_REQ_ENROL_ROOT;
    unsigned char der[65536];
    size_t der_len;
    FILE *fp;
    void *dl;
    CK_RV rv;

    int plant = argc == 8 && strcmp(argv[7], "--plant") == 0;

    if ((argc != 7 && !plant) || (strcmp(argv[3], "so") != 0 && strcmp(argv[3], "user") != 0)) {
        fprintf(stderr, "usage: enrol_request MODULE LABEL so|user PIN ROOT.der OEM-IDS [--plant]\n");
        return 2;
    }
    if ((fp = fopen(argv[5], "rb")) == NULL) {
        perror(argv[5]);
        return 1;
    }
    der_len = fread(der, 1, sizeof(der), fp);
    fclose(fp);
    if ((dl = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL)) == NULL ||
        (gf = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList")) == NULL || gf(&f) != CKR_OK) {
        fprintf(stderr, "enrol_request: cannot load %s\n", argv[1]);
        return 1;
    }
    if ((rv = f->C_Initialize(NULL)) != CKR_OK || (rv = test_find_slot(f, argv[2], &slot)) != CKR_OK ||
        (rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s)) != CKR_OK) {
        fprintf(stderr, "enrol_request: initialise, slot, session: 0x%lx\n", (unsigned long)rv);
        return 1;
    }
    rv = f->C_Login(s, strcmp(argv[3], "so") == 0 ? CKU_SO : CKU_USER, (CK_UTF8CHAR_PTR)argv[4],
                    (CK_ULONG)strlen(argv[4]));
    printf("login 0x%lx\n", (unsigned long)rv);
    if (rv == CKR_OK && plant) {
        CK_OBJECT_CLASS cert = CKO_CERTIFICATE;
        CK_CERTIFICATE_TYPE ct = CKC_X_509;
        CK_BBOOL yes = CK_TRUE;
        char label[128];
        const unsigned char *p = der;
        X509 *x = d2i_X509(NULL, &p, (long)der_len);
        unsigned char *subj = NULL, *iss = NULL, *ser = NULL;
        int subj_len = x ? i2d_X509_NAME(X509_get_subject_name(x), &subj) : -1;
        int iss_len = x ? i2d_X509_NAME(X509_get_issuer_name(x), &iss) : -1;
        int ser_len = x ? i2d_ASN1_INTEGER(X509_get_serialNumber(x), &ser) : -1;
        snprintf(label, sizeof(label), "guardian-root:%s", argv[6]);
        if (subj_len <= 0 || iss_len <= 0 || ser_len <= 0) {
            fprintf(stderr, "enrol_request: %s is no certificate\n", argv[5]);
            return 1;
        }
        {
            CK_ATTRIBUTE t[] = {{CKA_CLASS, &cert, sizeof(cert)},
                                {CKA_CERTIFICATE_TYPE, &ct, sizeof(ct)},
                                {CKA_TOKEN, &yes, sizeof(yes)},
                                {CKA_TRUSTED, &yes, sizeof(yes)},
                                {CKA_LABEL, label, (CK_ULONG)strlen(label)},
                                {CKA_VALUE, der, (CK_ULONG)der_len},
                                {CKA_SUBJECT, subj, (CK_ULONG)subj_len},
                                {CKA_ISSUER, iss, (CK_ULONG)iss_len},
                                {CKA_SERIAL_NUMBER, ser, (CK_ULONG)ser_len}};
            printf("plant 0x%lx\n", (unsigned long)f->C_CreateObject(s, t, 9, &h));
        }
        OPENSSL_free(subj);
        OPENSSL_free(iss);
        OPENSSL_free(ser);
        X509_free(x);
        f->C_Logout(s);
    } else if (rv == CKR_OK) {
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                            {CKA_GUARDIAN_REQUEST, &type, sizeof(type)},
                            {CKA_VALUE, der, (CK_ULONG)der_len},
                            {CKA_GUARDIAN_OEM_IDS, argv[6], (CK_ULONG)strlen(argv[6])}};
        rv = f->C_CreateObject(s, t, 4, &h);
        printf("enrol 0x%lx\n", (unsigned long)rv);
        f->C_Logout(s);
    }
    f->C_CloseSession(s);
    f->C_Finalize(NULL);
    return 0;
}
