// blocking_util.h — the shape shared by the hand-off tests of every monitor
// (tests/unit/blocking_test.cpp: poll; tests/bpf/handoff_test.cpp: trace; tests/vm: scx).
//
// With one P, G "blocker" blocks in the kernel (marked with kgmp::blocking() or not); G
// "runner" counts how often it ran while the blocker was blocked, then releases it. Without a
// hand-off the runner cannot run until the blocker returns, so `during` > 0 is the assertion.
#pragma once

#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>

#include "export_test.h"
#include "kgmp/kgmp.h"

namespace kgmp_test {

// Whether env (KGMP_REQUIRE_BPF, KGMP_REQUIRE_SCX) is "1": then a missing monitor fails the
// test instead of skipping it.
inline bool required(const char* env) {
  const char* e = std::getenv(env);
  return e != nullptr && std::string(e) == "1";
}

// Why `monitor` cannot run here ("" if it can): runs a tiny runtime with KGMP_MONITOR set to
// it, then restores KGMP_MONITOR. Caller: outside kgmp::run.
inline std::string monitor_unavailable(const char* monitor) {
  if (geteuid() != 0)
    return std::string("not root (the ") + monitor +
           " monitor needs root or CAP_BPF+CAP_PERFMON)";
  const char* old = std::getenv("KGMP_MONITOR");
  std::string saved = old != nullptr ? old : "";
  setenv("KGMP_MONITOR", monitor, 1);
  std::string mon;
  kgmp::run([&] { mon = kgmp::monitor(); }, kgmp::Config{.procs = 1});
  if (old != nullptr)
    setenv("KGMP_MONITOR", saved.c_str(), 1);
  else
    unsetenv("KGMP_MONITOR");
  return mon == monitor ? std::string()
                        : std::string("the ") + monitor +
                              " monitor did not load (see the kgmp: monitor= line)";
}

// Skips the test with the reason when `why` is not empty, or fails it if `env` requires.
#define KGMP_SKIP_UNLESS(why, env)                          \
  do {                                                      \
    const std::string kgmp_why_ = (why);                    \
    if (!kgmp_why_.empty()) {                               \
      if (::kgmp_test::required(env)) FAIL() << kgmp_why_;  \
      GTEST_SKIP() << kgmp_why_;                            \
    }                                                       \
  } while (0)

// A word a G waits on with a raw futex wait (the runtime is not told), and its release.
struct FutexGate {
  alignas(4) std::uint32_t word = 0;
  void wait() {
    while (__atomic_load_n(&word, __ATOMIC_SEQ_CST) == 0)
      syscall(SYS_futex, &word, FUTEX_WAIT, 0, nullptr, nullptr, 0);
  }
  void open() {
    __atomic_store_n(&word, 1u, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, &word, FUTEX_WAKE, 1, nullptr, nullptr, 0);
  }
};

// The shape itself, from a G of a running runtime with one P: returns how often the runner ran
// (up to `rounds` times) while block() blocked. marked: run block() inside kgmp::blocking().
// No gtest assertions, so that a forked child can use it too.
template <class Block, class Release>
long progress_in_run(bool marked, Block block, Release release, int rounds = 200) {
  std::atomic<bool> blocked{false}, finished{false};
  std::atomic<long> during{0};
  kgmp::WaitGroup wg;
  wg.add(2);
  kgmp::go([&] {
    blocked = true;
    if (marked)
      kgmp::blocking(block);
    else
      block();
    blocked = false;
    finished = true;
    wg.done();
  });
  kgmp::go([&] {
    // (If the blocker never blocks, e.g. a file on tmpfs, it finishes first: stop waiting.)
    while (!blocked && !finished) kgmp::yield();
    for (int i = 0; i < rounds && blocked; i++) {
      during++;
      kgmp::yield();
    }
    release();
    wg.done();
  });
  wg.wait();
  return during.load();
}

// Returns how often the runner ran while block() blocked; checks the monitor the runtime chose
// and the teardown accounting. marked: run block() inside kgmp::blocking().
template <class Block, class Release>
long progress_while_blocked(const char* want_monitor, bool marked, Block block,
                            Release release) {
  long during = 0;
  std::string mon;
  kgmp::run(
      [&] {
        mon = kgmp::monitor();
        during = progress_in_run(marked, block, release);
      },
      kgmp::Config{.procs = 1});
  EXPECT_EQ(mon, want_monitor);
  EXPECT_TRUE(kgmp::internal::accounted(kgmp::internal::last_run_stats()));
  return during;
}

// A safety net: if no hand-off happens the runner never runs, so a plain thread calls release
// after 20 s and the assertion on `during` fails instead of the test hanging.
class Rescue {
 public:
  explicit Rescue(std::function<void()> release) : release_(std::move(release)) {
    t_ = std::thread([this] {
      for (int i = 0; i < 2000 && !stop_; i++)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      if (!stop_) release_();
    });
  }
  ~Rescue() {
    stop_ = true;
    t_.join();
  }
  Rescue(const Rescue&) = delete;
  Rescue& operator=(const Rescue&) = delete;

 private:
  std::function<void()> release_;
  std::atomic<bool> stop_{false};
  std::thread t_;
};

// A file written, synced and evicted from the page cache, then mapped read-only with
// read-ahead off, so that each page touched is a major fault that waits for the disk.
class EvictedMapping {
 public:
  static constexpr std::size_t kBytes = 32u << 20;
  EvictedMapping() {
    char path[] = "/var/tmp/kgmp-fault-XXXXXX";
    fd_ = mkstemp(path);
    if (fd_ < 0) return;
    unlink(path);
    std::string chunk(1 << 20, 'k');
    for (std::size_t off = 0; off < kBytes; off += chunk.size())
      if (write(fd_, chunk.data(), chunk.size()) != static_cast<ssize_t>(chunk.size())) return;
    if (fsync(fd_) != 0 || posix_fadvise(fd_, 0, 0, POSIX_FADV_DONTNEED) != 0) return;
    void* m = mmap(nullptr, kBytes, PROT_READ, MAP_SHARED, fd_, 0);
    if (m == MAP_FAILED) return;
    map_ = static_cast<volatile char*>(m);
    madvise(m, kBytes, MADV_RANDOM);
  }
  ~EvictedMapping() {
    if (map_ != nullptr) munmap(const_cast<char*>(map_), kBytes);
    if (fd_ >= 0) close(fd_);
  }
  EvictedMapping(const EvictedMapping&) = delete;
  EvictedMapping& operator=(const EvictedMapping&) = delete;
  bool ok() const { return map_ != nullptr; }
  // Touches one byte of every page; returns their sum.
  long touch_all() const {
    long sum = 0;
    for (std::size_t off = 0; off < kBytes; off += 4096) sum += map_[off];
    return sum;
  }
  static long expected_sum() { return static_cast<long>('k') * static_cast<long>(kBytes / 4096); }

 private:
  int fd_ = -1;
  volatile char* map_ = nullptr;
};

}  // namespace kgmp_test
