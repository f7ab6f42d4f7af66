"""Software branch traces: the taken branches of a real program run,
recorded under qemu-user and cut into LBR-like branch stacks.

No machine of this project has branch-sampling hardware, so the branch-stack
path is tested on stacks recorded in software and fed to
:func:`ebpf_bolt.replay.replay`. The program runs under ``qemu-x86_64`` with
``-d in_asm,exec,nochain``:

- ``in_asm`` logs every translation block (TB) once, when it is translated:
  ``IN: symbol`` followed by one line per instruction
  (``0xADDR:  bytes  mnemonic operands``; instructions longer than 8 bytes
  continue on a line holding only the address and the remaining bytes) and a
  blank line. That gives each TB's start, its last instruction and its end.
- ``exec`` logs every TB execution:
  ``Trace CPU: HOSTPTR [CS_BASE/PC/FLAGS/CFLAGS] symbol``. CPU is qemu's
  index of the guest thread, so threads are told apart.
- ``nochain`` stops qemu from chaining TBs, so that every execution is logged.

Consecutive executions A then B of one thread are a taken branch from A's
last instruction to B's start unless B starts where A ends: TBs also end
after instructions that are not branches (page boundaries, TB size limits,
system calls), and such fall-throughs are not branches. Unconditional
jumps, calls and returns are branches even to the next instruction (as in
LBR); an iteration of a ``rep``-prefixed string instruction (qemu re-enters
the instruction's own TB) is not.

The branch sequence is kept as hardware keeps it, in a ring of the last
``depth`` branches per thread; every ``period`` taken branches (with a
seeded random jitter) the ring becomes one stack, newest entry first, in
the ``(from, to, mispredicted)`` form of replay. All user-space branches
are recorded with their runtime addresses, also those in shared libraries
and the dynamic loader (replay translates them as outside the binary).

The log is streamed through a FIFO and parsed while the program runs, so
neither disk nor memory grows with the length of the run (only the stacks
at sample points are kept, their entries shared between stacks).

qemu-user maps a PIE at a base of its own choosing (0x4000000000 for x86_64
guests in qemu 7.2); :attr:`Recording.load_base` is found by matching the
bytes of the TB that starts at the entry point against the ELF file.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from ebpf_bolt.elf import ElfFile

DEFAULT_DEPTH = 32
DEFAULT_PERIOD = 1009
PAGE = 4096

_UNCOND = ("jmp", "call", "ret", "ljmp", "lcall", "lret", "iret", "sysret")
_PREFIXES = {"notrack", "bnd", "lock", "data16", "addr32"}
_HEX2 = frozenset(f"{i:02x}" for i in range(256))

KIND_OTHER, KIND_UNCOND, KIND_REP = 0, 1, 2


class BrtraceError(RuntimeError):
    pass


# The branch type of a block's last instruction, as the kernel reports
# it with PERF_SAMPLE_BRANCH_TYPE_SAVE (enum perf_branch_sample_type):
# PERF_BR_COND 1, UNCOND 2, IND 3, CALL 4, IND_CALL 5, RET 6; 0 unknown.
BR_UNKNOWN, BR_COND, BR_UNCOND, BR_IND, BR_CALL, BR_IND_CALL, BR_RET = range(7)


def branch_type(mnem, operands):
    """The PERF_BR_* type of an x86 branch instruction."""
    indirect = operands.startswith("*")
    if mnem.startswith("ret"):
        return BR_RET
    if mnem.startswith("call"):
        return BR_IND_CALL if indirect else BR_CALL
    if mnem.startswith("jmp"):
        return BR_IND if indirect else BR_UNCOND
    if mnem.startswith(("j", "loop")):
        return BR_COND
    return BR_UNKNOWN


class Block:
    """One translation block: start, address of its last instruction, end
    (first byte after it), what its last instruction is (kind, and its
    branch type), and its first bytes. Compared and hashed by identity
    (the parser's caches need that to be fast)."""
    __slots__ = ("start", "last", "end", "kind", "code", "btype")

    def __init__(self, start, last, end, kind, code=b"", btype=BR_UNKNOWN):
        self.start, self.last, self.end = start, last, end
        self.kind, self.code, self.btype = kind, code, btype

    def __repr__(self):
        return (f"Block(0x{self.start:x}, last=0x{self.last:x}, "
                f"end=0x{self.end:x}, kind={self.kind})")


def parse_insn_line(line):
    """``0xADDR:  b1 b2 ...  mnemonic operands`` -> (addr, bytes, mnemonic
    or None for a continuation line of a long instruction, operands)."""
    colon = line.index(":")
    addr = int(line[:colon], 16)
    toks = line[colon + 1:].split()
    n = 0
    while n < len(toks) and toks[n] in _HEX2:
        n += 1
    code = bytes(int(t, 16) for t in toks[:n])
    mnem = None
    rest = toks[n:]
    while rest and rest[0] in _PREFIXES:
        rest = rest[1:]
    if rest:
        mnem = rest[0]
        if mnem.startswith("rep") and not mnem.startswith("ret"):
            mnem = "rep"
    elif n < len(toks):
        mnem = toks[n]
    return addr, code, mnem, " ".join(rest[1:])


def block_from_lines(lines):
    """A Block from the instruction lines of one ``IN:`` entry."""
    start = last = end = None
    mnem = operands = None
    code = bytearray()
    for line in lines:
        addr, b, m, ops = parse_insn_line(line)
        if not b:
            raise BrtraceError(
                "qemu's in_asm log has no instruction bytes (a qemu built "
                f"without capstone?): {line!r}")
        if start is None:
            start = addr
        if m is not None:
            last, mnem, operands = addr, m, ops
        if addr == start + len(code):
            code += b
        end = addr + len(b)
    if start is None or last is None:
        return None
    if mnem == "rep":
        kind = KIND_REP
    elif mnem.startswith(_UNCOND):
        kind = KIND_UNCOND
    else:
        kind = KIND_OTHER
    return Block(start, last, end, kind, bytes(code[:16]),
                 branch_type(mnem, operands))


def transition(prev, blk):
    """What running `blk` right after `prev` means: the taken branch
    (from, to), or None (fall-through into the next block, or another
    iteration of a rep-prefixed instruction)."""
    to = blk.start
    if prev.kind == KIND_REP and to == prev.last:
        return None
    if to == prev.end and prev.kind != KIND_UNCOND:
        return None
    return (prev.last, to)


class _Thread:
    __slots__ = ("cpu", "block", "ring", "countdown", "stopped")

    def __init__(self, cpu, depth, countdown):
        self.cpu = cpu
        self.block = None
        self.ring = deque(maxlen=depth)
        self.countdown = countdown
        self.stopped = False


@dataclass
class Recording:
    """What one recorded run gives."""
    stacks: list = field(default_factory=list)
    load_base: int | None = None
    stats: dict = field(default_factory=dict)
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""


class BranchTracer:
    """Streaming parser of a qemu ``-d in_asm,exec,nochain`` log.

    :meth:`run` takes an iterable of log lines (bytes or str, in log order)
    and can be called again with more; :attr:`stacks` collects the branch
    stacks at sample points. ``on_branch(cpu, frm, to)``, if given, sees
    every taken branch (for tests; it slows parsing down)."""

    def __init__(self, depth=DEFAULT_DEPTH, period=DEFAULT_PERIOD,
                 jitter=0.25, seed=0, entry_code=None, entry=None,
                 is_pie=True, on_branch=None, full_only=True,
                 branch_types=False):
        if depth < 1 or period < 1:
            raise ValueError("depth and period must be positive")
        self.depth = depth
        self.period = period
        self.jitter = int(period * jitter)
        self.rng = random.Random(seed)
        self.entry = entry
        self.entry_code = entry_code
        self.load_base = None if (entry is not None and is_pie) else 0
        self.on_branch = on_branch
        self.full_only = full_only
        self.branch_types = branch_types
        self.stacks = []
        self.lines = {}         # exec line -> (thread, Block)
        self.blocks = {}        # (hostptr, [cs_base/pc/flags/cflags]) -> Block
        self.pending = {}       # start pc -> Block translated, not yet run
        self.threads = {}       # qemu cpu index -> _Thread
        self.trans = {}         # (Block, Block) -> shared entry or None
        self.edges = {}         # (from, to) -> shared stack entry
        self._in_lines = None
        self._last_thread = None
        self.stats = dict(tb_executions=0, translations=0, branches=0,
                          fallthroughs=0, unknown_blocks=0, stopped=0,
                          threads=0, samples_short=0)

    def _next_countdown(self):
        if self.jitter:
            return self.period + self.rng.randint(-self.jitter, self.jitter)
        return self.period

    def run(self, lines):
        """Parse log lines; the hot loop handles the exec lines of known
        blocks and known transitions by dictionary look-ups only."""
        cache, trans = self.lines, self.trans
        stacks, depth, full_only = self.stacks, self.depth, self.full_only
        on_branch = self.on_branch
        execs = branches = fallthroughs = 0
        last = None
        for line in lines:
            v = cache.get(line)
            if v is None:
                raw = line
                if isinstance(line, bytes):
                    line = line.decode(errors="replace")
                if not line.startswith("Trace "):
                    self._other(line)
                    continue
                v = self._resolve(line, raw)
                if v is None:
                    continue
            th, blk = v
            execs += 1
            last = th
            prev = th.block
            th.block = blk
            if prev is None:
                continue
            key = (prev, blk)
            edge = trans.get(key, 0)
            if edge == 0:
                edge = self._transition(th, prev, blk)
                if edge == 0:
                    continue
            if edge is None:
                fallthroughs += 1
                continue
            th.ring.append(edge)
            branches += 1
            if on_branch is not None:
                on_branch(th.cpu, edge[0], edge[1])
            th.countdown -= 1
            if th.countdown <= 0:
                th.countdown = self._next_countdown()
                if len(th.ring) < depth:
                    self.stats["samples_short"] += 1
                    if full_only:
                        continue
                stack = list(th.ring)
                stack.reverse()
                stacks.append(stack)
        self._last_thread = last or self._last_thread
        st = self.stats
        st["tb_executions"] += execs
        st["branches"] += branches
        st["fallthroughs"] += fallthroughs

    def finish(self):
        if self._in_lines:
            self._end_in()
        self.stats["threads"] = len(self.threads)
        self.stats["stacks"] = len(self.stacks)
        self.stats["distinct_branches"] = len(self.edges)

    def feed_lines(self, lines):
        self.run(lines)
        self.finish()

    # -- the slow paths -----------------------------------------------------
    def _other(self, line):
        if self._in_lines is not None:
            if line.startswith("0x"):
                self._in_lines.append(line)
            elif not line.strip():
                self._end_in()
        elif line.startswith("IN:"):
            self._in_lines = []
        elif line.startswith("Stopped execution"):
            self._stopped(line)

    def _end_in(self):
        lines, self._in_lines = self._in_lines, None
        blk = block_from_lines(lines)
        if blk is None:
            return
        self.stats["translations"] += 1
        self.pending[blk.start] = blk
        if self.load_base is None and self.entry_code:
            # the TB at the entry point of a PIE: same page offset, same bytes
            delta = blk.start - self.entry
            n = min(len(blk.code), len(self.entry_code))
            if delta >= 0 and delta % PAGE == 0 and n >= 4 and \
                    blk.code[:n] == self.entry_code[:n]:
                self.load_base = delta

    def _resolve(self, line, raw):
        # Trace 0: 0x7f7b48000100 [0000000000000000/000000400286cb70/1040c0b3/00000200] sym
        parts = line.split(None, 4)
        cpu = parts[1].rstrip(":")
        key = (parts[2], parts[3])
        blk = self.blocks.get(key)
        if blk is None:
            pc = int(parts[3].split("/")[1], 16)
            blk = self.pending.pop(pc, None)
            if blk is not None:
                self.blocks[key] = blk
        th = self.threads.get(cpu)
        if th is None:
            th = self.threads[cpu] = _Thread(cpu, self.depth,
                                             self._next_countdown())
        if blk is None:
            # not seen translated: the thread's sequence breaks here
            self.stats["unknown_blocks"] += 1
            th.block = None
            return None
        v = (th, blk)
        self.lines[raw] = v
        return v

    def _transition(self, th, prev, blk):
        """Classify a pair of blocks not met before (returns the cached
        value), or handle a restart after "Stopped execution" (returns 0:
        nothing happened)."""
        if th.stopped:
            th.stopped = False
            if prev is blk:
                return 0
        tr = transition(prev, blk)
        if tr is not None:
            edge = self.edges.get(tr)
            if edge is None:
                edge = self.edges[tr] = (
                    (tr[0], tr[1], False, prev.btype) if self.branch_types
                    else (tr[0], tr[1], False))
            tr = edge
        if not any(t.stopped for t in self.threads.values()):
            self.trans[(prev, blk)] = tr
        return tr

    def _stopped(self, line):
        # "Stopped execution of TB chain before HOSTPTR [PC] symbol": the TB
        # last logged for that thread did not run; qemu runs it again.
        self.stats["stopped"] += 1
        try:
            pc = int(line.split("[", 1)[1].split("]", 1)[0], 16)
        except (IndexError, ValueError):
            return
        cands = [self._last_thread] + list(self.threads.values())
        for th in cands:
            if th is not None and th.block is not None and th.block.start == pc:
                th.stopped = True
                # the cached transitions skip the stopped check: forget them
                self.trans.clear()
                return


def _entry_code(elf_path):
    elf = ElfFile(elf_path)
    with open(elf_path, "rb") as f:
        data = f.read()
    for s in elf.segments:
        if s.vaddr <= elf.entry < s.vaddr + s.filesz:
            off = elf.entry - s.vaddr + s.offset
            return elf, data[off:off + 16]
    raise BrtraceError(f"{elf_path}: entry point outside the file's segments")


def record(argv, *, binary=None, depth=DEFAULT_DEPTH, period=DEFAULT_PERIOD,
           jitter=0.25, seed=0, qemu="qemu-x86_64", log_path=None,
           full_only=True, timeout=None, env=None, on_branch=None,
           branch_types=False):
    """Run ``argv`` under qemu-user and return a :class:`Recording`: its
    branch stacks (newest entry first, ``depth`` deep, one every ``period``
    taken branches of a thread, +-``jitter``*period, seeded), the load base
    of ``binary`` (default ``argv[0]``) for replay, the program's exit code
    and output, and counters. ``log_path``: also keep qemu's log there
    (large). ``full_only``: drop samples taken before a thread has
    ``depth`` branches. ``branch_types``: entries carry the branch type of
    the instruction at `from` (a 4th element, PERF_BR_*), as the kernel
    gives them with PERF_SAMPLE_BRANCH_TYPE_SAVE."""
    qemu_path = shutil.which(qemu)
    if qemu_path is None:
        raise BrtraceError(f"{qemu} not found (Debian package qemu-user)")
    binary = binary or argv[0]
    elf, code = _entry_code(binary)
    tracer = BranchTracer(depth=depth, period=period, jitter=jitter,
                          seed=seed, entry_code=code, entry=elf.entry,
                          is_pie=elf.is_pie, on_branch=on_branch,
                          full_only=full_only, branch_types=branch_types)
    with tempfile.TemporaryDirectory(prefix="brtrace-") as tmp:
        fifo = os.path.join(tmp, "qemu.log")
        os.mkfifo(fifo)
        out_path = os.path.join(tmp, "stdout")
        err_path = os.path.join(tmp, "stderr")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [qemu_path, "-d", "in_asm,exec,nochain", "-D", fifo, *argv],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)
        timer = None
        if timeout:
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
        copy = open(log_path, "wb") if log_path else None
        try:
            # qemu opens the log when it starts; a qemu that fails before
            # that would leave open() blocked: open non-blocking, then wait.
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            os.set_blocking(fd, True)
            _grow_pipe(fd)
            waited = _wait_writer(fd, proc)
            if waited:
                try:
                    lines = _read_lines(fd)
                    tracer.run(lines if copy is None else _tee(lines, copy))
                finally:
                    os.close(fd)
            else:
                os.close(fd)
            tracer.finish()
            returncode = proc.wait()
        finally:
            if timer:
                timer.cancel()
            if copy:
                copy.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        with open(out_path, errors="replace") as f:
            stdout = f.read()
        with open(err_path, errors="replace") as f:
            stderr = f.read()
    if tracer.load_base is None:
        raise BrtraceError(
            f"no translation block of {binary} at its entry point in qemu's "
            "log: cannot tell where qemu loaded it" +
            (f" (qemu exit {returncode}: {stderr.strip()[-300:]})"
             if returncode else ""))
    stats = dict(tracer.stats)
    return Recording(stacks=tracer.stacks, load_base=tracer.load_base,
                     stats=stats, returncode=returncode, stdout=stdout,
                     stderr=stderr)


def _read_lines(fd, chunk=1 << 20):
    """Lines (bytes, without the newline) from a pipe. qemu writes (and
    flushes) every log line on its own: reading as soon as anything is
    there would wake this process up for every line, so after a short read
    it sleeps a little to let the pipe fill."""
    rest = b""
    while True:
        data = os.read(fd, chunk)
        if not data:
            break
        parts = (rest + data).split(b"\n")
        rest = parts.pop()
        yield from parts
        if len(data) < chunk // 4:
            time.sleep(0.004)
    if rest:
        yield rest


def _tee(lines, copy):
    for line in lines:
        copy.write(line + b"\n")
        yield line


def _grow_pipe(fd, size=1 << 20):
    try:
        import fcntl
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
    except OSError:
        pass


def _wait_writer(fd, proc):
    """Wait until qemu has opened the FIFO for writing (True) or exited
    without doing so (False). A FIFO read with no writer yet gives EOF, so
    poll for readable data and check the process meanwhile."""
    import select
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        ev = poller.poll(100)
        if ev:
            for _, mask in ev:
                if mask & select.POLLIN:
                    return True
        if proc.poll() is not None:
            # it may have written and exited just now
            return bool(select.select([fd], [], [], 0)[0])


_TYPE_NAMES = ("", "COND", "UNCOND", "IND", "CALL", "IND_CALL", "RET")


def stacks_to_text(stacks):
    """Stacks in perf's brstack text form (what replay.parse_stacks reads):
    6 fields, or 8 with the type (as perf 5.18 and later print it) for
    typed entries."""
    return [" ".join(f"0x{e[0]:x}/0x{e[1]:x}/{'M' if e[2] else 'P'}/-/-/0" +
                     (f"/{_TYPE_NAMES[e[3]]}/-" if len(e) > 3 else "")
                     for e in st) for st in stacks]
