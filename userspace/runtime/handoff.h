// handoff.h — the hand-off protocol: taking a P from a blocked M (handoff.cpp has the essay).
//
// The runtime's entries into the protocol: the lease at every runtime entry and exit, the
// syscall hooks, preemption requests, the watcher's life, held spares, and sysmon (the poll
// monitor's retake and the backstop of the monitors that see blocks).
#pragma once

#include <atomic>
#include <cstdint>

#include "sched.h"

namespace kgmp::internal {

// ---- the orphan gate ----
//
// When main returns, run() abandons (orphans) every M that is running G code then, and so may
// never reach a scheduling point (a goroutine computing, or blocked in the kernel), so that
// run() can return (Go exits the process instead); run.cpp's reap_ms is that side. Such an M
// must never touch the runtime again, whose memory run() frees: at its next runtime entry it
// parks for good. The race is the entry itself, at any instant, against run() freeing what the
// entry reads. It is an asymmetric Dekker: the M stores its depth 0 -> 1 (a plain store), then
// reads its orphan mark, with only a compiler barrier between; run() marks it, runs
// membarrier(2) (a full barrier on every CPU that runs one of the process's threads), then
// reads its depth. If run() reads 0, the M's store comes after that barrier, so the M's read
// sees the mark and it parks before touching anything else; if run() reads 1, run() waits for
// it to park or to exit. The hot path pays one load of the M's own line.
//
// gate_in: the depth +1 and, at 0 -> 1, the mark's check; returns the depth before. Caller:
// m itself, first thing at a runtime entry from G code, before anything reads the scheduler.
[[noreturn]] void park_orphan(M* m);
inline int gate_in(M* m) {
  int d = m->rt_depth++;
  if (d == 0) {
    std::atomic_signal_fence(std::memory_order_seq_cst);
    if (__builtin_expect(m->orphan.load(std::memory_order_relaxed) != Orphan::kNo, 0))
      park_orphan(m);
  }
  return d;
}
// Through the gate for a short read of the runtime from G code that needs no lease (the P may
// be taken meanwhile, as in G code): a timer's insertion, a preemption check. Caller: any
// thread (a no-op outside the runtime's Ms).
class GateScope {
 public:
  GateScope() : m_(getm()) {
    if (m_ != nullptr) gate_in(m_);
  }
  ~GateScope() {
    if (m_ != nullptr) --m_->rt_depth;
  }
  GateScope(const GateScope&) = delete;
  GateScope& operator=(const GateScope&) = delete;

 private:
  M* m_;
};
// Bumped (and woken) each time an M parks as an orphan or exits: what reap_ms sleeps on.
extern std::atomic<std::uint32_t> reap_seq;

// Runtime entry from G code (DESIGN §3): enter_runtime CASes the lease USER -> RUNTIME at
// depth 0 -> 1 and, if the P was taken while the M was blocked, gets a P back (its own core's
// if idle) or requeues the G and parks the M as a spare (the G resumes later, possibly on
// another M: re-read getm() after). It also consumes a pending preemption request.
// exit_runtime stores USER at depth 1 -> 0. RuntimeScope pairs them. Caller: any G (no-op
// outside the runtime); never while holding a lock another G may spin on.
void enter_runtime();
void exit_runtime();
struct RuntimeScope {
  RuntimeScope() { enter_runtime(); }
  ~RuntimeScope() { exit_runtime(); }
  RuntimeScope(const RuntimeScope&) = delete;
  RuntimeScope& operator=(const RuntimeScope&) = delete;
};

// USER -> RUNTIME by CAS from the word this M stored last: false if the P was handed off.
// Caller: m, at runtime entry (depth 0 -> 1), m->p non-null.
bool lease_enter(M* m, P* p);

// The lease checker (tests, set_lease_check_for_test): records which M is inside the runtime
// on p and counts two at once as a violation. Caller: the M taking or leaving RUNTIME on p.
extern std::atomic<bool> lease_check;
extern std::atomic<std::uint64_t> lease_violations;
// Under the lease checker: runtime exits that found p's published queue length 0 while its ring
// held Gs (a stale-low runq_len: BPF would not report a block then).
extern std::atomic<std::uint64_t> stale_runq_len;
void owner_in_slow(P* p, M* m);
inline void owner_in(P* p, M* m) {
  if (__builtin_expect(lease_check.load(std::memory_order_relaxed), 0)) owner_in_slow(p, m);
}
inline void owner_out(P* p) {
  if (__builtin_expect(lease_check.load(std::memory_order_relaxed), 0))
    p->rt_owner.store(-1, std::memory_order_release);
}

// m learned at a runtime entry that its P was taken: undoes what a preemption did to it (its
// thread's policy). Caller: m, P-less, in the runtime.
void notice_lost(M* m);

// p goes idle: the M last moved aside when p was preempted from it (still running its G
// P-less) gets its own nice back, since nothing waits for the CPU now. Caller: p's holder,
// releasing it to idle.
void restore_aside(P* p);

// The M's pending preemption request word, or null. Caller: m, any state.
std::uint32_t* preempt_requested(M* m);

// ---- watchers (monitors whose Traits::sees_blocks) ----

// An M about to park without a P becomes its core's watcher if that P has none. Caller: m.
bool become_watcher(M* m);
// Waits as P m->watch_p's watcher until it takes that P (a block event whose lease it wins, a
// due timer on an idle P or behind a blocked holder); returns true holding it, false once the
// runtime stops. Caller: m, a watcher, P-less, on g0.
bool watch_for_p(M* m);
// If P p has no watcher, makes an M of p's core its watcher: a parked spare, else a new
// thread. Caller: any thread.
void start_watcher(int p);
// A timer at `when` became a P's earliest: wakes the watchers that sleep past it, so that a
// due timer behind a holder blocked without work queued still fires. Caller: anyone.
void poke_watchers(std::int64_t when);

// ---- lifecycle (run.cpp) ----

// Chooses what the protocol does for this run's monitor (watchers, eager kgmp::blocking, held
// spares, sysmon's mode). Caller: run(), after the monitor and the Ps exist, before any M.
void handoff_init(bool hold_spares_wanted);
// Starts sysmon unless the monitor defers it (scx), and publishes the monitor's preemption
// words. Caller: run(), after the monitor started.
void handoff_start_run();
// Wakes every watcher so that it sees the stop. Caller: begin_stop, stopping already set.
void wake_watchers();
// Stops and joins sysmon. Caller: run(), after the main G returned and the monitor stopped.
void handoff_stop_run();
// Frees what handoff_init made. Caller: run()'s teardown, every M joined.
void handoff_free();

// Something changed that sysmon in backstop mode must look at now: work reached the global
// queue while no P is idle (a holder blocked without an event may now have work). Cheap when
// sysmon is awake. Caller: any thread.
void sysmon_kick();

}  // namespace kgmp::internal
