/*
 * dlcycle.c - dlopens each library named, runs its hot(), dlcloses it:
 * libraries with one fixed base (fixedbase.c) reuse the same addresses.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        void *h = dlopen(argv[i], RTLD_NOW);
        if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
        uint64_t (*f)(unsigned long) = (uint64_t (*)(unsigned long))dlsym(h, "hot");
        printf("%s at %p: %llx\n", argv[i], (void *)f, (unsigned long long)f(300000000ul));
        dlclose(h);
    }
    return 0;
}
