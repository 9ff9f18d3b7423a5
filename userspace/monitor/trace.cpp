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
// Held spares (KGMP_TRACE_SPARE=held, the default when Ps are pinned): the ring's wakeup is an
// irq_work self-IPI in the blocked M's switch path, ~7 us here, and the woken watcher then
// starts cold. So while P p has work queued behind a running G, and a hand-off happened on p
// lately (P::hold_credit), p's watcher is instead held *runnable* at SCHED_IDLE on p's CPU
// (kgmp_p_shared::spare_held = HELD). It never competes with the holder (weight 3 against
// 1024: EEVDF picks it about once a second of the holder's CPU time, and it yields at once),
// but when the holder blocks, the CPU has nothing better to run: the kernel switches straight
// to the watcher, which finds the event BPF posted without a wakeup, CASes the lease and
// runs p. One context switch, no IPI. The watcher lets go (back to SCHED_OTHER, asleep on the
// ring) as soon as it finds p with no work or its holder not in G code, so an idle core
// still halts and an idle runtime burns nothing. "Finds" means the next time it runs: on a
// CPU kept busy by other programs that is their next pause, or the kernel's rare turn for a
// weight-3 task (measured with two spinning threads: 0.5-1 s); meanwhile it costs nothing.
//
// The racy protocol of spare_held (all on p's CPU: the holder and the watcher are pinned there,
// so the watcher never runs while BPF runs in the holder's switch):
//   holder (exit_runtime, with work queued): CAS SLEEPING -> REQUESTED, wake_watcher(p), then
//     sched_yield until HELD (at most 8): a watcher woken from a long sleep needs ~30 us of cold
//     path to get there, which would otherwise land on the hand-off if the holder blocked first.
//     A watcher that comes back P-less while the holder runs with work queued asks for itself
//     (hold_self in sched.cpp), without a wakeup.
//   watcher: REQUESTED -> HELD, then policy SCHED_IDLE (in that order, see hold()), loop
//     { take an event; yield }; to let go:
//     store SLEEPING, then read the ring once more, then sleep on it. BPF skips the wakeup only
//     for HELD, so an event posted before the SLEEPING store is found by that last read and
//     one posted after it wakes the ring as usual.
//   Refresh: a watcher held while its holder computes does not run meanwhile, and after tens
//     of ms the pages of its loop are cold: the host here stalls the first touch of such a
//     page 100-200 us (`kgmp-bench retouch`: per touch, 1 in 770,000 after 1 ms of compute,
//     1 in 38,000 after 10 ms, 1 in 6,000 after 30 ms, 1 in 3,700 after 100 ms), and those
//     stalls landed on the hand-off (bench/trace-handoff: p99 140-170 us after compute). So
//     the holder, leaving the runtime with work queued and the hold older than
//     kStaleHoldNs, CASes HELD -> REQUESTED, sets the watcher to
//     SCHED_OTHER and yields (at most 8 times) until it is HELD again: the watcher, back in its
//     loop, sees REQUESTED, stores HELD and returns to SCHED_IDLE, its path warm (compute p50
//     11 -> 5 us, p99 137-168 -> 11-16 us). A watcher letting go meanwhile stores SLEEPING over
//     REQUESTED, which the holder's bounded yield tolerates.
//   A holder found blocked while HELD with work queued but no event (the work came after its
//   switch) is handed off by the watcher itself, as the backstop would a period later.
//   A held watcher runs only when its CPU has nothing better to run: another process's task
//   that keeps the CPU busy delays it by the kernel's policy for weight-3 tasks (measured, a
//   thread spinning on the CPU: the P was handed off ~3 ms after the block). So that the bound
//   does not rest on that policy, the holder does not ask for a held watcher on a CPU where our
//   Ms waited more than 0.5 ms behind other programs since its last request (BPF's per-core
//   foreign_ns; there the sleeping watcher, woken at SCHED_OTHER, gets its fair share at
//   once), and a watcher going HELD arms the polling backstop's timer
//   (kick_held: 1 ms ahead, no wakeup now, which would land on the hand-off), and the backstop
//   then looks every 1 ms, backing off to 10 ms, and hands off a P whose holder BPF saw blocked
//   for a whole period with work queued (to a SCHED_OTHER M, as any backstop hand-off): Go's
//   sysmon bound.
//
// Measured (kgmp-bench handoff, 1 P, same run, bench/RESULTS.md): p50 / p99 1.5 / 2.0 us hot
// where the sleeping watcher takes 17 / 52 us, 4.4 / 15 us after 50-100 ms of compute (31 /
// 86 us), 10 / 14 us after 100-200 ms asleep (55 / 121 us).
//
// Rejected: a monitor thread reading one ring for all Ps (two wakeups, 25-52 us: design B);
// bpf_send_signal to the spare (deferred through irq_work like the ring: no faster, design G);
// a spare always runnable at SCHED_IDLE (3.6 us, but the core never halts: held spares above
// are that, only while a hand-off is likely); a watcher that spins at SCHED_OTHER (it halves
// the holder's CPU).
#include <sched.h>

#include <atomic>
#include <cerrno>
#include <thread>
#include <vector>

#include "monitor.h"
#include "sched.h"
#include "timer.h"

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
      : bpf_(std::move(bpf)),
        rings_(std::move(rings)),
        held_(rings_.size()),
        backstop_(make_poll_monitor(true)) {}

  const char* name() const override { return "trace"; }
  kgmp_shared* shared() override { return bpf_->shared(); }
  const kgmp_cores* cores() const override { return bpf_->cores(); }
  void start() override { backstop_->start(); }
  void stop() override {
    stopping_.store(true, std::memory_order_release);
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

  // Caller: the watcher M of P p, on its own thread (pinned to p's CPU if spares are held).
  int watch(int p, std::uint64_t* lease, int timeout_ms) override {
    TraceBpf::Ring& ring = *rings_[static_cast<std::size_t>(p)];
    std::atomic_ref<__u32> held(bpf_->shared()->p[p].spare_held);
    for (;;) {
      if (held.load(std::memory_order_acquire) == KGMP_SPARE_REQUESTED) {
        if (int r = hold(p, ring, lease); r != 0) return r;
      }
      // Events posted without a wakeup while this P's watcher was held (by us, or by the scx
      // scheduler) are in the ring but do not make it readable for epoll: read them first.
      if (take_event(ring, lease)) return 1;
      int r = ring.wait(timeout_ms);
      if (r == -EINTR) continue;
      // A wake (2) goes back to the caller even when it was the holder's request for a held
      // spare: the eventfd counts wakes into one, so the runtime's stop (begin_stop) may be
      // folded into it, and only the caller knows the runtime is stopping. It comes back here
      // and finds REQUESTED at the top. (Looping here on REQUESTED, as before, swallowed such a
      // stop: a watcher slept forever at the end of run() under asan, SelectStressWithCloses.)
      if (r != 1) return r == 2 ? 2 : 0;
      if (take_event(ring, lease)) return 1;
    }
  }

  void wake_watcher(int p) override { rings_[static_cast<std::size_t>(p)]->wake(); }

  bool can_hold_spares() const override { return can_hold_; }

  bool refresh_held_watcher(int p) override {
    Held& h = held_[static_cast<std::size_t>(p)];
    const pid_t tid = h.tid.load(std::memory_order_acquire);
    if (tid == 0 || nanotime() - h.since.load(std::memory_order_relaxed) < kStaleHoldNs)
      return false;
    __u32 held = KGMP_SPARE_HELD;
    if (!std::atomic_ref<__u32>(bpf_->shared()->p[p].spare_held)
             .compare_exchange_strong(held, KGMP_SPARE_REQUESTED, std::memory_order_acq_rel))
      return false;
    // At SCHED_OTHER it gets the CPU at the caller's yield; it goes back to SCHED_IDLE itself.
    sched_param sp{};
    (void)sched_setscheduler(tid, SCHED_OTHER, &sp);
    return true;
  }

 private:
  // Several events may be pending (a P blocked twice): only the newest lease can win.
  static bool take_event(TraceBpf::Ring& ring, std::uint64_t* lease) {
    bool any = false;
    ring.consume([&](const kgmp_block_event& ev) {
      *lease = ev.lease;
      any = true;
    });
    return any;
  }

  // Holds the watcher of P p runnable at SCHED_IDLE until p's holder blocks (returns 1 with
  // *lease to CAS from), the monitor stops (2), or a hand-off stops being likely: p has no work
  // or its holder is not in G code (0: the caller sleeps on the ring). See the design comment
  // for the protocol. Caller: the watcher of p, from watch().
  int hold(int p, TraceBpf::Ring& ring, std::uint64_t* lease) {
    kgmp_shared* sh = bpf_->shared();
    std::atomic_ref<__u32> held(sh->p[p].spare_held);
    std::atomic_ref<__u64> lw(sh->p[p].lease);
    // HELD first, SCHED_IDLE last: between the two this thread runs at SCHED_OTHER, where the
    // holder's sched_yield hands it the CPU. The other order left a watcher preempted (by the
    // tick) right after going SCHED_IDLE short of HELD, which no sched_yield of the holder
    // can run again: the holder gave up, blocked, and the hand-off paid the ring's wakeup on a
    // cold path (45 us, trials seen with bench/trace-handoff). HELD only tells BPF that this
    // thread reads the ring before it sleeps, which holds from here on.
    held.store(KGMP_SPARE_HELD, std::memory_order_seq_cst);
    Held& me = held_[static_cast<std::size_t>(p)];
    me.since.store(nanotime(), std::memory_order_relaxed);
    me.tid.store(static_cast<pid_t>(gettid()), std::memory_order_release);
    backstop_->kick_held();  // a timerfd_settime, ~10 us here: not after the holder may block
    set_policy(SCHED_IDLE);
    int r = 0;
    for (;;) {
      if (held.load(std::memory_order_acquire) == KGMP_SPARE_REQUESTED) {
        // The holder refreshed a stale hold (refresh_held_watcher) and set us to SCHED_OTHER:
        // this pass through the loop is what warms it; HELD again, then SCHED_IDLE again.
        held.store(KGMP_SPARE_HELD, std::memory_order_seq_cst);
        me.since.store(nanotime(), std::memory_order_relaxed);
        set_policy(SCHED_IDLE);
      }
      if (take_event(ring, lease)) {
        r = 1;
        break;
      }
      if (stopping_.load(std::memory_order_acquire)) {
        r = 2;
        break;
      }
      std::uint64_t w = lw.load(std::memory_order_acquire);
      if (KGMP_LEASE_STATE(w) != KGMP_LEASE_USER) break;
      if (std::atomic_ref<__u32>(sh->p[p].runq_len).load(std::memory_order_relaxed) == 0 &&
          std::atomic_ref<__u32>(sh->hdr.nglobal).load(std::memory_order_relaxed) == 0)
        break;
      // Picked while the holder runs G code with work queued: either it blocked after BPF's
      // check (no event), or the holder is runnable and we got our rare turn.
      std::uint32_t h = KGMP_LEASE_HOLDER(w);
      if (h < KGMP_MAX_MS) {
        kgmp_m_shared& hm = sh->m[h];
        std::uint64_t b = std::atomic_ref<__u64>(hm.last_block_ns).load(std::memory_order_acquire);
        std::uint64_t wk = std::atomic_ref<__u64>(hm.last_wake_ns).load(std::memory_order_acquire);
        if (b > wk) {
          *lease = w;
          r = 1;
          break;
        }
      }
      sched_yield();
    }
    me.tid.store(0, std::memory_order_release);
    held.store(KGMP_SPARE_SLEEPING, std::memory_order_seq_cst);
    if (r == 0 && take_event(ring, lease)) r = 1;  // posted without a wakeup before the store
    set_policy(SCHED_OTHER);
    return r;
  }

  // A hold older than this is refreshed by the holder (see "Refresh" in the design comment):
  // the host's stalls on a page first touched again grow 6x from 10 to 30 ms of quiet.
  static constexpr std::int64_t kStaleHoldNs = 10'000'000;

  // Per P, written by its held watcher: its tid (0 while not held) and when it last went HELD.
  struct Held {
    std::atomic<pid_t> tid{0};
    std::atomic<std::int64_t> since{0};
  };

  // This thread's policy (nice unchanged). SCHED_IDLE -> SCHED_OTHER needs CAP_SYS_NICE or a
  // RLIMIT_NICE allowing nice 0: can_hold_ says it was probed to work.
  static void set_policy(int policy) {
    sched_param sp{};
    (void)sched_setscheduler(0, policy, &sp);
  }

  std::unique_ptr<TraceBpf> bpf_;
  std::vector<std::unique_ptr<TraceBpf::Ring>> rings_;
  std::vector<Held> held_;  // per P
  std::unique_ptr<Monitor> backstop_;
  std::atomic<bool> stopping_{false};

 public:
  bool can_hold_ = false;
};

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
  mon->can_hold_ = can_leave_sched_idle();
  return mon;
}
#endif

}  // namespace kgmp::internal
