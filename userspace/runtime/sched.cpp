// sched.cpp — the G/M/P scheduler (Go's proc.go rules, DESIGN §1-2).
//
// Concepts: G (goroutine), M (OS thread), P (processor: the right to run Gs, with a local run
// queue). An M runs Gs only while it holds a P; P i is bound to CPU i of the affinity mask and
// its Ms are pinned there (Config::pin), so an M only ever holds its own CPU's P.
//
// Finding work (find_runnable, on the M's g0 stack): every 61st schedtick the global queue
// first (fairness: two Gs that keep readying each other through runnext cannot starve it);
// then runnext and the local ring; then the global queue; then steal half of a random
// victim's ring (4 passes in a random coprime-stride order, runnext only on the last); then
// release the P and park the M on its futex. Nothing sleeps on a timer.
//
// Switching: a G that yields, parks or exits switches straight to the next runnable G of its
// P when runnext, the local ring or the global queue has one (one context switch, no detour
// through g0), else to g0, which runs the blocking part above. What must happen to the G that
// switched away (queue it, mark it waiting and release its wait-queue lock, free its stack)
// happens right after the switch, on the new stack (finish_switch): only then are its
// registers saved, so only then may another M see it. This is Go's mcall(park_m) without the
// second switch.
//
// Spinning and wakeups (the protocol of proc.go's "Worker thread parking/unparking" comment):
// - An M with no work may spin (steal) only if it already spins or 2*nmspinning < the number
//   of busy Ps; at most one spinning M is woken at a time (wake_p does nothing while one spins).
// - Submitting work (runq_put, then wake_p): write the queue, then a StoreLoad fence, then read
//   npidle/nmspinning. Going idle: decrement nmspinning (a locked RMW: a full fence), then
//   re-check every P's queue. One of the two sides always sees the other, so a G is never left
//   queued while every M sleeps.
// - The last spinning M that finds work wakes another (reset_spinning -> wake_p), so a burst
//   of work fans out one M at a time.
//
// Rejected: waking an M on every ready (thread-state thrashing, Go's reason too); a
// centralized queue (contention); switching through g0 on every yield (a second switch, ~2x the
// cost of a yield); stealing one G at a time (Boost.Fiber, bthread: a victim with a burst is
// drained one lock round trip per G).
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cxxabi.h>
#include <exception>
#include <typeinfo>
#include <string>
#include <vector>

#include "config.h"
#include "context.h"
#include "export_test.h"
#include "monitor.h"
#include "kgmp/kgmp.h"
#include "sanitizer.h"
#include "sched.h"
#include "signals.h"
#include "stack.h"
#include "telemetry_rt.h"

namespace kgmp {
namespace internal {

Sched* sched = nullptr;
namespace {
std::atomic<bool> lease_check{false};
std::atomic<std::uint64_t> lease_violations{0};
thread_local M* t_m = nullptr;
StackPool pool;
RunStats last_stats;
std::vector<ProcStats> last_procs;
constexpr std::size_t kMainStack = 8u << 20;  // the main G's stack: a thread's default
}  // namespace

__attribute__((noinline)) M* getm() {
  M* m = t_m;
  asm volatile("" : "+r"(m));
  return m;
}
M* getm_for_signal() { return t_m; }

void fatal(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
  va_end(ap);
  if (n < 0) n = 0;
  if (n > static_cast<int>(sizeof buf) - 2) n = sizeof buf - 2;
  buf[n++] = '\n';
  fflush(stdout);
  ssize_t r = write(2, buf, static_cast<std::size_t>(n));
  (void)r;
  telemetry_unlink_socket();
  abort();
}

// ---- random victim order (Go's randomOrder) ----

static std::uint32_t fastrand(M* m) {
  // wyrand: one multiply per number, good enough for victim selection.
  m->rand += 0xa0761d6478bd642fULL;
  __uint128_t t = static_cast<__uint128_t>(m->rand) * (m->rand ^ 0xe7037ed1a0b428dbULL);
  return static_cast<std::uint32_t>((t >> 64) ^ t);
}

static std::uint32_t gcd(std::uint32_t a, std::uint32_t b) {
  while (b != 0) {
    std::uint32_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

// ---- global run queue (Sched::lock) ----

// The global queue's length as BPF and the held watchers read it (relaxed: a hint; they act
// only through a lease CAS). Caller: holds sched->lock.
static inline void publish_nglobal(std::int32_t n) {
  std::atomic_ref<__u32>(sched->shared->hdr.nglobal)
      .store(static_cast<std::uint32_t>(n), std::memory_order_relaxed);
}

static void globrunq_put_batch(G* head, G* tail, int n)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(sched->lock) {
  tail->schedlink = nullptr;
  if (sched->runq_tail != nullptr)
    sched->runq_tail->schedlink = head;
  else
    sched->runq_head = head;
  sched->runq_tail = tail;
  publish_nglobal(sched->runqsize.fetch_add(n, std::memory_order_relaxed) + n);
}

static G* globrunq_pop() ABSL_EXCLUSIVE_LOCKS_REQUIRED(sched->lock) {
  G* g = sched->runq_head;
  sched->runq_head = g->schedlink;
  if (sched->runq_head == nullptr) sched->runq_tail = nullptr;
  return g;
}

// Takes a fair share of the global queue into p's local queue and returns one G to run.
// max > 0 caps the share. Caller: the M holding p, with p's local ring empty unless max == 1.
static G* globrunq_get(P* p, int max) ABSL_EXCLUSIVE_LOCKS_REQUIRED(sched->lock) {
  int size = sched->runqsize.load(std::memory_order_relaxed);
  if (size == 0) return nullptr;
  int n = size / sched->nprocs + 1;
  if (n > size) n = size;
  if (max > 0 && n > max) n = max;
  if (n > static_cast<int>(RunQueue<G>::kSize / 2)) n = RunQueue<G>::kSize / 2;
  publish_nglobal(sched->runqsize.fetch_sub(n, std::memory_order_relaxed) - n);
  G* g = globrunq_pop();
  for (int i = 1; i < n; i++) KGMP_CHECK(p->runq.put(globrunq_pop()));
  if (counters_on) p->c.globtakes.add(static_cast<std::uint64_t>(n));
  return g;
}

// ---- telemetry hooks (userspace/telemetry/counters.h) ----

// g becomes runnable: every kTrackPeriod-th time, stamp it so that execute() records its
// scheduling latency (Go's gTrackingPeriod). Caller: whoever readies g, before queueing it.
static inline void track_ready(G* g) {
  if (counters_on && (++g->track_seq & track_mask) == 0) g->runnable_tick = ticks();
}

// The trace recorder's g_stop for g leaving m with action a. Caller: m's G, in the runtime,
// with `tracing` seen on.
static void trace_stop(M* m, G* g, After a) {
  if (m->p == nullptr || g == nullptr) return;
  StopReason r = StopReason::kYield;
  switch (a) {
    case After::kPark: r = StopReason::kPark; break;
    case After::kExit: r = StopReason::kExit; break;
    case After::kRequeue: r = StopReason::kLostP; break;
    case After::kPreempt: r = StopReason::kPreempt; break;
    default: break;
  }
  trace_event_slow(m->p->id, TraceEv::kGStop, static_cast<std::uint32_t>(m->id), g->goid,
                   static_cast<std::uint64_t>(r));
}

// ---- local run queue ----

// The queue length BPF reads to decide whether a block is worth reporting. Only the holder
// writes it, after its own queue operations; thieves leave it stale-high (a spurious report,
// never a missed one).
static inline void publish_runq(P* p) {
  if (sched->publish_work)
    std::atomic_ref<__u32>(p->sh->runq_len)
        .store(p->runq.size() + (p->runq.empty() ? 0u : 1u), std::memory_order_relaxed);
}

// Moves half of p's full ring plus g to the global queue. Returns false if thieves made room
// meanwhile (then the caller retries put). Caller: p's holder.
static bool runq_put_slow(P* p, G* g) {
  G* batch[RunQueue<G>::kSize / 2 + 1];
  std::uint32_t n = p->runq.grab_for_overflow(batch);
  if (n == 0) return false;
  batch[n++] = g;
  for (std::uint32_t i = 0; i + 1 < n; i++) batch[i]->schedlink = batch[i + 1];
  LockGuard l(sched->lock);
  globrunq_put_batch(batch[0], batch[n - 1], static_cast<int>(n));
  return true;
}

// Go's runqput. next: g takes runnext (the old runnext goes to the tail). Returns whether the
// ring overflowed (half of it went to the global queue). Caller: p's holder.
static bool runq_put(P* p, G* g, bool next) {
  if (next) {
    g = p->runq.put_next(g);
    if (g == nullptr) {
      publish_runq(p);
      return false;
    }
  }
  bool spilled = false;
  while (!p->runq.put(g)) {
    if ((spilled = runq_put_slow(p, g))) break;
  }
  publish_runq(p);
  return spilled;
}

// ---- idle Ps and Ms (Sched::lock) ----

static void pidle_put(P* p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(sched->lock) {
  p_account(p->c, PState::kIdle);
  p->idle.store(true, std::memory_order_relaxed);
  p->link = sched->pidle;
  sched->pidle = p;
  sched->npidle.fetch_add(1, std::memory_order_seq_cst);
}

// Takes `want` off the idle list if given and idle, else any idle P. nullptr if none.
static P* pidle_get(P* want) ABSL_EXCLUSIVE_LOCKS_REQUIRED(sched->lock) {
  P** pp = &sched->pidle;
  if (want != nullptr) {
    while (*pp != nullptr && *pp != want) pp = &(*pp)->link;
  }
  P* p = *pp;
  if (p == nullptr) return nullptr;
  *pp = p->link;
  p->link = nullptr;
  p->idle.store(false, std::memory_order_relaxed);
  sched->npidle.fetch_sub(1, std::memory_order_seq_cst);
  p_account(p->c, PState::kBusy);
  return p;
}

static int pool_of(const P* p) { return sched->cfg.pin ? p->id : 0; }

// m takes p: the lease names m, in state RUNTIME (m is in the scheduler). Caller: m, owning p
// (from the idle list, a hand-off, or nextp).
// The lease checker (tests): the M inside the runtime on p, or -1.
static inline void owner_in(P* p, M* m) {
  if (!lease_check.load(std::memory_order_relaxed)) return;
  int prev = p->rt_owner.exchange(m->id, std::memory_order_acq_rel);
  if (prev != -1 && prev != m->id) lease_violations.fetch_add(1, std::memory_order_relaxed);
}
static inline void owner_out(P* p) {
  if (lease_check.load(std::memory_order_relaxed)) p->rt_owner.store(-1, std::memory_order_release);
}

static void acquire_p(M* m, P* p) {
  KGMP_CHECK(m->p == nullptr && p->m == nullptr);
  m->p = p;
  p->m = m;
  auto l = lease_ref(p);
  LeaseWord w = l.load(std::memory_order_relaxed);
  l.store(KGMP_LEASE_MAKE(KGMP_LEASE_SEQ(w) + 1, m->id, KGMP_LEASE_RUNTIME),
          std::memory_order_release);
  __atomic_store_n(&m->sh->p, static_cast<std::uint32_t>(p->id), __ATOMIC_RELAXED);  // read by BPF and telemetry
  owner_in(p, m);
  if (m->tr_idle) {  // the trace recorder saw this M go idle: it is busy again
    m->tr_idle = false;
    trace_event(p->id, TraceEv::kMBusy, static_cast<std::uint32_t>(m->id), 0, 0);
  }
}

static P* release_p(M* m) {
  P* p = m->p;
  KGMP_CHECK(p != nullptr && p->m == m);
  auto l = lease_ref(p);
  LeaseWord w = l.load(std::memory_order_relaxed);
  KGMP_CHECK(KGMP_LEASE_HOLDER(w) == static_cast<std::uint32_t>(m->id) &&
             KGMP_LEASE_STATE(w) == KGMP_LEASE_RUNTIME);
  owner_out(p);
  l.store(KGMP_LEASE_MAKE(KGMP_LEASE_SEQ(w) + 1, kNoHolder, KGMP_LEASE_IDLE),
          std::memory_order_release);
  p->m = nullptr;
  m->p = nullptr;
  __atomic_store_n(&m->sh->p, KGMP_NO_P, __ATOMIC_RELAXED);  // read by BPF and telemetry
  return p;
}


static void* m_start(void* arg);

// Gives m its slot in the shared memory (and its entry in m_by_id). Caller: holds sched->lock.
static void init_m_slot(M* m) {
  m->sh = m->id < KGMP_MAX_MS ? &sched->shared->m[m->id] : &m->own_sh;
  __atomic_store_n(&m->sh->p, KGMP_NO_P, __ATOMIC_RELAXED);  // read by BPF and telemetry
  m->sh->cpu = static_cast<std::uint32_t>(m->cpu);
  sched->m_by_id[static_cast<std::size_t>(m->id)].store(m, std::memory_order_release);
}

// A new M for p's pool (its thread not started yet). Caller: holds sched->lock, below the
// thread limit.
static M* new_m_locked(P* p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(sched->lock) {
  M* m = new M();
  m->id = static_cast<int>(sched->allm.size());
  m->pool = pool_of(p);
  m->cpu = sched->cfg.pin ? p->cpu : -1;
  init_m_slot(m);
  m->rand = 0x9e3779b97f4a7c15ULL * static_cast<std::uint64_t>(m->id + 1);
  sched->allm.push_back(m);
  sched->mcount.store(static_cast<int>(sched->allm.size()), std::memory_order_release);
  return m;
}

static void create_thread(M* m) {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  int err = pthread_create(&m->thread, &attr, m_start, m);
  pthread_attr_destroy(&attr);
  if (err != 0) fatal("kgmp: cannot create an OS thread for an M: %s", strerror(err));
}

// Starts an M for p: an idle M of p's pool, or a new thread. Go's startm.
static void start_m(P* p, bool spinning) {
  M* m = nullptr;
  {
    LockGuard l(sched->lock);
    if (sched->stopping.load(std::memory_order_relaxed)) return;  // no new M once main returned
    M*& head = sched->midle[pool_of(p)];
    if (head != nullptr) {
      m = head;
      head = m->schedlink;
      m->in_midle = false;
    } else {
      if (static_cast<int>(sched->allm.size()) >= sched->cfg.max_threads)
        fatal("kgmp: thread limit reached: %zu threads (Ms) exist and Config::max_threads is %d; "
              "raise Config::max_threads or block fewer goroutines in the kernel at once",
              sched->allm.size(), sched->cfg.max_threads);
      m = new_m_locked(p);
    }
  }
  m->nextp = p;
  m->spinning = spinning;
  if (m->thread == pthread_t{})
    create_thread(m);
  else
    m->park.wakeup();
}

// ---- watchers (monitors that report blocks on a per-P event source: trace) ----

// Held-spare requests a P may make after a hand-off before it must hand off again (trace.cpp):
// enough to cover the bursts between hand-offs of a blocking workload, few enough that a P
// whose Gs stopped blocking stops paying a wakeup per request.
static constexpr std::uint32_t kHoldCredit = 64;
// Time our Ms waited behind other programs' tasks on a P's CPU, between two hold requests,
// beyond which that CPU counts as busy and the watcher is left asleep (hold_spare).
static constexpr std::uint64_t kForeignBusyNs = 500'000;

// P index a watcher of m's pool would watch: its own P when pinned, else any P missing one.
static int watcher_slot_for(M* m) {
  if (sched->watcher_missing.empty()) return -1;
  if (sched->cfg.pin) return m->pool;
  for (std::size_t i = 0; i < sched->watcher_missing.size(); i++)
    if (sched->watcher_missing[i].load(std::memory_order_relaxed)) return static_cast<int>(i);
  return -1;
}

// An M about to park without a P becomes its core's watcher if that P has none. Caller: m.
static bool become_watcher(M* m) {
  if (m->watcher) return true;
  int w = watcher_slot_for(m);
  if (w < 0 || !sched->watcher_missing[static_cast<std::size_t>(w)].exchange(false)) return false;
  m->watcher = true;
  m->watch_p = w;
  return true;
}

// Parks the watcher m on P watch_p's event source until it can take that P (a block event whose
// lease it wins by CAS), or, on a timer deadline, takes P back if idle. Returns false once the
// runtime stops. Caller: m, P-less, on g0.
static void hold_self(P* p);

// Whether lease word w says USER with a holder BPF last saw switched out blocked (its block
// stamp is newer than its wake stamp). Racy by nature: a hand-off CAS from w decides.
static bool holder_blocked(LeaseWord w) {
  if (KGMP_LEASE_STATE(w) != KGMP_LEASE_USER) return false;
  std::uint32_t h = KGMP_LEASE_HOLDER(w);
  if (h >= KGMP_MAX_MS) return false;
  const kgmp_m_shared& ms = sched->shared->m[h];
  return __atomic_load_n(&ms.last_block_ns, __ATOMIC_ACQUIRE) >
         __atomic_load_n(&ms.last_wake_ns, __ATOMIC_ACQUIRE);
}

static bool watch_for_p(M* m) {
  P* p = &sched->allp[m->watch_p];
  m->tstate.store(MState::kWatcher, std::memory_order_relaxed);
  int late_ms = 0;  // a due timer the holder has not run yet: back off 1 .. 10 ms, no spinning
  while (!sched->stopping.load(std::memory_order_acquire)) {
    std::int64_t e = earliest_timer();
    int timeout = -1;
    if (e != 0) {
      std::int64_t ms = (e - nanotime() + 999999) / 1000000;
      timeout = ms < late_ms ? late_ms : static_cast<int>(ms);
    }
    std::uint64_t lease = 0;
    hold_self(p);
    int r = sched->monitor->watch(m->watch_p, &lease, timeout);
    if (sched->stopping.load(std::memory_order_acquire)) break;
    bool got = false;
    if (r == 0) {  // a timer is due: run it if the P is idle
      {
        LockGuard l(sched->lock);
        got = pidle_get(p) != nullptr;
      }
      // Or if its holder is blocked in the kernel: a block BPF did not report (the P had no
      // work then), and the due timer is work now. Else the holder runs it at its next
      // scheduling point; look again a little later.
      LeaseWord w = lease_ref(p).load(std::memory_order_acquire);
      if (!got && holder_blocked(w)) {
        lease = w;
        r = 1;
      } else if (!got) {
        late_ms = late_ms == 0 ? 1 : std::min(late_ms * 2, 10);
      }
    }
    if (r != 0) late_ms = 0;
    if (r == 1) {
      got = handoff_p(p, lease);
      if (got) {
        p->m = nullptr;
        if (counters_on) {
          p->c.handoffs_in.add();
          // How long the P stood still: from the kernel's switch-out of its blocked M (BPF's
          // sched_switch stamp in that M's shared slot, the same clock under trace and scx)
          // to this CAS.
          std::uint32_t h = KGMP_LEASE_HOLDER(lease);
          std::uint64_t ts =
              h < KGMP_MAX_MS
                  ? __atomic_load_n(&sched->shared->m[h].last_block_ns, __ATOMIC_ACQUIRE)
                  : 0;
          std::int64_t now = nanotime();
          if (ts != 0 && static_cast<std::uint64_t>(now) >= ts)
            p->c.handoff_lat.add(static_cast<std::uint64_t>(now) - ts);
        }
      }
    }
    if (got) {
      acquire_p(m, p);
      m->watcher = false;
      m->tstate.store(MState::kRunning, std::memory_order_relaxed);
      int pi = m->watch_p;
      sched->watcher_missing[static_cast<std::size_t>(pi)].store(true, std::memory_order_release);
      m->watch_p = -1;
      if (r == 1)
        p->kick_backstop = true;  // see enter_runtime
      else
        start_watcher(pi);  // a timer: no M is coming back; the next block needs a watcher
      return true;
    }
  }
  return false;
}

void start_watcher(int pi) {
  if (!sched->watcher_missing[static_cast<std::size_t>(pi)].exchange(false)) return;
  P* p = &sched->allp[pi];
  M* m = nullptr;
  {
    LockGuard l(sched->lock);
    if (sched->stopping.load(std::memory_order_relaxed)) return;
    M** pp = &sched->midle[static_cast<std::size_t>(pool_of(p))];
    if (*pp != nullptr) {
      m = *pp;
      *pp = m->schedlink;
      m->in_midle = false;
    } else {
      if (static_cast<int>(sched->allm.size()) >= sched->cfg.max_threads) {
        sched->watcher_missing[static_cast<std::size_t>(pi)].store(true);
        return;  // at the limit: the backstop keeps handing off by polling
      }
      m = new_m_locked(p);
    }
    m->watcher = true;
    m->watch_p = pi;
    m->nextp = nullptr;
  }
  if (m->thread == pthread_t{})
    create_thread(m);
  else
    m->park.wakeup();
}

// Parks m, without a P, until another M hands it one (nextp), the deadline `until` passes
// (0: none), or a new earlier timer pokes it; in the last two cases it takes its own P back if
// idle (any idle P when not pinned), else parks again. Returns with m->p set, or without a P
// once the runtime is stopping. Go's stopm, plus the timed sleep of findRunnable's netpoll.
static void stop_m(M* m, std::int64_t until) {
  __atomic_store_n(&m->sh->curg, 0, __ATOMIC_RELAXED);
  for (;;) {
    if (become_watcher(m)) {  // without a P: find_runnable returns, m_loop watches
      m->tstate.store(MState::kWatcher, std::memory_order_relaxed);
      return;
    }
    m->tstate.store(MState::kIdle, std::memory_order_relaxed);
    {
      LockGuard l(sched->lock);
      if (sched->stopping.load(std::memory_order_relaxed)) return;
      M*& head = sched->midle[static_cast<std::size_t>(m->pool)];
      m->schedlink = head;
      head = m;
      m->in_midle = true;
      m->sleep_until = until;
    }
    // Re-read the timers after publishing sleep_until (add_timer publishes timer0, then scans
    // the idle Ms): a timer added meanwhile is seen here or pokes this M.
    std::int64_t e = earliest_timer();
    bool woken;
    if (e != 0 && (until == 0 || e < until))
      woken = false;
    else if (until == 0)
      woken = (m->park.sleep(), true);
    else
      woken = m->park.sleep_until(until);
    if (!woken) {
      // Timed out (or never slept): leave the idle list unless a waker popped us meanwhile, in
      // which case its wakeup is on the way.
      bool popped;
      {
        LockGuard l(sched->lock);
        popped = !m->in_midle;
        if (!popped) {
          M** pp = &sched->midle[static_cast<std::size_t>(m->pool)];
          while (*pp != m) pp = &(*pp)->schedlink;
          *pp = m->schedlink;
          m->in_midle = false;
        }
      }
      if (popped) m->park.sleep();
    }
    m->park.clear();
    m->tstate.store(MState::kRunning, std::memory_order_relaxed);
    if (m->nextp != nullptr) {
      acquire_p(m, m->nextp);
      m->nextp = nullptr;
      return;
    }
    if (sched->stopping.load(std::memory_order_acquire) || m->watcher) return;
    P* p;
    {
      LockGuard l(sched->lock);
      p = pidle_get(sched->cfg.pin ? &sched->allp[m->pool] : nullptr);
    }
    if (p != nullptr) {
      acquire_p(m, p);
      return;
    }
    until = earliest_timer();
  }
}

void poke_timer_sleepers(std::int64_t when) {
  if (sched->npidle.load(std::memory_order_seq_cst) == 0) return;  // every P's M checks timers
  M* poke = nullptr;
  {
    LockGuard l(sched->lock);
    for (M*& head : sched->midle) {
      for (M** pp = &head; *pp != nullptr; pp = &(*pp)->schedlink) {
        M* m = *pp;
        if (m->sleep_until != 0 && m->sleep_until <= when) continue;  // wakes in time anyway
        *pp = m->schedlink;
        m->in_midle = false;
        m->nextp = nullptr;
        poke = m;
        break;
      }
      if (poke != nullptr) break;
    }
  }
  if (poke != nullptr) {
    poke->park.wakeup();
  } else if (sched->monitor->has_watchers()) {
    // Only watchers sleep: they wait until the earliest timer too; make them recompute.
    for (int i = 0; i < sched->nprocs; i++) sched->monitor->wake_watcher(i);
  }
}

// Runs the expired timers of every P (own first). Caller: m holding a P.
static void check_timers(M* m) {
  std::int64_t now = 0;
  for (int k = 0; k < sched->nprocs; k++) {
    P* q = k == 0 ? m->p : &sched->allp[(m->p->id + k) % sched->nprocs];
    std::int64_t t0 = q->timers.timer0.load(std::memory_order_relaxed);
    if (t0 == 0) continue;
    if (now == 0) now = nanotime();
    if (t0 <= now) run_timers(q, now);
  }
}

// Every P is idle, no G is queued and no timer is pending: unless a thread outside the runtime
// is going to wake a G (Config::detect_deadlock = false for such programs), nothing ever will.
// Go's checkdead. Caller: holds sched->lock, after putting the last P on the idle list.
static void check_dead() ABSL_EXCLUSIVE_LOCKS_REQUIRED(sched->lock);

// Go's wakep: start a spinning M for an idle P if there is an idle P and no spinning M.
// Caller: anyone, after making a G runnable.
static void wake_p() {
  std::atomic_thread_fence(std::memory_order_seq_cst);  // StoreLoad: queue write vs. the reads
  sched->monitor->kick();  // a load of a flag unless the backstop sleeps
  if (sched->npidle.load(std::memory_order_relaxed) == 0) return;
  std::int32_t zero = 0;
  if (sched->nmspinning.load(std::memory_order_relaxed) != 0 ||
      !sched->nmspinning.compare_exchange_strong(zero, 1, std::memory_order_seq_cst))
    return;
  P* p;
  {
    LockGuard l(sched->lock);
    p = pidle_get(nullptr);
  }
  if (p == nullptr) {
    sched->nmspinning.fetch_sub(1, std::memory_order_seq_cst);
    return;
  }
  start_m(p, true);
}

static void reset_spinning(M* m) {
  m->spinning = false;
  if (m->tstate.load(std::memory_order_relaxed) == MState::kSpinning && m->p != nullptr) {
    p_account(m->p->c, PState::kBusy);
    trace_event(m->p->id, TraceEv::kMSpinEnd, static_cast<std::uint32_t>(m->id), 0, 0);
  }
  m->tstate.store(MState::kRunning, std::memory_order_relaxed);
  std::int32_t n = sched->nmspinning.fetch_sub(1, std::memory_order_seq_cst) - 1;
  if (n < 0) fatal("kgmp: internal error: nmspinning=%d < 0", n);
  wake_p();
}

// ---- stealing ----

// Steals half of victim's ring (or its runnext) into p; returns one G to run. Go's runqsteal.
static G* runq_steal(P* p, P* victim, bool steal_next) {
  G* batch[RunQueue<G>::kSize / 2];
  std::uint32_t n = victim->runq.grab(batch, false);
  if (n == 0 && steal_next) {
    // A running victim is likely about to run its runnext (a G it just readied): leave it
    // there for a while, as Go does with usleep(3), rather than take it and split a
    // communicating pair over two CPUs. With Linux's default 50 us timer slack the sleep lasts
    // ~50 us, which is what makes it work: a 3 us spin let chan-throughput's producer and
    // consumer be pulled apart ~1000 times a second and run 4x slower (bench/RESULTS.md).
    // The sleep sits between reading runnext and taking it (runq.h, grab: Go's order), and the
    // steal goes ahead only if the victim started no G meanwhile (its schedtick counter is
    // unchanged): then the G it runs is a long one and runnext really waits. Go checks instead
    // that runnext still holds the same G, which a pair alternating on one P defeats: producer
    // and consumer trade runnext every ~12 us here (one 1024-message batch), so after the
    // ~55 us sleep the same G is back half the time; that split the pair ~250 times a second
    // (chan-throughput 11-16 M msgs/s on 2 Ps; 37-39 M with this check; 41 M on one P).
    n = victim->runq.grab(batch, true, [victim] {
      if (victim->idle.load(std::memory_order_relaxed)) return true;
      std::uint64_t tick = victim->c.schedticks.load();
      usleep(3);
      return victim->c.schedticks.load() == tick;
    });
  }
  if (n == 0) return nullptr;
  G* g = batch[--n];
  if (n > 0) p->runq.put_batch(batch, n);
  if (counters_on) {
    p->c.steals.add();
    p->c.stolen.add(n + 1);
  }
  trace_event(p->id, TraceEv::kSteal, static_cast<std::uint32_t>(getm()->id), n + 1,
              static_cast<std::uint64_t>(victim->id));
  return g;
}

static G* steal_work(M* m, P* p) {
  const std::uint32_t np = static_cast<std::uint32_t>(sched->nprocs);
  if (np == 1) return nullptr;
  for (int pass = 0; pass < 4; pass++) {
    bool last = pass == 3;
    std::uint32_t pos = fastrand(m) % np;
    std::uint32_t inc;
    do {
      inc = fastrand(m) % np + 1;
    } while (gcd(inc, np) != 1);
    for (std::uint32_t i = 0; i < np; i++, pos = (pos + inc) % np) {
      if (sched->stopping.load(std::memory_order_relaxed)) return nullptr;
      P* v = &sched->allp[pos];
      if (v == p) continue;
      if (G* g = runq_steal(p, v, last)) return g;
    }
  }
  return nullptr;
}

// ---- finding work ----

// The non-blocking part of find_runnable: every 61st tick the global queue, then the local
// queue, then the global queue. Caller: p's holder, on any stack.
static G* runq_next_local(P* p) {
  if (p->c.schedticks.load() % 61 == 0 && sched->runqsize.load(std::memory_order_relaxed) > 0) {
    LockGuard l(sched->lock);
    if (G* g = globrunq_get(p, 1)) return g;
  }
  if (G* g = p->runq.get()) {
    publish_runq(p);
    return g;
  }
  if (sched->runqsize.load(std::memory_order_relaxed) > 0) {
    LockGuard l(sched->lock);
    if (G* g = globrunq_get(p, 0)) return g;
  }
  return nullptr;
}

// Go's findRunnable: blocks (parks the M) until it has a G to run; nullptr once the runtime is
// stopping. Caller: m on g0. On return with a G, m holds a P and may be spinning.
static G* find_runnable(M* m) {
  for (;;) {
    if (sched->stopping.load(std::memory_order_acquire)) return nullptr;
    P* p = m->p;
    check_timers(m);
    if (G* g = runq_next_local(p)) return g;

    if (m->spinning || 2 * sched->nmspinning.load(std::memory_order_relaxed) <
                           sched->nprocs - sched->npidle.load(std::memory_order_relaxed)) {
      if (!m->spinning) {
        m->spinning = true;
        sched->nmspinning.fetch_add(1, std::memory_order_seq_cst);
      }
      if (m->tstate.load(std::memory_order_relaxed) != MState::kSpinning) {  // spin begins
        m->tstate.store(MState::kSpinning, std::memory_order_relaxed);
        p_account(p->c, PState::kSpin);
        trace_event(p->id, TraceEv::kMSpinStart, static_cast<std::uint32_t>(m->id), 0, 0);
      }
      if (G* g = steal_work(m, p)) return g;
    }

    {
      LockGuard l(sched->lock);
      if (sched->stopping.load(std::memory_order_relaxed)) return nullptr;
      if (sched->runqsize.load(std::memory_order_relaxed) > 0) {
        if (G* g = globrunq_get(p, 0)) return g;
      }
      // Spinning (if it was) and running end here; pidle_put accounts the P's time.
      if (m->tstate.load(std::memory_order_relaxed) == MState::kSpinning) {
        trace_event(p->id, TraceEv::kMSpinEnd, static_cast<std::uint32_t>(m->id), 0, 0);
        m->tstate.store(MState::kRunning, std::memory_order_relaxed);
      }
      if (__builtin_expect(tracing.load(std::memory_order_relaxed), 0)) {
        trace_event_slow(p->id, TraceEv::kMIdle, static_cast<std::uint32_t>(m->id), 0, 0);
        m->tr_idle = true;  // acquire_p records the m_busy that closes it
      }
      pidle_put(release_p(m));
      if (sched->npidle.load(std::memory_order_relaxed) == sched->nprocs &&
          sched->cfg.detect_deadlock && earliest_timer() == 0)
        check_dead();
    }

    if (m->spinning) {
      m->spinning = false;
      if (sched->nmspinning.fetch_sub(1, std::memory_order_seq_cst) - 1 < 0)
        fatal("kgmp: internal error: nmspinning < 0");
      // Re-check every queue after the decrement (the StoreLoad of the protocol above).
      bool work = sched->runqsize.load(std::memory_order_seq_cst) > 0;
      for (int i = 0; i < sched->nprocs && !work; i++) work = !sched->allp[i].runq.empty();
      if (work) {
        P* q;
        {
          LockGuard l(sched->lock);
          q = pidle_get(sched->cfg.pin ? p : nullptr);
        }
        if (q != nullptr) {
          acquire_p(m, q);
          m->spinning = true;
          sched->nmspinning.fetch_add(1, std::memory_order_seq_cst);
          continue;
        }
      }
    }
    if (counters_on) p->c.parks.add();
    stop_m(m, earliest_timer());
    if (m->p == nullptr) return nullptr;  // woken to stop
  }
}

// ---- switching ----

static void g_free(P* p, G* g);

// Runs the action the previous G asked for, now that its context is saved. Caller: m, right
// after any switch, on the new stack.
static void finish_switch(M* m) {
  After a = m->after;
  if (a == After::kNone) return;
  G* g = m->after_g;
  m->after = After::kNone;
  m->after_g = nullptr;
  switch (a) {
    case After::kYield:
    case After::kPreempt:
      g->status.store(GStatus::kRunnable, std::memory_order_relaxed);
      track_ready(g);
      runq_put(m->p, g, false);
      break;
    case After::kPark:
      g->status.store(GStatus::kWaiting, std::memory_order_release);
      if (m->requeue_lost) {  // a P-less park (gopark): the G is accounted for again
        sched->nlostp.fetch_sub(1, std::memory_order_seq_cst);
        m->requeue_lost = false;
      }
      if (m->unlockf != nullptr) {
        auto f = m->unlockf;
        m->unlockf = nullptr;
        f(m->unlock_arg);
      }
      break;
    case After::kExit:
      san_fiber_destroy(g);
      g_free(m->p, g);
      break;
    case After::kYieldGlobal:
    case After::kRequeue:
      g->status.store(GStatus::kRunnable, std::memory_order_relaxed);
      track_ready(g);
      {
        LockGuard l(sched->lock);
        globrunq_put_batch(g, g, 1);
      }
      if (m->requeue_lost) sched->nlostp.fetch_sub(1, std::memory_order_seq_cst);
      m->requeue_lost = false;
      wake_p();
      break;
    case After::kNone:
      break;
  }
}

// Runs p's expired timers, reading the clock only when p has a timer. Caller: p's holder.
static inline void run_own_timers(P* p) {
  std::int64_t t0 = p->timers.timer0.load(std::memory_order_relaxed);
  if (t0 == 0) return;
  std::int64_t now = nanotime();
  if (t0 <= now) run_timers(p, now);
}

// Switches from `from` (the running G or g0) to `to`. Returns when something switches back to
// `from`, possibly on another M. Caller: m with m->curg already set to `to` (or null for g0).
static void switch_to(M* m, G* from, G* to) {
  if (from->canary != nullptr && *from->canary != kStackCanary) stack_overflow(from, nullptr);
  bool dying = m->after == After::kExit && m->after_g == from;
  san_start_switch(from, to, dying);
  from->rt_depth = m->rt_depth;
  kgmp_ctx_switch(&from->sp, to->sp);
  san_finish_switch(from);
  M* now = getm();
  now->rt_depth = from->rt_depth;
  finish_switch(now);
  // Due timers run here, after the previous G's wait-queue lock was released by
  // finish_switch, and never before the switch: a timer callback may send on the very channel
  // whose lock the parking G still holds.
  if (now->p != nullptr) run_own_timers(now->p);
}

// Starts running g on m (from g0 or from a G). Caller: m holding a P.
static void execute(M* m, G* from, G* g) {
  P* p = m->p;
  p->c.schedticks.add();  // Go's schedtick (the 61st-tick fairness check reads it); runs = it
  // Published for scx_kgmp's ops.tick (Go's sysmon reads pd.schedtick): one plain store, no
  // clock read; the tick derives how long this G has run from when the value last changed.
  __atomic_store_n(&p->sh->schedtick, p->c.schedticks.load(), __ATOMIC_RELAXED);
  if (counters_on) {
    if (g->runnable_tick != 0) {  // a sampled transition (track_ready)
      std::uint64_t now = ticks();
      p->c.lat.add(now > g->runnable_tick ? ticks_to_ns(now - g->runnable_tick) : 0);
      g->runnable_tick = 0;
    }
  }
  g->status.store(GStatus::kRunning, std::memory_order_relaxed);
  m->curg = g;
  __atomic_store_n(&m->sh->curg, g->goid, __ATOMIC_RELAXED);  // one plain store
  if (__builtin_expect(tracing.load(std::memory_order_relaxed), 0)) {
    trace_event_slow(p->id, TraceEv::kRunq, static_cast<std::uint32_t>(m->id), 0, p->runq.size());
    trace_event_slow(p->id, TraceEv::kGRun, static_cast<std::uint32_t>(m->id), g->goid, 0);
  }
  switch_to(m, from, g);
}

// The scheduler loop of an M, on its g0.
static void schedule(M* m) {
  for (;;) {
    finish_switch(m);
    if (m->p == nullptr) {
      // A P-less M (its P was handed off while it was blocked): park as a spare of its core
      // until it is handed a P or its own P is idle again (or become the core's watcher).
      stop_m(m, 0);
      if (m->p == nullptr) break;  // stopping, or now a watcher
    }
    G* g = find_runnable(m);
    if (g == nullptr) break;
    if (m->spinning) reset_spinning(m);
    execute(m, &m->g0, g);
  }
}

// An M's life: run the scheduler while it has a P, watch its core's event source while it is
// the watcher, until the runtime stops.
static void m_loop(M* m) {
  for (;;) {
    if (m->watcher && !watch_for_p(m)) return;
    schedule(m);
    if (!m->watcher) return;
  }
}


// Leaves the current G (with action a) for the next runnable G of this P, or for g0.
// Caller: the running G, its M holding a P.
static void leave_g(After a) {
  M* m = getm();
  G* gp = m->curg;
  if (__builtin_expect(tracing.load(std::memory_order_relaxed), 0)) trace_stop(m, gp, a);
  m->after = a;
  m->after_g = gp;
  G* next = sched->stopping.load(std::memory_order_relaxed) ? nullptr : runq_next_local(m->p);
  if (next != nullptr) {
    execute(m, gp, next);
  } else {
    m->curg = nullptr;
    switch_to(m, gp, &m->g0);
  }
}

// ---- the P lease (DESIGN §3) ----

// USER -> RUNTIME by CAS from the word this M stored last: fails if the P was handed off.
// Caller: m, at runtime entry (depth 0 -> 1), m->p non-null.
static inline bool lease_enter(M* m, P* p) {
  LeaseWord e = m->lease_expect;
  if (!lease_ref(p).compare_exchange_strong(
          e, KGMP_LEASE_MAKE(KGMP_LEASE_SEQ(e) + 1, m->id, KGMP_LEASE_RUNTIME),
          std::memory_order_acq_rel))
    return false;
  owner_in(p, m);
  return true;
}

// Leaves the running G for g0 with action a (run by g0 once the G's context is saved).
// Returns when the G is resumed, maybe on another M. Caller: the running G, in the runtime.
static void switch_to_g0(M* m, After a) {
  G* g = m->curg;
  if (__builtin_expect(tracing.load(std::memory_order_relaxed), 0)) trace_stop(m, g, a);
  m->after = a;
  m->after_g = g;
  m->curg = nullptr;
  switch_to(m, g, &m->g0);
}

// The M lost its P while its G ran (a monitor handed it off): Go's exitsyscall slow path.
// Caller: enter_runtime, on the G's stack, depth already 1.
static void lost_p(M* m) {
  // nlostp (deadlock detection) drops only once the G is on a P or a run queue again.
  bool handed = m->p != nullptr;
  if (handed) {
    m->p = nullptr;  // the P's new holder already owns p->m
    __atomic_store_n(&m->sh->p, KGMP_NO_P, __ATOMIC_RELAXED);  // read by BPF and telemetry
  }
  P* q;
  {
    LockGuard l(sched->lock);
    q = pidle_get(sched->cfg.pin ? &sched->allp[m->pool] : nullptr);
  }
  if (q != nullptr) {
    acquire_p(m, q);
    if (handed) sched->nlostp.fetch_sub(1, std::memory_order_seq_cst);
    return;
  }
  m->requeue_lost = handed;
  // No P for us: the G waits on the global queue and this M parks as a spare of its core.
  switch_to_g0(m, After::kRequeue);
  // Resumed by an M that holds a P, inside its runtime (depth 1 there).
}

// ---- preemption requests (DESIGN §5) ----
//
// Protocol: scx_kgmp's ops.tick sets preempt[slot] of M slot when that M holds its P in USER
// state and the P's published schedtick has not moved for 10 ms (one G ran that long). The M
// itself clears the word, at its next runtime entry from G code (enter_runtime, depth 0 -> 1)
// or in kgmp::preempt_point(), and yields the G to the back of its P's queue (Go's
// gopreempt_m, which uses the global queue; the local one keeps the P's Gs where they are).
// Race: the G may have yielded, parked or exited on its own between the tick and the check;
// the flag then makes the M's next G yield once at its first runtime entry. One extra yield:
// acceptable. Without scx (preempt_flags null) the check is one load and a predictable branch.
// Why a runtime entry is a safe place to switch the G out: it already is one (lost_p requeues
// the G when its P was handed off), so every caller enters before taking a lock (see gopark)
// and re-reads getm() after. Inside kgmp::blocking the request waits for the next entry.

// The M's preemption word if a request is pending, else null. Caller: m, any thread state.
static inline std::uint32_t* preempt_requested(M* m) {
  std::uint32_t* f = sched->preempt_flags.load(std::memory_order_relaxed);
  if (__builtin_expect(f == nullptr, 1)) return nullptr;
  if (m->id >= KGMP_MAX_MS) return nullptr;
  std::uint32_t* w = &f[m->id];
  return __atomic_load_n(w, __ATOMIC_RELAXED) != 0 ? w : nullptr;
}

// Consumes a pending request w of m: clears it and yields the running G if another G is
// runnable (else it just goes on: nothing to preempt it for). Caller: the running G of m, in
// the runtime at depth 1, m holding a P, no lock held. Returns maybe on another M.
static void __attribute__((noinline)) gopreempt(M* m, std::uint32_t* w) {
  // Inside kgmp::blocking (entersyscall/exitsyscall): the M's state is in flux; keep the
  // request for the G's next entry.
  if (m->tstate.load(std::memory_order_relaxed) != MState::kRunning) return;
  __atomic_store_n(w, 0u, __ATOMIC_RELAXED);
  if (m->curg == nullptr || sched->stopping.load(std::memory_order_relaxed)) return;
  P* p = m->p;
  run_own_timers(p);
  if (p->runq.empty() && sched->runqsize.load(std::memory_order_relaxed) == 0) return;
  leave_g(After::kPreempt);
}

// After a watcher took P p, its blocked M usually comes back as p's watcher. If it has not by
// the new holder's first runtime entry, the backstop is kicked to start one. Not at the hand-off
// itself: waking the backstop is a cross-CPU wakeup (an IPI, several us in a VM) that would
// delay the G the hand-off is for. Caller: p's holder, in the runtime.
static void kick_backstop(P* p) {
  p->kick_backstop = false;
  if (sched->watcher_missing[static_cast<std::size_t>(p->id)].load(std::memory_order_acquire))
    sched->monitor->kick();
}

void enter_runtime() {
  M* m = getm();
  if (m == nullptr || m->rt_depth++ > 0) return;
  if (m->p != nullptr && lease_enter(m, m->p)) {
    if (__builtin_expect(m->p->kick_backstop, 0)) kick_backstop(m->p);
    if (std::uint32_t* w = preempt_requested(m); __builtin_expect(w != nullptr, 0))
      gopreempt(m, w);
    return;
  }
  lost_p(m);
}

// Whether p has work queued behind its running G, as BPF sees it (runq_len, nglobal).
static bool work_queued(P* p) {
  return std::atomic_ref<__u32>(p->sh->runq_len).load(std::memory_order_relaxed) != 0 ||
         std::atomic_ref<__u32>(sched->shared->hdr.nglobal).load(std::memory_order_relaxed) != 0;
}

// Yields (at most 8 times: a watcher not eligible yet, EEVDF lag, is passed over) until p's
// watcher is HELD. Caller: p's holder, after asking for or refreshing a held watcher.
static void yield_until_held(std::atomic_ref<__u32> held) {
  for (int i = 0; i < 8 && held.load(std::memory_order_acquire) != KGMP_SPARE_HELD; i++)
    sched_yield();
}

// Asks for p's watcher to be held runnable (trace.cpp's held spares) when work is queued behind
// the G about to run and p handed off lately: if this M blocks in the kernel, the CPU then
// switches straight to the watcher instead of waking it through an IPI. The wakeup is followed
// by a yield, so the watcher (pinned here) is held before this M can block: a watcher woken
// from a long sleep takes 30 us to get there, which would otherwise be the hand-off's latency.
// A watcher held so long that its path went cold is refreshed instead (trace.cpp, "Refresh").
// Caller: p's holder, with p->hold_credit != 0.
static void hold_spare(P* p) {
  std::atomic_ref<__u32> held(p->sh->spare_held);
  __u32 h = held.load(std::memory_order_relaxed);
  if ((h != KGMP_SPARE_SLEEPING && h != KGMP_SPARE_HELD) || !work_queued(p)) return;
  if (h == KGMP_SPARE_HELD) {  // held already: refreshed if held long enough to go cold
    if (sched->monitor->refresh_held_watcher(p->id)) yield_until_held(held);
    return;
  }
  // Not on a CPU that other programs keep busy: a held watcher (SCHED_IDLE) would wait behind
  // them, where a woken one (SCHED_OTHER) gets its fair share at once. BPF's per-core
  // foreign_ns grows whenever an M of ours waited while another process's task ran here; a
  // daemon's blip (microseconds) is not a busy CPU, a competing program (milliseconds) is.
  if (sched->cores != nullptr && p->cpu >= 0 && p->cpu < KGMP_MAX_CPUS) {
    std::uint64_t f = std::atomic_ref<const __u64>(sched->cores->c[p->cpu].foreign_ns)
                          .load(std::memory_order_relaxed);
    std::uint64_t seen = p->foreign_seen.exchange(f, std::memory_order_relaxed);
    if (f - seen > kForeignBusyNs) return;
  }
  p->hold_credit.store(p->hold_credit.load(std::memory_order_relaxed) - 1,
                       std::memory_order_relaxed);
  __u32 sleeping = KGMP_SPARE_SLEEPING;
  if (held.compare_exchange_strong(sleeping, KGMP_SPARE_REQUESTED, std::memory_order_acq_rel)) {
    sched->monitor->wake_watcher(p->id);
    yield_until_held(held);
  }
}

// The watcher's own request, before it sleeps: the same test as hold_spare, so an M that comes
// back P-less while its P's holder runs with work queued is held at once, without a wakeup.
// Caller: p's watcher.
static void hold_self(P* p) {
  std::atomic_ref<__u32> held(p->sh->spare_held);
  if (!sched->hold_spares || p->hold_credit.load(std::memory_order_relaxed) == 0 ||
      held.load(std::memory_order_relaxed) != KGMP_SPARE_SLEEPING ||
      KGMP_LEASE_STATE(lease_ref(p).load(std::memory_order_relaxed)) != KGMP_LEASE_USER ||
      !work_queued(p))
    return;
  __u32 sleeping = KGMP_SPARE_SLEEPING;
  held.compare_exchange_strong(sleeping, KGMP_SPARE_REQUESTED, std::memory_order_acq_rel);
}

void exit_runtime() {
  M* m = getm();
  if (m == nullptr || --m->rt_depth > 0) return;
  P* p = m->p;
  if (p == nullptr) return;  // P-less G code (kgmp::blocking under an eager monitor)
  auto l = lease_ref(p);
  LeaseWord w = l.load(std::memory_order_relaxed);
  LeaseWord u = KGMP_LEASE_MAKE(KGMP_LEASE_SEQ(w) + 1, m->id, KGMP_LEASE_USER);
  m->lease_expect = u;
  owner_out(p);
  l.store(u, std::memory_order_release);
  if (p->hold_credit.load(std::memory_order_relaxed) != 0) hold_spare(p);
}

bool handoff_p(P* p, LeaseWord observed) {
  if (KGMP_LEASE_STATE(observed) != KGMP_LEASE_USER) return false;
  if (!lease_ref(p).compare_exchange_strong(
          observed, KGMP_LEASE_MAKE(KGMP_LEASE_SEQ(observed) + 1, kNoHolder, KGMP_LEASE_RUNTIME),
          std::memory_order_acq_rel))
    return false;
  if (lease_check.load(std::memory_order_relaxed) &&
      p->rt_owner.load(std::memory_order_acquire) != -1)
    lease_violations.fetch_add(1, std::memory_order_relaxed);  // someone in RUNTIME under USER
  p->m = nullptr;  // the blocked M learns at its next runtime entry (its CAS fails)
  // Whoever took it (a watcher, the backstop, an eager kgmp::blocking) owns it now: a P that
  // hands off is likely to again, so its next holders may ask for a held watcher.
  if (sched->hold_spares) p->hold_credit.store(kHoldCredit, std::memory_order_relaxed);
  p->c.handoffs_out.add();
  if (__builtin_expect(tracing.load(std::memory_order_relaxed), 0)) {
    M* taker = getm();
    trace_event_slow(p->id, TraceEv::kHandoff,
                     taker != nullptr ? static_cast<std::uint32_t>(taker->id) : kNoHolder, 0,
                     KGMP_LEASE_HOLDER(observed));
  }
  sched->nlostp.fetch_add(1, std::memory_order_relaxed);
  return true;
}

bool p_has_work(P* p) {
  return !p->runq.empty() || sched->runqsize.load(std::memory_order_relaxed) > 0;
}

void handoff_start(P* p) {
  if (p_has_work(p)) {
    if (counters_on) p->c.handoffs_in.add();
    start_m(p, false);
    return;
  }
  auto l = lease_ref(p);
  LeaseWord w = l.load(std::memory_order_relaxed);
  l.store(KGMP_LEASE_MAKE(KGMP_LEASE_SEQ(w) + 1, kNoHolder, KGMP_LEASE_IDLE),
          std::memory_order_release);
  LockGuard g(sched->lock);
  pidle_put(p);
}

void entersyscall() {
  M* m = getm();
  if (m == nullptr || m->curg == nullptr) return;
  // The time first, then the flag (release): a poller that sees in_blocking sees this section's
  // start, not the previous one's.
  __atomic_store_n(&m->sh->blocking_since_ns, static_cast<__u64>(nanotime()), __ATOMIC_RELAXED);
  __atomic_store_n(&m->sh->in_blocking, 1u, __ATOMIC_RELEASE);
  sched->nblocking.fetch_add(1, std::memory_order_seq_cst);
  m->tstate.store(MState::kBlocked, std::memory_order_relaxed);
  if (!sched->monitor->eager_blocking()) {
    sched->monitor->enter_blocking(m);
    return;
  }
  // Go's entersyscallblock: give the P away now; exitsyscall gets one back.
  enter_runtime();
  m = getm();
  if (P* p = m->p) {
    trace_event(p->id, TraceEv::kMBlock, static_cast<std::uint32_t>(m->id), m->curg->goid, 0);
    auto l = lease_ref(p);
    LeaseWord w = l.load(std::memory_order_relaxed);
    owner_out(p);
    l.store(KGMP_LEASE_MAKE(KGMP_LEASE_SEQ(w) + 1, kNoHolder, KGMP_LEASE_RUNTIME),
            std::memory_order_release);
    p->m = nullptr;
    m->p = nullptr;
    __atomic_store_n(&m->sh->p, KGMP_NO_P, __ATOMIC_RELAXED);  // read by BPF and telemetry
    p->c.handoffs_out.add();
    trace_event(p->id, TraceEv::kHandoff, kNoHolder, 0, static_cast<std::uint64_t>(m->id));
    handoff_start(p);
  }
  exit_runtime();
}

void exitsyscall() {
  M* m = getm();
  if (m == nullptr || m->curg == nullptr) return;
  __atomic_store_n(&m->sh->in_blocking, 0u, __ATOMIC_RELEASE);
  // The CAS finds out whether the P was taken meanwhile, and gets one back (or requeues the G
  // and resumes it later, maybe on another M). nblocking drops only then, so that deadlock
  // detection never sees this G as neither blocked nor runnable.
  enter_runtime();
  sched->nblocking.fetch_sub(1, std::memory_order_seq_cst);
  m = getm();
  m->tstate.store(MState::kRunning, std::memory_order_relaxed);
  if (m->p != nullptr)
    trace_event(m->p->id, TraceEv::kMWake, static_cast<std::uint32_t>(m->id), m->curg->goid, 0);
  exit_runtime();
}

void gopark(void (*unlockf)(void*), void* arg, const char* reason) {
  M* m = getm();
  if (m == nullptr || m->curg == nullptr)
    fatal("kgmp: a goroutine primitive was used outside a goroutine (%s); call it from code "
          "running under kgmp::run",
          reason);
  m->curg->waitreason = reason;
  m->unlockf = unlockf;
  m->unlock_arg = arg;
  if (m->rt_depth++ == 0) {
    // Entering the runtime to park. Callers usually hold the lock unlockf releases, so if the
    // P was handed off meanwhile the G must not wait for a P with it (lost_p's requeue): it
    // parks right away, P-less, on g0, which releases the lock; the M then waits as a spare.
    P* p = m->p;
    if (p == nullptr || !lease_enter(m, p)) {
      if (p != nullptr) {  // handed off: nlostp drops once the G is parked (finish_switch)
        m->p = nullptr;
        __atomic_store_n(&m->sh->p, KGMP_NO_P, __ATOMIC_RELAXED);  // read by BPF and telemetry
        m->requeue_lost = true;
      }
      switch_to_g0(m, After::kPark);
      exit_runtime();  // resumed by an M holding a P
      return;
    }
  }
  leave_g(After::kPark);
  exit_runtime();
}

void goready(G* g, bool next) {
  KGMP_CHECK(g->status.load(std::memory_order_acquire) == GStatus::kWaiting);
  g->waitreason = nullptr;
  g->status.store(GStatus::kRunnable, std::memory_order_relaxed);
  track_ready(g);
  RuntimeScope rs;
  M* m = getm();
  if (m != nullptr && m->p != nullptr) {
    runq_put(m->p, g, next);
  } else {
    LockGuard l(sched->lock);
    globrunq_put_batch(g, g, 1);
  }
  wake_p();
}

// ---- G lifecycle ----

struct GLocals {
  std::vector<std::pair<void*, void (*)(void*)>> slots;
};

static void g_free(P* p, G* g) {
  g->status.store(GStatus::kFree, std::memory_order_release);
  if (!g->pooled) return;  // the main G's stack goes at teardown
  if (p == nullptr) {
    pool.put_batch(&g, 1);
    return;
  }
  if (p->ngfree == P::kGCacheMax) {
    pool.put_batch(p->gfree, P::kGCacheBatch);  // the coldest half
    std::memmove(p->gfree, p->gfree + P::kGCacheBatch,
                 sizeof(G*) * (P::kGCacheMax - P::kGCacheBatch));
    p->ngfree -= P::kGCacheBatch;
  }
  p->gfree[p->ngfree++] = g;
}

static G* g_get(P* p) {
  if (p == nullptr) {
    G* g;
    pool.get_batch(&g, 1);
    return g;
  }
  if (p->ngfree == 0) p->ngfree = pool.get_batch(p->gfree, P::kGCacheBatch);
  return p->gfree[--p->ngfree];
}

static void begin_stop();

[[noreturn]] static void panic(G* g, const char* type, const char* what) {
  fflush(stdout);
  fprintf(stderr, "panic: goroutine %llu: uncaught exception%s%s: %s\n",
          static_cast<unsigned long long>(g->goid), type ? " of type " : "", type ? type : "",
          what);
  fflush(stderr);
  telemetry_unlink_socket();
  _exit(2);
}

static void g_entry(void* arg) {
  G* g = static_cast<G*>(arg);
  san_finish_switch(nullptr);
  getm()->rt_depth = 1;  // a new G starts inside the runtime that switched to it
  finish_switch(getm());
  g->started = true;
  exit_runtime();  // from here on, user code: the lease says USER
  try {
    g->call(g->closure);
  } catch (const std::exception& e) {
    int st = 0;
    char* name = abi::__cxa_demangle(typeid(e).name(), nullptr, nullptr, &st);
    panic(g, st == 0 ? name : typeid(e).name(), e.what());
  } catch (...) {
    panic(g, nullptr, "(not a std::exception)");
  }
  if (g->destroy != nullptr) g->destroy(g->closure);
  if (g->locals != nullptr) {
    for (auto it = g->locals->slots.rbegin(); it != g->locals->slots.rend(); ++it)
      if (it->first != nullptr) it->second(it->first);
    delete g->locals;
    g->locals = nullptr;
  }
  enter_runtime();
  M* m = getm();
  m->p->c.exits.add();
  if (g == sched->main_g) begin_stop();
  leave_g(After::kExit);
  __builtin_unreachable();
}

static std::uint64_t next_goid(P* p) {
  if (p == nullptr) return sched->goid_gen.fetch_add(1, std::memory_order_relaxed);
  if (p->goid_next == p->goid_end) {
    // Go's goidcache: 16 ids per trip to the shared counter.
    p->goid_next = sched->goid_gen.fetch_add(16, std::memory_order_relaxed);
    p->goid_end = p->goid_next + 16;
  }
  return p->goid_next++;
}

// Initializes g (its stack memory already set) for a fresh run of call(closure).
static void* init_g(G* g, std::size_t size, std::size_t align) {
  auto top = reinterpret_cast<std::uintptr_t>(g->hi);
  std::uintptr_t c = (top - size) & ~(std::uintptr_t{align < 16 ? 16 : align} - 1);
  if (c < reinterpret_cast<std::uintptr_t>(g->lo) + (g->hi - g->lo) / 2)
    fatal("kgmp: a goroutine's closure of %zu bytes does not fit in half of its %zu-byte "
          "stack; capture less by value or raise Config::stack_size",
          size, static_cast<std::size_t>(g->hi - g->lo));
  g->closure = reinterpret_cast<void*>(c);
  g->sp = make_context(reinterpret_cast<char*>(c & ~std::uintptr_t{15}), g_entry, g);
  g->schedlink = nullptr;
  g->started = false;
  g->locals = nullptr;
  g->waitreason = nullptr;
  san_fiber_create(g);
  return g->closure;
}

G* new_g(std::size_t size, std::size_t align, void (*call)(void*), void (*destroy)(void*),
         void** closure) {
  if (sched == nullptr)
    fatal("kgmp: kgmp::go called while no runtime runs; call it from code running under "
          "kgmp::run");
  enter_runtime();  // left in start_g (or abandon_g): one lease CAS per spawn
  M* m = getm();
  P* p = m != nullptr ? m->p : nullptr;
  G* g = g_get(p);
  *closure = init_g(g, size, align);
  g->call = call;
  g->destroy = destroy;
  g->goid = next_goid(p);
  // Go starts trackingSeq at a random value so that 1 in gTrackingPeriod new Gs is timed at
  // its first transition too; consecutive goids do that deterministically.
  g->track_seq = static_cast<std::uint32_t>(g->goid);
  g->runnable_tick = 0;
  return g;
}

void abandon_g(G* g) {
  san_fiber_destroy(g);
  M* m = getm();
  g_free(m != nullptr ? m->p : nullptr, g);
  exit_runtime();
}

void start_g(G* g) {
  g->status.store(GStatus::kRunnable, std::memory_order_relaxed);
  track_ready(g);
  struct Exit {
    ~Exit() { exit_runtime(); }
  } exit;  // the runtime entry new_g made
  M* m = getm();
  if (m != nullptr && m->p != nullptr && m->curg != nullptr) {
    m->p->c.spawns.add();
    bool spilled = runq_put(m->p, g, true);
    wake_p();
    // Spawn back-pressure (not in Go): a G that spawns faster than its P runs what it spawns
    // overflows the ring every 128 spawns; it then yields to the back of the global queue,
    // behind the half it just spilled there, so that its children run and their stacks come
    // back hot before it spawns more. Without it a million-G spawn loop keeps most of the
    // million alive at once, and every one of them touches a fresh stack page (~3 us here);
    // Go pays that too, with smaller stacks (bench/RESULTS.md, spawn).
    // Only from user code (depth 1: the entry new_g made): a spawn from inside the runtime,
    // e.g. a timer callback under its heap lock, must not switch away.
    if (spilled && m->rt_depth == 1 && !sched->stopping.load(std::memory_order_relaxed))
      leave_g(After::kYieldGlobal);
    return;
  }
  sched->outside_spawns.fetch_add(1, std::memory_order_relaxed);
  {
    LockGuard l(sched->lock);
    globrunq_put_batch(g, g, 1);
  }
  wake_p();
}

// ---- Ms ----

static void m_init_thread(M* m) {
  t_m = m;
  m->tid = static_cast<pid_t>(syscall(SYS_gettid));
  if (m->cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(m->cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0)
      fatal("kgmp: cannot pin thread %d to CPU %d: %s; run with Config::pin = false", m->tid,
            m->cpu, strerror(errno));
  }
  pthread_attr_t attr;
  void* addr = nullptr;
  std::size_t size = 0;
  if (pthread_getattr_np(pthread_self(), &attr) == 0) {
    pthread_attr_getstack(&attr, &addr, &size);
    pthread_attr_destroy(&attr);
  }
  m->g0.lo = static_cast<char*>(addr);
  m->g0.hi = static_cast<char*>(addr) + size;
  m->g0.goid = 0;
  san_fiber_current(&m->g0);
  m->altstack = install_altstack(&m->saved_altstack);
  __atomic_store_n(&m->sh->tid, static_cast<std::uint32_t>(m->tid), __ATOMIC_RELEASE);
  sched->monitor->register_m(m);
}

static void* m_start(void* arg) {
  M* m = static_cast<M*>(arg);
  m_init_thread(m);
  if (m->nextp != nullptr) {
    acquire_p(m, m->nextp);
    m->nextp = nullptr;
  }
  m_loop(m);
  if (m->p != nullptr) release_p(m);
  remove_altstack(m->altstack, nullptr);
  t_m = nullptr;
  return nullptr;
}

// The main G returned: stop every M at its next scheduling point (Go exits the process here;
// kgmp returns from run() instead, so tests and programs may run it again).
static void begin_stop() {
  {
    LockGuard l(sched->lock);
    sched->stopping.store(true, std::memory_order_release);
  }
  if (sched->monitor->has_watchers())
    for (int i = 0; i < sched->nprocs; i++) sched->monitor->wake_watcher(i);
  LockGuard l(sched->lock);
  for (M*& head : sched->midle) {
    while (head != nullptr) {
      M* m = head;
      head = m->schedlink;
      m->in_midle = false;
      m->nextp = nullptr;
      m->park.wakeup();
    }
  }
}

static void check_dead() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  if (sched->runqsize.load(std::memory_order_relaxed) != 0) return;
  // A G blocked in the kernel (marked, or whose P was handed off) will come back.
  if (sched->nblocking.load(std::memory_order_seq_cst) > 0 ||
      sched->nlostp.load(std::memory_order_seq_cst) > 0)
    return;
  for (int i = 0; i < sched->nprocs; i++)
    if (!sched->allp[i].runq.empty()) return;
  fflush(stdout);
  std::string out = "fatal error: all goroutines are asleep - deadlock!\n";
  std::vector<const G*> gs;
  auto collect = [&gs](const G* g) {
    if (g->status.load(std::memory_order_acquire) == GStatus::kWaiting) gs.push_back(g);
  };
  collect(sched->main_g);
  pool.for_each_g(collect);
  std::sort(gs.begin(), gs.end(), [](const G* a, const G* b) { return a->goid < b->goid; });
  for (const G* g : gs)
    out += "\ngoroutine " + std::to_string(g->goid) + " [" +
           (g->waitreason != nullptr ? g->waitreason : "waiting") + "]:\n";
  ssize_t r = write(2, out.data(), out.size());
  (void)r;
  telemetry_unlink_socket();
  _exit(2);
}

static std::vector<ProcStats> snapshot_procs() {
  std::vector<ProcStats> v;
  if (sched == nullptr) return last_procs;
  for (int i = 0; i < sched->nprocs; i++) {
    const P& p = sched->allp[i];
    ProcStats s;
    s.id = p.id;
    s.cpu = sched->cfg.pin ? p.cpu : -1;
    s.schedticks = p.c.schedticks.load();
    s.runs = p.c.schedticks.load();
    s.spawns = p.c.spawns.load();
    s.steals = p.c.steals.load();
    s.stolen = p.c.stolen.load();
    s.globrunq_takes = p.c.globtakes.load();
    s.parks = p.c.parks.load();
    s.exits = p.c.exits.load();
    s.handoffs_out = p.c.handoffs_out.load();
    s.handoffs_in = p.c.handoffs_in.load();
    s.busy_ns = p.c.busy_ns.load();
    s.idle_ns = p.c.idle_ns.load();
    s.spin_ns = p.c.spin_ns.load();
    for (int b = 0; b < kHistBuckets; b++) s.lat_hist[static_cast<std::size_t>(b)] = p.c.lat.b[b].load();
    s.runq_len = const_cast<P&>(p).runq.size();
    v.push_back(s);
  }
  return v;
}

// After every M but M0 has exited: account for abandoned Gs and give all memory back.
static void teardown(M* m0, G* main_g) {
  telemetry_free();  // every M is joined: no trace event can be written any more
  RunStats st;
  for (int i = 0; i < sched->nprocs; i++) {
    P& p = sched->allp[i];
    if (p.ngfree > 0) pool.put_batch(p.gfree, p.ngfree);
    p.ngfree = 0;
    st.spawned += p.c.spawns.load();
    st.exited += p.c.exits.load();
    st.handoffs += p.c.handoffs_out.load();
  }
  st.lease_violations = lease_violations.exchange(0);
  st.spawned += 1 + sched->outside_spawns.load();  // the main G, and Gs from outside
  pool.for_each_g([&](G* g) {
    GStatus s = g->status.load(std::memory_order_acquire);
    if (s == GStatus::kFree) return;
    st.abandoned++;
    if (!g->started && g->destroy != nullptr) g->destroy(g->closure);
    san_fiber_destroy(g);
  });
  st.stacks_carved = pool.carved();
  st.stacks_guarded = pool.guarded();
  st.stacks_free = pool.free_count();
  std::vector<M*> allm;
  {
    LockGuard l(sched->lock);
    allm = sched->allm;
  }
  st.threads = allm.size();
  for (int i = 0; i < sched->nprocs; i++) {  // close each P's open busy/idle/spin interval
    PCounters& c = sched->allp[i].c;
    p_account(c, static_cast<PState>(c.state.load(std::memory_order_relaxed)));
  }
  last_procs = snapshot_procs();
  last_stats = st;
  pool.destroy();
  san_fiber_destroy(main_g);
  munmap(main_g->lo - sysconf(_SC_PAGESIZE), kMainStack + sysconf(_SC_PAGESIZE));
  remove_altstack(m0->altstack, &m0->saved_altstack);
  if (sched->cfg.pin) sched_setaffinity(0, sizeof sched->saved_mask, &sched->saved_mask);
  for (M* m : allm) delete m;
  if (sched->shared_owned) ::operator delete(sched->shared, std::align_val_t{4096});
  delete sched->monitor;  // after the shared memory it may own is no longer used
  for (int i = 0; i < sched->nprocs; i++) {
    // Timers still pending belong to abandoned Gs or to objects that outlive run(): detach
    // them, so that a later stop() finds them not pending.
    TimerHeap& th = sched->allp[i].timers;
    LockGuard l(th.lock);
    for (Timer* t : th.heap) {
      t->p.store(nullptr, std::memory_order_relaxed);
      t->idx = -1;
    }
    th.heap.clear();
  }
  for (int i = 0; i < sched->nprocs; i++) sched->allp[i].~P();
  ::operator delete[](sched->allp, std::align_val_t{64});
  delete sched;
  sched = nullptr;
  t_m = nullptr;
}

// Picks the monitor (DESIGN §4): KGMP_MONITOR=scx|trace|poll, or auto = scx if it loads
// (sched_ext present, root, built with it, no other scheduler loaded), else trace if it loads,
// else poll. A failure is never fatal: the next one, and one log line saying why.
static void choose_monitor(const std::string& want) {
  std::unique_ptr<Monitor> mon;
  std::string why;
  if (want == "scx" || want == "auto") {
    absl::StatusOr<std::unique_ptr<Monitor>> s = make_scx_monitor(sched->nprocs, sched->cpus.data());
    if (s.ok())
      mon = std::move(*s);
    else if (want == "scx" || access("/sys/kernel/sched_ext", F_OK) == 0)
      why = "scx unavailable: " + std::string(s.status().message());
  }
  if (mon == nullptr && want != "poll") {
    absl::StatusOr<std::unique_ptr<Monitor>> t = make_trace_monitor(sched->nprocs);
    if (t.ok()) {
      mon = std::move(*t);
      if (!why.empty()) mon->reason += "; " + why;
    } else {
      why += (why.empty() ? "" : "; ") + ("trace unavailable: " + std::string(t.status().message()));
    }
  } else if (mon == nullptr) {
    why = "KGMP_MONITOR=poll";
  }
  if (mon == nullptr) {
    mon = make_poll_monitor();
    mon->reason = why;
  }
  static std::atomic<bool> logged{false};
  if (!logged.exchange(true))
    fprintf(stderr, "kgmp: monitor=%s (%s)\n", mon->name(), mon->reason.c_str());
  sched->monitor = mon.release();
}

static G* make_main_g(void (*call)(void*), void* closure) {
  const std::size_t ps = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  void* mem = mmap(nullptr, kMainStack + ps, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (mem == MAP_FAILED) fatal("kgmp: cannot map the main goroutine's stack: %s", strerror(errno));
  mprotect(mem, ps, PROT_NONE);
  char* lo = static_cast<char*>(mem) + ps;
  auto top = reinterpret_cast<std::uintptr_t>(lo + kMainStack - sizeof(G)) & ~std::uintptr_t{63};
  G* g = new (reinterpret_cast<void*>(top)) G();
  g->lo = lo;
  g->hi = reinterpret_cast<char*>(g);
  g->pooled = false;
  init_g(g, 0, 16);
  g->closure = closure;
  g->call = call;
  g->destroy = nullptr;
  g->goid = 1;
  return g;
}

void run_main(void (*call)(void*), void* closure, const Config& cfg) {
  if (sched != nullptr || getm() != nullptr)
    fatal("kgmp: kgmp::run called while a runtime runs; it is not reentrant");
  absl::StatusOr<Resolved> r = resolve_config(cfg);
  if (!r.ok()) {
    fprintf(stderr, "kgmp: %s\n", std::string(r.status().message()).c_str());
    fflush(stderr);
    exit(2);
  }
  absl::StatusOr<DebugOpts> dbg = parse_kgmpdebug(std::getenv("KGMPDEBUG"));
  if (!dbg.ok()) {
    fprintf(stderr, "kgmp: %s\n", std::string(dbg.status().message()).c_str());
    fflush(stderr);
    exit(2);
  }
  counters_on = dbg->counters;
  track_mask = static_cast<std::uint32_t>(dbg->latsample - 1);
  ticks_calibrate();
  sched = new Sched();
  sched->start_ns = nanotime();
  sched->cfg = r->cfg;
  sched->nprocs = r->cfg.procs;
  sched->cpus = r->cpus;
  sched->allp = static_cast<P*>(
      ::operator new[](sizeof(P) * static_cast<std::size_t>(sched->nprocs), std::align_val_t{64}));
  if (sched->nprocs > KGMP_MAX_PROCS)
    fatal("kgmp: %d processors asked for; this build supports at most %d (KGMP_MAX_PROCS)",
          sched->nprocs, KGMP_MAX_PROCS);
  sched->m_by_id.reset(new std::atomic<M*>[static_cast<std::size_t>(sched->cfg.max_threads) + 1]());
  choose_monitor(r->monitor);
  sched->hold_spares = r->hold_spares && sched->cfg.pin && sched->monitor->can_hold_spares();
  sched->cores = sched->monitor->cores();
  sched->shared = sched->monitor->shared();
  if (sched->shared == nullptr) {
    sched->shared = static_cast<kgmp_shared*>(
        ::operator new(sizeof(kgmp_shared), std::align_val_t{4096}));
    std::memset(static_cast<void*>(sched->shared), 0, sizeof(kgmp_shared));
    sched->shared_owned = true;
  }
  sched->publish_work = !sched->shared_owned;
  if (sched->monitor->has_watchers()) {
    sched->watcher_missing = std::vector<std::atomic<bool>>(static_cast<std::size_t>(sched->nprocs));
    for (auto& w : sched->watcher_missing) w.store(true);
  }
  sched->shared->hdr.nprocs = static_cast<std::uint32_t>(sched->nprocs);
  for (int i = 0; i < sched->nprocs; i++) {
    P* p = new (&sched->allp[i]) P();
    p->id = i;
    p->cpu = sched->cpus[static_cast<std::size_t>(i)];
    p->sh = &sched->shared->p[i];
    p->sh->cpu = static_cast<std::uint32_t>(p->cpu);
    p->sh->lease = KGMP_LEASE_MAKE(0, kNoHolder, KGMP_LEASE_IDLE);
    p->c.since.store(sched->start_ns, std::memory_order_relaxed);
    p->c.state.store(static_cast<std::uint8_t>(i == 0 ? PState::kBusy : PState::kIdle),
                     std::memory_order_relaxed);
  }
  pool.init(r->cfg.stack_size, guard_budget());
  install_signal_handlers();
  sched_getaffinity(0, sizeof sched->saved_mask, &sched->saved_mask);

  M* m0 = new M();
  m0->cpu = sched->cfg.pin ? sched->cpus[0] : -1;
  m0->rand = 0x9e3779b97f4a7c15ULL;
  {
    LockGuard l(sched->lock);
    init_m_slot(m0);
    sched->midle.assign(static_cast<std::size_t>(sched->cfg.pin ? sched->nprocs : 1), nullptr);
    sched->allm.push_back(m0);
    sched->mcount.store(1, std::memory_order_release);
    for (int i = sched->nprocs - 1; i >= 1; i--) pidle_put(&sched->allp[i]);
  }
  m_init_thread(m0);
  m0->thread = pthread_self();
  acquire_p(m0, &sched->allp[0]);
  G* main_g = make_main_g(call, closure);
  sched->main_g = main_g;
  main_g->status.store(GStatus::kRunnable, std::memory_order_relaxed);
  runq_put(m0->p, main_g, false);
  sched->monitor->start();
  telemetry_start(*dbg);
  if (sched->monitor->has_watchers())
    for (int i = 0; i < sched->nprocs; i++) start_watcher(i);

  m_loop(m0);

  telemetry_stop();  // its threads read the Ms and the shared memory: before they go
  sched->monitor->stop();

  if (m0->p != nullptr) release_p(m0);
  // Join every M but M0; none is created once stopping is set (start_m), but one may have been
  // created just before, so re-read the list until it is stable.
  for (std::size_t joined = 1;;) {
    std::vector<M*> others;
    {
      LockGuard l(sched->lock);
      others.assign(sched->allm.begin() + static_cast<std::ptrdiff_t>(joined), sched->allm.end());
    }
    if (others.empty()) break;
    for (M* m : others) pthread_join(m->thread, nullptr);
    joined += others.size();
  }
  teardown(m0, main_g);
}

// ---- small public API ----

void* glocal_get(std::size_t key, void* (*make)(), void (*destroy)(void*)) {
  M* m = getm();
  if (m == nullptr || m->curg == nullptr)
    fatal("kgmp: GLocal::get called outside a goroutine; call it from code running under "
          "kgmp::run");
  G* g = m->curg;
  if (g->locals == nullptr) g->locals = new GLocals();
  auto& s = g->locals->slots;
  if (s.size() <= key) s.resize(key + 1, {nullptr, nullptr});
  if (s[key].first == nullptr) s[key] = {make(), destroy};
  return s[key].first;
}

std::size_t glocal_key() {
  static std::atomic<std::size_t> next{0};
  return next.fetch_add(1, std::memory_order_relaxed);
}

RunStats last_run_stats() { return last_stats; }

void for_each_g_racy(void (*f)(void* ctx, const G* g), void* ctx) {
  if (sched == nullptr) return;
  f(ctx, sched->main_g);
  pool.for_each_g([&](const G* g) { f(ctx, g); });
}

void set_lease_check_for_test(bool on) { lease_check.store(on); }

std::size_t live_stacks_now() {
  return sched == nullptr ? 0 : pool.carved() - pool.free_count();
}

int current_p() {
  M* m = getm();
  return m != nullptr && m->p != nullptr ? m->p->id : -1;
}
int current_p_cpu() {
  M* m = getm();
  return m != nullptr && m->p != nullptr ? m->p->cpu : -1;
}
bool hold_spares_now() { return sched != nullptr && sched->hold_spares; }
std::uint32_t spare_held_now(int p) {
  if (sched == nullptr || p < 0 || p >= sched->nprocs) return KGMP_SPARE_SLEEPING;
  return std::atomic_ref<__u32>(sched->allp[p].sh->spare_held).load(std::memory_order_acquire);
}

}  // namespace internal

void yield() {
  using namespace internal;
  if (getm() == nullptr || getm()->curg == nullptr) return;
  RuntimeScope rs;
  M* m = getm();
  P* p = m->p;
  if (sched->stopping.load(std::memory_order_relaxed)) {
    leave_g(After::kYield);
    return;
  }
  run_own_timers(p);  // a G that only yields must still let due timers fire
  if (p->runq.empty() && sched->runqsize.load(std::memory_order_relaxed) == 0) return;
  leave_g(After::kYield);
}

void preempt_point() {
  using namespace internal;
  M* m = getm();
  if (m == nullptr || m->curg == nullptr || m->rt_depth != 0) return;
  if (__builtin_expect(preempt_requested(m) == nullptr, 1)) return;
  RuntimeScope rs;  // its entry consumes the request (after a lost P: the next entry does)
}

std::uint64_t goid() {
  internal::M* m = internal::getm();
  return m != nullptr && m->curg != nullptr ? m->curg->goid : 0;
}

int procs() { return internal::sched != nullptr ? internal::sched->nprocs : 0; }

const char* monitor() {
  return internal::sched != nullptr ? internal::sched->monitor->name() : nullptr;
}

std::vector<ProcStats> proc_stats() { return internal::snapshot_procs(); }

}  // namespace kgmp
