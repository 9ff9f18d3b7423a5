// validators.h — independent checkers for kgmpstat's two machine-read outputs, written from the
// formats' specifications rather than from kgmpstat's writers:
//
//   ValidateProm:  the Prometheus text exposition format 0.0.4, line by line: metric and label
//                  name grammar, quoted label values and their escapes, float values, HELP and
//                  TYPE once per family and before its samples, a family's samples contiguous,
//                  no duplicate series; plus the naming rules we promise (kgmp_ prefix, counters
//                  and only counters end in _total) and histogram integrity (le increasing,
//                  cumulative counts non-decreasing, a final +Inf bucket equal to _count, _sum).
//   ValidateTrace: the Chrome trace-event format as Perfetto and chrome://tracing load it:
//                  {"traceEvents":[...],"displayTimeUnit":"ns"}, every event's required fields
//                  per phase, ts non-decreasing per track, every B closed by an E, slices on a
//                  track strictly nested (Perfetto rejects overlaps), names for every track.
//   MissingProcFields / MissingProcFamilies: the per-P counters stats_protocol.h promises in
//                  every "procs" object (and its "delta" twin), and the kgmp_proc_ counter
//                  families prom derives from them.
// Both return the list of problems (empty: valid) so a failing test prints all of them.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "kgmpstat/json.h"

namespace kgmpstat::testing {

inline bool IsNameStart(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
}
inline bool IsNameChar(char c) { return IsNameStart(c) || (c >= '0' && c <= '9'); }

inline bool ParsePromFloat(const std::string& s, double* v) {
  if (s == "+Inf" || s == "Inf") { *v = INFINITY; return true; }
  if (s == "-Inf") { *v = -INFINITY; return true; }
  if (s == "NaN") { *v = NAN; return true; }
  return absl::SimpleAtod(s, v) && !s.empty() && s.find_first_of(" \t") == std::string::npos;
}

struct PromReport {
  std::vector<std::string> errors;
  std::set<std::string> families;
  std::map<std::string, std::string> types;
  int samples = 0;
};

inline PromReport ValidateProm(const std::string& text) {
  PromReport r;
  auto err = [&](int line, const std::string& msg) {
    r.errors.push_back(absl::StrCat("line ", line, ": ", msg));
  };
  if (text.empty() || text.back() != '\n') r.errors.push_back("the text must end with a newline");
  struct Fam {
    bool help = false, type = false, has_samples = false, closed = false;
    std::string kind;
  };
  std::map<std::string, Fam> fams;
  std::string current;
  std::set<std::string> series;
  struct HistSeries {
    std::vector<std::pair<double, double>> buckets;  // (le, cumulative count)
    bool has_sum = false, has_count = false;
    double count = -1;
  };
  std::map<std::string, HistSeries> hists;  // family + labels without le

  std::vector<std::string> lines = absl::StrSplit(text, '\n');
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  for (size_t i = 0; i < lines.size(); i++) {
    const int ln = static_cast<int>(i) + 1;
    const std::string& l = lines[i];
    if (l.empty()) { err(ln, "empty line"); continue; }
    if (l[0] == '#') {
      std::vector<std::string> t = absl::StrSplit(l, absl::MaxSplits(' ', 3));
      if (t.size() >= 3 && (t[1] == "HELP" || t[1] == "TYPE")) {
        const std::string& name = t[2];
        if (name.empty() || !IsNameStart(name[0]) ||
            !std::all_of(name.begin(), name.end(), IsNameChar))
          err(ln, "bad metric name '" + name + "'");
        Fam& f = fams[name];
        if (f.has_samples) err(ln, t[1] + " for " + name + " after its samples");
        if (t[1] == "HELP") {
          if (f.help) err(ln, "second HELP for " + name);
          if (t.size() < 4 || t[3].empty()) err(ln, "empty HELP for " + name);
          f.help = true;
        } else {
          if (f.type) err(ln, "second TYPE for " + name);
          f.type = true;
          f.kind = t.size() >= 4 ? t[3] : "";
          static const std::set<std::string> kinds = {"counter", "gauge", "histogram",
                                                      "summary", "untyped"};
          if (!kinds.count(f.kind)) err(ln, "bad TYPE '" + f.kind + "'");
          r.types[name] = f.kind;
        }
        r.families.insert(name);
      }
      continue;
    }
    // A sample: name [{labels}] value [timestamp]
    size_t p = 0;
    if (!IsNameStart(l[0])) { err(ln, "sample does not start with a metric name"); continue; }
    while (p < l.size() && IsNameChar(l[p])) p++;
    const std::string name = l.substr(0, p);
    std::map<std::string, std::string> labels;
    if (p < l.size() && l[p] == '{') {
      p++;
      bool ok = true;
      while (ok && p < l.size() && l[p] != '}') {
        size_t s = p;
        if (!IsNameStart(l[p]) || l[p] == ':') { ok = false; break; }
        while (p < l.size() && (IsNameChar(l[p]) && l[p] != ':')) p++;
        std::string lname = l.substr(s, p - s);
        if (p + 1 >= l.size() || l[p] != '=' || l[p + 1] != '"') { ok = false; break; }
        p += 2;
        std::string val;
        while (p < l.size() && l[p] != '"') {
          if (l[p] == '\\') {
            if (p + 1 >= l.size()) { ok = false; break; }
            char e = l[p + 1];
            if (e == '\\') val += '\\';
            else if (e == '"') val += '"';
            else if (e == 'n') val += '\n';
            else { ok = false; break; }
            p += 2;
          } else {
            val += l[p++];
          }
        }
        if (!ok || p >= l.size()) { ok = false; break; }
        p++;  // closing quote
        if (labels.count(lname)) { err(ln, "duplicate label " + lname); }
        labels[lname] = val;
        if (p < l.size() && l[p] == ',') {
          p++;
          if (p < l.size() && l[p] == '}') { ok = false; break; }  // we never emit a trailing comma
        } else if (p < l.size() && l[p] != '}') {
          ok = false;
        }
      }
      if (!ok || p >= l.size() || l[p] != '}') { err(ln, "bad label set"); continue; }
      p++;
    }
    if (p >= l.size() || l[p] != ' ') { err(ln, "no space before the value"); continue; }
    std::vector<std::string> rest = absl::StrSplit(l.substr(p + 1), ' ');
    double value;
    if (rest.empty() || rest.size() > 2 || !ParsePromFloat(rest[0], &value)) {
      err(ln, "bad value in '" + l + "'");
      continue;
    }
    r.samples++;
    // The sample's family: a histogram's _bucket/_sum/_count belong to the base name.
    std::string fam = name, suffix;
    for (const char* sfx : {"_bucket", "_sum", "_count"}) {
      std::string s = sfx;
      if (name.size() > s.size() && name.ends_with(s)) {
        std::string base = name.substr(0, name.size() - s.size());
        if (fams.count(base) && fams[base].kind == "histogram") {
          fam = base;
          suffix = s;
        }
      }
    }
    Fam& f = fams[fam];
    if (!f.help || !f.type) err(ln, "sample of " + fam + " before its HELP and TYPE");
    if (fam != current) {
      if (f.has_samples) err(ln, "samples of " + fam + " are not contiguous");
      current = fam;
    }
    f.has_samples = true;
    if (fam.rfind("kgmp_", 0) != 0) err(ln, fam + " lacks the kgmp_ prefix");
    if (f.kind == "counter" && !fam.ends_with("_total")) err(ln, "counter " + fam + " must end in _total");
    if (f.kind != "counter" && fam.ends_with("_total")) err(ln, f.kind + " " + fam + " ends in _total");
    if (f.kind == "histogram" && suffix.empty()) err(ln, "histogram sample without a suffix");
    if (f.kind == "counter" && value < 0) err(ln, "negative counter");
    std::string key = name;
    for (auto& [k, v] : labels) absl::StrAppend(&key, ",", k, "=", v);
    if (!series.insert(key).second) err(ln, "duplicate series " + key);
    if (f.kind == "histogram") {
      std::string hk = fam;
      for (auto& [k, v] : labels)
        if (k != "le") absl::StrAppend(&hk, ",", k, "=", v);
      HistSeries& h = hists[hk];
      if (suffix == "_bucket") {
        double le;
        if (!labels.count("le") || !ParsePromFloat(labels["le"], &le)) err(ln, "bucket without a numeric le");
        else h.buckets.emplace_back(le, value);
      } else if (suffix == "_sum") {
        h.has_sum = true;
      } else {
        h.has_count = true;
        h.count = value;
      }
    }
  }
  for (auto& [k, h] : hists) {
    if (h.buckets.empty()) { r.errors.push_back(k + ": no buckets"); continue; }
    for (size_t i = 1; i < h.buckets.size(); i++) {
      if (!(h.buckets[i].first > h.buckets[i - 1].first)) r.errors.push_back(k + ": le not increasing");
      if (h.buckets[i].second < h.buckets[i - 1].second) r.errors.push_back(k + ": bucket counts decrease");
    }
    if (!std::isinf(h.buckets.back().first)) r.errors.push_back(k + ": no +Inf bucket");
    if (!h.has_sum || !h.has_count) r.errors.push_back(k + ": _sum or _count missing");
    if (h.has_count && h.buckets.back().second != h.count) r.errors.push_back(k + ": +Inf bucket != _count");
  }
  for (auto& [name, f] : fams)
    if (!f.help || !f.type) r.errors.push_back(name + ": HELP or TYPE missing");
  return r;
}

// The per-P counters of a "procs" object and of a "delta" "procs" object
// (userspace/telemetry/stats_protocol.h), with the Prometheus counter each becomes.
struct ProcField {
  const char* field;
  const char* family;
};
inline constexpr ProcField kProcCounters[] = {
    {"schedticks", "kgmp_proc_schedticks_total"},
    {"runs", "kgmp_proc_goroutine_runs_total"},
    {"spawns", "kgmp_proc_spawns_total"},
    {"exits", "kgmp_proc_goroutine_exits_total"},
    {"steals", "kgmp_proc_steals_total"},
    {"stolen", "kgmp_proc_stolen_goroutines_total"},
    {"handoffs_in", "kgmp_proc_handoffs_received_total"},
    {"handoffs_out", "kgmp_proc_handoffs_total"},
    {"globrunq_takes", "kgmp_proc_global_runqueue_takes_total"},
    {"parks", "kgmp_proc_parks_total"},
    {"busy_ns", "kgmp_proc_busy_seconds_total"},
    {"idle_ns", "kgmp_proc_idle_seconds_total"},
    {"spin_ns", "kgmp_proc_spin_seconds_total"},
    {"preemptions", "kgmp_proc_preemptions_total"},
};

// The counters `proc` (one element of "procs" or of "delta"."procs") lacks or does not carry
// as a number.
inline std::vector<std::string> MissingProcFields(const json::Value& proc) {
  std::vector<std::string> missing;
  for (const ProcField& f : kProcCounters)
    if (const json::Value* v = proc.find(f.field); v == nullptr || !v->is_number())
      missing.push_back(f.field);
  return missing;
}

// The per-P counter families a prom output lacks (or has with another TYPE than counter).
inline std::vector<std::string> MissingProcFamilies(const PromReport& r) {
  std::vector<std::string> missing;
  for (const ProcField& f : kProcCounters)
    if (auto it = r.types.find(f.family); it == r.types.end() || it->second != "counter")
      missing.push_back(f.family);
  return missing;
}

struct TraceReport {
  std::vector<std::string> errors;
  std::map<std::pair<std::int64_t, std::int64_t>, int> slices_per_track;
  std::map<std::pair<std::int64_t, std::int64_t>, std::string> thread_names;
  std::set<std::int64_t> process_names;
  std::map<std::string, int> by_phase;
  std::set<std::string> counter_names, instant_names;
};

// ts/dur in microseconds -> integer ns as Perfetto reads them (llround(us * 1000)).
inline std::int64_t Ns(const json::Value& v) { return std::llround(v.as_double() * 1000.0); }

inline TraceReport ValidateTrace(const json::Value& doc) {
  TraceReport r;
  auto err = [&](size_t i, const std::string& msg) {
    if (r.errors.size() < 50) r.errors.push_back(absl::StrCat("event ", i, ": ", msg));
  };
  if (!doc.is_object()) { r.errors.push_back("not a JSON object"); return r; }
  if (doc.get_string("displayTimeUnit") != "ns") r.errors.push_back("displayTimeUnit is not \"ns\"");
  const json::Value* evs = doc.find("traceEvents");
  if (evs == nullptr || !evs->is_array()) { r.errors.push_back("no traceEvents array"); return r; }
  using Track = std::pair<std::int64_t, std::int64_t>;
  struct Sl { std::int64_t start, end; };
  std::map<Track, std::vector<Sl>> slices;
  std::map<Track, std::vector<std::int64_t>> open_b;
  std::map<Track, std::int64_t> last_ts;
  std::set<std::int64_t> pids;
  const auto& items = evs->items();
  for (size_t i = 0; i < items.size(); i++) {
    const json::Value& e = items[i];
    if (!e.is_object()) { err(i, "not an object"); continue; }
    const json::Value* name = e.find("name");
    const json::Value* ph = e.find("ph");
    const json::Value* pid = e.find("pid");
    const json::Value* tid = e.find("tid");
    if (name == nullptr || !name->is_string()) err(i, "no string name");
    if (ph == nullptr || !ph->is_string() || ph->as_string().size() != 1) { err(i, "no one-letter ph"); continue; }
    if (pid == nullptr || !pid->is_int() || tid == nullptr || !tid->is_int()) { err(i, "pid/tid not integers"); continue; }
    const char p = ph->as_string()[0];
    r.by_phase[ph->as_string()]++;
    const Track t{pid->as_int(), tid->as_int()};
    pids.insert(t.first);
    if (p == 'M') {
      const std::string n = name != nullptr ? name->as_string() : "";
      const json::Value* args = e.find("args");
      if (n == "process_name" || n == "thread_name") {
        if (args == nullptr || args->get_string("name").empty()) err(i, n + " without args.name");
        else if (n == "process_name") r.process_names.insert(t.first);
        else r.thread_names[t] = args->get_string("name");
      } else if (n != "thread_sort_index" && n != "process_sort_index" && n != "process_labels") {
        err(i, "unknown metadata " + n);
      }
      continue;
    }
    const json::Value* ts = e.find("ts");
    if (ts == nullptr || !ts->is_number() || ts->as_double() < 0) { err(i, "no ts >= 0"); continue; }
    const std::int64_t t_ns = Ns(*ts);
    if (p == 'C') {
      const json::Value* args = e.find("args");
      if (args == nullptr || !args->is_object() || args->members().empty()) err(i, "counter without args");
      else
        for (auto& [k, v] : args->members())
          if (!v.is_number()) err(i, "counter series " + k + " not a number");
      r.counter_names.insert(name->as_string());
      continue;  // counters are process-scoped: no per-track order
    }
    if (auto it = last_ts.find(t); it != last_ts.end() && t_ns < it->second)
      err(i, absl::StrCat("ts goes back on track ", t.first, "/", t.second));
    last_ts[t] = t_ns;
    switch (p) {
      case 'X': {
        const json::Value* dur = e.find("dur");
        if (dur == nullptr || !dur->is_number() || dur->as_double() < 0) { err(i, "X without dur >= 0"); break; }
        slices[t].push_back({t_ns, t_ns + Ns(*dur)});
        break;
      }
      case 'B': open_b[t].push_back(t_ns); break;
      case 'E':
        if (open_b[t].empty()) { err(i, "E without B"); break; }
        slices[t].push_back({open_b[t].back(), t_ns});
        open_b[t].pop_back();
        break;
      case 'i': case 'I': {
        const std::string s = e.get_string("s", "t");
        if (s != "t" && s != "p" && s != "g") err(i, "instant with bad scope");
        r.instant_names.insert(name->as_string());
        break;
      }
      default: err(i, std::string("unexpected ph ") + p);
    }
  }
  for (auto& [t, v] : open_b)
    if (!v.empty()) r.errors.push_back(absl::StrCat("track ", t.first, "/", t.second, ": ", v.size(), " slice(s) never closed"));
  for (auto& [t, v] : slices) {
    r.slices_per_track[t] = static_cast<int>(v.size());
    if (!r.thread_names.count(t)) r.errors.push_back(absl::StrCat("track ", t.first, "/", t.second, " has no thread_name"));
    // Strict nesting: sorted by start (longer first on ties), a slice either starts after the
    // enclosing one ends or ends within it.
    std::sort(v.begin(), v.end(), [](const Sl& a, const Sl& b) {
      return a.start != b.start ? a.start < b.start : a.end > b.end;
    });
    std::vector<Sl> stack;
    for (const Sl& s : v) {
      while (!stack.empty() && stack.back().end <= s.start) stack.pop_back();
      if (!stack.empty() && s.end > stack.back().end)
        r.errors.push_back(absl::StrCat("track ", t.first, "/", t.second, ": slice [", s.start, ",", s.end,
                                        "] overlaps [", stack.back().start, ",", stack.back().end, "]"));
      stack.push_back(s);
    }
  }
  for (std::int64_t pid : pids)
    if (!r.process_names.count(pid)) r.errors.push_back(absl::StrCat("pid ", pid, " has no process_name"));
  return r;
}

}  // namespace kgmpstat::testing
