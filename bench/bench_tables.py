#!/usr/bin/env python3
"""Count tables shared by all CPUs (issue 12): what the open-addressing
tables (ip_counts, trace_counts: arrays shared by all CPUs, cmpxchg claim,
atomic adds) cost against the per-CPU hashes before them.

Run as root after scripts/setup.sh, from this checkout, with a checkout of
the commit before the change (84769ba) that has its own .venv:

    .venv/bin/python bench/bench_tables.py [--before /work/wt-before]

"before" is that checkout's installed package and object, "after" this
one's; each side's measurements run in a child Python of its own .venv
(this file with --child), the children interleaved and the order swapped
every round. The stacks are made once, here, and given to both sides.
Parts (--parts speed,cpus,hammer,ip,contention,drain; all by default):

1. speed: replay's kernel cost per 32-deep stack, as bench_replay.py
   measures it (run of N stacks minus an empty run, over N; the kernel's
   own run time, BPF_ENABLE_STATS), before and after: one random stack in
   libc's code, one per run (bench_replay's first stack); the demo
   workload's shares and icache modes recorded under qemu-user
   (bench_replay.recorded_stacks), 256 per run. Each child gives its
   median; the table shows the median (min-max) over the children, and
   the ratio of the fastest child of each side.
2. cpus: the recorded stacks on one CPU alone and on both CPUs at once.
   Each CPU has its own half of the stacks in its own part of the replay
   array (loaded once: the threads only run the program, so both are in
   the kernel at the same time most of the time; the table shows how
   much) and replays it alone (CPU 0, then CPU 1) or both at once, one
   pinned thread each, interleaved. Kernel time per stack: the program's
   run_time_ns over the stacks of both CPUs, less the empty runs (the
   kernel keeps one sum over all CPUs, so with both at once this is their
   mean); per CPU: each thread's own CPU time around its runs
   (CLOCK_THREAD_CPUTIME_ID: the program plus the syscall, less empty
   runs). Both sides (the before checkout's Replayer has no feed_at_once:
   the same threads run it here).
3. hammer: one 32-deep stack (part 1's), 256 copies per run, on one CPU
   and on both at once, as part 2, with the default trace cache and with
   a 1-set cache (Replayer(sets=1): 2 ways for the stack's 32 traces, so
   most go to the table every time: both CPUs add to the same slots).
   The share of traces that reach the table is shown (after only).
4. ip: sample_ip's kernel time per program run (BPF_ENABLE_STATS, as
   bench_sample_ip.timed_recording reads it) recording the demo's icache
   mode in IP mode (thousands of distinct IPs, so many samples are an
   IP's first: a table insert), before and after, interleaved; also the
   time of Recorder.start() (load, attach, start of the command: the
   table is allocated whole at load) and ip_counts' memory as the kernel
   accounts it (fdinfo memlock) after start and at the end.
5. contention (after only): the share of trace counts that reach the
   shared table past the per-CPU caches (table_updates / traces) on the
   recorded stacks, for a first pass (every trace new) and a second one
   (steady state), and what that is per second per CPU at 5 kHz with
   32-entry stacks (5000 x 32 x share); for IP samples, table_updates /
   samples of part 4's recordings (5000 x share per second per CPU).
6. drain: bench_replay.drain_and_write, the time to drain, translate and
   write 1,000,000 distinct traces; after, and before for comparison.

Each measurement line on stderr carries the load average and the CPU
others used just before it (busy: CPUs busy in a 0.3 s window while this
script sleeps). A measurement waits, up to --max-wait seconds, for others
to use less than --max-busy CPUs. It prints markdown.
"""
import argparse
import contextlib
import json
import os
import pickle
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT / "tests"))  # brtrace, for recorded stacks
from bench_objects import fig, loadavg, med  # noqa: E402

PARTS = ("speed", "cpus", "hammer", "ip", "contention", "drain")
DEPTH = 32
PER_RUN = 256          # recorded stacks per run, as bench_replay.py
MAX_ENTRIES = 1 << 20  # trace map size of bench_replay.py's replays
LIVE_HZ = 4999         # ebpf-bolt's default frequency
GOAL_RATE_HZ = 5000    # the contention figure's rate (the issue's)


def say(msg):
    print(f"bench_tables: {msg}", file=sys.stderr, flush=True)


def cpu_busy(seconds=0.3):
    """CPUs busy over `seconds` (from /proc/stat) while this process
    sleeps: what others use."""
    def busy_idle():
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0]
             .split()[1:]]
        idle = f[3] + f[4]
        return sum(f[:8]) - idle, idle
    b0, i0 = busy_idle()
    time.sleep(seconds)
    b1, i1 = busy_idle()
    total = (b1 - b0) + (i1 - i0)
    return (b1 - b0) / total * os.cpu_count() if total else 0.0


def quiet_enough(args):
    """Wait until others use less than args.max_busy CPUs (at most
    args.max_wait seconds); returns 'load ..., busy ...' for the line."""
    deadline = time.monotonic() + args.max_wait
    while True:
        busy = cpu_busy()
        if busy <= args.max_busy or time.monotonic() > deadline:
            break
        say(f"waiting: others use {busy:.2f} CPUs (load {loadavg()})")
        time.sleep(5)
    return f"load {loadavg()}, busy {busy:.2f}"


def load_range(lines):
    ones = [float(s.split()[1]) for s in lines]
    return f"{min(ones):.2f}-{max(ones):.2f}"


# --------------------------------------------------------------------------
# The children: each side's measurements through its own package

def child(spec_path, out_path):
    spec = json.loads(Path(spec_path).read_text())
    result = CHILD_TASKS[spec["task"]](spec)
    Path(out_path).write_text(json.dumps(result))


def read_sources(spec):
    with open(spec["stacks"], "rb") as f:
        sources = pickle.load(f)
    return {name: sources[name] for name in spec["sources"]}


def child_speed(spec):
    """{source: [ns per stack of each batch]} over spec["passes"] passes
    (bench_replay.one_pass), after one pass that puts the traces in the
    map."""
    from ebpf_bolt.replay import Replayer, pack_stacks
    from bench_replay import ProgramClock, one_pass
    out = {}
    for name, (stacks, objects, per_run) in read_sources(spec).items():
        batches = [pack_stacks(stacks[i:i + per_run])[0]
                   for i in range(0, len(stacks), per_run)]
        with Replayer(objects, max_entries=MAX_ENTRIES) as rep:
            clock = ProgramClock(rep.obj.program_fd("replay_branches"))
            try:
                rep.feed(stacks)  # warm: the map holds the traces
                costs = []
                for _ in range(spec["passes"]):
                    costs += one_pass(rep, clock, batches)
            finally:
                clock.close()
        out[name] = costs
    return out


def load_at(rep, words, first):
    """Put packed stacks into the replay array from stack `first` on (the
    before checkout's Replayer.load has no `first`)."""
    from ebpf_bolt.replay import STACK_BYTES
    data = words.tobytes()
    rep._mem[first * STACK_BYTES:first * STACK_BYTES + len(data)] = data


def replay_thread(rep, cpu, runs, passes, ready, out):
    """Pinned to `cpu`: wait for `ready`, then replay `runs` ([(first,
    count)] of loaded stacks) `passes` times; out[cpu]: stacks, runs, the
    thread's CPU ns, and the wall-clock spans of its runs."""
    from ebpf_bolt.layout import ReplayArgs
    try:
        os.sched_setaffinity(0, {cpu})   # 0: this thread
    except BaseException:
        ready.abort()                    # the others do not wait for it
        raise
    spans, cpu_ns, stacks = [], 0, 0
    ready.wait()
    for _ in range(passes):
        for first, count in runs:
            args = ReplayArgs(first=first, count=count)
            t0, c0 = time.monotonic_ns(), time.thread_time_ns()
            ret = rep.obj.run_program("replay_branches", args)
            c1, t1 = time.thread_time_ns(), time.monotonic_ns()
            if ret or args.done != count:
                raise RuntimeError(f"replay on CPU {cpu}: returned {ret}, "
                                   f"{args.done} of {count} stacks")
            spans.append((t0, t1))
            cpu_ns += c1 - c0
            stacks += count
    out[cpu] = {"stacks": stacks, "runs": passes * len(runs),
                "cpu_ns": cpu_ns, "spans": spans}


def overlap(a, b):
    """ns during which spans of both lists (each sorted, disjoint) run."""
    i = j = total = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            total += hi - lo
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def replay_on(rep, clock, plans, passes):
    """Run each CPU's plan at the same time (one CPU: alone): kernel ns of
    the program over all of them, and each thread's figures."""
    ready = threading.Barrier(len(plans) + 1)
    out = {}
    threads = [threading.Thread(target=replay_thread,
                                args=(rep, cpu, runs, passes, ready, out))
               for cpu, runs in plans.items()]
    for t in threads:
        t.start()
    k0 = clock()
    with contextlib.suppress(threading.BrokenBarrierError):
        ready.wait()
    for t in threads:
        t.join()
    k1 = clock()
    if len(out) != len(plans):
        raise RuntimeError("a replay thread failed (its error is above)")
    return k1 - k0, out


def table_stats(rep):
    st = rep.obj.stats()
    return st.get("table_updates"), st["traces"]


def child_cpus(spec):
    """For each source: rounds of (CPU 0 alone, CPU 1 alone, both at once),
    the order rotated; each CPU replays its own loaded stacks."""
    from ebpf_bolt.replay import BATCH, Replayer, pack_stacks
    from bench_replay import ProgramClock
    cpus = spec["cpus"]
    room = BATCH // len(cpus)
    out = {}
    for name, (stacks, objects, per_run) in read_sources(spec).items():
        sets = spec.get("sets", {}).get(name)
        if len(stacks) > room:   # recorded: a half each
            share = min(len(stacks) // len(cpus), room)
            parts = [stacks[i * share:(i + 1) * share]
                     for i in range(len(cpus))]
        else:                    # one hot stack: the same on every CPU
            parts = [stacks] * len(cpus)
        with Replayer(objects, max_entries=MAX_ENTRIES, sets=sets) as rep:
            plans = {}
            for n, (cpu, part) in enumerate(zip(cpus, parts)):
                first = n * room
                load_at(rep, pack_stacks(part)[0], first)
                plans[cpu] = [(first + i, min(per_run, len(part) - i))
                              for i in range(0, len(part), per_run)]
            per_pass = len(parts[0])
            passes = max(1, spec["stacks_per_measure"] // per_pass)
            clock = ProgramClock(rep.obj.program_fd("replay_branches"))
            res = {"rounds": [], "updates": {"alone": [0, 0],
                                             "both": [0, 0]}}
            try:
                for cpu, plan in plans.items():   # warm: traces in the map
                    replay_on(rep, clock, {cpu: plan}, 1)
                kinds = [("alone", [c]) for c in cpus] + [("both", cpus)]
                for r in range(spec["rounds"]):
                    empty = {c: empty_cost(rep, clock, c) for c in cpus}
                    got = {"alone": {}, "alone_cpu": {}}
                    for kind, on in kinds[r % 3:] + kinds[:r % 3]:
                        u0 = table_stats(rep)
                        kns, th = replay_on(rep, clock,
                                            {c: plans[c] for c in on}, passes)
                        u1 = table_stats(rep)
                        acc = res["updates"][kind]
                        if u0[0] is not None:
                            acc[0] += u1[0] - u0[0]
                        acc[1] += u1[1] - u0[1]
                        fixed = sum(t["runs"] * empty[c][0]
                                    for c, t in th.items())
                        kernel = (kns - fixed) / sum(t["stacks"]
                                                     for t in th.values())
                        per_cpu = {str(c): (t["cpu_ns"] - t["runs"] *
                                            empty[c][1]) / t["stacks"]
                                   for c, t in th.items()}
                        if kind == "alone":
                            got["alone"][str(on[0])] = kernel
                            got["alone_cpu"].update(per_cpu)
                        else:
                            got["both"], got["both_cpu"] = kernel, per_cpu
                            busy = [sum(e - s for s, e in t["spans"])
                                    for t in th.values()]
                            both = overlap(*(t["spans"] for t in th.values()))
                            got["at_once"] = both / (sum(busy) / 2)
                    res["rounds"].append(got)
            finally:
                clock.close()
        res["passes"], res["per_pass"] = passes, per_pass
        out[name] = res
    return out


def empty_cost(rep, clock, cpu, runs=64):
    """(kernel ns, thread CPU ns) of one empty run on `cpu`."""
    kns, th = replay_on(rep, clock, {cpu: [(0, 0)]}, runs)
    return kns / runs, th[cpu]["cpu_ns"] / runs


def map_memlock(fd):
    """The kernel's own account of a map's memory (fdinfo memlock)."""
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("memlock:"):
            return int(line.split()[1])
    return None


def child_ip(spec):
    """One IP recording of spec["cmd"]: sample_ip's ns per program run
    (bench_sample_ip.timed_recording), Recorder.start()'s time, ip_counts'
    memlock after start and before the drain, and the counters."""
    from ebpf_bolt.collector import Recorder
    from bench_sample_ip import timed_recording
    rec = Recorder(command=spec["cmd"], mode="ip")
    start, finish = rec.start, rec.finish
    facts = {}

    def timed_start():
        t0 = time.monotonic()
        start()
        facts["start_s"] = time.monotonic() - t0
        facts["memlock_start"] = map_memlock(rec.obj.map_fd("ip_counts"))

    def finish_after_memlock():
        facts["memlock_end"] = map_memlock(rec.obj.map_fd("ip_counts"))
        return finish()
    rec.start, rec.finish = timed_start, finish_after_memlock
    ns, runs, prof = timed_recording(rec)
    st = prof.stats  # read before the drain (whose cache flush adds updates)
    return {"ns": ns, "runs": runs, "samples": st["samples"],
            "target": st["samples"] - st.get("other_process", 0),
            "table_updates": st.get("table_updates"),
            "keys": prof.info["distinct_addresses"], **facts}


def child_drain(spec):
    from bench_replay import drain_and_write
    with tempfile.TemporaryDirectory(prefix="bench-tables-drain-") as work:
        n, drain, write, size = drain_and_write(spec["traces"], work)
    return {"traces": n, "drain": drain, "write": write, "size": size}


CHILD_TASKS = {"speed": child_speed, "cpus": child_cpus, "ip": child_ip,
               "drain": child_drain}


def run_child(args, side, spec, work):
    """One child of `side`'s .venv: its result, with the load seen before
    it (result["load"])."""
    spec_path, out_path = work / "spec.json", work / "result.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    load = quiet_enough(args)
    p = subprocess.run([str(args.python[side]), str(BENCH / "bench_tables.py"),
                        "--child", str(spec_path), str(out_path)],
                       stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=900)
    if p.returncode != 0:
        raise SystemExit(f"bench_tables: {spec['task']} ({side}) failed "
                         f"(exit {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(out_path.read_text()), load


def interleaved(args, rounds):
    """Sides in the order of each round: swapped every other round."""
    for i in range(rounds):
        sides = list(args.sides)
        yield i, sides[::-1] if i % 2 else sides


# --------------------------------------------------------------------------
# The stacks, made once for both sides

def make_stacks(work, need_recorded):
    """{name: (stacks, objects, per_run)} pickled into work/stacks.pickle:
    bench_replay's first random stack (random.Random(1)) and, if asked,
    the recorded shares and icache stacks."""
    from bench_replay import libc_code, random_stack, recorded_stacks
    rng = random.Random(1)
    libc, (lo, span) = libc_code()
    one = random_stack(rng, lo, span)
    sources = {"random": ([one] * PER_RUN, libc, 1),
               "hammer": ([one] * PER_RUN, libc, PER_RUN)}
    for mode in ("shares", "icache") if need_recorded else ():
        rec = recorded_stacks(4096, mode, str(work))
        if rec:
            sources[mode] = (rec[0], rec[1], PER_RUN)
    path = work / "stacks.pickle"
    with open(path, "wb") as f:
        pickle.dump(sources, f)
    return path, sources


SOURCE_NAMES = {"random": "random, one stack per run",
                "shares": "recorded, shares mode, 256 per run",
                "icache": "recorded, icache mode, 256 per run"}


# --------------------------------------------------------------------------
# 1. kernel cost per stack, before and after

def part_speed(args, work, stacks_path, sources):
    names = [n for n in SOURCE_NAMES if n in sources]
    res, loads = {}, []
    for i, order in interleaved(args, args.rounds):
        for side in order:
            r, load = run_child(args, side, {
                "task": "speed", "stacks": str(stacks_path),
                "sources": names, "passes": args.passes}, work)
            loads.append(load)
            for name in names:   # one figure per child: its median
                res.setdefault((name, side), []).append(med(r[name]))
            say(f"speed round {i + 1}/{args.rounds} {side}: " + ", ".join(
                f"{n} {med(r[n]):.0f} ns" for n in names) + f" ({load})")
    print("### 1. Kernel cost per 32-deep stack, before and after\n")
    print("Replay, ns per stack (run minus empty run, over its stacks; "
          "BPF_ENABLE_STATS): each child's median over its batches "
          f"({args.passes} passes), then the median (min-max) of the "
          f"{args.rounds} children per side, interleaved (a whole child, of "
          "either side, sometimes runs slower than the others throughout). "
          "Load average (1 min) "
          f"{load_range(loads)}.\n")
    print(f"| stacks (32 deep) | {args.label['before']} | "
          f"{args.label['after']} | after / before, medians | after / "
          "before, fastest children | goal: no worse (medians) |")
    print("|---|---|---|---|---|---|")
    for name in names:
        b, a = (res[(name, s)] for s in ("before", "after"))
        ratio = med(a) / med(b)
        print(f"| {SOURCE_NAMES[name]} ({len(sources[name][0]):,} stacks) "
              f"| {fig(b, '{:,.0f}')} | {fig(a, '{:,.0f}')} | {ratio:.2f} "
              f"| {min(a) / min(b):.2f} "
              f"| {'met' if ratio <= 1 else 'NOT met'} |")
    print()


# --------------------------------------------------------------------------
# 2 and 3. one CPU alone against both at once

def cpus_runs(args, work, stacks_path, names, sets=None):
    """child_cpus on both sides, interleaved: {(label, side): [results]}.
    names: {label: source}; sets: {label: trace cache sets} (one child per
    cache size: the size is the Replayer's)."""
    groups = {}
    for label, source in names.items():
        groups.setdefault((sets or {}).get(label), []).append((label, source))
    res, loads = {}, []
    for i, order in interleaved(args, args.cpu_rounds):
        for side in order:
            for nsets, items in groups.items():
                spec = {"task": "cpus", "stacks": str(stacks_path),
                        "sources": [src for _, src in items],
                        "sets": {src: nsets for _, src in items if nsets},
                        "cpus": args.cpus, "rounds": args.cpu_inner,
                        "stacks_per_measure": args.stacks_per_measure}
                r, load = run_child(args, side, spec, work)
                loads.append(load)
                for label, src in items:
                    res.setdefault((label, side), []).append(r[src])
                    rounds = r[src]["rounds"]
                    say(f"cpus round {i + 1}/{args.cpu_rounds} {label}, "
                        f"{side}: alone {med(alone_of(rounds)):.0f}, both "
                        f"{med([g['both'] for g in rounds]):.0f} ns per "
                        f"stack, rise {med(rises(rounds)):+.1%}, at once "
                        f"{med([g['at_once'] for g in rounds]):.0%} ({load})")
    return res, loads


def alone_of(rounds):
    """Each round's one-CPU cost: the mean of its CPUs' alone runs (the
    two CPUs of a VM may differ)."""
    return [statistics.mean(g["alone"].values()) for g in rounds]


def rises(rounds, cpu=None):
    """Each round's both-at-once cost over its alone cost, less 1: the
    kernel's (cpu None) or one CPU's thread time. Paired within a round,
    so the machine's drift between rounds cancels out."""
    if cpu is None:
        return [g["both"] / a - 1 for g, a in zip(rounds, alone_of(rounds))]
    return [g["both_cpu"][cpu] / g["alone_cpu"][cpu] - 1 for g in rounds]


def cpus_table(args, res, labels, updates_column):
    print("| stacks | side | one CPU alone: ns per stack (CPU 0 / CPU 1) "
          "| both at once: ns per stack | rise | rise per CPU (thread CPU "
          "time) | both in the kernel at once |"
          + (" traces to the table alone / at once |" if updates_column
             else "") + " goal: rise <= 10% |")
    print("|---|---|---|---|---|---|---|" + ("---|" if updates_column
                                             else "") + "---|")
    for label in labels:
        for side in ("before", "after"):
            rs = res.get((label, side))
            if not rs:
                continue
            rounds = [g for r in rs for g in r["rounds"]]
            cpus = [str(c) for c in args.cpus]
            alone = " / ".join(f"{med([g['alone'][c] for g in rounds]):,.0f}"
                               for c in cpus)
            rise = rises(rounds)
            per_cpu = ", ".join(f"CPU {c} {med(rises(rounds, c)):+.1%}"
                                for c in cpus)
            row = (f"| {label} | {args.label[side]} "
                   f"| {fig(alone_of(rounds), '{:,.0f}')} ({alone}) "
                   f"| {fig([g['both'] for g in rounds], '{:,.0f}')} "
                   f"| {fig(rise, '{:+.1%}')} | {per_cpu} "
                   f"| {med([g['at_once'] for g in rounds]):.0%} |")
            if updates_column:
                fr = []
                for kind in ("alone", "both"):
                    u, t = (sum(r["updates"][kind][k] for r in rs)
                            for k in (0, 1))
                    fr.append(f"{u / t:.1%}" if side == "after" and t
                              else "-")
                row += f" {' / '.join(fr)} |"
            row += f" {'met' if med(rise) <= 0.10 else 'NOT met'} |"
            print(row)
    print()


def part_cpus(args, work, stacks_path, sources):
    names = {SOURCE_NAMES[n].split(", 256")[0]: n
             for n in ("shares", "icache") if n in sources}
    if not names:
        print("### 2. (no recorded stacks: qemu-user missing?)\n")
        return
    res, loads = cpus_runs(args, work, stacks_path, names)
    print("### 2. Recorded stacks, one CPU alone against both at once\n")
    r0 = next(iter(res.values()))[0]
    print(f"Each CPU replays its own half of the stacks ({r0['per_pass']:,}"
          f", {PER_RUN} per run, {r0['passes']} passes per measurement); "
          f"{args.cpu_rounds} children per side x {args.cpu_inner} rounds of "
          "(CPU 0 alone, CPU 1 alone, both), interleaved. ns per stack: "
          "the program's run_time_ns (one sum over CPUs: at once, the mean "
          "of the two) less the empty runs, over the stacks; alone: the "
          "mean of the round's two CPUs. Rise: each round's at-once cost "
          "over its alone cost (paired, so drift between rounds cancels); "
          "per CPU, the same from each thread's own CPU time around its "
          "runs (syscall included, empty runs taken off). Medians "
          f"(min-max) over rounds; load average (1 min) {load_range(loads)}"
          ".\n")
    cpus_table(args, res, names, False)


def part_hammer(args, work, stacks_path, sources):
    names = {"one stack, default trace cache": "hammer",
             "one stack, 1-set trace cache": "hammer"}
    res, loads = cpus_runs(args, work, stacks_path, names,
                           sets={"one stack, 1-set trace cache": 1})
    print("### 3. Hammer: one 32-deep stack on one CPU and on both at "
          "once\n")
    r0 = next(iter(res.values()))[0]
    print(f"The same stack, {PER_RUN} copies per run, {r0['passes']} runs "
          "per measurement, on each CPU; otherwise as part 2. Traces to the "
          "table: table_updates / traces (after only; the before checkout "
          f"has no such counter). Load average (1 min) {load_range(loads)}."
          "\n")
    cpus_table(args, res, names, True)


# --------------------------------------------------------------------------
# 4. IP samples: first sightings, before and after

def part_ip(args, work, wl, state):
    cmd = [str(wl), "--mode", "icache", "--scale", str(args.icache_scale)]
    res, loads = {}, []
    for i, order in interleaved(args, args.ip_runs):
        for side in order:
            r, load = run_child(args, side, {"task": "ip", "cmd": cmd}, work)
            loads.append(load)
            r["load"] = load
            res.setdefault(side, []).append(r)
            say(f"ip run {i + 1}/{args.ip_runs} {side}: {r['ns']:.0f} ns per "
                f"run, {r['runs']:,} runs, {r['keys']:,} keys, start "
                f"{r['start_s']:.3f} s, table_updates {r['table_updates']} "
                f"({load})")
    state["ip_after"] = res.get("after", [])
    print("### 4. IP samples: sample_ip kernel time per run, before and "
          "after\n")
    print(f"The demo's icache mode (--scale {args.icache_scale}), "
          f"{LIVE_HZ} Hz, {args.ip_runs} recordings per side, interleaved; "
          "medians (min-max). Start: Recorder.start() (load, attach, start "
          "of the command). Memory: ip_counts' fdinfo memlock after start "
          f"and at the end. Load average (1 min) {load_range(loads)}.\n")
    print("| object | sample_ip ns per run | runs | keys (distinct IPs) "
          "| start (s) | ip_counts memory after start / at the end |")
    print("|---|---|---|---|---|---|")
    for side in ("before", "after"):
        rs = res[side]
        print(f"| {args.label[side]} | {fig([r['ns'] for r in rs], '{:,.0f}')}"
              f" | {med([r['runs'] for r in rs]):,.0f} "
              f"| {med([r['keys'] for r in rs]):,.0f} "
              f"| {fig([r['start_s'] for r in rs], '{:.3f}')} "
              f"| {mib(med([r['memlock_start'] for r in rs]))} / "
              f"{mib(med([r['memlock_end'] for r in rs]))} |")
    b, a = (med([r["ns"] for r in res[s]]) for s in ("before", "after"))
    print(f"\nafter - before: {a - b:+,.0f} ns per run ({a / b - 1:+.0%})\n")


def mib(n):
    return "-" if n != n else f"{n / 2**20:.2f} MiB"


# --------------------------------------------------------------------------
# 5. contention: what reaches the shared tables

def part_contention(args, work, wl, sources, state):
    from ebpf_bolt.replay import Replayer
    print("### 5. Contention: the share of counts that reach the shared "
          "table\n")
    print("After only. Recorded stacks replayed on one CPU through the "
          "default caches: table_updates / traces, for a first pass "
          "(every trace new to the table) and a second (steady state); the "
          f"rate is {GOAL_RATE_HZ} x 32 x share per second per CPU (5 kHz, "
          f"32-entry stacks). IP samples: table_updates / samples of part "
          f"4's icache recordings, rate {GOAL_RATE_HZ} x share.\n")
    print("| counts | pass | traces or samples | table_updates | share "
          "| shared updates per s per CPU | load |")
    print("|---|---|---|---|---|---|---|")
    for name in ("shares", "icache"):
        if name not in sources:
            continue
        stacks, objects, _ = sources[name]
        load = quiet_enough(args)
        with Replayer(objects, max_entries=MAX_ENTRIES) as rep:
            last = (0, 0)
            for n in (1, 2):
                rep.feed(stacks, cpu=args.cpus[0])
                st = rep.obj.stats()  # before any drain: it adds updates
                u, t = st["table_updates"] - last[0], st["traces"] - last[1]
                last = (st["table_updates"], st["traces"])
                say(f"contention {name} pass {n}: {u:,} of {t:,} ({load})")
                print(f"| recorded {name} stacks ({len(stacks):,}) "
                      f"| {'first' if n == 1 else 'second'} | {t:,} | {u:,} "
                      f"| {u / t:.2%} | {GOAL_RATE_HZ * 32 * u / t:,.0f} "
                      f"| {load.split(',')[0]} |")
    ip = state.get("ip_after")
    if not ip:   # part 4 not run: one recording of its own
        cmd = [str(wl), "--mode", "icache", "--scale", str(args.icache_scale)]
        r, load = run_child(args, "after", {"task": "ip", "cmd": cmd}, work)
        ip = [dict(r, load=load)]
    for r in ip:
        u, t = r["table_updates"], r["samples"]
        print(f"| IP samples, icache (--scale {args.icache_scale}) | "
              f"recording | {t:,} | {u:,} | {u / t:.2%} "
              f"| {GOAL_RATE_HZ * u / t:,.0f} | {r['load'].split(',')[0]} |")
    print()


# --------------------------------------------------------------------------
# 6. drain

def part_drain(args, work):
    res, loads = {}, []
    for i, order in interleaved(args, args.drain_runs):
        for side in order:
            r, load = run_child(args, side, {"task": "drain",
                                             "traces": args.traces}, work)
            loads.append(load)
            res.setdefault(side, []).append(r)
            say(f"drain run {i + 1}/{args.drain_runs} {side}: drain and "
                f"translate {r['drain']:.2f} s, write {r['write']:.2f} s "
                f"({load})")
    print(f"### 6. Drain, translate and write of {args.traces:,} distinct "
          "traces\n")
    print("bench_replay.drain_and_write (32-deep random stacks in a PIE at "
          f"0x555555554000); {args.drain_runs} per side, interleaved; load "
          f"average (1 min) {load_range(loads)}.\n")
    print("| object | traces | drain and translate (s) | format and write "
          "(s) | total (s) | goal: <= 2 s |")
    print("|---|---|---|---|---|---|")
    for side in ("before", "after"):
        rs = res.get(side, [])
        if not rs:
            continue
        total = [r["drain"] + r["write"] for r in rs]
        print(f"| {args.label[side]} | {rs[0]['traces']:,} "
              f"| {fig([r['drain'] for r in rs], '{:.2f}')} "
              f"| {fig([r['write'] for r in rs], '{:.2f}')} "
              f"| {fig(total, '{:.2f}')} "
              f"| {'met' if med(total) <= 2 else 'NOT met'} |")
    print()


# --------------------------------------------------------------------------

def commit_of(path):
    p = subprocess.run(["git", "-C", str(path), "rev-parse", "--short",
                        "HEAD"], capture_output=True, text=True)
    return p.stdout.strip() or "?"


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", default="/work/wt-before",
                    help="checkout of the commit before the change, with "
                         "its own .venv (scripts/setup.sh)")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--rounds", type=int, default=6,
                    help="part 1: children per side")
    ap.add_argument("--passes", type=int, default=2,
                    help="part 1: passes over the stacks per child")
    ap.add_argument("--cpu-rounds", type=int, default=2,
                    help="parts 2 and 3: children per side")
    ap.add_argument("--cpu-inner", type=int, default=12,
                    help="parts 2 and 3: rounds of (alone, alone, both) "
                         "per child")
    ap.add_argument("--stacks-per-measure", type=int, default=32768,
                    help="parts 2 and 3: stacks per CPU per measurement")
    ap.add_argument("--ip-runs", type=int, default=3,
                    help="part 4: recordings per side")
    ap.add_argument("--icache-scale", type=int, default=1000)
    ap.add_argument("--drain-runs", type=int, default=1)
    ap.add_argument("--traces", type=int, default=1_000_000)
    ap.add_argument("--max-busy", type=float, default=0.3,
                    help="wait while others use more CPUs than this")
    ap.add_argument("--max-wait", type=float, default=120,
                    help="seconds to wait for that at most, per "
                         "measurement")
    args = ap.parse_args()
    parts = args.parts.split(",")
    if set(parts) - set(PARTS):
        ap.error(f"--parts: unknown {sorted(set(parts) - set(PARTS))}")
    args.python = {"before": Path(args.before) / ".venv/bin/python",
                   "after": ROOT / ".venv/bin/python"}
    if not args.python["before"].exists():
        ap.error(f"{args.python['before']} missing: make a worktree of the "
                 "commit before the change and run its scripts/setup.sh")
    args.sides = ("before", "after")
    args.label = {"before": f"before ({commit_of(args.before)}): per-CPU "
                           "hash",
                  "after": f"after ({commit_of(ROOT)}): shared table"}
    args.cpus = sorted(os.sched_getaffinity(0))[:2]
    if len(args.cpus) < 2 and {"cpus", "hammer"} & set(parts):
        ap.error("parts cpus and hammer need two CPUs")
    from ebpf_bolt.demo.build import build_workload
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-tables-") as w:
        work = Path(w)
        wl = build_workload(work, pie=True)
        need = bool({"speed", "cpus", "contention"} & set(parts))
        stacks_path, sources = make_stacks(work, need)
        print(f"machine: {os.cpu_count()} CPUs, kernel "
              f"{platform.release()}; load average at start {loadavg()}\n")
        state = {}
        for part in parts:
            if part == "speed":
                part_speed(args, work, stacks_path, sources)
            elif part == "cpus":
                part_cpus(args, work, stacks_path, sources)
            elif part == "hammer":
                part_hammer(args, work, stacks_path, sources)
            elif part == "ip":
                part_ip(args, work, wl, state)
            elif part == "contention":
                part_contention(args, work, wl, sources, state)
            elif part == "drain":
                part_drain(args, work)
        print(f"load average at the end: {loadavg()}; "
              f"{time.monotonic() - t0:.0f} s in all")


if __name__ == "__main__":
    sys.exit(main())
