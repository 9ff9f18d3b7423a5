// scx_bpf.cpp — load/attach bpf/scx_kgmp.bpf.c (see scx_bpf.h).
//
// Order in open(): sched_ext present and idle (else a one-line reason, before libbpf says
// anything) -> open the skeleton -> rodata (tgid, CPUs, Ps, hold period) and the struct_ops
// shadow (timeout) -> reuse the trace object's maps -> load (verifier) -> p_of_cpu in .bss ->
// attach the struct_ops link (ops.init creates the DSQs and the cycling timer). A failure
// unwinds what was done; a scheduler that another process attached between our check and our
// attach makes the attach fail with EBUSY/EEXIST, reported like the early check.
#include "scx_bpf.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <ctime>
#include <fstream>
#include <string>

#include "absl/strings/str_format.h"

// The skeleton's .bss/.rodata structs use vmlinux.h's type names.
typedef __u64 u64;
typedef __u32 u32;
typedef __s32 s32;
typedef __s64 s64;
#include "scx_kgmp.skel.h"

namespace kgmp::internal {

namespace {

std::string read_line(const char* path) {
  std::ifstream f(path);
  std::string s;
  if (!f || !std::getline(f, s)) return "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string errstr(int err) { return std::strerror(err < 0 ? -err : err); }

absl::Status busy_error(const char* when) {
  std::string ops = ScxBpf::sysfs_ops();
  return absl::UnavailableError(absl::StrFormat(
      "another sched_ext scheduler is loaded (%s%s%s, %s); sched_ext runs one at a time",
      ops.empty() ? "state " : "\"", ops.empty() ? ScxBpf::sysfs_state() : ops,
      ops.empty() ? "" : "\"", when));
}

}  // namespace

std::string ScxBpf::sysfs_state() { return read_line("/sys/kernel/sched_ext/state"); }
std::string ScxBpf::sysfs_ops() { return read_line("/sys/kernel/sched_ext/root/ops"); }

absl::StatusOr<std::unique_ptr<ScxBpf>> ScxBpf::open(int nprocs, const int* cpu_of_p,
                                                     int shared_fd, int tids_fd,
                                                     unsigned timeout_ms, unsigned test_error_ms,
                                                     bool test_stall) {
  if (access("/sys/kernel/sched_ext", F_OK) != 0)
    return absl::UnavailableError(
        "this kernel has no sched_ext (no /sys/kernel/sched_ext; it needs "
        "CONFIG_SCHED_CLASS_EXT=y, Linux >= 6.12)");
  if (geteuid() != 0)
    return absl::PermissionDeniedError("loading a sched_ext scheduler needs root");
  std::string state = sysfs_state();
  if (state != "disabled") return busy_error("seen before loading");
  if (nprocs < 1 || nprocs > KGMP_MAX_PROCS)
    return absl::InvalidArgumentError(
        absl::StrFormat("scx: %d processors, the scheduler handles 1 to %d", nprocs, KGMP_MAX_PROCS));
  if (timeout_ms < 100 || timeout_ms > 30000)
    return absl::InvalidArgumentError(
        absl::StrFormat("scx: watchdog timeout %u ms out of range (100 to 30000)", timeout_ms));

  std::unique_ptr<ScxBpf> b(new ScxBpf());
  b->skel_ = scx_kgmp__open();
  if (b->skel_ == nullptr)
    return absl::InternalError(
        absl::StrFormat("cannot open the BPF object scx_kgmp: %s", errstr(errno)));
  long ncpu = sysconf(_SC_NPROCESSORS_CONF);
  if (ncpu < 1) ncpu = 1;
  if (ncpu > KGMP_SCX_MAX_CPUS) ncpu = KGMP_SCX_MAX_CPUS;
  b->skel_->rodata->target_tgid = static_cast<__u32>(getpid());
  b->skel_->rodata->nr_cpus = static_cast<__u32>(ncpu);
  b->skel_->rodata->nprocs = static_cast<__u32>(nprocs);
  // Starvation is reported after min(timeout/2, 2.5 s); a parked spare is cycled at least
  // twice as often (an idle CPU with a parked spare only turns to sched_ext at a cycle, which
  // must not look like starvation), and well within the watchdog's timeout.
  const __u64 timeout_ns = static_cast<__u64>(timeout_ms) * 1000000ull;
  const __u64 starve_ns = std::min<__u64>(timeout_ns / 2, 2500000000ull);
  b->skel_->rodata->starve_ns = starve_ns;
  b->skel_->rodata->hold_ns = std::min<__u64>(timeout_ns / 5, starve_ns / 2);
  b->skel_->struct_ops.kgmp_ops->timeout_ms = timeout_ms;
  b->skel_->rodata->test_stall = test_stall ? 1 : 0;
  if (int err = bpf_map__reuse_fd(b->skel_->maps.kgmp_shared, shared_fd); err != 0)
    return absl::InternalError(
        absl::StrFormat("scx: cannot share the trace program's kgmp_shared map: %s", errstr(err)));
  if (int err = bpf_map__reuse_fd(b->skel_->maps.kgmp_tids, tids_fd); err != 0)
    return absl::InternalError(
        absl::StrFormat("scx: cannot share the trace program's kgmp_tids map: %s", errstr(err)));
  if (int err = scx_kgmp__load(b->skel_); err != 0)
    return absl::FailedPreconditionError(absl::StrFormat(
        "cannot load the sched_ext program scx_kgmp: %s (set KGMP_BPF_DEBUG=1 for the "
        "verifier's log)",
        errstr(err)));
  b->state_ = &b->skel_->bss->st;
  b->uei_ = &b->skel_->data->uei;
  for (int i = 0; i < nprocs; i++)
    if (cpu_of_p[i] >= 0 && cpu_of_p[i] < KGMP_SCX_MAX_CPUS)
      b->state_->p_of_cpu[cpu_of_p[i]] = static_cast<__u32>(i + 1);
  if (test_error_ms > 0) {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);  // bpf_ktime_get_ns's clock
    __u64 now = static_cast<__u64>(ts.tv_sec) * 1000000000ull + static_cast<__u64>(ts.tv_nsec);
    std::atomic_ref<__u64>(b->state_->test_error_at_ns)
        .store(now + test_error_ms * 1000000ull, std::memory_order_release);
  }
  b->link_ = bpf_map__attach_struct_ops(b->skel_->maps.kgmp_ops);
  if (b->link_ == nullptr) {
    int err = errno;
    if (err == EBUSY || err == EEXIST || err == EALREADY) return busy_error("attach refused");
    return absl::FailedPreconditionError(absl::StrFormat(
        "cannot attach the sched_ext scheduler scx_kgmp: %s%s", errstr(err),
        b->exited() ? " (ops.init failed: " + b->exit_reason() + ")" : std::string()));
  }
  return b;
}

bool ScxBpf::exited() const {
  return std::atomic_ref<__s32>(uei_->kind).load(std::memory_order_acquire) != 0;
}

std::string ScxBpf::exit_reason() const {
  std::string reason(uei_->reason, strnlen(uei_->reason, sizeof uei_->reason));
  std::string msg(uei_->msg, strnlen(uei_->msg, sizeof uei_->msg));
  if (reason.empty()) reason = "unknown reason";
  if (!msg.empty()) reason += ": " + msg;
  return reason;
}

void ScxBpf::detach() {
  if (link_ != nullptr) {
    bpf_link__destroy(link_);
    link_ = nullptr;
  }
}

ScxBpf::~ScxBpf() {
  detach();
  if (skel_ != nullptr) scx_kgmp__destroy(skel_);
}

absl::Status ScxBpf::release(int p) {
  struct {
    __u32 p;
  } args{static_cast<__u32>(p)};
  bpf_test_run_opts o;
  std::memset(&o, 0, sizeof o);
  o.sz = sizeof o;
  o.ctx_in = &args;
  o.ctx_size_in = sizeof args;
  int err = bpf_prog_test_run_opts(bpf_program__fd(skel_->progs.kgmp_release), &o);
  if (err != 0) return absl::InternalError(absl::StrFormat("scx: release: %s", errstr(err)));
  return absl::OkStatus();
}

}  // namespace kgmp::internal
