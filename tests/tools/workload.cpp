// kgmp_workload — a real kgmp process for kgmpstat's end-to-end tests: a mixed workload that
// runs until its stdin reaches EOF (the test closes the pipe), then exits 0.
//
//   CPU-bound Gs (a loop that yields now and then), Gs blocking in real, unwrapped syscalls
//   (read() on a pipe another G writes to after a nanosleep; a bare nanosleep), and channel
//   ping-pong. The G that watches stdin blocks in an unwrapped read() itself. (Under the poll
//   monitor, i.e. without root, the syscalls are marked with kgmp::blocking(): see `marked`.)
// It prints "running <pid>" once kgmp::run() has started (the stats endpoint is served from
// there).
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <string>
#include <utility>

#include "kgmp/kgmp.h"

namespace {

std::atomic<bool> stop{false};
// Under the poll monitor (not root) an unwrapped blocking syscall keeps its P: with every P so
// held the process would stall, so there every syscall goes through kgmp::blocking().
bool marked = false;

template <class F>
auto Syscall(F&& f) {
  return marked ? kgmp::blocking(std::forward<F>(f)) : f();
}

void cpu_worker() {
  volatile unsigned long x = 0;
  while (!stop.load(std::memory_order_relaxed)) {
    for (int i = 0; i < 200000; i++) x = x + static_cast<unsigned long>(i);
    kgmp::yield();
  }
}

// One pipe pair: the reader blocks in read(), the writer sleeps 2 ms in nanosleep(), writes.
void pipe_pair(kgmp::WaitGroup& wg) {
  int fds[2];
  if (pipe(fds) != 0) return;
  wg.add(2);
  kgmp::go([&wg, rd = fds[0]] {
    char c;
    while (Syscall([&] { return read(rd, &c, 1); }) == 1 && c != 'q') {
    }
    close(rd);
    wg.done();
  });
  kgmp::go([&wg, wr = fds[1]] {
    timespec ts{0, 2000000};
    while (!stop.load(std::memory_order_relaxed)) {
      Syscall([&] { return nanosleep(&ts, nullptr); });
      if (write(wr, "x", 1) != 1) break;
    }
    if (write(wr, "q", 1) != 1) {
    }
    close(wr);
    wg.done();
  });
}

void pingpong(kgmp::WaitGroup& wg) {
  wg.add(2);
  auto ping = std::make_shared<kgmp::Chan<int>>(0);
  auto pong = std::make_shared<kgmp::Chan<int>>(0);
  kgmp::go([&wg, ping, pong] {
    int n = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      ping->send(n);
      n = pong->recv().value_or(0) + 1;
    }
    ping->close();
    wg.done();
  });
  kgmp::go([&wg, ping, pong] {
    while (std::optional<int> v = ping->recv()) pong->send(*v);
    wg.done();
  });
}

}  // namespace

int main() {
  kgmp::run([] {
    marked = std::string(kgmp::monitor()) == "poll";
    std::printf("running %d\n", static_cast<int>(getpid()));
    std::fflush(stdout);
    kgmp::WaitGroup wg;
    for (int i = 0; i < 2; i++) {
      wg.add(1);
      kgmp::go([&wg] {
        cpu_worker();
        wg.done();
      });
    }
    for (int i = 0; i < 2; i++) pipe_pair(wg);
    pingpong(wg);
    wg.add(1);
    kgmp::go([&wg] {  // a bare nanosleep loop: the M blocks in the kernel every time
      timespec ts{0, 5000000};
      while (!stop.load(std::memory_order_relaxed)) Syscall([&] { return nanosleep(&ts, nullptr); });
      wg.done();
    });
    // Watch stdin with an unwrapped read(): EOF (or anything) stops everything.
    char buf[64];
    while (Syscall([&] { return read(0, buf, sizeof buf); }) > 0) {
    }
    stop.store(true);
    wg.wait();
  });
  return 0;
}
