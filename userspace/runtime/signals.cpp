// signals.cpp — SIGSEGV/SIGBUS on a G's guard page -> "goroutine N: stack overflow".
//
// The handler runs on a per-M alternate signal stack (the G's own stack is exhausted). It only
// claims faults inside the guard page of the G its M is running; everything else is passed to
// the previously installed handler (a test framework's, a sanitizer's) or to the default action,
// so kgmp does not hide other crashes.
#include "signals.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "export_test.h"
#include "stack.h"
#include "telemetry_rt.h"

namespace kgmp::internal {
namespace {
struct sigaction old_segv, old_bus;
std::atomic<bool> installed{false};
std::atomic<long> budget_override{-1};
constexpr std::size_t kAltStack = 64 * 1024;

// Async-signal-safe: formats with snprintf into a stack buffer (no allocation) and write(2)s.
void report(const G* g, const void* fault) {
  char buf[256];
  int n;
  if (fault != nullptr)
    n = snprintf(buf, sizeof buf,
                 "goroutine %" PRIu64 ": stack overflow (fault at %p, stack [%p, %p))\n",
                 g->goid, fault, static_cast<void*>(g->lo), static_cast<void*>(g->hi));
  else
    n = snprintf(buf, sizeof buf,
                 "goroutine %" PRIu64 ": stack overflow (canary below stack [%p, %p) overwritten)\n",
                 g->goid, static_cast<void*>(g->lo), static_cast<void*>(g->hi));
  if (n > 0) {
    ssize_t r = write(2, buf, static_cast<std::size_t>(n));
    (void)r;
  }
}

void chain(int sig, siginfo_t* si, void* uc, const struct sigaction& old) {
  if (old.sa_flags & SA_SIGINFO) {
    if (old.sa_sigaction != nullptr) {
      old.sa_sigaction(sig, si, uc);
      return;
    }
  } else if (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN) {
    old.sa_handler(sig);
    return;
  }
  // Default action: reinstate it; returning re-executes the faulting instruction.
  signal(sig, SIG_DFL);
}

void on_fault(int sig, siginfo_t* si, void* uc) {
  M* m = getm_for_signal();
  const G* g = m != nullptr ? m->curg : nullptr;
  if (g != nullptr) {
    std::uintptr_t lo, hi;
    StackPool::guard_range(g, &lo, &hi);
    auto a = reinterpret_cast<std::uintptr_t>(si->si_addr);
    if (a >= lo && a < hi) {
      report(g, si->si_addr);
      telemetry_unlink_socket();
      signal(SIGABRT, SIG_DFL);
      abort();
    }
  }
  chain(sig, si, uc, sig == SIGSEGV ? old_segv : old_bus);
}
}  // namespace

void install_signal_handlers() {
  if (installed.exchange(true)) return;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, &old_segv);
  sigaction(SIGBUS, &sa, &old_bus);
}

void* install_altstack(stack_t* saved) {
  void* mem = mmap(nullptr, kAltStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return nullptr;
  stack_t ss{};
  ss.ss_sp = mem;
  ss.ss_size = kAltStack;
  if (sigaltstack(&ss, saved) != 0) {
    munmap(mem, kAltStack);
    return nullptr;
  }
  return mem;
}

void remove_altstack(void* mem, const stack_t* restore) {
  if (mem == nullptr) return;
  stack_t off{};
  off.ss_flags = SS_DISABLE;
  if (restore != nullptr && restore->ss_sp != nullptr && !(restore->ss_flags & SS_DISABLE))
    sigaltstack(restore, nullptr);
  else
    sigaltstack(&off, nullptr);
  munmap(mem, kAltStack);
}

void stack_overflow(const G* g, const void* fault) {
  report(g, fault);
  telemetry_unlink_socket();
  signal(SIGABRT, SIG_DFL);
  abort();
}

std::size_t guard_budget() {
  long o = budget_override.load();
  if (o >= 0) return static_cast<std::size_t>(o);
  long max = 65530;
  if (FILE* f = fopen("/proc/sys/vm/max_map_count", "r")) {
    if (fscanf(f, "%ld", &max) != 1) max = 65530;
    fclose(f);
  }
  return max > 16384 ? static_cast<std::size_t>((max - 16384) / 2) : 0;
}

void set_guard_budget_for_test(long stacks) { budget_override.store(stacks); }

}  // namespace kgmp::internal
