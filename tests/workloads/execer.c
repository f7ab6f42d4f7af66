/*
 * execer.c - a program that runs its own hot function, then execs another
 * program in the same process: each program's samples must be credited to
 * it (two non-PIE programs share load addresses, so an address alone does
 * not tell them apart).
 *
 *   execer UNITS PROGRAM [ARG...]
 *     runs exec_hot for about UNITS ms of CPU, prints
 *     "execer checksum <hex>", then execv(PROGRAM, [PROGRAM, ARG...]).
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#include "profiled.h"

#define USAGE "execer UNITS PROGRAM [ARG...]"
/* calibrated: one unit is about 1 ms on the project's VM */
#define STEPS 450000u

uint64_t exec_hot(uint64_t seed, unsigned long units);

PROFILED uint64_t exec_hot(uint64_t seed, unsigned long units)
{
    uint64_t s = seed | 1u, acc = 0;
    for (unsigned long u = 0; u < units; u++)
        for (uint32_t i = 0; i < STEPS; i++) {
            s = xorshift(s);
            acc = (s >> 60) == 3u ? acc * 7u : acc + (s & 0xFFFFu);
        }
    return acc ^ s;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s\n", USAGE);
        return 2;
    }
    unsigned long units = parse_work(argv[1], USAGE);
    printf("execer checksum %016" PRIx64 "\n", exec_hot(0xE8EC, units));
    fflush(stdout);
    execv(argv[2], argv + 2);
    perror("execer: execv");
    return 127;
}
