// kgmpstat — read a running kgmp process's scheduler telemetry from outside it.
//
// Design: the process serves a UNIX socket speaking the scx_stats line protocol
// (userspace/telemetry/stats_protocol.h); kgmpstat is a thin client. client.* finds the socket
// and turns every failure into one actionable line; views.* renders the answers (table,
// Prometheus text, runqlat histograms, Chrome trace JSON) as pure functions, so the tests can
// check them on fixed input. This file only parses the command line and sequences requests.
//
// Exit status: 0 done, 1 the target could not be read (each cause its own message), 2 usage.
// Flags are Abseil flags and may come before or after the subcommand and PID.
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "kgmpstat/client.h"
#include "kgmpstat/json.h"
#include "kgmpstat/views.h"

ABSL_FLAG(double, interval, 1.0, "top: seconds between refreshes");
ABSL_FLAG(int, count, 0, "top: stop after this many refreshes (0: until interrupted)");
ABSL_FLAG(double, seconds, 5.0, "trace: how long to record");
ABSL_FLAG(std::string, o, "", "trace: the output file (Chrome trace-event JSON)");
ABSL_FLAG(int, max_events, 200000,
          "trace: the process keeps at most this many events (the rest are counted as dropped)");
ABSL_FLAG(std::string, per, "p", "hist: 'p' (scheduling latency per P) or 'core' (off-CPU time "
                                 "and wake-to-run latency per CPU)");
ABSL_FLAG(bool, ms, false, "hist: milliseconds instead of microseconds");
ABSL_FLAG(bool, ns, false, "hist: nanoseconds (the buckets' own unit)");
ABSL_FLAG(double, window, 0,
          "hist: histogram of the next WINDOW seconds only (0: everything since the process's "
          "kgmp::run() started)");
ABSL_FLAG(double, timeout, 2.0, "seconds to wait for each answer before calling the process hung");
ABSL_FLAG(bool, clear, true, "top: clear the screen before each refresh when stdout is a terminal");

namespace {

using kgmpstat::Connection;
namespace json = kgmpstat::json;

constexpr const char* kUsage = R"(reads a running kgmp process's scheduler telemetry.

Usage: kgmpstat SUBCOMMAND [PID] [flags]

A kgmp process serves its statistics on a UNIX socket (owner-only) while kgmp::run() runs;
kgmpstat connects to it. Run it as the same user as the process, or as root.

Subcommands
  kgmpstat list
      Running kgmp processes: PID, COMMAND, MONITOR (how the kernel reports blocking: scx,
      trace or poll), GOMAXPROCS (Ps), GOROUTINES. A socket whose process is gone or does not
      answer is listed as STALE, with the command that removes it.
  kgmpstat top PID [--interval=1] [--count=N]
      A live per-core table, redrawn every --interval seconds. One row per core (a P's CPU):
        CORE     the CPU;  P  the processor bound to it;  M, TID  the thread holding that P
        STATE    that M: running | spinning (looking for work) | idle | blocked (in the kernel)
        CURG     the goroutine running on the P now (G<id>, - when none)
        RUNQ     goroutines waiting in the P's local run queue
        STEAL/s  successful steals by this P from others, per second
        HOFF/s   hand-offs: times per second this P was taken from its M because the M
                 blocked in the kernel (what the monitor exists for)
        PREEMPT/s  goroutines preempted on this P per second: they ran longer than the
                 preemption slice (KGMP_PREEMPT_SLICE, 10ms) while others waited for it
        P99LAT   99th percentile scheduling latency (runnable -> running) over the interval;
                 power-of-two buckets, so "<16.4us" means under 2^14 ns
        BUSY%    time the P ran goroutines;  BLKD%  time its M was blocked in the kernel
                 holding a P (a leading ~ means estimated from the off-CPU histogram)
        MONITOR  the blocking monitor of the process
      Rates are over the last interval (the first frame: since the process started).
  kgmpstat json PID
      One snapshot, pretty-printed JSON: totals since start, per-P ("procs"), per-core
      ("cores") and per-M ("ms") objects (fields: userspace/telemetry/stats_protocol.h).
  kgmpstat prom PID
      The same snapshot as Prometheus text (kgmp_ prefix, seconds, counters end in _total,
      histograms as _bucket{le}/_sum/_count, labels proc= and cpu=); feed it to
      node_exporter's textfile collector, e.g.
        kgmpstat prom 1234 > /var/lib/node_exporter/kgmp.prom.$$ && mv ... kgmp.prom
  kgmpstat hist PID [--per=p|core] [--ms|--ns] [--window=S]
      runqlat-style histograms: --per=p scheduling latency per P; --per=core off-CPU time of
      Ms blocked while holding a P, and wake-to-run latency, per CPU (BPF monitors only).
      Rows are power-of-two nanosecond buckets shown in usecs (or msecs) rounded down.
  kgmpstat trace PID --seconds=S -o FILE
      Record S seconds of scheduler events and write Chrome trace-event JSON: a track per P
      (a slice per goroutine run, G<id>), a track per M (running / blocked in kernel /
      spinning), counters (Goroutines, Threads, P<i> runq) and instants (steal, handoff).
      Open it at ui.perfetto.dev (Open trace file) or chrome://tracing. Also prints the
      hand-off summary: the count, and block -> hand-off p50/p99 for the recorded blocks
      (kgmp::blocking() calls; kernel-reported ones: the handoff_lat_hist of `json`).

Examples
  kgmpstat list
  kgmpstat top 1234                      # Ctrl-C to stop
  kgmpstat top 1234 --interval=0.5 --count=10
  kgmpstat json 1234 | python3 -m json.tool
  kgmpstat hist 1234 --per=core --window=5
  kgmpstat trace 1234 --seconds=3 -o /tmp/kgmp.json

Where the socket is: $KGMP_RUNTIME_DIR/<pid>.sock when set (set it here too if the process
had it), else $XDG_RUNTIME_DIR/kgmp, /run/kgmp (root), /tmp/kgmp-<uid>.
Exit status: 0 ok, 1 the process could not be read (the message says why), 2 bad usage.)";

int Fail(const std::string& msg) {
  std::fprintf(stderr, "kgmpstat: %s\n", msg.c_str());
  return 1;
}
int Usage(const std::string& msg) {
  std::fprintf(stderr, "kgmpstat: %s (kgmpstat --help explains)\n", msg.c_str());
  return 2;
}

// The PID argument of a subcommand: present, a positive integer.
bool ParsePid(const std::vector<char*>& args, const char* sub, int* pid, int* rc) {
  if (args.size() < 3) {
    *rc = Usage(absl::StrFormat("%s: missing PID (usage: kgmpstat %s PID)", sub, sub));
    return false;
  }
  if (args.size() > 3) {
    *rc = Usage(absl::StrFormat("%s: unexpected argument '%s'", sub, args[3]));
    return false;
  }
  if (!absl::SimpleAtoi(args[2], pid) || *pid <= 0) {
    *rc = Usage(absl::StrFormat("%s: bad PID '%s': want a process id (a positive integer)", sub,
                                args[2]));
    return false;
  }
  return true;
}

absl::Duration Timeout() { return absl::Seconds(std::max(0.05, absl::GetFlag(FLAGS_timeout))); }

int CmdList() {
  std::vector<kgmpstat::SocketEntry> socks = kgmpstat::ListSockets();
  if (socks.empty()) {
    std::printf("no kgmp processes (no <pid>.sock in %s)\n",
                absl::StrJoin(kgmpstat::RuntimeDirs(), ", ").c_str());
    return 0;
  }
  std::printf("%-8s %-16s %-8s %10s %10s  %s\n", "PID", "COMMAND", "MONITOR", "GOMAXPROCS",
              "GOROUTINES", "SOCKET");
  for (const auto& s : socks) {
    std::string status;
    if (!kgmpstat::ProcessAlive(s.pid)) {
      std::printf("%-8d %-16s %-8s %10s %10s  %s STALE: process gone; remove with: rm %s\n",
                  s.pid, "-", "-", "-", "-", s.path.c_str(), s.path.c_str());
      continue;
    }
    absl::StatusOr<Connection> c =
        Connection::OpenPath(s.pid, s.path, std::min(Timeout(), absl::Seconds(1)));
    absl::StatusOr<json::Value> snap =
        c.ok() ? c->Request("stats", [] {
          json::Value a = json::Value::object();
          a.set("target", "top");
          return a;
        }())
               : absl::StatusOr<json::Value>(c.status());
    if (!snap.ok()) {
      std::printf("%-8d %-16s %-8s %10s %10s  %s STALE: %s\n", s.pid,
                  kgmpstat::ProcessName(s.pid).c_str(), "-", "-", "-", s.path.c_str(),
                  std::string(snap.status().message()).c_str());
      continue;
    }
    std::printf("%-8d %-16s %-8s %10lld %10lld  %s\n", s.pid, kgmpstat::ProcessName(s.pid).c_str(),
                snap->get_string("monitor", "?").c_str(),
                static_cast<long long>(snap->get_int("gomaxprocs", -1)),
                static_cast<long long>(snap->get_int("goroutines", -1)), s.path.c_str());
  }
  return 0;
}

json::Value StatsArgs() {
  json::Value a = json::Value::object();
  a.set("target", "top");
  return a;
}

absl::StatusOr<json::Value> OneSnapshot(int pid) {
  absl::StatusOr<Connection> c = Connection::Open(pid, Timeout());
  if (!c.ok()) return c.status();
  return c->Request("stats", StatsArgs());
}

int CmdTop(int pid) {
  absl::StatusOr<Connection> c = Connection::Open(pid, Timeout());
  if (!c.ok()) return Fail(std::string(c.status().message()));
  const int count = absl::GetFlag(FLAGS_count);
  const absl::Duration interval = absl::Seconds(std::max(0.05, absl::GetFlag(FLAGS_interval)));
  const bool clear = absl::GetFlag(FLAGS_clear) && isatty(STDOUT_FILENO);
  const std::string comm = kgmpstat::ProcessName(pid);
  for (int i = 0; count == 0 || i < count; i++) {
    if (i > 0) absl::SleepFor(interval);
    absl::StatusOr<json::Value> snap = c->Request("stats", StatsArgs());
    if (!snap.ok()) return Fail(std::string(snap.status().message()));
    std::string frame = kgmpstat::RenderTop(*snap, pid, comm);
    if (clear) frame = "\033[H\033[2J" + frame;
    else if (i > 0) frame = "\n" + frame;
    std::fwrite(frame.data(), 1, frame.size(), stdout);
    std::fflush(stdout);
  }
  return 0;
}

int CmdJson(int pid) {
  absl::StatusOr<json::Value> snap = OneSnapshot(pid);
  if (!snap.ok()) return Fail(std::string(snap.status().message()));
  std::printf("%s\n", json::Write(*snap, /*pretty=*/true).c_str());
  return 0;
}

int CmdProm(int pid) {
  absl::StatusOr<json::Value> snap = OneSnapshot(pid);
  if (!snap.ok()) return Fail(std::string(snap.status().message()));
  std::fputs(kgmpstat::RenderProm(*snap).c_str(), stdout);
  return 0;
}

int CmdHist(int pid) {
  const std::string per = absl::GetFlag(FLAGS_per);
  if (per != "p" && per != "core") return Usage(absl::StrFormat("hist: --per must be 'p' or 'core', not '%s'", per));
  if (absl::GetFlag(FLAGS_ms) && absl::GetFlag(FLAGS_ns)) return Usage("hist: --ms and --ns exclude each other");
  kgmpstat::HistUnit unit = absl::GetFlag(FLAGS_ms)   ? kgmpstat::HistUnit::kMsecs
                            : absl::GetFlag(FLAGS_ns) ? kgmpstat::HistUnit::kNsecs
                                                      : kgmpstat::HistUnit::kUsecs;
  absl::StatusOr<Connection> c = Connection::Open(pid, Timeout());
  if (!c.ok()) return Fail(std::string(c.status().message()));
  absl::StatusOr<json::Value> snap = c->Request("stats", StatsArgs());
  const double window = absl::GetFlag(FLAGS_window);
  if (snap.ok() && window > 0) {
    absl::SleepFor(absl::Seconds(window));
    snap = c->Request("stats", StatsArgs());  // its "delta" covers the window
  }
  if (!snap.ok()) return Fail(std::string(snap.status().message()));
  std::fputs(kgmpstat::RenderHist(*snap, per == "p" ? kgmpstat::HistPer::kP : kgmpstat::HistPer::kCore,
                                  unit, window > 0)
                 .c_str(),
             stdout);
  return 0;
}

int CmdTrace(int pid) {
  const std::string out = absl::GetFlag(FLAGS_o);
  const double seconds = absl::GetFlag(FLAGS_seconds);
  if (out.empty()) return Usage("trace: -o FILE is required");
  if (!(seconds > 0) || seconds > 3600) return Usage("trace: --seconds must be in (0, 3600]");
  // Fail on an unwritable output before recording, not after.
  {
    std::ofstream probe(out, std::ios::app);
    if (!probe) return Fail(absl::StrFormat("cannot write %s: %s", out, std::strerror(errno)));
  }
  absl::StatusOr<Connection> c = Connection::Open(pid, Timeout());
  if (!c.ok()) return Fail(std::string(c.status().message()));
  json::Value a = json::Value::object();
  a.set("max_events", absl::GetFlag(FLAGS_max_events));
  if (absl::StatusOr<json::Value> r = c->Request("trace_start", std::move(a)); !r.ok())
    return Fail(std::string(r.status().message()));
  absl::SleepFor(absl::Seconds(seconds));
  absl::StatusOr<json::Value> stop = c->Request("trace_stop");
  if (!stop.ok()) return Fail(std::string(stop.status().message()));
  absl::StatusOr<json::Value> snap = c->Request("stats", StatsArgs());
  if (!snap.ok()) return Fail(std::string(snap.status().message()));
  kgmpstat::TraceSummary sum;
  json::Value doc = kgmpstat::ConvertTrace(*stop, *snap, pid, kgmpstat::ProcessName(pid), &sum);
  {
    std::ofstream f(out, std::ios::trunc);
    f << json::Write(doc) << "\n";
    if (!f) return Fail(absl::StrFormat("cannot write %s: %s", out, std::strerror(errno)));
  }
  std::printf("%s", kgmpstat::RenderHandoffSummary(sum).c_str());
  std::printf("trace: %lld events (%lld dropped) -> %lld slices in %s\n",
              static_cast<long long>(sum.events), static_cast<long long>(sum.dropped),
              static_cast<long long>(sum.slices), out.c_str());
  std::printf("open it at https://ui.perfetto.dev (Open trace file) or in chrome://tracing\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::FlagsUsageConfig cfg;
  cfg.contains_help_flags = [](absl::string_view file) {
    return file.find("kgmpstat") != absl::string_view::npos;
  };
  cfg.contains_helpshort_flags = cfg.contains_help_flags;
  cfg.normalize_filename = [](absl::string_view file) {  // no build paths in --help
    size_t slash = file.rfind('/');
    return std::string(slash == absl::string_view::npos ? file : file.substr(slash + 1));
  };
  cfg.version_string = [] { return std::string("kgmpstat (kgmp 0.1)\n"); };
  absl::SetFlagsUsageConfig(cfg);
  absl::SetProgramUsageMessage(kUsage);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2) return Usage("missing subcommand (list, top, json, prom, hist, trace)");
  const std::string sub = args[1];
  if (sub == "list") {
    if (args.size() > 2) return Usage(absl::StrFormat("list: unexpected argument '%s'", args[2]));
    return CmdList();
  }
  int pid = 0, rc = 0;
  if (sub == "top") return ParsePid(args, "top", &pid, &rc) ? CmdTop(pid) : rc;
  if (sub == "json") return ParsePid(args, "json", &pid, &rc) ? CmdJson(pid) : rc;
  if (sub == "prom") return ParsePid(args, "prom", &pid, &rc) ? CmdProm(pid) : rc;
  if (sub == "hist") return ParsePid(args, "hist", &pid, &rc) ? CmdHist(pid) : rc;
  if (sub == "trace") return ParsePid(args, "trace", &pid, &rc) ? CmdTrace(pid) : rc;
  return Usage(absl::StrFormat("unknown subcommand '%s' (list, top, json, prom, hist, trace)", sub));
}
