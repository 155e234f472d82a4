/*
 * mechlist.c — what a PKCS#11 module lists on the slot of a token, as a
 * caller of a given interface sees it: one line "0xTYPE 0xFLAGS" per
 * mechanism (C_GetMechanismList, then C_GetMechanismInfo of each), then with
 * --call one line "call 0xTYPE CKR" per Guardian vendor mechanism, the
 * C_UnwrapKey / C_DeriveKey with it (on a handle that is no key) answering
 * whether the mechanism may be called on this slot at all.  On stderr: how long
 * the first C_GetMechanismList of the slot took and how long a second one
 * took ("first-list-us N second-list-us M"; through the module the first one
 * runs the mechanisms' self-tests).
 *
 *   mechlist MODULE LABEL [--iface 2.40|3.0] [--login PIN] [--call] [--trusted]
 *            [--plant CERT.der LABEL] [--key-attrs LABEL]
 *
 * --trusted (with --login): what the import's CKA_TRUSTED check
 * (mechs/selftest.c guardian_trusted_so_only) does, straight on the module
 * given: in a read-only session, a session certificate without CKA_TRUSTED,
 * then with it; one line "trusted CONTROL-CKR TRUSTED-CKR".
 *
 * --plant CERT.der LABEL (with --login): what a user holding the backend's
 * PIN could do beside the module: make a token certificate with CKA_TRUSTED
 * TRUE and the label an enrolment gives ("guardian-root:ACME"), straight on
 * the module given; one line "plant CKR".
 *
 * --key-attrs LABEL (with --login): what the backend itself says of the one
 * private key labelled LABEL, straight on the module given (a production CA
 * key made in the Guardian: that it never left the token); one line
 * "key-attrs LOCAL=1 NEVER_EXTRACTABLE=1 EXTRACTABLE=0 SENSITIVE=1
 * ALWAYS_SENSITIVE=1 SIGN=1 DERIVE=0 DECRYPT=0 UNWRAP=0 VALUE=0x11", each
 * CK_BBOOL as read (-1: not readable) and VALUE the CKR of reading
 * CKA_VALUE (the private scalar).
 *
 * --iface 2.40 takes the list of C_GetFunctionList (the default), 3.0 that of
 * C_GetInterface("PKCS 11", 3.0).  tests/backends/test_advertise.sh runs it
 * straight on each backend and through the module.  A test tool only.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/x509.h>

#include "test_p11.h"
/* after p11.h: the vendor header needs the PKCS#11 types */
#include "guardian/guardian-pkcs11.h"
/* st_cert, st_cert_subject: the certificate the module's check makes */
#include "selftest_vectors.h"

static int usage(void)
{
    fprintf(stderr, "usage: mechlist MODULE LABEL [--iface 2.40|3.0] [--login PIN] [--call] [--trusted] "
                    "[--plant CERT.der LABEL] [--key-attrs LABEL]\n");
    return 2;
}

static double us_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) * 1e6 + (double)(t1.tv_nsec - t0->tv_nsec) / 1e3;
}

int main(int argc, char **argv)
{
    const char *iface = "2.40", *pin = NULL, *plant = NULL, *plant_label = NULL, *key_label = NULL;
    int call = 0, trusted = 0;
    void *dl;
    CK_FUNCTION_LIST *f = NULL;
    CK_SLOT_ID slot = 0;
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    CK_MECHANISM_TYPE list[512];
    CK_ULONG n = 512;
    CK_RV rv;

    if (argc < 3)
        return usage();
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--iface") == 0 && i + 1 < argc)
            iface = argv[++i];
        else if (strcmp(argv[i], "--login") == 0 && i + 1 < argc)
            pin = argv[++i];
        else if (strcmp(argv[i], "--call") == 0)
            call = 1;
        else if (strcmp(argv[i], "--trusted") == 0)
            trusted = 1;
        else if (strcmp(argv[i], "--plant") == 0 && i + 2 < argc) {
            plant = argv[++i];
            plant_label = argv[++i];
        } else if (strcmp(argv[i], "--key-attrs") == 0 && i + 1 < argc)
            key_label = argv[++i];
        else
            return usage();
    }
    dl = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (dl == NULL) {
        fprintf(stderr, "mechlist: %s\n", dlerror());
        return 1;
    }
    if (strcmp(iface, "3.0") == 0) {
        CK_C_GetInterface gi = (CK_C_GetInterface)dlsym(dl, "C_GetInterface");
        CK_INTERFACE *it = NULL;
        CK_VERSION v = {3, 0};
        if (gi == NULL || (rv = gi((CK_UTF8CHAR_PTR) "PKCS 11", &v, &it, 0)) != CKR_OK || it == NULL) {
            fprintf(stderr, "mechlist: no PKCS 11 3.0 interface\n");
            return 1;
        }
        f = it->pFunctionList;
    } else {
        CK_C_GetFunctionList gf = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
        if (gf == NULL || gf(&f) != CKR_OK) {
            fprintf(stderr, "mechlist: no C_GetFunctionList\n");
            return 1;
        }
    }
    if ((rv = f->C_Initialize(NULL)) != CKR_OK) {
        fprintf(stderr, "mechlist: C_Initialize: 0x%lx\n", (unsigned long)rv);
        return 1;
    }
    if ((rv = test_find_slot(f, argv[2], &slot)) != CKR_OK) {
        fprintf(stderr, "mechlist: no token labelled %s: 0x%lx\n", argv[2], (unsigned long)rv);
        return 1;
    }
    if (pin != NULL || call || plant != NULL || key_label != NULL) {
        rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
        if (rv == CKR_OK && pin != NULL)
            rv = f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)strlen(pin));
        if (rv != CKR_OK) {
            fprintf(stderr, "mechlist: session/login: 0x%lx\n", (unsigned long)rv);
            return 1;
        }
    }
    {
        struct timespec t0;
        double first, second;
        CK_ULONG again = 512;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        rv = f->C_GetMechanismList(slot, list, &n);
        first = us_since(&t0);
        if (rv != CKR_OK) {
            fprintf(stderr, "mechlist: C_GetMechanismList: 0x%lx\n", (unsigned long)rv);
            return 1;
        }
        clock_gettime(CLOCK_MONOTONIC, &t0);
        rv = f->C_GetMechanismList(slot, list, &again);
        second = us_since(&t0);
        if (rv != CKR_OK || again != n) {
            fprintf(stderr, "mechlist: second C_GetMechanismList: 0x%lx, %lu mechanisms\n", (unsigned long)rv,
                    (unsigned long)again);
            return 1;
        }
        fprintf(stderr, "first-list-us %.0f second-list-us %.0f\n", first, second);
    }
    for (CK_ULONG i = 0; i < n; i++) {
        CK_MECHANISM_INFO info;
        memset(&info, 0, sizeof(info));
        rv = f->C_GetMechanismInfo(slot, list[i], &info);
        if (rv != CKR_OK)
            printf("0x%08lx info-rv 0x%lx\n", (unsigned long)list[i], (unsigned long)rv);
        else
            printf("0x%08lx 0x%08lx\n", (unsigned long)list[i], (unsigned long)info.flags);
    }
    if (call) {
        static const CK_MECHANISM_TYPE vendor[] = {CKM_GUARDIAN_UNWRAP_PACKAGE, CKM_GUARDIAN_DERIVE_DEVICE_CERT};
        for (size_t i = 0; i < sizeof(vendor) / sizeof(vendor[0]); i++) {
            CK_MECHANISM m = {vendor[i], NULL, 0};
            CK_MECHANISM_INFO info;
            CK_OBJECT_HANDLE out = CK_INVALID_HANDLE;
            CK_BYTE b = 0;
            rv = vendor[i] == CKM_GUARDIAN_UNWRAP_PACKAGE ? f->C_UnwrapKey(s, &m, 0x7fff0001, &b, 1, NULL, 0, &out)
                                                          : f->C_DeriveKey(s, &m, 0x7fff0001, NULL, 0, &out);
            printf("call 0x%08lx 0x%lx\n", (unsigned long)vendor[i], (unsigned long)rv);
            printf("info 0x%08lx 0x%lx\n", (unsigned long)vendor[i],
                   (unsigned long)f->C_GetMechanismInfo(slot, vendor[i], &info));
        }
    }
    if (trusted) {
        CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
        CK_CERTIFICATE_TYPE ct = CKC_X_509;
        CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
        static const CK_BYTE serial[] = {0x02, 0x01, 0x01}; /* the certificate's, DER */
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                            {CKA_CERTIFICATE_TYPE, &ct, sizeof(ct)},
                            {CKA_TOKEN, &no, sizeof(no)},
                            {CKA_SUBJECT, (void *)st_cert_subject, sizeof(st_cert_subject)},
                            {CKA_VALUE, (void *)st_cert, sizeof(st_cert)},
                            {CKA_ISSUER, (void *)st_cert_subject, sizeof(st_cert_subject)},
                            {CKA_SERIAL_NUMBER, (void *)serial, sizeof(serial)},
                            {CKA_TRUSTED, &yes, sizeof(yes)}};
        CK_SESSION_HANDLE ro = CK_INVALID_HANDLE;
        CK_OBJECT_HANDLE h;
        CK_RV control = CKR_GENERAL_ERROR, with = CKR_GENERAL_ERROR;
        rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &ro);
        if (rv == CKR_OK && (control = f->C_CreateObject(ro, t, 7, &h)) == CKR_OK)
            f->C_DestroyObject(ro, h);
        if (rv == CKR_OK && control == CKR_OK && (with = f->C_CreateObject(ro, t, 8, &h)) == CKR_OK)
            f->C_DestroyObject(ro, h);
        if (ro != CK_INVALID_HANDLE)
            f->C_CloseSession(ro);
        printf("trusted 0x%lx 0x%lx\n", (unsigned long)(rv != CKR_OK ? rv : control), (unsigned long)with);
    }
    if (plant != NULL) {
        static unsigned char der[65536];
        unsigned char *subj = NULL, *iss = NULL, *ser = NULL;
        const unsigned char *q = der;
        FILE *in = fopen(plant, "rb");
        size_t len = in ? fread(der, 1, sizeof(der), in) : 0;
        X509 *x = len > 0 ? d2i_X509(NULL, &q, (long)len) : NULL;
        int subj_len = x ? i2d_X509_NAME(X509_get_subject_name(x), &subj) : -1;
        int iss_len = x ? i2d_X509_NAME(X509_get_issuer_name(x), &iss) : -1;
        int ser_len = x ? i2d_ASN1_INTEGER(X509_get_serialNumber(x), &ser) : -1;
        CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
        CK_CERTIFICATE_TYPE ct = CKC_X_509;
        CK_BBOOL yes = CK_TRUE;
        CK_OBJECT_HANDLE h;
        if (in != NULL)
            fclose(in);
        if (subj_len <= 0 || iss_len <= 0 || ser_len <= 0) {
            fprintf(stderr, "mechlist: %s is not a DER certificate\n", plant);
            return 1;
        }
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                            {CKA_CERTIFICATE_TYPE, &ct, sizeof(ct)},
                            {CKA_TOKEN, &yes, sizeof(yes)},
                            {CKA_TRUSTED, &yes, sizeof(yes)},
                            {CKA_LABEL, (void *)plant_label, (CK_ULONG)strlen(plant_label)},
                            {CKA_VALUE, der, (CK_ULONG)len},
                            {CKA_SUBJECT, subj, (CK_ULONG)subj_len},
                            {CKA_ISSUER, iss, (CK_ULONG)iss_len},
                            {CKA_SERIAL_NUMBER, ser, (CK_ULONG)ser_len}};
        printf("plant 0x%lx\n", (unsigned long)f->C_CreateObject(s, t, sizeof(t) / sizeof(t[0]), &h));
        OPENSSL_free(subj);
        OPENSSL_free(iss);
        OPENSSL_free(ser);
        X509_free(x);
    }
    if (key_label != NULL) {
        CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
        CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                            {CKA_LABEL, (void *)key_label, (CK_ULONG)strlen(key_label)}};
        static const struct {
            CK_ATTRIBUTE_TYPE type;
            const char *name;
        } b[] = {{CKA_LOCAL, "LOCAL"},         {CKA_NEVER_EXTRACTABLE, "NEVER_EXTRACTABLE"},
                 {CKA_EXTRACTABLE, "EXTRACTABLE"}, {CKA_SENSITIVE, "SENSITIVE"},
                 {CKA_ALWAYS_SENSITIVE, "ALWAYS_SENSITIVE"}, {CKA_SIGN, "SIGN"},
                 {CKA_DERIVE, "DERIVE"},       {CKA_DECRYPT, "DECRYPT"},
                 {CKA_UNWRAP, "UNWRAP"}};
        CK_OBJECT_HANDLE h[2];
        CK_ULONG found = 0;
        CK_BYTE value[512];
        CK_ATTRIBUTE v = {CKA_VALUE, value, sizeof(value)};
        rv = f->C_FindObjectsInit(s, t, 2);
        if (rv == CKR_OK) {
            rv = f->C_FindObjects(s, h, 2, &found);
            f->C_FindObjectsFinal(s);
        }
        if (rv != CKR_OK || found != 1) {
            fprintf(stderr, "mechlist: %lu private keys labelled %s (0x%lx)\n", (unsigned long)found, key_label,
                    (unsigned long)rv);
            return 1;
        }
        printf("key-attrs");
        for (size_t i = 0; i < sizeof(b) / sizeof(b[0]); i++) {
            CK_BBOOL x = CK_FALSE;
            CK_ATTRIBUTE a = {b[i].type, &x, sizeof(x)};
            printf(" %s=%d", b[i].name, f->C_GetAttributeValue(s, h[0], &a, 1) == CKR_OK ? (int)x : -1);
        }
        printf(" VALUE=0x%lx\n", (unsigned long)f->C_GetAttributeValue(s, h[0], &v, 1));
        OPENSSL_cleanse(value, sizeof(value));
    }
    if (s != CK_INVALID_HANDLE)
        f->C_CloseSession(s);
    f->C_Finalize(NULL);
    return 0;
}
