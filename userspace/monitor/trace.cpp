// trace.cpp — the trace monitor (see monitor.h): BPF on tp_btf/sched_switch reports blocks,
// and one watcher M per core, blocked on that core's ring buffer, takes the P over.
#include "monitor.h"

namespace kgmp::internal {

#ifndef KGMP_HAVE_BPF
absl::StatusOr<std::unique_ptr<Monitor>> make_trace_monitor(int) {
  return absl::UnavailableError("this build has no BPF support (no BTF or clang-19/bpftool at build time)");
}
#endif

}  // namespace kgmp::internal
