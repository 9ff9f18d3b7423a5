// kgmp/sync.h — synchronization between goroutines.
//
// Waiting here parks the G, never the M: the P runs other Gs meanwhile.
#pragma once

#include <atomic>
#include <cstdint>

namespace kgmp {

namespace internal {
struct G;
// A FIFO of parked Gs behind a small lock; the building block of the primitives below.
// Memory ordering: a G readied by wake_all/wake_one observes every write its waker made before
// the call.
class WaitQueue {
 public:
  // Parks the calling G on the queue if `still_wait()` holds under the queue's lock (checked
  // after the G is on the queue's lock, so a wake that follows the state change is never
  // lost). Returns false without parking otherwise. `reason` is Go's wait reason.
  template <class Pred>
  bool park_if(Pred still_wait, const char* reason) {
    lock();
    if (!still_wait()) {
      unlock();
      return false;
    }
    park_locked(reason);
    return true;
  }
  // Readies every parked G. Returns how many.
  int wake_all();

 private:
  void lock();
  void unlock();
  void park_locked(const char* reason);  // releases the lock once the G is parked

  std::atomic<std::uint32_t> lock_{0};
  G* head_ = nullptr;
  G* tail_ = nullptr;
};
}  // namespace internal

// Go's sync.WaitGroup: add(n) before starting work, done() when a piece finishes, wait() until
// the counter is zero. A negative counter is a fatal error, as in Go. wait() must be called
// from a G.
class WaitGroup {
 public:
  void add(std::int64_t delta);
  void done() { add(-1); }
  void wait();

 private:
  // The counter in the high 32 bits, the waiters in the low 32 (Go's design): a done() that
  // brings the counter to zero while no waiter is registered returns without touching the
  // WaitGroup again, so a waiter that sees zero may destroy it at once.
  std::atomic<std::uint64_t> state_{0};
  internal::WaitQueue waiters_;
};

}  // namespace kgmp
