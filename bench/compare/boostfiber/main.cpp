// boostfiber-bench: the Boost.Fiber peer of kgmp-bench. It runs the same
// benchmark cases as kgmp (same work, same sizes, same metric names, same
// output format) on Boost.Fiber, so that bench/compare/run can put kgmp, Go
// and Boost.Fiber side by side.
//
// Usage: boostfiber-bench CASE [--procs N] [--reps R]
//
// Each case runs R repetitions (default 5) and prints exactly one final line
//   RESULT <case> <metric>=<median> <metric>_min=<min> <metric>_max=<max> ...
// preceded by informational lines starting with "#". Bad arguments print one
// line to stderr and exit 2; a case Boost.Fiber cannot express exits 3 after
// printing "unsupported: <why>"; a failed self-check exits 1.
//
// Scheduling: N threads (N = --procs, default: number of CPUs, or the fixed
// count of the case) share fibers with boost::fibers::algo::work_stealing;
// the main thread is one of them and runs each case from its main fiber, just
// as kgmp and Go run it from the main goroutine. work_stealing keeps
// process-wide statics, so the thread count is fixed for the life of the
// process: cases defined over two P counts (fib, chan-pingpong) report only
// the metric of the count they ran with (ms_1p or ms_2p, ns_1p or ns_2p).
// For N == 1 round_robin is used instead: work_stealing(1) never returns from
// pick_next() once its queue is empty (it looks for a victim other than
// itself among 1 thread). Fibers use the default stack allocator
// (fixedsize_stack) unless a metric says otherwise.

#include <boost/context/stack_traits.hpp>
#include <boost/fiber/all.hpp>
#include <boost/version.hpp>

#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace {

namespace fibers = boost::fibers;
using Clock = std::chrono::steady_clock;

const char* prog = "boostfiber-bench";

struct Metric {
    std::string name;
    double value;
};
using Metrics = std::vector<Metric>;

// ---- runtime ------------------------------------------------------------------

// FiberPool installs the scheduler on the calling (main) thread and on
// threads-1 worker threads; the workers park their own main fiber until the
// pool is destroyed and meanwhile run (steal) fibers.
class FiberPool {
public:
    explicit FiberPool(unsigned threads) {
        if (threads == 1) {
            fibers::use_scheduling_algorithm<fibers::algo::round_robin>();
            return;
        }
        for (unsigned i = 1; i < threads; ++i) {
            workers_.emplace_back([this, threads] {
                fibers::use_scheduling_algorithm<fibers::algo::work_stealing>(threads);
                std::unique_lock lk(mu_);
                cv_.wait(lk, [this] { return stop_; });
            });
        }
        // Blocks until all threads have registered with work_stealing.
        fibers::use_scheduling_algorithm<fibers::algo::work_stealing>(threads);
    }

    ~FiberPool() {
        {
            std::lock_guard lk(mu_);
            stop_ = true;
        }
        cv_.notify_all();
        for (auto& t : workers_) t.join();
    }

    FiberPool(const FiberPool&) = delete;
    FiberPool& operator=(const FiberPool&) = delete;

private:
    fibers::mutex mu_;
    fibers::condition_variable cv_;
    bool stop_ = false;
    std::vector<std::thread> workers_;
};

// WaitGroup is the Go sync.WaitGroup used by the cases, one-shot: the count is
// set once at construction (wg.Add(n) before spawning). done() is a single
// atomic decrement except for the last one, which wakes the waiters; wait()
// parks the calling fiber. The waiters wait for `released_` (set under the
// mutex by the last done()) rather than for the count, so that a WaitGroup
// living on a waiter's stack (fib) is never touched after wait() returns.
class WaitGroup {
public:
    explicit WaitGroup(long count) : count_(count) {}

    void done() {
        if (count_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
        std::lock_guard lk(mu_);
        released_ = true;
        cv_.notify_all();
    }

    void wait() {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [this] { return released_; });
    }

private:
    std::atomic<long> count_;
    fibers::mutex mu_;
    fibers::condition_variable cv_;
    bool released_ = false;
};

// go_join runs body(0..n-1) in n fibers (default stacks) and waits for all.
template <class Body>
void go_join(long n, Body body) {
    WaitGroup wg(n);
    for (long i = 0; i < n; ++i) {
        fibers::fiber([&wg, &body, i] {
            body(i);
            wg.done();
        }).detach();
    }
    wg.wait();
}

// both runs a and b in two fibers and waits for both.
template <class A, class B>
void both(A a, B b) {
    go_join(2, [&](long i) {
        if (i == 0)
            a();
        else
            b();
    });
}

// SharedPooledStack recycles fiber stacks through
// boost::fibers::pooled_fixedsize_stack. That allocator's boost::pool is not
// thread-safe and, under work_stealing, a fiber's stack is freed on whichever
// thread the fiber finished, so every pool call is serialised by a mutex.
// Copies share one pool. The pool grows by at most 1024 stacks at a time.
class SharedPooledStack {
public:
    SharedPooledStack() : state_(std::make_shared<State>()) {}

    boost::context::stack_context allocate() {
        std::lock_guard lk(state_->mu);
        return state_->pool.allocate();
    }

    void deallocate(boost::context::stack_context& sc) noexcept {
        std::lock_guard lk(state_->mu);
        state_->pool.deallocate(sc);
    }

private:
    struct State {
        std::mutex mu;
        fibers::pooled_fixedsize_stack pool{boost::context::stack_traits::default_size(), 32, 1024};
    };
    std::shared_ptr<State> state_;
};

// ---- helpers ------------------------------------------------------------------

[[noreturn]] void fail(const std::string& msg) {
    std::fprintf(stderr, "%s: %s\n", prog, msg.c_str());
    std::exit(1);
}

// Exits 3: this case cannot be run by Boost.Fiber here.
[[noreturn]] void unsupported(const std::string& why) {
    std::printf("unsupported: %s\n", why.c_str());
    std::exit(3);
}

template <class F>
double elapsed_ns(F&& f) {
    auto start = Clock::now();
    f();
    return std::chrono::duration<double, std::nano>(Clock::now() - start).count();
}

// rss_bytes is the resident set size from /proc/self/statm (pages × page size).
long rss_bytes() {
    std::ifstream statm("/proc/self/statm");
    long size = 0, resident = 0;
    if (!(statm >> size >> resident)) fail("memory: cannot read /proc/self/statm");
    return resident * sysconf(_SC_PAGESIZE);
}

// MemAvailable from /proc/meminfo in MB, or -1 if unknown.
long mem_available_mb() {
    std::ifstream meminfo("/proc/meminfo");
    std::string key;
    long kb = 0;
    while (meminfo >> key >> kb) {
        if (key == "MemAvailable:") return kb / 1024;
        meminfo.ignore(64, '\n');
    }
    return -1;
}

long peak_rss_mb() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024;
}

// Nearest-rank percentile (p in (0,1]) of a sorted vector.
template <class T>
T percentile(const std::vector<T>& sorted, double p) {
    long rank = static_cast<long>(std::ceil(p * static_cast<double>(sorted.size()))) - 1;
    return sorted[static_cast<size_t>(std::clamp(rank, 0L, static_cast<long>(sorted.size()) - 1))];
}

// Median of a sorted vector (mean of the middle two if even).
double median(const std::vector<double>& sorted) {
    size_t n = sorted.size();
    return n % 2 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
}

// num formats v with at most 3 decimals and no trailing zeros.
std::string num(double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.3f", v);
    std::string s = buf;
    s.erase(s.find_last_not_of('0') + 1);
    if (s.back() == '.') s.pop_back();
    if (s == "-0") s = "0";
    return s;
}

std::string per_threads(const char* prefix, unsigned threads) {
    return std::string(prefix) + std::to_string(threads) + "p";
}

// ---- the cases ------------------------------------------------------------------

// spawn: the main fiber spawns 1,000,000 fibers that only call done() on one
// shared WaitGroup, then waits. ns_per_g with default stacks, ns_per_g_pooled
// with recycled stacks (SharedPooledStack).
template <class StackAlloc>
double spawn_ns_per_fiber(StackAlloc salloc) {
    constexpr long n = 1'000'000;
    WaitGroup wg(n);
    double ns = elapsed_ns([&] {
        for (long i = 0; i < n; ++i)
            fibers::fiber(std::allocator_arg, salloc, [&wg] { wg.done(); }).detach();
        wg.wait();
    });
    return ns / n;
}

//
// The main fiber never yields while spawning and work_stealing steals one
// fiber at a time, so the other threads do not keep up and nearly all
// 1,000,000 fibers are alive at once: with 128 KiB default stacks that is
// ~12 GB resident (3 touched pages per stack), and no stack can be recycled
// before wg.wait(). The case refuses to run (exit 3) without that much
// available memory rather than push the machine into the OOM killer.
Metrics bench_spawn(unsigned) {
    constexpr long need_mb = 14 * 1024;
    if (long avail = mem_available_mb(); avail >= 0 && avail < need_mb)
        unsupported("spawn needs ~" + std::to_string(need_mb / 1024) +
                    " GB of RAM for 1,000,000 live default-stack fibers, only " + std::to_string(avail) +
                    " MB available");
    double dflt = spawn_ns_per_fiber(fibers::default_stack());
    double pooled = spawn_ns_per_fiber(SharedPooledStack());
    std::printf("# spawn: peak RSS %ld MB\n", peak_rss_mb());
    return {{"ns_per_g", dflt}, {"ns_per_g_pooled", pooled}};
}

// yield: on 1 thread, two fibers each call this_fiber::yield() 1,000,000
// times. ns_per_switch = wall / 2,000,000.
Metrics bench_yield(unsigned) {
    constexpr long n = 1'000'000;
    double ns = elapsed_ns([] {
        go_join(2, [](long) {
            for (long i = 0; i < n; ++i) boost::this_fiber::yield();
        });
    });
    return {{"ns_per_switch", ns / (2 * n)}};
}

constexpr int fib_n = 32;
constexpr long fib_want = 2178309;
constexpr int fib_cutoff = 20;  // pfib(n) for n <= fib_cutoff is computed serially

long sfib(int n) { return n < 2 ? n : sfib(n - 1) + sfib(n - 2); }

// pfib computes pfib(n-1) in a new fiber and pfib(n-2) inline, joined by a
// fresh WaitGroup per call.
long pfib(int n) {
    if (n <= fib_cutoff) return sfib(n);
    WaitGroup wg(1);
    long a = 0;
    fibers::fiber([&] {
        a = pfib(n - 1);
        wg.done();
    }).detach();
    long b = pfib(n - 2);
    wg.wait();
    return a + b;
}

// fib: parallel fib(32) on this process's thread count (ms_1p or ms_2p) and
// plain serial fib(32) (ms_serial); the run script derives the speedup.
Metrics bench_fib(unsigned threads) {
    auto time_fib = [](const char* label, long (*f)(int)) {
        long got = 0;
        double ns = elapsed_ns([&] { got = f(fib_n); });
        if (got != fib_want)
            fail(std::string("fib: ") + label + " fib(32) = " + std::to_string(got) + ", want 2178309");
        return ns / 1e6;
    };
    double parallel = time_fib("parallel", pfib);
    double serial = time_fib("serial", sfib);
    return {{per_threads("ms_", threads), parallel}, {"ms_serial", serial}};
}

// memory: 100,000 fibers park on one gate (a WaitGroup of count 1); a second
// WaitGroup tells when all have started. bytes_per_g = (RSS when all are
// parked - RSS before spawning) / 100,000.
Metrics bench_memory(unsigned) {
    constexpr long n = 100'000;
    WaitGroup started(n), gate(1), done(n);
    malloc_trim(0);  // hand freed heap back first, as Go's debug.FreeOSMemory
    long before = rss_bytes();
    for (long i = 0; i < n; ++i) {
        fibers::fiber([&] {
            started.done();
            gate.wait();
            done.done();
        }).detach();
    }
    started.wait();
    long after = rss_bytes();
    gate.done();
    done.wait();
    return {{"bytes_per_g", static_cast<double>(after - before) / n}};
}

// chan-pingpong: two fibers bounce an int over two unbuffered_channels;
// 1,000,000 round trips on 1 thread, 200,000 on more (cross-thread hand-off
// is slow). ns per round trip, as ns_1p or ns_2p.
Metrics bench_chan_pingpong(unsigned threads) {
    const long rounds = threads == 1 ? 1'000'000 : 200'000;
    fibers::unbuffered_channel<int> ping, pong;
    double ns = elapsed_ns([&] {
        both(
            [&] {
                int v = 0;
                for (long i = 0; i < rounds; ++i) {
                    ping.push(static_cast<int>(i));
                    pong.pop(v);
                }
            },
            [&] {
                int v = 0;
                for (long i = 0; i < rounds; ++i) {
                    ping.pop(v);
                    pong.push(v);
                }
            });
    });
    return {{per_threads("ns_", threads), ns / static_cast<double>(rounds)}};
}

// chan-throughput: on 2 threads one producer pushes 10,000,000 ints through a
// buffered_channel of capacity 1024 to one consumer. msgs_per_s.
Metrics bench_chan_throughput(unsigned) {
    constexpr long n = 10'000'000;
    fibers::buffered_channel<int> ch(1024);
    long long sum = 0;
    double ns = elapsed_ns([&] {
        both(
            [&] {
                for (long i = 0; i < n; ++i) ch.push(static_cast<int>(i));
                ch.close();
            },
            [&] {
                int v = 0;
                while (ch.pop(v) == fibers::channel_op_status::success) sum += v;
            });
    });
    if (sum != static_cast<long long>(n) * (n - 1) / 2)
        fail("chan-throughput: received sum " + std::to_string(sum) + " is wrong");
    return {{"msgs_per_s", n / (ns / 1e9)}};
}

// mutex: 8 fibers on 2 threads each do 1,000,000 × {lock; counter++; unlock}
// on one fibers::mutex. ns_per_op = wall / 8,000,000.
Metrics bench_mutex(unsigned) {
    constexpr long workers = 8, iters = 1'000'000;
    fibers::mutex mu;
    long counter = 0;
    double ns = elapsed_ns([&] {
        go_join(workers, [&](long) {
            for (long i = 0; i < iters; ++i) {
                mu.lock();
                ++counter;
                mu.unlock();
            }
        });
    });
    if (counter != workers * iters)
        fail("mutex: counter = " + std::to_string(counter) + ", want 8000000");
    return {{"ns_per_op", ns / (workers * iters)}};
}

// sleep: 10,000 fibers each sleep_for(1 ms) 100 times; lateness = measured
// sleep - 1 ms. p50/p99 lateness in µs over all 1,000,000 sleeps, and
// wakeups_per_s = 1,000,000 / wall seconds.
Metrics bench_sleep(unsigned) {
    constexpr long sleepers = 10'000, rounds = 100;
    constexpr auto nap = std::chrono::milliseconds(1);
    std::vector<double> late_us(sleepers * rounds);
    double ns = elapsed_ns([&] {
        go_join(sleepers, [&](long g) {
            for (long r = 0; r < rounds; ++r) {
                auto t0 = Clock::now();
                boost::this_fiber::sleep_for(nap);
                late_us[static_cast<size_t>(g * rounds + r)] =
                    std::chrono::duration<double, std::micro>(Clock::now() - t0 - nap).count();
            }
        });
    });
    std::sort(late_us.begin(), late_us.end());
    return {{"late_p99_us", percentile(late_us, 0.99)},
            {"late_p50_us", percentile(late_us, 0.50)},
            {"wakeups_per_s", static_cast<double>(late_us.size()) / (ns / 1e9)}};
}

// ---- driver ---------------------------------------------------------------------

struct Case {
    const char* name;
    unsigned fixed_threads;  // 0: --procs decides
    Metrics (*rep)(unsigned threads);
    const char* unsupported;  // non-null: exit 3 with this reason
};

const Case cases[] = {
    {"spawn", 0, bench_spawn, nullptr},
    {"yield", 1, bench_yield, nullptr},
    {"fib", 0, bench_fib, nullptr},
    {"memory", 0, bench_memory, nullptr},
    {"chan-pingpong", 0, bench_chan_pingpong, nullptr},
    {"chan-throughput", 2, bench_chan_throughput, nullptr},
    {"select", 0, nullptr, "Boost.Fiber has no select"},
    {"mutex", 2, bench_mutex, nullptr},
    {"sleep", 0, bench_sleep, nullptr},
};

std::string case_names() {
    std::string s;
    for (const Case& c : cases) {
        if (!s.empty()) s += ' ';
        s += c.name;
    }
    return s;
}

[[noreturn]] void usage_error(const std::string& msg) {
    std::fprintf(stderr, "%s: %s\n", prog, msg.c_str());
    std::exit(2);
}

// Parses a positive integer flag value, or exits 2.
long parse_count(std::string_view flag, std::string_view text) {
    long v = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec != std::errc() || end != text.data() + text.size())
        usage_error("invalid value \"" + std::string(text) + "\" for " + std::string(flag) + ": not a number");
    if (v < 1 || v > 4096)
        usage_error(std::string(flag) + " must be between 1 and 4096, got " + std::string(text));
    return v;
}

// RESULT line: for every metric (in the order the case reports them) its
// median, min and max over the repetitions.
std::string result_line(const char* name, const std::vector<Metrics>& samples) {
    std::string line = std::string("RESULT ") + name;
    for (size_t i = 0; i < samples[0].size(); ++i) {
        std::vector<double> vals;
        for (const Metrics& s : samples) vals.push_back(s[i].value);
        std::sort(vals.begin(), vals.end());
        const std::string& m = samples[0][i].name;
        line += " " + m + "=" + num(median(vals)) + " " + m + "_min=" + num(vals.front()) + " " + m +
                "_max=" + num(vals.back());
    }
    return line;
}

}  // namespace

int main(int argc, char** argv) {
    const std::string usage = std::string("usage: ") + prog + " CASE [--procs N] [--reps R]; cases: " + case_names();
    if (argc < 2 || argv[1][0] == '-') {
        if (argc >= 2 && (!std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "--help"))) {
            std::puts(usage.c_str());
            return 0;
        }
        usage_error(usage);
    }
    const Case* c = nullptr;
    for (const Case& k : cases)
        if (k.name == std::string_view(argv[1])) c = &k;
    if (!c) usage_error("unknown case \"" + std::string(argv[1]) + "\" (cases: " + case_names() + ")");

    long procs = std::max(1u, std::thread::hardware_concurrency());
    long reps = 5;
    bool procs_given = false;
    for (int i = 2; i < argc; ++i) {
        std::string_view arg = argv[i];
        std::string_view name = arg, value;
        bool has_value = false;
        if (auto eq = arg.find('='); eq != std::string_view::npos) {
            name = arg.substr(0, eq);
            value = arg.substr(eq + 1);
            has_value = true;
        }
        if (name == "-procs" || name == "-reps") name.remove_prefix(1);  // Go-style single dash
        else if (name == "--procs" || name == "--reps") name.remove_prefix(2);
        else usage_error("unexpected argument \"" + std::string(arg) + "\"");
        if (!has_value) {
            if (i + 1 >= argc) usage_error("flag needs an argument: -" + std::string(name));
            value = argv[++i];
        }
        if (name == "procs") {
            procs = parse_count("--procs", value);
            procs_given = true;
        } else {
            reps = parse_count("--reps", value);
        }
    }

    if (c->unsupported) unsupported(c->unsupported);

    const unsigned threads = c->fixed_threads ? c->fixed_threads : static_cast<unsigned>(procs);
    std::printf("# Boost.Fiber %d.%d.%d %s threads=%u case=%s reps=%ld default_stack=%zu\n", BOOST_VERSION / 100000,
                BOOST_VERSION / 100 % 1000, BOOST_VERSION % 100, threads == 1 ? "round_robin" : "work_stealing",
                threads, c->name, reps, boost::context::stack_traits::default_size());
    if (c->fixed_threads && procs_given)
        std::printf("# note: %s always runs on %u thread(s), --procs ignored\n", c->name, c->fixed_threads);
    std::fflush(stdout);

    std::vector<Metrics> samples;
    {
        FiberPool pool(threads);
        for (long r = 1; r <= reps; ++r) {
            Metrics ms = c->rep(threads);
            std::string line = "# rep " + std::to_string(r) + "/" + std::to_string(reps);
            for (const Metric& m : ms) line += " " + m.name + "=" + num(m.value);
            std::puts(line.c_str());
            std::fflush(stdout);
            samples.push_back(std::move(ms));
        }
    }
    std::puts(result_line(c->name, samples).c_str());
    return 0;
}
