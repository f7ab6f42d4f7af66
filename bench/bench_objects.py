#!/usr/bin/env python3
"""Profiling objects across processes (issue 9): what translation in the
kernel costs, against the object before it and against perf record.

Run as root after scripts/setup.sh, from this checkout:

    .venv/bin/python bench/bench_objects.py [--before DIR] [--runs 5]

Three parts (--parts cost,slowdown,entries; all by default):

1. cost: sample_ip's kernel time per program run (BPF_ENABLE_STATS:
   run_time_ns / run_cnt, as bench_sample_ip.py reads it), before the
   change (a checkout of 8f0e52b with its own .venv, given by --before:
   its own installed package loads its own object) and after (this
   checkout's .venv), runs interleaved, the order swapped every run.
   Workloads: the demo's shares mode (2 threads, a few hundred IPs), its
   icache mode (1 thread, more than 2,500 distinct IPs at --icache-scale;
   the table shows the count), and front + libhot.so (tests/workloads.py:
   97% of the samples in the library; after the change recorded with
   --binary libhot.so). Each recording runs in a child Python of the
   checkout's .venv (this file with --child), so that each side uses its
   own package and object. Also per run: vma_lookups (bpf_find_vma calls
   from samples) and unresolved samples (after only: the counters are new).
2. slowdown: the workload's own wall time (and CPU) unprofiled, under
   `ebpf-bolt -F F --binary BIN -o X -- CMD` and under `perf record -e
   cpu-clock -F F -o perf.data -- CMD`, interleaved and rotated, median of
   --runs each. CMD runs under a small C timer (TIMER_C), so the time is
   the workload's, from its first instruction to its last child's exit,
   without either profiler's start-up or write-out. Workloads: (a) the
   40-process loop (tests/workloads.py short_loop_argv: 40 x workload-pie
   --scale 5 --early 1 --late 0); (b) one thread on an otherwise idle
   second CPU (workload-pie --scale S --early 1 --late 0).
3. entries: the same work as 5 processes x --scale 10 and as 50 processes
   x --scale 1 of workload-pie (tests/test_objects.py): the binary's
   addresses in the profile, the keys in the map (all objects), processes,
   and the drain time of each (profile.info["drain_seconds"]).
(Part 4, ip_counts preallocated or filled on demand, went with the per-CPU
hashes: the count tables are arrays allocated at load. bench_tables.py
part 4 measures their first sightings against the hashes before them.)

Every measurement line on stderr carries the load average read just
before it: other work on the machine shows there. It prints markdown.
"""
import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT / "tests"))  # workload builds, not shipped

PARTS = ("cost", "slowdown", "entries")


def loadavg():
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def say(msg):
    print(f"bench_objects: {msg}", file=sys.stderr, flush=True)


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def fig(values, fmt):
    """median (min-max)"""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return (f"{fmt.format(statistics.median(values))} "
            f"({fmt.format(min(values))}-{fmt.format(max(values))})")


# --------------------------------------------------------------------------
# One recording, in a child Python of either checkout's .venv

def child(spec_path, out_path):
    """Record spec["cmd"] in IP mode through the ebpf_bolt this Python has
    installed; write sample_ip's kernel time and the profile's facts to
    out_path as JSON."""
    spec = json.loads(Path(spec_path).read_text())
    from ebpf_bolt.collector import Recorder
    from bench_sample_ip import timed_recording

    kw = {"command": spec["cmd"], "mode": "ip",
          "frequency": spec["frequency"]}
    if spec.get("binaries"):
        kw["binaries"] = spec["binaries"]   # after the change only
    ns, runs, prof = timed_recording(Recorder(**kw))
    st = prof.stats
    Path(out_path).write_text(json.dumps({
        "ns": ns, "runs": runs,
        "samples": st["samples"],
        "target": st["samples"] - st.get("other_process", 0),
        "vma_lookups": st.get("vma_lookups"),
        "unresolved": st.get("unresolved"),
        "in_map": prof.info["distinct_addresses"],
        "binary_addresses": len(prof.samples),
        "binary_samples": sum(prof.samples.values()),
        "processes": prof.info.get("processes"),
        "drain": prof.info["drain_seconds"],
    }))


def record(python, spec, work):
    """One recording through `python` (a checkout's .venv): child()'s
    result, with the load average read before it."""
    spec_path, out_path = work / "spec.json", work / "result.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    load = loadavg()
    p = subprocess.run([str(python), str(BENCH / "bench_objects.py"),
                        "--child", str(spec_path), str(out_path)],
                       stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=600)
    if p.returncode != 0:
        raise SystemExit(f"bench_objects: recording with {python} failed "
                         f"(exit {p.returncode}):\n{p.stderr[-3000:]}")
    r = json.loads(out_path.read_text())
    r["load"] = load
    return r


# --------------------------------------------------------------------------
# 1. per-sample kernel cost, before and after

def part_cost(args, work, wl):
    from workloads import build_front, build_libhot
    libdir = work / "lib"
    libdir.mkdir()
    libhot = build_libhot(libdir)
    front = build_front(libdir, libhot)
    workloads = {
        "shares": ([str(wl), "--scale", str(args.scale)], None),
        "icache": ([str(wl), "--mode", "icache", "--scale",
                    str(args.icache_scale)], None),
        "front + libhot.so": ([str(front), str(args.front_units)],
                              [str(libhot)]),
    }
    before = subprocess.run(["git", "-C", args.before, "rev-parse", "--short",
                             "HEAD"], capture_output=True, text=True)
    sides = {f"before ({before.stdout.strip() or args.before})":
             args.before_python,
             "after (this checkout)": args.after_python}
    res = {}
    for i in range(args.runs):
        order = list(sides.items())
        if i % 2:
            order.reverse()
        for name, (cmd, binaries) in workloads.items():
            for side, python in order:
                spec = {"cmd": cmd, "frequency": args.frequency,
                        "binaries": binaries if side.startswith("after")
                        else None}
                r = record(python, spec, work)
                res.setdefault((name, side), []).append(r)
                say(f"cost run {i + 1}/{args.runs} {name}, {side}: "
                    f"{r['ns']:.0f} ns per run, {r['runs']:,} runs, "
                    f"{r['in_map']:,} keys, vma_lookups {r['vma_lookups']}, "
                    f"unresolved {r['unresolved']} (load {r['load']})")
    print("### 1. sample_ip kernel time per program run, before and after\n")
    print(f"{args.frequency} Hz, {args.runs} runs each, interleaved; medians "
          "(min-max). Keys: distinct addresses in the map (before: runtime "
          "IPs of the process; after: (object, offset) of every object).\n")
    print("| workload | object | ns per run | runs | share on the target "
          "| keys in the map | vma_lookups | unresolved | load avg (1 min) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (name, side), rs in res.items():
        print(f"| {name} | {side} | {fig([r['ns'] for r in rs], '{:,.0f}')} "
              f"| {med([r['runs'] for r in rs]):,.0f} "
              f"| {med([r['target'] / r['samples'] for r in rs]):.1%} "
              f"| {med([r['in_map'] for r in rs]):,.0f} "
              f"| {fig([r['vma_lookups'] for r in rs], '{:,.0f}')} "
              f"| {fig([r['unresolved'] for r in rs], '{:,.0f}')} "
              f"| {load_range(rs)} |")
    print()
    print("| workload | after - before, ns per run (medians) | goal |")
    print("|---|---|---|")
    for name in workloads:
        b, a = (med([r["ns"] for r in res[(name, s)]]) for s in sides)
        goal = 300 if "libhot" in name else 100
        print(f"| {name} | {a - b:+,.0f} | <= {goal} ns: "
              f"{'met' if a - b <= goal else 'not met'} |")
    print()


def load_range(rs):
    ones = [float(r["load"].split()[0]) for r in rs]
    return f"{min(ones):.2f}-{max(ones):.2f}"


# --------------------------------------------------------------------------
# 2. workload slowdown against perf record

# The workload's own time: CLOCK_MONOTONIC from before it forks the command
# to the command's exit, and the CPU of the command and every descendant it
# waited for (RUSAGE_CHILDREN), written to REPORT. Profilers are started
# before it and write out after it, so neither shows in these figures.
TIMER_C = r"""
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: timer REPORT COMMAND [ARGS...]\n");
        return 127;
    }
    double t0 = now();
    pid_t pid = fork();
    if (pid == 0) {
        execvp(argv[2], argv + 2);
        perror(argv[2]);
        _exit(127);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) < 0) {
        perror("timer");
        return 127;
    }
    double wall = now() - t0;
    struct rusage ru;
    getrusage(RUSAGE_CHILDREN, &ru);
    FILE *f = fopen(argv[1], "w");
    if (!f) {
        perror(argv[1]);
        return 127;
    }
    fprintf(f, "%.6f %ld.%06ld %ld.%06ld\n", wall,
            (long)ru.ru_utime.tv_sec, (long)ru.ru_utime.tv_usec,
            (long)ru.ru_stime.tv_sec, (long)ru.ru_stime.tv_usec);
    fclose(f);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
"""

KINDS = ("unprofiled", "ebpf-bolt", "perf record")
# ebpf-bolt with Recorder.run's poll period (OBJECT_POLL, 20 ms) changed:
# does its own user-space wake-up show in the workload? (--poll-variant)
POLL_VARIANT = ("import sys; import ebpf_bolt.collector as c; "
                "c.OBJECT_POLL = {poll}; from ebpf_bolt.cli import main; "
                "sys.exit(main(sys.argv[1:]))")


def build_timer(work):
    src, exe = work / "timer.c", work / "timer"
    src.write_text(TIMER_C)
    subprocess.run(["cc", "-O2", "-o", str(exe), str(src)], check=True)
    return exe


def run_timed(kind, cmd, binary, args, work, timer):
    """One run of `cmd` under the timer, unprofiled or under a profiler:
    {wall, cpu} of the workload, the profiler's own CPU and total wall."""
    report = work / "timer.out"
    report.unlink(missing_ok=True)
    timed = [str(timer), str(report), *cmd]
    if kind.startswith("ebpf-bolt"):
        eb = [str(args.ebpf_bolt)]
        if kind != "ebpf-bolt":   # the diagnostic: another OBJECT_POLL
            eb = [str(args.after_python), "-c", POLL_VARIANT.format(
                poll=args.poll_variant)]
        argv = [*eb, "-F", str(args.frequency), "--binary",
                str(binary), "-o", str(work / "eb.fdata"), "--", *timed]
    elif kind == "perf record":
        argv = [args.perf, "--buildid-dir", str(work / "buildid-cache"),
                "record", "-q", "-e", "cpu-clock", "-F", str(args.frequency),
                "-o", str(work / "perf.data"), "--", *timed]
    else:
        argv = timed
    load = loadavg()
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    _, status, ru = os.wait4(p.pid, 0)
    total = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read()
    p.stderr.close()
    if p.returncode != 0:
        raise SystemExit(f"bench_objects: {kind} exited with "
                         f"{p.returncode}: {err[-2000:]}")
    wall, ut, st = (float(x) for x in report.read_text().split())
    cpu = ut + st
    return {"wall": wall, "cpu": cpu, "total": total, "load": load,
            # what the profiler itself used: everything it reaped minus
            # the workload's own CPU
            "prof_cpu": (ru.ru_utime + ru.ru_stime - cpu
                         if kind != "unprofiled" else None)}


def part_slowdown(args, work, wl):
    from workloads import short_loop_argv
    timer = build_timer(work)
    workloads = {
        "(a) 40-process loop": short_loop_argv(wl, 40),
        f"(b) 1 thread, --scale {args.single_scale}":
            [str(wl), "--scale", str(args.single_scale), "--early", "1",
             "--late", "0"],
    }
    print("### 2. Workload slowdown, ebpf-bolt against perf record\n")
    print(f"{args.frequency} Hz (`ebpf-bolt -F {args.frequency} --binary "
          f"BIN` and `perf record -e cpu-clock -F {args.frequency}`), "
          f"{args.runs} runs of each kind, interleaved and rotated; the "
          "workload's own wall time and CPU (TIMER_C), medians (min-max); "
          "slowdown of each run against the unprofiled median.\n")
    kinds = KINDS
    if args.poll_variant:
        kinds += (f"ebpf-bolt, poll {args.poll_variant:g} s",)
    n = len(kinds)
    for name, cmd in workloads.items():
        run_timed("unprofiled", cmd, wl, args, work, timer)   # warm-up
        res = {k: [] for k in kinds}
        for i in range(args.runs):
            for kind in kinds[i % n:] + kinds[:i % n]:
                r = run_timed(kind, cmd, wl, args, work, timer)
                res[kind].append(r)
                say(f"slowdown {name} run {i + 1}/{args.runs} {kind}: "
                    f"wall {r['wall']:.3f} s, cpu {r['cpu']:.3f} s, "
                    f"total {r['total']:.2f} s (load {r['load']})")
        base_wall = med([r["wall"] for r in res["unprofiled"]])
        base_cpu = med([r["cpu"] for r in res["unprofiled"]])
        print(f"#### {name}\n")
        print("| | workload wall (s) | slowdown | workload CPU (s) | CPU "
              "increase | profiler's own CPU (s) | start to exit (s) "
              "| load avg (1 min) |")
        print("|---|---|---|---|---|---|---|---|")
        for kind, rs in res.items():
            slow = [100 * (r["wall"] / base_wall - 1) for r in rs]
            more = [100 * (r["cpu"] / base_cpu - 1) for r in rs]
            print(f"| {kind} | {fig([r['wall'] for r in rs], '{:.3f}')} "
                  f"| {fig(slow, '{:+.1f}%') if kind != 'unprofiled' else '-'} "
                  f"| {fig([r['cpu'] for r in rs], '{:.3f}')} "
                  f"| {fig(more, '{:+.1f}%') if kind != 'unprofiled' else '-'} "
                  f"| {fig([r['prof_cpu'] for r in rs], '{:.3f}')} "
                  f"| {fig([r['total'] for r in rs], '{:.2f}')} "
                  f"| {load_range(rs)} |")
        print()


# --------------------------------------------------------------------------
# 3. map entries, 5 against 50 processes

def part_entries(args, work, wl):
    from workloads import short_loop_argv
    cases = {5: "10", 50: "1"}
    res = {}
    for i in range(args.runs):
        for n, scale in cases.items():
            cmd = short_loop_argv(wl, n, args=["--scale", scale, "--early",
                                               "1", "--late", "0"])
            spec = {"cmd": cmd, "frequency": args.frequency,
                    "binaries": [str(wl)]}
            r = record(args.after_python, spec, work)
            res.setdefault(n, []).append(r)
            say(f"entries run {i + 1}/{args.runs} {n} processes: "
                f"{r['binary_addresses']:,} of the binary, {r['in_map']:,} "
                f"in the map, {r['processes']} processes, drain "
                f"{r['drain']:.3f} s (load {r['load']})")
    print("### 3. Map entries, 5 against 50 processes of workload-pie\n")
    print(f"Same work: 5 x --scale 10 and 50 x --scale 1 (--early 1 --late 0) "
          f"under one shell, {args.frequency} Hz, --binary workload-pie, "
          f"{args.runs} runs each, medians (min-max).\n")
    print("| processes | addresses of the binary | keys in the map (all "
          "objects) | samples in the binary | processes seen | drain and "
          "translate (s) | vma_lookups | unresolved | load avg (1 min) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, rs in res.items():
        print(f"| {n} | {fig([r['binary_addresses'] for r in rs], '{:,}')} "
              f"| {fig([r['in_map'] for r in rs], '{:,}')} "
              f"| {fig([r['binary_samples'] for r in rs], '{:,}')} "
              f"| {fig([r['processes'] for r in rs], '{}')} "
              f"| {fig([r['drain'] for r in rs], '{:.3f}')} "
              f"| {fig([r['vma_lookups'] for r in rs], '{:,}')} "
              f"| {fig([r['unresolved'] for r in rs], '{:,}')} "
              f"| {load_range(rs)} |")
    print()


# --------------------------------------------------------------------------

def apply_nice(nice):
    """Niceness `nice` for this script and all it starts. With scheduler
    autogroups niceness only ranks processes of one session, so the script
    goes on in a new session (setsid) whose autogroup gets it too, as
    bench_ip.py does. Returns the exit code in the parent, None in the
    process that goes on."""
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)
    os.setsid()
    with contextlib.suppress(OSError):   # no autogroups: niceness is enough
        Path("/proc/self/autogroup").write_text(str(nice))
    return None


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--before", default="/work/wt-before",
                    help="checkout of the commit before the change, with "
                         "its own .venv (scripts/setup.sh)")
    ap.add_argument("--frequency", type=int, default=4999)
    ap.add_argument("--scale", type=int, default=300,
                    help="shares workload --scale (part 1)")
    ap.add_argument("--icache-scale", type=int, default=1000,
                    help="icache workload --scale (part 1)")
    ap.add_argument("--front-units", type=int, default=3000,
                    help="front + libhot.so units, ~1 ms each (part 1)")
    ap.add_argument("--single-scale", type=int, default=300,
                    help="single-thread workload --scale (part 2b)")
    ap.add_argument("--poll-variant", type=float, default=None,
                    help="part 2 also runs ebpf-bolt with OBJECT_POLL set "
                         "to this many seconds (a diagnostic)")
    ap.add_argument("--nice", type=int, default=0,
                    help="niceness of everything the script runs, in a "
                         "session (autogroup) of its own: e.g. -10 to "
                         "shield the runs from other load (default 0)")
    ap.add_argument("--ebpf-bolt", default=str(ROOT / ".venv/bin/ebpf-bolt"))
    ap.add_argument("--perf", default="/usr/bin/perf")
    args = ap.parse_args()
    parts = args.parts.split(",")
    if set(parts) - set(PARTS):
        ap.error(f"--parts: unknown {sorted(set(parts) - set(PARTS))}")
    args.after_python = ROOT / ".venv/bin/python"
    args.before_python = Path(args.before) / ".venv/bin/python"
    if "cost" in parts and not args.before_python.exists():
        ap.error(f"{args.before_python} missing: make a worktree of 8f0e52b "
                 "and run its scripts/setup.sh, or give --before")
    if args.nice:
        code = apply_nice(args.nice)
        if code is not None:
            return code
    from ebpf_bolt.demo.build import build_workload
    with tempfile.TemporaryDirectory(prefix="bench-objects-") as w:
        work = Path(w)
        wl = build_workload(work, pie=True)
        print(f"machine: {os.cpu_count()} CPUs, kernel "
              f"{platform.release()}; niceness {args.nice}; load average at "
              f"start {loadavg()}\n")
        for part in parts:
            globals()[f"part_{part}"](args, work, wl)
        print(f"load average at the end: {loadavg()}")


if __name__ == "__main__":
    sys.exit(main())
