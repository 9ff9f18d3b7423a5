// telemetry_test.cpp — the telemetry of DESIGN §6 without privileges (poll monitor): exact
// per-P counts of scripted workloads, KGMPDEBUG parsing and its exit-2 errors, the schedtrace
// line parsed field by field, kgmp::metrics, and the stats endpoint (permissions, JSON answers, per-client
// deltas, bad requests, several clients, a client leaving mid-answer, the trace recorder).
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "export_test.h"
#include "json.h"
#include "kgmp/kgmp.h"
#include "kgmp/metrics.h"
#include "stats_protocol.h"
#include "telemetry_rt.h"
#include "test_util.h"

namespace {

using kgmp::telemetry::Json;
using kgmp::telemetry::json_parse;

// Every test runs under the poll monitor with its own runtime directory.
class Tel : public ::testing::Test {
 protected:
  void SetUp() override {
    setenv("KGMP_MONITOR", "poll", 1);
    char tmpl[] = "/tmp/kgmp-tel-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    base_ = tmpl;
    dir_ = base_ + "/rt";  // the server creates it (0700)
    setenv("KGMP_RUNTIME_DIR", dir_.c_str(), 1);
    unsetenv("KGMPDEBUG");
  }
  void TearDown() override {
    unsetenv("KGMP_MONITOR");
    unsetenv("KGMP_RUNTIME_DIR");
    unsetenv("KGMPDEBUG");
    std::string cmd = "rm -rf '" + base_ + "'";
    (void)!system(cmd.c_str());
  }
  std::string sock() const { return dir_ + "/" + std::to_string(getpid()) + ".sock"; }
  std::string base_, dir_;
};

kgmp::Config procs(int n) {
  kgmp::Config c;
  c.procs = n;
  return c;
}

// ---- KGMPDEBUG ----

TEST(Kgmpdebug, Parses) {
  using kgmp::internal::parse_kgmpdebug;
  auto o = parse_kgmpdebug("schedtrace=1000,scheddetail=1");
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->schedtrace_ms, 1000);
  EXPECT_TRUE(o->scheddetail);
  EXPECT_TRUE(o->counters);
  o = parse_kgmpdebug("counters=0,stats=0");
  ASSERT_TRUE(o.ok());
  EXPECT_FALSE(o->counters);
  EXPECT_FALSE(o->stats);
  EXPECT_TRUE(parse_kgmpdebug(nullptr).ok());
  EXPECT_TRUE(parse_kgmpdebug("").ok());
  EXPECT_EQ(o->latsample, 32);
  o = parse_kgmpdebug("latsample=8");
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->latsample, 8);
  for (const char* bad : {"schedtrace", "schedtrace=x", "schedtrace=-1", "scheddetail=1",
                          "counters=2", "gctrace=1", "schedtrace=10,,stats=yes", "latsample=0",
                          "latsample=12", "latsample=131072"}) {
    auto r = parse_kgmpdebug(bad);
    EXPECT_FALSE(r.ok()) << bad;
    if (!r.ok()) {
      EXPECT_THAT(std::string(r.status().message()), ::testing::HasSubstr("KGMPDEBUG=\""));
      EXPECT_EQ(std::string(r.status().message()).find('\n'), std::string::npos);
    }
  }
}

TEST(KgmpdebugDeathTest, BadValueExits2WithOneLine) {
  setenv("KGMPDEBUG", "schedtrace=often", 1);
  EXPECT_EXIT(kgmp::run([] {}), ::testing::ExitedWithCode(2),
              "^kgmp: KGMPDEBUG=\"schedtrace=often\": schedtrace=often is not a period; use a "
              "whole number of milliseconds from 1 to 3600000 \\(0: off\\)\n$");
  unsetenv("KGMPDEBUG");
}

// ---- counters ----

// One P, N Gs spawned by main, which then waits: exactly N spawns, N + 2 runs (main at start
// and after its wait), N exits plus main's.
TEST_F(Tel, ExactCountsOfAScriptedWorkload) {
  setenv("KGMPDEBUG", "latsample=8", 1);  // Go's rate, for the sample count below
  constexpr int kN = 100;  // below the ring's 128-spawn overflow (no back-pressure yield)
  std::uint64_t created = 0, live = 0;
  kgmp::run(
      [&] {
        kgmp::WaitGroup wg;
        wg.add(kN);
        for (int i = 0; i < kN; i++) kgmp::go([&wg] { wg.done(); });
        wg.wait();
        for (const auto& s : kgmp::metrics::read()) {
          if (s.name == "/sched/goroutines-created:goroutines") created = s.u64;
          if (s.name == "/sched/goroutines:goroutines") live = s.u64;
        }
      },
      procs(1));
  auto ps = kgmp::proc_stats();
  ASSERT_EQ(ps.size(), 1u);
  EXPECT_EQ(ps[0].spawns, static_cast<std::uint64_t>(kN));
  EXPECT_EQ(ps[0].runs, static_cast<std::uint64_t>(kN + 2));
  EXPECT_EQ(ps[0].schedticks, static_cast<std::uint64_t>(kN + 2));
  EXPECT_EQ(ps[0].exits, static_cast<std::uint64_t>(kN + 1));
  EXPECT_EQ(ps[0].steals, 0u);
  EXPECT_EQ(created, static_cast<std::uint64_t>(kN + 1));
  EXPECT_EQ(live, 1u);  // on one P every child returned before main ran again
  // Sampled latency: 1 in 8 of the N + 2 transitions to runnable.
  std::uint64_t lat = 0;
  for (std::uint64_t c : ps[0].lat_hist) lat += c;
  EXPECT_GE(lat, static_cast<std::uint64_t>(kN / 8 - 1));
  EXPECT_LE(lat, static_cast<std::uint64_t>((kN + 2) / 8 + 1));
  // busy + idle + spin covers the run.
  EXPECT_GT(ps[0].busy_ns, 0u);
}

// Yields on one P: two Gs ping-ponging through yield, each yield one more run.
TEST_F(Tel, YieldsCountRuns) {
  setenv("KGMPDEBUG", "latsample=8", 1);
  constexpr int kYields = 1000;
  kgmp::run(
      [&] {
        kgmp::WaitGroup wg;
        wg.add(1);
        kgmp::go([&] {
          for (int i = 0; i < kYields; i++) kgmp::yield();
          wg.done();
        });
        for (int i = 0; i < kYields; i++) kgmp::yield();
        wg.wait();
      },
      procs(1));
  auto ps = kgmp::proc_stats();
  // main: 1 + kYields (each yield switches: the other G is always runnable) ... the child
  // finishes its yields first or last; either way the runs are at least 2 * kYields.
  EXPECT_GE(ps[0].runs, static_cast<std::uint64_t>(2 * kYields));
  EXPECT_LE(ps[0].runs, static_cast<std::uint64_t>(2 * kYields + 3));
  std::uint64_t lat = 0;
  for (std::uint64_t c : ps[0].lat_hist) lat += c;
  EXPECT_NEAR(static_cast<double>(lat), 2.0 * kYields / 8, 3.0);
}

// Three kgmp::blocking sections of 30 ms while the P has other work: under poll each is
// handed off exactly once, and a new M runs the P each time.
TEST_F(Tel, HandoffsOfAScriptedBlockingPattern) {
  std::atomic<bool> stop{false};
  kgmp::run(
      [&] {
        kgmp::WaitGroup wg;
        wg.add(1);
        kgmp::go([&] {  // keeps the P busy: it always has work
          while (!stop.load()) kgmp::yield();
          wg.done();
        });
        kgmp::yield();
        for (int i = 0; i < 3; i++) kgmp::blocking([] { usleep(30000); });
        stop = true;
        wg.wait();
      },
      procs(1));
  auto ps = kgmp::proc_stats();
  EXPECT_EQ(ps[0].handoffs_out, 3u);
  EXPECT_EQ(ps[0].handoffs_in, 3u);
  EXPECT_EQ(kgmp::internal::last_run_stats().handoffs, 3u);
}

TEST_F(Tel, CountersOffLeavesOnlyTheRunAccounting) {
  setenv("KGMPDEBUG", "counters=0", 1);
  kgmp::run(
      [] {
        kgmp::WaitGroup wg;
        wg.add(10);
        for (int i = 0; i < 10; i++) kgmp::go([&wg] { wg.done(); });
        wg.wait();
      },
      procs(1));
  auto ps = kgmp::proc_stats();
  EXPECT_EQ(ps[0].spawns, 10u);  // the run accounting stays
  EXPECT_EQ(ps[0].runs, 12u);    // and Go's schedtick, which the scheduler needs
  EXPECT_EQ(ps[0].parks, 0u);
  std::uint64_t lat = 0;
  for (std::uint64_t c : ps[0].lat_hist) lat += c;
  EXPECT_EQ(lat, 0u);
  EXPECT_EQ(ps[0].busy_ns, 0u);
  EXPECT_TRUE(kgmp::internal::accounted(kgmp::internal::last_run_stats()));
}

// ---- schedtrace ----

// Captures fd 2 during f().
template <class F>
std::string capture_stderr(F f) {
  fflush(stderr);
  char path[] = "/tmp/kgmp-stderr-XXXXXX";
  int fd = mkstemp(path);
  int saved = dup(2);
  dup2(fd, 2);
  f();
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  close(fd);
  unlink(path);
  return ss.str();
}

std::vector<std::string> lines_starting(const std::string& text, const std::string& prefix) {
  std::vector<std::string> out;
  std::istringstream in(text);
  std::string l;
  while (std::getline(in, l))
    if (l.rfind(prefix, 0) == 0) out.push_back(l);
  return out;
}

// A list "[ a b c ]" as numbers.
std::vector<long> list(const std::string& s) {
  std::vector<long> v;
  std::istringstream in(s);
  std::string t;
  while (in >> t)
    if (t != "[" && t != "]") v.push_back(std::stol(t));
  return v;
}

TEST_F(Tel, SchedtraceLineFieldByField) {
  setenv("KGMPDEBUG", "schedtrace=50", 1);
  const int np = std::min(2, kgmp_test::ncpus());
  std::string err = capture_stderr([&] {
    kgmp::run(
        [] {
          auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(260);
          while (std::chrono::steady_clock::now() < end) kgmp::sleep_for(std::chrono::milliseconds(5));
        },
        procs(np));
  });
  auto lines = lines_starting(err, "SCHED ");
  ASSERT_GE(lines.size(), 3u) << err;
  ASSERT_LE(lines.size(), 6u) << err;
  // Go's fields, names and order, then ours.
  const std::regex re(
      "^SCHED (\\d+)ms: gomaxprocs=(\\d+) idleprocs=(\\d+) threads=(\\d+) spinningthreads=(\\d+) "
      "needspinning=(\\d+) idlethreads=(\\d+) runqueue=(\\d+) (\\[( \\d+)+ \\]) "
      "schedticks=(\\[( \\d+)+ \\]) monitor=(\\w+) handoffs=(\\d+) blockedthreads=(\\d+) "
      "steals=(\\[( \\d+)+ \\]) cpus=(\\[( \\d+)+ \\]) preemptions=(\\[( \\d+)+ \\])$");
  long prev_ms = -1;
  for (const std::string& l : lines) {
    std::smatch m;
    ASSERT_TRUE(std::regex_match(l, m, re)) << l;
    long ms = std::stol(m[1]);
    EXPECT_GT(ms, prev_ms);
    prev_ms = ms;
    EXPECT_EQ(std::stol(m[2]), np);
    EXPECT_LE(std::stol(m[3]), np);
    EXPECT_GE(std::stol(m[4]), np);  // at least one M per P has run
    EXPECT_LE(std::stol(m[7]), std::stol(m[4]));
    EXPECT_EQ(list(m[9]).size(), static_cast<std::size_t>(np));
    EXPECT_EQ(list(m[11]).size(), static_cast<std::size_t>(np));
    EXPECT_EQ(m[13].str(), "poll");
    EXPECT_EQ(list(m[16]).size(), static_cast<std::size_t>(np));
    EXPECT_EQ(list(m[18]).size(), static_cast<std::size_t>(np));
    EXPECT_EQ(list(m[20]).size(), static_cast<std::size_t>(np));
  }
  // The first line comes ~50 ms after the start, one every ~50 ms.
  EXPECT_GE(std::stol(lines_starting(err, "SCHED ")[0].substr(6)), 45);
}

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KGMP_TSAN 1
#endif
#endif

TEST_F(Tel, SchedtraceDetail) {
#ifdef KGMP_TSAN
  GTEST_SKIP() << "scheddetail reads G and P fields racily on purpose (as Go's does)";
#endif
  setenv("KGMPDEBUG", "schedtrace=40,scheddetail=1", 1);
  std::string err = capture_stderr([&] {
    kgmp::run(
        [] {
          kgmp::Chan<int> never(0);
          kgmp::WaitGroup wg;
          wg.add(1);
          kgmp::go([&] {
            kgmp::select(kgmp::on_recv(never), kgmp::on_recv(kgmp::after(std::chrono::milliseconds(150))));
            wg.done();
          });
          wg.wait();
        },
        procs(1));
  });
  auto heads = lines_starting(err, "SCHED ");
  ASSERT_GE(heads.size(), 2u) << err;
  const std::regex head(
      "^SCHED \\d+ms: gomaxprocs=1 idleprocs=\\d+ threads=\\d+ spinningthreads=\\d+ "
      "needspinning=0 idlethreads=\\d+ runqueue=\\d+ gcwaiting=false nmidlelocked=0 stopwait=0 "
      "sysmonwait=false monitor=poll handoffs=\\d+ blockedthreads=\\d+ steals=\\[ \\d+ \\] "
      "cpus=\\[ \\d+ \\] preemptions=\\[ \\d+ \\]$");
  for (const auto& l : heads) EXPECT_TRUE(std::regex_match(l, head)) << l;
  auto ps = lines_starting(err, "  P");
  ASSERT_GE(ps.size(), 2u);
  EXPECT_TRUE(std::regex_match(
      ps[0], std::regex("^  P0: status=[01] schedtick=\\d+ syscalltick=0 m=(\\d+|nil) "
                        "runqsize=\\d+ gfreecnt=\\d+ timerslen=\\d+ cpu=\\d+ .* "
                        "spin_ns=\\d+ preemptions=\\d+$")))
      << ps[0];
  auto ms = lines_starting(err, "  M");
  ASSERT_FALSE(ms.empty());
  EXPECT_TRUE(std::regex_match(
      ms[0], std::regex("^  M0: p=(\\d+|nil) curg=(\\d+|nil) mallocing=0 throwing=0 preemptoff= "
                        "locks=0 dying=0 spinning=(true|false) blocked=(true|false) "
                        "lockedg=nil tid=\\d+ cpu=-?\\d+ state=\\w+ blocks=\\d+$")))
      << ms[0];
  // Both Gs are waiting (the main G on its WaitGroup, the other in select) at some report.
  auto gs = lines_starting(err, "  G");
  ASSERT_FALSE(gs.empty());
  bool main_waits = false;
  for (const auto& g : gs) {
    EXPECT_TRUE(std::regex_match(g, std::regex("^  G\\d+: status=\\d\\([^)]*\\) m=(\\d+|nil) lockedm=nil$")))
        << g;
    if (g.rfind("  G1: status=4(", 0) == 0) main_waits = true;
  }
  EXPECT_TRUE(main_waits) << err;
}

// ---- metrics ----

TEST_F(Tel, MetricsNamesKindsAndValues) {
  const std::regex grammar("^(/[^:]+):([^:*/]+(?:[*/][^:*/]+)*)$");  // Go's key grammar
  std::set<std::string> names;
  for (const auto& d : kgmp::metrics::all()) {
    EXPECT_TRUE(std::regex_match(d.name, grammar)) << d.name;
    EXPECT_TRUE(names.insert(d.name).second) << d.name;
    EXPECT_FALSE(d.description.empty()) << d.name;
    EXPECT_NE(d.kind, kgmp::metrics::Kind::kBad);
  }
  for (const char* go : {"/sched/gomaxprocs:threads", "/sched/goroutines:goroutines",
                         "/sched/latencies:seconds", "/sched/goroutines-created:goroutines",
                         "/sched/goroutines/runnable:goroutines",
                         "/sched/goroutines/waiting:goroutines", "/sched/threads/total:threads",
                         "/sched/handoffs:events", "/sched/workers/blocked:threads",
                         "/sched/steals:events", "/sched/preemptions:events"})
    EXPECT_TRUE(names.count(go)) << go;
  std::vector<kgmp::metrics::Sample> in_run;
  kgmp::run(
      [&] {
        kgmp::WaitGroup wg;
        wg.add(1);
        kgmp::go([&] {
          for (int i = 0; i < 200; i++) kgmp::yield();
          wg.done();
        });
        for (int i = 0; i < 200; i++) kgmp::yield();
        wg.wait();
        in_run = kgmp::metrics::read();
      },
      procs(1));
  ASSERT_EQ(in_run.size(), kgmp::metrics::all().size());
  for (std::size_t i = 0; i < in_run.size(); i++) {
    const auto& s = in_run[i];
    const auto& d = kgmp::metrics::all()[i];
    EXPECT_EQ(s.name, d.name);
    EXPECT_EQ(s.kind, d.kind);
    if (s.kind == kgmp::metrics::Kind::kFloat64) EXPECT_FALSE(std::isnan(s.f64));
    if (s.kind == kgmp::metrics::Kind::kFloat64Histogram) {
      EXPECT_EQ(s.hist.buckets.size(), s.hist.counts.size() + 1);
      EXPECT_TRUE(std::isinf(s.hist.buckets.back()));
    }
    if (s.name == "/sched/gomaxprocs:threads") EXPECT_EQ(s.u64, 1u);
    if (s.name == "/sched/threads/total:threads") EXPECT_GE(s.u64, 1u);
    if (s.name == "/sched/latencies:seconds") {
      std::uint64_t n = 0;
      for (auto c : s.hist.counts) n += c;
      EXPECT_GE(n, 10u);  // ~400 transitions, 1 in 32 by default
    }
  }
  std::vector<kgmp::metrics::Sample> ask(2);
  ask[0].name = "/sched/goroutines:goroutines";
  ask[1].name = "/no/such:thing";
  kgmp::metrics::read(ask);
  EXPECT_EQ(ask[0].kind, kgmp::metrics::Kind::kUint64);
  EXPECT_EQ(ask[1].kind, kgmp::metrics::Kind::kBad);
}

// ---- the stats endpoint ----

int connect_to(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Sends one request line, returns the answer line. Blocks the calling M.
std::string ask_unmarked(int fd, const std::string& req) {
  std::string line = req + "\n";
  if (send(fd, line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size()))
    return std::string("<send failed>");
  std::string out;
  char c;
  while (recv(fd, &c, 1, 0) == 1) {
    if (c == '\n') return out;
    out += c;
  }
  return std::string("<eof>");
}

// The same, from a G marked as blocking (its P may be handed off meanwhile).
std::string ask(int fd, const std::string& req) {
  return kgmp::blocking([&] { return ask_unmarked(fd, req); });
}

const Json& resp(const Json& j) { return *j.get("args")->get("resp"); }

TEST_F(Tel, StatsEndpoint) {
  const int np = std::min(2, kgmp_test::ncpus());
  std::string path = sock();
  kgmp::run(
      [&] {
        struct stat st;
        ASSERT_EQ(stat(dir_.c_str(), &st), 0);
        EXPECT_EQ(st.st_mode & 0777, 0700u);
        ASSERT_EQ(stat(path.c_str(), &st), 0) << path;
        EXPECT_TRUE(S_ISSOCK(st.st_mode));
        EXPECT_EQ(st.st_mode & 0777, 0600u);

        int a = connect_to(path), b = connect_to(path);
        ASSERT_GE(a, 0);
        ASSERT_GE(b, 0);
        // Unmarked, so that P0 stays with this G while the server answers: under poll a
        // marked call 20 us old loses its P (slow VMs reach that), and P0 would read "idle".
        auto j1 = json_parse(ask_unmarked(a, R"({"req":"stats","args":{"target":"top"}})"));
        ASSERT_TRUE(j1.ok()) << j1.status();
        EXPECT_EQ(j1->get("errno")->u64, 0u);
        const Json& s1 = resp(*j1);
        EXPECT_EQ(s1.get("pid")->u64, static_cast<std::uint64_t>(getpid()));
        EXPECT_EQ(s1.get("monitor")->s, "poll");
        EXPECT_EQ(s1.get("gomaxprocs")->u64, static_cast<std::uint64_t>(np));
        for (const char* k : {"now_ns", "uptime_ns", "goroutines", "threads", "idleprocs",
                              "spinningthreads", "idlethreads", "blockedthreads", "runqueue",
                              "handoffs", "procs", "cores", "ms", "delta", "interval_ns"})
          EXPECT_NE(s1.get(k), nullptr) << k;
        ASSERT_EQ(s1.get("procs")->arr.size(), static_cast<std::size_t>(np));
        const Json& p0 = s1.get("procs")->arr[0];
        for (const char* k : {"id", "cpu", "status", "m", "tid", "curg", "runq", "schedticks",
                              "runs", "spawns", "steals", "stolen", "handoffs_in",
                              "handoffs_out", "globrunq_takes", "parks", "busy_ns", "idle_ns",
                              "spin_ns", "preemptions", "lat_hist"})
          EXPECT_NE(p0.get(k), nullptr) << k;
        EXPECT_EQ(p0.get("lat_hist")->arr.size(),
                  static_cast<std::size_t>(kgmp::telemetry::kHistBuckets));
        EXPECT_EQ(p0.get("status")->s, "running");  // the main G runs here, on P0
        EXPECT_EQ(p0.get("curg")->u64, 1u);
        EXPECT_TRUE(s1.get("cores")->arr.empty());  // poll: no BPF per-core counters
        // The first delta is since zero.
        const Json& d1 = s1.get("delta")->get("procs")->arr[0];
        EXPECT_EQ(d1.get("spawns")->u64, p0.get("spawns")->u64);

        // 50 spawns on this P, then the deltas of connection a show exactly them, while
        // connection b's first answer still counts from zero.
        kgmp::WaitGroup wg;
        wg.add(50);
        for (int i = 0; i < 50; i++) kgmp::go([&wg] { wg.done(); });
        wg.wait();
        auto j2 = json_parse(ask(a, R"({"req":"stats"})"));
        ASSERT_TRUE(j2.ok());
        const Json& s2 = resp(*j2);
        std::uint64_t spawns_delta = 0;
        for (const Json& p : s2.get("delta")->get("procs")->arr) spawns_delta += p.get("spawns")->u64;
        EXPECT_EQ(spawns_delta, 50u);
        EXPECT_GT(s2.get("interval_ns")->u64, 0u);
        EXPECT_LT(s2.get("interval_ns")->u64, s2.get("uptime_ns")->u64);
        auto jb = json_parse(ask(b, R"({"req":"stats"})"));
        ASSERT_TRUE(jb.ok());
        std::uint64_t b_spawns = 0;
        for (const Json& p : resp(*jb).get("delta")->get("procs")->arr) b_spawns += p.get("spawns")->u64;
        EXPECT_GE(b_spawns, 50u);

        // stats_meta and metrics.
        auto jm = json_parse(ask(b, R"({"req":"stats_meta"})"));
        ASSERT_TRUE(jm.ok());
        EXPECT_EQ(resp(*jm).get("_om_prefix")->s, "kgmp_");
        const Json* runs = resp(*jm).get("procs")->get("runs");
        ASSERT_NE(runs, nullptr);
        EXPECT_EQ(runs->get("kind")->s, "counter");
        auto jx = json_parse(ask(b, R"({"req":"metrics"})"));
        ASSERT_TRUE(jx.ok());
        bool saw_lat = false;
        for (const Json& m : resp(*jx).arr) {
          EXPECT_FALSE(m.get("desc")->s.empty());
          if (m.get("name")->s == "/sched/latencies:seconds") {
            saw_lat = true;
            EXPECT_EQ(m.get("kind")->s, "histogram");
            EXPECT_EQ(m.get("value")->get("buckets")->arr.size(),
                      static_cast<std::size_t>(kgmp::telemetry::kHistBuckets));
          }
        }
        EXPECT_TRUE(saw_lat);

        // Bad requests: one line each, errno 22, and the connection still works.
        for (const char* bad : {"not json", "[1,2]", R"({"req":42})", R"({"req":"nope"})",
                                R"({"req":"stats","args":{"target":"x"}})",
                                R"({"req":"trace_stop"})",
                                R"({"req":"trace_start","args":{"max_events":-1}})"}) {
          auto e = json_parse(ask(a, bad));
          ASSERT_TRUE(e.ok()) << bad;
          EXPECT_EQ(e->get("errno")->u64, 22u) << bad;
          EXPECT_FALSE(resp(*e).get("error")->s.empty()) << bad;
        }
        EXPECT_TRUE(json_parse(ask(a, R"({"req":"stats"})")).ok());
        close(a);
        close(b);
      },
      procs(np));
  struct stat st;
  EXPECT_NE(stat(path.c_str(), &st), 0) << "the socket is unlinked when run() returns";
}

// Sockets left in the runtime directory (".sock" files).
int sockets_in(const std::string& dir) {
  std::string cmd = "ls '" + dir + "' 2>/dev/null | grep -c '\\.sock$'";
  FILE* f = popen(cmd.c_str(), "r");
  int n = -1;
  if (f != nullptr) {
    if (fscanf(f, "%d", &n) != 1) n = -1;
    pclose(f);
  }
  return n;
}

// The fatal exits that skip run()'s end (the deadlock report's _exit, a channel panic, exit()
// from a G) remove the socket too: only a kill by signal leaves a stale one.
TEST_F(Tel, FatalExitsRemoveTheSocket) {
  EXPECT_EXIT(kgmp::run([] {
                kgmp::Chan<int> c(0);
                c.recv();  // every G asleep: Go's deadlock report, exit status 2
              }),
              ::testing::ExitedWithCode(2), "all goroutines are asleep - deadlock!");
  EXPECT_EQ(sockets_in(dir_), 0);
  EXPECT_EXIT(kgmp::run([] {
                kgmp::Chan<int> c(0);
                c.close();
                c.close();
              }),
              ::testing::ExitedWithCode(2), "panic: close of closed channel");
  EXPECT_EQ(sockets_in(dir_), 0);
#if defined(__has_feature)
#if !__has_feature(address_sanitizer)  // LeakSanitizer reports everything still live at exit()
  EXPECT_EXIT(kgmp::run([] { std::exit(3); }), ::testing::ExitedWithCode(3), "");
  EXPECT_EQ(sockets_in(dir_), 0);
#endif
#endif
}

TEST_F(Tel, ClientLeavingMidAnswerDoesNotHurt) {
  std::string path = sock();
  kgmp::run(
      [&] {
        // Ask for many big answers and hang up without reading any.
        for (int k = 0; k < 5; k++) {
          int fd = connect_to(path);
          ASSERT_GE(fd, 0);
          std::string many;
          for (int i = 0; i < 200; i++) many += "{\"req\":\"stats_meta\"}\n";
          kgmp::blocking([&] { (void)!send(fd, many.data(), many.size(), MSG_NOSIGNAL); });
          close(fd);
        }
        kgmp::sleep_for(std::chrono::milliseconds(50));
        int fd = connect_to(path);
        ASSERT_GE(fd, 0);
        auto j = json_parse(ask(fd, R"({"req":"stats"})"));
        ASSERT_TRUE(j.ok());
        EXPECT_EQ(j->get("errno")->u64, 0u);
        close(fd);
      },
      procs(1));
}

TEST_F(Tel, TraceRecorder) {
  std::string path = sock();
  kgmp::run(
      [&] {
        int fd = connect_to(path);
        ASSERT_GE(fd, 0);
        auto st = json_parse(ask(fd, R"({"req":"trace_start","args":{"max_events":100000}})"));
        ASSERT_TRUE(st.ok());
        ASSERT_EQ(st->get("errno")->u64, 0u) << ask(fd, R"({"req":"trace_stop"})");
        auto busy = json_parse(ask(fd, R"({"req":"trace_start"})"));
        EXPECT_NE(busy->get("errno")->u64, 0u);  // one session at a time
        kgmp::WaitGroup wg;
        wg.add(10);
        for (int i = 0; i < 10; i++)
          kgmp::go([&wg] {
            kgmp::yield();
            wg.done();
          });
        wg.wait();
        auto tr = json_parse(ask(fd, R"({"req":"trace_stop"})"));
        ASSERT_TRUE(tr.ok());
        ASSERT_EQ(tr->get("errno")->u64, 0u);
        const Json& r = resp(*tr);
        EXPECT_EQ(r.get("dropped")->u64, 0u);
        EXPECT_LT(r.get("start_ns")->u64, r.get("end_ns")->u64);
        std::set<std::uint64_t> ran, exited;
        std::int64_t last = 0;
        for (const Json& e : r.get("events")->arr) {
          auto ts = static_cast<std::int64_t>(e.get("ts")->u64);
          EXPECT_GE(ts, last);
          last = ts;
          const std::string& ev = e.get("ev")->s;
          if (ev == "g_run") ran.insert(e.get("g")->u64);
          if (ev == "g_stop" && e.get("arg")->s == "exit") exited.insert(e.get("g")->u64);
        }
        EXPECT_EQ(ran.size(), 11u);  // the 10 Gs and the main G
        EXPECT_EQ(exited.size(), 10u);
        close(fd);
      },
      procs(1));
}

// Two Ps with Gs that sleep, spawn and yield: per P, g_run/g_stop alternate for one G at a
// time (after a possible g_stop of the G running when the trace began); per M, m_spin_start/
// m_spin_end alternate and an m_busy only ever closes an m_idle.
TEST_F(Tel, TraceEventsPairUp) {
  const int np = std::min(2, kgmp_test::ncpus());
  std::string path = sock();
  kgmp::run(
      [&] {
        int fd = connect_to(path);
        ASSERT_GE(fd, 0);
        auto st = json_parse(ask(fd, R"({"req":"trace_start"})"));
        ASSERT_TRUE(st.ok());
        ASSERT_EQ(st->get("errno")->u64, 0u);
        for (int round = 0; round < 20; round++) {
          kgmp::WaitGroup wg;
          wg.add(8);
          for (int i = 0; i < 8; i++)
            kgmp::go([&wg, i] {
              if (i % 2) kgmp::sleep_for(std::chrono::microseconds(200));
              kgmp::yield();
              wg.done();
            });
          wg.wait();
          kgmp::sleep_for(std::chrono::microseconds(300));
        }
        auto tr = json_parse(ask(fd, R"({"req":"trace_stop"})"));
        ASSERT_TRUE(tr.ok());
        const Json& r = resp(*tr);
        std::map<std::uint64_t, std::uint64_t> running;  // P -> G running (0: none)
        std::map<std::uint64_t, bool> seen_p;
        std::map<std::int64_t, bool> spinning, idle;  // M -> state
        int runs = 0, spins = 0, idles = 0;
        for (const Json& e : r.get("events")->arr) {
          const std::string& ev = e.get("ev")->s;
          std::uint64_t p = e.get("p")->u64, g = e.get("g")->u64;
          std::int64_t m = static_cast<std::int64_t>(e.get("m")->num);
          if (ev == "g_run") {
            EXPECT_EQ(running[p], 0u) << "P" << p << " runs G" << g << " while G" << running[p];
            running[p] = g;
            seen_p[p] = true;
            runs++;
          } else if (ev == "g_stop") {
            if (seen_p[p]) EXPECT_EQ(running[p], g) << "P" << p;
            running[p] = 0;
            seen_p[p] = true;
          } else if (ev == "m_spin_start") {
            EXPECT_FALSE(spinning[m]) << "M" << m;
            spinning[m] = true;
            spins++;
          } else if (ev == "m_spin_end") {
            EXPECT_TRUE(spinning[m]) << "M" << m;
            spinning[m] = false;
          } else if (ev == "m_idle") {
            EXPECT_FALSE(idle[m]) << "M" << m;
            idle[m] = true;
            idles++;
          } else if (ev == "m_busy") {
            EXPECT_TRUE(idle[m]) << "M" << m;
            idle[m] = false;
          }
        }
        EXPECT_GE(runs, 160);
        if (np > 1) EXPECT_GT(idles, 0);
        printf("trace: %zu events, %d g_run, %d spins, %d idles\n", r.get("events")->arr.size(),
               runs, spins, idles);
        close(fd);
      },
      procs(np));
}

}  // namespace
