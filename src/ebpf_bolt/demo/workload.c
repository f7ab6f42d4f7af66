/*
 * workload.c - deterministic, branchy demo workload for ebpf-bolt.
 *
 * Two modes:
 *
 *   shares (default)  Worker threads ("early" ones started at program start,
 *                     "late" ones started later, each late thread starting one
 *                     "grand" thread of its own) run a loop that calls the
 *                     global functions hot_a, hot_b and hot_c.  The three
 *                     functions have identical bodies and are called with the
 *                     same chunk size in a 5:3:2 ratio within every round, so
 *                     a CPU profile of any time window of any worker shows
 *                     them at 50% / 30% / 20%.
 *
 *   icache            Single-threaded.  96 hot functions, each with a short
 *                     hot path interleaved with large, rarely executed
 *                     blocks, separated in the text section by cold
 *                     functions.  The compiler is told (wrongly) that the
 *                     rare blocks are likely, so its static layout puts them
 *                     in the fall-through path and the hot code is spread
 *                     over many cache lines: a profile-guided layout
 *                     (hot/cold splitting plus function reordering) packs it
 *                     and cuts instruction-cache misses.
 *
 * The output is deterministic: every worker computes its result from a seed
 * derived from its logical index only, and main combines the results in
 * logical order, printing "checksum <hex>" as the last line of stdout.
 *
 * Every thread prints "tid <role> <tid>" on stderr when it starts work
 * (role is main, early, late or grand).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Keep functions out of line, unmerged and unspecialised so that each one
 * shows up in a profile under its own name. */
#if defined(__clang__)
#define PROFILED __attribute__((noinline))
#elif defined(__GNUC__) && __GNUC__ >= 8
#define PROFILED __attribute__((noinline, noipa))
#elif defined(__GNUC__)
#define PROFILED __attribute__((noinline, noclone))
#else
#define PROFILED
#endif

/* Keep the emitted order of functions equal to their source order (clang
 * does that by itself for functions with external linkage). */
#if defined(__GNUC__) && !defined(__clang__)
#define SOURCE_ORDER __attribute__((no_reorder))
#else
#define SOURCE_ORDER
#endif

/* A condition that is rarely true but which the compiler is told is likely:
 * it simulates a static layout that got the hot path wrong. */
#define RARE_BUT_LAID_OUT_AS_LIKELY(c) __builtin_expect(!!(c), 1)

/* --------------------------------------------------------------------- */
/* Common helpers                                                        */
/* --------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static uint64_t combine(uint64_t h, uint64_t v)
{
    return splitmix64(h ^ v) + 0x100000001B3ull * h;
}

static long current_tid(void)
{
    return (long)syscall(SYS_gettid);
}

static void announce(const char *role)
{
    fprintf(stderr, "tid %s %ld\n", role, current_tid());
    fflush(stderr);
}

/* --------------------------------------------------------------------- */
/* shares mode                                                           */
/* --------------------------------------------------------------------- */

/* Iterations per hot_* call and rounds per unit of --scale; calibrated so
 * that --scale 100 is about one second of CPU per worker thread. */
#define SHARES_CHUNK 64u
#define SHARES_ROUNDS_PER_SCALE 750u

/* One body, three functions: equal per-call cost by construction. */
#define DEFINE_HOT_SHARE(name)                                               \
    uint64_t name(uint64_t *state, uint32_t n);                              \
    PROFILED uint64_t name(uint64_t *state, uint32_t n)                      \
    {                                                                        \
        uint64_t s = *state;                                                 \
        uint64_t acc = 0;                                                    \
        for (uint32_t i = 0; i < n; i++) {                                   \
            s ^= s << 13;                                                    \
            s ^= s >> 7;                                                     \
            s ^= s << 17;                                                    \
            uint32_t r = (uint32_t)(s >> 24);                                \
            if (r & 1u)                                                      \
                acc += s >> 3;                                               \
            else                                                             \
                acc ^= s << 1;                                               \
            switch ((r >> 1) & 3u) {                                         \
            case 0:                                                          \
                acc = acc * 31u + r;                                         \
                break;                                                       \
            case 1:                                                          \
                acc ^= acc >> 11;                                            \
                break;                                                       \
            case 2:                                                          \
                acc += (uint64_t)r << 7;                                     \
                break;                                                       \
            default:                                                         \
                acc = (acc << 5) | (acc >> 59);                              \
                break;                                                       \
            }                                                                \
            if ((r & 0x30u) == 0) {                                          \
                uint32_t m = (r >> 8) & 7u;                                  \
                for (uint32_t j = 0; j <= m; j++) {                          \
                    if ((acc >> j) & 1u)                                     \
                        acc += (acc >> (j + 1)) ^ r;                         \
                    else                                                     \
                        acc -= r >> j;                                       \
                }                                                            \
            }                                                                \
        }                                                                    \
        *state = s;                                                          \
        return acc;                                                          \
    }

DEFINE_HOT_SHARE(hot_a)
DEFINE_HOT_SHARE(hot_b)
DEFINE_HOT_SHARE(hot_c)

uint64_t shares_worker(uint64_t seed, uint64_t rounds);

PROFILED uint64_t shares_worker(uint64_t seed, uint64_t rounds)
{
    uint64_t s = splitmix64(seed) | 1u;
    uint64_t acc = 0;
    for (uint64_t round = 0; round < rounds; round++) {
        /* Interleaved 5:3:2 so that every short window has the ratio. */
        acc += hot_a(&s, SHARES_CHUNK);
        acc ^= hot_b(&s, SHARES_CHUNK);
        acc += hot_c(&s, SHARES_CHUNK);
        acc ^= hot_a(&s, SHARES_CHUNK);
        acc += hot_b(&s, SHARES_CHUNK);
        acc ^= hot_a(&s, SHARES_CHUNK);
        acc += hot_c(&s, SHARES_CHUNK);
        acc ^= hot_a(&s, SHARES_CHUNK);
        acc += hot_b(&s, SHARES_CHUNK);
        acc ^= hot_a(&s, SHARES_CHUNK);
        acc = (acc << 1) | (acc >> 63);
    }
    return acc ^ s;
}

enum role { ROLE_EARLY, ROLE_LATE, ROLE_GRAND };

static const char *const role_names[] = { "early", "late", "grand" };

struct worker {
    enum role role;
    unsigned index;          /* logical index into results[] */
    unsigned grand_index;    /* for late workers: their grandchild's index */
    uint64_t rounds;
    pthread_t thread;
};

static uint64_t *results;
static struct worker *workers;

/* Lets main wait until every early thread has announced itself. */
static pthread_mutex_t started_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t started_cond = PTHREAD_COND_INITIALIZER;
static unsigned started_early;

static uint64_t seed_for(unsigned index)
{
    return splitmix64(0x5EEDBA5Eull + 0x1000193ull * (uint64_t)index);
}

static void start_thread(pthread_t *t, void *(*fn)(void *), void *arg)
{
    int err = pthread_create(t, NULL, fn, arg);
    if (err != 0) {
        fprintf(stderr, "workload: pthread_create: %s\n", strerror(err));
        exit(1);
    }
}

static void join_thread(pthread_t t)
{
    int err = pthread_join(t, NULL);
    if (err != 0) {
        fprintf(stderr, "workload: pthread_join: %s\n", strerror(err));
        exit(1);
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    pthread_t grand;

    announce(role_names[w->role]);
    if (w->role == ROLE_EARLY) {
        pthread_mutex_lock(&started_lock);
        started_early++;
        pthread_cond_broadcast(&started_cond);
        pthread_mutex_unlock(&started_lock);
    }
    if (w->role == ROLE_LATE)
        start_thread(&grand, worker_main, &workers[w->grand_index]);
    results[w->index] = shares_worker(seed_for(w->index), w->rounds);
    if (w->role == ROLE_LATE)
        join_thread(grand);
    return NULL;
}

static void wait_for_sigusr1(const sigset_t *set)
{
    int sig = 0;
    for (;;) {
        int err = sigwait(set, &sig);
        if (err == 0 && sig == SIGUSR1)
            return;
        if (err != 0 && err != EINTR) {
            fprintf(stderr, "workload: sigwait: %s\n", strerror(err));
            exit(1);
        }
    }
}

static void say_ready(void)
{
    printf("ready\n");
    fflush(stdout);
}

static uint64_t run_shares(uint64_t scale, unsigned n_early, unsigned n_late,
                           int wait_signal, const sigset_t *set)
{
    unsigned total = n_early + 2 * n_late;
    uint64_t rounds = scale * SHARES_ROUNDS_PER_SCALE;
    uint64_t h = 0x6A09E667F3BCC908ull;

    results = calloc(total ? total : 1, sizeof(*results));
    workers = calloc(total ? total : 1, sizeof(*workers));
    if (!results || !workers) {
        fprintf(stderr, "workload: out of memory\n");
        exit(1);
    }
    /* Logical indices: early 0..E-1, late E..E+L-1, grand E+L..E+2L-1. */
    for (unsigned i = 0; i < total; i++) {
        workers[i].index = i;
        workers[i].rounds = rounds;
        if (i < n_early) {
            workers[i].role = ROLE_EARLY;
        } else if (i < n_early + n_late) {
            workers[i].role = ROLE_LATE;
            workers[i].grand_index = i + n_late;
        } else {
            workers[i].role = ROLE_GRAND;
        }
    }

    for (unsigned i = 0; i < n_early; i++)
        start_thread(&workers[i].thread, worker_main, &workers[i]);

    if (wait_signal) {
        pthread_mutex_lock(&started_lock);
        while (started_early < n_early)
            pthread_cond_wait(&started_cond, &started_lock);
        pthread_mutex_unlock(&started_lock);
        say_ready();
        wait_for_sigusr1(set);
    }

    for (unsigned i = n_early; i < n_early + n_late; i++)
        start_thread(&workers[i].thread, worker_main, &workers[i]);

    for (unsigned i = 0; i < n_early + n_late; i++)
        join_thread(workers[i].thread);   /* late threads join their grands */

    for (unsigned i = 0; i < total; i++)
        h = combine(h, results[i]);
    free(results);
    free(workers);
    return h;
}

/* --------------------------------------------------------------------- */
/* icache mode                                                           */
/* --------------------------------------------------------------------- */

#define IC_CALLS_PER_SCALE 200000u
#define IC_ROWS 12
#define IC_PER_ROW 8
#define IC_NHOT (IC_ROWS * IC_PER_ROW)
#define IC_TIER1 16

typedef uint64_t (*ic_fn)(uint64_t);

/* Handlers that the rare blocks call.  Reached only through this writable,
 * externally visible table, so the compiler sees no call edges and keeps
 * the cold functions interleaved with the hot ones in the text section. */
ic_fn ic_cold_table[IC_NHOT];

/* One step of unrolled arithmetic for a cold block; constants differ for
 * every (function, block, step) so that no two blocks can be merged. */
#define IC_MIX(id, k, j)                                                     \
    c = c * (0x9E3779B97F4A7C15ull + 2ull * (uint64_t)((id)*97 + (k)*11 + (j))) \
        + (0xD1B54A32D192ED03ull ^ ((uint64_t)((id)*131 + (k)*17 + (j)) << 19)); \
    c ^= c >> (11 + (j));

#define IC_COLD_BLOCK(id, k)                                                 \
    do {                                                                     \
        uint64_t c = acc ^ x;                                                \
        IC_MIX(id, k, 0) IC_MIX(id, k, 1) IC_MIX(id, k, 2)                   \
        IC_MIX(id, k, 3) IC_MIX(id, k, 4) IC_MIX(id, k, 5)                   \
        IC_MIX(id, k, 6) IC_MIX(id, k, 7)                                    \
        if ((c & 3u) == 0)                                                   \
            c ^= ic_cold_table[(id)](c);                                     \
        acc += c;                                                            \
    } while (0)

/* One stage of a hot path: a data-dependent branch, a conditional update,
 * then a rare (1 in 16384) block that the compiler lays out inline. */
#define IC_STAGE(id, k)                                                      \
    x ^= x >> (29 - (k));                                                    \
    x *= 0x9E3779B1u;                                                        \
    if (x & (1u << (20 + (k))))                                              \
        acc += x >> (k + 1);                                                 \
    else                                                                     \
        acc -= x << (k + 1);                                                 \
    if (RARE_BUT_LAID_OUT_AS_LIKELY((x >> 50) ==                             \
                                    (uint64_t)(((id) * 8 + (k)) & 0x3FFF)))  \
        IC_COLD_BLOCK(id, k);

/* A rarely called function that sits between the hot ones. */
#define IC_COLD_FN(name, id)                                                 \
    uint64_t name(uint64_t v);                                               \
    PROFILED SOURCE_ORDER uint64_t name(uint64_t v)                          \
    {                                                                        \
        uint64_t c = v;                                                      \
        for (int r = 0; r < 2; r++) {                                        \
            IC_MIX(id, 20, 0) IC_MIX(id, 21, 1) IC_MIX(id, 22, 2)            \
            IC_MIX(id, 23, 3) IC_MIX(id, 24, 4) IC_MIX(id, 25, 5)            \
            IC_MIX(id, 26, 6) IC_MIX(id, 27, 7) IC_MIX(id, 28, 0)            \
            IC_MIX(id, 29, 1) IC_MIX(id, 30, 2) IC_MIX(id, 31, 3)            \
            IC_MIX(id, 32, 4) IC_MIX(id, 33, 5) IC_MIX(id, 34, 6)            \
            IC_MIX(id, 35, 7) IC_MIX(id, 36, 0) IC_MIX(id, 37, 1)            \
            IC_MIX(id, 38, 2) IC_MIX(id, 39, 3) IC_MIX(id, 40, 4)            \
            IC_MIX(id, 41, 5) IC_MIX(id, 42, 6) IC_MIX(id, 43, 7)            \
            if ((c & 0xFFu) == (uint64_t)(id))                               \
                break;                                                       \
        }                                                                    \
        return c;                                                            \
    }

#define IC_HOT_FN(name, id)                                                  \
    uint64_t name(uint64_t x);                                               \
    PROFILED SOURCE_ORDER uint64_t name(uint64_t x)                          \
    {                                                                        \
        uint64_t acc = (uint64_t)(id) * 0x100000001B3ull;                    \
        IC_STAGE(id, 0)                                                      \
        IC_STAGE(id, 1)                                                      \
        IC_STAGE(id, 2)                                                      \
        IC_STAGE(id, 3)                                                      \
        IC_STAGE(id, 4)                                                      \
        return acc ^ x;                                                      \
    }

/* Cold function, then a hot one.  Both have external linkage: compilers
 * emit those in source order, which interleaves cold and hot code. */
#define IC_PAIR(h, l)                                                        \
    IC_COLD_FN(ic_cold_##h##_##l, (h) * IC_PER_ROW + (l))                     \
    IC_HOT_FN(ic_hot_##h##_##l, (h) * IC_PER_ROW + (l))

#define IC_ROW(h)                                                            \
    IC_PAIR(h, 0) IC_PAIR(h, 1) IC_PAIR(h, 2) IC_PAIR(h, 3)                  \
    IC_PAIR(h, 4) IC_PAIR(h, 5) IC_PAIR(h, 6) IC_PAIR(h, 7)

#define IC_ROW_REFS(prefix, h)                                               \
    prefix##h##_0, prefix##h##_1, prefix##h##_2, prefix##h##_3,              \
    prefix##h##_4, prefix##h##_5, prefix##h##_6, prefix##h##_7

#define IC_ALL_REFS(prefix)                                                  \
    IC_ROW_REFS(prefix, 0), IC_ROW_REFS(prefix, 1), IC_ROW_REFS(prefix, 2),  \
    IC_ROW_REFS(prefix, 3), IC_ROW_REFS(prefix, 4), IC_ROW_REFS(prefix, 5),  \
    IC_ROW_REFS(prefix, 6), IC_ROW_REFS(prefix, 7), IC_ROW_REFS(prefix, 8),  \
    IC_ROW_REFS(prefix, 9), IC_ROW_REFS(prefix, 10), IC_ROW_REFS(prefix, 11)

IC_ROW(0) IC_ROW(1) IC_ROW(2) IC_ROW(3) IC_ROW(4) IC_ROW(5)
IC_ROW(6) IC_ROW(7) IC_ROW(8) IC_ROW(9) IC_ROW(10) IC_ROW(11)

static ic_fn const ic_hot_table[IC_NHOT] = { IC_ALL_REFS(ic_hot_) };
static ic_fn const ic_cold_init[IC_NHOT] = { IC_ALL_REFS(ic_cold_) };

uint64_t icache_driver(uint64_t seed, uint64_t calls);

/* Calls the hot functions in a data-dependent order: 7 calls in 8 go to a
 * "tier 1" of 16 functions spread over the text section, the rest go to
 * any of the 96. */
PROFILED uint64_t icache_driver(uint64_t seed, uint64_t calls)
{
    uint64_t s = splitmix64(seed) | 1u;
    uint64_t acc = 0;
    for (uint64_t i = 0; i < calls; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        unsigned idx;
        if ((s & 7u) != 0)
            idx = (unsigned)((s >> 3) & (IC_TIER1 - 1)) * (IC_NHOT / IC_TIER1) + 1u;
        else
            idx = (unsigned)((s >> 8) % IC_NHOT);
        acc = (acc << 3 | acc >> 61) ^ ic_hot_table[idx](s ^ acc);
    }
    return acc;
}

static uint64_t run_icache(uint64_t scale)
{
    memcpy(ic_cold_table, ic_cold_init, sizeof(ic_cold_table));
    return icache_driver(0x1CAC4Eull, scale * IC_CALLS_PER_SCALE);
}

/* --------------------------------------------------------------------- */
/* main                                                                  */
/* --------------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr,
            "usage: workload [--scale N] [--early K] [--late K] [--wait-signal]\n"
            "                [--mode shares|icache]\n"
            "  --scale N      amount of work (default 100, about 1 s of CPU\n"
            "                 per worker thread)\n"
            "  --early K      worker threads started at program start (default 2)\n"
            "  --late K       worker threads started later, each starting one\n"
            "                 grandchild worker (default 2)\n"
            "  --wait-signal  print \"ready\" and wait for SIGUSR1 before the late\n"
            "                 threads (icache mode: before any work)\n"
            "  --mode M       shares (default) or icache (single-threaded)\n");
}

static int parse_num(const char *s, unsigned long max, unsigned long *out)
{
    char *end;
    if (!s || !*s || *s == '-' || *s == '+')
        return -1;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno != 0 || *end != '\0' || v > max)
        return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    unsigned long scale = 100, n_early = 2, n_late = 2;
    int wait_signal = 0, icache = 0;
    sigset_t set;

    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        const char *val = NULL;
        const char *eq = NULL;
        size_t len = strlen(opt);

        if (strncmp(opt, "--", 2) == 0 && (eq = strchr(opt, '=')) != NULL) {
            len = (size_t)(eq - opt);
            val = eq + 1;
        }
#define OPT_IS(name) (len == strlen(name) && strncmp(opt, name, len) == 0)
        if (OPT_IS("--wait-signal") && !eq) {
            wait_signal = 1;
            continue;
        }
        if (OPT_IS("--help") && !eq) {
            usage();
            return 0;
        }
        if (!OPT_IS("--scale") && !OPT_IS("--early") && !OPT_IS("--late") &&
            !OPT_IS("--mode")) {
            fprintf(stderr, "workload: unknown option '%s'\n", opt);
            usage();
            return 2;
        }
        if (!val) {
            if (i + 1 >= argc) {
                fprintf(stderr, "workload: option '%s' needs a value\n", opt);
                usage();
                return 2;
            }
            val = argv[++i];
        }
        int bad = 0;
        if (OPT_IS("--scale"))
            bad = parse_num(val, 1000000ul, &scale);
        else if (OPT_IS("--early"))
            bad = parse_num(val, 256ul, &n_early);
        else if (OPT_IS("--late"))
            bad = parse_num(val, 256ul, &n_late);
        else if (strcmp(val, "shares") == 0)
            icache = 0;
        else if (strcmp(val, "icache") == 0)
            icache = 1;
        else
            bad = -1;
#undef OPT_IS
        if (bad) {
            fprintf(stderr, "workload: bad value '%s' for option '%.*s'\n",
                    val, (int)len, opt);
            usage();
            return 2;
        }
    }

    /* Block SIGUSR1 before any thread exists so that every thread inherits
     * the mask and sigwait in main is the only consumer. */
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    int err = pthread_sigmask(SIG_BLOCK, &set, NULL);
    if (err != 0) {
        fprintf(stderr, "workload: pthread_sigmask: %s\n", strerror(err));
        return 1;
    }

    uint64_t checksum;
    if (icache) {
        if (wait_signal) {
            say_ready();
            wait_for_sigusr1(&set);
        }
        announce("main");
        checksum = run_icache(scale);
    } else {
        announce("main");
        checksum = run_shares(scale, (unsigned)n_early, (unsigned)n_late,
                              wait_signal, &set);
    }
    printf("checksum %016" PRIx64 "\n", checksum);
    fflush(stdout);
    return 0;
}
