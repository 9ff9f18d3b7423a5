// config_test.cpp — bad configuration is one clear line, never a crash.
#include <sched.h>
#include <stdlib.h>

#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "config.h"
#include "kgmp/kgmp.h"
#include "test_util.h"

namespace {

using kgmp_test::ncpus;

class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    unsetenv("KGMP_MAXPROCS");
    unsetenv("KGMP_PREEMPT_SLICE");
  }
  void TearDown() override {
    unsetenv("KGMP_MAXPROCS");
    unsetenv("KGMP_PREEMPT_SLICE");
  }
  static std::string error(const kgmp::Config& c = {}) {
    absl::Status s = kgmp::check_config(c);
    return s.ok() ? "" : std::string(s.message());
  }
};

TEST_F(ConfigTest, DefaultsAreValid) { EXPECT_EQ(error(), ""); }

TEST_F(ConfigTest, MaxprocsNotANumber) {
  setenv("KGMP_MAXPROCS", "abc", 1);
  EXPECT_EQ(error(), "KGMP_MAXPROCS=\"abc\" is not a whole number; set it to a number of "
                     "processors from 1 to " + std::to_string(ncpus()) +
                     " (the CPUs this process may run on), or unset it");
}

TEST_F(ConfigTest, MaxprocsZeroOrNegative) {
  for (const char* v : {"0", "-3"}) {
    setenv("KGMP_MAXPROCS", v, 1);
    EXPECT_NE(error().find("is out of range"), std::string::npos) << v;
  }
}

TEST_F(ConfigTest, MaxprocsMoreThanCpus) {
  setenv("KGMP_MAXPROCS", std::to_string(ncpus() + 1).c_str(), 1);
  EXPECT_NE(error().find("processors but this process may run on"), std::string::npos) << error();
}

TEST_F(ConfigTest, MaxprocsOverridesConfig) {
  setenv("KGMP_MAXPROCS", "1", 1);
  EXPECT_EQ(error(kgmp::Config{.procs = ncpus() + 5}), "");
  int procs = 0;
  kgmp::run([&] { procs = kgmp::procs(); });
  EXPECT_EQ(procs, 1);
}

TEST_F(ConfigTest, ProcsInConfig) {
  EXPECT_NE(error(kgmp::Config{.procs = -1}).find("Config::procs=-1 is negative"),
            std::string::npos);
  EXPECT_NE(error(kgmp::Config{.procs = ncpus() + 1}).find("Config::procs"), std::string::npos);
}

TEST_F(ConfigTest, AbsurdStackSizes) {
  EXPECT_NE(error(kgmp::Config{.stack_size = 100}).find("Config::stack_size=100 bytes is out of range"),
            std::string::npos);
  EXPECT_NE(error(kgmp::Config{.stack_size = std::size_t{1} << 40}).find("out of range"),
            std::string::npos);
}

TEST_F(ConfigTest, TooFewThreads) {
  EXPECT_NE(error(kgmp::Config{.max_threads = 0}).find("Config::max_threads=0"), std::string::npos);
}

// ---- the preemption slice ----

using std::chrono::nanoseconds;

nanoseconds resolved_slice(const kgmp::Config& c = {}) {
  auto r = kgmp::internal::resolve_config(c);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? r->cfg.preempt_slice : nanoseconds(-1);
}

TEST_F(ConfigTest, PreemptSliceDefaultsToGosForcePreemptNS) {
  EXPECT_EQ(kgmp::Config{}.preempt_slice, std::chrono::milliseconds(10));
  EXPECT_EQ(resolved_slice(), std::chrono::milliseconds(10));
  EXPECT_EQ(resolved_slice(kgmp::Config{.preempt_slice = std::chrono::microseconds(250)}),
            std::chrono::microseconds(250));
}

TEST_F(ConfigTest, PreemptSliceZeroTurnsItOff) {
  EXPECT_EQ(error(kgmp::Config{.preempt_slice = nanoseconds(0)}), "");
  EXPECT_EQ(resolved_slice(kgmp::Config{.preempt_slice = nanoseconds(0)}), nanoseconds(0));
  for (const char* v : {"0", "0ms", "0.0s"}) {
    setenv("KGMP_PREEMPT_SLICE", v, 1);
    EXPECT_EQ(error(), "") << v;
    EXPECT_EQ(resolved_slice(), nanoseconds(0)) << v;
  }
}

TEST_F(ConfigTest, PreemptSliceFromEnvironment) {
  const struct {
    const char* v;
    nanoseconds want;
  } good[] = {
      {"10ms", std::chrono::milliseconds(10)},
      {"1ms", std::chrono::milliseconds(1)},
      {"500us", std::chrono::microseconds(500)},
      {"500\u00b5s", std::chrono::microseconds(500)},  // Go's micro sign
      {"500\u03bcs", std::chrono::microseconds(500)},  // and Greek mu
      {"1.5ms", std::chrono::microseconds(1500)},
      {".5ms", std::chrono::microseconds(500)},
      {"2.ms", std::chrono::milliseconds(2)},
      {"100us", std::chrono::microseconds(100)},
      {"100000ns", std::chrono::microseconds(100)},
      {"10s", std::chrono::seconds(10)},
      {"0.25s", std::chrono::milliseconds(250)},
      {"1.0000000001ms", std::chrono::milliseconds(1)},  // Go truncates to whole ns
  };
  for (const auto& g : good) {
    setenv("KGMP_PREEMPT_SLICE", g.v, 1);
    EXPECT_EQ(error(), "") << g.v;
    EXPECT_EQ(resolved_slice(), g.want) << g.v;
  }
}

TEST_F(ConfigTest, PreemptSliceEnvironmentOverridesConfig) {
  setenv("KGMP_PREEMPT_SLICE", "2ms", 1);
  // Even a Config value that is out of range: the variable wins, as KGMP_MAXPROCS does.
  EXPECT_EQ(resolved_slice(kgmp::Config{.preempt_slice = nanoseconds(5)}),
            std::chrono::milliseconds(2));
  setenv("KGMP_PREEMPT_SLICE", "0", 1);
  EXPECT_EQ(resolved_slice(kgmp::Config{.preempt_slice = std::chrono::milliseconds(3)}),
            nanoseconds(0));
}

TEST_F(ConfigTest, PreemptSliceNotADuration) {
  for (const char* v : {"", "abc", "10", "1.5", "10 ms", " 10ms", "10ms ", "-10ms", "+10ms",
                        "10m", "1h", "10MS", "ms", ".ms", "1.2.3ms", "1ms500us", "0x10ms",
                        "1e3us", "00"}) {
    setenv("KGMP_PREEMPT_SLICE", v, 1);
    EXPECT_EQ(error(), std::string("KGMP_PREEMPT_SLICE=\"") + v +
                           "\" is not a duration; set it to a time slice from 100us to 10s such "
                           "as 10ms, 500us or 1.5ms (Go's syntax), 0 to turn preemption off, or "
                           "unset it")
        << v;
  }
}

TEST_F(ConfigTest, PreemptSliceOutOfRange) {
  for (const char* v : {"99us", "99999ns", "1ns", "10.000000001s", "11s", "1000000000000000s",
                        "99999999999999999999999ms"}) {
    setenv("KGMP_PREEMPT_SLICE", v, 1);
    EXPECT_EQ(error(), std::string("KGMP_PREEMPT_SLICE=\"") + v +
                           "\" is out of range; set it to a time slice from 100us to 10s, 0 to "
                           "turn preemption off, or unset it")
        << v;
  }
}

TEST_F(ConfigTest, PreemptSliceInConfigOutOfRange) {
  for (nanoseconds d : {nanoseconds(-1), nanoseconds(99999), nanoseconds(10000000001),
                        nanoseconds(std::chrono::hours(1))}) {
    EXPECT_EQ(error(kgmp::Config{.preempt_slice = d}),
              "Config::preempt_slice=" + std::to_string(d.count()) +
                  "ns is out of range; use 0 (no preemption) or 100 us (100000 ns) to 10 s "
                  "(10000000000 ns)")
        << d.count();
  }
  EXPECT_EQ(error(kgmp::Config{.preempt_slice = std::chrono::microseconds(100)}), "");
  EXPECT_EQ(error(kgmp::Config{.preempt_slice = std::chrono::seconds(10)}), "");
}

TEST_F(ConfigTest, RunWithBadPreemptSliceExitsWithOneLine) {
  EXPECT_EXIT(
      {
        setenv("KGMP_PREEMPT_SLICE", "fast", 1);
        kgmp::run([] {});
      },
      ::testing::ExitedWithCode(2),
      "^kgmp: KGMP_PREEMPT_SLICE=\"fast\" is not a duration[^\n]*\n$");
}

TEST_F(ConfigTest, RunWithBadConfigExitsWithOneLine) {
  EXPECT_EXIT(
      {
        setenv("KGMP_MAXPROCS", "abc", 1);
        kgmp::run([] {});
      },
      ::testing::ExitedWithCode(2), "^kgmp: KGMP_MAXPROCS=\"abc\" is not a whole number[^\n]*\n$");
}

}  // namespace
