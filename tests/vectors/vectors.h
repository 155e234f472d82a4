/*
 * vectors.h — read tests/vectors/key-transport-v1.txt ("name = hex" lines).
 */
#ifndef GUARDIAN_TEST_VECTORS_H
#define GUARDIAN_TEST_VECTORS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The value of `name` in `path`, decoded from hex into a malloc'd buffer;
 * NULL if absent or not hex. */
static inline unsigned char *vector_get(const char *path, const char *name, size_t *len)
{
    FILE *f = fopen(path, "r");
    char line[4096];
    unsigned char *out = NULL;
    size_t nlen = strlen(name);

    if (f == NULL)
        return NULL;
    while (out == NULL && fgets(line, sizeof(line), f) != NULL) {
        char *v;
        size_t hl;
        if (strncmp(line, name, nlen) != 0 || strncmp(line + nlen, " = ", 3) != 0)
            continue;
        v = line + nlen + 3;
        hl = strcspn(v, "\r\n");
        if (hl % 2 != 0)
            break;
        out = malloc(hl / 2 + 1);
        for (size_t i = 0; out != NULL && i < hl / 2; i++) {
            unsigned int b;
            if (sscanf(v + 2 * i, "%2x", &b) != 1) {
                free(out);
                out = NULL;
                break;
            }
            out[i] = (unsigned char)b;
        }
        *len = hl / 2;
    }
    fclose(f);
    return out;
}

#endif
