// export_test.h — internals exposed to the tests and benchmarks only (Go's export_test.go).
#pragma once

#include <cstddef>
#include <cstdint>

namespace kgmp::internal {

// Accounting of the last run(), taken at its teardown.
struct RunStats {
  std::uint64_t spawned = 0;    // Gs created, the main G included
  std::uint64_t exited = 0;     // Gs that returned
  std::uint64_t abandoned = 0;  // Gs alive when the main G returned
  std::size_t stacks_carved = 0;
  std::size_t stacks_guarded = 0;
  std::size_t stacks_free = 0;  // carved stacks back in the pool at the end
  std::size_t threads = 0;      // Ms created, M0 included
  std::size_t orphaned = 0;     // Ms left running G code when run() returned (run.cpp's reap)
  std::uint64_t handoffs = 0;   // Ps taken from blocked Ms
  std::uint64_t lease_violations = 0;  // with set_lease_check_for_test: two Ms in RUNTIME on a P
  // With set_lease_check_for_test: runtime exits that saw a P's published queue length 0 while
  // its ring held Gs (kgmp_p_shared::runq_len must never be stale-low).
  std::uint64_t stale_runq_len = 0;
};
RunStats last_run_stats();

// The teardown invariant: every G is accounted for (exited or abandoned when main returned, as
// Go abandons them), and every stack not back in the pool is an abandoned G's. A G that
// finished its work (its last done()) may still be abandoned on its way out: tests that expect
// "every G finished" check their own counters, and this for leaks.
inline bool accounted(const RunStats& st) {
  return st.spawned == st.exited + st.abandoned &&
         st.stacks_carved - st.stacks_free <= st.abandoned;
}

// Stacks held by Gs right now (0 outside a run).
std::size_t live_stacks_now();
// The P of the calling G and the CPU it is bound to (-1 outside a G).
int current_p();
int current_p_cpu();
// Held spares (monitor/trace.cpp): whether this run holds them, and P p's kgmp_p_shared::
// spare_held (KGMP_SPARE_*). Caller: a G of a run.
bool hold_spares_now();
std::uint32_t spare_held_now(int p);
// Checks the lease invariant at every runtime entry and exit of the next runs (costs an
// atomic exchange each): never two Ms inside the runtime on one P.
void set_lease_check_for_test(bool on);
// Overrides how many stacks may get guard pages (-1: derive from vm.max_map_count).
void set_guard_budget_for_test(long stacks);

}  // namespace kgmp::internal
