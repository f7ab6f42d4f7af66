"""Replay: run the kernel's branch-stack aggregation on stacks we supply.

The live program (sample_branches) and replay_branches share one worker in
the BPF object, so replaying stacks through BPF_PROG_RUN tests and measures
the exact code that runs on LBR hardware. BPF_PROG_RUN of a syscall
program takes no CPU flag: the calling thread is pinned with
sched_setaffinity to choose whose per-CPU map slots are filled. The stacks
go in our own memory, which the program reads with bpf_copy_from_user, so
one run aggregates up to MAX_REPLAY_STACKS stacks.
"""
import ctypes
import os
import time
from array import array

from . import _libbpf
from .addrspace import AddressSpace
from .bpf_object import BoltObject
from .collector import check_privileges, default_max_entries, runtime_traces
from .elf import ElfFile
from .layout import (MAX_BRANCHES, MAX_REPLAY_STACKS, USER_ADDR_END,
                     BRANCH_MISPRED, Config, ReplayArgs)
from .profile import Profile, translate_traces
from .errors import UsageError

HEADER = 8
ENTRY = 24


def parse_entry(token):
    """One `perf script -F brstack` entry: 0xFROM/0xTO/M|P|-/... ->
    (from, to, mispredicted)."""
    parts = token.split("/")
    if len(parts) < 3:
        raise ValueError(f"not a branch entry: {token!r}")
    return int(parts[0], 16), int(parts[1], 16), parts[2] == "M"


def parse_stacks(lines):
    """Branch stacks from text, one sample per line, newest entry first.
    Blank lines and lines starting with '#' are skipped."""
    stacks = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            stacks.append([parse_entry(tok) for tok in line.split()])
        except ValueError as e:
            raise UsageError(f"line {n}: {e}",
                             "entries look like 0x401136/0x401120/P/-/-/0") from None
    return stacks


def pack_stacks(stacks):
    """Packed eb_stack_header + eb_branch records; stacks deeper than the
    hardware maximum are cut to their newest entries. Returns (buffer,
    number of stacks cut)."""
    words = array("Q")
    cut = 0
    for stack in stacks:
        if len(stack) > MAX_BRANCHES:
            stack = stack[:MAX_BRANCHES]
            cut += 1
        words.append(len(stack))  # header: nr (low half), reserved 0
        for frm, to, mis in stack:
            words.extend((frm, to, BRANCH_MISPRED if mis else 0))
    return words, cut


class Replayer:
    """A loaded object whose replay program aggregates supplied stacks."""

    def __init__(self, max_entries=None, user_addr_end=USER_ADDR_END):
        check_privileges()
        ncpus = _libbpf.lib().libbpf_num_possible_cpus()
        self.max_entries = max_entries or default_max_entries("trace_counts",
                                                              ncpus)
        self.obj = BoltObject(Config(user_addr_end=user_addr_end),
                              {"trace_counts": self.max_entries},
                              programs=["replay_branches"])
        self.prog_fd = self.obj.program_fd("replay_branches")
        self.cut = 0

    def run_packed(self, words, nr_stacks, cpu=0, naive=False):
        """One BPF_PROG_RUN over packed stacks on `cpu`; returns the run's
        ReplayArgs (done, bad) and its wall time in nanoseconds."""
        addr, _ = words.buffer_info()
        args = ReplayArgs(stacks=addr, size=len(words) * 8,
                          nr_stacks=nr_stacks, naive=int(naive))
        opts = _libbpf.bpf_test_run_opts(
            sz=ctypes.sizeof(_libbpf.bpf_test_run_opts),
            ctx_in=ctypes.cast(ctypes.pointer(args), ctypes.c_void_p),
            ctx_size_in=ctypes.sizeof(args))
        old = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {cpu})
        try:
            t0 = time.perf_counter_ns()
            _libbpf.lib().bpf_prog_test_run_opts(self.prog_fd,
                                                 ctypes.byref(opts))
            elapsed = time.perf_counter_ns() - t0
        finally:
            os.sched_setaffinity(0, old)
        if opts.retval != 0:
            raise _libbpf.LibbpfError("replay_branches", 22,
                                      "scratch space unavailable")
        return args, elapsed

    def feed(self, stacks, cpu=0, naive=False):
        """Aggregate stacks (lists of (from, to, mispredicted), newest first)
        on `cpu`, in runs of at most MAX_REPLAY_STACKS."""
        for i in range(0, len(stacks), MAX_REPLAY_STACKS):
            chunk = stacks[i:i + MAX_REPLAY_STACKS]
            words, cut = pack_stacks(chunk)
            self.cut += cut
            args, _ = self.run_packed(words, len(chunk), cpu, naive)
            if args.bad or args.done != len(chunk):
                raise _libbpf.LibbpfError("replay_branches", 22,
                                          f"{args.bad} malformed stacks")

    def runtime_traces(self):
        return runtime_traces(self.obj)

    def stats(self):
        st = self.obj.stats()
        st["stack_cut"] += self.cut
        return st

    def profile(self, binary, load_base=0):
        elf = ElfFile(binary)
        space = AddressSpace.from_load_base(elf, load_base)
        traces, left_out = translate_traces(self.runtime_traces(), space)
        stats = self.stats()
        stats["traces_outside_binary"] = left_out
        prof = Profile(binary, "cycles", "lbr", traces=traces, stats=stats)
        prof._elf = elf
        prof.info.update(load_base=load_base, map_entries=self.max_entries)
        return prof

    def close(self):
        self.obj.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def replay(binary, stacks, load_base=0, max_entries=None, cpus=None):
    """Aggregate branch stacks through the kernel and return the Profile of
    `binary`. `stacks` is a list of stacks (newest entry first, each entry
    (from, to, mispredicted)) or text lines in perf's brstack form.
    `cpus`: spread the stacks round-robin over these CPUs (default: 0)."""
    if stacks and isinstance(next(iter(stacks)), str):
        stacks = parse_stacks(stacks)
    stacks = list(stacks)
    cpus = list(cpus) if cpus else [0]
    with Replayer(max_entries) as rep:
        for i, cpu in enumerate(cpus):
            rep.feed(stacks[i::len(cpus)], cpu=cpu)
        return rep.profile(binary, load_base)
