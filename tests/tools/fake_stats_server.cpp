// fake_stats_server — a stand-in for a kgmp process's stats endpoint, written from
// userspace/telemetry/stats_protocol.h alone, so kgmpstat's tests can drive every answer and
// every failure deterministically (the real process is exercised by workload.cpp's tests).
//
//   fake_stats_server --mode=MODE [--procs=N] [--monitor=trace]
//
// It serves $KGMP_RUNTIME_DIR/<its pid>.sock (one thread per connection), prints "ready" on
// stdout once it listens, and runs until killed. Modes:
//   ok         answers stats, stats_meta, trace_start, trace_stop (a scripted event list with
//              the awkward cases: a G running before the window, a g_run on a P whose G did not
//              stop, a block/hand-off/wake sequence, events outside the window, Ps interleaved)
//   hang       accepts and reads, never answers
//   die        answers stats with half a line, then exits (the socket file stays: stale)
//   nolisten   binds the socket but never listens (connect: refused; the process is alive)
//   refuse     answers every request with errno 22
//   garbage    answers with a line that is not JSON
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "kgmpstat/json.h"
#include "telemetry/stats_protocol.h"

ABSL_FLAG(std::string, mode, "ok", "ok | hang | die | nolisten | refuse | garbage");
ABSL_FLAG(int, procs, 2, "Ps (and cores) in the snapshot");
ABSL_FLAG(std::string, monitor, "trace", "the monitor name in the snapshot");

namespace {

using kgmpstat::json::Value;
namespace tel = kgmp::telemetry;

Value Hist(int seed, int scale) {
  Value h = Value::array();
  for (int i = 0; i < tel::kHistBuckets; i++) {
    int c = 0;
    if (i >= 8 && i <= 20) c = scale * (20 - std::abs(i - (12 + seed % 3)) * 3);
    h.push(c > 0 ? c : 0);
  }
  return h;
}

Value ProcCounters(int id, long k, bool delta) {
  Value p = Value::object();
  p.set("id", id);
  if (!delta) {
    p.set("cpu", id);
    p.set("status", id == 0 ? "running" : "idle");
    p.set("m", id + 1);
    p.set("tid", 40000 + id);
    p.set("curg", id == 0 ? 17 : 0);
    p.set("runq", id == 0 ? 3 : 0);
  }
  const long f = delta ? 1 : k;
  p.set("schedticks", 1000 * f + id);
  p.set("runs", 1200 * f + id);
  p.set("spawns", 50 * f);
  p.set("exits", 45 * f);
  p.set("steals", 20 * f + id);
  p.set("stolen", 35 * f + id);
  p.set("handoffs_in", 2 * f);
  p.set("handoffs_out", 2 * f);
  p.set("globrunq_takes", 5 * f);
  p.set("parks", 7 * f);
  p.set("busy_ns", 800000000L * f / (id + 1));
  p.set("idle_ns", 200000000L * f);
  p.set("spin_ns", 10000000L * f);
  p.set("preemptions", 3 * f + id);
  p.set("lat_hist", Hist(id, static_cast<int>(f)));
  return p;
}

Value CoreCounters(int cpu, long k, bool delta) {
  Value c = Value::object();
  c.set("cpu", cpu);
  if (!delta) c.set("p", cpu);
  const long f = delta ? 1 : k;
  c.set("m_blocks", 3 * f);
  c.set("offcpu_hist", Hist(cpu + 1, static_cast<int>(f)));
  c.set("wake_lat_hist", Hist(cpu + 2, static_cast<int>(f)));
  c.set("ctx_switches", 100 * f);
  c.set("foreign_ns", 1000000L * f);
  return c;
}

Value Snapshot(long k) {
  const int procs = absl::GetFlag(FLAGS_procs);
  Value s = Value::object();
  s.set("pid", static_cast<int>(getpid()));
  s.set("now_ns", 1000000000000L + k * 1000000000L);
  s.set("uptime_ns", k * 1000000000L);
  s.set("monitor", absl::GetFlag(FLAGS_monitor));
  s.set("gomaxprocs", procs);
  s.set("goroutines", 105);
  s.set("threads", procs + 3);
  s.set("idleprocs", procs - 1);
  s.set("spinningthreads", 0);
  s.set("idlethreads", 1);
  s.set("blockedthreads", 1);
  s.set("runqueue", 4);
  s.set("handoffs", 12 * k);
  Value ps = Value::array(), cs = Value::array(), ms = Value::array();
  Value dps = Value::array(), dcs = Value::array();
  for (int i = 0; i < procs; i++) {
    ps.push(ProcCounters(i, k, false));
    dps.push(ProcCounters(i, k, true));
    cs.push(CoreCounters(i, k, false));
    dcs.push(CoreCounters(i, k, true));
  }
  for (int m = 0; m <= procs + 1; m++) {
    Value mv = Value::object();
    mv.set("id", m);
    mv.set("tid", 40000 + m - 1);
    mv.set("p", m >= 1 && m <= procs ? m - 1 : -1);
    mv.set("cpu", m >= 1 && m <= procs ? m - 1 : 0);
    mv.set("state", m == 0 ? "watcher" : m == 1 ? "running" : m <= procs ? "idle" : "blocked");
    mv.set("curg", m == 1 ? 17 : 0);
    ms.push(std::move(mv));
  }
  s.set("procs", std::move(ps));
  s.set("cores", std::move(cs));
  s.set("ms", std::move(ms));
  Value d = Value::object();
  d.set("procs", std::move(dps));
  d.set("cores", std::move(dcs));
  s.set("delta", std::move(d));
  s.set("interval_ns", 1000000000L);
  return s;
}

Value Ev(long ts, const char* ev, int p, int m, long g, Value arg = Value()) {
  Value e = Value::object();
  e.set("ts", ts);
  e.set("ev", ev);
  e.set("p", p);
  e.set("m", m);
  e.set("g", g);
  if (!arg.is_null()) e.set("arg", std::move(arg));
  return e;
}

Value TraceStop() {
  const long t0 = 5000000000L, t1 = t0 + 10000000L;  // a 10 ms window
  Value e = Value::array();
  // Expected (tests/tools/kgmpstat_test.cpp): 21 slices, 2 hand-offs of 20 us each.
  // P1/M2: G9 was running before the window: its first event is a stop.
  e.push(Ev(t0 + 1000, "g_stop", 1, 2, 9, "yield"));
  e.push(Ev(t0 + 500, "g_run", 0, 1, 17));  // out of order on purpose (per-P buffers)
  e.push(Ev(t0 + 400, "runq", 0, 1, 0, 3));
  e.push(Ev(t0 - 900, "g_run", 0, 1, 3));   // before the window: clipped to its start
  e.push(Ev(t0 + 2000, "m_spin_start", -1, 2, 0));
  e.push(Ev(t0 + 3000, "m_spin_end", -1, 2, 0));
  e.push(Ev(t0 + 3000, "steal", 1, 2, 2, 0));
  e.push(Ev(t0 + 3000, "g_run", 1, 2, 21));
  e.push(Ev(t0 + 4000, "m_block", 0, 1, 17));     // G17 blocks in read(): M1 in the kernel
  e.push(Ev(t0 + 24000, "handoff", 0, 3, 0, 1));  // P0 taken from M1 by M3, 20 us later
  e.push(Ev(t0 + 24000, "g_stop", 0, 1, 17, "lost_p"));
  e.push(Ev(t0 + 24500, "g_run", 0, 3, 18));
  e.push(Ev(t0 + 30000, "g_stop", 0, 3, 18, "park"));
  e.push(Ev(t0 + 30000, "runq", 0, 3, 0, 0));
  e.push(Ev(t0 + 30000, "g_run", 0, 3, 22));       // adjacent slices on P0
  e.push(Ev(t0 + 40000, "g_run", 1, 2, 23));       // no stop for G21: closed by this run
  e.push(Ev(t0 + 50000, "m_wake", -1, 1, 17));
  e.push(Ev(t0 + 60000, "g_stop", 1, 2, 23, "exit"));
  e.push(Ev(t0 + 60000, "m_idle", -1, 2, 0));
  e.push(Ev(t0 + 61000, "m_busy", -1, 2, 0));
  e.push(Ev(t0 + 65000, "g_run", 1, 2, 24));
  e.push(Ev(t0 + 70000, "m_block", 1, 2, 24));     // M2 blocks and never wakes in the window
  e.push(Ev(t0 + 90000, "handoff", 1, 4, 0, 2));
  e.push(Ev(t0 + 90000, "g_stop", 1, 2, 24, "lost_p"));
  e.push(Ev(t0 + 95000, "g_run", 1, 4, 30));       // still running at the end: clipped
  e.push(Ev(t1 + 5000, "g_stop", 1, 4, 30, "yield"));  // after the window
  e.push(Ev(t0 + 96000, "mystery_event", 0, 3, 0));    // unknown kinds are ignored
  Value r = Value::object();
  r.set("events", std::move(e));
  r.set("dropped", 2);
  r.set("start_ns", t0);
  r.set("end_ns", t1);
  return r;
}

std::string Answer(int err, Value resp) {
  Value a = Value::object();
  a.set("resp", std::move(resp));
  Value v = Value::object();
  v.set("errno", err);
  v.set("args", std::move(a));
  return kgmpstat::json::Write(v) + "\n";
}

std::string ErrorAnswer(const std::string& msg) {
  Value r = Value::object();
  r.set("error", msg);
  return Answer(tel::kErrnoInvalid, std::move(r));
}

void WriteAll(int fd, const std::string& s) {
  for (size_t off = 0; off < s.size();) {
    ssize_t n = send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;
    off += static_cast<size_t>(n);
  }
}

void Serve(int fd, const std::string& mode) {
  std::string buf;
  long k = 1;
  char tmp[4096];
  for (;;) {
    size_t nl;
    while ((nl = buf.find('\n')) == std::string::npos) {
      ssize_t n = recv(fd, tmp, sizeof tmp, 0);
      if (n <= 0) {
        close(fd);
        return;
      }
      buf.append(tmp, static_cast<size_t>(n));
    }
    std::string line = buf.substr(0, nl);
    buf.erase(0, nl + 1);
    if (mode == "hang") continue;
    if (mode == "garbage") {
      WriteAll(fd, "this is not json\n");
      continue;
    }
    if (mode == "refuse") {
      WriteAll(fd, ErrorAnswer("the fake server refuses everything"));
      continue;
    }
    auto req = kgmpstat::json::Parse(line);
    if (!req.ok() || !req->is_object()) {
      WriteAll(fd, ErrorAnswer("bad JSON"));
      continue;
    }
    const std::string r = req->get_string("req");
    if (r == "stats") {
      std::string a = Answer(0, Snapshot(k++));
      if (mode == "die") {
        WriteAll(fd, a.substr(0, a.size() / 2));
        _exit(3);
      }
      WriteAll(fd, a);
    } else if (r == "stats_meta") {
      Value m = Value::object();
      m.set("_om_prefix", "kgmp_");
      WriteAll(fd, Answer(0, std::move(m)));
    } else if (r == "trace_start") {
      WriteAll(fd, Answer(0, Value::object()));
    } else if (r == "trace_stop") {
      WriteAll(fd, Answer(0, TraceStop()));
    } else {
      WriteAll(fd, ErrorAnswer("unknown request '" + r + "'"));
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string mode = absl::GetFlag(FLAGS_mode);
  const char* dir = std::getenv(tel::kRuntimeDirEnv);
  if (dir == nullptr) {
    std::fprintf(stderr, "fake_stats_server: set %s\n", tel::kRuntimeDirEnv);
    return 2;
  }
  mkdir(dir, 0700);
  const std::string path = absl::StrCat(dir, "/", getpid(), tel::kSocketSuffix);
  unlink(path.c_str());
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    std::perror("bind");
    return 1;
  }
  chmod(path.c_str(), 0600);
  if (mode != "nolisten" && listen(fd, 16) != 0) {
    std::perror("listen");
    return 1;
  }
  std::printf("ready\n");
  std::fflush(stdout);
  if (mode == "nolisten") {
    for (;;) pause();
  }
  for (;;) {
    int c = accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    std::thread(Serve, c, mode).detach();
  }
}
