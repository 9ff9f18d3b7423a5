// runq_test.cpp — the local run queue's properties: FIFO with runnext first, steal takes half
// rounded up (Go's n - n/2), overflow hands out the oldest half, and nothing is lost or
// duplicated under concurrent put/get/steal.
#include "runq.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

namespace kgmp::internal {
namespace {

struct Item {
  int id;
};
using Q = RunQueue<Item>;

TEST(RunQueue, FifoAndRunnextFirst) {
  Q q;
  std::vector<Item> items(10);
  for (int i = 0; i < 10; i++) items[i].id = i;
  for (int i = 0; i < 5; i++) ASSERT_TRUE(q.put(&items[i]));
  EXPECT_EQ(q.put_next(&items[5]), nullptr);
  Item* kicked = q.put_next(&items[6]);  // 5 is displaced
  ASSERT_EQ(kicked, &items[5]);
  ASSERT_TRUE(q.put(kicked));
  bool next = false;
  EXPECT_EQ(q.get(&next), &items[6]);
  EXPECT_TRUE(next);
  for (int want : {0, 1, 2, 3, 4, 5}) {
    EXPECT_EQ(q.get(&next), &items[want]);
    EXPECT_FALSE(next);
  }
  EXPECT_EQ(q.get(), nullptr);
  EXPECT_TRUE(q.empty());
}

TEST(RunQueue, StealTakesHalfRoundedUp) {
  std::vector<Item> items(Q::kSize);
  for (std::uint32_t n = 0; n <= Q::kSize; n++) {
    Q q;
    for (std::uint32_t i = 0; i < n; i++) ASSERT_TRUE(q.put(&items[i]));
    Item* out[Q::kSize / 2];
    std::uint32_t got = q.grab(out, false);
    ASSERT_EQ(got, n - n / 2) << "n=" << n;
    for (std::uint32_t i = 0; i < got; i++) ASSERT_EQ(out[i], &items[i]) << "oldest first";
    ASSERT_EQ(q.size(), n / 2);
  }
}

TEST(RunQueue, StealTakesRunnextOnlyWhenAskedAndRingEmpty) {
  Q q;
  Item a{1}, b{2};
  q.put_next(&a);
  Item* out[Q::kSize / 2];
  EXPECT_EQ(q.grab(out, false), 0u);
  ASSERT_EQ(q.grab(out, true), 1u);
  EXPECT_EQ(out[0], &a);
  EXPECT_TRUE(q.empty());
  q.put_next(&a);
  q.put(&b);
  ASSERT_EQ(q.grab(out, true), 1u);  // the ring first
  EXPECT_EQ(out[0], &b);
  EXPECT_EQ(q.get(), &a);
}

TEST(RunQueue, OverflowGivesOldestHalf) {
  Q q;
  std::vector<Item> items(Q::kSize + 1);
  for (std::uint32_t i = 0; i < Q::kSize; i++) ASSERT_TRUE(q.put(&items[i]));
  EXPECT_FALSE(q.put(&items[Q::kSize]));
  Item* out[Q::kSize / 2 + 1];
  ASSERT_EQ(q.grab_for_overflow(out), Q::kSize / 2);
  for (std::uint32_t i = 0; i < Q::kSize / 2; i++) EXPECT_EQ(out[i], &items[i]);
  EXPECT_TRUE(q.put(&items[Q::kSize]));
  EXPECT_EQ(q.size(), Q::kSize / 2 + 1);
}

// One owner puts (sometimes into runnext) and gets; two thieves steal into their own queues
// and drain them. Every item must come out exactly once.
TEST(RunQueue, ConcurrentPutGetStealLosesNothing) {
  constexpr int kItems = 400000;
  std::vector<Item> items(kItems);
  std::vector<std::atomic<int>> seen(kItems);
  for (int i = 0; i < kItems; i++) items[i].id = i;
  Q q;
  std::atomic<bool> done{false};
  std::atomic<long> taken{0};
  auto take = [&](Item* it) {
    seen[it->id].fetch_add(1, std::memory_order_relaxed);
    taken.fetch_add(1, std::memory_order_relaxed);
  };
  auto thief = [&] {
    Q mine;
    Item* out[Q::kSize / 2];
    while (!done.load() || !q.empty()) {
      std::uint32_t n = q.grab(out, true);
      if (n > 0) mine.put_batch(out, n);
      while (Item* it = mine.get()) take(it);
    }
  };
  std::thread t1(thief), t2(thief);
  for (int i = 0; i < kItems; i++) {
    Item* it = &items[i];
    if (i % 7 == 0) it = q.put_next(it);
    while (it != nullptr && !q.put(it)) {
      if (Item* g = q.get()) take(g);
    }
    if (i % 3 == 0)
      if (Item* g = q.get()) take(g);
  }
  while (Item* g = q.get()) take(g);
  done = true;
  t1.join();
  t2.join();
  while (Item* g = q.get()) take(g);
  EXPECT_EQ(taken.load(), kItems);
  for (int i = 0; i < kItems; i++) ASSERT_EQ(seen[i].load(), 1) << "item " << i;
}

}  // namespace
}  // namespace kgmp::internal
