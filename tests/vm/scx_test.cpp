// scx_test.cpp — the scx monitor in a sched_ext kernel (vm-test/run boots one): the scheduler
// attaches and detaches (also when its process is killed), survives nothing it should not and
// loses no goroutine when ejected (scx_bpf_error, sysrq-S), leaves an unrelated CPU hog alone,
// a second runtime process falls back to trace cleanly while the first holds sched_ext, and a
// G spinning on kgmp::preempt_point() is preempted after 10 ms (ScxPreempt).
//
// Elsewhere (no sched_ext, not root, a build without the scx object) every test skips with the
// exact reason; KGMP_REQUIRE_SCX=1 (set by the VM's /init) turns the skips into failures.
// Tests that need a process of their own (a kill, captured stderr, two runtimes at once) fork
// a child that runs the runtime and reports through its exit status and a log file.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <thread>
#include <vector>
#include <algorithm>

#include "../unit/blocking_util.h"
#include "kgmp/kgmp.h"

namespace {

using namespace std::chrono_literals;

constexpr char kState[] = "/sys/kernel/sched_ext/state";

std::string read_line(const char* path) {
  std::ifstream f(path);
  std::string s;
  if (!f || !std::getline(f, s)) return "";
  return s;
}

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// Why scx cannot be tested here ("" if it can).
std::string scx_unavailable() {
  static std::string why = [] {
    if (access("/sys/kernel/sched_ext", F_OK) != 0)
      return std::string("no /sys/kernel/sched_ext: this kernel has no sched_ext "
                         "(CONFIG_SCHED_CLASS_EXT); vm-test/run boots one");
    if (geteuid() != 0) return std::string("not root (loading a sched_ext scheduler needs root)");
    std::string mon;
    setenv("KGMP_MONITOR", "scx", 1);
    kgmp::run([&] { mon = kgmp::monitor(); }, kgmp::Config{.procs = 1});
    unsetenv("KGMP_MONITOR");
    if (mon != "scx")
      return std::string("the scx monitor did not load (see the kgmp: monitor= line; a build "
                         "without -DKGMP_SCX_VMLINUX_H has none)");
    return std::string();
  }();
  return why;
}

#define REQUIRE_SCX() KGMP_SKIP_UNLESS(scx_unavailable(), "KGMP_REQUIRE_SCX")

// Waits up to `limit` for the sched_ext state to read `want`.
bool wait_state(const std::string& want, std::chrono::milliseconds limit = 10s) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (read_line(kState) == want) return true;
    std::this_thread::sleep_for(10ms);
  }
  return read_line(kState) == want;
}

struct Child {
  pid_t pid = -1;
  std::string log;  // the child's stderr
};

// Forks a child running f() with stderr in a log file; the child exits with f()'s value.
Child spawn(const std::function<int()>& f, const char* tag) {
  Child c;
  c.log = std::string("/tmp/kgmp-scx-") + tag + "-" + std::to_string(getpid()) + ".log";
  fflush(stderr);
  c.pid = fork();
  if (c.pid == 0) {
    int fd = open(c.log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) dup2(fd, 2);
    _exit(f());
  }
  return c;
}

// Like spawn, but a fresh process: this binary re-executed with KGMP_SCX_CHILD=mode (main()
// below runs child_main instead of the tests), so the runtime's once-per-process log line is
// printed again and no state of this process is inherited.
Child spawn_exec(const char* mode) {
  return spawn(
      [mode] {
        setenv("KGMP_SCX_CHILD", mode, 1);
        execl("/proc/self/exe", "scx_test", static_cast<char*>(nullptr));
        return 127;
      },
      mode);
}

int wait_exit(const Child& c) {
  int status = 0;
  if (waitpid(c.pid, &status, 0) != c.pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// The shape of the hand-off tests (blocking_util.h): with one P, G "blocker" blocks in a pipe
// read without telling the runtime; G "runner" must run meanwhile. Returns how often it ran
// (0: no hand-off).
long handoff_once() {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  long during = kgmp_test::progress_in_run(
      /*marked=*/false,
      [&] {
        char c;
        (void)!read(fds[0], &c, 1);
      },
      [&] {
        char c = 'x';
        (void)!write(fds[1], &c, 1);
      },
      50);
  close(fds[0]);
  close(fds[1]);
  return during;
}

TEST(ScxAttach, StateGoesDisabledEnabledDisabled) {
  REQUIRE_SCX();
  ASSERT_TRUE(wait_state("disabled")) << kState << " reads " << read_line(kState);
  std::string during, ops, mon;
  setenv("KGMP_MONITOR", "scx", 1);
  kgmp::run(
      [&] {
        mon = kgmp::monitor();
        during = read_line(kState);
        ops = read_line("/sys/kernel/sched_ext/root/ops");
      },
      kgmp::Config{.procs = 2});
  unsetenv("KGMP_MONITOR");
  EXPECT_EQ(mon, "scx");
  EXPECT_EQ(during, "enabled");
  EXPECT_EQ(ops, "kgmp");
  EXPECT_TRUE(wait_state("disabled")) << "after run() returned, " << kState << " reads "
                                      << read_line(kState);
}

TEST(ScxAttach, SigkillUnloadsTheScheduler) {
  REQUIRE_SCX();
  ASSERT_TRUE(wait_state("disabled"));
  int up[2];
  ASSERT_EQ(pipe(up), 0);
  Child c = spawn(
      [&] {
        setenv("KGMP_MONITOR", "scx", 1);
        kgmp::run(
            [&] {
              char ok = std::string(kgmp::monitor()) == "scx" ? 'y' : 'n';
              (void)!write(up[1], &ok, 1);
              for (;;) pause();
            },
            kgmp::Config{.procs = 2});
        return 0;
      },
      "kill");
  char ok = 0;
  ASSERT_EQ(read(up[0], &ok, 1), 1);
  EXPECT_EQ(ok, 'y');
  EXPECT_EQ(read_line(kState), "enabled");
  kill(c.pid, SIGKILL);
  EXPECT_EQ(wait_exit(c), 128 + SIGKILL);
  EXPECT_TRUE(wait_state("disabled", 5s)) << "after SIGKILL, " << kState << " reads "
                                          << read_line(kState);
  close(up[0]);
  close(up[1]);
}

// The runtime keeps handing off across an ejection: before it under scx, after it under trace.
// Exit codes: 0 ok, 2 did not start on scx, 3 no hand-off before, 4 never fell back to trace,
// 5 no hand-off after.
int survive_ejection(const std::function<void()>& eject) {
  int rc = 0;
  setenv("KGMP_MONITOR", "scx", 1);
  kgmp::run(
      [&] {
        if (std::string(kgmp::monitor()) != "scx") {
          rc = 2;
          return;
        }
        if (handoff_once() <= 0) {
          rc = 3;
          return;
        }
        eject();
        for (int i = 0; i < 1000 && std::string(kgmp::monitor()) == "scx"; i++) {
          handoff_once();  // keep blocking and handing off while the ejection lands
          kgmp::sleep_for(10ms);
        }
        if (std::string(kgmp::monitor()) != "trace") {
          rc = 4;
          return;
        }
        for (int i = 0; i < 3; i++)
          if (handoff_once() <= 0) rc = 5;
      },
      kgmp::Config{.procs = 1});
  return rc;
}

TEST(ScxEject, ScxBpfErrorFallsBackToTrace) {
  REQUIRE_SCX();
  Child c = spawn(
      [] {
        setenv("KGMP_SCX_TEST_ERROR_MS", "1500", 1);
        return survive_ejection([] {});
      },
      "error");
  EXPECT_EQ(wait_exit(c), 0) << "2 not scx, 3 no hand-off before, 4 no fallback, 5 no hand-off "
                                "after; log:\n"
                             << slurp(c.log);
  std::string log = slurp(c.log);
  EXPECT_NE(log.find("kgmp: scx scheduler ejected ("), std::string::npos) << log;
  EXPECT_NE(log.find("KGMP_SCX_TEST_ERROR_MS"), std::string::npos) << log;
  EXPECT_NE(log.find("); continuing on trace"), std::string::npos) << log;
  EXPECT_TRUE(wait_state("disabled"));
}

TEST(ScxEject, SysrqSFallsBackToTrace) {
  REQUIRE_SCX();
  if (access("/proc/sysrq-trigger", W_OK) != 0) {
    if (kgmp_test::required("KGMP_REQUIRE_SCX")) FAIL() << "no writable /proc/sysrq-trigger";
    GTEST_SKIP() << "no writable /proc/sysrq-trigger (CONFIG_MAGIC_SYSRQ)";
  }
  Child c = spawn(
      [] {
        return survive_ejection([] {
          int fd = open("/proc/sysrq-trigger", O_WRONLY);
          (void)!write(fd, "S", 1);
          close(fd);
        });
      },
      "sysrq");
  EXPECT_EQ(wait_exit(c), 0) << slurp(c.log);
  std::string log = slurp(c.log);
  EXPECT_NE(log.find("kgmp: scx scheduler ejected ("), std::string::npos) << log;
  EXPECT_NE(log.find("; continuing on trace"), std::string::npos) << log;
  EXPECT_TRUE(wait_state("disabled"));
}

// The kernel's watchdog: with KGMP_SCX_TEST_STALL=1 the program never cycles its parked spare
// (nor flags starvation), so a spare held longer than the 2 s timeout makes the kernel eject
// the scheduler ("runnable task stall"). The runtime must log it and go on under trace. The
// marker in the kernel log lets vm-test/run excuse exactly these watchdog lines.
TEST(ScxEject, WatchdogStallFallsBackToTrace) {
  REQUIRE_SCX();
  Child c = spawn(
      [] {
        setenv("KGMP_SCX_TEST_STALL", "1", 1);
        setenv("KGMP_SCX_TIMEOUT_MS", "2000", 1);
        if (int fd = open("/dev/kmsg", O_WRONLY); fd >= 0) {
          const char msg[] = "kgmp test: watchdog stall forced (KGMP_SCX_TEST_STALL)\n";
          (void)!write(fd, msg, sizeof msg - 1);
          close(fd);
        }
        return survive_ejection([] {
          // Nothing else to run and no timer: the P's watcher stays parked (held) while the
          // main G blocks, until the watchdog fires. The writer frees the read after 6 s.
          int fds[2];
          if (pipe(fds) != 0) return;
          std::thread writer([&] {
            std::this_thread::sleep_for(6s);
            (void)!write(fds[1], "x", 1);
          });
          char ch;
          (void)!read(fds[0], &ch, 1);
          writer.join();
          close(fds[0]);
          close(fds[1]);
        });
      },
      "stall");
  EXPECT_EQ(wait_exit(c), 0) << "2 not scx, 3 no hand-off before, 4 no fallback, 5 no hand-off "
                                "after; log:\n"
                             << slurp(c.log);
  std::string log = slurp(c.log);
  EXPECT_NE(log.find("kgmp: scx scheduler ejected ("), std::string::npos) << log;
  EXPECT_NE(log.find("stall"), std::string::npos) << "the reason names the stall; log:\n" << log;
  EXPECT_NE(log.find("; continuing on trace"), std::string::npos) << log;
  EXPECT_TRUE(wait_state("disabled"));
}

TEST(ScxTwoProcesses, SecondFallsBackToTraceAndSaysWhy) {
  REQUIRE_SCX();
  ASSERT_TRUE(wait_state("disabled"));
  int up[2], go[2];
  ASSERT_EQ(pipe(up), 0);
  ASSERT_EQ(pipe(go), 0);
  Child first = spawn(
      [&] {
        setenv("KGMP_MONITOR", "scx", 1);
        int rc = 0;
        kgmp::run(
            [&] {
              char ok = std::string(kgmp::monitor()) == "scx" ? 'y' : 'n';
              (void)!write(up[1], &ok, 1);
              char c;
              // Keep working while the second process runs: hand-offs under scx.
              while (kgmp::blocking([&] { return read(go[0], &c, 1); }) != 1) {
              }
              if (handoff_once() <= 0) rc = 3;
            },
            kgmp::Config{.procs = 1});
        return rc;
      },
      "first");
  char ok = 0;
  ASSERT_EQ(read(up[0], &ok, 1), 1);
  ASSERT_EQ(ok, 'y');
  Child second = spawn_exec("second");
  EXPECT_EQ(wait_exit(second), 0) << "2: not on trace, 3: no hand-off; log:\n" << slurp(second.log);
  std::string log = slurp(second.log);
  EXPECT_NE(log.find("kgmp: monitor=trace ("), std::string::npos) << log;
  EXPECT_NE(log.find("another sched_ext scheduler is loaded (\"kgmp\""), std::string::npos) << log;
  EXPECT_EQ(read_line("/sys/kernel/sched_ext/root/ops"), "kgmp") << "the first one's is intact";
  char c = 'g';
  ASSERT_EQ(write(go[1], &c, 1), 1);
  EXPECT_EQ(wait_exit(first), 0) << slurp(first.log);
  EXPECT_TRUE(wait_state("disabled"));
  for (int fd : {up[0], up[1], go[0], go[1]}) close(fd);
}

// The runtime under scx with an unrelated CPU hog for KGMP_SCX_STRESS_S seconds (default 10;
// KGMP_SCX_STRESS_S=60 for a long run), in a fresh process. Always: the hog is never
// starved (partial mode: it stays in CFS), no G is lost, the kernel never ejects the scheduler.
// hog_cpus: where the hog spins; rt_cpu >= 0: the runtime's only CPU (-1: all). Returns the
// runtime's log.
std::string hog_stress(const std::vector<int>& hog_cpus, int rt_cpu) {
  auto* counters = static_cast<std::atomic<long>*>(mmap(nullptr, 4096, PROT_READ | PROT_WRITE,
                                                        MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  EXPECT_NE(counters, MAP_FAILED);
  if (counters == MAP_FAILED) return "";
  const std::size_t n = hog_cpus.size();
  Child hog = spawn(
      [&] {
        std::vector<std::thread> ts;
        for (std::size_t i = 0; i < n; i++)
          ts.emplace_back([&, i] {
            cpu_set_t set;
            CPU_ZERO(&set);
            CPU_SET(hog_cpus[i], &set);
            sched_setaffinity(0, sizeof set, &set);
            for (;;) counters[i].fetch_add(1, std::memory_order_relaxed);
          });
        for (auto& t : ts) t.join();
        return 0;
      },
      "hog");
  std::this_thread::sleep_for(200ms);
  if (rt_cpu >= 0) setenv("KGMP_SCX_STRESS_CPU", std::to_string(rt_cpu).c_str(), 1);
  Child rt = spawn_exec("stress");
  unsetenv("KGMP_SCX_STRESS_CPU");
  int starved_windows = 0, windows = 0;
  std::vector<long> last(n, 0);
  for (std::size_t i = 0; i < n; i++) last[i] = counters[i].load();
  int status = 0;
  while (waitpid(rt.pid, &status, WNOHANG) == 0) {
    std::this_thread::sleep_for(500ms);
    windows++;
    for (std::size_t i = 0; i < n; i++) {
      long v = counters[i].load();
      if (v == last[i]) starved_windows++;
      last[i] = v;
    }
  }
  kill(hog.pid, SIGKILL);
  wait_exit(hog);
  munmap(counters, 4096);
  std::string log = slurp(rt.log);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "2: lost goroutines, 3: did not start on scx; log:\n" << log;
  EXPECT_GT(windows, 0);
  EXPECT_EQ(starved_windows, 0) << "the hog made no progress in some 500 ms windows";
  EXPECT_EQ(log.find("scx scheduler ejected"), std::string::npos) << log;
  return log;
}

// The hog on a CPU the runtime does not use: scx stays loaded the whole run.
TEST(ScxStress, HogOnAnotherCpuKeepsScxAndIsNotStarved) {
  REQUIRE_SCX();
  if (sysconf(_SC_NPROCESSORS_ONLN) < 2) GTEST_SKIP() << "needs 2 CPUs";
  setenv("KGMP_SCX_STRESS_REQUIRE_SCX", "1", 1);
  std::string log = hog_stress({0}, 1);
  unsetenv("KGMP_SCX_STRESS_REQUIRE_SCX");
  EXPECT_EQ(log.find("scx scheduler left"), std::string::npos) << log;
  EXPECT_NE(log.find("monitor at end scx"), std::string::npos) << log;
}

// The hog on every CPU: CFS runs before SCHED_EXT in partial mode, so the Ms starve; the
// runtime leaves scx for trace by itself before the watchdog would eject it, and loses nothing.
TEST(ScxStress, HogOnEveryCpuMakesTheRuntimeLeaveScxCleanly) {
  REQUIRE_SCX();
  std::vector<int> all;
  for (int i = 0; i < sysconf(_SC_NPROCESSORS_ONLN); i++) all.push_back(i);
  std::string log = hog_stress(all, -1);
  EXPECT_NE(log.find("kgmp: scx scheduler left (the Ms of CPU "), std::string::npos) << log;
}

// The hand-off is the scheduler's: the held watcher is dispatched by ops.dispatch when the
// P-holder blocks (the scheduler's handoffs counter, printed by KGMP_SCX_STATS=1), not only
// woken by trace's ring.
TEST(ScxHandoff, TheSchedulerDispatchesTheHeldSpare) {
  REQUIRE_SCX();
  setenv("KGMP_SCX_STATS", "1", 1);
  Child c = spawn_exec("handoffs");
  unsetenv("KGMP_SCX_STATS");
  EXPECT_EQ(wait_exit(c), 0) << "2: not scx, 3: no hand-off; log:\n" << slurp(c.log);
  std::string log = slurp(c.log);
  auto at = log.find(" handoffs=");
  auto atq = log.find(" handoffs_queued=");
  ASSERT_NE(at, std::string::npos) << log;
  ASSERT_NE(atq, std::string::npos) << log;
  // Held spare released (handoffs), or the spare was still queued on the core when the holder
  // blocked and the scheduler dispatched it from there (handoffs_queued: on 6.16, in
  // back-to-back hand-offs, the spare often has not parked again before the next block).
  long handoffs = std::atol(log.c_str() + at + 10) + std::atol(log.c_str() + atq + 17);
  EXPECT_GE(handoffs, 10) << "of 20 blocks with work pending, the scheduler handed off " << handoffs
                          << "; log:\n" << log;
  std::printf("%s", log.c_str());
}

// A spare held longer than the watchdog's timeout (KGMP_SCX_TIMEOUT_MS=2000 here) would eject
// the scheduler: it must be released and re-held (cycled) in time. One P, the main G blocked
// in an unmarked read for 3 timeouts, nothing else to run: the watcher stays parked throughout.
TEST(ScxWatchdog, HeldSpareIsCycledWithinTheWatchdogBound) {
  REQUIRE_SCX();
  setenv("KGMP_SCX_STATS", "1", 1);
  setenv("KGMP_SCX_TIMEOUT_MS", "2000", 1);
  Child c = spawn_exec("hold");
  unsetenv("KGMP_SCX_STATS");
  unsetenv("KGMP_SCX_TIMEOUT_MS");
  EXPECT_EQ(wait_exit(c), 0) << "2: not scx at start, 4: not scx at the end; log:\n" << slurp(c.log);
  std::string log = slurp(c.log);
  EXPECT_EQ(log.find("ejected"), std::string::npos) << log;
  auto at = log.find(" releases=");
  ASSERT_NE(at, std::string::npos) << log;
  EXPECT_GE(std::atol(log.c_str() + at + 10), 2) << "the parked watcher was not cycled; log:\n" << log;
  std::printf("%s", log.c_str());
}

// Preemption (DESIGN §5): with one P, G A spins calling only kgmp::preempt_point() while G B
// (spawned before the spin) waits runnable on the same P. Nothing but a preemption request
// makes A yield: scx_kgmp's ops.tick sees the P's schedtick unchanged for 10 ms and raises
// A's M's flag. B must run (within a 10 s deadline, so a failure does not hang) and the
// scheduler's preempt_reqs counter (KGMP_SCX_STATS=1) must show the request.
TEST(ScxPreempt, PreemptPointYieldsALongRunningG) {
  REQUIRE_SCX();
  setenv("KGMP_SCX_STATS", "1", 1);
  Child c = spawn_exec("preempt");
  unsetenv("KGMP_SCX_STATS");
  std::string log;
  EXPECT_EQ(wait_exit(c), 0) << "2: not scx, 3: B never ran (deadline), 4: B ran before the "
                                "spin; log:\n" << (log = slurp(c.log));
  log = slurp(c.log);
  auto at = log.find(" preempt_reqs=");
  ASSERT_NE(at, std::string::npos) << log;
  EXPECT_GE(std::atol(log.c_str() + at + 14), 1) << "no preemption request counted; log:\n" << log;
  std::printf("%s", log.c_str());
}

// ---- child processes (spawn_exec) ----

int child_preempt() {  // G A spins on preempt_point until G B ran (1 P, scx)
  setenv("KGMP_MONITOR", "scx", 1);
  int rc = 0;
  kgmp::run(
      [&] {
        if (std::string(kgmp::monitor()) != "scx") {
          rc = 2;
          return;
        }
        std::atomic<bool> b_ran{false};
        kgmp::WaitGroup wg;
        wg.add(1);
        kgmp::go([&] {
          b_ran.store(true);
          wg.done();
        });
        if (b_ran.load()) rc = 4;
        auto start = std::chrono::steady_clock::now();
        auto deadline = start + 10s;
        long points = 0;
        while (!b_ran.load(std::memory_order_relaxed) &&
               std::chrono::steady_clock::now() < deadline) {
          kgmp::preempt_point();
          points++;
        }
        double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() -
                                                              start).count();
        fprintf(stderr, "preempt: B ran=%d after %.1f ms of spinning, %ld preempt points\n",
                b_ran.load() ? 1 : 0, ms, points);
        if (!b_ran.load()) {
          if (rc == 0) rc = 3;
          kgmp::yield();  // let B finish so that run() can end
        }
        wg.wait();
      },
      kgmp::Config{.procs = 1});
  return rc;
}


int child_hold() {  // the main G blocked 6 s in an unmarked read; the watcher parked
  setenv("KGMP_MONITOR", "scx", 1);
  int fds[2];
  if (pipe(fds) != 0) return 9;
  std::thread writer([&] {
    std::this_thread::sleep_for(6s);
    char c = 'x';
    (void)!write(fds[1], &c, 1);
  });
  int rc = 0;
  kgmp::run(
      [&] {
        if (std::string(kgmp::monitor()) != "scx") rc = 2;
        char c;
        (void)!read(fds[0], &c, 1);
        if (rc == 0 && std::string(kgmp::monitor()) != "scx") rc = 4;
      },
      kgmp::Config{.procs = 1});
  writer.join();
  return rc;
}

int child_handoffs() {  // 20 hand-offs under scx
  setenv("KGMP_MONITOR", "scx", 1);
  int rc = 0;
  kgmp::run(
      [&] {
        if (std::string(kgmp::monitor()) != "scx") {
          rc = 2;
          return;
        }
        for (int i = 0; i < 20; i++) {
          // A quiet moment (the holder blocks with no other work: no release), so that the
          // spare of the last hand-off has parked again before the next block.
          std::this_thread::sleep_for(20ms);
          if (handoff_once() <= 0) rc = 3;
        }
      },
      kgmp::Config{.procs = 1});
  return rc;
}


int child_second() {  // a second runtime while another holds sched_ext: auto must pick trace
  unsetenv("KGMP_MONITOR");
  std::string mon;
  long during = 0;
  kgmp::run(
      [&] {
        mon = kgmp::monitor();
        during = handoff_once();
      },
      kgmp::Config{.procs = 1});
  return mon != "trace" ? 2 : during <= 0 ? 3 : 0;
}

int child_stress() {  // random blocking Gs on every P for KGMP_SCX_STRESS_S seconds
  int seconds = 10;
  if (const char* e = std::getenv("KGMP_SCX_STRESS_S")) seconds = std::max(1, std::atoi(e));
  if (const char* c = std::getenv("KGMP_SCX_STRESS_CPU")) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(std::atoi(c), &set);
    sched_setaffinity(0, sizeof set, &set);
  }
  std::atomic<long> started{0}, finished{0};
  std::string mon_start, mon_end;
  setenv("KGMP_MONITOR", "scx", 1);
  kgmp::run(
      [&] {
        mon_start = kgmp::monitor();
        auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
        kgmp::WaitGroup wg;
        long n = 0;
        while (std::chrono::steady_clock::now() < end) {
          for (int i = 0; i < 20; i++, n++) {
            wg.add(1);
            started++;
            kgmp::go([&, n] {
              switch (n % 4) {
                case 0: {
                  timespec ts{0, 200000};
                  nanosleep(&ts, nullptr);  // unmarked
                  break;
                }
                case 1:
                  kgmp::sleep_for(std::chrono::microseconds(300));
                  break;
                case 2: {
                  volatile long x = 0;
                  for (int k = 0; k < 20000; k++) x = x + k;
                  break;
                }
                default:
                  kgmp::yield();
              }
              finished++;
              wg.done();
            });
          }
          kgmp::sleep_for(5ms);
        }
        wg.wait();
        mon_end = kgmp::monitor();
      },
      kgmp::Config{});
  fprintf(stderr, "stress: %ld goroutines started, %ld finished, monitor at start %s, monitor at end %s\n",
          started.load(), finished.load(), mon_start.c_str(), mon_end.c_str());
  if (started.load() != finished.load()) return 2;
  if (std::getenv("KGMP_SCX_STRESS_REQUIRE_SCX") != nullptr && mon_start != "scx") return 3;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (const char* mode = std::getenv("KGMP_SCX_CHILD")) {
    std::string m(mode);
    if (m == "second") return child_second();
    if (m == "stress") return child_stress();
    if (m == "handoffs") return child_handoffs();
    if (m == "hold") return child_hold();
    if (m == "preempt") return child_preempt();
    return 126;
  }
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
