// runq.h — a P's local run queue: Go's 256-slot lock-free ring plus the `runnext` slot.
//
// Owner: the M holding the P is the only producer (put) and one of the consumers (get); other
// Ms consume by stealing (grab). The ring never dereferences its elements, so tests drive it
// with fake pointers.
//
// Invariants
// - 0 <= tail - head <= kSize (indices are free-running uint32 counters; wrap-around is fine).
// - Only the owner writes tail and the slots in [tail, head + kSize); any consumer advances head
//   by CAS, after reading the slots it takes.
// - runnext holds at most one element, not counted in the ring; it is taken by CAS (the owner
//   runs it next; a thief takes it only as a last resort, see grab()).
//
// The racy protocol (as Go's runqput/runqget/runqgrab)
// - put: write slot[tail], then store-release tail. A consumer load-acquires tail, so it sees
//   the slot.
// - get/grab: load-acquire head and tail, read the slots, then CAS head forward (release).
//   If the CAS fails another consumer took them first: retry. The owner can only overwrite a
//   slot after head has moved past it, i.e. after the CAS, so values read before a successful
//   CAS are valid.
// - Slots are relaxed atomics: Go relies on plain racy loads whose result is discarded when the
//   CAS fails; in C++ that would be a data race, so the atomics make it defined at no cost.
//
// Rejected: a mutex-protected deque (steal-one designs like Boost.Fiber's): every get would
// contend with thieves; Chase-Lev (bthread): LIFO owner end hurts fairness, and Go's FIFO ring
// + runnext gives both fairness and locality for communicating pairs.
#pragma once

#include <atomic>
#include <cstdint>

namespace kgmp::internal {

template <class T>
class RunQueue {
 public:
  // 256: Go's size. Enough to absorb a burst of spawns; an overflow moves half to the global
  // queue in one batch, so the cost of the global lock is amortized over 128 Gs.
  static constexpr std::uint32_t kSize = 256;

  // Owner only. Puts t at the tail. Returns false if the ring is full (t not queued): the
  // caller then calls grab_for_overflow() and moves that half plus t to the global queue.
  bool put(T* t) {
    std::uint32_t h = head_.load(std::memory_order_acquire);
    std::uint32_t tl = tail_.load(std::memory_order_relaxed);
    if (tl - h >= kSize) return false;
    slot(tl).store(t, std::memory_order_relaxed);
    tail_.store(tl + 1, std::memory_order_release);
    return true;
  }

  // Owner only. Makes t the next to run; returns the element it displaced from runnext (to be
  // put() at the tail by the caller), or nullptr.
  T* put_next(T* t) {
    T* old = runnext_.load(std::memory_order_relaxed);
    while (!runnext_.compare_exchange_weak(old, t, std::memory_order_acq_rel)) {
    }
    return old;
  }

  // Owner only. runnext first, then the head of the ring. nullptr if empty. *from_next tells
  // whether it came from runnext (Go: such a G inherits the current time slice).
  T* get(bool* from_next = nullptr) {
    T* n = runnext_.load(std::memory_order_relaxed);
    while (n != nullptr) {
      if (runnext_.compare_exchange_weak(n, nullptr, std::memory_order_acq_rel)) {
        if (from_next) *from_next = true;
        return n;
      }
    }
    if (from_next) *from_next = false;
    for (;;) {
      std::uint32_t h = head_.load(std::memory_order_acquire);
      std::uint32_t tl = tail_.load(std::memory_order_relaxed);
      if (h == tl) return nullptr;
      T* t = slot(h).load(std::memory_order_relaxed);
      if (head_.compare_exchange_weak(h, h + 1, std::memory_order_release)) return t;
    }
  }

  // Any M. Takes half of the ring, rounded up (n - n/2, as Go's runqgrab), into out[0..]; if
  // the ring is empty and steal_next, takes runnext instead. Returns how many it took.
  // `out` must have room for kSize/2 elements.
  std::uint32_t grab(T** out, bool steal_next) {
    return grab(out, steal_next, [] { return true; });
  }
  // The same, calling settle() between reading runnext and taking it: Go's runqgrab, whose
  // thief sleeps there so that a running owner about to run its runnext keeps it. runnext is
  // taken only if settle() returns true and runnext still holds the element read before (else
  // the ring is tried again); settle() returning false gives up (returns 0).
  template <class Settle>
  std::uint32_t grab(T** out, bool steal_next, Settle settle) {
    for (;;) {
      std::uint32_t h = head_.load(std::memory_order_acquire);
      std::uint32_t tl = tail_.load(std::memory_order_acquire);
      std::uint32_t n = tl - h;
      n = n - n / 2;
      if (n == 0) {
        if (!steal_next) return 0;
        T* next = runnext_.load(std::memory_order_acquire);
        if (next == nullptr) return 0;
        if (!settle()) return 0;
        if (!runnext_.compare_exchange_strong(next, nullptr, std::memory_order_acq_rel)) continue;
        out[0] = next;
        return 1;
      }
      if (n > kSize / 2) continue;  // read an inconsistent head/tail pair; retry
      for (std::uint32_t i = 0; i < n; i++) out[i] = slot(h + i).load(std::memory_order_relaxed);
      if (head_.compare_exchange_strong(h, h + n, std::memory_order_release)) return n;
    }
  }

  // Owner only, after put() failed. Takes half of the full ring (kSize/2) into out, for the
  // caller to move to the global queue with the new element. Returns 0 if thieves emptied part
  // of the ring meanwhile (then put() again).
  std::uint32_t grab_for_overflow(T** out) {
    std::uint32_t h = head_.load(std::memory_order_acquire);
    std::uint32_t tl = tail_.load(std::memory_order_relaxed);
    std::uint32_t n = (tl - h) / 2;
    if (n != kSize / 2) return 0;
    for (std::uint32_t i = 0; i < n; i++) out[i] = slot(h + i).load(std::memory_order_relaxed);
    if (!head_.compare_exchange_strong(h, h + n, std::memory_order_release)) return 0;
    return n;
  }

  // Owner only: appends n elements to the ring in one release (after a steal). The caller
  // guarantees room (the ring was empty when it stole).
  void put_batch(T* const* in, std::uint32_t n) {
    std::uint32_t tl = tail_.load(std::memory_order_relaxed);
    for (std::uint32_t i = 0; i < n; i++) slot(tl + i).store(in[i], std::memory_order_relaxed);
    tail_.store(tl + n, std::memory_order_release);
  }

  // Any M; racy. Length of the ring (without runnext).
  std::uint32_t size() const {
    for (;;) {
      std::uint32_t h = head_.load(std::memory_order_acquire);
      std::uint32_t tl = tail_.load(std::memory_order_acquire);
      if (head_.load(std::memory_order_acquire) == h) return tl - h;
    }
  }
  // Any M; racy. True if neither the ring nor runnext holds anything.
  bool empty() const { return size() == 0 && runnext_.load(std::memory_order_acquire) == nullptr; }
  // Any M; racy. Whether runnext holds a G (telemetry).
  bool has_next() const { return runnext_.load(std::memory_order_relaxed) != nullptr; }

 private:
  std::atomic<T*>& slot(std::uint32_t i) { return ring_[i % kSize]; }

  alignas(64) std::atomic<std::uint32_t> head_{0};
  alignas(64) std::atomic<std::uint32_t> tail_{0};
  std::atomic<T*> runnext_{nullptr};
  std::atomic<T*> ring_[kSize] = {};
};

}  // namespace kgmp::internal
