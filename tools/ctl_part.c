/*
 * ctl_part.c — `guardianctl part`: the line reports what became of a part
 * after its certificate was issued (docs/guardianctl.md, "part").
 *
 *   guardianctl part --product OEM/PRODUCT (--device ID | --from FILE) [--hex] programmed|scrapped
 *
 * One CKG_GUARDIAN_REQ_PART_OUTCOME request per device (mechs/outcome.c):
 * the module checks that the device holds a certificate of this Guardian for
 * the product and writes an OUTCOME audit record; the same outcome reported
 * again is answered "already reported" and writes nothing, so a line may
 * simply run the command again after an interruption.  --from reads one
 * device ID per line (blank lines and lines starting with '#' skipped); every
 * device is tried, and the exit status is 1 if any was refused.  --hex: the
 * IDs are binary device IDs written in hex (CKG_GUARDIAN_DEVICE_ID_BINARY).
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guardianctl.h"

#define DEVICE_LINE_MAX 256

/* The request's refusal, in words an operator can act on. */
static const char *refusal(CK_RV rv)
{
    switch (rv) {
    case CKR_GUARDIAN_DEVICE_NOT_ISSUED:
        return "no certificate of this product was issued to it by this Guardian (or the process that issued it "
               "is still running: report once it has ended)";
    case CKR_GUARDIAN_PART_SCRAPPED:
        return "it was reported scrapped: it cannot be programmed with that certificate";
    case CKR_GUARDIAN_DEVICE_ID_INVALID:
        return "not a valid device ID (text: 1..64 of A-Z a-z 0-9 - . _ :; --hex: 1..32 bytes in hex)";
    case CKR_GUARDIAN_PRODUCT_UNKNOWN:
        return "no such product in this Guardian (see '" PROG " products')";
    case CKR_GUARDIAN_REQUEST_INVALID:
        return "the module refused the request (a module without part outcomes?)";
    default:
        return NULL;
    }
}

static int hex_nibble(int c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* One device: 0 reported (or already), 1 refused (said why on stderr). */
static int report_one(const char *oem, size_t oem_len, const char *product, const char *id, int hex,
                      CK_ULONG outcome)
{
    CK_ULONG format = hex ? CKG_GUARDIAN_DEVICE_ID_BINARY : CKG_GUARDIAN_DEVICE_ID_TEXT;
    unsigned char bin[DEVICE_LINE_MAX / 2];
    const void *value = id;
    size_t len = strlen(id);
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    unsigned char *answer;
    CK_ULONG alen = 0;
    const char *why;
    CK_RV rv;

    if (hex) {
        if (len == 0 || len % 2 != 0 || len / 2 > sizeof(bin)) {
            fprintf(stderr, PROG ": part: device %s: not an even number of hex digits\n", id);
            return 1;
        }
        for (size_t i = 0; i < len / 2; i++) {
            int hi = hex_nibble((unsigned char)id[2 * i]), lo = hex_nibble((unsigned char)id[2 * i + 1]);
            if (hi < 0 || lo < 0) {
                fprintf(stderr, PROG ": part: device %s: not hex\n", id);
                return 1;
            }
            bin[i] = (unsigned char)(hi << 4 | lo);
        }
        value = bin;
        len /= 2;
    }
    {
        CK_ATTRIBUTE extra[] = {
            {CKA_GUARDIAN_OEM_ID, (void *)oem, (CK_ULONG)oem_len},
            {CKA_GUARDIAN_PRODUCT_ID, (void *)product, (CK_ULONG)strlen(product)},
            {CKA_GUARDIAN_DEVICE_ID, (void *)value, (CK_ULONG)len},
            {CKA_GUARDIAN_DEVICE_ID_FORMAT, &format, sizeof(format)},
            {CKA_GUARDIAN_PART_OUTCOME, &outcome, sizeof(outcome)},
        };
        rv = request_in(session, CKG_GUARDIAN_REQ_PART_OUTCOME, extra, sizeof(extra) / sizeof(extra[0]), &h);
    }
    if (rv != CKR_OK) {
        why = refusal(rv);
        fprintf(stderr, PROG ": part: device %s: refused: %s (%s)\n", id, why != NULL ? why : "see the module's log",
                ckr(rv));
        return 1;
    }
    answer = get_attr(h, CKA_VALUE, &alen);
    P11(p11->C_DestroyObject(session, h));
    /* "serial=N outcome=... recorded=yes|no\n" */
    {
        const char *serial = strstr((const char *)answer, "serial="), *rec = strstr((const char *)answer, "recorded=");
        printf("device %s: serial %.*s %s (%s)\n", id, serial ? (int)strcspn(serial + 7, " \n") : 1,
               serial ? serial + 7 : "?", outcome == CKG_GUARDIAN_OUTCOME_PROGRAMMED ? "programmed" : "scrapped",
               rec != NULL && strncmp(rec + 9, "yes", 3) == 0 ? "recorded" : "already reported");
    }
    free(answer);
    return 0;
}

int cmd_part(int argc, char **argv)
{
    static const struct option opts[] = {{"product", required_argument, NULL, 'p'},
                                         {"device", required_argument, NULL, 'd'},
                                         {"from", required_argument, NULL, 'f'},
                                         {"hex", no_argument, NULL, 'x'},
                                         {NULL, 0, NULL, 0}};
    const char *scope = NULL, *device = NULL, *from = NULL, *slash, *word;
    unsigned long tried = 0, refused = 0;
    CK_ULONG outcome;
    FILE *in = NULL;
    int c, hex = 0;

    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'p': scope = optarg; break;
        case 'd': device = optarg; break;
        case 'f': from = optarg; break;
        case 'x': hex = 1; break;
        default: usage_die("part", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind != argc - 1)
        usage_die("part", "needs one outcome, programmed or scrapped, after the options");
    word = argv[optind];
    if (strcmp(word, "programmed") == 0)
        outcome = CKG_GUARDIAN_OUTCOME_PROGRAMMED;
    else if (strcmp(word, "scrapped") == 0)
        outcome = CKG_GUARDIAN_OUTCOME_SCRAPPED;
    else
        usage_die("part", "the outcome is programmed or scrapped, not '%s'", word);
    if (scope == NULL || (slash = strchr(scope, '/')) == NULL || slash == scope || slash[1] == '\0')
        usage_die("part", "--product OEM/PRODUCT is required");
    if ((device == NULL) == (from == NULL))
        usage_die("part", "name the part with --device ID or the parts with --from FILE (one of them)");
    if (from != NULL && (in = strcmp(from, "-") == 0 ? stdin : fopen(from, "r")) == NULL)
        usage_die("part", "cannot open %s: %s", from, strerror(errno));
    need_token();
    login(CKU_USER);
    if (device != NULL) {
        tried = 1;
        refused = (unsigned long)report_one(scope, (size_t)(slash - scope), slash + 1, device, hex, outcome);
    } else {
        char line[DEVICE_LINE_MAX + 2];
        unsigned long n = 0;
        while (fgets(line, sizeof(line), in) != NULL) {
            size_t l = strcspn(line, "\r\n");
            n++;
            if (line[l] == '\0' && !feof(in)) {
                fprintf(stderr, PROG ": part: %s line %lu: longer than %d bytes: skipped\n", from, n, DEVICE_LINE_MAX);
                tried++;
                refused++;
                for (int ch; (ch = fgetc(in)) != EOF && ch != '\n';)
                    ;
                continue;
            }
            line[l] = '\0';
            while (l > 0 && isspace((unsigned char)line[l - 1]))
                line[--l] = '\0';
            if (l == 0 || line[0] == '#')
                continue;
            tried++;
            refused += (unsigned long)report_one(scope, (size_t)(slash - scope), slash + 1, line, hex, outcome);
        }
        if (ferror(in))
            die("cannot read %s: %s", from, strerror(errno));
        if (in != stdin)
            fclose(in);
        fprintf(stderr, PROG ": part: %lu devices reported %s, %lu refused\n", tried - refused, word, refused);
    }
    return refused > 0 ? EXIT_REFUSED : 0;
}
