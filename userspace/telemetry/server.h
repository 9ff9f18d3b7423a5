// server.h — the per-process stats endpoint (stats_protocol.h is the wire contract).
//
// What: StatsServer::start() binds <dir>/<pid>.sock (dir 0700, socket 0600) and runs one
// thread that sleeps in poll(2) on the listening socket, an eventfd (stop) and its clients:
// zero CPU while nobody connects. Each client writes JSON requests one per line and gets one
// line per request. The destructor stops the thread, closes every client and unlinks the
// socket (run() destroys it when the main G returns).
//
// Invariants: the server never blocks on a client: sockets are non-blocking, answers are
// queued per client and written as the client drains them, and sends use MSG_NOSIGNAL, so a
// client that disconnects mid-answer (EPIPE) costs its connection only. Limits: 64 clients,
// 64 KiB per request line, 256 MiB of queued answer per client (a bigger backlog closes it).
// It reads the scheduler only through take_snapshot() (no scheduler lock) and the trace
// recorder's session calls.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "counters.h"

namespace kgmp::internal {

// The socket's directory per stats_protocol.h ($KGMP_RUNTIME_DIR, else $XDG_RUNTIME_DIR/kgmp,
// else /run/kgmp for root, else /tmp/kgmp-<uid>).
std::string stats_dir();

class StatsServer {
 public:
  static absl::StatusOr<std::unique_ptr<StatsServer>> start();
  ~StatsServer();
  const std::string& path() const { return path_; }

  // One request line -> one answer line (without the newline). `prev` is the connection's
  // delta baseline, updated by "stats". Public for the tests.
  struct Baseline;
  static std::string answer(const std::string& line, Baseline& prev);

 private:
  StatsServer() = default;
  void loop();
  std::string path_;
  int listen_fd_ = -1;
  int stop_fd_ = -1;
  pthread_t thread_{};
  bool started_ = false;
};

// The trace recorder's sessions (telemetry.cpp). One at a time per run.
struct TraceDump {
  std::vector<TraceEvent> events;  // by time
  std::uint64_t dropped = 0;
  std::int64_t start_ns = 0, end_ns = 0;
};
absl::Status trace_session_start(std::uint64_t max_events);
absl::StatusOr<TraceDump> trace_session_stop();

}  // namespace kgmp::internal
