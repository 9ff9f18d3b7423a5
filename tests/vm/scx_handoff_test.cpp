// scx_handoff_test.cpp — the hand-off tests of tests/bpf/handoff_test.cpp (a G blocked in an
// unmarked pipe read, nanosleep, futex wait, major page faults, with one P; the random blocking
// stress with the lease checker) run under the scx monitor: KGMP_MONITOR=scx for the whole
// process, and they fail instead of skipping under KGMP_REQUIRE_SCX=1 (the VM's /init).
#define KGMP_HANDOFF_MONITOR "scx"
#define KGMP_HANDOFF_REQUIRE "KGMP_REQUIRE_SCX"
// Its own test names (ctest would otherwise list two TraceHandoff.* sets).
#define TraceHandoff ScxTraceHandoff
#include "../bpf/handoff_test.cpp"
