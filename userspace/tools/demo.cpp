// kgmp-demo — the main job behind scripts/demo: a few seconds of a mixed workload, watched from
// inside (schedtrace, kgmp::metrics) and from outside (kgmpstat trace against this very
// process), then the hand-off summary and where the trace file is.
//
// The workload mixes the three things a G/M/P scheduler must juggle:
//   - CPU-bound Gs: fork-join fib, one G per call above a cutoff, over and over;
//   - Gs blocking in real syscalls: read() on pipes (unwrapped: only the kernel can tell the
//     scheduler, through the trace monitor's BPF; under the poll monitor they are marked too),
//     the same through kgmp::blocking() (marked: the P is handed off at once, and the trace
//     records the block), and bare nanosleep() calls;
//   - channel traffic: a producer, a pool of workers and a collector over buffered channels.
// With KGMPDEBUG=schedtrace=1000 the runtime prints Go's schedtrace line every second.
//
// The trace: a helper OS thread (not a G: it waits in waitpid) starts `kgmpstat trace <our pid>`
// after a warm-up; kgmpstat reads our stats endpoint like any outside reader, writes Chrome
// trace-event JSON and prints the block -> hand-off latencies it matched. Without root the
// runtime uses the poll monitor; the demo says so, and everything else works the same.
#include <spawn.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <limits>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "kgmp/kgmp.h"
#include "kgmp/metrics.h"

extern char** environ;

ABSL_FLAG(int, procs, 0, "number of Ps (0: every CPU of the affinity mask; KGMP_MAXPROCS overrides)");
ABSL_FLAG(double, seconds, 8, "how long the workload runs");
ABSL_FLAG(double, trace_after, 2, "start the trace this many seconds in (0: no trace)");
ABSL_FLAG(double, trace_seconds, 1, "how long the trace records");
ABSL_FLAG(std::string, trace, "", "the trace file (default: $TMPDIR or /tmp, kgmp-demo-<pid>.json)");
ABSL_FLAG(std::string, kgmpstat, "", "the kgmpstat binary (default: beside kgmp-demo, then $PATH)");

namespace {

std::atomic<bool> stop{false};
// Under the poll monitor nothing tells the scheduler that an unwrapped syscall blocked, so an M
// blocked in one keeps its P (Go's rule too: only marked syscalls are retaken). With every P
// held that way the program would stall; in poll mode the demo marks every syscall instead.
bool mark_all = false;

template <class F>
auto Syscall(bool marked, F&& f) {
  return marked || mark_all ? kgmp::blocking(std::forward<F>(f)) : f();
}

long sfib(int n) { return n < 2 ? n : sfib(n - 1) + sfib(n - 2); }
long pfib(int n) {
  if (n <= 18) return sfib(n);
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

// A reader blocked in read() on a pipe, and a writer that sleeps in nanosleep() between bytes.
// `marked`: the read goes through kgmp::blocking() (the runtime hands the P off at once).
void pipe_pair(kgmp::WaitGroup& wg, bool marked, long gap_us) {
  int fds[2];
  if (pipe(fds) != 0) return;
  wg.add(2);
  kgmp::go([&wg, rd = fds[0], marked] {
    char c = 0;
    for (;;) {
      ssize_t n = Syscall(marked, [&] { return read(rd, &c, 1); });
      if (n != 1 || c == 'q') break;
      // A runtime entry after each read, as real code has one (it would send what it read on
      // a channel): the M learns there that its P was handed off while read() blocked, and
      // the G goes back to a P. Without any, the G would stay on its own P-less thread after
      // the first hand-off (DESIGN §3), and its later reads would have no P to hand off.
      kgmp::yield();
    }
    close(rd);
    wg.done();
  });
  kgmp::go([&wg, wr = fds[1], gap_us] {
    timespec ts{0, gap_us * 1000};
    while (!stop.load(std::memory_order_relaxed)) {
      Syscall(false, [&] { return nanosleep(&ts, nullptr); });
      if (write(wr, "x", 1) != 1) break;
      kgmp::yield();  // a runtime entry, as for the reader
    }
    if (write(wr, "q", 1) != 1) std::perror("kgmp-demo: write");
    close(wr);
    wg.done();
  });
}

// producer -> jobs -> workers -> results -> collector.
void channels(kgmp::WaitGroup& wg, std::atomic<long>& items) {
  auto jobs = std::make_shared<kgmp::Chan<int>>(64);
  auto results = std::make_shared<kgmp::Chan<long>>(64);
  constexpr int kWorkers = 8;
  auto left = std::make_shared<std::atomic<int>>(kWorkers);
  wg.add(2 + kWorkers);
  kgmp::go([&wg, jobs] {
    for (int i = 0; !stop.load(std::memory_order_relaxed); i++) jobs->send(i % 20);
    jobs->close();
    wg.done();
  });
  for (int w = 0; w < kWorkers; w++)
    kgmp::go([&wg, jobs, results, left] {
      while (std::optional<int> n = jobs->recv()) results->send(sfib(*n));
      if (left->fetch_sub(1) == 1) results->close();
      wg.done();
    });
  kgmp::go([&wg, results, &items] {
    while (results->recv()) items.fetch_add(1, std::memory_order_relaxed);
    wg.done();
  });
}

std::string FindKgmpstat() {
  if (std::string f = absl::GetFlag(FLAGS_kgmpstat); !f.empty()) return f;
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) {
    std::string dir(self, static_cast<size_t>(n));
    dir = dir.substr(0, dir.rfind('/'));
    for (const std::string& c : {dir + "/kgmpstat/kgmpstat", dir + "/kgmpstat"})
      if (access(c.c_str(), X_OK) == 0) return c;
  }
  return "kgmpstat";  // posix_spawnp searches $PATH
}

// Runs `kgmpstat trace` against this process; its stdout (the hand-off summary) or an error.
std::string TraceSelf(const std::string& out, double seconds) {
  const std::string bin = FindKgmpstat();
  std::vector<std::string> args = {bin, "trace", absl::StrCat(getpid()),
                                   absl::StrFormat("--seconds=%g", seconds), "-o", out};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  int p[2];
  if (pipe(p) != 0) return "kgmp-demo: pipe failed\n";
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, p[1], 1);
  posix_spawn_file_actions_adddup2(&fa, p[1], 2);
  posix_spawn_file_actions_addclose(&fa, p[0]);
  pid_t pid;
  int rc = posix_spawnp(&pid, bin.c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(p[1]);
  if (rc != 0) {
    close(p[0]);
    return absl::StrFormat("kgmp-demo: cannot run %s (build it: cmake --build --preset release "
                           "--target kgmpstat, or pass --kgmpstat)\n", bin);
  }
  std::string text;
  char buf[4096];
  ssize_t n;
  while ((n = read(p[0], buf, sizeof buf)) > 0) text.append(buf, static_cast<size_t>(n));
  close(p[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) text = "kgmpstat trace failed: " + text;
  return text;
}

std::uint64_t Metric(const char* name) {
  for (const kgmp::metrics::Sample& s : kgmp::metrics::read())
    if (s.name == name) return s.u64;
  return 0;
}

// A histogram metric (kgmp::metrics::Histogram, bucket bounds in seconds).
kgmp::metrics::Histogram HistMetric(const char* name) {
  for (kgmp::metrics::Sample& s : kgmp::metrics::read())
    if (s.name == name) return std::move(s.hist);
  return {};
}

// The q-quantile of h as "<= upper bound of its bucket" (power-of-two buckets: an upper bound
// within 2x), or -1 if h is empty.
double QuantileUpper(const kgmp::metrics::Histogram& h, double q) {
  std::uint64_t n = 0;
  for (std::uint64_t c : h.counts) n += c;
  if (n == 0) return -1;
  std::uint64_t want = static_cast<std::uint64_t>(q * static_cast<double>(n - 1)) + 1, seen = 0;
  for (std::size_t i = 0; i < h.counts.size(); i++) {
    seen += h.counts[i];
    if (seen >= want) return h.buckets[i + 1];
  }
  return h.buckets.back();
}

std::string Micros(double seconds) {
  if (seconds < 0) return "n/a";
  if (seconds == std::numeric_limits<double>::infinity()) return "inf";
  return absl::StrFormat("%.0f us", seconds * 1e6);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "kgmp-demo [--seconds S] [--trace FILE]: a mixed workload (CPU-bound, syscall-blocking "
      "and channel goroutines), a trace of it taken by kgmpstat, and the hand-off summary. "
      "Run with KGMPDEBUG=schedtrace=1000 for Go's schedtrace lines.");
  absl::ParseCommandLine(argc, argv);
  kgmp::Config cfg;
  cfg.procs = absl::GetFlag(FLAGS_procs);
  if (absl::Status s = kgmp::check_config(cfg); !s.ok()) {
    std::fprintf(stderr, "kgmp-demo: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  const double seconds = absl::GetFlag(FLAGS_seconds);
  const double trace_after = absl::GetFlag(FLAGS_trace_after);
  const double trace_seconds = absl::GetFlag(FLAGS_trace_seconds);
  if (!(seconds > 0 && seconds <= 600) || trace_after < 0 || !(trace_seconds > 0)) {
    std::fprintf(stderr, "kgmp-demo: --seconds must be in (0, 600], --trace_after >= 0, "
                         "--trace_seconds > 0\n");
    return 2;
  }
  std::string trace_file = absl::GetFlag(FLAGS_trace);
  if (trace_file.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    trace_file = absl::StrFormat("%s/kgmp-demo-%d.json", tmp != nullptr && *tmp ? tmp : "/tmp",
                                 getpid());
  }
  const bool tracing = trace_after > 0 && trace_after + trace_seconds < seconds;

  std::string monitor, trace_text;
  std::atomic<long> items{0}, fibs{0};
  std::uint64_t handoffs = 0, blocks = 0;
  kgmp::metrics::Histogram handoff_lat;
  absl::Duration ran;
  kgmp::run(
      [&] {
        monitor = kgmp::monitor();
        std::printf("kgmp-demo: pid %d, %d processors, monitor=%s, %.0f s of CPU-bound, "
                    "syscall-blocking and channel goroutines\n",
                    static_cast<int>(getpid()), kgmp::procs(), monitor.c_str(), seconds);
        if (monitor == "poll") {
          mark_all = true;
          std::printf("kgmp-demo: the poll monitor (no BPF: not root, or the kernel refused). "
                      "Only syscalls marked with kgmp::blocking() can be handed off under it (a "
                      "P whose M blocks unmarked stays stuck), so the demo marks all of them; "
                      "run as root to see unmarked ones handed off by the kernel's report\n");
        }
        std::fflush(stdout);
        const absl::Time t0 = absl::Now();
        kgmp::WaitGroup wg;
        wg.add(2);
        for (int i = 0; i < 2; i++)
          kgmp::go([&] {
            while (!stop.load(std::memory_order_relaxed)) {
              pfib(24);
              fibs.fetch_add(1, std::memory_order_relaxed);
            }
            wg.done();
          });
        pipe_pair(wg, /*marked=*/false, 500);
        pipe_pair(wg, /*marked=*/false, 2000);
        pipe_pair(wg, /*marked=*/true, 1000);
        wg.add(1);
        kgmp::go([&] {  // a bare nanosleep(): the M itself sleeps in the kernel
          timespec ts{0, 3000000};
          while (!stop.load(std::memory_order_relaxed)) {
            Syscall(false, [&] { return nanosleep(&ts, nullptr); });
            kgmp::yield();  // a runtime entry (see pipe_pair)
          }
          wg.done();
        });
        channels(wg, items);
        std::thread tracer;
        if (tracing)
          tracer = std::thread([&] {
            absl::SleepFor(absl::Seconds(trace_after));
            trace_text = TraceSelf(trace_file, trace_seconds);
          });
        kgmp::sleep_for(std::chrono::milliseconds(static_cast<long>(seconds * 1000)));
        if (tracer.joinable()) {
          // Wait for kgmpstat on an OS thread of its own, so no P is held meanwhile.
          kgmp::blocking([&] { tracer.join(); });
        }
        handoffs = Metric("/sched/handoffs:events");
        handoff_lat = HistMetric("/sched/handoffs/latencies:seconds");
        blocks = Metric("/sched/workers/blocks:events");
        stop.store(true);
        wg.wait();
        ran = absl::Now() - t0;
      },
      cfg);

  std::printf("\n== kgmp-demo summary (%.1f s) ==\n", absl::ToDoubleSeconds(ran));
  std::printf("work: %ld fib(24) fork-joins, %ld channel items\n", fibs.load(), items.load());
  std::printf("monitor: %s%s\n", monitor.c_str(),
              monitor == "poll" ? " (no BPF: hand-offs happen after a polling period)" : "");
  std::printf("hand-offs (whole run, /sched/handoffs:events): %llu; M blocks seen by BPF: %llu\n",
              static_cast<unsigned long long>(handoffs), static_cast<unsigned long long>(blocks));
  std::uint64_t reported = 0;
  for (std::uint64_t c : handoff_lat.counts) reported += c;
  if (reported > 0)
    std::printf("hand-off latency (kernel's switch-out of the blocked M -> its P taken, %llu "
                "kernel-reported hand-offs, /sched/handoffs/latencies:seconds): p50 <= %s, "
                "p99 <= %s, monitor=%s\n",
                static_cast<unsigned long long>(reported),
                Micros(QuantileUpper(handoff_lat, 0.50)).c_str(),
                Micros(QuantileUpper(handoff_lat, 0.99)).c_str(), monitor.c_str());
  else
    std::printf("hand-off latency: no kernel-reported hand-off (monitor=%s%s)\n",
                monitor.c_str(),
                monitor == "poll" ? ": the poll monitor hands off marked calls after its period"
                                  : "");
  if (tracing) {
    std::printf("trace of %.1f s (kgmpstat trace %d --seconds=%g):\n", trace_seconds,
                static_cast<int>(getpid()), trace_seconds);
    for (absl::string_view line : absl::StrSplit(trace_text, '\n', absl::SkipEmpty()))
      std::printf("  %.*s\n", static_cast<int>(line.size()), line.data());
    std::printf("  (the trace's latencies are of blocks it recorded, i.e. kgmp::blocking() "
                "calls, handed off at entry; the kernel-reported ones are in the hand-off latency "
                "line above)\n");
    std::printf("trace file: %s\n", trace_file.c_str());
  }
  std::printf("\nper-P counters (Gs run = G executions, steals = successful steals):\n");
  std::printf("%-3s %-4s %12s %12s %10s %10s %10s %8s\n", "P", "cpu", "schedticks", "Gs run",
              "spawns", "steals", "stolen", "parks");
  for (const kgmp::ProcStats& p : kgmp::proc_stats())
    std::printf("%-3d %-4d %12llu %12llu %10llu %10llu %10llu %8llu\n", p.id, p.cpu,
                static_cast<unsigned long long>(p.schedticks),
                static_cast<unsigned long long>(p.runs), static_cast<unsigned long long>(p.spawns),
                static_cast<unsigned long long>(p.steals),
                static_cast<unsigned long long>(p.stolen),
                static_cast<unsigned long long>(p.parks));
  return 0;
}
