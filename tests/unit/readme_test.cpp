// readme_test.cpp — the README's example, verbatim in the body, so that it keeps compiling and
// doing what the README says.
#include <gtest/gtest.h>

#include <kgmp/kgmp.h>
using namespace std::chrono_literals;

TEST(Readme, ExampleRunsAndSums) {
  long total = -1;
  kgmp::run([&] {
    kgmp::Chan<int> jobs(64), results(0);
    kgmp::WaitGroup wg;
    for (int w = 0; w < 4; w++) {
      wg.add(1);
      kgmp::go([=, &wg]() mutable {
        for (int j : jobs) results.send(j * j);
        wg.done();
      });
    }
    kgmp::go([=]() mutable {
      for (int i = 0; i < 100; i++) jobs.send(i);
      jobs.close();
    });
    kgmp::go([&, results]() mutable { wg.wait(); results.close(); });

    auto [ctx, cancel] = kgmp::Context::with_timeout(kgmp::Context::background(), 1s);
    long sum = 0;
    for (bool open = true; open;)
      kgmp::select(
          kgmp::on_recv(results, [&](std::optional<int> v) { if (v) sum += *v; else open = false; }),
          kgmp::on_recv(ctx.done(), [&](auto) { open = false; }));
    total = sum;
    cancel();
    wg.wait();  // (not in the README: the test joins the workers so no closure outlives run())
  });
  EXPECT_EQ(total, 328350);  // sum of i*i for i < 100
}
