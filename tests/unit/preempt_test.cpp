// preempt_test.cpp — preemption: a G that runs on a P past Config::preempt_slice
// while other Gs wait for that P stops holding it.
//
// Every test asserts behaviour, never timing: a G that never enters the runtime (a "hog",
// spinning on a relaxed atomic load) shares the Ps with work that must still happen (a timer,
// a channel receive, run()'s return, a ping-pong, blocking calls). Without preemption that
// work never runs, so a guard thread turns the hang into a failure (it prints what did not
// happen and exits 1). Synchronization is on events (flags, channels, WaitGroups), never on
// sleeps. Each test runs under the poll monitor, and under trace where BPF is available
// (skipped with the reason elsewhere; KGMP_REQUIRE_BPF=1 makes that a failure).
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "blocking_util.h"
#include "export_test.h"
#include "kgmp/kgmp.h"
#include "kgmp/telemetry.h"
#include "test_util.h"

namespace {

using namespace std::chrono_literals;
using kgmp_test::ncpus;

// Fails the test instead of letting it hang: unless disarmed (destroyed) within `limit`, prints
// `what` and exits 1 (gtest_discover_tests runs each test in its own process).
class HangGuard {
 public:
  explicit HangGuard(std::string what, std::chrono::seconds limit = 30s)
      : what_(std::move(what)) {
    t_ = std::thread([this, limit] {
      std::unique_lock<std::mutex> l(mu_);
      if (!cv_.wait_for(l, limit, [this] { return done_; })) {
        fprintf(stderr, "preempt_test: hung for %llds: %s (was the hog preempted?)\n",
                static_cast<long long>(limit.count()), what_.c_str());
        fflush(stderr);
        _exit(1);
      }
    });
  }
  ~HangGuard() {
    {
      std::lock_guard<std::mutex> l(mu_);
      done_ = true;
    }
    cv_.notify_all();
    t_.join();
  }
  HangGuard(const HangGuard&) = delete;
  HangGuard& operator=(const HangGuard&) = delete;

 private:
  std::string what_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread t_;
};

// A G that never enters the runtime: it spins on a relaxed load until stop is set. The flags
// live outside kgmp::run so that an abandoned hog never reads a dead frame.
struct Hog {
  std::atomic<bool> stop{false};
  std::atomic<bool> started{false};
  std::atomic<bool> done{false};
  void spin() {
    started.store(true, std::memory_order_relaxed);
    while (!stop.load(std::memory_order_relaxed)) {
    }
    done.store(true, std::memory_order_release);
  }
  void start() {
    kgmp::go([this] { spin(); });
  }
};

// Yields until `f` holds (from a G: each yield lets the others run).
template <class F>
void yield_until(F f) {
  while (!f()) kgmp::yield();
}

// Stops the hogs and waits (from a G) until each has returned.
void finish(std::vector<Hog>& hogs) {
  for (Hog& h : hogs) h.stop.store(true, std::memory_order_relaxed);
  for (Hog& h : hogs) yield_until([&] { return h.done.load(std::memory_order_acquire); });
}

std::uint64_t preemptions() {
  std::uint64_t n = 0;
  for (const kgmp::ProcStats& p : kgmp::proc_stats()) n += p.preemptions;
  return n;
}

// Computes for `d` without entering the runtime (steady_clock is the vDSO).
void compute_for(std::chrono::nanoseconds d) {
  const auto end = std::chrono::steady_clock::now() + d;
  while (std::chrono::steady_clock::now() < end) {
  }
}

class Preempt : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    unsetenv("KGMP_PREEMPT_SLICE");
    if (std::string(GetParam()) != "poll")
      KGMP_SKIP_UNLESS(kgmp_test::monitor_unavailable(GetParam()), "KGMP_REQUIRE_BPF");
    setenv("KGMP_MONITOR", GetParam(), 1);
  }
  void TearDown() override {
    unsetenv("KGMP_MONITOR");
    unsetenv("KGMP_PREEMPT_SLICE");
    kgmp::internal::set_lease_check_for_test(false);
  }
  bool trace() const { return std::string(GetParam()) == "trace"; }
  // A read of a pipe that blocks in the kernel: marked under poll (which sees only marked
  // calls), bare under trace (which sees every block).
  void read_blocking(int fd) const {
    char c;
    if (trace())
      (void)!read(fd, &c, 1);
    else
      kgmp::blocking([&] { return read(fd, &c, 1); });
  }
  static kgmp::Config procs(int n) {
    kgmp::Config c;
    c.procs = n;
    return c;
  }
};

// ---- a. a hog on 1 P does not stop a timer, a channel receive or run()'s return ----

TEST_P(Preempt, TimerFiresWhileHogSpins) {
  HangGuard guard("kgmp::sleep_for(20ms) never returned while a hog spun on the only P");
  std::vector<Hog> hogs(1);
  bool slept = false;
  kgmp::run(
      [&] {
        hogs[0].start();
        kgmp::sleep_for(20ms);  // parks; the hog takes the P; the timer must get it back
        slept = true;
        finish(hogs);
      },
      procs(1));
  EXPECT_TRUE(slept);
  EXPECT_TRUE(hogs[0].done.load());
  EXPECT_GE(preemptions(), 1u);
  EXPECT_TRUE(kgmp::internal::accounted(kgmp::internal::last_run_stats()));
}

TEST_P(Preempt, ChannelReceiveWhileHogSpins) {
  HangGuard guard("a channel receive never completed while a hog spun on the only P");
  std::vector<Hog> hogs(1);
  int got = 0;
  kgmp::run(
      [&] {
        kgmp::Chan<int> c(0);
        hogs[0].start();
        kgmp::go([&, c]() mutable {  // sends only once the hog holds the P
          yield_until([&] { return hogs[0].started.load(std::memory_order_relaxed); });
          c.send(42);
        });
        got = c.recv().value_or(-1);
        finish(hogs);
      },
      procs(1));
  EXPECT_EQ(got, 42);
  EXPECT_GE(preemptions(), 1u);
  EXPECT_TRUE(kgmp::internal::accounted(kgmp::internal::last_run_stats()));
}

// The hog still spins when main returns: run() returns anyway, leaving the hog's M behind (an
// orphan). Its flags outlive run(); once stopped, the hog returns into the runtime, where its
// M parks for good, and a later run() is not disturbed by it.
TEST_P(Preempt, RunReturnsWhileHogSpins) {
  HangGuard guard("run() never returned while a hog still spun (main had returned)");
  static std::vector<Hog> hogs(1);  // static: the abandoned hog may still read its flag
  hogs[0].stop = false;
  hogs[0].started = false;
  hogs[0].done = false;
  kgmp::run(
      [&] {
        hogs[0].start();
        yield_until([&] { return hogs[0].started.load(std::memory_order_relaxed); });
      },  // returns with the hog spinning
      procs(1));
  auto st = kgmp::internal::last_run_stats();
  EXPECT_GE(st.abandoned, 1u);
  EXPECT_EQ(st.orphaned, 1u) << "the hog's M is the one left behind";
  EXPECT_TRUE(kgmp::internal::accounted(st));
  hogs[0].stop = true;
  while (!hogs[0].done.load()) sched_yield();  // it returns on its own stack, still mapped
  std::atomic<int> ran{0};
  kgmp::run([&] { kgmp::go([&] { ran++; }); ran++; kgmp::yield(); }, procs(1));
  EXPECT_GE(ran.load(), 1);
}

// A G blocked in the kernel when main returns (a plain read of a pipe nobody writes yet): run()
// returns; once the read returns, the G comes back into the runtime and its M parks for good.
TEST_P(Preempt, RunReturnsWhileAGBlocksInTheKernel) {
  HangGuard guard("run() never returned while a G was blocked in read() (main had returned)");
  static int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  static std::atomic<bool> reading, read_back;  // static: the abandoned G reads them
  reading = false;
  read_back = false;
  kgmp::run(
      [&] {
        kgmp::go([] {
          reading = true;
          char c;
          read_back = read(fds[0], &c, 1) == 1;
          kgmp::yield();  // into the runtime, after run() returned: its M parks here
          ADD_FAILURE() << "an abandoned G ran on after its M was left behind";
        });
        yield_until([] { return reading.load(); });
      },
      procs(1));
  EXPECT_EQ(kgmp::internal::last_run_stats().orphaned, 1u);
  ASSERT_EQ(write(fds[1], "x", 1), 1);
  while (!read_back.load()) sched_yield();
  close(fds[0]);
  close(fds[1]);
  kgmp::run([] {}, procs(1));  // the runtime is usable again
}

// ---- b. N hogs on N Ps, and main's sleep still returns ----

TEST_P(Preempt, EveryPSpinningMainSleepStillReturns) {
  const int n = ncpus();
  HangGuard guard("with a hog on each of the " + std::to_string(n) +
                  " Ps, main's sleep never returned");
  std::vector<Hog> hogs(n);
  bool slept = false;
  kgmp::run(
      [&] {
        for (Hog& h : hogs) h.start();
        for (Hog& h : hogs) yield_until([&] { return h.started.load(std::memory_order_relaxed); });
        kgmp::sleep_for(20ms);
        slept = true;
        finish(hogs);
      },
      procs(n));
  EXPECT_TRUE(slept);
  for (const Hog& h : hogs) EXPECT_TRUE(h.done.load());
  EXPECT_TRUE(kgmp::internal::accounted(kgmp::internal::last_run_stats()));
}

// ---- c. a hog and a ping-pong pair on 1 P: the pair completes its round trips ----

TEST_P(Preempt, PingPongCompletesBesideAHog) {
  constexpr int kRoundTrips = 50;
  HangGuard guard("a ping-pong pair never completed its round trips beside a hog on the only P");
  std::vector<Hog> hogs(1);
  int trips = 0;
  kgmp::Config cfg = procs(1);
  cfg.preempt_slice = 1ms;  // 100 or so hand-overs through the hog: keep the test short
  kgmp::run(
      [&] {
        hogs[0].start();
        yield_until([&] { return hogs[0].started.load(std::memory_order_relaxed); });
        kgmp::Chan<int> ping(0), pong(0);
        kgmp::WaitGroup wg;
        wg.add(2);
        kgmp::go([&, ping, pong]() mutable {
          for (int i = 0; i < kRoundTrips; i++) {
            ping.send(i);
            if (pong.recv() == i) trips++;
          }
          wg.done();
        });
        kgmp::go([&, ping, pong]() mutable {
          for (int i = 0; i < kRoundTrips; i++) pong.send(ping.recv().value_or(-1));
          wg.done();
        });
        wg.wait();
        finish(hogs);
      },
      cfg);
  EXPECT_EQ(trips, kRoundTrips);
  EXPECT_GE(preemptions(), 1u);
  EXPECT_TRUE(kgmp::internal::accounted(kgmp::internal::last_run_stats()));
}

// ---- d. hogs, blocking calls and channel traffic over 1..N Ps, lease invariant checked ----

TEST_P(Preempt, StressHogsBlockingAndChannels) {
  HangGuard guard("the stress of hogs, blocking calls and channels did not finish", 120s);
  kgmp::internal::set_lease_check_for_test(true);
  constexpr int kMsgs = 2000, kReads = 20, kSleeps = 20;
  for (int np = 1; np <= ncpus(); np++) {
    for (int round = 0; round < 3; round++) {
      int fds[2];
      ASSERT_EQ(pipe(fds), 0);
      std::vector<Hog> hogs(np);
      long sum = 0;
      int reads = 0, sleeps = 0;
      kgmp::Config cfg = procs(np);
      cfg.preempt_slice = 1ms;
      kgmp::run(
          [&] {
            for (Hog& h : hogs) h.start();
            kgmp::WaitGroup wg;
            kgmp::Chan<int> c(16);
            wg.add(6);
            kgmp::go([&, c]() mutable {  // producer
              for (int i = 1; i <= kMsgs; i++) c.send(i);
              c.close();
              wg.done();
            });
            kgmp::go([&, c]() mutable {  // consumer
              for (int v : c) sum += v;
              wg.done();
            });
            kgmp::go([&] {  // blocked in a marked read() of a pipe
              for (int i = 0; i < kReads; i++) {
                char x;
                EXPECT_EQ(kgmp::blocking([&] { return read(fds[0], &x, 1); }), 1);
                reads++;
              }
              wg.done();
            });
            kgmp::go([&] {  // its writer, one byte at a time, yielding between
              for (int i = 0; i < kReads; i++) {
                char x = 'x';
                EXPECT_EQ(write(fds[1], &x, 1), 1);
                kgmp::yield();
              }
              wg.done();
            });
            kgmp::go([&] {  // unmarked nanosleep: a block only the monitor can see
              for (int i = 0; i < kSleeps; i++) {
                timespec ts{0, 500000};
                nanosleep(&ts, nullptr);
                sleeps++;
              }
              wg.done();
            });
            kgmp::go([&] {  // a G that parks on timers
              for (int i = 0; i < 10; i++) kgmp::sleep_for(1ms);
              wg.done();
            });
            wg.wait();
            finish(hogs);
          },
          cfg);
      close(fds[0]);
      close(fds[1]);
      EXPECT_EQ(sum, static_cast<long>(kMsgs) * (kMsgs + 1) / 2) << np << " Ps";
      EXPECT_EQ(reads, kReads) << np << " Ps";
      EXPECT_EQ(sleeps, kSleeps) << np << " Ps";
      auto st = kgmp::internal::last_run_stats();
      EXPECT_EQ(st.lease_violations, 0u) << np << " Ps, round " << round;
      EXPECT_TRUE(kgmp::internal::accounted(st)) << np << " Ps, round " << round;
    }
  }
}

// ---- e. a hog that enters the runtime at last is requeued and finishes ----

TEST_P(Preempt, HogThatYieldsAtLastFinishes) {
  HangGuard guard("a preempted hog that then yielded never finished");
  std::atomic<bool> enter{false}, started{false}, yielded{false};
  bool main_ran = false;
  kgmp::run(
      [&] {
        kgmp::go([&] {
          started.store(true, std::memory_order_relaxed);
          while (!enter.load(std::memory_order_relaxed)) {
          }
          kgmp::yield();  // its first runtime entry
          yielded.store(true, std::memory_order_release);
        });
        yield_until([&] { return started.load(std::memory_order_relaxed); });
        main_ran = true;  // only a preemption of the hog lets main run again
        enter.store(true, std::memory_order_relaxed);
        yield_until([&] { return yielded.load(std::memory_order_acquire); });
      },
      procs(1));
  EXPECT_TRUE(main_ran);
  EXPECT_TRUE(yielded.load());
  EXPECT_GE(preemptions(), 1u);
  auto st = kgmp::internal::last_run_stats();
  EXPECT_EQ(st.spawned, st.exited + st.abandoned);
  EXPECT_TRUE(kgmp::internal::accounted(st));
}

// ---- f. a G blocked in the kernel is handed off, never preempted ----

// The blocked G holds its P past the slice (the releaser first sleeps 30 ms, 3 slices) while
// other work waits for the P: the P must be handed off, and nothing preempted.
TEST_P(Preempt, BlockedGIsHandedOffNotPreempted) {
  HangGuard guard("the P never came back from a G blocked in read()");
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  kgmp_test::Rescue rescue([&] {
    char x = 'r';
    (void)!write(fds[1], &x, 1);
  });
  std::atomic<bool> blocked{false}, released{false};
  int ran_while_blocked = 0;
  kgmp::run(
      [&] {
        kgmp::WaitGroup wg;
        wg.add(2);
        kgmp::go([&] {
          blocked.store(true, std::memory_order_release);
          read_blocking(fds[0]);
          wg.done();
        });
        kgmp::go([&] {  // the work that waits for the P
          yield_until([&] { return blocked.load(std::memory_order_acquire); });
          for (int i = 0; i < 100; i++) {
            if (!released.load(std::memory_order_acquire)) ran_while_blocked++;
            kgmp::yield();
          }
          kgmp::sleep_for(30ms);  // the blocked G stays blocked past the slice
          released.store(true, std::memory_order_release);
          char x = 'x';
          EXPECT_EQ(write(fds[1], &x, 1), 1);
          wg.done();
        });
        wg.wait();
      },
      procs(1));
  close(fds[0]);
  close(fds[1]);
  EXPECT_GT(ran_while_blocked, 0) << "the P was never handed off";
  EXPECT_GE(kgmp::internal::last_run_stats().handoffs, 1u);
  EXPECT_EQ(preemptions(), 0u) << "a G blocked in the kernel was preempted";
  EXPECT_TRUE(kgmp::internal::accounted(kgmp::internal::last_run_stats()));
}

// ---- g. a slice of 0 turns preemption off ----

// A G computes for 30 ms (3 default slices) without entering the runtime while another waits
// for the only P: with the slice at 0 nothing is preempted, and the waiting G runs once the
// computing one returns.
void expect_no_preemption(const kgmp::Config& cfg) {
  HangGuard guard("with preemption off, the waiting G never ran after the computing one returned");
  std::atomic<bool> computed{false};
  bool waiter_ran = false, waiter_saw_computed = false;
  kgmp::run(
      [&] {
        kgmp::WaitGroup wg;
        wg.add(2);
        kgmp::go([&] {  // queued first: runs after the computing G
          waiter_ran = true;
          waiter_saw_computed = computed.load(std::memory_order_acquire);
          wg.done();
        });
        kgmp::go([&] {  // runnext: runs first
          compute_for(30ms);
          computed.store(true, std::memory_order_release);
          wg.done();
        });
        wg.wait();
      },
      cfg);
  EXPECT_TRUE(waiter_ran);
  EXPECT_TRUE(waiter_saw_computed) << "the computing G was preempted";
  EXPECT_EQ(preemptions(), 0u);
  EXPECT_TRUE(kgmp::internal::accounted(kgmp::internal::last_run_stats()));
}

TEST_P(Preempt, SliceZeroInConfigPreemptsNothing) {
  kgmp::Config cfg = procs(1);
  cfg.preempt_slice = std::chrono::nanoseconds(0);
  expect_no_preemption(cfg);
}

TEST_P(Preempt, SliceZeroFromEnvironmentPreemptsNothing) {
  setenv("KGMP_PREEMPT_SLICE", "0", 1);
  expect_no_preemption(procs(1));  // Config's default 10 ms, overridden
}

INSTANTIATE_TEST_SUITE_P(Monitors, Preempt, ::testing::Values("poll", "trace"),
                         [](const ::testing::TestParamInfo<const char*>& i) {
                           return std::string(i.param);
                         });

}  // namespace
