// context.cpp — Context: a tree of cancellation states.
//
// Invariants: a state is cancelled once (err goes from kNone to a reason, under its lock, and
// its done channel is closed right after, outside the lock); a child is registered with its
// parent until either is cancelled; cancellation walks down, never up (a child removes itself
// from its parent when cancelled on its own).
//
// The racy protocol: creating a child under a parent that is being cancelled — the child
// registers under the parent's lock, and if the parent is already cancelled it cancels itself
// at once with the parent's reason, so no child escapes a cancellation.
//
// Deadlines use a Timer-like runtime timer whose callback spawns a G that cancels (timer
// callbacks run under the timer heap's lock and must not touch timers, and cancelling a subtree
// deletes the children's timers).
#include "kgmp/context.h"

#include <vector>

#include "futex.h"
#include "sched.h"
#include "timer.h"

namespace kgmp {

struct Context::State : std::enable_shared_from_this<Context::State> {
  internal::Lock lock;
  Chan<Unit> done{0};
  Err err ABSL_GUARDED_BY(lock) = Err::kNone;
  std::optional<Clock::time_point> deadline;
  std::weak_ptr<State> parent;
  std::vector<std::shared_ptr<State>> children ABSL_GUARDED_BY(lock);
  internal::Timer timer;
  bool has_timer = false;

  ~State() {
    if (has_timer) {
      internal::del_timer(&timer);
      delete static_cast<std::weak_ptr<State>*>(timer.arg);
    }
  }

  void cancel(Err why, bool remove_from_parent) {
    std::vector<std::shared_ptr<State>> kids;
    {
      internal::LockGuard l(lock);
      if (err != Err::kNone) return;
      err = why;
      kids.swap(children);
    }
    if (has_timer) internal::del_timer(&timer);
    done.close();
    for (auto& k : kids) k->cancel(why, false);
    if (remove_from_parent) {
      if (auto p = parent.lock()) {
        internal::LockGuard l(p->lock);
        auto& c = p->children;
        for (auto it = c.begin(); it != c.end(); ++it)
          if (it->get() == this) {
            c.erase(it);
            break;
          }
      }
    }
  }
};

Context Context::background() { return Context(nullptr); }

std::pair<Context, Context::CancelFunc> Context::derive(const Context& pctx,
                                                        std::shared_ptr<State> s) {
  const std::shared_ptr<State>& parent = pctx.s_;
  if (parent) {
    s->parent = parent;
    Context::Err perr;
    {
      internal::LockGuard l(parent->lock);
      perr = parent->err;
      if (perr == Context::Err::kNone) parent->children.push_back(s);
    }
    if (perr != Context::Err::kNone) s->cancel(perr, false);
  }
  std::weak_ptr<Context::State> w = s;
  Context::CancelFunc cancel = [w] {
    if (auto st = w.lock()) st->cancel(Context::Err::kCanceled, true);
  };
  return {Context(std::move(s)), std::move(cancel)};
}

std::pair<Context, Context::CancelFunc> Context::with_cancel(const Context& parent) {
  auto s = std::make_shared<State>();
  if (parent.s_) s->deadline = parent.s_->deadline;
  return derive(parent, std::move(s));
}

std::pair<Context, Context::CancelFunc> Context::with_deadline(const Context& parent,
                                                               Clock::time_point deadline) {
  if (parent.s_ && parent.s_->deadline && *parent.s_->deadline <= deadline)
    return with_cancel(parent);  // the parent's earlier deadline governs (Go does the same)
  auto s = std::make_shared<State>();
  s->deadline = deadline;
  auto r = derive(parent, s);
  bool live;
  {
    internal::LockGuard l(s->lock);
    live = s->err == Err::kNone;
  }
  if (live) {
    std::weak_ptr<State> w = s;
    s->has_timer = true;
    s->timer.arg = new std::weak_ptr<State>(w);
    s->timer.f = [](internal::Timer* t, std::int64_t) {
      auto* wp = static_cast<std::weak_ptr<State>*>(t->arg);
      if (auto st = wp->lock()) go([st] { st->cancel(Err::kDeadlineExceeded, true); });
    };
    internal::add_timer(&s->timer, std::chrono::duration_cast<std::chrono::nanoseconds>(
                                       deadline.time_since_epoch())
                                       .count());
  }
  return r;
}

std::pair<Context, Context::CancelFunc> Context::with_timeout(const Context& parent,
                                                              Clock::duration d) {
  return with_deadline(parent, Clock::now() + d);
}

Chan<Unit> Context::done() const { return s_ ? s_->done : Chan<Unit>(); }

Context::Err Context::err() const {
  if (!s_) return Err::kNone;
  internal::LockGuard l(s_->lock);
  return s_->err;
}

std::optional<Clock::time_point> Context::deadline() const {
  return s_ ? s_->deadline : std::nullopt;
}

const char* to_string(Context::Err e) {
  switch (e) {
    case Context::Err::kCanceled:
      return "context canceled";
    case Context::Err::kDeadlineExceeded:
      return "context deadline exceeded";
    default:
      return "";
  }
}

}  // namespace kgmp
