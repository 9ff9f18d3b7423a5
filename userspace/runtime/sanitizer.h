// sanitizer.h — telling AddressSanitizer and ThreadSanitizer about G switches.
//
// ASan must know which stack is current (fake stacks for use-after-return, and the bounds it
// checks), TSan needs one "fiber" per G so that happens-before follows the G, not the M. Every
// switch goes through switch_to() in sched.cpp, which calls these; in a build without
// sanitizers they compile to nothing.
#pragma once

#include "sched.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KGMP_ASAN 1
#endif
#if __has_feature(thread_sanitizer)
#define KGMP_TSAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define KGMP_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#define KGMP_TSAN 1
#endif

#ifdef KGMP_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#ifdef KGMP_TSAN
#include <sanitizer/tsan_interface.h>
#endif

namespace kgmp::internal {

// Before switching from `from` to `to`. dying: `from` never runs again (its fake stack goes).
inline void san_start_switch([[maybe_unused]] G* from, [[maybe_unused]] G* to,
                             [[maybe_unused]] bool dying) {
#ifdef KGMP_ASAN
  __sanitizer_start_switch_fiber(dying ? nullptr : &from->asan_fake_stack, to->lo,
                                 static_cast<size_t>(to->hi - to->lo));
#endif
#ifdef KGMP_TSAN
  __tsan_switch_to_fiber(to->tsan_fiber, 0);
#endif
}

// After a switch, on the resumed stack of `self` (nullptr: a G's very first run).
inline void san_finish_switch([[maybe_unused]] G* self) {
#ifdef KGMP_ASAN
  __sanitizer_finish_switch_fiber(self != nullptr ? self->asan_fake_stack : nullptr, nullptr,
                                  nullptr);
#endif
}

inline void san_fiber_create([[maybe_unused]] G* g) {
#ifdef KGMP_TSAN
  g->tsan_fiber = __tsan_create_fiber(0);
#endif
}
// g0: the thread's own fiber.
inline void san_fiber_current([[maybe_unused]] G* g0) {
#ifdef KGMP_TSAN
  g0->tsan_fiber = __tsan_get_current_fiber();
#endif
}
// Caller: a G other than g (g is not running).
inline void san_fiber_destroy([[maybe_unused]] G* g) {
#ifdef KGMP_TSAN
  if (g->tsan_fiber != nullptr) __tsan_destroy_fiber(g->tsan_fiber);
  g->tsan_fiber = nullptr;
#endif
}

}  // namespace kgmp::internal
