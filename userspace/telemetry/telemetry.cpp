// telemetry.cpp — KGMPDEBUG, the counters' clock and time accounting, the trace recorder, and
// the schedtrace thread (DESIGN §6).
//
// What:
//   - parse_kgmpdebug: Go's GODEBUG grammar (comma-separated name=value), every error one
//     line naming the bad item and what to write instead (run() prints it and exits 2).
//   - ticks_calibrate: the TSC's ns per tick, measured once per process against
//     CLOCK_MONOTONIC over 2 ms (only when the kernel's clocksource is tsc: then the TSC is
//     synchronized across CPUs and runs at a constant rate).
//   - p_account: the busy/idle/spinning time of a P, at its state changes (counters.h).
//   - The trace recorder (counters.h): sessions started and stopped by the stats endpoint.
//   - schedtrace: a thread that exists only with KGMPDEBUG=schedtrace=N, sleeping N ms on a
//     futex between lines (so it costs nothing else), printing schedtrace_text() to stderr
//     with one write(2) per report (lines of concurrent writers never interleave mid-line).
//
// schedtrace_text follows Go's schedtrace() (runtime/proc.go) field by field: the summary
// line "SCHED <ms>ms: gomaxprocs= idleprocs= threads= spinningthreads= needspinning=
// idlethreads= runqueue= [ <per-P runq> ] schedticks=[ <per-P> ]", or, detailed, the header
// with " gcwaiting= nmidlelocked= stopwait= sysmonwait=" then one line per P, M and G. kgmp's
// own fields come only at the end of the summary/header line and of each P and M line, so
// awk scripts written for Go keep working. Go fields kgmp has no counterpart for print Go's
// idle value (needspinning=0, gcwaiting=false, syscalltick=0, mallocing=0, ...).
//
// Rejected: printing from the poll monitor's loop as Go prints from sysmon (the trace monitor
// has no such loop, and the poll loop sleeps indefinitely when idle); a lock around the
// report (Go takes sched.lock for it; here every value is an atomic, and the report is
// documented as not consistent, as Go's is).
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <algorithm>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "monitor.h"
#include "sched.h"
#include "server.h"
#include "snapshot.h"
#include "telemetry_rt.h"

namespace kgmp::internal {

bool counters_on = true;
bool ticks_use_tsc = false;
std::uint64_t ticks_ns_mult = std::uint64_t{1} << 32;
std::atomic<bool> tracing{false};
std::uint32_t track_mask = kTrackPeriod - 1;

// ---- KGMPDEBUG ----

absl::StatusOr<DebugOpts> parse_kgmpdebug(const char* env) {
  DebugOpts o;
  if (env == nullptr || *env == '\0') return o;
  const char* kNames =
      "schedtrace=N (ms), scheddetail=1, counters=0|1, stats=0|1, latsample=N (power of 2)";
  for (absl::string_view item : absl::StrSplit(env, ',', absl::SkipEmpty())) {
    std::size_t eq = item.find('=');
    if (eq == absl::string_view::npos)
      return absl::InvalidArgumentError(absl::StrFormat(
          "KGMPDEBUG=\"%s\": \"%s\" has no value; write name=value items separated by commas "
          "(%s)",
          env, item, kNames));
    absl::string_view name = item.substr(0, eq), val = item.substr(eq + 1);
    int v = 0;
    bool num = absl::SimpleAtoi(val, &v);
    if (name == "schedtrace") {
      if (!num || v < 0 || v > 3600000)
        return absl::InvalidArgumentError(absl::StrFormat(
            "KGMPDEBUG=\"%s\": schedtrace=%s is not a period; use a whole number of "
            "milliseconds from 1 to 3600000 (0: off)",
            env, val));
      o.schedtrace_ms = v;
    } else if (name == "latsample") {
      if (!num || v < 1 || v > 65536 || (v & (v - 1)) != 0)
        return absl::InvalidArgumentError(absl::StrFormat(
            "KGMPDEBUG=\"%s\": latsample=%s must be a power of two from 1 to 65536 (one G "
            "transition in N is timed; default 32)",
            env, val));
      o.latsample = v;
    } else if (name == "scheddetail" || name == "counters" || name == "stats") {
      if (!num || (v != 0 && v != 1))
        return absl::InvalidArgumentError(absl::StrFormat(
            "KGMPDEBUG=\"%s\": %s=%s must be 0 or 1", env, name, val));
      if (name == "scheddetail") o.scheddetail = v == 1;
      if (name == "counters") o.counters = v == 1;
      if (name == "stats") o.stats = v == 1;
    } else {
      return absl::InvalidArgumentError(absl::StrFormat(
          "KGMPDEBUG=\"%s\": unknown setting \"%s\"; kgmp knows %s", env, name, kNames));
    }
  }
  if (o.scheddetail && o.schedtrace_ms == 0)
    return absl::InvalidArgumentError(absl::StrFormat(
        "KGMPDEBUG=\"%s\": scheddetail=1 needs schedtrace=N too (as in Go's GODEBUG), e.g. "
        "KGMPDEBUG=schedtrace=1000,scheddetail=1",
        env));
  return o;
}

// ---- clock ----

std::uint64_t ticks_slow() { return static_cast<std::uint64_t>(nanotime()); }

void ticks_calibrate() {
  static const bool done = [] {
    std::ifstream f("/sys/devices/system/clocksource/clocksource0/current_clocksource");
    std::string cs;
    if (!(f >> cs) || cs != "tsc") {
      ticks_use_tsc = false;
      ticks_ns_mult = std::uint64_t{1} << 32;
      return true;
    }
    std::int64_t n0 = nanotime();
    std::uint64_t t0 = __builtin_ia32_rdtsc();
    std::int64_t n1;
    do {
      n1 = nanotime();
    } while (n1 - n0 < 2000000);
    std::uint64_t t1 = __builtin_ia32_rdtsc();
    if (t1 <= t0) return true;
    ticks_ns_mult = static_cast<std::uint64_t>(static_cast<double>(n1 - n0) /
                                               static_cast<double>(t1 - t0) * 4294967296.0);
    ticks_use_tsc = true;
    return true;
  }();
  (void)done;
}

// ---- time accounting ----

void p_account(PCounters& c, PState next) {
  if (!counters_on) return;
  std::int64_t now = nanotime();
  std::int64_t since = c.since.load(std::memory_order_relaxed);
  std::uint64_t d = now > since ? static_cast<std::uint64_t>(now - since) : 0;
  switch (static_cast<PState>(c.state.load(std::memory_order_relaxed))) {
    case PState::kIdle: c.idle_ns.add(d); break;
    case PState::kBusy: c.busy_ns.add(d); break;
    case PState::kSpin: c.spin_ns.add(d); break;
  }
  c.state.store(static_cast<std::uint8_t>(next), std::memory_order_relaxed);
  c.since.store(now, std::memory_order_relaxed);
}

// ---- the trace recorder ----

const char* trace_ev_name(TraceEv e) {
  switch (e) {
    case TraceEv::kGRun: return "g_run";
    case TraceEv::kGStop: return "g_stop";
    case TraceEv::kMBlock: return "m_block";
    case TraceEv::kMWake: return "m_wake";
    case TraceEv::kMSpinStart: return "m_spin_start";
    case TraceEv::kMSpinEnd: return "m_spin_end";
    case TraceEv::kMIdle: return "m_idle";
    case TraceEv::kMBusy: return "m_busy";
    case TraceEv::kSteal: return "steal";
    case TraceEv::kHandoff: return "handoff";
    case TraceEv::kRunq: return "runq";
  }
  return "?";
}

const char* stop_reason_name(std::uint64_t r) {
  switch (static_cast<StopReason>(r)) {
    case StopReason::kYield: return "yield";
    case StopReason::kPark: return "park";
    case StopReason::kExit: return "exit";
    case StopReason::kPreempt: return "preempt";
    case StopReason::kLostP: return "lost_p";
  }
  return "?";
}

void trace_event_slow(int pi, TraceEv ev, std::uint32_t m, std::uint64_t g, std::uint64_t arg) {
  TraceBuf* b = sched->allp[pi].tbuf.load(std::memory_order_acquire);
  if (b == nullptr) return;
  std::uint32_t n = b->n.load(std::memory_order_relaxed);
  if (n >= b->cap) {
    b->dropped.add();
    return;
  }
  TraceEvent& e = b->ev()[n];
  e.ts = nanotime();
  e.g = g;
  e.arg = arg;
  e.ev = ev;
  e.p = static_cast<std::uint16_t>(pi);
  e.m = m;
  b->n.store(n + 1, std::memory_order_release);
}

namespace {

struct Mapping {
  void* addr;
  std::size_t len;
};

// The recorder's session state: the stats endpoint's connections only (never the scheduler).
struct Recorder {
  absl::Mutex mu;
  bool active ABSL_GUARDED_BY(mu) = false;
  std::int64_t start_ns ABSL_GUARDED_BY(mu) = 0;
  std::vector<Mapping> maps ABSL_GUARDED_BY(mu);  // every session's buffers, until run() ends
  std::uint64_t mapped_events ABSL_GUARDED_BY(mu) = 0;
};
Recorder* recorder = nullptr;

constexpr std::uint64_t kMaxSessionEvents = 4u << 20;  // 128 MiB of address space
constexpr std::uint64_t kMaxRunEvents = 16u << 20;     // over all sessions of one run()

}  // namespace

absl::Status trace_session_start(std::uint64_t max_events) {
  if (recorder == nullptr) return absl::FailedPreconditionError("the runtime is stopping");
  if (max_events == 0) max_events = 1u << 20;
  if (max_events > kMaxSessionEvents)
    return absl::InvalidArgumentError(absl::StrFormat(
        "max_events=%u is above the limit of %u", max_events, kMaxSessionEvents));
  absl::MutexLock l(&recorder->mu);
  if (recorder->active)
    return absl::FailedPreconditionError("a trace is already being recorded; send trace_stop");
  if (recorder->mapped_events + max_events > kMaxRunEvents)
    return absl::ResourceExhaustedError(absl::StrFormat(
        "this run already recorded %u events, the limit of one run is %u",
        recorder->mapped_events, kMaxRunEvents));
  const int np = sched->nprocs;
  std::uint64_t per = max_events / static_cast<std::uint64_t>(np);
  if (per < 16) per = 16;
  for (int i = 0; i < np; i++) {
    std::size_t len = sizeof(TraceBuf) + sizeof(TraceEvent) * per;
    void* a = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (a == MAP_FAILED) return absl::ResourceExhaustedError("cannot map the trace buffers");
    recorder->maps.push_back({a, len});
    TraceBuf* b = new (a) TraceBuf();
    b->cap = static_cast<std::uint32_t>(per);
    sched->allp[i].tbuf.store(b, std::memory_order_release);
  }
  recorder->mapped_events += per * static_cast<std::uint64_t>(np);
  recorder->active = true;
  recorder->start_ns = nanotime();
  tracing.store(true, std::memory_order_release);
  return absl::OkStatus();
}

absl::StatusOr<TraceDump> trace_session_stop() {
  if (recorder == nullptr) return absl::FailedPreconditionError("the runtime is stopping");
  absl::MutexLock l(&recorder->mu);
  if (!recorder->active)
    return absl::FailedPreconditionError("no trace is being recorded; send trace_start first");
  tracing.store(false, std::memory_order_release);
  TraceDump d;
  d.start_ns = recorder->start_ns;
  d.end_ns = nanotime();
  for (int i = 0; i < sched->nprocs; i++) {
    TraceBuf* b = sched->allp[i].tbuf.exchange(nullptr, std::memory_order_acq_rel);
    if (b == nullptr) continue;
    // A writer that saw `tracing` on just before it went off may still add an event: its
    // buffer stays mapped (Recorder::maps), and it is simply not in this dump.
    std::uint32_t n = b->n.load(std::memory_order_acquire);
    d.events.insert(d.events.end(), b->ev(), b->ev() + n);
    d.dropped += b->dropped.load();
  }
  // By time; events of one P keep their order (each P's buffer is in order already).
  std::vector<std::pair<std::int64_t, std::size_t>> order;
  for (std::size_t i = 0; i < d.events.size(); i++) order.emplace_back(d.events[i].ts, i);
  std::sort(order.begin(), order.end());
  std::vector<TraceEvent> sorted;
  sorted.reserve(order.size());
  for (const auto& o : order) sorted.push_back(d.events[o.second]);
  d.events = std::move(sorted);
  recorder->active = false;
  return d;
}

// ---- schedtrace ----

namespace {

template <class T, class F>
void bracket(std::string& out, const std::vector<T>& v, F f) {
  out += "[ ";
  for (const T& x : v) absl::StrAppend(&out, f(x), " ");
  out += "]";
}

// kgmp's fields, appended to the SCHED line (summary or detailed header).
void append_ours(std::string& out, const Snapshot& s) {
  absl::StrAppend(&out, " monitor=", s.monitor, " handoffs=", s.handoffs,
                  " blockedthreads=", s.blockedthreads, " steals=");
  bracket(out, s.procs, [](const ProcSnap& p) { return p.steals; });
  out += " cpus=";
  bracket(out, s.procs, [](const ProcSnap& p) { return p.cpu; });
  out += " preemptions=";
  bracket(out, s.procs, [](const ProcSnap& p) { return p.preemptions; });
}

int go_gstatus(GStatus st, bool in_syscall) {
  switch (st) {  // Go's _Grunnable 1, _Grunning 2, _Gsyscall 3, _Gwaiting 4
    case GStatus::kRunnable: return 1;
    case GStatus::kRunning: return in_syscall ? 3 : 2;
    case GStatus::kWaiting: return 4;
    default: return 6;  // _Gdead
  }
}

}  // namespace

std::string schedtrace_text(bool detailed) {
  Snapshot s = take_snapshot();
  std::string out = absl::StrFormat(
      "SCHED %dms: gomaxprocs=%d idleprocs=%d threads=%d spinningthreads=%d needspinning=0 "
      "idlethreads=%d runqueue=%u",
      s.uptime_ns / 1000000, s.gomaxprocs, s.idleprocs, s.threads, s.spinningthreads,
      s.idlethreads, s.runqueue);
  if (!detailed) {
    out += " ";
    bracket(out, s.procs, [](const ProcSnap& p) { return p.runq; });
    out += " schedticks=";
    bracket(out, s.procs, [](const ProcSnap& p) { return p.schedticks; });
    append_ours(out, s);
    out += "\n";
    return out;
  }
  out += " gcwaiting=false nmidlelocked=0 stopwait=0 sysmonwait=false";
  append_ours(out, s);
  out += "\n";
  for (const ProcSnap& p : s.procs) {
    P* pp = &sched->allp[p.id];
    std::size_t timers;
    {
      LockGuard l(pp->timers.lock);
      timers = pp->timers.heap.size();
    }
    absl::StrAppendFormat(
        &out, "  P%d: status=%d schedtick=%u syscalltick=0 m=%s runqsize=%u gfreecnt=%d "
              "timerslen=%u cpu=%d state=%s curg=%s steals=%u stolen=%u handoffs_in=%u "
              "handoffs_out=%u busy_ns=%u idle_ns=%u spin_ns=%u preemptions=%u\n",
        p.id, std::strcmp(p.status, "idle") == 0 ? 0 : 1, p.schedticks,
        p.m < 0 ? std::string("nil") : absl::StrCat(p.m), p.runq,
        __atomic_load_n(&pp->ngfree, __ATOMIC_RELAXED), timers, p.cpu, p.status,
        p.curg == 0 ? std::string("nil") : absl::StrCat(p.curg), p.steals, p.stolen,
        p.handoffs_in, p.handoffs_out, p.busy_ns, p.idle_ns, p.spin_ns, p.preemptions);
  }
  std::map<std::uint64_t, int> m_of_g;
  for (const MSnap& m : s.ms) {
    if (m.curg != 0 && std::strcmp(m.state, "idle") != 0 && std::strcmp(m.state, "watcher") != 0)
      m_of_g[m.curg] = m.id;
    absl::StrAppendFormat(
        &out, "  M%d: p=%s curg=%s mallocing=0 throwing=0 preemptoff= locks=0 dying=0 "
              "spinning=%s blocked=%s lockedg=nil tid=%d cpu=%d state=%s blocks=%u\n",
        m.id, m.p < 0 ? std::string("nil") : absl::StrCat(m.p),
        m.curg == 0 ? std::string("nil") : absl::StrCat(m.curg),
        std::strcmp(m.state, "spinning") == 0 ? "true" : "false",
        std::strcmp(m.state, "idle") == 0 || std::strcmp(m.state, "watcher") == 0 ? "true"
                                                                                  : "false",
        m.tid, m.cpu, m.state, m.blocks);
  }
  struct Ctx {
    std::string* out;
    std::map<std::uint64_t, int>* m_of_g;
  } ctx{&out, &m_of_g};
  for_each_g_racy(
      [](void* c, const G* g) {
        auto* x = static_cast<Ctx*>(c);
        GStatus st = g->status.load(std::memory_order_relaxed);
        if (st == GStatus::kFree) return;
        std::uint64_t id = __atomic_load_n(&g->goid, __ATOMIC_RELAXED);
        const char* wr = __atomic_load_n(&g->waitreason, __ATOMIC_RELAXED);
        auto it = x->m_of_g->find(id);
        absl::StrAppendFormat(x->out, "  G%u: status=%d(%s) m=%s lockedm=nil\n", id,
                              go_gstatus(st, false), st == GStatus::kWaiting && wr ? wr : "",
                              it == x->m_of_g->end() ? std::string("nil") : absl::StrCat(it->second));
      },
      &ctx);
  return out;
}

// ---- threads ----

namespace {

struct SchedTracer {
  int period_ms;
  bool detailed;
  Note stop;
  std::thread th;
};
SchedTracer* tracer = nullptr;
StatsServer* server = nullptr;

}  // namespace

void telemetry_start(const DebugOpts& o) {
  recorder = new Recorder();
  if (o.schedtrace_ms > 0) {
    tracer = new SchedTracer{o.schedtrace_ms, o.scheddetail, {}, {}};
    tracer->th = std::thread([t = tracer] {
      std::int64_t next = sched->start_ns;
      for (;;) {
        next += static_cast<std::int64_t>(t->period_ms) * 1000000;
        if (t->stop.sleep_until(next)) return;
        std::string text = schedtrace_text(t->detailed);
        ssize_t r = write(2, text.data(), text.size());
        (void)r;
      }
    });
  }
  if (o.stats) {
    absl::StatusOr<std::unique_ptr<StatsServer>> s = StatsServer::start();
    if (s.ok())
      server = s->release();
    else
      fprintf(stderr, "kgmp: no stats endpoint: %s\n", std::string(s.status().message()).c_str());
  }
}

void telemetry_stop() {
  if (tracer != nullptr) {
    tracer->stop.wakeup();
    tracer->th.join();
    delete tracer;
    tracer = nullptr;
  }
  if (server != nullptr) {
    delete server;  // stops its threads, unlinks the socket
    server = nullptr;
  }
  tracing.store(false, std::memory_order_release);
}

void telemetry_free() {
  if (recorder == nullptr) return;
  {
    absl::MutexLock l(&recorder->mu);
    for (const Mapping& m : recorder->maps) munmap(m.addr, m.len);
  }
  for (int i = 0; i < sched->nprocs; i++) sched->allp[i].tbuf.store(nullptr);
  delete recorder;
  recorder = nullptr;
}

}  // namespace kgmp::internal
