// poll.cpp — the poll monitor: Go's sysmon retake loop, for kgmp::blocking() sections.
//
// What: one thread that wakes every `delay` (20 us, doubling after 50 idle rounds up to 10 ms,
// Go's back-off), looks at every P's lease, and hands off a P whose holder has been inside
// kgmp::blocking() with the same lease word for a whole period (so at least 20 us), if the P
// has work or the M has been blocked for 10 ms (Go's retake rule).
//
// Idle cost: the thread sleeps on a futex with no deadline while no M is inside a blocking
// section or every P is idle (Go's sysmonwait); enter_blocking() wakes it. So a runtime whose
// Gs are all parked costs nothing, as in Go.
//
// Rejected: polling every P's lease without back-off (11-28 % of a core on the development
// machine, latency-limits.md D1/D2); signals to the blocked M (it is in the kernel: nothing to
// run there).
#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <vector>

#include "monitor.h"
#include "sched.h"
#include "timer.h"

namespace kgmp::internal {
namespace {

class PollMonitor final : public Monitor {
 public:
  explicit PollMonitor(bool backstop) : backstop_(backstop) {}
  const char* name() const override { return "poll"; }
  void kick() override {
    if (sleeping_.load(std::memory_order_seq_cst)) note_.wakeup();
  }

  void start() override {
    seen_.assign(static_cast<std::size_t>(sched->nprocs), Seen{});
    missing_seen_.assign(sched->watcher_missing.size(), false);
    pthread_create(&thread_, nullptr, [](void* self) -> void* {
      static_cast<PollMonitor*>(self)->loop();
      return nullptr;
    }, this);
  }

  void stop() override {
    stop_.store(true, std::memory_order_release);
    note_.wakeup();
    pthread_join(thread_, nullptr);
  }

  void enter_blocking(M*) override {
    if (sleeping_.load(std::memory_order_seq_cst)) note_.wakeup();
  }

 private:
  struct Seen {
    LeaseWord lease = 0;
    std::int64_t since = 0;
  };

  // Go's retake: returns how many Ps were handed off.
  int retake(std::int64_t now) {
    int n = 0;
    for (int i = 0; i < sched->nprocs; i++) {
      P* p = &sched->allp[i];
      LeaseWord w = lease_ref(p).load(std::memory_order_acquire);
      Seen& s = seen_[static_cast<std::size_t>(i)];
      if (KGMP_LEASE_STATE(w) != KGMP_LEASE_USER) continue;
      M* holder = sched->m_by_id[KGMP_LEASE_HOLDER(w)].load(std::memory_order_acquire);
      if (holder == nullptr || !blocked(holder)) continue;
      if (s.lease != w) {  // first sighting of this blocking section: wait one period
        s.lease = w;
        s.since = now;
        continue;
      }
      if (!p_has_work(p) && now - s.since < 10'000'000) continue;
      if (handoff_p(p, w)) {
        handoff_start(p);
        n++;
      }
    }
    return n;
  }

  // Inside kgmp::blocking(), or (backstop) switched out blocked as BPF last saw it.
  bool blocked(M* m) const {
    if (__atomic_load_n(&m->sh->in_blocking, __ATOMIC_ACQUIRE) != 0) return true;
    return backstop_ && __atomic_load_n(&m->sh->last_block_ns, __ATOMIC_ACQUIRE) >
                            __atomic_load_n(&m->sh->last_wake_ns, __ATOMIC_ACQUIRE);
  }

  // Backstop: a pool whose watcher took its P and that no returning M refilled within a
  // period gets a new one.
  void refill_watchers() {
    for (std::size_t i = 0; i < sched->watcher_missing.size(); i++) {
      bool missing = sched->watcher_missing[i].load(std::memory_order_acquire);
      if (missing && missing_seen_[i]) start_watcher(static_cast<int>(i));
      missing_seen_[i] = missing;
    }
  }

  bool nothing_to_watch() const {
    if (sched->npidle.load(std::memory_order_seq_cst) == sched->nprocs) return true;
    return !backstop_ && sched->nblocking.load(std::memory_order_seq_cst) == 0;
  }

  void loop() {
    std::int64_t delay = 20'000;
    int idle = 0;
    while (!stop_.load(std::memory_order_acquire)) {
      if (nothing_to_watch()) {
        sleeping_.store(true, std::memory_order_seq_cst);
        if (nothing_to_watch() && !stop_.load(std::memory_order_acquire)) note_.sleep();
        sleeping_.store(false, std::memory_order_relaxed);
        note_.clear();
        idle = 0;
        delay = 20'000;
        continue;
      }
      note_.sleep_until(nanotime() + delay);
      note_.clear();
      if (backstop_) refill_watchers();
      if (retake(nanotime()) > 0) {
        idle = 0;
        delay = 20'000;
      } else if (++idle > 50 && delay < 10'000'000) {
        delay = delay * 2 > 10'000'000 ? 10'000'000 : delay * 2;
      }
    }
  }

  const bool backstop_;
  std::vector<bool> missing_seen_;
  pthread_t thread_{};
  Note note_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> sleeping_{false};
  std::vector<Seen> seen_;
};

}  // namespace

std::unique_ptr<Monitor> make_poll_monitor(bool backstop) {
  return std::make_unique<PollMonitor>(backstop);
}

}  // namespace kgmp::internal
