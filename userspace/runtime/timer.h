// timer.h — per-P timer heaps (Go >= 1.14): sleep, after, Timer, Ticker and deadlines.
//
// Every P has a binary min-heap of timers under its own lock, and publishes the earliest
// deadline in an atomic (timer0, 0 = none) so that the scheduler checks it without locking.
// Timers are run
// - by the M holding the P, at every scheduling point (the G-to-G switch and find_runnable);
// - by any M in find_runnable for any P whose earliest timer has expired (so an idle P's
//   timers still fire while its M sleeps, and a P busy in a long G does not hold them back
//   forever);
// - an M with nothing to run sleeps on its futex until the earliest timer of all Ps (no
//   polling); adding a timer earlier than the deadline an idle M sleeps until pokes that M.
//
// A timer callback runs on an M holding a P, under the heap's lock: it may ready a G, send on
// a channel without blocking, or spawn a G; it must not add or delete timers.
//
// Rejected: one global heap (a lock every P contends for on every sleep); a timer thread
// (a second hop on every expiry, and a thread that wakes when nothing needs doing).
#pragma once

#include <atomic>
#include <cstdint>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "futex.h"

namespace kgmp::internal {

struct P;

// CLOCK_MONOTONIC in ns (std::chrono::steady_clock's clock).
std::int64_t nanotime();

struct Timer {
  std::int64_t when = 0;    // deadline (nanotime)
  std::int64_t period = 0;  // > 0: fires again every period (a Ticker)
  void (*f)(Timer* t, std::int64_t now) = nullptr;
  void* arg = nullptr;
  std::atomic<P*> p{nullptr};  // the heap it is in, or null
  int idx = -1;                // its index there
};

struct TimerHeap {
  Lock lock;
  std::vector<Timer*> heap ABSL_GUARDED_BY(lock);
  std::atomic<std::int64_t> timer0{0};  // earliest deadline, 0 if none
};

// Adds t (not pending) to the current P's heap (P 0 outside a G) to fire at `when`.
void add_timer(Timer* t, std::int64_t when);
// Removes t if pending; returns whether it was. After it returns, t's callback is not running
// and will not run (unless re-added).
bool del_timer(Timer* t);
// Runs p's expired timers (now: the time to compare against). Caller: an M holding a P.
void run_timers(P* p, std::int64_t now);
// The earliest deadline over every P, 0 if there is none.
std::int64_t earliest_timer();

}  // namespace kgmp::internal
