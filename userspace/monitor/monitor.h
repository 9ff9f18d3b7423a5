// monitor.h — how the runtime learns that an M blocked in the kernel (DESIGN §4).
//
// Three implementations behind one interface, the best available chosen at start
// (KGMP_MONITOR=auto|trace|poll overrides; the choice is logged once with its reason):
//   poll   Go's sysmon: a thread checks the leases with Go's back-off (20 us doubling to 10 ms)
//          and hands off a P whose M has been inside kgmp::blocking() for a whole period.
//   trace  bpf/kgmp_trace.bpf.c on tp_btf/sched_switch reports a block of an M whose lease is
//          USER while its P has work, on that P's ring buffer; the core's watcher M, blocked on
//          the ring, takes the P by CAS and runs it: one wakeup, no monitor thread in between.
//   scx    bpf/scx_kgmp.bpf.c, a sched_ext scheduler for the Ms only (partial mode): the core's
//          watcher M is kept runnable but held by the scheduler and dispatched the moment the
//          P-holder blocks (scx.cpp); trace runs beneath it as a hot standby, and takes over
//          if the kernel ejects the scheduler.
// Whatever the monitor, a P is only ever taken by CAS from a USER lease (handoff_p), so the
// runtime's own code never loses its P mid-operation.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kgmp_trace.h"

namespace kgmp::internal {

struct M;

struct Monitor {
  virtual ~Monitor() = default;
  virtual const char* name() const = 0;
  // The memory shared with BPF (the mmap'd map), or nullptr: the runtime allocates its own.
  virtual kgmp_shared* shared() { return nullptr; }
  // The BPF per-core telemetry counters (kgmp_trace.h), or nullptr when the monitor has none.
  virtual const kgmp_cores* cores() const { return nullptr; }
  // Starts the monitor's threads. Caller: run(), once the Ps and M0 exist.
  virtual void start() = 0;
  // Stops and joins them. Caller: run(), after the main G returned, before the Ms are joined.
  virtual void stop() = 0;
  // m entered kgmp::blocking() (in_blocking published). Caller: m, on its G.
  virtual void enter_blocking(M* m) = 0;
  // An M was created: the monitor may watch it (trace: register its tid). Caller: the new M.
  virtual void register_m(M* m) {}
  virtual void unregister_m(M* m) {}
  // Hand the P off at kgmp::blocking() entry (Go's entersyscallblock) rather than wait to
  // see the block: monitors that see blocks themselves do, so a marked call costs no latency.
  virtual bool eager_blocking() const { return false; }
  // Monitors whose spare Ms wait on a per-P event source (trace): one "watcher" M per P (of
  // that P's core) blocks in watch(p) until a block event for P p arrives.
  // watch() waits up to timeout_ms (-1: no limit) and returns 1 with *lease set for an event,
  // 2 if woken by wake_watcher(p), 0 on timeout.
  virtual bool has_watchers() const { return false; }
  virtual int watch(int p, std::uint64_t* lease, int timeout_ms) { return 0; }
  virtual void wake_watcher(int p) {}
  // Whether watchers may be held runnable at SCHED_IDLE (trace: kgmp_p_shared::spare_held, set
  // by the runtime when pinned and KGMP_TRACE_SPARE allows; see trace.cpp).
  virtual bool can_hold_spares() const { return false; }
  // P p's watcher is held (spare_held == HELD): if it has been held, unrun, for so long that
  // the pages of its path have gone cold (kStaleHoldNs in trace.cpp), run it through its hold
  // loop once now, while the caller still runs, and return true; the caller then yields until
  // it is HELD again. Caller: p's holder, in exit_runtime with work queued.
  virtual bool refresh_held_watcher(int p) { return false; }
  // Something changed that the polling backstop should look at now (a P left the idle list,
  // a watcher took its P). Cheap when nothing sleeps. Caller: any thread.
  virtual void kick() {}
  // A watcher is now held runnable at SCHED_IDLE (trace): the polling backstop covers the case
  // where other tasks on its CPU starve it. Caller: that watcher.
  virtual void kick_held() {}
  // One line for the log: what it is and why it was chosen.
  std::string reason;
};

// backstop = false: the poll monitor (kgmp::blocking sections only). backstop = true: the
// polling half of the trace monitor: it also hands off Ps whose holder BPF saw blocked (a
// dropped event, or no watcher on the core), and replaces missing watchers.
std::unique_ptr<Monitor> make_poll_monitor(bool backstop = false);
// Fails with a one-line reason (no privileges, no BTF, built without BPF, load failure).
// shared_fd/tids_fd, if given, receive the fds of its kgmp_shared and kgmp_tids maps (owned by
// the monitor), for the scx monitor to share.
absl::StatusOr<std::unique_ptr<Monitor>> make_trace_monitor(int nprocs, int* shared_fd = nullptr,
                                                            int* tids_fd = nullptr);
// The scx monitor on top of a trace monitor it creates: fails with a one-line reason (no
// sched_ext, not root, another scheduler loaded, built without a sched_ext vmlinux.h, or any
// reason trace fails). cpus: the CPU of each P.
absl::StatusOr<std::unique_ptr<Monitor>> make_scx_monitor(int nprocs, const int* cpus);

}  // namespace kgmp::internal
