// trace_bpf_test.cpp — the `trace` monitor's BPF half against the running kernel: load/attach/
// detach, the block event (who, which P, the exact lease word), the filters that must NOT send
// one, the per-M counters, Ring::wake, and the error an unprivileged process gets.
//
// Needs root and a kernel with BTF. Without them every test skips with the exact reason; with
// KGMP_REQUIRE_BPF=1 in the environment the same condition fails instead.
//
// Fake Ms are plain std::threads: registered in kgmp_tids, their slot and their P's lease set
// by the test as the runtime would, then blocked in read() on an empty pipe. Timing never
// decides a verdict beyond "the event arrives" (bounds are seconds); "no event" checks wait
// until the block was seen (m.blocks moved, or the thread sleeps in /proc), then 50 ms more.
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <bpf/bpf.h>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "kgmp_trace.h"
#include "trace_bpf.h"

namespace kgmp::internal {
namespace {

// ---- the ABI of kgmp_trace.h -----------------------------------------------------------
static_assert(sizeof(kgmp_hdr) == 128);
static_assert(offsetof(kgmp_hdr, nprocs) == 0 && offsetof(kgmp_hdr, nglobal) == 4);
static_assert(offsetof(kgmp_hdr, events) == 64 && offsetof(kgmp_hdr, dropped) == 72 &&
              offsetof(kgmp_hdr, not_m) == 80);
static_assert(sizeof(kgmp_p_shared) == 64 && sizeof(kgmp_p_shared) % 64 == 0);
static_assert(offsetof(kgmp_p_shared, lease) == 0 && offsetof(kgmp_p_shared, runq_len) == 8 &&
              offsetof(kgmp_p_shared, cpu) == 12);
static_assert(sizeof(kgmp_m_shared) == 64 && sizeof(kgmp_m_shared) % 64 == 0);
static_assert(offsetof(kgmp_m_shared, tid) == 0 && offsetof(kgmp_m_shared, p) == 4 &&
              offsetof(kgmp_m_shared, cpu) == 8 && offsetof(kgmp_m_shared, in_blocking) == 12 &&
              offsetof(kgmp_m_shared, curg) == 16 && offsetof(kgmp_m_shared, blocking_since_ns) == 24 &&
              offsetof(kgmp_m_shared, blocks) == 32 && offsetof(kgmp_m_shared, wakes) == 40 &&
              offsetof(kgmp_m_shared, last_block_ns) == 48 &&
              offsetof(kgmp_m_shared, last_wake_ns) == 56);
static_assert(offsetof(kgmp_shared, hdr) == 0 && offsetof(kgmp_shared, p) == 128 &&
              offsetof(kgmp_shared, m) == 128 + 64 * KGMP_MAX_PROCS);
static_assert(sizeof(kgmp_shared) == 128 + 64 * KGMP_MAX_PROCS + 64 * KGMP_MAX_MS);
static_assert(sizeof(kgmp_block_event) == 32 && offsetof(kgmp_block_event, kind) == 24 && offsetof(kgmp_block_event, m) == 0 &&
              offsetof(kgmp_block_event, p) == 4 && offsetof(kgmp_block_event, lease) == 8 &&
              offsetof(kgmp_block_event, ts_ns) == 16);
static_assert(KGMP_LEASE_STATE(KGMP_LEASE_MAKE(12345, 4095, KGMP_LEASE_USER)) == KGMP_LEASE_USER);
static_assert(KGMP_LEASE_HOLDER(KGMP_LEASE_MAKE(12345, 4095, KGMP_LEASE_USER)) == 4095);
static_assert(KGMP_LEASE_SEQ(KGMP_LEASE_MAKE(12345, 4095, KGMP_LEASE_USER)) == 12345);
static_assert(KGMP_MAX_MS <= 0x10000, "the lease's holder field has 16 bits");

using namespace std::chrono_literals;
constexpr auto kArrive = 10s;  // "arrives": generous, never a latency verdict

template <class T>
T load(T& x) {
  return std::atomic_ref<T>(x).load(std::memory_order_acquire);
}
template <class T>
void store(T& x, T v) {
  std::atomic_ref<T>(x).store(v, std::memory_order_release);
}

bool require_bpf() {
  const char* e = std::getenv("KGMP_REQUIRE_BPF");
  return e != nullptr && std::strcmp(e, "1") == 0;
}

// The loaded program, or why the environment cannot have it.
absl::StatusOr<std::unique_ptr<TraceBpf>> try_open(int nprocs) {
  if (geteuid() != 0) return absl::PermissionDeniedError("not root (the BPF tests need root)");
  if (access("/sys/kernel/btf/vmlinux", R_OK) != 0)
    return absl::FailedPreconditionError("no /sys/kernel/btf/vmlinux (kernel without BTF)");
  auto t = TraceBpf::open(nprocs);
  if (!t.ok())
    return absl::Status(t.status().code(), "load failed: " + std::string(t.status().message()));
  return t;
}

// Skips (or fails under KGMP_REQUIRE_BPF=1) with the reason when BPF is unavailable.
#define KGMP_OPEN_OR_SKIP(var, nprocs)                          \
  auto var##_or = try_open(nprocs);                             \
  if (!var##_or.ok()) {                                         \
    if (require_bpf()) FAIL() << var##_or.status().message();   \
    GTEST_SKIP() << var##_or.status().message();                \
  }                                                             \
  std::unique_ptr<TraceBpf> var = std::move(*var##_or)

std::uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000u + ts.tv_nsec;
}

// A fake M: a thread that waits (spinning with sched_yield, which is no block) until told to
// block in read() on its own empty pipe.
class FakeM {
 public:
  FakeM() {
    if (pipe2(pfd_, O_CLOEXEC) != 0) std::abort();
    th_ = std::thread([this] { run(); });
    while (tid_.load() == 0) std::this_thread::yield();
  }
  ~FakeM() {
    if (cmd_.load() == 1 && !done_.load()) release();
    cmd_.store(2);
    th_.join();
    close(pfd_[0]);
    close(pfd_[1]);
  }
  int tid() const { return tid_.load(); }
  void block() { cmd_.store(1); }
  void release() {
    char c = 'x';
    ASSERT_EQ(write(pfd_[1], &c, 1), 1);
  }
  bool done() const { return done_.load(); }
  std::uint64_t before_read_ns() const { return before_ns_.load(); }
  // The thread's state letter in /proc ('S' while it sleeps in read()).
  char state() const {
    std::ifstream f("/proc/self/task/" + std::to_string(tid()) + "/stat");
    std::string s;
    std::getline(f, s);
    size_t r = s.rfind(')');
    return r == std::string::npos || r + 2 >= s.size() ? '?' : s[r + 2];
  }

 private:
  void run() {
    tid_.store(static_cast<int>(syscall(SYS_gettid)));
    int c;
    while ((c = cmd_.load()) == 0) sched_yield();
    if (c != 1) return;
    before_ns_.store(now_ns());
    char buf;
    ssize_t n = read(pfd_[0], &buf, 1);
    (void)n;
    done_.store(true);
    while (cmd_.load() != 2) sched_yield();
  }

  int pfd_[2];
  std::atomic<int> tid_{0};
  std::atomic<int> cmd_{0};  // 1: block, 2: exit
  std::atomic<bool> done_{false};
  std::atomic<std::uint64_t> before_ns_{0};
  std::thread th_;
};

template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = kArrive) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// Sets up M slot `slot` holding P `p` (as the runtime would, minus registration).
void hold(kgmp_shared* s, unsigned slot, int tid, unsigned p, std::uint64_t lease,
          std::uint32_t runq_len, std::uint32_t nglobal) {
  store(s->m[slot].tid, static_cast<__u32>(tid));
  store(s->m[slot].p, static_cast<__u32>(p));
  store(s->p[p].runq_len, runq_len);
  store(s->hdr.nglobal, nglobal);
  store(s->p[p].lease, static_cast<__u64>(lease));
}

std::vector<kgmp_block_event> drain(TraceBpf::Ring& r) {
  std::vector<kgmp_block_event> out;
  int n = r.consume([&](const kgmp_block_event& ev) { out.push_back(ev); });
  EXPECT_GE(n, 0);
  return out;
}

// ---- tests ---------------------------------------------------------------------------------
TEST(TraceBpf, LoadAttachDetach) {
  KGMP_OPEN_OR_SKIP(tb, 2);
  EXPECT_TRUE(check_libbpf_version().ok()) << check_libbpf_version().message();
  unsigned major = 0, minor = 0;
  ASSERT_EQ(std::sscanf(TraceBpf::libbpf_version(), "v%u.%u", &major, &minor), 2)
      << TraceBpf::libbpf_version();
  EXPECT_TRUE(major > 1 || (major == 1 && minor >= 4)) << TraceBpf::libbpf_version();
  std::printf("libbpf %s\n", TraceBpf::libbpf_version());

  kgmp_shared* s = tb->shared();
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(load(s->hdr.nprocs), 2u);
  EXPECT_EQ(load(s->m[0].p), KGMP_NO_P);
  EXPECT_EQ(load(s->m[KGMP_MAX_MS - 1].p), KGMP_NO_P);
  // Attached: this (unregistered) thread's own switches are counted as not_m.
  const auto not_m0 = load(s->hdr.not_m);
  EXPECT_TRUE(eventually([&] {
    std::this_thread::sleep_for(1ms);
    return load(s->hdr.not_m) > not_m0;
  }));

  std::vector<unsigned> ids = tb->prog_ids();
  ASSERT_EQ(ids.size(), 2u);
  for (unsigned id : ids) {
    int fd = bpf_prog_get_fd_by_id(id);
    EXPECT_GE(fd, 0) << "program " << id << " not loaded";
    if (fd >= 0) close(fd);
  }
  tb.reset();  // detach + unload
  for (unsigned id : ids) {
    EXPECT_TRUE(eventually([&] {
      int fd = bpf_prog_get_fd_by_id(id);
      if (fd >= 0) close(fd);
      return fd < 0;
    })) << "program " << id << " still loaded after ~TraceBpf";
  }
}

TEST(TraceBpf, BlockWithWorkSendsEventOnThePsRing) {
  KGMP_OPEN_OR_SKIP(tb, 2);
  kgmp_shared* s = tb->shared();
  auto ring_or = tb->open_ring(1);
  ASSERT_TRUE(ring_or.ok()) << ring_or.status().message();
  auto& ring = *ring_or;
  auto other_ring = tb->ring(0);
  ASSERT_NE(other_ring, nullptr);

  FakeM m;
  const unsigned slot = 7, p = 1;
  const std::uint64_t lease = KGMP_LEASE_MAKE(4242, slot, KGMP_LEASE_USER);
  ASSERT_TRUE(tb->register_m(m.tid(), slot).ok());
  hold(s, slot, m.tid(), p, lease, /*runq_len=*/1, /*nglobal=*/0);
  const auto blocks0 = load(s->m[slot].blocks), wakes0 = load(s->m[slot].wakes);
  const auto events0 = load(s->hdr.events);

  m.block();
  std::vector<kgmp_block_event> evs;
  auto end = std::chrono::steady_clock::now() + kArrive;
  while (evs.empty() && std::chrono::steady_clock::now() < end) {
    int w = ring->wait(100);
    ASSERT_GE(w, 0);
    if (w == 1) evs = drain(*ring);
  }
  ASSERT_FALSE(evs.empty()) << "no block event on P 1's ring within 10 s";
  const kgmp_block_event& ev = evs.front();
  EXPECT_EQ(ev.m, slot);
  EXPECT_EQ(ev.p, p);
  EXPECT_EQ(ev.lease, lease);
  EXPECT_NE(ev.ts_ns, 0u);
  EXPECT_GT(load(s->m[slot].blocks), blocks0);
  EXPECT_NE(load(s->m[slot].last_block_ns), 0u);
  EXPECT_GE(load(s->hdr.events), events0 + 1);
  EXPECT_EQ(load(s->hdr.dropped), 0u);
  // Only P 1's ring.
  EXPECT_EQ(other_ring->wait(0), 0);

  // Reading the pipe's byte wakes it: m.wakes moves.
  m.release();
  EXPECT_TRUE(eventually([&] { return load(s->m[slot].wakes) > wakes0; }))
      << "m.wakes did not move after the pipe was written";
  EXPECT_TRUE(eventually([&] { return m.done(); }));
  EXPECT_NE(load(s->m[slot].last_wake_ns), 0u);
  EXPECT_TRUE(tb->unregister_m(m.tid()).ok());
}

// The global run queue counts as work too.
TEST(TraceBpf, GlobalQueueCountsAsWork) {
  KGMP_OPEN_OR_SKIP(tb, 1);
  kgmp_shared* s = tb->shared();
  auto ring = tb->ring(0);
  ASSERT_NE(ring, nullptr);
  FakeM m;
  const unsigned slot = 3;
  const std::uint64_t lease = KGMP_LEASE_MAKE(9, slot, KGMP_LEASE_USER);
  ASSERT_TRUE(tb->register_m(m.tid(), slot).ok());
  hold(s, slot, m.tid(), 0, lease, /*runq_len=*/0, /*nglobal=*/5);
  m.block();
  ASSERT_TRUE(eventually([&] { return ring->wait(10) == 1; }));
  auto evs = drain(*ring);
  ASSERT_FALSE(evs.empty());
  EXPECT_EQ(evs[0].m, slot);
  EXPECT_EQ(evs[0].lease, lease);
  m.release();
}

// The cases that must not send an event.
enum class Case { kLeaseRuntime, kOtherHolder, kNoWork, kNotRegistered, kNoP };

void expect_no_event(Case c) {
  KGMP_OPEN_OR_SKIP(tb, 1);
  kgmp_shared* s = tb->shared();
  auto ring = tb->ring(0);
  ASSERT_NE(ring, nullptr);
  FakeM m;
  const unsigned slot = 11;
  std::uint64_t lease = KGMP_LEASE_MAKE(77, slot, KGMP_LEASE_USER);
  std::uint32_t runq = 1;
  unsigned p = 0;
  switch (c) {
    case Case::kLeaseRuntime: lease = KGMP_LEASE_MAKE(77, slot, KGMP_LEASE_RUNTIME); break;
    case Case::kOtherHolder: lease = KGMP_LEASE_MAKE(77, slot + 1, KGMP_LEASE_USER); break;
    case Case::kNoWork: runq = 0; break;
    case Case::kNoP: p = KGMP_NO_P; break;
    case Case::kNotRegistered: break;
  }
  if (c != Case::kNotRegistered) {
    ASSERT_TRUE(tb->register_m(m.tid(), slot).ok());
  }
  hold(s, slot, m.tid(), 0, lease, runq, 0);
  if (c == Case::kNoP) store(s->m[slot].p, static_cast<__u32>(p));
  const auto blocks0 = load(s->m[slot].blocks);
  const auto events0 = load(s->hdr.events), not_m0 = load(s->hdr.not_m);

  m.block();
  if (c == Case::kNotRegistered) {
    ASSERT_TRUE(eventually([&] { return m.state() == 'S'; })) << "the thread never slept";
  } else {
    // The program saw the block (so the silence below is the filter's, not blindness).
    ASSERT_TRUE(eventually([&] { return load(s->m[slot].blocks) > blocks0; }))
        << "m.blocks did not move: the block was not seen";
  }
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(ring->wait(0), 0);
  EXPECT_TRUE(drain(*ring).empty());
  EXPECT_EQ(load(s->hdr.events), events0);
  if (c == Case::kNotRegistered) {
    EXPECT_EQ(load(s->m[slot].blocks), blocks0);
    EXPECT_GT(load(s->hdr.not_m), not_m0);
  }
  m.release();
  EXPECT_TRUE(eventually([&] { return m.done(); }));
}

TEST(TraceBpf, NoEventWhenLeaseIsRuntime) { expect_no_event(Case::kLeaseRuntime); }
TEST(TraceBpf, NoEventWhenAnotherSlotHoldsTheLease) { expect_no_event(Case::kOtherHolder); }
TEST(TraceBpf, NoEventWithoutOtherWork) { expect_no_event(Case::kNoWork); }
TEST(TraceBpf, NoEventForAnUnregisteredThread) { expect_no_event(Case::kNotRegistered); }
TEST(TraceBpf, NoEventForAnMWithoutP) { expect_no_event(Case::kNoP); }

TEST(TraceBpf, RingWake) {
  KGMP_OPEN_OR_SKIP(tb, 1);
  auto ring = tb->ring(0);
  ASSERT_NE(ring, nullptr);
  EXPECT_EQ(ring->wait(0), 0);
  ring->wake();  // before: the next wait returns 2
  EXPECT_EQ(ring->wait(1000), 2);
  EXPECT_EQ(ring->wait(0), 0);  // consumed
  std::atomic<int> got{-100};
  std::thread waiter([&] { got.store(ring->wait(-1)); });
  std::this_thread::sleep_for(20ms);
  ring->wake();  // concurrent
  waiter.join();
  EXPECT_EQ(got.load(), 2);
}

TEST(TraceBpf, OneConsumerPerRingAndArgumentChecks) {
  KGMP_OPEN_OR_SKIP(tb, 2);
  auto a = tb->open_ring(0);
  ASSERT_TRUE(a.ok()) << a.status().message();
  auto b = tb->open_ring(0);
  EXPECT_FALSE(b.ok());
  EXPECT_EQ(tb->ring(0), nullptr);
  a->reset();
  EXPECT_NE(tb->ring(0), nullptr);  // free again
  EXPECT_FALSE(tb->open_ring(2).ok());
  EXPECT_FALSE(tb->open_ring(-1).ok());
  EXPECT_FALSE(tb->register_m(1, KGMP_MAX_MS).ok());
  EXPECT_TRUE(absl::IsNotFound(tb->unregister_m(0x7ffffff0)));
  EXPECT_FALSE(TraceBpf::open(0).ok());
  EXPECT_FALSE(TraceBpf::open(KGMP_MAX_PROCS + 1).ok());
}

// An unprivileged process gets one clear line, and libbpf prints nothing.
TEST(TraceBpf, UnprivilegedLoadFailsWithOneLine) {
  if (geteuid() != 0) {
    if (require_bpf()) FAIL() << "not root (this test drops root to check the error)";
    GTEST_SKIP() << "not root (this test drops root to check the error)";
  }
  int out[2], err[2];
  ASSERT_EQ(pipe2(out, O_CLOEXEC), 0);
  ASSERT_EQ(pipe2(err, O_CLOEXEC), 0);
  fflush(nullptr);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    dup2(err[1], 2);
    std::string msg;
    if (setgroups(0, nullptr) != 0 || setgid(65534) != 0 || setuid(65534) != 0) {
      msg = "SETUP: cannot drop root";
    } else {
      auto t = TraceBpf::open(1);
      msg = t.ok() ? "LOADED" : std::string(t.status().message());
    }
    ssize_t n = write(out[1], msg.data(), msg.size());
    (void)n;
    _exit(0);
  }
  close(out[1]);
  close(err[1]);
  auto slurp = [](int fd) {
    std::string s;
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) s.append(buf, static_cast<size_t>(n));
    close(fd);
    return s;
  };
  std::string msg = slurp(out[0]);
  std::string errout = slurp(err[0]);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  std::printf("unprivileged: %s\n", msg.c_str());
  EXPECT_EQ(msg,
            "cannot load the BPF program: Operation not permitted (needs root or "
            "CAP_BPF+CAP_PERFMON)");
  EXPECT_EQ(msg.find('\n'), std::string::npos);
  EXPECT_EQ(errout, "") << "libbpf chatter reached stderr";
}

}  // namespace
}  // namespace kgmp::internal
