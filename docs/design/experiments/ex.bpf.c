#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
struct ev { u32 tgid; u32 dev; u64 start, end, pgoff, ino, flags, addr; long ret; char comm[16]; };
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 2); __type(key, u32); __type(value, u64);} cnt SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 64); __type(key, u32); __type(value, struct ev);} evs SEC(".maps");
static long cb(struct task_struct *task, struct vm_area_struct *vma, struct ev *e)
{
	e->start = vma->vm_start; e->end = vma->vm_end; e->pgoff = vma->vm_pgoff;
	
	struct file *f = vma->vm_file;
	if (f) { e->ino = BPF_CORE_READ(f, f_inode, i_ino); e->dev = BPF_CORE_READ(f, f_inode, i_sb, s_dev); }
	return 0;
}
static void rec(struct task_struct *t, u64 addr)
{
	u32 k = 0; u64 *c = bpf_map_lookup_elem(&cnt, &k); if (!c) return;
	u32 n = __sync_fetch_and_add(c, 1); if (n >= 64) return;
	struct ev *e = bpf_map_lookup_elem(&evs, &n); if (!e) return;
	struct ev s = {};
	s.tgid = t->tgid; s.addr = addr; bpf_get_current_comm(s.comm, 16);
	u64 t0 = bpf_ktime_get_ns();
	s.ret = bpf_find_vma(t, addr, cb, &s, 0);
	s.flags = bpf_ktime_get_ns() - t0;
	__builtin_memcpy(e, &s, sizeof(s));
}
SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	char comm[16]; bpf_get_current_comm(comm, 16);
	if (comm[0] != 'i' || comm[1] != '9') return 0;
	struct task_struct *t = bpf_get_current_task_btf();
	rec(t, t->mm->start_code);
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(t);
	rec(t, BPF_CORE_READ(regs, ip));
	return 0;
}
char LICENSE[] SEC("license") = "GPL";
