// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * ebpf-bolt kernel side: aggregate samples in the kernel (per-CPU caches in
 * front of count tables shared by all CPUs),
 * so that user space reads one summary at the end instead of every sample.
 *
 * Samples are keyed by object and file offset (ebpf_bolt.h), translated
 * here from each process's own table of mappings, so that every process
 * running an object adds to the same keys. The few kernel structures read
 * (the task, its mappings, their files) are declared below with only the
 * fields used, and read through BTF (CO-RE) relocations: libbpf finds each
 * field in the running kernel's BTF, so one object loads unchanged on any
 * kernel new enough for its helpers (README), whatever its layout.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/bpf_perf_event.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "ebpf_bolt.h"

/* errno values the map helpers return negated (no errno.h for the BPF
 * target) */
#define E2BIG 7
#define EEXIST 17

/* ---- Kernel structures, as far as they are read (CO-RE) ---------------- */
#define __core __attribute__((preserve_access_index))
/* one load or store, neither split nor merged by the compiler */
#define READ_ONCE(x) (*(volatile typeof(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile typeof(x) *)&(x) = (v))

typedef struct { int counter; } atomic_t;

struct super_block { __u32 s_dev; } __core;
struct inode {
	unsigned long i_ino;
	struct super_block *i_sb;
	__u32 i_generation;
} __core;
struct file { struct inode *f_inode; } __core;
struct vm_area_struct {
	unsigned long vm_start;
	unsigned long vm_end;
	unsigned long vm_pgoff;
	struct file *vm_file;
} __core;
struct mm_struct { unsigned long start_code; } __core;
struct signal_struct { atomic_t live; } __core;
struct task_struct {
	int pid;
	int tgid;
	struct mm_struct *mm;
	struct signal_struct *signal;
} __core;
struct vm_unmapped_area_info { unsigned long length; } __core;

const volatile struct eb_config cfg = {
	.user_addr_end = 0xffff800000000000ULL,
};

/*
 * The count tables: the profile itself, one table shared by all CPUs per
 * mode, so kernel memory is slots x slot size (x 2 sets with --interval)
 * whatever the number of CPUs.
 * (Per-CPU hashes cost entries x value x possible CPUs: at 192 CPUs,
 * 64 MiB held ~21,000 traces; a clang-sized profile needs ~100,000.)
 * Each is an open-addressing hash table in a plain array, sized from user
 * space (cfg.ip_slots, cfg.trace_slots), mmapable so the drain reads it
 * in place:
 * - a key's first slot is a multiply-shift hash of it scaled to the table
 *   (hash_slot); a taken slot sends it to the next one (linear probing:
 *   neighbours share cache lines), up to EB_MAX_PROBES;
 * - a free slot is claimed with cmpxchg on its first word, counts are added
 *   with atomic adds: no lock, no allocation, so nothing fails in NMI
 *   context, and no update is lost when CPUs race;
 * - slots are never freed while recording: a key once seen in a slot stays
 *   there, which is what lets readers probe without locks.
 * The per-CPU caches in front (IP cache, trace cache) absorb the hot keys,
 * so the shared table sees mostly first sightings and evictions
 * (docs/design/objects-and-capacity.md, section 4, has the figures).
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct eb_ip_entry);
} ip_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct eb_trace_entry);
} trace_counts SEC(".maps");

/*
 * Sets (--interval): every map a window's counts live in (ip_counts,
 * trace_counts, ip_cache, trace_cache) holds EB_SETS slices of one size,
 * and struct eb_set (the set's claimed slots and raced traces) one per
 * set. The programs count into the slice of the set that active_set, an
 * array of maps, holds now; user space switches to the other set by
 * updating active_set's one slot. That update, and not a value the
 * programs read from a plain map, is what makes the switch exact: for a
 * map of maps the update syscall waits for an RCU grace period before it
 * returns (kernel/bpf/syscall.c, map_update_elem -> maybe_wait_bpf_programs
 * -> synchronize_rcu, Linux 5.10+), and perf_event and tracing programs
 * run inside an RCU read-side section, so once it returns no program is
 * still counting into the old set: user space flushes its caches
 * (flush_caches), reads its tables and clears them, while the programs
 * count into the new one. A program finds its set once per sample (one
 * lookup of active_set, one of the inner map), then works on slices.
 * Without --interval only set A exists (the maps are 1 set long), and
 * active_set holds it from the load on.
 */
struct eb_set_map {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct eb_set);
} set_a SEC(".maps"), set_b SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct eb_set_map);
} active_set SEC(".maps") = {
	.values = { [0] = &set_a },
};

/* The set samples count into now (NULL: none, which cannot happen while
 * active_set holds one; the caller counts the sample as update_failed) */
static __always_inline struct eb_set *current_set(void)
{
	__u32 zero = 0;
	void *inner = bpf_map_lookup_elem(&active_set, &zero);

	if (!inner)
		return NULL;
	return bpf_map_lookup_elem(inner, &zero);
}

/* The first slot of a set's slice of a table of `slots` slots per set */
static __always_inline __u32 set_base(const struct eb_set *set, __u32 slots)
{
	return (set->index & (EB_SETS - 1)) * slots;
}

/* A CPU's element of a per-CPU-per-set cache (ip_cache, trace_cache): the
 * set's caches are its own elements, so a switch moves them with the set */
static __always_inline __u32 cache_element(const struct eb_set *set,
					   __u32 cpu)
{
	return cpu + set_base(set, cfg.ncpus);
}

/* A key's first slot: the high half of a multiplicative hash (it depends
 * on every bit of the key), scaled to [0, nslots) by a multiply (Lemire's
 * reduction: no division, any table size). */
static __always_inline __u32 hash_slot(__u64 h, __u32 nslots)
{
	return (__u32)(((h >> 32) * (__u64)nslots) >> 32);
}

/* Table results besides 0 (stored) */
#define EB_TABLE_FULL (-E2BIG)  /* no free slot within EB_MAX_PROBES */
#define EB_TABLE_RACED 1        /* stored, after passing a slot of the same
				 * key still being written: maybe twice */

/*
 * Probing: the first EB_INLINE_PROBES slots in a plain loop, the rest (up
 * to EB_MAX_PROBES) through bpf_loop. A key is found or placed within a
 * few slots nearly always (2.5 on average for a key already there at 3/4
 * load), and the verifier walks a bounded loop once per iteration: with
 * all 256 probes inline, every program calling the table took 0.4 s to
 * load; bpf_loop's callback is verified once.
 */
#define EB_INLINE_PROBES 8

struct ip_probe {
	__u64 ip;
	__u64 n;
	__u32 idx;             /* the slot to try next */
	__u32 done;            /* 1: counted */
	__u32 base, end;       /* the set's slice: [base, end) */
	__u32 claimed;         /* 1: this search claimed a free slot */
};

/* Try one slot: 1 when the search ends (counted, or no slot), 0 to go on
 * to the next slot. */
static __always_inline long probe_ip(struct ip_probe *pr)
{
	struct eb_ip_entry *e = bpf_map_lookup_elem(&ip_counts, &pr->idx);
	__u64 old;

	if (!e)
		return 1;
	old = READ_ONCE(e->ip);
	if (!old) {  /* free: claim it, unless another CPU just did */
		old = __sync_val_compare_and_swap(&e->ip, 0, pr->ip);
		pr->claimed = !old;
	}
	if (!old || old == pr->ip) {
		__sync_fetch_and_add(&e->count, pr->n);
		pr->done = 1;
		return 1;
	}
	if (++pr->idx >= pr->end)
		pr->idx = pr->base;
	return 0;
}

static long probe_ip_cb(__u32 i, void *data)
{
	return probe_ip(data);
}

/* Add `n` samples to IP key `ip` (never 0: 0 marks a free slot) in the
 * table of `set`. */
__noinline int table_add_ip(__u64 ip, __u64 n, struct eb_set *set)
{
	struct ip_probe pr = { .ip = ip, .n = n };
	int i;

	if (!set)  /* the verifier sees a possibly-NULL argument */
		return EB_TABLE_FULL;
	pr.base = set_base(set, cfg.ip_slots);
	pr.end = pr.base + cfg.ip_slots;
	pr.idx = pr.base + hash_slot(ip * 0x9E3779B97F4A7C15ULL, cfg.ip_slots);
	for (i = 0; i < EB_INLINE_PROBES; i++)
		if (probe_ip(&pr))
			goto out;
	bpf_loop(EB_MAX_PROBES - EB_INLINE_PROBES, probe_ip_cb, &pr, 0);
out:
	if (pr.claimed)  /* the set's fill, for the early drain */
		__sync_fetch_and_add(&set->claimed, 1);
	return pr.done ? 0 : EB_TABLE_FULL;
}

/*
 * A trace takes three words; the claim (cmpxchg) covers the first, and the
 * other two are written after it. Every stored word has EB_SLOT_USED
 * flipped, so none is 0 (addresses outside every object are 0); a reader
 * that finds `from` but a 0 in `to` or `ft_end` meets a claim still being
 * written and cannot tell whose it is. It goes on probing rather than
 * wait (the writer may be a replay run that was preempted), so the trace
 * may end up in two slots: the counts stay exact, the drain adds the two
 * up, and `raced` (EB_TABLE_RACED, counted) tells it to.
 * Words, once written, never change, so no memory barrier is needed: a
 * non-zero word read is the final one on any architecture.
 */
struct trace_probe {
	__u64 from, to, ft_end;  /* flipped */
	__u64 count, mispreds;
	__u32 idx;
	__u16 done;
	__u16 raced;
	__u32 base, end;       /* the set's slice: [base, end) */
	__u32 claimed;         /* 1: this search claimed a free slot */
};

static __always_inline long probe_trace(struct trace_probe *pr)
{
	struct eb_trace_entry *e = bpf_map_lookup_elem(&trace_counts, &pr->idx);
	__u64 old, w1, w2;

	if (!e)
		return 1;
	old = READ_ONCE(e->key.from);
	if (!old) {
		old = __sync_val_compare_and_swap(&e->key.from, 0, pr->from);
		if (!old) {  /* claimed: this slot is the trace's */
			WRITE_ONCE(e->key.to, pr->to);
			WRITE_ONCE(e->key.ft_end, pr->ft_end);
			pr->claimed = 1;
			goto add;
		}
	}
	if (old == pr->from) {
		w1 = READ_ONCE(e->key.to);
		w2 = READ_ONCE(e->key.ft_end);
		if (w1 == pr->to && w2 == pr->ft_end)
			goto add;
		if (!w1 || !w2)
			pr->raced = 1;
	}
	if (++pr->idx >= pr->end)
		pr->idx = pr->base;
	return 0;
add:
	__sync_fetch_and_add(&e->count, pr->count);
	if (pr->mispreds)
		__sync_fetch_and_add(&e->mispreds, pr->mispreds);
	pr->done = 1;
	return 1;
}

static long probe_trace_cb(__u32 i, void *data)
{
	return probe_trace(data);
}

/* Note a trace that may have two slots in the set (its raced notes). */
static __always_inline void note_race(struct eb_set *set, __u64 from)
{
	__u64 n = __sync_fetch_and_add(&set->raced.n, 1);

	if (n < EB_RACED_MAX)
		set->raced.from[n] = from;
}

/* Add counts to trace `t` in the table of `set`. */
__noinline int table_add_trace(const struct eb_trace *t, __u64 count,
			       __u64 mispreds, struct eb_set *set)
{
	struct trace_probe pr = { .count = count, .mispreds = mispreds };
	__u64 h;
	int i;

	if (!t || !set)  /* the verifier sees possibly-NULL arguments */
		return EB_TABLE_FULL;
	pr.from = t->from ^ EB_SLOT_USED;
	pr.to = t->to ^ EB_SLOT_USED;
	pr.ft_end = t->ft_end ^ EB_SLOT_USED;
	h = t->from * 0x9E3779B97F4A7C15ULL;
	h = (h ^ t->to) * 0xC2B2AE3D27D4EB4FULL;
	h = (h ^ t->ft_end) * 0x9E3779B97F4A7C15ULL;
	pr.base = set_base(set, cfg.trace_slots);
	pr.end = pr.base + cfg.trace_slots;
	pr.idx = pr.base + hash_slot(h, cfg.trace_slots);
	for (i = 0; i < EB_INLINE_PROBES; i++)
		if (probe_trace(&pr))
			goto out;
	bpf_loop(EB_MAX_PROBES - EB_INLINE_PROBES, probe_trace_cb, &pr, 0);
out:
	if (pr.claimed)  /* the set's fill, for the early drain */
		__sync_fetch_and_add(&set->claimed, 1);
	if (!pr.done)
		return EB_TABLE_FULL;
	if (!pr.raced)
		return 0;
	note_race(set, pr.from);
	return EB_TABLE_RACED;
}

/* Optional per-thread sample counts, so a run can show which threads
 * were sampled (threads created during the recording included). Shared
 * by all CPUs, as the count tables: a thread may run on any of them. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
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

/* Add `n` to a u64 counter keyed by `key` in a hash shared by all CPUs
 * (thread_samples): atomic adds, as another CPU may add to it too. */
static __always_inline int add_count(void *map, const void *key, __u64 n)
{
	__u64 *val = bpf_map_lookup_elem(map, key);
	int err;

	if (val) {
		__sync_fetch_and_add(val, n);
		return 0;
	}
	err = bpf_map_update_elem(map, key, &n, BPF_NOEXIST);
	if (err == -EEXIST) {
		/* another CPU created the key between lookup and update */
		val = bpf_map_lookup_elem(map, key);
		if (val) {
			__sync_fetch_and_add(val, n);
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

/* ---- Which processes are recorded, and their mappings ------------------ */

/*
 * procs: the recorded processes, keyed by global tgid, each with its table
 * of mappings (struct eb_proc). The sched tracepoints below keep it exact:
 * a process created by a recorded one is inserted at fork, before it can
 * run (trace_sched_process_fork fires before wake_up_new_task), with a
 * copy of its creator's table (the child starts with the same mappings);
 * exec empties the table; the group's exit deletes the entry. Sized from
 * user space; preallocated, as samples insert into it in -a mode.
 * Key 0 (the idle task's, which never samples user code) is replay's
 * pseudo-process, whose ranges user space writes.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct eb_proc);
} procs SEC(".maps");

/* Object numbers by file identity, and each number's file (for user
 * space, which reads objects_info through mmap). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EB_MAX_OBJECTS);
	__type(key, struct eb_object_key);
	__type(value, __u32);
} object_ids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, EB_MAX_OBJECTS);
	__type(key, __u32);
	__type(value, struct eb_object);
} objects_info SEC(".maps");

/* (object << 32 | tgid) of each process that had samples in an object:
 * how many processes ran it, for the summary. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, __u8);
} object_procs SEC(".maps");

__u32 objects_given;   /* object numbers handed out (the last one) */
/* Bumped whenever a recorded process's ranges are cleared or its entry is
 * deleted: last_sample entries of an older generation are not used. */
__u32 ranges_gen;

/*
 * Each CPU's last IP sample: its process and the range its IP fell in. A
 * CPU mostly samples the same process in the same code, and then this
 * one per-CPU slot (an inlined array lookup) replaces the procs hash
 * lookup and the range scan, whose bucket and element are cold after the
 * profiled code ran: ~150 ns of the sample's cost here.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct eb_last_sample);
} last_sample SEC(".maps");

__u32 procs_given;     /* procs entries made (eb_proc.serial: the last) */
__u32 target_seen;     /* 1 once the target's tgid is in procs */

/* all zero: a process with no ranges yet (in .bss: .rodata holds cfg only) */
static struct eb_proc empty_proc;

/* A new number for the file `key` maps, or the one it has: 0 when the
 * table is full (the address then counts as outside every object). */
static __always_inline __u32 object_id(const struct eb_object_key *key,
				       __u32 tgid, __u64 start, __u64 end,
				       struct eb_stats *st)
{
	__u32 *known = bpf_map_lookup_elem(&object_ids, key);
	struct eb_object *info;
	__u32 id;

	if (known)
		return *known;
	id = __sync_fetch_and_add(&objects_given, 1) + 1;
	info = bpf_map_lookup_elem(&objects_info, &id);
	if (!info) {  /* past the table's end */
		if (st)
			st->counter[EB_OBJECTS_FULL]++;
		return 0;
	}
	info->key = *key;
	info->tgid = tgid;
	info->start = start;
	info->end = end;
	if (bpf_map_update_elem(&object_ids, key, &id, BPF_NOEXIST)) {
		/* numbered meanwhile by another CPU (or the table is full) */
		info->state = 2;
		known = bpf_map_lookup_elem(&object_ids, key);
		return known ? *known : 0;
	}
	info->state = 1;
	return id;
}

struct fill_ctx {
	struct eb_range range;
	struct eb_stats *st;
	__u32 tgid;
	__u32 found;
};

/* bpf_find_vma's callback: the mapping that holds the address, as a
 * range of its object. */
static long fill_range(struct task_struct *task, struct vm_area_struct *vma,
		       struct fill_ctx *fc)
{
	struct file *file = BPF_CORE_READ(vma, vm_file);
	__u64 start = BPF_CORE_READ(vma, vm_start);
	__u64 end = BPF_CORE_READ(vma, vm_end);
	__u64 pgoff = BPF_CORE_READ(vma, vm_pgoff);

	fc->range.start = start;
	fc->range.end = end;
	fc->range.delta = start - (pgoff << cfg.page_shift);
	fc->range.object = 0;
	if (file) {
		struct eb_object_key key = {};
		struct inode *inode = BPF_CORE_READ(file, f_inode);

		key.ino = BPF_CORE_READ(inode, i_ino);
		key.dev = BPF_CORE_READ(inode, i_sb, s_dev);
		key.generation = BPF_CORE_READ(inode, i_generation);
		fc->range.object = object_id(&key, fc->tgid, start, end, fc->st);
	}
	fc->found = 1;
	return 0;
}

/* Put a range into the process's table, in the slot whose turn it is.
 * end is written last and cleared first, so that another CPU reading the
 * table (a thread of the same process) never matches a half-written
 * range: it misses and looks the address up itself. */
static __always_inline void store_range(struct eb_proc *p,
					const struct eb_range *r)
{
	__u32 slot = __sync_fetch_and_add(&p->next, 1) % EB_PROC_RANGES;
	struct eb_range *dst = &p->range[slot];

	WRITE_ONCE(dst->end, 0);
	dst->start = r->start;
	dst->delta = r->delta;
	dst->object = r->object;
	dst->sampled = 0;
	WRITE_ONCE(dst->end, r->end);
}

/* Look `addr` up in the kernel's mappings of the current task and store
 * the range that holds it: ~6.5 us from the sampling interrupt here (the
 * mmap lock is released through irq_work), ~0.5 us from a tracepoint.
 * Returns 0 when no mapping was found (or bpf_find_vma was busy). */
static __always_inline int fill_from_vma(struct eb_proc *p, __u64 addr,
					 __u32 tgid, struct eb_stats *st)
{
	struct fill_ctx fc = { .st = st, .tgid = tgid };

	bpf_find_vma(bpf_get_current_task_btf(), addr, fill_range, &fc, 0);
	if (!fc.found)
		return 0;
	store_range(p, &fc.range);
	return 1;
}

/*
 * An address as the maps key it (ebpf_bolt.h), from the process's ranges:
 * 0 outside every object, EB_ADDR_UNRESOLVED where no range covers it.
 * The first address found in a range notes (object, tgid) in object_procs.
 * A global function, checked once by the verifier: the branch worker calls
 * it for each end of each of up to 64 branches.
 */
/* The key of `addr` in range `r`, which holds it. */
static __always_inline __u64 range_key(const struct eb_range *r, __u64 addr)
{
	if (!r->object)
		return 0;
	return (__u64)r->object << EB_OBJECT_SHIFT |
	       ((addr - r->delta) & EB_OFFSET_MASK);
}

__noinline __u64 translate_addr(struct eb_proc *p, __u64 addr, __u32 tgid,
				struct eb_range *hit)
{
	__u32 i;

	if (!p)
		return EB_ADDR_UNRESOLVED;
	for (i = 0; i < EB_PROC_RANGES; i++) {
		struct eb_range *r = &p->range[i];
		__u64 end = READ_ONCE(r->end);

		if (addr >= r->start && addr < end) {
			__u64 pair = (__u64)r->object << 32 | tgid;
			__u8 one = 1;

			if (hit) {  /* the caller's most recently used range */
				hit->start = r->start;
				hit->delta = r->delta;
				hit->object = r->object;
				hit->end = end;
			}
			if (!r->object)
				return 0;
			if (!r->sampled) {
				r->sampled = 1;
				bpf_map_update_elem(&object_procs, &pair, &one,
						    BPF_NOEXIST);
			}
			return range_key(r, addr);
		}
	}
	return EB_ADDR_UNRESOLVED;
}

/* A sample's lookups: its process, whether it may still call
 * bpf_find_vma, and the range its last address fell in (mru: most of a
 * stack's addresses are in one object; checking it first saves a call
 * and a scan; end 0: none yet). */
struct lookup_state {
	struct eb_range mru;
	__u32 tgid;
	__u32 may_fill;
};

/* translate_addr, looking the mapping up once if no range covers it
 * (only live samples may: replay's addresses are not this task's).
 * Global, as translate_addr: inlined into the branch worker's loop, the
 * lookup's paths made the verifier give up (E2BIG). */
__noinline __u64 resolve_addr(struct eb_proc *p, __u64 addr,
			      struct eb_stats *st, struct lookup_state *ls)
{
	__u64 key;

	if (!p || !st || !ls)  /* the verifier sees possibly-NULL args */
		return EB_ADDR_UNRESOLVED;
	key = translate_addr(p, addr, ls->tgid, &ls->mru);
	if (key == EB_ADDR_UNRESOLVED && ls->may_fill) {
		/* one lookup per sample: a second one finds the irq_work of
		 * the first still pending (-EBUSY) */
		ls->may_fill = 0;
		st->counter[EB_VMA_LOOKUPS]++;
		if (fill_from_vma(p, addr, ls->tgid, st))
			key = translate_addr(p, addr, ls->tgid, &ls->mru);
	}
	if (key == EB_ADDR_UNRESOLVED)
		st->counter[EB_UNRESOLVED]++;
	return key;
}

/* 1 when the current task belongs to the process ebpf-bolt was asked to
 * record (cfg.target_tgid, an id in ebpf-bolt's PID namespace). */
static __always_inline int is_target(void)
{
	struct bpf_pidns_info ns;

	if (!cfg.target_tgid || target_seen)
		return 0;
	if (bpf_get_ns_current_pid_tgid(cfg.pidns_dev, cfg.pidns_ino, &ns,
					sizeof(ns)))
		return 0;
	return ns.tgid == cfg.target_tgid;
}

static __always_inline __u32 new_serial(void)
{
	return __sync_fetch_and_add(&procs_given, 1) + 1;
}

/* The current process's entry, created for the target (the first time
 * any program meets it: a sample, fork or exec) and, with -a, for any
 * process; NULL when it is not recorded. */
static __always_inline struct eb_proc *current_proc(__u32 tgid,
						    struct eb_stats *st,
						    int at_exec)
{
	struct eb_proc *p = bpf_map_lookup_elem(&procs, &tgid);
	int err;

	if (p)
		return p;
	if (!cfg.all_processes &&
	    (!is_target() || (cfg.target_at_exec && !at_exec)))
		return NULL;
	err = bpf_map_update_elem(&procs, &tgid, &empty_proc, BPF_NOEXIST);
	if (err) {
		/* -EEXIST: another CPU made it meanwhile (not a full map) */
		if (st && err != -EEXIST)
			st->counter[EB_PROCS_FULL]++;
		p = NULL;
	} else {
		p = bpf_map_lookup_elem(&procs, &tgid);
		if (p)
			p->serial = new_serial();
	}
	if (!cfg.all_processes)
		target_seen = 1;
	return p ? p : bpf_map_lookup_elem(&procs, &tgid);
}

/* --threads: one more sample of the current thread */
static __always_inline void count_thread(struct eb_stats *st)
{
	struct bpf_pidns_info ns = {};
	__u32 tid;

	if (!cfg.count_threads)
		return;
	/* thread ids as the target's PID namespace numbers them; an exiting
	 * thread that has left its namespace has none (not counted) */
	if (bpf_get_ns_current_pid_tgid(cfg.tid_pidns_dev, cfg.tid_pidns_ino,
					&ns, sizeof(ns)))
		return;
	tid = ns.pid;
	count_failure(st, add_count(&thread_samples, &tid, 1),
		      EB_THREAD_MAP_FULL);
}

/* The filters every sample goes through: the recorded process's entry,
 * or NULL for another process's sample (counted, then skipped). */
static __always_inline struct eb_proc *sample_proc(struct eb_stats *st,
						   __u32 *tgid)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct eb_proc *p;

	st->counter[EB_SAMPLES]++;
	*tgid = pid_tgid >> 32;
	p = current_proc(*tgid, st, 0);
	if (!p) {
		if (cfg.target_at_exec && is_target())
			st->counter[EB_BEFORE_EXEC]++;
		else
			st->counter[EB_OTHER_PROCESS]++;
		return NULL;
	}
	count_thread(st);
	return p;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 creator = bpf_get_current_pid_tgid() >> 32;
	__u32 tgid = BPF_CORE_READ(child, tgid);
	struct eb_proc *p;

	if (tgid == creator)  /* a thread: same process */
		return 0;
	p = current_proc(creator, get_stats(), 0);
	if (p) {
		struct eb_proc *copy;
		__u32 i;

		/* an entry left by an exited process of the same id: the
		 * CPUs' last_sample slots may hold its ranges */
		if (bpf_map_lookup_elem(&procs, &tgid))
			__sync_fetch_and_add(&ranges_gen, 1);
		if (bpf_map_update_elem(&procs, &tgid, p, BPF_ANY)) {
			struct eb_stats *st = get_stats();

			if (st)
				st->counter[EB_PROCS_FULL]++;
			return 0;
		}
		/* the child has sampled none of the ranges yet */
		copy = bpf_map_lookup_elem(&procs, &tgid);
		if (copy)
			copy->serial = new_serial();
		for (i = 0; copy && i < EB_PROC_RANGES; i++)
			copy->range[i].sampled = 0;
	} else {
		/* a process id freed by a recorded process and reused by an
		 * unrecorded one must not stay recorded */
		if (!bpf_map_delete_elem(&procs, &tgid))
			__sync_fetch_and_add(&ranges_gen, 1);
	}
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct task_struct *task = bpf_get_current_task_btf();
	struct eb_proc *p = current_proc(tgid, get_stats(), 1);
	__u64 start_code;
	__u32 i;

	if (!p)
		return 0;
	/* a new image: none of the old ranges holds (cleared in place: an
	 * update would free the element under a sample reading it) */
	for (i = 0; i < EB_PROC_RANGES; i++)
		WRITE_ONCE(p->range[i].end, 0);
	__sync_fetch_and_add(&ranges_gen, 1);
	/* the executable's code, found here once (cheap in process context)
	 * rather than from its first sample */
	start_code = BPF_CORE_READ(task, mm, start_code);
	if (start_code)
		fill_from_vma(p, start_code, tgid, get_stats());
	return 0;
}

/* The process whose group exited last on this CPU, as serial << 32 |
 * tgid: its entry is deleted at the next group exit here, not at once, as
 * its last thread is still sampled (in the kernel) after the tracepoint;
 * deleted at once, those samples would count as another process's. At
 * most one entry per CPU lingers so. Its tgid may meanwhile be freed and
 * given to a new recorded process (on_fork makes it a new entry): the
 * serial tells the two apart, so that the new one is not deleted. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} exit_pending SEC(".maps");

SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit, struct task_struct *task)
{
	__u32 tgid = BPF_CORE_READ(task, tgid), zero = 0, old_tgid;
	struct eb_proc *p, *old;
	__u64 *pending, me;

	/* the tracepoint fires per thread, after the thread left signal->live
	 * (on 6.16+ it also passes group_dead, computed from the same count) */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	p = bpf_map_lookup_elem(&procs, &tgid);
	me = p ? (__u64)p->serial << 32 | tgid : 0;
	pending = bpf_map_lookup_elem(&exit_pending, &zero);
	if (!pending) {
		if (!bpf_map_delete_elem(&procs, &tgid))
			__sync_fetch_and_add(&ranges_gen, 1);
		return 0;
	}
	if (*pending && *pending != me) {
		old_tgid = (__u32)*pending;
		old = bpf_map_lookup_elem(&procs, &old_tgid);
		/* only the entry that exited: not a new process's of that id */
		if (old && old->serial == *pending >> 32 &&
		    !bpf_map_delete_elem(&procs, &old_tgid))
			__sync_fetch_and_add(&ranges_gen, 1);
	}
	*pending = me;
	return 0;
}

/* Forget the current process's ranges that overlap [addr, end): their
 * addresses may hold another object from now on. */
static __always_inline void forget_ranges(__u64 addr, __u64 end)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32, i;
	struct eb_proc *p = bpf_map_lookup_elem(&procs, &tgid);
	int cleared = 0;

	if (!p)
		return;
	for (i = 0; i < EB_PROC_RANGES; i++) {
		struct eb_range *r = &p->range[i];

		if (r->start < end && addr < r->end) {
			WRITE_ONCE(r->end, 0);
			cleared = 1;
		}
	}
	if (cleared)
		__sync_fetch_and_add(&ranges_gen, 1);
}

/* A new mapping at an address the kernel chose: ranges it overlaps were
 * unmapped, and their addresses may now hold another object. (A mapping
 * at an address the caller fixes, MAP_FIXED or a fixed-base library, does
 * not pass here: the sys_enter_mmap tracepoint would see it, but enabling
 * a syscall tracepoint puts every task's every syscall on the slow path,
 * so that case stays a known limit, README.) */
SEC("tp_btf/vm_unmapped_area")
int BPF_PROG(on_unmapped_area, unsigned long addr,
	     struct vm_unmapped_area_info *info)
{
	if (addr >= cfg.user_addr_end)  /* an error code */
		return 0;
	forget_ranges(addr, addr + BPF_CORE_READ(info, length));
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
 * already has, so the loss counts stay exact; a hit is two
 * adds, a miss costs the one map operation a cache-less sample costs, and
 * a newcomer takes a slot only once its owner's credit is worn out
 * (credit_worn; the owner's pending count then goes to the map: a second
 * operation).
 * Why: a sample interrupts code that has pushed the program's data out of
 * the CPU caches, and a map lookup is a cold miss or several (with the
 * per-CPU hash ip_counts once was: bucket, element and per-CPU value;
 * sample_ip took ~1.0 us per sample of the demo's shares workload without
 * the table, ~0.47 us with it, medians, bench/bench_sample_ip.py). One
 * element per possible CPU per set (element cpu + set x ncpus: cache_element),
 * sized by user space (4,096 slots, 64 KiB, fewer above 128 CPUs:
 * layout.ip_cache_slots); the slot index is bounded by cfg.ip_cache_mask.
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

/* Add `n` samples to IP key `ip` in the table of `set`, counting a
 * refusal. */
static __always_inline int add_ip(__u64 ip, __u64 n, struct eb_stats *st,
				  struct eb_set *set)
{
	int err = table_add_ip(ip, n, set);

	st->counter[EB_TABLE_UPDATES]++;
	if (err)
		st->counter[EB_MAP_FULL]++;
	return err;
}

/* Count one sample at `ip`, an address as the maps key it (object and
 * offset, never 0), in `set` (current_set(), once per sample). */
static __always_inline void count_ip(__u64 ip, struct eb_stats *st,
				     struct eb_set *set)
{
	__u32 cpu = bpf_get_smp_processor_id();
	struct eb_ip_slot *table, *slot;

	if (!set) {  /* no set to count in (cannot happen): not lost silently */
		st->counter[EB_UPDATE_FAILED]++;
		return;
	}
	table = cache_table(&ip_cache, cache_element(set, cpu));
	if (!table) {  /* no table for this CPU: straight to the map */
		add_ip(ip, 1, st, set);
		return;
	}
	slot = &table[ip_slot(ip)];
	if (slot->ip == ip && slot->credit) {
		if (++slot->count == EB_IP_FLUSH_AT) {
			add_ip(ip, slot->count, st, set);
			slot->count = 0;
		}
		credit_hit(&slot->credit);
		return;
	}
	if (add_ip(ip, 1, st, set))
		return;  /* not in the map: it must not take the slot */
	if (!credit_worn(&slot->credit))
		return;
	if (slot->credit && slot->count)  /* the owner is in the map already */
		add_ip(slot->ip, slot->count, st, set);
	slot->ip = ip;
	slot->count = 0;
	slot->credit = 1;
}

/* Basic (IP) sampling: the interrupted user-space instruction pointer,
 * counted at its object and offset. */
SEC("perf_event")
int sample_ip(struct bpf_perf_event_data *ctx)
{
	struct eb_stats *st = get_stats();
	__u64 ip = PT_REGS_IP(&ctx->regs), key;
	struct lookup_state ls = { .may_fill = 1 };
	struct eb_last_sample *last;
	struct eb_proc *p;
	__u32 tgid, gen, zero = 0;

	if (!st)
		return 0;
	/* read before any lookup: a change meanwhile makes the slot stale */
	gen = READ_ONCE(ranges_gen);
	last = bpf_map_lookup_elem(&last_sample, &zero);
	tgid = bpf_get_current_pid_tgid() >> 32;
	if (last && last->tgid == tgid && last->gen == gen &&
	    ip >= last->range.start && ip < last->range.end) {
		/* the same process in the same mapping as this CPU's last
		 * sample: recorded, and the range holds (the generation) */
		st->counter[EB_SAMPLES]++;
		count_thread(st);
		key = range_key(&last->range, ip);
		goto count;
	}
	p = sample_proc(st, &tgid);
	if (!p)
		return 0;
	if (ip >= cfg.user_addr_end) {
		st->counter[EB_KERNEL_IP]++;
		return 0;
	}
	ls.tgid = tgid;
	key = resolve_addr(p, ip, st, &ls);
	if (key == EB_ADDR_UNRESOLVED)
		return 0;  /* counted by resolve_addr */
	if (last) {
		last->tgid = tgid;
		last->gen = gen;
		last->range = ls.mru;
	}
count:
	if (!key) {
		st->counter[EB_ANON_IP]++;
		return 0;
	}
	count_ip(key, st, current_set());
	return 0;
}

#ifdef EB_TEST_PROGRAMS
/* IP keys the caller supplies (object and offset), counted as sample_ip
 * counts a sample's translated IP: how
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
	if (rs->buf->ip[index] >= cfg.user_addr_end)  /* as sample_ip does */
		rs->st->counter[EB_KERNEL_IP]++;
	else if (!rs->buf->ip[index])
		rs->st->counter[EB_ANON_IP]++;
	else
		count_ip(rs->buf->ip[index], rs->st, current_set());
	rs->done++;
	return 0;
}

SEC("syscall")
int replay_ips(struct eb_replay_ip_args *args)
{
	struct replay_ip_state rs = { .st = get_stats() };
	__u32 buf = args->buf;

	rs.buf = bpf_map_lookup_elem(&replay_ip_buf, &buf);
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
 *   count went to the map when it took the way), so the cache adds no
 *   room and a full map loses exactly what it refuses.
 * - A miss costs what a cache-less update costs, one map operation: the
 *   newcomer is counted in the map and only takes the way of lower credit
 *   once that credit is worn out (credit_hit, credit_worn above).
 * - Two ways per set: with one, hot traces whose hashes collide kept
 *   missing (3.4% of the icache demo's entries in 8192 slots; 0.7% with
 *   two ways of 4096 sets and 0.3% with 8192 sets, the default where
 *   memory allows, in a simulation of the same policy).
 * - Ways keep counts not yet in the map: they go to the map when the way
 *   changes owner, and flush_caches adds the rest when user space drains.
 * Layout: an array with one element per possible CPU per set, the running
 * CPU's element of the set counted into (cache_element), each a whole
 * table of cfg.cache_mask + 1 sets.
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

/* Add counts to one trace in the trace map; returns 0, or the error
 * (after counting it) when the map refused a new trace. */
static __always_inline int add_trace(const struct eb_trace *key, __u64 count,
				      __u64 mispreds, struct eb_stats *st,
				      struct eb_set *set)
{
	int err = table_add_trace(key, count, mispreds, set);

	st->counter[EB_TABLE_UPDATES]++;
	if (err == EB_TABLE_RACED)  /* stored (noted in set->raced) */
		return 0;
	if (err) {
		st->counter[EB_MAP_FULL]++;
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

/* A return's trace keeps that in bit 61 of its `from` (EB_TRACE_RETURN):
 * one bit of a mask of the return types, over the entry's type field
 * (`type_bits`, the flags word or that field of it); 0 without types. */
static __always_inline __u64 return_bit(__u32 type_bits)
{
	if (!cfg.branch_types)
		return 0;
	return ((EB_RETURN_TYPES >> ((type_bits & EB_BRANCH_TYPE_BITS) >>
				     EB_BRANCH_TYPE_SHIFT)) & 1)
	       << EB_TRACE_RETURN_BIT;
}

/* The key a trace has in the trace map. */
static __always_inline struct eb_trace map_key(const struct eb_trace *t,
					       __u32 type_bits)
{
	struct eb_trace key = *t;

	key.from |= return_bit(type_bits);
	return key;
}

/* A way's pending counts into the trace map. */
static __always_inline void add_way(const struct eb_cache_slot *way,
				    struct eb_stats *st, struct eb_set *wset)
{
	struct eb_trace key = map_key(&way->key, way->type_bits);

	add_trace(&key, way->count, way->mispreds, st, wset);
}

/*
 * Whether `way` counts the trace `t`. A hit reads no branch type, so
 * typed stacks cost what untyped ones do: a branch's type is that of its
 * source instruction, and a trace whose source lies in an object has the
 * type of the entry that claimed its way (perf2bolt keys return-ness by
 * source address too: DataAggregator's Returns map, filled from R records
 * and from disassembly). A source outside every object, `from` 0, stands
 * for many instructions (a return from libc and a longjmp out of it may
 * land at the same place): such a trace carries its return bit in `from`
 * before it gets here (aggregate_stack).
 */
static __always_inline int owns(const struct eb_cache_slot *way,
				const struct eb_trace *t)
{
	/* `from` first: it differs for most traces that share a set */
	return way->key.from == t->from && way->key.to == t->to &&
	       way->key.ft_end == t->ft_end && way->credit;
}

/* Count one trace: in its cache way if it owns one, else in the map of
 * `wset`, the window's set of tables (whose caches `table` is of). */
static __always_inline void count_trace(struct eb_cache_set *table,
					const struct eb_trace *t,
					__u32 type_bits, __u64 mis,
					struct eb_stats *st, struct eb_set *wset)
{
	struct eb_cache_set *set = &table[set_of(t)];
	struct eb_cache_slot *way;
	struct eb_trace key;

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
	key = map_key(t, type_bits);
	if (add_trace(&key, 1, mis, st, wset))
		return;  /* not in the map: it must not take a way */
	/* the victim is the way with less credit (an empty one has none) */
	way = &set->way[0];
	if (set->way[1].credit < way->credit)
		way = &set->way[1];
	if (!credit_worn(&way->credit))
		return;
	if (way->credit && (way->count || way->mispreds))
		add_way(way, st, wset);
	way->key = *t;
	way->type_bits = cfg.branch_types ? type_bits & EB_BRANCH_TYPE_BITS : 0;
	way->count = 0;
	way->mispreds = 0;
	way->credit = 1;
}

/*
 * The aggregation worker, shared by live sampling and replay. Follows
 * perf2bolt's rules (bolt-profile-formats.md, section 2): entries are
 * newest first; entry i gives the trace (from_i, to_i, from of the next
 * newer kept entry), the newest gets EB_BR_ONLY; entries with a kernel
 * from or to are dropped before pairing. Addresses are translated to
 * object and offset through the process's ranges (`p`) first; user space
 * splits the traces by object when it drains them.
 *
 * A global (not static, not inlined) function: the verifier checks it once,
 * on its own, with its arguments unknown. Inlined into replay's bpf_loop
 * callback, the 64-entry loop exceeded the verifier's 1M-instruction limit
 * on Linux 6.18, which checks a callback over and over until its states
 * converge, with exact state comparison. Global functions taking pointers
 * need Linux 5.12; only the branch programs call it.
 * `set`: the set of tables the sample counts in (current_set(), looked up
 * once per sample by the caller: every entry goes to the same window).
 * tgid: the sampled process, whose mappings may be looked up (live
 * samples); 0 is replay's pseudo-process, whose addresses are no task's.
 */
__noinline int aggregate_stack(struct eb_branch_stack *stack,
			       struct eb_stats *st, struct eb_proc *p,
			       __u32 tgid, struct eb_set *set)
{
	__u32 i, nr, cpu = bpf_get_smp_processor_id();
	struct eb_cache_set *table;
	__u64 newer_from = EB_BR_ONLY;
	struct lookup_state ls = { .tgid = tgid, .may_fill = tgid != 0 };
	int kept = 0;

	if (!stack || !st || !p)  /* the verifier sees possibly-NULL arguments */
		return 0;
	if (!set) {  /* no set to count in (cannot happen): not lost silently */
		st->counter[EB_UPDATE_FAILED]++;
		return 0;
	}
	nr = stack->nr;
	table = cache_table(&trace_cache, cache_element(set, cpu));
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
		/* an address no object holds, or none could be found for,
		 * is 0: outside every object's profile */
		if (b->from >= ls.mru.start && b->from < ls.mru.end)
			t.from = range_key(&ls.mru, b->from);
		else
			t.from = resolve_addr(p, b->from, st, &ls);
		if (b->to >= ls.mru.start && b->to < ls.mru.end)
			t.to = range_key(&ls.mru, b->to);
		else
			t.to = resolve_addr(p, b->to, st, &ls);
		if (t.from == EB_ADDR_UNRESOLVED)
			t.from = 0;
		if (t.to == EB_ADDR_UNRESOLVED)
			t.to = 0;
		t.ft_end = newer_from;
		newer_from = t.from;
		kept = 1;
		if (!t.from && !t.to) {  /* nothing of any object */
			st->counter[EB_TRACES_OUTSIDE]++;
			continue;
		}
		mis = b->flags & EB_BRANCH_MISPRED;
		/* from 0 stands for many source instructions: the entry's
		 * own type goes into the key (after ft_end took the plain
		 * `from`, and the test above), as the cache compares none */
		if (cfg.branch_types && !t.from)
			t.from = return_bit(b->flags);
		/* the entry's type goes along; a miss makes it the key's
		 * return bit (map_key) */
		if (table) {
			count_trace(table, &t, (__u32)b->flags, mis, st, set);
		} else {
			t = map_key(&t, (__u32)b->flags);
			add_trace(&t, 1, mis, st, set);
		}
	}
	if (!kept)  /* no user-space entry kept */
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
	struct eb_set *set;
	struct eb_proc *p;
	__u32 zero = 0, tgid;
	long size, total;

	if (!st)
		return 0;
	p = sample_proc(st, &tgid);
	if (!p)
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
	/* the set is checked here, not only in the worker: a possibly-NULL
	 * pointer passed to a global function is not accepted everywhere */
	set = current_set();
	if (!set) {  /* no set to count in (cannot happen): not lost silently */
		st->counter[EB_UPDATE_FAILED]++;
		return 0;
	}
	aggregate_stack(s, st, p, tgid, set);
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
	struct eb_proc *proc;  /* procs[0]: the ranges user space gave */
	struct eb_set *set;    /* NULL: each stack looks its set up */
	__u32 first;
	__u32 done;
	__u32 bad;
};

static long replay_one(__u32 index, void *data)
{
	struct replay_state *rs = data;
	__u32 idx = rs->first + index;
	struct eb_branch_stack *stack = bpf_map_lookup_elem(&replay_stacks, &idx);
	struct eb_set *set = rs->set;

	if (!stack || stack->nr > EB_MAX_BRANCHES)
		goto bad;
	rs->st->counter[EB_SAMPLES]++;
	/* a replayed stack is a sample: its own lookup of the set, unless the
	 * caller holds one set for its whole run (replay_branches_rcu) */
	if (!set)
		set = current_set();
	if (!set) {  /* cannot happen: counted, and the run stops short */
		rs->st->counter[EB_UPDATE_FAILED]++;
		return 1;
	}
	aggregate_stack(stack, rs->st, rs->proc, 0, set);
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
	__u32 zero = 0;

	rs.proc = bpf_map_lookup_elem(&procs, &zero);
	if (!rs.st || !rs.proc)
		return 1;
	bpf_loop(args->count, replay_one, &rs, 0);
	args->done = rs.done;
	args->bad = rs.bad;
	return 0;
}

#ifdef EB_TEST_PROGRAMS
/*
 * replay_branches as a raw tracepoint program, built only into the tests'
 * object: BPF_PROG_RUN runs a raw_tp program inside rcu_read_lock()
 * (net/bpf/test_run.c, __bpf_prog_test_run_raw_tp), as the kernel runs a
 * perf_event program (kernel/events/core.c, bpf_overflow_handler), while
 * it runs a syscall program under rcu_read_lock_trace() only, which the
 * set switch does not wait for. So a test can replay on one CPU while
 * another switches sets, as live sampling goes on while user space does
 * (tests/test_interval.py). The run looks its set up once and holds it,
 * like one sample lasting the whole run (a millisecond): a switch that
 * did not wait for it would drain the set under it. args[0]: the first
 * stack, args[1]: how many; returns the stacks aggregated.
 */
SEC("raw_tp")
int replay_branches_rcu(struct bpf_raw_tracepoint_args *ctx)
{
	struct replay_state rs = {
		.st = get_stats(),
		.first = ctx->args[0],
		.set = current_set(),
	};
	__u32 zero = 0;

	rs.proc = bpf_map_lookup_elem(&procs, &zero);
	if (!rs.st || !rs.proc || !rs.set)
		return 0;
	bpf_loop(ctx->args[1], replay_one, &rs, 0);
	return rs.done;
}
#endif /* EB_TEST_PROGRAMS */

/* ---- Drain: the caches' pending counts into the tables --------------- */

/*
 * A cache way or slot holds counts not yet in its table (its key is there
 * already). Once the programs have stopped, flush_caches adds them with
 * the same table functions the samples use and empties the caches, so the
 * tables alone hold every count and user space reads them in place
 * (drain.py). Run with BPF_PROG_RUN before each drain of a set, with no
 * program counting into that set: the programs stopped, or switched to
 * the other set (active_set); a second run finds the caches empty. The
 * context names the set. Returns non-zero if it could not walk every
 * cache: counts would be missing.
 */
struct flush_state {
	struct eb_stats *st;
	struct eb_set *set;    /* the set flushed, into its own tables */
	__u32 per_cpu;         /* sets or slots of one CPU's cache */
	__u32 first;           /* the set's first element of a cache map */
};

static long flush_trace_set(__u32 index, void *data)
{
	struct flush_state *fs = data;
	struct eb_cache_set *table = cache_table(&trace_cache, fs->first +
						 index / fs->per_cpu);
	struct eb_cache_slot *way;
	int w;

	if (!table)
		return 1;
	for (w = 0; w < EB_CACHE_WAYS; w++) {
		way = &table[index & cfg.cache_mask].way[w];
		if (way->credit && (way->count || way->mispreds))
			add_way(way, fs->st, fs->set);
		__builtin_memset(way, 0, sizeof(*way));
	}
	return 0;
}

static long flush_ip_slot(__u32 index, void *data)
{
	struct flush_state *fs = data;
	struct eb_ip_slot *table = cache_table(&ip_cache, fs->first +
					       index / fs->per_cpu);
	struct eb_ip_slot *slot;

	if (!table)
		return 1;
	slot = &table[index & cfg.ip_cache_mask];
	if (slot->credit && slot->count)
		add_ip(slot->ip, slot->count, fs->st, fs->set);
	__builtin_memset(slot, 0, sizeof(*slot));
	return 0;
}

SEC("syscall")
int flush_caches(struct eb_flush_args *args)
{
	struct flush_state fs = { .st = get_stats() };
	__u32 zero = 0;
	long n;

#ifdef EB_BASELINE_NO_CACHES
	return 0;  /* no caches: nothing pending */
#endif
	/* the set user space names (after a switch: the old one, which no
	 * program counts into any more), not the active one */
	if (args->set & (EB_SETS - 1))
		fs.set = bpf_map_lookup_elem(&set_b, &zero);
	else
		fs.set = bpf_map_lookup_elem(&set_a, &zero);
	if (!fs.st || !fs.set)
		return 1;
	fs.first = cache_element(fs.set, 0);
	fs.per_cpu = cfg.cache_mask + 1;
	n = cfg.ncpus * fs.per_cpu;
	if (bpf_loop(n, flush_trace_set, &fs, 0) != n)
		return 2;
	fs.per_cpu = cfg.ip_cache_mask + 1;
	n = cfg.ncpus * fs.per_cpu;
	if (bpf_loop(n, flush_ip_slot, &fs, 0) != n)
		return 3;
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
