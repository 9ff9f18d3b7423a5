// counters.h — the scheduler's per-P telemetry: counters, a latency histogram, time accounting
// and the trace recorder's per-P event buffers (DESIGN §6).
//
// What: every P embeds one PCounters. The runtime bumps them on its own paths; the readers
// (schedtrace, kgmp::metrics::read, the stats endpoint) take racy snapshots from other threads.
//
// Invariants and the racy protocol:
//   - One writer at a time per P: the M holding the P (or the thread that just took it by a
//     hand-off CAS, which owns it then). Successive holders are ordered by the lease CAS or the
//     scheduler lock, so a counter is a load and a store (Counter::add: no locked instruction,
//     ~1 cycle), never a fetch_add. Readers load relaxed: each value is tear-free (an aligned
//     64-bit atomic); a snapshot of several counters is not consistent (Go's schedtrace has the
//     same caveat), and a histogram's sum may lag its count by the bucket being written.
//   - Cost on the hot path (a G readied or run): the scheduling-latency histogram is sampled
//     on every kTrackPeriod-th transition of a G to runnable, stamped with the TSC (~7 ns a
//     read; CLOCK_MONOTONIC costs ~16 ns here) and converted to ns once per sample. Go
//     samples 1 in 8 (gTrackingPeriod); here one sample costs ~30 ns (two TSC reads in a VM,
//     the conversion, the bucket), which at 1 in 8 costs several percent of a channel round
//     trip and more of a yield, and at 1 in 32 stays within a few percent (bench/RESULTS.md,
//     telemetry: the latsample sweep). So the default is 32 and KGMPDEBUG=latsample=8 gives
//     Go's rate. Busy/idle/spinning time is accounted only when the P changes state
//     (taken off or put on the idle list, spinning begins or ends): slow paths that already
//     take a lock or a futex, so a nanotime() there is noise.
//   - `counters_on` (KGMPDEBUG=counters=0 turns it off, to measure their cost) gates every
//     counter below except schedticks (Go's schedtick, which the scheduler itself needs) and
//     the run accounting (spawns, exits, hand-offs given) that
//     kgmp::internal::last_run_stats and the teardown invariant need.
//   - The trace recorder: a relaxed global flag, tested once per event site (one predictable
//     branch when off). When on, each P writes its own bounded buffer (single writer: the
//     holder), publishing the count with a release store after the event; the reader reads
//     [0, count) with an acquire load. A full buffer counts a drop, never blocks. Buffers of a
//     finished session stay mapped until run() ends, so a writer that saw the flag just before
//     it went off writes into memory that is still there (mmap'd: untouched pages cost nothing).
//
// Rejected: fetch_add counters (a locked RMW each, ~5 ns x several per G switch); reading the
// clock on every ready/run (2 x 16 ns on a 60 ns yield); per-M counters (an M's P changes at
// every hand-off, and the readers want per-P/per-core figures); a lock around snapshots (the
// scheduler's hot path must never wait for a reader).
#pragma once

#include <atomic>
#include <cstdint>

#include "stats_protocol.h"

namespace kgmp::internal {

// Whether the counters are on for this run (KGMPDEBUG=counters=0: off). Written before any M
// starts, read-only afterwards.
// (Hidden: a direct RIP-relative load on the hot path, no GOT indirection in -fPIC code.)
extern bool counters_on __attribute__((visibility("hidden")));

// A counter with one writer at a time (see above); any thread may read it.
class Counter {
 public:
  void add(std::uint64_t n = 1) {
    v_.store(v_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  std::uint64_t load() const { return v_.load(std::memory_order_relaxed); }
  void set(std::uint64_t n) { v_.store(n, std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> v_{0};
};

using telemetry::kHistBuckets;

// Bucket i counts values v with 2^i <= v < 2^(i+1) (bucket 0 also counts 0); the last bucket
// everything above (stats_protocol.h).
inline int hist_bucket(std::uint64_t v) {
  if (v == 0) return 0;
  int b = 63 - __builtin_clzll(v);
  return b < kHistBuckets ? b : kHistBuckets - 1;
}

struct Hist {
  Counter b[kHistBuckets];
  void add(std::uint64_t ns) { b[hist_bucket(ns)].add(1); }
};

// The latency sampling clock: the TSC when the kernel's clocksource is tsc (so it is
// synchronized across CPUs and constant-rate), CLOCK_MONOTONIC otherwise.
std::uint64_t ticks_slow();
extern bool ticks_use_tsc __attribute__((visibility("hidden")));
extern std::uint64_t ticks_ns_mult __attribute__((visibility("hidden")));  // ns/tick * 2^32  // calibrated once per process (about 2 ms, at the first run)
inline std::uint64_t ticks() {
  if (__builtin_expect(ticks_use_tsc, 1)) return __builtin_ia32_rdtsc();
  return ticks_slow();
}
inline std::uint64_t ticks_to_ns(std::uint64_t t) {
  return static_cast<std::uint64_t>((static_cast<unsigned __int128>(t) * ticks_ns_mult) >> 32);
}
void ticks_calibrate();  // idempotent; called by run() before any M starts

// Go's gTrackingPeriod: one in this many transitions of a G to runnable is timed (the
// default; KGMPDEBUG=latsample=N sets it, a power of two; track_mask = N - 1).
inline constexpr std::uint32_t kTrackPeriod = 32;
extern std::uint32_t track_mask __attribute__((visibility("hidden")));

// A P's state for the time accounting.
enum class PState : std::uint8_t { kIdle = 0, kBusy = 1, kSpin = 2 };

struct PCounters {
  Counter schedticks;    // Gs scheduled = G executions (Go's schedtick; always counted: the
                         // global queue's 61st-tick fairness check reads it)
  Counter spawns;        // Gs created by Gs running on it (always counted)
  Counter exits;         // Gs that returned on it (always counted)
  Counter steals;        // successful steals from other Ps
  Counter stolen;        // Gs taken in those steals
  Counter globtakes;     // Gs taken from the global run queue
  Counter parks;         // times its M parked (idle) on a futex
  Counter handoffs_out;  // times it was taken from its blocked M (given; always counted)
  Counter handoffs_in;   // of those, times a new M took it and ran its Gs (received)
  Counter preemptions;   // times a G running on it was preempted: it ran longer than
                         // Config::preempt_slice while other Gs waited for this P
  Counter busy_ns, idle_ns, spin_ns;
  Hist lat;              // runnable -> running, ns, sampled 1 in track_mask + 1
  Hist handoff_lat;      // a block the kernel reported -> its P taken by another M, ns
                         // (every event-driven hand-off; written by the taking watcher)
  // The current state and since when (nanotime); written by whoever moves the P between
  // states (ordered by the scheduler lock or the lease), read racily for the open interval.
  std::atomic<std::uint8_t> state{static_cast<std::uint8_t>(PState::kIdle)};
  std::atomic<std::int64_t> since{0};
};

// Accounts the time since the last change to its state's total and enters `next`. Caller:
// p's owner at a state change (a slow path); a no-op when the counters are off.
void p_account(PCounters& c, PState next);

// ---- the trace recorder ----

enum class TraceEv : std::uint16_t {
  kGRun,
  kGStop,
  kMBlock,
  kMWake,
  kMSpinStart,
  kMSpinEnd,
  kMIdle,
  kMBusy,
  kSteal,
  kHandoff,
  kRunq,
};
const char* trace_ev_name(TraceEv e);
// g_stop's reasons (TraceEvent::arg).
enum class StopReason : std::uint64_t { kYield, kPark, kExit, kPreempt, kLostP };
const char* stop_reason_name(std::uint64_t r);

struct TraceEvent {
  std::int64_t ts;  // CLOCK_MONOTONIC ns
  std::uint64_t g;
  std::uint64_t arg;
  TraceEv ev;
  std::uint16_t p;
  std::uint32_t m;
};
static_assert(sizeof(TraceEvent) == 32);

struct TraceBuf {
  std::atomic<std::uint32_t> n{0};
  std::uint32_t cap = 0;
  Counter dropped;
  // cap events follow the header (the buffer is mmap'd with room for them)
  TraceEvent* ev() { return reinterpret_cast<TraceEvent*>(this + 1); }
};
static_assert(sizeof(TraceBuf) % alignof(TraceEvent) == 0);

extern std::atomic<bool> tracing  // the one flag every event site tests
    __attribute__((visibility("hidden")));
// Records one event into P p's buffer. Caller: p's owner, with `tracing` seen on.
void trace_event_slow(int p, TraceEv ev, std::uint32_t m, std::uint64_t g, std::uint64_t arg);
inline void trace_event(int p, TraceEv ev, std::uint32_t m, std::uint64_t g, std::uint64_t arg) {
  if (__builtin_expect(tracing.load(std::memory_order_relaxed), 0))
    trace_event_slow(p, ev, m, g, arg);
}

}  // namespace kgmp::internal
