// time_test.cpp — sleeping, after, Timer, Ticker, Context, and Go's deadlock detection.
// Timing never decides pass/fail here, except "never early", which is a guarantee.
#include <sched.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <random>
#include <vector>

#include "export_test.h"
#include "kgmp/kgmp.h"
#include "test_util.h"

namespace {

using namespace std::chrono_literals;

using kgmp_test::ncpus;

class Time : public ::testing::TestWithParam<int> {
 protected:
  kgmp::Config cfg() { return kgmp::Config{.procs = GetParam()}; }
  void TearDown() override {
    auto st = kgmp::internal::last_run_stats();
    EXPECT_TRUE(kgmp::internal::accounted(st))
        << "spawned " << st.spawned << " exited " << st.exited << " abandoned " << st.abandoned;
    EXPECT_LE(st.abandoned, 2u) << "only Gs on their way out may be abandoned";
  }
};

// A sleeping G parks: on one P another G keeps running meanwhile.
TEST_P(Time, SleepParksTheGoroutineNotTheThread) {
  std::atomic<long> spins{0};
  std::atomic<bool> done{false};
  kgmp::run(
      [&] {
        kgmp::WaitGroup wg;
        wg.add(1);
        kgmp::go([&] {
          while (!done) {
            spins++;
            kgmp::yield();
          }
          wg.done();
        });
        auto t0 = kgmp::Clock::now();
        kgmp::sleep_for(30ms);
        EXPECT_GE(kgmp::Clock::now() - t0, 30ms);
        done = true;
        wg.wait();
      },
      cfg());
  EXPECT_GT(spins.load(), 0);
}

// 10,000 Gs sleeping random durations: none wakes early; on one P they wake in deadline order.
// Deadlines are set once every G has started (a slow build, e.g. under TSan, must not let a
// deadline pass before its G sleeps), and the poll monitor is used so that no hand-off lets
// two Ms record wakes concurrently on the one P.
TEST_P(Time, TenThousandSleepersWakeInOrderNoneEarly) {
  constexpr int kGs = 10000;
  std::vector<std::int64_t> offset_us(kGs);
  std::vector<int> wake_order;
  std::vector<char> in_time(kGs);  // parked before the first deadline (a loaded machine may not)
  std::mutex mu;
  std::atomic<int> early{0};
  std::mt19937 rng(42);
  for (auto& o : offset_us) o = rng() % 200000;
  setenv("KGMP_MONITOR", "poll", 1);
  kgmp::run(
      [&] {
        kgmp::WaitGroup started, gate, wg;
        started.add(kGs);
        gate.add(1);
        wg.add(kGs);
        kgmp::Clock::time_point base;
        for (int i = 0; i < kGs; i++) {
          kgmp::go([&, i] {
            started.done();
            gate.wait();
            auto when = base + std::chrono::microseconds(offset_us[i]);
            in_time[i] = kgmp::Clock::now() < base;
            kgmp::sleep_until(when);
            if (kgmp::Clock::now() < when) early++;
            {
              std::lock_guard<std::mutex> l(mu);
              wake_order.push_back(i);
            }
            wg.done();
          });
        }
        started.wait();
        base = kgmp::Clock::now() + 500ms;  // every G parks on its timer well before
        gate.done();
        wg.wait();
      },
      cfg());
  unsetenv("KGMP_MONITOR");
  EXPECT_EQ(early.load(), 0);
  ASSERT_EQ(wake_order.size(), static_cast<std::size_t>(kGs));
  if (GetParam() == 1) {
    // Among the Gs that were asleep before the first deadline, wake order is deadline order.
    int inversions = 0, prev = -1, counted = 0;
    for (int i : wake_order) {
      if (!in_time[i]) continue;
      counted++;
      if (prev >= 0 && offset_us[i] < offset_us[prev]) inversions++;
      prev = i;
    }
    EXPECT_GT(counted, 0);
    EXPECT_EQ(inversions, 0);
  }
}

TEST_P(Time, AfterInSelectTimesOut) {
  kgmp::run(
      [&] {
        kgmp::Chan<int> never(0);
        bool timed_out = false;
        auto t0 = kgmp::Clock::now();
        kgmp::select(kgmp::on_recv(never),
                     kgmp::on_recv(kgmp::after(20ms), [&](auto) { timed_out = true; }));
        EXPECT_TRUE(timed_out);
        EXPECT_GE(kgmp::Clock::now() - t0, 20ms);
      },
      cfg());
}

TEST_P(Time, TimerStopAndReset) {
  kgmp::run(
      [&] {
        kgmp::Timer t(10ms);
        EXPECT_TRUE(t.stop()) << "pending";
        EXPECT_FALSE(t.stop()) << "already stopped";
        kgmp::sleep_for(20ms);
        EXPECT_EQ(t.c().try_recv().status, kgmp::RecvStatus::kWouldBlock) << "stopped: no value";
        EXPECT_FALSE(t.reset(5ms));
        auto v = t.c().recv();
        EXPECT_TRUE(v.has_value());
        // Fired and drained: reset again, then stop before it fires.
        t.reset(1h);
        EXPECT_TRUE(t.stop());
      },
      cfg());
}

TEST_P(Time, TickerTicksUntilStopped) {
  kgmp::run(
      [&] {
        kgmp::Ticker tick(2ms);
        auto prev = kgmp::Clock::time_point{};
        for (int i = 0; i < 5; i++) {
          auto v = tick.c().recv();
          ASSERT_TRUE(v.has_value());
          EXPECT_GT(*v, prev) << "tick times increase";
          prev = *v;
        }
        tick.stop();
        kgmp::sleep_for(10ms);
        EXPECT_EQ(tick.c().try_recv().status, kgmp::RecvStatus::kWouldBlock);
      },
      cfg());
}

TEST_P(Time, ContextCancelPropagatesDown) {
  kgmp::run(
      [&] {
        auto [parent, cancel] = kgmp::Context::with_cancel(kgmp::Context::background());
        auto [child, cancel_child] = kgmp::Context::with_cancel(parent);
        auto [grandchild, cancel_gc] = kgmp::Context::with_cancel(child);
        std::atomic<int> woke{0};
        kgmp::WaitGroup wg;
        wg.add(3);
        for (auto ctx : {parent, child, grandchild})
          kgmp::go([&, ctx] {
            ctx.done().recv();
            EXPECT_EQ(ctx.err(), kgmp::Context::Err::kCanceled);
            woke++;
            wg.done();
          });
        kgmp::yield();
        EXPECT_EQ(grandchild.err(), kgmp::Context::Err::kNone);
        cancel();
        wg.wait();
        EXPECT_EQ(woke.load(), 3);
        cancel();  // idempotent
        // A child of a cancelled context is born cancelled.
        auto [late, cl] = kgmp::Context::with_cancel(parent);
        EXPECT_EQ(late.err(), kgmp::Context::Err::kCanceled);
        EXPECT_EQ(std::string(kgmp::to_string(late.err())), "context canceled");
      },
      cfg());
}

TEST_P(Time, ContextDeadline) {
  kgmp::run(
      [&] {
        auto t0 = kgmp::Clock::now();  // before the deadline starts (slow emulators: see vm-test)
        auto [ctx, cancel] = kgmp::Context::with_timeout(kgmp::Context::background(), 15ms);
        ASSERT_TRUE(ctx.deadline().has_value());
        kgmp::Chan<int> work(0);
        bool expired = false;
        kgmp::select(kgmp::on_recv(work),
                     kgmp::on_recv(ctx.done(), [&](auto) { expired = true; }));
        EXPECT_TRUE(expired);
        EXPECT_GE(kgmp::Clock::now() - t0, 15ms);
        EXPECT_EQ(ctx.err(), kgmp::Context::Err::kDeadlineExceeded);
        // A child's later deadline yields to the parent's.
        auto [child, cc] = kgmp::Context::with_timeout(ctx, 1h);
        EXPECT_EQ(child.deadline(), ctx.deadline());
        EXPECT_EQ(child.err(), kgmp::Context::Err::kDeadlineExceeded);
        // Background is never done.
        EXPECT_EQ(kgmp::select(kgmp::on_recv(kgmp::Context::background().done()),
                               kgmp::otherwise()),
                  1);
      },
      cfg());
}

// Sleeping Gs are not deadlocked: the timer will wake them.
TEST_P(Time, SleepingIsNotADeadlock) {
  kgmp::run(
      [&] {
        kgmp::Chan<int> c(0);
        kgmp::go([c]() mutable {
          kgmp::sleep_for(20ms);
          c.send(1);
        });
        EXPECT_EQ(c.recv(), 1);
      },
      cfg());
}

INSTANTIATE_TEST_SUITE_P(Procs, Time, ::testing::Range(1, ncpus() + 1),
                         kgmp_test::procs_name);

TEST(DeadlockDeathTest, MainBlockedOnAChannelNobodySendsOn) {
  EXPECT_EXIT(kgmp::run([] {
                kgmp::Chan<int> c(0);
                c.recv();
              }),
              ::testing::ExitedWithCode(2),
              "fatal error: all goroutines are asleep - deadlock!\n\ngoroutine 1 \\[chan receive\\]:");
}

TEST(DeadlockDeathTest, EveryGoroutineWithItsWaitReason) {
  EXPECT_EXIT(kgmp::run([] {
                kgmp::Chan<int> a(0), b(0);
                kgmp::go([a]() mutable { a.send(1); });  // blocks: nobody receives on a
                kgmp::go([a, b]() mutable {
                  kgmp::select(kgmp::on_recv(b), kgmp::on_recv(kgmp::Chan<int>()));
                });
                kgmp::WaitGroup wg;
                wg.add(1);
                wg.wait();
              }, kgmp::Config{.procs = 2}),
              ::testing::ExitedWithCode(2),
              "all goroutines are asleep - deadlock!(.|\n)*goroutine 1 \\[sync.WaitGroup.Wait\\]"
              "(.|\n)*\\[chan send\\](.|\n)*\\[select\\]");
}

TEST(DeadlockDeathTest, SelectWithNoCases) {
  EXPECT_EXIT(kgmp::run([] { kgmp::select(); }), ::testing::ExitedWithCode(2),
              "goroutine 1 \\[select \\(no cases\\)\\]");
}

}  // namespace
