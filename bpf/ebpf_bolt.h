/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Types shared by the BPF object (ebpf_bolt.bpf.c) and the Python side
 * (src/ebpf_bolt/layout.py mirrors them with ctypes, and every #define
 * here under the same name without EB_; tests/test_bpf_object.py checks
 * the structs against the BTF of the compiled object and the #defines
 * against this file).
 * Fixed-width types only, so both sides agree on every architecture.
 */
#ifndef EBPF_BOLT_H
#define EBPF_BOLT_H

/* Deepest branch stack any hardware produces (Intel Arch LBR, ARM BRBE). */
#define EB_MAX_BRANCHES 64

/* BOLT's "no fall-through known" end of a trace (DataAggregator's BR_ONLY). */
#define EB_BR_ONLY 0xffffffffffffffffULL

/*
 * Addresses as the maps key them: an object (an ELF file, numbered by the
 * program in the order it meets them, 1 to EB_MAX_OBJECTS - 1) and a file
 * offset in it, so one process or a thousand running the object add to
 * the same keys, whatever their load addresses:
 *   key = object << EB_OBJECT_SHIFT | file offset.
 * 0 is an address outside every object (anonymous memory, a JIT);
 * EB_BR_ONLY keeps its meaning (its object field, 0xffff, is never given).
 */
#define EB_OBJECT_SHIFT 48
#define EB_OFFSET_MASK 0xffffffffffffULL  /* (1 << EB_OBJECT_SHIFT) - 1 */
#define EB_MAX_OBJECTS 4096
/* translate_addr's result for an address no range of the process covers
 * yet (bit 63: no object number reaches it) */
#define EB_ADDR_UNRESOLVED 0x8000000000000000ULL

/* One executable mapping of a process: [start, end) holds the file
 * offsets start - delta onwards of `object` (0: no file). end == 0: free. */
struct eb_range {
	__u64 start;
	__u64 end;
	__u64 delta;           /* vm_start - vm_pgoff * page size */
	__u32 object;
	__u32 sampled;         /* 1 once a sample of this process fell in it
	                        * (its (object, process) pair is noted) */
};

/* Ranges kept per process: its hot objects (executable, libc, ld.so and
 * a few libraries); more get evicted in turn and looked up again. */
#define EB_PROC_RANGES 16

/* A recorded process (procs map, keyed by global tgid). */
struct eb_proc {
	__u32 next;            /* the range slot a new range takes next */
	__u32 serial;          /* this entry's own number (never 0): a
	                        * deferred delete (on_exit) of an earlier
	                        * process with the same tgid spares it */
	struct eb_range range[EB_PROC_RANGES];
};

/* A CPU's last IP sample (last_sample, a per-CPU array): its process and
 * the range its IP fell in, valid while ranges_gen is `gen`. */
struct eb_last_sample {
	__u32 tgid;
	__u32 gen;
	struct eb_range range;
};

/* An object's file identity, as the kernel holds it: the inode number,
 * the super block's dev_t (MAJOR << 20 | MINOR, unlike stat's st_dev) and
 * the inode generation (a replaced file that reuses a freed inode number
 * gets another one). */
struct eb_object_key {
	__u64 ino;
	__u32 dev;
	__u32 generation;
};

/* objects_info[id]: what user space needs to find object `id`'s file:
 * a process that mapped it and where, to open
 * /proc/TGID/map_files/START-END. state: 0 not written yet, 1 valid,
 * 2 a number lost to a race (another CPU numbered the file first). */
struct eb_object {
	struct eb_object_key key;
	__u32 tgid;
	__u32 state;
	__u64 start;
	__u64 end;
};

/* Options, written into .rodata before the object is loaded. */
struct eb_config {
	__u32 target_tgid;     /* process whose tree is recorded, as
	                        * ebpf-bolt's PID namespace numbers it
	                        * (pidns_dev, pidns_ino); 0: none */
	__u32 count_threads;   /* 1: also count samples per thread id */
	__u64 user_addr_end;   /* addresses at or above this are kernel ones */
	__u32 cache_mask;      /* trace cache sets - 1 (a power of two - 1) */
	__u32 ncpus;           /* possible CPUs: the caches to flush */
	__u64 pidns_dev;       /* PID namespace that target_tgid and thread */
	__u64 pidns_ino;       /* ids are in (the target's own); ino 0: the
	                        * root namespace's ids */
	__u32 ip_cache_mask;   /* IP cache slots - 1 (a power of two - 1) */
	__u32 all_processes;   /* 1: record every process (-a) */
	__u32 page_shift;      /* log2 of the page size: vm_pgoff's unit */
	__u32 target_at_exec;  /* 1: the target is recorded from its exec on
	                        * (a command: before it, the process is
	                        * ebpf-bolt's own forked child, in Python) */
	__u64 tid_pidns_dev;   /* PID namespace in which thread ids are */
	__u64 tid_pidns_ino;   /* counted (--threads): the target's own */
	__u32 ip_slots;        /* slots of the IP table (ip_counts) */
	__u32 trace_slots;     /* slots of the trace table (trace_counts) */
	__u32 branch_types;    /* 1: branch entries carry their type (the
	                        * event saves it, or a typed replay): returns
	                        * are kept apart (EB_TRACE_RETURN); 0: the
	                        * worker skips that test altogether */
	__u32 reserved;
};

/* Event counters, one set per CPU, summed by user space when it reports. */
enum eb_counter {
	EB_SAMPLES = 0,        /* program runs (samples delivered) */
	EB_OTHER_PROCESS,      /* samples of another process */
	EB_KERNEL_IP,          /* basic samples whose IP was in the kernel */
	EB_MAP_FULL,           /* new keys refused because the map was full */
	EB_UPDATE_FAILED,      /* other map update failures (e.g. lock busy) */
	EB_THREAD_MAP_FULL,    /* thread ids not counted: thread map full */
	EB_BRANCH_READ_FAILED, /* bpf_read_branch_records() failed */
	EB_STACK_CUT,          /* branch stacks deeper than EB_MAX_BRANCHES */
	EB_SCRATCH_FAILED,     /* per-CPU scratch space unavailable */
	EB_BRANCH_ENTRIES,     /* branch entries read */
	EB_KERNEL_BRANCHES,    /* entries dropped: kernel from or to */
	EB_EMPTY_STACKS,       /* samples with no user branch left */
	EB_TRACES_LOST,        /* trace counts not stored: trace map full */
	EB_ANON_IP,            /* IP samples in memory that maps no file
	                        * (JIT code, the vdso): no object to credit */
	EB_UNRESOLVED,         /* user addresses no range covered and no
	                        * lookup could resolve (bpf_find_vma busy) */
	EB_VMA_LOOKUPS,        /* bpf_find_vma calls made from samples */
	EB_PROCS_FULL,         /* processes not recorded: procs map full */
	EB_OBJECTS_FULL,       /* objects not told apart: object table full */
	EB_TRACES_OUTSIDE,     /* traces with no address in any object */
	EB_BEFORE_EXEC,        /* samples of the command's process before its
	                        * exec (ebpf-bolt's forked child): not kept */
	EB_TABLE_UPDATES,      /* operations on the shared count tables: the
	                        * caches' misses and evictions (and flushes) */
	EB_NR_COUNTERS
};

struct eb_stats {
	__u64 counter[EB_NR_COUNTERS];
};

/* Key of the trace map: a taken branch from -> to, then straight-line
 * execution from `to` up to `ft_end` (the next branch's source), or
 * EB_BR_ONLY for the newest branch of a stack. */
struct eb_trace {
	__u64 from;
	__u64 to;
	__u64 ft_end;
};

/*
 * Slots of the count tables (ip_counts, trace_counts: arrays shared by all
 * CPUs, used as open-addressing hash tables; ebpf_bolt.bpf.c says how).
 * A key's slot is found within EB_MAX_PROBES of its first one: at the
 * load user space sizes the tables for (3/4), a simulation of a million
 * random keys needed at most 167 probes.
 */
#define EB_MAX_PROBES 256

/* An IP table slot: ip 0 marks it free (IP keys are never 0). */
struct eb_ip_entry {
	__u64 ip;
	__u64 count;
};

/* A trace table slot. The key's words are stored with EB_SLOT_USED
 * flipped, so none is 0 and from == 0 marks the slot free: a trace may
 * have an address outside every object (0), and ft_end may be EB_BR_ONLY
 * (bit 62 is otherwise clear: object numbers stay below 2^12). */
#define EB_SLOT_USED 0x4000000000000000ULL  /* bit 62 */

struct eb_trace_entry {
	struct eb_trace key;
	__u64 count;
	__u64 mispreds;
};

/* The `from` (as stored: flipped) of traces that passed a slot of the same
 * `from` still being written (table_races): only those traces may have two
 * slots, so the drain merges only their rows. n counts every race; past
 * EB_RACED_MAX the drain merges every row. */
#define EB_RACED_MAX 63

struct eb_raced {
	__u64 n;
	__u64 from[EB_RACED_MAX];
};

/*
 * Sets of count tables (--interval): each count table and each per-CPU
 * cache map holds EB_SETS slices of the same size, one per set; the
 * programs count into the slice of the active set, which they find through
 * the active_set map of maps (ebpf_bolt.bpf.c says why that way). One
 * element of each set's own inner map (set_a, set_b) describes it: its
 * slice, the slots its table has claimed (user space drains a window
 * early when they pass 80% of the room) and its raced traces.
 */
#define EB_SETS 2

struct eb_set {
	__u32 index;           /* the set's slice of every table: 0 or 1 */
	__u32 reserved;
	__u64 claimed;         /* slots claimed in its count table */
	struct eb_raced raced; /* traces that may have two slots in it */
};

/* Context of flush_caches: the set whose caches go to its tables. */
struct eb_flush_args {
	__u32 set;
	__u32 reserved;
};

/* One entry of a branch stack, laid out as the kernel's
 * struct perf_branch_entry (UAPI, 24 bytes): from, to, then flags with
 * bit 0 = mispred, bit 1 = predicted. */
struct eb_branch {
	__u64 from;
	__u64 to;
	__u64 flags;
};

#define EB_BRANCH_MISPRED 1ULL

/* The entry's branch type, where the event asked for
 * PERF_SAMPLE_BRANCH_TYPE_SAVE (else 0, PERF_BR_UNKNOWN): the 4-bit `type`
 * field of the UAPI flags word (after mispred, predicted, in_tx, abort and
 * the 16-bit cycles). Returns are PERF_BR_RET and PERF_BR_COND_RET
 * (<linux/perf_event.h>, enum perf_branch_sample_type). */
#define EB_BRANCH_TYPE_SHIFT 20
#define EB_BRANCH_TYPE_MASK 0xf
#define EB_BRANCH_TYPE_BITS 0xf00000U  /* the field in place */
#define EB_BR_RET 6
#define EB_BR_COND_RET 10
#define EB_RETURN_TYPES 0x440ULL  /* 1 << EB_BR_RET | 1 << EB_BR_COND_RET */

/* A trace whose branch is a return keeps that in its map key: bit 61 of
 * `from` (object numbers stay below 2^12, so bits 60 and 61 of a key are
 * free). The trace cache keys traces without it where the source lies in
 * an object (a branch's type is its instruction's) and with it where the
 * source is outside every object (from 0: many instructions). The drain
 * splits it off into a column of its own. */
#define EB_TRACE_RETURN_BIT 61
#define EB_TRACE_RETURN 0x2000000000000000ULL  /* 1 << EB_TRACE_RETURN_BIT */

/* One way of the per-CPU trace cache. credit 0: empty. */
struct eb_cache_slot {
	struct eb_trace key;
	__u64 count;           /* counts not yet added to the trace map */
	__u64 mispreds;
	__u32 credit;          /* hits keep a trace in its way, misses wear it */
	__u32 type_bits;       /* the type field (EB_BRANCH_TYPE_BITS) of the
	                        * entry that claimed the way; 0 untyped */
};

/* A set of the trace cache: a trace may sit in either way of its set, so
 * two hot traces whose hashes collide no longer evict each other. */
#define EB_CACHE_WAYS 2

struct eb_cache_set {
	struct eb_cache_slot way[EB_CACHE_WAYS];
};

#define EB_CACHE_MAX_CREDIT 8

/* One slot of the per-CPU IP cache (ip_cache). credit 0: empty. */
struct eb_ip_slot {
	__u64 ip;
	__u32 count;           /* samples not yet added to ip_counts */
	__u32 credit;          /* hits keep an IP in its slot, misses wear it */
};

/* A slot's pending count goes to ip_counts when it reaches this, so the
 * 32-bit count cannot wrap however long a recording runs. */
#define EB_IP_FLUSH_AT 0x80000000U

/* Replay of IP samples (BPF_PROG_RUN of replay_ips, built only into the
 * tests' object, -DEB_TEST_PROGRAMS): IPs in the replay_ip_buf array,
 * counted as sample_ip counts a sample. */
#define EB_REPLAY_IPS 4096

struct eb_replay_ips {
	__u64 ip[EB_REPLAY_IPS];
};

struct eb_replay_ip_args {
	__u32 count;           /* IPs of replay_ip_buf[buf] to count */
	__u32 done;            /* out: IPs counted */
	__u32 buf;             /* the element of replay_ip_buf: one per
	                        * thread replaying at the same time */
	__u32 reserved;
};

/* One branch stack, newest entry first: the live program's scratch copy,
 * and each element of the replay_stacks array (BPF_PROG_RUN of
 * replay_branches). */
struct eb_branch_stack {
	__u32 nr;
	__u32 reserved;
	struct eb_branch entries[EB_MAX_BRANCHES];
};

/* Context of replay_branches, written back after the run. */
struct eb_replay_args {
	__u32 first;           /* index of the first stack in replay_stacks */
	__u32 count;           /* stacks to aggregate */
	__u32 done;            /* out: stacks aggregated */
	__u32 bad;             /* out: stacks rejected (nr too large) */
};

#endif /* EBPF_BOLT_H */
