"""The objects (ELF files) the kernel side numbered while recording, and
which of them get a profile.

The BPF program numbers each file it finds mapped at a sampled address
(objects_info, ebpf_bolt.h) and notes one process that mapped it and where.
``ObjectTable.poll`` opens each new object's file through
/proc/TGID/map_files/START-END while that process still lives: the open fd
keeps the very file that ran, even if it is later deleted or replaced on
disk, and gives its path (readlink) and build id. A process that exits
before the poll leaves an object known only by its identity; `--binary`
objects are matched by identity anyway.
"""
import ctypes
import mmap
from array import array
import os
from dataclasses import dataclass, field

from .elf import ElfError, ElfFile
from .layout import MAX_OBJECTS, ObjectInfo

INFO_SIZE = ctypes.sizeof(ObjectInfo)


def kernel_dev(st_dev):
    """stat's st_dev as the kernel's dev_t (MAJOR << 20 | MINOR), which the
    BPF program reads from the super block: stat encodes it otherwise."""
    return os.major(st_dev) << 20 | os.minor(st_dev)


def file_identity(path):
    """(kernel dev, inode) of a file, as objects_info keys it."""
    st = os.stat(path)
    return kernel_dev(st.st_dev), st.st_ino


OVERLAYFS_SUPER_MAGIC = 0x794C7630
BTRFS_SUPER_MAGIC = 0x9123683E


def _fs_type(fd):
    """statfs's f_type of the file system holding `fd`, or None."""
    buf = ctypes.create_string_buffer(256)   # struct statfs: f_type first
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.fstatfs(fd, buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value


def holds(fd, dev, ino):
    """True when the open file `fd` is the file the kernel keyed as (dev,
    ino). stat may show another device than the inode's super block
    (btrfs subvolumes) and, on overlayfs, the overlay's inode where the
    mapping holds the real (upper or lower) file: those are accepted."""
    st = os.fstat(fd)
    if (kernel_dev(st.st_dev), st.st_ino) == (dev, ino):
        return True
    fs = _fs_type(fd)
    return (fs == OVERLAYFS_SUPER_MAGIC or
            (fs == BTRFS_SUPER_MAGIC and st.st_ino == ino))


@dataclass
class ObjectFile:
    """One object the kernel numbered: `id` is its number in the keys."""
    id: int
    dev: int
    ino: int
    generation: int
    tgid: int                 # a process that mapped it (when numbered)
    path: str = None          # as that process's map_files link names it
    fd: int = None            # the file itself, held open
    elf: ElfFile = None
    error: str = None         # why it could not be opened or read
    processes: set = field(default_factory=set)

    @property
    def identity(self):
        return self.dev, self.ino

    @property
    def build_id(self):
        return self.elf.build_id if self.elf else None

    @property
    def name(self):
        if self.path:
            return self.path.removesuffix(" (deleted)")
        return f"[object dev {self.dev >> 20}:{self.dev & 0xfffff} inode {self.ino}]"

    @property
    def deleted(self):
        return bool(self.path and self.path.endswith(" (deleted)"))


class ObjectTable:
    """objects_info read through mmap, and the files behind it."""

    def __init__(self, obj):
        self._obj = obj
        size = -(-MAX_OBJECTS * INFO_SIZE // mmap.PAGESIZE) * mmap.PAGESIZE
        self._mem = mmap.mmap(obj.map_fd("objects_info"), size,
                              mmap.MAP_SHARED, mmap.PROT_READ)
        self.objects = {}       # id -> ObjectFile
        self._next = 1          # ids below were read (valid or lost)

    def poll(self):
        """Read the objects numbered since the last poll and open their
        files while their processes live. Numbers are handed out in order
        and each is written once (state 1, or 2 for a number lost to a
        race), so reading stops at the first one not written yet."""
        while self._next < MAX_OBJECTS:
            info = ObjectInfo.from_buffer_copy(
                self._mem, self._next * INFO_SIZE)
            if info.state == 0:
                break
            if info.state == 1:
                self.objects[self._next] = self._open(self._next, info)
            self._next += 1

    def _open(self, oid, info):
        o = ObjectFile(oid, info.key.dev, info.key.ino, info.key.generation,
                       info.tgid)
        link = f"/proc/{info.tgid}/map_files/{info.start:x}-{info.end:x}"
        try:
            o.path = os.readlink(link)
            o.fd = os.open(link, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            o.error = f"process {info.tgid} exited before its file was " \
                      f"opened ({os.strerror(e.errno)})"
            return o
        try:
            if not holds(o.fd, o.dev, o.ino):
                # the process exec'd or unmapped the object, and another
                # file is mapped at those addresses now (two non-PIE
                # programs both start at 0x401000): not this object
                os.close(o.fd)
                o.fd = None
                o.error = (f"process {info.tgid} maps another file at "
                           f"{info.start:x}-{info.end:x} now ({o.path}); "
                           "the object's own file was not opened")
                o.path = None
                return o
            o.elf = ElfFile(f"/proc/self/fd/{o.fd}")
        except (OSError, ElfError) as e:
            o.error = f"not an ELF file this tool reads ({e})"
        return o

    def reopen_missing(self):
        """Open the objects whose noted process exited (or exec'd) before
        the poll through any process that maps them now, this one
        included (ld.so and libc, which short processes number first).
        Tried at each window's end (--interval) and when the recording
        ends: it reads every process's maps, only while an object is
        missing."""
        missing = {o.ino: o for o in self.objects.values()
                   if o.fd is None}
        if not missing:
            return
        pids = ["self"] + [d for d in os.listdir("/proc") if d.isdigit()]
        for pid in pids:
            try:
                with open(f"/proc/{pid}/maps") as f:
                    lines = f.read().splitlines()
            except OSError:
                continue
            for line in lines:
                fields = line.split(maxsplit=5)
                if len(fields) < 6 or not fields[4].isdigit():
                    continue
                o = missing.get(int(fields[4]))
                if o is None:
                    continue
                link = f"/proc/{pid}/map_files/{fields[0]}"
                try:
                    path = os.readlink(link)
                    fd = os.open(link, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    continue
                if not holds(fd, o.dev, o.ino):
                    os.close(fd)
                    continue
                try:
                    elf = ElfFile(f"/proc/self/fd/{fd}")
                except (OSError, ElfError):
                    os.close(fd)
                    continue
                o.fd, o.path, o.elf, o.error = fd, path, elf, None
                del missing[o.ino]
                if not missing:
                    return

    def read_processes(self):
        """Fill each object's set of processes from object_procs."""
        keys, _, n = self._obj.read_all("object_procs")
        for pair in array("Q", keys):
            o = self.objects.get(pair >> 32)
            if o is not None:
                o.processes.add(pair & 0xFFFFFFFF)

    def match(self, identity):
        """Objects with this (kernel dev, inode)."""
        return [o for o in self.objects.values() if o.identity == identity]

    def match_build_id(self, build_id):
        return [o for o in self.objects.values()
                if build_id and o.build_id == build_id]

    def close(self):
        for o in self.objects.values():
            if o.fd is not None:
                os.close(o.fd)
                o.fd = None
        if self._mem is not None:
            self._mem.close()
            self._mem = None


class Binary:
    """An object the user names (--binary, or the target's executable):
    its file identity and build id, taken when the recording starts."""

    def __init__(self, path, elf, identity):
        self.path, self.elf, self.identity = path, elf, identity

    @classmethod
    def open(cls, path, what="--binary"):
        from .errors import UsageError
        # absolute: the profile's index and apply command name it so
        path = os.path.abspath(os.fsdecode(path))
        try:
            elf = ElfFile(path)
            identity = file_identity(path)
        except OSError as e:
            raise UsageError(f"{what} {path}: {os.strerror(e.errno)}",
                             "give the path of the executable or shared "
                             "library to profile") from None
        except ElfError as e:
            raise UsageError(f"{what} {path}: {e}", "give a 64-bit "
                             "little-endian ELF executable or shared "
                             "library") from None
        return cls(path, elf, identity)

    @property
    def build_id(self):
        return self.elf.build_id

    def find(self, table):
        """The objects of `table` that are this file: by identity, else by
        build id (a stripped copy ran, or overlayfs shows another inode);
        returns (objects, how: "identity" or "build id")."""
        found = table.match(self.identity)
        if found:
            return found, "identity"
        return table.match_build_id(self.build_id), "build id"

    def replaced(self):
        """True when another file is at the path now than at the start."""
        try:
            return file_identity(self.path) != self.identity
        except OSError:
            return True
