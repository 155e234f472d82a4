/*
 * wolfssl_verify ROOT.pem CA.pem DEVICE.pem — wolfSSL (Debian 12: 5.5.4)
 * verifies the production CA against the OEM root, loads it as a CA once it
 * verified, then verifies (and so parses) the device certificate with a
 * certificate manager (wolfSSL_CertManagerLoadCA,
 * wolfSSL_CertManagerVerifyBuffer).  Exit 0 and "OK", or 1 and wolfSSL's
 * error.
 */
#include <stdio.h>
#include <stdlib.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

static int verify_file(WOLFSSL_CERT_MANAGER *cm, const char *path)
{
    unsigned char buf[16384];
    size_t n;
    int r;
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        return 0;
    }
    n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    r = wolfSSL_CertManagerVerifyBuffer(cm, buf, (long)n, WOLFSSL_FILETYPE_PEM);
    if (r != WOLFSSL_SUCCESS) {
        fprintf(stderr, "%s: verify: %d %s\n", path, r, wolfSSL_ERR_reason_error_string((unsigned long)r));
        return 0;
    }
    return 1;
}

int main(int argc, char **argv)
{
    WOLFSSL_CERT_MANAGER *cm;
    int rc = 1, r;

    if (argc != 4) {
        fprintf(stderr, "usage: wolfssl_verify ROOT.pem CA.pem DEVICE.pem\n");
        return 2;
    }
    wolfSSL_Init();
    cm = wolfSSL_CertManagerNew();
    if (cm == NULL)
        return 1;
    if ((r = wolfSSL_CertManagerLoadCA(cm, argv[1], NULL)) != WOLFSSL_SUCCESS) {
        fprintf(stderr, "%s: load CA: %d %s\n", argv[1], r, wolfSSL_ERR_reason_error_string((unsigned long)r));
        goto out;
    }
    if (!verify_file(cm, argv[2]))
        goto out;
    if ((r = wolfSSL_CertManagerLoadCA(cm, argv[2], NULL)) != WOLFSSL_SUCCESS) {
        fprintf(stderr, "%s: load CA: %d %s\n", argv[2], r, wolfSSL_ERR_reason_error_string((unsigned long)r));
        goto out;
    }
    if (!verify_file(cm, argv[3]))
        goto out;
    printf("OK (wolfSSL %s)\n", wolfSSL_lib_version());
    rc = 0;
out:
    wolfSSL_CertManagerFree(cm);
    wolfSSL_Cleanup();
    return rc;
}
