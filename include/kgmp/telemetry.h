// kgmp/telemetry.h — per-P scheduler counters.
//
// Each P's counters are written only by the M holding it, with relaxed atomic stores, so a
// snapshot taken while the runtime runs is a racy but tear-free view. KGMPDEBUG=counters=0
// turns them off (every field reads 0 except schedticks/runs, spawns, exits and handoffs_out,
// the runtime's own accounting). kgmp/metrics.h has the process-wide figures in Go's runtime/metrics shape. After run() returns,
// proc_stats() keeps returning the final values of that run until the next one starts.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace kgmp {

struct ProcStats {
  int id = 0;             // P id
  int cpu = -1;           // the CPU it is bound to (-1: Ms not pinned)
  std::uint64_t schedticks = 0;  // Gs scheduled on it (Go's schedtick)
  std::uint64_t runs = 0;        // G executions (a G resumed three times counts three) = schedticks
  std::uint64_t spawns = 0;      // Gs created by Gs running on it
  std::uint64_t steals = 0;      // successful steals from other Ps
  std::uint64_t stolen = 0;      // Gs it took in those steals
  std::uint64_t globrunq_takes = 0;  // Gs it took from the global run queue
  std::uint64_t parks = 0;       // times its M parked (idle) on a futex
  std::uint32_t runq_len = 0;    // its local run queue length (at the snapshot)
  std::uint64_t exits = 0;         // Gs that returned on it
  std::uint64_t handoffs_out = 0;  // times it was taken from its M blocked in the kernel
  std::uint64_t handoffs_in = 0;   // of those, times another M then ran its Gs
  std::uint64_t preemptions = 0;   // times a G on it ran past Config::preempt_slice while
                                   // other Gs waited, and was preempted
  std::uint64_t busy_ns = 0;  // time held by an M running Gs or scheduling (not spinning)
  std::uint64_t idle_ns = 0;  // time on the idle list
  std::uint64_t spin_ns = 0;  // time held by a spinning M looking for work
  // Scheduling latency (runnable -> running) of one G transition in 32 (KGMPDEBUG=latsample),
  // in ns: bucket i counts
  // latencies in [2^i, 2^(i+1)) (bucket 0 also 0, the last one everything above).
  std::array<std::uint64_t, 40> lat_hist{};
};

// A snapshot of every P (empty if run() never ran).
std::vector<ProcStats> proc_stats();

}  // namespace kgmp
