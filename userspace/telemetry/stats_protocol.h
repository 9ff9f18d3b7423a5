// stats_protocol.h — the contract between a kgmp process's stats endpoint (the server, in the
// runtime) and its readers (kgmpstat, tests). Plain constants and this comment; both sides
// include it, so a name changes in one place.
//
// Where: one UNIX stream socket per process, <dir>/<pid>.sock, where <dir> is
//   $KGMP_RUNTIME_DIR if set (tests), else $XDG_RUNTIME_DIR/kgmp if XDG_RUNTIME_DIR is set,
//   else /run/kgmp for root, else /tmp/kgmp-<uid>.
// The directory is created 0700 and the socket chmod'ed 0600 (owner only). The server creates
// it at run() start (unless KGMPDEBUG=stats=0) and unlinks it at run() end, and on the
// runtime's fatal exits and exit() too; a stale socket (its pid dead, or not answering: a
// process killed by a signal) is what `kgmpstat list` reports as stale.
//
// Wire format: the scx_stats line protocol. The client writes one JSON object per line; the
// server answers each with one JSON object on one line:
//   -> {"req":"stats","args":{"target":"top"}}
//   <- {"errno":0,"args":{"resp":{ ...the snapshot... }}}
// An unknown request or bad JSON: {"errno":22,"args":{"resp":{"error":"<one line>"}}}.
//
// Requests:
//   "stats"       the snapshot below. Every counter is a total since run() started; the
//                 response also carries "delta": the same per-P and per-core counters minus
//                 this connection's previous "stats" answer (the first: minus zero), and
//                 "interval_ns" since that answer (scx_stats/bpfland: per-client deltas).
//   "stats_meta"  for every field of the snapshot: {"desc","kind":"counter|gauge|histogram",
//                 "unit"} plus "_om_prefix":"kgmp_" (scxstats_to_openmetrics convention).
//                 Shape: {"_om_prefix":"kgmp_","top":{<field>:{..}},"procs":{"_om_label":
//                 "proc",<field>:{..}},"cores":{"_om_label":"cpu",..},"ms":{"_om_label":"m",..}}.
//   "metrics"     kgmp::metrics::read(): [{"name":"/sched/goroutines:goroutines","kind",
//                 "unit","desc","value"} ...]; histograms as {"buckets":[{"le_ns":..,
//                 "count":..}...]}: kHistBuckets buckets, "count" per bucket (not cumulative),
//                 "le_ns" the bucket's exclusive upper bound 2^(i+1), null (+Inf) for the last.
//   "trace_start" {"args":{"max_events":N}}: start recording scheduler events in per-P
//                 buffers (bounded; overflow counted, never blocking). N defaults to 2^20
//                 (split evenly over the Ps), at most 2^22; 2^24 per run() over all sessions.
//                 One session at a time: a second trace_start answers errno 16 (EBUSY).
//                 Answer: {"started":true}.
//   "trace_stop"  stop, and return {"events":[...],"dropped":N,"start_ns":..,"end_ns":..}.
//                 Each event: {"ts":ns,"ev":"<kind>","p":..,"m":..,"g":..,"arg":..}, ts on
//                 CLOCK_MONOTONIC; kinds: "g_run" (G g starts running on P p / M m),
//                 "g_stop" (it stops; arg = "yield|park|exit|preempt|lost_p"), "m_block"
//                 and "m_wake" (kgmp::blocking() entry / exit: M m blocked in / woke from the
//                 kernel; the trace monitor's unmarked blocks are not events yet),
//                 "m_spin_start"/"m_spin_end", "m_idle"/"m_busy", "steal" (arg = victim P,
//                 g = number of Gs), "handoff" (P p taken from M arg by M m; m = -1 when the
//                 taker is not an M: the poll monitor's thread, or the blocking M itself
//                 giving its P away in kgmp::blocking), "runq" (arg = run-queue length of P p,
//                 sampled just before each g_run). kgmpstat turns them into Chrome trace-event
//                 JSON. g_stop's "arg" is a string; every other event's "arg" is a number.
//
// The snapshot ("stats"): {
//   "pid", "now_ns", "uptime_ns", "monitor":"scx|trace|poll", "gomaxprocs", "goroutines",
//   "goroutines_created", "runnable", "running", "waiting", "counters":"on|off",
//   "threads", "idleprocs", "spinningthreads", "idlethreads", "blockedthreads", "runqueue",
//   "handoffs",
//   "procs":[{"id","cpu","status":"running|idle|handoff","m","tid","curg","runq","schedticks",
//             "runs","spawns","exits","steals","stolen","handoffs_in","handoffs_out",
//             "globrunq_takes","parks","busy_ns","idle_ns","spin_ns","preemptions",
//             "lat_hist":[..],"handoff_lat_hist":[..]}],
//   "cores":[{"cpu","p","m_blocks","ctx_switches","runq_wait_ns","foreign_ns",
//             "offcpu_hist":[..],"wake_lat_hist":[..]}],
//   "ms":[{"id","tid","p","cpu","state":"running|spinning|idle|blocked|watcher","curg",
//          "blocks"}],
//   "delta":{"procs":[{"id",..same counters..}],"cores":[{"cpu",..same counters..}]},
//   "interval_ns"}
// Field notes (added with the server): "m" is -1 and "tid"/"curg" 0 when a P has no holder;
// "curg" is the goid the M runs or ran last (0: none); "p" of an M is -1 without a P, "cpu" -1
// when not pinned. "cores" is empty unless the trace monitor runs (BPF per-core counters);
// "runq_wait_ns" is the time Ms waited runnable in the kernel (schedstat's run_delay) and
// "foreign_ns" the part of it another process's task ran. "handoffs_out" counts the times the
// P was taken from its blocked M, "handoffs_in" those after which a new M ran it (the others
// left it idle). "handoff_lat_hist": for each hand-off driven by a kernel report (trace, scx),
// the time from the kernel's switch-out of the blocked M to the CAS that took its P.
// "preemptions" counts the Gs preempted on the P: they ran longer than the slice
// (Config::preempt_slice, KGMP_PREEMPT_SLICE; 0 turns it off) while other Gs waited for it.
// "lat_hist" samples one transition in 32 (KGMPDEBUG=latsample=N; Go's
// gTrackingPeriod is 8). With
// KGMPDEBUG=counters=0 every per-P counter reads 0 except schedticks (= runs), spawns, exits
// and handoffs_out.
// "interval_ns" of a connection's first answer is the uptime.
// Histograms ("*_hist") are arrays of kHistBuckets counts; bucket i counts values v (in ns)
// with 2^i <= v < 2^(i+1) (bucket 0 also counts 0), the last bucket everything above.
#pragma once

namespace kgmp::telemetry {

inline constexpr int kHistBuckets = 40;  // up to 2^40 ns (18 minutes) in the last bucket
inline constexpr const char* kSocketSuffix = ".sock";
inline constexpr const char* kRuntimeDirEnv = "KGMP_RUNTIME_DIR";
inline constexpr int kErrnoInvalid = 22;  // EINVAL, as scx_stats answers a bad request

}  // namespace kgmp::telemetry
