#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
SEC("iter/task")
int it(struct bpf_iter__task *ctx)
{
	struct task_struct *t = ctx->task;
	if (!t) return 0;
	BPF_SEQ_PRINTF(ctx->meta->seq, "%d %d\n", t->tgid, t->pid);
	return 0;
}
char LICENSE[] SEC("license") = "GPL";
