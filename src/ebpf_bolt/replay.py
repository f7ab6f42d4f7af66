"""Replay: run the kernel's branch-stack aggregation on stacks we supply.

The live program (sample_branches) and replay_branches share one worker in
the BPF object, so replaying stacks through BPF_PROG_RUN tests and measures
the exact code that runs on LBR hardware, the translation of runtime
addresses into (object, file offset) keys included. The replay runs as a
pseudo-process, procs[0], whose table of ranges is written here from the
objects given with their load bases, as the kernel fills a live process's
table from its mappings. BPF_PROG_RUN of a syscall program takes no CPU
flag: the calling thread is pinned with sched_setaffinity to choose whose
per-CPU cache is used (and several threads, one per CPU, update the shared
tables at the same time, as sampling CPUs do: feed_at_once). Stacks are written straight into the mmap of the
replay_stacks array, so one run aggregates a whole batch with nothing
copied per stack. Afterwards: one drain (drain.py), one translation per
object (translate.py), as for a recording.
"""
import ctypes
import errno
import mmap
import os
import threading
import time
from array import array

from .handle import Handle
from . import _libbpf
from .bpf_object import BoltObject, possible_cpus
from .collector import check_privileges, default_max_entries
from .drain import drain_traces
from .elf import ElfFile
from .layout import (BRANCH_MISPRED, BRANCH_TYPE_MASK, BRANCH_TYPE_SHIFT,
                     MAX_BRANCHES, PROC_RANGES,
                     USER_ADDR_END, BranchStack, Config, Proc, ReplayArgs,
                     cache_sets, table_slots)
from .profile import Profile
from .translate import object_traces, rows_by_object
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


# perf's names of the branch types (tools/perf/util/branch.c,
# branch_type_name: the index is enum perf_branch_sample_type's PERF_BR_*
# number, "N/A" being PERF_BR_UNKNOWN); the extended types (new_type, e.g.
# FAULT_ALGN, printed instead when type is PERF_BR_EXTEND_ABI) are no
# returns, and neither is a name this table lacks.
BRANCH_TYPES = {name: n for n, name in enumerate((
    "N/A", "COND", "UNCOND", "IND", "CALL", "IND_CALL", "RET", "SYSCALL",
    "SYSRET", "COND_CALL", "COND_RET", "ERET", "IRQ", "SERROR", "NO_TX"))}
PERF_BR_UNKNOWN = 0


def parse_entry(token):
    """One `perf script -F brstack` entry: 0xFROM/0xTO/M|P|-/... ->
    (from, to, mispredicted), or (from, to, mispredicted, branch type)
    where field 7 names one. perf prints FROM/TO/EVENT/INTX/ABORT/CYCLES
    (6 fields), since Linux 5.16 also the type (7: `.../0/RET`, `-` for
    none), since 5.18 the type as get_branch_type() gives it, empty for
    PERF_BR_UNKNOWN, and the speculation outcome (8: `.../0//-`,
    `.../0/RET/-`) (tools/perf/builtin-script.c, print_bstack_flags).
    The type is perf's PERF_BR_* number (BRANCH_TYPES); an empty field,
    `-` or N/A is unknown (a 3-tuple, as without the field), any other
    name is a type that is no return (what the kernel's aggregation asks:
    RET and COND_RET are), never an error. Fields after the third are
    otherwise not read; EntryError names the field that is wrong."""
    parts = token.split("/")
    if len(parts) < 3:
        raise EntryError(f"{_clip(token)} has {len(parts)} field"
                         f"{'s' if len(parts) != 1 else ''}; a branch entry "
                         "has at least 3 (FROM/TO/M|P|-)")
    frm, to = _address(parts[0], 0), _address(parts[1], 1)
    if parts[2] not in ("M", "P", "-"):
        raise EntryError(f"field 3 (prediction flag) {_clip(parts[2])} is "
                         "not M, P or -")
    if len(parts) > 6 and parts[6] not in ("", "-", "N/A"):
        return frm, to, parts[2] == "M", BRANCH_TYPES.get(parts[6],
                                                          PERF_BR_UNKNOWN)
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
    Entries are (from, to, mispredicted) or (from, to, mispredicted,
    branch type), the type put where the kernel puts it with
    PERF_SAMPLE_BRANCH_TYPE_SAVE.
    Returns (array of u64 words, number of stacks cut)."""
    words = array("Q")
    cut = 0
    for stack in stacks:
        if len(stack) > MAX_BRANCHES:
            stack = stack[:MAX_BRANCHES]
            cut += 1
        words.append(len(stack))  # nr in the low half, reserved 0
        for entry in stack:
            flags = BRANCH_MISPRED if entry[2] else 0
            if len(entry) > 3:  # the branch type, where the input has one
                flags |= (entry[3] & BRANCH_TYPE_MASK) << BRANCH_TYPE_SHIFT
            words.extend((entry[0], entry[1], flags))
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


def at_once(jobs):
    """Run jobs [(cpu, function)] at the same time, one thread each (the
    functions pin their runs to their CPU; ctypes lets go of the GIL in the
    syscall). The CPUs must differ: two runs on one CPU would share its
    cache, and lose counts where the kernel preempts one for the other.
    Returns each job's (result, (start, end) monotonic times); a job's
    exception is raised here, once all are done."""
    cpus = [cpu for cpu, _ in jobs]
    if len(set(cpus)) != len(cpus):
        raise ValueError(f"at_once: CPUs {cpus} repeat")
    results, errors = [None] * len(jobs), []

    def work(n, function):
        try:
            t0 = time.monotonic()
            value = function()
            results[n] = (value, (t0, time.monotonic()))
        except BaseException as e:  # re-raised by the caller's thread
            errors.append(e)
    threads = [threading.Thread(target=work, args=(n, function))
               for n, (_, function) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


class _MappedInput(Handle):
    """A loaded object (self.obj) fed through an mmapped array (self._mem):
    both released by close()."""

    def close(self):
        if self._mem is not None:
            self._mem.close()
            self._mem = None
        self.obj.close()


def object_ranges(objects):
    """The replay's table of ranges (a layout.Proc, procs[0]) for
    `objects`, [(path, ElfFile, load_base)], numbered 1..n in that order:
    one range per executable PT_LOAD segment, as the kernel makes one per
    executable mapping of a live process.
    - start = load_base + p_vaddr, where the loader puts the segment;
    - end = start + p_filesz: only the bytes within p_filesz come from the
      file and have a file offset (translate.segment_translator maps back
      exactly [p_offset, p_offset + p_filesz)); the rest up to p_memsz is
      zero-filled memory, no code of the file. For code the two are equal;
    - delta = start - p_offset, so that addr - delta is the file offset.
    Refuses (UsageError) more ranges than a process's table holds
    (PROC_RANGES), objects that overlap, and segments past user space."""
    ranges = []
    for oid, (path, elf, base) in enumerate(objects, 1):
        for seg in elf.text_segments():
            if not seg.filesz:
                continue
            start = base + seg.vaddr
            end = start + seg.filesz
            if end > USER_ADDR_END:
                raise UsageError(
                    f"{path} at load base {base:#x}: its code would end at "
                    f"{end:#x}, past user space ({USER_ADDR_END:#x})",
                    "give the runtime address of the object's first "
                    "segment (a PIE or library) or 0 (non-PIE)")
            ranges.append((start, end, (start - seg.offset) % (1 << 64),
                           oid, path))
    if len(ranges) > PROC_RANGES:
        raise UsageError(
            f"{len(ranges)} executable segments in {len(objects)} objects: "
            f"a replay's table of ranges holds {PROC_RANGES}, as a "
            "process's does", "replay fewer objects at once (each run "
            "gives exact profiles of the objects it has)")
    ranges.sort()
    for (s1, e1, _, _, p1), (s2, e2, _, _, p2) in zip(ranges, ranges[1:]):
        if s2 < e1:
            raise UsageError(
                f"{p1} and {p2} overlap: code at {s1:#x}-{e1:#x} and "
                f"{s2:#x}-{e2:#x}", "give each object a load base where "
                "its code does not meet another object's")
    proc = Proc()
    for slot, (start, end, delta, oid, _) in enumerate(ranges):
        r = proc.range[slot]
        r.start, r.end, r.delta, r.object = start, end, delta, oid
    proc.next = len(ranges) % PROC_RANGES
    return proc


def _objects(objects):
    """[(path, ElfFile, load_base)] from [(path, load_base)]."""
    out, seen = [], set()
    if not objects:
        raise UsageError("no object to replay for",
                         "give the profiled binary (and its load base)")
    for path, base in objects:
        if not (isinstance(base, int) and 0 <= base < 1 << 64):
            raise UsageError(f"invalid load base {base!r} for {path}",
                             "give a hexadecimal address, e.g. "
                             "0x555555554000, or 0 for a non-PIE executable")
        real = os.path.realpath(path)
        if real in seen:
            raise UsageError(f"{path} is given twice",
                             "give each object once, with its load base")
        seen.add(real)
        out.append((str(path), ElfFile(path), base))
    return out


class Replayer(_MappedInput):
    """A loaded object whose replay program aggregates supplied stacks of
    runtime addresses into the keys of `objects`."""

    def __init__(self, objects, max_entries=None, sets=None, path=None,
                 branch_types=True, windows=False, programs=()):
        """objects: [(ELF file path, load base)], the code the stacks ran
        in, placed as the loader put it (load base: the runtime address of
        a PIE's or library's first segment, 0 for non-PIE); each gets its
        profile (profiles()); addresses in none of them are outside every
        object. sets: trace cache sets per CPU (default:
        layout.cache_sets); path: another build of the BPF object, e.g.
        the baseline of the tests and benchmarks (default: the shipped
        one); branch_types: keep returns apart where entries have a type
        (False: the worker skips the test, as for an event without
        PERF_SAMPLE_BRANCH_TYPE_SAVE, and every trace is untyped);
        windows: load two sets of tables, so that end_window() can start
        a new window as --interval does (BoltObject.switch_set);
        programs: more programs to load than replay_branches (the tests'
        object has a few of its own)."""
        check_privileges()
        if max_entries is not None and not (isinstance(max_entries, int)
                                            and 0 < max_entries < 1 << 32):
            raise UsageError(f"invalid --max-entries {max_entries!r}",
                             "give a positive number of map entries")
        self.objects = _objects(objects)
        proc = object_ranges(self.objects)
        ncpus = possible_cpus()
        self.max_entries = max_entries or default_max_entries("trace_counts")
        self.batch = batch = BATCH
        self.obj = BoltObject(Config(user_addr_end=USER_ADDR_END,
                                     branch_types=int(branch_types)),
                              {"trace_counts": table_slots(self.max_entries),
                               "trace_cache": sets or cache_sets(ncpus),
                               "replay_stacks": batch,
                               "procs": 1},   # procs[0]: the replay's own
                              programs=["replay_branches", *programs],
                              path=path,
                              sets=2 if windows else 1)
        try:
            self.obj.update_elem("procs", ctypes.c_uint32(0), proc)
            size = -(-batch * STACK_BYTES // mmap.PAGESIZE) * mmap.PAGESIZE
            self._mem = mmap.mmap(self.obj.map_fd("replay_stacks"), size,
                                  mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            self.obj.close()
            raise
        self.cut = 0

    def load(self, words, first=0):
        """Put packed stacks into the replay array from stack `first` on."""
        data = words.tobytes()
        if first * STACK_BYTES + len(data) > self.batch * STACK_BYTES:
            raise ValueError("more stacks than the replay batch holds")
        self._mem[first * STACK_BYTES:first * STACK_BYTES + len(data)] = data
        return len(data) // STACK_BYTES

    def run(self, count, cpu=0, first=0):
        """One BPF_PROG_RUN over `count` loaded stacks from stack `first` on
        `cpu`; returns the run's ReplayArgs."""
        args = ReplayArgs(first=first, count=count)
        run_on_cpu(self.obj, "replay_branches", args, cpu)
        return args

    def feed(self, stacks, cpu=0, first=0, room=None):
        """Aggregate stacks (lists of (from, to, mispredicted) or (from, to,
        mispredicted, branch type), newest first) on `cpu`, a run per `room` stacks (default: the whole replay array)
        loaded from stack `first` on."""
        self.cut += self._feed(stacks, cpu, first, room or self.batch)

    def _feed(self, stacks, cpu, first, room):
        """feed(); returns the entries cut (stacks deeper than 64)."""
        cut_total = 0
        for i in range(0, len(stacks), room):
            words, cut = pack_stacks(stacks[i:i + room])
            cut_total += cut
            count = self.load(words, first)
            args = self.run(count, cpu, first)
            if args.bad or args.done != count:
                raise _libbpf.LibbpfError("replay_branches", errno.EINVAL,
                                          f"{args.bad} malformed stacks")
        return cut_total

    def feed_at_once(self, shares):
        """Aggregate several lists of stacks at the same time, each on its
        own CPU: `shares` is [(cpu, stacks)]. One thread per CPU, each
        with its own part of the replay array, runs the program there
        while the others do (ctypes lets go of the GIL during the
        syscall), so the CPUs update the shared trace table
        concurrently, as sampling CPUs do (at_once: the CPUs must differ).
        Returns each share's (start, end) monotonic times, which show that
        the runs overlapped."""
        room = self.batch // len(shares)
        results = at_once([
            (cpu, lambda n=n, cpu=cpu, stacks=stacks:
             self._feed(stacks, cpu, n * room, room))
            for n, (cpu, stacks) in enumerate(shares)])
        self.cut += sum(cut for cut, _ in results)
        return [times for _, times in results]

    def stats(self):
        st = self.obj.stats()
        st["stack_cut"] += self.cut
        # the replay's table holds every object from the start: an address
        # it does not cover is outside all of them, not one a busy mapping
        # lookup left unplaced (what "unresolved" means when recording)
        st["addresses_outside"] = st["unresolved"]
        st["unresolved"] = 0
        return st

    def end_window(self):
        """Switch the worker to the other set of tables and return the
        profiles of the window that ended (that set's drain), then clear
        that set for the window after next: as --interval does while
        recording. Between runs: replay's runs are this thread's own."""
        return self.obj.end_window(self.profiles)

    def profiles(self, s=None):
        """The Profile of each object, in the order given, from set `s`
        (default: the one the worker counts into now): one drain, then
        one translation per object (translate.object_traces), over the rows
        of that object (found in one pass where there are several).
        stats["traces_outside_binary"]: the traces counted but not in this
        object's profile (no from or to in it, including those the kernel
        dropped for having none in any object)."""
        columns = drain_traces(self.obj, self.obj.active if s is None else s)
        stats = self.stats()
        total = sum(columns[3]) + stats["traces_outside"]
        rows = rows_by_object(columns) if len(self.objects) > 1 else {}
        out = []
        for oid, (path, elf, base) in enumerate(self.objects, 1):
            traces, _ = object_traces(columns, oid, elf, rows.get(oid) if
                                      rows else None)
            st = dict(stats)
            st["traces_outside_binary"] = total - sum(
                c for c, _ in traces.values())
            prof = Profile(path, "cycles", "lbr", traces=traces, stats=st)
            prof._elf = elf
            prof.info.update(load_base=base, object=oid,
                             build_id=elf.build_id,
                             map_entries=self.max_entries)
            out.append(prof)
        return out

    def profile(self, binary=None):
        """The Profile of one object (`binary`: its path as given; default
        the first)."""
        profiles = self.profiles()
        if binary is None:
            return profiles[0]
        for (path, _, _), prof in zip(self.objects, profiles):
            if path == str(binary) or os.path.realpath(path) == \
                    os.path.realpath(binary):
                return prof
        raise ValueError(f"{binary} is not one of the replayed objects")


def replay_objects(objects, stacks, max_entries=None, cpus=None):
    """Aggregate branch stacks through the kernel and return the Profile of
    each of `objects`, [(ELF file path, load base)]. `stacks` is a list of
    stacks (newest entry first, each entry (from, to, mispredicted), or
    (from, to, mispredicted, branch type)) or text lines in perf's brstack
    form. `cpus`: deal the stacks
    round-robin to these CPUs, which aggregate them at the same time
    (default: the first CPU this thread may use)."""
    if stacks and isinstance(next(iter(stacks)), str):
        stacks = parse_stacks(stacks)
    stacks = list(stacks)
    # default: the first CPU this thread may run on (a cpuset may lack CPU 0)
    cpus = list(cpus) if cpus else [min(os.sched_getaffinity(0))]
    # the worker tests types only where some entry has one
    typed = any(len(e) > 3 for stack in stacks for e in stack)
    with Replayer(objects, max_entries, branch_types=typed) as rep:
        rep.feed_at_once([(cpu, stacks[i::len(cpus)])
                          for i, cpu in enumerate(cpus)])
        return rep.profiles()


def replay(binary, stacks, load_base=0, max_entries=None, cpus=None):
    """replay_objects for one object: the Profile of `binary` loaded at
    `load_base`."""
    return replay_objects([(binary, load_base)], stacks, max_entries,
                          cpus)[0]
