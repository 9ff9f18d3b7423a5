// switch_cost.cpp — kgmp-bench switch-cost: what the attached trace program costs every
// context switch of the machine. Another process ping-pongs a byte between two threads over
// pipes (on one CPU, then across two); rounds alternate between the program detached and
// attached (TraceBpf::open in this process), and the figure is the median of the paired
// differences, per round trip (each round trip is two context switches on each side: four
// sched_switch hits and two sched_wakeup hits). Needs root and BPF.
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "handoff_bench.h"
#ifdef KGMP_HAVE_BPF
#include "trace_bpf.h"
#endif

namespace kgmp_bench {

#ifndef KGMP_HAVE_BPF
int bench_switch_cost(int, long) {
  std::printf("unsupported: this build has no BPF support\n");
  return 3;
}
#else
namespace {

void pin(int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  sched_setaffinity(0, sizeof s, &s);
}

// In the child: two threads ping-pong n bytes; ns per round trip.
double pingpong(int cpu_a, int cpu_b, long n) {
  int ab[2], ba[2];
  if (pipe(ab) != 0 || pipe(ba) != 0) std::exit(1);
  std::thread b([&] {
    pin(cpu_b);
    char c;
    for (long i = 0; i < n; i++)
      if (read(ab[0], &c, 1) != 1 || write(ba[1], &c, 1) != 1) break;
  });
  pin(cpu_a);
  auto t0 = std::chrono::steady_clock::now();
  char c = 'x';
  for (long i = 0; i < n; i++)
    if (write(ab[1], &c, 1) != 1 || read(ba[0], &c, 1) != 1) break;
  double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
  b.join();
  for (int fd : {ab[0], ab[1], ba[0], ba[1]}) close(fd);
  return ns / static_cast<double>(n);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int bench_switch_cost(int pairs, long n) {
  if (auto probe = kgmp::internal::TraceBpf::open(1); !probe.ok()) {
    std::printf("unsupported: %s\n", std::string(probe.status().message()).c_str());
    return 3;
  }
  int cmd[2], res[2];
  if (pipe(cmd) != 0 || pipe(res) != 0) return 1;
  pid_t pid = fork();
  if (pid == 0) {  // the other process: runs rounds on command
    close(cmd[1]);
    close(res[0]);
    int cpus[2];
    while (read(cmd[0], cpus, sizeof cpus) == sizeof cpus) {
      double ns = pingpong(cpus[0], cpus[1], n);
      if (write(res[1], &ns, sizeof ns) != sizeof ns) break;
    }
    _exit(0);
  }
  close(cmd[0]);
  close(res[1]);
  auto round = [&](int a, int b) {
    int cpus[2] = {a, b};
    double ns = 0;
    if (write(cmd[1], cpus, sizeof cpus) != sizeof cpus || read(res[0], &ns, sizeof ns) != sizeof ns)
      std::exit(1);
    return ns;
  };
  const int ncpu = static_cast<int>(std::thread::hardware_concurrency());
  std::string line = "RESULT switch-cost";
  for (int other : {0, 1}) {
    if (other >= ncpu) break;
    std::vector<double> off, on, diff;
    round(0, other);  // warm-up
    for (int i = 0; i < pairs; i++) {
      double x, y;
      if (i % 2 == 0) {  // alternate the order so drift does not bias the difference
        x = round(0, other);
        auto tb = kgmp::internal::TraceBpf::open(1);
        y = round(0, other);
      } else {
        {
          auto tb = kgmp::internal::TraceBpf::open(1);
          y = round(0, other);
        }
        x = round(0, other);
      }
      off.push_back(x);
      on.push_back(y);
      diff.push_back(y - x);
    }
    const char* k = other == 0 ? "same_cpu" : "cross_cpu";
    double d = median(diff), base = median(off);
    char buf[256];
    std::snprintf(buf, sizeof buf, " %s_detached_ns=%.0f %s_attached_ns=%.0f %s_delta_ns=%+.0f %s_pct=%+.1f",
                  k, base, k, median(on), k, d, k, 100.0 * d / base);
    line += buf;
  }
  close(cmd[1]);
  int st;
  waitpid(pid, &st, 0);
  std::printf("%s pairs=%d round_trips=%ld\n", line.c_str(), pairs, n);
  return 0;
}
#endif

}  // namespace kgmp_bench
