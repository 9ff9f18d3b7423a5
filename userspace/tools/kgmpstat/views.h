// views.h — everything kgmpstat prints, as pure functions of the server's answers.
//
// Kept apart from the socket code so the tests can feed them fixed snapshots, and so each
// output format has one place that states its rules:
//   - Top:   the per-core table of `kgmpstat top`, rates and percentages from the snapshot's
//            per-client "delta" over "interval_ns".
//   - Prom:  Prometheus text exposition 0.0.4 (HELP and TYPE before a family's samples, kgmp_
//            prefix, base units, counters end in _total, histograms _bucket{le}/_sum/_count).
//   - Hist:  runqlat's power-of-two text histograms.
//   - Trace: Chrome trace-event JSON from the trace_stop events, one track per P and per M,
//            each track a sequence of non-overlapping slices (Perfetto rejects overlaps).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kgmpstat/json.h"

namespace kgmpstat {

// ---- histograms (stats_protocol.h: bucket i counts 2^i <= v < 2^(i+1) ns, bucket 0 also 0,
// the last bucket everything above) ----

// The smallest bucket upper bound (exclusive, ns) under which a fraction q of the samples fall;
// 0 when the histogram is empty. The last bucket has no bound: its lower bound times 2.
std::uint64_t HistQuantileNs(const json::Value& hist, double q);
std::uint64_t HistCount(const json::Value& hist);
// An estimate of the sum (ns) from bucket midpoints (1.5 * 2^i; 0.5 for bucket 0).
double HistSumEstimateNs(const json::Value& hist);

// "812ns", "12.5us", "3.20ms", "1.50s".
std::string FormatDuration(std::uint64_t ns);

// ---- kgmpstat top ----
// The header lines and one row per core (a P's core; a core with per-core data but no P gets a
// row of its own).
std::string RenderTop(const json::Value& snap, int pid, const std::string& comm);

// ---- kgmpstat prom ----
std::string RenderProm(const json::Value& snap);

// ---- kgmpstat hist ----
enum class HistPer { kP, kCore };
enum class HistUnit { kNsecs, kUsecs, kMsecs };
// One histogram in runqlat's layout, with `title` above it (nothing but the title line and
// "(no samples)" when empty).
std::string RenderOneHist(const json::Value& hist, HistUnit unit, const std::string& title);
std::string RenderHist(const json::Value& snap, HistPer per, HistUnit unit, bool use_delta);

// ---- kgmpstat trace ----
struct TraceSummary {
  std::int64_t events = 0, dropped = 0, slices = 0;
  std::int64_t handoffs = 0;
  // block -> hand-off latencies (an M's m_block to the hand-off of the P it held), ns.
  std::vector<std::uint64_t> handoff_lat_ns;
  std::string monitor;
  std::int64_t window_ns = 0;  // trace_start to trace_stop
};
// stop: trace_stop's resp; snap: a "stats" snapshot (P cpus, M tids, monitor). Returns the
// trace document ({"traceEvents":[...],"displayTimeUnit":"ns",...}).
json::Value ConvertTrace(const json::Value& stop, const json::Value& snap, int pid,
                         const std::string& comm, TraceSummary* summary);
// "hand-offs: N (p50 .., p99 .., monitor=..)" lines.
std::string RenderHandoffSummary(const TraceSummary& s);

}  // namespace kgmpstat
