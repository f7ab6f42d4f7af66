/*
 * fixedbase.c - a library linked at a fixed base (-Wl,-Ttext-segment),
 * built twice (FN, SALT) as two libraries that load at the same address:
 * ld.so maps it with its base as the hint. hot(N) runs FN for N steps.
 */
#include <stdint.h>
#ifndef SALT
#define SALT 1
#endif
__attribute__((noinline)) uint64_t FN(unsigned long n)
{
    uint64_t x = SALT, acc = 0;
    for (unsigned long i = 0; i < n; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        acc ^= x >> 13;
    }
    return acc;
}
uint64_t hot(unsigned long n) { return FN(n); }
