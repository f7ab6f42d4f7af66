/*
 * dlfront.c - a front end that loads libhot.so with dlopen only after a
 * wait, so that the library is mapped after a recording began.
 *
 *   dlfront LIBRARY WAIT UNITS
 *     WAIT is milliseconds to sleep, or "-" to wait for one byte (or EOF)
 *     on stdin.  Prints "waiting" before the wait, then "loaded" after the
 *     dlopen, then the same "checksum <hex>" as front UNITS.
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "frontend.h"

#define USAGE "dlfront LIBRARY WAIT_MS|- UNITS"

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s\n", USAGE);
        return 2;
    }
    unsigned long units = parse_work(argv[3], USAGE);
    int from_stdin = strcmp(argv[2], "-") == 0;
    unsigned long wait_ms = from_stdin ? 0 : parse_work(argv[2], USAGE);

    printf("waiting\n");
    fflush(stdout);
    if (from_stdin) {
        char c;
        if (read(0, &c, 1) < 0)
            perror("dlfront: read");
    } else {
        usleep((useconds_t)(wait_ms * 1000u));
    }

    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) {
        fprintf(stderr, "dlfront: %s\n", dlerror());
        return 1;
    }
    uint64_t (*run)(uint64_t, uint64_t);
    *(void **)&run = dlsym(lib, "libhot_run");
    if (!run) {
        fprintf(stderr, "dlfront: %s\n", dlerror());
        return 1;
    }
    printf("loaded\n");
    fflush(stdout);
    run_frontend(run, units);
    return 0;
}
