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

/* Options, written into .rodata before the object is loaded. */
struct eb_config {
	__u32 target_tgid;     /* process to keep; 0 keeps every process */
	__u32 count_threads;   /* 1: also count samples per thread id */
	__u64 user_addr_end;   /* addresses at or above this are kernel ones */
	__u32 cache_mask;      /* trace cache sets - 1 (a power of two - 1) */
	__u32 ncpus;           /* possible CPUs: per-CPU values to sum */
	__u64 pidns_dev;       /* PID namespace that target_tgid and thread */
	__u64 pidns_ino;       /* ids are in (the target's own); ino 0: the
	                        * root namespace's ids */
	__u32 ip_cache_mask;   /* IP cache slots - 1 (a power of two - 1) */
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

struct eb_trace_counts {
	__u64 count;
	__u64 mispreds;
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

/* One way of the per-CPU trace cache. credit 0: empty. */
struct eb_cache_slot {
	struct eb_trace key;
	__u64 count;           /* counts not yet added to the trace map */
	__u64 mispreds;
	__u32 credit;          /* hits keep a trace in its way, misses wear it */
	__u32 reserved;
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
	__u32 count;           /* IPs of replay_ip_buf to count */
	__u32 done;            /* out: IPs counted */
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

/* CPUs whose values drain_traces sums at most: machines with more drain
 * through the batch lookup (layout.DRAIN_MAX_CPUS). */
#define EB_DRAIN_MAX_CPUS 1024

/* Drain (BPF_PROG_RUN of drain_traces): one record per trace, counts
 * summed over CPUs, written into the mmapped drain_out array. */
struct eb_trace_record {
	struct eb_trace key;
	__u64 count;
	__u64 mispreds;
};

/* Context of drain_traces: records [first, first + capacity) of the walk
 * of trace_counts go to drain_out; written back after the run. */
struct eb_drain_args {
	__u32 first;           /* index, in walk order, of the first record */
	__u32 capacity;        /* records drain_out holds */
	__u32 written;         /* out: records written */
	__u32 walked;          /* out: traces visited; < first + capacity
	                        * when the walk reached the end of the map */
	__u64 lowest;          /* out, over the records written: lowest and */
	__u64 highest;         /* highest from, to or ft_end (but BR_ONLY) */
	__u64 br_only;         /* out: records whose ft_end is EB_BR_ONLY */
};

#endif /* EBPF_BOLT_H */
