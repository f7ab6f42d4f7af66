/*
 * twofunc.c - one program, two hot functions of different code: two
 * processes of it, one per function, are told apart in one profile only
 * if each one's samples land at its own symbol.
 *
 *   twofunc a|b UNITS   runs work_a or work_b for about UNITS ms of CPU;
 *                       prints "work_a checksum <hex>" (or work_b)
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "profiled.h"

#define USAGE "twofunc a|b UNITS"
/* calibrated: one unit is about 1 ms on the project's VM */
#define STEPS_A 575000u
#define STEPS_B 800000u

uint64_t work_a(uint64_t seed, unsigned long units);
uint64_t work_b(uint64_t seed, unsigned long units);

/* xorshift with a data-dependent branch */
PROFILED uint64_t work_a(uint64_t seed, unsigned long units)
{
    uint64_t s = seed | 1u, acc = 0;
    for (unsigned long u = 0; u < units; u++)
        for (uint32_t i = 0; i < STEPS_A; i++) {
            s = xorshift(s);
            if (s & 4u)
                acc += s >> 7;
            else
                acc ^= s;
        }
    return acc ^ s;
}

/* a linear congruential walk with a multiply-and-rotate chain */
PROFILED uint64_t work_b(uint64_t seed, unsigned long units)
{
    uint64_t x = seed, acc = 0;
    for (unsigned long u = 0; u < units; u++)
        for (uint32_t i = 0; i < STEPS_B; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            acc = ((acc ^ x) * 0xFF51AFD7ED558CCDull);
            acc = (acc << 23) | (acc >> 41);
        }
    return acc ^ x;
}

int main(int argc, char **argv)
{
    if (argc != 3 || (strcmp(argv[1], "a") && strcmp(argv[1], "b"))) {
        fprintf(stderr, "usage: %s\n", USAGE);
        return 2;
    }
    unsigned long units = parse_work(argv[2], USAGE);
    int a = argv[1][0] == 'a';
    uint64_t sum = a ? work_a(0xA11CEull, units) : work_b(0xB0Bull, units);
    printf("work_%s checksum %016" PRIx64 "\n", argv[1], sum);
    fflush(stdout);
    return 0;
}
