// kgmp/sync.h — synchronization between goroutines: Go's sync package (Mutex, RWMutex, Cond,
// Once, WaitGroup) and golang.org/x/sync/semaphore (Semaphore).
//
// Waiting here parks the G, never the M: the P runs other Gs meanwhile. A call that may wait
// (a contended lock(), wait(), acquire(), ...) must come from a G; the non-waiting calls
// (unlock(), signal(), release(), an uncontended lock(), the try_ forms) work from any thread.
//
// The lock types carry Clang's thread-safety annotations (-Wthread-safety, Abseil's macros), so
// members can be declared ABSL_GUARDED_BY(mu). std::lock_guard, std::unique_lock and
// std::shared_lock work with them, but libstdc++'s guards are not annotated: in annotated code
// use kgmp::MutexLock, ReaderMutexLock and WriterMutexLock below.
#pragma once

#include <atomic>
#include <cstdint>
#include <utility>

#include "absl/base/thread_annotations.h"

namespace kgmp {

namespace internal {
struct G;

// The lock of the wait queues below: a spin lock that yields (to other Gs, then to the OS) but
// never sleeps in the kernel (sync.cpp says why). Held for a few instructions, never across a
// blocking call; when a G parks it is released on the next G's stack (gopark's unlockf), which
// is why it is not a pthread or Abseil mutex.
//
// Destroying an object right after its last user returns is normal C++ (the next locker may
// free a mutex while the previous unlock() is still returning). Every primitive below therefore
// touches itself, after the point where a waiter may proceed, only inside this lock, and the
// destructor waits for a critical section in progress (a holder is never parked).
class ABSL_LOCKABLE QueueLock {
 public:
  constexpr QueueLock() = default;
  ~QueueLock() {
    if (state_.load(std::memory_order_acquire) != 0) {
      lock();
      unlock();
    }
  }
  QueueLock(const QueueLock&) = delete;
  QueueLock& operator=(const QueueLock&) = delete;
  void lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    std::uint32_t c = 0;
    if (!state_.compare_exchange_strong(c, 1, std::memory_order_acquire)) lock_slow();
  }
  void unlock() ABSL_UNLOCK_FUNCTION();

 private:
  void lock_slow();
  bool try_take();
  std::atomic<std::uint32_t> state_{0};  // 0 free, 1 held
};

// A FIFO of parked Gs behind a QueueLock (Once's waiters).
// Memory ordering: a G readied by wake_all observes every write its waker made before the call.
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
  int wake_all() {
    return wake_all_after([] {});
  }
  // Runs change_state() under the queue's lock, then readies every parked G. When the new
  // state lets other Gs through without parking (and so, possibly, destroy the object), change
  // it here: the queue is not touched after its lock is released.
  template <class F>
  int wake_all_after(F change_state) {
    lock_.lock();
    change_state();
    G* list = head_;
    head_ = tail_ = nullptr;
    lock_.unlock();
    return ready_list(list);
  }

 private:
  void lock() ABSL_EXCLUSIVE_LOCK_FUNCTION(lock_) { lock_.lock(); }
  void unlock() ABSL_UNLOCK_FUNCTION(lock_) { lock_.unlock(); }
  // Releases the lock once the G is parked.
  void park_locked(const char* reason) ABSL_UNLOCK_FUNCTION(lock_);
  static int ready_list(G* list);

  QueueLock lock_;
  G* head_ ABSL_GUARDED_BY(lock_) = nullptr;
  G* tail_ ABSL_GUARDED_BY(lock_) = nullptr;
};

// Go's runtime semaphore (runtime/sema.go, semacquire1/semrelease1) for one counter: acquire()
// takes a unit, parking while there is none; release() adds one and readies the first waiter.
// Go keys its waiters by address in a global table; here each Sema owns its queue. The
// records of the waiters live on their parked stacks (Go's sudogs). release() works entirely
// under the queue lock (its callers only release when someone waits, so Go's lock-free
// no-waiter path would not pay off, and it would touch the Sema after a waiter may proceed).
// Memory ordering: release() happens before the acquire() that takes its unit.
class Sema {
 public:
  // lifo: queue at the head instead of the tail (sync.Mutex: a woken waiter that lost the
  // race keeps its place). `reason` is the wait reason of the parked G.
  void acquire(bool lifo, const char* reason);
  // handoff: the unit goes straight to the first waiter (it cannot be taken by a G arriving
  // meanwhile), and the caller yields its P to it (it runs next) — sync.Mutex's starvation
  // mode.
  void release(bool handoff);

 private:
  struct Waiter;
  bool try_acquire();

  std::atomic<std::uint32_t> count_{0};
  QueueLock lock_;
  Waiter* head_ ABSL_GUARDED_BY(lock_) = nullptr;
  Waiter* tail_ ABSL_GUARDED_BY(lock_) = nullptr;
};

// Go's notifyList (runtime/sema.go), the queue of sync.Cond: a waiter takes a ticket with
// add() while it still holds the Cond's mutex, then wait(ticket) parks unless that ticket was
// already notified. notify_one() serves the oldest unnotified ticket, notify_all() every
// ticket taken so far. A notification between add() and wait() is therefore never lost.
class NotifyList {
 public:
  std::uint32_t add() { return wait_.fetch_add(1, std::memory_order_acq_rel); }
  void wait(std::uint32_t ticket, const char* reason);
  void notify_one();
  void notify_all();

 private:
  struct Waiter;
  std::atomic<std::uint32_t> wait_{0};    // the next ticket to hand out
  std::atomic<std::uint32_t> notify_{0};  // the next ticket to notify (written under lock_)
  QueueLock lock_;
  Waiter* head_ ABSL_GUARDED_BY(lock_) = nullptr;
  Waiter* tail_ ABSL_GUARDED_BY(lock_) = nullptr;
};
}  // namespace internal

// ---------------------------------------------------------------------------------------------
// Mutex
//
// A mutual-exclusion lock for goroutines: Go's sync.Mutex. A G that finds it held spins for a
// moment (only when other Ps are running), then parks; its M runs other Gs. The zero state is
// unlocked; a Mutex is not tied to a G: one G may lock it and another unlock it (as in Go).
//
// Fairness (Go's algorithm): normally a woken waiter competes with newly arriving Gs, which
// usually win (they are already running): good throughput. A waiter that has waited more than
// 1 ms switches the mutex to starvation mode: unlock() then hands the mutex directly to the
// first waiter and yields the P to it, and arriving Gs queue at the tail without trying. The
// mutex returns to normal mode when the waiter that receives it is the last one, or has waited
// less than 1 ms.
//
// Memory ordering: an unlock() happens before every later lock() (or successful try_lock())
// that acquires the mutex, as for std::mutex.
//
// Lifetime: as for std::mutex, a G that acquires the mutex and finds it no longer used may
// unlock and destroy it even while the unlock() that let it in is still returning.
//
// Unlocking an unlocked Mutex is a fatal error, as in Go:
// `fatal error: sync: unlock of unlocked mutex`.
//
//   kgmp::Mutex mu;
//   std::map<std::string, int> counts ABSL_GUARDED_BY(mu);
//   void hit(const std::string& k) {
//     kgmp::MutexLock l(mu);   // or std::lock_guard<kgmp::Mutex>
//     counts[k]++;
//   }
class ABSL_LOCKABLE Mutex {
 public:
  constexpr Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  // Locks the mutex, parking the calling G while another holds it. Contended: call from a G.
  void lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    // Free and not being handed over: take it, even with waiters parked (Go's lockSlow does
    // the same on its first try; a CAS from 0 only would send every lock to the slow path
    // while anyone waits).
    std::int32_t old = state_.load(std::memory_order_relaxed);
    if ((old & (kLocked | kStarving)) == 0 &&
        state_.compare_exchange_strong(old, old | kLocked, std::memory_order_acquire,
                                       std::memory_order_relaxed))
      return;
    lock_slow();
  }
  // Locks the mutex if it is free (and not being handed to a starving waiter); never parks.
  bool try_lock() ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true);
  void unlock() ABSL_UNLOCK_FUNCTION() {
    // One atomic read-modify-write, as Go's Add(-mutexLocked): unlock_slow starts from the
    // value read here (a failed CAS from kLocked would cost a second one whenever anyone
    // waits).
    std::int32_t old = state_.load(std::memory_order_relaxed);
    if (old != kLocked || !state_.compare_exchange_strong(old, 0, std::memory_order_release,
                                                          std::memory_order_relaxed))
      unlock_slow(old);
  }

 private:
  friend class RWMutex;
  // state_: bit 0 locked, bit 1 a waiter is awake (unlock need not wake another), bit 2
  // starvation mode, bits 3.. the number of parked waiters (Go's mutexLocked, mutexWoken,
  // mutexStarving, mutexWaiterShift).
  static constexpr std::int32_t kLocked = 1, kWoken = 2, kStarving = 4;
  static constexpr int kWaiterShift = 3;
  void lock_slow();
  void unlock_slow(std::int32_t old);

  std::atomic<std::int32_t> state_{0};
  internal::Sema sema_;
};

// ---------------------------------------------------------------------------------------------
// RWMutex
//
// A reader/writer lock for goroutines: Go's sync.RWMutex. Any number of readers (rlock) or one
// writer (lock). Writer-preferring: once a writer waits in lock(), new rlock() calls park until
// that writer has had the lock, so a stream of readers cannot starve writers. Consequently a G
// must not rlock() recursively (a writer arriving between the two would deadlock it), as in Go.
//
// Memory ordering: unlock() happens before every later lock() and rlock() that acquires the
// lock; runlock() happens before every later lock() that acquires it.
//
// Lifetime: as for Mutex, the next G to acquire it may destroy it once it has released it.
//
// Fatal errors, as in Go: `fatal error: sync: RUnlock of unlocked RWMutex`,
// `fatal error: sync: Unlock of unlocked RWMutex`.
//
//   kgmp::RWMutex mu;
//   Config config ABSL_GUARDED_BY(mu);
//   Config get() { kgmp::ReaderMutexLock l(mu); return config; }
//   void set(Config c) { kgmp::WriterMutexLock l(mu); config = std::move(c); }
class ABSL_LOCKABLE RWMutex {
 public:
  constexpr RWMutex() = default;
  ~RWMutex();
  RWMutex(const RWMutex&) = delete;
  RWMutex& operator=(const RWMutex&) = delete;

  void lock() ABSL_EXCLUSIVE_LOCK_FUNCTION();
  bool try_lock() ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true);
  void unlock() ABSL_UNLOCK_FUNCTION();
  void rlock() ABSL_SHARED_LOCK_FUNCTION() {
    if (reader_count_.fetch_add(1, std::memory_order_acquire) + 1 < 0)
      reader_sem_.acquire(false, "sync.RWMutex.RLock");  // a writer is pending or active
  }
  bool try_rlock() ABSL_SHARED_TRYLOCK_FUNCTION(true);
  void runlock() ABSL_UNLOCK_FUNCTION() {
    std::int32_t r = reader_count_.fetch_sub(1, std::memory_order_release) - 1;
    if (r < 0) runlock_slow(r);
  }
  // std::shared_lock / SharedLockable names.
  void lock_shared() ABSL_SHARED_LOCK_FUNCTION() { rlock(); }
  bool try_lock_shared() ABSL_SHARED_TRYLOCK_FUNCTION(true) { return try_rlock(); }
  void unlock_shared() ABSL_UNLOCK_FUNCTION() { runlock(); }

 private:
  static constexpr std::int32_t kMaxReaders = 1 << 30;
  void runlock_slow(std::int32_t r);

  Mutex w_;                                  // held by the writer, and by a pending writer
  internal::Sema writer_sem_;                // the writer waits here for departing readers
  internal::Sema reader_sem_;                // readers wait here for the writer
  std::atomic<std::int32_t> reader_count_{0};  // readers; minus kMaxReaders while a writer is
                                               // pending or active
  std::atomic<std::int32_t> reader_wait_{0};   // readers the pending writer still waits for
};

// ---------------------------------------------------------------------------------------------
// Cond
//
// A condition variable tied to a Mutex: Go's sync.Cond (sync.NewCond(&mu)). wait() must be
// called with the mutex held; it unlocks it, parks the G until signal() or broadcast(), and
// locks it again before returning. As in Go (and with any condition variable), re-check the
// condition in a loop. signal() wakes the G waiting longest, broadcast() every waiting G; both
// may be called with or without the mutex held. No wakeup is lost: a G counts as waiting from
// the moment wait() is called with the mutex held (it takes a ticket before unlocking).
//
// Memory ordering: signal()/broadcast() happen before the return of the wait() calls they
// wake; the relock adds the ordering of the Mutex.
//
// Lifetime: as for std::condition_variable, a Cond may be destroyed once no G is parked in it,
// i.e. after the signal()/broadcast() that woke the last waiter has returned, even before that
// waiter has relocked the mutex.
//
//   kgmp::Mutex mu;
//   kgmp::Cond ready(mu);
//   std::deque<Job> jobs ABSL_GUARDED_BY(mu);
//   Job take() {
//     kgmp::MutexLock l(mu);
//     while (jobs.empty()) ready.wait();
//     Job j = std::move(jobs.front());
//     jobs.pop_front();
//     return j;
//   }
//   void put(Job j) {
//     { kgmp::MutexLock l(mu); jobs.push_back(std::move(j)); }
//     ready.signal();
//   }
class Cond {
 public:
  explicit Cond(Mutex& mu) : mu_(mu) {}
  Cond(const Cond&) = delete;
  Cond& operator=(const Cond&) = delete;

  // Caller: a G holding the mutex (not annotated: the analysis cannot tell that the caller's
  // mutex and mu_ are the same object).
  void wait();
  void signal() { notify_.notify_one(); }
  void broadcast() { notify_.notify_all(); }
  Mutex& mutex() const { return mu_; }

 private:
  Mutex& mu_;
  internal::NotifyList notify_;
};

// ---------------------------------------------------------------------------------------------
// Once
//
// Runs a function exactly once: Go's sync.Once. The first call(f) runs f; concurrent callers
// park until it has returned; later callers return at once without calling their f. An
// exception escaping f propagates to that caller, and f counts as done (Go: a panic in Do).
// f must not call call() on the same Once (it would deadlock, as in Go). A Once may be
// destroyed as soon as any call() has returned and no other is in progress.
//
// Memory ordering: the return of f happens before the return of every call().
//
//   kgmp::Once once;
//   Table* table;
//   Table& get() { once.call([] { table = load(); }); return *table; }
class Once {
 public:
  constexpr Once() = default;
  Once(const Once&) = delete;
  Once& operator=(const Once&) = delete;

  template <class F>
  void call(F&& f) {
    if (state_.load(std::memory_order_acquire) != kDone) call_slow(std::forward<F>(f));
  }

 private:
  // Go's Once is a done flag and a Mutex; here the waiters park on a queue and kDone is stored
  // under its lock, so that the first caller touches nothing once a later caller can return
  // (Go's `done.Store(1); m.Unlock()` would let a caller return between the two and free it).
  static constexpr std::uint32_t kIdle = 0, kRunning = 1, kDone = 2;
  template <class F>
  void call_slow(F&& f);
  bool begin();   // true: the caller runs f; false: f has run (the caller may have parked)
  void finish();  // kDone, and readies the parked callers

  std::atomic<std::uint32_t> state_{kIdle};
  internal::WaitQueue waiters_;
};

// ---------------------------------------------------------------------------------------------
// Semaphore
//
// A weighted semaphore of `n` units: golang.org/x/sync/semaphore.Weighted. acquire(k) parks the
// G until k units are free and takes them; release(k) gives them back. Waiters are served in
// arrival order: a large request at the head of the queue blocks smaller ones behind it (no
// starvation of large requests), and try_acquire fails while anyone waits. Acquiring more
// than the size would wait forever: it is a fatal error, as are negative weights, and
// releasing more than is held (`semaphore: released more than held`, Go's panic).
//
// Memory ordering: a release() happens before the acquire() calls it lets through.
//
//   kgmp::Semaphore conns(100);       // at most 100 connections at once
//   conns.acquire();
//   serve();
//   conns.release();
class Semaphore {
 public:
  explicit Semaphore(std::int64_t n);
  Semaphore(const Semaphore&) = delete;
  Semaphore& operator=(const Semaphore&) = delete;

  // Caller: a G (unless the units are free and nobody waits).
  void acquire(std::int64_t n = 1);
  bool try_acquire(std::int64_t n = 1);
  void release(std::int64_t n = 1);

 private:
  struct Waiter;
  const std::int64_t size_;
  internal::QueueLock lock_;
  std::int64_t cur_ ABSL_GUARDED_BY(lock_) = 0;  // units held
  Waiter* head_ ABSL_GUARDED_BY(lock_) = nullptr;
  Waiter* tail_ ABSL_GUARDED_BY(lock_) = nullptr;
};

// ---------------------------------------------------------------------------------------------
// WaitGroup
//
// Go's sync.WaitGroup: add(n) before starting work, done() when a piece finishes, wait() until
// the counter is zero. A negative counter is a fatal error, as in Go. wait() must be called
// from a G.
//
// Go's checks of misuse are fatal errors too: `sync: WaitGroup misuse: Add called concurrently
// with Wait`, `sync: WaitGroup is reused before previous Wait has returned`.
//
// Memory ordering: every done() happens before the return of the wait() it releases.
//
//   kgmp::WaitGroup wg;
//   for (auto& part : parts) {
//     wg.add(1);
//     kgmp::go([&wg, &part] { process(part); wg.done(); });
//   }
//   wg.wait();
class WaitGroup {
 public:
  constexpr WaitGroup() = default;
  WaitGroup(const WaitGroup&) = delete;
  WaitGroup& operator=(const WaitGroup&) = delete;

  void add(std::int64_t delta);
  void done() { add(-1); }
  void wait();

 private:
  // Go's layout: the counter in the high 32 bits, the number of parked waiters in the low 32.
  // A done() that reaches zero touches the WaitGroup again only if waiters are counted, and
  // they cannot return before it releases them.
  std::atomic<std::uint64_t> state_{0};
  internal::Sema sema_;
};

// ---------------------------------------------------------------------------------------------
// Scoped holders, annotated for -Wthread-safety (Abseil's MutexLock, ReaderMutexLock,
// WriterMutexLock).

class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex& mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_.lock(); }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex& mu_;
};

class ABSL_SCOPED_LOCKABLE ReaderMutexLock {
 public:
  explicit ReaderMutexLock(RWMutex& mu) ABSL_SHARED_LOCK_FUNCTION(mu) : mu_(mu) { mu_.rlock(); }
  ~ReaderMutexLock() ABSL_UNLOCK_FUNCTION() { mu_.runlock(); }
  ReaderMutexLock(const ReaderMutexLock&) = delete;
  ReaderMutexLock& operator=(const ReaderMutexLock&) = delete;

 private:
  RWMutex& mu_;
};

class ABSL_SCOPED_LOCKABLE WriterMutexLock {
 public:
  explicit WriterMutexLock(RWMutex& mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) {
    mu_.lock();
  }
  ~WriterMutexLock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }
  WriterMutexLock(const WriterMutexLock&) = delete;
  WriterMutexLock& operator=(const WriterMutexLock&) = delete;

 private:
  RWMutex& mu_;
};

template <class F>
void Once::call_slow(F&& f) {
  if (!begin()) return;
  // Go's `defer o.done.Store(1)`: f counts as done even when it throws.
  struct Finish {
    Once* once;
    ~Finish() { once->finish(); }
  } finish{this};
  std::forward<F>(f)();
}

}  // namespace kgmp
