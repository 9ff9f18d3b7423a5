// signals.h — stack overflow detection for G stacks.
#pragma once

#include <signal.h>

#include <cstddef>

#include "sched.h"

namespace kgmp::internal {

// Installs the SIGSEGV/SIGBUS handler (once per process). A fault in the guard page of the
// running G prints "goroutine N: stack overflow" and aborts; any other fault goes to the handler
// that was installed before (or the default action).
void install_signal_handlers();
// An alternate signal stack for the calling M (the handler cannot run on an overflowed stack).
// Returns the mapping to pass to remove_altstack; `saved` receives the thread's previous one.
void* install_altstack(stack_t* saved = nullptr);
void remove_altstack(void* mem, const stack_t* restore);
// Prints the overflow of g (fault address or nullptr for a dead canary) and aborts.
[[noreturn]] void stack_overflow(const G* g, const void* fault);
// How many stacks may have guard pages: (vm.max_map_count - 16384) / 2.
std::size_t guard_budget();
M* getm_for_signal();

}  // namespace kgmp::internal
