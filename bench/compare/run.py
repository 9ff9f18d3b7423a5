#!/usr/bin/env python3
"""Run kgmp-bench and its Go and Boost.Fiber peers side by side; write RESULTS.md.

Started through the bench/compare/run wrapper. For every case, the three
implementations run N times each, interleaved (kgmp, Go, Boost.Fiber, kgmp,
Go, Boost.Fiber, ...) so that machine noise hits all of them alike; every
invocation is `BINARY CASE [--procs N] --reps 1` and ends with one line

    RESULT <case> <metric>=<median> <metric>_min=<min> <metric>_max=<max> ...

Per metric, the table shows median [min-max] over the N invocations and the
kgmp/peer ratios of the medians. A case an implementation does not have (exit 3
with "unsupported: <why>", or exit 2, e.g. an unknown case) or that fails shows
"n/a" with the reason as a note; it never aborts the run.
"""

import argparse
import datetime
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

CASES = ["spawn", "yield", "fib", "memory", "chan-pingpong", "chan-throughput",
         "select", "mutex", "sleep"]
# Cases with a section of their own (one invocation prints a RESULT line per monitor).
SECTION_CASES = ["preempt"]

DESCRIPTIONS = {
    "spawn": "The main goroutine spawns 1,000,000 goroutines that each only call "
             "`Done()` on one shared WaitGroup, then waits; `ns_per_g` = wall / 1e6. "
             "All CPUs. Boost.Fiber also reports `ns_per_g_pooled` "
             "(`pooled_fixedsize_stack`).",
    "yield": "1 P: two goroutines each yield 1,000,000 times; "
             "`ns_per_switch` = wall / 2,000,000.",
    "fib": "Parallel fib(32), a goroutine per call above n = 20 joined by a fresh "
           "WaitGroup, on 1 and 2 Ps, and serial fib(32); `speedup` = ms_1p / ms_2p.",
    "memory": "100,000 goroutines parked on one gate; `bytes_per_g` = RSS growth / "
              "100,000. All CPUs.",
    "chan-pingpong": "Two goroutines bounce an int over two unbuffered channels, "
                     "1,000,000 round trips; ns per round trip on 1 and 2 Ps.",
    "chan-throughput": "2 Ps: one producer sends 10,000,000 ints through a channel "
                       "of capacity 1024 to one consumer; `msgs_per_s`.",
    "select": "1 P: 5,000,000 × `a <- i; select { case <-a: case <-b: }` "
              "(b never ready); `ns_per_select`, the send included.",
    "mutex": "8 goroutines on 2 Ps each do 1,000,000 × lock/counter++/unlock; "
             "`ns_per_op` = wall / 8,000,000.",
    "sleep": "10,000 goroutines each sleep 1 ms 100 times, all CPUs; lateness "
             "percentiles over the 1,000,000 sleeps, and wakeups per second.",
}

# Boost.Fiber's work_stealing fixes its thread count per process, so the cases
# defined over two P counts run its binary once per count.
BOOST_PROCS = {"fib": (1, 2), "chan-pingpong": (1, 2)}

CASE_NOTES = {
    "spawn": "Boost.Fiber: the main fiber never yields while spawning and work_stealing "
             "steals one fiber at a time, so nearly all 1,000,000 fibers are alive at once "
             "(about 12 GB resident with the 128 KiB default stacks) and pooled stacks "
             "cannot be recycled before the wait; boostfiber-bench reports n/a instead of "
             "running with less than 14 GB of available memory.",
    "fib": "Boost.Fiber runs in two processes (`--procs 1` → ms_1p, `--procs 2` → "
           "ms_2p); its ms_serial pools the samples of both and its speedup is "
           "ms_1p / ms_2p of the medians.",
    "chan-pingpong": "Boost.Fiber runs in two processes (`--procs 1` → ns_1p with "
                     "1,000,000 round trips, `--procs 2` → ns_2p with 200,000).",
}

# Metrics derived from the medians when an implementation does not report
# them itself: name -> (numerator, denominator).
DERIVED = {"fib": {"speedup": ("ms_1p", "ms_2p")}}


@dataclass
class Impl:
    key: str    # --only name
    title: str  # column title
    binary: Path


@dataclass
class Outcome:
    """Everything one implementation produced for one case."""
    samples: dict = field(default_factory=dict)  # metric -> [values], in report order
    runs_ok: int = 0
    failures: list = field(default_factory=list)  # why invocations did not give a RESULT
    na_reason: str = ""  # set once the case is known not to run (unsupported, ...); stops it


def higher_is_better(metric):
    return metric.endswith("_per_s") or metric == "speedup"


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="bench/compare/run",
        description="Run kgmp-bench, the Go and the Boost.Fiber peers side by side "
                    "and write a Markdown comparison.")
    p.add_argument("--runs", type=int, default=5,
                   help="invocations per case and implementation (default 5)")
    p.add_argument("--build-dir", default=None,
                   help="CMake build directory holding bench/kgmp-bench and "
                        "bench/compare/boostfiber/boostfiber-bench "
                        "(default: build/release in the repository)")
    p.add_argument("--cases", default=" ".join(CASES + SECTION_CASES),
                   help='cases to run, space or comma separated (default: all: "%(default)s")')
    p.add_argument("--out", default=None,
                   help="Markdown file to write (default: bench/RESULTS.md in the repository)")
    p.add_argument("--only", default="kgmp,go,boost",
                   help="implementations to run, comma separated subset of kgmp,go,boost")
    p.add_argument("--handoff", default="hot compute idle",
                   help="quiet modes of the handoff comparison (kgmp trace/poll/floor vs Go), "
                        "and the idle cost; '' to skip")
    p.add_argument("--timeout", type=int, default=300,
                   help="seconds before one invocation is killed (default 300)")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be >= 1")
    args.cases = [c for c in re.split(r"[\s,]+", args.cases) if c]
    unknown = [c for c in args.cases if c not in CASES + SECTION_CASES]
    if unknown or not args.cases:
        p.error(f"unknown case(s) {' '.join(unknown)}; known: {' '.join(CASES + SECTION_CASES)}")
    args.table_cases = [c for c in args.cases if c in CASES]
    args.only = [k for k in args.only.split(",") if k]
    if not args.only or any(k not in ("kgmp", "go", "boost") for k in args.only):
        p.error("--only takes a comma separated subset of kgmp,go,boost")
    args.build_dir = Path(args.build_dir).resolve() if args.build_dir else REPO / "build" / "release"
    args.out = Path(args.out).resolve() if args.out else REPO / "bench" / "RESULTS.md"
    return args


def shown(path):
    """A path for messages and the report: relative to the repository if inside it."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def find_go():
    """$GO, else go on PATH, else the newest Go of Debian's versioned golang-1.NN-go
    packages (installed without a PATH entry), located through dpkg."""
    if os.environ.get("GO"):
        return os.environ["GO"]
    if shutil.which("go"):
        return shutil.which("go")
    try:
        listed = subprocess.run(["dpkg-query", "-W", "-f", "${Status} ${Package}\n", "golang-1.*-go"],
                                capture_output=True, text=True).stdout
    except OSError:
        return None
    packages = [l.split()[-1] for l in listed.splitlines() if l.startswith("install ok installed")]
    packages.sort(key=lambda p: [int(x) for x in re.findall(r"\d+", p)], reverse=True)
    for package in packages:
        files = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True).stdout.split()
        for f in files:
            if f.endswith("/bin/go") and os.access(f, os.X_OK):
                return f
    return None


def build_go(build_dir):
    """Builds the Go peer into BUILD_DIR/bench/compare/go; returns (binary, version)."""
    go = find_go()
    if not go:
        sys.exit("bench/compare/run: no Go toolchain found; put go on PATH or set GO=/path/to/go "
                 "(or skip Go with --only kgmp,boost)")
    out = build_dir / "bench" / "compare" / "go"
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GOCACHE=str(out / "gocache"), GOPATH=str(out / "gopath"),
               GOTOOLCHAIN="local", GOPROXY="off", GOFLAGS="-mod=mod")
    binary = out / "go-bench"
    print(f"building {shown(binary)} ...", file=sys.stderr)
    r = subprocess.run([go, "build", "-trimpath", "-o", str(binary), "."], cwd=HERE / "go",
                       env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench/compare/run: go build failed:\n{r.stdout}{r.stderr}")
    version = subprocess.run([go, "version"], env=env, capture_output=True, text=True).stdout.split()
    return binary, (version[2] if len(version) > 2 else "unknown")


def check_binary(path):
    """Returns path if it is an executable, else exits with how to build it."""
    if os.access(path, os.X_OK):
        return path
    sys.exit(f"bench/compare/run: {shown(path)} not found.\n"
             "Build kgmp-bench and boostfiber-bench first:\n"
             "    cmake --preset release && cmake --build --preset release\n"
             "(or pass --build-dir DIR, or skip implementations with --only, e.g. --only go,boost)")


def invocations(impl, case):
    """Extra arguments for each invocation making up one run of CASE."""
    if impl.key == "boost" and case in BOOST_PROCS:
        return [["--procs", str(n)] for n in BOOST_PROCS[case]]
    return [[]]


def parse_result(stdout, case):
    """Metric -> value from the last RESULT line (the medians; --reps 1)."""
    lines = [l for l in stdout.splitlines() if l.startswith("RESULT ")]
    if not lines:
        return None
    tokens = lines[-1].split()
    if len(tokens) < 2 or tokens[1] != case:
        return None
    pairs = dict(t.split("=", 1) for t in tokens[2:] if "=" in t)
    metrics = {}
    for key, value in pairs.items():
        if key[-4:] in ("_min", "_max") and key[:-4] in pairs:
            continue
        try:
            metrics[key] = float(value)
        except ValueError:
            return None
    return metrics


def first_line(text, prefix=""):
    for line in text.splitlines():
        if line.strip() and line.startswith(prefix):
            return line.strip()
    return ""


def run_once(impl, case, extra, timeout, outcome, info):
    """One invocation; adds its metrics (or its failure) to outcome."""
    cmd = [str(impl.binary), case, *extra, "--reps", "1"]
    label = shlex.join([impl.binary.name, *cmd[1:]])
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        # Do not spend the timeout again on every remaining run.
        outcome.na_reason = f"`{label}` timed out after {timeout} s"
        outcome.failures.append(outcome.na_reason)
        return f"{label}: timed out"
    except OSError as e:  # e.g. the binary is being rebuilt right now
        outcome.failures.append(f"`{label}` could not start: {e.strerror}")
        return f"{label}: FAILED (could not start: {e.strerror})"
    for line in r.stdout.splitlines():
        if line.startswith("# ") and impl.key not in info:
            info[impl.key] = line[2:]
    if r.returncode in (2, 3):
        if r.returncode == 3:
            why = first_line(r.stdout + "\n" + r.stderr, "unsupported:")
            why = why.partition(":")[2].strip() or "unsupported (exit 3)"
        else:  # usage error: the binary does not know this case (yet)
            why = first_line(r.stderr) or first_line(r.stdout) or "rejected the arguments (exit 2)"
        outcome.na_reason = why
        outcome.failures.append(why)
        return f"{label}: n/a ({why})"
    metrics = parse_result(r.stdout, case) if r.returncode == 0 else None
    if metrics is None:
        if r.returncode < 0:
            why = f"killed by {signal.Signals(-r.returncode).name}"
        elif r.returncode:
            why = f"exit {r.returncode}"
        else:
            why = "no valid RESULT line"
        detail = first_line(r.stderr)
        outcome.failures.append(f"`{label}` failed: {why}" + (f": {detail}" if detail else ""))
        return f"{label}: FAILED ({why})"
    for name, value in metrics.items():
        outcome.samples.setdefault(name, []).append(value)
    return f"{label}: " + " ".join(f"{k}={v:g}" for k, v in metrics.items())


# ---- report -----------------------------------------------------------------------


def fmt(v):
    """About 3 significant digits; millions as 12.34M."""
    if abs(v) >= 999_995:
        return f"{v / 1e6:.2f}M"
    for limit, digits in ((100, 0), (10, 1), (1, 2)):
        if abs(v) >= limit - 0.5 * 10 ** -digits:  # also what rounds up to limit
            return f"{v:.{digits}f}"
    return f"{v:.3f}"


class Notes:
    """Numbered per-case footnotes for n/a cells and failures."""

    def __init__(self):
        self.items = []

    def ref(self, text):
        if text not in self.items:
            self.items.append(text)
        return f"(note {self.items.index(text) + 1})"


def medians(outcome, case):
    """Metric -> median, including metrics derived from other medians."""
    med = {m: statistics.median(v) for m, v in outcome.samples.items()}
    for name, (num, den) in DERIVED.get(case, {}).items():
        if name not in med and num in med and den in med and med[den]:
            med[name] = med[num] / med[den]
    return med


def case_table(case, impls, outcomes, runs):
    notes = Notes()
    meds = {i.key: medians(outcomes[i.key], case) for i in impls}
    metrics = []
    for i in impls:
        for m in list(outcomes[i.key].samples) + list(meds[i.key]):
            if m not in metrics:
                metrics.append(m)

    def cell(impl, metric):
        o = outcomes[impl.key]
        reasons = "; ".join(dict.fromkeys(o.failures))
        partial = ""
        if o.samples and o.runs_ok < runs:
            partial = " " + notes.ref(f"{impl.title}: only {o.runs_ok} of {runs} runs succeeded: {reasons}")
        if metric in o.samples:
            v = o.samples[metric]
            return f"{fmt(statistics.median(v))} [{fmt(min(v))}–{fmt(max(v))}]{partial}"
        if metric in meds[impl.key]:
            return f"{fmt(meds[impl.key][metric])} (from medians){partial}"
        if not o.samples and o.failures:
            return "n/a " + notes.ref(f"{impl.title}: {reasons}")
        return "n/a " + notes.ref(f"{impl.title} does not report `{metric}`")

    def ratio(peer, metric):
        a, b = meds.get("kgmp", {}).get(metric), meds.get(peer, {}).get(metric)
        return f"{a / b:.2f}" if a is not None and b else "n/a"

    titles = {i.key: i.title for i in impls}
    head = ["metric"] + [f"{i.title} median [min–max]" for i in impls]
    peers = [k for k in ("go", "boost") if k in titles and "kgmp" in titles]
    head += [f"kgmp/{titles[k]}" for k in peers]
    rows = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for m in metrics:
        arrow = "↑" if higher_is_better(m) else "↓"
        row = [f"`{m}` {arrow}"] + [cell(i, m) for i in impls] + [ratio(k, m) for k in peers]
        rows.append("| " + " | ".join(row) + " |")
    if not metrics:
        rows.append("| – | " + " | ".join(cell(i, "any metric") for i in impls)
                    + " | n/a" * len(peers) + " |")

    commands = ", ".join(f"`{i.binary.name} {case}{' ' + ' '.join(x) if x else ''} --reps 1`"
                         for i in impls for x in invocations(i, case))
    out = [f"## {case}", "", DESCRIPTIONS[case], ""] + rows + [""]
    if notes.items:
        out += ["Notes:", ""] + [f"{n}. {t}" for n, t in enumerate(notes.items, 1)] + [""]
    if case in CASE_NOTES and any(i.key == "boost" for i in impls):
        out += [CASE_NOTES[case], ""]
    out += [f"Invocations: {commands}.", ""]
    return out


def machine_info():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cpu, ncpu, platform.release()


def kgmp_revision():
    def git(*a):
        r = subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""
    rev = git("rev-parse", "--short", "HEAD") or "no commit"
    return rev + (" + uncommitted changes" if git("status", "--porcelain") else "")


def command_line(argv):
    """The invocation as typed from the repository root, without local absolute paths."""
    args = []
    for a in argv:
        prefix, eq, value = a.partition("=")
        p = value if eq else a
        if os.path.isabs(p) and shown(p) != p:
            p = shown(p)
        args.append(f"{prefix}={p}" if eq else p)
    return shlex.join(["bench/compare/run", *args])


def report(args, argv, impls, outcomes, started, info, go_version, extra=()):
    cpu, ncpu, kernel = machine_info()
    keys = {i.key for i in impls}
    versions = []
    if "kgmp" in keys:
        versions.append(f"kgmp {kgmp_revision()}")
    if "go" in keys:
        versions.append(f"Go {go_version}")
    if "boost" in keys:
        m = re.match(r"Boost\.Fiber (\S+)", info.get("boost", ""))
        versions.append(f"Boost.Fiber {m.group(1) if m else 'unknown'}"
                        " (work_stealing; round_robin on 1 thread; default stacks)")
    lines = [
        "# kgmp vs Go vs Boost.Fiber",
        "",
        f"Generated by `{command_line(argv)}`.",
        "",
        f"- Machine: {cpu}, nproc {ncpu}, Linux {kernel}",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC",
        f"- Versions: {'; '.join(versions)}",
        f"- Method: every implementation runs every case {args.runs} times, one "
        "repetition per process (`--reps 1`), interleaved kgmp → Go → Boost.Fiber so "
        "that machine noise hits all alike. Cells: median [min–max] over the runs. "
        "Ratio columns: kgmp median ÷ peer median. ↓ lower is better, ↑ higher is "
        "better. n/a: the implementation has no such case or metric, or failed "
        "(reason in the numbered note).",
        "- Programs: `kgmp-bench` (bench/kgmp_bench.cpp), `go-bench` (bench/compare/go), "
        "`boostfiber-bench` (bench/compare/boostfiber); same cases, same work.",
        "",
    ]
    for case in args.table_cases:
        lines += case_table(case, impls, outcomes[case], args.runs)
    lines += list(extra)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Sections written by other tools (bench/vm-handoff) follow VM_MARKER: keep them.
    kept = ""
    if args.out.exists():
        old = args.out.read_text()
        if VM_MARKER in old:
            kept = "\n" + old[old.index(VM_MARKER):]
    args.out.write_text("\n".join(lines).rstrip() + "\n" + kept)


VM_MARKER = "<!-- bench/vm-handoff: kept by bench/compare/run -->"
HANDOFF_RE = re.compile(r"^RESULT handoff monitor=(\S+) quiet=(\S+) p50_us=(\S+) p90_us=(\S+) "
                        r"p99_us=(\S+) max_us=(\S+) trials=(\d+)")
IDLE_RE = re.compile(r"^RESULT idle monitor=(\S+) seconds=(\d+) context_switches=(-?\d+) "
                     r"cpu_ms=(\S+)")
RETOUCH_RE = re.compile(r"^RESULT retouch quiet=(\S+) quiet_ms=(\d+) rounds=(\d+) pages=(\d+) "
                        r"worst_p50_us=(\S+) worst_p90_us=(\S+) worst_max_us=(\S+) "
                        r"touches_over_20us=(\d+) touches_over_100us=(\d+)")


PREEMPT_RE = re.compile(r"^RESULT preempt monitor=(\S+)((?: \w+=\S+)*)\s*$")
PREEMPT_METRICS = ("p50_ms", "p99_ms", "max_ms")
# The "cost with nothing to preempt" rows: these cases, preemption on (the default slice)
# and off (KGMP_PREEMPT_SLICE=0), kgmp/metric -> samples.
PREEMPT_COST_CASES = ("fib", "chan-pingpong")


def preempt_section(kgmp_binary, go_binary, runs, timeout):
    """Runs the preempt method (bench/kgmp_bench.cpp, bench/compare/go/preempt.go) RUNS times,
    kgmp under every monitor available and Go interleaved, then the cost of preemption with
    nothing to preempt (fib, chan-pingpong with the default slice and with
    KGMP_PREEMPT_SLICE=0, interleaved); returns Markdown lines."""
    samples, slices, failures = {}, {}, {}  # who (monitor or go) -> ...
    order = []
    cmds = []
    if kgmp_binary:
        cmds.append(("kgmp", [str(kgmp_binary), "preempt", "--monitor", "all"]))
    if go_binary:
        cmds.append(("go", [str(go_binary), "preempt"]))
    for run in range(1, runs + 1):
        for impl, cmd in cmds:
            label = " ".join(shown(c) for c in cmd)
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                   stdin=subprocess.DEVNULL)
                out, rc, err = r.stdout, r.returncode, r.stderr
            except subprocess.TimeoutExpired:
                out, rc, err = "", None, f"timed out after {timeout} s"
            got = []
            for line in out.splitlines():
                m = PREEMPT_RE.match(line)
                if not m:
                    continue
                who = m.group(1)
                pairs = dict(t.split("=", 1) for t in m.group(2).split())
                if who not in order:
                    order.append(who)
                got.append(who)
                if "error" in pairs:
                    failures.setdefault(who, []).append(pairs["error"])
                    continue
                try:
                    values = {k: float(pairs[k]) for k in PREEMPT_METRICS}
                except (KeyError, ValueError):
                    failures.setdefault(who, []).append(f"bad RESULT line: {line}")
                    continue
                slices[who] = pairs.get("slice_ms", "?")
                for k, v in values.items():
                    samples.setdefault(who, {}).setdefault(k, []).append(v)
            if rc != 0 and not got:
                why = first_line(err) or first_line(out) or f"exit {rc}"
                failures.setdefault(impl, []).append(why)
                if impl not in order:
                    order.append(impl)
            print(f"[preempt {run}/{runs}] {label}: "
                  + ("; ".join(l for l in out.splitlines() if l.startswith("RESULT")) or
                     f"FAILED ({first_line(err) or rc})"), file=sys.stderr, flush=True)

    def cell(values):
        if not values:
            return "n/a"
        return f"{fmt(statistics.median(values))} [{fmt(min(values))}–{fmt(max(values))}]"

    go_p50 = statistics.median(samples["go"]["p50_ms"]) if "go" in samples else None
    lines = ["## preempt: how long a goroutine waits behind one that never yields", "",
             "One P; per trial the main goroutine starts a hog that spins on a relaxed atomic "
             "load of a stop flag (no call, no runtime entry; Go: `atomic.LoadInt32`, which Go "
             "≥ 1.14 preempts asynchronously), records t0, yields (`kgmp::yield()` / "
             "`runtime.Gosched()`) and records t1 when it runs again; figure = t1 − t0, ms, "
             "over 200 trials (after 5 warm-up ones) per invocation. kgmp: the slice is "
             "`Config::preempt_slice` (`--slice_ms`, 10 ms by default); Go: forcePreemptNS "
             "(10 ms, not settable). Cells: median [min–max] of each invocation's percentile "
             f"over {runs} invocation(s). Commands: `kgmp-bench preempt --monitor all`, "
             "`go-bench preempt`.", "",
             "| monitor | slice ms | p50 ms | p99 ms | max ms | p50 vs Go |",
             "|---|---|---|---|---|---|"]
    for who in order:
        s = samples.get(who, {})
        vs = ""
        if who != "go" and go_p50 and s.get("p50_ms"):
            vs = f"{statistics.median(s['p50_ms']) / go_p50:.2f}x"
        row = [who, slices.get(who, "–")] + [cell(s.get(k, [])) for k in PREEMPT_METRICS] + [vs]
        if who in failures:
            row[2] += " (" + "; ".join(dict.fromkeys(failures[who])) + \
                      f" in {len(failures[who])} of {runs})"
        lines.append("| " + " | ".join(row) + " |")

    if kgmp_binary:
        cost = {}  # (case, setting) -> metric -> [values]
        for run in range(1, runs + 1):
            for case in PREEMPT_COST_CASES:
                settings = [("default", None), ("off", "0")]
                if run % 2 == 0:
                    settings.reverse()  # alternate which goes first
                for setting, value in settings:
                    env = dict(os.environ)
                    env.pop("KGMP_PREEMPT_SLICE", None)
                    if value is not None:
                        env["KGMP_PREEMPT_SLICE"] = value
                    cmd = [str(kgmp_binary), case, "--reps", "1"]
                    try:
                        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                           env=env, stdin=subprocess.DEVNULL)
                        metrics = parse_result(r.stdout, case) if r.returncode == 0 else None
                    except subprocess.TimeoutExpired:
                        metrics = None
                    print(f"[preempt cost {run}/{runs}] KGMP_PREEMPT_SLICE={value or '(unset)'} "
                          f"{shown(cmd[0])} {case}: {metrics or 'FAILED'}", file=sys.stderr,
                          flush=True)
                    for k, v in (metrics or {}).items():
                        cost.setdefault((case, setting), {}).setdefault(k, []).append(v)
        lines += ["", "The cost of preemption with nothing to preempt: kgmp's fib and "
                  "chan-pingpong (the cases of the same names) with the default slice and with "
                  "`KGMP_PREEMPT_SLICE=0` (off), interleaved in the same run, "
                  f"{runs} invocation(s) each; ratio = default ÷ off of the medians (> 1: "
                  "preemption costs).", "",
                  "| case | metric | default slice | off (`KGMP_PREEMPT_SLICE=0`) | default/off |",
                  "|---|---|---|---|---|"]
        for case in PREEMPT_COST_CASES:
            on, off = cost.get((case, "default"), {}), cost.get((case, "off"), {})
            for k in list(dict.fromkeys(list(on) + list(off))):
                ratio = "n/a"
                if on.get(k) and off.get(k) and statistics.median(off[k]):
                    ratio = f"{statistics.median(on[k]) / statistics.median(off[k]):.3f}"
                lines.append(f"| {case} | `{k}` | {cell(on.get(k, []))} | {cell(off.get(k, []))} "
                             f"| {ratio} |")
            if not on and not off:
                lines.append(f"| {case} | – | n/a | n/a | n/a |")
    return lines + [""]


def handoff_section(kgmp_binary, go_binary, modes, timeout):
    """Runs the handoff method (bench/handoff_bench.cpp, bench/compare/go/handoff.go) for each
    quiet mode and the idle cost; returns Markdown lines."""
    rows, idle_rows = [], []
    for quiet in modes:
        cmds = [[str(kgmp_binary), "handoff", "--monitor", "all", "--quiet", quiet]]
        if go_binary:
            cmds.append([str(go_binary), "handoff", "--quiet", quiet])
        for cmd in cmds:
            print(f"[handoff {quiet}] {' '.join(shown(c) for c in cmd)}", file=sys.stderr, flush=True)
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout * 4).stdout
            except subprocess.TimeoutExpired:
                out = ""
            for line in out.splitlines():
                m = HANDOFF_RE.match(line)
                if m:
                    rows.append(m.groups())
    retouch_rows = []
    for quiet, ms in (("compute", 30), ("idle", 100)):
        if quiet not in modes:
            continue
        cmd = [str(kgmp_binary), "retouch", "--quiet", quiet, "--quiet_ms", str(ms), "--trials", "100"]
        print(f"[retouch {quiet}] {' '.join(shown(c) for c in cmd)}", file=sys.stderr, flush=True)
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout
        except subprocess.TimeoutExpired:
            out = ""
        retouch_rows += [m.groups() for m in map(RETOUCH_RE.match, out.splitlines()) if m]
    if modes:
        cmd = [str(kgmp_binary), "idle", "--monitor", "all", "--seconds", "10"]
        print(f"[idle] {' '.join(shown(c) for c in cmd)}", file=sys.stderr, flush=True)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout
        idle_rows = [m.groups() for m in map(IDLE_RE.match, out.splitlines()) if m]
    lines = ["## handoff: how long a P stays stuck behind a blocked thread", "",
             "One P; G A wakes G B and yields; B stores t_enter and blocks in a raw `read()` on a "
             "pipe (kgmp `poll`: wrapped in `kgmp::blocking`; kgmp `trace`: bare; Go: "
             "`syscall.Read`); A's first act when it runs again is t_resume; figure = t_resume − "
             "t_enter, µs. `floor`: a futex wake of a thread parked on the same CPU. Quiet "
             "periods: hot = trials back to back, compute = A computes 50–100 ms first, idle = A "
             "sleeps 100–200 ms first. Commands: `kgmp-bench handoff --monitor all --quiet Q`, "
             "`go-bench handoff --quiet Q`.", "",
             "| quiet | monitor | p50 µs | p90 µs | p99 µs | max µs | trials | p50 vs Go | p99 vs Go |",
             "|---|---|---|---|---|---|---|---|---|"]
    go = {r[1]: r for r in rows if r[0] == "go"}
    for r in rows:
        mon, quiet, p50, p90, p99, mx, n = r
        g = go.get(quiet)
        vs50 = vs99 = ""
        if g and mon != "go":
            vs50 = f"{float(g[2]) / max(float(p50), 0.001):.1f}x faster"
            vs99 = f"{float(g[4]) / max(float(p99), 0.001):.1f}x faster"
        lines.append(f"| {quiet} | {mon} | {p50} | {p90} | {p99} | {mx} | {n} | {vs50} | {vs99} |")
    if retouch_rows:
        lines += ["", "The machine in the same run: the first touch of a page left alone during a quiet "
                  "period, outside any runtime (`kgmp-bench retouch`, 256 pages, 100 rounds). A "
                  "host that stalls such touches 100–200 µs puts that into any hand-off that "
                  "touches a cold page; `sudo bench/trace-handoff -- --monitor trace --quiet Q` "
                  "names the cause of each slow trial.", "",
                  "| quiet | quiet ms | worst touch per round p50 / p90 / max µs | touches over 20 µs | over 100 µs |",
                  "|---|---|---|---|---|"]
        for r in retouch_rows:
            quiet, ms, rounds, pages, w50, w90, wmax, o20, o100 = r
            lines.append(f"| {quiet} | {ms} | {w50} / {w90} / {wmax} | {o20} of "
                         f"{int(rounds) * int(pages)} | {o100} |")
    if idle_rows:
        lines += ["", "## idle: the cost of a runtime whose goroutines are all blocked", "",
                  "Every goroutine blocked (main on a WaitGroup, one in `read()` on a pipe); the "
                  "whole process's context switches and CPU time over 10 s "
                  "(`kgmp-bench idle --monitor all`). Go: zero by design (sysmon sleeps).", "",
                  "| monitor | context switches | CPU ms |", "|---|---|---|"]
        lines += [f"| {r[0]} | {r[2]} | {r[3]} |" for r in idle_rows]
    return lines + [""]


def main(argv):
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    bench = args.build_dir / "bench"
    impls, go_version = [], ""
    if "kgmp" in args.only:
        impls.append(Impl("kgmp", "kgmp", check_binary(bench / "kgmp-bench")))
    if "boost" in args.only:
        boost_binary = check_binary(bench / "compare" / "boostfiber" / "boostfiber-bench")
        impls.append(Impl("boost", "Boost.Fiber", boost_binary))
    if "go" in args.only:  # built last: fail fast on a missing CMake build first
        go_binary, go_version = build_go(args.build_dir)
        impls.append(Impl("go", "Go", go_binary))
    impls.sort(key=lambda i: ["kgmp", "go", "boost"].index(i.key))

    info = {}
    outcomes = {case: {i.key: Outcome() for i in impls} for case in args.table_cases}
    for case in args.table_cases:
        for run in range(1, args.runs + 1):
            for impl in impls:
                o = outcomes[case][impl.key]
                if o.na_reason:
                    continue
                failed_before = len(o.failures)
                for extra in invocations(impl, case):
                    msg = run_once(impl, case, extra, args.timeout, o, info)
                    print(f"[{case} {run}/{args.runs}] {msg}", file=sys.stderr, flush=True)
                    if o.na_reason:
                        break
                if len(o.failures) == failed_before:
                    o.runs_ok += 1
    extra = []
    kg = next((i for i in impls if i.key == "kgmp"), None)
    gi = next((i for i in impls if i.key == "go"), None)
    if "preempt" in args.cases and (kg or gi):
        extra += preempt_section(kg.binary if kg else None, gi.binary if gi else None, args.runs,
                                 args.timeout)
    if kg and args.handoff.split():
        extra += handoff_section(kg.binary, gi.binary if gi else None, args.handoff.split(),
                                 args.timeout)
    report(args, argv, impls, outcomes, started, info, go_version, extra)
    print(f"wrote {shown(args.out)}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
