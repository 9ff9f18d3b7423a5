// stack.cpp — the G/stack pool (see stack.h for the layout and the overflow rules).
#include "stack.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <new>

#include "sched.h"

namespace kgmp::internal {
namespace {
std::size_t page_size() {
  static const std::size_t ps = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  return ps;
}
// Bytes reserved at the top of every slot for the canary of the slot above it.
constexpr std::size_t kCanaryArea = 64;
// A guarded chunk is ~8 MiB of address space (never touched until used), at least 4 slots.
// Unguarded chunks are larger: they cost two mappings each (their guard page and the rest),
// so a million Gs beyond the guard budget take a few thousand mappings, not tens of thousands.
constexpr std::size_t kChunkBytes = 8u << 20;
constexpr std::size_t kBigChunkBytes = 128u << 20;
}  // namespace

void StackPool::init(std::size_t usable, std::size_t guard_budget) {
  usable_ = usable;
  slot_ = usable + page_size();
  guard_budget_ = guard_budget;
}

void StackPool::destroy(const std::vector<const G*>& keep) {
  LockGuard l(lock_);
  for (const Chunk& c : chunks_) {
    // The slots to keep in this chunk, as [start, end) ranges in address order; the rest of
    // the mapping is unmapped around them.
    std::vector<std::pair<char*, char*>> kept;
    for (const G* g : keep) {
      const char* a = reinterpret_cast<const char*>(g);
      if (a < c.base || a >= c.base + c.slots * slot_) continue;
      std::size_t i = static_cast<std::size_t>(a - c.base) / slot_;
      kept.emplace_back(c.base + i * slot_, c.base + (i + 1) * slot_);
    }
    std::sort(kept.begin(), kept.end());
    char* from = c.map;
    for (const auto& [lo, hi] : kept) {
      if (lo > from) munmap(from, static_cast<std::size_t>(lo - from));
      from = std::max(from, hi);
    }
    char* end = c.map + c.bytes;
    if (end > from) munmap(from, static_cast<std::size_t>(end - from));
  }
  chunks_.clear();
  free_.clear();
  free_.shrink_to_fit();
  ncarved_ = nguarded_ = 0;
}

bool StackPool::add_chunk() {
  const std::size_t ps = page_size();
  std::size_t slots = std::max<std::size_t>(4, kChunkBytes / slot_);
  // Unguarded chunks start with one guard page (slot 0 sits on it).
  bool guarded = nguarded_ + slots <= guard_budget_;
  if (!guarded) slots = std::max<std::size_t>(4, kBigChunkBytes / slot_);
  std::size_t bytes = slots * slot_ + (guarded ? 0 : ps);
  void* mem = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (mem == MAP_FAILED) return false;
  char* map = static_cast<char*>(mem);
  char* base = map;
  if (guarded) {
    for (std::size_t i = 0; i < slots; i++) mprotect(base + i * slot_, ps, PROT_NONE);
    nguarded_ += slots;
  } else {
    mprotect(base, ps, PROT_NONE);
    base += ps;  // slot i starts at base + i*slot_, its first page usable
  }
  chunks_.push_back(Chunk{map, bytes, base, slots, 0, guarded});
  return true;
}

G* StackPool::g_at(const Chunk& c, std::size_t i) const {
  char* end = c.base + (i + 1) * slot_;
  auto top = reinterpret_cast<std::uintptr_t>(end - kCanaryArea - sizeof(G));
  return reinterpret_cast<G*>(top & ~std::uintptr_t{63});
}

G* StackPool::init_slot(char* start, G* at, bool guarded, bool first) {
  G* g = new (at) G();
  g->hi = reinterpret_cast<char*>(g);
  if (guarded) {
    g->lo = start + page_size();
  } else if (first) {
    g->lo = start;  // the chunk's guard page is just below
  } else {
    g->lo = start;
    g->canary = reinterpret_cast<std::uint64_t*>(start - kCanaryArea);
    *g->canary = kStackCanary;
  }
  return g;
}

int StackPool::get_batch(G** out, int n) {
  // Fresh slots are reserved under the lock but initialized outside it: writing a slot's
  // header is its first touch (a page fault, microseconds), and holding the lock meanwhile
  // would stall every P that returns or takes stacks.
  constexpr int kCarveBatch = 8;
  struct Fresh {
    char* start;
    G* g;
    bool guarded, first;
  } fresh[kCarveBatch];
  int k = 0, nfresh = 0;
  {
    LockGuard l(lock_);
    if (!free_.empty()) {
      k = static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(n), free_.size()));
      std::memcpy(out, free_.data() + free_.size() - static_cast<std::size_t>(k), sizeof(G*) * static_cast<std::size_t>(k));
      free_.resize(free_.size() - static_cast<std::size_t>(k));
      return k;
    }
    while (nfresh < std::min(n, kCarveBatch)) {
      if (chunks_.empty() || chunks_.back().used == chunks_.back().slots) {
        if (nfresh > 0) break;
        if (!add_chunk())
          fatal("kgmp: out of memory: cannot map %zu more bytes of goroutine stacks "
                "(%zu stacks exist); lower Config::stack_size or the number of goroutines",
                std::max<std::size_t>(4, kBigChunkBytes / slot_) * slot_, ncarved_);
      }
      Chunk& c = chunks_.back();
      std::size_t i = c.used++;
      fresh[nfresh++] = Fresh{c.base + i * slot_, g_at(c, i), c.guarded, i == 0};
      ncarved_++;
    }
  }
  for (int i = 0; i < nfresh; i++) out[k++] = init_slot(fresh[i].start, fresh[i].g,
                                                        fresh[i].guarded, fresh[i].first);
  return k;
}

void StackPool::put_batch(G* const* in, int n) {
  LockGuard l(lock_);
  free_.insert(free_.end(), in, in + n);
}

void StackPool::guard_range(const G* g, std::uintptr_t* lo, std::uintptr_t* hi) {
  if (g->canary != nullptr) {
    *lo = *hi = 0;
    return;
  }
  *hi = reinterpret_cast<std::uintptr_t>(g->lo);
  *lo = *hi - page_size();
}

}  // namespace kgmp::internal
