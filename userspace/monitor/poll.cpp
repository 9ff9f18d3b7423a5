// poll.cpp — the poll monitor: Go's sysmon retake loop, for kgmp::blocking() sections.
//
// What: one thread that wakes every `delay` (20 us, doubling after 50 idle rounds up to 10 ms,
// Go's back-off), looks at every P's lease, and hands off a P whose holder has been inside
// kgmp::blocking() with the same lease word for a whole period (so at least 20 us), if the P
// has work or the M has been blocked for 10 ms (Go's retake rule).
//
// Idle cost: after 50 rounds with nothing to watch (every P idle, or no M inside a blocking
// section; for the backstop, no G waiting to run and no watcher missing) the thread sleeps on a
// futex with no deadline (Go's sysmonwait); kick() (an M entering kgmp::blocking, work
// appearing, a watcher taking its P) wakes it. So a runtime whose Gs are all parked costs
// nothing, as in Go.
//
// The backstop (the polling half of trace) differs, because BPF reports the blocks and the
// backstop only covers misses: its shortest period is 1 ms, not 20 us; it backs off after 5
// rounds, not 50; a kick wakes it only if a P has no watcher or a P's holder is blocked (BPF's
// stamps); a watcher held runnable (trace.cpp) arms a timer 1 ms ahead instead of waking it
// (its unbounded sleep polls an eventfd and that timerfd). Under scx it runs only once the
// runtime falls back to trace (scx.cpp). Its ticks run on the CPU it was started from, the
// first P's: woken for nothing on every wake_p, its bursts of 20 us ticks preempted the Ms of
// a P in the middle of a hand-off. (Moved off that CPU it costs more after a compute phase: 26 against
// 11 us p50; its ticks there keep the CPU's switch path warm.)
//
// Rejected: polling every P's lease without back-off (11-28 % of a core on the development
// machine, latency-limits.md D1/D2); signals to the blocked M (it is in the kernel: nothing to
// run there).
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>

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
  // Work appeared or a watcher left: only the backstop cares (the poll monitor watches
  // kgmp::blocking() sections, and enter_blocking wakes it), and only if it has something to
  // do now: a P without a watcher, or a P whose holder BPF saw blocked (a block not reported
  // because the P had no work then). Otherwise its wakeup and its ticks would land on the
  // hand-off this work is likely for (measured: trace hand-off after an idle period, p50 21
  // -> 10 us without them). Caller: any thread (wake_p after queueing a G).
  void kick() override {
    if (!backstop_ || !sleeping_.load(std::memory_order_seq_cst)) return;
    for (const auto& w : sched->watcher_missing)
      if (w.load(std::memory_order_relaxed)) return wake_sleeper();
    for (int i = 0; i < sched->nprocs; i++) {
      LeaseWord w = lease_ref(&sched->allp[i]).load(std::memory_order_acquire);
      if (KGMP_LEASE_STATE(w) != KGMP_LEASE_USER) continue;
      M* holder = sched->m_by_id[KGMP_LEASE_HOLDER(w)].load(std::memory_order_acquire);
      if (holder != nullptr && blocked(holder)) return wake_sleeper();
    }
  }

  // A watcher was just held runnable at SCHED_IDLE (trace.cpp): any other task runnable on its
  // CPU starves it, so the backstop must look at that P every few ms while it stays held and
  // hand it off itself if its holder blocks meanwhile. Not now, for the same reason as kick():
  // a sleeping backstop gets its timer 1 ms ahead, an awake one goes back to 1 ms ticks.
  void kick_held() override {
    if (!backstop_) return;
    if (!sleeping_.load(std::memory_order_seq_cst)) {
      held_fast_.store(true, std::memory_order_relaxed);
      return;
    }
    arm_timer();
  }

  void start() override {
    if (backstop_) {
      evfd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
      tfd_ = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    }
    started_ = true;
    seen_.assign(static_cast<std::size_t>(sched->nprocs), Seen{});
    missing_seen_.assign(sched->watcher_missing.size(), false);
    pthread_create(&thread_, nullptr, [](void* self) -> void* {
      static_cast<PollMonitor*>(self)->loop();
      return nullptr;
    }, this);
  }

  void stop() override {
    if (!started_) return;  // (the scx monitor starts trace's backstop only if it falls back)
    stop_.store(true, std::memory_order_release);
    note_.wakeup();
    if (backstop_) wake_sleeper();
    pthread_join(thread_, nullptr);
    for (int fd : {evfd_, tfd_})
      if (fd >= 0) close(fd);
  }

  void enter_blocking(M*) override {
    if (sleeping_.load(std::memory_order_seq_cst)) note_.wakeup();
  }

 private:
  // Arms the backstop's timerfd 1 ms ahead unless armed already (one syscall per period at
  // most). Caller: any thread, the backstop sleeping.
  void arm_timer() {
    if (timer_armed_.exchange(true, std::memory_order_acq_rel)) return;
    itimerspec its{};
    its.it_value.tv_nsec = 1'000'000;
    timerfd_settime(tfd_, 0, &its, nullptr);
  }

  // Wakes the unbounded sleep of loop(). Caller: any thread.
  void wake_sleeper() {
    if (!backstop_) return note_.wakeup();
    std::uint64_t one = 1;
    (void)!write(evfd_, &one, sizeof one);
  }

  // The unbounded sleep of loop(): the note (poll monitor), or the backstop's eventfd and
  // timerfd. Returns whether the held-spare timer woke it. Caller: the poll thread.
  bool sleep_unbounded() {
    if (!backstop_) {
      note_.sleep();
      return false;
    }
    pollfd fds[2] = {{evfd_, POLLIN, 0}, {tfd_, POLLIN, 0}};
    while (poll(fds, 2, -1) < 0 && errno == EINTR) {
    }
    std::uint64_t v;
    (void)!read(evfd_, &v, sizeof v);
    bool timer = read(tfd_, &v, sizeof v) == sizeof v;
    if (timer) timer_armed_.store(false, std::memory_order_release);
    return timer;
  }

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
      if (s.lease != w) {  // first sighting of this blocking section
        s.lease = w;
        s.since = marked_since(holder, now);
      }
      // Go retakes a P after its syscall lasted one sysmon tick, "at least 20 us": Go can only
      // tell by seeing it on two ticks, which with a backed-off sysmon (10 ms) means 10-20 ms.
      // A kgmp::blocking() section carries its start time, so the first tick 20 us after it
      // hands off (after a compute phase: p50 ~5 ms instead of Go's ~12-15 ms). A section seen
      // only by BPF (the backstop) has no start time: one period, as Go.
      if (now - s.since < kMinBlockNs) continue;
      if (!p_has_work(p) && now - s.since < 10'000'000) continue;
      if (handoff_p(p, w)) {
        handoff_start(p);
        n++;
      }
    }
    return n;
  }

  static constexpr std::int64_t kMinBlockNs = 20'000;  // Go's minimum sysmon tick

  // When m's blocking section began: kgmp::blocking()'s own stamp, else (a block only BPF saw)
  // `now`, the first sighting. Caller: the poll thread, m seen blocked.
  static std::int64_t marked_since(M* m, std::int64_t now) {
    if (__atomic_load_n(&m->sh->in_blocking, __ATOMIC_ACQUIRE) == 0) return now;
    auto t = static_cast<std::int64_t>(
        __atomic_load_n(&m->sh->blocking_since_ns, __ATOMIC_RELAXED));
    return t > 0 && t <= now ? t : now;
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

  // Whether a hand-off could be needed: some P is held while Gs wait to run (its queue or the
  // global one) and, for the poll monitor, some M is inside kgmp::blocking().
  bool nothing_to_watch() const {
    if (sched->npidle.load(std::memory_order_seq_cst) == sched->nprocs) return true;
    if (!backstop_) return sched->nblocking.load(std::memory_order_seq_cst) == 0;
    if (sched->runqsize.load(std::memory_order_seq_cst) > 0) return false;
    for (int i = 0; i < sched->nprocs; i++)
      if (!sched->allp[i].runq.empty()) return false;
    for (const auto& w : sched->watcher_missing)
      if (w.load(std::memory_order_relaxed)) return false;
    return true;
  }

  void loop() {
    // Sleep as long as asked: with Linux's default 50 us timer slack a 20 us period becomes
    // ~70 us (Go's sysmon lives with that). Costs nothing while the thread sleeps unbounded.
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    // The shortest period: Go's 20 us for the poll monitor, whose tick is the hand-off; 1 ms
    // for the backstop, which only covers what BPF and the watchers missed. At 20 us a
    // backstop that kept retaking polled almost without pause, a CFS thread on the first P's
    // CPU: under scx, in the VM, the Ms there starved and the runtime left scx (ScxStress).
    const std::int64_t min_delay = backstop_ ? 1'000'000 : 20'000;
    std::int64_t delay = min_delay;
    int idle = 0, quiet = 0;
    while (!stop_.load(std::memory_order_acquire)) {
      // Nothing to watch for idle_rounds_ rounds in a row: sleep until kicked (Go's
      // sysmonwait), so an idle runtime costs no wakeups at all.
      if (nothing_to_watch() && ++quiet > idle_rounds_) {
        sleeping_.store(true, std::memory_order_seq_cst);
        if (nothing_to_watch() && !stop_.load(std::memory_order_acquire)) sleep_unbounded();
        sleeping_.store(false, std::memory_order_relaxed);
        note_.clear();
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
      note_.sleep_until(nanotime() + delay);
      note_.clear();
      if (backstop_) refill_watchers();
      if (retake(nanotime()) > 0) {
        idle = 0;
        delay = min_delay;
      } else if (++idle > idle_rounds_ && delay < 10'000'000) {
        delay = delay * 2 > 10'000'000 ? 10'000'000 : delay * 2;
      }
    }
  }

  const bool backstop_;
  bool started_ = false;  // start() ran (stop() joins only then)
  // Rounds at 20 us before the period doubles: Go's 50 for the poll monitor, whose ticks are
  // the hand-off; 5 for the backstop, which only covers what BPF missed (rare), so that each
  // kick costs ~6 wakeups rather than ~55.
  const int idle_rounds_ = backstop_ ? 5 : 50;
  std::vector<bool> missing_seen_;
  pthread_t thread_{};
  Note note_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> sleeping_{false};
  // Backstop only: its unbounded sleep is a poll on an eventfd (urgent kicks) and a timerfd
  // (arm_timer: held watchers), so that they can ask for a tick 1 ms later without
  // waking it now.
  int evfd_ = -1, tfd_ = -1;
  std::atomic<bool> timer_armed_{false};
  std::atomic<bool> held_fast_{false};  // a watcher was held while awake: back to 1 ms ticks
  std::vector<Seen> seen_;
};

}  // namespace

std::unique_ptr<Monitor> make_poll_monitor(bool backstop) {
  return std::make_unique<PollMonitor>(backstop);
}

}  // namespace kgmp::internal
