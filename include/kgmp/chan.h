// kgmp/chan.h — Go channels and select.
//
//   kgmp::Chan<int> c;                 // nil: send/recv block forever, close is a panic
//   kgmp::Chan<int> c(0);              // unbuffered: a send completes when a receiver takes it
//   kgmp::Chan<std::string> q(1024);   // buffered
//   c.send(42);
//   std::optional<int> v = c.recv();   // nullopt: closed and drained (Go's `v, ok := <-c`)
//   for (int x : q) ...                // Go's `for x := range q`
//   c.close();
//
//   kgmp::select(                      // Go's select: a ready case chosen uniformly at random
//       kgmp::on_recv(a, [](std::optional<int> v) { ... }),
//       kgmp::on_send(b, 7, [] { ... }),
//       kgmp::otherwise([] { ... }));  // optional default case
//
// Semantics are Go's: an unbuffered send completes only when a receiver has taken the value; a
// receive from a closed channel drains the buffer first; sending on or closing a closed channel,
// and closing a nil one, end the program with Go's panic message. Blocked Gs park through the
// scheduler (no OS blocking); a woken G goes to its waker's P's runnext, as in Go.
//
// Memory ordering: everything a G wrote before a send is visible to the G that receives that
// value after its receive; a close happens before any receive that returns because of it.
//
// A Chan is a reference (copies share one channel); the channel lives while a handle or a
// parked G refers to it. Payloads may be move-only; T must be move-constructible.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <new>
#include <optional>
#include <type_traits>
#include <utility>

namespace kgmp {

namespace internal {

// How the untyped channel core moves values of one T (all on raw storage).
struct ElemOps {
  std::size_t size, align;
  void (*construct)(void* dst, void* src);  // new (dst) T(std::move(*src))
  void (*destroy)(void* obj);
};
template <class T>
inline constexpr ElemOps kElemOps = {
    sizeof(T), alignof(T), [](void* d, void* s) { ::new (d) T(std::move(*static_cast<T*>(s))); },
    [](void* o) { static_cast<T*>(o)->~T(); }};

struct ChanCore;
ChanCore* chan_make(const ElemOps* ops, std::size_t cap);
void chan_ref(ChanCore* c);
void chan_unref(ChanCore* c);
// Go's chansend / chanrecv / closechan. src: a T to move from; dst: raw storage for a T.
// block=false: return at once if the operation cannot complete (try_*).
bool chan_send(ChanCore* c, void* src, bool block);
enum class RecvResult { kValue, kClosed, kWouldBlock };
RecvResult chan_recv(ChanCore* c, void* dst, bool block);
void chan_close(ChanCore* c);
std::size_t chan_len(ChanCore* c);
std::size_t chan_cap(ChanCore* c);

// select: cases[i] is a send (elem = the value to move from) or a receive (elem = raw storage).
struct SelectCase {
  ChanCore* c;  // nullptr: a nil channel (never ready)
  void* elem;
  bool send;
};
struct SelectResult {
  int index;      // the case chosen, or -1 for the default case
  bool received;  // for a receive: a value (true) or closed (false)
};
SelectResult select_go(SelectCase* cases, int n, bool has_default);
}  // namespace internal

enum class RecvStatus { kOk, kClosed, kWouldBlock };

template <class T>
struct TryRecv {
  RecvStatus status;
  std::optional<T> value;
  explicit operator bool() const { return status == RecvStatus::kOk; }
};

template <class T>
class Chan {
  static_assert(std::is_move_constructible_v<T>, "kgmp::Chan<T> needs a move-constructible T");

 public:
  // A nil channel.
  Chan() = default;
  // A channel with `cap` buffer slots (0: unbuffered).
  explicit Chan(std::size_t cap) : c_(internal::chan_make(&internal::kElemOps<T>, cap)) {}
  Chan(const Chan& o) : c_(o.c_) {
    if (c_) internal::chan_ref(c_);
  }
  Chan(Chan&& o) noexcept : c_(std::exchange(o.c_, nullptr)) {}
  Chan& operator=(Chan o) noexcept {
    std::swap(c_, o.c_);
    return *this;
  }
  ~Chan() {
    if (c_) internal::chan_unref(c_);
  }

  // Blocks (parks the G) until a receiver takes v (unbuffered) or a slot is free. Must be
  // called from a G.
  template <class U = T>
  void send(U&& v) {
    T tmp(std::forward<U>(v));
    internal::chan_send(c_, &tmp, true);
  }
  // Sends only if it can complete at once; v is moved from only when it returns true.
  bool try_send(T&& v) { return internal::chan_send(c_, &v, false); }
  bool try_send(const T& v) {
    T tmp(v);
    return internal::chan_send(c_, &tmp, false);
  }

  // Blocks until a value arrives (returns it) or the channel is closed and drained (nullopt).
  std::optional<T> recv() {
    Raw r;
    if (internal::chan_recv(c_, r.buf, true) != internal::RecvResult::kValue) return std::nullopt;
    return r.take();
  }
  TryRecv<T> try_recv() {
    Raw r;
    switch (internal::chan_recv(c_, r.buf, false)) {
      case internal::RecvResult::kValue:
        return {RecvStatus::kOk, r.take()};
      case internal::RecvResult::kClosed:
        return {RecvStatus::kClosed, std::nullopt};
      default:
        return {RecvStatus::kWouldBlock, std::nullopt};
    }
  }

  void close() { internal::chan_close(c_); }
  std::size_t len() const { return c_ ? internal::chan_len(c_) : 0; }
  std::size_t cap() const { return c_ ? internal::chan_cap(c_) : 0; }
  bool is_nil() const { return c_ == nullptr; }
  bool operator==(const Chan& o) const { return c_ == o.c_; }

  // Go's `for v := range c`: receives until the channel is closed and drained.
  class iterator {
   public:
    explicit iterator(Chan* c) : c_(c) { ++*this; }
    iterator() = default;
    T& operator*() { return *v_; }
    iterator& operator++() {
      v_ = c_->recv();
      if (!v_) c_ = nullptr;
      return *this;
    }
    bool operator==(const iterator& o) const { return c_ == o.c_; }

   private:
    Chan* c_ = nullptr;
    std::optional<T> v_;
  };
  iterator begin() { return iterator(this); }
  iterator end() { return iterator(); }

  internal::ChanCore* core() const { return c_; }

  // Raw storage a receive constructs into.
  struct Raw {
    alignas(T) unsigned char buf[sizeof(T)];
    std::optional<T> take() {
      T* p = std::launder(reinterpret_cast<T*>(buf));
      std::optional<T> v(std::move(*p));
      p->~T();
      return v;
    }
  };

 private:
  internal::ChanCore* c_ = nullptr;
};

// ---- select ----

template <class T, class F>
struct RecvCase {
  Chan<T> ch;
  F f;  // called with std::optional<T>: nullopt when the channel is closed
  typename Chan<T>::Raw raw;
  internal::SelectCase describe() { return {ch.core(), raw.buf, false}; }
  void fire(bool received) {
    if (received)
      f(raw.take());
    else
      f(std::optional<T>());
  }
};

template <class T, class F>
struct SendCase {
  Chan<T> ch;
  T v;
  F f;
  internal::SelectCase describe() { return {ch.core(), &v, true}; }
  void fire(bool) { f(); }
};

template <class F>
struct DefaultCase {
  F f;
};

struct NoOp {
  template <class... A>
  void operator()(A&&...) const {}
};

template <class T, class F = NoOp>
RecvCase<T, F> on_recv(const Chan<T>& c, F f = {}) {
  return {c, std::move(f), {}};
}
template <class T, class U, class F = NoOp>
SendCase<T, F> on_send(const Chan<T>& c, U&& v, F f = {}) {
  return {c, T(std::forward<U>(v)), std::move(f)};
}
template <class F = NoOp>
DefaultCase<F> otherwise(F f = {}) {
  return {std::move(f)};
}

namespace internal {
template <class C>
struct is_default : std::false_type {};
template <class F>
struct is_default<DefaultCase<F>> : std::true_type {};
}  // namespace internal

// Go's select over any mix of on_recv / on_send cases and at most one otherwise (last).
// Blocks until one case can proceed (a ready one is chosen uniformly at random), runs its
// handler, and returns its index (the position among the arguments). With no cases it blocks
// forever, as in Go.
template <class... Cases>
int select(Cases&&... cases) {
  constexpr int kDefaults = (0 + ... + (internal::is_default<std::decay_t<Cases>>::value ? 1 : 0));
  static_assert(kDefaults <= 1, "kgmp::select takes at most one otherwise()");
  constexpr int kN = static_cast<int>(sizeof...(Cases)) - kDefaults;
  internal::SelectCase desc[kN > 0 ? kN : 1];
  int i = 0;
  auto fill = [&](auto& c) {
    if constexpr (!internal::is_default<std::decay_t<decltype(c)>>::value) desc[i++] = c.describe();
  };
  (fill(cases), ...);
  internal::SelectResult r = internal::select_go(desc, kN, kDefaults == 1);
  int k = 0, chosen = -1;
  auto dispatch = [&](auto& c) {
    if constexpr (internal::is_default<std::decay_t<decltype(c)>>::value) {
      if (r.index < 0) {
        c.f();
        chosen = kN;
      }
    } else {
      if (k == r.index) {
        c.fire(r.received);
        chosen = k;
      }
      k++;
    }
  };
  (dispatch(cases), ...);
  return chosen;
}

}  // namespace kgmp
