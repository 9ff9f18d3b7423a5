// config_test.cpp — bad configuration is one clear line, never a crash.
#include <sched.h>
#include <stdlib.h>

#include <gtest/gtest.h>

#include <string>

#include "kgmp/kgmp.h"
#include "test_util.h"

namespace {

using kgmp_test::ncpus;

class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override { unsetenv("KGMP_MAXPROCS"); }
  void TearDown() override { unsetenv("KGMP_MAXPROCS"); }
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

TEST_F(ConfigTest, RunWithBadConfigExitsWithOneLine) {
  EXPECT_EXIT(
      {
        setenv("KGMP_MAXPROCS", "abc", 1);
        kgmp::run([] {});
      },
      ::testing::ExitedWithCode(2), "^kgmp: KGMP_MAXPROCS=\"abc\" is not a whole number[^\n]*\n$");
}

}  // namespace
