// trace.cpp — the trace monitor (DESIGN §4): block events from tp_btf/sched_switch, one ring
// buffer per P.
//
// What: bpf/kgmp_trace.bpf.c posts a kgmp_block_event on P p's ring when the M holding p is
// switched out blocked (prev_state != 0) while its lease is USER and work is queued
// (kgmp_work_queued in kgmp_trace.h). P p's watcher M waits on that ring (wait); the event
// carries the lease word BPF read, and the runtime CASes the lease from exactly that word
// (handoff.cpp). The hand-off is one wakeup on the blocked M's own CPU, no monitor thread in
// between.
//
// Waking: the ring's epoll set also holds an eventfd, so wake(p) makes a wait return; it counts
// wakes into one, which is why every wake goes back to the runtime (it may be the runtime's
// stop folded into a hold request, and only the runtime knows which).
//
// Events without a wakeup: BPF posts without waking when the watcher reads the ring anyway (its
// spare_held is HELD, or the scx scheduler holds it: hdr.scx_active). Such events do not make
// the ring readable for epoll, so wait() consumes the ring before it sleeps, and take() is the
// held watcher's poll.
//
// Rejected: a monitor thread reading one ring for all Ps (two wakeups per hand-off: 25-52 us
// here against 17 us for one); bpf_send_signal to the watcher (deferred through irq_work like
// the ring's wakeup: no faster).
#include <atomic>
#include <cerrno>

#include "monitor.h"

#ifdef KGMP_HAVE_BPF
#include "trace_bpf.h"
#endif

namespace kgmp::internal {

#ifndef KGMP_HAVE_BPF
absl::StatusOr<std::unique_ptr<Monitor>> make_trace_monitor(int, int*, int*) {
  return absl::UnavailableError(
      "this build has no BPF support (cmake found no BTF, clang-19, bpftool >= 7.5 or libbpf >= 1.4)");
}
#else
namespace {

class TraceMonitor final : public Monitor {
 public:
  TraceMonitor(std::unique_ptr<TraceBpf> bpf, std::vector<std::unique_ptr<TraceBpf::Ring>> rings)
      : bpf_(std::move(bpf)), rings_(std::move(rings)) {
    traits.sees_blocks = true;
    traits.honours_held = true;
    traits.slice_timers = true;
    shared = bpf_->shared();
    cores = bpf_->cores();
  }

  const char* name() const override { return "trace"; }

  void register_m(int slot, pid_t tid) override {
    if (slot >= KGMP_MAX_MS) return;
    if (!bpf_->register_m(tid, static_cast<unsigned>(slot)).ok())
      __atomic_fetch_add(&shared->hdr.register_failed, 1, __ATOMIC_RELAXED);
  }

  Wake wait(int p, int, int timeout_ms, Event* ev) override {
    TraceBpf::Ring& ring = *rings_[static_cast<std::size_t>(p)];
    for (;;) {
      if (take_event(ring, ev)) return Wake::kEvent;
      int r = ring.wait(timeout_ms);
      if (r == -EINTR) continue;
      if (r == 1) continue;  // readable: consumed at the top
      return r == 2 ? Wake::kWoken : Wake::kTimeout;
    }
  }

  bool take(int p, Event* ev) override {
    return take_event(*rings_[static_cast<std::size_t>(p)], ev);
  }

  void wake(int p) override { rings_[static_cast<std::size_t>(p)]->wake(); }

  void arm_slice(int p) override { bpf_->arm_slice(p); }

 private:
  // Several events may be pending (a P blocked twice): only the newest lease can win.
  static bool take_event(TraceBpf::Ring& ring, Event* out) {
    bool any = false;
    ring.consume([&](const kgmp_block_event& ev) {
      out->lease = ev.lease;
      out->kind = ev.kind;
      any = true;
    });
    return any;
  }

  std::unique_ptr<TraceBpf> bpf_;
  std::vector<std::unique_ptr<TraceBpf::Ring>> rings_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Monitor>> make_trace_monitor(int nprocs, int* shared_fd,
                                                            int* tids_fd) {
  if (absl::Status v = check_libbpf_version(); !v.ok()) return v;
  absl::StatusOr<std::unique_ptr<TraceBpf>> bpf = TraceBpf::open(nprocs);
  if (!bpf.ok()) return bpf.status();
  if (shared_fd != nullptr) *shared_fd = (*bpf)->shared_map_fd();
  if (tids_fd != nullptr) *tids_fd = (*bpf)->tids_map_fd();
  std::vector<std::unique_ptr<TraceBpf::Ring>> rings;
  for (int p = 0; p < nprocs; p++) {
    absl::StatusOr<std::unique_ptr<TraceBpf::Ring>> r = (*bpf)->open_ring(p);
    if (!r.ok()) return r.status();
    rings.push_back(std::move(*r));
  }
  auto mon = std::make_unique<TraceMonitor>(std::move(*bpf), std::move(rings));
  mon->reason = std::string("tp_btf/sched_switch attached, libbpf ") + TraceBpf::libbpf_version();
  return mon;
}
#endif

}  // namespace kgmp::internal
