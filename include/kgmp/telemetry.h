// kgmp/telemetry.h — per-P scheduler counters.
//
// Each P's counters are written only by the M holding it, with relaxed atomic stores, so a
// snapshot taken while the runtime runs is a racy but tear-free view. After run() returns,
// proc_stats() keeps returning the final values of that run until the next one starts.
#pragma once

#include <cstdint>
#include <vector>

namespace kgmp {

struct ProcStats {
  int id = 0;             // P id
  int cpu = -1;           // the CPU it is bound to (-1: Ms not pinned)
  std::uint64_t schedticks = 0;  // Gs scheduled on it (Go's schedtick)
  std::uint64_t runs = 0;        // G executions (a G resumed three times counts three)
  std::uint64_t spawns = 0;      // Gs created by Gs running on it
  std::uint64_t steals = 0;      // successful steals from other Ps
  std::uint64_t stolen = 0;      // Gs it took in those steals
  std::uint64_t globrunq_takes = 0;  // Gs it took from the global run queue
  std::uint64_t parks = 0;       // times its M parked (idle) on a futex
  std::uint32_t runq_len = 0;    // its local run queue length (at the snapshot)
};

// A snapshot of every P (empty if run() never ran).
std::vector<ProcStats> proc_stats();

}  // namespace kgmp
