#!/usr/bin/env python3
"""Kernel cost of the branch-stack aggregation, and the drain-and-write time.

Run as root after scripts/setup.sh:  .venv/bin/python bench/bench_replay.py

1. Cost per 32-deep stack through replay: the time of one BPF_PROG_RUN over
   N stacks minus an empty run, divided by N (median of several runs), the
   run's time as the kernel counts it for the program (BPF_ENABLE_STATS,
   run_time_ns): wall-clock time around the syscall jitters by more than a
   one-stack run takes,
   for the shipped worker (trace cache) and for the baseline, an update
   of the shared trace table per entry (the same source built without the
   caches, tests/bpf_builds.py). Every address is translated to (object, file offset) in the kernel, as
   live sampling does: the replay's table holds the objects the stacks ran
   in (libc at a usual load base for the random stacks, the workload PIE
   at qemu's load base for the recorded ones). The stacks:
   - "random, one stack per run": one stack of 32 random entries in libc's
     code, one stack per run (the issue's baseline method: the same stack run after run);
   - "random, N distinct": N different stacks of random entries (131k
     traces that never repeat: every entry misses the cache and updates the
     map in DRAM; shown for what the cache costs there, no goal);
   - "recorded": stacks cut from the demo workload's real taken-branch
     sequence (qemu-user log, tests/brtrace.py), where loops repeat traces:
     shares mode (threads running three hot functions) and icache mode (96
     hot functions, ~2,900 distinct traces). Run 256 stacks at a time
     (400 KB of input, held in the L2 cache), because live sampling reads
     each stack into a 1.5 KB per-CPU scratch buffer that stays in cache;
     a run over all 4,096 stacks (6 MiB) mostly measures streaming the
     input from memory, and is shown as such for icache mode.
2. Against the ring-buffer design (issue 10; bench/ringbuf.py): on the
   same typed recorded stacks, 256 per run, in the same passes, the shipped
   worker without and with branch types, and the kernel side of a profiler
   that copies each stack to user space instead,
   bpf_ringbuf_output() of its entries; the ratios typed / copy and
   typed / untyped; and the floor of any in-kernel aggregation
   (ringbuf.bpf.c's trace_floor: translate, pair and hash each entry,
   count nothing), against the copy.
3. Drain and write: 1,000,000 distinct traces put in the trace map (through
   replay of random 32-deep stacks in a PIE loaded at a usual address),
   then drained (caches flushed, the table read through mmap), translated
   and written as a preagg file;
   the time of that last part is what a user waits for.
"""
import argparse
import contextlib
import ctypes
import os
import random
import statistics
import sys
import tempfile
import time

from ebpf_bolt import _libbpf
from ebpf_bolt.replay import Replayer, pack_stacks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # test helpers, not shipped
import brtrace  # noqa: E402
from bpf_builds import BASELINE, build_object  # noqa: E402
import ringbuf  # noqa: E402
from ringbuf import RingCopy, TraceFloor  # noqa: E402

DEPTH = 32


# random stacks run in libc's code, loaded where a process maps it: 1.6 MB
# of code, so traces barely repeat, and every address is translated
LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
LIBC_BASE = 0x7ffff7c00000


def libc_code():
    """[(libc, its load base)] and (lowest, span) of its code at run time."""
    from ebpf_bolt.elf import ElfFile
    text = ElfFile(LIBC).text_segments()[0]
    return [(LIBC, LIBC_BASE)], (LIBC_BASE + text.vaddr, text.filesz)


def random_stack(rng, lo, span):
    return [(lo + rng.randrange(span), lo + rng.randrange(span), rng.random() < 0.05)
            for _ in range(DEPTH)]


class ProgramClock:
    """The kernel's run time of one BPF program (bpf_prog_info.run_time_ns,
    counted while BPF_ENABLE_STATS is held): the program's own execution,
    without the syscall and Python around BPF_PROG_RUN, whose jitter
    (+-1.5 us here) swamps a one-stack run timed by wall clock."""
    # offsetof(struct bpf_prog_info, run_time_ns): UAPI, append-only
    RUN_TIME_NS, INFO_SIZE = 192, 232
    BPF_STATS_RUN_TIME = 0

    # two libbpf calls only the benchmarks make, bound here rather than in
    # the package's table
    _lib = None

    @classmethod
    def lib(cls):
        if cls._lib is None:
            lib = ctypes.CDLL(_libbpf.SONAME)
            lib.bpf_enable_stats.argtypes = [ctypes.c_int]
            lib.bpf_obj_get_info_by_fd.argtypes = [
                ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
            for fn in (lib.bpf_enable_stats, lib.bpf_obj_get_info_by_fd):
                fn.restype = ctypes.c_int
                fn.errcheck = _libbpf._check_int
            cls._lib = lib
        return cls._lib

    def __init__(self, prog_fd):
        self.prog_fd = prog_fd
        self.stats_fd = self.lib().bpf_enable_stats(self.BPF_STATS_RUN_TIME)
        self.buf = ctypes.create_string_buffer(self.INFO_SIZE)

    def __call__(self):
        size = ctypes.c_uint32(self.INFO_SIZE)
        ctypes.memset(self.buf, 0, self.INFO_SIZE)
        self.lib().bpf_obj_get_info_by_fd(self.prog_fd, self.buf,
                                          ctypes.byref(size))
        return int.from_bytes(self.buf.raw[self.RUN_TIME_NS:self.RUN_TIME_NS + 8],
                              sys.byteorder)

    def close(self):
        os.close(self.stats_fd)


def timed_run(rep, clock, n):
    """Kernel run time of one replay run of n stacks, in ns."""
    before = clock()
    rep.run(n, cpu=0)
    return clock() - before


def one_pass(rep, clock, batches):
    """One pass over `batches` (packed stacks, pack_stacks): for each, the
    kernel's ns per stack of (run of its N stacks - empty run) / N."""
    costs = []
    for words in batches:
        n = rep.load(words)
        full = timed_run(rep, clock, n)
        empty = timed_run(rep, clock, 0)
        costs.append((full - empty) / n)
    return costs


def program_fd(rep):
    """The timed program of a Replayer (replay_branches) or a RingCopy."""
    if isinstance(rep, RingCopy):
        return rep.program_fd
    return rep.obj.program_fd("replay_branches")


def pass_costs(stacks, columns, repeats=9, per_run=None):
    """ns per stack of (run of N stacks - empty run) / N, for each column
    (a function that opens a Replayer or a RingCopy), alternating pass by
    pass (a pass runs every batch once), the columns' order rotated from
    one pass to the next, so that drift in the machine's speed (a VM's
    neighbours) hits all alike and none always follows the same other.
    Not run by run: the baseline's map updates would evict the cache's
    table from L2 before every cache run, which a pass of the shipped path
    alone, as in steady recording, does not do. Returns, per column, each
    pass's list of per-run costs."""
    per_run = per_run or len(stacks)
    batches = [pack_stacks(stacks[i:i + per_run])[0]
               for i in range(0, len(stacks), per_run)]
    with contextlib.ExitStack() as stack:
        reps = [stack.enter_context(open_column(per_run))
                for open_column in columns]
        clocks = [ProgramClock(program_fd(rep)) for rep in reps]
        for clock in clocks:
            stack.callback(clock.close)
        for rep in reps:
            rep.feed(stacks)  # warm: the map holds the traces, as after a while
        samples = [[] for _ in reps]
        for r in range(repeats):
            order = list(range(len(reps)))
            order = order[r % len(order):] + order[:r % len(order)]
            for k in order:
                samples[k].append(one_pass(reps[k], clocks[k], batches))
        return samples


def cost_per_stack(stacks, objects, baseline, repeats=9, per_run=None,
                   branch_types=False, base_types=False):
    """Median ns per stack (pass_costs) of the baseline object (path
    `baseline`) and the shipped one. `branch_types`: the shipped worker
    tests each entry's type, as it does where the event saves types (off,
    as without them, the verifier drops that test); `base_types` the same
    for the baseline (None: the shipped object with branch types off).
    Returns (baseline, shipped)."""
    base, ours = pass_costs(stacks, [
        lambda _: Replayer(objects, max_entries=1 << 20, path=baseline,
                           branch_types=base_types),
        lambda _: Replayer(objects, max_entries=1 << 20,
                           branch_types=branch_types)],
        repeats, per_run)
    return median_of(base), median_of(ours)


def median_of(passes):
    return statistics.median(c for runs in passes for c in runs)


def loadavg():
    """The 1-minute load average, as /proc/loadavg gives it."""
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def recorded_stacks(count, mode, workdir, branch_types=False):
    """32-deep stacks from a real run of the demo workload (built in
    workdir) under qemu-user (tests/brtrace.py), and the objects they ran
    in, or None where qemu is not available. `branch_types`: each entry
    carries its branch type, as with PERF_SAMPLE_BRANCH_TYPE_SAVE."""
    from ebpf_bolt.demo.build import build_workload

    binary = build_workload(workdir, pie=True)
    args = {"icache": ["--mode", "icache", "--scale", "2"],
            "shares": ["--scale", "2", "--early", "1", "--late", "0"]}[mode]
    try:
        rec = brtrace.record([str(binary)] + args, seed=1,
                             branch_types=branch_types)
    except Exception as e:  # report, do not hide, why the figure is missing
        print(f"(recorded stacks unavailable: {e})", file=sys.stderr)
        return None
    if not rec.stacks:
        return None
    return rec.stacks[:count], [(str(binary), rec.load_base)]


def drain_and_write(n_traces, workdir):
    """Fill the map with n distinct traces, then time drain + translate +
    write of the preagg profile (into workdir)."""
    from ebpf_bolt.elf import ElfFile
    from ebpf_bolt.demo.build import build_workload

    # a PIE at a usual load address: translation shifts every address
    binary = str(build_workload(workdir, pie=True))
    load_base = 0x555555554000
    elf = ElfFile(binary)
    text = elf.text_segments()[0]
    lo = load_base + text.vaddr
    rng = random.Random(7)
    # 32-deep stacks of random entries: every entry one trace, all distinct
    # (almost surely), 1 in 32 of them ending in BR_ONLY as in real profiles
    stacks = [[(lo + rng.randrange(text.memsz), lo + rng.randrange(text.memsz),
                False) for _ in range(DEPTH)]
              for _ in range(-(-n_traces // DEPTH))]
    # 2^20 entries hold the million traces (a user would pass --max-entries)
    with Replayer([(binary, load_base)],
                  max_entries=max(1 << 20, n_traces)) as rep:
        rep.feed(stacks)
        # the bench's input is not the tool's to carry: a live recording
        # holds no list of stacks (and forked formatters copy page tables)
        del stacks
        t0 = time.perf_counter()
        prof = rep.profile()      # one drain, one translation
        traces = prof.traces
        t2 = time.perf_counter()
        out = os.path.join(workdir, "out.preagg")
        prof.write(out, "preagg")
        t3 = time.perf_counter()
    return len(traces), t2 - t0, t3 - t2, os.path.getsize(out)


PARTS = ("cost", "ringbuf", "drain")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--stacks", type=int, default=4096)
    p.add_argument("--traces", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=9,
                   help="passes over each row's stacks, per column")
    p.add_argument("--parts", default=",".join(PARTS),
                   help="comma-separated: cost (shipped worker against a "
                   "baseline), ringbuf (typed and untyped worker against "
                   "the ring-buffer copy, issue 10), drain")
    p.add_argument("--against", metavar="OBJECT",
                   help="measure the shipped worker against this build of "
                   "the BPF object (one with the same struct eb_config) "
                   "instead of the per-entry hash baseline; 'untyped': "
                   "the shipped object with branch types off")
    p.add_argument("--branch-types", action="store_true",
                   help="recorded stacks carry branch types (brtrace), as "
                   "PERF_SAMPLE_BRANCH_TYPE_SAVE gives them")
    args = p.parse_args()
    args.parts = [x for x in args.parts.split(",") if x]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        p.error(f"unknown --parts {', '.join(sorted(unknown))}: "
                f"choose from {', '.join(PARTS)}")
    # everything the run writes (workload builds, baseline object, a profile
    # of tens of MiB) goes here and is removed at the end, errors included
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as work:
        run(args, work)


def untyped(stacks):
    """The stacks without their entries' branch types."""
    return [[entry[:3] for entry in stack] for stack in stacks]


def run(args, work):
    print(f"machine: {os.cpu_count()} CPUs, kernel {os.uname().release}, "
          f"load average {loadavg()}")
    # recorded with types (the same stacks as without: brtrace only adds
    # each entry's type), which the cost table drops unless --branch-types
    recorded = {}
    if {"cost", "ringbuf"} & set(args.parts):
        for mode in ("shares", "icache"):
            rec = recorded_stacks(args.stacks, mode, work, branch_types=True)
            if rec:
                recorded[mode] = rec
    if "cost" in args.parts:
        cost_table(args, work, recorded)
    if "ringbuf" in args.parts:
        ringbuf_table(args, work, recorded)
    if "drain" in args.parts:
        drain_table(args, work)


def cost_table(args, work, recorded):
    rng = random.Random(1)
    rows = []
    libc, (lo, span) = libc_code()
    one = [random_stack(rng, lo, span)]
    rows.append(("random, one stack per run", one * 256, libc, 1))
    rows.append((f"random, {args.stacks} distinct",
                 [random_stack(rng, lo, span) for _ in range(args.stacks)],
                 libc, None))
    for mode, (rec, objects) in recorded.items():
        if not args.branch_types:
            rec = untyped(rec)
        rows.append((f"recorded demo workload ({mode} mode), {len(rec)} "
                     "stacks, 256 per run", rec, objects, 256))
        if mode == "icache":
            rows.append((f"recorded demo workload ({mode} mode), all "
                         f"{len(rec)} stacks in one run (input streamed "
                         "from memory)", rec, objects, None))
    against = (f"against: {args.against}" if args.against else
               "baseline: table update per entry")
    typed = ", typed" if args.branch_types else ""
    if args.against == "untyped":   # types off: what the verifier leaves
        baseline = None
    else:
        baseline = args.against or build_object(
            os.path.join(work, "baseline"), BASELINE)
    costs = []
    for _, stacks, objects, per_run in rows:
        before = loadavg()
        base, ours = cost_per_stack(stacks, objects, baseline,
                                    repeats=args.repeats, per_run=per_run,
                                    branch_types=args.branch_types)
        costs.append((base, ours, f"{before} -> {loadavg()}"))
    print(f"\n| stacks (32 deep{typed}) | {against} | trace cache "
          "(shipped) | per entry | goal | load avg |")
    print("|---|---|---|---|---|---|")
    for (name, stacks, _, per_run), (base, ours, load) in zip(rows, costs):
        goal = 500 if name.startswith("recorded") else 1000
        if "streamed" in name or "distinct" in name:
            # the goals are for stacks as live sampling has them, and the
            # random-stack goal is measured one stack per run (the issue's
            # method); these rows show the cost where input or traces never
            # repeat, which no cache can remove
            goal = None
        verdict = ("-" if goal is None else
                   f"<= {goal} ns: {'met' if ours <= goal else 'NOT met'}")
        print(f"| {name} | {base:,.0f} ns | {ours:,.0f} ns | {ours / DEPTH:.1f} ns "
              f"| {verdict} | {load} |")


def ringbuf_table(args, work, recorded):
    """Issue 10: the shipped worker on typed recorded stacks, with branch
    types (as where the event saves them) and without (the same stacks,
    the worker's type test off), against the ring-buffer design's kernel
    side, bpf_ringbuf_output() of each stack (bench/ringbuf.bpf.c): alone
    (BPF_RB_NO_WAKEUP), the goals' baseline, and with flags 0, which adds
    a wake-up of the consumer at each run's first record (the consumer
    has caught up: the ring is emptied before each run). Four columns of
    one pass_costs, 256 stacks per run; a fifth, where there is a second
    CPU, reads each run's records there before the next run, as a
    consumer thread would (the goals' baseline leaves them unread)."""
    if not recorded:
        print("\n(ring-buffer table: no recorded stacks)")
        return
    path = ringbuf.build(os.path.join(work, "ringbuf"))
    per_run = 256
    # a CPU other than the runs' (0) for the consumer that reads the
    # records, where there is one
    reader = min((set(os.sched_getaffinity(0)) - {0}), default=None)
    rows = []
    for mode, (stacks, objects) in recorded.items():
        rings = []

        def open_ring(n, wakeup, read_on=None, first=stacks[0]):
            ring = RingCopy(path, n, wakeup=wakeup, read_on=read_on)
            rings.append(ring)
            ring.check_copy(first)  # it copies the stack's entries
            return ring
        def open_floor(n, objects):
            from ebpf_bolt.elf import ElfFile
            (binary, base), = objects
            segs = ElfFile(binary).text_segments()
            floor = TraceFloor(path, n, (
                base + min(g.vaddr for g in segs),
                base + max(g.vaddr + g.filesz for g in segs), base))
            rings.append(floor)
            return floor
        before = loadavg()
        passes = pass_costs(stacks, [
            lambda _: Replayer(objects, max_entries=1 << 20,
                               branch_types=False),
            lambda _: Replayer(objects, max_entries=1 << 20,
                               branch_types=True),
            lambda n: open_ring(n, False),
            lambda n: open_ring(n, True),
            lambda n: open_floor(n, objects)] + ([
            lambda n: open_ring(n, False, reader)] if reader else []),
            repeats=args.repeats, per_run=per_run)
        rows.append((mode, len(stacks), passes, rings,
                     f"{before} -> {loadavg()}"))
    print("\n| recorded stacks (32 deep, typed), 256 per run | worker, "
          "untyped | worker, typed (shipped) | ring-buffer copy | typed / "
          "ring buffer | typed / untyped | failed outputs | copy + a "
          "wake-up per run | aggregation floor (translate, pair, hash; "
          "no counts) | floor / ring buffer | copy, read on CPU "
          f"{reader if reader else '-'} | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    verdicts = {"ring": [], "untyped": []}
    for mode, n, passes, rings, load in rows:
        plain, typed, copy, woken, floor, *read = (median_of(p)
                                                  for p in passes)
        # the ratio of the medians, and its range pass by pass
        per_pass = [[statistics.median(runs) for runs in p] for p in passes]
        cells = []
        for key, other, k in (("ring", copy, 2), ("untyped", plain, 0)):
            ratios = [t / o for t, o in zip(per_pass[1], per_pass[k])]
            cells.append(f"{typed / other:.2f} (passes {min(ratios):.2f}-"
                         f"{max(ratios):.2f})")
            verdicts[key].append(f"{mode} {typed / other:.2f}: "
                                 f"{'met' if typed <= other else 'NOT met'}")
        failed = " + ".join(f"{r.kernel_failed} of {r.outputs + r.failed:,}"
                            for r in rings if not isinstance(r, TraceFloor))
        floor_ratios = [f / c for f, c in zip(per_pass[4], per_pass[2])]
        print(f"| {mode} mode, {n} stacks | {plain:,.0f} ns | {typed:,.0f} ns "
              f"| {copy:,.0f} ns | {cells[0]} | {cells[1]} | {failed} | "
              f"{woken:,.0f} ns ({(woken - copy) * per_run / 1000:.1f} us "
              f"per wake-up) | {floor:,.0f} ns | {floor / copy:.2f} (passes "
              f"{min(floor_ratios):.2f}-{max(floor_ratios):.2f}) | "
              f"{f'{read[0]:,.0f} ns' if read else '-'} | {load} |")
    print("\ngoal: the typed worker costs no more per stack than the "
          "ring-buffer copy (typed / ring buffer <= 1): "
          + "; ".join(verdicts["ring"]))
    print("goal: the typed worker is no slower than the untyped one "
          "(typed / untyped <= 1): " + "; ".join(verdicts["untyped"]))


def drain_table(args, work):
    before = loadavg()
    n, drain, write, size = drain_and_write(args.traces, work)
    total = drain + write
    print(f"\ndrain + translate + write of {n:,} distinct traces: {total:.2f} s "
          f"(drain and translation {drain:.2f} s; "
          f"formatting and writing {write:.2f} s; "
          f"{size / 2**20:.1f} MiB) goal <= 2 s: "
          f"{'met' if total <= 2 else 'NOT met'} (load avg {before} -> "
          f"{loadavg()})")


if __name__ == "__main__":
    main()
