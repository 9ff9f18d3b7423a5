// views.cpp — the text and JSON kgmpstat prints (see views.h for each format's rules).
//
// Everything here reads the snapshot defensively: a field the server does not send (an older
// runtime, the poll monitor without per-core BPF data) leaves a "-" in the table or drops a
// metric family, never a wrong zero.
#include "kgmpstat/views.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <map>
#include <optional>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "telemetry/stats_protocol.h"

namespace kgmpstat {

using json::Value;

namespace {

// Member `key` of the i-th element of snapshot array `arr`, matched by its `idkey` field when
// the elements have one (the "delta" arrays are parallel to the totals, but matching by id
// does not depend on it).
const Value* FindBy(const Value* arr, std::string_view idkey, std::int64_t id) {
  if (arr == nullptr) return nullptr;
  for (const Value& e : arr->items())
    if (const Value* v = e.find(idkey); v != nullptr && v->as_int(-1) == id) return &e;
  return nullptr;
}

const Value* DeltaArray(const Value& snap, std::string_view name) {
  const Value* d = snap.find("delta");
  return d != nullptr ? d->find(name) : nullptr;
}

std::string Shortest(double d) {
  if (!std::isfinite(d)) return d > 0 ? "+Inf" : (d < 0 ? "-Inf" : "NaN");
  char buf[64];
  auto [p, ec] = std::to_chars(buf, buf + sizeof buf, d);
  return std::string(buf, p);
}

}  // namespace

// ---- histograms ----

std::uint64_t HistCount(const Value& hist) {
  std::uint64_t n = 0;
  for (const Value& b : hist.items()) n += static_cast<std::uint64_t>(std::max<std::int64_t>(0, b.as_int()));
  return n;
}

std::uint64_t HistQuantileNs(const Value& hist, double q) {
  const std::uint64_t total = HistCount(hist);
  if (total == 0) return 0;
  const auto target = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(total)));
  std::uint64_t cum = 0;
  const auto& b = hist.items();
  for (size_t i = 0; i < b.size(); i++) {
    cum += static_cast<std::uint64_t>(std::max<std::int64_t>(0, b[i].as_int()));
    if (cum >= std::max<std::uint64_t>(target, 1)) return std::uint64_t{1} << std::min<size_t>(i + 1, 62);
  }
  return std::uint64_t{1} << std::min<size_t>(b.size(), 62);
}

double HistSumEstimateNs(const Value& hist) {
  double s = 0;
  const auto& b = hist.items();
  for (size_t i = 0; i < b.size(); i++)
    s += static_cast<double>(b[i].as_int()) * (i == 0 ? 0.5 : 1.5 * std::ldexp(1.0, static_cast<int>(i)));
  return s;
}

std::string FormatDuration(std::uint64_t ns) {
  if (ns < 1000) return absl::StrFormat("%dns", ns);
  const double d = static_cast<double>(ns);
  if (ns < 1000000) return absl::StrFormat("%.3gus", d / 1e3);
  if (ns < 1000000000) return absl::StrFormat("%.3gms", d / 1e6);
  return absl::StrFormat("%.3gs", d / 1e9);
}

// ---- top ----

std::string RenderTop(const Value& snap, int pid, const std::string& comm) {
  const double interval_ns = snap.get_double("interval_ns", 0);
  const std::string monitor = snap.get_string("monitor", "?");
  std::string out = absl::StrFormat(
      "kgmpstat top: pid %d (%s)  monitor=%s  up %s  interval %s\n", pid, comm, monitor,
      FormatDuration(static_cast<std::uint64_t>(snap.get_int("uptime_ns"))),
      interval_ns > 0 ? FormatDuration(static_cast<std::uint64_t>(interval_ns)) : "-");
  std::vector<std::string> gauges;
  for (const char* k : {"gomaxprocs", "goroutines", "threads", "idleprocs", "spinningthreads",
                        "idlethreads", "blockedthreads", "runqueue", "handoffs"})
    if (const Value* v = snap.find(k); v != nullptr && v->is_number())
      gauges.push_back(absl::StrCat(k, "=", v->as_int()));
  absl::StrAppend(&out, absl::StrJoin(gauges, " "), "\n");
  if (snap.get_string("counters", "on") == "off")
    out += "counters=off (KGMPDEBUG=counters=0): per-P rates, latency and busy time read 0\n";
  out += "\n";
  absl::StrAppendFormat(&out,
                        "%-4s %-3s %-4s %-8s %-9s %-8s %5s %8s %7s %10s %9s %6s %6s %-7s\n",
                        "CORE", "P", "M", "TID", "STATE", "CURG", "RUNQ", "STEAL/s", "HOFF/s",
                        "PREEMPT/s", "P99LAT", "BUSY%", "BLKD%", "MONITOR");

  struct Row {
    std::int64_t cpu;
    std::string text;
    size_t order = 0;
  };
  std::vector<Row> rows;
  const Value* ms = snap.find("ms");
  const Value* cores = snap.find("cores");
  const Value* dprocs = DeltaArray(snap, "procs");
  const Value* dcores = DeltaArray(snap, "cores");
  std::set<std::int64_t> cpus_with_p;
  auto rate = [&](double n) -> std::string {
    return interval_ns > 0 ? absl::StrFormat("%.1f", n * 1e9 / interval_ns) : "-";
  };
  auto pct = [&](double ns) -> std::string {
    return interval_ns > 0 ? absl::StrFormat("%.1f", std::min(100.0, 100.0 * ns / interval_ns))
                           : "-";
  };
  // Blocked time of a core over the interval: the server's blocked_ns when it sends one, else
  // an estimate from the off-CPU histogram's delta (marked with '~').
  auto blocked = [&](std::int64_t cpu, const Value* dp) -> std::string {
    const Value* dc = FindBy(dcores, "cpu", cpu);
    for (const Value* src : {dc, dp})
      if (src != nullptr && src->find("blocked_ns") != nullptr)
        return pct(src->get_double("blocked_ns"));
    if (dc != nullptr && dc->find("offcpu_hist") != nullptr && interval_ns > 0)
      return "~" + pct(HistSumEstimateNs(*dc->find("offcpu_hist")));
    return "-";
  };

  for (const Value& p : snap.find("procs") != nullptr ? snap.find("procs")->items()
                                                       : Value::Array{}) {
    const std::int64_t id = p.get_int("id", -1);
    const std::int64_t m = p.get_int("m", -1);
    std::int64_t cpu = p.get_int("cpu", -1);
    const Value* mv = FindBy(ms, "id", m);
    if (cpu < 0 && mv != nullptr) cpu = mv->get_int("cpu", -1);
    if (cpu >= 0) cpus_with_p.insert(cpu);
    const Value* dp = FindBy(dprocs, "id", id);
    std::string state = mv != nullptr ? mv->get_string("state", "?") : p.get_string("status", "?");
    std::int64_t tid = p.get_int("tid", mv != nullptr ? mv->get_int("tid", -1) : -1);
    std::int64_t curg = p.get_int("curg", 0);
    std::string steals = dp != nullptr ? rate(dp->get_double("steals")) : "-";
    // Hand-offs of this P: the times it was taken from its blocked M ("handoffs_out"; older
    // servers only sent "handoffs_in").
    std::string hoffs = "-";
    for (const char* k : {"handoffs_out", "handoffs_in"})
      if (dp != nullptr && dp->find(k) != nullptr) {
        hoffs = rate(dp->get_double(k));
        break;
      }
    // Preemptions of Gs on this P (servers before preemption do not send the field).
    std::string preempts = dp != nullptr && dp->find("preemptions") != nullptr
                               ? rate(dp->get_double("preemptions"))
                               : "-";
    std::string p99 = "-";
    if (dp != nullptr && dp->find("lat_hist") != nullptr) {
      std::uint64_t q = HistQuantileNs(*dp->find("lat_hist"), 0.99);
      p99 = q == 0 ? "-" : "<" + FormatDuration(q);
    }
    std::string busy = dp != nullptr && dp->find("busy_ns") != nullptr
                           ? pct(dp->get_double("busy_ns"))
                           : "-";
    rows.push_back(
        {cpu, absl::StrFormat("%-4s %-3d %-4s %-8s %-9s %-8s %5d %8s %7s %10s %9s %6s %6s %-7s\n",
                              cpu >= 0 ? absl::StrCat(cpu) : "-", id,
                              m >= 0 ? absl::StrCat("M", m) : "-",
                              tid > 0 ? absl::StrCat(tid) : "-", state,
                              curg > 0 ? absl::StrCat("G", curg) : "-", p.get_int("runq"), steals,
                              hoffs, preempts, p99, busy, blocked(cpu, dp), monitor)});
  }
  // Cores the runtime's Ms ran on without a P of their own (per-core BPF data only).
  if (cores != nullptr)
    for (const Value& c : cores->items()) {
      std::int64_t cpu = c.get_int("cpu", -1);
      if (cpu < 0 || cpus_with_p.count(cpu)) continue;
      rows.push_back({cpu, absl::StrFormat(
                               "%-4d %-3s %-4s %-8s %-9s %-8s %5s %8s %7s %10s %9s %6s %6s %-7s\n",
                               cpu, "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-",
                               blocked(cpu, nullptr), monitor)});
    }
  // By core (rows without one last), ties in P order. (std::sort with an explicit tie-break:
  // libstdc++ 12's stable_sort trips clang 19's deprecation warning.)
  for (size_t i = 0; i < rows.size(); i++) rows[i].order = i;
  std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
    auto key = [](const Row& r) { return std::pair(r.cpu < 0 ? INT64_MAX : r.cpu, r.order); };
    return key(a) < key(b);
  });
  for (const Row& r : rows) out += r.text;
  return out;
}

// ---- prom ----

namespace {

// Families in first-use order; each prints HELP and TYPE once, then its samples.
class PromWriter {
 public:
  void Sample(const std::string& name, const char* type, const std::string& help,
              const std::string& labels, const std::string& value, const std::string& suffix = "") {
    Family& f = Get(name, type, help);
    f.samples.push_back(absl::StrCat(name, suffix, labels.empty() ? "" : "{" + labels + "}", " ",
                                     value));
  }
  // A histogram of ns power-of-two buckets, exposed in seconds: le is each bucket's inclusive
  // upper bound ((2^(i+1) - 1) ns: values are whole ns), the last bucket is +Inf.
  void Histogram(const std::string& name, const std::string& help, const std::string& labels,
                 const Value& hist, std::optional<double> sum_ns) {
    Family& f = Get(name, "histogram", help);
    const auto& b = hist.items();
    std::uint64_t cum = 0;
    const std::string sep = labels.empty() ? "" : labels + ",";
    for (size_t i = 0; i + 1 < b.size(); i++) {
      cum += static_cast<std::uint64_t>(std::max<std::int64_t>(0, b[i].as_int()));
      double le = (std::ldexp(1.0, static_cast<int>(i) + 1) - 1) / 1e9;
      f.samples.push_back(absl::StrCat(name, "_bucket{", sep, "le=\"", Shortest(le), "\"} ", cum));
    }
    const std::uint64_t total = HistCount(hist);
    f.samples.push_back(absl::StrCat(name, "_bucket{", sep, "le=\"+Inf\"} ", total));
    const std::string l = labels.empty() ? "" : "{" + labels + "}";
    f.samples.push_back(
        absl::StrCat(name, "_sum", l, " ", Shortest(sum_ns.value_or(HistSumEstimateNs(hist)) / 1e9)));
    f.samples.push_back(absl::StrCat(name, "_count", l, " ", total));
  }
  std::string Text() const {
    std::string out;
    for (const Family& f : families_) {
      absl::StrAppend(&out, "# HELP ", f.name, " ", f.help, "\n# TYPE ", f.name, " ", f.type, "\n");
      for (const std::string& s : f.samples) absl::StrAppend(&out, s, "\n");
    }
    return out;
  }

 private:
  struct Family {
    std::string name, type, help;
    std::vector<std::string> samples;
  };
  Family& Get(const std::string& name, const char* type, const std::string& help) {
    for (Family& f : families_)
      if (f.name == name) return f;
    families_.push_back({name, type, help, {}});
    return families_.back();
  }
  std::vector<Family> families_;
};

std::string LabelValue(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

struct FieldMetric {
  const char* field;
  const char* name;  // without the kgmp_<scope>_ prefix
  const char* type;  // counter | gauge
  bool ns_to_seconds;
  const char* help;
};

constexpr FieldMetric kGlobal[] = {
    {"gomaxprocs", "sched_gomaxprocs_threads", "gauge", false,
     "Ps (GOMAXPROCS): the number of goroutines that can run at once."},
    {"goroutines", "sched_goroutines_goroutines", "gauge", false, "Live goroutines."},
    {"goroutines_created", "sched_goroutines_created_total", "counter", false,
     "Goroutines created since kgmp::run() started."},
    {"running", "sched_goroutines_running_goroutines", "gauge", false,
     "Goroutines running (approximate, as Go's /sched/goroutines/running)."},
    {"runnable", "sched_goroutines_runnable_goroutines", "gauge", false,
     "Goroutines ready to run, waiting for a P (approximate)."},
    {"waiting", "sched_goroutines_waiting_goroutines", "gauge", false,
     "Goroutines parked on a channel, timer or lock (approximate)."},
    {"threads", "sched_threads", "gauge", false, "Ms (OS threads) the runtime created."},
    {"idleprocs", "sched_idle_procs", "gauge", false, "Ps with nothing to run."},
    {"spinningthreads", "sched_spinning_threads", "gauge", false,
     "Ms spinning (looking for work to steal)."},
    {"idlethreads", "sched_idle_threads", "gauge", false, "Ms parked with no P."},
    {"blockedthreads", "sched_blocked_threads", "gauge", false,
     "Ms blocked in the kernel (reported by the monitor)."},
    {"runqueue", "sched_global_runqueue_goroutines", "gauge", false,
     "Goroutines in the global run queue."},
    {"handoffs", "sched_handoffs_total", "counter", false,
     "Ps handed from an M blocked in the kernel to another M."},
    {"uptime_ns", "uptime_seconds", "gauge", true, "Time since kgmp::run() started."},
};
constexpr FieldMetric kProc[] = {
    {"schedticks", "schedticks_total", "counter", false, "Goroutines scheduled on the P."},
    {"runs", "goroutine_runs_total", "counter", false,
     "Goroutine executions on the P (a G resumed three times counts three)."},
    {"spawns", "spawns_total", "counter", false, "Goroutines created by goroutines on the P."},
    {"exits", "goroutine_exits_total", "counter", false, "Goroutines that finished on the P."},
    {"steals", "steals_total", "counter", false, "Successful steals by the P from other Ps."},
    {"stolen", "stolen_goroutines_total", "counter", false, "Goroutines the P took in steals."},
    {"handoffs_out", "handoffs_total", "counter", false,
     "Times the P was taken from its M blocked in the kernel."},
    {"handoffs_in", "handoffs_received_total", "counter", false,
     "Hand-offs of the P after which a new M ran it (the others left it idle)."},
    {"globrunq_takes", "global_runqueue_takes_total", "counter", false,
     "Goroutines the P took from the global run queue."},
    {"parks", "parks_total", "counter", false, "Times the P's M parked with nothing to run."},
    {"preemptions", "preemptions_total", "counter", false,
     "Goroutines preempted on the P: they ran longer than the preemption slice while others "
     "waited for it."},
    {"runq", "runqueue_goroutines", "gauge", false, "Goroutines in the P's local run queue."},
    {"busy_ns", "busy_seconds_total", "counter", true, "Time the P ran goroutines."},
    {"idle_ns", "idle_seconds_total", "counter", true, "Time the P was idle."},
    {"spin_ns", "spin_seconds_total", "counter", true, "Time the P's M spun looking for work."},
    {"blocked_ns", "blocked_seconds_total", "counter", true,
     "Time the P's M was blocked in the kernel while holding it."},
};
constexpr FieldMetric kCore[] = {
    {"m_blocks", "m_blocks_total", "counter", false,
     "Times an M holding a P blocked in the kernel on this CPU."},
    {"ctx_switches", "context_switches_total", "counter", false,
     "Context switches of the runtime's Ms on this CPU."},
    {"runq_wait_ns", "runqueue_wait_seconds_total", "counter", true,
     "Time the runtime's Ms waited runnable in the kernel on this CPU (schedstat run_delay)."},
    {"foreign_ns", "foreign_seconds_total", "counter", true,
     "Part of that wait during which another process's task ran."},
    {"blocked_ns", "blocked_seconds_total", "counter", true,
     "Time Ms holding a P were off-CPU, blocked, on this CPU."},
};

std::string Number(const Value& v, bool ns_to_seconds) {
  if (ns_to_seconds) return Shortest(v.as_double() / 1e9);
  return v.is_int() ? absl::StrCat(v.as_int()) : Shortest(v.as_double());
}

void Fields(PromWriter& w, const Value& obj, const std::string& prefix, const FieldMetric* table,
            size_t n, const std::string& labels) {
  for (size_t i = 0; i < n; i++) {
    const FieldMetric& f = table[i];
    if (const Value* v = obj.find(f.field); v != nullptr && v->is_number())
      w.Sample(prefix + f.name, f.type, f.help, labels, Number(*v, f.ns_to_seconds));
  }
}

std::optional<double> SumField(const Value& obj, std::string_view hist_field) {
  // "lat_hist" -> "lat_sum_ns", when the server sends exact sums.
  std::string k(hist_field);
  if (k.size() > 5 && k.ends_with("_hist")) k = k.substr(0, k.size() - 5) + "_sum_ns";
  if (const Value* v = obj.find(k); v != nullptr && v->is_number()) return v->as_double();
  return std::nullopt;
}

}  // namespace

std::string RenderProm(const Value& snap) {
  PromWriter w;
  w.Sample("kgmp_info", "gauge", "The kgmp process: its pid, monitor and whether per-P counters are on (always 1).",
           absl::StrFormat("pid=\"%d\",monitor=\"%s\",counters=\"%s\"", snap.get_int("pid"),
                           LabelValue(snap.get_string("monitor", "unknown")),
                           LabelValue(snap.get_string("counters", "on"))),
           "1");
  Fields(w, snap, "kgmp_", kGlobal, std::size(kGlobal), "");
  if (const Value* procs = snap.find("procs"))
    for (const Value& p : procs->items()) {
      std::string labels = absl::StrFormat("proc=\"%d\",cpu=\"%d\"", p.get_int("id"),
                                           p.get_int("cpu", -1));
      Fields(w, p, "kgmp_proc_", kProc, std::size(kProc), labels);
      if (const Value* h = p.find("lat_hist"); h != nullptr && h->is_array())
        w.Histogram("kgmp_proc_scheduling_latency_seconds",
                    "Time goroutines waited from runnable to running on the P.", labels, *h,
                    SumField(p, "lat_hist"));
    }
  if (const Value* cores = snap.find("cores"))
    for (const Value& c : cores->items()) {
      std::string labels = absl::StrFormat("cpu=\"%d\"", c.get_int("cpu", -1));
      Fields(w, c, "kgmp_cpu_", kCore, std::size(kCore), labels);
      if (const Value* h = c.find("offcpu_hist"); h != nullptr && h->is_array())
        w.Histogram("kgmp_cpu_offcpu_seconds",
                    "Off-CPU time of Ms that blocked in the kernel while holding a P.", labels, *h,
                    SumField(c, "offcpu_hist"));
      if (const Value* h = c.find("wake_lat_hist"); h != nullptr && h->is_array())
        w.Histogram("kgmp_cpu_wake_latency_seconds",
                    "Time from an M's wake-up to it running on the CPU.", labels, *h,
                    SumField(c, "wake_lat_hist"));
    }
  return w.Text();
}

// ---- hist ----

std::string RenderOneHist(const Value& hist, HistUnit unit, const std::string& title) {
  std::string out = title + "\n";
  const auto& b = hist.items();
  if (HistCount(hist) == 0) return out + "     (no samples)\n";
  const double div = unit == HistUnit::kNsecs ? 1 : unit == HistUnit::kUsecs ? 1e3 : 1e6;
  const char* name = unit == HistUnit::kNsecs ? "nsecs" : unit == HistUnit::kUsecs ? "usecs" : "msecs";
  // Rows: the runtime's ns buckets, labelled in `unit` rounded down; buckets whose labels start
  // alike (all those under one unit) are merged, so the first row reads "0 -> 1" as in runqlat.
  struct RowT {
    std::uint64_t lo, hi, count;
    bool open;  // the last bucket: no upper bound
  };
  std::vector<RowT> rows;
  for (size_t i = 0; i < b.size(); i++) {
    const double lo_ns = i == 0 ? 0 : std::ldexp(1.0, static_cast<int>(i));
    const double hi_ns = std::ldexp(1.0, static_cast<int>(i) + 1) - 1;
    const auto lo = static_cast<std::uint64_t>(std::floor(lo_ns / div));
    const auto hi = static_cast<std::uint64_t>(std::floor(hi_ns / div));
    const auto n = static_cast<std::uint64_t>(std::max<std::int64_t>(0, b[i].as_int()));
    const bool open = i + 1 == b.size();
    if (!rows.empty() && rows.back().lo == lo && !open) {
      rows.back().hi = hi;
      rows.back().count += n;
    } else {
      rows.push_back({lo, hi, n, open});
    }
  }
  size_t last = 0;
  std::uint64_t max = 0;
  for (size_t i = 0; i < rows.size(); i++)
    if (rows[i].count > 0) {
      last = i;
      max = std::max(max, rows[i].count);
    }
  // runqlat's columns: the unit name over "low -> high", 24 wide, then count and a 40-wide bar.
  absl::StrAppendFormat(&out, "%5s%-19s : count    distribution\n", "", name);
  constexpr int kBar = 40;
  for (size_t i = 0; i <= last; i++) {
    const RowT& r = rows[i];
    const int stars = static_cast<int>(r.count * kBar / max);
    std::string hi = r.open ? std::string("inf") : absl::StrCat(r.hi);
    absl::StrAppendFormat(&out, "%10d -> %-10s : %-8d |%s%s|\n", r.lo, hi, r.count,
                          std::string(static_cast<size_t>(stars), '*'),
                          std::string(static_cast<size_t>(kBar - stars), ' '));
  }
  return out;
}

std::string RenderHist(const Value& snap, HistPer per, HistUnit unit, bool use_delta) {
  std::string out;
  auto source = [&](std::string_view name) -> const Value* {
    return use_delta ? DeltaArray(snap, name) : snap.find(name);
  };
  if (per == HistPer::kP) {
    const Value* procs = source("procs");
    const Value* totals = snap.find("procs");
    if (procs == nullptr || procs->items().empty()) return "no per-P data in the snapshot\n";
    for (const Value& p : procs->items()) {
      const std::int64_t id = p.get_int("id", -1);
      const Value* tp = FindBy(totals, "id", id);
      const std::int64_t cpu = tp != nullptr ? tp->get_int("cpu", -1) : p.get_int("cpu", -1);
      const Value* h = p.find("lat_hist");
      std::string title = absl::StrFormat(
          "P = %d%s: scheduling latency (runnable -> running), %d samples", id,
          cpu >= 0 ? absl::StrFormat(" (cpu %d)", cpu) : "", h != nullptr ? HistCount(*h) : 0);
      out += RenderOneHist(h != nullptr ? *h : Value::array(), unit, title);
      out += "\n";
    }
    return out;
  }
  const Value* cores = source("cores");
  if (cores == nullptr || cores->items().empty())
    return absl::StrFormat(
        "no per-core data in the snapshot (monitor=%s: per-core histograms come from the BPF "
        "monitors, trace or scx)\n",
        snap.get_string("monitor", "?"));
  for (const Value& c : cores->items()) {
    const std::int64_t cpu = c.get_int("cpu", -1);
    const Value* oh = c.find("offcpu_hist");
    const Value* wh = c.find("wake_lat_hist");
    out += RenderOneHist(oh != nullptr ? *oh : Value::array(), unit,
                         absl::StrFormat("cpu = %d: off-CPU time of Ms blocked while holding a P, "
                                         "%d samples",
                                         cpu, oh != nullptr ? HistCount(*oh) : 0));
    out += "\n";
    out += RenderOneHist(wh != nullptr ? *wh : Value::array(), unit,
                         absl::StrFormat("cpu = %d: wake-to-run latency of Ms, %d samples", cpu,
                                         wh != nullptr ? HistCount(*wh) : 0));
    out += "\n";
  }
  return out;
}

// ---- trace ----

namespace {

constexpr std::int64_t kPTidBase = 1;        // P p's track: tid 1 + p
constexpr std::int64_t kMTidBase = 100000;   // M m's track: tid 100000 + m
constexpr std::int64_t kCounterTid = 0;

struct Slice {
  std::int64_t start, end;
  std::string name;
  Value args;
};

// One track: at most one open slice; opening another closes it first, so the slices of a
// track never overlap (Perfetto's rule, and chrome://tracing's).
struct Track {
  std::optional<Slice> open;
  std::vector<Slice> done;
  bool seen = false;  // any event yet (a first "end" event means it began before the window)
  std::int64_t last_ts = 0;

  void Close(std::int64_t t) {
    if (!open) return;
    open->end = std::max(t, open->start);
    done.push_back(std::move(*open));
    open.reset();
  }
  void Open(std::int64_t t, std::string name, Value args) {
    Close(t);
    open = Slice{t, t, std::move(name), std::move(args)};
  }
};

double Us(std::int64_t ns_rel) { return static_cast<double>(ns_rel) / 1000.0; }

}  // namespace

Value ConvertTrace(const Value& stop, const Value& snap, int pid, const std::string& comm,
                   TraceSummary* summary) {
  TraceSummary sum;
  sum.monitor = snap.get_string("monitor", "?");
  sum.dropped = stop.get_int("dropped", 0);
  // Events in time order; equal timestamps keep the server's order (per-P buffers are merged
  // by the server, and within a P its order is causal).
  std::vector<std::pair<std::int64_t, const Value*>> keyed;
  if (const Value* e = stop.find("events"))
    for (const Value& ev : e->items())
      if (ev.is_object() && ev.find("ts") != nullptr) keyed.emplace_back(ev.get_int("ts"), &ev);
  std::vector<size_t> order(keyed.size());
  for (size_t i = 0; i < order.size(); i++) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return std::pair(keyed[a].first, a) < std::pair(keyed[b].first, b);
  });
  std::vector<const Value*> evs;
  for (size_t i : order) evs.push_back(keyed[i].second);
  sum.events = static_cast<std::int64_t>(evs.size());
  const std::int64_t t0 = stop.get_int("start_ns", evs.empty() ? 0 : evs.front()->get_int("ts"));
  const std::int64_t t1 =
      std::max(t0, stop.get_int("end_ns", evs.empty() ? t0 : evs.back()->get_int("ts")));
  sum.window_ns = t1 - t0;
  // Dropped events: a P's buffer filled, and that P recorded nothing after it. Each track then
  // ends at its own last event, so a G is not shown running through a span nothing recorded.
  const bool clip_to_last = sum.dropped > 0;

  std::map<std::int64_t, Track> ptracks, mtracks;
  std::map<std::int64_t, std::int64_t> runq;      // P -> its last sampled run-queue length
  std::map<std::int64_t, std::int64_t> block_ts;  // M -> ts of its m_block not yet woken
  std::vector<std::pair<std::int64_t, Value>> events;  // (ts relative to t0, event)
  events.reserve(evs.size() * 2);
  auto rel = [&](std::int64_t ts) { return std::clamp(ts, t0, t1) - t0; };
  auto base = [&](const std::string& name, const char* ph, std::int64_t ts, std::int64_t tid) {
    Value c = Value::object();
    c.set("name", name);
    c.set("cat", "sched");
    c.set("ph", ph);
    c.set("ts", Us(rel(ts)));
    c.set("pid", pid);
    c.set("tid", tid);
    return std::pair(rel(ts), std::move(c));
  };
  auto counter = [&](std::int64_t ts, const std::string& name, Value args) {
    auto c = base(name, "C", ts, kCounterTid);
    c.second.set("args", std::move(args));
    events.push_back(std::move(c));
  };
  auto instant = [&](std::int64_t ts, std::int64_t tid, const std::string& name, Value args) {
    auto c = base(name, "i", ts, tid);
    c.second.set("s", "t");
    c.second.set("args", std::move(args));
    events.push_back(std::move(c));
  };
  std::int64_t last_running = -1, last_runnable = -1, last_blocked = -1, last_spinning = -1;
  auto goroutine_counter = [&](std::int64_t ts) {
    std::int64_t running = 0, runnable = 0;
    for (auto& [p, t] : ptracks) running += t.open.has_value();
    for (auto& [p, n] : runq) runnable += n;
    if (running == last_running && runnable == last_runnable) return;
    last_running = running;
    last_runnable = runnable;
    Value a = Value::object();
    a.set("running", running);
    a.set("runnable", runnable);
    counter(ts, "Goroutines", std::move(a));
  };
  auto thread_counter = [&](std::int64_t ts) {
    std::int64_t blocked = 0, spinning = 0;
    for (auto& [m, t] : mtracks)
      if (t.open) {
        blocked += t.open->name == "blocked in kernel";
        spinning += t.open->name == "spinning";
      }
    if (blocked == last_blocked && spinning == last_spinning) return;
    last_blocked = blocked;
    last_spinning = spinning;
    Value a = Value::object();
    a.set("blocked", blocked);
    a.set("spinning", spinning);
    counter(ts, "Threads", std::move(a));
  };
  // A state that ends at this event but began before the window: open it at the window start.
  auto began_before = [&](Track* t, const std::string& name) {
    if (t != nullptr && !t->open && !t->seen) t->Open(t0, name, Value::object());
  };
  auto close_if = [](Track* t, std::string_view name, std::int64_t ts) {
    if (t != nullptr && t->open && t->open->name == name) t->Close(ts);
  };

  for (const Value* ev : evs) {
    const std::int64_t ts = std::clamp(ev->get_int("ts"), t0, t1);
    const std::string kind = ev->get_string("ev");
    const std::int64_t p = ev->get_int("p", -1), m = ev->get_int("m", -1),
                       g = ev->get_int("g", -1);
    Track* pt = p >= 0 ? &ptracks[p] : nullptr;
    Track* mt = m >= 0 ? &mtracks[m] : nullptr;
    if (kind == "g_run") {
      if (pt != nullptr) {
        Value a = Value::object();
        a.set("g", g);
        a.set("m", m);
        pt->Open(ts, absl::StrCat("G", g), std::move(a));
      }
      if (mt != nullptr) {
        Value a = Value::object();
        a.set("g", g);
        a.set("p", p);
        mt->Open(ts, "running", std::move(a));
      }
      goroutine_counter(ts);
    } else if (kind == "g_stop") {
      began_before(pt, absl::StrCat("G", g));
      began_before(mt, "running");
      if (pt != nullptr && pt->open) {
        pt->open->args.set("stop", ev->get_string("arg", ""));
        pt->Close(ts);
      }
      close_if(mt, "running", ts);
      goroutine_counter(ts);
    } else if (kind == "m_block") {
      if (mt != nullptr) {
        Value a = Value::object();
        if (mt->open && mt->open->name == "running") a.set("g", mt->open->args.get_int("g", -1));
        if (p >= 0) a.set("p", p);
        mt->Open(ts, "blocked in kernel", std::move(a));
        block_ts[m] = ts;
      }
      thread_counter(ts);
    } else if (kind == "m_wake") {
      began_before(mt, "blocked in kernel");
      close_if(mt, "blocked in kernel", ts);
      block_ts.erase(m);
      thread_counter(ts);
    } else if (kind == "m_spin_start") {
      if (mt != nullptr) mt->Open(ts, "spinning", Value::object());
      thread_counter(ts);
    } else if (kind == "m_spin_end") {
      began_before(mt, "spinning");
      close_if(mt, "spinning", ts);
      thread_counter(ts);
    } else if (kind == "m_idle") {
      if (mt != nullptr) mt->Close(ts);
      thread_counter(ts);
    } else if (kind == "steal") {
      Value a = Value::object();
      a.set("victim_p", ev->get_int("arg", -1));
      a.set("goroutines", g);
      if (p >= 0) instant(ts, kPTidBase + p, "steal", std::move(a));
    } else if (kind == "handoff") {
      const std::int64_t from = ev->get_int("arg", -1);
      Value a = Value::object();
      a.set("from_m", from);
      a.set("to_m", m);
      if (auto it = block_ts.find(from); it != block_ts.end()) {
        const std::int64_t lat = ts - it->second;
        sum.handoff_lat_ns.push_back(static_cast<std::uint64_t>(std::max<std::int64_t>(0, lat)));
        a.set("block_to_handoff_ns", lat);
        block_ts.erase(it);
      }
      sum.handoffs++;
      if (p >= 0) instant(ts, kPTidBase + p, "handoff", std::move(a));
    } else if (kind == "runq") {
      if (p >= 0) {
        runq[p] = ev->get_int("arg", 0);
        Value a = Value::object();
        a.set("goroutines", runq[p]);
        counter(ts, absl::StrFormat("P%d runq", p), std::move(a));
        goroutine_counter(ts);
      }
    }
    // m_busy and unknown kinds carry no slice of their own.
    if (pt != nullptr) {
      pt->seen = true;
      pt->last_ts = ts;
    }
    if (mt != nullptr) {
      mt->seen = true;
      mt->last_ts = ts;
    }
  }

  // Close what is still open at the window's end, then emit each track's slices as X events.
  // Adjacent slices (one ends where the next begins) are separated by 1 ns, and empty slices
  // dropped: a viewer that rounds ts and dur separately then never sees two slices overlap.
  Value meta = Value::array();
  auto add_meta = [&](const char* name, std::int64_t tid, Value args) {
    Value c = Value::object();
    c.set("name", name);
    c.set("ph", "M");
    c.set("pid", pid);
    c.set("tid", tid);
    c.set("args", std::move(args));
    meta.push(std::move(c));
  };
  {
    Value a = Value::object();
    a.set("name", absl::StrFormat("kgmp %s (pid %d)", comm, pid));
    add_meta("process_name", kCounterTid, std::move(a));
  }
  auto emit_track = [&](Track& t, std::int64_t tid) {
    t.Close(clip_to_last ? t.last_ts : t1);
    for (size_t i = 0; i < t.done.size(); i++) {
      Slice& s = t.done[i];
      std::int64_t end = s.end;
      if (i + 1 < t.done.size()) end = std::min(end, t.done[i + 1].start - 1);
      if (end <= s.start) continue;
      auto x = base(s.name, "X", s.start, tid);
      x.second.set("dur", Us(end - s.start));
      if (!s.args.members().empty()) x.second.set("args", std::move(s.args));
      events.push_back(std::move(x));
      sum.slices++;
    }
  };
  const Value* procs = snap.find("procs");
  const Value* ms = snap.find("ms");
  for (auto& [p, t] : ptracks) {
    const Value* pv = FindBy(procs, "id", p);
    const std::int64_t cpu = pv != nullptr ? pv->get_int("cpu", -1) : -1;
    Value a = Value::object();
    a.set("name", cpu >= 0 ? absl::StrFormat("P%d (cpu %d)", p, cpu) : absl::StrFormat("P%d", p));
    add_meta("thread_name", kPTidBase + p, std::move(a));
    Value si = Value::object();
    si.set("sort_index", kPTidBase + p);
    add_meta("thread_sort_index", kPTidBase + p, std::move(si));
    emit_track(t, kPTidBase + p);
  }
  for (auto& [m, t] : mtracks) {
    const Value* mv = FindBy(ms, "id", m);
    const std::int64_t tid = mv != nullptr ? mv->get_int("tid", -1) : -1;
    Value a = Value::object();
    a.set("name", tid > 0 ? absl::StrFormat("M%d tid %d", m, tid) : absl::StrFormat("M%d", m));
    add_meta("thread_name", kMTidBase + m, std::move(a));
    Value si = Value::object();
    si.set("sort_index", kMTidBase + m);
    add_meta("thread_sort_index", kMTidBase + m, std::move(si));
    emit_track(t, kMTidBase + m);
  }
  // Time order overall (so per track too); metadata first.
  std::vector<size_t> idx(events.size());
  for (size_t i = 0; i < idx.size(); i++) idx[i] = i;
  std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) {
    return std::pair(events[a].first, a) < std::pair(events[b].first, b);
  });
  Value all = Value::array();
  Value::Array& out = all.mutable_items();
  out.reserve(meta.items().size() + events.size());
  for (const Value& v : meta.items()) out.push_back(v);
  for (size_t i : idx) out.push_back(std::move(events[i].second));

  Value doc = Value::object();
  doc.set("traceEvents", std::move(all));
  doc.set("displayTimeUnit", "ns");
  Value other = Value::object();
  other.set("producer", "kgmpstat trace");
  other.set("pid", pid);
  other.set("monitor", sum.monitor);
  other.set("start_ns", t0);
  other.set("end_ns", t1);
  other.set("events", sum.events);
  other.set("dropped_events", sum.dropped);
  doc.set("otherData", std::move(other));
  if (summary != nullptr) *summary = std::move(sum);
  return doc;
}

std::string RenderHandoffSummary(const TraceSummary& s) {
  std::vector<std::uint64_t> v = s.handoff_lat_ns;
  std::sort(v.begin(), v.end());
  auto q = [&](double f) -> std::string {
    if (v.empty()) return "-";
    size_t i = static_cast<size_t>(std::ceil(f * static_cast<double>(v.size()))) - 1;
    return FormatDuration(v[std::min(i, v.size() - 1)]);
  };
  std::string out = absl::StrFormat(
      "hand-offs: %d (recorded block -> hand-off over %d matched, i.e. kgmp::blocking() entries: "
      "p50 %s, p99 %s, max %s), monitor=%s\n",
      s.handoffs, v.size(), q(0.5), q(0.99), v.empty() ? "-" : FormatDuration(v.back()),
      s.monitor);
  if (s.dropped > 0)
    absl::StrAppendFormat(&out,
                          "note: %d events were dropped (a P's trace buffer filled); each track "
                          "ends at its last recorded event (raise --max_events or shorten "
                          "--seconds)\n",
                          s.dropped);
  return out;
}

}  // namespace kgmpstat
