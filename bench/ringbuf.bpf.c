// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Benchmark baseline only, never shipped (bench/ringbuf.py builds it at
 * bench time): the kernel side of a ring-buffer profiler, which copies each
 * branch stack to user space and leaves the aggregation to it (upstream
 * ebpf-bolt's design since it left in-kernel aggregation). Per stack it
 * does what such a sampling program does once it has the stack: one
 * bpf_ringbuf_output() of the stack's nr entries (32 x 24 bytes for the
 * bench's stacks), no aggregation. It reads the same input as the shipped
 * replay_branches (bpf/ebpf_bolt.bpf.c): struct eb_branch_stack records in
 * an mmapable array, a bpf_loop over a run's stacks.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "ebpf_bolt.h"

/* Sized by user space before load to hold a whole run's records, and
 * emptied between runs (its consumer position moved up to the producer's),
 * so that no output fails for want of room. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} stack_ring SEC(".maps");

/* A run's input, written by user space through mmap, as replay_stacks. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct eb_branch_stack);
} ring_stacks SEC(".maps");

/* bpf_ringbuf_output's flags, written before load (ringbuf.py):
 * BPF_RB_NO_WAKEUP, the output alone, by default; 0 adds what
 * libbpf-tools' default does, a wake-up of the consumer when it has read
 * everything before this record (irq_work, kernel/bpf/ringbuf.c,
 * bpf_ringbuf_commit). */
const volatile __u64 output_flags = BPF_RB_NO_WAKEUP;

/* Outputs that failed (ring full), over all runs: user space reads it
 * through the .bss map and reports it. */
__u64 failed_outputs;

/* Context of ring_copy: struct eb_replay_args's layout, `bad` counting the
 * run's failed outputs. */
struct ring_state {
	__u32 first;
	__u32 done;
	__u32 failed;
};

static long copy_one(__u32 index, void *data)
{
	struct ring_state *rs = data;
	__u32 idx = rs->first + index, nr;
	struct eb_branch_stack *stack = bpf_map_lookup_elem(&ring_stacks, &idx);

	if (!stack)
		return 1;
	nr = stack->nr;
	if (nr > EB_MAX_BRANCHES)
		return 1;
	if (bpf_ringbuf_output(&stack_ring, stack->entries,
			       nr * sizeof(struct eb_branch), output_flags)) {
		rs->failed++;
		__sync_fetch_and_add(&failed_outputs, 1);
	} else {
		rs->done++;
	}
	return 0;
}

SEC("syscall")
int ring_copy(struct eb_replay_args *args)
{
	struct ring_state rs = { .first = args->first };

	bpf_loop(args->count, copy_one, &rs, 0);
	args->done = rs.done;
	args->bad = rs.failed;
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
