// handoff.cpp — the hand-off protocol: taking a P from an M that blocked while running G code,
// and giving the P to another M of the same core (DESIGN §3).
//
// Go hands a P away from an M in a syscall only at entersyscall (the M says so) or when sysmon
// notices. Here the kernel may switch an M out at any instruction of a G, so the M never gets
// to say anything first. Everything below follows from one rule: a P is taken only by a CAS
// on its lease word, and only from USER.
//
// The lease word (kgmp_p_shared::lease, in memory shared with BPF; kgmp_trace.h lays it out):
// state, holder (an M slot) and a sequence number that every change bumps (no ABA).
//   IDLE     no holder; the P is on the idle list (or being passed on).
//   RUNTIME  the holder is inside scheduler code, touching the P's queues: never taken.
//   USER     the holder runs G code: anyone may take the P by CAS from the exact word.
// Who writes it:
//   - acquire_p (sched.cpp): the M that got the P exclusively (idle list, nextp, a won CAS)
//     stores RUNTIME naming itself.
//   - exit_runtime (depth 1 -> 0) stores USER; enter_runtime (0 -> 1) CASes USER -> RUNTIME
//     from the word it stored. Only the holder does either.
//   - handoff_p: a taker (a watcher woken by an event, sysmon, a watcher whose timer is due)
//     CASes the observed USER word -> RUNTIME with no holder, and then owns the P.
//   - release_p (sched.cpp) stores IDLE; entersyscall under a monitor that sees blocks stores
//     RUNTIME with no holder and passes the P on (Go's entersyscallblock).
//   BPF never writes it: a stale read there costs at most a failed CAS here.
//
// P-less Ms (Go's exitsyscall slow path): an M whose P was taken learns it at its next runtime
// entry, when its CAS fails. It takes its own core's P back if idle, else queues its G on the
// global queue and parks as a spare of its core (lost_p). Until that entry it goes on running
// its G without a P: briefly more Ms run G code than there are Ps; preemption and the next
// runtime entry bound it. A G that parks (gopark) holds a wait-queue lock: it must not wait for
// a P with it, so a P-less park parks at once on g0 and the M waits as a spare afterwards.
// Deadlock detection counts such Gs in nlostp until they are on a queue or parked again.
//
// Watchers (monitors whose Traits::sees_blocks): each P has one watcher M of its own core,
// waiting on the monitor's event source for that P (Monitor::wait). An event carries the
// lease word the kernel side saw; the watcher CASes from exactly it and runs the P. Exactly
// one of the watcher's CAS and the holder's own re-entry CAS wins. sched->watcher_missing[p]
// says P p has none: claimed by exchange, so there is at most one. The blocked M usually comes
// back as the new watcher (become_watcher, when it parks P-less); if it has not by the new
// holder's first runtime entry, sysmon is kicked to start one.
//
// Held spares (the trace monitor, pinned Ps, KGMP_TRACE_SPARE=held). The ring's wakeup is an
// irq_work self-IPI in the blocked M's switch path (~7 us here) and the woken watcher starts
// cold, so while P p has work queued behind its running G and p handed off lately
// (P::hold_credit), p's watcher is held *runnable* at SCHED_IDLE on p's CPU
// (kgmp_p_shared::spare_held = HELD). It never competes with the holder (weight 3 against
// 1024), but when the holder blocks the CPU has nothing better to run: the kernel switches
// straight to the watcher, which finds the event BPF posted without a wakeup. One context
// switch, no IPI. spare_held, all on p's CPU (both threads are pinned there, so the watcher
// never runs while BPF runs in the holder's switch):
//   holder (exit_runtime, with work queued, credit left): CAS SLEEPING -> REQUESTED, wake the
//     watcher, sched_yield until HELD (at most 8: a watcher woken from a long sleep needs
//     ~30 us of cold path, which would otherwise land on the hand-off). A watcher that comes
//     back P-less while the holder runs with work queued asks for itself (hold_self).
//   watcher (hold): REQUESTED -> HELD, then SCHED_IDLE, in that order: between the two it runs
//     at SCHED_OTHER, where the holder's sched_yield can run it; the other order could leave it
//     at SCHED_IDLE short of HELD, which no yield reaches. Then loop { take an event; yield }.
//     It lets go when p has no work or its holder is not in G code: it stores SLEEPING, then
//     takes the ring once more, then sleeps on it. BPF skips the wakeup only for HELD, so an
//     event posted before the SLEEPING store is found by that take and one after it wakes the
//     ring as usual.
//   refresh: a watcher held, unrun, through more than kStaleHoldNs of G time has cold pages
//     (on a VM the host stalls their first touch 100-200 us: `kgmp-bench retouch`). The holder,
//     leaving the runtime with work queued, CASes HELD -> REQUESTED, sets the watcher to
//     SCHED_OTHER and yields until it is HELD again: its pass through the loop warms it.
//   A holder seen blocked by the held watcher with work queued but no event (the work came
//   after the switch) is taken by the watcher itself.
//   Other programs: a held watcher waits behind any other task on its CPU. So the holder does
//   not ask for one where our Ms waited more than kForeignBusyNs behind other programs since
//   its last request (BPF's per-core foreign_ns): there a woken watcher, at SCHED_OTHER, gets
//   its fair share at once. And a watcher going HELD arms sysmon's timer 1 ms ahead, which
//   then hands the P off itself if the holder blocked meanwhile (Go's sysmon bound).
//   Idle cost: the watcher lets go as soon as its P has no work, so an idle core still halts.
//
// Timers: a watcher waits no longer than the earliest timer (poke_watchers wakes it when an
// earlier one appears). A due timer on an idle P is run by taking the P; behind a holder that
// BPF saw blocked it is work the kernel could not report (the holder blocked with nothing
// queued), so the watcher takes the P; behind a running holder it backs off 1..10 ms and leaves
// the timer to the holder's next scheduling point.
//
// The published queue length (kgmp_p_shared::runq_len, hdr.nglobal): what BPF and held
// watchers read to decide that work is queued (kgmp_work_queued). Only the holder writes
// runq_len, after every change it makes to its own ring (put, get, a steal into it, a take
// from the global queue): thieves leave it stale-high (one spurious event), never stale-low (a
// block left to the backstop). A debug build checks that at every runtime exit.
//
// sysmon: one thread, Go's sysmon retake loop. Under poll it is the monitor: it hands off a P
// whose holder has been inside kgmp::blocking() for a whole period (20 us doubling after 50
// idle rounds to 10 ms, Go's back-off; the section carries its start time, so the first round
// 20 us after it hands off). Under trace it is the backstop for what the events miss (an event
// dropped on a full ring, a block while its P had no watcher or no work): it hands off Ps
// whose holder BPF saw blocked for a whole period, and starts missing watchers; its shortest
// period is 1 ms and it backs off after 5 rounds, since BPF reports nearly everything. With
// nothing to watch it sleeps unbounded (Go's sysmonwait) on an eventfd and a timerfd: kicks
// wake it only when something needs it now, and a held watcher arms the timerfd 1 ms ahead
// rather than waking it (a wakeup then would land on the hand-off it is for).
//
// Preemption (trace, poll): a G that has run one slice (Config::preempt_slice) on its P while
// work waits for that P has its P taken from it as at a block: a PREEMPT event from the P's
// BPF slice timer, armed by exit_runtime only while work is queued or a timer is pending
// (trace), or sysmon's slice check (poll, and trace where a P has no watcher that an event can
// wake), CASes the lease from the USER word it saw, and the taker runs the P. The M keeps
// running the G without a P, moved aside (move_aside): nice 10, so that the P's new M, pinned
// to the same CPU, gets ~90 % of it, while the G still progresses to its next runtime entry,
// where it is queued again (lost_p) and the M takes its own nice back (notice_lost); or
// sooner, when the P goes idle (restore_aside: nothing waits for the CPU then). Never a signal
// that switches G in the middle of C++ code (it could hold malloc's lock).
// Rejected for the M moved aside: SCHED_IDLE, which against a busy CPU the kernel does not run
// at all (not once in 3 s here against one spinning SCHED_OTHER thread), and nice 19, which it
// runs about 0.1 % of the time: a G that waits for the preempted one (yielding until it sets a
// flag, as kgmp-bench preempt does) then waits seconds.
//
// Preemption requests: under scx, ops.tick raises preempt[slot] when one G has run 10 ms on
// its P; the M clears it at its next runtime entry from G code (or kgmp::preempt_point()) and
// yields the G to the back of its P's queue (gopreempt). A request that arrives after the G
// yielded on its own makes the next G yield once: harmless. Inside kgmp::blocking it waits for
// the next entry.
//
// Rejected: sysmon alone (Go: a hand-off 20 us to 10 ms after the block, and only for marked
// calls); a monitor thread between the kernel and the watchers (two wakeups per hand-off);
// BPF writing the lease (a kernel-side update racing the runtime's CASes, and scheduler state
// corrupted by a BPF bug); a spare always runnable at SCHED_IDLE (the core never halts: held
// spares are that, only while a hand-off is likely); a watcher spinning at SCHED_OTHER (it
// halves the holder's CPU); handing off inside the runtime (the RUNTIME state is what keeps a
// P's queues single-owner).
#include "handoff.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <thread>
#include <vector>

#include "monitor.h"
#include "telemetry_rt.h"

namespace kgmp::internal {

std::atomic<bool> lease_check{false};
std::atomic<std::uint64_t> lease_violations{0};
std::atomic<std::uint64_t> stale_runq_len{0};

void owner_in_slow(P* p, M* m) {
  int prev = p->rt_owner.exchange(m->id, std::memory_order_acq_rel);
  if (prev != -1 && prev != m->id) lease_violations.fetch_add(1, std::memory_order_relaxed);
}

namespace {

// Held-spare requests a P may make after a hand-off before it must hand off again: enough to
// cover the bursts between hand-offs of a blocking workload, few enough that a P whose Gs
// stopped blocking stops paying a wakeup per request.
constexpr std::uint32_t kHoldCredit = 64;
// Time our Ms waited behind other programs' tasks on a P's CPU, between two hold requests,
// beyond which that CPU counts as busy and the watcher is left asleep: a daemon's blip is
// microseconds, a competing program milliseconds.
constexpr std::uint64_t kForeignBusyNs = 500'000;
// A hold older than this is refreshed by the holder: the host's stalls on a page first
// touched again grow 6x from 10 to 30 ms of quiet (`kgmp-bench retouch`).
constexpr std::int64_t kStaleHoldNs = 10'000'000;

// Whether watchers exist and kgmp::blocking hands off at entry (Monitor::Traits::sees_blocks),
// and whether holders ask for held watchers. Set by handoff_init, read-only during the run.
bool g_sees_blocks = false;
// Preemption: the slice (ns, 0: off); whether the monitor's kernel side times it (trace) or
// sysmon does (poll; trace too for a P whose watcher is held, which a PREEMPT event's wakeup
// cannot run); whether a preempted M may be moved aside to nice 10 (it can come back).
std::int64_t g_slice_ns = 0;
std::int64_t g_slice_period_ns = 0;
bool g_slice_timers = false;
bool g_can_lower = false;
constexpr int kAsideNice = 10;  // a preempted M's nice while it runs its G P-less

class Sysmon;
Sysmon* g_sysmon = nullptr;
std::atomic<bool> g_fell_back{false};

// Whether lease word w says USER with a holder BPF last saw switched out blocked. Racy by
// nature: a hand-off CAS from w decides.
bool holder_blocked(LeaseWord w) {
  if (KGMP_LEASE_STATE(w) != KGMP_LEASE_USER) return false;
  std::uint32_t h = KGMP_LEASE_HOLDER(w);
  return h < KGMP_MAX_MS && kgmp_blocked_since_wake(&sched->shared->m[h]);
}

// Whether p has work queued behind its running G, as BPF sees it.
bool work_queued(P* p) { return kgmp_work_queued(&sched->shared->hdr, p->sh); }

// This thread's policy (nice unchanged). SCHED_IDLE -> SCHED_OTHER needs CAP_SYS_NICE or an
// RLIMIT_NICE allowing nice 0: handoff_init probes that before it allows holding.
void set_policy(int policy) {
  sched_param sp{};
  (void)sched_setscheduler(0, policy, &sp);
}

// Whether a thread of this process may go to SCHED_IDLE and come back (tried on a scratch
// thread: a thread stuck at SCHED_IDLE would be starved by any other task).
bool can_leave_sched_idle() {
  bool ok = false;
  std::thread t([&ok] {
    sched_param sp{};
    if (sched_setscheduler(0, SCHED_IDLE, &sp) != 0) return;
    ok = sched_setscheduler(0, SCHED_OTHER, &sp) == 0;
  });
  t.join();
  return ok;
}

// Whether a thread of this process may go to nice kAsideNice and back to its own nice (tried
// on a scratch thread: the way back needs CAP_SYS_NICE or RLIMIT_NICE).
bool can_renice() {
  bool ok = false;
  std::thread t([&ok] {
    errno = 0;
    const int before = getpriority(PRIO_PROCESS, 0);
    if (errno != 0 || setpriority(PRIO_PROCESS, 0, kAsideNice) != 0) return;
    ok = setpriority(PRIO_PROCESS, 0, before) == 0;
  });
  t.join();
  return ok;
}

}  // namespace

// ---- the lease ----

// The M in slot `holder` lost its P because its G ran past the slice: it goes on running that
// G P-less until its next runtime entry, moved aside so that the P's new M gets the CPU (both
// are pinned there): nice 10, when this process may come back from it. Under scx the
// scheduler orders the Ms itself. Caller: the taker, after its CAS won.
static void move_aside(P* p, std::uint32_t holder) {
  M* v = holder < static_cast<std::uint32_t>(sched->cfg.max_threads) + 1
             ? sched->m_by_id[holder].load(std::memory_order_acquire)
             : nullptr;
  if (v == nullptr) return;
  p->aside.store(v, std::memory_order_relaxed);
  v->preempted.store(true, std::memory_order_release);
  if (!g_can_lower) return;
  errno = 0;
  const int before = getpriority(PRIO_PROCESS, static_cast<id_t>(v->tid));
  if (errno != 0 || before >= kAsideNice) return;
  v->nice_before = before;  // published by the release below
  if (setpriority(PRIO_PROCESS, static_cast<id_t>(v->tid), kAsideNice) == 0)
    v->lowered.store(true, std::memory_order_release);
}

void restore_aside(P* p) {
  M* v = p->aside.exchange(nullptr, std::memory_order_relaxed);
  if (v != nullptr && v->lowered.exchange(false, std::memory_order_acq_rel))
    (void)setpriority(PRIO_PROCESS, static_cast<id_t>(v->tid), v->nice_before);
}

// m learned that its P was taken: if that was a preemption, it is back in the scheduler now,
// at its own priority again. Caller: m, P-less, entering the runtime.
void notice_lost(M* m) {
  if (__builtin_expect(!m->preempted.load(std::memory_order_acquire), 1)) return;
  m->preempted.store(false, std::memory_order_relaxed);
  if (m->lowered.exchange(false, std::memory_order_acq_rel))
    (void)setpriority(PRIO_PROCESS, 0, m->nice_before);  // this thread
}

bool lease_enter(M* m, P* p) {
  LeaseWord e = m->lease_expect;
  if (!lease_ref(p).compare_exchange_strong(
          e, KGMP_LEASE_MAKE(KGMP_LEASE_SEQ(e) + 1, m->id, KGMP_LEASE_RUNTIME),
          std::memory_order_acq_rel))
    return false;
  owner_in(p, m);
  return true;
}

// Takes p from the M that holds it in USER state, by CAS from exactly `observed`. On success
// the caller owns p (RUNTIME, no holder) and must acquire it or pass it on (pass_on). Caller:
// a watcher, sysmon.
static bool handoff_p(P* p, LeaseWord observed, std::uint32_t kind = KGMP_EV_BLOCK) {
  if (KGMP_LEASE_STATE(observed) != KGMP_LEASE_USER) return false;
  if (!lease_ref(p).compare_exchange_strong(
          observed, KGMP_LEASE_MAKE(KGMP_LEASE_SEQ(observed) + 1, kNoHolder, KGMP_LEASE_RUNTIME),
          std::memory_order_acq_rel))
    return false;
  if (lease_check.load(std::memory_order_relaxed) &&
      p->rt_owner.load(std::memory_order_acquire) != -1)
    lease_violations.fetch_add(1, std::memory_order_relaxed);  // someone in RUNTIME under USER
  p->m = nullptr;  // the blocked M learns at its next runtime entry (its CAS fails)
  if (kind == KGMP_EV_PREEMPT) {
    move_aside(p, KGMP_LEASE_HOLDER(observed));
    p->c.preemptions.add();
  } else {
    // A P that hands off is likely to again: its next holders may ask for a held watcher.
    if (sched->hold_spares) p->hold_credit.store(kHoldCredit, std::memory_order_relaxed);
    p->c.handoffs_out.add();
  }
  if (__builtin_expect(tracing.load(std::memory_order_relaxed), 0)) {
    M* taker = getm();
    trace_event_slow(p->id, TraceEv::kHandoff,
                     taker != nullptr ? static_cast<std::uint32_t>(taker->id) : kNoHolder, 0,
                     KGMP_LEASE_HOLDER(observed));
  }
  sched->nlostp.fetch_add(1, std::memory_order_relaxed);
  return true;
}

// After a hand-off to no particular M: start an M for p if it has work (a G queued, or a timer
// due), else idle it. Caller: owns p (a won handoff_p, or the eager hand-off of entersyscall).
static void pass_on(P* p) {
  std::int64_t t0 = p->timers.timer0.load(std::memory_order_relaxed);
  if (p_has_work(p) || (t0 != 0 && t0 <= nanotime())) {
    if (counters_on) p->c.handoffs_in.add();
    start_m(p, false);
    return;
  }
  auto l = lease_ref(p);
  LeaseWord w = l.load(std::memory_order_relaxed);
  l.store(KGMP_LEASE_MAKE(KGMP_LEASE_SEQ(w) + 1, kNoHolder, KGMP_LEASE_IDLE),
          std::memory_order_release);
  LockGuard g(sched->lock);
  pidle_put(p);
}

// The M lost its P while its G ran: Go's exitsyscall slow path. Caller: enter_runtime, on the
// G's stack, depth already 1.
static void lost_p(M* m) {
  notice_lost(m);
  // nlostp (deadlock detection) drops only once the G is on a P or a run queue again.
  bool handed = m->p != nullptr;
  if (handed) {
    m->p = nullptr;  // the P's new holder already owns p->m
    __atomic_store_n(&m->sh->p, KGMP_NO_P, __ATOMIC_RELAXED);  // read by BPF and telemetry
  }
  P* q;
  {
    LockGuard l(sched->lock);
    q = pidle_get(sched->cfg.pin ? &sched->allp[m->pool] : nullptr);
  }
  if (q != nullptr) {
    acquire_p(m, q);
    if (handed) sched->nlostp.fetch_sub(1, std::memory_order_seq_cst);
    return;
  }
  m->requeue_lost = handed;
  // No P for us: the G waits on the global queue and this M parks as a spare of its core.
  switch_to_g0(m, After::kRequeue);
  // Resumed by an M that holds a P, inside its runtime (depth 1 there).
}

// ---- preemption requests ----

std::uint32_t* preempt_requested(M* m) {
  std::uint32_t* f = sched->preempt_flags.load(std::memory_order_relaxed);
  if (__builtin_expect(f == nullptr, 1)) return nullptr;
  if (m->id >= KGMP_MAX_MS) return nullptr;
  std::uint32_t* w = &f[m->id];
  return __atomic_load_n(w, __ATOMIC_RELAXED) != 0 ? w : nullptr;
}

// Consumes a pending request w of m: clears it and yields the running G if another G is
// runnable (else it goes on: nothing to preempt it for). Caller: the running G of m, in the
// runtime at depth 1, m holding a P, no lock held. Returns maybe on another M.
static void __attribute__((noinline)) gopreempt(M* m, std::uint32_t* w) {
  // Inside kgmp::blocking: the M's state is in flux; the request waits for the next entry.
  if (m->tstate.load(std::memory_order_relaxed) != MState::kRunning) return;
  __atomic_store_n(w, 0u, __ATOMIC_RELAXED);
  if (m->curg == nullptr || sched->stopping.load(std::memory_order_relaxed)) return;
  P* p = m->p;
  run_own_timers(p);
  if (p->runq.empty() && sched->runqsize.load(std::memory_order_relaxed) == 0) return;
  leave_g(After::kPreempt);
}

// ---- held spares: the holder's side ----

// Yields (at most 8 times: a watcher not eligible yet, EEVDF lag, is passed over) until p's
// watcher is HELD. Caller: p's holder, after asking for or refreshing a held watcher.
static void yield_until_held(std::atomic_ref<__u32> held) {
  for (int i = 0; i < 8 && held.load(std::memory_order_acquire) != KGMP_SPARE_HELD; i++)
    sched_yield();
}

// p's watcher is HELD: if it has been held, unrun, longer than kStaleHoldNs, run it through
// its hold loop once now (see "refresh"). Returns whether the caller should yield until it is
// HELD again. Caller: p's holder, in exit_runtime with work queued.
static bool refresh_held(P* p) {
  const pid_t tid = p->held_tid.load(std::memory_order_acquire);
  if (tid == 0 || nanotime() - p->held_since.load(std::memory_order_relaxed) < kStaleHoldNs)
    return false;
  __u32 held = KGMP_SPARE_HELD;
  if (!std::atomic_ref<__u32>(p->sh->spare_held)
           .compare_exchange_strong(held, KGMP_SPARE_REQUESTED, std::memory_order_acq_rel))
    return false;
  // At SCHED_OTHER it gets the CPU at the caller's yield; it goes back to SCHED_IDLE itself.
  sched_param sp{};
  (void)sched_setscheduler(tid, SCHED_OTHER, &sp);
  return true;
}

// Asks for p's watcher to be held runnable when work is queued behind the G about to run (see
// "Held spares"), or refreshes a stale hold. Caller: p's holder, in exit_runtime, with
// p->hold_credit != 0.
static void hold_spare(P* p) {
  std::atomic_ref<__u32> held(p->sh->spare_held);
  __u32 h = held.load(std::memory_order_relaxed);
  if ((h != KGMP_SPARE_SLEEPING && h != KGMP_SPARE_HELD) || !work_queued(p)) return;
  if (h == KGMP_SPARE_HELD) {
    if (refresh_held(p)) yield_until_held(held);
    return;
  }
  if (sched->cores != nullptr && p->cpu >= 0 && p->cpu < KGMP_MAX_CPUS) {
    std::uint64_t f = std::atomic_ref<const __u64>(sched->cores->c[p->cpu].foreign_ns)
                          .load(std::memory_order_relaxed);
    std::uint64_t seen = p->foreign_seen.exchange(f, std::memory_order_relaxed);
    if (f - seen > kForeignBusyNs) return;
  }
  p->hold_credit.store(p->hold_credit.load(std::memory_order_relaxed) - 1,
                       std::memory_order_relaxed);
  __u32 sleeping = KGMP_SPARE_SLEEPING;
  if (held.compare_exchange_strong(sleeping, KGMP_SPARE_REQUESTED, std::memory_order_acq_rel)) {
    sched->monitor->wake(p->id);
    yield_until_held(held);
  }
}

// ---- the runtime entry and exit ----

namespace {
void sysmon_kick_slice(P* p);
}

// Starts p's slice timer if it is not running and a G is about to run with work queued behind
// it (see "Preemption"). Caller: p's holder, in exit_runtime.
static inline void arm_slice(P* p) {
  std::atomic_ref<__u32> armed(p->sh->slice_armed);
  if (armed.load(std::memory_order_relaxed) != KGMP_SLICE_IDLE) return;
  if (!work_queued(p) && p->timers.timer0.load(std::memory_order_relaxed) == 0) return;
  __u32 idle = KGMP_SLICE_IDLE;
  if (armed.compare_exchange_strong(idle, KGMP_SLICE_ARMED, std::memory_order_relaxed))
    sched->monitor->arm_slice(p->id);
}

// Counts (debug builds: aborts on) a published queue length of 0 while p's ring holds Gs.
// Caller: p's holder, leaving the runtime.
static void check_published(P* p) {
  if (!sched->publish_work || p->runq.empty() ||
      std::atomic_ref<__u32>(p->sh->runq_len).load(std::memory_order_relaxed) != 0)
    return;
  stale_runq_len.fetch_add(1, std::memory_order_relaxed);
  KGMP_DCHECK(!"the published run-queue length went stale-low: a ring change was not published");
}

std::atomic<std::uint32_t> reap_seq{0};

void park_orphan(M* m) {
  // Nothing here reads the runtime: run() may have freed it. The M, its G and the G's stack
  // are never freed (run.cpp's teardown keeps them).
  m->orphan.store(Orphan::kParked, std::memory_order_release);
  reap_seq.fetch_add(1, std::memory_order_release);
  futex_wake(&reap_seq, INT32_MAX);
  std::atomic<std::uint32_t> forever{0};
  for (;;) futex_wait(&forever, 0);
}

static void exit_lease(M* m);

// The lease part of a runtime entry: USER -> RUNTIME, or the lost P. Caller: m, just through
// the gate at depth 0 -> 1.
static void enter_lease(M* m) {
  if (m->p != nullptr && lease_enter(m, m->p)) {
    if (__builtin_expect(m->p->kick_backstop, 0)) {
      // A watcher took this P: its blocked M usually comes back as the new watcher; if it has
      // not by now, sysmon starts one. Not at the hand-off itself: waking sysmon there is a
      // cross-CPU wakeup that would delay the G the hand-off is for.
      m->p->kick_backstop = false;
      if (sched->watcher_missing[static_cast<std::size_t>(m->p->id)].load(std::memory_order_acquire))
        sysmon_kick();
    }
    if (std::uint32_t* w = preempt_requested(m); __builtin_expect(w != nullptr, 0))
      gopreempt(m, w);
    return;
  }
  lost_p(m);
}

void enter_runtime() {
  M* m = getm();
  if (m == nullptr || gate_in(m) > 0) return;
  enter_lease(m);
}

// The depth drops to 0 only at the end: the tail (hold requests, the slice timer) still reads
// the runtime, so the reap (run.cpp) must not take this M for G code before it is done.
void exit_runtime() {
  M* m = getm();
  if (m == nullptr) return;
  if (m->rt_depth > 1) {
    --m->rt_depth;
    return;
  }
  exit_lease(m);
  --m->rt_depth;
}

// The lease part of a runtime exit: stores USER, then asks for what the G about to run needs
// (a held spare, the slice timer). Caller: m, at depth 1, about to return to G code.
static void exit_lease(M* m) {
  P* p = m->p;
  if (p == nullptr) return;  // P-less G code (kgmp::blocking under a monitor that sees blocks)
  // Never stale-low: every change the holder made to its ring is published by now. Checked in
  // debug builds, and counted under the lease checker (tests run it in release builds too).
#ifdef NDEBUG
  if (__builtin_expect(lease_check.load(std::memory_order_relaxed), 0))
#endif
    check_published(p);
  auto l = lease_ref(p);
  LeaseWord w = l.load(std::memory_order_relaxed);
  LeaseWord u = KGMP_LEASE_MAKE(KGMP_LEASE_SEQ(w) + 1, m->id, KGMP_LEASE_USER);
  m->lease_expect = u;
  owner_out(p);
  l.store(u, std::memory_order_release);
  if (p->hold_credit.load(std::memory_order_relaxed) != 0) hold_spare(p);
  if (g_slice_timers)
    arm_slice(p);
  else if (g_slice_ns != 0 && !g_sees_blocks)
    sysmon_kick_slice(p);
}

// ---- the syscall hooks (kgmp::blocking) ----

namespace {
void sysmon_kick_blocking();
}

void entersyscall() {
  M* m = getm();
  if (m == nullptr || m->curg == nullptr) return;
  gate_in(m);  // before the first store to the shared slot (an orphan parks here)
  // The time first, then the flag (release): a poller that sees in_blocking sees this section's
  // start, not the previous one's.
  __atomic_store_n(&m->sh->blocking_since_ns, static_cast<__u64>(nanotime()), __ATOMIC_RELAXED);
  __atomic_store_n(&m->sh->in_blocking, 1u, __ATOMIC_RELEASE);
  sched->nblocking.fetch_add(1, std::memory_order_seq_cst);
  m->tstate.store(MState::kBlocked, std::memory_order_relaxed);
  if (!g_sees_blocks) {
    sysmon_kick_blocking();
    --m->rt_depth;  // out again; the lease stayed USER (sysmon retakes the P if it must)
    return;
  }
  // Go's entersyscallblock: give the P away now; exitsyscall gets one back.
  enter_lease(m);
  m = getm();
  if (m->p != nullptr) {
    trace_event(m->p->id, TraceEv::kMBlock, static_cast<std::uint32_t>(m->id), m->curg->goid, 0);
    P* p = release_p(m, KGMP_LEASE_RUNTIME);  // owned, no holder: passed on below
    p->c.handoffs_out.add();
    trace_event(p->id, TraceEv::kHandoff, kNoHolder, 0, static_cast<std::uint64_t>(m->id));
    pass_on(p);
  }
  exit_runtime();
}

void exitsyscall() {
  M* m = getm();
  if (m == nullptr || m->curg == nullptr) return;
  gate_in(m);  // before the first store to the shared slot (an orphan parks here)
  __atomic_store_n(&m->sh->in_blocking, 0u, __ATOMIC_RELEASE);
  // The CAS finds out whether the P was taken meanwhile, and gets one back (or requeues the G
  // and resumes it later, maybe on another M). nblocking drops only then, so that deadlock
  // detection never sees this G as neither blocked nor runnable.
  enter_lease(m);
  sched->nblocking.fetch_sub(1, std::memory_order_seq_cst);
  m = getm();
  m->tstate.store(MState::kRunning, std::memory_order_relaxed);
  if (m->p != nullptr)
    trace_event(m->p->id, TraceEv::kMWake, static_cast<std::uint32_t>(m->id), m->curg->goid, 0);
  exit_runtime();
}

// ---- watchers ----

// P index a watcher of m's pool would watch: its own P when pinned, else any P missing one.
static int watcher_slot_for(M* m) {
  if (sched->watcher_missing.empty()) return -1;
  if (sched->cfg.pin) return m->pool;
  for (std::size_t i = 0; i < sched->watcher_missing.size(); i++)
    if (sched->watcher_missing[i].load(std::memory_order_relaxed)) return static_cast<int>(i);
  return -1;
}

bool become_watcher(M* m) {
  if (m->watcher) return true;
  int w = watcher_slot_for(m);
  if (w < 0 || !sched->watcher_missing[static_cast<std::size_t>(w)].exchange(false)) return false;
  m->watcher = true;
  m->watch_p = w;
  return true;
}

void start_watcher(int pi) {
  if (!sched->watcher_missing[static_cast<std::size_t>(pi)].exchange(false)) return;
  P* p = &sched->allp[pi];
  M* m = nullptr;
  {
    LockGuard l(sched->lock);
    if (sched->stopping.load(std::memory_order_relaxed)) return;
    m = mget_locked(p);
    if (m == nullptr) {
      sched->watcher_missing[static_cast<std::size_t>(pi)].store(true);
      return;  // at the limit: sysmon keeps handing off by polling
    }
    m->watcher = true;
    m->watch_p = pi;
    m->nextp = nullptr;
  }
  resume_m(m);
}

void wake_watchers() {
  if (!g_sees_blocks) return;
  for (int i = 0; i < sched->nprocs; i++) sched->monitor->wake(i);
}

void poke_watchers(std::int64_t when) {
  if (!g_sees_blocks) return;
  for (int i = 0; i < sched->nprocs; i++) {
    std::atomic<std::int64_t>& until = sched->allp[i].watch_until;
    if (until.load(std::memory_order_seq_cst) <= when) continue;  // wakes in time anyway
    until.store(when, std::memory_order_relaxed);  // one wake per earlier deadline
    sched->monitor->wake(i);
  }
}

// Asks for p's watcher to be held (see "Held spares") when the holder runs G code with work
// queued: the same test as hold_spare, so that an M coming back P-less is held at once, with no
// wakeup. Caller: p's watcher, before it waits.
static void hold_self(P* p) {
  std::atomic_ref<__u32> held(p->sh->spare_held);
  if (!sched->hold_spares || p->hold_credit.load(std::memory_order_relaxed) == 0 ||
      held.load(std::memory_order_relaxed) != KGMP_SPARE_SLEEPING ||
      KGMP_LEASE_STATE(lease_ref(p).load(std::memory_order_relaxed)) != KGMP_LEASE_USER ||
      !work_queued(p))
    return;
  __u32 sleeping = KGMP_SPARE_SLEEPING;
  held.compare_exchange_strong(sleeping, KGMP_SPARE_REQUESTED, std::memory_order_acq_rel);
}

namespace {
void sysmon_kick_held();
}

// Holds p's watcher (this thread) runnable at SCHED_IDLE until p's holder blocks (kEvent, with
// *ev to CAS from) or a hand-off stops being likely, or the runtime stops (kTimeout: the
// caller looks again). Caller: p's watcher, spare_held REQUESTED.
static Monitor::Wake hold(P* p, Monitor::Event* ev) {
  std::atomic_ref<__u32> held(p->sh->spare_held);
  held.store(KGMP_SPARE_HELD, std::memory_order_seq_cst);
  p->held_since.store(nanotime(), std::memory_order_relaxed);
  p->held_tid.store(static_cast<pid_t>(gettid()), std::memory_order_release);
  sysmon_kick_held();  // a timerfd_settime, ~10 us here: before the holder may block
  set_policy(SCHED_IDLE);
  Monitor::Wake r = Monitor::Wake::kTimeout;
  for (;;) {
    if (held.load(std::memory_order_acquire) == KGMP_SPARE_REQUESTED) {
      // Refreshed (refresh_held) and set to SCHED_OTHER: this pass warms the path.
      held.store(KGMP_SPARE_HELD, std::memory_order_seq_cst);
      p->held_since.store(nanotime(), std::memory_order_relaxed);
      set_policy(SCHED_IDLE);
    }
    if (sched->monitor->take(p->id, ev)) {
      r = Monitor::Wake::kEvent;
      break;
    }
    if (sched->stopping.load(std::memory_order_acquire)) break;
    LeaseWord w = lease_ref(p).load(std::memory_order_acquire);
    if (KGMP_LEASE_STATE(w) != KGMP_LEASE_USER || !work_queued(p)) break;
    // Run while the holder runs G code with work queued: either it blocked after BPF's check
    // (no event), or the holder is runnable and this is the rare weight-3 turn.
    if (holder_blocked(w)) {
      *ev = {w, KGMP_EV_BLOCK};
      r = Monitor::Wake::kEvent;
      break;
    }
    sched_yield();
  }
  p->held_tid.store(0, std::memory_order_release);
  held.store(KGMP_SPARE_SLEEPING, std::memory_order_seq_cst);
  if (r != Monitor::Wake::kEvent && sched->monitor->take(p->id, ev))
    r = Monitor::Wake::kEvent;  // posted without a wakeup before the store
  set_policy(SCHED_OTHER);
  return r;
}

// Counts a won hand-off at a watcher and its latency: from the kernel's switch-out of the
// blocked holder (BPF's stamp in its slot) to this CAS. Caller: the watcher that won p.
static void count_handoff_in(P* p, LeaseWord lease) {
  if (!counters_on) return;
  p->c.handoffs_in.add();
  std::uint32_t h = KGMP_LEASE_HOLDER(lease);
  std::uint64_t ts =
      h < KGMP_MAX_MS ? __atomic_load_n(&sched->shared->m[h].last_block_ns, __ATOMIC_ACQUIRE) : 0;
  std::int64_t now = nanotime();
  if (ts != 0 && static_cast<std::uint64_t>(now) >= ts)
    p->c.handoff_lat.add(static_cast<std::uint64_t>(now) - ts);
}

bool watch_for_p(M* m) {
  P* p = &sched->allp[m->watch_p];
  m->tstate.store(MState::kWatcher, std::memory_order_relaxed);
  int late_ms = 0;  // a due timer the holder has not run yet: back off 1 .. 10 ms, no spinning
  while (!sched->stopping.load(std::memory_order_acquire)) {
    // The deadline first, then the timers (poke_watchers stores timer0, then reads this).
    p->watch_until.store(INT64_MAX, std::memory_order_seq_cst);
    std::int64_t e = earliest_timer();
    int timeout = -1;
    if (e != 0) {
      std::int64_t now = nanotime();
      std::int64_t ms = (e - now + 999999) / 1000000;
      timeout = ms < late_ms ? late_ms : static_cast<int>(ms);
      p->watch_until.store(now + std::int64_t{timeout} * 1000000, std::memory_order_seq_cst);
    }
    Monitor::Event ev;
    hold_self(p);
    Monitor::Wake r = Monitor::Wake::kTimeout;
    if (std::atomic_ref<__u32>(p->sh->spare_held).load(std::memory_order_acquire) ==
        KGMP_SPARE_REQUESTED)
      r = hold(p, &ev);
    if (r != Monitor::Wake::kEvent) r = sched->monitor->wait(m->watch_p, m->id, timeout, &ev);
    if (sched->stopping.load(std::memory_order_acquire)) break;
    bool got = false;
    if (r == Monitor::Wake::kTimeout) {  // a timer is due: run it if the P is idle
      {
        LockGuard l(sched->lock);
        got = pidle_get(p) != nullptr;
      }
      LeaseWord w = lease_ref(p).load(std::memory_order_acquire);
      if (!got && holder_blocked(w)) {
        ev = {w, KGMP_EV_BLOCK};
        r = Monitor::Wake::kEvent;
      } else if (!got) {
        late_ms = late_ms == 0 ? 1 : std::min(late_ms * 2, 10);
      }
    }
    if (r != Monitor::Wake::kTimeout) late_ms = 0;
    if (r == Monitor::Wake::kEvent && handoff_p(p, ev.lease, ev.kind)) {
      got = true;
      if (ev.kind == KGMP_EV_BLOCK) count_handoff_in(p, ev.lease);
    }
    if (got) {
      p->watch_until.store(-1, std::memory_order_relaxed);
      acquire_p(m, p);
      m->watcher = false;
      m->tstate.store(MState::kRunning, std::memory_order_relaxed);
      int pi = m->watch_p;
      sched->watcher_missing[static_cast<std::size_t>(pi)].store(true, std::memory_order_release);
      m->watch_p = -1;
      if (r == Monitor::Wake::kEvent)
        p->kick_backstop = true;  // see enter_runtime
      else
        start_watcher(pi);  // a timer: no M is coming back; the next block needs a watcher
      return true;
    }
  }
  return false;
}

// ---- sysmon ----

namespace {

class Sysmon {
 public:
  // Its fds exist from the start, so that kicks before start() (or without it, under scx)
  // are harmless writes.
  explicit Sysmon(bool backstop) : backstop_(backstop) {
    evfd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    tfd_ = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (evfd_ < 0 || tfd_ < 0)
      fatal("kgmp: cannot create sysmon's eventfd/timerfd: %s; raise the open-files limit "
            "(ulimit -n)", strerror(errno));
  }

  // Creates its fds and thread. Caller: run(), or monitor_fell_back (the scx monitor's thread).
  void start() {
    seen_.assign(static_cast<std::size_t>(sched->nprocs), Seen{});
    missing_seen_.assign(sched->watcher_missing.size(), false);
    if (int err = pthread_create(&thread_, nullptr, [](void* self) -> void* {
          static_cast<Sysmon*>(self)->loop();
          return nullptr;
        }, this); err != 0)
      fatal("kgmp: cannot create the sysmon thread: %s", strerror(err));
    started_.store(true, std::memory_order_release);
  }

  // Joins the thread. Kicks may still come (from Ms not yet stopped): harmless until the
  // destructor. Caller: run(), once.
  void stop() {
    stop_.store(true, std::memory_order_release);
    if (!started_.load(std::memory_order_acquire)) return;
    wake_sleeper();
    pthread_join(thread_, nullptr);
  }

  // Caller: run(), after every M is joined.
  ~Sysmon() {
    for (int fd : {evfd_, tfd_})
      if (fd >= 0) close(fd);
  }

  // Backstop: wakes the unbounded sleep only if something needs it now (a P without a watcher,
  // or a holder BPF saw blocked): otherwise its wakeup and its ticks land on the hand-off this
  // work is likely for. Caller: any thread.
  void kick() {
    if (!backstop_ || !sleeping_.load(std::memory_order_seq_cst)) return;
    for (const auto& w : sched->watcher_missing)
      if (w.load(std::memory_order_relaxed)) return wake_sleeper();
    for (int i = 0; i < sched->nprocs; i++)
      if (holder_blocked(lease_ref(&sched->allp[i]).load(std::memory_order_acquire)))
        return wake_sleeper();
  }

  // Poll: an M entered kgmp::blocking(). Caller: that M.
  void kick_blocking() {
    if (sleeping_.load(std::memory_order_seq_cst)) wake_sleeper();
  }

  // Poll: p's holder runs a G while another waits (queued, or behind a timer): sysmon times
  // the slice. One load unless sysmon sleeps. Caller: p's holder, leaving the runtime.
  void kick_slice(P* p) {
    if (__builtin_expect(!sleeping_.load(std::memory_order_relaxed), 1)) return;
    if (p_has_work(p) || p->timers.timer0.load(std::memory_order_relaxed) != 0) wake_sleeper();
  }

  // A watcher was just held at SCHED_IDLE: sysmon must look at its P within 1 ms while it stays
  // held. A sleeping sysmon gets its timer 1 ms ahead (no wakeup now); an awake one goes back to
  // 1 ms rounds. Caller: that watcher.
  void kick_held() {
    if (!backstop_) return;
    if (!sleeping_.load(std::memory_order_seq_cst)) {
      held_fast_.store(true, std::memory_order_relaxed);
      return;
    }
    if (timer_armed_.exchange(true, std::memory_order_acq_rel)) return;
    itimerspec its{};
    its.it_value.tv_nsec = 1'000'000;
    timerfd_settime(tfd_, 0, &its, nullptr);
  }

 private:
  struct Seen {
    LeaseWord lease = 0;  // the blocking section last seen, and since when
    std::int64_t since = 0;
    std::uint64_t tick = 0;  // the P's schedtick last seen, and since when (preemption)
    std::int64_t tick_since = 0;
  };

  void wake_sleeper() {
    std::uint64_t one = 1;
    (void)!write(evfd_, &one, sizeof one);
  }

  // Sleeps up to ns (-1: unbounded) on the eventfd and the timerfd. Caller: the sysmon thread.
  void sleep(std::int64_t ns) {
    pollfd fds[2] = {{evfd_, POLLIN, 0}, {tfd_, POLLIN, 0}};
    timespec ts{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
    while (ppoll(fds, 2, ns < 0 ? nullptr : &ts, nullptr) < 0 && errno == EINTR) {
    }
    std::uint64_t v;
    (void)!read(evfd_, &v, sizeof v);
    if (read(tfd_, &v, sizeof v) == sizeof v) timer_armed_.store(false, std::memory_order_release);
  }

  // Inside kgmp::blocking(), or (backstop) switched out blocked as BPF last saw it.
  bool blocked(M* m) const {
    if (__atomic_load_n(&m->sh->in_blocking, __ATOMIC_ACQUIRE) != 0) return true;
    return backstop_ && kgmp_blocked_since_wake(m->sh);
  }

  // When m's blocking section began: kgmp::blocking()'s own stamp, else (a block only BPF saw)
  // `now`, the first sighting.
  static std::int64_t marked_since(M* m, std::int64_t now) {
    if (__atomic_load_n(&m->sh->in_blocking, __ATOMIC_ACQUIRE) == 0) return now;
    auto t = static_cast<std::int64_t>(__atomic_load_n(&m->sh->blocking_since_ns, __ATOMIC_RELAXED));
    return t > 0 && t <= now ? t : now;
  }

  // Whether sysmon times P p's slices: always under poll; under trace only while p's watcher
  // is held or missing (a PREEMPT event's wakeup cannot run a watcher held at SCHED_IDLE).
  bool times_slices(P* p) const {
    if (g_slice_ns == 0) return false;
    if (!backstop_) return true;
    return std::atomic_ref<__u32>(p->sh->spare_held).load(std::memory_order_relaxed) ==
               KGMP_SPARE_HELD ||
           sched->watcher_missing[static_cast<std::size_t>(p->id)].load(std::memory_order_relaxed);
  }

  // Go's retake of a P whose G ran too long (sysmon's preemptone): the same G (schedtick
  // unchanged) has run a whole slice in G code with work queued, its M not blocked.
  bool slice_over(P* p, LeaseWord w, M* holder, Seen& s, std::int64_t now) {
    if (!times_slices(p) || (!p_has_work(p) && !timer_due(p, now))) {
      s.tick_since = 0;
      return false;
    }
    std::uint64_t tick = __atomic_load_n(&p->sh->schedtick, __ATOMIC_RELAXED);
    if (tick != s.tick || s.tick_since == 0) {
      s.tick = tick;
      s.tick_since = now;
      return false;
    }
    if (now - s.tick_since < g_slice_ns || blocked(holder)) return false;
    s.tick_since = 0;
    return true;
  }

  static bool timer_due(P* p, std::int64_t now) {
    std::int64_t t0 = p->timers.timer0.load(std::memory_order_relaxed);
    return t0 != 0 && t0 <= now;
  }

  // Whether some P's slice is being timed here (sysmon then looks at least every period).
  bool watching_slices() const {
    if (g_slice_ns == 0) return false;
    for (int i = 0; i < sched->nprocs; i++) {
      P* p = &sched->allp[i];
      if (KGMP_LEASE_STATE(lease_ref(p).load(std::memory_order_relaxed)) == KGMP_LEASE_USER &&
          times_slices(p) &&
          (p_has_work(p) || p->timers.timer0.load(std::memory_order_relaxed) != 0))
        return true;
    }
    return false;
  }

  // Go's retake: returns how many Ps were handed off.
  int retake(std::int64_t now) {
    int n = 0;
    for (int i = 0; i < sched->nprocs; i++) {
      P* p = &sched->allp[i];
      LeaseWord w = lease_ref(p).load(std::memory_order_acquire);
      Seen& s = seen_[static_cast<std::size_t>(i)];
      if (KGMP_LEASE_STATE(w) != KGMP_LEASE_USER) {
        s.tick_since = 0;
        continue;
      }
      M* holder = sched->m_by_id[KGMP_LEASE_HOLDER(w)].load(std::memory_order_acquire);
      if (holder == nullptr) continue;
      if (slice_over(p, w, holder, s, now)) {
        if (handoff_p(p, w, KGMP_EV_PREEMPT)) {
          pass_on(p);
          n++;
        }
        continue;
      }
      if (!blocked(holder)) continue;
      if (s.lease != w) {  // first sighting of this blocking section
        s.lease = w;
        s.since = marked_since(holder, now);
      }
      // Go retakes a P once its syscall lasted one sysmon tick, "at least 20 us", which it can
      // only tell by seeing it on two ticks. A kgmp::blocking() section carries its start time,
      // so the first round 20 us after it hands off; a block only BPF saw has none: one period.
      if (now - s.since < kMinBlockNs) continue;
      if (!p_has_work(p) && now - s.since < 10'000'000) continue;
      if (handoff_p(p, w)) {
        pass_on(p);
        n++;
      }
    }
    return n;
  }

  // A P whose watcher took it and that no returning M refilled within a round gets a new one.
  void refill_watchers() {
    for (std::size_t i = 0; i < sched->watcher_missing.size(); i++) {
      bool missing = sched->watcher_missing[i].load(std::memory_order_acquire);
      if (missing && missing_seen_[i]) start_watcher(static_cast<int>(i));
      missing_seen_[i] = missing;
    }
  }

  // Whether a hand-off could be needed: some P is held while Gs wait to run and, for the poll
  // monitor, some M is inside kgmp::blocking().
  bool nothing_to_watch() const {
    if (sched->npidle.load(std::memory_order_seq_cst) == sched->nprocs) return true;
    if (!backstop_)
      return sched->nblocking.load(std::memory_order_seq_cst) == 0 && !watching_slices();
    if (sched->runqsize.load(std::memory_order_seq_cst) > 0) return false;
    for (int i = 0; i < sched->nprocs; i++)
      if (!sched->allp[i].runq.empty()) return false;
    for (const auto& w : sched->watcher_missing)
      if (w.load(std::memory_order_relaxed)) return false;
    return true;
  }

  void loop() {
    // Sleep as long as asked: Linux's default 50 us timer slack would make a 20 us period ~70.
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    // The shortest period: Go's 20 us under poll, whose rounds are the hand-off; 1 ms for the
    // backstop, which covers only what the events missed (as a CFS thread polling without
    // pause it delayed the Ms of its CPU).
    const std::int64_t min_delay = backstop_ ? 1'000'000 : 20'000;
    std::int64_t delay = min_delay;
    int idle = 0, quiet = 0;
    while (!stop_.load(std::memory_order_acquire)) {
      // Nothing to watch for idle_rounds_ rounds in a row: sleep until kicked (Go's
      // sysmonwait), so an idle runtime costs no wakeups at all.
      if (nothing_to_watch() && ++quiet > idle_rounds_) {
        sleeping_.store(true, std::memory_order_seq_cst);
        if (nothing_to_watch() && !stop_.load(std::memory_order_acquire)) sleep(-1);
        sleeping_.store(false, std::memory_order_relaxed);
        quiet = idle = 0;
        delay = min_delay;
        continue;
      } else if (!nothing_to_watch()) {
        quiet = 0;
      }
      if (held_fast_.exchange(false, std::memory_order_relaxed) && delay > 1'000'000) {
        delay = 1'000'000;
        idle = 0;
      }
      // Timing a slice: a round at least every tenth of it (a G is preempted within the slice
      // plus one round), at most every 20 us.
      if (delay > g_slice_period_ns && watching_slices()) delay = g_slice_period_ns;
      sleep(delay);
      if (backstop_) refill_watchers();
      if (retake(nanotime()) > 0) {
        idle = 0;
        delay = min_delay;
      } else if (++idle > idle_rounds_ && delay < 10'000'000) {
        delay = std::min<std::int64_t>(delay * 2, 10'000'000);
      }
    }
  }

  static constexpr std::int64_t kMinBlockNs = 20'000;  // Go's minimum sysmon tick

  const bool backstop_;
  // Rounds at the shortest period before it doubles: Go's 50 under poll; 5 for the backstop,
  // so that each kick costs ~6 wakeups rather than ~55.
  const int idle_rounds_ = backstop_ ? 5 : 50;
  std::atomic<bool> started_{false};
  pthread_t thread_{};
  std::atomic<bool> stop_{false};
  std::atomic<bool> sleeping_{false};
  int evfd_ = -1, tfd_ = -1;
  std::atomic<bool> timer_armed_{false};
  std::atomic<bool> held_fast_{false};
  std::vector<Seen> seen_;
  std::vector<bool> missing_seen_;
};

void sysmon_kick_blocking() {
  if (g_sysmon != nullptr) g_sysmon->kick_blocking();
}
void sysmon_kick_held() {
  if (g_sysmon != nullptr) g_sysmon->kick_held();
}
void sysmon_kick_slice(P* p) {
  if (g_sysmon != nullptr) g_sysmon->kick_slice(p);
}

}  // namespace

void sysmon_kick() {
  if (g_sysmon != nullptr) g_sysmon->kick();
}

// ---- lifecycle ----

void handoff_init(bool hold_spares_wanted) {
  const Monitor::Traits& t = sched->monitor->traits;
  g_sees_blocks = t.sees_blocks;
  g_fell_back.store(false, std::memory_order_relaxed);
  // Held spares need the way back from SCHED_IDLE; moving a preempted M aside, from nice 10.
  // Probed once per process: each probe is a thread.
  static const bool can_idle = can_leave_sched_idle();
  static const bool can_nice = can_renice();
  g_can_lower = can_nice;
  sched->hold_spares = hold_spares_wanted && sched->cfg.pin && t.honours_held && can_idle;
  if (t.sees_blocks) {
    sched->watcher_missing =
        std::vector<std::atomic<bool>>(static_cast<std::size_t>(sched->nprocs));
    for (auto& w : sched->watcher_missing) w.store(true);
  }
  g_slice_ns = sched->cfg.preempt_slice.count();
  g_slice_period_ns = std::clamp<std::int64_t>(g_slice_ns / 10, 20'000, 1'000'000);
  g_slice_timers = g_slice_ns > 0 && t.slice_timers && !sched->shared_owned;
  if (g_slice_timers)
    std::atomic_ref<__u64>(sched->shared->hdr.preempt_slice_ns)
        .store(static_cast<__u64>(g_slice_ns), std::memory_order_release);
  g_sysmon = new Sysmon(t.sees_blocks);
}

void handoff_start_run() {
  if (!sched->monitor->traits.backstop_at_fallback) g_sysmon->start();
  // The kernel side's preemption words: published, then the fallback re-checked, so that a
  // monitor_fell_back that ran meanwhile (it clears the pointer) cannot leave it set behind it.
  if (std::uint32_t* words = sched->monitor->preempt_words) {
    sched->preempt_flags.store(words, std::memory_order_seq_cst);
    if (g_fell_back.load(std::memory_order_seq_cst))
      sched->preempt_flags.store(nullptr, std::memory_order_seq_cst);
  }
  if (g_sees_blocks)
    for (int i = 0; i < sched->nprocs; i++) start_watcher(i);
}

void monitor_fell_back() {
  g_fell_back.store(true, std::memory_order_seq_cst);
  sched->preempt_flags.store(nullptr, std::memory_order_seq_cst);
  // From the monitor's thread, a CFS thread: so is the sysmon thread it creates.
  g_sysmon->start();
}

void handoff_stop_run() { g_sysmon->stop(); }

void handoff_free() {
  delete g_sysmon;
  g_sysmon = nullptr;
  g_sees_blocks = false;
}

}  // namespace kgmp::internal
