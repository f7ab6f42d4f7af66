// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * ebpf-bolt kernel side: aggregate samples into per-CPU maps in the kernel,
 * so that user space reads one summary at the end instead of every sample.
 *
 * Only UAPI types and stable helpers are used (no kernel structs, no CO-RE
 * relocations), so one object per CPU architecture runs on any kernel new
 * enough for the helpers each program calls (README), with or without
 * kernel BTF.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/bpf_perf_event.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "ebpf_bolt.h"

/* errno values the map helpers return negated (no errno.h for the BPF
 * target) */
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

/*
 * Map update errors are compared as 32-bit ints: the verifier turns
 * bpf_map_update_elem() into a direct call of the map's update function,
 * which returned int before Linux 6.4, so on those kernels the upper half
 * of the result is zero (-E2BIG arrives as 0xfffffff9). Seen on Debian
 * 12's 6.1: a full map was counted as "update failed", and a key inserted
 * by another CPU meanwhile (-EEXIST) was not retried.
 */

/* Add `n` to a per-CPU u64 counter keyed by `key`. The value is this CPU's
 * own copy, so a plain add is safe: programs do not nest on one CPU. */
static __always_inline int add_count(void *map, const void *key, __u64 n)
{
	__u64 *val = bpf_map_lookup_elem(map, key);
	int err;

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

static __always_inline void count_failure(struct eb_stats *st, int err,
					  int full_counter)
{
	if (err == -E2BIG)
		st->counter[full_counter]++;
	else if (err)
		st->counter[EB_UPDATE_FAILED]++;
}

/* The filters every sample goes through: 1 when the sample is another
 * process's (counted, then skipped), 0 to keep it. */
static __always_inline int skip_sample(struct eb_stats *st)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	st->counter[EB_SAMPLES]++;
	if (cfg.pidns_ino) {
		/* ebpf-bolt runs in a PID namespace (a container): the target
		 * is recognised by its id in its own namespace. A task of
		 * another namespace gets no ids (the helper fails): it is
		 * another process. */
		struct bpf_pidns_info ns;

		if (bpf_get_ns_current_pid_tgid(cfg.pidns_dev, cfg.pidns_ino,
						&ns, sizeof(ns))) {
			st->counter[EB_OTHER_PROCESS]++;
			return 1;
		}
		pid_tgid = (__u64)ns.tgid << 32 | ns.pid;
	}
	if (cfg.target_tgid && (__u32)(pid_tgid >> 32) != cfg.target_tgid) {
		st->counter[EB_OTHER_PROCESS]++;
		return 1;
	}
	if (cfg.count_threads) {
		__u32 tid = (__u32)pid_tgid;

		count_failure(st, add_count(&thread_samples, &tid, 1),
			      EB_THREAD_MAP_FULL);
	}
	return 0;
}

/*
 * The replacement rule of both caches (IP cache, trace cache), on a way's
 * credit (0: empty). A hit raises its way's credit, up to
 * EB_CACHE_MAX_CREDIT. A miss, once the map has counted the newcomer,
 * wears the victim's credit down; at 1 or 0 the newcomer takes the way
 * (after the owner's pending counts go to the map). Traces or IPs that
 * compete for a way therefore cannot thrash it into two map operations
 * per sample.
 */
static __always_inline void credit_hit(__u32 *credit)
{
	if (*credit < EB_CACHE_MAX_CREDIT)
		(*credit)++;
}

/* 1: the newcomer takes the way; 0: the owner keeps it */
static __always_inline int credit_worn(__u32 *credit)
{
	if (*credit > 1) {
		(*credit)--;
		return 0;
	}
	return 1;
}

/* A CPU's table of a cache map (NULL where this CPU has none: no cache).
 * bench/ and the tests build a baseline object from this same source with
 * -DEB_BASELINE_NO_CACHES, in which every count goes straight to its map;
 * the shipped object never has that switch set. */
static __always_inline void *cache_table(void *cache_map, __u32 cpu)
{
#ifdef EB_BASELINE_NO_CACHES
	return NULL;
#else
	return bpf_map_lookup_elem(cache_map, &cpu);
#endif
}

/*
 * The IP cache: a direct-mapped table per CPU in front of ip_counts, by
 * the trace cache's rules (below): a slot only holds an IP that ip_counts
 * already has, so map capacity and loss counts stay exact; a hit is two
 * adds, a miss costs the one map operation a cache-less sample costs, and
 * a newcomer takes a slot only once its owner's credit is worn out
 * (credit_worn; the owner's pending count then goes to the map: a second
 * operation).
 * Why: a sample interrupts code that has pushed the program's data out of
 * the CPU caches, and a hash lookup walks the bucket, the element and its
 * per-CPU value, each a cold miss: sample_ip took ~1.0 us per sample of
 * the demo's shares workload without the table, ~0.47 us with it (medians,
 * bench/bench_sample_ip.py). One element per possible CPU, sized by user space
 * (4,096 slots, 64 KiB, fewer above 128 CPUs: layout.ip_cache_slots); the
 * slot index is bounded by cfg.ip_cache_mask.
 * The trace cache's comment below has the rules in full.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct eb_ip_slot));
} ip_cache SEC(".maps");

/* IPs close together (a hot loop) must spread over the table: the high
 * bits of a multiplicative hash */
static __always_inline __u32 ip_slot(__u64 ip)
{
	return (__u32)((ip * 0x9E3779B97F4A7C15ULL) >> 40) & cfg.ip_cache_mask;
}

static __always_inline void count_ip(__u64 ip, struct eb_stats *st)
{
	__u32 cpu = bpf_get_smp_processor_id();
	struct eb_ip_slot *table, *slot;
	int err;

	if (ip >= cfg.user_addr_end) {
		st->counter[EB_KERNEL_IP]++;
		return;
	}
	table = cache_table(&ip_cache, cpu);
	if (!table) {  /* no table for this CPU: straight to the map */
		count_failure(st, add_count(&ip_counts, &ip, 1), EB_MAP_FULL);
		return;
	}
	slot = &table[ip_slot(ip)];
	if (slot->ip == ip && slot->credit) {
		if (++slot->count == EB_IP_FLUSH_AT) {
			count_failure(st, add_count(&ip_counts, &ip, slot->count),
				      EB_MAP_FULL);
			slot->count = 0;
		}
		credit_hit(&slot->credit);
		return;
	}
	err = add_count(&ip_counts, &ip, 1);
	if (err) {  /* not in the map: it must not take the slot */
		count_failure(st, err, EB_MAP_FULL);
		return;
	}
	if (!credit_worn(&slot->credit))
		return;
	if (slot->credit && slot->count)  /* the owner is in the map already */
		count_failure(st, add_count(&ip_counts, &slot->ip, slot->count),
			      EB_MAP_FULL);
	slot->ip = ip;
	slot->count = 0;
	slot->credit = 1;
}

/* Basic (IP) sampling: the interrupted user-space instruction pointer. */
SEC("perf_event")
int sample_ip(struct bpf_perf_event_data *ctx)
{
	struct eb_stats *st = get_stats();

	if (!st || skip_sample(st))
		return 0;
	count_ip(PT_REGS_IP(&ctx->regs), st);
	return 0;
}

#ifdef EB_TEST_PROGRAMS
/* IPs the caller supplies, counted as sample_ip counts a sample's IP: how
 * the tests check the IP cache exactly (perf_event programs cannot be run
 * with BPF_PROG_RUN). Built only into the tests' object (tests/bpf_builds.py,
 * -DEB_TEST_PROGRAMS): the shipped object has no use for it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct eb_replay_ips);
} replay_ip_buf SEC(".maps");

struct replay_ip_state {
	struct eb_stats *st;
	struct eb_replay_ips *buf;
	__u32 done;
};

static long replay_ip(__u32 index, void *data)
{
	struct replay_ip_state *rs = data;

	if (index >= EB_REPLAY_IPS)
		return 1;
	rs->st->counter[EB_SAMPLES]++;
	count_ip(rs->buf->ip[index], rs->st);
	rs->done++;
	return 0;
}

SEC("syscall")
int replay_ips(struct eb_replay_ip_args *args)
{
	struct replay_ip_state rs = { .st = get_stats() };
	__u32 zero = 0;

	rs.buf = bpf_map_lookup_elem(&replay_ip_buf, &zero);
	if (!rs.st || !rs.buf)
		return 1;
	bpf_loop(args->count, replay_ip, &rs, 0);
	args->done = rs.done;
	return 0;
}
#endif /* EB_TEST_PROGRAMS */

/* ---- Branch stacks -------------------------------------------------- */

/* Per-CPU scratch space for the live program: a branch stack (up to
 * 1544 bytes) does not fit the 512-byte BPF stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct eb_branch_stack);
} scratch SEC(".maps");

/*
 * The trace cache: a 2-way set-associative table per CPU in front of
 * trace_counts. Loops make the same traces recur within a stack and across
 * samples; a trace that owns a way is counted there with two adds, no hash
 * lookup.
 * - A way only holds a trace that trace_counts already has (its first
 *   count went to the map when it took the way), so the map's capacity is
 *   exactly --max-entries and a full map loses exactly what it refuses.
 * - A miss costs what a cache-less update costs, one map operation: the
 *   newcomer is counted in the map and only takes the way of lower credit
 *   once that credit is worn out (credit_hit, credit_worn above).
 * - Two ways per set: with one, hot traces whose hashes collide kept
 *   missing (3.4% of the icache demo's entries in 8192 slots; 0.7% with
 *   two ways of 4096 sets and 0.3% with 8192 sets, the default where
 *   memory allows, in a simulation of the same policy).
 * - Ways keep counts not yet in the map: they go to the map when the way
 *   changes owner, and user space adds the rest when it drains.
 * Layout: an array with one element per possible CPU, indexed by the
 * running CPU's id, each element a whole table of cfg.cache_mask + 1 sets.
 * Only the running CPU touches its element (programs do not nest on a
 * CPU), as with a per-CPU array; but one lookup per stack finds the
 * table, where a per-CPU array of sets needs a lookup (a dependent load
 * through its pointer table) per entry: that was a fifth of the cost.
 * User space sizes the element (value_size) to the table, so the map has
 * no BTF value type; the verifier bounds set indexes by cfg.cache_mask,
 * a constant once .rodata is frozen.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct eb_cache_set));
} trace_cache SEC(".maps");

/* Add counts to this CPU's value of one trace in the trace map; returns 0,
 * or the error (after counting it) when the map refused a new trace. */
static __always_inline int add_trace(const struct eb_trace *key, __u64 count,
				      __u64 mispreds, struct eb_stats *st)
{
	struct eb_trace_counts *val = bpf_map_lookup_elem(&trace_counts, key);
	struct eb_trace_counts init = { .count = count, .mispreds = mispreds };
	int err;

	if (val) {
		val->count += count;
		val->mispreds += mispreds;
		return 0;
	}
	err = bpf_map_update_elem(&trace_counts, key, &init, BPF_NOEXIST);
	if (err == -EEXIST) {
		/* inserted by another CPU between lookup and update */
		val = bpf_map_lookup_elem(&trace_counts, key);
		if (val) {
			val->count += count;
			val->mispreds += mispreds;
			return 0;
		}
	}
	if (err) {
		count_failure(st, err, EB_MAP_FULL);
		st->counter[EB_TRACES_LOST] += count;
	}
	return err;
}

/* Multiply-xor mixing of all three addresses: a trace's addresses are
 * close to each other, so a plain xor of products left most slots unused
 * (384 traces of the demo workload fell in 232 of 8192 slots). */
static __always_inline __u32 set_of(const struct eb_trace *t)
{
	__u64 h = t->from * 0x9E3779B97F4A7C15ULL;

	h = (h ^ t->to) * 0xC2B2AE3D27D4EB4FULL;
	h = (h ^ t->ft_end) * 0x9E3779B97F4A7C15ULL;
	return (__u32)(h >> 40) & cfg.cache_mask;
}

static __always_inline int owns(const struct eb_cache_slot *way,
				const struct eb_trace *t)
{
	/* `from` first: it differs for most traces that share a set */
	return way->key.from == t->from && way->key.to == t->to &&
	       way->key.ft_end == t->ft_end && way->credit;
}

/* Count one trace: in its cache way if it owns one, else in the map. */
static __always_inline void count_trace(struct eb_cache_set *table,
					const struct eb_trace *t, __u64 mis,
					struct eb_stats *st)
{
	struct eb_cache_set *set = &table[set_of(t)];
	struct eb_cache_slot *way;

	way = &set->way[0];
	if (!owns(way, t)) {
		way = &set->way[1];
		if (!owns(way, t))
			goto miss;
	}
	way->count++;
	way->mispreds += mis;
	credit_hit(&way->credit);
	return;
miss:
	if (add_trace(t, 1, mis, st))
		return;  /* not in the map: it must not take a way */
	/* the victim is the way with less credit (an empty one has none) */
	way = &set->way[0];
	if (set->way[1].credit < way->credit)
		way = &set->way[1];
	if (!credit_worn(&way->credit))
		return;
	if (way->credit && (way->count || way->mispreds))
		add_trace(&way->key, way->count, way->mispreds, st);
	way->key = *t;
	way->count = 0;
	way->mispreds = 0;
	way->credit = 1;
}

/*
 * The aggregation worker, shared by live sampling and replay. Follows
 * perf2bolt's rules (bolt-profile-formats.md, section 2): entries are
 * newest first; entry i gives the trace (from_i, to_i, from of the next
 * newer kept entry), the newest gets EB_BR_ONLY; entries with a kernel
 * from or to are dropped before pairing.
 *
 * A global (not static, not inlined) function: the verifier checks it once,
 * on its own, with its arguments unknown. Inlined into replay's bpf_loop
 * callback, the 64-entry loop exceeded the verifier's 1M-instruction limit
 * on Linux 6.18, which checks a callback over and over until its states
 * converge, with exact state comparison. Global functions taking pointers
 * need Linux 5.12; only the branch programs call it.
 */
__noinline int aggregate_stack(struct eb_branch_stack *stack,
			       struct eb_stats *st)
{
	__u32 i, nr, cpu = bpf_get_smp_processor_id();
	struct eb_cache_set *table;
	__u64 newer_from = EB_BR_ONLY;

	if (!stack || !st)  /* the verifier sees possibly-NULL arguments */
		return 0;
	nr = stack->nr;
	table = cache_table(&trace_cache, cpu);
	st->counter[EB_BRANCH_ENTRIES] += nr;
	for (i = 0; i < EB_MAX_BRANCHES; i++) {
		struct eb_branch *b;
		struct eb_trace t;
		__u64 mis;

		if (i >= nr)
			break;
		b = &stack->entries[i];
		if (b->from >= cfg.user_addr_end || b->to >= cfg.user_addr_end) {
			st->counter[EB_KERNEL_BRANCHES]++;
			continue;
		}
		t.from = b->from;
		t.to = b->to;
		t.ft_end = newer_from;
		newer_from = b->from;
		mis = b->flags & EB_BRANCH_MISPRED;
		if (table)
			count_trace(table, &t, mis, st);
		else
			add_trace(&t, 1, mis, st);
	}
	if (newer_from == EB_BR_ONLY)  /* no user-space entry kept */
		st->counter[EB_EMPTY_STACKS]++;
	return 0;
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
	struct eb_branch_stack *s;
	__u32 zero = 0;
	long size, total;

	if (!st || skip_sample(st))
		return 0;
	s = bpf_map_lookup_elem(&scratch, &zero);
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
	s->nr = (__u32)size / sizeof(struct eb_branch);
	aggregate_stack(s, st);
	return 0;
}

/* ---- Replay: the same worker on branch stacks the caller supplies ---- */

/* Stacks to replay, written by user space straight into this array through
 * mmap: the program reads them in place, nothing is copied per stack. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct eb_branch_stack);
} replay_stacks SEC(".maps");

/* The ctx may only be read at fixed offsets from its own pointer, so the
 * loop works on a copy of the arguments and writes results back once. */
struct replay_state {
	struct eb_stats *st;
	__u32 first;
	__u32 done;
	__u32 bad;
};

static long replay_one(__u32 index, void *data)
{
	struct replay_state *rs = data;
	__u32 idx = rs->first + index;
	struct eb_branch_stack *stack = bpf_map_lookup_elem(&replay_stacks, &idx);

	if (!stack || stack->nr > EB_MAX_BRANCHES)
		goto bad;
	rs->st->counter[EB_SAMPLES]++;
	aggregate_stack(stack, rs->st);
	rs->done++;
	return 0;
bad:
	rs->bad++;
	return 1;  /* stop at the first malformed stack */
}

SEC("syscall")
int replay_branches(struct eb_replay_args *args)
{
	struct replay_state rs = {
		.st = get_stats(),
		.first = args->first,
	};

	if (!rs.st)
		return 1;
	bpf_loop(args->count, replay_one, &rs, 0);
	args->done = rs.done;
	args->bad = rs.bad;
	return 0;
}

/* ---- Drain: the trace map summed over CPUs, for user space ---------- */

/*
 * The kernel's batch lookup copies every CPU's value of every trace to
 * user space, which sums them: here that took ~0.5 us per trace even for
 * a plain hash (per-bucket locking and copies), and with many CPUs it
 * moves ncpus * 16 bytes per trace. drain_traces walks the map in the
 * kernel instead (bpf_for_each_map_elem), sums each trace's per-CPU values
 * (bpf_map_lookup_percpu_elem) and writes one 40-byte record per trace
 * into drain_out, which user space reads through mmap. drain_out holds a
 * window of the walk: a map larger than it is read in several runs, each
 * skipping the records already read (the map does not change while it is
 * drained: the programs that fill it are detached by then).
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct eb_trace_record);
} drain_out SEC(".maps");

struct drain_state {
	__u32 first;
	__u32 capacity;
	__u32 walked;
	__u32 written;
	__u32 this_cpu;
	__u64 lowest;
	__u64 highest;
	__u64 br_only;
};

/* The bounds of the drained addresses cost a few compares here; they let
 * user space see that one mapping holds every address (the usual case)
 * without a pass over a million traces. */
static __always_inline void bound(struct drain_state *ds, __u64 addr)
{
	if (addr < ds->lowest)
		ds->lowest = addr;
	if (addr > ds->highest)
		ds->highest = addr;
}

static long drain_one(void *map, const struct eb_trace *key,
		      struct eb_trace_counts *this_cpu, struct drain_state *ds)
{
	__u32 idx = ds->walked++ - ds->first;
	struct eb_trace_record *rec;
	__u32 cpu;

	if (ds->walked <= ds->first)
		return 0;  /* read by an earlier run */
	rec = bpf_map_lookup_elem(&drain_out, &idx);
	if (!rec || idx >= ds->capacity) {
		ds->walked--;  /* not written: the next run starts here */
		return 1;
	}
	rec->key = *key;
	bound(ds, key->from);
	bound(ds, key->to);
	if (key->ft_end == EB_BR_ONLY)
		ds->br_only++;
	else
		bound(ds, key->ft_end);
	rec->count = 0;
	rec->mispreds = 0;
	for (cpu = 0; cpu < cfg.ncpus && cpu < EB_DRAIN_MAX_CPUS; cpu++) {
		/* the walk hands over this CPU's value: one lookup saved */
		struct eb_trace_counts *v = cpu == ds->this_cpu ? this_cpu :
			bpf_map_lookup_percpu_elem(&trace_counts, key, cpu);

		if (v) {
			rec->count += v->count;
			rec->mispreds += v->mispreds;
		}
	}
	ds->written++;
	return 0;
}

SEC("syscall")
int drain_traces(struct eb_drain_args *args)
{
	struct drain_state ds = {
		.first = args->first,
		.capacity = args->capacity,
		.this_cpu = bpf_get_smp_processor_id(),
		.lowest = ~0ULL,
	};

	bpf_for_each_map_elem(&trace_counts, drain_one, &ds, 0);
	args->written = ds.written;
	args->walked = ds.walked;
	args->lowest = ds.lowest;
	args->highest = ds.highest;
	args->br_only = ds.br_only;
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
