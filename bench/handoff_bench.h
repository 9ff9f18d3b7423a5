// handoff_bench.h — kgmp-bench cases about kernel-reported blocking (handoff_bench.cpp).
#pragma once

#include <string>
#include <vector>

namespace kgmp_bench {
// The monitors a --monitor value names for case `name`: a comma-separated list of entries of
// `known`, or "all" (every entry, scx only where sched_ext exists; *all set). A bad value
// prints one line and returns false (the caller exits 2).
bool parse_monitors(const char* name, const std::string& monitors,
                    const std::vector<std::string>& known, std::vector<std::string>* list,
                    bool* all);
// monitors: trace, poll, floor or all; quiet: hot, compute or idle; trials <= 0: the default
// (1000 hot, 200 otherwise). Prints RESULT handoff lines; returns an exit status.
int bench_handoff(const std::string& monitors, const std::string& quiet, int trials,
                  const std::string& raw_path);
// monitors: trace, poll or all. Prints RESULT idle lines.
int bench_idle(const std::string& monitors, int seconds);
int bench_retouch(const std::string& quiet, int quiet_ms, int rounds);
// Ping-pong of another process with the trace program detached vs attached (switch_cost.cpp).
int bench_switch_cost(int pairs, long round_trips);
}  // namespace kgmp_bench
