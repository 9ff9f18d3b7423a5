// kgmp-demo — the main job behind scripts/demo: a fork-join workload and a ring of
// communicating Gs, then the per-P counters that show how the scheduler spread the work.
#include <atomic>
#include <cstdio>
#include <memory>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "kgmp/kgmp.h"

ABSL_FLAG(int, procs, 0, "number of Ps (0: every CPU of the affinity mask; KGMP_MAXPROCS overrides)");
ABSL_FLAG(int, fib, 34, "fork-join fib(N), one G per call while n > 20");
ABSL_FLAG(int, ring, 10000, "Gs in the token ring");
ABSL_FLAG(int, laps, 20, "laps of the token around the ring");

namespace {

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

// A token ring: G i waits for G i-1's signal and then signals G i+1, lap after lap. Each
// signal is a WaitGroup (one per G and lap), so every hop is a park and a ready.
long ring(int n, int laps) {
  std::vector<std::unique_ptr<kgmp::WaitGroup[]>> sig;
  for (int l = 0; l < laps; l++) {
    sig.emplace_back(new kgmp::WaitGroup[n + 1]);
    for (int i = 0; i <= n; i++) sig[l][i].add(1);
  }
  std::atomic<long> hops{0};
  kgmp::WaitGroup all;
  all.add(n);
  for (int i = 0; i < n; i++)
    kgmp::go([&, i] {
      for (int l = 0; l < laps; l++) {
        sig[l][i].wait();
        hops.fetch_add(1, std::memory_order_relaxed);
        sig[l][i + 1].done();
        if (i == n - 1 && l + 1 < laps) sig[l + 1][0].done();  // the token goes round again
      }
      all.done();
    });
  sig[0][0].done();
  all.wait();
  return hops.load();
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "kgmp-demo [--procs N] [--fib N] [--ring N] [--laps N]: a fork-join workload and a ring "
      "of communicating goroutines, then the per-P scheduler counters");
  absl::ParseCommandLine(argc, argv);
  kgmp::Config cfg;
  cfg.procs = absl::GetFlag(FLAGS_procs);
  if (absl::Status s = kgmp::check_config(cfg); !s.ok()) {
    std::fprintf(stderr, "kgmp-demo: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  const int fib_n = absl::GetFlag(FLAGS_fib), ring_n = absl::GetFlag(FLAGS_ring),
            laps = absl::GetFlag(FLAGS_laps);
  if (fib_n < 1 || fib_n > 45 || ring_n < 1 || laps < 1) {
    std::fprintf(stderr, "kgmp-demo: --fib must be 1..45, --ring and --laps at least 1\n");
    return 2;
  }
  kgmp::run(
      [&] {
        std::printf("kgmp-demo: %d processors\n", kgmp::procs());
        absl::Time t0 = absl::Now();
        long f = pfib(fib_n);
        std::printf("fork-join: fib(%d) = %ld in %.1f ms\n", fib_n, f,
                    absl::ToDoubleMilliseconds(absl::Now() - t0));
        t0 = absl::Now();
        long hops = ring(ring_n, laps);
        double ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
        std::printf("token ring: %d goroutines, %d laps, %ld hops in %.1f ms (%.0f ns per hop)\n",
                    ring_n, laps, hops, ms, ms * 1e6 / static_cast<double>(hops));
      },
      cfg);
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
