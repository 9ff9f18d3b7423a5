// server.cpp — the stats endpoint: see server.h for the threading and stats_protocol.h for the
// wire format. This file is the socket plumbing and the JSON of each answer.
//
// The racy protocol: answers are built from take_snapshot() (snapshot.h): tear-free values,
// not a consistent cut. A delta is "this snapshot minus the one this connection got last";
// since every counter only grows within a run, a delta is never negative (the code clamps
// anyway, in case a counter was read mid-way between two Ps' sums).
//
// Rejected: a thread per client (a thread costs more than the whole server, and 64 clients is
// plenty for a debugging endpoint); blocking writes (a stuck client would stall every other);
// SIGPIPE handling by signal mask (MSG_NOSIGNAL is per call and does not touch the process's
// signal state).
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_format.h"
#include "json.h"
#include "kgmp/metrics.h"
#include "sched.h"
#include "snapshot.h"
#include "stats_protocol.h"

namespace kgmp::internal {

using telemetry::Json;
using telemetry::JsonOut;

namespace {
// The live socket's path for telemetry_unlink_socket (written by start() and the destructor;
// read by an exit path of any thread: a torn read at worst unlinks nothing).
char g_sock_path[sizeof(sockaddr_un::sun_path)];
}  // namespace

void telemetry_unlink_socket() {
  if (g_sock_path[0] != '\0') unlink(g_sock_path);
}

std::string stats_dir() {
  if (const char* d = std::getenv(telemetry::kRuntimeDirEnv); d != nullptr && *d != '\0')
    return d;
  if (const char* x = std::getenv("XDG_RUNTIME_DIR"); x != nullptr && *x != '\0')
    return std::string(x) + "/kgmp";
  if (geteuid() == 0) return "/run/kgmp";
  return absl::StrFormat("/tmp/kgmp-%u", geteuid());
}

struct StatsServer::Baseline {
  bool have = false;
  std::int64_t now_ns = 0;
  std::vector<ProcSnap> procs;
  std::vector<CoreSnap> cores;
};

namespace {

constexpr std::size_t kMaxClients = 64;
constexpr std::size_t kMaxLine = 64 * 1024;
constexpr std::size_t kMaxBacklog = 256u << 20;

std::uint64_t sub(std::uint64_t a, std::uint64_t b) { return a > b ? a - b : 0; }

void hist(JsonOut& o, const char* k, const std::uint64_t* h, const std::uint64_t* base) {
  o.key(k).begin_arr();
  for (int i = 0; i < kHistBuckets; i++) o.num(base ? sub(h[i], base[i]) : h[i]);
  o.end_arr();
}

// A P's counters (the "delta" objects carry exactly these, plus "id").
void proc_counters(JsonOut& o, const ProcSnap& p, const ProcSnap* b) {
  auto d = [&](std::uint64_t ProcSnap::*f) { return b ? sub(p.*f, b->*f) : p.*f; };
  o.kv("schedticks", d(&ProcSnap::schedticks)).kv("runs", d(&ProcSnap::runs))
      .kv("spawns", d(&ProcSnap::spawns)).kv("exits", d(&ProcSnap::exits))
      .kv("steals", d(&ProcSnap::steals)).kv("stolen", d(&ProcSnap::stolen))
      .kv("handoffs_in", d(&ProcSnap::handoffs_in)).kv("handoffs_out", d(&ProcSnap::handoffs_out))
      .kv("globrunq_takes", d(&ProcSnap::globtakes)).kv("parks", d(&ProcSnap::parks))
      .kv("busy_ns", d(&ProcSnap::busy_ns)).kv("idle_ns", d(&ProcSnap::idle_ns))
      .kv("spin_ns", d(&ProcSnap::spin_ns)).kv("preemptions", d(&ProcSnap::preemptions));
  hist(o, "lat_hist", p.lat, b ? b->lat : nullptr);
  hist(o, "handoff_lat_hist", p.handoff_lat, b ? b->handoff_lat : nullptr);
}

void core_counters(JsonOut& o, const CoreSnap& c, const CoreSnap* b) {
  auto d = [&](std::uint64_t CoreSnap::*f) { return b ? sub(c.*f, b->*f) : c.*f; };
  o.kv("m_blocks", d(&CoreSnap::m_blocks)).kv("ctx_switches", d(&CoreSnap::ctx_switches))
      .kv("runq_wait_ns", d(&CoreSnap::runq_wait_ns)).kv("foreign_ns", d(&CoreSnap::foreign_ns));
  hist(o, "offcpu_hist", c.offcpu, b ? b->offcpu : nullptr);
  hist(o, "wake_lat_hist", c.wake_lat, b ? b->wake_lat : nullptr);
}

std::string stats_resp(StatsServer::Baseline& prev) {
  Snapshot s = take_snapshot();
  JsonOut o;
  o.begin_obj();
  o.kv("pid", s.pid).kv("now_ns", s.now_ns).kv("uptime_ns", s.uptime_ns).kv("monitor", s.monitor)
      .kv("gomaxprocs", s.gomaxprocs).kv("goroutines", s.goroutines)
      .kv("goroutines_created", s.created).kv("runnable", s.runnable).kv("running", s.running)
      .kv("waiting", s.waiting).kv("threads", s.threads).kv("idleprocs", s.idleprocs)
      .kv("spinningthreads", s.spinningthreads).kv("idlethreads", s.idlethreads)
      .kv("blockedthreads", s.blockedthreads).kv("runqueue", s.runqueue)
      .kv("handoffs", s.handoffs).kv("counters", counters_on ? "on" : "off");
  o.key("procs").begin_arr();
  for (const ProcSnap& p : s.procs) {
    o.begin_obj();
    o.kv("id", p.id).kv("cpu", p.cpu).kv("status", p.status).kv("m", p.m).kv("tid", p.tid)
        .kv("curg", p.curg).kv("runq", p.runq);
    proc_counters(o, p, nullptr);
    o.end_obj();
  }
  o.end_arr();
  o.key("cores").begin_arr();
  for (const CoreSnap& c : s.cores) {
    o.begin_obj();
    o.kv("cpu", c.cpu).kv("p", c.p);
    core_counters(o, c, nullptr);
    o.end_obj();
  }
  o.end_arr();
  o.key("ms").begin_arr();
  for (const MSnap& m : s.ms) {
    o.begin_obj();
    o.kv("id", m.id).kv("tid", m.tid).kv("p", m.p).kv("cpu", m.cpu).kv("state", m.state)
        .kv("curg", m.curg).kv("blocks", m.blocks);
    o.end_obj();
  }
  o.end_arr();
  o.key("delta").begin_obj();
  o.key("procs").begin_arr();
  for (std::size_t i = 0; i < s.procs.size(); i++) {
    const ProcSnap* b = prev.have && i < prev.procs.size() ? &prev.procs[i] : nullptr;
    ProcSnap zero;
    o.begin_obj();
    o.kv("id", s.procs[i].id);
    proc_counters(o, s.procs[i], b ? b : &zero);
    o.end_obj();
  }
  o.end_arr();
  o.key("cores").begin_arr();
  for (std::size_t i = 0; i < s.cores.size(); i++) {
    const CoreSnap* b = prev.have && i < prev.cores.size() ? &prev.cores[i] : nullptr;
    CoreSnap zero;
    o.begin_obj();
    o.kv("cpu", s.cores[i].cpu);
    core_counters(o, s.cores[i], b ? b : &zero);
    o.end_obj();
  }
  o.end_arr();
  o.end_obj();
  o.kv("interval_ns", prev.have ? s.now_ns - prev.now_ns : s.uptime_ns);
  o.end_obj();
  prev.have = true;
  prev.now_ns = s.now_ns;
  prev.procs = std::move(s.procs);
  prev.cores = std::move(s.cores);
  return std::move(o.str());
}

struct Field {
  const char* name;
  const char* kind;
  const char* unit;
  const char* desc;
};

void meta_fields(JsonOut& o, const char* label, std::initializer_list<Field> fs) {
  o.begin_obj();
  if (label != nullptr) o.kv("_om_label", label);
  for (const Field& f : fs) {
    o.key(f.name).begin_obj();
    o.kv("desc", f.desc).kv("kind", f.kind).kv("unit", f.unit);
    o.end_obj();
  }
  o.end_obj();
}

std::string meta_resp() {
  JsonOut o;
  o.begin_obj();
  o.kv("_om_prefix", "kgmp_");
  o.key("top");
  meta_fields(o, nullptr, {
      {"pid", "gauge", "", "process id"},
      {"now_ns", "gauge", "ns", "CLOCK_MONOTONIC at the snapshot"},
      {"uptime_ns", "counter", "ns", "time since run() started"},
      {"gomaxprocs", "gauge", "procs", "number of Ps (Go's GOMAXPROCS)"},
      {"goroutines", "gauge", "goroutines", "live goroutines"},
      {"goroutines_created", "counter", "goroutines", "goroutines created, main included"},
      {"runnable", "gauge", "goroutines", "goroutines on a run queue"},
      {"running", "gauge", "goroutines", "Ps running goroutine code"},
      {"waiting", "gauge", "goroutines", "goroutines parked on a runtime primitive (approx.)"},
      {"threads", "gauge", "threads", "Ms created (Go's threads=)"},
      {"idleprocs", "gauge", "procs", "Ps on the idle list"},
      {"spinningthreads", "gauge", "threads", "Ms looking for work"},
      {"idlethreads", "gauge", "threads", "Ms parked with nothing to do"},
      {"blockedthreads", "gauge", "threads", "Ms blocked in the kernel while running a G"},
      {"runqueue", "gauge", "goroutines", "global run queue length"},
      {"handoffs", "counter", "events", "Ps taken from blocked Ms"},
  });
  o.key("procs");
  meta_fields(o, "proc", {
      {"cpu", "gauge", "", "the CPU the P is bound to"},
      {"runq", "gauge", "goroutines", "local run queue length, runnext included"},
      {"schedticks", "counter", "events", "goroutines scheduled (Go's schedtick)"},
      {"runs", "counter", "events", "goroutine executions"},
      {"spawns", "counter", "goroutines", "goroutines created by goroutines on this P"},
      {"exits", "counter", "goroutines", "goroutines that returned on this P"},
      {"steals", "counter", "events", "successful steals from other Ps"},
      {"stolen", "counter", "goroutines", "goroutines taken by those steals"},
      {"handoffs_in", "counter", "events", "hand-offs after which a new M ran this P"},
      {"handoffs_out", "counter", "events", "times this P was taken from its blocked M"},
      {"globrunq_takes", "counter", "goroutines", "goroutines taken from the global queue"},
      {"parks", "counter", "events", "times its M parked idle"},
      {"busy_ns", "counter", "ns", "time held by a running M"},
      {"idle_ns", "counter", "ns", "time on the idle list"},
      {"spin_ns", "counter", "ns", "time held by a spinning M"},
      {"preemptions", "counter", "events", "goroutines preempted on this P after their slice"},
      {"lat_hist", "histogram", "ns", "runnable -> running latency, 1 in 32 sampled (KGMPDEBUG=latsample)"},
      {"handoff_lat_hist", "histogram", "ns", "kernel-reported block of the P's M -> P taken by another M"},
  });
  o.key("cores");
  meta_fields(o, "cpu", {
      {"p", "gauge", "", "the P bound to this core"},
      {"m_blocks", "counter", "events", "Ms switched out blocked on this core (BPF)"},
      {"ctx_switches", "counter", "events", "Ms switched in on this core (BPF)"},
      {"runq_wait_ns", "counter", "ns", "time Ms waited runnable in the kernel (BPF)"},
      {"foreign_ns", "counter", "ns", "part of it while another process's task ran (BPF)"},
      {"offcpu_hist", "histogram", "ns", "block -> wakeup of Ms holding a P (BPF)"},
      {"wake_lat_hist", "histogram", "ns", "wakeup -> running of Ms (BPF)"},
  });
  o.key("ms");
  meta_fields(o, "m", {
      {"tid", "gauge", "", "the M's thread id"},
      {"p", "gauge", "", "the P it holds, -1 if none"},
      {"cpu", "gauge", "", "the CPU it is pinned to, -1 if none"},
      {"state", "gauge", "", "running|spinning|idle|blocked|watcher"},
      {"curg", "gauge", "", "goid of the G it runs or ran last, 0 if none"},
      {"blocks", "counter", "events", "times it blocked in the kernel (BPF)"},
  });
  o.end_obj();
  return std::move(o.str());
}

const char* kind_name(metrics::Kind k, bool cumulative) {
  if (k == metrics::Kind::kFloat64Histogram) return "histogram";
  return cumulative ? "counter" : "gauge";
}

std::string metrics_resp() {
  std::vector<metrics::Sample> v = metrics::read();
  const auto& all = metrics::all();
  JsonOut o;
  o.begin_arr();
  for (std::size_t i = 0; i < v.size(); i++) {
    const metrics::Description& d = all[i];
    o.begin_obj();
    o.kv("name", d.name).kv("kind", kind_name(d.kind, d.cumulative)).kv("unit", d.unit())
        .kv("desc", d.description);
    o.key("value");
    switch (v[i].kind) {
      case metrics::Kind::kUint64: o.num(v[i].u64); break;
      case metrics::Kind::kFloat64: o.num(v[i].f64); break;
      case metrics::Kind::kFloat64Histogram:
        o.begin_obj().key("buckets").begin_arr();
        for (std::size_t b = 0; b < v[i].hist.counts.size(); b++) {
          o.begin_obj().key("le_ns");
          if (b + 1 < v[i].hist.counts.size())
            o.num(std::uint64_t{1} << (b + 1));
          else
            o.null();
          o.kv("count", v[i].hist.counts[b]).end_obj();
        }
        o.end_arr().end_obj();
        break;
      default: o.null();
    }
    o.end_obj();
  }
  o.end_arr();
  return std::move(o.str());
}

std::string trace_resp(const TraceDump& d) {
  JsonOut o;
  o.begin_obj();
  o.kv("start_ns", d.start_ns).kv("end_ns", d.end_ns).kv("dropped", d.dropped);
  o.key("events").begin_arr();
  for (const TraceEvent& e : d.events) {
    o.begin_obj();
    o.kv("ts", e.ts).kv("ev", trace_ev_name(e.ev)).kv("p", static_cast<int>(e.p));
    o.key("m");
    if (e.m == kNoHolder) o.num(-1); else o.num(e.m);
    o.kv("g", e.g);
    o.key("arg");
    if (e.ev == TraceEv::kGStop) o.str(stop_reason_name(e.arg)); else o.num(e.arg);
    o.end_obj();
  }
  o.end_arr();
  o.end_obj();
  return std::move(o.str());
}

std::string ok(const std::string& resp) {
  return "{\"errno\":0,\"args\":{\"resp\":" + resp + "}}";
}

std::string error(int err, absl::string_view m) {
  std::string_view msg(m.data(), m.size());
  JsonOut o;
  o.begin_obj().kv("errno", err).key("args").begin_obj().key("resp").begin_obj()
      .kv("error", msg).end_obj().end_obj().end_obj();
  return std::move(o.str());
}

}  // namespace

std::string StatsServer::answer(const std::string& line, Baseline& prev) {
  absl::StatusOr<Json> j = telemetry::json_parse(line);
  if (!j.ok()) return error(telemetry::kErrnoInvalid, j.status().message());
  if (j->type != Json::kObj) return error(telemetry::kErrnoInvalid, "a request is a JSON object");
  const Json* req = j->get("req");
  if (req == nullptr || req->type != Json::kStr)
    return error(telemetry::kErrnoInvalid, "the request has no \"req\" string");
  const Json* args = j->get("args");
  if (args != nullptr && args->type != Json::kObj && args->type != Json::kNull)
    return error(telemetry::kErrnoInvalid, "\"args\" must be an object");
  if (sched == nullptr) return error(EAGAIN, "the runtime is stopping");
  const std::string& r = req->s;
  if (r == "stats") {
    const Json* t = args != nullptr ? args->get("target") : nullptr;
    if (t != nullptr && !(t->type == Json::kStr && t->s == "top"))
      return error(telemetry::kErrnoInvalid, "unknown target; the only target is \"top\"");
    return ok(stats_resp(prev));
  }
  if (r == "stats_meta") return ok(meta_resp());
  if (r == "metrics") return ok(metrics_resp());
  if (r == "trace_start") {
    std::uint64_t max = 0;
    if (const Json* m = args != nullptr ? args->get("max_events") : nullptr) {
      if (m->type != Json::kNum || !m->is_uint)
        return error(telemetry::kErrnoInvalid, "max_events must be a whole number");
      max = m->u64;
    }
    absl::Status st = trace_session_start(max);
    if (!st.ok())
      return error(absl::IsFailedPrecondition(st) ? EBUSY : telemetry::kErrnoInvalid,
                   st.message());
    return ok("{\"started\":true}");
  }
  if (r == "trace_stop") {
    absl::StatusOr<TraceDump> d = trace_session_stop();
    if (!d.ok()) return error(telemetry::kErrnoInvalid, d.status().message());
    return ok(trace_resp(*d));
  }
  return error(telemetry::kErrnoInvalid,
               "unknown request \"" + r +
                   "\"; known: stats, stats_meta, metrics, trace_start, trace_stop");
}

// ---- the socket ----

absl::StatusOr<std::unique_ptr<StatsServer>> StatsServer::start() {
  std::string dir = stats_dir();
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    return absl::UnavailableError(absl::StrFormat("cannot create %s: %s", dir, strerror(errno)));
  struct stat st;
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return absl::UnavailableError(absl::StrFormat("%s is not a directory", dir));
  if (st.st_uid != geteuid())
    return absl::PermissionDeniedError(absl::StrFormat(
        "%s belongs to uid %u, not to this process's uid %u; set %s to a directory of yours",
        dir, st.st_uid, geteuid(), telemetry::kRuntimeDirEnv));
  if ((st.st_mode & 0777) != 0700) chmod(dir.c_str(), 0700);
  std::unique_ptr<StatsServer> s(new StatsServer());
  s->path_ = absl::StrFormat("%s/%d%s", dir, getpid(), telemetry::kSocketSuffix);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (s->path_.size() >= sizeof addr.sun_path)
    return absl::InvalidArgumentError(absl::StrFormat(
        "the socket path %s is longer than %u bytes; set %s to a shorter directory", s->path_,
        sizeof addr.sun_path - 1, telemetry::kRuntimeDirEnv));
  std::memcpy(addr.sun_path, s->path_.c_str(), s->path_.size() + 1);
  unlink(s->path_.c_str());  // a stale socket of a dead process that had our pid
  s->listen_fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (s->listen_fd_ < 0)
    return absl::UnavailableError(absl::StrFormat("socket: %s", strerror(errno)));
  if (bind(s->listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    return absl::UnavailableError(absl::StrFormat("bind %s: %s", s->path_, strerror(errno)));
  chmod(s->path_.c_str(), 0600);  // the directory (0700) already keeps others out meanwhile
  std::memcpy(g_sock_path, s->path_.c_str(), s->path_.size() + 1);
  static const bool registered = [] { return std::atexit(telemetry_unlink_socket) == 0; }();
  (void)registered;
  if (listen(s->listen_fd_, 16) != 0) {
    unlink(s->path_.c_str());
    return absl::UnavailableError(absl::StrFormat("listen %s: %s", s->path_, strerror(errno)));
  }
  s->stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (s->stop_fd_ < 0) {
    unlink(s->path_.c_str());
    return absl::UnavailableError(absl::StrFormat("eventfd: %s", strerror(errno)));
  }
  // The thread must not take signals meant for the program (it only polls).
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int err = pthread_create(&s->thread_, nullptr, [](void* self) -> void* {
    static_cast<StatsServer*>(self)->loop();
    return nullptr;
  }, s.get());
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (err != 0) {
    unlink(s->path_.c_str());
    return absl::UnavailableError(absl::StrFormat("pthread_create: %s", strerror(err)));
  }
  s->started_ = true;
  return s;
}

StatsServer::~StatsServer() {
  if (started_) {
    std::uint64_t one = 1;
    ssize_t r = write(stop_fd_, &one, sizeof one);
    (void)r;
    pthread_join(thread_, nullptr);
  }
  if (!path_.empty()) {
    g_sock_path[0] = '\0';
    unlink(path_.c_str());
  }
  if (listen_fd_ >= 0) close(listen_fd_);
  if (stop_fd_ >= 0) close(stop_fd_);
}

void StatsServer::loop() {
  struct Client {
    int fd;
    std::string in, out;
    Baseline base;
    bool eof = false;  // the client shut its side: answer what it sent, then close
  };
  std::vector<std::unique_ptr<Client>> clients;
  std::vector<pollfd> pfds;
  for (;;) {
    pfds.clear();
    pfds.push_back({stop_fd_, POLLIN, 0});
    pfds.push_back({listen_fd_, static_cast<short>(clients.size() < kMaxClients ? POLLIN : 0), 0});
    for (auto& c : clients)
      pfds.push_back({c->fd, static_cast<short>((c->eof ? 0 : POLLIN) | (c->out.empty() ? 0 : POLLOUT)), 0});
    int n = poll(pfds.data(), pfds.size(), -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (pfds[0].revents != 0) break;
    if (pfds[1].revents & POLLIN) {
      for (;;) {
        int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) break;
        if (clients.size() >= kMaxClients) {
          close(fd);
          break;
        }
        clients.push_back(std::make_unique<Client>(Client{fd, {}, {}, {}, false}));
      }
    }
    for (std::size_t i = 0; i < clients.size() && i + 2 < pfds.size(); i++) {
      Client& c = *clients[i];
      short ev = pfds[i + 2].revents;
      bool dead = (ev & (POLLERR | POLLNVAL)) != 0;
      if (!dead && !c.eof && (ev & (POLLIN | POLLHUP))) {
        char buf[16384];
        for (;;) {
          ssize_t r = recv(c.fd, buf, sizeof buf, 0);
          if (r > 0) {
            c.in.append(buf, static_cast<std::size_t>(r));
            continue;
          }
          if (r == 0)
            c.eof = true;
          else if (errno != EAGAIN && errno != EINTR)
            dead = true;
          break;
        }
        std::size_t nl;
        while (!dead && (nl = c.in.find('\n')) != std::string::npos) {
          std::string line = c.in.substr(0, nl);
          c.in.erase(0, nl + 1);
          if (!line.empty() && line.back() == '\r') line.pop_back();
          if (line.empty()) continue;
          c.out += answer(line, c.base);
          c.out += '\n';
        }
        if (c.in.size() > kMaxLine) {
          c.out += error(telemetry::kErrnoInvalid, "request line longer than 64 KiB") + "\n";
          c.in.clear();
        }
        if (c.out.size() > kMaxBacklog) dead = true;
      }
      while (!dead && !c.out.empty()) {
        ssize_t w = send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
          c.out.erase(0, static_cast<std::size_t>(w));
          continue;
        }
        if (w < 0 && (errno == EAGAIN || errno == EINTR)) break;
        dead = true;  // EPIPE, ECONNRESET: the client left mid-answer
      }
      if (dead || (c.eof && c.out.empty())) {
        close(c.fd);
        c.fd = -1;
      }
    }
    std::erase_if(clients, [](const std::unique_ptr<Client>& c) { return c->fd < 0; });
  }
  for (auto& c : clients) close(c->fd);
}

}  // namespace kgmp::internal
