// sync.cpp — WaitQueue (parked Gs behind a lock) and WaitGroup.
//
// The racy protocol: a waiter takes the queue lock, re-checks its condition, enqueues itself
// and parks; the lock is released by the scheduler only after the G's context is saved
// (gopark's unlockf). A waker changes the state first, then takes the lock and readies every
// queued G. Either the waiter's re-check sees the new state, or the waker finds the waiter
// queued: no wakeup is lost.
#include <cstdint>

#include "kgmp/sync.h"
#include "futex.h"
#include "sched.h"

namespace kgmp {
namespace internal {

void WaitQueue::lock() {
  // A spin lock: held for a few instructions, never across a blocking call.
  for (;;) {
    std::uint32_t z = 0;
    if (lock_.compare_exchange_weak(z, 1, std::memory_order_acquire)) return;
    while (lock_.load(std::memory_order_relaxed) != 0) cpu_relax();
  }
}

void WaitQueue::unlock() { lock_.store(0, std::memory_order_release); }

void WaitQueue::park_locked(const char* reason) {
  G* g = getm()->curg;
  g->schedlink = nullptr;
  if (tail_ != nullptr)
    tail_->schedlink = g;
  else
    head_ = g;
  tail_ = g;
  gopark([](void* q) { static_cast<WaitQueue*>(q)->unlock(); }, this, reason);
}

int WaitQueue::wake_all() {
  lock();
  G* g = head_;
  head_ = tail_ = nullptr;
  unlock();
  int n = 0;
  while (g != nullptr) {
    G* next = g->schedlink;
    goready(g);
    g = next;
    n++;
  }
  return n;
}

}  // namespace internal

void WaitGroup::add(std::int64_t delta) {
  std::uint64_t d = static_cast<std::uint64_t>(delta) << 32;
  std::uint64_t s = state_.fetch_add(d, std::memory_order_acq_rel) + d;
  auto v = static_cast<std::int32_t>(s >> 32);
  auto w = static_cast<std::uint32_t>(s);
  if (v < 0) internal::fatal("panic: sync: negative WaitGroup counter");
  if (v > 0 || w == 0) return;  // no waiter: do not touch *this again
  // The counter reached zero with waiters: they registered under the queue lock before
  // parking, so wake_all finds every one of them queued. (Go: state = 0, then semrelease.)
  state_.store(0, std::memory_order_release);
  waiters_.wake_all();
}

void WaitGroup::wait() {
  waiters_.park_if(
      [this] {
        // Register as a waiter only while the counter is non-zero (one atomic word).
        std::uint64_t s = state_.load(std::memory_order_acquire);
        while ((s >> 32) != 0)
          if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) return true;
        return false;
      },
      "sync.WaitGroup.Wait");
}

}  // namespace kgmp
