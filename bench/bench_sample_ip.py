#!/usr/bin/env python3
"""Kernel cost of one IP sample: sample_ip with and without the IP cache.

Run as root after scripts/setup.sh:  .venv/bin/python bench/bench_sample_ip.py

Records the demo workload (``ebpf-bolt -- workload``, IP mode, 4999 Hz)
and reads the kernel's own account of the program (BPF_ENABLE_STATS:
run_time_ns and run_cnt of sample_ip) over the recording: the time the
program adds to each sample, which falls on the profiled code. Two builds
of the same source run interleaved: the shipped object, and a baseline
compiled with -DEB_BASELINE_NO_CACHES (every sample goes straight to the
shared IP table, as before the IP cache). Workloads:
  - shares: 2 threads in 3 hot functions, a few hundred distinct IPs;
  - icache: 1 thread over 96 hot functions, ~2,500 distinct IPs in a few
    seconds, so a large share of samples is an IP's first (a map insert).
A command gets a per-task event, so nearly every program run is a sample
of the workload; the table shows the share (the rest: the moment before
its exec, when the forked child is still ebpf-bolt's Python).
"""
import argparse
import contextlib
import os
import statistics
import sys
import tempfile

from ebpf_bolt import bpf_object
from ebpf_bolt.collector import Recorder
from ebpf_bolt.demo.build import build_workload

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_replay import ProgramClock  # noqa: E402
from bpf_builds import BASELINE, build_object  # noqa: E402  (bench_replay's path)

RUN_CNT = ProgramClock.RUN_TIME_NS + 8   # bpf_prog_info.run_cnt follows


def record_once(cmd, obj_path):
    """One recording of `cmd`: (ns per program run, runs, target samples,
    distinct IPs)."""
    with object_file(obj_path):
        return _record_once(cmd)


@contextlib.contextmanager
def object_file(path):
    """Recorder loads the object bpf_object.object_path() names: `path`
    instead while this holds (None: the shipped one)."""
    shipped = bpf_object.object_path
    if path:
        bpf_object.object_path = lambda: path
    try:
        yield
    finally:
        bpf_object.object_path = shipped


def timed_recording(rec):
    """Run the Recorder `rec` (not started) to its end with the workload's
    output kept out of the report, timing sample_ip with BPF_ENABLE_STATS:
    (ns per program run, program runs, Profile). An error is raised, and
    shown, after stdout and stderr are restored."""
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        rec.start()
        clock = ProgramClock(rec.obj.program_fd("sample_ip"))
        try:
            t0, n0 = clock(), run_count(clock)
            rec.run()
            t1, n1 = clock(), run_count(clock)
        finally:
            clock.close()
        prof = rec.finish()
    finally:
        rec.close()
        for fd, old in zip((1, 2), saved):
            os.dup2(old, fd)
            os.close(old)
    runs = n1 - n0
    return ((t1 - t0) / runs if runs else None), runs, prof


def _record_once(cmd):
    ns, runs, prof = timed_recording(Recorder(command=cmd, mode="ip"))
    st = prof.stats
    return (float("nan") if ns is None else ns, runs,
            st["samples"] - st["other_process"], prof.info["distinct_addresses"])


def run_count(clock):
    clock()  # refreshes clock.buf
    return int.from_bytes(clock.buf.raw[RUN_CNT:RUN_CNT + 8], sys.byteorder)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--scale", type=int, default=300)
    args = ap.parse_args()
    # the workload and the baseline object, removed at the end (errors too)
    with tempfile.TemporaryDirectory(prefix="bench-sample-ip-") as work:
        run(args, work)


def run(args, work):
    wl = str(build_workload(work, pie=True))
    builds = {"IP cache (shipped)": None,
              "table only (baseline)": build_object(os.path.join(work, "baseline"),
                                                   BASELINE)}
    workloads = {"shares": [wl, "--scale", str(args.scale)],
                 "icache": [wl, "--mode", "icache", "--scale", str(args.scale)]}
    results = {}
    for name, cmd in workloads.items():
        for i in range(args.runs):
            for build, path in builds.items():   # interleaved: drift hits both
                r = record_once(cmd, path)
                results.setdefault((name, build), []).append(r)
                print(f"bench_sample_ip: {name} run {i + 1}/{args.runs} {build}: "
                      f"{r[0]:.0f} ns per run, {r[1]:,} runs, {r[2]:,} target "
                      f"samples, {r[3]:,} IPs", file=sys.stderr)
    print(f"\nmachine: {os.cpu_count()} CPUs, kernel {os.uname().release}\n")
    print("| workload | build | sample_ip ns per run, median (min-max) "
          "| runs on the target | distinct IPs |")
    print("|---|---|---|---|---|")
    for (name, build), rs in results.items():
        ns = [r[0] for r in rs]
        share = statistics.median(r[2] / r[1] for r in rs if r[1])
        print(f"| {name} | {build} | {statistics.median(ns):,.0f} "
              f"({min(ns):,.0f}-{max(ns):,.0f}) | {share:.0%} "
              f"| {statistics.median(r[3] for r in rs):,.0f} |")


if __name__ == "__main__":
    main()
