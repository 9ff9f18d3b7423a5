// kgmp/time.h — sleeping and timers that park goroutines (Go's time package).
//
//   kgmp::sleep_for(std::chrono::milliseconds(5));        // parks the G, not the M
//   kgmp::select(kgmp::on_recv(results, handle),
//                kgmp::on_recv(kgmp::after(1s), [](auto) { timeout(); }));
//   kgmp::Ticker tick(100ms);
//   for (int i = 0; i < 10; i++) tick.c().recv();
//
// Timers live in per-P heaps checked by the scheduler; an M with only timers pending sleeps
// until the earliest one, with no polling. A timer fires no earlier than its deadline; how much
// later depends on the load (bench `sleep` measures it).
#pragma once

#include <chrono>
#include <memory>

#include "kgmp/chan.h"

namespace kgmp {

using Clock = std::chrono::steady_clock;  // CLOCK_MONOTONIC

// Parks the calling G until the deadline (returns after yielding if it has passed). From a G.
void sleep_until(Clock::time_point deadline);
void sleep_for(Clock::duration d);

// A channel that receives the time once, d from now (Go's time.After). The channel has one slot,
// so the timer never blocks on a reader that is gone.
Chan<Clock::time_point> after(Clock::duration d);

namespace internal {
struct ChanTimer;
}

// Go's time.Timer: c() receives the time once the duration has passed. stop() and reset()
// follow Go 1.23: after they return, no value from the earlier schedule is received.
class Timer {
 public:
  explicit Timer(Clock::duration d);
  ~Timer();
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;
  Chan<Clock::time_point>& c() { return c_; }
  // Returns whether the timer was pending.
  bool stop();
  bool reset(Clock::duration d);

 private:
  std::unique_ptr<internal::ChanTimer> ct_;
  Chan<Clock::time_point> c_;
};

// Go's time.Ticker: c() receives the time every period; a slow reader loses ticks.
class Ticker {
 public:
  explicit Ticker(Clock::duration period);
  ~Ticker();
  Ticker(const Ticker&) = delete;
  Ticker& operator=(const Ticker&) = delete;
  Chan<Clock::time_point>& c() { return c_; }
  void stop();
  void reset(Clock::duration period);

 private:
  std::unique_ptr<internal::ChanTimer> ct_;
  Chan<Clock::time_point> c_;
};

}  // namespace kgmp
