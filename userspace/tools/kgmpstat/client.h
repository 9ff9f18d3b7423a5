// client.h — finding a kgmp process's stats socket and talking the scx_stats line protocol to it.
//
// The socket's place is fixed by userspace/telemetry/stats_protocol.h: <dir>/<pid>.sock, where
// <dir> depends on the *target's* environment. kgmpstat cannot read that environment, so it
// looks in every place the target could have chosen when run by the same user (and, for root,
// in every user's places): $KGMP_RUNTIME_DIR alone when set (tests, or to point kgmpstat at a
// process that set it), else $XDG_RUNTIME_DIR/kgmp, /run/kgmp, /tmp/kgmp-<uid>, and for root
// also /run/user/*/kgmp and /tmp/kgmp-*.
//
// Every failure is turned into one line a user can act on (what went wrong, on which path, and
// what to do), carried in an absl::Status: kgmpstat prints it and exits non-zero. The order of
// the checks is what makes the messages right: socket present? process alive? connect()
// accepted? answer within the timeout? a whole line before EOF?
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kgmpstat/json.h"

namespace kgmpstat {

// The directories a kgmp process of this user (every user, for root) may have put its socket in,
// existing or not, most specific first, without duplicates.
std::vector<std::string> RuntimeDirs();

struct SocketEntry {
  int pid = 0;
  std::string path;
};
// Every <pid>.sock in RuntimeDirs() (a pid found twice: the first directory's).
std::vector<SocketEntry> ListSockets();

// /proc/<pid>/comm without the newline, or "?" when unreadable.
std::string ProcessName(int pid);
// kill(pid, 0) says it exists (EPERM counts as existing).
bool ProcessAlive(int pid);

// One connection to one process's stats endpoint. Keeping it open across reads is what makes
// the server's "delta" per client (kgmpstat top keeps one).
class Connection {
 public:
  // Finds the socket of `pid` and connects, or says precisely why not.
  static absl::StatusOr<Connection> Open(int pid, absl::Duration timeout);
  // Connects to a known socket path (kgmpstat list).
  static absl::StatusOr<Connection> OpenPath(int pid, const std::string& path,
                                             absl::Duration timeout);
  Connection(Connection&& o) noexcept;
  Connection& operator=(Connection&& o) noexcept;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection();

  // Sends {"req":req,"args":args} and returns the answer's args.resp (an error if errno != 0).
  absl::StatusOr<json::Value> Request(const std::string& req, json::Value args = json::Value());

  int pid() const { return pid_; }
  const std::string& path() const { return path_; }

 private:
  Connection(int fd, int pid, std::string path, absl::Duration timeout)
      : fd_(fd), pid_(pid), path_(std::move(path)), timeout_(timeout) {}
  absl::Status Died(const char* when) const;

  int fd_ = -1;
  int pid_ = 0;
  std::string path_;
  absl::Duration timeout_;
  std::string buf_;  // bytes read past the last answer line
};

}  // namespace kgmpstat
