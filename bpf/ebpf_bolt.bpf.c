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

char LICENSE[] SEC("license") = "Dual BSD/GPL";
