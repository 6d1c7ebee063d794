// SPDX-License-Identifier: GPL-2.0
/*
 * hashlab: what a socket filter hands bpf_skb_set_vnet_hash() (the kfunc design's
 * kfunc), seen from a kprobe on it.
 *
 * Under BPF_PROG_TEST_RUN there is no tun, so the kfunc refuses to record anything
 * (-EOPNOTSUPP); the arguments the program called it with are its answer all the same.
 * Every call appends (value, report) to kfunc_calls; kfunc_state[0] counts the calls.
 * Both maps are mmapable: hashlab reads and resets them without a syscall per call.
 */
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#define CAPTURE_MAX 65536

struct call {
	__u32 value;
	__u32 report;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CAPTURE_MAX);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct call);
} kfunc_calls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u32);
} kfunc_state SEC(".maps");

SEC("kprobe/bpf_skb_set_vnet_hash")
int capture_vnet_hash(struct pt_regs *ctx)
{
	__u32 zero = 0, *n, i;
	struct call *c;

	n = bpf_map_lookup_elem(&kfunc_state, &zero);
	if (!n)
		return 0;
	/* BPF_PROG_TEST_RUN runs one frame at a time: no two calls race here */
	i = *n;
	*n = i + 1;
	c = bpf_map_lookup_elem(&kfunc_calls, &i);
	if (c) {
		c->value = PT_REGS_PARM2(ctx);
		c->report = PT_REGS_PARM3(ctx);
	}
	return 0;
}

char _license[] SEC("license") = "GPL";
