/* profiled.h - what the test workloads share: keep hot functions out of
 * line and unspecialised so that each one shows up in a profile under its
 * own name (as src/ebpf_bolt/demo/workload.c does), and one xorshift step. */
#ifndef WORKLOADS_PROFILED_H
#define WORKLOADS_PROFILED_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#if defined(__clang__)
#define PROFILED __attribute__((noinline))
#elif defined(__GNUC__) && __GNUC__ >= 8
#define PROFILED __attribute__((noinline, noipa))
#else
#define PROFILED __attribute__((noinline))
#endif

static inline uint64_t xorshift(uint64_t s)
{
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
}

/* A decimal work amount from argv, or exit 2 with usage. */
static inline unsigned long parse_work(const char *s, const char *usage)
{
    char *end;
    errno = 0;
    unsigned long v = s && *s != '-' ? strtoul(s, &end, 10) : 0;
    if (!s || *s == '-' || !*s || errno || *end || v > 1000000ul) {
        fprintf(stderr, "usage: %s\n", usage);
        exit(2);
    }
    return v;
}

#endif
