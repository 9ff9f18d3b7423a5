// context.h — building and switching G contexts (see context_x86_64.S).
#pragma once

#include <cstdint>
#include <cstring>

extern "C" void kgmp_ctx_switch(void** save_sp, void* new_sp);
extern "C" void kgmp_ctx_trampoline();

namespace kgmp::internal {

// Lays out, below `top` (16-byte aligned), the frame kgmp_ctx_switch pops, so that switching
// to the returned stack pointer calls entry(arg) on that stack with the ABI's alignment: the
// return slot sits just below `top`, so rsp == top (16-aligned) when the trampoline's `call`
// executes.
inline void* make_context(char* top, void (*entry)(void*), void* arg) {
  auto* sp = reinterpret_cast<std::uint64_t*>(top);
  *--sp = reinterpret_cast<std::uint64_t>(&kgmp_ctx_trampoline);  // return address
  *--sp = 0;                                           // rbp
  *--sp = 0;                                           // rbx
  *--sp = reinterpret_cast<std::uint64_t>(arg);        // r12
  *--sp = reinterpret_cast<std::uint64_t>(entry);      // r13
  *--sp = 0;                                           // r14
  *--sp = 0;                                           // r15
  *--sp = 0x037FULL << 32 | 0x1F80;                    // x87 control word | MXCSR defaults
  return sp;
}

}  // namespace kgmp::internal
