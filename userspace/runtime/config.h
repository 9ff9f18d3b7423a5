// config.h — resolving kgmp::Config against the environment (KGMP_MAXPROCS, KGMP_MONITOR,
// KGMP_TRACE_SPARE, KGMP_PREEMPT_SLICE) and the affinity mask.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kgmp/runtime.h"

namespace kgmp::internal {

struct Resolved {
  Config cfg;             // procs filled in, stack_size rounded up to pages, preempt_slice
                          // from KGMP_PREEMPT_SLICE when set (0: no preemption)
  std::vector<int> cpus;  // CPU of P i, i < cfg.procs (the affinity mask's CPUs, in order)
  std::string monitor = "auto";  // KGMP_MONITOR: auto, scx, trace or poll
  bool hold_spares = true;       // KGMP_TRACE_SPARE: held (true) or sleep
};
absl::StatusOr<Resolved> resolve_config(const Config& cfg);

}  // namespace kgmp::internal
