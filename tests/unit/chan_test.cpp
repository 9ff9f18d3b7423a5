// chan_test.cpp — channels and select with Go's semantics, over 1..N Ps: unbuffered hand-off,
// buffering, close and drain, move-only payloads, panics with Go's messages, select fairness,
// and classic Go programs (prime sieve, pipeline) as stress with invariants.
#include <sched.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "export_test.h"
#include "kgmp/kgmp.h"
#include "test_util.h"

namespace {

using kgmp_test::ncpus;

class Chans : public ::testing::TestWithParam<int> {
 protected:
  kgmp::Config cfg() { return kgmp::Config{.procs = GetParam()}; }
  bool expect_clean_ = true;  // false: the test leaves Gs blocked on purpose (as Go programs do)
  void TearDown() override {
    if (!expect_clean_) return;
    auto st = kgmp::internal::last_run_stats();
    EXPECT_TRUE(kgmp::internal::accounted(st))
        << "spawned " << st.spawned << " exited " << st.exited << " abandoned " << st.abandoned;
    EXPECT_LE(st.abandoned, 2u) << "only Gs on their way out may be abandoned";
  }
};

TEST_P(Chans, UnbufferedSendCompletesOnlyWhenReceived) {
  std::atomic<int> stage{0};
  kgmp::run(
      [&] {
        kgmp::Chan<int> c(0);
        kgmp::WaitGroup wg;
        wg.add(1);
        kgmp::go([&] {
          c.send(1);
          stage = 2;  // only after the receiver took the value
          wg.done();
        });
        for (int i = 0; i < 100; i++) kgmp::yield();
        EXPECT_EQ(stage.load(), 0) << "send returned without a receiver";
        stage = 1;
        EXPECT_EQ(c.recv(), 1);
        wg.wait();
        EXPECT_EQ(stage.load(), 2);
      },
      cfg());
}

TEST_P(Chans, BufferedFifoLenCap) {
  kgmp::run(
      [&] {
        kgmp::Chan<int> c(3);
        EXPECT_EQ(c.cap(), 3u);
        EXPECT_TRUE(c.try_send(1));
        EXPECT_TRUE(c.try_send(2));
        EXPECT_TRUE(c.try_send(3));
        EXPECT_FALSE(c.try_send(4)) << "full";
        EXPECT_EQ(c.len(), 3u);
        EXPECT_EQ(c.recv(), 1);
        EXPECT_EQ(c.recv(), 2);
        EXPECT_EQ(c.len(), 1u);
        auto r = c.try_recv();
        EXPECT_EQ(r.status, kgmp::RecvStatus::kOk);
        EXPECT_EQ(r.value, 3);
        EXPECT_EQ(c.try_recv().status, kgmp::RecvStatus::kWouldBlock);
      },
      cfg());
}

TEST_P(Chans, CloseDrainsBufferThenReportsClosed) {
  kgmp::run(
      [&] {
        kgmp::Chan<std::string> c(4);
        c.send("a");
        c.send("b");
        c.close();
        EXPECT_EQ(c.recv(), "a");
        EXPECT_EQ(c.try_recv().value, "b");
        EXPECT_EQ(c.recv(), std::nullopt);
        EXPECT_EQ(c.try_recv().status, kgmp::RecvStatus::kClosed);
      },
      cfg());
}

TEST_P(Chans, CloseWakesEveryReceiver) {
  std::atomic<int> closed_seen{0};
  kgmp::run(
      [&] {
        kgmp::Chan<int> c(0);
        kgmp::WaitGroup wg;
        wg.add(10);
        for (int i = 0; i < 10; i++)
          kgmp::go([&] {
            if (!c.recv()) closed_seen++;
            wg.done();
          });
        for (int i = 0; i < 50; i++) kgmp::yield();
        c.close();
        wg.wait();
      },
      cfg());
  EXPECT_EQ(closed_seen.load(), 10);
}

TEST_P(Chans, MoveOnlyPayloads) {
  kgmp::run(
      [&] {
        kgmp::Chan<std::unique_ptr<int>> c(2), u(0);
        c.send(std::make_unique<int>(5));
        auto p = std::make_unique<int>(6);
        EXPECT_TRUE(c.try_send(std::move(p)));
        EXPECT_EQ(p, nullptr);
        EXPECT_EQ(**c.recv(), 5);
        EXPECT_EQ(**c.recv(), 6);
        kgmp::WaitGroup wg;  // join every G: one abandoned when main returns would leak its closure
        wg.add(1);
        kgmp::go([u, &wg]() mutable {
          u.send(std::make_unique<int>(7));
          wg.done();
        });
        EXPECT_EQ(**u.recv(), 7);
        wg.wait();
        c.send(std::make_unique<int>(8));  // left in the buffer: destroyed with the channel
      },
      cfg());
}

TEST_P(Chans, RangeUntilClosed) {
  long sum = 0;
  kgmp::run(
      [&] {
        kgmp::Chan<int> c(16);
        kgmp::WaitGroup wg;
        wg.add(1);
        kgmp::go([c, &wg]() mutable {
          for (int i = 1; i <= 1000; i++) c.send(i);
          c.close();
          wg.done();
        });
        for (int v : c) sum += v;
        wg.wait();
      },
      cfg());
  EXPECT_EQ(sum, 500500);
}

// Many senders and receivers: no message lost, duplicated, or reordered per sender.
TEST_P(Chans, StressNoLossNoDupPerSenderOrder) {
  constexpr int kSenders = 8, kReceivers = 8, kPer = 20000;
  for (std::size_t cap : {std::size_t{0}, std::size_t{1}, std::size_t{64}}) {
    std::vector<std::atomic<int>> got(kSenders * kPer);
    std::atomic<int> order_errors{0};
    kgmp::run(
        [&] {
          kgmp::Chan<std::pair<int, int>> c(cap);
          kgmp::WaitGroup senders, receivers;
          senders.add(kSenders);
          receivers.add(kReceivers);
          for (int s = 0; s < kSenders; s++)
            kgmp::go([&, s] {
              for (int i = 0; i < kPer; i++) c.send(std::pair{s, i});
              senders.done();
            });
          for (int r = 0; r < kReceivers; r++)
            kgmp::go([&] {
              std::vector<int> last(kSenders, -1);
              while (auto v = c.recv()) {
                got[v->first * kPer + v->second]++;
                if (v->second <= last[v->first]) order_errors++;
                last[v->first] = v->second;
              }
              receivers.done();
            });
          senders.wait();
          c.close();
          receivers.wait();
        },
        cfg());
    for (auto& g : got) ASSERT_EQ(g.load(), 1) << "cap " << cap;
    EXPECT_EQ(order_errors.load(), 0) << "cap " << cap;
  }
}

// The prime sieve of chained goroutines (Go's classic), shut down cleanly: closing `quit`
// stops the generator, which closes its channel, and each filter closes its own in turn.
TEST_P(Chans, PrimeSieve) {
  std::vector<int> primes;
  kgmp::run(
      [&] {
        kgmp::Chan<int> src(0), quit(0);
        kgmp::WaitGroup all;
        all.add(1);
        kgmp::go([&, src, quit]() mutable {
          for (int i = 2;; i++) {
            bool stop = false;
            kgmp::select(kgmp::on_send(src, i), kgmp::on_recv(quit, [&](auto) { stop = true; }));
            if (stop) break;
          }
          src.close();
          all.done();
        });
        kgmp::Chan<int> ch = src;
        for (int i = 0; i < 100; i++) {
          int p = *ch.recv();
          primes.push_back(p);
          kgmp::Chan<int> next(0);
          all.add(1);
          kgmp::go([&, in = ch, out = next, p]() mutable {
            for (int v : in)
              if (v % p != 0) out.send(v);
            out.close();
            all.done();
          });
          ch = next;
        }
        quit.close();
        for (int v : ch) (void)v;  // drain the last filter until the chain has closed
        all.wait();
      },
      cfg());
  ASSERT_EQ(primes.size(), 100u);
  EXPECT_EQ(primes[0], 2);
  EXPECT_EQ(primes[99], 541);
  for (int p : primes)
    for (int d = 2; d * d <= p; d++) ASSERT_NE(p % d, 0) << p;
}

// A pipeline: generate -> square (4 workers, fan-out) -> sum (fan-in).
TEST_P(Chans, PipelineFanOutFanIn) {
  long total = 0;
  kgmp::run(
      [&] {
        kgmp::Chan<long> nums(8), squares(8);
        kgmp::WaitGroup gen;
        gen.add(1);
        kgmp::go([nums, &gen]() mutable {
          for (long i = 1; i <= 10000; i++) nums.send(i);
          nums.close();
          gen.done();
        });
        kgmp::WaitGroup workers;
        workers.add(4);
        for (int w = 0; w < 4; w++)
          kgmp::go([&, nums, squares]() mutable {
            for (long v : nums) squares.send(v * v);
            workers.done();
          });
        kgmp::WaitGroup closer;
        closer.add(1);
        kgmp::go([&, squares]() mutable {
          workers.wait();
          squares.close();
          closer.done();
        });
        for (long v : squares) total += v;
        closer.wait();
        gen.wait();
      },
      cfg());
  EXPECT_EQ(total, 10000L * 10001 * 20001 / 6);
}

TEST_P(Chans, SelectPicksTheReadyCase) {
  kgmp::run(
      [&] {
        kgmp::Chan<int> a(1), b(1), nil;
        b.send(9);
        int got = 0;
        int idx = kgmp::select(kgmp::on_recv(a, [&](std::optional<int> v) { got = *v; }),
                               kgmp::on_recv(b, [&](std::optional<int> v) { got = *v * 10; }),
                               kgmp::on_recv(nil));
        EXPECT_EQ(idx, 1);
        EXPECT_EQ(got, 90);
        idx = kgmp::select(kgmp::on_recv(a), kgmp::otherwise());
        EXPECT_EQ(idx, 1) << "default is the last argument";
        idx = kgmp::select(kgmp::on_send(a, 3), kgmp::otherwise());
        EXPECT_EQ(idx, 0);
        EXPECT_EQ(a.recv(), 3);
      },
      cfg());
}

TEST_P(Chans, SelectBlocksUntilOneCaseProceeds) {
  kgmp::run(
      [&] {
        kgmp::Chan<int> a(0), b(0), out(0);
        kgmp::WaitGroup wg;
        wg.add(2);
        kgmp::go([&] {
          EXPECT_EQ(out.recv(), 5);
          wg.done();
        });
        kgmp::go([&] {
          b.send(7);
          wg.done();
        });
        int sum = 0;
        for (int round = 0; round < 2; round++)
          kgmp::select(kgmp::on_recv(a, [&](std::optional<int> v) { sum += *v; }),
                       kgmp::on_recv(b, [&](std::optional<int> v) { sum += *v; }),
                       kgmp::on_send(out, 5, [&] { sum += 100; }));
        EXPECT_EQ(sum, 107);
        a.close();
        bool closed = false;
        kgmp::select(kgmp::on_recv(a, [&](std::optional<int> v) { closed = !v; }),
                     kgmp::on_recv(b));
        EXPECT_TRUE(closed) << "a closed channel is ready";
        wg.wait();
      },
      cfg());
}

// Each ready case is chosen 1/n of the time, within 5 standard deviations.
TEST_P(Chans, SelectFairness) {
  constexpr int kCases = 4, kRounds = 40000;
  std::vector<int> hits(kCases);
  kgmp::run(
      [&] {
        std::vector<kgmp::Chan<int>> c;
        for (int i = 0; i < kCases; i++) {
          c.emplace_back(1);
          c[i].close();  // always ready
        }
        for (int r = 0; r < kRounds; r++) {
          int i = kgmp::select(kgmp::on_recv(c[0]), kgmp::on_recv(c[1]), kgmp::on_recv(c[2]),
                               kgmp::on_recv(c[3]));
          hits[i]++;
        }
      },
      cfg());
  double mean = static_cast<double>(kRounds) / kCases;
  double sd = std::sqrt(kRounds * (1.0 / kCases) * (1 - 1.0 / kCases));
  for (int i = 0; i < kCases; i++) EXPECT_NEAR(hits[i], mean, 5 * sd) << "case " << i;
}

// Concurrent selects over the same channels, with concurrent closes: every value sent is
// received exactly once, and every select returns.
TEST_P(Chans, SelectStressWithCloses) {
  constexpr int kRounds = 2000;
  std::atomic<long> received{0}, sent{0};
  kgmp::run(
      [&] {
        for (int round = 0; round < kRounds / 100; round++) {
          kgmp::Chan<int> a(0), b(2), quit(0);
          kgmp::WaitGroup wg;
          wg.add(4);
          for (int s = 0; s < 2; s++)
            kgmp::go([&, a, b, quit]() mutable {
              for (int i = 0; i < 100; i++) {
                bool stop = false;
                kgmp::select(kgmp::on_send(a, 1, [&] { sent++; }),
                             kgmp::on_send(b, 1, [&] { sent++; }),
                             kgmp::on_recv(quit, [&](std::optional<int>) { stop = true; }));
                if (stop) break;
              }
              wg.done();
            });
          for (int r = 0; r < 2; r++)
            kgmp::go([&, a, b]() mutable {
              int n = 0;
              while (n < 100) {
                kgmp::select(kgmp::on_recv(a, [&](std::optional<int> v) { received += *v; }),
                             kgmp::on_recv(b, [&](std::optional<int> v) { received += *v; }));
                n++;
              }
              wg.done();
            });
          wg.wait();
          quit.close();
          while (auto v = b.try_recv()) received += *v.value;
        }
      },
      cfg());
  EXPECT_EQ(received.load(), sent.load());
}

INSTANTIATE_TEST_SUITE_P(Procs, Chans, ::testing::Range(1, ncpus() + 1),
                         kgmp_test::procs_name);

TEST(ChanPanicDeathTest, SendOnClosed) {
  EXPECT_EXIT(kgmp::run([] {
                kgmp::Chan<int> c(1);
                c.close();
                c.send(1);
              }),
              ::testing::ExitedWithCode(2), "panic: send on closed channel");
}
TEST(ChanPanicDeathTest, CloseOfClosed) {
  EXPECT_EXIT(kgmp::run([] {
                kgmp::Chan<int> c(1);
                c.close();
                c.close();
              }),
              ::testing::ExitedWithCode(2), "panic: close of closed channel");
}
TEST(ChanPanicDeathTest, CloseOfNil) {
  EXPECT_EXIT(kgmp::run([] {
                kgmp::Chan<int> c;
                c.close();
              }),
              ::testing::ExitedWithCode(2), "panic: close of nil channel");
}
TEST(ChanPanicDeathTest, BlockedSenderPanicsWhenClosed) {
  EXPECT_EXIT(kgmp::run([] {
                kgmp::Chan<int> c(0);
                kgmp::go([c]() mutable {
                  kgmp::yield();
                  c.close();
                });
                c.send(1);
              }),
              ::testing::ExitedWithCode(2), "panic: send on closed channel");
}

}  // namespace
