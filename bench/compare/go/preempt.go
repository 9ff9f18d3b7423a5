// preempt: the Go side of kgmp-bench preempt (bench/kgmp_bench.cpp): how long a goroutine
// that yields waits behind one that never makes a call. One P (GOMAXPROCS=1); per trial the
// main goroutine starts a hog that spins on atomic.LoadInt32 of a stop flag (no function call
// that could be a scheduling point: the load is an intrinsic), records t0, calls
// runtime.Gosched (the hog runs) and records t1 when it runs again, which only the preemption
// of the hog allows (sysmon's asynchronous preemption after forcePreemptNS, 10 ms, Go >=
// 1.14); the figure is t1 - t0. Then it sets stop and yields until the hog is done. The first
// 5 trials warm up. Go's slice cannot be set; it is reported as slice_ms=10.
//
//	go-bench preempt [--trials N]
//
// prints "RESULT preempt monitor=go slice_ms=10 p50_ms=.. p99_ms=.. max_ms=..".
package main

import (
	"fmt"
	"runtime"
	"sort"
	"sync/atomic"
)

const preemptWarmup = 5

func runPreempt(trials int) int {
	if trials <= 0 {
		trials = 200
	}
	runtime.GOMAXPROCS(1)
	ms := make([]float64, 0, trials)
	for t := 0; t < trials+preemptWarmup; t++ {
		var stop, started, done int32
		go func() {
			atomic.StoreInt32(&started, 1)
			for atomic.LoadInt32(&stop) == 0 {
			}
			atomic.StoreInt32(&done, 1)
		}()
		t0 := nowNs()
		for {
			runtime.Gosched() // again if the hog has not run yet
			if atomic.LoadInt32(&started) != 0 {
				break
			}
		}
		t1 := nowNs()
		if t >= preemptWarmup {
			ms = append(ms, float64(t1-t0)/1e6)
		}
		atomic.StoreInt32(&stop, 1)
		for atomic.LoadInt32(&done) == 0 {
			runtime.Gosched()
		}
	}
	sort.Float64s(ms)
	pct := func(q float64) float64 { return ms[int(q*float64(len(ms)-1))] }
	fmt.Printf("RESULT preempt monitor=go slice_ms=10 p50_ms=%.3f p99_ms=%.3f max_ms=%.3f\n",
		pct(0.5), pct(0.99), ms[len(ms)-1])
	return 0
}
