// goroutine.cpp — a G's life: spawn (kgmp::go), run, exit, the unrecovered-exception panic,
// goids and G-local storage (DESIGN §2).
//
// A G is its stack: the G header and the closure sit at the top of the stack memory
// (stack.h), so spawning allocates nothing beyond a stack, and the P's cache of free Gs keeps
// stacks hot. Goids come from the P in batches of 16 (Go's goidcache). A G starts inside the
// runtime that switched to it (depth 1) and leaves it before calling its function; it exits
// through the runtime, which frees its stack after the switch away from it (After::kExit).
//
// Spawn back-pressure (not in Go): a G that spawns faster than its P runs what it spawns
// overflows its ring every 128 spawns and then yields to the back of the global queue, behind
// the half it spilled there, so that its children run and their stacks come back hot before
// it spawns more (bench/RESULTS.md, spawn: without it a million-G spawn loop keeps most of the
// million alive at once, each on a freshly touched stack page).
#include <cxxabi.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <typeinfo>
#include <utility>
#include <vector>

#include "context.h"
#include "handoff.h"
#include "kgmp/kgmp.h"
#include "sanitizer.h"
#include "sched.h"
#include "stack.h"
#include "telemetry_rt.h"

namespace kgmp {
namespace internal {

StackPool stackpool;

struct GLocals {
  std::vector<std::pair<void*, void (*)(void*)>> slots;
};

void g_free(P* p, G* g) {
  g->status.store(GStatus::kFree, std::memory_order_release);
  if (!g->pooled) return;  // the main G's stack goes at teardown
  if (p == nullptr) {
    stackpool.put_batch(&g, 1);
    return;
  }
  if (p->ngfree == P::kGCacheMax) {
    stackpool.put_batch(p->gfree, P::kGCacheBatch);  // the coldest half
    std::memmove(p->gfree, p->gfree + P::kGCacheBatch,
                 sizeof(G*) * (P::kGCacheMax - P::kGCacheBatch));
    p->ngfree -= P::kGCacheBatch;
  }
  p->gfree[p->ngfree++] = g;
}

static G* g_get(P* p) {
  if (p == nullptr) {
    G* g;
    stackpool.get_batch(&g, 1);
    return g;
  }
  if (p->ngfree == 0) p->ngfree = stackpool.get_batch(p->gfree, P::kGCacheBatch);
  return p->gfree[--p->ngfree];
}

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
void* init_g(G* g, std::size_t size, std::size_t align) {
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
  M* m = getm();
  if (m == nullptr && sched == nullptr)  // an M's G reads no global before its gate
    fatal("kgmp: kgmp::go called while no runtime runs; call it from code running under "
          "kgmp::run");
  enter_runtime();  // left in start_g (or abandon_g): one lease CAS per spawn
  m = getm();
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
    // Spawn back-pressure (see the design comment). Only from user code (depth 1: the entry
    // new_g made): a spawn from inside the runtime, e.g. a timer callback under its heap lock,
    // must not switch away.
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

}  // namespace internal

std::uint64_t goid() {
  internal::M* m = internal::getm();
  return m != nullptr && m->curg != nullptr ? m->curg->goid : 0;
}

}  // namespace kgmp
