// sched.cpp — the G/M/P scheduler: run queues, stealing, finding work, switching, parking
// (Go's proc.go rules and names, DESIGN §2).
//
// Concepts: G (goroutine), M (OS thread), P (processor: the right to run Gs, with a local run
// queue). An M runs Gs only while it holds a P; P i is bound to CPU i of the affinity mask and
// its Ms are pinned there (Config::pin), so an M only ever holds its own CPU's P. Taking a P
// from a blocked M is the hand-off protocol (handoff.cpp); starting and stopping the run is
// run.cpp; a G's birth and death are goroutine.cpp.
//
// Finding work (find_runnable, on the M's g0 stack): every 61st schedtick the global queue
// first (fairness: two Gs that keep readying each other through runnext cannot starve it);
// then runnext and the local ring; then the global queue; then steal half of a random
// victim's ring (4 passes in a random coprime-stride order, runnext only on the last); then
// release the P and park the M on its futex, until the earliest timer if one is pending.
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

#include "context.h"
#include "handoff.h"
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
thread_local M* t_m = nullptr;
}  // namespace

__attribute__((noinline)) M* getm() {
  M* m = t_m;
  asm volatile("" : "+r"(m));
  return m;
}
M* getm_for_signal() { return t_m; }
void bind_m(M* m) { t_m = m; }

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

// ---- published queue lengths ----

// The queue length BPF and held watchers read (kgmp_work_queued): the ring plus runnext, as
// nonzero iff either holds a G. Only the holder writes it, after every change it makes to its
// own ring; thieves leave it stale-high (a spurious event), never stale-low (a missed one).
// Caller: p's holder.
static inline void publish_runq(P* p) {
  if (sched->publish_work)
    std::atomic_ref<__u32>(p->sh->runq_len)
        .store(p->runq.size() + (p->runq.empty() ? 0u : 1u), std::memory_order_relaxed);
}

// ---- global run queue (Sched::lock) ----

// The global queue's length as BPF and the held watchers read it (relaxed: a hint; they act
// only through a lease CAS). Caller: holds sched->lock.
static inline void publish_nglobal(std::int32_t n) {
  std::atomic_ref<__u32>(sched->shared->hdr.nglobal)
      .store(static_cast<std::uint32_t>(n), std::memory_order_relaxed);
}

void globrunq_put_batch(G* head, G* tail, int n)
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
  if (n > 1) publish_runq(p);
  if (counters_on) p->c.globtakes.add(static_cast<std::uint64_t>(n));
  return g;
}

// ---- telemetry hooks (userspace/telemetry/counters.h) ----

// g becomes runnable: every kTrackPeriod-th time, stamp it so that execute() records its
// scheduling latency (Go's gTrackingPeriod). Caller: whoever readies g, before queueing it.
void track_ready(G* g) {
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
bool runq_put(P* p, G* g, bool next) {
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

void pidle_put(P* p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(sched->lock) {
  p_account(p->c, PState::kIdle);
  p->idle.store(true, std::memory_order_relaxed);
  p->link = sched->pidle;
  sched->pidle = p;
  sched->npidle.fetch_add(1, std::memory_order_seq_cst);
}

// Takes `want` off the idle list if given and idle, else any idle P. nullptr if none.
P* pidle_get(P* want) ABSL_EXCLUSIVE_LOCKS_REQUIRED(sched->lock) {
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

int pool_of(const P* p) { return sched->cfg.pin ? p->id : 0; }

// m takes p: the lease names m, in state RUNTIME (m is in the scheduler). Caller: m, owning p
// (from the idle list, a won hand-off, or nextp).
void acquire_p(M* m, P* p) {
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

// m gives p up: the lease says `state` (IDLE, or RUNTIME for a P being passed on) with no
// holder. Caller: m, holding p in RUNTIME; the caller puts p on the idle list or passes it on.
P* release_p(M* m, std::uint32_t state) {
  P* p = m->p;
  KGMP_CHECK(p != nullptr && p->m == m);
  auto l = lease_ref(p);
  LeaseWord w = l.load(std::memory_order_relaxed);
  KGMP_CHECK(KGMP_LEASE_HOLDER(w) == static_cast<std::uint32_t>(m->id) &&
             KGMP_LEASE_STATE(w) == KGMP_LEASE_RUNTIME);
  owner_out(p);
  l.store(KGMP_LEASE_MAKE(KGMP_LEASE_SEQ(w) + 1, kNoHolder, state), std::memory_order_release);
  p->m = nullptr;
  m->p = nullptr;
  __atomic_store_n(&m->sh->p, KGMP_NO_P, __ATOMIC_RELAXED);  // read by BPF and telemetry
  if (state == KGMP_LEASE_IDLE && __builtin_expect(p->aside.load(std::memory_order_relaxed) != nullptr, 0))
    restore_aside(p);
  return p;
}

// ---- idle Ms ----

// Parks m, without a P, until another M hands it one (nextp), the deadline `until` passes
// (0: none), or a new earlier timer pokes it; in the last two cases it takes its own P back if
// idle (any idle P when not pinned), else parks again. Returns with m->p set, or without a P
// once the runtime is stopping. Go's stopm, plus the timed sleep of findRunnable's netpoll.
void stop_m(M* m, std::int64_t until) {
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
  // Watchers first: with every P held, one of them is what fires a timer whose P's holder is
  // blocked without work queued (handoff.cpp, "Timers").
  poke_watchers(when);
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
  if (poke != nullptr) poke->park.wakeup();
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

// Go's wakep: start a spinning M for an idle P if there is an idle P and no spinning M.
// Caller: anyone, after making a G runnable.
void wake_p() {
  std::atomic_thread_fence(std::memory_order_seq_cst);  // StoreLoad: queue write vs. the reads
  if (sched->npidle.load(std::memory_order_relaxed) == 0) {
    // Every P is held. A G on the global queue may be for a P whose holder blocked when it had
    // nothing queued (no event then): the backstop's business. Local queues are written only
    // by their holder, which is running, so they need no look.
    if (__builtin_expect(sched->runqsize.load(std::memory_order_relaxed) > 0, 0)) sysmon_kick();
    return;
  }
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
    // there a while rather than split a communicating pair over two CPUs, as Go does with
    // usleep(3); with Linux's default 50 us timer slack the sleep lasts ~50 us. The steal goes
    // ahead only if the victim started no G meanwhile (its schedtick is unchanged), i.e. the
    // G it runs is a long one. Go checks instead that runnext still holds the same G, which a
    // pair alternating on one P defeats (producer and consumer trade runnext every ~12 us):
    // chan-throughput on 2 Ps runs 3x faster with this check (bench/RESULTS.md).
    n = victim->runq.grab(batch, true, [victim] {
      if (victim->idle.load(std::memory_order_relaxed)) return true;
      std::uint64_t tick = victim->c.schedticks.load();
      usleep(3);
      return victim->c.schedticks.load() == tick;
    });
  }
  if (n == 0) return nullptr;
  G* g = batch[--n];
  if (n > 0) {
    p->runq.put_batch(batch, n);
    publish_runq(p);
  }
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

// Runs the action the previous G asked for, now that its context is saved. Caller: m, right
// after any switch, on the new stack.
void finish_switch(M* m) {
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
void run_own_timers(P* p) {
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
void m_loop(M* m) {
  for (;;) {
    if (m->watcher && !watch_for_p(m)) return;
    schedule(m);
    if (!m->watcher) return;
  }
}

// Leaves the current G (with action a) for the next runnable G of this P, or for g0.
// Caller: the running G, its M holding a P.
void leave_g(After a) {
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

// Leaves the running G for g0 with action a (run by g0 once the G's context is saved).
// Returns when the G is resumed, maybe on another M. Caller: the running G, in the runtime.
void switch_to_g0(M* m, After a) {
  G* g = m->curg;
  if (__builtin_expect(tracing.load(std::memory_order_relaxed), 0)) trace_stop(m, g, a);
  m->after = a;
  m->after_g = g;
  m->curg = nullptr;
  switch_to(m, g, &m->g0);
}

// ---- parking and readying ----

bool p_has_work(P* p) {
  return !p->runq.empty() || sched->runqsize.load(std::memory_order_relaxed) > 0;
}

void gopark(void (*unlockf)(void*), void* arg, const char* reason) {
  M* m = getm();
  if (m == nullptr || m->curg == nullptr)
    fatal("kgmp: a goroutine primitive was used outside a goroutine (%s); call it from code "
          "running under kgmp::run",
          reason);
  const bool from_g = gate_in(m) == 0;  // an orphan parks in there
  m->curg->waitreason = reason;
  m->unlockf = unlockf;
  m->unlock_arg = arg;
  if (from_g) {
    // Entering the runtime to park. Callers usually hold the lock unlockf releases, so if the
    // P was handed off meanwhile the G must not wait for a P with it (lost_p's requeue): it
    // parks right away, P-less, on g0, which releases the lock; the M then waits as a spare.
    P* p = m->p;
    if (p == nullptr || !lease_enter(m, p)) {
      notice_lost(m);
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
  bool requested;
  {
    GateScope gs;  // before preempt_requested reads the runtime (an orphan parks here)
    requested = preempt_requested(m) != nullptr;
  }
  if (__builtin_expect(!requested, 1)) return;
  RuntimeScope rs;  // its entry consumes the request (after a lost P: the next entry does)
}

}  // namespace kgmp
