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
