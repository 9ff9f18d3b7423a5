// kgmp-bench — one binary, one case per question (DESIGN §8).
//
//   kgmp-bench CASE [--procs N] [--reps R]
//
// Each case runs R repetitions and ends with one line
//   RESULT <case> <metric>=<median> <metric>_min=<min> <metric>_max=<max> ...
// The same workloads exist for Go (bench/compare/go) and Boost.Fiber (bench/compare/boostfiber);
// bench/compare/run runs the three side by side and writes bench/RESULTS.md. Keep the work
// here identical to theirs, line for line.
//
// Not Google Benchmark: every case is a whole-runtime experiment. A repetition starts
// kgmp::run (a fresh runtime, its monitor attached, its Ms created) and measures inside the
// main goroutine; handoff and idle pick each run's monitor (KGMP_MONITOR), --counters=both
// switches the telemetry per run (KGMPDEBUG), switch-cost forks a second process and
// attaches the trace program around its rounds. Google Benchmark's harness repeats a
// function inside one process and reports its own statistics, which fits none of that; and
// bench/compare/run repeats by process (`--reps 1`, interleaved with the Go and Boost.Fiber
// peers, which print the same RESULT lines), so the RESULT line is the interface, not a
// harness's output.
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "config.h"
#include "export_test.h"
#include "handoff_bench.h"
#include "kgmp/kgmp.h"

ABSL_FLAG(int, procs, 0, "number of Ps (0: every CPU of the affinity mask)");
ABSL_FLAG(int, reps, 5, "repetitions; the RESULT line holds their median, min and max");
ABSL_FLAG(bool, verbose, false, "after each repetition, print the runtime's accounting to stderr");
ABSL_FLAG(std::string, monitor, "all", "handoff, idle, preempt: the monitor(s) to measure (handoff: scx, trace, trace-sleep, poll, floor, all, or a comma-separated list; idle: trace, poll, all; preempt: scx, trace, poll, all, or a comma-separated list)");
ABSL_FLAG(std::string, quiet, "hot", "handoff: the quiet period before each trial (hot, compute, idle)");
ABSL_FLAG(int, trials, 0,
          "handoff: trials (0: 1000 for hot, 200 for compute and idle); preempt: trials (0: 200)");
ABSL_FLAG(double, slice_ms, 10,
          "preempt: Config::preempt_slice in ms (KGMP_PREEMPT_SLICE, when set, overrides it)");
ABSL_FLAG(std::string, raw, "",
          "handoff: also write every trial to this file, one line each: monitor quiet "
          "t_enter_ns (CLOCK_MONOTONIC, as tracefs's trace_clock=mono) us");
ABSL_FLAG(int, quiet_ms, 100, "retouch: the quiet period before each round, ms");
ABSL_FLAG(int, seconds, 10, "idle: how long the runtime sits with every goroutine blocked");
ABSL_FLAG(std::string, counters, "on",
          "the per-P telemetry counters: on, off (KGMPDEBUG=counters=0), or both: every "
          "repetition runs the case with them on and off (alternating which goes first) and "
          "the RESULT line gets <metric>_on, <metric>_off, <metric>_on_off (the ratio of the "
          "medians) and <metric>_on_off_min (of the minima: the steadier one on a noisy machine)");

namespace {

using Metrics = std::map<std::string, double>;

struct Case {
  const char* name;
  const char* help;
  std::function<Metrics(int procs)> run;
};

double ms_since(absl::Time t0) { return absl::ToDoubleMilliseconds(absl::Now() - t0); }
double ns_since(absl::Time t0) { return absl::ToDoubleNanoseconds(absl::Now() - t0); }

kgmp::Config with_procs(int procs) {
  kgmp::Config c;
  c.procs = procs;
  return c;
}

long rss_bytes() {
  long pages = 0, resident = 0;
  if (FILE* f = fopen("/proc/self/statm", "r")) {
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    fclose(f);
  }
  return resident * sysconf(_SC_PAGESIZE);
}

// spawn: 1,000,000 trivial Gs spawned from the main G, joined with one WaitGroup.
Metrics bench_spawn(int procs) {
  constexpr int kN = 1000000;
  double ns = 0;
  kgmp::run(
      [&] {
        kgmp::WaitGroup wg;
        absl::Time t0 = absl::Now();
        wg.add(kN);
        for (int i = 0; i < kN; i++) kgmp::go([&wg] { wg.done(); });
        wg.wait();
        ns = ns_since(t0);
      },
      with_procs(procs));
  return {{"ns_per_g", ns / kN}};
}

// yield: two Gs on one P, each yielding 1,000,000 times (Go's runtime.Gosched).
Metrics bench_yield(int) {
  constexpr int kN = 1000000;
  double ns = 0;
  kgmp::run(
      [&] {
        kgmp::WaitGroup wg;
        wg.add(2);
        absl::Time t0 = absl::Now();
        for (int g = 0; g < 2; g++)
          kgmp::go([&wg] {
            for (int i = 0; i < kN; i++) kgmp::yield();
            wg.done();
          });
        wg.wait();
        ns = ns_since(t0);
      },
      with_procs(1));
  return {{"ns_per_switch", ns / (2.0 * kN)}};
}

// fib: fork-join fib(32), a G per call while n > 20, on 1 then 2 Ps in one process.
long sfib(int n) { return n < 2 ? n : sfib(n - 1) + sfib(n - 2); }
long pfib(int n) {
  if (n <= 20) return sfib(n);
  long a = 0;
  kgmp::WaitGroup wg;
  wg.add(1);
  kgmp::go([&] {
    a = pfib(n - 1);
    wg.done();
  });
  long b = pfib(n - 2);
  wg.wait();
  return a + b;
}
double time_pfib(int procs) {
  double ms = 0;
  long r = 0;
  kgmp::run(
      [&] {
        absl::Time t0 = absl::Now();
        r = pfib(32);
        ms = ms_since(t0);
      },
      with_procs(procs));
  if (r != 2178309) {
    fprintf(stderr, "fib: wrong result %ld\n", r);
    exit(1);
  }
  return ms;
}
Metrics bench_fib(int) {
  Metrics m;
  m["ms_1p"] = time_pfib(1);
  m["ms_2p"] = time_pfib(2);
  absl::Time t0 = absl::Now();
  volatile long r = sfib(32);
  m["ms_serial"] = ms_since(t0);
  if (r != 2178309) exit(1);
  m["speedup"] = m["ms_1p"] / m["ms_2p"];
  return m;
}

// memory: 100,000 Gs parked on one gate; RSS growth per G (its stack included).
Metrics bench_memory(int procs) {
  constexpr int kN = 100000;
  double per_g = 0;
  kgmp::run(
      [&] {
        kgmp::WaitGroup gate, started, finished;
        gate.add(1);
        started.add(kN);
        finished.add(kN);
        long before = rss_bytes();
        for (int i = 0; i < kN; i++)
          kgmp::go([&] {
            started.done();
            gate.wait();
            finished.done();
          });
        started.wait();
        per_g = static_cast<double>(rss_bytes() - before) / kN;
        gate.done();
        finished.wait();
      },
      with_procs(procs));
  return {{"bytes_per_g", per_g}};
}

// Runs each function in its own G and waits for all (Go's `both`/`goJoin`).
template <class... F>
void both(F&&... f) {
  kgmp::WaitGroup wg;
  wg.add(sizeof...(F));
  (kgmp::go([&wg, &f] {
     f();
     wg.done();
   }),
   ...);
  wg.wait();
}

// chan-pingpong: two Gs bounce an int over two unbuffered channels, 1,000,000 round trips, on
// 1 then 2 Ps. ns per round trip.
Metrics bench_chan_pingpong(int) {
  constexpr int kRounds = 1000000;
  auto pingpong = [](int procs) {
    double ns = 0;
    kgmp::run(
        [&] {
          kgmp::Chan<int> ping(0), pong(0);
          absl::Time t0 = absl::Now();
          both(
              [&] {
                for (int i = 0; i < kRounds; i++) {
                  ping.send(i);
                  pong.recv();
                }
              },
              [&] {
                for (int i = 0; i < kRounds; i++) pong.send(*ping.recv());
              });
          ns = ns_since(t0) / kRounds;
        },
        with_procs(procs));
    return ns;
  };
  Metrics m;
  m["ns_1p"] = pingpong(1);
  m["ns_2p"] = pingpong(2);
  return m;
}

// chan-throughput: on 2 Ps one producer sends 10,000,000 ints through a channel of capacity
// 1024 to one consumer. msgs_per_s.
Metrics bench_chan_throughput(int) {
  constexpr long kN = 10000000;
  double secs = 0;
  long sum = 0;
  kgmp::run(
      [&] {
        kgmp::Chan<long> ch(1024);
        absl::Time t0 = absl::Now();
        both(
            [&] {
              for (long i = 0; i < kN; i++) ch.send(i);
              ch.close();
            },
            [&] {
              for (long v : ch) sum += v;
            });
        secs = absl::ToDoubleSeconds(absl::Now() - t0);
      },
      with_procs(2));
  if (sum != kN * (kN - 1) / 2) {
    fprintf(stderr, "chan-throughput: received sum %ld\n", sum);
    exit(1);
  }
  return {{"msgs_per_s", static_cast<double>(kN) / secs}};
}

// select: on 1 P, 5,000,000 times `a <- i; select { case <-a: case <-b: }` with a buffered
// (cap 1) and b an unbuffered channel that is never ready. The send is included.
Metrics bench_select(int) {
  constexpr int kN = 5000000;
  double ns = 0;
  kgmp::run(
      [&] {
        kgmp::Chan<int> a(1), b(0);
        absl::Time t0 = absl::Now();
        for (int i = 0; i < kN; i++) {
          a.send(i);
          kgmp::select(kgmp::on_recv(a), kgmp::on_recv(b));
        }
        ns = ns_since(t0) / kN;
      },
      with_procs(1));
  return {{"ns_per_select", ns}};
}

// sleep: 10,000 Gs each sleep 1 ms 100 times (on --procs Ps); lateness = measured sleep - 1 ms.
// p50/p99 lateness in us over all 1,000,000 sleeps, and wakeups_per_s.
Metrics bench_sleep(int procs) {
  constexpr int kSleepers = 10000, kRounds = 100;
  std::vector<double> late(static_cast<std::size_t>(kSleepers) * kRounds);
  double secs = 0;
  kgmp::run(
      [&] {
        absl::Time t0 = absl::Now();
        kgmp::WaitGroup wg;
        wg.add(kSleepers);
        for (int g = 0; g < kSleepers; g++)
          kgmp::go([&, g] {
            for (int r = 0; r < kRounds; r++) {
              auto s = kgmp::Clock::now();
              kgmp::sleep_for(std::chrono::milliseconds(1));
              late[static_cast<std::size_t>(g) * kRounds + r] =
                  std::chrono::duration<double, std::micro>(kgmp::Clock::now() - s).count() - 1000;
            }
            wg.done();
          });
        wg.wait();
        secs = absl::ToDoubleSeconds(absl::Now() - t0);
      },
      with_procs(procs));
  std::sort(late.begin(), late.end());
  auto pct = [&](double q) { return late[static_cast<std::size_t>(q * (late.size() - 1))]; };
  return {{"late_p99_us", pct(0.99)},
          {"late_p50_us", pct(0.50)},
          {"wakeups_per_s", static_cast<double>(late.size()) / secs}};
}

// mutex: 8 Gs on 2 Ps each do 1,000,000 x {lock; counter++; unlock} on one kgmp::Mutex.
Metrics bench_mutex(int) {
  constexpr int kGs = 8, kIters = 1000000;
  kgmp::Mutex mu;
  long counter = 0;
  double ns = 0;
  kgmp::run(
      [&] {
        kgmp::WaitGroup wg;
        wg.add(kGs);
        absl::Time t0 = absl::Now();
        for (int g = 0; g < kGs; g++)
          kgmp::go([&] {
            for (int i = 0; i < kIters; i++) {
              mu.lock();
              counter++;
              mu.unlock();
            }
            wg.done();
          });
        wg.wait();
        ns = ns_since(t0);
      },
      with_procs(2));
  if (counter != static_cast<long>(kGs) * kIters) {
    fprintf(stderr, "mutex: counter = %ld\n", counter);
    exit(1);
  }
  return {{"ns_per_op", ns / (static_cast<double>(kGs) * kIters)}};
}

const std::vector<Case>& cases() {
  static const std::vector<Case> all = {
      {"spawn", "spawn+join of 1,000,000 trivial Gs (ns_per_g)", bench_spawn},
      {"yield", "two Gs yielding on one P (ns_per_switch)", bench_yield},
      {"fib", "fork-join fib(32) on 1 and 2 Ps, and serial (ms_1p ms_2p ms_serial speedup)",
       bench_fib},
      {"memory", "RSS per parked G, 100,000 Gs (bytes_per_g)", bench_memory},
      {"chan-pingpong", "unbuffered round trip on 1 and 2 Ps (ns_1p ns_2p)", bench_chan_pingpong},
      {"chan-throughput", "buffered (1024) 1 producer 1 consumer on 2 Ps (msgs_per_s)",
       bench_chan_throughput},
      {"select", "two-case select with one ready, 1 P (ns_per_select)", bench_select},
      {"mutex", "8 Gs on 2 Ps, 1,000,000 x lock/counter++/unlock each (ns_per_op)", bench_mutex},
      {"sleep", "10,000 Gs sleeping 1 ms 100 times (late_p99_us late_p50_us wakeups_per_s)",
       bench_sleep},
  };
  return all;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// ---- preempt ----
//
// How long a goroutine that yields waits behind one that never enters the runtime: one P; per
// trial the main G spawns a hog that spins on a relaxed atomic load of a stop flag (no call, no
// runtime entry), records t0, yields (the hog runs), and records t1 when it runs again, which
// only preemption of the hog allows; the figure is t1 - t0 (the slice plus the time to act on
// it). Then it sets stop and spin-yields until the hog is done. The same in
// bench/compare/go/preempt.go (runtime.Gosched, atomic.LoadInt32), where sysmon preempts the
// hog asynchronously after forcePreemptNS (10 ms). If the main G has not run again 5 s into a
// trial (preemption missing, or turned off), a watchdog thread prints
// "RESULT preempt monitor=M error=no-preemption" and exits 1: the benchmark never hangs.

std::int64_t mono_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// The q-quantile of sorted v (nearest rank below), as handoff_bench.cpp and the Go peer.
double pct(const std::vector<double>& v, double q) {
  return v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1))];
}

constexpr int kPreemptWarmup = 5;

// Runs the trials under `monitor`; returns false (with a "# " line) if the runtime chose another.
bool preempt_trials(const std::string& monitor, const kgmp::Config& cfg, int trials,
                    std::vector<double>* ms) {
  setenv("KGMP_MONITOR", monitor.c_str(), 1);
  std::atomic<int> progress{0};
  std::mutex mu;
  std::condition_variable cv;
  bool finished = false;
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> l(mu);
    int seen = -1;
    auto last = std::chrono::steady_clock::now();
    while (!finished) {
      cv.wait_for(l, std::chrono::milliseconds(100));
      const int p = progress.load(std::memory_order_relaxed);
      const auto now = std::chrono::steady_clock::now();
      if (p != seen) {
        seen = p;
        last = now;
      } else if (!finished && now - last > std::chrono::seconds(5)) {
        printf("RESULT preempt monitor=%s error=no-preemption\n", monitor.c_str());
        fflush(stdout);
        fprintf(stderr,
                "kgmp-bench preempt: monitor %s: the main goroutine waited 5 s behind a hog "
                "that never enters the runtime (trial %d): it was not preempted\n",
                monitor.c_str(), p / 2);
        _exit(1);
      }
    }
  });
  std::string got;
  kgmp::run(
      [&] {
        got = kgmp::monitor() != nullptr ? kgmp::monitor() : "";
        if (got != monitor) return;
        for (int t = 0; t < trials + kPreemptWarmup; t++) {
          std::atomic<int> stop{0}, started{0}, done{0};
          kgmp::go([&] {
            started.store(1, std::memory_order_relaxed);
            while (stop.load(std::memory_order_relaxed) == 0) {
            }
            done.store(1, std::memory_order_release);
          });
          const std::int64_t t0 = mono_ns();
          do kgmp::yield();  // again if the hog has not run yet
          while (started.load(std::memory_order_relaxed) == 0);
          const std::int64_t t1 = mono_ns();
          progress.fetch_add(1, std::memory_order_relaxed);
          if (t >= kPreemptWarmup) ms->push_back(static_cast<double>(t1 - t0) / 1e6);
          stop.store(1, std::memory_order_relaxed);
          while (done.load(std::memory_order_acquire) == 0) kgmp::yield();
          progress.fetch_add(1, std::memory_order_relaxed);
        }
      },
      cfg);
  {
    std::lock_guard<std::mutex> l(mu);
    finished = true;
  }
  cv.notify_all();
  watchdog.join();
  unsetenv("KGMP_MONITOR");
  if (got != monitor) {
    printf("# preempt: asked for monitor %s, the runtime chose %s: skipped\n", monitor.c_str(),
           got.c_str());
    return false;
  }
  return true;
}

int bench_preempt(const std::string& monitors, double slice_ms, int trials) {
  if (trials <= 0) trials = 200;
  if (slice_ms < 0) {
    fprintf(stderr, "kgmp-bench preempt: --slice_ms must be >= 0\n");
    return 2;
  }
  kgmp::Config cfg;
  cfg.procs = 1;
  cfg.preempt_slice = std::chrono::nanoseconds(static_cast<std::int64_t>(slice_ms * 1e6));
  // The slice the runtime will use: KGMP_PREEMPT_SLICE, when set, overrides --slice_ms.
  auto resolved = kgmp::internal::resolve_config(cfg);
  if (!resolved.ok()) {
    fprintf(stderr, "kgmp-bench preempt: %s\n", std::string(resolved.status().message()).c_str());
    return 2;
  }
  const double eff_ms = static_cast<double>(resolved->cfg.preempt_slice.count()) / 1e6;
  // A monitor the runtime cannot start (trace without BPF) is skipped under "all" and exits 3
  // when asked for by name.
  std::vector<std::string> list;
  bool all = false;
  if (!kgmp_bench::parse_monitors("preempt", monitors, {"scx", "trace", "poll"}, &list, &all)) return 2;
  int ran = 0;
  for (const std::string& m : list) {
    std::vector<double> ms;
    if (!preempt_trials(m, cfg, trials, &ms)) {
      if (!all) {
        printf("unsupported: monitor %s is not available here\n", m.c_str());
        return 3;
      }
      continue;
    }
    std::sort(ms.begin(), ms.end());
    printf("RESULT preempt monitor=%s slice_ms=%g p50_ms=%.3f p99_ms=%.3f max_ms=%.3f\n",
           m.c_str(), eff_ms, pct(ms, 0.5), pct(ms, 0.99), ms.back());
    fflush(stdout);
    ran++;
  }
  if (ran == 0) {
    printf("unsupported: none of the monitors asked for is available here\n");
    return 3;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string usage = "kgmp-bench CASE [--procs N] [--reps R]\n\ncases:\n";
  for (const Case& c : cases()) usage += absl::StrFormat("  %-16s %s\n", c.name, c.help);
  usage +=
      "  handoff          P stuck behind a blocked M, one P: --monitor scx|trace|trace-sleep|poll|floor|all "
      "--quiet hot|compute|idle [--trials N] (p50_us p90_us p99_us max_us)\n"
      "  idle             every G blocked for --seconds: context switches and CPU of the process\n"
      "  switch-cost      another process's pipe ping-pong, trace program detached vs attached\n"
      "  retouch          the machine's cost of touching a page again after --quiet compute|idle "
      "of --quiet_ms, --trials rounds (0: 100)\n"
      "  preempt          a G that yields behind a hog that never enters the runtime, one P: "
      "--monitor scx|trace|poll|all [--slice_ms S] [--trials N] (p50_ms p99_ms max_ms)\n";
  absl::SetProgramUsageMessage(usage);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() != 2) {
    fprintf(stderr, "kgmp-bench: name one case; run kgmp-bench --help for the list\n");
    return 2;
  }
  if (args[1] == std::string("handoff"))
    return kgmp_bench::bench_handoff(absl::GetFlag(FLAGS_monitor), absl::GetFlag(FLAGS_quiet),
                                     absl::GetFlag(FLAGS_trials), absl::GetFlag(FLAGS_raw));
  if (args[1] == std::string("switch-cost"))
    return kgmp_bench::bench_switch_cost(20, 20000);
  if (args[1] == std::string("retouch")) {
    int rounds = absl::GetFlag(FLAGS_trials);
    return kgmp_bench::bench_retouch(absl::GetFlag(FLAGS_quiet), absl::GetFlag(FLAGS_quiet_ms),
                                     rounds == 0 ? 100 : rounds);
  }
  if (args[1] == std::string("preempt"))
    return bench_preempt(absl::GetFlag(FLAGS_monitor), absl::GetFlag(FLAGS_slice_ms),
                         absl::GetFlag(FLAGS_trials));
  if (args[1] == std::string("idle"))
    return kgmp_bench::bench_idle(absl::GetFlag(FLAGS_monitor), absl::GetFlag(FLAGS_seconds));
  const Case* c = nullptr;
  for (const Case& k : cases())
    if (args[1] == std::string(k.name)) c = &k;
  if (c == nullptr) {
    fprintf(stderr, "kgmp-bench: unknown case '%s'; run kgmp-bench --help for the list\n",
            args[1]);
    return 2;
  }
  int reps = absl::GetFlag(FLAGS_reps), procs = absl::GetFlag(FLAGS_procs);
  if (reps < 1 || procs < 0) {
    fprintf(stderr, "kgmp-bench: --reps must be >= 1 and --procs >= 0\n");
    return 2;
  }
  if (absl::Status s = kgmp::check_config(with_procs(procs)); !s.ok()) {
    fprintf(stderr, "kgmp-bench: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  std::string counters = absl::GetFlag(FLAGS_counters);
  if (counters != "on" && counters != "off" && counters != "both") {
    fprintf(stderr, "kgmp-bench: --counters must be on, off or both\n");
    return 2;
  }
  // KGMPDEBUG is read by every run(): the switch needs no restart. The user's own settings
  // (schedtrace=...) are kept, counters= appended (the last one wins).
  const char* user_dbg = std::getenv("KGMPDEBUG");
  const std::string dbg = user_dbg != nullptr && *user_dbg != '\0' ? std::string(user_dbg) + "," : "";
  auto run_with = [&](bool on) {
    if (counters != "on" || !dbg.empty())
      setenv("KGMPDEBUG", (dbg + (on ? "counters=1" : "counters=0")).c_str(), 1);
    return c->run(procs);
  };
  std::map<std::string, std::vector<double>> runs;
  std::vector<std::string> order;
  for (int r = 0; r < reps; r++) {
    Metrics m;
    if (counters == "both") {
      bool on_first = r % 2 == 0;
      Metrics a = run_with(on_first), b = run_with(!on_first);
      const Metrics& on = on_first ? a : b;
      const Metrics& off = on_first ? b : a;
      for (const auto& [k, v] : on) m[k + "_on"] = v;
      for (const auto& [k, v] : off) m[k + "_off"] = v;
    } else {
      m = run_with(counters == "on");
    }
    if (absl::GetFlag(FLAGS_verbose)) {
      auto st = kgmp::internal::last_run_stats();
      fprintf(stderr, "rep %d: Gs=%llu stacks=%zu (guarded %zu) threads=%zu\n", r,
              static_cast<unsigned long long>(st.spawned), st.stacks_carved, st.stacks_guarded,
              st.threads);
      for (const auto& p : kgmp::proc_stats())
        fprintf(stderr, "  P%d cpu%d: schedticks=%llu runs=%llu spawns=%llu steals=%llu stolen=%llu globrunq=%llu parks=%llu\n",
                p.id, p.cpu, (unsigned long long)p.schedticks, (unsigned long long)p.runs,
                (unsigned long long)p.spawns, (unsigned long long)p.steals,
                (unsigned long long)p.stolen, (unsigned long long)p.globrunq_takes,
                (unsigned long long)p.parks);
    }
    for (const auto& [k, v] : m) {
      if (runs[k].empty() && r == 0) order.push_back(k);
      runs[k].push_back(v);
    }
  }
  std::vector<std::string> fields;
  for (const std::string& k : order) {
    auto& v = runs[k];
    fields.push_back(absl::StrFormat("%s=%.3f %s_min=%.3f %s_max=%.3f", k, median(v), k,
                                     *std::min_element(v.begin(), v.end()), k,
                                     *std::max_element(v.begin(), v.end())));
  }
  if (counters == "both") {
    for (const std::string& k : order) {
      if (k.size() < 3 || k.compare(k.size() - 3, 3, "_on") != 0) continue;
      std::string base = k.substr(0, k.size() - 3);
      double off = median(runs[base + "_off"]);
      double off_min = *std::min_element(runs[base + "_off"].begin(), runs[base + "_off"].end());
      double on_min = *std::min_element(runs[k].begin(), runs[k].end());
      if (off != 0 && off_min != 0)
        fields.push_back(absl::StrFormat("%s_on_off=%.4f %s_on_off_min=%.4f", base,
                                         median(runs[k]) / off, base, on_min / off_min));
    }
  }
  printf("RESULT %s %s\n", c->name, absl::StrJoin(fields, " ").c_str());
  return 0;
}
