#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
struct xr { u64 start, end, delta; };
struct proc { u32 gen, n; struct xr r[8]; };
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 65536); __type(key, u32); __type(value, struct proc);} procs SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 8); __type(key, u32); __type(value, u64);} out SEC(".maps");
struct ctx_t { u64 sink; u32 tgid; };
static long one_hash(u64 i, struct ctx_t *c)
{
	u32 k = c->tgid + (u32)(i & 63);
	struct proc *p = bpf_map_lookup_elem(&procs, &k);
	if (!p) return 0;
	u64 ip = 0x1000 + (i & 7) * 0x100000 + 5;
	for (int j = 0; j < 8; j++) {
		if (ip >= p->r[j].start && ip < p->r[j].end) { c->sink += ip - p->r[j].delta; break; }
	}
	return 0;
}
static long one_cmp(u64 i, struct ctx_t *c)
{
	u32 k = c->tgid + (u32)(i & 63);
	if (k != 12345) c->sink++;
	return 0;
}
SEC("syscall")
int bench(struct ctx_t *unused)
{
	struct ctx_t c = { .tgid = 1000 };
	u32 z;
	u64 t0 = bpf_ktime_get_ns();
	bpf_loop(1000000, one_cmp, &c, 0);
	u64 t1 = bpf_ktime_get_ns();
	bpf_loop(1000000, one_hash, &c, 0);
	u64 t2 = bpf_ktime_get_ns();
	z = 0; u64 *o = bpf_map_lookup_elem(&out, &z); if (o) *o = t1 - t0;
	z = 1; o = bpf_map_lookup_elem(&out, &z); if (o) *o = t2 - t1;
	z = 2; o = bpf_map_lookup_elem(&out, &z); if (o) *o = c.sink;
	return 0;
}
char LICENSE[] SEC("license") = "GPL";
