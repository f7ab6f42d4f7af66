"""The built-in demo: profile the bundled workload, BOLT it, compare.

    sudo python -m ebpf_bolt.demo [--out DIR] [--scale N] [--runs N]

Builds the workload (a branchy C program whose hot code is larger than the
instruction cache, linked with --emit-relocs), records it with ebpf-bolt,
has the installed llvm-bolt apply the profile, then runs both binaries and
prints their times and BOLT's -dyno-stats figures.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

from .. import bolt
from ..cli import main as ebpf_bolt_main
from .build import build_workload


def _say(msg=""):
    print(msg, flush=True)


def timed_run(cmd):
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"demo: {' '.join(cmd)} failed:\n{proc.stderr}")
    return elapsed, proc.stdout.strip().splitlines()[-1]


DYNO = re.compile(r"^\s*(\d+)\s*:\s*(executed instructions|taken branches|"
                  r"executed forward branches|taken forward branches|"
                  r"executed backward branches|total branches|"
                  r"instructions|non-taken conditional branches)\s*(\(.*\))?$")


def parse_bolt_report(text):
    """Dyno-stats before/after and how many functions had a profile."""
    figures = {}
    for line in text.splitlines():
        m = DYNO.match(line)
        if m:
            figures.setdefault(m.group(2), []).append(int(m.group(1)))
    m = re.search(r"(\d+) out of (\d+) functions in the binary .* have "
                  r"non-empty execution profile", text)
    profiled = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    return figures, profiled


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m ebpf_bolt.demo")
    p.add_argument("--out", default="demo-out", help="work directory")
    p.add_argument("--scale", type=int, default=300,
                   help="workload size (100 = about 1 s)")
    p.add_argument("--runs", type=int, default=3, help="timed runs of each")
    args = p.parse_args(argv)

    llvm_bolt, version = bolt.find_tool("llvm-bolt")
    if not llvm_bolt:
        raise SystemExit("demo: llvm-bolt not found: apt install bolt-22")
    os.makedirs(args.out, exist_ok=True)
    out = os.path.abspath(args.out)

    _say("== 1. build the workload (icache mode: hot code larger than L1i)")
    binary = str(build_workload(out, pie=True))
    work = ["--mode", "icache", "--scale", str(args.scale)]
    _say(f"   {binary}")

    _say("\n== 2. profile it with ebpf-bolt")
    profile = os.path.join(out, "workload.profile")
    rc = ebpf_bolt_main(["-o", profile, "--", binary] + work)
    if rc != 0:
        raise SystemExit(f"demo: ebpf-bolt failed (exit {rc})")

    _say(f"\n== 3. BOLT applies the profile (LLVM {version})")
    optimized = binary + ".bolt"
    with open(profile) as f:
        basic = f.readline().startswith("no_lbr")
    # IP samples come as fdata; branch stacks as pre-aggregated T records
    source = ["-data", profile] if basic else ["--pa", "-p", profile]
    cmd = [llvm_bolt, binary, "-o", optimized] + source + bolt.OPTIMIZE_FLAGS
    _say("   " + " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    report = proc.stdout + proc.stderr
    figures, (profiled, total) = parse_bolt_report(report)
    if proc.returncode != 0 or profiled == 0:
        _say(report[-3000:])
        raise SystemExit("demo: BOLT did not apply the profile")
    _say(f"   functions with a profile: {profiled} of {total}")
    for name in ("executed instructions", "taken branches",
                 "executed forward branches", "taken forward branches"):
        vals = figures.get(name)
        if vals and len(vals) >= 2 and vals[0]:
            change = 100.0 * (vals[1] - vals[0]) / vals[0]
            _say(f"   {name:28s} {vals[0]:>14,} -> {vals[1]:>14,} "
                 f"({change:+.1f}%)")
        elif vals:
            _say(f"   {name:28s} {vals[0]:>14,}")

    _say(f"\n== 4. run both, {args.runs} times each (median wall time)")
    results = {}
    for label, exe in (("original", binary), ("BOLTed", optimized)):
        times, outputs = [], set()
        for _ in range(args.runs):
            t, last = timed_run([exe] + work)
            times.append(t)
            outputs.add(last)
        results[label] = (statistics.median(times), outputs)
        _say(f"   {label:9s} {statistics.median(times):7.3f} s   {sorted(outputs)[0]}")
    same = results["original"][1] == results["BOLTed"][1]
    speedup = results["original"][0] / results["BOLTed"][0]
    _say(f"\n   same output: {'yes' if same else 'NO'}; "
         f"speed-up: {speedup:.2f}x (this CPU's own L1i may hold the hot "
         "code either way)")
    if shutil.which("valgrind"):
        _say("\n== 5. instruction-cache misses in a fixed simulated cache "
             "(cachegrind, 8 KiB 2-way I1)")
        small = ["--mode", "icache", "--scale", "5"]
        misses = {}
        for label, exe in (("original", binary), ("BOLTed", optimized)):
            misses[label] = cachegrind_i1_misses([exe] + small, out)
            _say(f"   {label:9s} {misses[label]:>12,} I1 misses")
        if misses["original"]:
            cut = 100.0 * (1 - misses["BOLTed"] / misses["original"])
            _say(f"   BOLT's layout cut I1 misses by {cut:.1f}%")
    return 0 if same else 1


def cachegrind_i1_misses(cmd, workdir):
    out_file = os.path.join(workdir, "cachegrind.out")
    proc = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=yes",
         "--I1=8192,2,64", f"--cachegrind-out-file={out_file}"] + cmd,
        capture_output=True, text=True)
    m = re.search(r"I1\s+misses:\s+([\d,]+)", proc.stderr)
    if proc.returncode != 0 or not m:
        raise SystemExit(f"demo: cachegrind failed:\n{proc.stderr[-2000:]}")
    return int(m.group(1).replace(",", ""))


if __name__ == "__main__":
    sys.exit(main())
