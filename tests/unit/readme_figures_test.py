#!/usr/bin/env python3
"""readme_figures_test.py: every figure the README quotes comes from bench/RESULTS.md.

The README's opening paragraphs (before its first "## " heading) and its Performance table
quote measurements; bench/RESULTS.md is their one source (docs/DESIGN.md §8). OPENING and
PERFORMANCE below say, figure by figure and in the README's order, which RESULTS.md cell each
one is: a section (by the start of its "## " heading), a table row (its leading cells) and a
column (a substring of its header). The test reads both files and fails, naming the figure and
where it should come from, when
  - a README figure differs from its cell (beyond the README's own rounding: "198 µs" matches
    198.1, "11.1 ms" matches 11142.8 µs),
  - the README has a figure, or a Performance row, that those lists do not account for (or the
    other way round), or
  - a cell they name does not exist in RESULTS.md any more.
When you change a figure in either file, update the other, and the lists here if the figure moved.

Usage: readme_figures_test.py [--readme README.md] [--results bench/RESULTS.md]
"""
import argparse
import os
import re
import sys

# A figure: a number (or a range "50–100") and, in prose, its unit.
NUM = r"[+−-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
UNITS = {  # unit -> (dimension, factor to the dimension's base)
    "ns/G": ("ns/G", 1), "ns/op": ("ns/op", 1), "M msg/s": ("msg/s", 1e6),
    "ns": ("s", 1e-9), "µs": ("s", 1e-6), "us": ("s", 1e-6), "ms": ("s", 1e-3),
    "s": ("s", 1.0), "B": ("B", 1), "%": ("%", 1),
}
UNIT_RE = "|".join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True))
FIGURE_WITH_UNIT = re.compile(
    rf"(?<![\w.])({NUM})(?:\s*(?:–|-|to)\s*({NUM}))?\s*({UNIT_RE})(?![\w])")
ANY_NUMBER = re.compile(rf"(?<![\w.])({NUM})(?![\w])")


def cell(section, row, column, unit=None):
    """The median of a table cell: RESULTS.md section, leading row cells, column header."""
    return ("cell", section, tuple(row), column, unit)


def text(section, row, column):
    """A figure that must appear among the numbers of a table cell of RESULTS.md."""
    return ("text", section, tuple(row), column, None)


def literal(figure, why):
    """Not a measurement (a constant of the design or of the benchmark): exactly this text."""
    return ("literal", figure, why)


HANDOFF = "handoff: how long"
TARGETS = "Targets"

# The opening paragraphs: every figure with a unit, in order.
OPENING = [
    literal("20 µs", "Go's sysmon back-off, shortest period"),
    literal("10 ms", "Go's sysmon back-off, longest period"),
    cell(HANDOFF, ["hot", "trace"], "p50 µs", "µs"),
    cell(HANDOFF, ["hot", "go"], "p50 µs", "µs"),
    cell(HANDOFF, ["compute", "trace"], "p50 µs", "µs"),
    literal("50–100 ms", "the benchmark's compute period"),
    cell(HANDOFF, ["compute", "go"], "p50 µs", "µs"),
]

# The Performance table: per row (its first cell), every number of the kgmp and Go cells.
PERFORMANCE = {
    "spawn+join, 1M goroutines, 2 Ps": [
        cell("spawn", ["`ns_per_g` ↓"], "kgmp median", "ns/G"),
        cell("spawn", ["`ns_per_g` ↓"], "Go median", "ns/G")],
    "yield (Gosched), 1 P": [
        cell("yield", ["`ns_per_switch` ↓"], "kgmp median", "ns"),
        cell("yield", ["`ns_per_switch` ↓"], "Go median", "ns")],
    "fork-join fib(32), 2 Ps": [
        cell("fib", ["`ms_2p` ↓"], "kgmp median", "ms"),
        cell("fib", ["`speedup` ↑"], "kgmp median"),
        cell("fib", ["`ms_2p` ↓"], "Go median", "ms"),
        cell("fib", ["`speedup` ↑"], "Go median")],
    "parked goroutine": [
        cell("memory", ["`bytes_per_g` ↓"], "kgmp median", "B"),
        cell("memory", ["`bytes_per_g` ↓"], "Go median", "B")],
    "unbuffered round trip, 1 P / 2 Ps": [
        cell("chan-pingpong", ["`ns_1p` ↓"], "kgmp median", "ns"),
        cell("chan-pingpong", ["`ns_2p` ↓"], "kgmp median", "ns"),
        cell("chan-pingpong", ["`ns_1p` ↓"], "Go median", "ns"),
        cell("chan-pingpong", ["`ns_2p` ↓"], "Go median", "ns")],
    "buffered channel, 1 producer 1 consumer": [
        cell("chan-throughput", ["`msgs_per_s` ↑"], "kgmp median", "msg/s"),
        cell("chan-throughput", ["`msgs_per_s` ↑"], "Go median", "msg/s")],
    "contended Mutex, 8 goroutines on 2 Ps": [
        cell("mutex", ["`ns_per_op` ↓"], "kgmp median", "ns/op"),
        cell("mutex", ["`ns_per_op` ↓"], "Go median", "ns/op")],
    "10,000 × sleep 1 ms, lateness p99": [
        cell("sleep", ["`late_p99_us` ↓"], "kgmp median", "µs"),
        cell("sleep", ["`late_p99_us` ↓"], "Go median", "µs")],
    "P hand-off behind a blocked `read()`, p50 / p99: busy": [
        cell(HANDOFF, ["hot", "trace"], "p50 µs", "µs"),
        cell(HANDOFF, ["hot", "trace"], "p99 µs", "µs"),
        cell(HANDOFF, ["hot", "go"], "p50 µs", "µs"),
        cell(HANDOFF, ["hot", "go"], "p99 µs", "µs")],
    "same, after 50–100 ms of compute": [
        cell(HANDOFF, ["compute", "trace"], "p50 µs", "µs"),
        cell(HANDOFF, ["compute", "trace"], "p99 µs", "µs"),
        cell(HANDOFF, ["compute", "go"], "p50 µs", "µs"),
        cell(HANDOFF, ["compute", "go"], "p99 µs", "µs")],
    "same, after 100–200 ms asleep": [
        cell(HANDOFF, ["idle", "trace"], "p50 µs", "µs"),
        cell(HANDOFF, ["idle", "trace"], "p99 µs", "µs"),
        cell(HANDOFF, ["idle", "go"], "p50 µs", "µs"),
        cell(HANDOFF, ["idle", "go"], "p99 µs", "µs")],
    "idle runtime, 10 s: context switches, CPU": [
        cell("idle: the cost", ["trace"], "context switches"),
        cell("idle: the cost", ["trace"], "CPU ms", "ms"),
        literal("0", "Go's idle runtime: zero context switches by design (RESULTS.md, idle)"),
        literal("0", "Go's idle runtime: zero CPU by design (RESULTS.md, idle)")],
    "another program's context switch with `trace` attached (`kgmp-bench switch-cost`, 3 runs)": [
        text(TARGETS, ["switch-cost"], "figure"),
        text(TARGETS, ["switch-cost"], "figure"),
        text(TARGETS, ["switch-cost"], "figure"),
        text(TARGETS, ["switch-cost"], "figure")],
}


def number(s):
    """'1,000' -> 1000.0, '40.12M' -> 40.12e6, '−1864' -> -1864.0."""
    s = s.strip().replace(",", "").replace("−", "-")
    scale = 1.0
    if s.endswith("M"):
        s, scale = s[:-1], 1e6
    return float(s) * scale


def decimals(s):
    s = s.replace(",", "")
    return len(s.split(".")[1]) if "." in s else 0


def split_row(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


class Results:
    """bench/RESULTS.md as sections -> tables -> (header, rows)."""

    def __init__(self, path):
        self.path = path
        self.sections = []  # (heading, [ (header, [row cells]) ])
        heading, tables, table = "(top)", [], None
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("## "):
                    self.sections.append((heading, tables))
                    heading, tables, table = line[3:].strip(), [], None
                elif line.startswith("|"):
                    cells = split_row(line)
                    if table is None:
                        table = (cells, [])
                        tables.append(table)
                    elif not all(re.fullmatch(r":?-+:?", c) for c in cells if c):
                        table[1].append(cells)
                else:
                    table = None
        self.sections.append((heading, tables))

    def lookup(self, section, row, column):
        """The text of the cell, or raises LookupError saying what is missing."""
        secs = [t for h, t in self.sections if h.startswith(section)]
        if not secs:
            raise LookupError(f"{self.path} has no section whose heading starts with '## {section}'")
        for tables in secs:
            for header, rows in tables:
                cols = [i for i, h in enumerate(header) if column in h]
                if not cols:
                    continue
                for r in rows:
                    if [c.strip() for c in r[:len(row)]] == list(row) or (
                            len(row) == 1 and r and r[0].startswith(row[0])):
                        if cols[0] < len(r):
                            return r[cols[0]]
        raise LookupError(f"{self.path}, section '{section}': no table with a column "
                          f"'{column}' and a row starting {' | '.join(row)}")


def readme_regions(path):
    """(opening text, {first cell: (kgmp cell, Go cell)} of the Performance table)."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    first = next(i for i, l in enumerate(lines) if l.startswith("## "))
    opening = "\n".join(l for l in lines[1:first] if not l.startswith("#"))
    perf = next((i for i, l in enumerate(lines) if l.strip() == "## Performance"), None)
    if perf is None:
        raise SystemExit(f"FAIL: {path} has no '## Performance' section")
    rows, in_table = {}, False
    for l in lines[perf + 1:]:
        if l.startswith("## "):
            break
        if l.startswith("|"):
            cells = split_row(l)
            if not in_table:  # the header
                in_table = True
                continue
            if all(re.fullmatch(r":?-+:?", c) for c in cells if c):
                continue
            rows[cells[0]] = cells[1:3]
        elif in_table:
            break
    return opening, rows


def figures_in_prose(s):
    """[(text, number string, unit)] for every figure with a unit."""
    out = []
    for m in FIGURE_WITH_UNIT.finditer(s):
        out.append((m.group(0), m.group(2) or m.group(1), m.group(3), m.group(2) is not None))
    return out


def figures_in_cell(s):
    """[(text, number string, unit or None)] for every number of a table cell."""
    out = []
    for m in ANY_NUMBER.finditer(s):
        # The unit of a number is that of the first figure with a unit ending after it:
        # "227 / 257 ns" gives ns to both.
        unit = next((mu.group(3) for mu in FIGURE_WITH_UNIT.finditer(s)
                     if mu.end() > m.start()), None)
        out.append((m.group(0) + (" " + unit if unit else ""), m.group(1), unit, False))
    return out


def to_cell_unit(value, unit, cell_unit):
    if cell_unit is None or unit is None:
        return value
    if cell_unit == "msg/s":
        dim, f = UNITS[unit]
        return value * f if dim == "msg/s" else None
    d1, f1 = UNITS[unit]
    d2, f2 = UNITS[cell_unit]
    return value * f1 / f2 if d1 == d2 else None


def matches(readme_num, unit, cell_value, cell_unit):
    """Whether cell_value, in the README's unit and rounded to its precision, is readme_num."""
    v = number(readme_num)
    back = to_cell_unit(1.0, unit, cell_unit)  # README unit -> cell unit factor
    if back is None:
        return False
    shown = cell_value / back
    return abs(abs(shown) - abs(v)) <= 0.5 * 10 ** -decimals(readme_num) + 1e-9


def check(where, found, sources, results, errors):
    for i in range(max(len(found), len(sources))):
        fig = found[i] if i < len(found) else None
        src = sources[i] if i < len(sources) else None
        label = f"README {where}, figure {i + 1}"
        if src is None:
            errors.append(f"{label} '{fig[0]}' has no source in bench/RESULTS.md: add it to "
                          f"RESULTS.md and name its cell in OPENING or PERFORMANCE of {os.path.basename(__file__)}")
            continue
        if fig is None:
            errors.append(f"{label}: expected a figure from {describe(src)}, found none "
                          f"(the README lost a figure, or the test's list has one too many)")
            continue
        text_, num, unit, _ = fig
        if src[0] == "literal":
            if text_ != src[1] and num != src[1]:
                errors.append(f"{label} '{text_}': expected the constant '{src[1]}' ({src[2]})")
            continue
        kind, section, row, column, cell_unit = src
        try:
            c = results.lookup(section, row, column)
        except LookupError as e:
            errors.append(f"{label} '{text_}': the cell its list names is gone: {e}")
            continue
        if kind == "cell":
            m = re.match(rf"\s*({NUM}M?)", c)
            if m is None:
                errors.append(f"{label} '{text_}': {describe(src)} is '{c}', not a number")
                continue
            cv = number(m.group(1))
            if not matches(num, unit, cv, cell_unit):
                errors.append(f"{label} '{text_}' does not match {describe(src)} = "
                              f"{m.group(1)}{' ' + cell_unit if cell_unit else ''}: the README "
                              f"must quote that value (rounded to its precision)")
        else:  # text: the figure among the numbers of the cell
            nums = [n for n in ANY_NUMBER.findall(c)]
            if not any(abs(abs(number(n)) - abs(number(num))) <= 0.5 * 10 ** -decimals(num)
                       + 1e-9 for n in nums):
                errors.append(f"{label} '{text_}' is not among the figures of {describe(src)}: "
                              f"'{c[:160]}...'")


def describe(src):
    if src[0] == "literal":
        return f"the constant '{src[1]}'"
    _, section, row, column, _ = src
    return (f"bench/RESULTS.md, section '## {section}...', row '{' | '.join(row)}', "
            f"column '{column}'")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--readme", default=os.path.join(root, "README.md"))
    ap.add_argument("--results", default=os.path.join(root, "bench", "RESULTS.md"))
    a = ap.parse_args()
    results = Results(a.results)
    opening, rows = readme_regions(a.readme)
    errors = []
    check("opening paragraph", figures_in_prose(opening), OPENING, results, errors)
    for name, cells in rows.items():
        if name not in PERFORMANCE:
            errors.append(f"README Performance row '{name}' has no sources: name the "
                          f"bench/RESULTS.md cell of each of its figures in PERFORMANCE of "
                          f"{os.path.basename(__file__)}")
            continue
        found = figures_in_cell(cells[0]) + figures_in_cell(cells[1] if len(cells) > 1 else "")
        check(f"Performance row '{name}'", found, PERFORMANCE[name], results, errors)
    for name in PERFORMANCE:
        if name not in rows:
            errors.append(f"README Performance table has no row '{name}' any more: remove it "
                          f"from PERFORMANCE of {os.path.basename(__file__)}")
    if errors:
        print(f"FAIL: {len(errors)} README figure(s) not backed by {a.results}:")
        for e in errors:
            print("  - " + e)
        return 1
    n = len(OPENING) + sum(len(v) for v in PERFORMANCE.values())
    print(f"ok: {n} README figures match {a.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
