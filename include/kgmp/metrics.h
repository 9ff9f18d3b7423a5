// kgmp/metrics.h — the scheduler's metrics, read in-process, in Go's runtime/metrics shape.
//
// Names follow Go's key grammar "/path:unit" (runtime/metrics): Go's own names where the
// concept is Go's (/sched/goroutines:goroutines, /sched/latencies:seconds, ...), the same
// grammar for kgmp's (/sched/handoffs:events, /sched/workers/blocked:threads, ...). As in Go:
// a metric's kind never changes, cumulative metrics never decrease within a run, values are
// never NaN, and clients should enumerate all() rather than hard-code the list. The goroutine
// state breakdown (running/runnable/waiting/not-in-go) is approximate and is not guaranteed to
// add up to /sched/goroutines:goroutines (Go documents the same).
//
//   for (const kgmp::metrics::Sample& s : kgmp::metrics::read())
//     if (s.name == "/sched/goroutines:goroutines") printf("%llu\n", s.u64);
//
// Outside a running runtime read() returns the same names with zero values. Per-P and per-core
// figures are not metrics (their number changes with the machine): the stats endpoint and
// kgmpstat show them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kgmp::metrics {

enum class Kind {
  kBad,               // Sample::name is not a metric (read(std::vector<Sample>&))
  kUint64,            // Sample::u64
  kFloat64,           // Sample::f64
  kFloat64Histogram,  // Sample::hist
};

struct Description {
  std::string name;         // "/sched/latencies:seconds"
  std::string description;  // one or two sentences
  Kind kind = Kind::kBad;
  bool cumulative = false;  // a counter (never decreases) rather than a gauge
  std::string unit() const { return name.substr(name.find(':') + 1); }
};

// Go's Float64Histogram: counts[i] samples fell in [buckets[i], buckets[i+1]); buckets has one
// more element than counts, and its last element is +Inf.
struct Histogram {
  std::vector<std::uint64_t> counts;
  std::vector<double> buckets;
};

struct Sample {
  std::string name;
  Kind kind = Kind::kBad;
  std::uint64_t u64 = 0;
  double f64 = 0;
  Histogram hist;
};

// Every metric, in a stable order (Go's metrics.All()).
const std::vector<Description>& all();
// One sample of every metric of all(), taken now (racy but tear-free per value).
std::vector<Sample> read();
// Go's metrics.Read: fills each sample whose name is set; unknown names get Kind::kBad.
void read(std::vector<Sample>& samples);

}  // namespace kgmp::metrics
