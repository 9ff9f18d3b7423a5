/* scx_kgmp.h — the one plain header shared by bpf/scx_kgmp.bpf.c and its loader
 * (userspace/monitor/scx_bpf.cpp): DSQ ids, the layout of the program's .bss (mapped by the
 * loader through the skeleton, read and written live by both sides), counter indexes, and
 * the exit record (struct user_exit_info, in .data).
 *
 * The runtime's own state (leases, run queue lengths, per-M slots) is NOT here: it is the
 * kgmp_shared map of kgmp_trace.h, which the loader makes the scx program share with the trace
 * program (bpf_map__reuse_fd), so both read the same leases and trace stays a hot standby.
 *
 * Writers of struct kgmp_scx_state (see the field comments): "user" = the runtime, "bpf" = the
 * scheduler. Fixed-width types only; the C++ side static_asserts what it relies on.
 */
#ifndef SCX_KGMP_H
#define SCX_KGMP_H

#include "kgmp_trace.h"

#define KGMP_SCX_MAX_CPUS 256 /* CPUs beyond it get no per-core DSQ (their Ms go global) */

/* DSQ ids (user DSQs: below 2^63). Core DSQ of CPU c: the runnable Ms pinned to c, the
 * P-holder inserted at the head. Park DSQ of P p: the watcher (spare) M of p's core while it
 * is held; only ops.dispatch moves it out, when released. */
#define KGMP_SCX_CORE_DSQ(cpu) ((__u64)(cpu))
#define KGMP_SCX_PARK_DSQ(p) ((__u64)(0x10000 + (p)))

/* Why a parked watcher is let go (pending[p]). */
#define KGMP_SCX_REL_NONE 0u
#define KGMP_SCX_REL_BLOCK 1u /* the P-holder blocked with work: handoff_lease[p] is set */
#define KGMP_SCX_REL_CYCLE 2u /* held close to the watchdog bound: run it, it re-parks */
#define KGMP_SCX_REL_WAKE 3u  /* user space asked (wake_watcher: timers, stop) */

/* Per-core counters, published by ops.* on that CPU (plain stores: one writer per CPU). */
struct kgmp_scx_core {
	__u64 ticks;         /* ops.tick while an M ran */
	__u64 blocks;        /* an M holding a P blocked (stopping runnable=false) */
	__u64 releases;      /* parked watchers moved to the local DSQ, any reason */
	__u64 handoffs;      /* ... of which because the P-holder blocked with work */
	__u64 parks;         /* watchers parked */
	__u64 holder_first;  /* enqueues of a P-holder at the head of the core DSQ */
	__u64 preempt_reqs;  /* preemption flags raised (a G ran > 10 ms) */
	__u64 dispatches;
	__u64 last_ok_ns;    /* last ops.dispatch/running/tick here: ext tasks could run */
	__u64 lost_wakeups;  /* Ms woken after their P was handed off, run at once to park */
	__u64 hold_run;      /* enqueues of a watcher with a release already pending: run it */
	__u64 yields;        /* ops.yield of a held watcher */
	__u64 enqueues;      /* ops.enqueue of an M */
	__u64 handoffs_queued; /* the holder blocked with work while its spare was not parked yet
	                        * (queued on the core): the spare was dispatched from the core DSQ */
	__u64 pad[2];
};

/* Anomalies: each counted, never silently ignored. */
enum kgmp_scx_anomaly {
	KGMP_SCX_A_NO_SHARED = 0, /* the shared map lookup failed */
	KGMP_SCX_A_BAD_SLOT,      /* a tid mapped to an M slot out of range */
	KGMP_SCX_A_BAD_P,         /* an M or a hold flag named a P out of range */
	KGMP_SCX_A_BAD_CPU,       /* an M pinned to a CPU beyond KGMP_SCX_MAX_CPUS */
	KGMP_SCX_A_DSQ_CREATE,    /* scx_bpf_create_dsq failed in init */
	KGMP_SCX_A_RELEASE_EMPTY, /* a release found the park DSQ empty (watcher still running) */
	KGMP_SCX_A_NO_G,          /* unused since ops.tick derives G run time from the P's
	                           * schedtick (kept: indexes are stable) */
	KGMP_SCX_A_FOREIGN,       /* a SCHED_EXT task that is not (yet) an M: a new M before it
	                           * registers, a thread G code created (it inherits SCHED_EXT) */
	KGMP_SCX_A_TIMER,         /* the cycling timer could not be set up */
	KGMP_SCX_A_NR
};

/* The exit record: scx's struct user_exit_info (user_exit_info_common.h), same fields, sizes
 * and meaning. It is the program's .data variable `uei` (UEI_DEFINE, scx_common.bpf.h), not
 * part of kgmp_scx_state: ops.exit fills it (UEI_RECORD), kind last; user space polls kind
 * (ScxBpf::exited()): 0 while the scheduler runs, then an enum scx_exit_kind. */
enum uei_sizes {
	UEI_REASON_LEN = 128,
	UEI_MSG_LEN = 1024, /* the kernel's SCX_EXIT_MSG_LEN */
};

struct user_exit_info {
	__s32 kind;
	__s64 exit_code;
	char reason[UEI_REASON_LEN];
	char msg[UEI_MSG_LEN];
};

/* BPF-private per-P record of ops.tick: the P's schedtick last seen and since when. Written
 * by ops.tick of the M holding the P (two CPUs may briefly both think they do: a stale since_ns
 * only delays or advances one request). */
struct kgmp_scx_ptick {
	__u64 seen_tick;
	__u64 since_ns;
};

struct kgmp_scx_state {
	/* user, before attach */
	__u32 p_of_cpu[KGMP_SCX_MAX_CPUS]; /* P of each CPU + 1 (0: no P) */
	__u64 test_error_at_ns;             /* test only: scx_bpf_error() once bpf_ktime passes it */
	/* user (hold: the watcher M of P p sets p + 1 before sched_yield, 0 when it leaves) */
	__u32 hold[KGMP_MAX_MS];
	/* bpf writes, user xchg-clears: the lease word BPF saw when P p's holder blocked */
	__u64 handoff_lease[KGMP_MAX_PROCS];
	/* bpf + user: why P p's parked watcher must be released (KGMP_SCX_REL_*), claimed by CAS */
	__u32 pending[KGMP_MAX_PROCS];
	__u64 park_ns[KGMP_MAX_PROCS]; /* bpf: when P p's watcher was parked last */
	__u64 queued_counted[KGMP_MAX_PROCS]; /* bpf: the lease last counted as handoffs_queued */
	/* Preemption requests (DESIGN §5), one word per M slot:
	 *   bpf sets it (ops.tick): the M holds P p in USER state and p's schedtick has not moved
	 *       for KGMP_SCX_PREEMPT_NS (one G has run that long);
	 *   user clears it: the M itself, at its next runtime entry from G code or
	 *       kgmp::preempt_point(), then yields the G (gopreempt).
	 * Race: the G may yield or block on its own between the tick and the check; the flag then
	 * makes the M's next G yield once at its first runtime entry. One extra yield, acceptable. */
	__u32 preempt[KGMP_MAX_MS];
	/* bpf only (ops.tick), per P: Go's sysmon record (pd.schedtick / pd.schedwhen) */
	struct kgmp_scx_ptick ptick[KGMP_MAX_PROCS];
	struct kgmp_scx_core core[KGMP_SCX_MAX_CPUS];
	/* bpf: CPU + 1 whose Ms waited starve_ns without the CPU ever turning to sched_ext (CFS
	 * tasks run first in partial mode); user space then leaves scx before the watchdog ejects */
	__u32 starved;
	__u32 last_foreign_tid; /* bpf: the last KGMP_SCX_A_FOREIGN task (diagnostics) */
	__u64 anomalies[16]; /* indexed by enum kgmp_scx_anomaly (< 16) */
};

#endif /* SCX_KGMP_H */
