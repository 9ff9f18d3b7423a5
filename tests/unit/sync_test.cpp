// sync_test.cpp — Mutex, RWMutex, Cond, Once and Semaphore end to end, parameterized over
// 1..N Ps: mutual exclusion under contention, starvation mode, writer preference, no lost
// wakeups, exactly-once, FIFO weighted acquisition, Go's fatal errors and wait reasons.
//
// The data the primitives protect is plain (non-atomic) on purpose: under TSan a missing
// happens-before edge is a reported race, not only a wrong count. A lost wakeup shows up as
// the runtime's "all goroutines are asleep - deadlock!" (a failed test), never as a hang.
// Timing never decides a result; the few busy-waits only make a test reach its state sooner.
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <deque>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "kgmp/kgmp.h"

namespace {

int ncpus() {
  cpu_set_t s;
  sched_getaffinity(0, sizeof s, &s);
  return CPU_COUNT(&s);
}

// Runs f(0..n-1) in n new Gs and waits for all of them. Caller: a G.
template <class F>
void spawn_join(int n, F f) {
  kgmp::WaitGroup wg;
  wg.add(n);
  for (int i = 0; i < n; i++)
    kgmp::go([&wg, &f, i] {
      f(i);
      wg.done();
    });
  wg.wait();
}

// Busy-waits about `us` microseconds without yielding (holds the P, as real work would).
void busy_us(long us) {
  timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  do clock_gettime(CLOCK_MONOTONIC, &t1);
  while ((t1.tv_sec - t0.tv_sec) * 1000000L + (t1.tv_nsec - t0.tv_nsec) / 1000 < us);
}

void update_max(std::atomic<int>& max, int v) {
  int m = max.load();
  while (v > m && !max.compare_exchange_weak(m, v)) {
  }
}

static_assert(std::is_default_constructible_v<kgmp::Mutex>);
static_assert(!std::is_copy_constructible_v<kgmp::Mutex>);
static_assert(!std::is_copy_constructible_v<kgmp::RWMutex>);

// No teardown accounting here (sched_test has it): every test joins its Gs through the
// primitives under test, so a lost wakeup is a deadlock report or a wrong count already. And a
// G that has passed its last done() may still be queued when main returns — requeued on its
// way out because its M lost its P to a monitor (the P lease, DESIGN §3); under ASan, where
// heap calls block in the kernel now and then, that happens about once in 15 runs of this
// file. Such a G is abandoned as Go would abandon it, not leaked.
class Sync : public ::testing::TestWithParam<int> {
 protected:
  kgmp::Config cfg() {
    kgmp::Config c;
    c.procs = GetParam();
    return c;
  }
  void SetUp() override { unsetenv("KGMP_MAXPROCS"); }
};

// ---- Mutex ----

// Gs x iterations of a read-yield-write increment of a plain counter: without exclusion the
// yield between the read and the write loses updates (and TSan reports the race).
void mutex_contention(const kgmp::Config& cfg, int gs, int iters, int yield_every) {
  kgmp::Mutex mu;
  long counter = 0;
  std::atomic<int> inside{0}, overlaps{0};
  kgmp::run(
      [&] {
        spawn_join(gs, [&](int) {
          for (int i = 0; i < iters; i++) {
            mu.lock();
            if (inside.fetch_add(1) != 0) overlaps++;
            long v = counter;
            if (yield_every > 0 && i % yield_every == 0) kgmp::yield();
            counter = v + 1;
            inside.fetch_sub(1);
            mu.unlock();
          }
        });
      },
      cfg);
  EXPECT_EQ(overlaps.load(), 0);
  EXPECT_EQ(counter, static_cast<long>(gs) * iters);
}

TEST_P(Sync, MutexExcludes8GsYieldingInside) { mutex_contention(cfg(), 8, 10000, 1); }
TEST_P(Sync, MutexExcludes64GsYieldingInside) { mutex_contention(cfg(), 64, 10000, 8); }
// No yields: the holder keeps running, so waiters spin (on several Ps), park and hand over.
TEST_P(Sync, MutexExcludesTightLoop) { mutex_contention(cfg(), 8, 100000, 0); }

TEST_P(Sync, MutexTryLock) {
  kgmp::run(
      [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
        kgmp::Mutex mu;
        ASSERT_TRUE(mu.try_lock());
        EXPECT_FALSE(mu.try_lock());
        bool other = true;
        spawn_join(1, [&](int) ABSL_NO_THREAD_SAFETY_ANALYSIS { other = mu.try_lock(); });
        EXPECT_FALSE(other) << "try_lock of a held mutex from another G";
        mu.unlock();
        spawn_join(1, [&](int) ABSL_NO_THREAD_SAFETY_ANALYSIS {
          other = mu.try_lock();
          if (other) mu.unlock();
        });
        EXPECT_TRUE(other);
        // try_lock never parks: from many Gs at once, exactly one holder at a time.
        long n = 0;
        std::atomic<int> got{0};
        spawn_join(16, [&](int) ABSL_NO_THREAD_SAFETY_ANALYSIS {
          for (int i = 0; i < 1000; i++) {
            if (!mu.try_lock()) {
              kgmp::yield();
              continue;
            }
            n++;
            got++;
            mu.unlock();
          }
        });
        EXPECT_EQ(n, got.load());
        EXPECT_GT(got.load(), 0);
      },
      cfg());
}

// Go allows a Mutex to be unlocked by a G other than the one that locked it.
TEST_P(Sync, MutexUnlockedByAnotherG) {
  kgmp::run(
      [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
        kgmp::Mutex mu;
        mu.lock();
        spawn_join(1, [&](int) ABSL_NO_THREAD_SAFETY_ANALYSIS { mu.unlock(); });
        ASSERT_TRUE(mu.try_lock());
        mu.unlock();
        // And a G parked in lock() is woken by that foreign unlock.
        mu.lock();
        std::atomic<bool> in{false};
        kgmp::WaitGroup wg;
        wg.add(1);
        kgmp::go([&] {
          mu.lock();
          in = true;
          mu.unlock();
          wg.done();
        });
        for (int i = 0; i < 100; i++) kgmp::yield();
        EXPECT_FALSE(in.load());
        spawn_join(1, [&](int) ABSL_NO_THREAD_SAFETY_ANALYSIS { mu.unlock(); });
        wg.wait();
        EXPECT_TRUE(in.load());
      },
      cfg());
}

struct Counter {
  kgmp::Mutex mu;
  long n ABSL_GUARDED_BY(mu) = 0;
  void add() {
    kgmp::MutexLock l(mu);  // -Wthread-safety checks this one
    n++;
  }
  long get() {
    kgmp::MutexLock l(mu);
    return n;
  }
};

TEST_P(Sync, MutexWithStdGuards) {
  Counter c;
  long plain = 0;
  kgmp::Mutex mu;
  kgmp::run(
      [&] {
        spawn_join(16, [&](int) {
          for (int i = 0; i < 1000; i++) {
            {
              std::lock_guard<kgmp::Mutex> l(mu);
              plain++;
              if (i % 100 == 0) kgmp::yield();
            }
            c.add();
          }
        });
        std::unique_lock<kgmp::Mutex> l(mu, std::try_to_lock);
        EXPECT_TRUE(l.owns_lock());
        bool owns = true;
        spawn_join(1, [&](int) {
          std::unique_lock<kgmp::Mutex> l2(mu, std::try_to_lock);
          owns = l2.owns_lock();
        });
        EXPECT_FALSE(owns);
        l.unlock();
        std::scoped_lock both(mu, c.mu);  // std::lock's deadlock avoidance uses try_lock
      },
      cfg());
  EXPECT_EQ(plain, 16000);
  EXPECT_EQ(c.get(), 16000);
}

// Starvation mode: a hog re-locks immediately after every unlock and yields only while it holds
// the mutex, so in normal mode the waiter, which can only run while the hog holds it, would
// never get it. After 1 ms of waiting the mutex must be handed to the waiter. On one P only
// starvation mode can let the waiter in (with the threshold disabled, P1 ends at the bound); on
// more Ps a spinning waiter may also win in normal mode, as in Go.
TEST_P(Sync, MutexStarvationModeLetsTheWaiterIn) {
  constexpr int kAcquisitions = 10;
  constexpr long kMaxHogIterations = 200000;  // ~100x what 10 x 1 ms takes at 10 us each
  kgmp::Mutex mu;
  std::atomic<bool> stop{false};
  std::atomic<long> hog_iterations{0};
  int acquired = 0;
  kgmp::run(
      [&] {
        kgmp::WaitGroup wg;
        wg.add(2);
        kgmp::go([&] {
          while (!stop.load() && hog_iterations.load() < kMaxHogIterations) {
            mu.lock();
            busy_us(10);
            kgmp::yield();  // the waiter runs only now, while the mutex is held
            mu.unlock();
            hog_iterations++;
          }
          wg.done();
        });
        kgmp::go([&] {
          for (int i = 0; i < kAcquisitions; i++) {
            mu.lock();
            acquired++;
            mu.unlock();
            kgmp::yield();  // let the hog take it again
          }
          stop = true;
          wg.done();
        });
        wg.wait();
      },
      cfg());
  EXPECT_EQ(acquired, kAcquisitions);
  EXPECT_LT(hog_iterations.load(), kMaxHogIterations)
      << "the waiter got the mutex only once the hog gave up";
}

// ---- RWMutex ----

TEST_P(Sync, RWMutexReadersHoldItTogether) {
  constexpr int kReaders = 8;
  kgmp::RWMutex rw;
  std::atomic<int> inside{0}, max_inside{0}, entered{0};
  std::atomic<bool> gave_up{false};
  kgmp::run(
      [&] {
        spawn_join(kReaders, [&](int) {
          rw.rlock();
          update_max(max_inside, ++inside);
          entered++;
          // Stay inside until every reader has entered: impossible if readers excluded each
          // other (bounded, so that a broken lock fails instead of hanging).
          for (long k = 0; entered.load() < kReaders; k++) {
            if (k > 10000000) {
              gave_up = true;
              break;
            }
            kgmp::yield();
          }
          inside--;
          rw.runlock();
        });
      },
      cfg());
  EXPECT_FALSE(gave_up.load());
  EXPECT_EQ(max_inside.load(), kReaders);
}

// Writer preference: once a writer waits, a new reader parks until the writer has been in.
TEST_P(Sync, RWMutexWaitingWriterBlocksNewReaders) {
  kgmp::RWMutex rw;
  bool written = false;  // protected by rw
  bool reader_saw_write = false;
  std::atomic<bool> reader_in{false}, reader_in_early{false};
  kgmp::run(
      [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
        kgmp::WaitGroup wg;
        wg.add(2);
        rw.rlock();  // the main G is the first reader
        kgmp::go([&] {
          rw.lock();
          written = true;
          rw.unlock();
          wg.done();
        });
        // Wait until the writer is pending: then try_rlock fails.
        for (;;) {
          if (!rw.try_rlock()) break;
          rw.runlock();
          kgmp::yield();
        }
        kgmp::go([&] {
          rw.rlock();
          reader_saw_write = written;
          reader_in = true;
          rw.runlock();
          wg.done();
        });
        for (int i = 0; i < 200; i++) kgmp::yield();
        reader_in_early = reader_in.load();
        rw.runlock();  // the writer goes first, then the second reader
        wg.wait();
      },
      cfg());
  EXPECT_FALSE(reader_in_early.load()) << "a reader entered past a waiting writer";
  EXPECT_TRUE(reader_saw_write);
}

TEST_P(Sync, RWMutexWritersExcludeEveryone) {
  constexpr int kWriters = 4, kReaders = 8, kIters = 2000;
  kgmp::RWMutex rw;
  long value = 0;  // protected by rw
  std::atomic<int> readers_in{0}, writers_in{0}, violations{0}, torn{0};
  kgmp::run(
      [&] {
        spawn_join(kWriters + kReaders, [&](int id) {
          for (int i = 0; i < kIters; i++) {
            if (id < kWriters) {
              rw.lock();
              if (writers_in.fetch_add(1) != 0 || readers_in.load() != 0) violations++;
              long v = value;
              if (i % 4 == 0) kgmp::yield();
              value = v + 1;
              writers_in.fetch_sub(1);
              rw.unlock();
            } else {
              rw.rlock();
              readers_in.fetch_add(1);
              if (writers_in.load() != 0) violations++;
              long v = value;
              if (i % 4 == 0) kgmp::yield();
              if (value != v) torn++;
              readers_in.fetch_sub(1);
              rw.runlock();
            }
          }
        });
      },
      cfg());
  EXPECT_EQ(violations.load(), 0);
  EXPECT_EQ(torn.load(), 0);
  EXPECT_EQ(value, static_cast<long>(kWriters) * kIters);
}

TEST_P(Sync, RWMutexTryLockAndGuards) {
  kgmp::run(
      [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
        kgmp::RWMutex rw;
        ASSERT_TRUE(rw.try_rlock());
        ASSERT_TRUE(rw.try_rlock());
        EXPECT_FALSE(rw.try_lock()) << "readers inside";
        rw.runlock();
        rw.runlock();
        ASSERT_TRUE(rw.try_lock());
        EXPECT_FALSE(rw.try_rlock()) << "writer inside";
        EXPECT_FALSE(rw.try_lock());
        bool other = true;
        spawn_join(1, [&](int) { other = rw.try_rlock(); });
        EXPECT_FALSE(other);
        rw.unlock();
        {
          std::shared_lock<kgmp::RWMutex> r1(rw);
          kgmp::ReaderMutexLock r2(rw);
          EXPECT_FALSE(rw.try_lock());
        }
        {
          kgmp::WriterMutexLock w(rw);
          EXPECT_FALSE(rw.try_rlock());
        }
        {
          std::unique_lock<kgmp::RWMutex> w(rw);
          EXPECT_FALSE(rw.try_lock_shared());
        }
        EXPECT_TRUE(rw.try_lock());
        rw.unlock();
      },
      cfg());
}

// ---- Cond ----

TEST_P(Sync, CondProducerConsumerWithSignal) {
  constexpr int kProducers = 4, kConsumers = 4, kItems = 5000, kCap = 4;
  kgmp::Mutex mu;
  kgmp::Cond not_empty(mu), not_full(mu);
  std::deque<long> items;  // protected by mu
  long consumed_sum = 0, consumed_n = 0;  // protected by mu
  kgmp::run(
      [&] {
        spawn_join(kProducers + kConsumers, [&](int id) {
          if (id < kProducers) {
            for (int i = 0; i < kItems; i++) {
              kgmp::MutexLock l(mu);
              while (items.size() == kCap) not_full.wait();
              items.push_back(id * kItems + i);
              not_empty.signal();
            }
            return;
          }
          for (;;) {
            kgmp::MutexLock l(mu);
            while (items.empty() && consumed_n < kProducers * kItems) not_empty.wait();
            if (consumed_n == kProducers * kItems) {
              not_empty.broadcast();  // release the other consumers
              return;
            }
            consumed_sum += items.front();
            items.pop_front();
            consumed_n++;
            not_full.signal();
            if (consumed_n == kProducers * kItems) not_empty.broadcast();
          }
        });
      },
      cfg());
  const long n = kProducers * kItems;
  EXPECT_EQ(consumed_n, n);
  EXPECT_EQ(consumed_sum, n * (n - 1) / 2);
}

// Each round, every waiter is parked in wait() before the broadcast, and all must wake.
TEST_P(Sync, CondBroadcastWakesEveryWaiter) {
  constexpr int kWaiters = 16, kRounds = 200;
  kgmp::Mutex mu;
  kgmp::Cond changed(mu), all_waiting(mu);
  int generation = 0, waiting = 0;  // protected by mu
  std::vector<int> rounds_seen(kWaiters, 0);
  kgmp::run(
      [&] {
        kgmp::WaitGroup wg;
        wg.add(kWaiters);
        for (int w = 0; w < kWaiters; w++)
          kgmp::go([&, w] {
            kgmp::MutexLock l(mu);
            for (int r = 0; r < kRounds; r++) {
              if (++waiting == kWaiters) all_waiting.signal();
              int g = generation;
              while (generation == g) changed.wait();
              rounds_seen[w]++;
            }
            wg.done();
          });
        for (int r = 0; r < kRounds; r++) {
          kgmp::MutexLock l(mu);
          while (waiting < kWaiters) all_waiting.wait();
          waiting = 0;
          generation++;
          changed.broadcast();
        }
        wg.wait();
      },
      cfg());
  for (int w = 0; w < kWaiters; w++) EXPECT_EQ(rounds_seen[w], kRounds) << "waiter " << w;
}

// Two Gs hand a turn back and forth through one Cond: any lost signal deadlocks.
TEST_P(Sync, CondPingPongLosesNoSignal) {
  constexpr int kRounds = 20000;
  kgmp::Mutex mu;
  kgmp::Cond cv(mu);
  int turn = 0, passes = 0;  // protected by mu
  kgmp::run(
      [&] {
        spawn_join(2, [&](int me) {
          for (int i = 0; i < kRounds; i++) {
            kgmp::MutexLock l(mu);
            while (turn != me) cv.wait();
            turn = 1 - me;
            passes++;
            cv.signal();
          }
        });
      },
      cfg());
  EXPECT_EQ(passes, 2 * kRounds);
}

// signal() wakes one waiter per call; a signal with no waiter is not remembered.
TEST_P(Sync, CondSignalWakesOneAndIsNotStored) {
  constexpr int kWaiters = 8;
  kgmp::Mutex mu;
  kgmp::Cond cv(mu), all_waiting(mu);
  int tokens = 0, waiting = 0;  // protected by mu
  std::atomic<int> woke{0};
  std::atomic<int> woke_early{-1}, woke_after_one{-1};
  kgmp::run(
      [&] {
        cv.signal();  // nobody waits: no effect
        cv.broadcast();
        kgmp::WaitGroup wg;
        wg.add(kWaiters);
        for (int w = 0; w < kWaiters; w++)
          kgmp::go([&] {
            kgmp::MutexLock l(mu);
            if (++waiting == kWaiters) all_waiting.signal();
            while (tokens == 0) cv.wait();
            tokens--;
            woke++;
            wg.done();
          });
        {
          kgmp::MutexLock l(mu);
          while (waiting < kWaiters) all_waiting.wait();
        }
        for (int i = 0; i < 100; i++) kgmp::yield();
        woke_early = woke.load();
        {
          kgmp::MutexLock l(mu);
          tokens++;
          cv.signal();
        }
        while (woke.load() < 1) kgmp::yield();
        for (int i = 0; i < 100; i++) kgmp::yield();
        woke_after_one = woke.load();
        {
          kgmp::MutexLock l(mu);
          tokens += kWaiters - 1;
          for (int i = 0; i < kWaiters - 1; i++) cv.signal();
        }
        wg.wait();
      },
      cfg());
  EXPECT_EQ(woke_early.load(), 0);
  EXPECT_EQ(woke_after_one.load(), 1);
  EXPECT_EQ(woke.load(), kWaiters);
}

// ---- Once ----

TEST_P(Sync, OnceRunsExactlyOnceForAThousandCallers) {
  constexpr int kCallers = 1000;
  kgmp::Once once;
  std::atomic<int> calls{0};
  int value = 0;  // written by f, read by every caller after call(): needs call's ordering
  std::atomic<int> saw_unfinished{0};
  kgmp::run(
      [&] {
        spawn_join(kCallers, [&](int) {
          once.call([&] {
            calls++;
            for (int i = 0; i < 20; i++) kgmp::yield();  // the others arrive meanwhile
            value = 42;
          });
          if (value != 42) saw_unfinished++;
        });
        once.call([&] { calls++; });
      },
      cfg());
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(saw_unfinished.load(), 0) << "a caller returned before f finished";
}

TEST_P(Sync, OnceExceptionPropagatesAndCountsAsDone) {
  constexpr int kCallers = 100;
  kgmp::Once once;
  std::atomic<int> runs{0}, threw{0}, returned{0};
  kgmp::run(
      [&] {
        spawn_join(kCallers, [&](int) {
          try {
            once.call([&] {
              runs++;
              for (int i = 0; i < 10; i++) kgmp::yield();
              throw std::runtime_error("boom");
            });
            returned++;
          } catch (const std::runtime_error&) {
            threw++;
          }
        });
        once.call([&] { runs++; });
      },
      cfg());
  EXPECT_EQ(runs.load(), 1);
  EXPECT_EQ(threw.load(), 1);
  EXPECT_EQ(returned.load(), kCallers - 1);
}

// ---- Semaphore ----

TEST_P(Sync, SemaphoreNeverOverCommits) {
  constexpr int kSize = 5, kGs = 64, kIters = 200;
  kgmp::Semaphore sem(kSize);
  std::atomic<int> held{0}, max_held{0};
  kgmp::run(
      [&] {
        spawn_join(kGs, [&](int g) {
          for (int i = 0; i < kIters; i++) {
            int w = 1 + (g + i) % 3;
            sem.acquire(w);
            update_max(max_held, held += w);
            kgmp::yield();
            held -= w;
            sem.release(w);
          }
        });
        EXPECT_TRUE(sem.try_acquire(kSize)) << "every unit is back";
        sem.release(kSize);
      },
      cfg());
  EXPECT_LE(max_held.load(), kSize);
  EXPECT_GE(max_held.load(), 3);
  EXPECT_EQ(held.load(), 0);
}

TEST_P(Sync, SemaphoreTryAcquire) {
  kgmp::run(
      [&] {
        kgmp::Semaphore sem(3);
        EXPECT_TRUE(sem.try_acquire(2));
        EXPECT_FALSE(sem.try_acquire(2));
        EXPECT_TRUE(sem.try_acquire(1));
        EXPECT_FALSE(sem.try_acquire(1));
        EXPECT_TRUE(sem.try_acquire(0));
        sem.release(3);
        EXPECT_TRUE(sem.try_acquire(3));
        sem.release(1);
        sem.release(2);
        // A waiter at the head makes try_acquire fail even when the units would fit.
        sem.acquire(3);
        kgmp::WaitGroup wg;
        wg.add(1);
        kgmp::go([&] {
          sem.acquire(2);
          sem.release(2);
          wg.done();
        });
        while (sem.try_acquire(0)) {  // fails once the waiter is queued
          sem.release(0);
          kgmp::yield();
        }
        sem.release(1);  // 1 free: the waiter (2) still waits
        EXPECT_FALSE(sem.try_acquire(1)) << "would overtake the queued waiter";
        sem.release(2);
        wg.wait();
        EXPECT_TRUE(sem.try_acquire(3));
        sem.release(3);
      },
      cfg());
}

// C++ lets the last user destroy a primitive as soon as its own call has returned, even while
// the G that let it through is still inside its unlock/done/release (the C++ standard's note on
// mutex destruction; glibc bug 13690). Heap objects, so that ASan reports any touch after the
// free; each round is a fresh race.
TEST_P(Sync, DestroyedByTheLastUser) {
  constexpr int kRounds = 1000;
  kgmp::run(
      [&] {
        for (int r = 0; r < kRounds; r++) {
          kgmp::WaitGroup all;
          // WaitGroup: freed as soon as wait() returns.
          auto* wg = new kgmp::WaitGroup;
          wg->add(2);
          for (int g = 0; g < 2; g++) kgmp::go([wg] { wg->done(); });
          wg->wait();
          delete wg;
          // Mutex: a reference count under the lock; the last one out deletes it.
          struct Counted {
            kgmp::Mutex mu;
            int refs = 3;
          };
          auto* m = new Counted;
          // RWMutex: the same with a writer and a reader, each dropping its reference while
          // holding the lock (the reader can be last while the writer is still inside
          // unlock()). Not two readers: they may hold it together, so the last to drop its
          // reference need not be the last to leave.
          struct RW {
            kgmp::RWMutex rw;
            std::atomic<int> refs{2};
          };
          auto* rw = new RW;
          // Once: the last caller to return deletes it.
          struct OnceObj {
            kgmp::Once once;
            std::atomic<int> refs{3};
          };
          auto* once = new OnceObj;
          // Semaphore: a waiter that gets the unit deletes it.
          auto* sem = new kgmp::Semaphore(1);
          sem->acquire();
          // Cond: the waiter deletes mutex and Cond once woken.
          struct CondObj {
            kgmp::Mutex mu;
            kgmp::Cond cv{mu};
            bool ready = false;
          };
          auto* c = new CondObj;
          all.add(3 + 2 + 3 + 1 + 1);
          for (int g = 0; g < 3; g++) {
            kgmp::go([m, &all] {
              m->mu.lock();
              bool last = --m->refs == 0;
              m->mu.unlock();
              if (last) delete m;
              all.done();
            });
            if (g < 2) kgmp::go([rw, g, &all] {
              bool last;
              if (g == 0) {
                rw->rw.lock();
                last = rw->refs.fetch_sub(1) == 1;
                rw->rw.unlock();
              } else {
                rw->rw.rlock();
                last = rw->refs.fetch_sub(1) == 1;
                rw->rw.runlock();
              }
              if (last) delete rw;
              all.done();
            });
            kgmp::go([once, &all] {
              once->once.call([] { kgmp::yield(); });
              if (once->refs.fetch_sub(1) == 1) delete once;
              all.done();
            });
          }
          kgmp::go([sem, &all] {
            sem->acquire();
            delete sem;
            all.done();
          });
          kgmp::go([c, &all] {
            c->mu.lock();
            while (!c->ready) c->cv.wait();
            c->mu.unlock();
            delete c;
            all.done();
          });
          kgmp::yield();
          sem->release();
          c->mu.lock();
          c->ready = true;
          c->cv.signal();
          c->mu.unlock();
          all.wait();
        }
      },
      cfg());
}

INSTANTIATE_TEST_SUITE_P(Procs, Sync, ::testing::Range(1, ncpus() + 1),
                         [](const auto& info) { return "P" + std::to_string(info.param); });

// ---- on one P, where the order in which Gs queue is deterministic ----

// A spawned G takes runnext; the spawner's yield runs it until it parks, then comes back.
TEST(SyncOneP, SemaphoreServesWaitersInOrder) {
  constexpr int kWaiters = 10;
  std::vector<int> order;
  kgmp::run(
      [&] {
        kgmp::Semaphore sem(1);
        sem.acquire();
        kgmp::WaitGroup wg;
        wg.add(kWaiters);
        for (int i = 0; i < kWaiters; i++) {
          kgmp::go([&, i] {
            sem.acquire();
            order.push_back(i);
            sem.release();
            wg.done();
          });
          kgmp::yield();  // i parks in acquire() before i+1 starts
        }
        sem.release();
        wg.wait();
      },
      kgmp::Config{.procs = 1});
  std::vector<int> want;
  for (int i = 0; i < kWaiters; i++) want.push_back(i);
  EXPECT_EQ(order, want);
}

TEST(SyncOneP, SemaphoreBigRequestAtTheHeadBlocksSmallerOnes) {
  std::atomic<bool> big_in{false}, small_in{false};
  bool small_in_early = true, big_in_early = true;
  kgmp::run(
      [&] {
        kgmp::Semaphore sem(4);
        sem.acquire(3);  // 1 free
        kgmp::WaitGroup wg;
        wg.add(2);
        kgmp::go([&] {
          sem.acquire(3);
          big_in = true;
          wg.done();
        });
        kgmp::yield();
        kgmp::go([&] {
          sem.acquire(1);  // would fit, but the big request is ahead
          small_in = true;
          wg.done();
        });
        kgmp::yield();
        sem.release(1);  // 2 free: still not enough for the head
        for (int i = 0; i < 10; i++) kgmp::yield();
        small_in_early = small_in.load();
        big_in_early = big_in.load();
        sem.release(2);  // 4 free: 3 for the head, then 1 for the next
        wg.wait();
        EXPECT_FALSE(sem.try_acquire(1)) << "both requests hold their units";
      },
      kgmp::Config{.procs = 1});
  EXPECT_FALSE(big_in_early);
  EXPECT_FALSE(small_in_early) << "the small request overtook the big one at the head";
  EXPECT_TRUE(big_in.load());
  EXPECT_TRUE(small_in.load());
}

// Cond::signal serves waiters in the order they called wait().
TEST(SyncOneP, CondSignalWakesTheLongestWaiter) {
  constexpr int kWaiters = 6;
  std::vector<int> order;
  kgmp::run(
      [&] {
        kgmp::Mutex mu;
        kgmp::Cond cv(mu);
        int tokens = 0;
        kgmp::WaitGroup wg;
        wg.add(kWaiters);
        for (int i = 0; i < kWaiters; i++) {
          kgmp::go([&, i] {
            kgmp::MutexLock l(mu);
            while (tokens == 0) cv.wait();
            tokens--;
            order.push_back(i);
            wg.done();
          });
          kgmp::yield();
        }
        for (int i = 0; i < kWaiters; i++) {
          {
            kgmp::MutexLock l(mu);
            tokens++;
            cv.signal();
          }
          kgmp::yield();  // the woken one runs (and takes the token) before the next signal
        }
        wg.wait();
      },
      kgmp::Config{.procs = 1});
  std::vector<int> want;
  for (int i = 0; i < kWaiters; i++) want.push_back(i);
  EXPECT_EQ(order, want);
}

// ---- fatal errors and wait reasons ----
//
// These misuse the locks on purpose, which -Wthread-safety rightly reports.
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wthread-safety-analysis"

TEST(SyncDeathTest, UnlockOfUnlockedMutex) {
  EXPECT_DEATH(kgmp::run([] {
                 kgmp::Mutex mu;
                 mu.unlock();
               }),
               "fatal error: sync: unlock of unlocked mutex");
}

TEST(SyncDeathTest, RUnlockOfUnlockedRWMutex) {
  EXPECT_DEATH(kgmp::run([] {
                 kgmp::RWMutex rw;
                 rw.runlock();
               }),
               "fatal error: sync: RUnlock of unlocked RWMutex");
  EXPECT_DEATH(kgmp::run([] {
                 kgmp::RWMutex rw;
                 rw.lock();
                 rw.runlock();
               }),
               "fatal error: sync: RUnlock of unlocked RWMutex");
}

TEST(SyncDeathTest, UnlockOfUnlockedRWMutex) {
  EXPECT_DEATH(kgmp::run([] {
                 kgmp::RWMutex rw;
                 rw.unlock();
               }),
               "fatal error: sync: Unlock of unlocked RWMutex");
  EXPECT_DEATH(kgmp::run([] {
                 kgmp::RWMutex rw;
                 rw.rlock();
                 rw.unlock();
               }),
               "fatal error: sync: Unlock of unlocked RWMutex");
}

TEST(SyncDeathTest, SemaphoreReleasedMoreThanHeld) {
  EXPECT_DEATH(kgmp::run([] {
                 kgmp::Semaphore sem(2);
                 sem.acquire(1);
                 sem.release(2);
               }),
               "semaphore: released more than held");
}

TEST(SyncDeathTest, SemaphoreAcquireBeyondItsSize) {
  EXPECT_DEATH(kgmp::run([] {
                 kgmp::Semaphore sem(2);
                 sem.acquire(3);
               }),
               "semaphore: acquire\\(3\\) on a semaphore of size 2 would wait forever");
}

TEST(SyncDeathTest, ContendedLockOutsideAGoroutine) {
  EXPECT_DEATH(
      {
        kgmp::Mutex mu;
        mu.lock();
        mu.lock();
      },
      "used outside a goroutine \\(sync.Mutex.Lock\\)");
}

// A G blocked forever shows its wait reason in the runtime's deadlock report.
void deadlock_on(void (*block)()) {
  kgmp::run(
      [block] {
        kgmp::WaitGroup never;
        never.add(1);
        kgmp::go(block);
        never.wait();
      },
      kgmp::Config{.procs = 1});
}

kgmp::Mutex reason_mu;
kgmp::RWMutex reason_rw;
kgmp::Semaphore reason_sem(1);

TEST(SyncDeathTest, WaitReasonMutexLock) {
  EXPECT_DEATH(deadlock_on([] {
                 reason_mu.lock();
                 reason_mu.lock();
               }),
               "\\[sync.Mutex.Lock\\]");
}

TEST(SyncDeathTest, WaitReasonRWMutexRLock) {
  EXPECT_DEATH(deadlock_on([] {
                 reason_rw.lock();
                 reason_rw.rlock();
               }),
               "\\[sync.RWMutex.RLock\\]");
}

TEST(SyncDeathTest, WaitReasonRWMutexLock) {
  EXPECT_DEATH(deadlock_on([] {
                 reason_rw.rlock();
                 reason_rw.lock();
               }),
               "\\[sync.RWMutex.Lock\\]");
}

TEST(SyncDeathTest, WaitReasonCondWait) {
  EXPECT_DEATH(deadlock_on([] {
                 kgmp::Cond cv(reason_mu);
                 reason_mu.lock();
                 cv.wait();
               }),
               "\\[sync.Cond.Wait\\]");
}

TEST(SyncDeathTest, WaitReasonSemaphore) {
  EXPECT_DEATH(deadlock_on([] {
                 reason_sem.acquire();
                 reason_sem.acquire();
               }),
               "\\[semacquire\\]");
}

#pragma clang diagnostic pop

}  // namespace
