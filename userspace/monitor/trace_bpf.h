// trace_bpf.h — the loader of bpf/kgmp_trace.bpf.c: the `trace` monitor's kernel half (DESIGN §4).
//
// What: TraceBpf loads the tracing program for this process (target_tgid = getpid()), maps the
// shared memory of kgmp_trace.h (one BPF_F_MMAPABLE array value: leases, run queue lengths,
// per-M counters), keeps the tid -> M slot table, and hands out one Ring per P: the P's spare M
// sleeps in Ring::wait() and is woken by the kernel, on its own CPU, when the M holding the P
// blocks with work pending (the block event carries the lease word BPF read).
//
// Invariants:
//   - One TraceBpf per process (the program filters on getpid(); two instances would each send
//     their own events, doubling the wakeups). Not enforced.
//   - hdr.nprocs is written once by open() before attaching; every M slot starts with
//     p = KGMP_NO_P and cpu = -1 (a zero slot would claim P 0).
//   - One consumer per ring: ring(p) hands out P p's Ring once at a time; it is free again when
//     that Ring is destroyed. A Ring holds its own reference to the kernel ring, so it may
//     outlive the TraceBpf (it then never receives anything again).
//
// The racy protocol (DESIGN §3): BPF reads the lease and the run queue lengths with plain loads
// while the runtime changes them. An event means "when M blocked, P p's lease was exactly
// `lease` and p had work". The consumer must CAS the lease from exactly ev.lease (a newer
// lease, e.g. the M woke and re-entered the runtime, makes the CAS fail and the event stale);
// a missed event (a stale-low runq_len, a dropped event) leaves the hand-off to the poll
// fallback. The runtime publishes its fields with release stores or atomic_ref (shared() is plain
// memory that the kernel reads and writes concurrently).
//
// Rejected: ring_buffer__poll (its epoll data are ring indexes, so an eventfd for wake() cannot
// share its epoll fd; we own the epoll fd and use ring_buffer__consume); one ring for all Ps
// with a monitor thread (two wakeups per hand-off, 25-52 us here against 17 us for one); a
// perf buffer (per-CPU, not per-P, and it also wakes through irq_work); BPF task storage for
// the tid -> slot map (needs a pidfd or the task pointer from user space; a hash of 4096
// entries costs ~50 ns and only for tasks of this process).
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kgmp_trace.h"

struct kgmp_trace;  // the bpftool skeleton (kgmp_trace.skel.h), private to trace_bpf.cpp
struct ring_buffer;

namespace kgmp::internal {

struct RingClaims;  // which Ps' rings are handed out (trace_bpf.cpp)

class TraceBpf {
 public:
  // Opens, sets target_tgid = getpid(), loads and attaches kgmp_trace for `nprocs` Ps (1 to
  // KGMP_MAX_PROCS; creates one ring buffer per P and inserts it into kgmp_rings). Every error
  // comes back as a Status whose message is one line saying what failed and why, e.g.
  // "cannot load the BPF program: Operation not permitted (needs root or CAP_BPF+CAP_PERFMON)".
  // libbpf's own messages never reach stderr, except its warnings when a load fails for a
  // reason other than missing privileges (a verifier rejection: the log says why); KGMP_BPF_DEBUG=1
  // prints all of them. The failure's libbpf log is also attached to the Status as the payload
  // kLogPayload and kept for last_log().
  static absl::StatusOr<std::unique_ptr<TraceBpf>> open(int nprocs);
  ~TraceBpf();  // detaches and unloads (Rings still alive go quiet)

  TraceBpf(const TraceBpf&) = delete;
  TraceBpf& operator=(const TraceBpf&) = delete;

  // The mmap'd map value, shared with BPF and valid until destruction. Use atomic_ref or
  // volatile accesses: the kernel reads and writes it concurrently.
  kgmp_shared* shared() { return shared_; }
  // The per-core telemetry counters (kgmp_cores, mmap'd read-only), valid until destruction.
  const kgmp_cores* cores() const { return cores_; }
  int nprocs() const { return nprocs_; }
  // The fds of the kgmp_shared and kgmp_tids maps (owned by this object), for scx_kgmp to
  // share them (bpf_map__reuse_fd dups them).
  int shared_map_fd() const;
  int tids_map_fd() const { return tids_fd_; }

  // kgmp_tids: tid -> M slot (slot < KGMP_MAX_MS). The runtime fills the slot's fields in
  // shared() itself (tid, p, cpu, ...).
  absl::Status register_m(int tid, unsigned slot);
  absl::Status unregister_m(int tid);
  // Starts P p's slice timer (kgmp_arm_slice: one BPF_PROG_RUN). Caller: p's holder, after
  // CASing kgmp_p_shared::slice_armed IDLE -> ARMED.
  void arm_slice(int p);

  // One consumer per ring: P p's spare M waits for P p's block events.
  class Ring {
   public:
    ~Ring();
    Ring(const Ring&) = delete;
    Ring& operator=(const Ring&) = delete;

    // Blocks up to timeout_ms (-1: forever) until the ring has data or wake() is called.
    // Returns 1 = data ready, 2 = woken by wake(), 0 = timeout, <0 = -errno (-EINTR on a
    // signal). Data wins when both are pending; the wake stays pending for the next wait().
    int wait(int timeout_ms);
    // Consumes every pending event, calling f(const kgmp_block_event&) for each (f must not
    // throw); returns the count, or <0 = -errno.
    template <class F>
    int consume(F&& f) {
      using Fn = std::remove_reference_t<F>;
      return consume_raw(
          [](void* ctx, const kgmp_block_event& ev) { (*static_cast<Fn*>(ctx))(ev); },
          const_cast<void*>(static_cast<const void*>(&f)));
    }
    int consume_raw(void (*fn)(void* ctx, const kgmp_block_event& ev), void* ctx);
    // Thread-safe and async-signal-safe (one write(2) to an eventfd): makes a concurrent or
    // the next wait() return 2.
    void wake();
    // The epoll fd (readable when wait() would not block), to nest in another epoll set.
    int fd() const { return epfd_; }
    int p() const { return p_; }

   private:
    friend class TraceBpf;
    Ring() = default;
    int p_ = -1;
    int map_fd_ = -1;  // our own dup of the P's ring map fd
    int epfd_ = -1;
    int evfd_ = -1;
    ring_buffer* rb_ = nullptr;
    void (*fn_)(void*, const kgmp_block_event&) = nullptr;
    void* ctx_ = nullptr;
    std::shared_ptr<RingClaims> claims_;
    static int on_sample(void* ctx, void* data, size_t size);
  };
  // P p's ring, or the reason it cannot be had (p out of range, already handed out, out of
  // fds or memory).
  absl::StatusOr<std::unique_ptr<Ring>> open_ring(int p);
  std::unique_ptr<Ring> ring(int p);  // open_ring(p), or nullptr

  // The kernel ids of the attached programs (sched_switch, sched_wakeup), for `bpftool prog show
  // id N`, bpf_stats and the tests.
  std::vector<unsigned> prog_ids() const;

  static const char* libbpf_version();  // libbpf_version_string() of the libbpf linked in
  // The libbpf log of the last failed open() in this process (empty if none).
  static std::string last_log();
  static constexpr const char* kLogPayload = "type.kgmp.dev/libbpf-log";

 private:
  TraceBpf() = default;
  absl::Status init(int nprocs);

  kgmp_trace* skel_ = nullptr;
  kgmp_shared* shared_ = nullptr;
  std::size_t shared_len_ = 0;
  kgmp_cores* cores_ = nullptr;
  std::size_t cores_len_ = 0;
  int nprocs_ = 0;
  int tids_fd_ = -1;
  int ring_fds_[KGMP_MAX_PROCS];
  std::shared_ptr<RingClaims> claims_;
};

// Checks that the libbpf linked in is >= 1.4 (a dynamic link silently picks bookworm's 1.1);
// returns an error Status naming the version found otherwise.
absl::Status check_libbpf_version();

}  // namespace kgmp::internal
