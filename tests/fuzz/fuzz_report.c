/*
 * fuzz_report.c — libFuzzer target for the audit report reader and verifier
 * (report_verify, tools/report.c): the file an OEM receives from a programming
 * centre it does not trust.  No Guardian, CA or root is given, so every line
 * is parsed and every check that needs no OEM input runs: the embedded
 * certificate, the signature, the chain, the accounting, the certificates.
 */
#include <stdint.h>
#include <string.h>

#include "report.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct report_inputs in;

    memset(&in, 0, sizeof(in));
    in.product = "ACME/SENSOR-1";
    in.authorised = 1;
    /* A report the fuzzer made cannot carry a valid Guardian signature: it
     * never verifies, and malformed input is one problem, never a crash. */
    if (report_verify(data, size, &in) == 0)
        __builtin_trap();
    return 0;
}
