// stack.h — G stacks: carved from large mappings, cached per P, never returned to the kernel
// while the runtime runs.
//
// A first touch of a page costs about 3 us on the development machine (against ~100 ns for a
// whole spawn), so stacks are reused hot: each P keeps a LIFO of free Gs (a G header sits at
// the top of its stack, so a free G *is* a free stack), refilled from and spilled to a global
// LIFO in batches. Memory is given back only when run() ends, but for the stacks of Gs still
// running on Ms that run() left behind (run.cpp's reap), which stay mapped.
//
// Overflow detection
// - Guard pages while the mapping budget allows: each guarded stack costs two of the kernel's
//   vm.max_map_count mappings (65,530 by default), so at most (max_map_count - 16384) / 2
//   stacks are guarded; 16384 mappings are left to the rest of the process and to the
//   unguarded chunks (two mappings per 128 MiB).
// - Beyond that, stacks come from unguarded chunks and carry a canary, checked at every switch
//   away from the G. The canary of slot i is stored just below slot i's usable memory, i.e. at
//   the top of slot i-1, whose top page is touched anyway (slots are handed out in address
//   order): a canary costs no page. Slot 0 of a chunk sits on the chunk's guard page.
//
// Layout of a slot (addresses grow to the right):
//   [guard page (guarded chunks) | usable stack ............ G header, closure | canary of i+1]
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "futex.h"

namespace kgmp::internal {

struct G;

inline constexpr std::uint64_t kStackCanary = 0x6b676d70'5354414bULL;  // "kgmpSTAK"

class StackPool {
 public:
  // usable: bytes of stack per G (a multiple of the page size).
  void init(std::size_t usable, std::size_t guard_budget);
  // Unmaps everything but the slots of the Gs in keep (Gs of abandoned Ms that still run on
  // their stacks: those slots stay mapped for the life of the process). The caller guarantees
  // that no other G runs.
  void destroy(const std::vector<const G*>& keep);

  // Takes up to n free Gs into out, hottest first; returns how many (at least 1: when none is
  // free, up to 8 fresh ones are carved, mapping a new chunk if needed).
  int get_batch(G** out, int n);
  void put_batch(G* const* in, int n);

  // Calls f(G*) for every G ever carved (free ones included). The caller guarantees no chunk is
  // being added (holds no expectation about the Gs' states: they are read racily).
  template <class F>
  void for_each_g(F&& f) {
    LockGuard l(lock_);
    for (const Chunk& c : chunks_)
      for (std::size_t i = 0; i < c.used; i++) f(g_at(c, i));
  }

  std::size_t carved() {
    LockGuard l(lock_);
    return ncarved_;
  }
  std::size_t guarded() {
    LockGuard l(lock_);
    return nguarded_;
  }
  std::size_t free_count() {
    LockGuard l(lock_);
    return free_.size();
  }

  // The guard page below g's stack, for the SIGSEGV handler: [lo, hi) or {0,0} if unguarded.
  static void guard_range(const G* g, std::uintptr_t* lo, std::uintptr_t* hi);

 private:
  struct Chunk {
    char* map;  // the mapping (for munmap)
    std::size_t bytes;
    char* base;  // slot 0
    std::size_t slots;
    std::size_t used;  // slots handed out at least once (bump allocation)
    bool guarded;
  };
  G* g_at(const Chunk& c, std::size_t i) const;
  static G* init_slot(char* start, G* at, bool guarded, bool first);
  bool add_chunk() ABSL_EXCLUSIVE_LOCKS_REQUIRED(lock_);

  Lock lock_;
  std::size_t usable_ = 0;
  std::size_t slot_ = 0;  // usable + guard page
  std::size_t guard_budget_ = 0;
  std::vector<Chunk> chunks_ ABSL_GUARDED_BY(lock_);
  // Free Gs, hottest last. A flat array rather than a list through the G headers: moving a
  // batch between Ps copies pointers and touches no (cold, other-CPU) G header under the lock.
  std::vector<G*> free_ ABSL_GUARDED_BY(lock_);
  std::size_t ncarved_ ABSL_GUARDED_BY(lock_) = 0;
  std::size_t nguarded_ ABSL_GUARDED_BY(lock_) = 0;
};

}  // namespace kgmp::internal
