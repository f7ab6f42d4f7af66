#include <dlfcn.h>
#include <stdio.h>
int main(int c, char **v){ if (c>1){ void *h=dlopen(v[1],RTLD_NOW); printf("%p\n",h);} return 0; }
