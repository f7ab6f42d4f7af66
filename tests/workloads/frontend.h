/* frontend.h - the loop front.c and dlfront.c share, so that both print
 * the same checksum for the same work: per unit, one round of libhot_run
 * and a fold of its result in the front end's own function (a small share
 * of the time, so that the front end has profiled code of its own). */
#ifndef WORKLOADS_FRONTEND_H
#define WORKLOADS_FRONTEND_H

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>

#include "profiled.h"

/* calibrated: about 5% of a libhot round on the project's VM */
#define FOLD_STEPS 6000u

PROFILED static uint64_t front_fold(uint64_t h, uint64_t v)
{
    for (uint32_t i = 0; i < FOLD_STEPS; i++) {
        v = xorshift(v ^ h);
        h = (v & 1u) ? h * 0x100000001B3ull + v : h ^ (v >> 5);
    }
    return h;
}

static void run_frontend(uint64_t (*run)(uint64_t, uint64_t),
                         unsigned long units)
{
    uint64_t h = 0x6A09E667F3BCC908ull;
    for (unsigned long u = 0; u < units; u++)
        h = front_fold(h, run(0x5EED0000ull + u, 1));
    printf("checksum %016" PRIx64 "\n", h);
    fflush(stdout);
}

#endif
