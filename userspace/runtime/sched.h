// sched.h — the runtime's data structures: G, M, P and the global scheduler state, and the
// scheduler's internal functions (sched.cpp, run.cpp, goroutine.cpp; the hand-off protocol's
// are in handoff.h).
//
// The rules are Go's (proc.go), the names too, so that proc.go maps onto sched.cpp:
//   G  a goroutine: a stack, a saved stack pointer and a closure. Its header lives at the top
//      of its own stack (stack.cpp), so a G costs no allocation beyond its stack.
//   M  an OS thread. It runs the scheduler on g0 (its native stack) and Gs on theirs.
//   P  a processor: the right to run Gs, a local run queue, a stack cache. P i is bound to CPU
//      i of the affinity mask; an M only ever holds its own CPU's P (DESIGN §1), so when Ms are
//      pinned, the idle Ms are kept per P ("per core").
//
// Ownership: a P's fields are written only by the M holding it (counters are relaxed atomics so
// that telemetry may read them). Sched's fields under `lock` are marked ABSL_GUARDED_BY; the
// atomics beside them are the lock-free parts of Go's protocol (npidle, nmspinning,
// runqsize).
#pragma once

#include <pthread.h>
#include <signal.h>
#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <memory>
#include <cstdint>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "counters.h"
#include "futex.h"
#include "kgmp_trace.h"
#include "kgmp/runtime.h"
#include "runq.h"
#include "stack.h"
#include "timer.h"

namespace kgmp::internal {

// The layout both sides of bpf/kgmp_trace.h compile: one cache line per P and per M slot, the
// header's runtime and BPF halves on separate lines, the lease word 8-byte aligned (atomic_ref).
static_assert(sizeof(kgmp_hdr) == 128 && offsetof(kgmp_hdr, events) == 64);
static_assert(sizeof(kgmp_p_shared) == 64 && offsetof(kgmp_p_shared, lease) == 0);
static_assert(sizeof(kgmp_m_shared) == 64 && offsetof(kgmp_m_shared, in_blocking) == 12);
static_assert(offsetof(kgmp_shared, p) == 128 && offsetof(kgmp_shared, m) % 64 == 0);
static_assert(sizeof(kgmp_core_stats) % 64 == 0 && KGMP_HIST_BUCKETS == telemetry::kHistBuckets);

struct M;
struct P;

enum class GStatus : std::uint32_t {
  kFree = 0,  // on a free list (or never used): its stack is available. Fresh memory is 0.
  kRunnable,  // on a run queue
  kRunning,   // an M is executing it
  kWaiting,   // parked on a wait queue (waitreason says which)
};

struct GLocals;

struct G {
  void* sp = nullptr;  // saved stack pointer while not running
  std::uint64_t goid = 0;
  std::atomic<GStatus> status{GStatus::kFree};
  G* schedlink = nullptr;  // global run queue, free lists, wait queues
  // The stack: usable memory is [lo, hi); the G header and closure sit at its top.
  char* lo = nullptr;
  char* hi = nullptr;
  std::uint64_t* canary = nullptr;  // checked at every switch away; null when guard-paged
  bool pooled = true;               // false for the main G's dedicated stack
  bool started = false;
  void (*call)(void*) = nullptr;
  void (*destroy)(void*) = nullptr;
  void* closure = nullptr;
  GLocals* locals = nullptr;
  const char* waitreason = nullptr;
  int rt_depth = 0;  // M::rt_depth while switched out (a G resumes at the depth it left with)
  // Scheduling-latency sampling (counters.h): every kTrackPeriod-th transition to runnable
  // stamps runnable_tick; execute() records and clears it. Written by whoever readies the G,
  // then by the M that runs it (ordered by the run queue).
  std::uint32_t track_seq = 0;
  std::uint64_t runnable_tick = 0;
  // Sanitizer fiber state (unused otherwise).
  void* asan_fake_stack = nullptr;
  void* tsan_fiber = nullptr;
};

// What the M must do with the G it just switched away from, once the switch is complete (the
// G's registers are saved, so another M may now run it). Go does this on g0 (mcall(park_m)
// etc.); kgmp switches G to G directly and runs the action on the new G's stack.
enum class After : std::uint8_t {
  kNone,
  kYield,
  kPark,
  kExit,
  kRequeue,  // the M lost its P while the G ran: queue the G globally (DESIGN §3, P-less path)
  kYieldGlobal,  // yield to the back of the global queue (spawn back-pressure)
  kPreempt,      // as kYield, asked by a preemption request (gopreempt; traced as "preempt")
};

struct alignas(64) P {
  int id = 0;
  int cpu = -1;
  // The lease word and the published queue length, in memory the BPF side reads (DESIGN §3;
  // see lease_ref()). Written only by the lease's holder, or by a hand-off CAS from USER.
  kgmp_p_shared* sh = nullptr;
  std::atomic<bool> idle{false};
  M* m = nullptr;     // the M holding it (written under Sched::lock or by the holder)
  P* link = nullptr;  // idle list
  RunQueue<G> runq;
  TimerHeap timers;
  // Free Gs (each with its stack), hot first: Go's p.gFree. Refilled from / spilled to the
  // global pool in batches of kGCacheBatch.
  static constexpr int kGCacheMax = 64;
  static constexpr int kGCacheBatch = 32;
  G* gfree[kGCacheMax];
  int ngfree = 0;
  // goid batch (Go's goidcache): ids [goid_next, goid_end).
  std::uint64_t goid_next = 0, goid_end = 0;
  // Telemetry (userspace/telemetry/counters.h). Written by the holder only.
  PCounters c;
  std::atomic<TraceBuf*> tbuf{nullptr};  // the trace recorder's buffer for this P, if any
  std::atomic<int> rt_owner{-1};  // with the lease checker: the M inside the runtime on it
  // Held spares (trace.cpp): how many more times the holder may ask for its watcher to be held
  // runnable. Refilled by every hand-off of this P, so a P that never hands off stops asking.
  // Written by the holder (also in exit_runtime after its lease says USER, where a hand-off
  // may already have let the next holder in) and by handoff_p's winner: atomic (relaxed).
  std::atomic<std::uint32_t> hold_credit{0};
  bool kick_backstop = false;  // a watcher took it: check at the next runtime entry (holder)
  // The M last moved aside when this P was preempted from it (handoff.cpp): given its own nice
  // back when the P goes idle, since nothing waits for the CPU then. Written by the taker.
  std::atomic<M*> aside{nullptr};
  // Its core's BPF foreign_ns at the last hold request. Written in exit_runtime after the
  // lease says USER, where a hand-off may already let the next holder in: atomic (relaxed).
  std::atomic<std::uint64_t> foreign_seen{0};
  // Its held watcher (handoff.cpp): the thread's tid while HELD (0 otherwise) and when it last
  // went HELD. Written by the watcher, read by the holder to refresh a stale hold.
  std::atomic<pid_t> held_tid{0};
  std::atomic<std::int64_t> held_since{0};
  // When its watcher's wait ends at the latest (nanotime; INT64_MAX: no deadline), so that a
  // new earlier timer wakes it (poke_watchers). Written by the watcher, lowered by pokers.
  std::atomic<std::int64_t> watch_until{-1};
};

// The lease word of p as an atomic (it lives in shared memory, a plain __u64 for BPF).
using LeaseWord = __u64;  // the shared header's type (unsigned long long)
inline std::atomic_ref<LeaseWord> lease_ref(P* p) { return std::atomic_ref<LeaseWord>(p->sh->lease); }
inline constexpr std::uint32_t kNoHolder = 0xffff;

// An M's state as telemetry shows it (stats "ms[].state", scheddetail's M lines).
enum class MState : std::uint8_t { kRunning = 0, kSpinning, kIdle, kBlocked, kWatcher };

// An int written only by its owner thread and read racily by others: the owner's ++ and -- are
// a plain load and store (no locked instruction), readers see some value it held.
class OwnedInt {
 public:
  explicit OwnedInt(int v) : v_(v) {}
  operator int() const { return v_.load(std::memory_order_relaxed); }  // the owner's read
  OwnedInt& operator=(int v) {
    v_.store(v, std::memory_order_relaxed);
    return *this;
  }
  int operator++(int) {
    int v = v_.load(std::memory_order_relaxed);
    v_.store(v + 1, std::memory_order_relaxed);
    return v;
  }
  int operator--() {
    int v = v_.load(std::memory_order_relaxed) - 1;
    v_.store(v, std::memory_order_release);  // release: a reader that sees 0 sees the G code's
    return v;                                // context (curg) it returned to
  }
  int read_acquire() const { return v_.load(std::memory_order_acquire); }  // another thread

 private:
  std::atomic<int> v_;
};

// Whether an M was abandoned by the run() that made it (run.cpp's reap): kNo, kMarked once
// run() found it running G code after main returned, kParked once it has parked for good at
// its next runtime entry.
enum class Orphan : std::uint8_t { kNo = 0, kMarked, kParked };

// A G-sized stand-in for an M's native stack, so that one switch routine serves G<->G and
// G<->g0.
struct M {
  int id = 0;  // also its slot in kgmp_shared::m and its holder id in lease words
  kgmp_m_shared* sh = nullptr;  // its slot in shared memory (own_sh beyond KGMP_MAX_MS)
  kgmp_m_shared own_sh{};
  // Runtime entry depth of the running context: 0 while G code runs, >0 inside the runtime (g0
  // is always inside). 0 -> 1 CASes the lease USER -> RUNTIME, 1 -> 0 stores USER
  // (enter_runtime/exit_runtime). It belongs to the context, not the thread: switch_to saves
  // it in the G switched away from and restores the resumed one's, since a G parked at depth 2
  // (a channel operation's scope around gopark) leaves the runtime twice when it resumes.
  // Written by the M only; read by run()'s reap (gate_in in handoff.h has the protocol).
  OwnedInt rt_depth{1};
  std::atomic<Orphan> orphan{Orphan::kNo};  // set by run()'s reap, read at every entry
  std::atomic<bool> exited{false};          // its thread returned from m_start (run.cpp)
  __u64 lease_expect = 0;  // the USER lease word it stored last
  bool requeue_lost = false;  // the G of a kRequeue was running when its P was handed off
  // Preemption (handoff.cpp): its P was taken because its G ran past the slice (set by the
  // taker before the CAS's winner runs the P; read by this M at its next runtime entry), and
  // whether the taker moved this thread aside to nice 10 (this M, or the P going idle,
  // restores its nice).
  std::atomic<bool> preempted{false};
  std::atomic<bool> lowered{false};
  int nice_before = 0;  // its nice before the taker lowered it (published by `lowered`)
  bool watcher = false;       // waits on P watch_p's event source (Monitor::wait) for it
  int watch_p = -1;
  pid_t tid = 0;
  int pool = 0;  // index of the idle-M list it belongs to (its P's id when pinned, else 0)
  int cpu = -1;  // pinned CPU, -1 if not pinned
  std::atomic<MState> tstate{MState::kRunning};  // written by the M itself, read by telemetry
  bool tr_idle = false;  // the trace recorder has an m_idle of this M not yet closed by m_busy
  G g0;          // lo/hi: the thread's stack
  G* curg = nullptr;
  P* p = nullptr;
  P* nextp = nullptr;  // handed over by the M that woke it
  bool spinning = false;
  Note park;
  M* schedlink = nullptr;  // idle list
  // Idle-list state (under Sched::lock): whether it is on the list, and the deadline it sleeps
  // until there (0: until woken), so that a new earlier timer can poke it.
  bool in_midle = false;
  std::int64_t sleep_until = 0;
  pthread_t thread{};
  // The pending action on the G switched away from (see After).
  After after = After::kNone;
  G* after_g = nullptr;
  void (*unlockf)(void*) = nullptr;
  void* unlock_arg = nullptr;
  std::uint64_t rand = 0;  // wyrand state
  void* altstack = nullptr;
  stack_t saved_altstack{};  // the thread's own alternate signal stack before it became an M
};

// The global state of one run() (Go's schedt).
struct Sched {
  Lock lock;
  // Global run queue.
  G* runq_head ABSL_GUARDED_BY(lock) = nullptr;
  G* runq_tail ABSL_GUARDED_BY(lock) = nullptr;
  std::atomic<std::int32_t> runqsize{0};  // written under lock, read racily
  // Idle Ps and idle Ms (per pool).
  P* pidle ABSL_GUARDED_BY(lock) = nullptr;
  std::atomic<std::int32_t> npidle{0};
  std::atomic<std::int32_t> nmspinning{0};
  std::vector<M*> midle ABSL_GUARDED_BY(lock);  // one list head per pool
  std::vector<M*> allm ABSL_GUARDED_BY(lock);
  std::atomic<bool> stopping{false};
  Note stopped;  // woken with stopping set: run()'s thread waits on it
  std::atomic<int> mcount{0};  // Ms created (allm.size(), readable without the lock)
  std::int64_t start_ns = 0;   // nanotime() at run() start
  std::atomic<std::uint64_t> goid_gen{2};  // the next goid to hand out (the main G is 1)
  G* main_g = nullptr;
  std::atomic<std::uint64_t> outside_spawns{0};  // Gs started from threads outside the runtime
  int nprocs = 0;
  P* allp = nullptr;
  Config cfg;
  // The memory shared with the BPF side (the monitor's mmap'd map, or a private copy).
  kgmp_shared* shared = nullptr;
  bool shared_owned = false;
  bool publish_work = false;  // keep kgmp_p_shared::runq_len and hdr.nglobal current
  bool hold_spares = false;   // holders ask for held watchers (handoff.cpp, handoff_init)
  const kgmp_cores* cores = nullptr;  // the monitor's BPF per-core counters, if any
  struct Monitor* monitor = nullptr;
  // Preemption requests (DESIGN §5): one word per M slot (Monitor::preempt_words), null unless
  // the scx monitor raises them. Set by handoff_start_run, cleared by monitor_fell_back; the
  // words stay mapped until the monitor is deleted after run() ends, so an M that loaded the
  // pointer just before it was cleared reads valid memory. Read by every M at runtime entry
  // (relaxed: one load).
  std::atomic<std::uint32_t*> preempt_flags{nullptr};
  std::unique_ptr<std::atomic<M*>[]> m_by_id;  // M of each id (lease holder), for monitors
  std::atomic<int> nblocking{0};               // Ms inside kgmp::blocking()
  std::atomic<int> nlostp{0};  // Ms whose P was handed off and that have not noticed yet
  // Per P: no watcher M waits on that P's event source (monitors with watchers only).
  std::vector<std::atomic<bool>> watcher_missing;
  std::vector<int> cpus;  // CPU of each P (the affinity mask's CPUs, in order)
};

extern Sched* sched;

// The M running on this thread (nullptr outside the runtime). Not inlinable on purpose: a G
// may resume on another thread after any switch, and a compiler must not reuse a thread_local
// address computed before it.
M* getm();

// Parks the calling G with wait reason `reason`; unlockf(arg), if given, runs once the G's
// context is saved (Go's gopark: release the wait queue's lock there, so that a waker cannot
// ready the G before it has left its stack). Caller: a running G that entered the runtime
// (RuntimeScope) BEFORE taking the lock unlockf releases: entering the runtime may park the G
// until it gets a P back, which must never happen while it holds a lock other Gs spin on.
void gopark(void (*unlockf)(void*), void* arg, const char* reason);
// Makes a parked G runnable: into the current P's runnext (next = true, Go's ready: a woken
// partner runs at once) or at the tail of its queue (next = false: timers, so that Gs whose
// deadlines passed together run in deadline order); the global queue from a thread outside the
// runtime. Then wakes an idle P if any. Caller: anyone, once per park.
void goready(G* g, bool next = true);

// A timer that fires at `when` became the earliest of its P: wake an idle M or a watcher that
// sleeps past it so that it recomputes its sleep. Caller: anyone, after publishing.
void poke_timer_sleepers(std::int64_t when);

// ---- sched.cpp, for the other parts of the runtime ----

// Binds the calling thread to m (getm() returns it from now on). Caller: m's own thread.
void bind_m(M* m);
// Go's runqput: g takes runnext (next) or the tail; returns whether the ring overflowed (half
// of it went to the global queue). Caller: p's holder.
bool runq_put(P* p, G* g, bool next);
// Appends head..tail (n Gs linked by schedlink) to the global queue. Caller: holds sched->lock.
void globrunq_put_batch(G* head, G* tail, int n) ABSL_EXCLUSIVE_LOCKS_REQUIRED(sched->lock);
// Go's wakep: start a spinning M for an idle P if there is an idle P and no spinning M.
// Caller: anyone, after making a G runnable.
void wake_p();
// g becomes runnable: every kTrackPeriod-th time, stamp it for the scheduling-latency sample.
// Caller: whoever readies g, before queueing it.
void track_ready(G* g);
// The idle list. Caller: holds sched->lock; pidle_get takes `want` if it is idle, else any
// idle P (nullptr if none).
void pidle_put(P* p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(sched->lock);
P* pidle_get(P* want) ABSL_EXCLUSIVE_LOCKS_REQUIRED(sched->lock);
// The idle-M list a P's Ms belong to: its own when pinned, else the one shared list.
int pool_of(const P* p);
void acquire_p(M* m, P* p);
P* release_p(M* m, std::uint32_t state = KGMP_LEASE_IDLE);
// Go's stopm: parks m, P-less, until it is handed a P, its own P is idle at a timer deadline
// `until` (0: none), or it became its core's watcher; returns without a P once stopping.
// Caller: m on g0.
void stop_m(M* m, std::int64_t until);
// Whether p has Gs to run (its queue) or the global queue has. Racy; any thread.
bool p_has_work(P* p);
// Runs p's expired timers, reading the clock only when p has a timer. Caller: p's holder.
void run_own_timers(P* p);
// Runs the action the previous G asked for, now that its context is saved. Caller: m, right
// after any switch, on the new stack.
void finish_switch(M* m);
// Leaves the current G (action a) for the next runnable G of this P, or for g0. Caller: the
// running G, its M holding a P, in the runtime.
void leave_g(After a);
// Leaves the running G for g0 with action a (run by g0 once the G's context is saved); returns
// when the G is resumed, maybe on another M. Caller: the running G, in the runtime.
void switch_to_g0(M* m, After a);
// An M's life: run the scheduler while it has a P, watch its core's event source while it is
// the watcher, until the runtime stops. Caller: m's thread.
void m_loop(M* m);

// ---- run.cpp ----

// Starts an M for p: an idle M of p's pool, or a new thread (Go's startm). Any thread.
void start_m(P* p, bool spinning);
// A new M for p's pool, its thread not started yet. Caller: holds sched->lock, below the
// thread limit.
M* new_m_locked(P* p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(sched->lock);
// Starts m's thread (fatal with one line if the system refuses).
void create_thread(M* m);
// Go's mget: an idle M of p's pool, else a new one; null at the thread limit. Caller: holds
// sched->lock.
M* mget_locked(P* p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(sched->lock);
// Runs m, just taken from mget_locked: starts its thread, or wakes it from its futex.
void resume_m(M* m);
// The main G returned: stop every M at its next scheduling point.
void begin_stop();
// Every P is idle, no G is queued and no timer is pending: unless a thread outside the runtime
// is going to wake a G (Config::detect_deadlock = false for such programs), nothing ever will.
// Go's checkdead. Caller: holds sched->lock, after putting the last P on the idle list.
void check_dead() ABSL_EXCLUSIVE_LOCKS_REQUIRED(sched->lock);

// ---- goroutine.cpp ----

// Every G's stack: carved from large mappings, cached per P (stack.h).
extern StackPool stackpool;
// Gives g's stack back (to p's cache, or the pool when p is null). Caller: p's holder.
void g_free(P* p, G* g);
// Initializes g (its stack memory set) for a fresh run; returns where its closure of `size`
// bytes aligned to `align` goes.
void* init_g(G* g, std::size_t size, std::size_t align);

// Fatal errors: print one line (plus state for broken invariants) and abort.
[[noreturn]] void fatal(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// Debug builds only (NDEBUG unset): an invariant cheap enough to check in tests, not in
// production.
#ifdef NDEBUG
#define KGMP_DCHECK(cond) \
  do {                    \
  } while (0)
#else
#define KGMP_DCHECK(cond) KGMP_CHECK(cond)
#endif
#define KGMP_CHECK(cond)                                                              \
  do {                                                                                \
    if (__builtin_expect(!(cond), 0))                                                 \
      ::kgmp::internal::fatal("kgmp: internal error: %s:%d: check failed: %s", __FILE__, \
                              __LINE__, #cond);                                       \
  } while (0)

}  // namespace kgmp::internal
