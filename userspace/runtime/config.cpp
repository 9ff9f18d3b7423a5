// config.cpp — Config + KGMP_MAXPROCS + the affinity mask -> the Ps to run.
//
// Every error is one line naming the bad value and what to do (run() prints it and exits 2).
#include "config.h"

#include <sched.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"

namespace kgmp {
namespace internal {
namespace {
constexpr std::size_t kMinStack = 16 * 1024;
constexpr std::size_t kMaxStack = std::size_t{1} << 30;

std::vector<int> allowed_cpus() {
  cpu_set_t set;
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return cpus;
  for (int c = 0; c < CPU_SETSIZE; c++)
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  return cpus;
}
}  // namespace

absl::StatusOr<Resolved> resolve_config(const Config& in) {
  Resolved r;
  r.cfg = in;
  std::vector<int> cpus = allowed_cpus();
  if (cpus.empty())
    return absl::FailedPreconditionError(
        "cannot read this process's CPU affinity mask (sched_getaffinity failed)");
  const int ncpu = static_cast<int>(cpus.size());

  int procs = in.procs;
  const char* what = "Config::procs";
  std::string shown = absl::StrFormat("%d", in.procs);
  if (const char* env = std::getenv("KGMP_MAXPROCS"); env != nullptr) {
    what = "KGMP_MAXPROCS";
    shown = absl::StrFormat("\"%s\"", env);
    if (!absl::SimpleAtoi(env, &procs))
      return absl::InvalidArgumentError(absl::StrFormat(
          "KGMP_MAXPROCS=%s is not a whole number; set it to a number of processors from 1 to "
          "%d (the CPUs this process may run on), or unset it",
          shown, ncpu));
    if (procs <= 0)
      return absl::InvalidArgumentError(absl::StrFormat(
          "KGMP_MAXPROCS=%s is out of range; set it to a number of processors from 1 to %d "
          "(the CPUs this process may run on), or unset it",
          shown, ncpu));
  } else if (procs < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Config::procs=%d is negative; use 0 (one processor per allowed CPU) or 1 to %d",
        procs, ncpu));
  }
  if (procs == 0) procs = ncpu;
  if (procs > ncpu)
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s=%s asks for %d processors but this process may run on %d CPUs (its affinity "
        "mask), and each processor is bound to one CPU; use 1 to %d",
        what, shown, procs, ncpu, ncpu));
  r.cfg.procs = procs;
  r.cpus.assign(cpus.begin(), cpus.begin() + procs);

  if (in.stack_size < kMinStack || in.stack_size > kMaxStack)
    return absl::InvalidArgumentError(absl::StrFormat(
        "Config::stack_size=%u bytes is out of range; use 16 KiB (16384) to 1 GiB (1073741824)",
        in.stack_size));
  const std::size_t ps = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  r.cfg.stack_size = (in.stack_size + ps - 1) / ps * ps;

  if (const char* mon = std::getenv("KGMP_MONITOR"); mon != nullptr) {
    std::string m(mon);
    if (m != "auto" && m != "scx" && m != "trace" && m != "poll")
      return absl::InvalidArgumentError(absl::StrFormat(
          "KGMP_MONITOR=\"%s\" is not a monitor; use auto, scx, trace or poll, or unset it", m));
    r.monitor = m;
  }
  if (const char* sp = std::getenv("KGMP_TRACE_SPARE"); sp != nullptr) {
    std::string v(sp);
    if (v != "held" && v != "sleep")
      return absl::InvalidArgumentError(absl::StrFormat(
          "KGMP_TRACE_SPARE=\"%s\" is not a spare policy; use held (the trace monitor keeps "
          "each core's spare runnable at SCHED_IDLE) or sleep, or unset it", v));
    r.hold_spares = v == "held";
  }

  if (in.max_threads < procs)
    return absl::InvalidArgumentError(absl::StrFormat(
        "Config::max_threads=%d is below the %d processors, and each needs its own thread; "
        "raise it (default 10000)",
        in.max_threads, procs));
  return r;
}

}  // namespace internal

absl::Status check_config(const Config& cfg) { return internal::resolve_config(cfg).status(); }

}  // namespace kgmp
