// kgmpstat_test — kgmpstat run as a user runs it (a child process, its stdout, stderr and exit
// status), against two kinds of target:
//   - fake_stats_server: answers from the protocol header alone, and fails on demand (hangs,
//     dies mid-answer, refuses, never listens), so every output and every error is exact;
//   - kgmp_workload: a real kgmp process (mixed CPU, syscall-blocking and channel Gs), so the
//     outputs are checked against what the runtime really serves. These tests skip, saying why,
//     while the runtime does not serve the stats endpoint.
// Each test gets its own KGMP_RUNTIME_DIR, so nothing here sees another process's socket.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "kgmpstat/json.h"
#include "validators.h"
#include "kgmpstat/views.h"

namespace {

using kgmpstat::json::Value;
using namespace std::chrono_literals;

struct Result {
  int rc = -1;
  std::string out, err;
};

std::string ReadAllFd(int fd) {
  std::string s;
  char buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) s.append(buf, static_cast<size_t>(n));
  return s;
}

// Runs argv to completion (killed after `limit`), capturing stdout and stderr. `as_uid` >= 0:
// the child drops to that uid first (the permission test, when we are root).
Result RunCmd(std::vector<std::string> argv, std::chrono::seconds limit = 20s, int as_uid = -1) {
  int o[2], e[2];
  if (pipe2(o, O_CLOEXEC) != 0 || pipe2(e, O_CLOEXEC) != 0) return {};
  pid_t pid = fork();
  if (pid == 0) {
    dup2(o[1], 1);
    dup2(e[1], 2);
    if (as_uid >= 0 && (setgid(static_cast<gid_t>(as_uid)) != 0 || setuid(static_cast<uid_t>(as_uid)) != 0))
      _exit(125);
    std::vector<char*> a;
    for (auto& s : argv) a.push_back(s.data());
    a.push_back(nullptr);
    execv(a[0], a.data());
    _exit(127);
  }
  close(o[1]);
  close(e[1]);
  Result r;
  std::thread te([&] { r.err = ReadAllFd(e[0]); });
  std::thread killer([&, pid] {
    auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
      if (kill(pid, 0) != 0) return;
      std::this_thread::sleep_for(50ms);
    }
    kill(pid, SIGKILL);
  });
  r.out = ReadAllFd(o[0]);
  te.join();
  int st = 0;
  waitpid(pid, &st, 0);
  killer.join();
  close(o[0]);
  close(e[0]);
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return r;
}

// A background child with a pipe on its stdin (closing it is how kgmp_workload is stopped)
// and its stdout readable line by line.
struct Child {
  pid_t pid = -1;
  int in = -1, out = -1;

  static Child Start(std::vector<std::string> argv) {
    int i[2], o[2];
    Child c;
    if (pipe2(i, O_CLOEXEC) != 0 || pipe2(o, O_CLOEXEC) != 0) return c;
    c.pid = fork();
    if (c.pid == 0) {
      dup2(i[0], 0);
      dup2(o[1], 1);
      std::vector<char*> a;
      for (auto& s : argv) a.push_back(s.data());
      a.push_back(nullptr);
      execv(a[0], a.data());
      _exit(127);
    }
    close(i[0]);
    close(o[1]);
    c.in = i[1];
    c.out = o[0];
    return c;
  }
  // The first stdout line, or "" after `limit`.
  std::string Line(std::chrono::milliseconds limit = 5000ms) {
    std::string s;
    auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
      pollfd p{out, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) continue;
      char ch;
      if (read(out, &ch, 1) != 1) break;
      if (ch == '\n') return s;
      s += ch;
    }
    return "";
  }
  // Closes stdin and waits (SIGKILL after `limit`); the exit status, or 128 + signal.
  int Stop(std::chrono::milliseconds limit = 10000ms) {
    if (pid <= 0) return -1;
    if (in >= 0) close(in);
    in = -1;
    auto end = std::chrono::steady_clock::now() + limit;
    int st = 0;
    for (;;) {
      pid_t r = waitpid(pid, &st, WNOHANG);
      if (r == pid) break;
      if (std::chrono::steady_clock::now() > end) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        break;
      }
      std::this_thread::sleep_for(20ms);
    }
    pid = -1;
    if (out >= 0) close(out);
    out = -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  }
  void Kill() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      pid = -1;
    }
    if (in >= 0) close(in);
    if (out >= 0) close(out);
    in = out = -1;
  }
};

class KgmpstatTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "kgmpstat-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    setenv("KGMP_RUNTIME_DIR", dir_.c_str(), 1);
  }
  void TearDown() override {
    for (Child& c : children_) c.Kill();
    RunCmd({"/bin/rm", "-rf", dir_});
  }

  std::string Sock(int pid) const { return absl::StrCat(dir_, "/", pid, ".sock"); }

  // A fake server in `mode`; its pid once it listens.
  int Fake(const std::string& mode, int procs = 2) {
    children_.push_back(Child::Start(
        {FAKE_SERVER_BIN, "--mode=" + mode, absl::StrCat("--procs=", procs)}));
    Child& c = children_.back();
    EXPECT_EQ(c.Line(), "ready");
    return c.pid;
  }

  Result Stat(std::vector<std::string> args, std::chrono::seconds limit = 20s) {
    args.insert(args.begin(), KGMPSTAT_BIN);
    return RunCmd(args, limit);
  }

  std::string dir_;
  std::vector<Child> children_;
};

std::string Show(const Result& r) {
  return absl::StrCat("rc=", r.rc, "\n--- stdout\n", r.out, "--- stderr\n", r.err);
}

bool HavePython() { return access("/usr/bin/python3", X_OK) == 0; }

// Python's json module as a second, independent parser of a file.
void ExpectPythonParses(const std::string& path) {
  if (!HavePython()) return;
  Result r = RunCmd({"/usr/bin/python3", "-c",
                  "import json,sys; json.load(open(sys.argv[1]), parse_constant=lambda c: 1/0)",
                  path});
  EXPECT_EQ(r.rc, 0) << Show(r);
}

// ---- the JSON parser's strictness (the tests below lean on it) ----

TEST(KgmpstatJson, RejectsWhatRfc8259Rejects) {
  for (const char* bad : {"", "{", "[1,]", "{\"a\":1,}", "01", "1.", ".5", "NaN", "\"\x01\"",
                          "{\"a\":1}{", "[1] x", "\"\\ud800\"", "{\"a\":1,\"a\":2}", "'a'",
                          "tru", "-", "1e", "[\"\\x\"]"})
    EXPECT_FALSE(kgmpstat::json::Parse(bad).ok()) << bad;
  auto v = kgmpstat::json::Parse(
      R"({"a":[1,-2.5e3,true,null,"\u00e9\ud83d\ude00\n"],"big":9007199254740993})");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->find("a")->items()[1].as_double(), -2500);
  EXPECT_EQ(v->find("a")->items()[4].as_string(), "\xc3\xa9\xf0\x9f\x98\x80\n");
  EXPECT_EQ(v->get_int("big"), 9007199254740993LL);  // exact beyond 2^53
  EXPECT_EQ(kgmpstat::json::Write(*v),
            "{\"a\":[1,-2500,true,null,\"\xc3\xa9\xf0\x9f\x98\x80\\n\"],\"big\":9007199254740993}");
}

// ---- outputs, against the fake server ----

TEST_F(KgmpstatTest, JsonIsOneSnapshotWithTheProtocolFields) {
  int pid = Fake("ok");
  Result r = Stat({"json", absl::StrCat(pid)});
  ASSERT_EQ(r.rc, 0) << Show(r);
  auto v = kgmpstat::json::Parse(r.out);
  ASSERT_TRUE(v.ok()) << v.status() << "\n" << r.out;
  for (const char* k : {"pid", "now_ns", "uptime_ns", "monitor", "gomaxprocs", "goroutines",
                        "threads", "procs", "cores", "ms", "delta", "interval_ns"})
    EXPECT_NE(v->find(k), nullptr) << k;
  EXPECT_EQ(v->get_int("pid"), pid);
  ASSERT_EQ(v->find("procs")->items().size(), 2u);
  EXPECT_EQ(v->find("procs")->items()[0].find("lat_hist")->items().size(), 40u);
  for (const Value& p : v->find("procs")->items())
    EXPECT_EQ(absl::StrJoin(kgmpstat::testing::MissingProcFields(p), " "), "");
  ASSERT_NE(v->find("delta"), nullptr);
  ASSERT_NE(v->find("delta")->find("procs"), nullptr);
  for (const Value& p : v->find("delta")->find("procs")->items())
    EXPECT_EQ(absl::StrJoin(kgmpstat::testing::MissingProcFields(p), " "), "");
  std::string f = dir_ + "/snap.json";
  std::ofstream(f) << r.out;
  ExpectPythonParses(f);
}

TEST_F(KgmpstatTest, PromFollowsTheExpositionFormat) {
  int pid = Fake("ok");
  Result r = Stat({"prom", absl::StrCat(pid)});
  ASSERT_EQ(r.rc, 0) << Show(r);
  kgmpstat::testing::PromReport rep = kgmpstat::testing::ValidateProm(r.out);
  EXPECT_TRUE(rep.errors.empty()) << absl::StrJoin(rep.errors, "\n") << "\n" << r.out;
  EXPECT_EQ(rep.types["kgmp_proc_steals_total"], "counter");
  EXPECT_EQ(rep.types["kgmp_sched_goroutines_goroutines"], "gauge");
  EXPECT_EQ(rep.types["kgmp_proc_scheduling_latency_seconds"], "histogram");
  EXPECT_EQ(rep.types["kgmp_cpu_offcpu_seconds"], "histogram");
  EXPECT_EQ(rep.types["kgmp_proc_busy_seconds_total"], "counter");
  EXPECT_TRUE(absl::StrContains(r.out, "kgmp_proc_steals_total{proc=\"1\",cpu=\"1\"} 21\n"))
      << r.out;
  EXPECT_EQ(absl::StrJoin(kgmpstat::testing::MissingProcFamilies(rep), " "), "") << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "# HELP kgmp_proc_preemptions_total ")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "kgmp_proc_preemptions_total{proc=\"1\",cpu=\"1\"} 4\n"))
      << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "kgmp_proc_busy_seconds_total{proc=\"0\",cpu=\"0\"} 0.8\n"))
      << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "le=\"+Inf\"")) << r.out;
}

TEST_F(KgmpstatTest, HistHasRunqlatLayout) {
  int pid = Fake("ok");
  Result r = Stat({"hist", absl::StrCat(pid)});
  ASSERT_EQ(r.rc, 0) << Show(r);
  EXPECT_TRUE(absl::StrContains(r.out, "P = 0 (cpu 0): scheduling latency")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "usecs               : count    distribution")) << r.out;
  int bars = 0, full = 0;
  for (absl::string_view l : absl::StrSplit(r.out, '\n')) {
    if (!absl::StrContains(l, " -> ") || !absl::StrContains(l, "|")) continue;
    bars++;
    size_t a = l.find('|'), b = l.rfind('|');
    ASSERT_NE(a, b) << l;
    EXPECT_EQ(b - a - 1, 40u) << l;  // the bar is 40 wide
    full += absl::StrContains(l, std::string(40, '*'));
  }
  EXPECT_GT(bars, 4);
  EXPECT_EQ(full, 2) << r.out;  // the largest bucket of each of the two histograms
  Result c = Stat({"hist", absl::StrCat(pid), "--per=core", "--ms"});
  ASSERT_EQ(c.rc, 0) << Show(c);
  EXPECT_TRUE(absl::StrContains(c.out, "cpu = 1: off-CPU time")) << c.out;
  EXPECT_TRUE(absl::StrContains(c.out, "cpu = 1: wake-to-run latency")) << c.out;
  EXPECT_TRUE(absl::StrContains(c.out, "msecs")) << c.out;
  Result w = Stat({"hist", absl::StrCat(pid), "--window=0.1"});
  ASSERT_EQ(w.rc, 0) << Show(w);
  Result bad = Stat({"hist", absl::StrCat(pid), "--per=m"});
  EXPECT_EQ(bad.rc, 2) << Show(bad);
  EXPECT_TRUE(absl::StrContains(bad.err, "--per must be 'p' or 'core'")) << bad.err;
}

TEST_F(KgmpstatTest, TraceIsValidTraceEventJson) {
  int pid = Fake("ok");
  const std::string f = dir_ + "/trace.json";
  Result r = Stat({"trace", absl::StrCat(pid), "--seconds=0.1", "-o", f});
  ASSERT_EQ(r.rc, 0) << Show(r);
  std::ifstream in(f);
  std::stringstream ss;
  ss << in.rdbuf();
  auto doc = kgmpstat::json::Parse(ss.str());
  ASSERT_TRUE(doc.ok()) << doc.status();
  ExpectPythonParses(f);
  kgmpstat::testing::TraceReport rep = kgmpstat::testing::ValidateTrace(*doc);
  EXPECT_TRUE(rep.errors.empty()) << absl::StrJoin(rep.errors, "\n");
  // The fake's script (fake_stats_server.cpp): 21 slices, tracks named after P, cpu, M, tid.
  int slices = 0;
  for (auto& [t, n] : rep.slices_per_track) slices += n;
  EXPECT_EQ(slices, 21);
  EXPECT_EQ((rep.thread_names[{pid, 1}]), "P0 (cpu 0)");
  EXPECT_EQ((rep.thread_names[{pid, 100002}]), "M2 tid 40001");
  EXPECT_EQ((rep.slices_per_track[{pid, 1}]), 4);
  EXPECT_EQ((rep.slices_per_track[{pid, 2}]), 5);
  EXPECT_TRUE(rep.process_names.count(pid));
  EXPECT_TRUE(rep.counter_names.count("Goroutines"));
  EXPECT_TRUE(rep.counter_names.count("Threads"));
  EXPECT_TRUE(rep.counter_names.count("P0 runq"));
  EXPECT_TRUE(rep.instant_names.count("steal"));
  EXPECT_TRUE(rep.instant_names.count("handoff"));
  EXPECT_TRUE(absl::StrContains(r.out, "hand-offs: 2 (recorded block -> hand-off over 2 matched, "
                                       "i.e. kgmp::blocking() entries: p50 20us, p99 20us"))
      << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "monitor=trace")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "(2 dropped)")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, f)) << r.out;
}

// The validator itself must catch what Perfetto rejects.
TEST(KgmpstatValidators, TraceValidatorCatchesOverlapsAndOpenSlices) {
  auto doc = kgmpstat::json::Parse(R"({"displayTimeUnit":"ns","traceEvents":[
    {"name":"thread_name","ph":"M","pid":1,"tid":2,"args":{"name":"t"}},
    {"name":"process_name","ph":"M","pid":1,"tid":0,"args":{"name":"p"}},
    {"name":"a","ph":"X","pid":1,"tid":2,"ts":1,"dur":5},
    {"name":"b","ph":"X","pid":1,"tid":2,"ts":3,"dur":5},
    {"name":"c","ph":"B","pid":1,"tid":2,"ts":9}]})");
  ASSERT_TRUE(doc.ok());
  auto rep = kgmpstat::testing::ValidateTrace(*doc);
  EXPECT_EQ(rep.errors.size(), 2u) << absl::StrJoin(rep.errors, "\n");
  auto prom = kgmpstat::testing::ValidateProm(
      "# HELP kgmp_x_total x\n# TYPE kgmp_x_total counter\nkgmp_x_total 1\n"
      "kgmp_y 2\n# TYPE kgmp_h histogram\n# HELP kgmp_h h\nkgmp_h_bucket{le=\"1\"} 3\n"
      "kgmp_h_bucket{le=\"2\"} 2\nkgmp_h_sum 1\nkgmp_h_count 2\n");
  // kgmp_y: no HELP/TYPE (twice: the sample and the summary); kgmp_h: decreasing, no +Inf,
  // +Inf != count.
  EXPECT_GE(prom.errors.size(), 4u) << absl::StrJoin(prom.errors, "\n");
}

TEST_F(KgmpstatTest, TopUnderTmuxShowsAHeaderAndARowPerCore) {
  if (access("/usr/bin/tmux", X_OK) != 0) GTEST_SKIP() << "tmux is not installed (scripts/setup installs it)";
  int pid = Fake("ok", 3);
  const std::string sock = absl::StrCat("kgmpstat-test-", getpid());
  const std::string cmd = absl::StrCat("env KGMP_RUNTIME_DIR=", dir_, " ", KGMPSTAT_BIN, " top ",
                                       pid, " --interval=0.2 --count=3; sleep 30");
  Result s = RunCmd({"/usr/bin/tmux", "-L", sock, "-f", "/dev/null", "new-session", "-d", "-x", "160",
                  "-y", "40", cmd});
  ASSERT_EQ(s.rc, 0) << Show(s);
  std::string screen;
  for (int i = 0; i < 50; i++) {
    std::this_thread::sleep_for(100ms);
    screen = RunCmd({"/usr/bin/tmux", "-L", sock, "capture-pane", "-p"}).out;
    if (absl::StrContains(screen, "CORE") && absl::StrContains(screen, "\n2 ")) break;
  }
  RunCmd({"/usr/bin/tmux", "-L", sock, "kill-server"});
  EXPECT_TRUE(absl::StrContains(screen, "kgmpstat top: pid")) << screen;
  int header = 0, rows = 0;
  for (absl::string_view l : absl::StrSplit(screen, '\n')) {
    if (absl::StartsWith(l, "CORE ")) header++;
    for (int cpu = 0; cpu < 3; cpu++)
      if (absl::StartsWith(l, absl::StrCat(cpu, "    ", cpu, " "))) rows++;
  }
  EXPECT_EQ(header, 1) << screen;  // the screen is cleared: one frame visible
  EXPECT_EQ(rows, 3) << screen;
  EXPECT_TRUE(absl::StrContains(screen, "G17")) << screen;
  EXPECT_TRUE(absl::StrContains(screen, "trace")) << screen;
}

TEST_F(KgmpstatTest, TopWithoutTerminalPrintsFrames) {
  int pid = Fake("ok");
  Result r = Stat({"top", absl::StrCat(pid), "--interval=0.05", "--count=2"});
  ASSERT_EQ(r.rc, 0) << Show(r);
  EXPECT_FALSE(absl::StrContains(r.out, "\033[")) << "no escapes when not a terminal";
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n') > 8, true) << r.out;
  // Rates from the delta: 21 steals of P1 over 1 s; busy 0.8 s of 1 s on P0.
  EXPECT_TRUE(absl::StrContains(r.out, "21.0")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "80.0")) << r.out;
  // 4 preemptions of P1 over 1 s, in their own column.
  EXPECT_TRUE(absl::StrContains(r.out, "PREEMPT/s")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "       4.0 ")) << r.out;
}

TEST_F(KgmpstatTest, ListShowsLiveAndStaleProcesses) {
  int live = Fake("ok");
  int dying = Fake("die");
  Stat({"json", absl::StrCat(dying)});  // makes it die: its socket stays behind
  for (int i = 0; i < 100 && kill(dying, 0) == 0; i++) {
    waitpid(dying, nullptr, WNOHANG);
    std::this_thread::sleep_for(20ms);
  }
  Result r = Stat({"list"});
  ASSERT_EQ(r.rc, 0) << Show(r);
  EXPECT_TRUE(absl::StrContains(r.out, "GOMAXPROCS")) << r.out;
  bool live_row = false, stale_row = false;
  for (absl::string_view l : absl::StrSplit(r.out, '\n')) {
    if (absl::StartsWith(l, absl::StrCat(live, " "))) live_row = absl::StrContains(l, "trace");
    if (absl::StartsWith(l, absl::StrCat(dying, " ")))
      stale_row = absl::StrContains(l, "STALE") && absl::StrContains(l, "rm " + Sock(dying));
  }
  EXPECT_TRUE(live_row) << r.out;
  EXPECT_TRUE(stale_row) << r.out;
}

// ---- every error: one line on stderr, non-zero exit ----

void ExpectOneLineError(const Result& r, int rc, const std::string& needle) {
  EXPECT_EQ(r.rc, rc) << Show(r);
  EXPECT_TRUE(absl::StrContains(r.err, needle)) << "want '" << needle << "'\n" << Show(r);
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << Show(r);
}

TEST_F(KgmpstatTest, ErrorMissingOrBadPid) {
  ExpectOneLineError(Stat({"top"}), 2, "top: missing PID (usage: kgmpstat top PID)");
  ExpectOneLineError(Stat({"json", "abc"}), 2, "json: bad PID 'abc'");
  ExpectOneLineError(Stat({"prom", "0"}), 2, "bad PID '0'");
  ExpectOneLineError(Stat({"hist", "12x"}), 2, "bad PID '12x'");
  ExpectOneLineError(Stat({"trace", "12", "34"}), 2, "unexpected argument '34'");
  ExpectOneLineError(Stat({"frobnicate", "1"}), 2, "unknown subcommand 'frobnicate'");
  ExpectOneLineError(Stat({}), 2, "missing subcommand");
  ExpectOneLineError(Stat({"trace", "1"}), 2, "trace: -o FILE is required");
}

TEST_F(KgmpstatTest, ErrorBadFlag) {
  Result r = Stat({"top", "1", "--bogus=3"});
  EXPECT_NE(r.rc, 0) << Show(r);
  EXPECT_TRUE(absl::StrContains(r.err, "Unknown command line flag 'bogus'")) << Show(r);
  Result b = Stat({"top", "1", "--interval=soon"});
  EXPECT_NE(b.rc, 0) << Show(b);
  EXPECT_TRUE(absl::StrContains(b.err, "interval")) << Show(b);
}

TEST_F(KgmpstatTest, ErrorNoSuchProcess) {
  Result t = RunCmd({"/bin/true"});  // a pid that just exited (reaped)
  (void)t;
  pid_t p = fork();
  if (p == 0) _exit(0);
  waitpid(p, nullptr, 0);
  ExpectOneLineError(Stat({"json", absl::StrCat(p)}), 1, absl::StrCat("no such process: ", p));
}

TEST_F(KgmpstatTest, ErrorNotAKgmpProcess) {
  children_.push_back(Child::Start({"/bin/sleep", "30"}));
  const int pid = children_.back().pid;
  std::this_thread::sleep_for(50ms);
  ExpectOneLineError(Stat({"top", absl::StrCat(pid)}), 1,
                     absl::StrCat("process ", pid, " (sleep) is not a kgmp process: no stats socket ",
                                  Sock(pid)));
}

TEST_F(KgmpstatTest, ErrorStaleSocketOfADeadProcess) {
  pid_t p = fork();
  if (p == 0) _exit(0);
  waitpid(p, nullptr, 0);
  // A socket file left by a process that died without unlinking it.
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", Sock(p).c_str());
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  close(fd);
  ExpectOneLineError(Stat({"json", absl::StrCat(p)}), 1,
                     absl::StrCat("stale socket ", Sock(p), ": process ", p,
                                  " is dead; remove it with: rm ", Sock(p)));
  Result l = Stat({"list"});
  EXPECT_TRUE(absl::StrContains(l.out, "STALE: process gone; remove with: rm " + Sock(p))) << l.out;
}

TEST_F(KgmpstatTest, ErrorStaleSocketNobodyListens) {
  int pid = Fake("nolisten");
  ExpectOneLineError(Stat({"json", absl::StrCat(pid)}), 1,
                     absl::StrCat("stale socket ", Sock(pid), ": process ", pid));
  Result r = Stat({"json", absl::StrCat(pid)});
  EXPECT_TRUE(absl::StrContains(r.err, "nothing listens on it")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "remove it with: rm")) << r.err;
}

TEST_F(KgmpstatTest, ErrorProcessNotAnswering) {
  int pid = Fake("hang");
  ExpectOneLineError(Stat({"json", absl::StrCat(pid), "--timeout=0.3"}), 1,
                     absl::StrCat("process ", pid, " is not answering on ", Sock(pid)));
}

TEST_F(KgmpstatTest, ErrorProcessDiesMidRead) {
  int pid = Fake("die");
  ExpectOneLineError(Stat({"json", absl::StrCat(pid)}), 1,
                     absl::StrCat("process ", pid, " exited mid-read"));
}

TEST_F(KgmpstatTest, ErrorProcessDiesDuringTop) {
  int pid = Fake("die");
  ExpectOneLineError(Stat({"top", absl::StrCat(pid), "--count=2"}), 1, "exited mid-read");
}

TEST_F(KgmpstatTest, ErrorRefusedAndGarbageAnswers) {
  int r = Fake("refuse");
  ExpectOneLineError(Stat({"prom", absl::StrCat(r)}), 1,
                     absl::StrCat("process ", r, " refused 'stats' (errno 22): the fake server refuses everything"));
  int g = Fake("garbage");
  ExpectOneLineError(Stat({"json", absl::StrCat(g)}), 1,
                     absl::StrCat("bad answer from process ", g, " to 'stats': JSON:"));
}

TEST_F(KgmpstatTest, ErrorPermissionDenied) {
  int pid = Fake("ok");
  Result r;
  if (geteuid() == 0) {
    // Root passes every permission check: the reader drops to an unprivileged uid instead.
    // The directory is opened up so that the socket's own 0600 is what refuses it.
    ASSERT_EQ(chmod(dir_.c_str(), 0755), 0);
    r = RunCmd({KGMPSTAT_BIN, "json", absl::StrCat(pid)}, 20s, 65534);
  } else {
    ASSERT_EQ(chmod(Sock(pid).c_str(), 0), 0);
    r = Stat({"json", absl::StrCat(pid)});
  }
  ExpectOneLineError(r, 1, absl::StrCat("permission denied connecting to ", Sock(pid)));
  EXPECT_TRUE(absl::StrContains(r.err, "run kgmpstat as that user or as root")) << r.err;
}

TEST_F(KgmpstatTest, ErrorUnwritableTraceFile) {
  int pid = Fake("ok");
  ExpectOneLineError(Stat({"trace", absl::StrCat(pid), "--seconds=0.1", "-o",
                           dir_ + "/no/such/dir/t.json"}),
                     1, "cannot write " + dir_ + "/no/such/dir/t.json");
}

// ---- a real kgmp process ----

class RealProcessTest : public KgmpstatTest {
 protected:
  void SetUp() override {
    KgmpstatTest::SetUp();
    if (IsSkipped()) return;
    children_.push_back(Child::Start({WORKLOAD_BIN}));
    std::string line = children_.back().Line();
    ASSERT_TRUE(absl::StartsWith(line, "running ")) << "workload said '" << line << "'";
    pid_ = children_.back().pid;
    for (int i = 0; i < 100; i++) {
      if (access(Sock(pid_).c_str(), F_OK) == 0) return;
      std::this_thread::sleep_for(30ms);
    }
    GTEST_SKIP() << "the kgmp runtime in this build does not serve the stats endpoint ("
                 << Sock(pid_) << " never appeared)";
  }
  void TearDown() override {
    if (pid_ > 0) {
      EXPECT_EQ(children_.front().Stop(), 0) << "the workload did not exit cleanly";
      EXPECT_NE(access(Sock(pid_).c_str(), F_OK), 0) << "the runtime left its socket behind";
    }
    KgmpstatTest::TearDown();
  }
  int pid_ = -1;
};

TEST_F(RealProcessTest, JsonPromHist) {
  std::this_thread::sleep_for(300ms);  // let every kind of G run a while
  Result j = Stat({"json", absl::StrCat(pid_)});
  ASSERT_EQ(j.rc, 0) << Show(j);
  auto v = kgmpstat::json::Parse(j.out);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->get_int("pid"), pid_);
  EXPECT_GE(v->get_int("goroutines"), 9);
  EXPECT_GE(v->get_int("gomaxprocs"), 1);
  ASSERT_NE(v->find("procs"), nullptr);
  EXPECT_EQ(static_cast<std::int64_t>(v->find("procs")->items().size()), v->get_int("gomaxprocs"));
  std::uint64_t runs = 0;
  for (const Value& p : v->find("procs")->items()) {
    runs += static_cast<std::uint64_t>(p.get_int("runs"));
    EXPECT_EQ(absl::StrJoin(kgmpstat::testing::MissingProcFields(p), " "), "");
  }
  EXPECT_GT(runs, 100u);
  Result p = Stat({"prom", absl::StrCat(pid_)});
  ASSERT_EQ(p.rc, 0) << Show(p);
  auto rep = kgmpstat::testing::ValidateProm(p.out);
  EXPECT_TRUE(rep.errors.empty()) << absl::StrJoin(rep.errors, "\n") << "\n" << p.out;
  EXPECT_TRUE(rep.types.count("kgmp_proc_scheduling_latency_seconds")) << p.out;
  EXPECT_EQ(absl::StrJoin(kgmpstat::testing::MissingProcFamilies(rep), " "), "") << p.out;
  Result h = Stat({"hist", absl::StrCat(pid_)});
  ASSERT_EQ(h.rc, 0) << Show(h);
  EXPECT_TRUE(absl::StrContains(h.out, "usecs")) << h.out;
  Result l = Stat({"list"});
  EXPECT_TRUE(absl::StrContains(l.out, absl::StrCat(pid_, " "))) << l.out;
}

TEST_F(RealProcessTest, TraceIsValid) {
  const std::string f = dir_ + "/real.json";
  Result r = Stat({"trace", absl::StrCat(pid_), "--seconds=0.5", "-o", f});
  ASSERT_EQ(r.rc, 0) << Show(r);
  std::ifstream in(f);
  std::stringstream ss;
  ss << in.rdbuf();
  auto doc = kgmpstat::json::Parse(ss.str());
  ASSERT_TRUE(doc.ok()) << doc.status();
  ExpectPythonParses(f);
  auto rep = kgmpstat::testing::ValidateTrace(*doc);
  EXPECT_TRUE(rep.errors.empty()) << absl::StrJoin(rep.errors, "\n");
  EXPECT_GT(rep.by_phase["X"], 10) << r.out;
  EXPECT_TRUE((rep.thread_names.count({pid_, 1}))) << "no P0 track";
  EXPECT_TRUE(absl::StrContains(r.out, "hand-offs: ")) << r.out;
}

TEST_F(RealProcessTest, TopUnderTmux) {
  if (access("/usr/bin/tmux", X_OK) != 0) GTEST_SKIP() << "tmux is not installed";
  const std::string sock = absl::StrCat("kgmpstat-real-", getpid());
  RunCmd({"/usr/bin/tmux", "-L", sock, "-f", "/dev/null", "new-session", "-d", "-x", "160", "-y", "40",
       absl::StrCat("env KGMP_RUNTIME_DIR=", dir_, " ", KGMPSTAT_BIN, " top ", pid_,
                    " --interval=0.3 --count=3; sleep 30")});
  std::string screen;
  for (int i = 0; i < 40; i++) {
    std::this_thread::sleep_for(100ms);
    screen = RunCmd({"/usr/bin/tmux", "-L", sock, "capture-pane", "-p"}).out;
    if (absl::StrContains(screen, "CORE")) break;
  }
  std::this_thread::sleep_for(300ms);
  screen = RunCmd({"/usr/bin/tmux", "-L", sock, "capture-pane", "-p"}).out;
  RunCmd({"/usr/bin/tmux", "-L", sock, "kill-server"});
  auto j = kgmpstat::json::Parse(Stat({"json", absl::StrCat(pid_)}).out);
  ASSERT_TRUE(j.ok());
  const size_t procs = j->find("procs")->items().size();
  size_t rows = 0;
  bool header = false;
  for (absl::string_view l : absl::StrSplit(screen, '\n')) {
    header |= absl::StartsWith(l, "CORE ");
    if (!l.empty() && (std::isdigit(static_cast<unsigned char>(l[0])) || l[0] == '-') &&
        absl::StrContains(l, j->get_string("monitor")))
      rows++;
  }
  EXPECT_TRUE(header) << screen;
  EXPECT_EQ(rows, procs) << screen;
}

// ---- the demo (scripts/demo's main job) ----

TEST_F(KgmpstatTest, DemoPrintsScheduleTraceSummaryAndAValidTrace) {
  const std::string f = dir_ + "/demo.json";
  setenv("KGMPDEBUG", "schedtrace=500", 1);
  Result r = RunCmd({KGMP_DEMO_BIN, "--seconds=3", "--trace_after=1", "--trace_seconds=0.5",
                     "--trace=" + f},
                    60s);
  unsetenv("KGMPDEBUG");
  ASSERT_EQ(r.rc, 0) << Show(r);
  EXPECT_TRUE(absl::StrContains(r.err, "SCHED ")) << "no schedtrace line\n" << Show(r);
  EXPECT_TRUE(absl::StrContains(r.err, " gomaxprocs=")) << Show(r);
  for (const char* want : {"== kgmp-demo summary", "monitor: ", "hand-offs (whole run",
                           "hand-offs: ", "p50 ", "p99 ", "trace file: "})
    EXPECT_TRUE(absl::StrContains(r.out, want)) << want << "\n" << Show(r);
  EXPECT_TRUE(absl::StrContains(r.out, "trace file: " + f)) << Show(r);
  std::ifstream in(f);
  std::stringstream ss;
  ss << in.rdbuf();
  auto doc = kgmpstat::json::Parse(ss.str());
  ASSERT_TRUE(doc.ok()) << doc.status();
  auto rep = kgmpstat::testing::ValidateTrace(*doc);
  EXPECT_TRUE(rep.errors.empty()) << absl::StrJoin(rep.errors, "\n");
  EXPECT_GT(rep.by_phase["X"], 10);
}

}  // namespace
