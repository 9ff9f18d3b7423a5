// futex.h — futex wait/wake and the runtime's lock.
//
// Lock is Go's lock_futex.go: a three-state futex mutex (0 unlocked, 1 locked, 2 locked with
// sleepers) that spins briefly before sleeping. It is the scheduler's lock (global run queue,
// idle lists) and the lock of the wait queues of Gs. Why not absl::Mutex or std::mutex: a
// wait-queue lock is taken by a G and released after the switch, on the next G's stack (Go's
// park-with-unlock), which pthread and sanitizer runtimes treat as an unlock by another thread;
// and Debian's Abseil is not built with ThreadSanitizer, so TSan would not see its ordering.
// This lock is plain atomics, which TSan and the compiler both understand.
#pragma once

#include <errno.h>
#include <linux/futex.h>
#include <time.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>

#include "absl/base/thread_annotations.h"

namespace kgmp::internal {

inline void futex_wait(std::atomic<std::uint32_t>* addr, std::uint32_t val) {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(addr), FUTEX_WAIT_PRIVATE, val, nullptr,
          nullptr, 0);
}
inline void futex_wake(std::atomic<std::uint32_t>* addr, int n) {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(addr), FUTEX_WAKE_PRIVATE, n, nullptr,
          nullptr, 0);
}

inline void cpu_relax() { __builtin_ia32_pause(); }

class ABSL_LOCKABLE Lock {
 public:
  void lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    std::uint32_t c = 0;
    if (state_.compare_exchange_strong(c, 1, std::memory_order_acquire)) return;
    lock_slow();
  }
  void unlock() ABSL_UNLOCK_FUNCTION() {
    if (state_.exchange(0, std::memory_order_release) == 2) futex_wake(&state_, 1);
  }
  bool try_lock() ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true) {
    std::uint32_t c = 0;
    return state_.compare_exchange_strong(c, 1, std::memory_order_acquire);
  }

 private:
  void lock_slow() {
    // Every holder of a runtime lock runs on its own CPU and never blocks while holding it
    // (critical sections are a few hundred ns), so spin well before sleeping: a futex sleep
    // costs the unlocker a wake-up of a halted vCPU (~25 us on the development machine).
    for (int i = 0; i < 4000; i++) {
      cpu_relax();
      std::uint32_t c = 0;
      if (state_.load(std::memory_order_relaxed) == 0 &&
          state_.compare_exchange_weak(c, 1, std::memory_order_acquire))
        return;
    }
    while (state_.exchange(2, std::memory_order_acquire) != 0) futex_wait(&state_, 2);
  }
  std::atomic<std::uint32_t> state_{0};
};

// RAII holder for Lock.
class ABSL_SCOPED_LOCKABLE LockGuard {
 public:
  explicit LockGuard(Lock& l) ABSL_EXCLUSIVE_LOCK_FUNCTION(l) : l_(l) { l_.lock(); }
  ~LockGuard() ABSL_UNLOCK_FUNCTION() { l_.unlock(); }
  LockGuard(const LockGuard&) = delete;
  LockGuard& operator=(const LockGuard&) = delete;

 private:
  Lock& l_;
};

// Go's `note`: a one-shot wakeup for one sleeping M. sleep() returns after wakeup(); clear()
// rearms it. Only the M that owns the note sleeps on it.
class Note {
 public:
  void clear() { key_.store(0, std::memory_order_relaxed); }
  void wakeup() {
    if (key_.exchange(1, std::memory_order_release) == 0) futex_wake(&key_, 1);
  }
  void sleep() {
    while (key_.load(std::memory_order_acquire) == 0) futex_wait(&key_, 0);
  }
  // Sleeps until wakeup() or CLOCK_MONOTONIC reaches deadline_ns; returns whether woken.
  bool sleep_until(std::int64_t deadline_ns) {
    while (key_.load(std::memory_order_acquire) == 0) {
      timespec ts{static_cast<time_t>(deadline_ns / 1000000000), static_cast<long>(deadline_ns % 1000000000)};
      long r = syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&key_),
                       FUTEX_WAIT_BITSET_PRIVATE, 0, &ts, nullptr, FUTEX_BITSET_MATCH_ANY);
      if (r != 0 && errno == ETIMEDOUT) return key_.load(std::memory_order_acquire) != 0;
    }
    return true;
  }

 private:
  std::atomic<std::uint32_t> key_{0};
};

}  // namespace kgmp::internal
