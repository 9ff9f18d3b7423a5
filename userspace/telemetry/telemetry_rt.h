// telemetry_rt.h — the runtime's entry points into userspace/telemetry (DESIGN §6).
//
// run() parses KGMPDEBUG (parse_kgmpdebug; a bad value is one line and exit 2, as config.cpp's
// errors), starts the telemetry threads once the Ps and the monitor exist (telemetry_start),
// stops them once the main G returned (telemetry_stop, before the Ms and the shared memory go)
// and frees the trace buffers after every M is joined (telemetry_free). Each thread exists only
// when its feature is on (schedtrace=N, the stats endpoint), and each sleeps in the kernel
// between its duties, so an idle runtime costs nothing.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace kgmp::internal {

// KGMPDEBUG=name=value,name=value (Go's GODEBUG grammar):
//   schedtrace=N    print Go's SCHED line to stderr every N ms (0: off)
//   scheddetail=1   with schedtrace: Go's detailed form (P, M and G lines)
//   counters=0      turn the per-P counters off (to measure their cost; kgmpstat sees zeros)
//   latsample=N     time one G transition to runnable in N (a power of two, 1 to 65536;
//                   default 32; Go's gTrackingPeriod is 8: counters.h says why) for the
//                   scheduling-latency histogram
//   stats=0         no stats endpoint (no socket, no thread)
struct DebugOpts {
  int schedtrace_ms = 0;
  bool scheddetail = false;
  bool counters = true;
  int latsample = 32;
  bool stats = true;
};
absl::StatusOr<DebugOpts> parse_kgmpdebug(const char* env);

void telemetry_start(const DebugOpts& opts);
void telemetry_stop();
void telemetry_free();

// Removes the stats endpoint's socket, if any: one unlink(2) on a static path, so it is
// async-signal-safe. Called on the runtime's fatal exits (fatal(), the deadlock report,
// panics: they _exit or abort without unwinding run()) and, through atexit, by exit(), so
// that only a process killed by a signal leaves a stale socket behind.
void telemetry_unlink_socket();

// Go's schedtrace text (one line, or the detailed form with its P/M/G lines), with kgmp's
// fields appended at the end. Caller: any thread while a runtime runs (racy reads, as Go's).
std::string schedtrace_text(bool detailed);

}  // namespace kgmp::internal
