"""Replay: run the kernel's branch-stack aggregation on stacks we supply.

The live program (sample_branches) and replay_branches share one worker in
the BPF object, so replaying stacks through BPF_PROG_RUN tests and measures
the exact code that runs on LBR hardware. BPF_PROG_RUN of a syscall
program takes no CPU flag: the calling thread is pinned with
sched_setaffinity to choose whose per-CPU maps are filled. Stacks are
written straight into the mmap of the replay_stacks array, so one run
aggregates a whole batch with nothing copied per stack.
"""
import ctypes
import errno
import mmap
import os
from array import array

from .handle import Handle
from . import _libbpf
from .addrspace import AddressSpace
from .bpf_object import BoltObject, possible_cpus
from .collector import (check_privileges, default_max_entries,
                        runtime_traces, translated_traces)
from .elf import ElfFile
from .layout import (BRANCH_MISPRED, MAX_BRANCHES, USER_ADDR_END,
                     BranchStack, Config, ReplayArgs, cache_sets)
from .profile import Profile
from .errors import UsageError

STACK_BYTES = ctypes.sizeof(BranchStack)
STACK_WORDS = STACK_BYTES // 8
BATCH = 4096  # stacks per run: 6 MiB of replay_stacks
_ZEROS = array("Q", bytes(STACK_BYTES))


ENTRY_HINT = ("entries look like 0x401136/0x401120/P/-/-/0 (perf script -F "
              "brstack): FROM/TO/M|P|-, hexadecimal addresses of up to 64 bits")
MAX_LINE = 1 << 20  # bytes; a 64-entry perf brstack line is a few KiB
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_FIELDS = ("from address", "to address", "prediction flag")


class EntryError(ValueError):
    """A malformed branch entry; the message names the field."""


def _address(text, field):
    """A hexadecimal address of at most 64 bits (0x optional, as perf
    writes it with one). int(text, 16) alone would take '-5', '1_0' and
    ' 5', and numbers wider than any register."""
    what = f"field {field + 1} ({_FIELDS[field]})"
    if not text:
        raise EntryError(f"{what} is empty")
    if text[0] in "+-":
        raise EntryError(f"{what} {_clip(text)} is signed; addresses are "
                         "unsigned")
    digits = text[2:] if text[:2] in ("0x", "0X") else text
    if not digits or not _HEX_DIGITS.issuperset(digits):
        raise EntryError(f"{what} {_clip(text)} is not a hexadecimal address")
    value = int(digits, 16)
    if value >> 64:
        raise EntryError(f"{what} {_clip(text)} is wider than 64 bits")
    return value


def _clip(text, width=40):
    return repr(text if len(text) <= width else text[:width] + "...")


def parse_entry(token):
    """One `perf script -F brstack` entry: 0xFROM/0xTO/M|P|-/... ->
    (from, to, mispredicted). Fields after the third are not read (perf
    adds in_tx/abort/cycles and a branch type); EntryError names the
    field that is wrong."""
    parts = token.split("/")
    if len(parts) < 3:
        raise EntryError(f"{_clip(token)} has {len(parts)} field"
                         f"{'s' if len(parts) != 1 else ''}; a branch entry "
                         "has at least 3 (FROM/TO/M|P|-)")
    frm, to = _address(parts[0], 0), _address(parts[1], 1)
    if parts[2] not in ("M", "P", "-"):
        raise EntryError(f"field 3 (prediction flag) {_clip(parts[2])} is "
                         "not M, P or -")
    return frm, to, parts[2] == "M"


def _lines(source):
    """Lines of text from a binary or text file (bounded in length, so
    a file with no newline is not read whole into one string) or from any
    iterable of str or bytes lines."""
    readline = getattr(source, "readline", None)
    if readline is None:
        yield from source
        return
    while True:
        line = readline(MAX_LINE + 1)
        if not line:
            return
        yield line


def _decode(line, n):
    if isinstance(line, str):
        text = line
    else:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"line {n}: not UTF-8 text (byte "
                             f"{line[e.start]:#04x} at column {e.start + 1}): "
                             "binary data, not perf script output",
                             "give the text perf script -F brstack "
                             "writes") from None
    if len(text) > MAX_LINE and not text.endswith("\n"):
        raise UsageError(f"line {n} is longer than {MAX_LINE >> 20} MiB: not "
                         "perf script -F brstack output",
                         "give the text perf script -F brstack writes")
    nul = text.find("\0")
    if nul >= 0:
        raise UsageError(f"line {n}: NUL byte at column {nul + 1}: binary "
                         "data, not perf script output",
                         "give the text perf script -F brstack writes")
    return text


def parse_stacks(lines):
    """Branch stacks from text, one sample per line, newest entry first.
    Blank lines and lines starting with '#' are skipped. `lines`: a file
    (binary or text) or an iterable of str or bytes lines. Any malformed
    line raises UsageError naming its line, entry and field."""
    stacks = []
    for n, line in enumerate(_lines(lines), 1):
        line = _decode(line, n).strip()
        if not line or line.startswith("#"):
            continue
        stack = []
        for k, tok in enumerate(line.split(), 1):
            try:
                stack.append(parse_entry(tok))
            except EntryError as e:
                raise UsageError(f"line {n}, entry {k}: {e}",
                                 ENTRY_HINT) from None
        stacks.append(stack)
    return stacks


def pack_stacks(stacks):
    """eb_branch_stack records (fixed size), for the replay_stacks array;
    stacks deeper than the hardware maximum keep their newest entries.
    Returns (array of u64 words, number of stacks cut)."""
    words = array("Q")
    cut = 0
    for stack in stacks:
        if len(stack) > MAX_BRANCHES:
            stack = stack[:MAX_BRANCHES]
            cut += 1
        words.append(len(stack))  # nr in the low half, reserved 0
        for frm, to, mis in stack:
            words.extend((frm, to, BRANCH_MISPRED if mis else 0))
        words.extend(_ZEROS[:STACK_WORDS - 1 - 3 * len(stack)])  # padding
    return words, cut


def run_on_cpu(obj, program, args, cpu):
    """BPF_PROG_RUN of a syscall program on `cpu` (the calling thread is
    pinned there for the run); `args` holds its results after the run."""
    old = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as e:
        raise UsageError(f"cannot run on CPU {cpu}: {e.strerror}",
                         f"choose one of CPUs {sorted(old)}") from None
    try:
        retval = obj.run_program(program, args)
    finally:
        os.sched_setaffinity(0, old)
    if retval != 0:  # the program found no map element to work in
        raise _libbpf.LibbpfError(program, errno.EINVAL,
                                  f"returned {retval}: a map lookup failed")


class _MappedInput(Handle):
    """A loaded object (self.obj) fed through an mmapped array (self._mem):
    both released by close()."""

    def close(self):
        if self._mem is not None:
            self._mem.close()
            self._mem = None
        self.obj.close()


class Replayer(_MappedInput):
    """A loaded object whose replay program aggregates supplied stacks."""

    def __init__(self, max_entries=None, sets=None, path=None):
        """sets: trace cache sets per CPU (default: layout.cache_sets);
        path: another build of the BPF object, e.g. the baseline of the
        tests and benchmarks (default: the shipped one)."""
        check_privileges()
        if max_entries is not None and not (isinstance(max_entries, int)
                                            and 0 < max_entries < 1 << 32):
            raise UsageError(f"invalid --max-entries {max_entries!r}",
                             "give a positive number of map entries")
        ncpus = possible_cpus()
        self.max_entries = max_entries or default_max_entries("trace_counts",
                                                              ncpus)
        self.batch = batch = BATCH
        self.obj = BoltObject(Config(user_addr_end=USER_ADDR_END),
                              {"trace_counts": self.max_entries,
                               "trace_cache": sets or cache_sets(ncpus),
                               "replay_stacks": batch},
                              programs=["replay_branches"], prealloc=True,
                              path=path)
        size = -(-batch * STACK_BYTES // mmap.PAGESIZE) * mmap.PAGESIZE
        self._mem = mmap.mmap(self.obj.map_fd("replay_stacks"), size,
                              mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.cut = 0

    def load(self, words):
        """Put packed stacks (at most `batch`) into the replay array."""
        data = words.tobytes()
        if len(data) > self.batch * STACK_BYTES:
            raise ValueError("more stacks than the replay batch holds")
        self._mem[:len(data)] = data
        return len(data) // STACK_BYTES

    def run(self, count, cpu=0):
        """One BPF_PROG_RUN over the first `count` loaded stacks on `cpu`;
        returns the run's ReplayArgs."""
        args = ReplayArgs(first=0, count=count)
        run_on_cpu(self.obj, "replay_branches", args, cpu)
        return args

    def feed(self, stacks, cpu=0):
        """Aggregate stacks (lists of (from, to, mispredicted), newest first)
        on `cpu`, a batch per run."""
        for i in range(0, len(stacks), self.batch):
            words, cut = pack_stacks(stacks[i:i + self.batch])
            self.cut += cut
            count = self.load(words)
            args = self.run(count, cpu)
            if args.bad or args.done != count:
                raise _libbpf.LibbpfError("replay_branches", errno.EINVAL,
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
        traces, left_out = translated_traces(self.obj, space)
        stats = self.stats()
        stats["traces_outside_binary"] = left_out
        prof = Profile(binary, "cycles", "lbr", traces=traces, stats=stats)
        prof._elf = elf
        prof.info.update(load_base=load_base, map_entries=self.max_entries)
        return prof


def replay(binary, stacks, load_base=0, max_entries=None, cpus=None):
    """Aggregate branch stacks through the kernel and return the Profile of
    `binary`. `stacks` is a list of stacks (newest entry first, each entry
    (from, to, mispredicted)) or text lines in perf's brstack form.
    `cpus`: spread the stacks round-robin over these CPUs (default: 0)."""
    if stacks and isinstance(next(iter(stacks)), str):
        stacks = parse_stacks(stacks)
    stacks = list(stacks)
    # default: the first CPU this thread may run on (a cpuset may lack CPU 0)
    cpus = list(cpus) if cpus else [min(os.sched_getaffinity(0))]
    with Replayer(max_entries) as rep:
        for i, cpu in enumerate(cpus):
            rep.feed(stacks[i::len(cpus)], cpu=cpu)
        return rep.profile(binary, load_base)
