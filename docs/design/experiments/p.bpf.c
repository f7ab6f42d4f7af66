#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
SEC("kprobe/perf_event_mmap")
int p(void *ctx) { return 0; }
char LICENSE[] SEC("license") = "GPL";
