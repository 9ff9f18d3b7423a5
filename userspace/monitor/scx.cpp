// scx.cpp — the scx monitor (DESIGN §4): the project's sched_ext scheduler holds each core's
// waiting watcher runnable and dispatches it the moment the P's holder blocks, so a hand-off
// costs one context switch.
//
// What: ScxMonitor = a trace monitor (kgmp_trace attached, its per-P rings) + scx_kgmp
// (scx_bpf.h) attached on top, sharing trace's maps. Every M switches itself to SCHED_EXT when
// it registers (partial mode: nothing else of the machine is affected). A watcher that waits
// without a deadline does not sleep on the ring: it sets hold[slot] = p+1 and calls
// sched_yield(); the scheduler parks it in P p's park DSQ (runnable, not running, the core may
// halt). When the holder blocks with work queued, ops.stopping records the lease word and the
// ops.dispatch that follows on the same CPU moves the watcher to run next; wait() returns the
// word (handoff_lease[p], xchg) for the runtime to CAS from.
//
// Invariants:
//   - A watcher is held only while it waits without a deadline (timeout_ms < 0). With a timer
//     pending it waits on the ring like trace (the scheduler's cycling period, timeout/5, is far
//     coarser than timers need).
//   - hold[slot] is cleared before wait() returns, so an M that is no longer a watcher is never
//     parked.
//
// Ejection (watchdog, scx_bpf_error, sysrq-S, unregistration by anyone): ops.exit fills the
// exit record; the ejection thread sees it (ScxBpf::exited()) within kPollMs, logs
// "kgmp: scx scheduler ejected (<reason>); continuing on trace", and retires: block events wake
// their rings again (hdr.scx_active = 0) before any watcher leaves the scheduler's hold (alive_),
// the runtime is told (monitor_fell_back: no more preemption requests, the backstop starts),
// the Ms go back to SCHED_OTHER and the link is destroyed. No G is lost: the kernel moves every
// SCHED_EXT task back to CFS, so a held watcher runs at once, and the backstop covers any block
// seen by neither side in the window.
//
// Starvation: partial mode runs SCHED_EXT tasks only when CFS has nothing to run on the CPU.
// Under a CFS hog the Ms would wait until the watchdog ejects the scheduler (a "runnable task
// stall", dmesg noise and a freeze). The program flags a CPU whose Ms waited starve_ns
// (min(timeout/2, 2.5 s)) without the CPU ever turning to sched_ext; the ejection thread then
// leaves scx for trace by itself ("kgmp: scx scheduler left (...)"), before the watchdog would.
//
// The backstop starts only at that fallback (Traits::backstop_at_fallback): while the scheduler
// hands off it is not needed, and as a CFS thread it runs before every SCHED_EXT M of its CPU,
// so under TCG its 1-10 ms rounds (2.5 ms of CPU each there) starved the Ms past the bound and
// the runtime left scx.
//
// Rejected: a separate scx-only watcher protocol in the runtime (trace's fits: only wait()
// differs); polling /sys/kernel/sched_ext/state alone (it cannot tell our exit from another
// scheduler's, and has no reason); epoll on the struct_ops link fd (not pollable on the oldest
// sched_ext kernels; polling every 20 ms costs nothing).
#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "monitor.h"

#ifdef KGMP_HAVE_SCX
#include "scx_bpf.h"
#endif

namespace kgmp::internal {

#ifndef KGMP_HAVE_SCX
absl::StatusOr<std::unique_ptr<Monitor>> make_scx_monitor(int, const int*) {
  return absl::UnavailableError(
      "this build has no scx monitor (configure with -DKGMP_SCX_VMLINUX_H=<vmlinux.h of a "
      "sched_ext kernel>; vm-test/run does)");
}
#else
namespace {

constexpr int kSchedExt = 7;  // SCHED_EXT (not in glibc's headers)
constexpr int kPollMs = 20;
// The sched_ext watchdog's timeout (KGMP_SCX_TIMEOUT_MS overrides). Generous: the kernel also
// ejects the scheduler when its own watchdog work (a CFS kworker) is late by this much, which
// a loaded machine (or a TCG guest on a shared host: 5 s was hit) can cause; our own
// protections (spare cycling, starvation) do not depend on it.
constexpr unsigned kTimeoutMs = 20000;

unsigned env_unsigned(const char* name, unsigned dflt) {
  const char* e = std::getenv(name);
  if (e == nullptr || *e == '\0') return dflt;
  char* end = nullptr;
  unsigned long v = std::strtoul(e, &end, 10);
  return end != nullptr && *end == '\0' ? static_cast<unsigned>(v) : dflt;
}

class ScxMonitor final : public Monitor {
 public:
  ScxMonitor(std::unique_ptr<Monitor> trace, std::unique_ptr<ScxBpf> scx, int nprocs)
      : trace_(std::move(trace)), scx_(std::move(scx)), nprocs_(nprocs) {
    traits.sees_blocks = true;
    traits.backstop_at_fallback = true;
    shared = trace_->shared;
    cores = trace_->cores;
    preempt_words = scx_->state()->preempt;
    std::atomic_ref<__u32>(shared->hdr.scx_active).store(1, std::memory_order_release);
    // Started here, not in start(): run() calls start() on M0 after M0 switched to SCHED_EXT,
    // and a starved M0 would never start the thread that notices the starvation. Created
    // before any M exists, it is a CFS thread on the process's whole affinity mask, so it runs
    // even when the CPU of the starved Ms is saturated.
    ejection_ = std::thread([this] { ejection_loop(); });
  }

  ~ScxMonitor() override {
    stop_ejection_thread();
    scx_.reset();
  }

  const char* name() const override {
    return alive_.load(std::memory_order_acquire) ? "scx" : "trace";
  }

  void stop() override {
    stop_ejection_thread();
    if (const char* e = std::getenv("KGMP_SCX_STATS"); e != nullptr && *e == '1') print_stats();
    retire("");
  }

  // Caller: the new M, on its own thread.
  void register_m(int slot, pid_t tid) override {
    trace_->register_m(slot, tid);
    {
      std::lock_guard<std::mutex> g(mu_);
      tids_.push_back(tid);
    }
    sched_param sp{};
    if (alive_.load(std::memory_order_acquire)) {
      if (sched_setscheduler(0, kSchedExt, &sp) != 0)
        setsched_failed_.fetch_add(1, std::memory_order_relaxed);
    } else if (sched_getscheduler(0) == kSchedExt) {
      // Created by an M still SCHED_EXT just before retire() switched the Ms back, and
      // registered after retire() read the list: it inherited SCHED_EXT and nobody else will
      // take it back to CFS (left there, a CPU busy with CFS tasks starves it until the
      // watchdog ejects the scheduler).
      (void)sched_setscheduler(0, SCHED_OTHER, &sp);
    }
  }

  Wake wait(int p, int slot, int timeout_ms, Event* evt) override {
    if (timeout_ms >= 0 || slot < 0 || slot >= KGMP_MAX_MS || !alive_.load(std::memory_order_acquire))
      return trace_->wait(p, slot, timeout_ms, evt);
    kgmp_scx_state* st = scx_->state();
    std::atomic_ref<__u32> hold(st->hold[slot]);
    std::atomic_ref<__u64> ev(st->handoff_lease[p]);
    hold.store(static_cast<__u32>(p + 1), std::memory_order_seq_cst);
    Wake r = Wake::kTimeout;
    for (;;) {
      if (__u64 l = ev.exchange(0, std::memory_order_acq_rel); l != 0) {
        evt->lease = l;
        evt->kind = KGMP_EV_BLOCK;
        r = Wake::kEvent;
        break;
      }
      // The ring: a second source of the same event, and wake()'s eventfd.
      if ((r = trace_->wait(p, slot, 0, evt)) != Wake::kTimeout) break;
      if (!alive_.load(std::memory_order_acquire)) break;
      sched_yield();  // parked by the scheduler until released
    }
    hold.store(0, std::memory_order_release);
    if (r != Wake::kTimeout) return r;
    return trace_->wait(p, slot, timeout_ms, evt);  // ejected meanwhile: trace
  }

  bool take(int p, Event* ev) override { return trace_->take(p, ev); }

  void wake(int p) override {
    trace_->wake(p);
    if (alive_.load(std::memory_order_acquire)) (void)scx_->release(p);
  }

 private:
  // KGMP_SCX_STATS=1: one line of the scheduler's counters (summed over CPUs) and anomalies at
  // stop, for tests and benchmarks to see what the scheduler did.
  void print_stats() {
    const kgmp_scx_state* st = scx_->state();
    kgmp_scx_core sum{};
    for (const kgmp_scx_core& c : st->core) {
      sum.ticks += c.ticks;
      sum.blocks += c.blocks;
      sum.releases += c.releases;
      sum.handoffs += c.handoffs;
      sum.parks += c.parks;
      sum.holder_first += c.holder_first;
      sum.preempt_reqs += c.preempt_reqs;
      sum.dispatches += c.dispatches;
      sum.lost_wakeups += c.lost_wakeups;
      sum.hold_run += c.hold_run;
      sum.yields += c.yields;
      sum.enqueues += c.enqueues;
      sum.handoffs_queued += c.handoffs_queued;
    }
    auto u = [](__u64 v) { return static_cast<unsigned long long>(v); };
    fprintf(stderr,
            "kgmp: scx stats: alive=%d blocks=%llu handoffs=%llu handoffs_queued=%llu "
            "releases=%llu parks=%llu holder_first=%llu lost_wakeups=%llu hold_run=%llu "
            "yields=%llu enqueues=%llu dispatches=%llu ticks=%llu preempt_reqs=%llu "
            "setsched_failed=%ld anomalies=",
            alive_.load() ? 1 : 0, u(sum.blocks), u(sum.handoffs), u(sum.handoffs_queued),
            u(sum.releases), u(sum.parks), u(sum.holder_first), u(sum.lost_wakeups),
            u(sum.hold_run), u(sum.yields), u(sum.enqueues), u(sum.dispatches), u(sum.ticks),
            u(sum.preempt_reqs), setsched_failed_.load());
    for (int i = 0; i < KGMP_SCX_A_NR; i++) fprintf(stderr, "%s%llu", i ? "," : "", u(st->anomalies[i]));
    fprintf(stderr, " last_foreign_tid=%u pid=%d\n", st->last_foreign_tid, getpid());
  }

  void stop_ejection_thread() {
    {
      std::lock_guard<std::mutex> g(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (ejection_.joinable()) ejection_.join();
  }

  void ejection_loop() {
    std::unique_lock<std::mutex> l(mu_);
    while (!stopping_) {
      cv_.wait_for(l, std::chrono::milliseconds(kPollMs));
      if (stopping_) break;
      kgmp_scx_state* st = scx_->state();
      if (scx_->exited()) {
        l.unlock();
        retire("kgmp: scx scheduler ejected (" + scx_->exit_reason() + "); continuing on trace");
        return;
      }
      if (__u32 c = std::atomic_ref<__u32>(st->starved).load(std::memory_order_acquire); c != 0) {
        l.unlock();
        retire("kgmp: scx scheduler left (the Ms of CPU " + std::to_string(c - 1) +
               " waited too long: CFS tasks run before SCHED_EXT ones in partial mode, and the "
               "watchdog would eject it); continuing on trace");
        return;
      }
    }
  }

  // Leaves scx for trace, once (see the design comment). line: logged if not empty (empty: the
  // run is stopping, the runtime needs no fallback).
  void retire(const std::string& line) {
    if (retired_.exchange(true)) return;
    // Block events wake their ring again before any watcher leaves the scheduler's hold for a
    // ring wait (alive_ below): one posted without a wakeup after it went to sleep would be
    // lost. What came before, wait() reads first.
    std::atomic_ref<__u32>(shared->hdr.scx_active).store(0, std::memory_order_seq_cst);
    alive_.store(false, std::memory_order_seq_cst);
    // The preemption words stay mapped until this monitor is deleted, after run() ends, so an
    // M that read the pointer just before the runtime clears it reads valid memory.
    if (!line.empty()) {
      monitor_fell_back();
      fprintf(stderr, "%s\n", line.c_str());
    }
    std::vector<pid_t> tids;
    {
      std::lock_guard<std::mutex> g(mu_);
      tids = tids_;
    }
    sched_param sp{};
    for (pid_t t : tids) (void)sched_setscheduler(t, SCHED_OTHER, &sp);
    scx_->detach();
    for (int p = 0; p < nprocs_; p++) trace_->wake(p);
  }

  std::unique_ptr<Monitor> trace_;
  std::unique_ptr<ScxBpf> scx_;
  int nprocs_;
  std::atomic<bool> alive_{true};
  std::atomic<bool> retired_{false};
  std::atomic<long> setsched_failed_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;      // guarded by mu_
  std::vector<pid_t> tids_;    // guarded by mu_: every registered M's tid
  std::thread ejection_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Monitor>> make_scx_monitor(int nprocs, const int* cpus) {
  int shared_fd = -1, tids_fd = -1;
  absl::StatusOr<std::unique_ptr<Monitor>> trace = make_trace_monitor(nprocs, &shared_fd, &tids_fd);
  if (!trace.ok())
    return absl::Status(trace.status().code(),
                        "the trace monitor beneath it failed: " + std::string(trace.status().message()));
  absl::StatusOr<std::unique_ptr<ScxBpf>> scx =
      ScxBpf::open(nprocs, cpus, shared_fd, tids_fd, env_unsigned("KGMP_SCX_TIMEOUT_MS", kTimeoutMs),
                   env_unsigned("KGMP_SCX_TEST_ERROR_MS", 0),
                   env_unsigned("KGMP_SCX_TEST_STALL", 0) == 1);
  if (!scx.ok()) return scx.status();
  auto mon = std::make_unique<ScxMonitor>(std::move(*trace), std::move(*scx), nprocs);
  mon->reason = "sched_ext scheduler scx_kgmp attached (partial mode), trace beneath it";
  return mon;
}
#endif

}  // namespace kgmp::internal
