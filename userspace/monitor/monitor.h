// monitor.h — the monitors: how the kernel tells the runtime that an M blocked (DESIGN §4).
//
// A monitor is an event source. It tells the runtime that P p's holder blocked (an event that
// carries the lease word the kernel side saw), or that P p's watcher was woken; and it is told
// whom to wake (wake) and, through the memory it shares with BPF (kgmp_p_shared::spare_held),
// whom to hold. It never touches run queues, Ps or the scheduler's globals: the runtime acts
// on every event itself, by CAS on the lease (userspace/runtime/handoff.cpp owns the protocol).
//
//   poll   no event source: the runtime's sysmon (handoff.cpp) polls the leases of Ms inside
//          kgmp::blocking() with Go's back-off, as Go's sysmon does.
//   trace  bpf/kgmp_trace.bpf.c on tp_btf/sched_switch posts a block event on P p's ring buffer
//          when p's holder blocks in G code with work queued; p's watcher M waits on that ring.
//   scx    bpf/scx_kgmp.bpf.c, a sched_ext scheduler for the runtime's Ms (partial mode): a
//          waiting watcher is held runnable by the scheduler and dispatched on the blocked
//          holder's CPU, one context switch; trace runs beneath it and takes over if the kernel
//          ejects the scheduler (then the monitor says so through monitor_fell_back()).
//
// The runtime chooses the monitor once per run (run.cpp), logs the choice, and reads the
// monitor's name at any time (kgmp::monitor(), schedtrace), which changes from scx to trace at
// a fallback.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kgmp_trace.h"

namespace kgmp::internal {

struct Monitor {
  // What the runtime may expect of this monitor; fixed for the run.
  struct Traits {
    // The kernel reports blocks of any kind: the runtime gives every P a watcher, hands a P off
    // at kgmp::blocking() entry (Go's entersyscallblock: the kernel would report it anyway),
    // and runs its sysmon as the backstop for what the events miss.
    bool sees_blocks = false;
    // The BPF side skips the ring's wakeup for a watcher whose spare_held is HELD, so the
    // runtime may hold watchers runnable at SCHED_IDLE (held spares, handoff.cpp).
    bool honours_held = false;
    // The backstop starts only at monitor_fell_back(), not with the run (scx: the scheduler
    // hands off; a CFS backstop thread on a P's CPU only delays its SCHED_EXT Ms).
    bool backstop_at_fallback = false;
    // The kernel side times slices (arm_slice and PREEMPT events): trace. Elsewhere sysmon
    // does (poll), or the scheduler's own tick (scx).
    bool slice_timers = false;
  };
  enum class Wake { kTimeout, kEvent, kWoken };
  // What a kEvent carries: the lease word the kernel side saw, and why (KGMP_EV_BLOCK: the
  // holder blocked; KGMP_EV_PREEMPT: its G ran longer than the slice with work queued).
  struct Event {
    std::uint64_t lease = 0;
    std::uint32_t kind = KGMP_EV_BLOCK;
  };

  virtual ~Monitor() = default;
  // "poll", "trace" or "scx"; scx says "trace" once it fell back. Any thread.
  virtual const char* name() const = 0;
  // Starts the monitor's own threads, if any. Caller: run(), once the Ps and M0 exist.
  virtual void start() {}
  // Stops and joins them. Caller: run(), after the main G returned, before the Ms are joined.
  virtual void stop() {}
  // An M exists: the kernel side may watch its thread (slot < KGMP_MAX_MS). Caller: that M, on
  // its own thread, before it runs anything.
  virtual void register_m(int slot, pid_t tid) {}
  // Waits up to timeout_ms (-1: no limit) on P p's event source: kEvent with *ev set, kWoken
  // after wake(p) (or a spurious wake), kTimeout. Caller: p's watcher (M slot `slot`), P-less,
  // on its g0.
  virtual Wake wait(int p, int slot, int timeout_ms, Event* ev) { return Wake::kTimeout; }
  // Takes an event already posted for P p, without sleeping (a held watcher's poll; events
  // posted without a wakeup). Caller: p's watcher.
  virtual bool take(int p, Event* ev) { return false; }
  // Makes P p's watcher's current or next wait() return (kWoken at the latest). Any thread.
  virtual void wake(int p) {}
  // Starts P p's slice timer (Traits::slice_timers): the kernel side then posts a PREEMPT
  // event when p's G has run longer than the slice with work queued. Caller: p's holder, once
  // it CASed kgmp_p_shared::slice_armed IDLE -> ARMED.
  virtual void arm_slice(int p) {}

  Traits traits;
  // The memory shared with BPF (the mmap'd map), or null: the runtime allocates its own.
  kgmp_shared* shared = nullptr;
  // BPF's per-core counters (kgmp_trace.h), or null.
  const kgmp_cores* cores = nullptr;
  // Preemption requests raised by the kernel side, one word per M slot, or null (scx).
  std::uint32_t* preempt_words = nullptr;
  // One line for the log: what it is and why it was chosen.
  std::string reason;
};

// The one runtime entry point a monitor calls: the scx scheduler is gone (ejected, or left
// before the watchdog would eject it) and the runtime continues on the trace monitor beneath
// it: preemption requests stop and the backstop starts. Caller: the monitor's own thread,
// once, after its watchers no longer depend on the scheduler (handoff.cpp).
void monitor_fell_back();

std::unique_ptr<Monitor> make_poll_monitor();
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
