/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kgmp_trace - tell a kgmp runtime, within microseconds, that one of its worker threads (an M)
 * blocked in the kernel while holding a processor (a P) that has other runnable work.
 *
 * This is the `trace` monitor (docs/DESIGN.md §4): a tracing-only program (no sched_ext, no kprobes, no fentry; tp_btf only), so it runs on any
 * kernel with BTF and BPF ring buffers (>= 5.8) given root or CAP_BPF+CAP_PERFMON.
 *
 * What it does:
 *   - tp_btf/sched_switch: when the task switched out belongs to the runtime's process
 *     (target_tgid), is a registered M (kgmp_tids: tid -> M slot) and really blocks (not a
 *     preemption, prev_state != 0), it counts the block in that M's slot of the shared memory.
 *     If in addition the M holds a P whose lease word says USER with this M as holder (the M
 *     was running G code, not scheduler code: DESIGN §3) and that P has other work (its local
 *     run queue or the global queue is not empty), it sends a kgmp_block_event on that P's own
 *     ring buffer with a forced wakeup. The P's spare M sleeps in epoll on exactly that ring;
 *     it wakes on the same CPU and CASes the lease from the value in the event (one wakeup, no
 *     monitor thread in between). When the runtime holds that spare runnable at SCHED_IDLE on
 *     this CPU (kgmp_p_shared::spare_held == HELD, userspace/monitor/trace.cpp), the event goes
 *     without the wakeup: the CPU switches to the spare next anyway, and it reads the ring.
 *   - tp_btf/sched_wakeup: for a registered M, bumps its wake counter and timestamp in the
 *     shared memory only. Waking someone through a ring buffer costs 20-30 us here (as much as
 *     letting the woken M run and notice by itself); the runtime compares sequence numbers at
 *     its safe points instead.
 *
 * What it demonstrates: the runtime's scheduler state (leases, run queue lengths, which P each
 * M holds) lives in a BPF_F_MMAPABLE array that both sides map, so this program filters on it
 * with plain loads and never needs a syscall from the runtime on the hot path; and one ring
 * buffer per P (an ARRAY_OF_MAPS of rings) so that the wakeup goes straight to the one thread
 * that can act on it.
 *
 * Limits:
 *   - sched_switch runs on every context switch of the machine: the first test (tgid) must stay
 *     cheap. Attaching costs about 80-100 ns per tracepoint hit on the development VM whatever
 *     the program does.
 *   - A forced ring-buffer wakeup from a scheduler tracepoint goes through irq_work (a self-IPI,
 *     about 7 us here, bpf_stats) in the blocking thread's switch path. So an event is sent only
 *     when the hand-off matters: the P has other work (kgmp_work_queued, the predicate the
 *     runtime uses too). That test reads runq_len/nglobal racily; a
 *     stale value means one useless wakeup or one hand-off left to the poll fallback.
 *   - Reads of the lease are racy by design: the event carries the lease word that was read,
 *     and the spare M's CAS from exactly that word decides. This program never writes a lease.
 *   - Ms beyond KGMP_MAX_MS slots, or Ps beyond KGMP_MAX_PROCS, are not watched.
 *   - m.wakes counts sched_wakeup hits, which may exceed m.blocks: a thread woken between
 *     set_current_state() and schedule() is "woken" without ever having been switched out.
 *     Compare sequences, never expect blocks == wakes.
 *   - m.blocks counts every block of a registered M, whatever its lease (telemetry), not only
 *     the blocks that sent an event; hdr.events counts those.
 *
 * Per-core telemetry (DESIGN §6; struct kgmp_cores in kgmp_trace.h, a second mmap-able array):
 * at each switch of a registered M on CPU c, core c's entry counts the block (switch out,
 * prev_state != 0) or the switch-in, and on a switch-in adds the time since the M became
 * runnable (a wakeup, or a preemption / yield that left it runnable) to runq_wait_ns, to
 * foreign_ns too when the task it replaces is another process's (not the idle task), to the
 * wake-latency histogram when it was a wakeup, and block -> wakeup to the off-CPU histogram
 * when the M held a P as it blocked. Only CPU c's own sched_switch writes core c's entry, so
 * the counters are plain increments. The per-M timestamps live in kgmp_mbpf (BPF-private).
 * Cost: the early-out now tests next->tgid as well as prev->tgid (one more load and compare on
 * every switch of the machine); the rest runs only for this process's switches.
 * Not counted: a new M's first wait (sched_wakeup_new is not attached), and wakeups of an M
 * that had not switched out yet (its next switch-out overwrites the stamp).
 */
#include "vmlinux.h"

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "kgmp_trace.h"

char LICENSE[] SEC("license") = "GPL";

/* Bytes of one P's ring buffer. User space creates the inner rings with the size of the inner
 * map template below (it reads it back from the object), so this is the one place to change it.
 * A block event takes 32 bytes (8 of header): 2048 events before a drop. */
#define KGMP_RING_BYTES (64 * 1024)

/* The process being watched (the runtime's getpid()), set through the skeleton before load. */
const volatile __u32 target_tgid = 0;

#include "kgmp_maps.bpf.h"

struct kgmp_ring {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, KGMP_RING_BYTES);
};

/* One ring per P; user space creates and inserts the rings of Ps 0..nprocs-1. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, KGMP_MAX_PROCS);
	__type(key, __u32);
	__array(values, struct kgmp_ring);
} kgmp_rings SEC(".maps");

/* Per-core telemetry counters, mmap'd by the runtime (kgmp_trace.h). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct kgmp_cores);
} kgmp_cores SEC(".maps");

/* M slot -> its block and runnable timestamps (BPF only). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, KGMP_MAX_MS);
	__type(key, __u32);
	__type(value, struct kgmp_m_bpf);
} kgmp_mbpf SEC(".maps");

#define READ_ONCE_U32(x) (*(volatile __u32 *)&(x))
#define READ_ONCE_U64(x) (*(volatile __u64 *)&(x))
#define WRITE_ONCE_U64(x, v) (*(volatile __u64 *)&(x) = (v))
#define WRITE_ONCE_U32(x, v) (*(volatile __u32 *)&(x) = (v))

static __always_inline struct kgmp_shared *shared_mem(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&kgmp_shared, &zero);
}

static __always_inline struct kgmp_core_stats *this_core(void)
{
	struct kgmp_cores *cores;
	__u32 zero = 0, cpu = bpf_get_smp_processor_id();

	if (cpu >= KGMP_MAX_CPUS)
		return 0;
	cores = bpf_map_lookup_elem(&kgmp_cores, &zero);
	if (!cores)
		return 0;
	return &cores->c[cpu];
}

/* Power-of-two bucket of v (stats_protocol.h): floor(log2(v)), 0 for 0, clamped. */
static __always_inline __u32 hist_bucket(__u64 v)
{
	__u32 r = 0;

	if (v >> 32) { v >>= 32; r += 32; }
	if (v >> 16) { v >>= 16; r += 16; }
	if (v >> 8) { v >>= 8; r += 8; }
	if (v >> 4) { v >>= 4; r += 4; }
	if (v >> 2) { v >>= 2; r += 2; }
	if (v >> 1) r += 1;
	return r < KGMP_HIST_BUCKETS ? r : KGMP_HIST_BUCKETS - 1;
}

/* A registered M is switched in on this CPU: the core's telemetry. */
static __always_inline void m_switched_in(struct task_struct *prev, struct task_struct *next,
					  __u64 now)
{
	struct kgmp_core_stats *cs;
	struct kgmp_m_bpf *mb;
	__u32 tid = next->pid, slot, b;
	__u32 *slotp;
	__u64 since, d;

	slotp = bpf_map_lookup_elem(&kgmp_tids, &tid);
	if (!slotp)
		return;
	slot = *slotp;
	mb = bpf_map_lookup_elem(&kgmp_mbpf, &slot);
	cs = this_core();
	if (!mb || !cs)
		return;
	cs->ctx_switches++;
	since = mb->runnable_ns;
	if (since && now > since) {
		d = now - since;
		cs->runq_wait_ns += d;
		if (prev->pid != 0 && prev->tgid != target_tgid)
			cs->foreign_ns += d;
		if (mb->woken) {
			b = hist_bucket(d);
			cs->wake_lat_hist[b]++;
			if (mb->block_with_p && mb->block_ns && since > mb->block_ns) {
				b = hist_bucket(since - mb->block_ns);
				cs->offcpu_hist[b]++;
			}
		}
	}
	mb->runnable_ns = 0;
	mb->woken = 0;
	mb->block_with_p = 0;
}

static __always_inline int m_switched_out(bool preempt, struct task_struct *prev,
					  unsigned int prev_state, __u64 now);

SEC("tp_btf/sched_switch")
int BPF_PROG(kgmp_switch, bool preempt, struct task_struct *prev, struct task_struct *next,
	     unsigned int prev_state)
{
	__u32 tgid = target_tgid;
	__u64 now;

	/* Every context switch of the machine comes through here: two loads and compares. */
	if (prev->tgid != tgid && next->tgid != tgid)
		return 0;
	now = bpf_ktime_get_ns();
	if (prev->tgid == tgid)
		m_switched_out(preempt, prev, prev_state, now);
	if (next->tgid == tgid)
		m_switched_in(prev, next, now);
	return 0;
}

static __always_inline int m_switched_out(bool preempt, struct task_struct *prev,
					  unsigned int prev_state, __u64 now)
{
	struct kgmp_block_event ev;
	struct kgmp_core_stats *cs;
	struct kgmp_m_shared *m;
	struct kgmp_m_bpf *mb;
	struct kgmp_shared *s;
	__u32 tid, slot, p, nprocs;
	__u32 *slotp;
	__u64 lease, wake;
	void *ring;

	s = shared_mem();
	if (!s)
		return 0;
	tid = prev->pid;
	slotp = bpf_map_lookup_elem(&kgmp_tids, &tid);
	if (!slotp) {
		__sync_fetch_and_add(&s->hdr.not_m, 1);
		return 0;
	}
	slot = *slotp;
	if (slot >= KGMP_MAX_MS)
		return 0;
	mb = bpf_map_lookup_elem(&kgmp_mbpf, &slot);
	/* Preempted, or its sleep was cancelled by a pending signal (the kernel passes
	 * prev_state = TASK_RUNNING then): it stays runnable, this is not a block. */
	if (preempt || prev_state == 0) {
		if (mb) {
			mb->runnable_ns = now;
			mb->woken = 0;
		}
		return 0;
	}
	m = &s->m[slot];

	/* Telemetry: every block of a registered M, whatever its lease. Only this M's own switch
	 * writes these two fields and it cannot be switched out on two CPUs at once, so plain
	 * stores suffice; the timestamp is stored first (the runtime reads blocks, then the time). */
	WRITE_ONCE_U64(m->last_block_ns, now);
	WRITE_ONCE_U64(m->blocks, READ_ONCE_U64(m->blocks) + 1);

	p = READ_ONCE_U32(m->p);
	cs = this_core();
	if (cs)
		cs->m_blocks++;
	if (mb) {
		mb->block_ns = now;
		mb->block_with_p = p != KGMP_NO_P;
		mb->runnable_ns = 0;
		mb->woken = 0;
	}
	nprocs = READ_ONCE_U32(s->hdr.nprocs);
	if (p == KGMP_NO_P || p >= nprocs || p >= KGMP_MAX_PROCS)
		return 0;
	lease = READ_ONCE_U64(s->p[p].lease);
	if (KGMP_LEASE_STATE(lease) != KGMP_LEASE_USER || KGMP_LEASE_HOLDER(lease) != slot)
		return 0;
	if (!kgmp_work_queued(&s->hdr, &s->p[p]))
		return 0;
	/* Skip the wakeup (the irq_work self-IPI, ~7 us here) when the watcher reads the event
	 * without sleeping: under scx_kgmp the scheduler dispatches the held watcher (a watcher
	 * waiting on the ring instead, while a timer is pending, reads it at its timeout: it
	 * reads the ring before every wait); under trace a HELD watcher is runnable at
	 * SCHED_IDLE on this CPU, so it is what the CPU runs next. It is pinned to this CPU and
	 * not running now, so it cannot miss the event: it reads the ring after it stops being
	 * HELD. */
	wake = READ_ONCE_U32(s->hdr.scx_active) ||
			       READ_ONCE_U32(s->p[p].spare_held) == KGMP_SPARE_HELD
		       ? BPF_RB_NO_WAKEUP
		       : BPF_RB_FORCE_WAKEUP;

	ring = bpf_map_lookup_elem(&kgmp_rings, &p);
	if (!ring) {
		/* No ring inserted for this P: user space's nprocs and its rings disagree. */
		__sync_fetch_and_add(&s->hdr.dropped, 1);
		return 0;
	}
	ev.m = slot;
	ev.p = p;
	ev.lease = lease;
	ev.ts_ns = now;
	ev.kind = KGMP_EV_BLOCK;
	ev.pad = 0;
	if (bpf_ringbuf_output(ring, &ev, sizeof(ev), wake))
		__sync_fetch_and_add(&s->hdr.dropped, 1);
	else
		__sync_fetch_and_add(&s->hdr.events, 1);
	return 0;
}

/* Slice timers: one per P, running only while that P has work queued behind a running G.
 * Each expiry looks at the P: its holder in G code (lease USER), not blocked as far as BPF saw,
 * Gs queued behind it, and the same G running since the timer first saw it (the published
 * schedtick unchanged). Once that G has run hdr.preempt_slice_ns, a KGMP_EV_PREEMPT event goes
 * on the P's ring with a wakeup; the watcher takes the P by CAS from the event's lease word and
 * moves the spinning M aside (userspace/runtime/handoff.cpp, "Preemption"). With nothing
 * queued (or the P idle) the timer stops and says so in slice_armed, and the runtime starts it
 * again from user space (kgmp_arm_slice) the next time it runs a G with work queued: an idle
 * runtime, or one whose Ps have nothing queued, has no timer at all. */
struct kgmp_slice {
	struct bpf_timer t;
	__u64 seen_tick; /* the P's schedtick at the last look */
	__u64 since_ns;  /* when that schedtick was first seen (the G's start, to one period) */
	__u32 inited;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, KGMP_MAX_PROCS);
	__type(key, __u32);
	__type(value, struct kgmp_slice);
} kgmp_slices SEC(".maps");

/* How often a running slice timer looks: a tenth of the slice, within [50 us, 1 ms], so that a
 * G is preempted within the slice plus one period. */
static __always_inline __u64 slice_period(__u64 slice)
{
	__u64 d = slice / 10;

	if (d < 50000)
		d = 50000;
	if (d > 1000000)
		d = 1000000;
	return d;
}

static int slice_fn(void *map, int *key, struct kgmp_slice *sl)
{
	struct kgmp_block_event ev = {};
	struct kgmp_shared *s = shared_mem();
	__u64 slice, lease, tick, now;
	__u32 p = *key, h;
	void *ring;

	if (!s || p >= KGMP_MAX_PROCS)
		return 0;
	slice = READ_ONCE_U64(s->hdr.preempt_slice_ns);
	lease = READ_ONCE_U64(s->p[p].lease);
	/* Stop when no G waits or will wait soon: nothing queued and no timer pending. */
	if (!slice || KGMP_LEASE_STATE(lease) != KGMP_LEASE_USER ||
	    (!kgmp_work_queued(&s->hdr, &s->p[p]) && !READ_ONCE_U64(s->p[p].timer0))) {
		sl->since_ns = 0;
		WRITE_ONCE_U32(s->p[p].slice_armed, KGMP_SLICE_IDLE);
		return 0;
	}
	now = bpf_ktime_get_ns();
	tick = READ_ONCE_U64(s->p[p].schedtick);
	h = KGMP_LEASE_HOLDER(lease);
	if (tick != sl->seen_tick || !sl->since_ns) {
		sl->seen_tick = tick;
		sl->since_ns = now;
	} else if (now - sl->since_ns >= slice && h < KGMP_MAX_MS &&
		   kgmp_waiting(&s->hdr, &s->p[p], now) && !kgmp_blocked_since_wake(&s->m[h])) {
		ev.m = h;
		ev.p = p;
		ev.lease = lease;
		ev.ts_ns = now;
		ev.kind = KGMP_EV_PREEMPT;
		ring = bpf_map_lookup_elem(&kgmp_rings, &p);
		if (ring && !bpf_ringbuf_output(ring, &ev, sizeof(ev), BPF_RB_FORCE_WAKEUP))
			__sync_fetch_and_add(&s->hdr.preempt_events, 1);
		sl->since_ns = now; /* the next request after another slice of the same G */
	}
	bpf_timer_start(&sl->t, slice_period(slice), 0);
	return 0;
}

/* Starts P a->p's slice timer (the runtime calls it through BPF_PROG_RUN when it runs a G with
 * work queued and slice_armed said IDLE). The G about to run starts now: since_ns = now. */
SEC("syscall")
int kgmp_arm_slice(struct kgmp_arm_args *a)
{
	struct kgmp_shared *s = shared_mem();
	struct kgmp_slice *sl;
	__u32 p = a->p;
	__u64 slice;

	if (!s || p >= KGMP_MAX_PROCS)
		return -22;
	sl = bpf_map_lookup_elem(&kgmp_slices, &p);
	if (!sl)
		return -22;
	slice = READ_ONCE_U64(s->hdr.preempt_slice_ns);
	if (!slice)
		return 0;
	if (!sl->inited) {
		if (bpf_timer_init(&sl->t, &kgmp_slices, 1 /* CLOCK_MONOTONIC */) ||
		    bpf_timer_set_callback(&sl->t, slice_fn))
			return -22;
		sl->inited = 1;
	}
	sl->seen_tick = READ_ONCE_U64(s->p[p].schedtick);
	sl->since_ns = bpf_ktime_get_ns();
	bpf_timer_start(&sl->t, slice_period(slice), 0);
	return 0;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(kgmp_wakeup, struct task_struct *p)
{
	struct kgmp_m_bpf *mb;
	struct kgmp_m_shared *m;
	__u64 now;
	struct kgmp_shared *s;
	__u32 tid, slot;
	__u32 *slotp;

	if (p->tgid != target_tgid)
		return 0;
	tid = p->pid;
	slotp = bpf_map_lookup_elem(&kgmp_tids, &tid);
	if (!slotp)
		return 0;
	slot = *slotp;
	if (slot >= KGMP_MAX_MS)
		return 0;
	s = shared_mem();
	if (!s)
		return 0;
	m = &s->m[slot];
	/* sched_wakeup runs on the waker's CPU (or the wakee's, through the wake list): two
	 * wakers may race, so the counter is atomic; the timestamp is last-writer-wins. */
	now = bpf_ktime_get_ns();
	WRITE_ONCE_U64(m->last_wake_ns, now);
	__sync_fetch_and_add(&m->wakes, 1);
	mb = bpf_map_lookup_elem(&kgmp_mbpf, &slot);
	if (mb) {
		mb->runnable_ns = now;
		mb->woken = 1;
	}
	return 0;
}
