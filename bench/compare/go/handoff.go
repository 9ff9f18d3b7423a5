// handoff: the Go side of kgmp-bench handoff (bench/handoff_bench.cpp): how long the only P
// stays stuck behind a goroutine blocked in a raw syscall.Read on a pipe, i.e. how quickly
// sysmon retakes it. One P; goroutine A spends a quiet period, wakes B through an unbuffered
// channel and calls runtime.Gosched, so B runs next; B stores tEnter and calls syscall.Read on
// a syscall.Pipe2 fd (the netpoller is not involved); A's first act when it runs again is
// tResume; the figure is tResume - tEnter; A then writes the byte that frees B.
//
//	go-bench handoff --quiet hot|compute|idle [--trials N]
//
// prints "RESULT handoff monitor=go quiet=Q p50_us=.. p90_us=.. p99_us=.. max_us=.. trials=N".
package main

import (
	"fmt"
	"math/rand"
	"os"
	"runtime"
	"sort"
	"sync/atomic"
	"syscall"
	"time"
)

var start = time.Now()

func nowNs() int64 { return int64(time.Since(start)) } // monotonic

func computeFor(d time.Duration) {
	end := nowNs() + int64(d)
	x := 1.0
	for nowNs() < end {
		for i := 0; i < 1000; i++ {
			x *= 1.0000001
		}
	}
	if x == 0 {
		fmt.Println(x)
	}
}

func runHandoff(quiet string, trials int) int {
	if quiet != "hot" && quiet != "compute" && quiet != "idle" {
		fmt.Fprintf(os.Stderr, "%s handoff: --quiet must be hot, compute or idle\n", prog)
		return 2
	}
	if trials <= 0 {
		trials = 200
		if quiet == "hot" {
			trials = 1000
		}
	}
	runtime.GOMAXPROCS(1)
	var fds [2]int
	if err := syscall.Pipe2(fds[:], 0); err != nil {
		fmt.Fprintf(os.Stderr, "%s handoff: pipe2: %v\n", prog, err)
		return 1
	}
	wake := make(chan struct{})
	var tEnter atomic.Int64
	go func() { // B
		buf := make([]byte, 1)
		for range wake {
			tEnter.Store(nowNs())
			syscall.Read(fds[0], buf)
		}
	}()
	rng := rand.New(rand.NewSource(12345))
	us := make([]float64, 0, trials)
	one := []byte{'x'}
	for t := 0; t < trials+20; t++ { // A; the first 20 warm up
		switch quiet {
		case "compute":
			computeFor(50*time.Millisecond + time.Duration(rng.Int63n(int64(50*time.Millisecond))))
		case "idle":
			time.Sleep(100*time.Millisecond + time.Duration(rng.Int63n(int64(100*time.Millisecond))))
		}
		wake <- struct{}{}
		runtime.Gosched()
		tResume := nowNs()
		if t >= 20 {
			us = append(us, float64(tResume-tEnter.Load())/1000)
		}
		syscall.Write(fds[1], one)
	}
	close(wake)
	sort.Float64s(us)
	pct := func(q float64) float64 { return us[int(q*float64(len(us)-1))] }
	fmt.Printf("RESULT handoff monitor=go quiet=%s p50_us=%.1f p90_us=%.1f p99_us=%.1f max_us=%.1f trials=%d\n",
		quiet, pct(0.5), pct(0.9), pct(0.99), us[len(us)-1], len(us))
	return 0
}
