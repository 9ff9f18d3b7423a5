// test_util.h — helpers shared by the unit tests.
#pragma once

#include <sched.h>

#include <string>

#include <gtest/gtest.h>

namespace kgmp_test {

// CPUs of this process's affinity mask: the tests run over 1..ncpus() Ps.
inline int ncpus() {
  cpu_set_t s;
  sched_getaffinity(0, sizeof s, &s);
  return CPU_COUNT(&s);
}

// Names parameterized tests P1, P2, ...
inline std::string procs_name(const ::testing::TestParamInfo<int>& info) {
  return "P" + std::to_string(info.param);
}

}  // namespace kgmp_test
