// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * ebpf-bolt kernel side: aggregate samples into per-CPU maps in the kernel,
 * so that user space reads one summary at the end instead of every sample.
 *
 * Only UAPI types and stable helpers are used (no kernel structs), so one
 * object per CPU architecture runs on any kernel with BTF-capable libbpf.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/bpf_perf_event.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "ebpf_bolt.h"

#define E2BIG 7
#define EEXIST 17

const volatile struct eb_config cfg = {
	.user_addr_end = 0xffff800000000000ULL,
};

/* Basic samples: user-space IP -> sample count. Sized from user space. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, __u64);
} ip_counts SEC(".maps");

/* Branch traces (from, to, fall-through end) -> taken and mispredict
 * counts, filled from branch stacks. Sized from user space. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1);
	__type(key, struct eb_trace);
	__type(value, struct eb_trace_counts);
} trace_counts SEC(".maps");

/* Optional per-thread sample counts, so a run can show which threads
 * were sampled (threads created during the recording included). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} thread_samples SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct eb_stats);
} stats SEC(".maps");

static __always_inline struct eb_stats *get_stats(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&stats, &zero);
}

/* Add `n` to a per-CPU u64 counter keyed by `key`. The value is this CPU's
 * own copy, so a plain add is safe: programs do not nest on one CPU. */
static __always_inline long add_count(void *map, const void *key, __u64 n)
{
	__u64 *val = bpf_map_lookup_elem(map, key);
	long err;

	if (val) {
		*val += n;
		return 0;
	}
	err = bpf_map_update_elem(map, key, &n, BPF_NOEXIST);
	if (err == -EEXIST) {
		/* another CPU created the key between lookup and update */
		val = bpf_map_lookup_elem(map, key);
		if (val) {
			*val += n;
			return 0;
		}
	}
	return err;
}

static __always_inline void count_failure(struct eb_stats *st, long err,
					  int full_counter)
{
	if (err == -E2BIG)
		st->counter[full_counter]++;
	else if (err)
		st->counter[EB_UPDATE_FAILED]++;
}

/* The filters every sample goes through; returns 0 to keep the sample. */
static __always_inline int keep_sample(struct eb_stats *st)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	st->counter[EB_SAMPLES]++;
	if (cfg.target_tgid && (__u32)(pid_tgid >> 32) != cfg.target_tgid) {
		st->counter[EB_OTHER_PROCESS]++;
		return -1;
	}
	if (cfg.count_threads) {
		__u32 tid = (__u32)pid_tgid;

		count_failure(st, add_count(&thread_samples, &tid, 1),
			      EB_THREAD_MAP_FULL);
	}
	return 0;
}

/* Basic (IP) sampling: the interrupted user-space instruction pointer. */
SEC("perf_event")
int sample_ip(struct bpf_perf_event_data *ctx)
{
	struct eb_stats *st = get_stats();
	__u64 ip;

	if (!st || keep_sample(st))
		return 0;
	ip = PT_REGS_IP(&ctx->regs);
	if (ip >= cfg.user_addr_end) {
		st->counter[EB_KERNEL_IP]++;
		return 0;
	}
	count_failure(st, add_count(&ip_counts, &ip, 1), EB_MAP_FULL);
	return 0;
}

/* ---- Branch stacks -------------------------------------------------- */

/* Slots of the per-sample combining table: loops repeat the same trace many
 * times within one stack, so counts are combined here first and each
 * distinct trace costs one hash-map operation per sample, not one per
 * entry. Direct-mapped: a colliding trace flushes the slot's occupant. */
#define EB_SLOTS 64

struct eb_slot {
	struct eb_trace key;
	__u64 count;
	__u64 mispreds;
	__u64 gen;             /* valid only when equal to eb_scratch.gen */
};

/* Per-CPU scratch space: branch stacks do not fit the 512-byte BPF stack. */
struct eb_scratch {
	struct eb_branch entries[EB_MAX_BRANCHES];
	struct eb_slot slots[EB_SLOTS];
	__u64 gen;
	struct eb_stack_header replay_hdr;  /* replay's copy of a header */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct eb_scratch);
} scratch SEC(".maps");

static __always_inline struct eb_scratch *get_scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&scratch, &zero);
}

/* Add one trace's counts to this CPU's value in the trace map. */
static __always_inline void add_trace(const struct eb_trace *key, __u64 count,
				      __u64 mispreds, struct eb_stats *st)
{
	struct eb_trace_counts *val = bpf_map_lookup_elem(&trace_counts, key);
	struct eb_trace_counts init = { .count = count, .mispreds = mispreds };
	long err;

	if (val) {
		val->count += count;
		val->mispreds += mispreds;
		return;
	}
	err = bpf_map_update_elem(&trace_counts, key, &init, BPF_NOEXIST);
	if (err == -EEXIST) {
		/* inserted by another CPU between lookup and update */
		val = bpf_map_lookup_elem(&trace_counts, key);
		if (val) {
			val->count += count;
			val->mispreds += mispreds;
			return;
		}
	}
	if (err) {
		count_failure(st, err, EB_MAP_FULL);
		st->counter[EB_TRACES_LOST] += count;
	}
}

static __always_inline __u32 slot_of(const struct eb_trace *t)
{
	__u64 h = t->from * 0x9E3779B97F4A7C15ULL ^
		  t->to * 0xC2B2AE3D27D4EB4FULL ^ t->ft_end;

	return (__u32)(h >> 58) & (EB_SLOTS - 1);
}

/*
 * The aggregation worker, shared by live sampling and replay. Follows
 * perf2bolt's rules (bolt-profile-formats.md, section 2): entries are
 * newest first; entry i gives the trace (from_i, to_i, from of the next
 * newer kept entry), the newest gets EB_BR_ONLY; entries with a kernel
 * from or to are dropped before pairing.
 */
static __always_inline void aggregate_stack(struct eb_scratch *s, __u32 nr,
					    struct eb_stats *st, int naive)
{
	__u64 newer_from = EB_BR_ONLY;
	__u64 gen = ++s->gen;
	__u32 i;

	st->counter[EB_BRANCH_ENTRIES] += nr;
	for (i = 0; i < EB_MAX_BRANCHES; i++) {
		struct eb_branch *b;
		struct eb_slot *slot;
		struct eb_trace t;
		__u64 mis;

		if (i >= nr)
			break;
		b = &s->entries[i];
		if (b->from >= cfg.user_addr_end || b->to >= cfg.user_addr_end) {
			st->counter[EB_KERNEL_BRANCHES]++;
			continue;
		}
		t.from = b->from;
		t.to = b->to;
		t.ft_end = newer_from;
		newer_from = b->from;
		mis = b->flags & EB_BRANCH_MISPRED;
		/* counted in memory, not in a register, so that the verifier's
		 * states at the loop head stay alike and are pruned */
		st->counter[EB_TRACES]++;
		if (naive) {
			add_trace(&t, 1, mis, st);
			continue;
		}
		slot = &s->slots[slot_of(&t)];
		if (slot->gen == gen) {
			if (slot->key.from == t.from && slot->key.to == t.to &&
			    slot->key.ft_end == t.ft_end) {
				slot->count++;
				slot->mispreds += mis;
				continue;
			}
			add_trace(&slot->key, slot->count, slot->mispreds, st);
		}
		slot->key = t;
		slot->count = 1;
		slot->mispreds = mis;
		slot->gen = gen;
	}
	if (newer_from == EB_BR_ONLY)  /* no user-space entry kept */
		st->counter[EB_EMPTY_STACKS]++;
	if (naive)
		return;
	for (i = 0; i < EB_SLOTS; i++) {
		struct eb_slot *slot = &s->slots[i];

		if (slot->gen == gen)
			add_trace(&slot->key, slot->count, slot->mispreds, st);
	}
}

/*
 * Live branch-stack sampling. Runs only where the CPU records branch
 * stacks (Intel LBR, AMD LbrExtV2, ARM BRBE): on machines without them,
 * bpf_read_branch_records() fails and the failure is counted, which is
 * all that can be exercised there. Keep this short; the aggregation
 * itself is tested through replay_branches.
 */
SEC("perf_event")
int sample_branches(struct bpf_perf_event_data *ctx)
{
	struct eb_stats *st = get_stats();
	struct eb_scratch *s;
	long size, total;

	if (!st || keep_sample(st))
		return 0;
	s = get_scratch();
	if (!s) {
		st->counter[EB_SCRATCH_FAILED]++;
		return 0;
	}
	size = bpf_read_branch_records(ctx, s->entries, sizeof(s->entries), 0);
	if (size < 0) {
		st->counter[EB_BRANCH_READ_FAILED]++;
		return 0;
	}
	total = bpf_read_branch_records(ctx, NULL, 0,
					BPF_F_GET_BRANCH_RECORDS_SIZE);
	if (total > (long)sizeof(s->entries))
		st->counter[EB_STACK_CUT]++;
	aggregate_stack(s, (__u32)size / sizeof(struct eb_branch), st, 0);
	return 0;
}

/* ---- Replay: the same worker on branch stacks the caller supplies ---- */

struct replay_state {
	__u64 pos;
	__u64 end;
	struct eb_replay_args *args;
	struct eb_scratch *s;
	struct eb_stats *st;
};

static long replay_one(__u32 index, void *data)
{
	struct replay_state *rs = data;
	struct eb_stack_header *hdr = &rs->s->replay_hdr;
	__u32 nr;

	if (rs->pos + sizeof(*hdr) > rs->end)
		goto bad;
	if (bpf_copy_from_user(hdr, sizeof(*hdr), (void *)rs->pos))
		goto bad;
	nr = hdr->nr;
	if (nr > EB_MAX_BRANCHES)
		goto bad;
	rs->pos += sizeof(*hdr);
	if (rs->pos + nr * sizeof(struct eb_branch) > rs->end)
		goto bad;
	if (nr && bpf_copy_from_user(rs->s->entries,
				     nr * sizeof(struct eb_branch),
				     (void *)rs->pos))
		goto bad;
	rs->pos += nr * sizeof(struct eb_branch);
	rs->st->counter[EB_SAMPLES]++;
	/* constant `naive` in each call keeps the verifier's work a sum */
	if (rs->args->naive)
		aggregate_stack(rs->s, nr, rs->st, 1);
	else
		aggregate_stack(rs->s, nr, rs->st, 0);
	rs->args->done++;
	return 0;
bad:
	rs->args->bad++;
	return 1;  /* stop: the rest cannot be parsed */
}

SEC("syscall")
int replay_branches(struct eb_replay_args *args)
{
	struct replay_state rs = {};
	__u32 n = args->nr_stacks;

	rs.s = get_scratch();
	rs.st = get_stats();
	if (!rs.s || !rs.st)
		return 1;
	rs.pos = args->stacks;
	rs.end = args->stacks + args->size;
	rs.args = args;
	if (n > EB_MAX_REPLAY_STACKS)
		n = EB_MAX_REPLAY_STACKS;
	bpf_loop(n, replay_one, &rs, 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
