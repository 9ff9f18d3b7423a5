// blocking_test.cpp — hand-off of a P whose M blocks in the kernel, under the poll monitor
// (no privileges needed): kgmp::blocking() sections, the P lease, and the P-less path.
// The trace monitor's tests (unmarked blocking) are in tests/bpf.
#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>

#include "blocking_util.h"
#include "export_test.h"
#include "kgmp/kgmp.h"

namespace {

class Poll : public ::testing::Test {
 protected:
  void SetUp() override { setenv("KGMP_MONITOR", "poll", 1); }
  void TearDown() override { unsetenv("KGMP_MONITOR"); }
};

// A rescue thread writes the pipe after `after` if the test has not: the test then fails
// instead of hanging.
struct Rescue {
  int fd;
  std::atomic<bool> done{false}, fired{false};
  std::thread t;
  Rescue(int fd, std::chrono::seconds after) : fd(fd) {
    t = std::thread([this, after] {
      auto end = std::chrono::steady_clock::now() + after;
      while (!done && std::chrono::steady_clock::now() < end)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      if (!done) {
        fired = true;
        char c = 'r';
        (void)!write(this->fd, &c, 1);
      }
    });
  }
  ~Rescue() {
    done = true;
    t.join();
  }
};

// With one P, a G blocked in a marked read() must not stop the others: the poll monitor hands
// the P to another M, and when the read returns, its G continues on some M.
TEST_F(Poll, BlockedSectionHandsOffTheP) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  Rescue rescue(fds[1], std::chrono::seconds(20));
  std::atomic<long> progress{0};
  std::atomic<bool> read_ok{false};
  const char* mon = nullptr;
  kgmp::run(
      [&] {
        mon = kgmp::monitor();
        kgmp::WaitGroup wg;
        wg.add(2);
        kgmp::go([&] {
          char c;
          ssize_t n = kgmp::blocking([&] { return read(fds[0], &c, 1); });
          read_ok = n == 1 && c == 'x';
          wg.done();
        });
        kgmp::go([&] {
          // Runs only if the P was handed off: the reader's M is blocked in the kernel.
          for (int i = 0; i < 1000; i++) {
            progress++;
            kgmp::yield();
          }
          char c = 'x';
          (void)!write(fds[1], &c, 1);
          wg.done();
        });
        wg.wait();
      },
      kgmp::Config{.procs = 1});
  EXPECT_STREQ(mon, "poll");
  EXPECT_FALSE(rescue.fired.load()) << "the P was never handed off";
  EXPECT_TRUE(read_ok.load());
  EXPECT_EQ(progress.load(), 1000);
  auto st = kgmp::internal::last_run_stats();
  EXPECT_TRUE(kgmp::internal::accounted(st));
  EXPECT_GE(st.threads, 2u) << "a second M ran the P";
  close(fds[0]);
  close(fds[1]);
}

// Many Gs block in marked sleeps over 2 Ps while others compute: every G finishes and the
// teardown accounts for every G and stack (no G lost when Ms lose and regain Ps).
TEST_F(Poll, ManyBlockingGoroutinesNoneLost) {
  constexpr int kGs = 2000;
  std::atomic<int> finished{0};
  kgmp::run(
      [&] {
        kgmp::WaitGroup wg;
        wg.add(kGs);
        for (int i = 0; i < kGs; i++)
          kgmp::go([&, i] {
            if (i % 4 == 0) {
              kgmp::blocking([&] { usleep(200 + (i % 7) * 100); });
            } else {
              volatile double x = 1;
              for (int k = 0; k < 2000; k++) x = x * 1.0000001;
              kgmp::yield();
            }
            finished++;
            wg.done();
          });
        wg.wait();
      });
  EXPECT_EQ(finished.load(), kGs);
  auto st = kgmp::internal::last_run_stats();
  EXPECT_TRUE(kgmp::internal::accounted(st));
}

// The poll twins of tests/bpf/handoff_test.cpp (blocking_util.h): with one P, a G blocks in
// the kernel inside kgmp::blocking() while another must keep running.
long progress_while_marked_block(const std::function<void()>& block,
                                 const std::function<void()>& release) {
  kgmp_test::Rescue rescue(release);
  return kgmp_test::progress_while_blocked("poll", /*marked=*/true, block, release);
}

TEST_F(Poll, MarkedNanosleepHandsOffTheP) {
  long during = progress_while_marked_block(
      [] {
        timespec ts{0, 200 * 1000 * 1000};
        nanosleep(&ts, nullptr);
      },
      [] {});
  EXPECT_GT(during, 0) << "the P was not handed off while nanosleep() blocked";
}

TEST_F(Poll, MarkedFutexWaitHandsOffTheP) {
  static kgmp_test::FutexGate gate;
  gate.word = 0;
  long during = progress_while_marked_block([] { gate.wait(); }, [] { gate.open(); });
  EXPECT_GT(during, 0) << "the P was not handed off while the futex wait blocked";
}

// Major page faults on a file evicted from the page cache, read through a fresh mapping with
// read-ahead off (each touched page waits for the disk), the whole walk marked as blocking.
TEST_F(Poll, MarkedMajorPageFaultsHandOffTheP) {
  kgmp_test::EvictedMapping file;
  ASSERT_TRUE(file.ok());
  long sum = 0;
  long during = progress_while_marked_block([&] { sum = file.touch_all(); }, [] {});
  EXPECT_EQ(sum, kgmp_test::EvictedMapping::expected_sum());
  EXPECT_GT(during, 0) << "the P was not handed off during major page faults";
}

TEST(MonitorConfig, BadMonitorName) {
  setenv("KGMP_MONITOR", "magic", 1);
  absl::Status s = kgmp::check_config();
  unsetenv("KGMP_MONITOR");
  EXPECT_EQ(s.message(), "KGMP_MONITOR=\"magic\" is not a monitor; use auto, scx, trace or poll, or unset it");
}

TEST(MonitorConfig, BadSparePolicy) {
  setenv("KGMP_TRACE_SPARE", "spin", 1);
  absl::Status s = kgmp::check_config();
  unsetenv("KGMP_TRACE_SPARE");
  EXPECT_EQ(s.message(),
            "KGMP_TRACE_SPARE=\"spin\" is not a spare policy; use held (the trace monitor keeps "
            "each core's spare runnable at SCHED_IDLE) or sleep, or unset it");
  setenv("KGMP_TRACE_SPARE", "sleep", 1);
  EXPECT_TRUE(kgmp::check_config().ok());
  unsetenv("KGMP_TRACE_SPARE");
}

TEST(MonitorConfig, BlockingOutsideTheRuntimeJustCalls) {
  EXPECT_EQ(kgmp::blocking([] { return 42; }), 42);
}

}  // namespace
