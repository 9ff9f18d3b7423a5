// handoff_bench.cpp — the questions of kernel-reported blocking (DESIGN §4, measured as §8
// says): how long a P stays stuck behind a blocked M (handoff), what an idle
// runtime costs (idle), and what the attached BPF program costs every context switch of the
// machine (switch-cost). The Go side of `handoff` is bench/compare/go (case handoff): keep the
// method identical.
//
// handoff, one P: G A spends a quiet period, wakes G B through an unbuffered channel and
// yields, so B runs next; B stores t_enter and calls a raw blocking read() on a pipe (wrapped in
// kgmp::blocking under poll, bare under trace); A can only run again once the P is handed off,
// and its first act is t_resume; the figure is t_resume - t_enter; A then writes the byte that
// frees B. Quiet periods are random so that trials do not phase-lock with a poller:
//   hot      none, trials back to back
//   compute  A computes 50-100 ms without a syscall (Go's sysmon has backed off by then)
//   idle     A sleeps 100-200 ms
// The floor, measured in the same run: a futex wake of a thread parked on the same CPU, the
// waker then blocking in read() (what any hand-off on one CPU costs at least).
#include <fcntl.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "handoff_bench.h"
#include "kgmp/kgmp.h"

namespace kgmp_bench {
namespace {

std::int64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

void pin_to(int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  sched_setaffinity(0, sizeof s, &s);
}

int first_cpu() {
  cpu_set_t s;
  sched_getaffinity(0, sizeof s, &s);
  for (int c = 0; c < CPU_SETSIZE; c++)
    if (CPU_ISSET(c, &s)) return c;
  return 0;
}

// The q-quantile of sorted v (nearest rank below).
double pct(const std::vector<double>& v, double q) {
  return v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1))];
}

void report(const std::string& monitor, const std::string& quiet, std::vector<double> us) {
  std::sort(us.begin(), us.end());
  printf("RESULT handoff monitor=%s quiet=%s p50_us=%.1f p90_us=%.1f p99_us=%.1f max_us=%.1f trials=%zu\n",
         monitor.c_str(), quiet.c_str(), pct(us, 0.5), pct(us, 0.9), pct(us, 0.99), us.back(),
         us.size());
  fflush(stdout);
}

// A computes for `ns` without a syscall.
void compute_for(std::int64_t ns) {
  std::int64_t end = now_ns() + ns;
  volatile double x = 1;
  while (now_ns() < end)
    for (int i = 0; i < 1000; i++) x = x * 1.0000001;
}

// One trial: when B entered read() (CLOCK_MONOTONIC ns) and how long A waited for the P (µs).
struct Trial {
  std::int64_t t_enter_ns;
  double us;
};

// monitor: scx, trace, poll, or trace-sleep (trace with KGMP_TRACE_SPARE=sleep: the watcher
// sleeps on the ring instead of being held runnable, the design held spares replaced).
std::vector<Trial> kgmp_trials(const std::string& name, const std::string& quiet, int trials) {
  const std::string monitor = name == "trace-sleep" ? "trace" : name;
  setenv("KGMP_MONITOR", monitor.c_str(), 1);
  if (name == "trace-sleep") setenv("KGMP_TRACE_SPARE", "sleep", 1);
  std::vector<Trial> out;
  int fds[2];
  if (pipe(fds) != 0) abort();
  std::string got;
  kgmp::run(
      [&] {
        got = kgmp::monitor();
        kgmp::Chan<int> wake(0);
        std::atomic<std::int64_t> t_enter{0};
        const bool wrap = monitor == "poll";
        kgmp::WaitGroup wg;
        wg.add(1);
        kgmp::go([&] {  // B
          char c;
          while (auto v = wake.recv()) {
            t_enter.store(now_ns(), std::memory_order_release);
            if (wrap)
              kgmp::blocking([&] { return read(fds[0], &c, 1); });
            else
              (void)!read(fds[0], &c, 1);
          }
          wg.done();
        });
        std::mt19937_64 rng(12345);
        for (int t = 0; t < trials + 20; t++) {  // A; the first 20 warm up
          if (quiet == "compute")
            compute_for(50'000'000 + static_cast<std::int64_t>(rng() % 50'000'000));
          else if (quiet == "idle")
            kgmp::sleep_for(std::chrono::milliseconds(100 + rng() % 100));
          wake.send(1);
          kgmp::yield();
          std::int64_t t_resume = now_ns();
          const std::int64_t t0 = t_enter.load(std::memory_order_acquire);
          if (t >= 20) out.push_back({t0, static_cast<double>(t_resume - t0) / 1000.0});
          char c = 'x';
          (void)!write(fds[1], &c, 1);
        }
        wake.close();
        wg.wait();
      },
      kgmp::Config{.procs = 1});
  unsetenv("KGMP_MONITOR");
  unsetenv("KGMP_TRACE_SPARE");
  close(fds[0]);
  close(fds[1]);
  if (got != monitor) {
    fprintf(stderr, "handoff: asked for monitor %s, the runtime chose %s (see its log line)\n",
            monitor.c_str(), got.c_str());
    exit(3);
  }
  return out;
}

// The floor: thread W (waker) and S (sleeper) pinned to one CPU; S parks on a futex, W sleeps
// 200-300 us (whatever the quiet mode: S has been parked that long, its path is warm), stores
// t0, wakes S and blocks in read(); S's first act is t1. Not the floor of a cold path: after a
// long quiet period a thread woken from a 100 ms sleep pays cold caches (21 us p50 after
// compute, measured), which a held spare does before the block, not after it.
std::vector<Trial> floor_trials(int trials) {
  const int cpu = first_cpu();
  alignas(4) static std::uint32_t word;
  std::atomic<std::int64_t> t0{0};
  std::vector<Trial> out;
  int fds[2];
  if (pipe(fds) != 0) abort();
  std::atomic<bool> stop{false};
  std::thread s([&] {
    pin_to(cpu);
    for (int t = 0; t < trials + 20 && !stop; t++) {
      while (__atomic_load_n(&word, __ATOMIC_ACQUIRE) == 0)
        syscall(SYS_futex, &word, FUTEX_WAIT_PRIVATE, 0, nullptr, nullptr, 0);
      std::int64_t t1 = now_ns();
      __atomic_store_n(&word, 0u, __ATOMIC_RELEASE);
      if (t >= 20) out.push_back({t0.load(), static_cast<double>(t1 - t0.load()) / 1000.0});
      char c = 'x';
      (void)!write(fds[1], &c, 1);
    }
  });
  pin_to(cpu);
  for (int t = 0; t < trials + 20; t++) {
    std::this_thread::sleep_for(std::chrono::microseconds(200 + t % 100));
    t0.store(now_ns());
    __atomic_store_n(&word, 1u, __ATOMIC_RELEASE);
    syscall(SYS_futex, &word, FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
    char c;
    (void)!read(fds[0], &c, 1);
  }
  stop = true;
  s.join();
  close(fds[0]);
  close(fds[1]);
  return out;
}

}  // namespace

bool parse_monitors(const char* name, const std::string& monitors,
                    const std::vector<std::string>& known, std::vector<std::string>* list,
                    bool* all) {
  // scx is part of "all" only where sched_ext exists (vm-test/run boots such a kernel).
  const bool have_scx = access("/sys/kernel/sched_ext", F_OK) == 0;
  *all = false;
  for (const std::string& m : std::vector<std::string>(absl::StrSplit(monitors, ',', absl::SkipEmpty()))) {
    if (m == "all") {
      *all = true;
      for (const std::string& k : known)
        if (k != "scx" || have_scx) list->push_back(k);
    } else if (std::find(known.begin(), known.end(), m) != known.end()) {
      list->push_back(m);
    } else {
      fprintf(stderr, "kgmp-bench %s: --monitor takes %s or all, or a comma-separated list of "
              "them; got '%s'\n", name, absl::StrJoin(known, ", ").c_str(), m.c_str());
      return false;
    }
  }
  if (list->empty()) {
    fprintf(stderr, "kgmp-bench %s: --monitor names no monitor\n", name);
    return false;
  }
  return true;
}

int bench_handoff(const std::string& monitors, const std::string& quiet, int trials,
                  const std::string& raw_path) {
  if (quiet != "hot" && quiet != "compute" && quiet != "idle") {
    fprintf(stderr, "kgmp-bench handoff: --quiet must be hot, compute or idle\n");
    return 2;
  }
  if (trials <= 0) trials = quiet == "hot" ? 1000 : 200;
  std::vector<std::string> list;
  bool all = false;
  if (!parse_monitors("handoff", monitors, {"scx", "trace", "trace-sleep", "poll", "floor"},
                      &list, &all))
    return 2;
  FILE* raw = nullptr;
  if (!raw_path.empty() && (raw = fopen(raw_path.c_str(), "w")) == nullptr) {
    fprintf(stderr, "kgmp-bench handoff: cannot write --raw %s: %m\n", raw_path.c_str());
    return 2;
  }
  for (const std::string& m : list) {
    std::vector<Trial> got = m == "floor" ? floor_trials(trials) : kgmp_trials(m, quiet, trials);
    std::vector<double> us;
    for (const Trial& t : got) {
      us.push_back(t.us);
      if (raw)
        fprintf(raw, "%s %s %lld %.1f\n", m.c_str(), quiet.c_str(),
                static_cast<long long>(t.t_enter_ns), t.us);
    }
    report(m, quiet, us);
  }
  if (raw) fclose(raw);
  return 0;
}

// retouch: what this machine charges for touching memory again after a quiet period, outside
// any runtime: 256 pages touched, then per round a quiet period (sleep or compute, as
// handoff's), then one read of each page, timed alone. A guest's page that the host has not
// seen touched for a while can cost the first touch 100-200 us with no fault in the guest, the
// more often the longer the quiet period (bench/RESULTS.md, the handoff section's retouch
// table); a hand-off that touches such a page pays it.
// Reports the worst touch per round (p50, p90, max) and how many touches of all took over 20
// and 100 us.
int bench_retouch(const std::string& quiet, int quiet_ms, int rounds) {
  if (quiet != "compute" && quiet != "idle") {
    fprintf(stderr, "kgmp-bench retouch: --quiet must be compute or idle\n");
    return 2;
  }
  if (quiet_ms <= 0 || rounds <= 0) {
    fprintf(stderr, "kgmp-bench retouch: --quiet_ms and --trials must be positive\n");
    return 2;
  }
  pin_to(first_cpu());
  constexpr int kPages = 256;
  std::vector<char> mem(static_cast<std::size_t>(kPages) * 4096, 1);
  std::vector<double> worst;
  long over20 = 0, over100 = 0;
  for (int r = 0; r < rounds; r++) {
    if (quiet == "compute")
      compute_for(static_cast<std::int64_t>(quiet_ms) * 1'000'000);
    else
      std::this_thread::sleep_for(std::chrono::milliseconds(quiet_ms));
    double w = 0;
    for (int i = 0; i < kPages; i++) {
      std::int64_t a = now_ns();
      (void)*static_cast<volatile char*>(&mem[static_cast<std::size_t>(i) * 4096 + (r * 64) % 4096]);
      double us = static_cast<double>(now_ns() - a) / 1000.0;
      w = std::max(w, us);
      over20 += us > 20;
      over100 += us > 100;
    }
    worst.push_back(w);
  }
  std::sort(worst.begin(), worst.end());
  printf("RESULT retouch quiet=%s quiet_ms=%d rounds=%d pages=%d worst_p50_us=%.1f worst_p90_us=%.1f "
         "worst_max_us=%.1f touches_over_20us=%ld touches_over_100us=%ld\n",
         quiet.c_str(), quiet_ms, rounds, kPages, pct(worst, 0.5), pct(worst, 0.9), worst.back(),
         over20, over100);
  fflush(stdout);
  return 0;
}

// idle: every G blocked (the main G on a WaitGroup, one G in read() on a pipe) for `seconds`;
// the context switches and CPU time of the whole process over the middle of that window.
int bench_idle(const std::string& monitors, int seconds) {
  std::vector<std::string> list;
  for (std::string m : {"trace", "poll"})
    if (monitors == "all" || monitors == m) list.push_back(m);
  for (const std::string& m : list) {
    setenv("KGMP_MONITOR", m.c_str(), 1);
    int fds[2];
    if (pipe(fds) != 0) abort();
    long cs = 0;
    double cpu_ms = 0;
    std::string got;
    kgmp::run([&] {
      got = kgmp::monitor();
      kgmp::WaitGroup wg;
      wg.add(1);
      kgmp::go([&] {
        char c;
        if (m == "poll")
          kgmp::blocking([&] { return read(fds[0], &c, 1); });
        else
          (void)!read(fds[0], &c, 1);
        wg.done();
      });
      std::thread timer([&] {
        std::this_thread::sleep_for(std::chrono::seconds(1));  // let everything settle
        rusage a, b;
        getrusage(RUSAGE_SELF, &a);
        std::this_thread::sleep_for(std::chrono::seconds(seconds));
        getrusage(RUSAGE_SELF, &b);
        // This thread's own sleep is one voluntary switch.
        cs = (b.ru_nvcsw - a.ru_nvcsw) + (b.ru_nivcsw - a.ru_nivcsw) - 1;
        auto ms = [](const timeval& t) { return t.tv_sec * 1000.0 + t.tv_usec / 1000.0; };
        cpu_ms = ms(b.ru_utime) - ms(a.ru_utime) + ms(b.ru_stime) - ms(a.ru_stime);
        char c = 'x';
        (void)!write(fds[1], &c, 1);
      });
      wg.wait();
      timer.join();
    }, kgmp::Config{.detect_deadlock = false});
    unsetenv("KGMP_MONITOR");
    close(fds[0]);
    close(fds[1]);
    printf("RESULT idle monitor=%s seconds=%d context_switches=%ld cpu_ms=%.1f\n", got.c_str(),
           seconds, cs, cpu_ms);
    fflush(stdout);
  }
  return 0;
}

}  // namespace kgmp_bench
