// sync.cpp — Go's sync package for goroutines: the wait queues (QueueLock, WaitQueue, Sema,
// NotifyList) and the public types built on them (Mutex, RWMutex, Cond, Once, Semaphore,
// WaitGroup). The algorithms are Go's, with Go's names where they help reading the two side by
// side: sync/mutex.go, sync/rwmutex.go, sync/cond.go, sync/waitgroup.go, runtime/sema.go
// (semacquire1, semrelease1, notifyList*), golang.org/x/sync/semaphore.
//
// What parks: every wait goes through gopark, so a waiting G gives its M and P to other Gs.
// The queues hold records that live on the parked G's own stack (Go's sudogs: G, link, and the
// per-wait data — a handoff ticket, a notify ticket, a weight), so parking allocates nothing.
// A record is valid from its enqueue until its goready; a waker reads and writes it only after
// taking it off the queue under the queue lock, and never after goready (the G may run at
// once and return).
//
// The racy protocol, the same for every queue (WaitQueue's):
//   waiter: lock the queue, re-check the condition, enqueue its record, gopark with the queue's
//           unlock as unlockf — the lock is released only once the G's context is saved
//           (status kWaiting), so no waker can ready a G that is still on its stack;
//   waker:  change the state (add the unit, advance the notify ticket, give back the weight)
//           under the queue lock, take the records off, unlock, goready each.
// Either the waiter's re-check sees the new state, or the waker finds the waiter queued: no
// wakeup is lost. The lock-free fast paths (Mutex's CASes, Sema's try_acquire, the ticket
// counters of NotifyList, WaitGroup's state word) only ever succeed or fall into that protocol.
//
// Invariants
// - A queued record's G is parked (kWaiting) once anyone else can see the record: the record
//   is published under the queue lock, which gopark releases after the status change.
// - A G is readied exactly once per park, by the waker that dequeued its record. No queue here
//   readies spuriously; a woken Sema waiter may still find the unit gone (taken by a G that
//   arrived meanwhile, Go's behaviour in normal mode) and queue again.
// - Mutex::state_ counts parked waiters; a waiter is counted before it parks and uncounted by
//   the unlocker that wakes it (normal mode) or by itself when it receives the lock (handoff).
// - RWMutex: reader_count_ < 0 exactly while a writer is pending or holds the lock;
//   reader_wait_ counts the readers that entered before the pending writer and have not left.
// - Destruction (C++ has no GC, Go has): once an operation has made it possible for another G
//   to proceed — and so to be the last user and destroy the object — it touches the object only
//   inside a QueueLock critical section, whose destructor waits for it. Go's own order breaks
//   this in two places, changed here: Mutex::unlock (release and pick a waiter in one CAS),
//   Once (kDone stored under the queue lock instead of done-then-unlock). WaitGroup follows
//   Go's design, which is safe here (see WaitGroup::add). RWMutex::unlock lets readers in before it
//   releases w_ (Go's order, needed by writers); ~RWMutex waits out that window.
//
// Rejected
// - Wrapping pthread_mutex_t/std::mutex/absl::Mutex: a contended lock would block the M, and
//   with it the P and every G queued on it; on one P a G waiting for a lock whose holder is
//   queued behind it would deadlock the process. A parked G costs nothing.
// - One global semaphore table keyed by address (Go's semtable): Go does it so that a
//   sync.Mutex is 8 bytes and zero-valued without a constructor; a C++ object has a
//   constructor and can carry its queue (kgmp::Mutex is 32 bytes), and needs no hashing, no
//   treap and no cross-object lock contention.
// - Go's lock-free "no waiter" path in semrelease (an nwait counter read after the count is
//   bumped): every caller here releases only when a waiter is counted, so it would rarely help,
//   and the read after the bump touches a Sema that a G may already have destroyed.
// - Spinning longer or on one P: nothing preempts the holder, so on one P a spinner can only
//   delay it. Go spins at most 4 x 30 pauses (~1 us here) and only while another P is busy and
//   the spinner's own run queue is empty; kgmp keeps exactly that rule. Go does not check that
//   the holder is running either: knowing it would cost a store of the owner in every lock.
// - A queue lock that sleeps on a futex in G code (futex.h's Lock, which the channels use):
//   under trace every such sleep is a block the kernel reports, so it becomes a P hand-off;
//   sleeping inside the runtime instead deadlocks when the holder was requeued by gopark's
//   runtime entry (see QueueLock::lock_slow). A pure spin lock cannot let a requeued holder run
//   on one P either.
#include <sched.h>
#include <time.h>

#include <cstdint>

#include "kgmp/runtime.h"
#include "kgmp/sync.h"
#include "futex.h"
#include "sched.h"

namespace kgmp {
namespace internal {

namespace {

// The running G; a fatal error outside one (same words as gopark's).
G* current_g(const char* reason) {
  M* m = getm();
  if (m == nullptr || m->curg == nullptr)
    fatal("kgmp: a goroutine primitive was used outside a goroutine (%s); call it from code "
          "running under kgmp::run",
          reason);
  return m->curg;
}

void unlock_queue(void* l) ABSL_NO_THREAD_SAFETY_ANALYSIS { static_cast<QueueLock*>(l)->unlock(); }
// Parks the calling G and releases `l` once it is parked (Go's goparkunlock).
void park_unlock(QueueLock& l, const char* reason) ABSL_UNLOCK_FUNCTION(l)
    ABSL_NO_THREAD_SAFETY_ANALYSIS {
  gopark(unlock_queue, &l, reason);
}

std::int64_t monotonic_ns() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<std::int64_t>(t.tv_sec) * 1000000000 + t.tv_nsec;
}

// Go's sync_runtime_canSpin: at most kActiveSpin rounds, and only while at least one other P
// is busy (the holder may be running there: gomaxprocs > npidle + nmspinning + 1) and this P
// has nothing else to run. Never on one P. Caller: anyone (false outside a G).
constexpr int kActiveSpin = 4, kActiveSpinCount = 30;
bool can_spin(int iter) {
  if (iter >= kActiveSpin) return false;
  Sched* s = sched;
  if (s == nullptr || s->nprocs <= 1) return false;
  if (s->nprocs <= s->npidle.load(std::memory_order_relaxed) +
                      s->nmspinning.load(std::memory_order_relaxed) + 1)
    return false;
  M* m = getm();
  if (m == nullptr || m->curg == nullptr || m->p == nullptr) return false;
  return m->p->runq.empty();
}
void do_spin() {
  for (int i = 0; i < kActiveSpinCount; i++) cpu_relax();
}

bool less(std::uint32_t a, std::uint32_t b) { return static_cast<std::int32_t>(a - b) < 0; }

}  // namespace

// ---- QueueLock ----

void QueueLock::lock_slow() {
  // Holders run a few instructions (or a G switch, when the lock is released by gopark's
  // unlockf), so spin first.
  for (int i = 0; i < 4000; i++) {
    cpu_relax();
    if (try_take()) return;
  }
  // Then never block in the kernel. A holder is not always running: it holds the lock in G
  // code, and the runtime entry in gopark may requeue it on the global queue if its M lost its
  // P (DESIGN §3) — e.g. after a page fault blocked its thread. A futex sleep in G code would
  // make the monitors hand this P away too (a thread wake-up each time); a futex sleep inside
  // the runtime would keep the P while the holder waits for one: with every P's M asleep like
  // that, a deadlock. So alternate a G-level yield (this P runs the requeued holder, or other
  // work) with an OS-level one (a preempted holder's thread gets its CPU back; the monitors
  // ignore a thread that stays runnable).
  M* m = getm();
  const bool in_g = m != nullptr && m->curg != nullptr && m->rt_depth == 0;
  for (;;) {
    if (in_g) kgmp::yield();
    sched_yield();
    for (int i = 0; i < 100; i++) {
      if (try_take()) return;
      cpu_relax();
    }
  }
}

bool QueueLock::try_take() {
  std::uint32_t c = 0;
  return state_.load(std::memory_order_relaxed) == 0 &&
         state_.compare_exchange_weak(c, 1, std::memory_order_acquire, std::memory_order_relaxed);
}

void QueueLock::unlock() { state_.store(0, std::memory_order_release); }

// ---- WaitQueue ----

void WaitQueue::park_locked(const char* reason) {
  G* g = current_g(reason);
  g->schedlink = nullptr;
  if (tail_ != nullptr)
    tail_->schedlink = g;
  else
    head_ = g;
  tail_ = g;
  park_unlock(lock_, reason);
}

int WaitQueue::ready_list(G* g) {
  int n = 0;
  while (g != nullptr) {
    G* next = g->schedlink;
    goready(g);
    g = next;
    n++;
  }
  return n;
}

// ---- Sema (runtime/sema.go) ----

struct Sema::Waiter {
  G* g;
  Waiter* next;
  bool ticket;  // set by a handoff release: the unit is already this waiter's
};

// Go's cansemacquire. Acquire: pairs with the release that added the unit.
bool Sema::try_acquire() {
  std::uint32_t v = count_.load(std::memory_order_relaxed);
  while (v != 0) {
    if (count_.compare_exchange_weak(v, v - 1, std::memory_order_acquire,
                                     std::memory_order_relaxed))
      return true;
  }
  return false;
}

// Go's semacquire1.
void Sema::acquire(bool lifo, const char* reason) {
  if (try_acquire()) return;
  Waiter w{nullptr, nullptr, false};
  for (;;) {
    lock_.lock();
    if (w.g == nullptr) w.g = current_g(reason);
    // Re-check under the lock: release() adds its unit under it, so either we see the unit
    // or the releaser finds us queued.
    if (try_acquire()) {
      lock_.unlock();
      return;
    }
    w.next = nullptr;
    if (head_ == nullptr) {
      head_ = tail_ = &w;
    } else if (lifo) {
      w.next = head_;
      head_ = &w;
    } else {
      tail_->next = &w;
      tail_ = &w;
    }
    park_unlock(lock_, reason);
    if (w.ticket || try_acquire()) return;
    // Woken, but a G that arrived meanwhile took the unit: queue again.
  }
}

// Go's semrelease1, all under the lock: once the unit is added a G may take it, return and
// destroy the Sema; its destructor then waits for our critical section.
void Sema::release(bool handoff) {
  lock_.lock();
  count_.fetch_add(1, std::memory_order_release);
  Waiter* w = head_;
  bool handed = false;
  if (w != nullptr) {
    head_ = w->next;
    if (head_ == nullptr) tail_ = nullptr;
    // Handoff: take the unit back on the waiter's behalf, so that no arriving G can take it.
    handed = handoff && try_acquire();
    w->ticket = handed;
  }
  lock_.unlock();
  if (w == nullptr) return;  // the unit waits for a G that is about to queue, or arrives
  goready(w->g);             // w belongs to the waiter again from here on
  // Go's goyield: the waiter is in this P's runnext; let it run now, on our time slice.
  if (handed) kgmp::yield();
}

// ---- NotifyList (runtime/sema.go's notifyList) ----

struct NotifyList::Waiter {
  G* g;
  Waiter* next;
  std::uint32_t ticket;
};

void NotifyList::wait(std::uint32_t ticket, const char* reason) {
  G* g = current_g(reason);
  lock_.lock();
  // Already notified (between add() and here): do not park.
  if (less(ticket, notify_.load(std::memory_order_relaxed))) {
    lock_.unlock();
    return;
  }
  Waiter w{g, nullptr, ticket};
  if (tail_ == nullptr)
    head_ = &w;
  else
    tail_->next = &w;
  tail_ = &w;
  park_unlock(lock_, reason);
}

void NotifyList::notify_all() {
  // No ticket taken since the last notification: nobody to wake, no lock.
  if (wait_.load(std::memory_order_acquire) == notify_.load(std::memory_order_acquire)) return;
  lock_.lock();
  Waiter* s = head_;
  head_ = tail_ = nullptr;
  // Every ticket taken so far is notified: those queued are in s, the others will see it.
  notify_.store(wait_.load(std::memory_order_acquire), std::memory_order_release);
  lock_.unlock();
  while (s != nullptr) {
    Waiter* next = s->next;
    goready(s->g);
    s = next;
  }
}

void NotifyList::notify_one() {
  if (wait_.load(std::memory_order_acquire) == notify_.load(std::memory_order_acquire)) return;
  lock_.lock();
  std::uint32_t t = notify_.load(std::memory_order_relaxed);
  if (t == wait_.load(std::memory_order_acquire)) {
    lock_.unlock();
    return;
  }
  notify_.store(t + 1, std::memory_order_release);
  // Find ticket t. If its G has not queued yet, it will see notify_ > t and not park. Gs queue
  // in about ticket order (they lost a race only to the few ahead), so this stops early.
  for (Waiter *p = nullptr, *s = head_; s != nullptr; p = s, s = s->next) {
    if (s->ticket == t) {
      Waiter* n = s->next;
      if (p != nullptr)
        p->next = n;
      else
        head_ = n;
      if (n == nullptr) tail_ = p;
      lock_.unlock();
      goready(s->g);
      return;
    }
  }
  lock_.unlock();
}

}  // namespace internal

using internal::fatal;

// ---- Mutex (sync/mutex.go) ----

namespace {
constexpr std::int64_t kStarvationThresholdNs = 1000000;  // 1 ms
}  // namespace

bool Mutex::try_lock() {
  std::int32_t old = state_.load(std::memory_order_relaxed);
  // Held, or being handed to a starving waiter: fail without touching it.
  if ((old & (kLocked | kStarving)) != 0) return false;
  return state_.compare_exchange_strong(old, old | kLocked, std::memory_order_acquire,
                                        std::memory_order_relaxed);
}

void Mutex::lock_slow() {
  std::int64_t wait_start = 0;
  bool starving = false;
  bool awoke = false;  // woken from the semaphore (kWoken is ours to clear)
  int iter = 0;
  std::int32_t old = state_.load(std::memory_order_relaxed);
  for (;;) {
    // Spin while the holder may release it soon — not in starvation mode: the mutex will be
    // handed to a waiter, never to us.
    if ((old & (kLocked | kStarving)) == kLocked && internal::can_spin(iter)) {
      // Set kWoken so that unlock does not wake a waiter that would only compete with us.
      if (!awoke && (old & kWoken) == 0 && (old >> kWaiterShift) != 0 &&
          state_.compare_exchange_weak(old, old | kWoken, std::memory_order_relaxed))
        awoke = true;
      internal::do_spin();
      iter++;
      old = state_.load(std::memory_order_relaxed);
      continue;
    }
    std::int32_t next = old;
    // A starving mutex is not ours to take: arriving Gs queue.
    if ((old & kStarving) == 0) next |= kLocked;
    if ((old & (kLocked | kStarving)) != 0) next += 1 << kWaiterShift;
    // Switch to starvation mode, unless it was just unlocked (unlock expects a starving mutex
    // to have waiters).
    if (starving && (old & kLocked) != 0) next |= kStarving;
    if (awoke) {
      if ((next & kWoken) == 0) fatal("fatal error: sync: inconsistent mutex state");
      next &= ~kWoken;
    }
    if (state_.compare_exchange_weak(old, next, std::memory_order_acquire,
                                     std::memory_order_relaxed)) {
      if ((old & (kLocked | kStarving)) == 0) break;  // locked it
      // Waited before: back to the head of the queue.
      bool lifo = wait_start != 0;
      if (wait_start == 0) wait_start = internal::monotonic_ns();
      sema_.acquire(lifo, "sync.Mutex.Lock");
      starving = starving || internal::monotonic_ns() - wait_start > kStarvationThresholdNs;
      old = state_.load(std::memory_order_acquire);
      if ((old & kStarving) != 0) {
        // Handed to us: kLocked is clear and we are still counted as a waiter. Fix both.
        if ((old & (kLocked | kWoken)) != 0 || (old >> kWaiterShift) == 0)
          fatal("fatal error: sync: inconsistent mutex state");
        std::int32_t delta = kLocked - (1 << kWaiterShift);
        // Leave starvation mode if we did not wait long or are the last waiter: it is so slow
        // that two Gs could otherwise stay in it forever, lock-stepping.
        if (!starving || (old >> kWaiterShift) == 1) delta -= kStarving;
        state_.fetch_add(delta, std::memory_order_acquire);
        break;
      }
      awoke = true;
      iter = 0;
    }
    // On failure compare_exchange reloaded `old`.
  }
}

// Go's unlockSlow, with one difference: Go releases the lock first (Add(-mutexLocked)) and then
// CASes again to pick a waiter to wake; by then the mutex may have been locked, unlocked and
// destroyed by others. Here one CAS both releases it and takes the right to wake a waiter, and
// afterwards only sema_ is touched (under its lock, which its destructor waits for).
void Mutex::unlock_slow(std::int32_t old) {
  for (;;) {
    if ((old & kLocked) == 0) fatal("fatal error: sync: unlock of unlocked mutex");
    if ((old & kStarving) != 0) {
      // Starvation mode (it has waiters, and nobody else changes kLocked or kStarving while we
      // hold it): hand the mutex to the first waiter and yield the P to it. kLocked stays
      // clear (the waiter sets it); kStarving keeps arriving Gs away meanwhile.
      state_.fetch_sub(kLocked, std::memory_order_release);
      sema_.release(true);
      return;
    }
    // Wake one waiter unless there are none or one is already awake (a spinner, or one woken
    // earlier that has not taken the mutex yet): uncount it and mark it awake.
    bool wake = (old >> kWaiterShift) != 0 && (old & kWoken) == 0;
    std::int32_t next = old - kLocked;
    if (wake) next = (next - (1 << kWaiterShift)) | kWoken;
    if (state_.compare_exchange_weak(old, next, std::memory_order_release,
                                     std::memory_order_relaxed)) {
      if (wake) sema_.release(false);
      return;
    }
  }
}

// ---- RWMutex (sync/rwmutex.go) ----

// unlock() lets readers in (reader_count_ += kMaxReaders) before it releases w_; a reader that
// enters then may be the last user and destroy the lock while that unlock() still runs. Wait
// for it: between those two points the writer parks nowhere, so the wait is normally a few
// instructions (the same holds for lock() between taking w_ and announcing itself). It yields
// now and then all the same: a runtime entry there (goready) may requeue the writer if its M
// lost its P, and it may then need this P. A lock abandoned by a G at exit does not match the
// condition (its reader_count_ is negative), so this never waits for a G that cannot run.
RWMutex::~RWMutex() {
  for (unsigned i = 1; (w_.state_.load(std::memory_order_acquire) & Mutex::kLocked) != 0 &&
                       reader_count_.load(std::memory_order_acquire) >= 0;
       i++) {
    if (i % 64 == 0)
      kgmp::yield();
    else
      internal::cpu_relax();
  }
}

ABSL_NO_THREAD_SAFETY_ANALYSIS void RWMutex::lock() {
  // Against other writers.
  w_.lock();
  // Announce the pending writer: new readers now park.
  std::int32_t r = reader_count_.fetch_sub(kMaxReaders, std::memory_order_acq_rel);
  // Wait for the r readers inside to leave (those already gone have decremented reader_wait_).
  if (r != 0 && reader_wait_.fetch_add(r, std::memory_order_acq_rel) + r != 0)
    writer_sem_.acquire(false, "sync.RWMutex.Lock");
}

ABSL_NO_THREAD_SAFETY_ANALYSIS bool RWMutex::try_lock() {
  if (!w_.try_lock()) return false;
  std::int32_t zero = 0;
  if (!reader_count_.compare_exchange_strong(zero, -kMaxReaders, std::memory_order_acquire,
                                             std::memory_order_relaxed)) {
    w_.unlock();
    return false;
  }
  return true;
}

ABSL_NO_THREAD_SAFETY_ANALYSIS void RWMutex::unlock() {
  // Announce that no writer is active; r readers arrived meanwhile and are parked.
  std::int32_t r = reader_count_.fetch_add(kMaxReaders, std::memory_order_release) + kMaxReaders;
  if (r >= kMaxReaders) fatal("fatal error: sync: Unlock of unlocked RWMutex");
  for (std::int32_t i = 0; i < r; i++) reader_sem_.release(false);
  w_.unlock();
}

bool RWMutex::try_rlock() {
  std::int32_t c = reader_count_.load(std::memory_order_relaxed);
  for (;;) {
    if (c < 0) return false;  // a writer is pending or active
    if (reader_count_.compare_exchange_weak(c, c + 1, std::memory_order_acquire,
                                            std::memory_order_relaxed))
      return true;
  }
}

void RWMutex::runlock_slow(std::int32_t r) {
  if (r + 1 == 0 || r + 1 == -kMaxReaders) fatal("fatal error: sync: RUnlock of unlocked RWMutex");
  // A writer is pending: the last reader it waits for wakes it.
  if (reader_wait_.fetch_sub(1, std::memory_order_acq_rel) - 1 == 0) writer_sem_.release(false);
}

// ---- Cond (sync/cond.go) ----

ABSL_NO_THREAD_SAFETY_ANALYSIS void Cond::wait() {
  // Once notified we must not touch the Cond (it may be destroyed right after the notify
  // returns, as C++ allows for condition variables): keep the mutex in a local.
  Mutex& mu = mu_;
  // The ticket is taken with the mutex held: a signal after our unlock is for us or later.
  std::uint32_t t = notify_.add();
  mu.unlock();
  notify_.wait(t, "sync.Cond.Wait");
  mu.lock();
}

// ---- Once (sync/once.go) ----

bool Once::begin() {
  std::uint32_t s = kIdle;
  if (state_.compare_exchange_strong(s, kRunning, std::memory_order_acquire,
                                     std::memory_order_acquire))
    return true;
  if (s == kDone) return false;
  // Running: park until finish(); it stores kDone under the queue's lock before readying us,
  // and the re-check under that lock sees it if it came first.
  waiters_.park_if([this] { return state_.load(std::memory_order_acquire) != kDone; },
                   "sync.Mutex.Lock");
  return false;
}

void Once::finish() {
  waiters_.wake_all_after([this] { state_.store(kDone, std::memory_order_release); });
}

// ---- Semaphore (golang.org/x/sync/semaphore) ----

struct Semaphore::Waiter {
  internal::G* g;
  std::int64_t n;
  Waiter* next;
};

Semaphore::Semaphore(std::int64_t n) : size_(n) {
  if (n < 0) fatal("panic: semaphore: negative size %lld", static_cast<long long>(n));
}

void Semaphore::acquire(std::int64_t n) {
  if (n < 0) fatal("panic: semaphore: negative weight %lld", static_cast<long long>(n));
  if (n > size_)
    fatal("panic: semaphore: acquire(%lld) on a semaphore of size %lld would wait forever",
          static_cast<long long>(n), static_cast<long long>(size_));
  lock_.lock();
  if (size_ - cur_ >= n && head_ == nullptr) {
    cur_ += n;
    lock_.unlock();
    return;
  }
  Waiter w{internal::current_g("semacquire"), n, nullptr};
  if (tail_ == nullptr)
    head_ = &w;
  else
    tail_->next = &w;
  tail_ = &w;
  // The releaser that dequeues us has added n to cur_ for us.
  internal::park_unlock(lock_, "semacquire");
}

bool Semaphore::try_acquire(std::int64_t n) {
  if (n < 0) fatal("panic: semaphore: negative weight %lld", static_cast<long long>(n));
  lock_.lock();
  bool ok = size_ - cur_ >= n && head_ == nullptr;
  if (ok) cur_ += n;
  lock_.unlock();
  return ok;
}

void Semaphore::release(std::int64_t n) {
  if (n < 0) fatal("panic: semaphore: negative weight %lld", static_cast<long long>(n));
  lock_.lock();
  cur_ -= n;
  if (cur_ < 0) {
    lock_.unlock();
    fatal("panic: semaphore: released more than held");
  }
  // Serve waiters in order while the head fits; a head that does not fit blocks the rest
  // (letting smaller ones pass would starve large requests under load).
  Waiter* ready = nullptr;
  Waiter** link = &ready;
  while (head_ != nullptr && size_ - cur_ >= head_->n) {
    Waiter* w = head_;
    head_ = w->next;
    cur_ += w->n;
    *link = w;
    link = &w->next;
  }
  *link = nullptr;
  if (head_ == nullptr) tail_ = nullptr;
  lock_.unlock();
  while (ready != nullptr) {
    Waiter* next = ready->next;
    internal::goready(ready->g);
    ready = next;
  }
}

// ---- WaitGroup ----

// Go's WaitGroup (sync/waitgroup.go): counter and waiter count in one word. A counted waiter
// returns only through sema_, which the add() that reaches zero releases once per waiter as its
// last accesses (a Sema touches itself only inside its queue lock's critical section), so no
// waiter can return and free the WaitGroup while the waker still uses it. Decrementing a
// counter and then taking a queue lock to wake the waiters would let a wait() that saw the zero
// in between return, and its caller free the WaitGroup under the waker.
void WaitGroup::add(std::int64_t delta) {
  const std::uint64_t d = static_cast<std::uint64_t>(delta) << 32;
  const std::uint64_t s = state_.fetch_add(d, std::memory_order_acq_rel) + d;
  const auto v = static_cast<std::int32_t>(s >> 32);
  auto w = static_cast<std::uint32_t>(s);
  if (v < 0) fatal("panic: sync: negative WaitGroup counter");
  if (w != 0 && delta > 0 && v == static_cast<std::int32_t>(delta))
    fatal("panic: sync: WaitGroup misuse: Add called concurrently with Wait");
  if (v > 0 || w == 0) return;  // from here on, not a single access if nobody waits
  // We brought the counter to zero with w waiters counted. Nothing else may change the state
  // now: adds must not race with wait(), and wait() does not count itself on a zero counter.
  if (state_.load(std::memory_order_relaxed) != s)
    fatal("panic: sync: WaitGroup misuse: Add called concurrently with Wait");
  state_.store(0, std::memory_order_relaxed);
  for (; w != 0; w--) sema_.release(false);
}

void WaitGroup::wait() {
  std::uint64_t s = state_.load(std::memory_order_acquire);
  for (;;) {
    if (static_cast<std::int32_t>(s >> 32) == 0) return;
    // Count ourselves as a waiter; the add() that reaches zero releases one unit per waiter.
    if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acquire,
                                     std::memory_order_acquire)) {
      sema_.acquire(false, "sync.WaitGroup.Wait");
      if (state_.load(std::memory_order_relaxed) != 0)
        fatal("panic: sync: WaitGroup is reused before previous Wait has returned");
      return;
    }
  }
}

}  // namespace kgmp
