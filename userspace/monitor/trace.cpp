// trace.cpp — the trace monitor (DESIGN §4): the kernel reports blocks, a watcher takes the P.
//
// What: bpf/kgmp_trace.bpf.c, attached to tp_btf/sched_switch and sched_wakeup, sends an event
// on P p's ring buffer when the M holding p is switched out blocked (prev_state != 0) while its
// lease is USER and p (or the global queue) has work. One watcher M per P, pinned to p's CPU,
// is blocked on that ring (TraceBpf::Ring::wait); the event wakes it, it CASes the lease from
// exactly the word BPF saw (handoff_p) and runs p. The hand-off is one wakeup on the blocked
// M's own CPU: no monitor thread in between (latency-limits.md design C: 17 us p50 here).
//
// Invariants: at most one watcher per P (Sched::watcher_missing is claimed by exchange); an
// event is acted on only if its lease word is still current (a stale event fails the CAS); the
// BPF side never writes a lease.
//
// Misses: an event dropped on a full ring, or a block while the P has no watcher (the watcher
// took the P and the old M has not come back to replace it), is covered by the polling
// backstop (poll.cpp in backstop mode): it hands off Ps whose holder BPF saw blocked for a whole
// period and starts missing watchers. kgmp::blocking() hands the P off eagerly (Go's
// entersyscallblock): the kernel would report it anyway, this only saves the latency.
//
// Rejected: a monitor thread reading one ring for all Ps (two wakeups, 25-52 us: design B);
// bpf_send_signal to the spare (deferred through irq_work like the ring: no faster, design G);
// a spare kept runnable at SCHED_IDLE (3.6 us, but the core never halts: that is the scx
// monitor's job, where the scheduler holds the spare without burning the core).
#include <cerrno>
#include <vector>

#include "monitor.h"
#include "sched.h"

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
      : bpf_(std::move(bpf)), rings_(std::move(rings)), backstop_(make_poll_monitor(true)) {}

  const char* name() const override { return "trace"; }
  kgmp_shared* shared() override { return bpf_->shared(); }
  const kgmp_cores* cores() const override { return bpf_->cores(); }
  void start() override { backstop_->start(); }
  void stop() override {
    for (auto& r : rings_) r->wake();
    backstop_->stop();
  }
  void enter_blocking(M*) override {}
  bool eager_blocking() const override { return true; }
  void kick() override { backstop_->kick(); }

  void register_m(M* m) override {
    if (m->id < KGMP_MAX_MS) {
      absl::Status s = bpf_->register_m(m->tid, static_cast<unsigned>(m->id));
      if (!s.ok()) __atomic_fetch_add(&bpf_->shared()->hdr.register_failed, 1, __ATOMIC_RELAXED);
    }
  }
  void unregister_m(M* m) override {
    if (m->id < KGMP_MAX_MS) (void)bpf_->unregister_m(m->tid);
  }

  bool has_watchers() const override { return true; }

  int watch(int p, std::uint64_t* lease, int timeout_ms) override {
    TraceBpf::Ring& ring = *rings_[static_cast<std::size_t>(p)];
    for (;;) {
      int r = ring.wait(timeout_ms);
      if (r == -EINTR) continue;
      if (r != 1) return r == 2 ? 2 : 0;
      // Several events may be pending (a P blocked twice): only the newest lease can win.
      bool any = false;
      ring.consume([&](const kgmp_block_event& ev) {
        *lease = ev.lease;
        any = true;
      });
      if (any) return 1;
    }
  }

  void wake_watcher(int p) override { rings_[static_cast<std::size_t>(p)]->wake(); }

 private:
  std::unique_ptr<TraceBpf> bpf_;
  std::vector<std::unique_ptr<TraceBpf::Ring>> rings_;
  std::unique_ptr<Monitor> backstop_;
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
