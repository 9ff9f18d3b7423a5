// snapshot.cpp — take_snapshot(): see snapshot.h for what it reads and its racy protocol.
//
// Derived figures (documented where they are shown):
//   goroutines  Gs created (spawns on every P + Gs started from outside + the main G) minus
//               Gs that returned: the run accounting, counted even with counters=0.
//   running     Ps whose lease says USER (an M runs G code on them).
//   runnable    the global queue plus every local queue (runnext included).
//   not_in_go   Ms inside kgmp::blocking() plus Ms BPF saw blocked while running a G.
//   waiting     the rest (parked on a channel, a WaitGroup, a timer ...), never below 0.
//   blockedthreads  the Ms counted in not_in_go.
// A P's status: "idle" (on the idle list), "handoff" (taken from a blocked M and not yet
// passed on: lease RUNTIME without holder), else "running".
#include "snapshot.h"

#include <unistd.h>

#include <atomic>

#include "monitor.h"
#include "sched.h"

namespace kgmp::internal {
namespace {

const char* mstate_name(MState s) {
  switch (s) {
    case MState::kRunning: return "running";
    case MState::kSpinning: return "spinning";
    case MState::kIdle: return "idle";
    case MState::kBlocked: return "blocked";
    case MState::kWatcher: return "watcher";
  }
  return "running";
}

template <class T>
T ld(const T& x) {
  return __atomic_load_n(&x, __ATOMIC_RELAXED);
}

}  // namespace

Snapshot take_snapshot() {
  Snapshot s;
  Sched* sc = sched;
  if (sc == nullptr) return s;
  s.pid = getpid();
  s.now_ns = nanotime();
  s.uptime_ns = s.now_ns - sc->start_ns;
  s.monitor = sc->monitor->name();
  s.gomaxprocs = sc->nprocs;
  s.idleprocs = sc->npidle.load(std::memory_order_relaxed);
  s.spinningthreads = sc->nmspinning.load(std::memory_order_relaxed);
  s.runqueue = static_cast<std::uint64_t>(sc->runqsize.load(std::memory_order_relaxed));

  // Ms.
  const int nm = sc->mcount.load(std::memory_order_acquire);
  s.threads = nm;
  int nblocked_bpf = 0;
  for (int i = 0; i < nm; i++) {
    M* m = sc->m_by_id[static_cast<std::size_t>(i)].load(std::memory_order_acquire);
    if (m == nullptr) continue;
    MSnap ms;
    ms.id = m->id;
    ms.cpu = m->cpu;
    ms.tid = static_cast<int>(ld(m->sh->tid));
    std::uint32_t p = ld(m->sh->p);
    ms.p = p == KGMP_NO_P ? -1 : static_cast<int>(p);
    ms.curg = ld(m->sh->curg);
    MState st = m->tstate.load(std::memory_order_relaxed);
    ms.blocks = ld(m->sh->blocks);
    // BPF saw it switched out blocked after its last wakeup, while it was running a G.
    if (st == MState::kRunning && ms.curg != 0 && kgmp_blocked_since_wake(m->sh)) {
      st = MState::kBlocked;
      nblocked_bpf++;
    }
    ms.state = mstate_name(st);
    if (st == MState::kIdle) s.idlethreads++;
    s.ms.push_back(ms);
  }
  int nblocking = sc->nblocking.load(std::memory_order_relaxed);
  s.blockedthreads = nblocking + nblocked_bpf;
  s.not_in_go = static_cast<std::uint64_t>(s.blockedthreads);

  // Ps.
  std::uint64_t spawns = 0, exits = 0, local = 0;
  for (int i = 0; i < sc->nprocs; i++) {
    P* p = &sc->allp[i];
    const PCounters& c = p->c;
    ProcSnap ps;
    ps.id = p->id;
    ps.cpu = p->cpu;
    LeaseWord w = lease_ref(p).load(std::memory_order_relaxed);
    std::uint32_t holder = KGMP_LEASE_HOLDER(w);
    switch (KGMP_LEASE_STATE(w)) {
      case KGMP_LEASE_IDLE: ps.status = "idle"; break;
      case KGMP_LEASE_USER: ps.status = "running"; s.running++; break;
      default: ps.status = holder == kNoHolder ? "handoff" : "running"; break;
    }
    if (holder != kNoHolder && KGMP_LEASE_STATE(w) != KGMP_LEASE_IDLE) {
      ps.m = static_cast<int>(holder);
      if (M* m = sc->m_by_id[holder].load(std::memory_order_acquire)) {
        ps.tid = static_cast<int>(ld(m->sh->tid));
        ps.curg = ld(m->sh->curg);
      }
    }
    ps.runq = p->runq.size() + (p->runq.has_next() ? 1u : 0u);  // ring + runnext
    local += ps.runq;
    ps.schedticks = c.schedticks.load();
    ps.runs = ps.schedticks;
    ps.spawns = c.spawns.load();
    ps.exits = c.exits.load();
    ps.steals = c.steals.load();
    ps.stolen = c.stolen.load();
    ps.handoffs_in = c.handoffs_in.load();
    ps.handoffs_out = c.handoffs_out.load();
    ps.globtakes = c.globtakes.load();
    ps.parks = c.parks.load();
    ps.busy_ns = c.busy_ns.load();
    ps.idle_ns = c.idle_ns.load();
    ps.spin_ns = c.spin_ns.load();
    ps.preemptions = c.preemptions.load();
    if (counters_on) {  // the open interval of the current state
      std::int64_t since = c.since.load(std::memory_order_relaxed);
      std::uint64_t open = s.now_ns > since ? static_cast<std::uint64_t>(s.now_ns - since) : 0;
      switch (static_cast<PState>(c.state.load(std::memory_order_relaxed))) {
        case PState::kIdle: ps.idle_ns += open; break;
        case PState::kBusy: ps.busy_ns += open; break;
        case PState::kSpin: ps.spin_ns += open; break;
      }
    }
    for (int b = 0; b < kHistBuckets; b++) {
      ps.lat[b] = c.lat.b[b].load();
      s.lat_total[b] += ps.lat[b];
      ps.handoff_lat[b] = c.handoff_lat.b[b].load();
      s.handoff_lat_total[b] += ps.handoff_lat[b];
    }
    spawns += ps.spawns;
    exits += ps.exits;
    s.handoffs += ps.handoffs_out;
    s.procs.push_back(ps);
  }
  s.created = spawns + sc->outside_spawns.load(std::memory_order_relaxed) + 1;
  s.goroutines = s.created > exits ? s.created - exits : 0;
  s.runnable = s.runqueue + local;
  std::uint64_t busy = s.runnable + s.running + s.not_in_go;
  s.waiting = s.goroutines > busy ? s.goroutines - busy : 0;

  // Cores (BPF).
  if (const kgmp_cores* cores = sc->cores) {
    for (int i = 0; i < sc->nprocs; i++) {
      int cpu = sc->allp[i].cpu;
      if (cpu < 0 || cpu >= KGMP_MAX_CPUS) continue;
      const kgmp_core_stats& k = cores->c[cpu];
      CoreSnap cs;
      cs.cpu = cpu;
      cs.p = i;
      cs.m_blocks = ld(k.m_blocks);
      cs.ctx_switches = ld(k.ctx_switches);
      cs.runq_wait_ns = ld(k.runq_wait_ns);
      cs.foreign_ns = ld(k.foreign_ns);
      for (int b = 0; b < kHistBuckets; b++) {
        cs.offcpu[b] = ld(k.offcpu_hist[b]);
        cs.wake_lat[b] = ld(k.wake_lat_hist[b]);
      }
      s.cores.push_back(cs);
    }
  }
  return s;
}

}  // namespace kgmp::internal
