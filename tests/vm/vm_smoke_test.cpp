// vm_smoke_test.cpp — smoke checks for the sched_ext test VM that vm-test/run boots: the kernel
// has sched_ext and no BPF scheduler is loaded at boot (/sys/kernel/sched_ext/state reads
// "disabled"), and it has BTF (/sys/kernel/btf/vmlinux) that describes struct sched_ext_ops, so
// a sched_ext program can be loaded against it.
//
// On a kernel without sched_ext each test skips with the exact reason; with KGMP_REQUIRE_SCX=1
// in the environment (vm-test/run's guest /init sets it) the same condition fails instead.
// "disabled" is asserted only inside the VM (KGMP_VM=1): on a machine with sched_ext, another
// scheduler (scx_lavd, ...) may legitimately be loaded.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>

#include "gtest/gtest.h"

namespace {

constexpr char kState[] = "/sys/kernel/sched_ext/state";
constexpr char kBtf[] = "/sys/kernel/btf/vmlinux";

bool env_is_1(const char* name) {
  const char* e = std::getenv(name);
  return e != nullptr && std::strcmp(e, "1") == 0;
}

// Reads the whole file into out; false when it cannot be opened.
bool read_file(const char* path, std::string& out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  out.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return true;
}

#define SKIP_OR_FAIL(why)                                          \
  do {                                                             \
    if (env_is_1("KGMP_REQUIRE_SCX")) FAIL() << (why);             \
    GTEST_SKIP() << (why);                                         \
  } while (0)

const std::string kNoScx = std::string("no ") + kState +
                           ": this kernel has no sched_ext (CONFIG_SCHED_CLASS_EXT); "
                           "vm-test/run boots one";

TEST(VmSmoke, SchedExtIsDisabledAtBoot) {
  std::string state;
  if (!read_file(kState, state)) SKIP_OR_FAIL(kNoScx);
  while (!state.empty() && (state.back() == '\n' || state.back() == ' ')) state.pop_back();
  EXPECT_TRUE(state == "disabled" || state == "enabled" || state == "enabling" ||
              state == "disabling")
      << kState << " reads \"" << state << "\"";
  if (!env_is_1("KGMP_VM") && state != "disabled")
    GTEST_SKIP() << "not in the kgmp VM (KGMP_VM unset) and another sched_ext scheduler is "
                    "loaded here: "
                 << kState << " reads \"" << state << "\"";
  EXPECT_EQ(state, "disabled") << "no BPF scheduler should be loaded when the VM boots";
}

TEST(VmSmoke, KernelBtfDescribesSchedExtOps) {
  std::string btf;
  if (!read_file(kBtf, btf)) {
    SKIP_OR_FAIL(std::string("no ") + kBtf + ": this kernel has no BTF (CONFIG_DEBUG_INFO_BTF)");
  }
  // struct btf_header: u16 magic 0xeB9F, u8 version, u8 flags, u32 hdr_len, u32 type_off,
  // u32 type_len, u32 str_off, u32 str_len (offsets relative to the end of the header).
  ASSERT_GE(btf.size(), 24u) << kBtf << " is too short";
  auto u16 = [&](std::size_t at) {
    std::uint16_t v;
    std::memcpy(&v, btf.data() + at, sizeof v);
    return v;
  };
  auto u32 = [&](std::size_t at) {
    std::uint32_t v;
    std::memcpy(&v, btf.data() + at, sizeof v);
    return v;
  };
  ASSERT_EQ(u16(0), 0xeB9F) << kBtf << " does not start with the BTF magic";
  const std::uint64_t hdr_len = u32(4), str_off = u32(16), str_len = u32(20);
  ASSERT_LE(hdr_len + str_off + str_len, btf.size()) << "BTF string section out of bounds";
  std::string_view strings(btf.data() + hdr_len + str_off, str_len);
  // Names in the string section are NUL-separated; look for the exact name.
  constexpr std::string_view kName("\0sched_ext_ops\0", 15);
  const bool found = strings.find(kName) != std::string_view::npos;
  std::string state;
  if (!read_file(kState, state)) SKIP_OR_FAIL(kNoScx);  // BTF without sched_ext: no such type
  EXPECT_TRUE(found) << "the kernel's BTF has no type named sched_ext_ops";
}

}  // namespace
