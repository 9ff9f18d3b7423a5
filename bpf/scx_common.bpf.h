/* SPDX-License-Identifier: GPL-2.0 */
/*
 * scx_common.bpf.h — the BPF-side conventions of sched_ext schedulers, as the scx project
 * defines them (sched-ext/scx scheds/include/scx/: common.bpf.h, compat.bpf.h,
 * user_exit_info.bpf.h; the kernel's tools/sched_ext/include/scx/ carries the same), for
 * bpf/scx_kgmp.bpf.c. Same names and semantics, limited to what kgmp uses: those headers are
 * not packaged by Debian and come with scx's build (generated enum tables, arena and cid
 * headers), so this one file stands in for them.
 *
 * What:
 *   - BPF_STRUCT_OPS(name, args...): an ops callback, SEC("struct_ops/<name>") with BPF_PROG's
 *     typed arguments; BPF_STRUCT_OPS_SLEEPABLE: the same in "struct_ops.s/" (ops.init).
 *   - SCX_OPS_DEFINE(name, fields...): the scheduler's struct sched_ext_ops, in
 *     .struct_ops.link (attached through a BPF link, which dies with the process).
 *   - The kfuncs every sched_ext kernel has (>= 6.12), with their prototypes there: plain
 *     __ksym, so a missing one fails the load by name instead of at the verifier.
 *   - Compat wrappers for kfuncs renamed or revised since 6.12, under their current names.
 *     Each picks the newest flavor the running kernel has with bpf_ksym_exists() (libbpf
 *     leaves an absent __weak kfunc unresolved and the verifier removes the dead branches):
 *       scx_bpf_dsq_insert(p, dsq, slice, enq_flags)
 *           scx_bpf_dsq_insert___v2 (6.19+, returns bool), scx_bpf_dsq_insert (6.13+),
 *           scx_bpf_dispatch (6.12); for the older two it returns true;
 *       scx_bpf_dsq_move_to_local(dsq, enq_flags)
 *           scx_bpf_dsq_move_to_local___v2 (7.1+, takes enq_flags), scx_bpf_dsq_move_to_local
 *           (6.13+), scx_bpf_consume (6.12); the older two ignore enq_flags.
 *     libbpf resolves a kfunc by its name up to the last "___<flavor>", so a flavor whose
 *     kernel name has a ___ of its own (___v2) is declared with one more (___v2___compat).
 *   - scx_bpf_error(fmt, args...): scx_bpf_error_bstr with printf-style arguments (up to 12),
 *     checked like printf at compile time. The format lives in .data: the kfunc takes a
 *     `char *`, which the verifier wants to be writable memory.
 *   - UEI_DEFINE(name): the exit record, `struct user_exit_info name` in .data (the struct is
 *     shared with user space through scx_kgmp.h). UEI_RECORD(name, ei), in ops.exit: copies
 *     reason and message, the exit code if the kernel has one, then stores kind last with an
 *     atomic (a full barrier), so user space that sees kind != 0 reads a complete record.
 *
 * Left out (kgmp uses none): the exit record's debug dump buffer (ops.dump) and exit CPU
 * (newer kernels only); scx's generated enum tables (an enum value that differs between
 * kernels is read with bpf_core_enum_value(); the ops flags are the same in every sched_ext
 * kernel and come from vmlinux.h, since a struct_ops initializer cannot hold a CO-RE
 * relocation); cpumask, cgroup, arena and iterator helpers.
 */
#ifndef KGMP_SCX_COMMON_BPF_H
#define KGMP_SCX_COMMON_BPF_H

#ifndef BPF_NO_KFUNC_PROTOTYPES
#define BPF_NO_KFUNC_PROTOTYPES /* vmlinux.h's own kfunc prototypes would clash with these */
#endif
#include "vmlinux.h"

#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#define BPF_STRUCT_OPS(name, args...) SEC("struct_ops/" #name) BPF_PROG(name, ##args)
#define BPF_STRUCT_OPS_SLEEPABLE(name, args...) SEC("struct_ops.s/" #name) BPF_PROG(name, ##args)

#define SCX_OPS_DEFINE(name, ...)                   \
	SEC(".struct_ops.link")                     \
	struct sched_ext_ops name = { __VA_ARGS__ }

/* Present in every sched_ext kernel. */
s32 scx_bpf_create_dsq(u64 dsq_id, s32 node) __ksym;
s32 scx_bpf_dsq_nr_queued(u64 dsq_id) __ksym;
void scx_bpf_kick_cpu(s32 cpu, u64 flags) __ksym;
s32 scx_bpf_task_cpu(const struct task_struct *p) __ksym;
void scx_bpf_error_bstr(char *fmt, unsigned long long *data, u32 data__sz) __ksym;

/* Renamed or revised: every flavor weak, the wrappers below choose. */
bool scx_bpf_dsq_insert___v2___compat(struct task_struct *p, u64 dsq_id, u64 slice,
				      u64 enq_flags) __ksym __weak;
void scx_bpf_dsq_insert___v1(struct task_struct *p, u64 dsq_id, u64 slice,
			     u64 enq_flags) __ksym __weak;
void scx_bpf_dispatch___old(struct task_struct *p, u64 dsq_id, u64 slice,
			    u64 enq_flags) __ksym __weak;
bool scx_bpf_dsq_move_to_local___v2___compat(u64 dsq_id, u64 enq_flags) __ksym __weak;
bool scx_bpf_dsq_move_to_local___v1(u64 dsq_id) __ksym __weak;
bool scx_bpf_consume___old(u64 dsq_id) __ksym __weak;

static __always_inline bool scx_bpf_dsq_insert(struct task_struct *p, u64 dsq_id, u64 slice,
					       u64 enq_flags)
{
	if (bpf_ksym_exists(scx_bpf_dsq_insert___v2___compat))
		return scx_bpf_dsq_insert___v2___compat(p, dsq_id, slice, enq_flags);
	if (bpf_ksym_exists(scx_bpf_dsq_insert___v1))
		scx_bpf_dsq_insert___v1(p, dsq_id, slice, enq_flags);
	else
		scx_bpf_dispatch___old(p, dsq_id, slice, enq_flags);
	return true;
}

static __always_inline bool scx_bpf_dsq_move_to_local(u64 dsq_id, u64 enq_flags)
{
	if (bpf_ksym_exists(scx_bpf_dsq_move_to_local___v2___compat))
		return scx_bpf_dsq_move_to_local___v2___compat(dsq_id, enq_flags);
	if (bpf_ksym_exists(scx_bpf_dsq_move_to_local___v1))
		return scx_bpf_dsq_move_to_local___v1(dsq_id);
	return scx_bpf_consume___old(dsq_id);
}

/* Never called: lets the compiler check scx_bpf_error's format against its arguments. */
static inline __attribute__((format(printf, 1, 2))) void
scx_bpf_error_fmt_check(const char *fmt, ...)
{
}

#define scx_bpf_error(fmt, args...)                                                  \
	({                                                                           \
		static char ___fmt[] = fmt;                                          \
		/* at least one element, or the verifier sees no memory to read */   \
		unsigned long long ___param[___bpf_narg(args) ?: 1] = {};            \
		_Pragma("GCC diagnostic push")                                       \
		_Pragma("GCC diagnostic ignored \"-Wint-conversion\"")               \
		___bpf_fill(___param, args);                                         \
		_Pragma("GCC diagnostic pop")                                        \
		scx_bpf_error_bstr(___fmt, ___param, sizeof(___param));              \
		scx_bpf_error_fmt_check(fmt, ##args);                                \
	})

#define UEI_DEFINE(name) struct user_exit_info name SEC(".data")

/* kind: never SCX_EXIT_NONE in ops.exit; a 0 would read as "still running" to user space, so
 * it is stored as SCX_EXIT_DONE's 1. */
#define UEI_RECORD(name, ei)                                                          \
	({                                                                            \
		bpf_probe_read_kernel_str(name.reason, sizeof(name.reason), (ei)->reason); \
		bpf_probe_read_kernel_str(name.msg, sizeof(name.msg), (ei)->msg);     \
		if (bpf_core_field_exists((ei)->exit_code))                           \
			name.exit_code = (ei)->exit_code;                             \
		__sync_val_compare_and_swap(&name.kind, name.kind,                    \
					    (ei)->kind ? (s32)(ei)->kind : 1);        \
	})

#endif /* KGMP_SCX_COMMON_BPF_H */
