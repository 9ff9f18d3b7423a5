// snapshot.h — one racy-but-tear-free view of the scheduler, shared by every telemetry output
// (schedtrace, kgmp::metrics::read, the stats endpoint).
//
// What: take_snapshot() reads the per-P counters (counters.h), the global atomics of Sched
// (npidle, nmspinning, runqsize, mcount), every M through Sched::m_by_id (lock-free: an M is
// published there before mcount counts it, and freed only at teardown, after the telemetry
// threads are stopped), the lease words and the per-M shared slots (curg, tid, BPF's block and
// wake times), and the BPF per-core counters when the trace monitor maps them.
//
// Invariants: it never takes the scheduler lock or a P's lock; every field it reads is an
// atomic or shared memory read with __atomic loads. Each value is tear-free; the whole is not
// consistent (a G may be counted runnable and running), which is Go's documented caveat too.
// Caller: any thread while a runtime runs (sched != nullptr and not torn down).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "counters.h"

namespace kgmp::internal {

struct ProcSnap {
  int id = 0, cpu = -1;
  const char* status = "idle";  // running | idle | handoff
  int m = -1;                   // holder M id, -1 if none
  int tid = 0;
  std::uint64_t curg = 0;
  std::uint32_t runq = 0;
  std::uint64_t schedticks = 0, runs = 0, spawns = 0, exits = 0, steals = 0, stolen = 0,
                handoffs_in = 0, handoffs_out = 0, globtakes = 0, parks = 0, busy_ns = 0,
                idle_ns = 0, spin_ns = 0, preemptions = 0;
  std::uint64_t lat[kHistBuckets] = {};
  std::uint64_t handoff_lat[kHistBuckets] = {};
};

struct CoreSnap {
  int cpu = 0;
  int p = -1;  // the P bound to it
  std::uint64_t m_blocks = 0, ctx_switches = 0, foreign_ns = 0, runq_wait_ns = 0;
  std::uint64_t offcpu[kHistBuckets] = {};
  std::uint64_t wake_lat[kHistBuckets] = {};
};

struct MSnap {
  int id = 0, tid = 0, p = -1, cpu = -1;
  const char* state = "running";  // running | spinning | idle | blocked | watcher
  std::uint64_t curg = 0;
  std::uint64_t blocks = 0;  // BPF: times switched out blocked
};

struct Snapshot {
  int pid = 0;
  std::int64_t now_ns = 0, uptime_ns = 0;
  const char* monitor = "poll";
  int gomaxprocs = 0, threads = 0, idleprocs = 0, spinningthreads = 0, idlethreads = 0,
      blockedthreads = 0;
  std::uint64_t runqueue = 0, handoffs = 0;
  std::uint64_t goroutines = 0, created = 0, runnable = 0, running = 0, waiting = 0,
                not_in_go = 0;
  std::vector<ProcSnap> procs;
  std::vector<CoreSnap> cores;  // empty unless the monitor has per-core BPF counters
  std::vector<MSnap> ms;
  std::uint64_t lat_total[kHistBuckets] = {};  // every P's latency histogram summed
  std::uint64_t handoff_lat_total[kHistBuckets] = {};  // every P's hand-off latencies summed
};

Snapshot take_snapshot();

// Every G ever carved (free ones included) and the main G, read racily. Caller: a telemetry
// thread (sched.cpp; takes the stack pool's lock, never the scheduler's).
struct G;
void for_each_g_racy(void (*f)(void* ctx, const G* g), void* ctx);

}  // namespace kgmp::internal
