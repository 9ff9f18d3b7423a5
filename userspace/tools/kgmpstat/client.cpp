// client.cpp — socket discovery, error classification and the line protocol (see client.h).
#include "kgmpstat/client.h"

#include <dirent.h>
#include <fcntl.h>
#include <glob.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "telemetry/stats_protocol.h"

namespace kgmpstat {

namespace tel = kgmp::telemetry;

std::vector<std::string> RuntimeDirs() {
  std::vector<std::string> dirs;
  auto add = [&](std::string d) {
    if (!d.empty() && std::find(dirs.begin(), dirs.end(), d) == dirs.end())
      dirs.push_back(std::move(d));
  };
  if (const char* e = std::getenv(tel::kRuntimeDirEnv); e != nullptr && *e != '\0') {
    add(e);
    return dirs;
  }
  if (const char* x = std::getenv("XDG_RUNTIME_DIR"); x != nullptr && *x != '\0')
    add(absl::StrCat(x, "/kgmp"));
  const uid_t uid = geteuid();
  if (uid == 0) add("/run/kgmp");
  add(absl::StrCat("/tmp/kgmp-", uid));
  if (uid == 0) {  // root may look at every user's processes
    for (const char* pattern : {"/run/user/*/kgmp", "/tmp/kgmp-*"}) {
      glob_t g{};
      if (glob(pattern, 0, nullptr, &g) == 0)
        for (size_t i = 0; i < g.gl_pathc; i++) add(g.gl_pathv[i]);
      globfree(&g);
    }
  }
  return dirs;
}

std::vector<SocketEntry> ListSockets() {
  std::vector<SocketEntry> out;
  std::set<int> seen;
  const std::string suffix = tel::kSocketSuffix;
  for (const std::string& dir : RuntimeDirs()) {
    DIR* d = opendir(dir.c_str());
    if (d == nullptr) continue;
    std::vector<SocketEntry> here;
    while (dirent* e = readdir(d)) {
      absl::string_view name = e->d_name;
      if (!absl::ConsumeSuffix(&name, suffix)) continue;
      int pid;
      if (!absl::SimpleAtoi(name, &pid) || pid <= 0 || seen.count(pid)) continue;
      here.push_back({pid, absl::StrCat(dir, "/", e->d_name)});
    }
    closedir(d);
    std::sort(here.begin(), here.end(), [](auto& a, auto& b) { return a.pid < b.pid; });
    for (auto& s : here) {
      seen.insert(s.pid);
      out.push_back(std::move(s));
    }
  }
  return out;
}

std::string ProcessName(int pid) {
  std::ifstream f(absl::StrCat("/proc/", pid, "/comm"));
  std::string s;
  if (!f || !std::getline(f, s)) return "?";
  return s;
}

bool ProcessAlive(int pid) {
  if (kill(pid, 0) != 0 && errno != EPERM) return false;
  // A zombie (exited, not yet reaped by its parent) is dead for our purposes.
  std::ifstream f(absl::StrCat("/proc/", pid, "/stat"));
  std::string stat;
  if (f && std::getline(f, stat)) {
    size_t paren = stat.rfind(')');
    if (paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z') return false;
  }
  return true;
}

namespace {

std::string Describe(int pid) { return absl::StrFormat("process %d (%s)", pid, ProcessName(pid)); }

// Finds <dir>/<pid>.sock. NotFound when in no directory; PermissionDenied when a directory
// could not be searched and the socket was not found elsewhere.
absl::StatusOr<std::string> FindSocket(int pid, std::string* looked) {
  std::string denied;
  for (const std::string& dir : RuntimeDirs()) {
    std::string p = absl::StrCat(dir, "/", pid, tel::kSocketSuffix);
    if (looked->empty()) *looked = p;
    struct stat st;
    if (lstat(p.c_str(), &st) == 0) return p;
    if (errno == EACCES && denied.empty()) denied = dir;
  }
  if (!denied.empty()) {
    struct stat st;
    uid_t owner = stat(denied.c_str(), &st) == 0 ? st.st_uid : static_cast<uid_t>(-1);
    return absl::PermissionDeniedError(absl::StrFormat(
        "permission denied searching %s (owner uid %d, mode 0700): run kgmpstat as that user or "
        "as root",
        denied, static_cast<int>(owner)));
  }
  return absl::NotFoundError("");
}

}  // namespace

absl::StatusOr<Connection> Connection::Open(int pid, absl::Duration timeout) {
  std::string looked;
  absl::StatusOr<std::string> path = FindSocket(pid, &looked);
  const bool alive = ProcessAlive(pid);
  if (!path.ok()) {
    if (absl::IsPermissionDenied(path.status())) return path.status();
    if (!alive) return absl::NotFoundError(absl::StrFormat("no such process: %d", pid));
    return absl::NotFoundError(absl::StrFormat(
        "%s is not a kgmp process: no stats socket %s (a kgmp program serves one while "
        "kgmp::run() runs, unless KGMPDEBUG=stats=0; if it set KGMP_RUNTIME_DIR, set it here too)",
        Describe(pid), looked));
  }
  if (!alive)
    return absl::UnavailableError(absl::StrFormat(
        "stale socket %s: process %d is dead; remove it with: rm %s", *path, pid, *path));
  return OpenPath(pid, *path, timeout);
}

absl::StatusOr<Connection> Connection::OpenPath(int pid, const std::string& path,
                                                absl::Duration timeout) {
  signal(SIGPIPE, SIG_IGN);  // a peer that dies mid-write is an error return, not a signal
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path)
    return absl::InvalidArgumentError(absl::StrFormat("socket path too long: %s", path));
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrFormat("socket(): %s", std::strerror(errno)));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int e = errno;
    close(fd);
    if (e == EACCES || e == EPERM) {
      struct stat st;
      int owner = stat(path.c_str(), &st) == 0 ? static_cast<int>(st.st_uid) : -1;
      return absl::PermissionDeniedError(absl::StrFormat(
          "permission denied connecting to %s (an owner-only socket of uid %d): run kgmpstat as "
          "that user or as root",
          path, owner));
    }
    if (e == ECONNREFUSED || e == ENOTSOCK || e == ENOENT) {
      if (!ProcessAlive(pid))
        return absl::UnavailableError(absl::StrFormat(
            "stale socket %s: process %d is dead; remove it with: rm %s", path, pid, path));
      return absl::UnavailableError(absl::StrFormat(
          "stale socket %s: %s is alive but nothing listens on it (its kgmp::run() ended, or "
          "the pid was reused); remove it with: rm %s",
          path, Describe(pid), path));
    }
    return absl::UnavailableError(
        absl::StrFormat("cannot connect to %s: %s", path, std::strerror(e)));
  }
  return Connection(fd, pid, path, timeout);
}

Connection::Connection(Connection&& o) noexcept
    : fd_(o.fd_), pid_(o.pid_), path_(std::move(o.path_)), timeout_(o.timeout_),
      buf_(std::move(o.buf_)) {
  o.fd_ = -1;
}
Connection& Connection::operator=(Connection&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) close(fd_);
    fd_ = o.fd_;
    o.fd_ = -1;
    pid_ = o.pid_;
    path_ = std::move(o.path_);
    timeout_ = o.timeout_;
    buf_ = std::move(o.buf_);
  }
  return *this;
}
Connection::~Connection() {
  if (fd_ >= 0) close(fd_);
}

absl::Status Connection::Died(const char* when) const {
  // A process that drops the connection is usually exiting: give it a moment to finish.
  for (int i = 0; i < 20 && ProcessAlive(pid_); i++) absl::SleepFor(absl::Milliseconds(10));
  if (!ProcessAlive(pid_))
    return absl::UnavailableError(
        absl::StrFormat("process %d exited %s (its stats connection closed)", pid_, when));
  return absl::UnavailableError(absl::StrFormat(
      "process %d closed its stats connection %s (is its kgmp::run() ending?)", pid_, when));
}

absl::StatusOr<json::Value> Connection::Request(const std::string& req, json::Value args) {
  json::Value msg = json::Value::object();
  msg.set("req", req);
  if (!args.is_null()) msg.set("args", std::move(args));
  std::string line = json::Write(msg) + "\n";
  for (size_t off = 0; off < line.size();) {
    ssize_t n = send(fd_, line.data() + off, line.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Died("before the request was sent");
    off += static_cast<size_t>(n);
  }
  // The timeout is for silence, not for the whole answer: a large trace takes a while to
  // arrive, and keeps arriving.
  absl::Time deadline = absl::Now() + timeout_;
  size_t nl, scanned = 0;
  while ((nl = buf_.find('\n', scanned)) == std::string::npos) {
    scanned = buf_.size();
    absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration())
      return absl::DeadlineExceededError(absl::StrFormat(
          "process %d is not answering on %s (no reply to '%s' within %s): it may be stopped "
          "or hung; if it is gone, remove the stale socket with: rm %s",
          pid_, path_, req, absl::FormatDuration(timeout_), path_));
    pollfd pfd{fd_, POLLIN, 0};
    int r = poll(&pfd, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    char tmp[65536];
    ssize_t n = recv(fd_, tmp, sizeof tmp, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Died(buf_.empty() ? "before answering" : "mid-read");
    buf_.append(tmp, static_cast<size_t>(n));
    deadline = absl::Now() + timeout_;
  }
  std::string answer = buf_.substr(0, nl);
  buf_.erase(0, nl + 1);
  absl::StatusOr<json::Value> v = json::Parse(answer);
  if (!v.ok())
    return absl::DataLossError(absl::StrFormat("bad answer from process %d to '%s': %s", pid_,
                                               req, v.status().message()));
  const json::Value* resp = nullptr;
  if (const json::Value* a = v->find("args"); a != nullptr) resp = a->find("resp");
  if (!v->is_object() || v->find("errno") == nullptr || resp == nullptr)
    return absl::DataLossError(absl::StrFormat(
        "bad answer from process %d to '%s': not {\"errno\":..,\"args\":{\"resp\":..}}", pid_,
        req));
  if (int64_t err = v->get_int("errno", 0); err != 0)
    return absl::FailedPreconditionError(
        absl::StrFormat("process %d refused '%s' (errno %d): %s", pid_, req, err,
                        resp->get_string("error", "no message")));
  return *resp;
}

}  // namespace kgmpstat
