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
2. Drain and write: 1,000,000 distinct traces put in the trace map (through
   replay of random 32-deep stacks in a PIE loaded at a usual address),
   then drained (caches flushed, the table read through mmap), translated
   and written as a preagg file;
   the time of that last part is what a user waits for.
"""
import argparse
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


def pass_costs(rep, clock, batches):
    """One pass over `batches` (packed stacks, pack_stacks): for each, the
    kernel's ns per stack of (run of its N stacks - empty run) / N."""
    costs = []
    for words in batches:
        n = rep.load(words)
        full = timed_run(rep, clock, n)
        empty = timed_run(rep, clock, 0)
        costs.append((full - empty) / n)
    return costs


def cost_per_stack(stacks, objects, baseline, repeats=9, per_run=None):
    """Median ns per stack of (run of N stacks - empty run) / N, for the
    baseline object (path `baseline`) and the shipped one, alternating pass
    by pass (a pass runs every batch once) so that drift in the machine's
    speed (a VM's neighbours) hits both alike. Not run by run: the
    baseline's map updates would evict the cache's table from L2 before
    every cache run, which a pass of the shipped path alone, as in steady
    recording, does not do. Returns (baseline, shipped)."""
    per_run = per_run or len(stacks)
    batches = [pack_stacks(stacks[i:i + per_run])[0]
               for i in range(0, len(stacks), per_run)]
    with Replayer(objects, max_entries=1 << 20, path=baseline) as base, \
            Replayer(objects, max_entries=1 << 20) as shipped:
        reps = {True: base, False: shipped}
        clocks = {k: ProgramClock(r.obj.program_fd("replay_branches"))
                  for k, r in reps.items()}
        for rep in reps.values():
            rep.feed(stacks)  # warm: the map holds the traces, as after a while
        samples = {True: [], False: []}
        for _ in range(repeats):
            for is_base, rep in reps.items():
                samples[is_base] += pass_costs(rep, clocks[is_base], batches)
        for clock in clocks.values():
            clock.close()
        return statistics.median(samples[True]), statistics.median(samples[False])


def recorded_stacks(count, mode, workdir):
    """32-deep stacks from a real run of the demo workload (built in
    workdir) under qemu-user (tests/brtrace.py), and the objects they ran
    in, or None where qemu is not available."""
    from ebpf_bolt.demo.build import build_workload

    binary = build_workload(workdir, pie=True)
    args = {"icache": ["--mode", "icache", "--scale", "2"],
            "shares": ["--scale", "2", "--early", "1", "--late", "0"]}[mode]
    try:
        rec = brtrace.record([str(binary)] + args, seed=1)
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


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--stacks", type=int, default=4096)
    p.add_argument("--traces", type=int, default=1_000_000)
    args = p.parse_args()
    # everything the run writes (workload builds, baseline object, a profile
    # of tens of MiB) goes here and is removed at the end, errors included
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as work:
        run(args, work)


def run(args, work):
    rng = random.Random(1)
    print(f"machine: {os.cpu_count()} CPUs, kernel {os.uname().release}")
    rows = []
    libc, (lo, span) = libc_code()
    one = [random_stack(rng, lo, span)]
    rows.append(("random, one stack per run", one * 256, libc, 1))
    rows.append((f"random, {args.stacks} distinct",
                 [random_stack(rng, lo, span) for _ in range(args.stacks)],
                 libc, None))
    for mode in ("shares", "icache"):
        rec = recorded_stacks(args.stacks, mode, work)
        if rec:
            rec, objects = rec
            rows.append((f"recorded demo workload ({mode} mode), {len(rec)} "
                         "stacks, 256 per run", rec, objects, 256))
            if mode == "icache":
                rows.append((f"recorded demo workload ({mode} mode), all "
                             f"{len(rec)} stacks in one run (input streamed "
                             "from memory)", rec, objects, None))
    print("\n| stacks (32 deep) | baseline: table update per entry | trace cache "
          "(shipped) | per entry | goal |")
    print("|---|---|---|---|---|")
    baseline = build_object(os.path.join(work, "baseline"), BASELINE)
    costs = [cost_per_stack(stacks, objects, baseline, per_run=per_run)
             for _, stacks, objects, per_run in rows]
    for (name, stacks, _, per_run), (base, ours) in zip(rows, costs):
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
              f"| {verdict} |")
    n, drain, write, size = drain_and_write(args.traces, work)
    total = drain + write
    print(f"\ndrain + translate + write of {n:,} distinct traces: {total:.2f} s "
          f"(drain and translation {drain:.2f} s; "
          f"formatting and writing {write:.2f} s; "
          f"{size / 2**20:.1f} MiB) goal <= 2 s: "
          f"{'met' if total <= 2 else 'NOT met'}")


if __name__ == "__main__":
    main()
