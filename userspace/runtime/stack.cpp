// stack.cpp — the G/stack pool (see stack.h for the layout and the overflow rules).
#include "stack.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
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

void StackPool::destroy() {
  LockGuard l(lock_);
  for (const Chunk& c : chunks_) munmap(c.map, c.bytes);
  chunks_.clear();
  free_ = nullptr;
  nfree_ = ncarved_ = nguarded_ = 0;
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

G* StackPool::carve() {
  if (chunks_.empty() || chunks_.back().used == chunks_.back().slots) {
    if (!add_chunk())
      fatal("kgmp: out of memory: cannot map %zu more bytes of goroutine stacks "
            "(%zu stacks exist); lower Config::stack_size or the number of goroutines",
            std::max<std::size_t>(4, kBigChunkBytes / slot_) * slot_, ncarved_);
  }
  Chunk& c = chunks_.back();
  std::size_t i = c.used++;
  char* start = c.base + i * slot_;
  G* g = new (g_at(c, i)) G();
  g->hi = reinterpret_cast<char*>(g);
  if (c.guarded) {
    g->lo = start + page_size();
  } else if (i == 0) {
    g->lo = start;  // the chunk's guard page is just below
  } else {
    g->lo = start;
    g->canary = reinterpret_cast<std::uint64_t*>(start - kCanaryArea);
    *g->canary = kStackCanary;
  }
  ncarved_++;
  return g;
}

int StackPool::get_batch(G** out, int n) {
  LockGuard l(lock_);
  int k = 0;
  while (k < n && free_ != nullptr) {
    out[k++] = free_;
    free_ = free_->schedlink;
    nfree_--;
  }
  if (k == 0) out[k++] = carve();
  return k;
}

void StackPool::put_batch(G* const* in, int n) {
  LockGuard l(lock_);
  for (int i = 0; i < n; i++) {
    in[i]->schedlink = free_;
    free_ = in[i];
  }
  nfree_ += static_cast<std::size_t>(n);
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
