// kgmp/runtime.h — starting the runtime, spawning goroutines, yielding, G-local storage.
//
// kgmp runs Go-style goroutines (Gs: stackful coroutines) on OS threads (Ms), each of which
// must hold a processor (P) to run Gs. There is one P per CPU of the process's affinity mask
// (`Config::procs`, or `KGMP_MAXPROCS`, like GOMAXPROCS), P i belongs to CPU i of the mask and,
// by default, every M is pinned to its P's CPU.
//
//   #include <kgmp/kgmp.h>
//   int main() {
//     kgmp::run([] {                        // the main G; run() returns when it returns
//       kgmp::WaitGroup wg;
//       for (int i = 0; i < 10; i++) {
//         wg.add(1);
//         kgmp::go([&wg, i] { work(i); wg.done(); });
//       }
//       wg.wait();                          // parks the main G, not the thread
//     });
//   }
//
// As in Go, when the main G returns, run() returns and the Gs still alive are abandoned: those
// that never started have their closure destroyed; those that did are not unwound. Go then
// exits the process; kgmp returns from run(), even while some G still runs without reaching a
// scheduling point (a loop that never calls the runtime, or a call blocked in the kernel).
// Such a G's thread is left behind: it goes on running that G's code on that G's stack, which
// stays mapped, until the G next calls into kgmp (or returns); then the thread sleeps for the
// life of the process. Each costs its thread, its stack and a few KiB, never freed; a later
// run() is not disturbed by it. Code that such a G runs after run() returned must not use what
// main's frame owned.
//
// Telemetry (Go's GODEBUG, named KGMPDEBUG; comma-separated name=value, read at each run()):
//   KGMPDEBUG=schedtrace=1000              Go's "SCHED <ms>ms: gomaxprocs= idleprocs= ..." line
//                                          on stderr every 1000 ms, kgmp's fields appended
//   KGMPDEBUG=schedtrace=1000,scheddetail=1  plus Go's P, M and G lines
//   KGMPDEBUG=counters=0                   per-P counters off (to measure what they cost)
//   KGMPDEBUG=latsample=8                  time 1 G transition in 8 (Go's rate; default 32)
//   KGMPDEBUG=stats=0                      no stats endpoint (the UNIX socket kgmpstat reads,
//                                          <dir>/<pid>.sock, dir from KGMP_RUNTIME_DIR,
//                                          XDG_RUNTIME_DIR/kgmp, /run/kgmp or /tmp/kgmp-<uid>)
// A bad value is one line on stderr and exit status 2, as for KGMP_MAXPROCS. In-process
// figures: kgmp/metrics.h (Go's runtime/metrics names) and kgmp/telemetry.h (per P).
//
// Thread-local storage: C++ `thread_local` variables belong to the M (OS thread), and a G may
// move between Ms at every scheduling point (spawn, yield, a WaitGroup wait, ...). Never keep a
// pointer to a thread_local across one, and never use thread_local for per-goroutine state: use
// `kgmp::GLocal<T>` below.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <new>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"

namespace kgmp {

struct Config {
  // Number of Ps. 0: the number of CPUs in the process's affinity mask. The environment
  // variable KGMP_MAXPROCS, when set, overrides this (as GOMAXPROCS does in Go). More Ps than
  // CPUs allowed is an error: every P is bound to one CPU.
  int procs = 0;
  // Pin every M to its P's CPU (the default). false: Ms float over the affinity mask as in Go.
  bool pin = true;
  // Usable stack bytes per G (rounded up to whole pages), fixed for the G's life: stacks do not
  // grow. Between 16 KiB and 1 GiB.
  std::size_t stack_size = 128 * 1024;
  // Upper bound on OS threads (Ms). Reaching it is a fatal error naming this field (Go's
  // debug.SetMaxThreads).
  int max_threads = 10000;
  // When every goroutine is parked on a runtime primitive and no timer is pending, print
  // Go's "fatal error: all goroutines are asleep - deadlock!" with each G's wait reason and
  // exit with status 2. Turn it off when threads outside the runtime wake goroutines (for
  // example kgmp::go called from a foreign thread): the runtime cannot see them coming.
  bool detect_deadlock = true;
  // Preemption (Go's forcePreemptNS): a G that has run on its P for longer than this slice
  // while other Gs wait for that P stops holding it. 0 turns preemption off. Either 0 or
  // 100 us to 10 s. The environment variable KGMP_PREEMPT_SLICE, when set, overrides this, in
  // Go's duration syntax: "10ms", "500us", "1.5ms", "0".
  std::chrono::nanoseconds preempt_slice = std::chrono::milliseconds(10);
};

// Checks `cfg` together with KGMP_MAXPROCS, KGMP_PREEMPT_SLICE and the other KGMP_ variables as
// run() would. The message names the bad value and what to do about it.
absl::Status check_config(const Config& cfg = {});

namespace internal {
struct G;
// Allocates a G able to hold a closure of `size` bytes aligned to `align`; returns the G and,
// in *closure, where the caller must construct it. Must be followed by start_g(g).
G* new_g(std::size_t size, std::size_t align, void (*call)(void*), void (*destroy)(void*),
         void** closure);
void start_g(G* g);
void abandon_g(G* g);  // the closure's construction threw: give g back
void run_main(void (*call)(void*), void* closure, const Config& cfg);
// G-local storage: a process-wide key, and the slot of the current G for it.
std::size_t glocal_key();
void* glocal_get(std::size_t key, void* (*make)(), void (*destroy)(void*));
}  // namespace internal

// Runs `main` as the main G with the Ps and Ms of `cfg`, and returns when it returns (see
// above for the Gs still running then). The calling thread only waits: the Gs, main's
// included, run on the runtime's own threads. A bad configuration prints one line naming the problem and exits with
// status 2. Not reentrant: call it from outside the runtime, one run at a time.
template <class F>
void run(F&& main, const Config& cfg = {}) {
  using Fn = std::decay_t<F>;
  Fn fn(std::forward<F>(main));
  internal::run_main([](void* p) { (*static_cast<Fn*>(p))(); }, &fn, cfg);
}

// Starts a new G running `f` (Go's `go f()`). The closure is moved into memory at the top of
// the new G's stack: spawning does not allocate on the heap. An exception escaping `f` ends the
// program (Go's unrecovered panic) with the G's id and the exception's what(). From inside the
// runtime the new G takes the current P's `runnext` slot; from a thread outside it, it goes to
// the global run queue.
template <class F>
void go(F&& f) {
  using Fn = std::decay_t<F>;
  static_assert(std::is_invocable_v<Fn&>, "kgmp::go needs a callable taking no arguments");
  void* at = nullptr;
  internal::G* g = internal::new_g(
      sizeof(Fn), alignof(Fn), [](void* p) { (*static_cast<Fn*>(p))(); },
      [](void* p) { static_cast<Fn*>(p)->~Fn(); }, &at);
  try {
    ::new (at) Fn(std::forward<F>(f));
  } catch (...) {
    internal::abandon_g(g);
    throw;
  }
  internal::start_g(g);
}

// Puts the calling G at the back of its P's run queue and runs the next one (Go's
// runtime.Gosched). Returns at once when nothing else is runnable. Outside a G: no-op.
void yield();

// A preemption point (Go's asynchronous preemption, done cooperatively): a cheap check a long
// loop that never enters the runtime may call. If the scheduler asked this G to step aside
// (under the scx monitor: it has run longer than Config::preempt_slice, 10 ms by default, on
// its P, see DESIGN §5), the request is consumed and the G yields as in yield(); otherwise it
// returns at once. Without scx, or with a slice of 0, no request is ever made, so it never
// yields: one load and a predictable branch. Every runtime entry (spawn, channel operation,
// ...) checks the same request. Outside a G: no-op.
void preempt_point();

namespace internal {
void entersyscall();
void exitsyscall();
}  // namespace internal

// Marks a call that may block in the kernel (Go's entersyscall/exitsyscall): returns f().
// Under the `poll` monitor, the P is handed to another M if f is still blocked after one
// monitor period (20 us to 10 ms, Go's sysmon back-off); under `trace` it is handed off at
// once (Go's entersyscallblock), since `trace` sees unmarked blocking anyway. Outside a G it
// just calls f.
//
//   ssize_t n = kgmp::blocking([&] { return read(fd, buf, len); });
template <class F>
decltype(auto) blocking(F&& f) {
  internal::entersyscall();
  struct Exit {
    ~Exit() { internal::exitsyscall(); }
  } exit;
  return std::forward<F>(f)();
}

// The name of the monitor the running runtime uses ("trace" or "poll"), nullptr outside it.
const char* monitor();

// The calling G's id (1 for the main G), 0 outside the runtime.
std::uint64_t goid();

// The number of Ps of the running runtime (Go's runtime.GOMAXPROCS(0)), 0 outside it.
int procs();

// Per-goroutine storage: each G sees its own T, default-constructed at its first get() and
// destroyed when the G exits.
//
//   kgmp::GLocal<RequestId> request_id;
//   kgmp::go([] { request_id.get() = next(); handle(); });
template <class T>
class GLocal {
 public:
  GLocal() : key_(internal::glocal_key()) {}
  GLocal(const GLocal&) = delete;
  GLocal& operator=(const GLocal&) = delete;
  // Must be called from a G.
  T& get() {
    return *static_cast<T*>(internal::glocal_get(
        key_, [] { return static_cast<void*>(new T()); },
        [](void* p) { delete static_cast<T*>(p); }));
  }

 private:
  std::size_t key_;
};

}  // namespace kgmp
