/*
 * pidreuse.c - a recorded process that gets the process id of one that
 * exited just before, while that exit is the last group exit on its CPU
 * (on_exit deletes the entry of the previous one at the next, deferred).
 *
 *   pidreuse [STEPS]   A exits on CPU 1; B is forked with A's pid
 *                      (ns_last_pid, root), spins on CPU 0 in spin();
 *                      C exits on CPU 1 meanwhile. Prints "B pid ...".
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <unistd.h>
#include <sys/wait.h>
static void pin(int cpu) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(cpu, &s); sched_setaffinity(0, sizeof s, &s); }
__attribute__((noinline)) uint64_t spin(unsigned long n)
{
    uint64_t x = 7, acc = 0;
    for (unsigned long i = 0; i < n; i++) { x = x * 6364136223846793005ull + 1; acc ^= x >> 11; }
    return acc;
}
static pid_t fork_exit_on(int cpu) { pid_t p = fork(); if (!p) { pin(cpu); _exit(0); } waitpid(p, 0, 0); return p; }
int main(int argc, char **argv)
{
    pin(0);
    pid_t a = fork_exit_on(1);           /* A exits on CPU 1: pending[1] = a */
    FILE *f = fopen("/proc/sys/kernel/ns_last_pid", "w");
    fprintf(f, "%d", a - 1); fclose(f);
    pid_t b = fork();                     /* B gets a's pid */
    if (!b) {
        pin(0);
        usleep(50000);                    /* let C exit on CPU 1 first */
        printf("B pid %d: %llx\n", getpid(), (unsigned long long)spin(argc > 1 ? atol(argv[1]) : 300000000ul));
        _exit(0);
    }
    fprintf(stderr, "A pid %d, B pid %d\n", a, b);
    fork_exit_on(1);                      /* C exits on CPU 1: deletes procs[pending] */
    waitpid(b, 0, 0);
    return 0;
}
