// config.cpp — Config + KGMP_MAXPROCS (and the other KGMP_ variables) + the affinity mask ->
// the Ps to run.
//
// Every error is one line naming the bad value and what to do (run() prints it and exits 2).
#include "config.h"

#include <sched.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
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

constexpr std::chrono::nanoseconds kMinSlice = std::chrono::microseconds(100);
constexpr std::chrono::nanoseconds kMaxSlice = std::chrono::seconds(10);

// Go's time.ParseDuration for one unsigned term: digits with an optional fraction ("1.5",
// ".5", "2.") and one unit of ns, us, µs (U+00B5 or U+03BC), ms or s; or "0" alone. The
// fraction is truncated to whole ns, as Go does. Values past kMaxSlice come back as "too long"
// (*over = true) rather than overflowing.
bool parse_duration(const std::string& v, std::chrono::nanoseconds* out, bool* over) {
  *over = false;
  if (v == "0") {
    *out = std::chrono::nanoseconds(0);
    return true;
  }
  std::size_t i = 0;
  std::uint64_t whole = 0;
  bool digits = false;
  for (; i < v.size() && v[i] >= '0' && v[i] <= '9'; i++, digits = true)
    if (whole < (std::uint64_t{1} << 40)) whole = whole * 10 + static_cast<unsigned>(v[i] - '0');
  std::uint64_t frac = 0, scale = 1;
  if (i < v.size() && v[i] == '.') {
    for (i++; i < v.size() && v[i] >= '0' && v[i] <= '9'; i++, digits = true)
      if (scale < 1000000000000000000ull) {  // digits past 10^-18 cannot change whole ns
        frac = frac * 10 + static_cast<unsigned>(v[i] - '0');
        scale *= 10;
      }
  }
  if (!digits) return false;
  const std::string unit = v.substr(i);
  std::uint64_t mult;
  if (unit == "ns") mult = 1;
  else if (unit == "us" || unit == "\u00b5s" || unit == "\u03bcs") mult = 1000;
  else if (unit == "ms") mult = 1000000;
  else if (unit == "s") mult = 1000000000;
  else return false;
  if (whole >= (std::uint64_t{1} << 40)) {  // > 18 minutes in any unit but ns: out of range
    *over = true;
    return true;
  }
  const unsigned __int128 ns = static_cast<unsigned __int128>(whole) * mult +
                               static_cast<unsigned __int128>(frac) * mult / scale;
  if (ns > static_cast<unsigned __int128>(kMaxSlice.count())) {
    *over = true;
    return true;
  }
  *out = std::chrono::nanoseconds(static_cast<std::int64_t>(ns));
  return true;
}

bool slice_ok(std::chrono::nanoseconds d) {
  return d.count() == 0 || (d >= kMinSlice && d <= kMaxSlice);
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

  if (const char* env = std::getenv("KGMP_PREEMPT_SLICE"); env != nullptr) {
    std::string v(env);
    std::chrono::nanoseconds d{0};
    bool over = false;
    if (!parse_duration(v, &d, &over))
      return absl::InvalidArgumentError(absl::StrFormat(
          "KGMP_PREEMPT_SLICE=\"%s\" is not a duration; set it to a time slice from 100us to "
          "10s such as 10ms, 500us or 1.5ms (Go's syntax), 0 to turn preemption off, or unset it",
          v));
    if (over || !slice_ok(d))
      return absl::InvalidArgumentError(absl::StrFormat(
          "KGMP_PREEMPT_SLICE=\"%s\" is out of range; set it to a time slice from 100us to 10s, "
          "0 to turn preemption off, or unset it",
          v));
    r.cfg.preempt_slice = d;
  } else if (!slice_ok(in.preempt_slice)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Config::preempt_slice=%dns is out of range; use 0 (no preemption) or 100 us (100000 "
        "ns) to 10 s (10000000000 ns)",
        in.preempt_slice.count()));
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
