#!/usr/bin/env python3
"""Sums an ncu CSV (--csv --metrics gpu__time_duration.sum) of `mambacpp bench` by kernel, over the last
decode step: the kernels from the last launch of the first kernel of a step (the embedding gather) to the
end. Prints each kernel of that step, then the step's total and its kernel count.
With --all, sums every kernel of the file instead (a `bench-train --warmup 0 --steps 1` run: one training step).
   usage: dev/cuda/profile_summary.py ncu.csv [first-kernel-substring (default: embedding) | --all]"""
import csv
import sys


def rows(path):
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]  # ncu prints its own messages before the table
    for r in csv.DictReader(lines):
        if r.get("Metric Name") == "gpu__time_duration.sum":
            value = float(r["Metric Value"].replace(",", ""))
            scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}[r["Metric Unit"]]
            yield r["Kernel Name"], value * scale


def main():
    kernels = list(rows(sys.argv[1]))
    first = sys.argv[2] if len(sys.argv) > 2 else "embedding"
    if first == "--all":
        step = kernels
    else:
        starts = [i for i, (name, _) in enumerate(kernels) if first in name]
        if not starts:
            sys.exit(f"no kernel named like {first!r} among {len(kernels)}")
        step = kernels[starts[-1]:]
    if not step:
        sys.exit("no kernels in the file")
    by_name = {}
    for name, us in step:
        n, t = by_name.get(name, (0, 0.0))
        by_name[name] = (n + 1, t + us)
    total = sum(us for _, us in step)
    print(f"{'kernel':90s} {'count':>5s} {'us':>9s} {'share':>6s}")
    for name, (n, t) in sorted(by_name.items(), key=lambda kv: -kv[1][1]):
        print(f"{name[:90]:90s} {n:5d} {t:9.1f} {t / total:6.1%}")
    print(f"{'all' if first == '--all' else 'one decode step'}: {len(step)} kernels, {total:.1f} us of kernel time "
          f"(mean {total / len(step):.2f} us a kernel)")


if __name__ == "__main__":
    main()
