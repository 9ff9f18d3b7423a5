/* SPDX-License-Identifier: GPL-2.0 */
/*
 * scx_kgmp - the `scx` monitor of DESIGN.md §4: a sched_ext scheduler, in partial mode, for the
 * threads (Ms) of one kgmp runtime process, that makes the hand-off of a P from a blocked M
 * cost one context switch.
 *
 * What it does:
 *   - SCX_OPS_SWITCH_PARTIAL: only tasks whose policy is SCHED_EXT are ours; each M switches
 *     itself (sched_setscheduler(0, 7)). Every other task of the machine stays in CFS, so an
 *     unrelated CPU hog is never starved by us.
 *   - One DSQ per core (KGMP_SCX_CORE_DSQ(cpu)) for the runnable Ms pinned there; the M holding
 *     the core's P goes to its head, the others (a new M, a P-less M) to its tail, so the
 *     P-holder runs first and a P-less M does not compete with it. One exception: an M woken
 *     after its P was handed off runs at once for one short slice, because it parks (becomes
 *     the core's spare again) at its next runtime entry; kept waiting for the holder's 20 ms
 *     slice, it would make the runtime create a new spare per block (tests/bpf's stress: 427
 *     threads instead of < 200). After that slice it waits behind the holder.
 *   - Holding the spare: the watcher M of P p (the spare that takes p when its holder blocks)
 *     sets hold[slot] = p + 1 in our .bss and calls sched_yield(). Its re-enqueue lands in
 *     P p's park DSQ, which nothing consumes: it stays runnable (state R) but never runs, and
 *     the core halts if nothing else wants it.
 *   - The block: ops.stopping(runnable = false) of an M whose lease is USER (it ran G code),
 *     with itself as holder, while P p has work (its queue or the global one): the same
 *     filter as kgmp_trace's sched_switch. It records the lease word in handoff_lease[p],
 *     marks pending[p] = REL_BLOCK, and the ops.dispatch that follows on the same CPU (the CPU
 *     is picking its next task right now) moves the park DSQ into the local DSQ: the watcher
 *     runs next, reads handoff_lease[p] and CASes the lease (handoff_p). One context switch.
 *   - The watchdog: a task runnable but not run for timeout_ms ejects the whole scheduler. A
 *     BPF timer every KGMP_SCX_TIMER_NS releases (REL_CYCLE) any watcher parked longer than
 *     hold_ns (a fraction of timeout_ms): it runs, finds no event, yields and is parked again.
 *   - Starvation: partial mode runs SCHED_EXT tasks only when CFS has nothing to run on the
 *     CPU. The same timer flags (st.starved) a CPU whose Ms have waited starve_ns
 *     (min(timeout/2, 2.5 s)) while the CPU never turned to sched_ext; user space then
 *     leaves scx for trace before the watchdog ejects us (it cannot make CFS yield, and
 *     neither can we).
 *   - ops.tick publishes per-core counters and raises preempt[slot] for a G that has run more
 *     than 10 ms, Go's sysmon way: the runtime publishes per P a schedtick (one store per G
 *     started, no clock read); the tick keeps per P {seen_tick, since_ns} and, while the M
 *     holds its P in USER state (G code runs) with schedtick unchanged for 10 ms, raises the
 *     flag and restarts since_ns (one request per 10 ms of one G's run). The runtime clears
 *     the flag and yields the G at its next runtime entry or kgmp::preempt_point().
 *   - ops.exit records kind, exit code, reason and message in the exit record `uei` (.data,
 *     UEI_RECORD), kind last, so the loader's ejection watcher can log it and fall back to
 *     trace.
 *
 * Invariants:
 *   - This program never writes a lease (DESIGN §3); the watcher's CAS from exactly the word
 *     in handoff_lease decides, so a stale record only costs a failed CAS.
 *   - pending[p] is claimed by CAS (ops.dispatch runs concurrently on every CPU): a release
 *     is acted on once.
 *   - A watcher is parked only if nothing is pending for it: ops.enqueue re-checks
 *     handoff_lease[p] and claims pending[p], because the holder may block between the
 *     watcher's last look and its sched_yield (e.g. the watcher was preempted by the holder).
 *
 * Portability: the scx project's conventions, from scx_common.bpf.h (BPF_STRUCT_OPS,
 * SCX_OPS_DEFINE, UEI_DEFINE/UEI_RECORD, scx_bpf_error); kfuncs renamed since 6.12 go through
 * its compat wrappers, scx_bpf_dsq_insert() and scx_bpf_dsq_move_to_local(), which pick the
 * running kernel's flavor. Enum values that differ between kernels (SCX_ENQ_HEAD) come from
 * CO-RE; the ops flags are the same in every sched_ext kernel. Built against the newest
 * kernel's vmlinux.h; struct_ops members unknown to an older kernel are zero and skipped.
 *
 * Rejected: keeping the spare in BPF custody (enqueue inserting nowhere) and releasing it with
 * bpf_task_from_pid (a task pointer to track per P, and nothing for the watchdog to see in
 * a DSQ); a spare spinning at SCHED_IDLE (the core never halts); releasing from user space
 * (a syscall on the critical path: the blocked M's own CPU already calls ops.dispatch).
 */
#include "scx_common.bpf.h"

#include "scx_kgmp.h"

char LICENSE[] SEC("license") = "GPL";

#define KGMP_SCX_SLICE_NS (20ULL * 1000 * 1000)
#define KGMP_SCX_PREEMPT_NS (10ULL * 1000 * 1000)
#define KGMP_SCX_LOST_SLICE_NS (1000ULL * 1000) /* a woken M that lost its P: time to park */
#define KGMP_SCX_TIMER_NS (100ULL * 1000 * 1000)

/* Set by the loader before load. */
const volatile __u32 target_tgid = 0;
const volatile __u32 nr_cpus = 1;
const volatile __u32 nprocs = 1;
const volatile __u64 hold_ns = 1000ULL * 1000 * 1000;
const volatile __u64 starve_ns = 2500ULL * 1000 * 1000;
/* Test only (KGMP_SCX_TEST_STALL=1): never cycle a parked spare and never flag starvation, so
 * a spare held past timeout_ms makes the kernel's watchdog eject the scheduler. */
const volatile __u32 test_stall = 0;

struct kgmp_scx_state st;
UEI_DEFINE(uei);

/* The runtime's shared memory and tid -> M slot table: the loader makes these the very maps
 * of the loaded kgmp_trace object (same definitions as kgmp_trace.bpf.c). */
#include "kgmp_maps.bpf.h"

struct cycle_timer {
	struct bpf_timer t;
};
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cycle_timer);
} kgmp_timer SEC(".maps");

#define READ_ONCE_U32(x) (*(volatile __u32 *)&(x))
#define READ_ONCE_U64(x) (*(volatile __u64 *)&(x))
#define WRITE_ONCE_U32(x, v) (*(volatile __u32 *)&(x) = (v))
#define WRITE_ONCE_U64(x, v) (*(volatile __u64 *)&(x) = (v))

static __always_inline void anomaly(int a)
{
	if (a >= 0 && a < KGMP_SCX_A_NR)
		__sync_fetch_and_add(&st.anomalies[a & 15], 1);
}

/* Array indexes the verifier can bound: the empty asm keeps the compiler from dropping a
 * mask it can prove redundant after a range check (and then spilling an unbounded value). */
static __always_inline __u32 pidx(__u32 i)
{
	asm volatile("" : "+r"(i));
	return i & (KGMP_MAX_PROCS - 1);
}
static __always_inline __u32 sidx(__u32 i)
{
	asm volatile("" : "+r"(i));
	return i & (KGMP_MAX_MS - 1);
}
static __always_inline __u32 cidx(__u32 i)
{
	asm volatile("" : "+r"(i));
	return i & (KGMP_SCX_MAX_CPUS - 1);
}

#define CORE_SET(cpu, field, v)                                      \
	do {                                                          \
		__u32 _c = (__u32)(cpu);                              \
		if (_c < KGMP_SCX_MAX_CPUS)                           \
			WRITE_ONCE_U64(st.core[cidx(_c)].field, (v)); \
	} while (0)

/* Per-core counter of CPU cpu += 1 (one writer per CPU: plain increments). */
#define CORE_INC(cpu, field)                                          \
	do {                                                          \
		__u32 _c = (__u32)(cpu);                              \
		if (_c < KGMP_SCX_MAX_CPUS)                           \
			st.core[cidx(_c)].field++;                    \
	} while (0)

static __always_inline struct kgmp_shared *shared_mem(void)
{
	__u32 zero = 0;
	struct kgmp_shared *s = bpf_map_lookup_elem(&kgmp_shared, &zero);

	if (!s)
		anomaly(KGMP_SCX_A_NO_SHARED);
	return s;
}

/* M slot of task p, or -1 if p is not a registered M of the runtime. */
static __always_inline int m_slot(struct task_struct *p)
{
	__u32 tid;
	__u32 *slotp;

	if (p->tgid != target_tgid)
		return -1;
	tid = p->pid;
	slotp = bpf_map_lookup_elem(&kgmp_tids, &tid);
	if (!slotp)
		return -1;
	if (*slotp >= KGMP_MAX_MS) {
		anomaly(KGMP_SCX_A_BAD_SLOT);
		return -1;
	}
	return *slotp;
}

/* The test-only knob: the loader sets test_error_at_ns from KGMP_SCX_TEST_ERROR_MS. */
static __always_inline void maybe_test_error(void)
{
	__u64 at = READ_ONCE_U64(st.test_error_at_ns);

	if (at && bpf_ktime_get_ns() >= at) {
		WRITE_ONCE_U64(st.test_error_at_ns, 0);
		scx_bpf_error("kgmp test: scx_bpf_error forced (KGMP_SCX_TEST_ERROR_MS) at %llu", at);
	}
}

/* Claims pending[pi] (any reason) by CAS; true if this caller owns the release. */
static __always_inline bool claim_pending(__u32 pi)
{
	__u32 r;

	if (pi >= KGMP_MAX_PROCS)
		return false;
	r = READ_ONCE_U32(st.pending[pidx(pi)]);
	if (r == KGMP_SCX_REL_NONE)
		return false;
	return __sync_val_compare_and_swap(&st.pending[pidx(pi)], r, KGMP_SCX_REL_NONE) == r;
}

static __always_inline s32 cpu_of_p(struct kgmp_shared *s, __u32 pi)
{
	if (pi >= KGMP_MAX_PROCS)
		return -1;
	return (s32)READ_ONCE_U32(s->p[pidx(pi)].cpu);
}

s32 BPF_STRUCT_OPS(kgmp_select_cpu, struct task_struct *p, s32 prev_cpu, u64 wake_flags)
{
	/* Ms are pinned: stay. No direct dispatch, so every wakeup goes through ops.enqueue. */
	return prev_cpu;
}

void BPF_STRUCT_OPS(kgmp_enqueue, struct task_struct *p, u64 enq_flags)
{
	u64 head = bpf_core_enum_value(enum scx_enq_flags, SCX_ENQ_HEAD);
	u64 last = bpf_core_enum_value(enum scx_enq_flags, SCX_ENQ_LAST);
	u64 preempt = bpf_core_enum_value(enum scx_enq_flags, SCX_ENQ_PREEMPT);
	struct kgmp_shared *s;
	__u32 hp, pi, mp;
	int slot;
	s32 cpu;

	maybe_test_error();
	slot = m_slot(p);
	if (slot < 0) {
		/* Not ours (another process switched a thread to SCHED_EXT): run it anyway. */
		anomaly(KGMP_SCX_A_FOREIGN);
		WRITE_ONCE_U32(st.last_foreign_tid, p->pid);
		scx_bpf_dsq_insert(p, SCX_DSQ_GLOBAL, KGMP_SCX_SLICE_NS, enq_flags);
		scx_bpf_kick_cpu(scx_bpf_task_cpu(p), SCX_KICK_IDLE);
		return;
	}
	s = shared_mem();
	if (!s) {
		scx_bpf_dsq_insert(p, SCX_DSQ_GLOBAL, KGMP_SCX_SLICE_NS, enq_flags);
		return;
	}
	cpu = scx_bpf_task_cpu(p);
	CORE_INC(cpu, enqueues);

	hp = READ_ONCE_U32(st.hold[sidx(slot)]);
	if (hp) {
		pi = hp - 1;
		if (pi >= KGMP_MAX_PROCS || pi >= nprocs) {
			anomaly(KGMP_SCX_A_BAD_P);
		} else if (!READ_ONCE_U64(st.handoff_lease[pidx(pi)]) && !claim_pending(pi)) {
			/* Park: runnable, held, until ops.dispatch releases it. */
			WRITE_ONCE_U64(st.park_ns[pidx(pi)], bpf_ktime_get_ns());
			scx_bpf_dsq_insert(p, KGMP_SCX_PARK_DSQ(pi), KGMP_SCX_SLICE_NS, enq_flags);
			CORE_INC(cpu, parks);
			return;
		}
		/* Something is pending for it: let it run now, first on its core. (A watcher queued
		 * behind the holder when the holder blocked: still the scheduler's hand-off.) */
		CORE_INC(cpu, hold_run);
		scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, KGMP_SCX_SLICE_NS, enq_flags | head);
		return;
	}

	if (enq_flags & last) {
		/* The last runnable task of its CPU (we asked for these with SCX_OPS_ENQ_LAST, to
		 * park watchers): keep running it. */
		scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, KGMP_SCX_SLICE_NS, enq_flags);
		return;
	}
	if (cpu < 0 || cpu >= nr_cpus || cpu >= KGMP_SCX_MAX_CPUS ||
	    (s32)READ_ONCE_U32(s->m[sidx(slot)].cpu) != cpu) {
		/* Not pinned (Config::pin = false) or beyond our DSQs: the global DSQ. */
		if (cpu >= KGMP_SCX_MAX_CPUS)
			anomaly(KGMP_SCX_A_BAD_CPU);
		scx_bpf_dsq_insert(p, SCX_DSQ_GLOBAL, KGMP_SCX_SLICE_NS, enq_flags);
		scx_bpf_kick_cpu(cpu, SCX_KICK_IDLE);
		return;
	}
	mp = READ_ONCE_U32(s->m[sidx(slot)].p);
	if (mp != KGMP_NO_P && mp < KGMP_MAX_PROCS &&
	    KGMP_LEASE_HOLDER(READ_ONCE_U64(s->p[pidx(mp)].lease)) != (__u32)slot) {
		/* Woken after its P was handed off (its slot still names the P until it notices).
		 * It notices at its next runtime entry, usually microseconds away, and then parks as
		 * the core's spare: run it now for one short slice (the tick ends it), so it parks
		 * before the backstop creates another spare; if it has not parked by then, it waits
		 * behind the P's new holder like any P-less M. */
		if (enq_flags & SCX_ENQ_WAKEUP) {
			scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL_ON | (__u64)cpu, KGMP_SCX_LOST_SLICE_NS,
					   enq_flags | preempt);
			CORE_INC(cpu, lost_wakeups);
			return;
		}
		scx_bpf_dsq_insert(p, KGMP_SCX_CORE_DSQ(cpu), KGMP_SCX_SLICE_NS, enq_flags);
	} else if (mp != KGMP_NO_P) {
		/* The P-holder: first on its core. */
		scx_bpf_dsq_insert(p, KGMP_SCX_CORE_DSQ(cpu), KGMP_SCX_SLICE_NS, enq_flags | head);
		CORE_INC(cpu, holder_first);
	} else {
		scx_bpf_dsq_insert(p, KGMP_SCX_CORE_DSQ(cpu), KGMP_SCX_SLICE_NS, enq_flags);
	}
	scx_bpf_kick_cpu(cpu, SCX_KICK_IDLE);
}

/* sched_yield(): what the kernel does without ops.yield (the slice ends, the task goes back
 * through ops.enqueue), made explicit and counted: a held watcher parks by yielding. */
bool BPF_STRUCT_OPS(kgmp_yield, struct task_struct *from, struct task_struct *to)
{
	int slot = m_slot(from);

	if (slot >= 0 && READ_ONCE_U32(st.hold[sidx(slot)]))
		CORE_INC(bpf_get_smp_processor_id(), yields);
	from->scx.slice = 0;
	return false;
}

void BPF_STRUCT_OPS(kgmp_dispatch, s32 cpu, struct task_struct *prev)
{
	__u32 pp, pi = 0;
	bool queued_spare = false;

	maybe_test_error();
	CORE_INC(cpu, dispatches);
	CORE_SET(cpu, last_ok_ns, bpf_ktime_get_ns());
	if (cpu >= 0 && cpu < KGMP_SCX_MAX_CPUS) {
		pp = READ_ONCE_U32(st.p_of_cpu[cidx(cpu)]);
		if (pp) {
			pi = pp - 1;
			if (pi < KGMP_MAX_PROCS && READ_ONCE_U32(st.pending[pidx(pi)])) {
				if (scx_bpf_dsq_nr_queued(KGMP_SCX_PARK_DSQ(pi)) > 0) {
					if (claim_pending(pi) && scx_bpf_dsq_move_to_local(KGMP_SCX_PARK_DSQ(pi), 0)) {
						CORE_INC(cpu, releases);
						if (READ_ONCE_U64(st.handoff_lease[pidx(pi)]))
							CORE_INC(cpu, handoffs);
						return;
					}
				} else {
					/* The watcher is not parked (it runs, or is queued on its core):
					 * it sees handoff_lease itself. Leave pending for its enqueue. */
					anomaly(KGMP_SCX_A_RELEASE_EMPTY);
					queued_spare = READ_ONCE_U32(st.pending[pidx(pi)]) == KGMP_SCX_REL_BLOCK;
				}
			}
		}
		if (scx_bpf_dsq_move_to_local(KGMP_SCX_CORE_DSQ(cpu), 0)) {
			__u64 l = READ_ONCE_U64(st.handoff_lease[pidx(pi)]);

			/* Once per block (dispatch may run several times while it is pending). */
			if (queued_spare && l && READ_ONCE_U64(st.queued_counted[pidx(pi)]) != l) {
				WRITE_ONCE_U64(st.queued_counted[pidx(pi)], l);
				CORE_INC(cpu, handoffs_queued);
			}
			return;
		}
	}
}

void BPF_STRUCT_OPS(kgmp_stopping, struct task_struct *p, bool runnable)
{
	struct kgmp_shared *s;
	__u64 lease;
	__u32 pi, np;
	int slot;
	s32 cpu, here;

	if (runnable)
		return; /* preempted or slice expired: not a block */
	slot = m_slot(p);
	if (slot < 0)
		return;
	s = shared_mem();
	if (!s)
		return;
	here = bpf_get_smp_processor_id();
	pi = READ_ONCE_U32(s->m[sidx(slot)].p);
	np = READ_ONCE_U32(s->hdr.nprocs);
	if (pi == KGMP_NO_P)
		return;
	if (pi >= np || pi >= KGMP_MAX_PROCS) {
		anomaly(KGMP_SCX_A_BAD_P);
		return;
	}
	lease = READ_ONCE_U64(s->p[pidx(pi)].lease);
	if (KGMP_LEASE_STATE(lease) != KGMP_LEASE_USER || KGMP_LEASE_HOLDER(lease) != (__u32)slot)
		return;
	CORE_INC(here, blocks);
	if (!kgmp_work_queued(&s->hdr, &s->p[pidx(pi)]))
		return;
	WRITE_ONCE_U64(st.handoff_lease[pidx(pi)], lease);
	WRITE_ONCE_U32(st.pending[pidx(pi)], KGMP_SCX_REL_BLOCK);
	cpu = cpu_of_p(s, pi);
	if (cpu >= 0 && cpu != here)
		scx_bpf_kick_cpu(cpu, SCX_KICK_IDLE);
	/* cpu == here: this CPU is picking its next task; ops.dispatch follows. */
}

void BPF_STRUCT_OPS(kgmp_running, struct task_struct *p)
{
	CORE_SET(bpf_get_smp_processor_id(), last_ok_ns, bpf_ktime_get_ns());
}

void BPF_STRUCT_OPS(kgmp_tick, struct task_struct *p)
{
	struct kgmp_shared *s;
	struct kgmp_scx_ptick *pt;
	__u64 tick, lease, now;
	__u32 pi;
	int slot;

	maybe_test_error();
	slot = m_slot(p);
	if (slot < 0)
		return;
	now = bpf_ktime_get_ns();
	CORE_INC(bpf_get_smp_processor_id(), ticks);
	CORE_SET(bpf_get_smp_processor_id(), last_ok_ns, now);
	s = shared_mem();
	if (!s)
		return;
	pi = READ_ONCE_U32(s->m[sidx(slot)].p);
	if (pi == KGMP_NO_P)
		return; /* a spare, a watcher, a P-less M: no G of a P runs */
	if (pi >= READ_ONCE_U32(s->hdr.nprocs) || pi >= KGMP_MAX_PROCS) {
		anomaly(KGMP_SCX_A_BAD_P);
		return;
	}
	/* Go's sysmon (retake): a new G since the last look restarts the clock. */
	pt = &st.ptick[pidx(pi)];
	tick = READ_ONCE_U64(s->p[pidx(pi)].schedtick);
	if (tick != pt->seen_tick || pt->since_ns == 0) {
		pt->seen_tick = tick;
		pt->since_ns = now;
		return;
	}
	if (now - pt->since_ns <= KGMP_SCX_PREEMPT_NS)
		return;
	/* Only G code is preempted: in the scheduler (RUNTIME, e.g. spinning for work) there is
	 * no G to yield, and a flag raised there would only make the next G yield at once. */
	lease = READ_ONCE_U64(s->p[pidx(pi)].lease);
	if (KGMP_LEASE_STATE(lease) != KGMP_LEASE_USER || KGMP_LEASE_HOLDER(lease) != (__u32)slot)
		return;
	pt->since_ns = now; /* the next request after another 10 ms of the same G */
	if (!READ_ONCE_U32(st.preempt[sidx(slot)])) {
		WRITE_ONCE_U32(st.preempt[sidx(slot)], 1);
		CORE_INC(bpf_get_smp_processor_id(), preempt_reqs);
	}
}

/* Every KGMP_SCX_TIMER_NS: release watchers parked for hold_ns (the watchdog bound). */
static int cycle_fn(void *map, int *key, struct cycle_timer *t)
{
	struct kgmp_shared *s = shared_mem();
	__u64 now = bpf_ktime_get_ns(), at;
	__u32 pi;
	s32 cpu;

	if (test_stall) {
		bpf_timer_start(&t->t, KGMP_SCX_TIMER_NS, 0);
		return 0;
	}
	/* Starvation: a CPU with Ms queued or parked on it that has not turned to sched_ext for
	 * starve_ns (CFS tasks always had something to run): the watchdog would eject us soon. */
	for (cpu = 0; cpu < KGMP_SCX_MAX_CPUS && cpu < nr_cpus; cpu++) {
		__u32 pp = READ_ONCE_U32(st.p_of_cpu[cidx(cpu)]);
		/* The local DSQ too: an M preempted by a CFS task waits at its head. */
		s32 n = scx_bpf_dsq_nr_queued(KGMP_SCX_CORE_DSQ(cpu)) +
			scx_bpf_dsq_nr_queued(SCX_DSQ_LOCAL_ON | (__u64)cpu);

		if (pp && pp <= KGMP_MAX_PROCS)
			n += scx_bpf_dsq_nr_queued(KGMP_SCX_PARK_DSQ(pp - 1));
		at = READ_ONCE_U64(st.core[cidx(cpu)].last_ok_ns);
		if (n > 0 && at && now > at && now - at > starve_ns && !READ_ONCE_U32(st.starved))
			WRITE_ONCE_U32(st.starved, cpu + 1);
	}
	if (s) {
		for (pi = 0; pi < KGMP_MAX_PROCS && pi < nprocs; pi++) {
			at = READ_ONCE_U64(st.park_ns[pidx(pi)]);
			if (!at || now - at < hold_ns)
				continue;
			if (scx_bpf_dsq_nr_queued(KGMP_SCX_PARK_DSQ(pi)) <= 0)
				continue;
			__sync_val_compare_and_swap(&st.pending[pidx(pi)], KGMP_SCX_REL_NONE,
						    KGMP_SCX_REL_CYCLE);
			cpu = cpu_of_p(s, pi);
			if (cpu >= 0)
				scx_bpf_kick_cpu(cpu, SCX_KICK_IDLE);
		}
	}
	bpf_timer_start(&t->t, KGMP_SCX_TIMER_NS, 0);
	return 0;
}

s32 BPF_STRUCT_OPS_SLEEPABLE(kgmp_init)
{
	struct cycle_timer *t;
	__u32 zero = 0, i;

	for (i = 0; i < KGMP_SCX_MAX_CPUS && i < nr_cpus; i++)
		CORE_SET(i, last_ok_ns, bpf_ktime_get_ns());
	for (i = 0; i < KGMP_SCX_MAX_CPUS && i < nr_cpus; i++)
		if (scx_bpf_create_dsq(KGMP_SCX_CORE_DSQ(i), -1)) {
			anomaly(KGMP_SCX_A_DSQ_CREATE);
			return -22;
		}
	for (i = 0; i < KGMP_MAX_PROCS && i < nprocs; i++)
		if (scx_bpf_create_dsq(KGMP_SCX_PARK_DSQ(i), -1)) {
			anomaly(KGMP_SCX_A_DSQ_CREATE);
			return -22;
		}
	t = bpf_map_lookup_elem(&kgmp_timer, &zero);
	if (!t || bpf_timer_init(&t->t, &kgmp_timer, 1 /* CLOCK_MONOTONIC */) ||
	    bpf_timer_set_callback(&t->t, cycle_fn) || bpf_timer_start(&t->t, KGMP_SCX_TIMER_NS, 0)) {
		anomaly(KGMP_SCX_A_TIMER);
		return -22;
	}
	return 0;
}

void BPF_STRUCT_OPS(kgmp_exit, struct scx_exit_info *ei)
{
	UEI_RECORD(uei, ei);
}

/* Test and user hook: release P pi's parked watcher now (wake_watcher: a timer or stop). */
struct release_args {
	__u32 p;
};

SEC("syscall")
int kgmp_release(struct release_args *a)
{
	struct kgmp_shared *s = shared_mem();
	__u32 pi = a->p;
	s32 cpu;

	if (!s || pi >= KGMP_MAX_PROCS || pi >= nprocs)
		return -22;
	__sync_val_compare_and_swap(&st.pending[pidx(pi)], KGMP_SCX_REL_NONE, KGMP_SCX_REL_WAKE);
	cpu = cpu_of_p(s, pi);
	if (cpu >= 0)
		scx_bpf_kick_cpu(cpu, SCX_KICK_IDLE);
	return 0;
}

SCX_OPS_DEFINE(kgmp_ops,
	       .select_cpu = (void *)kgmp_select_cpu,
	       .enqueue = (void *)kgmp_enqueue,
	       .dispatch = (void *)kgmp_dispatch,
	       .yield = (void *)kgmp_yield,
	       .stopping = (void *)kgmp_stopping,
	       .running = (void *)kgmp_running,
	       .tick = (void *)kgmp_tick,
	       .init = (void *)kgmp_init,
	       .exit = (void *)kgmp_exit,
	       .flags = SCX_OPS_SWITCH_PARTIAL | SCX_OPS_ENQ_LAST,
	       .timeout_ms = 5000, /* the loader sets the configured one */
	       .name = "kgmp");
