// scx_bpf.h — the loader of bpf/scx_kgmp.bpf.c, the `scx` monitor's kernel half (DESIGN §4).
//
// What: ScxBpf opens scx_kgmp for this process, makes it share the loaded kgmp_trace object's
// kgmp_shared and kgmp_tids maps (bpf_map__reuse_fd: one copy of the leases and the tid table,
// read by both programs, so trace is a hot standby for when the scheduler is ejected), loads it
// and attaches its struct_ops through a BPF link (the kernel unregisters the scheduler when the
// process dies, even by SIGKILL).
//
// Invariants: one ScxBpf per process and per machine (sched_ext runs one scheduler at a time:
// open() fails with a one-line reason naming the loaded one). state() is the program's .bss,
// mmapped, written live by both sides: use atomic_ref. The exit record (struct user_exit_info,
// the program's .data) is scx's: exited() and exit_reason() read it the way scx's UEI_EXITED
// and UEI_REPORT do. After the scheduler exits (ejection or detach), exited() is true and stays
// so; both memories stay valid until destruction.
//
// Rejected: a struct_ops map without a link (it survives a crashed process: notes §3); a
// separate copy of the shared memory for scx (the runtime publishes its leases once).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "scx_kgmp.h"

struct scx_kgmp;  // the bpftool skeleton, private to scx_bpf.cpp
struct bpf_link;

namespace kgmp::internal {

class ScxBpf {
 public:
  // cpu_of_p[i]: the CPU of P i (nprocs entries). shared_fd/tids_fd: the trace object's maps.
  // timeout_ms: the sched_ext watchdog (100..30000); starvation is reported after
  // min(timeout/2, 2.5 s) and parked spares are cycled at min(timeout/5, that/2).
  // test_error_ms > 0 (tests only): the program calls scx_bpf_error that long after attach.
  // test_stall (tests only): parked spares are never cycled and starvation never flagged, so
  // the kernel's watchdog ejects the scheduler after timeout_ms.
  static absl::StatusOr<std::unique_ptr<ScxBpf>> open(int nprocs, const int* cpu_of_p,
                                                      int shared_fd, int tids_fd,
                                                      unsigned timeout_ms, unsigned test_error_ms,
                                                      bool test_stall = false);
  ~ScxBpf();  // detaches (if still attached) and unloads
  ScxBpf(const ScxBpf&) = delete;
  ScxBpf& operator=(const ScxBpf&) = delete;

  kgmp_scx_state* state() { return state_; }
  // The scheduler has exited (ops.exit ran: ejection, scx_bpf_error, detach). Any thread.
  bool exited() const;
  // Once exited(): "<reason>: <message>" from the exit record ("unknown reason" if empty).
  std::string exit_reason() const;
  // Destroys the link: the kernel unregisters the scheduler (exit kind SCX_EXIT_UNREG).
  // Caller: one thread (the monitor's stop or its ejection watcher, serialized by the monitor).
  void detach();
  // Releases P p's parked watcher now (the kgmp_release syscall program). Any thread.
  absl::Status release(int p);

  // /sys/kernel/sched_ext/state ("" if absent) and root/ops (the loaded scheduler's name).
  static std::string sysfs_state();
  static std::string sysfs_ops();

 private:
  ScxBpf() = default;
  scx_kgmp* skel_ = nullptr;
  bpf_link* link_ = nullptr;
  kgmp_scx_state* state_ = nullptr;
  user_exit_info* uei_ = nullptr;
};

}  // namespace kgmp::internal
