// trace_latency.cpp — measurements of the `trace` monitor on this machine (root; not a test).
//
// --fifo (first argument) runs every measuring thread at SCHED_FIFO 10: the latency of a loaded
// machine without the foreign load's interference.
//
//   trace_latency latency [trials=1000] [cpu=0]
//       W (a registered M holding P 0 with lease USER and runq_len 1) and S (P 0's spare M,
//       waiting in Ring::wait) are pinned to the same CPU, as the trace monitor's watcher is
//       (DESIGN §3, §4).
//       Per trial: W sets its lease USER, takes a CLOCK_MONOTONIC timestamp, read()s an empty
//       pipe; S wakes from Ring::wait, takes its timestamp, consumes the event, writes W's pipe.
//       Between trials W sleeps 100-300 us with its lease RUNTIME (no event). Prints p50/p90/
//       p99/max of W timestamp -> S awake, and its two stages split by the BPF timestamp.
//       Then the same with a plain pipe (W writes S's pipe, then blocks): the same-core floor.
//   (the switch cost of the attached program: kgmp-bench switch-cost)
//       A child process ping-pongs a byte over two pipes between two threads (same CPU, then
//       two CPUs). Paired rounds without / with the program attached (order alternating);
//       prints the median per-round-trip time of each and the median of the paired
//       differences. Then one round with kernel.bpf_stats_enabled=1 for ns per program run.
//
// The first 20 latency trials are warm-up and dropped. Max values are dominated by the host
// preempting the VM's vCPUs: read p99.
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bpf/bpf.h>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kgmp_trace.h"
#include "trace_bpf.h"

using kgmp::internal::TraceBpf;

namespace {

std::uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000u + ts.tv_nsec;
}

bool g_fifo = false;  // --fifo: every measuring thread at SCHED_FIFO 10

void pin(int cpu) {
  if (g_fifo) {
    sched_param sp{};
    sp.sched_priority = 10;
    if (sched_setscheduler(0, SCHED_FIFO, &sp) != 0) {
      std::perror("sched_setscheduler(SCHED_FIFO)");
      std::exit(1);
    }
  }
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof set, &set) != 0) {
    std::perror("sched_setaffinity");
    std::exit(1);
  }
}

template <class T>
void store(T& x, T v) {
  std::atomic_ref<T>(x).store(v, std::memory_order_release);
}

double pct(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

void report(const char* what, const std::vector<double>& us) {
  std::printf("%-44s n=%zu  p50 %6.1f  p90 %6.1f  p99 %6.1f  max %8.1f us\n", what, us.size(),
              pct(us, 0.5), pct(us, 0.9), pct(us, 0.99), pct(us, 1.0));
}

void gap(std::mt19937& rng) {
  std::uniform_int_distribution<int> d(100, 300);
  timespec ts{0, d(rng) * 1000L};
  nanosleep(&ts, nullptr);
}

bool set_stats(const char* v) {
  std::ofstream f("/proc/sys/kernel/bpf_stats_enabled");
  f << v;
  f.flush();
  return static_cast<bool>(f);
}

struct ProgStats {
  std::uint64_t cnt = 0, ns = 0;
};
ProgStats prog_stats(unsigned id) {
  ProgStats st;
  int fd = bpf_prog_get_fd_by_id(id);
  bpf_prog_info info{};
  __u32 len = sizeof info;
  if (fd >= 0 && bpf_prog_get_info_by_fd(fd, &info, &len) == 0) {
    st.cnt = info.run_cnt;
    st.ns = info.run_time_ns;
  }
  if (fd >= 0) close(fd);
  return st;
}

int latency(int trials, int cpu) {
  auto tb_or = TraceBpf::open(1);
  if (!tb_or.ok()) {
    std::fprintf(stderr, "trace_latency: %s\n", std::string(tb_or.status().message()).c_str());
    return 1;
  }
  auto tb = std::move(*tb_or);
  kgmp_shared* s = tb->shared();
  auto ring = tb->ring(0);
  int wpipe[2], spipe[2];
  if (pipe2(wpipe, O_CLOEXEC) != 0 || pipe2(spipe, O_CLOEXEC) != 0) return 1;

  constexpr unsigned kW = 0, kS = 1;
  std::atomic<std::uint64_t> t0{0};
  std::atomic<bool> stop{false};
  std::atomic<int> s_tid{0};
  int misses = 0;
  std::vector<double> total, to_switch, from_switch;
  total.reserve(trials);

  // S: P 0's spare M.
  std::thread sth([&] {
    pin(cpu);
    s_tid.store(static_cast<int>(syscall(SYS_gettid)));
    for (;;) {
      int w = ring->wait(1000);
      std::uint64_t t1 = now_ns();
      if (w == 2 || stop.load()) break;
      if (w == 0) {  // no event within 1 s: count it, let W go on
        misses++;
        char c = 'x';
        if (write(wpipe[1], &c, 1) != 1) break;
        continue;
      }
      if (w != 1) continue;
      std::uint64_t ts = 0;
      ring->consume([&](const kgmp_block_event& ev) { ts = ev.ts_ns; });
      std::uint64_t a = t0.load();
      total.push_back(static_cast<double>(t1 - a) / 1e3);
      to_switch.push_back(static_cast<double>(static_cast<std::int64_t>(ts - a)) / 1e3);
      from_switch.push_back(static_cast<double>(static_cast<std::int64_t>(t1 - ts)) / 1e3);
      char c = 'x';
      if (write(wpipe[1], &c, 1) != 1) break;
    }
  });
  while (s_tid.load() == 0) std::this_thread::yield();

  // bpf_stats of the sched_switch program: a baseline of foreign switches first (300 ms), then
  // the trials; the difference estimates the cost of one armed event in W's switch.
  const unsigned switch_id = tb->prog_ids().at(0);
  const bool stats = set_stats("1");
  ProgStats st_a = prog_stats(switch_id);
  usleep(300000);
  ProgStats st_b = prog_stats(switch_id);
  const std::uint64_t events0 = s->hdr.events;

  // W, on this thread.
  pin(cpu);
  const int w_tid = static_cast<int>(syscall(SYS_gettid));
  if (!tb->register_m(w_tid, kW).ok() || !tb->register_m(s_tid.load(), kS).ok()) return 1;
  store(s->m[kW].tid, static_cast<__u32>(w_tid));
  store(s->m[kW].p, 0u);
  store(s->m[kS].tid, static_cast<__u32>(s_tid.load()));
  store(s->m[kS].p, KGMP_NO_P);
  store(s->p[0].runq_len, 1u);
  std::mt19937 rng(42);
  std::uint64_t seq = 1;
  for (int i = 0; i < trials + 20; i++) {
    store(s->p[0].lease, static_cast<__u64>(KGMP_LEASE_MAKE(seq++, kW, KGMP_LEASE_RUNTIME)));
    gap(rng);
    store(s->p[0].lease, static_cast<__u64>(KGMP_LEASE_MAKE(seq++, kW, KGMP_LEASE_USER)));
    t0.store(now_ns());
    char c;
    if (read(wpipe[0], &c, 1) != 1) break;
  }
  store(s->p[0].lease, static_cast<__u64>(KGMP_LEASE_MAKE(seq++, kW, KGMP_LEASE_RUNTIME)));
  ProgStats st_c = prog_stats(switch_id);
  const std::uint64_t events = s->hdr.events - events0;
  if (stats) set_stats("0");
  stop.store(true);
  ring->wake();
  sth.join();
  auto drop = [](std::vector<double>& v) { v.erase(v.begin(), v.begin() + std::min<size_t>(20, v.size())); };
  drop(total);
  drop(to_switch);
  drop(from_switch);
  std::printf("trace: W and S on CPU %d, %d trials, events %llu, missed %d, dropped %llu\n",
              cpu, trials, static_cast<unsigned long long>(s->hdr.events), misses,
              static_cast<unsigned long long>(s->hdr.dropped));
  report("W timestamp -> S awake (Ring::wait returns)", total);
  report("  W timestamp -> sched_switch (BPF ts)", to_switch);
  report("  sched_switch -> S awake", from_switch);
  if (stats && st_b.cnt > st_a.cnt && events > 0 && st_c.cnt - st_b.cnt > events) {
    const double base = static_cast<double>(st_b.ns - st_a.ns) / static_cast<double>(st_b.cnt - st_a.cnt);
    const double others = static_cast<double>(st_c.cnt - st_b.cnt - events);
    const double armed =
        (static_cast<double>(st_c.ns - st_b.ns) - others * base) / static_cast<double>(events);
    std::printf("bpf_stats sched_switch: %.0f ns/run for other switches (%llu runs), about %.0f ns "
                "per armed event (%llu events, FORCE_WAKEUP included)\n",
                base, static_cast<unsigned long long>(st_b.cnt - st_a.cnt), armed,
                static_cast<unsigned long long>(events));
  }
  tb.reset();

  // Floor: the same hand-off through a plain pipe (W writes S's pipe, then blocks).
  std::vector<double> floor;
  std::thread fth([&] {
    pin(cpu);
    for (;;) {
      char c;
      if (read(spipe[0], &c, 1) != 1 || c == 'q') break;
      std::uint64_t t1 = now_ns();
      floor.push_back(static_cast<double>(t1 - t0.load()) / 1e3);
      if (write(wpipe[1], &c, 1) != 1) break;
    }
  });
  for (int i = 0; i < trials + 20; i++) {
    gap(rng);
    t0.store(now_ns());
    char c = 'x';
    if (write(spipe[1], &c, 1) != 1 || read(wpipe[0], &c, 1) != 1) break;
  }
  char q = 'q';
  if (write(spipe[1], &q, 1) != 1) return 1;
  fth.join();
  drop(floor);
  report("pipe floor: W timestamp -> S awake", floor);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  if (argc > 1 && std::strcmp(argv[1], "--fifo") == 0) {
    g_fifo = true;
    argv++;
    argc--;
  }
  std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "latency")
    return latency(argc > 2 ? std::atoi(argv[2]) : 1000, argc > 3 ? std::atoi(argv[3]) : 0);
  std::fprintf(stderr,
               "usage: trace_latency [--fifo] latency [trials] [cpu]   (switch-cost: kgmp-bench switch-cost)\n");
  return 2;
}
