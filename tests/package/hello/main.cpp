#include <kgmp/kgmp.h>

#include <atomic>
#include <cstdio>

int main() {
  std::atomic<int> n{0};
  kgmp::run([&] {
    kgmp::WaitGroup wg;
    wg.add(100);
    for (int i = 0; i < 100; i++)
      kgmp::go([&] {
        n++;
        wg.done();
      });
    wg.wait();
  });
  std::printf("hello from %d goroutines\n", n.load());
  return n.load() == 100 ? 0 : 1;
}
