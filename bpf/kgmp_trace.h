/* kgmp_trace.h — the one plain header shared by bpf/kgmp_trace.bpf.c and the runtime.
 *
 * It lays out the memory both sides see (DESIGN §3): one BPF_F_MMAPABLE array map with a
 * single entry, `struct kgmp_shared`, mapped into the runtime with mmap, so the BPF program
 * filters on the runtime's state with plain loads and the runtime reads BPF's per-M counters
 * without a syscall. Fixed-width types only; no libc or C++ includes. The C++ side
 * static_asserts the sizes and offsets.
 *
 * Writers:
 *   kgmp_hdr        runtime (nglobal, under the scheduler lock); BPF (anomaly counters)
 *   kgmp_p_shared   lease, runq_len, schedtick, spare_held: the runtime only (schedtick: the P's
 *                   holder, one relaxed store per G started in execute(); spare_held: the holder
 *                   and the P's watcher). slice_armed: both (see its comment). The BPF side
 *                   never writes the others.
 *   kgmp_m_shared   tid..blocking_since_ns: the runtime (scx_kgmp derives how long a G runs
 *                   from kgmp_p_shared::schedtick, not from this slot); blocks/wakes/last_*: BPF.
 */
#ifndef KGMP_TRACE_H
#define KGMP_TRACE_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define KGMP_MAX_PROCS 64  /* Ps (one per CPU of the affinity mask) */
#define KGMP_MAX_MS 4096   /* M slots; Ms beyond it are not watched by BPF (poll covers them) */
#define KGMP_NO_P 0xffffffffu

/* The lease word of a P: bits 0-1 state, bits 2-17 the holder's M slot, bits 18-63 a sequence
 * number bumped by every successful CAS (so an ABA on holder+state is impossible). */
#define KGMP_LEASE_IDLE 0u    /* no holder */
#define KGMP_LEASE_RUNTIME 1u /* the holder is inside scheduler code: never hand off */
#define KGMP_LEASE_USER 2u    /* the holder runs G code: a block may hand the P off */
#define KGMP_LEASE_STATE(w) ((__u32)((w)&3u))
#define KGMP_LEASE_HOLDER(w) ((__u32)(((w) >> 2) & 0xffffu))
#define KGMP_LEASE_SEQ(w) ((w) >> 18)
#define KGMP_LEASE_MAKE(seq, holder, state) \
  ((((__u64)(seq)) << 18) | (((__u64)(holder)&0xffffu) << 2) | ((__u64)(state)&3u))

/* Two cache lines: the first written by the runtime (nglobal changes with the global queue),
 * the second by BPF (its counters move on context switches), so neither side's writes evict
 * the line the other reads on its hot path. */
struct kgmp_hdr {
  __u32 nprocs;
  __u32 nglobal;          /* Gs on the global run queue (or waiting for a P) */
  __u64 register_failed;  /* runtime: Ms it could not register with BPF (watched by polling) */
  __u32 scx_active;       /* runtime: scx_kgmp hands off; block events need no wakeup (cleared
                           * before the watchers leave the scheduler's hold, scx.cpp) */
  __u32 rt_pad32;
  __u64 preempt_slice_ns; /* runtime, before attaching: Config::preempt_slice (0: off). The
                           * slice timers (kgmp_trace.bpf.c) post a preemption event for a G
                           * that ran this long on its P with work queued behind it */
  __u64 rt_pad[4];
  __u64 events;           /* BPF: block events submitted */
  __u64 dropped;          /* BPF: block events lost (ring buffer full, or no ring) */
  __u64 not_m;            /* BPF: switches of tasks of this process that are not registered Ms */
  __u64 preempt_events;   /* BPF: preemption events submitted by the slice timers */
  __u64 bpf_pad[4];
};

struct kgmp_p_shared {
  __u64 lease;    /* see KGMP_LEASE_* */
  __u32 runq_len; /* the holder's view of its local queue + runnext (stale-high is fine) */
  __u32 cpu;
  __u64 schedtick; /* Gs started on this P so far (Go's pd.schedtick): it changes whenever a new
                    * G runs, so scx_kgmp's tick sees a G that has run too long without a clock
                    * read on the runtime's side (Go's sysmon: schedtick / schedwhen) */
  __u32 spare_held; /* trace: P p's watcher M is held runnable at SCHED_IDLE on p's CPU
                     * (KGMP_SPARE_*); written by the runtime only, read by BPF to skip the
                     * ring's wakeup (the held spare is what the CPU runs next anyway) */
  __u32 slice_armed; /* trace: P p's slice timer runs (KGMP_SLICE_*): the runtime CASes IDLE ->
                      * ARMED and starts it (kgmp_arm_slice); the timer stores IDLE when it
                      * finds no G waiting and stops. A hint: a spurious start is harmless */
  __u64 timer0;     /* the P's earliest timer (CLOCK_MONOTONIC ns, 0: none), as its heap
                     * publishes it: a due timer is a G waiting for the P too */
  __u64 pad[3];
};

#define KGMP_SLICE_IDLE 0u
#define KGMP_SLICE_ARMED 1u

/* kgmp_p_shared::spare_held. SLEEPING -> REQUESTED: the holder (CAS, then it wakes the watcher);
 * REQUESTED -> HELD -> SLEEPING: the watcher. Only HELD lets BPF skip the wakeup. */
#define KGMP_SPARE_SLEEPING 0u
#define KGMP_SPARE_REQUESTED 1u
#define KGMP_SPARE_HELD 2u

struct kgmp_m_shared {
  __u32 tid;
  __u32 p;            /* the P it holds, or KGMP_NO_P */
  __u32 cpu;          /* pinned CPU, or -1 */
  __u32 in_blocking;  /* inside kgmp::blocking() */
  __u64 curg;         /* goid of the G it runs, 0 if none */
  __u64 blocking_since_ns; /* when it last entered kgmp::blocking() (CLOCK_MONOTONIC): the
                              * poll monitor's retake age (valid while in_blocking) */
  __u64 blocks;       /* BPF: times switched out blocked (prev_state != 0) */
  __u64 wakes;        /* BPF: times woken (sched_wakeup); the runtime compares sequences */
  __u64 last_block_ns;
  __u64 last_wake_ns;
};

/* The predicates both sides use, stated once: BPF filters with them and the runtime acts on
 * them. Both read memory the other side writes concurrently: BPF with volatile loads, the
 * runtime with acquire loads (plain memory to BPF, atomics to C++). A stale answer costs one
 * useless wakeup or one hand-off left to the backstop, never a wrong hand-off: a P is taken
 * only by a CAS from the exact lease word that was read. */
#ifdef __bpf__
#define KGMP_LOAD_U32(x) (*(const volatile __u32 *)&(x))
#define KGMP_LOAD_U64(x) (*(const volatile __u64 *)&(x))
#define KGMP_INLINE static __always_inline
#else
#define KGMP_LOAD_U32(x) __atomic_load_n(&(x), __ATOMIC_ACQUIRE)
#define KGMP_LOAD_U64(x) __atomic_load_n(&(x), __ATOMIC_ACQUIRE)
#define KGMP_INLINE static inline
#endif

/* Gs wait behind the running G of the P whose slot is p: its local queue or runnext (runq_len)
 * or the global queue (nglobal). A block is worth reporting, and a spare worth holding, only
 * then. */
KGMP_INLINE int kgmp_work_queued(const struct kgmp_hdr *h, const struct kgmp_p_shared *p)
{
  return KGMP_LOAD_U32(p->runq_len) != 0 || KGMP_LOAD_U32(h->nglobal) != 0;
}

/* P p has a G waiting to run, queued or behind a timer due at `now` (CLOCK_MONOTONIC): what
 * a preemption is for. */
KGMP_INLINE int kgmp_waiting(const struct kgmp_hdr *h, const struct kgmp_p_shared *p, __u64 now)
{
  __u64 t0 = KGMP_LOAD_U64(p->timer0);

  return kgmp_work_queued(h, p) || (t0 != 0 && t0 <= now);
}

/* BPF saw M slot m switched out blocked and has not seen it woken since: its block stamp is
 * newer than its wake stamp. */
KGMP_INLINE int kgmp_blocked_since_wake(const struct kgmp_m_shared *m)
{
  return KGMP_LOAD_U64(m->last_block_ns) > KGMP_LOAD_U64(m->last_wake_ns);
}


struct kgmp_shared {
  struct kgmp_hdr hdr;
  struct kgmp_p_shared p[KGMP_MAX_PROCS];
  struct kgmp_m_shared m[KGMP_MAX_MS];
};

/* Per-core scheduling telemetry (DESIGN §6), in a second BPF_F_MMAPABLE array with one value,
 * `struct kgmp_cores`, indexed by CPU number. Every field of core c is written only by the
 * sched_switch program running on CPU c (tracing programs do not nest on one CPU), so plain
 * increments suffice; user space reads with relaxed loads (tear-free, not consistent).
 *   m_blocks       registered Ms switched out blocked (prev_state != 0) on this core
 *   ctx_switches   registered Ms switched in on this core (= schedstat's timeslices)
 *   runq_wait_ns   time those Ms waited runnable before running (= schedstat's run_delay,
 *                  except a new thread's first wait)
 *   foreign_ns     the part of runq_wait_ns during which the core ran another process's task
 *                  (attributed when the task switched out in favour of the M is foreign)
 *   offcpu_hist    block -> wakeup of Ms that blocked while holding a P (ns, power-of-two
 *                  buckets as stats_protocol.h: bucket i = [2^i, 2^(i+1)), bucket 0 also 0)
 *   wake_lat_hist  wakeup -> running of Ms (ns, same buckets) */
#define KGMP_MAX_CPUS 256
#define KGMP_HIST_BUCKETS 40 /* = kgmp::telemetry::kHistBuckets */
struct kgmp_core_stats {
  __u64 m_blocks;
  __u64 ctx_switches;
  __u64 runq_wait_ns;
  __u64 foreign_ns;
  __u64 offcpu_hist[KGMP_HIST_BUCKETS];
  __u64 wake_lat_hist[KGMP_HIST_BUCKETS];
  __u64 pad[4]; /* 704 bytes: 11 cache lines, so cores never share one */
};

struct kgmp_cores {
  struct kgmp_core_stats c[KGMP_MAX_CPUS];
};

/* BPF-private per-M state for the per-core telemetry (an array indexed by M slot). */
struct kgmp_m_bpf {
  __u64 block_ns;     /* when it last switched out blocked */
  __u64 runnable_ns;  /* when it became runnable (woken or preempted), 0 while running */
  __u32 block_with_p; /* that block happened while it held a P */
  __u32 woken;        /* runnable_ns comes from a wakeup (not a preemption) */
};

/* Sent on P p's ring buffer when the M holding p blocks with work pending on p (kind BLOCK), or
 * when its G has run longer than hdr.preempt_slice_ns with work queued behind it (PREEMPT). */
#define KGMP_EV_BLOCK 0u
#define KGMP_EV_PREEMPT 1u
struct kgmp_block_event {
  __u32 m;      /* M slot */
  __u32 p;
  __u64 lease;  /* the lease word BPF saw (the spare M CASes from exactly this value) */
  __u64 ts_ns;  /* bpf_ktime_get_ns at the switch (or at the slice's end) */
  __u32 kind;   /* KGMP_EV_* */
  __u32 pad;
};

/* Arguments of the kgmp_arm_slice syscall program (one P's slice timer). */
struct kgmp_arm_args {
  __u32 p;
  __u32 pad;
};

#endif /* KGMP_TRACE_H */
