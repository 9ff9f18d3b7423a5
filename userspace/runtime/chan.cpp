// chan.cpp — channels and select (Go's chan.go and select.go).
//
// A channel is a lock, a ring buffer of `cap` raw slots, and two FIFO wait lists of sudogs
// (a G parked on the channel, with a pointer to the value it sends or the storage it receives
// into). Values are moved with the ElemOps of the channel's T, so the core is untyped.
//
// Invariants (under the channel lock)
// - At most one of recvq/sendq is non-empty, except for sudogs of selects that have already
//   been won elsewhere (they are skipped and discarded by dequeue).
// - A non-empty recvq implies an empty buffer; a non-empty sendq implies a full buffer (or an
//   unbuffered channel).
// - closed is set once; after it, sendq and recvq are empty.
//
// The racy protocol
// - A G that must wait enqueues its sudog and parks with the channel lock released by the
//   scheduler after its context is saved (gopark's unlockf), so a waker that dequeues the sudog
//   under the lock always finds a parked G and may goready it at once.
// - The waker moves the value (into the receiver's storage, or out of the sender's) before it
//   readies the G: the woken G never touches the channel again on that path (Go's direct
//   hand-off), which is what makes an unbuffered send "complete when a receiver takes it".
// - select enqueues one sudog per case, all sharing a SelectWait. A waker claims the select by
//   CAS on its `done` flag when it dequeues one of them; a sudog whose select is already won is
//   dropped. After waking, the selecting G locks every channel (in address order, as Go does,
//   so two selects never deadlock) and removes its remaining sudogs.
//
// Rejected: a lock-free channel (Go kept the lock: with parking and select it is the simple
// correct design, and an uncontended lock costs ~20 ns); per-channel condition variables
// (they block the M, not the G).
#include <alloca.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "kgmp/chan.h"
#include "futex.h"
#include "handoff.h"
#include "sched.h"
#include "telemetry_rt.h"

namespace kgmp::internal {
namespace {

struct SelectWait {
  std::atomic<std::uint32_t> done{0};
  struct Sudog* winner = nullptr;
};

struct Sudog {
  G* g = nullptr;
  void* elem = nullptr;  // send: the value to move from; recv: raw storage
  Sudog* next = nullptr;
  Sudog* prev = nullptr;
  SelectWait* sel = nullptr;
  int case_index = 0;
  bool success = false;  // the operation completed (false: woken by close)
  bool queued = false;
};

struct WaitList {
  Sudog* first = nullptr;
  Sudog* last = nullptr;

  void enqueue(Sudog* s) {
    s->next = nullptr;
    s->prev = last;
    if (last != nullptr)
      last->next = s;
    else
      first = s;
    last = s;
    s->queued = true;
  }
  void remove(Sudog* s) {
    if (!s->queued) return;
    if (s->prev != nullptr)
      s->prev->next = s->next;
    else
      first = s->next;
    if (s->next != nullptr)
      s->next->prev = s->prev;
    else
      last = s->prev;
    s->next = s->prev = nullptr;
    s->queued = false;
  }
  // The first sudog whose G may be woken: a select's sudog is taken only if this dequeue wins
  // the select (the others of that select are left for their owner to remove).
  Sudog* dequeue() {
    while (Sudog* s = first) {
      remove(s);
      if (s->sel != nullptr) {
        std::uint32_t z = 0;
        if (!s->sel->done.compare_exchange_strong(z, 1, std::memory_order_acq_rel)) continue;
        s->sel->winner = s;
      }
      return s;
    }
    return nullptr;
  }
  bool empty() const { return first == nullptr; }
};

}  // namespace

struct alignas(64) ChanCore {
  // The lock has a cache line of its own: a G spinning on it then does not steal the line
  // that the holder is updating (qcount, sendx, ...).
  Lock lock;
  alignas(64) std::atomic<std::uint32_t> refs{1};
  const ElemOps* ops;
  std::size_t cap;
  std::size_t qcount ABSL_GUARDED_BY(lock) = 0;
  std::size_t sendx ABSL_GUARDED_BY(lock) = 0;
  std::size_t recvx ABSL_GUARDED_BY(lock) = 0;
  bool closed ABSL_GUARDED_BY(lock) = false;
  WaitList recvq ABSL_GUARDED_BY(lock);
  WaitList sendq ABSL_GUARDED_BY(lock);
  unsigned char* buf = nullptr;

  void* slot(std::size_t i) { return buf + i * ops->size; }
};

namespace {

// Go's panic for channel misuse: the message and the goroutine, exit status 2.
[[noreturn]] void chan_panic(const char* msg) {
  M* m = getm();
  unsigned long long id = m != nullptr && m->curg != nullptr ? m->curg->goid : 0;
  fflush(stdout);
  fprintf(stderr, "panic: %s\n\ngoroutine %llu [running]\n", msg, id);
  fflush(stderr);
  telemetry_unlink_socket();
  _exit(2);
}

void unlock_chan(void* c) ABSL_NO_THREAD_SAFETY_ANALYSIS { static_cast<ChanCore*>(c)->lock.unlock(); }

G* self_g(const char* what) {
  M* m = getm();
  if (m == nullptr || m->curg == nullptr)
    fatal("kgmp: %s outside a goroutine would block a thread the runtime does not own; call it "
          "from code running under kgmp::run",
          what);
  return m->curg;
}

[[noreturn]] void block_forever(const char* reason) {
  self_g(reason);
  gopark(nullptr, nullptr, reason);
  fatal("kgmp: internal error: a G parked forever (%s) was woken", reason);
}

// The buffer's two ends. Caller: holds c->lock; buf_put: qcount < cap; buf_take: qcount > 0.
void buf_put(ChanCore* c, void* src) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c->lock) {
  c->ops->construct(c->slot(c->sendx), src);
  c->sendx = (c->sendx + 1) % c->cap;
  c->qcount++;
}
void buf_take(ChanCore* c, void* dst) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c->lock) {
  void* head = c->slot(c->recvx);
  c->ops->construct(dst, head);
  c->ops->destroy(head);
  c->recvx = (c->recvx + 1) % c->cap;
  c->qcount--;
}

// Receives from sudog s (a sender) into dst. Caller: holds c->lock; s dequeued from sendq.
void recv_from(ChanCore* c, Sudog* s, void* dst) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c->lock) {
  if (c->cap == 0) {
    c->ops->construct(dst, s->elem);
  } else {
    // The buffer is full: take its head, and put the sender's value at the tail (same slot).
    void* head = c->slot(c->recvx);
    c->ops->construct(dst, head);
    c->ops->destroy(head);
    c->ops->construct(head, s->elem);
    c->recvx = (c->recvx + 1) % c->cap;
    c->sendx = c->recvx;
  }
  s->success = true;
}

// Tries to complete a send at once. Caller: holds c->lock, c not closed. On success, *wake is
// the receiver to ready after unlocking (or null).
bool send_now(ChanCore* c, void* src, G** wake) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c->lock) {
  if (Sudog* r = c->recvq.dequeue()) {
    c->ops->construct(r->elem, src);
    r->success = true;
    *wake = r->g;
    return true;
  }
  if (c->qcount < c->cap) {
    buf_put(c, src);
    *wake = nullptr;
    return true;
  }
  return false;
}

// Tries to complete a receive at once. Returns kWouldBlock if it cannot.
RecvResult recv_now(ChanCore* c, void* dst, G** wake) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c->lock) {
  *wake = nullptr;
  if (Sudog* s = c->sendq.dequeue()) {
    recv_from(c, s, dst);
    *wake = s->g;
    return RecvResult::kValue;
  }
  if (c->qcount > 0) {
    buf_take(c, dst);
    return RecvResult::kValue;
  }
  if (c->closed) return RecvResult::kClosed;
  return RecvResult::kWouldBlock;
}

// The buffered fast paths: a send into a buffer with room and no parked receiver, or a
// receive from a non-empty buffer with no parked sender, touches the channel alone (no G to
// ready, none to park), so it runs without entering the runtime: the channel lock is its only
// protection, as in Go. Entering costs a CAS on the P's lease word (DESIGN §3): on every
// buffered hand-over that would cost a third more than Go's, and on 2 Ps it slows a producer
// enough that an idle P steals its consumer before the pair settles on one P (RESULTS.md,
// chan-throughput, "Why the misses").
// Why it is safe outside the runtime: nothing here touches a P, and the lock is never held
// across a park; if the thread blocks while holding it (a page fault on the buffer) the P may
// be handed off, which only delays the unlock, exactly as for any G code holding a user lock.
// The miss (full/empty buffer, waiters, closed) unlocks and takes the usual path, which
// re-checks everything under the lock. Caller: any thread; c buffered.
bool send_buffered_fast(ChanCore* c, void* src) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  c->lock.lock();
  if (c->closed || !c->recvq.empty() || c->qcount == c->cap) {
    c->lock.unlock();
    return false;
  }
  buf_put(c, src);
  c->lock.unlock();
  return true;
}

bool recv_buffered_fast(ChanCore* c, void* dst) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  c->lock.lock();
  if (c->qcount == 0 || !c->sendq.empty()) {
    c->lock.unlock();
    return false;
  }
  buf_take(c, dst);
  c->lock.unlock();
  return true;
}

}  // namespace

ChanCore* chan_make(const ElemOps* ops, std::size_t cap) {
  if (cap > (std::size_t{1} << 40) / (ops->size ? ops->size : 1))
    fatal("panic: makechan: size out of range");
  auto* c = new ChanCore();
  c->ops = ops;
  c->cap = cap;
  if (cap > 0)
    c->buf = static_cast<unsigned char*>(
        ::operator new(cap * ops->size, std::align_val_t{std::max<std::size_t>(ops->align, 16)}));
  return c;
}

void chan_ref(ChanCore* c) { c->refs.fetch_add(1, std::memory_order_relaxed); }

void chan_unref(ChanCore* c) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  if (c->refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  for (std::size_t i = 0; i < c->qcount; i++) c->ops->destroy(c->slot((c->recvx + i) % c->cap));
  if (c->buf != nullptr)
    ::operator delete(c->buf, std::align_val_t{std::max<std::size_t>(c->ops->align, 16)});
  delete c;
}

// The lock taken here is released by gopark's unlockf on the parking path: beyond what the
// static analysis can follow.
bool chan_send(ChanCore* c, void* src, bool block) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  if (c == nullptr) {
    if (!block) return false;
    block_forever("chan send (nil chan)");
  }
  if (c->cap > 0 && send_buffered_fast(c, src)) return true;
  // Enter the runtime before taking the channel lock: entering may find the P gone and park
  // this G until it gets one, which must not happen with the lock held (every other G touching
  // the channel would spin on it).
  RuntimeScope rs;
  c->lock.lock();
  if (c->closed) {
    c->lock.unlock();
    chan_panic("send on closed channel");
  }
  G* wake = nullptr;
  if (send_now(c, src, &wake)) {
    c->lock.unlock();
    if (wake != nullptr) goready(wake);
    return true;
  }
  if (!block) {
    c->lock.unlock();
    return false;
  }
  Sudog s;
  s.g = self_g("a channel send");
  s.elem = src;
  c->sendq.enqueue(&s);
  chan_ref(c);  // a parked G keeps the channel alive
  gopark(unlock_chan, c, "chan send");
  chan_unref(c);
  if (!s.success) chan_panic("send on closed channel");
  return true;
}

RecvResult chan_recv(ChanCore* c, void* dst, bool block) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  if (c == nullptr) {
    if (!block) return RecvResult::kWouldBlock;
    block_forever("chan receive (nil chan)");
  }
  if (c->cap > 0 && recv_buffered_fast(c, dst)) return RecvResult::kValue;
  RuntimeScope rs;  // before the lock: see chan_send
  c->lock.lock();
  G* wake = nullptr;
  RecvResult r = recv_now(c, dst, &wake);
  if (r != RecvResult::kWouldBlock || !block) {
    c->lock.unlock();
    if (wake != nullptr) goready(wake);
    return r;
  }
  Sudog s;
  s.g = self_g("a channel receive");
  s.elem = dst;
  c->recvq.enqueue(&s);
  chan_ref(c);
  gopark(unlock_chan, c, "chan receive");
  chan_unref(c);
  return s.success ? RecvResult::kValue : RecvResult::kClosed;
}

void chan_close(ChanCore* c) {
  if (c == nullptr) chan_panic("close of nil channel");
  RuntimeScope rs;  // before the lock: see chan_send
  c->lock.lock();
  if (c->closed) {
    c->lock.unlock();
    chan_panic("close of closed channel");
  }
  c->closed = true;
  // Every waiter wakes with success = false: receivers get "closed", senders panic.
  G* head = nullptr;
  for (WaitList* q : {&c->recvq, &c->sendq}) {
    while (Sudog* s = q->dequeue()) {
      s->success = false;
      s->g->schedlink = head;
      head = s->g;
    }
  }
  c->lock.unlock();
  while (head != nullptr) {
    G* next = head->schedlink;
    goready(head);
    head = next;
  }
}

std::size_t chan_len(ChanCore* c) {
  LockGuard l(c->lock);
  return c->qcount;
}
std::size_t chan_cap(ChanCore* c) { return c->cap; }

// ---- select ----

namespace {
struct SelectLocks {
  ChanCore** order;
  int n = 0;
};

void lock_all(SelectLocks& l) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  for (int i = 0; i < l.n; i++) l.order[i]->lock.lock();
}
void unlock_all(void* p) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  auto* l = static_cast<SelectLocks*>(p);
  for (int i = l->n - 1; i >= 0; i--) l->order[i]->lock.unlock();
}

std::uint64_t select_rand() {
  // Per-thread xorshift; only fairness, not security, depends on it.
  thread_local std::uint64_t s = 0;
  if (s == 0) s = reinterpret_cast<std::uintptr_t>(&s) * 0x9e3779b97f4a7c15ULL | 1;
  s ^= s << 13;
  s ^= s >> 7;
  s ^= s << 17;
  return s;
}
}  // namespace

SelectResult select_go(SelectCase* cases, int n, bool has_default) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  if (n > 64) fatal("kgmp: select with %d cases; at most 64 are supported", n);
  // Poll order: a random permutation (Go's fairness: each ready case equally likely).
  int order[64];
  int np = 0;
  for (int i = 0; i < n; i++) {
    if (cases[i].c == nullptr) continue;  // a nil channel is never ready
    int j = static_cast<int>(select_rand() % static_cast<std::uint64_t>(np + 1));
    order[np] = order[j];
    order[j] = i;
    np++;
  }
  if (np == 0) {
    if (has_default) return {-1, false};
    block_forever(n == 0 ? "select (no cases)" : "select");
  }
  // Lock order: by channel address, each channel once. The runtime is entered first: see
  // chan_send.
  RuntimeScope rs;
  SelectLocks locks;
  locks.order = static_cast<ChanCore**>(alloca(sizeof(ChanCore*) * static_cast<std::size_t>(np)));
  for (int k = 0; k < np; k++) locks.order[locks.n++] = cases[order[k]].c;
  std::sort(locks.order, locks.order + locks.n);
  locks.n = static_cast<int>(std::unique(locks.order, locks.order + locks.n) - locks.order);
  lock_all(locks);

  // Pass 1: a case that can proceed now.
  for (int k = 0; k < np; k++) {
    SelectCase& sc = cases[order[k]];
    G* wake = nullptr;
    if (sc.send) {
      if (sc.c->closed) {
        unlock_all(&locks);
        chan_panic("send on closed channel");
      }
      if (send_now(sc.c, sc.elem, &wake)) {
        unlock_all(&locks);
        if (wake != nullptr) goready(wake);
        return {order[k], false};
      }
    } else {
      RecvResult r = recv_now(sc.c, sc.elem, &wake);
      if (r != RecvResult::kWouldBlock) {
        unlock_all(&locks);
        if (wake != nullptr) goready(wake);
        return {order[k], r == RecvResult::kValue};
      }
    }
  }
  if (has_default) {
    unlock_all(&locks);
    return {-1, false};
  }

  // Pass 2: wait on every channel.
  G* g = self_g("select");
  SelectWait sw;
  // Sudogs live on this G's stack while it is parked: no allocation.
  auto* sg = static_cast<Sudog*>(alloca(sizeof(Sudog) * static_cast<std::size_t>(np)));
  for (int k = 0; k < np; k++) {
    new (&sg[k]) Sudog();
    int i = order[k];
    sg[k].g = g;
    sg[k].elem = cases[i].elem;
    sg[k].sel = &sw;
    sg[k].case_index = i;
    (cases[i].send ? cases[i].c->sendq : cases[i].c->recvq).enqueue(&sg[k]);
  }
  for (int i = 0; i < locks.n; i++) chan_ref(locks.order[i]);
  gopark(unlock_all, &locks, "select");

  // Pass 3: the winner was dequeued by its waker; remove the others.
  lock_all(locks);
  for (int k = 0; k < np; k++) {
    if (&sg[k] == sw.winner) continue;
    int i = order[k];
    (cases[i].send ? cases[i].c->sendq : cases[i].c->recvq).remove(&sg[k]);
  }
  unlock_all(&locks);
  for (int i = 0; i < locks.n; i++) chan_unref(locks.order[i]);
  Sudog* w = sw.winner;
  KGMP_CHECK(w != nullptr);
  if (cases[w->case_index].send && !w->success) chan_panic("send on closed channel");
  return {w->case_index, w->success};
}

}  // namespace kgmp::internal
