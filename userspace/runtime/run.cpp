// run.cpp — the life of one kgmp::run(): configuration, the monitor, the Ps and Ms, the main
// G, the stop, the deadlock check and the teardown (DESIGN §2, §4).
//
// run_main resolves the configuration (one line and exit status 2 for a bad value), chooses
// the monitor (scx, else trace, else poll; one log line saying which and why), lays out the Ps
// in the memory shared with BPF, queues the main G on P 0 and starts M0, a thread of its own,
// with P 0; the calling thread only waits, since run() must return on it whatever the Gs do.
// When the main G returns (begin_stop), every M stops at its next scheduling point; run()
// joins those and leaves behind (orphans) those still running G code (reap_ms; the gate that
// makes it safe is in handoff.h), gives every stack and mapping back but the orphans', and
// returns. Gs still alive are abandoned as in Go: those that never started have their closure
// destroyed.
//
// Ms: a new M is a pthread pinned to its P's CPU (Config::pin) with an alternate signal stack
// (the stack-overflow handler needs one) and a slot in the shared memory (its holder id in
// lease words, the tid BPF matches). Ms are never destroyed during a run: a spare parks on its
// futex at no cost.
#include <errno.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "config.h"
#include "export_test.h"
#include "handoff.h"
#include "kgmp/kgmp.h"
#include "monitor.h"
#include "sanitizer.h"
#include "sched.h"
#include "signals.h"
#include "stack.h"
#include "telemetry_rt.h"

namespace kgmp {
namespace internal {
namespace {
RunStats last_stats;
std::vector<ProcStats> last_procs;
constexpr std::size_t kMainStack = 8u << 20;  // the main G's stack: a thread's default
}  // namespace

// ---- starting Ms ----

static void* m_start(void* arg);

// Gives m its slot in the shared memory (and its entry in m_by_id). Caller: holds sched->lock.
static void init_m_slot(M* m) {
  m->sh = m->id < KGMP_MAX_MS ? &sched->shared->m[m->id] : &m->own_sh;
  __atomic_store_n(&m->sh->p, KGMP_NO_P, __ATOMIC_RELAXED);  // read by BPF and telemetry
  m->sh->cpu = static_cast<std::uint32_t>(m->cpu);
  sched->m_by_id[static_cast<std::size_t>(m->id)].store(m, std::memory_order_release);
}

M* new_m_locked(P* p) {
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

void create_thread(M* m) {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  int err = pthread_create(&m->thread, &attr, m_start, m);
  pthread_attr_destroy(&attr);
  if (err != 0) fatal("kgmp: cannot create an OS thread for an M: %s", strerror(err));
}

M* mget_locked(P* p) {
  M*& head = sched->midle[static_cast<std::size_t>(pool_of(p))];
  if (head != nullptr) {
    M* m = head;
    head = m->schedlink;
    m->in_midle = false;
    return m;
  }
  if (static_cast<int>(sched->allm.size()) >= sched->cfg.max_threads) return nullptr;
  return new_m_locked(p);
}

void resume_m(M* m) {
  if (m->thread == pthread_t{})
    create_thread(m);
  else
    m->park.wakeup();
}

void start_m(P* p, bool spinning) {
  M* m = nullptr;
  {
    LockGuard l(sched->lock);
    if (sched->stopping.load(std::memory_order_relaxed)) return;  // no new M once main returned
    m = mget_locked(p);
    if (m == nullptr)
      fatal("kgmp: thread limit reached: %zu threads (Ms) exist and Config::max_threads is %d; "
            "raise Config::max_threads or block fewer goroutines in the kernel at once",
            sched->allm.size(), sched->cfg.max_threads);
  }
  m->nextp = p;
  m->spinning = spinning;
  resume_m(m);
}

// ---- Ms ----

// The calling thread becomes M m: bound, pinned, its g0 described, its slot published, the
// monitor told. Caller: m's own thread, first thing.
static void m_init_thread(M* m) {
  bind_m(m);
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
  sched->monitor->register_m(m->id, m->tid);
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
  bind_m(nullptr);
  m->exited.store(true, std::memory_order_release);
  reap_seq.fetch_add(1, std::memory_order_release);  // a global: m and sched may go any time now
  futex_wake(&reap_seq, INT32_MAX);
  return nullptr;
}

// Go exits the process when main returns; kgmp returns from run() instead, so that tests and
// programs may run it again.
void begin_stop() {
  {
    LockGuard l(sched->lock);
    sched->stopping.store(true, std::memory_order_release);
  }
  sched->stopped.wakeup();  // run()'s thread
  wake_watchers();
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

void check_dead() ABSL_NO_THREAD_SAFETY_ANALYSIS {
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
  stackpool.for_each_g(collect);
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
    s.preemptions = p.c.preemptions.load();
    s.busy_ns = p.c.busy_ns.load();
    s.idle_ns = p.c.idle_ns.load();
    s.spin_ns = p.c.spin_ns.load();
    for (int b = 0; b < kHistBuckets; b++) s.lat_hist[static_cast<std::size_t>(b)] = p.c.lat.b[b].load();
    s.runq_len = const_cast<P&>(p).runq.size();
    v.push_back(s);
  }
  return v;
}

// ---- the reap: run() returns whatever the goroutines do ----

// A full barrier on every CPU running a thread of this process (membarrier(2), private
// expedited, registered on first use; else the global command). False if the kernel offers
// neither (or a seccomp filter refuses it). Caller: run()'s thread, at the reap.
// *err: the errno of the last attempt when it returns false.
static bool barrier_all_cpus(int* err) {
  static const bool registered =
      syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
  if (registered && syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0)
    return true;
  if (syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) == 0) return true;
  *err = errno;
  return false;
}

// Waits, after main returned, until every M has either exited (from its next scheduling
// point) or been abandoned: an M found running G code (a goroutine computing, or blocked in
// the kernel) is marked an orphan; once it is known to see the mark at its next runtime entry
// (the gate in handoff.h), it is left running, and run() returns without it. Returns the
// orphans (their threads detached), having joined every other M. An M that comes back into
// the runtime keeps being waited for until it exits or goes back to G code, which nothing
// signals: so the wait wakes every millisecond while an M is pending. Caller: run()'s thread,
// stopping set, the monitor stopped.
static std::vector<M*> reap_ms() {
  bool warned = false;
  int err = 0;
  for (;;) {
    const std::uint32_t seq = reap_seq.load(std::memory_order_acquire);
    std::vector<M*> all;
    {
      LockGuard l(sched->lock);  // no M is created once stopping is set, but one may just have been
      all = sched->allm;
    }
    bool marked = false;
    for (M* m : all) {
      if (m->exited.load(std::memory_order_acquire)) continue;
      if (m->orphan.load(std::memory_order_relaxed) == Orphan::kNo && m->rt_depth.read_acquire() == 0) {
        m->orphan.store(Orphan::kMarked, std::memory_order_relaxed);
        marked = true;
      }
    }
    const bool fenced = !marked || barrier_all_cpus(&err);
    std::vector<const M*> pending;
    for (M* m : all) {
      if (m->exited.load(std::memory_order_acquire)) continue;
      Orphan o = m->orphan.load(std::memory_order_acquire);
      if (o == Orphan::kParked) continue;
      if (o == Orphan::kMarked && fenced && m->rt_depth.read_acquire() == 0) continue;
      pending.push_back(m);
    }
    if (pending.empty()) break;
    if (!fenced && !warned) {
      warned = true;
      fprintf(stderr,
              "kgmp: run() waits for %zu threads still running goroutines: membarrier(2) is "
              "unavailable (%s), so they cannot be left behind safely\n",
              pending.size(), strerror(err));
    }
    timespec ts{0, 1'000'000};
    syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&reap_seq), FUTEX_WAIT_PRIVATE, seq, &ts,
            nullptr, 0);
  }
  std::vector<M*> all, orphans;
  {
    LockGuard l(sched->lock);
    all = sched->allm;
  }
  for (M* m : all) {
    if (m->exited.load(std::memory_order_acquire)) {
      pthread_join(m->thread, nullptr);
    } else {
      pthread_detach(m->thread);
      orphans.push_back(m);
    }
  }
  return orphans;
}

// After every M has exited or been abandoned: account for abandoned Gs and give all memory
// back, but the orphans' (their M, its signal stack, the G and its stack stay for the life of
// the process: the thread may still run on them).
static void teardown(G* main_g, const std::vector<M*>& orphans) {
  telemetry_free();  // every M is joined: no trace event can be written any more
  RunStats st;
  for (int i = 0; i < sched->nprocs; i++) {
    P& p = sched->allp[i];
    if (p.ngfree > 0) stackpool.put_batch(p.gfree, p.ngfree);
    p.ngfree = 0;
    st.spawned += p.c.spawns.load();
    st.exited += p.c.exits.load();
    st.handoffs += p.c.handoffs_out.load();
  }
  st.lease_violations = lease_violations.exchange(0);
  st.stale_runq_len = stale_runq_len.exchange(0);
  st.spawned += 1 + sched->outside_spawns.load();  // the main G, and Gs from outside
  std::vector<const G*> running;  // the orphans' Gs
  for (M* m : orphans)
    if (m->curg != nullptr) running.push_back(m->curg);
  st.orphaned = orphans.size();
  stackpool.for_each_g([&](G* g) {
    GStatus s = g->status.load(std::memory_order_acquire);
    if (s == GStatus::kFree) return;
    st.abandoned++;
    if (std::find(running.begin(), running.end(), g) != running.end()) return;
    if (!g->started && g->destroy != nullptr) g->destroy(g->closure);
    san_fiber_destroy(g);
  });
  st.stacks_carved = stackpool.carved();
  st.stacks_guarded = stackpool.guarded();
  st.stacks_free = stackpool.free_count();
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
  stackpool.destroy(running);
  san_fiber_destroy(main_g);
  munmap(main_g->lo - sysconf(_SC_PAGESIZE), kMainStack + sysconf(_SC_PAGESIZE));
  for (M* m : allm)
    if (std::find(orphans.begin(), orphans.end(), m) == orphans.end()) delete m;
  if (sched->shared_owned) ::operator delete(sched->shared, std::align_val_t{4096});
  handoff_free();
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
  bind_m(nullptr);
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
  sched->cores = sched->monitor->cores;
  sched->shared = sched->monitor->shared;
  if (sched->shared == nullptr) {
    sched->shared = static_cast<kgmp_shared*>(
        ::operator new(sizeof(kgmp_shared), std::align_val_t{4096}));
    std::memset(static_cast<void*>(sched->shared), 0, sizeof(kgmp_shared));
    sched->shared_owned = true;
  }
  sched->publish_work = !sched->shared_owned;
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
  handoff_init(r->hold_spares);
  stackpool.init(r->cfg.stack_size, guard_budget());
  install_signal_handlers();

  // M0 is a thread of its own with P 0 and the main G queued: the calling thread only waits,
  // so that run() can return on it whatever a goroutine is doing then.
  M* m0;
  G* main_g = make_main_g(call, closure);
  sched->main_g = main_g;
  main_g->status.store(GStatus::kRunnable, std::memory_order_relaxed);
  {
    LockGuard l(sched->lock);
    sched->midle.assign(static_cast<std::size_t>(sched->cfg.pin ? sched->nprocs : 1), nullptr);
    m0 = new_m_locked(&sched->allp[0]);
    for (int i = sched->nprocs - 1; i >= 1; i--) pidle_put(&sched->allp[i]);
  }
  m0->rand = 0x9e3779b97f4a7c15ULL;
  runq_put(&sched->allp[0], main_g, false);  // no M runs yet: nobody else touches P 0's ring
  sched->monitor->start();
  telemetry_start(*dbg);
  handoff_start_run();
  m0->nextp = &sched->allp[0];
  create_thread(m0);

  while (!sched->stopping.load(std::memory_order_acquire)) sched->stopped.sleep();

  telemetry_stop();  // its threads read the Ms and the shared memory: before they go
  sched->monitor->stop();
  handoff_stop_run();
  std::vector<M*> orphans = reap_ms();
  teardown(main_g, orphans);
}

RunStats last_run_stats() { return last_stats; }

void for_each_g_racy(void (*f)(void* ctx, const G* g), void* ctx) {
  if (sched == nullptr) return;
  f(ctx, sched->main_g);
  stackpool.for_each_g([&](const G* g) { f(ctx, g); });
}

void set_lease_check_for_test(bool on) { lease_check.store(on); }

std::size_t live_stacks_now() {
  return sched == nullptr ? 0 : stackpool.carved() - stackpool.free_count();
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

int procs() { return internal::sched != nullptr ? internal::sched->nprocs : 0; }

const char* monitor() {
  return internal::sched != nullptr ? internal::sched->monitor->name() : nullptr;
}

std::vector<ProcStats> proc_stats() { return internal::snapshot_procs(); }

}  // namespace kgmp
