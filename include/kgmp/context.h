// kgmp/context.h — cancellation and deadlines across goroutines (Go's context package, small).
//
//   auto [ctx, cancel] = kgmp::Context::with_timeout(kgmp::Context::background(), 100ms);
//   kgmp::go([ctx] {
//     kgmp::select(kgmp::on_recv(work, handle),
//                  kgmp::on_recv(ctx.done(), [&](auto) { /* ctx.err() says why */ }));
//   });
//   cancel();  // idempotent; also releases the timer early
//
// Cancelling a context cancels every context derived from it. done() is a channel that is
// closed on cancellation (a nil channel, never ready, for background()). A Context is a cheap
// reference; copies share one state.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <utility>

#include "kgmp/chan.h"
#include "kgmp/time.h"

namespace kgmp {

struct Unit {};

class Context {
 public:
  enum class Err { kNone, kCanceled, kDeadlineExceeded };
  using CancelFunc = std::function<void()>;

  // The root: never cancelled, no deadline.
  static Context background();
  static std::pair<Context, CancelFunc> with_cancel(const Context& parent);
  // Cancelled at `deadline` (or earlier if the parent's is earlier) with kDeadlineExceeded.
  static std::pair<Context, CancelFunc> with_deadline(const Context& parent, Clock::time_point deadline);
  static std::pair<Context, CancelFunc> with_timeout(const Context& parent, Clock::duration d);

  // Closed when the context is cancelled.
  Chan<Unit> done() const;
  // kNone until cancelled, then why.
  Err err() const;
  std::optional<Clock::time_point> deadline() const;

  struct State;

 private:
  explicit Context(std::shared_ptr<State> s) : s_(std::move(s)) {}
  static std::pair<Context, CancelFunc> derive(const Context& parent, std::shared_ptr<State> s);
  std::shared_ptr<State> s_;  // null: background
};

// "context canceled" / "context deadline exceeded" (Go's error strings).
const char* to_string(Context::Err e);

}  // namespace kgmp
