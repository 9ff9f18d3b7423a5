// metrics.cpp — kgmp::metrics (include/kgmp/metrics.h): the table of metrics and read().
//
// What: one table, each entry a Description plus the function that extracts its value from a
// Snapshot (snapshot.h), so all(), read() and the stats endpoint's "metrics" request can never
// disagree on a name, kind or unit. read() takes one snapshot for all samples.
//
// Histograms: the runtime's power-of-two ns buckets (stats_protocol.h) become Go's
// Float64Histogram in seconds: boundaries 0, 2^1 ns, 2^2 ns, ..., 2^39 ns, +Inf (bucket 0 holds
// [0, 2 ns), bucket 39 everything from 2^39 ns up).
//
// Rejected: per-P metric names (/sched/procs/3/...): their number depends on the machine,
// which Go's fixed-key design avoids; per-P figures are the stats endpoint's job.
#include <cmath>
#include <functional>
#include <limits>

#include "kgmp/metrics.h"
#include "sched.h"
#include "snapshot.h"

namespace kgmp::metrics {
namespace {

using internal::kHistBuckets;
using internal::Snapshot;

struct Entry {
  Description d;
  std::function<void(const Snapshot&, Sample&)> get;
};

void hist_from(const std::uint64_t* b, Histogram& h) {
  h.counts.assign(b, b + kHistBuckets);
  h.buckets.resize(kHistBuckets + 1);
  h.buckets[0] = 0;
  for (int i = 1; i < kHistBuckets; i++) h.buckets[i] = std::ldexp(1.0, i) * 1e-9;
  h.buckets[kHistBuckets] = std::numeric_limits<double>::infinity();
}

template <class F>
Entry u64(const char* name, bool cum, const char* desc, F f) {
  return Entry{{name, desc, Kind::kUint64, cum},
               [f](const Snapshot& s, Sample& x) { x.u64 = static_cast<std::uint64_t>(f(s)); }};
}
template <class F>
Entry secs(const char* name, const char* desc, F f) {
  return Entry{{name, desc, Kind::kFloat64, true},
               [f](const Snapshot& s, Sample& x) { x.f64 = static_cast<double>(f(s)) * 1e-9; }};
}
template <class F>
Entry hist(const char* name, const char* desc, F f) {
  return Entry{{name, desc, Kind::kFloat64Histogram, true},
               [f](const Snapshot& s, Sample& x) {
                 std::uint64_t b[kHistBuckets] = {};
                 f(s, b);
                 hist_from(b, x.hist);
               }};
}

template <class F>
std::uint64_t sum_procs(const Snapshot& s, F f) {
  std::uint64_t n = 0;
  for (const auto& p : s.procs) n += f(p);
  return n;
}
template <class F>
std::uint64_t sum_cores(const Snapshot& s, F f) {
  std::uint64_t n = 0;
  for (const auto& c : s.cores) n += f(c);
  return n;
}

const std::vector<Entry>& table() {
  using P = internal::ProcSnap;
  using C = internal::CoreSnap;
  static const std::vector<Entry> t = {
      // Go's names.
      u64("/sched/gomaxprocs:threads", false,
          "The current number of Ps (processors): KGMP_MAXPROCS or Config::procs, Go's "
          "GOMAXPROCS.",
          [](const Snapshot& s) { return s.gomaxprocs; }),
      u64("/sched/goroutines:goroutines", false, "Count of live goroutines.",
          [](const Snapshot& s) { return s.goroutines; }),
      u64("/sched/goroutines-created:goroutines", true,
          "Count of goroutines created since the runtime started, the main goroutine included.",
          [](const Snapshot& s) { return s.created; }),
      u64("/sched/goroutines/running:goroutines", false,
          "Approximate count of goroutines executing (at most gomaxprocs).",
          [](const Snapshot& s) { return s.running; }),
      u64("/sched/goroutines/runnable:goroutines", false,
          "Approximate count of goroutines ready to execute but not executing (every run "
          "queue, global and local).",
          [](const Snapshot& s) { return s.runnable; }),
      u64("/sched/goroutines/waiting:goroutines", false,
          "Approximate count of goroutines waiting on a channel, a WaitGroup, a timer or "
          "another runtime primitive.",
          [](const Snapshot& s) { return s.waiting; }),
      u64("/sched/goroutines/not-in-go:goroutines", false,
          "Approximate count of goroutines blocked in the kernel (inside kgmp::blocking, or "
          "seen blocked by the trace monitor).",
          [](const Snapshot& s) { return s.not_in_go; }),
      u64("/sched/threads/total:threads", false,
          "Count of OS threads (Ms) the runtime created, including idle and blocked ones.",
          [](const Snapshot& s) { return s.threads; }),
      hist("/sched/latencies:seconds",
           "Distribution of the time goroutines spent runnable before running, sampled on one "
           "transition in 32 (KGMPDEBUG=latsample=N; Go samples 1 in 8).",
           [](const Snapshot& s, std::uint64_t* b) {
             for (int i = 0; i < kHistBuckets; i++) b[i] = s.lat_total[i];
           }),
      // kgmp's, same grammar.
      hist("/sched/handoffs/latencies:seconds",
           "Distribution of the time a P stood still behind an M blocked in the kernel: from "
           "the kernel's switch-out of the M (as reported by the trace or scx monitor) to "
           "another M taking the P. Hand-offs of the poll monitor and eager ones at "
           "kgmp::blocking() entry are not in it.",
           [](const Snapshot& s, std::uint64_t* b) {
             for (int i = 0; i < kHistBuckets; i++) b[i] = s.handoff_lat_total[i];
           }),
      u64("/sched/handoffs:events", true,
          "Count of times a P was taken from an M blocked in the kernel and handed to another M.",
          [](const Snapshot& s) { return s.handoffs; }),
      u64("/sched/handoffs/received:events", true,
          "Count of hand-offs after which another M ran the P's goroutines (the rest found no "
          "work and left the P idle).",
          [](const Snapshot& s) { return sum_procs(s, [](const P& p) { return p.handoffs_in; }); }),
      u64("/sched/workers/blocked:threads", false,
          "Count of Ms blocked in the kernel while running a goroutine.",
          [](const Snapshot& s) { return s.blockedthreads; }),
      u64("/sched/workers/idle:threads", false, "Count of Ms parked with nothing to run.",
          [](const Snapshot& s) { return s.idlethreads; }),
      u64("/sched/workers/spinning:threads", false,
          "Count of Ms looking for work to steal (Go's spinning threads).",
          [](const Snapshot& s) { return s.spinningthreads; }),
      u64("/sched/procs/idle:procs", false, "Count of Ps on the idle list.",
          [](const Snapshot& s) { return s.idleprocs; }),
      u64("/sched/runqueue/global:goroutines", false,
          "Count of goroutines on the global run queue.",
          [](const Snapshot& s) { return s.runqueue; }),
      u64("/sched/schedticks:events", true,
          "Count of goroutines scheduled, over every P (Go's schedtick).",
          [](const Snapshot& s) { return sum_procs(s, [](const P& p) { return p.schedticks; }); }),
      u64("/sched/steals:events", true, "Count of successful steals from another P's run queue.",
          [](const Snapshot& s) { return sum_procs(s, [](const P& p) { return p.steals; }); }),
      u64("/sched/steals/stolen:goroutines", true, "Count of goroutines taken by steals.",
          [](const Snapshot& s) { return sum_procs(s, [](const P& p) { return p.stolen; }); }),
      u64("/sched/preemptions:events", true,
          "Count of times a goroutine that ran longer than the preemption slice "
          "(Config::preempt_slice, KGMP_PREEMPT_SLICE) while others waited for its P was "
          "preempted, over every P.",
          [](const Snapshot& s) { return sum_procs(s, [](const P& p) { return p.preemptions; }); }),
      u64("/sched/runqueue/global-takes:goroutines", true,
          "Count of goroutines Ps took from the global run queue.",
          [](const Snapshot& s) { return sum_procs(s, [](const P& p) { return p.globtakes; }); }),
      u64("/sched/parks:events", true, "Count of times an M parked with no work.",
          [](const Snapshot& s) { return sum_procs(s, [](const P& p) { return p.parks; }); }),
      secs("/sched/time/busy:seconds",
           "Time Ps spent held by an M running goroutines or scheduling (summed over Ps).",
           [](const Snapshot& s) { return sum_procs(s, [](const P& p) { return p.busy_ns; }); }),
      secs("/sched/time/idle:seconds", "Time Ps spent on the idle list (summed over Ps).",
           [](const Snapshot& s) { return sum_procs(s, [](const P& p) { return p.idle_ns; }); }),
      secs("/sched/time/spinning:seconds",
           "Time Ps spent held by a spinning M looking for work (summed over Ps).",
           [](const Snapshot& s) { return sum_procs(s, [](const P& p) { return p.spin_ns; }); }),
      u64("/sched/workers/blocks:events", true,
          "Count of times an M blocked in the kernel (trace monitor; 0 otherwise).",
          [](const Snapshot& s) { return sum_cores(s, [](const C& c) { return c.m_blocks; }); }),
      u64("/sched/workers/switches:events", true,
          "Count of times an M was switched in by the kernel (trace monitor; 0 otherwise).",
          [](const Snapshot& s) {
            return sum_cores(s, [](const C& c) { return c.ctx_switches; });
          }),
      secs("/sched/workers/runqueue-wait:seconds",
           "Time Ms spent runnable in the kernel's run queue before running (trace monitor).",
           [](const Snapshot& s) {
             return sum_cores(s, [](const C& c) { return c.runq_wait_ns; });
           }),
      secs("/sched/workers/foreign:seconds",
           "Part of that time the core ran another process's task (trace monitor).",
           [](const Snapshot& s) { return sum_cores(s, [](const C& c) { return c.foreign_ns; }); }),
      hist("/sched/workers/offcpu:seconds",
           "Distribution of the time Ms that blocked while holding a P stayed blocked (block to "
           "wakeup; trace monitor).",
           [](const Snapshot& s, std::uint64_t* b) {
             for (const auto& c : s.cores)
               for (int i = 0; i < kHistBuckets; i++) b[i] += c.offcpu[i];
           }),
      hist("/sched/workers/wakeup-latencies:seconds",
           "Distribution of the time from a wakeup of an M to its running (trace monitor).",
           [](const Snapshot& s, std::uint64_t* b) {
             for (const auto& c : s.cores)
               for (int i = 0; i < kHistBuckets; i++) b[i] += c.wake_lat[i];
           }),
  };
  return t;
}

}  // namespace

const std::vector<Description>& all() {
  static const std::vector<Description> d = [] {
    std::vector<Description> v;
    for (const Entry& e : table()) v.push_back(e.d);
    return v;
  }();
  return d;
}

std::vector<Sample> read() {
  std::vector<Sample> v;
  for (const Entry& e : table()) v.push_back(Sample{e.d.name, Kind::kBad, 0, 0, {}});
  read(v);
  return v;
}

void read(std::vector<Sample>& samples) {
  Snapshot s = internal::take_snapshot();
  for (Sample& x : samples) {
    x.kind = Kind::kBad;
    for (const Entry& e : table()) {
      if (e.d.name != x.name) continue;
      x.kind = e.d.kind;
      x.u64 = 0;
      x.f64 = 0;
      x.hist = {};
      e.get(s, x);
      break;
    }
  }
}

}  // namespace kgmp::metrics
