"""The ring-buffer baseline of bench_replay.py (issue 10): bench/ringbuf.bpf.c,
built at bench time, and a minimal loader over the package's libbpf
bindings (BoltObject is for the shipped object, whose maps and config it
checks).

RingCopy runs like a Replayer (load(), run(), feed()), so bench_replay.py
times both alike: per run, ring_copy puts each loaded stack's nr entries
into the ring buffer with bpf_ringbuf_output(); nothing is aggregated.
By default the output alone (BPF_RB_NO_WAKEUP); RingCopy(wakeup=True)
uses flags 0, which also wakes the consumer when it has caught up.
Before each run the ring is emptied (its consumer position moved up to the
producer's through the mmapped consumer page, as a consumer that has read
everything would leave it), and it is sized for a whole run of the deepest
stacks, so no output fails; every run's failures are counted all the same
(the program's failed_outputs, read through .bss) and reported.
"""
import ctypes
import mmap
import os
import struct
import subprocess

from ebpf_bolt import _libbpf
from ebpf_bolt.handle import Handle
from ebpf_bolt.layout import MAX_BRANCHES, ReplayArgs
from ebpf_bolt.replay import STACK_BYTES, run_on_cpu

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SOURCE = os.path.join(HERE, "ringbuf.bpf.c")

ENTRY_BYTES = 24           # struct eb_branch
BPF_RB_NO_WAKEUP = 1       # <linux/bpf.h>
RECORD_HEADER = 8          # BPF_RINGBUF_HDR_SZ: u32 len, u32 page offset


def record_bytes(nr):
    """Ring space of one output of nr entries: header, data, 8-aligned
    (kernel/bpf/ringbuf.c, __bpf_ringbuf_reserve)."""
    return -(-(RECORD_HEADER + nr * ENTRY_BYTES) // 8) * 8


def build(out_dir):
    """Compile ringbuf.bpf.c into out_dir with bpf/Makefile's flags (and
    bpf/ for ebpf_bolt.h); returns the object's path."""
    arch = {"x86_64": "x86", "aarch64": "arm64",
            "ppc64le": "powerpc"}.get(os.uname().machine, os.uname().machine)
    try:
        multiarch = subprocess.run(["cc", "-print-multiarch"], check=True,
                                   capture_output=True,
                                   text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        multiarch = ""
    multiarch = multiarch or f"{os.uname().machine}-linux-gnu"
    out = os.path.join(out_dir, "ringbuf.bpf.o")
    os.makedirs(out_dir, exist_ok=True)
    subprocess.run([os.environ.get("CLANG", "clang"), "-g", "-O2", "-Wall",
                    "-Werror", "-target", "bpf", "-mcpu=v3",
                    f"-D__TARGET_ARCH_{arch}", "-I", os.path.join(ROOT, "bpf"),
                    "-idirafter", f"/usr/include/{multiarch}",
                    "-idirafter", "/usr/include", "-c", SOURCE, "-o", out],
                   check=True)
    return out


def ring_size(stacks_per_run):
    """A power of two of pages (the kernel's rule for a ring buffer) that
    holds stacks_per_run outputs of the deepest stack."""
    need = max(stacks_per_run * record_bytes(MAX_BRANCHES), mmap.PAGESIZE)
    size = mmap.PAGESIZE
    while size < need:
        size *= 2
    return size


class RingCopy(Handle):
    """The loaded ring-buffer baseline: its input array (batch stacks) and
    a ring buffer for one run of them."""

    PROGRAM = "ring_copy"

    def __init__(self, path, batch, wakeup=False, read_on=None,
                 floor=(0, 0, 0)):
        """wakeup: output with flags 0, which wakes the consumer when it
        has caught up (here, at each run's first record); else
        BPF_RB_NO_WAKEUP, the output alone. read_on: a CPU on which the
        records are read before they are marked consumed, as a consumer
        thread there would read them (the ring's lines then move between
        the CPUs' caches); None: marked consumed unread, so they stay in
        the writing CPU's cache. floor: trace_floor's object (its code's
        run-time start and end, and its load base)."""
        lib = self._lib = _libbpf.lib()
        self.read_on = read_on
        self.batch = batch
        self.ring_bytes = ring_size(batch)
        self._mems = []
        self.kernel_failed = None  # failed_outputs() when closed
        self._obj = lib.bpf_object__open_file(os.fsencode(path), None)
        try:
            # .rodata: output_flags, floor_lo, floor_hi, floor_delta
            rodata = (ctypes.c_uint64 * 4)(
                0 if wakeup else BPF_RB_NO_WAKEUP, *floor)
            lib.bpf_map__set_initial_value(self._map(".rodata"),
                                           ctypes.byref(rodata),
                                           ctypes.sizeof(rodata))
            lib.bpf_map__set_max_entries(self._map("ring_stacks"), batch)
            lib.bpf_map__set_max_entries(self._map("stack_ring"),
                                         self.ring_bytes)
            lib.bpf_object__load(self._obj)
            self.program_fd = lib.bpf_program__fd(
                lib.bpf_object__find_program_by_name(
                    self._obj, self.PROGRAM.encode()))
            ring_fd = lib.bpf_map__fd(self._map("stack_ring"))
            page = mmap.PAGESIZE
            # the input, written in place as Replayer writes replay_stacks
            self._input = self._mmap(
                lib.bpf_map__fd(self._map("ring_stacks")),
                -(-batch * STACK_BYTES // page) * page,
                mmap.PROT_READ | mmap.PROT_WRITE)
            # the ring's pages (the kernel's layout, kernel/bpf/ringbuf.c):
            # the consumer position (user space writes it), the producer
            # position, then the data, mapped twice in a row
            self._consumer = self._mmap(ring_fd, page,
                                        mmap.PROT_READ | mmap.PROT_WRITE)
            self._producer = self._mmap(ring_fd, page, mmap.PROT_READ,
                                        offset=page)
            self._data = self._mmap(ring_fd, self.ring_bytes, mmap.PROT_READ,
                                    offset=2 * page)
        except BaseException:
            self.close()
            raise
        self.outputs = 0       # records the runs put in the ring
        self.failed = 0        # outputs the runs reported failed

    def _map(self, name):
        if not self._obj:
            raise ValueError("RingCopy is closed")
        return self._lib.bpf_object__find_map_by_name(self._obj,
                                                      name.encode())

    def _mmap(self, fd, size, prot, offset=0):
        mem = mmap.mmap(fd, size, mmap.MAP_SHARED, prot, offset=offset)
        self._mems.append(mem)
        return mem

    def _pos(self, mem):
        # the kernel writes the positions with smp_store_release; one
        # aligned 8-byte load reads either one whole, as libbpf's does
        return struct.unpack_from("Q", mem, 0)[0]

    def run_program(self, name, args):
        """BPF_PROG_RUN, as BoltObject.run_program (for replay.run_on_cpu)."""
        opts = _libbpf.bpf_test_run_opts(
            sz=ctypes.sizeof(_libbpf.bpf_test_run_opts),
            ctx_in=ctypes.cast(ctypes.pointer(args), ctypes.c_void_p),
            ctx_size_in=ctypes.sizeof(args))
        self._lib.bpf_prog_test_run_opts(self.program_fd, ctypes.byref(opts))
        return opts.retval

    def load(self, words, first=0):
        """Put packed stacks (replay.pack_stacks) into the input array."""
        data = words.tobytes()
        if first * STACK_BYTES + len(data) > self.batch * STACK_BYTES:
            raise ValueError("more stacks than the input array holds")
        self._input[first * STACK_BYTES:first * STACK_BYTES + len(data)] = data
        return len(data) // STACK_BYTES

    def consume_all(self):
        """Mark every record read: the consumer position up to the
        producer's (what a consumer leaves once it has caught up); with
        read_on, read them there first."""
        producer = self._pos(self._producer)
        if self.read_on is not None:
            consumer = self._pos(self._consumer)
            start = consumer & (self.ring_bytes - 1)
            end = start + producer - consumer
            old = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {self.read_on})
            try:  # one copy reads every line of the records
                self.read = bytes(self._data[start:min(end, self.ring_bytes)])
                if end > self.ring_bytes:  # wrapped round to the start
                    self.read += bytes(self._data[:end - self.ring_bytes])
            finally:
                os.sched_setaffinity(0, old)
        struct.pack_into("Q", self._consumer, 0, producer)

    def run(self, count, cpu=0, first=0):
        """Empty the ring, then one BPF_PROG_RUN over `count` loaded
        stacks on `cpu`; checks that every output went into the ring and
        returns the run's ReplayArgs (bad: failed outputs)."""
        self.consume_all()
        before = self._pos(self._producer)
        args = ReplayArgs(first=first, count=count)
        run_on_cpu(self, self.PROGRAM, args, cpu)
        self.outputs += args.done
        self.failed += args.bad
        if args.done + args.bad != count:
            raise RuntimeError(f"{self.PROGRAM}: {args.done} of {count} "
                               "stacks output (a malformed stack?)")
        grown = self._pos(self._producer) - before
        want = sum(record_bytes(struct.unpack_from(
            "I", self._input, (first + i) * STACK_BYTES)[0])
            for i in range(count))
        if not args.bad and grown != want:
            raise RuntimeError(f"{self.PROGRAM}: the ring grew by {grown} "
                               f"bytes, not the {want} of {count} records")
        return args

    def feed(self, stacks, cpu=0):
        """Output stacks (as Replayer.feed takes them), a run per batch."""
        from ebpf_bolt.replay import pack_stacks
        for i in range(0, len(stacks), self.batch):
            self.run(self.load(pack_stacks(stacks[i:i + self.batch])[0]), cpu)

    def check_copy(self, stack):
        """Output one stack and compare its record with the stack's
        entries: the baseline copies what it is meant to."""
        from ebpf_bolt.replay import pack_stacks
        self.run(self.load(pack_stacks([stack])[0]))
        cons = self._pos(self._consumer)
        off = cons & (self.ring_bytes - 1)
        length = struct.unpack_from("I", self._data, off)[0]
        want = pack_stacks([stack])[0][1:1 + 3 * len(stack)].tobytes()
        got = self._data[off + RECORD_HEADER:off + RECORD_HEADER + length]
        if length != len(want) or got != want:
            raise RuntimeError(f"{self.PROGRAM}: the record ({length} bytes) "
                               "is not the stack's entries")

    def failed_outputs(self):
        """The program's own count of failed outputs (.bss), all runs."""
        bss = self._map(".bss")
        value = ctypes.c_uint64()
        key = ctypes.c_uint32(0)
        self._lib.bpf_map_lookup_elem(self._lib.bpf_map__fd(bss),
                                      ctypes.byref(key), ctypes.byref(value))
        return value.value

    def close(self):
        if getattr(self, "_obj", None) and self.kernel_failed is None:
            try:  # kept for the report, after the object is gone
                self.kernel_failed = self.failed_outputs()
            except OSError:  # not loaded
                pass
        for mem in self._mems:
            mem.close()
        self._mems = []
        if getattr(self, "_obj", None):
            obj, self._obj = self._obj, None
            self._lib.bpf_object__close(obj)


class TraceFloor(RingCopy):
    """trace_floor over the same input: per entry what any in-kernel
    aggregation does before it counts (translate, pair, hash), nothing
    output, nothing counted. floor: (start, end, load base) of the one
    object's code at run time."""

    PROGRAM = "trace_floor"

    def __init__(self, path, batch, floor):
        super().__init__(path, batch, floor=floor)

    def run(self, count, cpu=0, first=0):
        args = ReplayArgs(first=first, count=count)
        run_on_cpu(self, self.PROGRAM, args, cpu)
        if args.done != count:
            raise RuntimeError(f"{self.PROGRAM}: {args.done} of {count} "
                               "stacks read")
        self.outputs += args.done
        return args
