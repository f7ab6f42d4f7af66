"""The loaded BPF object: options, map sizes, programs, links, per-CPU drains.

One ``BoltObject`` owns the libbpf object; each ``Link`` owns its perf event
fd from the moment the attach succeeds (libbpf closes it on destroy), and the
object closes every link it made before closing itself.
"""
import ctypes
import errno
import mmap
import os
import threading
from array import array
from importlib import resources
from operator import add

from .handle import Handle
from . import _libbpf
from .errors import BpfError
from .layout import (COUNTERS, MAX_OBJECTS, SETS, BranchStack, CacheSet,
                     Config, EbSet, IpEntry, IpSlot, LastSample, ObjectInfo,
                     ObjectKey, Proc, RACED_MAX, ReplayIps, Stats,
                     TraceEntry)

OBJECT_NAME = "ebpf_bolt.bpf.o"

# Maps sized from user space: name -> (key size, value size, type), as in
# ebpf_bolt.bpf.c, from the ctypes mirrors of their key and value types.
# A map not given a size gets 1 entry: unused maps cost nothing, and a
# trace_cache of 1 set is as good as none.
# CPU_TABLE: an array with one element per possible CPU, each element a
# table of `entries` values (the size given is the table's length).
# PLAIN_HASH: a hash shared by all CPUs, preallocated (samples insert into
# it from the interrupt). TABLE: a count table, an array shared by all CPUs
# used as a hash table (its size is its slots; layout.table_slots), which
# user space reads through mmap. No map is a per-CPU hash: those cost
# entries x value x possible CPUs.
PERCPU_ARRAY, ARRAY, CPU_TABLE = "percpu_array", "array", "cpu_table"
PLAIN_HASH, TABLE = "plain_hash", "table"
_U32, _U64 = ctypes.sizeof(ctypes.c_uint32), ctypes.sizeof(ctypes.c_uint64)
MAPS = {"ip_counts": (_U32, ctypes.sizeof(IpEntry), TABLE),
        "thread_samples": (_U32, _U64, PLAIN_HASH),
        "trace_counts": (_U32, ctypes.sizeof(TraceEntry), TABLE),
        "trace_cache": (_U32, ctypes.sizeof(CacheSet), CPU_TABLE),
        "ip_cache": (_U32, ctypes.sizeof(IpSlot), CPU_TABLE),
        "replay_stacks": (_U32, ctypes.sizeof(BranchStack), ARRAY),
        "replay_ip_buf": (_U32, ctypes.sizeof(ReplayIps), ARRAY),
        "procs": (_U32, ctypes.sizeof(Proc), PLAIN_HASH),
        "object_ids": (ctypes.sizeof(ObjectKey), _U32, PLAIN_HASH),
        "objects_info": (_U32, ctypes.sizeof(ObjectInfo), ARRAY),
        "object_procs": (_U64, 1, PLAIN_HASH),
        "exit_pending": (_U32, _U64, PERCPU_ARRAY),
        "last_sample": (_U32, ctypes.sizeof(LastSample), PERCPU_ARRAY)}
# The sets of tables (--interval): each TABLE and CPU_TABLE map holds one
# slice per set; set_a and set_b (one struct eb_set each, never resized:
# the inner maps of active_set must match its template) describe them, and
# active_set, an array of maps, holds the one the programs count into.
SET_MAPS = ("set_a", "set_b")
ACTIVE_SET = "active_set"
# Maps whose size the object fixes: never resized from user space.
FIXED_ENTRIES = {"object_ids": MAX_OBJECTS, "objects_info": MAX_OBJECTS}
# Tracepoint programs that keep the procs map exact while recording.
TRACKERS = ("on_fork", "on_exec", "on_exit", "on_unmapped_area")
# The drain's program (drain.py), loaded with every set of programs: it
# moves the caches' pending counts into the count tables.
FLUSH = "flush_caches"
# Maps only the tests' build of the object has (-DEB_TEST_PROGRAMS,
# tests/bpf_builds.py): skipped where the object lacks them.
TEST_ONLY_MAPS = frozenset({"replay_ip_buf"})


def object_path():
    """Where the packaged BPF object is."""
    return str(resources.files("ebpf_bolt").joinpath("bpf", OBJECT_NAME))


def possible_cpus():
    return _libbpf.lib().libbpf_num_possible_cpus()


def percpu_value_size(value_size):
    return (value_size + 7) // 8 * 8


def hash_buckets_bytes(max_entries):
    """A hash map's bucket array, allocated whole at creation, filled on
    demand or not: roundup_pow_of_two(max_entries) buckets of 16 bytes
    (struct bucket: a list head and a lock; kernel/bpf/hashtab.c
    htab_map_alloc, counted by htab_map_mem_usage, fdinfo's memlock)."""
    return 16 << max(max_entries - 1, 0).bit_length()


def map_kernel_bytes(key_size, value_size, max_entries, ncpus, kind):
    """Kernel memory of a map, as fdinfo's memlock counts it (Linux 6.4+,
    each map type's mem_usage). Only per-CPU maps grow with the possible
    CPUs, and only the small ones are per-CPU: the count tables (TABLE)
    are arrays shared by all CPUs, slots x slot size; a shared hash holds
    each element's header (48 bytes), key and value, and its buckets."""
    value = percpu_value_size(value_size)
    if kind == TABLE:  # mmapable: a page for struct bpf_array, then the
        # page-aligned values (kernel/bpf/arraymap.c array_map_mem_usage)
        return mmap.PAGESIZE + _pages(max_entries * value)
    if kind == ARRAY:
        return max_entries * value
    if kind in (PERCPU_ARRAY, CPU_TABLE):
        return max_entries * value * ncpus
    # PLAIN_HASH, preallocated
    return max_entries * (48 + (key_size + 7) // 8 * 8 + value) + \
        hash_buckets_bytes(max_entries)


def _pages(size):
    """`size` rounded up to whole pages."""
    return -(-size // mmap.PAGESIZE) * mmap.PAGESIZE


ENOTSUPP = 524  # the kernel's internal "not supported", seen by user space


class Link(Handle):
    """A program attached to a perf event; owns the event's fd, which
    libbpf closes when the link is destroyed (close())."""

    def __init__(self, ptr, perf_fd):
        self._ptr, self._perf_fd = ptr, perf_fd

    @property
    def closed(self):
        return not self._ptr

    @property
    def perf_fd(self):
        """The perf event's fd, while the link owns it: after close() the
        number may already belong to another file."""
        if not self._ptr:
            raise ValueError("BPF link is closed")
        return self._perf_fd

    def close(self):
        if self._ptr:
            ptr, self._ptr = self._ptr, None
            _libbpf.lib().bpf_link__destroy(ptr)  # closes perf_fd too


# read_table skips blocks of this many slots that are all zero (free)
EMPTY_BLOCK = 256


class BoltObject(Handle):
    def __init__(self, config=None, map_entries=None, programs=None, path=None,
                 btf=None, sets=1):
        """Open and load the object.

        config: layout.Config written to .rodata before load.
        map_entries: {map name: max_entries}; maps not named get 1 entry so
            that unused maps cost no memory (every map is allocated whole
            at load: hashes are preallocated, since samples insert into
            them from the interrupt).
        programs: names of programs to load (None loads all), and the
            drain's (FLUSH).
        btf: a BTF file describing the running kernel, instead of
            /sys/kernel/btf/vmlinux (libbpf's btf_custom_path): for kernels
            built without it, with a file from their debug package.
        sets: sets of count tables and caches (1, or SETS for --interval:
            each table and cache map then holds SETS slices of the size
            map_entries gives); the programs count into set 0 at first.
        """
        lib = _libbpf.lib()
        self._lib = lib
        self._links = []
        self._tp_links = []
        self.path = path or object_path()
        if not os.path.exists(self.path):
            raise BpfError(f"BPF object missing: {self.path}",
                           "reinstall ebpf-bolt (pip install .)")
        opts = None
        if btf is not None:
            opts = _libbpf.bpf_object_open_opts(
                sz=ctypes.sizeof(_libbpf.bpf_object_open_opts),
                btf_custom_path=os.fsencode(btf))
            opts = ctypes.byref(opts)
        if sets not in range(1, SETS + 1):
            raise ValueError(f"sets must be 1 to {SETS}")
        self.sets = sets
        self.active = 0            # the set the programs count into
        self._races_drained = 0    # table_races of sets cleared so far
        # --interval's watcher thread clears a set while the main thread
        # reads stats(): a set's notes move to _races_drained in one step
        self._races_lock = threading.Lock()
        self._obj = lib.bpf_object__open_file(self.path.encode(), opts)
        try:
            self.ncpus = possible_cpus()
            cfg = Config.from_buffer_copy(config or Config())
            # the caches' masks follow their sizes, so the two agree
            for cache, field in (("trace_cache", "cache_mask"),
                                 ("ip_cache", "ip_cache_mask")):
                sets = (map_entries or {}).get(cache, 1)
                if sets & (sets - 1):
                    raise ValueError(f"{cache} size must be a power of two")
                setattr(cfg, field, sets - 1)
            cfg.ncpus = self.ncpus
            cfg.ip_slots = (map_entries or {}).get("ip_counts", 1)
            cfg.trace_slots = (map_entries or {}).get("trace_counts", 1)
            rodata = lib.bpf_object__find_map_by_name(self._obj, b".rodata")
            lib.bpf_map__set_initial_value(rodata, ctypes.byref(cfg),
                                           ctypes.sizeof(cfg))
            present = set(self.map_names())
            self._check_layout(present)
            self.map_entries = {}
            for name, (_, vsz, kind) in MAPS.items():
                if name not in present:  # a test-only map (_check_layout)
                    continue
                entries = (map_entries or {}).get(
                    name, FIXED_ENTRIES.get(name, 1))
                self.map_entries[name] = entries
                if kind == CPU_TABLE:  # one element per CPU per set
                    lib.bpf_map__set_max_entries(self._map(name),
                                                 self.ncpus * self.sets)
                    lib.bpf_map__set_value_size(self._map(name), entries * vsz)
                elif kind == TABLE:    # one slice of `entries` per set
                    lib.bpf_map__set_max_entries(self._map(name),
                                                 entries * self.sets)
                elif name not in FIXED_ENTRIES:
                    lib.bpf_map__set_max_entries(self._map(name), entries)
            if programs is not None:
                programs = {*programs, FLUSH}
                for name in self.program_names():
                    lib.bpf_program__set_autoload(self._prog(name),
                                                  name in programs)
            lib.bpf_object__load(self._obj)
            # set B's slices are the second ones (set A's value is all
            # zero from the load: index 0)
            self._write_set(1, EbSet(index=1))
        except Exception:
            self.close()
            raise

    def _check_layout(self, present):
        """Refuse an object built from another version of the shared
        header: reading its maps with these sizes would corrupt memory."""
        expected = {name: (k, v) for name, (k, v, _) in MAPS.items()
                    if name in present or name not in TEST_ONLY_MAPS}
        expected["stats"] = (_U32, ctypes.sizeof(Stats))
        for name in SET_MAPS:
            expected[name] = (_U32, ctypes.sizeof(EbSet))
        expected[ACTIVE_SET] = (_U32, _U32)
        missing = sorted(set(expected) - present)
        if missing:
            raise BpfError(f"{self.path} does not match this ebpf-bolt "
                           f"(no map {', '.join(missing)})",
                           "rebuild and reinstall ebpf-bolt (pip install .)")
        for name, (ksz, vsz) in expected.items():
            m = self._map(name)
            got = (self._lib.bpf_map__key_size(m), self._lib.bpf_map__value_size(m))
            if got != (ksz, vsz):
                raise BpfError(f"{self.path} does not match this ebpf-bolt "
                               f"(map {name}: key/value {got}, expected "
                               f"{(ksz, vsz)})", "rebuild and reinstall "
                               "ebpf-bolt (pip install .)")

    # --- lookups -----------------------------------------------------------
    def program_names(self):
        """The object's programs, as the object lists them (a list kept
        here went stale once: a new program then loaded everywhere, and
        broke loading on kernels without bpf_loop)."""
        self._require_open()
        names, prog = [], None
        while True:
            prog = self._lib.bpf_object__next_program(self._obj, prog)
            if not prog:
                return names
            names.append(self._lib.bpf_program__name(prog).decode())

    def map_names(self):
        """The object's maps, as the object lists them (with its internal
        maps, such as OBJNAME.rodata)."""
        self._require_open()
        names, m = [], None
        while True:
            m = self._lib.bpf_object__next_map(self._obj, m)
            if not m:
                return names
            names.append(self._lib.bpf_map__name(m).decode())

    def _require_open(self):
        if not self._obj:
            raise ValueError("BPF object is closed")

    def _map(self, name):
        self._require_open()
        return self._lib.bpf_object__find_map_by_name(self._obj, name.encode())

    def _prog(self, name):
        self._require_open()
        return self._lib.bpf_object__find_program_by_name(self._obj,
                                                          name.encode())

    def map_fd(self, name):
        return self._lib.bpf_map__fd(self._map(name))

    def program_fd(self, name):
        return self._lib.bpf_program__fd(self._prog(name))

    def kernel_bytes(self):
        """Kernel memory of the maps, all allocated at load."""
        total = sum(self.table_bytes(name) for name in self.map_entries)
        # and the per-CPU maps the object sizes itself: counters, and the
        # branch stack's scratch copy
        fixed = ctypes.sizeof(Stats) + ctypes.sizeof(BranchStack)
        return total + percpu_value_size(fixed) * self.ncpus

    def table_bytes(self, name):
        """Kernel memory of one map (a count table: all of it from load;
        its every set)."""
        ksz, vsz, kind = MAPS[name]
        if kind == TABLE:
            return map_kernel_bytes(ksz, vsz, self.map_entries[name] *
                                    self.sets, self.ncpus, kind)
        n = self.sets if kind == CPU_TABLE else 1
        return n * map_kernel_bytes(ksz, vsz, self.map_entries[name],
                                    self.ncpus, kind)

    # --- attach ------------------------------------------------------------
    def attach(self, program, perf_fd):
        """Attach to a perf event; the returned link owns perf_fd. On
        failure the fd is closed here, so the caller never owns it after."""
        try:
            ptr = self._lib.bpf_program__attach_perf_event(self._prog(program),
                                                           perf_fd)
        except Exception:
            os.close(perf_fd)
            raise
        link = Link(ptr, perf_fd)
        self._links.append(link)
        return link

    def attach_tracepoint(self, program):
        """Attach a tp_btf program where its section says."""
        ptr = self._lib.bpf_program__attach(self._prog(program))
        self._tp_links.append(ptr)

    @property
    def links(self):
        """The links made by attach() and not closed yet."""
        return [link for link in self._links if not link.closed]

    def detach_all(self):
        links, self._links = self._links, []
        tp_links, self._tp_links = self._tp_links, []
        for ptr in tp_links:
            self._lib.bpf_link__destroy(ptr)
        errors = []
        for link in links:  # every link is destroyed even if one fails
            try:
                link.close()
            except OSError as e:
                errors.append(e)
        if errors:
            raise errors[0]

    # --- reading the maps --------------------------------------------------
    def stats(self):
        """Event counters summed over CPUs, as {name: count}."""
        buf = (Stats * self.ncpus)()
        key = ctypes.c_uint32(0)
        self._lib.bpf_map_lookup_elem(self.map_fd("stats"), ctypes.byref(key),
                                      buf)
        totals = [0] * len(COUNTERS)
        for cpu in buf:
            totals = list(map(add, totals, cpu.counter))
        stats = dict(zip(COUNTERS, totals))
        # every kept branch entry is one trace: derived here rather than
        # counted per entry on the hot path
        stats["traces"] = stats["branch_entries"] - stats["kernel_branches"]
        # traces that may have two slots (counted once, not per CPU), in
        # the sets drained and cleared so far and in those not yet
        with self._races_lock:
            stats["table_races"] = self._races_drained + sum(
                self.read_set(s).raced.n for s in range(self.sets))
        return stats

    def read_all(self, name, batch=8192):
        """All entries of a hash, left in the map: (keys bytes, values
        bytes, n). Uses the kernel's batch lookup (5.6+), falling back to
        key-by-key reads."""
        ksz, stride = MAPS[name][0], percpu_value_size(MAPS[name][1])
        fd = self.map_fd(name)
        keys, values = bytearray(), bytearray()
        batch = max(1, min(batch, self.map_entries.get(name, batch)))
        kbuf = ctypes.create_string_buffer(ksz * batch)
        vbuf = ctypes.create_string_buffer(stride * batch)
        token_in = ctypes.create_string_buffer(max(ksz, 8))
        token_out = ctypes.create_string_buffer(max(ksz, 8))
        opts = _libbpf.bpf_map_batch_opts(sz=ctypes.sizeof(
            _libbpf.bpf_map_batch_opts))
        first = True
        while True:
            count = ctypes.c_uint32(batch)
            err = self._lib.bpf_map_lookup_batch(
                fd, None if first else token_in, token_out, kbuf, vbuf,
                ctypes.byref(count), ctypes.byref(opts))
            if err < 0 and -err != errno.ENOENT:  # ENOENT ends the walk
                if first and -err in (errno.EINVAL, errno.EOPNOTSUPP,
                                      ENOTSUPP):  # kernel without batches
                    return self._read_all_slow(name)
                raise _libbpf.LibbpfError("bpf_map_lookup_batch", -err)
            n = count.value
            keys += ctypes.string_at(kbuf, n * ksz)
            values += ctypes.string_at(vbuf, n * stride)
            if err < 0:
                break
            ctypes.memmove(token_in, token_out, len(token_in))
            first = False
        return bytes(keys), bytes(values), len(keys) // ksz

    def _read_all_slow(self, name):
        ksz, stride = MAPS[name][0], percpu_value_size(MAPS[name][1])
        fd = self.map_fd(name)
        keys, values = bytearray(), bytearray()
        cur, nxt = None, ctypes.create_string_buffer(ksz)
        vbuf = ctypes.create_string_buffer(stride)
        while True:
            try:
                self._lib.bpf_map_get_next_key(fd, cur, nxt)
            except OSError as e:
                if e.errno == errno.ENOENT:
                    break
                raise
            try:
                self._lib.bpf_map_lookup_elem(fd, nxt, vbuf)
            except OSError as e:
                if e.errno != errno.ENOENT:  # deleted meanwhile
                    raise
            else:
                keys += nxt.raw
                values += vbuf.raw
            cur = ctypes.create_string_buffer(nxt.raw, ksz)
        return bytes(keys), bytes(values), len(keys) // ksz

    def read_u64_counts(self, name, key_format):
        """{key: count} for a hash with a u64 value."""
        keys, values, n = self.read_all(name)
        return dict(zip(array(key_format, keys), array("Q", values)))

    def update_elem(self, name, key, value):
        """Write one element of a map that is not per-CPU (key and value:
        ctypes objects of the map's sizes), from user space."""
        ksz, vsz, kind = MAPS[name]
        if kind == PERCPU_ARRAY or ctypes.sizeof(key) != ksz or \
                ctypes.sizeof(value) != vsz:
            raise ValueError(f"update_elem({name!r}): not a {ksz}-byte key "
                             f"and {vsz}-byte value of a shared map")
        self._lib.bpf_map_update_elem(self.map_fd(name), ctypes.byref(key),
                                      ctypes.byref(value), 0)

    def read_set(self, s):
        """Set `s`'s struct eb_set (its claimed slots, raced traces)."""
        value = EbSet()
        key = ctypes.c_uint32(0)
        self._lib.bpf_map_lookup_elem(self.map_fd(SET_MAPS[s]),
                                      ctypes.byref(key), ctypes.byref(value))
        return value

    def _write_set(self, s, value):
        key = ctypes.c_uint32(0)
        self._lib.bpf_map_update_elem(self.map_fd(SET_MAPS[s]),
                                      ctypes.byref(key), ctypes.byref(value),
                                      0)

    def read_raced(self, s=0):
        """(races, the `from` words of the traces that raced, as stored)
        of set `s` (ebpf_bolt.h struct eb_raced)."""
        r = self.read_set(s).raced
        return r.n, list(r.from_[:min(r.n, RACED_MAX)])

    def switch_set(self):
        """Make the programs count into the other set; returns the old one,
        which no program counts into once this returns: for an array of
        maps the kernel's update waits for an RCU grace period
        (kernel/bpf/syscall.c, maybe_wait_bpf_programs -> synchronize_rcu),
        and perf_event and tracing programs run in RCU read-side sections.
        (Syscall programs run by BPF_PROG_RUN, replay's, are the caller's
        own: it switches between its runs.) The new set must be empty:
        clear_set() after the old one was drained."""
        if self.sets < 2:
            raise ValueError("switch_set needs an object loaded with 2 sets")
        old, new = self.active, 1 - self.active
        key = ctypes.c_uint32(0)
        fd = ctypes.c_uint32(self.map_fd(SET_MAPS[new]))
        self._lib.bpf_map_update_elem(self.map_fd(ACTIVE_SET),
                                      ctypes.byref(key), ctypes.byref(fd), 0)
        self.active = new
        return old

    def end_window(self, read):
        """Switch sets (switch_set), then `read(old)` the set that ended,
        and clear it for the window after next whatever `read` does;
        returns what `read` returned."""
        old = self.switch_set()
        try:
            return read(old)
        finally:
            self.clear_set(old)

    def clear_set(self, s):
        """Empty set `s`'s count tables and its notes, once drained (its
        caches are emptied by the flush that comes before the drain), so
        that it can take the window after next. Only while no program
        counts into it."""
        if s == self.active and self.links:
            raise ValueError("clear_set: the programs count into that set")
        for name, (_, vsz, kind) in MAPS.items():
            if kind != TABLE or name not in self.map_entries:
                continue
            per_set = self.map_entries[name] * vsz
            size = _pages(per_set * self.sets)
            mem = mmap.mmap(self.map_fd(name), size, mmap.MAP_SHARED,
                            mmap.PROT_READ | mmap.PROT_WRITE)
            try:
                zeros = bytes(min(per_set, 1 << 22))
                for at in range(s * per_set, (s + 1) * per_set, len(zeros)):
                    n = min(len(zeros), (s + 1) * per_set - at)
                    mem[at:at + n] = zeros[:n]
            finally:
                mem.close()
        with self._races_lock:
            self._races_drained += self.read_set(s).raced.n
            self._write_set(s, EbSet(index=s))

    def run_program(self, name, args=None):
        """BPF_PROG_RUN of a syscall program with `args` (a ctypes struct,
        read back after the run; None: no context) as its context; returns
        its retval."""
        opts = _libbpf.bpf_test_run_opts(
            sz=ctypes.sizeof(_libbpf.bpf_test_run_opts))
        if args is not None:
            opts.ctx_in = ctypes.cast(ctypes.pointer(args), ctypes.c_void_p)
            opts.ctx_size_in = ctypes.sizeof(args)
        self._lib.bpf_prog_test_run_opts(self.program_fd(name),
                                         ctypes.byref(opts))
        return opts.retval

    def read_table(self, name, s=0, chunk=1 << 20, skip_empty=True):
        """Set `s`'s slice of a count table, as arrays of u64 words of up
        to `chunk` slots each, read through mmap (the table is in the
        kernel's memory, shared with the programs): read it once no
        program counts into the set. Chunks keep the copy small next to a
        table of 64 MiB or more. skip_empty: blocks of EMPTY_BLOCK slots
        all zero (free) are left out, found by a memcmp each: a window's
        table is mostly free, and the drain's Python pass over every slot
        was most of a window's end (0.15-0.25 s of 0.3-0.4 s for the
        2,097,152 slots of an IP set here)."""
        slot = MAPS[name][1]
        per_set = self.map_entries[name] * slot
        # set s's pages alone, populated up front: one call instead of a
        # page fault per 4 KiB
        base = s * per_set // mmap.PAGESIZE * mmap.PAGESIZE
        mem = mmap.mmap(self.map_fd(name), _pages((s + 1) * per_set) - base,
                        mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                        mmap.PROT_READ, offset=base)
        try:
            with memoryview(mem) as view:
                end = (s + 1) * per_set - base
                step = EMPTY_BLOCK * slot
                zero = bytes(step)
                for start in range(s * per_set - base, end, chunk * slot):
                    words = array("Q")
                    with view[start:min(end, start + chunk * slot)] as part:
                        if not skip_empty:
                            words.frombytes(part)
                            data = None
                        else:
                            data = part.tobytes()
                    if data is None:
                        yield words
                        continue
                    for at in range(0, len(data), step):
                        piece = data[at:at + step]
                        if piece != (zero if len(piece) == step
                                     else zero[:len(piece)]):
                            words.frombytes(piece)
                    yield words
        finally:
            mem.close()

    def cpu_table(self, name, cpu):
        """One CPU's table of a CPU_TABLE map, as bytes."""
        _, vsz, _ = MAPS[name]
        buf = ctypes.create_string_buffer(self.map_entries[name] * vsz)
        key = ctypes.c_uint32(cpu)
        self._lib.bpf_map_lookup_elem(self.map_fd(name), ctypes.byref(key), buf)
        return buf.raw

    # --- teardown ----------------------------------------------------------
    def close(self):
        try:
            self.detach_all()
        finally:
            if getattr(self, "_obj", None):
                obj, self._obj = self._obj, None
                self._lib.bpf_object__close(obj)
