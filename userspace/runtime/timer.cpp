// timer.cpp — per-P timer heaps (see timer.h) and the time API (kgmp/time.h).
#include "timer.h"

#include <time.h>

#include <algorithm>

#include "kgmp/chan.h"
#include "kgmp/time.h"
#include "handoff.h"
#include "sched.h"

namespace kgmp {
namespace internal {

std::int64_t nanotime() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

namespace {

// Heap primitives. Caller: holds h.lock.
void sift_up(std::vector<Timer*>& h, int i) {
  Timer* t = h[static_cast<std::size_t>(i)];
  while (i > 0) {
    int parent = (i - 1) / 2;
    Timer* pt = h[static_cast<std::size_t>(parent)];
    if (pt->when <= t->when) break;
    h[static_cast<std::size_t>(i)] = pt;
    pt->idx = i;
    i = parent;
  }
  h[static_cast<std::size_t>(i)] = t;
  t->idx = i;
}
void sift_down(std::vector<Timer*>& h, int i) {
  const int n = static_cast<int>(h.size());
  Timer* t = h[static_cast<std::size_t>(i)];
  for (;;) {
    int c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && h[static_cast<std::size_t>(c + 1)]->when < h[static_cast<std::size_t>(c)]->when) c++;
    if (h[static_cast<std::size_t>(c)]->when >= t->when) break;
    h[static_cast<std::size_t>(i)] = h[static_cast<std::size_t>(c)];
    h[static_cast<std::size_t>(i)]->idx = i;
    i = c;
  }
  h[static_cast<std::size_t>(i)] = t;
  t->idx = i;
}
void heap_remove(std::vector<Timer*>& h, int i) {
  Timer* last = h.back();
  h.pop_back();
  if (i < static_cast<int>(h.size())) {
    h[static_cast<std::size_t>(i)] = last;
    last->idx = i;
    sift_down(h, i);
    sift_up(h, last->idx);
  }
}
// Publishes the earliest deadline, to the scheduler and to BPF (kgmp_p_shared::timer0: the
// slice timers count a due timer as a G waiting for the P).
void publish(P* p, TimerHeap& th) ABSL_EXCLUSIVE_LOCKS_REQUIRED(th.lock) {
  std::int64_t t0 = th.heap.empty() ? 0 : th.heap[0]->when;
  th.timer0.store(t0, std::memory_order_seq_cst);
  std::atomic_ref<__u64>(p->sh->timer0).store(static_cast<__u64>(t0), std::memory_order_relaxed);
}

}  // namespace

void add_timer(Timer* t, std::int64_t when) {
  GateScope gs;  // from G code too (kgmp::Timer): an orphan parks here
  M* m = getm();
  P* p = m != nullptr && m->p != nullptr ? m->p : &sched->allp[0];
  TimerHeap& th = p->timers;
  bool earliest;
  {
    LockGuard l(th.lock);
    t->when = when;
    th.heap.push_back(t);
    sift_up(th.heap, static_cast<int>(th.heap.size()) - 1);
    t->p.store(p, std::memory_order_release);
    earliest = t->idx == 0;
    publish(p, th);
  }
  if (earliest) poke_timer_sleepers(when);
}

bool del_timer(Timer* t) {
  for (;;) {
    P* p = t->p.load(std::memory_order_acquire);
    if (p == nullptr) return false;
    TimerHeap& th = p->timers;
    LockGuard l(th.lock);
    if (t->p.load(std::memory_order_relaxed) != p) continue;  // fired or moved meanwhile
    heap_remove(th.heap, t->idx);
    t->idx = -1;
    t->p.store(nullptr, std::memory_order_release);
    publish(p, th);
    return true;
  }
}

void run_timers(P* p, std::int64_t now) {
  TimerHeap& th = p->timers;
  std::int64_t t0 = th.timer0.load(std::memory_order_relaxed);
  if (t0 == 0 || t0 > now) return;
  // Gs readied here go to the tail of the running P's queue, in deadline order. Past half a
  // queue, the rest wait for the next scheduling point rather than overflow to the global
  // queue, which would run them out of order.
  M* m = getm();
  RunQueue<G>* dest = m != nullptr && m->p != nullptr ? &m->p->runq : nullptr;
  LockGuard l(th.lock);
  while (!th.heap.empty() && th.heap[0]->when <= now) {
    if (dest != nullptr && dest->size() >= RunQueue<G>::kSize / 2) break;
    Timer* t = th.heap[0];
    if (t->period > 0) {
      // A Ticker: next deadline after now, skipping the ticks it missed (Go drops them too).
      t->when += t->period * ((now - t->when) / t->period + 1);
      sift_down(th.heap, 0);
    } else {
      heap_remove(th.heap, 0);
      t->idx = -1;
      t->p.store(nullptr, std::memory_order_release);
    }
    t->f(t, now);  // under the lock: del_timer cannot return while it runs
  }
  publish(p, th);
}

std::int64_t earliest_timer() {
  std::int64_t e = 0;
  for (int i = 0; i < sched->nprocs; i++) {
    std::int64_t w = sched->allp[i].timers.timer0.load(std::memory_order_seq_cst);
    if (w != 0 && (e == 0 || w < e)) e = w;
  }
  return e;
}

}  // namespace internal

// ---- kgmp/time.h ----

namespace {
using internal::nanotime;
std::int64_t to_ns(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}
Clock::time_point from_ns(std::int64_t ns) {
  return Clock::time_point(std::chrono::duration_cast<Clock::duration>(std::chrono::nanoseconds(ns)));
}

struct SleepArg {
  internal::Timer t;
  internal::G* g;
  std::int64_t when;
};
}  // namespace

void sleep_until(Clock::time_point deadline) {
  std::int64_t when = to_ns(deadline);
  if (when <= nanotime()) {
    yield();
    return;
  }
  internal::M* m = internal::getm();
  if (m == nullptr || m->curg == nullptr)
    internal::fatal("kgmp: kgmp::sleep_for/sleep_until called outside a goroutine; call it from "
                    "code running under kgmp::run");
  SleepArg a;
  a.g = m->curg;
  a.when = when;
  a.t.arg = &a;
  a.t.f = [](internal::Timer* t, std::int64_t) { internal::goready(static_cast<SleepArg*>(t->arg)->g, false); };
  // The timer goes in only once the G is parked (Go's resetForSleep), so it cannot fire early.
  internal::gopark([](void* p) {
    auto* a = static_cast<SleepArg*>(p);
    internal::add_timer(&a->t, a->when);
  }, &a, "sleep");
}

void sleep_for(Clock::duration d) { sleep_until(Clock::now() + d); }

namespace internal {
// The channel-sending timer behind after(), Timer and Ticker: a non-blocking send of the time
// on a 1-slot channel (Go's sendTime), so a slow reader loses ticks instead of blocking the M.
struct ChanTimer {
  Timer t;
  Chan<Clock::time_point> c{1};
  bool self_delete = false;
  static void fire(Timer* t, std::int64_t now) {
    auto* ct = static_cast<ChanTimer*>(t->arg);
    ct->c.try_send(from_ns(now));
    if (ct->self_delete) delete ct;
  }
};
}  // namespace internal

Chan<Clock::time_point> after(Clock::duration d) {
  auto* ct = new internal::ChanTimer();
  ct->t.arg = ct;
  ct->t.f = internal::ChanTimer::fire;
  ct->self_delete = true;
  Chan<Clock::time_point> c = ct->c;
  internal::add_timer(&ct->t, nanotime() + std::max<std::int64_t>(0, std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()));
  return c;
}

Timer::Timer(Clock::duration d) : ct_(new internal::ChanTimer()) {
  ct_->t.arg = ct_.get();
  ct_->t.f = internal::ChanTimer::fire;
  c_ = ct_->c;
  reset(d);
}
Timer::~Timer() { stop(); }

bool Timer::stop() {
  bool was = internal::del_timer(&ct_->t);
  // Go 1.23: after Stop, no stale value is received.
  while (ct_->c.try_recv()) {
  }
  return was;
}

bool Timer::reset(Clock::duration d) {
  bool was = stop();
  internal::add_timer(&ct_->t, nanotime() + std::chrono::duration_cast<std::chrono::nanoseconds>(d).count());
  return was;
}

Ticker::Ticker(Clock::duration d) : ct_(new internal::ChanTimer()) {
  ct_->t.arg = ct_.get();
  ct_->t.f = internal::ChanTimer::fire;
  c_ = ct_->c;
  reset(d);
}
Ticker::~Ticker() { stop(); }

void Ticker::stop() {
  internal::del_timer(&ct_->t);
  while (ct_->c.try_recv()) {
  }
}

void Ticker::reset(Clock::duration d) {
  std::int64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
  if (ns <= 0) internal::fatal("panic: non-positive interval for kgmp::Ticker");
  stop();
  ct_->t.period = ns;
  internal::add_timer(&ct_->t, nanotime() + ns);
}

}  // namespace kgmp
