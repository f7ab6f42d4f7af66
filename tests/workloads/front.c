/*
 * front.c - a PIE front end whose hot code is in libhot.so (linked against
 * it, found through its rpath $ORIGIN; LD_LIBRARY_PATH takes precedence
 * over that, which is how a test runs it against a BOLTed copy).
 *
 *   front UNITS    about UNITS ms of CPU, most of it in libhot.so; prints
 *                  "checksum <hex>"
 */
#include <stdint.h>

#include "frontend.h"

uint64_t libhot_run(uint64_t seed, uint64_t units);

int main(int argc, char **argv)
{
    run_frontend(libhot_run, parse_work(argc == 2 ? argv[1] : NULL,
                                        "front UNITS"));
    return 0;
}
