// stack_test.cpp — the G stack pool: guard pages up to the mapping budget, canaries beyond,
// hot reuse (a spawn/exit loop touches no new stack), and everything back at teardown.
#include <gtest/gtest.h>

#include <atomic>

#include "export_test.h"
#include "kgmp/kgmp.h"

namespace {
using kgmp::internal::last_run_stats;

class StackPool : public ::testing::Test {
 protected:
  void TearDown() override { kgmp::internal::set_guard_budget_for_test(-1); }
};

// 1000 Gs parked at once with a budget of 62 guarded stacks (one chunk): the rest come from
// unguarded chunks, and all of them run.
TEST_F(StackPool, GuardBudgetThenCanaries) {
  kgmp::internal::set_guard_budget_for_test(62);
  std::atomic<int> ran{0};
  kgmp::run(
      [&] {
        kgmp::WaitGroup gate, started, finished;
        gate.add(1);
        started.add(1000);
        finished.add(1000);
        for (int i = 0; i < 1000; i++)
          kgmp::go([&] {
            ran++;
            started.done();
            gate.wait();
            finished.done();
          });
        started.wait();
        EXPECT_GE(kgmp::internal::live_stacks_now(), 1000u);
        gate.done();
        finished.wait();
      },
      kgmp::Config{.procs = 1});
  auto st = last_run_stats();
  EXPECT_EQ(ran.load(), 1000);
  EXPECT_GE(st.stacks_carved, 1000u);
  EXPECT_LE(st.stacks_guarded, 62u);
  EXPECT_GT(st.stacks_guarded, 0u);
  EXPECT_EQ(st.stacks_free, st.stacks_carved);
}

// Spawning and joining one G at a time reuses the same stack: no new stack per G.
TEST_F(StackPool, SequentialSpawnsReuseOneStack) {
  kgmp::run(
      [&] {
        for (int i = 0; i < 10000; i++) {
          kgmp::WaitGroup wg;
          wg.add(1);
          kgmp::go([&] { wg.done(); });
          wg.wait();
        }
      },
      kgmp::Config{.procs = 1});
  EXPECT_LE(last_run_stats().stacks_carved, 8u);  // one carve batch, then reuse
}

TEST_F(StackPool, StackSizeIsUsable) {
  // A G may use nearly all of a 64 KiB stack.
  std::atomic<int> ok{0};
  kgmp::run(
      [&] {
        kgmp::WaitGroup wg;
        wg.add(1);
        kgmp::go([&] {
          volatile char buf[56 * 1024];
          for (std::size_t i = 0; i < sizeof buf; i += 512) buf[i] = 1;
          ok = buf[0];
          wg.done();
        });
        wg.wait();
      },
      kgmp::Config{.procs = 1, .stack_size = 64 * 1024});
  EXPECT_EQ(ok.load(), 1);
}

}  // namespace
