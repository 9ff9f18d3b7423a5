// Command go-bench is the Go peer of kgmp-bench: it runs the same benchmark
// cases as kgmp (same work, same sizes, same metric names, same output
// format) on the Go runtime's own G/M/P scheduler, so that bench/compare/run
// can put kgmp, Go and Boost.Fiber side by side.
//
// Usage:
//
//	go-bench CASE [--procs N] [--reps R]
//
// Each case runs R repetitions (default 5) and prints exactly one final line
//
//	RESULT <case> <metric>=<median> <metric>_min=<min> <metric>_max=<max> ...
//
// preceded by informational lines starting with "#". --procs (default: the
// number of CPUs) sets GOMAXPROCS for spawn, memory and sleep; the other cases
// use the fixed P counts of their definition and ignore it. Bad arguments
// print one line to stderr and exit 2; a failed self-check exits 1.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// metric is one named figure produced by one repetition of a case.
type metric struct {
	name  string
	value float64
}

// benchCase is one benchmark. run performs a single repetition and returns
// its metrics, always with the same names in the same order.
type benchCase struct {
	name      string
	usesProcs bool // false: the case fixes its own P counts, --procs is ignored
	run       func(procs int) []metric
}

var cases = []benchCase{
	{"spawn", true, benchSpawn},
	{"yield", false, benchYield},
	{"fib", false, benchFib},
	{"memory", true, benchMemory},
	{"chan-pingpong", false, benchChanPingPong},
	{"chan-throughput", false, benchChanThroughput},
	{"select", false, benchSelect},
	{"mutex", false, benchMutex},
	{"sleep", true, benchSleep},
}

var prog = filepath.Base(os.Args[0])

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	usage := fmt.Sprintf("usage: %s CASE [--procs N] [--reps R]; cases: %s", prog, caseNames())
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Println(usage)
			return 0
		}
		fmt.Fprintln(os.Stderr, usage)
		return 2
	}
	if args[0] == "handoff" {
		fs := flag.NewFlagSet(prog, flag.ContinueOnError)
		quiet := fs.String("quiet", "hot", "quiet period: hot, compute or idle")
		trials := fs.Int("trials", 0, "trials (0: 1000 hot, 200 otherwise)")
		if err := fs.Parse(args[1:]); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", prog, err)
			return 2
		}
		return runHandoff(*quiet, *trials)
	}
	if args[0] == "preempt" {
		fs := flag.NewFlagSet(prog, flag.ContinueOnError)
		trials := fs.Int("trials", 0, "trials (0: 200)")
		if err := fs.Parse(args[1:]); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", prog, err)
			return 2
		}
		return runPreempt(*trials)
	}
	bc := findCase(args[0])
	if bc == nil {
		fmt.Fprintf(os.Stderr, "%s: unknown case %q (cases: %s)\n", prog, args[0], caseNames())
		return 2
	}

	fs := flag.NewFlagSet(prog, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported below, on one line
	procs := fs.Int("procs", runtime.NumCPU(), "GOMAXPROCS for spawn, memory and sleep")
	reps := fs.Int("reps", 5, "repetitions")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Println(usage)
			return 0
		}
		fmt.Fprintf(os.Stderr, "%s: %v\n", prog, err)
		return 2
	}
	switch {
	case fs.NArg() > 0:
		fmt.Fprintf(os.Stderr, "%s: unexpected argument %q\n", prog, fs.Arg(0))
		return 2
	case *procs < 1:
		fmt.Fprintf(os.Stderr, "%s: --procs must be >= 1, got %d\n", prog, *procs)
		return 2
	case *reps < 1:
		fmt.Fprintf(os.Stderr, "%s: --reps must be >= 1, got %d\n", prog, *reps)
		return 2
	}

	fmt.Printf("# %s %s/%s case=%s procs=%d reps=%d\n",
		runtime.Version(), runtime.GOOS, runtime.GOARCH, bc.name, *procs, *reps)
	if !bc.usesProcs && flagSet(fs, "procs") {
		fmt.Printf("# note: %s uses fixed P counts, --procs ignored\n", bc.name)
	}
	samples := make([][]metric, 0, *reps)
	for r := 1; r <= *reps; r++ {
		runtime.GC() // start every repetition from a collected heap
		ms := bc.run(*procs)
		fmt.Printf("# rep %d/%d %s\n", r, *reps, formatMetrics(ms))
		samples = append(samples, ms)
	}
	fmt.Println(resultLine(bc.name, samples))
	return 0
}

func findCase(name string) *benchCase {
	for i := range cases {
		if cases[i].name == name {
			return &cases[i]
		}
	}
	return nil
}

func caseNames() string {
	names := make([]string, len(cases))
	for i, c := range cases {
		names[i] = c.name
	}
	return strings.Join(names, " ")
}

func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// ---- output ----------------------------------------------------------------

// resultLine aggregates the repetitions into the RESULT line: for every
// metric (in the order the case reports them) its median, min and max.
func resultLine(caseName string, samples [][]metric) string {
	var b strings.Builder
	b.WriteString("RESULT " + caseName)
	for i, m := range samples[0] {
		vals := make([]float64, len(samples))
		for r, s := range samples {
			vals[r] = s[i].value
		}
		sort.Float64s(vals)
		fmt.Fprintf(&b, " %s=%s %s_min=%s %s_max=%s", m.name, num(median(vals)),
			m.name, num(vals[0]), m.name, num(vals[len(vals)-1]))
	}
	return b.String()
}

// median of an already sorted slice (mean of the middle two if even).
func median(sorted []float64) float64 {
	n := len(sorted)
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

// num formats v with at most 3 decimals and no trailing zeros.
func num(v float64) string {
	s := strconv.FormatFloat(v, 'f', 3, 64)
	s = strings.TrimRight(s, "0")
	s = strings.TrimSuffix(s, ".")
	if s == "-0" {
		s = "0"
	}
	return s
}

func formatMetrics(ms []metric) string {
	parts := make([]string, len(ms))
	for i, m := range ms {
		parts[i] = m.name + "=" + num(m.value)
	}
	return strings.Join(parts, " ")
}

// fail reports a failed self-check (wrong result) and exits 1.
func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s: "+format+"\n", append([]any{prog}, args...)...)
	os.Exit(1)
}

// ---- helpers shared by the cases -------------------------------------------

func elapsed(f func()) time.Duration {
	start := time.Now()
	f()
	return time.Since(start)
}

func nsPer(d time.Duration, n int) float64 { return float64(d.Nanoseconds()) / float64(n) }

func millis(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

// goJoin runs body(0..n-1) in n goroutines and waits for all of them.
func goJoin(n int, body func(i int)) {
	var wg sync.WaitGroup
	wg.Add(n)
	for i := 0; i < n; i++ {
		go func() {
			defer wg.Done()
			body(i)
		}()
	}
	wg.Wait()
}

// both runs a and b in two goroutines and waits for both.
func both(a, b func()) {
	goJoin(2, func(i int) {
		if i == 0 {
			a()
		} else {
			b()
		}
	})
}

// rssBytes is the resident set size from /proc/self/statm (pages × page size).
func rssBytes() int64 {
	f, err := os.Open("/proc/self/statm")
	if err != nil {
		fail("memory: %v", err)
	}
	defer f.Close()
	line, _ := bufio.NewReader(f).ReadString('\n')
	fields := strings.Fields(line)
	if len(fields) < 2 {
		fail("memory: cannot parse /proc/self/statm: %q", line)
	}
	pages, err := strconv.ParseInt(fields[1], 10, 64)
	if err != nil {
		fail("memory: cannot parse /proc/self/statm: %v", err)
	}
	return pages * int64(os.Getpagesize())
}

// percentile by nearest rank (p in (0,1]) of a sorted slice.
func percentile(sorted []time.Duration, p float64) time.Duration {
	rank := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(0, min(rank, len(sorted)-1))]
}

// ---- the cases ---------------------------------------------------------------

// spawn: the main goroutine spawns 1,000,000 goroutines that only call Done on
// one shared WaitGroup, then waits. ns_per_g = wall / 1e6. GOMAXPROCS = --procs.
func benchSpawn(procs int) []metric {
	runtime.GOMAXPROCS(procs)
	const n = 1_000_000
	var wg sync.WaitGroup
	d := elapsed(func() {
		wg.Add(n)
		for i := 0; i < n; i++ {
			go func() { wg.Done() }()
		}
		wg.Wait()
	})
	return []metric{{"ns_per_g", nsPer(d, n)}}
}

// yield: on 1 P, two goroutines each call runtime.Gosched 1,000,000 times.
// ns_per_switch = wall / 2,000,000.
func benchYield(int) []metric {
	runtime.GOMAXPROCS(1)
	const n = 1_000_000
	d := elapsed(func() {
		goJoin(2, func(int) {
			for i := 0; i < n; i++ {
				runtime.Gosched()
			}
		})
	})
	return []metric{{"ns_per_switch", nsPer(d, 2*n)}}
}

const (
	fibN      = 32
	fibWant   = 2178309
	fibCutoff = 20 // pfib(n) for n <= fibCutoff is computed serially
)

func sfib(n int) int {
	if n < 2 {
		return n
	}
	return sfib(n-1) + sfib(n-2)
}

// pfib computes pfib(n-1) in a new goroutine and pfib(n-2) inline, joined by
// a fresh WaitGroup per call.
func pfib(n int) int {
	if n <= fibCutoff {
		return sfib(n)
	}
	var wg sync.WaitGroup
	var a int
	wg.Add(1)
	go func() {
		a = pfib(n - 1)
		wg.Done()
	}()
	b := pfib(n - 2)
	wg.Wait()
	return a + b
}

// fib: parallel fib(32) on GOMAXPROCS 1 and 2, and plain serial fib(32);
// speedup = ms_1p / ms_2p. The result is checked against 2178309.
func benchFib(int) []metric {
	timeFib := func(label string, f func(int) int) float64 {
		var got int
		d := elapsed(func() { got = f(fibN) })
		if got != fibWant {
			fail("fib: %s fib(%d) = %d, want %d", label, fibN, got, fibWant)
		}
		return millis(d)
	}
	runtime.GOMAXPROCS(1)
	p1 := timeFib("1p", pfib)
	runtime.GOMAXPROCS(2)
	p2 := timeFib("2p", pfib)
	serial := timeFib("serial", sfib)
	return []metric{{"ms_1p", p1}, {"ms_2p", p2}, {"ms_serial", serial}, {"speedup", p1 / p2}}
}

// memory: 100,000 goroutines park on one gate (wg.Wait on a WaitGroup of
// count 1); a second WaitGroup tells when all have started. bytes_per_g =
// (RSS when all are parked - RSS before spawning) / 100,000. GOMAXPROCS =
// --procs.
func benchMemory(procs int) []metric {
	runtime.GOMAXPROCS(procs)
	const n = 100_000
	var started, gate, done sync.WaitGroup
	started.Add(n)
	gate.Add(1)
	done.Add(n)
	debug.FreeOSMemory()
	before := rssBytes()
	for i := 0; i < n; i++ {
		go func() {
			started.Done()
			gate.Wait()
			done.Done()
		}()
	}
	started.Wait()
	after := rssBytes()
	gate.Done()
	done.Wait()
	return []metric{{"bytes_per_g", float64(after-before) / n}}
}

// chan-pingpong: two goroutines bounce an int over two unbuffered channels,
// 1,000,000 round trips, on GOMAXPROCS 1 then 2. ns per round trip.
func benchChanPingPong(int) []metric {
	const rounds = 1_000_000
	pingPong := func(procs int) float64 {
		runtime.GOMAXPROCS(procs)
		ping, pong := make(chan int), make(chan int)
		d := elapsed(func() {
			both(func() {
				for i := 0; i < rounds; i++ {
					ping <- i
					<-pong
				}
			}, func() {
				for i := 0; i < rounds; i++ {
					pong <- <-ping
				}
			})
		})
		return nsPer(d, rounds)
	}
	return []metric{{"ns_1p", pingPong(1)}, {"ns_2p", pingPong(2)}}
}

// chan-throughput: on 2 Ps one producer sends 10,000,000 ints through a
// channel of capacity 1024 to one consumer. msgs_per_s.
func benchChanThroughput(int) []metric {
	runtime.GOMAXPROCS(2)
	const n = 10_000_000
	ch := make(chan int, 1024)
	sum := 0
	d := elapsed(func() {
		both(func() {
			for i := 0; i < n; i++ {
				ch <- i
			}
			close(ch)
		}, func() {
			for v := range ch {
				sum += v
			}
		})
	})
	if want := n * (n - 1) / 2; sum != want {
		fail("chan-throughput: received sum %d, want %d", sum, want)
	}
	return []metric{{"msgs_per_s", n / d.Seconds()}}
}

// select: on 1 P, 5,000,000 times `a <- i; select { case <-a: case <-b: }`
// with a buffered (cap 1) and b an unbuffered channel that is never ready.
// ns_per_select = wall / iterations, the send included.
func benchSelect(int) []metric {
	runtime.GOMAXPROCS(1)
	const n = 5_000_000
	a, b := make(chan int, 1), make(chan int)
	d := elapsed(func() {
		for i := 0; i < n; i++ {
			a <- i
			select {
			case <-a:
			case <-b:
			}
		}
	})
	return []metric{{"ns_per_select", nsPer(d, n)}}
}

// mutex: 8 goroutines on 2 Ps each do 1,000,000 × {Lock; counter++; Unlock}
// on one sync.Mutex. ns_per_op = wall / 8,000,000.
func benchMutex(int) []metric {
	runtime.GOMAXPROCS(2)
	const workers, iters = 8, 1_000_000
	var mu sync.Mutex
	counter := 0
	d := elapsed(func() {
		goJoin(workers, func(int) {
			for i := 0; i < iters; i++ {
				mu.Lock()
				counter++
				mu.Unlock()
			}
		})
	})
	if counter != workers*iters {
		fail("mutex: counter = %d, want %d", counter, workers*iters)
	}
	return []metric{{"ns_per_op", nsPer(d, workers*iters)}}
}

// sleep: 10,000 goroutines each sleep 1 ms 100 times (GOMAXPROCS = --procs);
// lateness = measured sleep - 1 ms. p50/p99 lateness in µs over all
// 1,000,000 sleeps, and wakeups_per_s = 1,000,000 / wall seconds.
func benchSleep(procs int) []metric {
	runtime.GOMAXPROCS(procs)
	const sleepers, rounds = 10_000, 100
	const nap = time.Millisecond
	late := make([]time.Duration, sleepers*rounds)
	d := elapsed(func() {
		goJoin(sleepers, func(g int) {
			for r := 0; r < rounds; r++ {
				t0 := time.Now()
				time.Sleep(nap)
				late[g*rounds+r] = time.Since(t0) - nap
			}
		})
	})
	sort.Slice(late, func(i, j int) bool { return late[i] < late[j] })
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	return []metric{
		{"late_p99_us", us(percentile(late, 0.99))},
		{"late_p50_us", us(percentile(late, 0.50))},
		{"wakeups_per_s", float64(len(late)) / d.Seconds()},
	}
}
