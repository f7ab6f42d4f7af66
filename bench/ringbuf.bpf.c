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
 * A second program, trace_floor, is the floor of any in-kernel
 * aggregation (see there).
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
/* trace_floor's one object: its code [floor_lo, floor_hi) at run time,
 * and what to subtract for an offset (written before load, ringbuf.py) */
const volatile __u64 floor_lo, floor_hi, floor_delta;

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

/*
 * The floor of in-kernel aggregation: per entry, the least any worker
 * that aggregates traces in the kernel must do before it adds one count:
 * drop kernel addresses, translate both addresses (here the cheapest
 * translation there is, one object's range and one subtraction), pair the
 * entry with the next newer one's source, and hash the trace to find
 * where its count lives (the shipped worker's multiply-xor). It touches no
 * table and counts nothing; the hashes' sum goes to .bss only so that the
 * compiler keeps the work. If this alone costs more than ring_copy, no
 * in-kernel aggregation can cost less than the copy.
 */
__u64 floor_sum;

#define EB_FLOOR_USER_END 0xffff800000000000ULL  /* layout.USER_ADDR_END */

static __always_inline __u64 floor_addr(__u64 addr)
{
	return addr >= floor_lo && addr < floor_hi ? addr - floor_delta : 0;
}

/* A global function, checked once on its own: inlined into the bpf_loop
 * callback, the 64-entry loop is too much for the verifier (as the
 * shipped aggregate_stack notes). */
__noinline __u64 floor_stack(struct eb_branch_stack *stack)
{
	__u64 newer = EB_BR_ONLY, sum = 0;
	__u32 nr, i;

	if (!stack)
		return 0;
	nr = stack->nr;
	for (i = 0; i < EB_MAX_BRANCHES; i++) {
		struct eb_branch *b;
		__u64 from, to, h;

		if (i >= nr)
			break;
		b = &stack->entries[i];
		if (b->from >= EB_FLOOR_USER_END || b->to >= EB_FLOOR_USER_END)
			continue;
		from = floor_addr(b->from);
		to = floor_addr(b->to);
		h = from * 0x9E3779B97F4A7C15ULL;
		h = (h ^ to) * 0xC2B2AE3D27D4EB4FULL;
		h = (h ^ newer) * 0x9E3779B97F4A7C15ULL;
		sum += (h >> 40) + (b->flags & EB_BRANCH_MISPRED);
		newer = from;
	}
	return sum;
}

static long floor_one(__u32 index, void *data)
{
	struct ring_state *rs = data;
	__u32 idx = rs->first + index;
	struct eb_branch_stack *stack = bpf_map_lookup_elem(&ring_stacks, &idx);

	if (!stack)
		return 1;
	floor_sum += floor_stack(stack);
	rs->done++;
	return 0;
}

SEC("syscall")
int trace_floor(struct eb_replay_args *args)
{
	struct ring_state rs = { .first = args->first };

	bpf_loop(args->count, floor_one, &rs, 0);
	args->done = rs.done;
	args->bad = 0;
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
