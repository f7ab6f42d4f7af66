/*
 * libhot.c - the shared library of ebpf-bolt's multi-object tests
 * (libhot.so, linked with --emit-relocs so that BOLT can rewrite it).
 *
 * libhot_run(seed, units) runs `units` rounds; each round calls three hot
 * functions of different kinds and weights (by calls, 4:2:1, with equal
 * chunks: libhot_mix, a branchy loop; libhot_search, binary searches in a
 * table; libhot_switch, a dense switch) and, once in 64 rounds,
 * libhot_rare.  A round is about a millisecond of CPU on the project's VM.
 * The result depends on the arguments only.
 */
#include <stdint.h>

#include "profiled.h"

#define CHUNK 96u
#define TABLE 1024u
/* calibrated: one round is about 1 ms on the project's VM */
#define CALLS_PER_ROUND 196u

uint64_t libhot_run(uint64_t seed, uint64_t units);
uint64_t libhot_mix(uint64_t *state, uint32_t n);
uint64_t libhot_search(uint64_t *state, uint32_t n);
uint64_t libhot_switch(uint64_t *state, uint32_t n);
uint64_t libhot_rare(uint64_t v);

static uint32_t table[TABLE];

PROFILED uint64_t libhot_mix(uint64_t *state, uint32_t n)
{
    uint64_t s = *state, acc = 0;
    for (uint32_t i = 0; i < n; i++) {
        s = xorshift(s);
        uint32_t r = (uint32_t)(s >> 24);
        if (r & 1u)
            acc += s >> 3;
        else
            acc ^= s << 1;
        if ((r & 0x18u) == 0)
            for (uint32_t j = 0; j <= ((r >> 8) & 7u); j++)
                acc += (acc >> j) & 1u ? r >> j : acc >> (j + 1);
    }
    *state = s;
    return acc;
}

PROFILED uint64_t libhot_search(uint64_t *state, uint32_t n)
{
    uint64_t s = *state, acc = 0;
    for (uint32_t i = 0; i < n / 4; i++) {   /* a search is ~10 steps */
        s = xorshift(s);
        uint32_t key = (uint32_t)s, lo = 0, hi = TABLE;
        while (lo < hi) {
            uint32_t mid = (lo + hi) / 2;
            if (table[mid] < key)
                lo = mid + 1;
            else
                hi = mid;
        }
        acc = acc * 31u + lo;
    }
    *state = s;
    return acc;
}

PROFILED uint64_t libhot_switch(uint64_t *state, uint32_t n)
{
    uint64_t s = *state, acc = 0;
    for (uint32_t i = 0; i < n; i++) {
        s = xorshift(s);
        switch ((s >> 40) & 7u) {
        case 0: acc += s; break;
        case 1: acc ^= s >> 9; break;
        case 2: acc = acc * 5u + 1u; break;
        case 3: acc -= s << 3; break;
        case 4: acc = (acc << 7) | (acc >> 57); break;
        case 5: acc ^= 0x9E3779B97F4A7C15ull; break;
        case 6: acc += acc >> 13; break;
        default: acc = ~acc; break;
        }
    }
    *state = s;
    return acc;
}

PROFILED uint64_t libhot_rare(uint64_t v)
{
    for (int i = 0; i < 64; i++)
        v = xorshift(v) + (uint64_t)i;
    return v;
}

uint64_t libhot_run(uint64_t seed, uint64_t units)
{
    uint64_t s = seed | 1u, acc = 0;
    uint32_t t = 0x12345u;
    for (uint32_t i = 0; i < TABLE; i++) {   /* sorted: t only grows */
        t += 1u + (uint32_t)(xorshift(s + i) % 0x3FFFFFu);
        table[i] = t;
    }
    for (uint64_t u = 0; u < units; u++) {
        for (uint32_t c = 0; c < CALLS_PER_ROUND; c++) {
            acc += libhot_mix(&s, CHUNK);
            acc ^= libhot_search(&s, CHUNK);
            acc += libhot_mix(&s, CHUNK);
            acc ^= libhot_switch(&s, CHUNK);
            acc += libhot_mix(&s, CHUNK);
            acc ^= libhot_search(&s, CHUNK);
            acc += libhot_mix(&s, CHUNK);
        }
        if ((u & 63u) == 0)
            acc ^= libhot_rare(acc);
    }
    return acc ^ s;
}
