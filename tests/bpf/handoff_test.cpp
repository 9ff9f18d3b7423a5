// handoff_test.cpp — the trace monitor end to end: with one P, a G blocked in the kernel
// WITHOUT kgmp::blocking (a read on a pipe, nanosleep, a futex wait, major page faults) must
// not stop the other Gs of that P: BPF sees the block and a watcher M takes the P over. Also:
// an unprivileged process falls back to poll and still hands off marked blocks, and a stress
// of random blocking Gs keeps the lease invariant and loses no G.
//
// Needs root and BPF: each test skips with the reason when the trace monitor cannot load, and
// fails instead under KGMP_REQUIRE_BPF=1 (scripts/test sets it where BPF works).
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <thread>

#include "../unit/blocking_util.h"
#include "../unit/test_util.h"
#include "export_test.h"
#include "kgmp_trace.h"
#include "kgmp/kgmp.h"

// The monitor under test: trace here; tests/vm/scx_handoff_test.cpp includes this file with
// KGMP_HANDOFF_MONITOR "scx" and KGMP_HANDOFF_REQUIRE "KGMP_REQUIRE_SCX". Every run of the
// process uses it (KGMP_MONITOR is set before any test), so auto never picks another one.
#ifndef KGMP_HANDOFF_MONITOR
#define KGMP_HANDOFF_MONITOR "trace"
#define KGMP_HANDOFF_REQUIRE "KGMP_REQUIRE_BPF"
#define KGMP_HANDOFF_IS_TRACE 1
#endif

namespace {

const bool kMonitorSet = (setenv("KGMP_MONITOR", KGMP_HANDOFF_MONITOR, 1), true);

bool require_bpf() { return kgmp_test::required(KGMP_HANDOFF_REQUIRE); }

// Runs a tiny runtime to learn whether the monitor under test loads here, and why not.
std::string trace_unavailable() {
  static std::string why = kgmp_test::monitor_unavailable(KGMP_HANDOFF_MONITOR);
  return why;
}

#define REQUIRE_TRACE() KGMP_SKIP_UNLESS(trace_unavailable(), KGMP_HANDOFF_REQUIRE)

// The shape of every test below (blocking_util.h): with one P, G "blocker" blocks in the
// kernel without telling the runtime; G "runner" counts how often it ran meanwhile.
template <class Block, class Release>
long progress_while_blocked(Block block, Release release) {
  return kgmp_test::progress_while_blocked(KGMP_HANDOFF_MONITOR, /*marked=*/false, block,
                                           release);
}
using kgmp_test::Rescue;

// A pipe a G blocks on with a raw read(): release() frees it, and so does a Rescue after 20 s if
// the test hangs (the fds are closed only after the Rescue's thread is joined).
struct RescuedPipe {
  struct Fds {
    int r = -1, w = -1;
    Fds() {
      int f[2];
      if (pipe(f) == 0) r = f[0], w = f[1];
    }
    ~Fds() {
      if (r >= 0) close(r);
      if (w >= 0) close(w);
    }
  } fds;
  std::function<void()> release = [this] {
    char c = 'x';
    (void)!write(fds.w, &c, 1);
  };
  Rescue rescue{release};

  bool ok() const { return fds.r >= 0; }
  void read_one() {  // a raw read(): the runtime is not told
    char c;
    (void)!read(fds.r, &c, 1);
  }
};

TEST(TraceHandoff, UnmarkedPipeRead) {
  REQUIRE_TRACE();
  RescuedPipe p;
  ASSERT_TRUE(p.ok());
  long during = progress_while_blocked([&] { p.read_one(); }, p.release);
  EXPECT_GT(during, 0) << "the P was not handed off while read() blocked";
}

TEST(TraceHandoff, UnmarkedNanosleep) {
  REQUIRE_TRACE();
  long during = progress_while_blocked(
      [] {
        timespec ts{0, 200 * 1000 * 1000};
        nanosleep(&ts, nullptr);
      },
      [] {});
  EXPECT_GT(during, 0) << "the P was not handed off while nanosleep() blocked";
}

TEST(TraceHandoff, UnmarkedFutexWait) {
  REQUIRE_TRACE();
  static kgmp_test::FutexGate gate;
  gate.word = 0;
  auto release = [] { gate.open(); };
  Rescue rescue(release);
  long during = progress_while_blocked([] { gate.wait(); }, release);
  EXPECT_GT(during, 0) << "the P was not handed off while the futex wait blocked";
}

// Major page faults: a file written, synced and evicted from the page cache, then read through
// a fresh mapping with read-ahead off, so that each touched page blocks on the disk.
TEST(TraceHandoff, MajorPageFaultsOnAFreshFileMapping) {
  REQUIRE_TRACE();
  kgmp_test::EvictedMapping file;
  ASSERT_TRUE(file.ok());
  long sum = 0;
  long during = progress_while_blocked([&] { sum = file.touch_all(); }, [] {});
  EXPECT_EQ(sum, kgmp_test::EvictedMapping::expected_sum());
  EXPECT_GT(during, 0) << "the P was not handed off during major page faults";
}

// Dropped to an unprivileged user, the runtime cannot load BPF: it logs why, falls back to
// poll, and kgmp::blocking() sections are still handed off.
TEST(TraceHandoff, UnprivilegedFallsBackToPoll) {
  if (geteuid() != 0) {
    if (require_bpf()) FAIL() << "not root (this test drops root itself)";
    GTEST_SKIP() << "not root (this test drops root itself)";
  }
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (setgroups(0, nullptr) != 0 || setgid(65534) != 0 || setuid(65534) != 0) _exit(10);
    unsetenv("KGMP_MONITOR");
    int fds[2];
    if (pipe(fds) != 0) _exit(11);
    std::string mon;
    long during = 0;
    kgmp::run(
        [&] {
          mon = kgmp::monitor();
          during = kgmp_test::progress_in_run(
              /*marked=*/true,
              [&] {
                char c;
                return read(fds[0], &c, 1);
              },
              [&] {
                char c = 'x';
                (void)!write(fds[1], &c, 1);
              },
              100);
        },
        kgmp::Config{.procs = 1});
    _exit(mon != "poll" ? 12 : during == 0 ? 13 : 0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "10: could not drop privileges, 12: did not fall back to poll, 13: no hand-off";
}

// A block BPF does not report (the P had no work at the switch) must still be handed off once
// work appears: here the only other G sleeps on a timer of that P, so the work is a timer that
// falls due while the P's holder sits in read(). The sleeper must wake (the watcher cannot
// take a held P; the backstop hands it off, Go's 10 ms rule at the latest) and free the reader.
TEST(TraceHandoff, TimerDueWhileTheHolderBlocksWithoutWorkStillFires) {
  REQUIRE_TRACE();
  RescuedPipe p;
  ASSERT_TRUE(p.ok());
  std::atomic<int> seq{0}, slept{0}, read_done{0};  // order of the two events
  kgmp::run(
      [&] {
        kgmp::WaitGroup wg;
        wg.add(2);
        kgmp::go([&] {
          kgmp::sleep_for(std::chrono::milliseconds(5));
          slept = ++seq;
          p.release();
          wg.done();
        });
        kgmp::go([&] {
          p.read_one();  // nothing else is queued: BPF does not report this block
          read_done = ++seq;
          wg.done();
        });
        wg.wait();
      },
      kgmp::Config{.procs = 1});
  EXPECT_EQ(slept.load(), 1) << "the sleeper woke only after the reader was freed (by the "
                                "test's 20 s rescue): the held P was never handed off";
  EXPECT_EQ(read_done.load(), 2);
}

// The same, with the timer set while the holder runs and the P's watcher already asleep with no
// deadline: the sleeper's timer goes on the P's heap while main holds the P, then main blocks
// in read() with nothing queued (BPF does not report it). Only the watcher, woken by the new
// earlier timer (poke_watchers), can see the timer fall due behind the blocked holder.
TEST(TraceHandoff, TimerSetBeforeAnUnreportedBlockStillFires) {
  REQUIRE_TRACE();
  RescuedPipe p;
  ASSERT_TRUE(p.ok());
  std::atomic<int> seq{0}, wrote{0}, read_done{0};
  kgmp::run(
      [&] {
        // A quiet period, so that the watcher of P 0 ends up waiting without a deadline: main
        // sleeps (the watcher waits until main's timer, then backs off), then computes a while
        // without entering the runtime.
        kgmp::sleep_for(std::chrono::milliseconds(30));
        for (auto t0 = std::chrono::steady_clock::now();
             std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(30);) {
        }
        kgmp::WaitGroup wg;
        wg.add(1);
        kgmp::go([&] {
          kgmp::sleep_for(std::chrono::milliseconds(20));
          wrote = ++seq;
          p.release();
          wg.done();
        });
        kgmp::yield();  // the writer runs and parks on its timer; nothing else is queued
        p.read_one();   // a raw read(): the block is not reported
        read_done = ++seq;
        wg.wait();
      },
      kgmp::Config{.procs = 1});
  EXPECT_EQ(wrote.load(), 1) << "the writer's timer fired only after the reader was freed by "
                                "the test's 20 s rescue: the timer was lost behind the block";
  EXPECT_EQ(read_done.load(), 2);
}

// CPU time (ns) of this process's threads other than the caller (schedstat's first field).
std::uint64_t others_cpu_ns() {
  std::uint64_t sum = 0;
  const int self = static_cast<int>(syscall(SYS_gettid));
  DIR* d = opendir("/proc/self/task");
  if (d == nullptr) return 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.' || atoi(e->d_name) == self) continue;
    std::string path = std::string("/proc/self/task/") + e->d_name + "/schedstat";
    if (FILE* f = fopen(path.c_str(), "r")) {
      unsigned long long ns = 0;
      if (fscanf(f, "%llu", &ns) == 1) sum += ns;
      fclose(f);
    }
  }
  closedir(d);
  return sum;
}

// A timer falls due while a G computes without entering the runtime: the holder runs it at its
// next scheduling point, and meanwhile the P's watcher must sleep, not poll (it once spun on a
// zero timeout and took half the CPU from the G).
TEST(TraceHandoff, DueTimerBehindAComputingGDoesNotSpinTheWatcher) {
  REQUIRE_TRACE();
  std::uint64_t others = 0, mine = 0;
  kgmp::run(
      [&] {
        kgmp::WaitGroup wg;
        // First an idle P, so that it has a watcher (its M parks as one; the timer brings us
        // back on it and a second M becomes the watcher).
        kgmp::sleep_for(std::chrono::milliseconds(20));
        wg.add(1);
        kgmp::go([&] {
          kgmp::sleep_for(std::chrono::milliseconds(5));
          wg.done();
        });
        kgmp::yield();  // the sleeper's timer is set
        std::uint64_t o0 = others_cpu_ns();
        timespec c0, c1;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
        do {  // 300 ms of this G's own CPU time, no runtime entry
          clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
        } while ((c1.tv_sec - c0.tv_sec) * 1'000'000'000LL + (c1.tv_nsec - c0.tv_nsec) <
                 300'000'000LL);
        others = others_cpu_ns() - o0;
        mine = static_cast<std::uint64_t>((c1.tv_sec - c0.tv_sec) * 1'000'000'000LL +
                                          (c1.tv_nsec - c0.tv_nsec));
        wg.wait();
      },
      kgmp::Config{.procs = 1});
  EXPECT_LT(others, mine / 10) << "other threads used " << others / 1000000 << " ms of CPU while "
                               << "the G computed " << mine / 1000000 << " ms";
}

// Many Gs blocking at random (unmarked sleeps, marked sleeps, pipe reads) over every P, with the
// runtime's lease checker on: never two Ms inside the runtime on one P, no G lost, Ms bounded.
TEST(TraceHandoff, RandomBlockingStressKeepsTheLeaseInvariant) {
  REQUIRE_TRACE();
  constexpr int kGs = 10000;
  kgmp::internal::set_lease_check_for_test(true);
  std::atomic<int> finished{0};
  kgmp::run([&] {
    kgmp::WaitGroup wg;
    wg.add(kGs);
    for (int i = 0; i < kGs; i++)
      kgmp::go([&, i] {
        std::minstd_rand rng(static_cast<unsigned>(i));
        for (int k = 0; k < 3; k++) {
          switch (rng() % 4) {
            case 0: {
              timespec ts{0, static_cast<long>(rng() % 200) * 1000};
              nanosleep(&ts, nullptr);
              break;
            }
            case 1:
              kgmp::blocking([&] { usleep(rng() % 200); });
              break;
            case 2:
              kgmp::yield();
              break;
            default: {
              volatile double x = 1;
              for (int j = 0; j < 500; j++) x = x * 1.000001;
            }
          }
        }
        finished++;
        wg.done();
      });
    wg.wait();
  });
  kgmp::internal::set_lease_check_for_test(false);
  auto st = kgmp::internal::last_run_stats();
  EXPECT_EQ(finished.load(), kGs);
  EXPECT_TRUE(kgmp::internal::accounted(st));
  EXPECT_EQ(st.lease_violations, 0u);
  EXPECT_EQ(st.stale_runq_len, 0u);
  EXPECT_GT(st.handoffs, 0u) << "the stress never handed a P off";
  EXPECT_LT(st.threads, 200u) << "Ms must be reused, not created per block";
}

// Gs that reach a P's ring by a steal or from the global queue are published in its runq_len
// like any other, so that BPF reports a block of the G run next: the lease checker counts every
// runtime exit that finds the published length 0 while the ring holds Gs. Bursts of spawns
// overflow P 0's ring into the global queue (taken back in batches), and the other Ps steal.
TEST(TraceHandoff, StolenAndGlobalWorkIsPublishedToBpf) {
  REQUIRE_TRACE();
  if (kgmp_test::ncpus() < 2) GTEST_SKIP() << "needs 2 CPUs (stealing needs a second P)";
  kgmp::internal::set_lease_check_for_test(true);
  std::atomic<int> finished{0};
  constexpr int kRounds = 20, kBurst = 600;
  kgmp::run([&] {
    for (int r = 0; r < kRounds; r++) {
      kgmp::WaitGroup wg;
      wg.add(kBurst);
      for (int i = 0; i < kBurst; i++)
        kgmp::go([&] {
          for (int k = 0; k < 3; k++) {
            volatile double x = 1;
            for (int j = 0; j < 200; j++) x = x * 1.000001;
            kgmp::yield();
          }
          finished++;
          wg.done();
        });
      wg.wait();
    }
  });
  kgmp::internal::set_lease_check_for_test(false);
  auto st = kgmp::internal::last_run_stats();
  EXPECT_EQ(finished.load(), kRounds * kBurst);
  EXPECT_EQ(st.stale_runq_len, 0u) << "a P's ring held Gs while its published runq_len said 0";
  EXPECT_EQ(st.lease_violations, 0u);
}

#ifdef KGMP_HANDOFF_IS_TRACE
// This process's threads at SCHED_IDLE (a held spare is; nothing else is): how many, and the
// last one's tid (0: none). count -1: /proc unreadable.
struct IdleThreads {
  int count = 0, tid = 0;
};
IdleThreads sched_idle_threads() {
  IdleThreads r;
  DIR* d = opendir("/proc/self/task");
  if (d == nullptr) return {-1, 0};
  while (dirent* e = readdir(d))
    if (e->d_name[0] != '.' && sched_getscheduler(atoi(e->d_name)) == SCHED_IDLE) {
      r.count++;
      r.tid = atoi(e->d_name);
    }
  closedir(d);
  return r;
}
int threads_at_sched_idle() { return sched_idle_threads().count; }

// P 0's watcher is held: HELD, and (the watcher stores HELD before it drops its policy) the one
// SCHED_IDLE thread.
bool held_at_sched_idle() {
  return kgmp::internal::spare_held_now(0) == KGMP_SPARE_HELD && threads_at_sched_idle() == 1;
}

// How many times thread tid was given the CPU (the third field of its schedstat), or -1.
long times_run(int tid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/self/task/%d/schedstat", tid);
  FILE* f = fopen(path, "r");
  if (f == nullptr) return -1;
  unsigned long long run_ns, wait_ns, slices;
  long n = fscanf(f, "%llu %llu %llu", &run_ns, &wait_ns, &slices) == 3
               ? static_cast<long>(slices)
               : -1;
  fclose(f);
  return n;
}

// Polls cond (no runtime entry: this G keeps its P) for up to 5 s.
template <class F>
bool spin_until(F cond) {
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!cond())
    if (std::chrono::steady_clock::now() > end) return false;
  return true;
}

// One hand-off of the caller's P: G B blocks in p's read() while the caller waits in the run
// queue; the watcher takes the P and runs the caller, which frees B. Caller: a G, 1 P.
void one_handoff(RescuedPipe& p) {
  kgmp::WaitGroup wg;
  wg.add(1);
  kgmp::go([&] {
    p.read_one();
    wg.done();
  });
  kgmp::yield();  // B runs and blocks
  p.release();
  wg.wait();
}

// Held spares (trace.cpp): after a hand-off, a holder running a G with work queued gets its
// core's watcher held runnable at SCHED_IDLE; a block then goes straight to it; once the P
// goes idle the watcher lets go (back to SCHED_OTHER, asleep), so an idle runtime holds none.
TEST(TraceHeldSpare, HeldWhileWorkIsQueuedAndLetGoWhenIdle) {
  REQUIRE_TRACE();
  RescuedPipe a, b;
  ASSERT_TRUE(a.ok() && b.ok());
  bool holds = false;
  std::uint32_t held_before_block = 0, held_when_idle = 99;
  int idle_threads_held = -1, idle_threads_after = -1;
  bool c_ran = false;
  kgmp::run(
      [&] {
        holds = kgmp::internal::hold_spares_now();
        if (!holds) return;
        // 1. A first hand-off gives the P its hold credit.
        one_handoff(a);
        kgmp::WaitGroup wg;
        // 2. Work queued behind this G (C): the watcher is asked to hold, and does.
        wg.add(1);
        kgmp::go([&] {
          c_ran = true;
          b.release();
          wg.done();
        });
        // HELD is stored before the drop to SCHED_IDLE (trace.cpp): wait for both.
        spin_until(held_at_sched_idle);
        held_before_block = kgmp::internal::spare_held_now(0);
        idle_threads_held = threads_at_sched_idle();
        // 3. Block without telling the runtime: the held watcher runs C, which frees us.
        b.read_one();
        wg.wait();
        // 4. Idle: the watcher lets go the next time it runs, which on a CPU loaded by other
        //    programs (a parallel ctest) waits for room: up to 20 s, in idle steps.
        for (int i = 0; i < 2000; i++) {
          kgmp::sleep_for(std::chrono::milliseconds(10));
          held_when_idle = kgmp::internal::spare_held_now(0);
          idle_threads_after = threads_at_sched_idle();
          if (held_when_idle == KGMP_SPARE_SLEEPING && idle_threads_after == 0) break;
        }
      },
      kgmp::Config{.procs = 1});
  ASSERT_TRUE(holds) << "trace with pinned Ps and root should hold spares (KGMP_TRACE_SPARE?)";
  EXPECT_EQ(held_before_block, KGMP_SPARE_HELD) << "no held watcher with work queued";
  EXPECT_EQ(idle_threads_held, 1) << "the held watcher should be the one SCHED_IDLE thread";
  EXPECT_TRUE(c_ran);
  EXPECT_GE(kgmp::internal::last_run_stats().handoffs, 2u);
  EXPECT_EQ(held_when_idle, KGMP_SPARE_SLEEPING) << "an idle P's watcher must not stay held";
  EXPECT_EQ(idle_threads_after, 0) << "a watcher that let go must be back at SCHED_OTHER";
}

// A watcher held while its holder computes for long does not run meanwhile (SCHED_IDLE behind a
// busy holder), and its pages go cold: the host here stalls their first touch 100-200 us, on
// the hand-off. So a holder leaving the runtime with work queued, its watcher held for more
// than 10 ms, runs it once through its hold loop (refresh_held_watcher): the watcher must have
// run after that runtime exit (it does not without the refresh: a SCHED_IDLE thread gets no CPU
// from its holder, which keeps computing here), be held again at SCHED_IDLE, and still take
// the P.
TEST(TraceHeldSpare, StaleHoldIsRefreshedBeforeTheNextBlock) {
  REQUIRE_TRACE();
  RescuedPipe a, b;
  ASSERT_TRUE(a.ok() && b.ok());
  bool holds = false, held_after = false;
  int tid = 0, idle_threads_after = -1;
  long runs_before = -1, runs_after = -1;
  bool c_ran = false;
  kgmp::run(
      [&] {
        holds = kgmp::internal::hold_spares_now();
        if (!holds) return;
        one_handoff(a);  // the P gets its hold credit
        kgmp::WaitGroup wg;
        wg.add(1);
        kgmp::go([&] {  // D: queued behind us, so the watcher is held
          // Runs at our yield below, the runtime exit that refreshed the stale hold, with us
          // queued (the watcher stays held). The holder yields at most 8 times for the
          // watcher; where EEVDF still passes it over (its lag from SCHED_IDLE: seen under
          // QEMU TCG), it runs at its next fair turn, now at SCHED_OTHER. Without a refresh it
          // stays HELD at SCHED_IDLE and does not run while we compute.
          held_after = spin_until(held_at_sched_idle);
          runs_after = times_run(tid);
          idle_threads_after = threads_at_sched_idle();
          c_ran = true;
          wg.done();
        });
        if (!spin_until(held_at_sched_idle)) return;
        tid = sched_idle_threads().tid;
        // Compute 30 ms without entering the runtime: the hold goes stale.
        auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(30);
        while (std::chrono::steady_clock::now() < end) {
        }
        runs_before = times_run(tid);
        kgmp::yield();  // runtime exit into D with us queued: the stale hold is refreshed
        wg.wait();
        // The refreshed watcher still hands off: block with work queued (E frees us).
        kgmp::go([&] { b.release(); });
        b.read_one();
      },
      // Preemption off: main computes 30 ms with D queued, which is what a 10 ms slice
      // preempts; here the hold must go stale under a G that keeps its P.
      kgmp::Config{.procs = 1, .preempt_slice = std::chrono::nanoseconds(0)});
  ASSERT_TRUE(holds);
  ASSERT_NE(tid, 0) << "no held watcher with work queued";
  EXPECT_GT(runs_after, runs_before) << "the stale held watcher did not run at the runtime exit";
  EXPECT_TRUE(held_after) << "the refreshed watcher must be held again";
  EXPECT_EQ(idle_threads_after, 1) << "the refreshed watcher must be back at SCHED_IDLE";
  EXPECT_TRUE(c_ran);
  EXPECT_GE(kgmp::internal::last_run_stats().handoffs, 2u);
}

// run() returns while Gs still run and ask for held spares: the stop's wake of a watcher can be
// folded into a holder's wake for a hold request (one eventfd counts both), and a watcher
// that took it for the request alone slept forever (seen under asan at the end of
// SelectStressWithCloses). Many short runs, each must return; a guard thread fails the test
// instead of letting it hang.
TEST(TraceHeldSpare, RunReturnsWhileSparesAreAskedFor) {
  REQUIRE_TRACE();
  constexpr int kRuns = 200;
  std::atomic<int> done{0};
  std::atomic<bool> finished{false};
  std::thread guard([&] {
    int last = -1;
    while (!finished.load()) {
      for (int i = 0; i < 200 && !finished.load(); i++)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      if (finished.load()) return;
      int d = done.load();
      if (d == last) {
        fprintf(stderr, "run() number %d did not return within 10 s: a watcher missed the stop\n", d);
        _exit(1);  // fail, not hang
      }
      last = d;
    }
  });
  for (int i = 0; i < kRuns; i++) {
    RescuedPipe a;
    ASSERT_TRUE(a.ok());
    kgmp::run(
        [&] {
          for (int k = 0; k < 3; k++) one_handoff(a);  // every P used gets hold credit
          for (int g = 0; g < 8; g++)
            kgmp::go([] {
              for (int y = 0; y < 50; y++) kgmp::yield();  // work queued: hold requests
            });
        },  // and return at once
        kgmp::Config{.procs = 2});
    done++;
  }
  finished = true;
  guard.join();
  EXPECT_EQ(done.load(), kRuns);
}

// A held watcher runs only when its CPU has nothing else to run. With another thread spinning
// on that CPU (a CPU hog of another program), a block of the holder must still hand the P off
// (the polling backstop does, within milliseconds), not wait for the hog to stop.
TEST(TraceHeldSpare, CpuHogOnTheCoreDoesNotStrandTheP) {
  REQUIRE_TRACE();
  RescuedPipe a, b;
  ASSERT_TRUE(a.ok() && b.ok());
  bool holds = false;
  std::atomic<bool> hog_stop{false};
  std::atomic<int> seq{0}, c_ran{0}, main_back{0};
  std::thread hog;
  kgmp::run(
      [&] {
        holds = kgmp::internal::hold_spares_now();
        if (!holds) return;
        one_handoff(a);  // the P gets its hold credit
        kgmp::WaitGroup wg;
        const int cpu = kgmp::internal::current_p_cpu();
        hog = std::thread([&, cpu] {
          cpu_set_t set;
          CPU_ZERO(&set);
          CPU_SET(cpu, &set);
          sched_setaffinity(0, sizeof set, &set);
          while (!hog_stop.load(std::memory_order_relaxed)) {
          }
        });
        wg.add(1);
        kgmp::go([&] {  // queued: the watcher is asked to hold
          c_ran = ++seq;
          b.release();
          wg.done();
        });
        spin_until([] { return kgmp::internal::spare_held_now(0) == KGMP_SPARE_HELD; });
        b.read_one();  // blocks with C queued; the held watcher is starved by the hog
        main_back = ++seq;
        wg.wait();
        hog_stop = true;
      },
      kgmp::Config{.procs = 1});
  hog_stop = true;
  if (hog.joinable()) hog.join();
  ASSERT_TRUE(holds);
  EXPECT_EQ(c_ran.load(), 1) << "the P stayed behind the blocked holder until the test's 20 s "
                                "rescue: the starved held watcher was not covered";
  EXPECT_EQ(main_back.load(), 2);
}

// The same hand-off with KGMP_TRACE_SPARE=sleep: the watcher sleeps on the ring and the
// kernel wakes it (the path held spares fall back to).
TEST(TraceHeldSpare, SleepingWatcherStillHandsOff) {
  REQUIRE_TRACE();
  setenv("KGMP_TRACE_SPARE", "sleep", 1);
  RescuedPipe p;
  ASSERT_TRUE(p.ok());
  bool holds = true;
  long during = progress_while_blocked(
      [&] {
        holds = kgmp::internal::hold_spares_now();
        p.read_one();
      },
      p.release);
  unsetenv("KGMP_TRACE_SPARE");
  EXPECT_FALSE(holds);
  EXPECT_GT(during, 0) << "the P was not handed off while read() blocked";
}
#endif

}  // namespace
