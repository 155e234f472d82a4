/*
 * mbedtls_verify ROOT.pem CA.pem DEVICE.pem — mbedTLS (Debian 12: 2.28)
 * parses the certificates (mbedtls_x509_crt_parse_file) and verifies the
 * chain device -> production CA against the OEM root
 * (mbedtls_x509_crt_verify, default profile).  Exit 0 and "OK", or 1 and
 * mbedTLS's reasons.
 */
#include <stdio.h>

#include <mbedtls/error.h>
#include <mbedtls/x509_crt.h>

int main(int argc, char **argv)
{
    mbedtls_x509_crt root, chain;
    uint32_t flags = 0;
    char buf[2048];
    int rc = 1, r;

    if (argc != 4) {
        fprintf(stderr, "usage: mbedtls_verify ROOT.pem CA.pem DEVICE.pem\n");
        return 2;
    }
    mbedtls_x509_crt_init(&root);
    mbedtls_x509_crt_init(&chain);
    /* The chain: the device certificate first, then the intermediate. */
    if ((r = mbedtls_x509_crt_parse_file(&root, argv[1])) != 0 ||
        (r = mbedtls_x509_crt_parse_file(&chain, argv[3])) != 0 ||
        (r = mbedtls_x509_crt_parse_file(&chain, argv[2])) != 0) {
        mbedtls_strerror(r, buf, sizeof(buf));
        fprintf(stderr, "parse: -0x%04x %s\n", (unsigned)-r, buf);
        goto out;
    }
    r = mbedtls_x509_crt_verify(&chain, &root, NULL, NULL, &flags, NULL, NULL);
    if (r != 0) {
        mbedtls_x509_crt_verify_info(buf, sizeof(buf), "  ", flags);
        fprintf(stderr, "verify: -0x%04x, flags 0x%08x:\n%s", (unsigned)-r, (unsigned)flags, buf);
        goto out;
    }
    mbedtls_x509_dn_gets(buf, sizeof(buf), &chain.subject);
    printf("OK %s\n", buf);
    rc = 0;
out:
    mbedtls_x509_crt_free(&root);
    mbedtls_x509_crt_free(&chain);
    return rc;
}
