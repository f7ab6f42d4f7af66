"""Address translation: runtime addresses -> the binary's ELF addresses.

BOLT does no rebasing in pre-aggregated mode (bolt-profile-formats.md,
section 1): every address must be the ELF virtual address. For a mapping of
the executable with file offset ``off`` at runtime ``start``, a runtime
address ``a`` is at file offset ``a - start + off``, which the segment table
turns into the vaddr. Non-PIE executables map at their link addresses, so
their addresses come out unchanged; PIE ones lose the load bias.
"""
import os
from dataclasses import dataclass



@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    offset: int
    dev: str
    inode: int
    path: str
    perms: str


def read_maps(pid):
    """Parsed /proc/PID/maps (raises OSError if the process is gone)."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) < 5:
                continue
            start, end = (int(x, 16) for x in parts[0].split("-"))
            path = parts[5].rstrip("\n") if len(parts) > 5 else ""
            out.append(Mapping(start, end, int(parts[2], 16), parts[3],
                               int(parts[4]), path, parts[1]))
    return out


def executable_identity(pid):
    """(path of /proc/PID/exe, its (dev, inode)) of a running process; dev
    spelled as /proc/PID/maps spells it (major:minor in hex)."""
    path = os.readlink(f"/proc/{pid}/exe")
    st = os.stat(f"/proc/{pid}/exe")
    return path, (f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}",
                  st.st_ino)


class AddressSpace:
    """Runtime ranges of one binary, each with the offset that turns a
    runtime address into an ELF vaddr (vaddr = addr - bias)."""

    def __init__(self, elf):
        self.elf = elf
        self._ranges = []   # (start, end, bias)

    @classmethod
    def from_load_base(cls, elf, load_base=0):
        """For replay: the binary loaded with its first segment at
        load_base + vaddr (load_base is 0 for non-PIE, the runtime address
        of the first mapping for a usual PIE)."""
        space = cls(elf)
        for seg in elf.text_segments():
            space._add(seg.vaddr + load_base, seg.vaddr + seg.memsz + load_base,
                       load_base)
        return space

    def add_process_maps(self, maps, inode, dev=None, path=None):
        """Add the executable mappings of /proc/PID/maps that belong to the
        binary: matched by (dev, inode), which survive renames and
        '(deleted)'. Where no mapping has the binary's dev (overlayfs, as
        in containers, and btrfs subvolumes show another device in maps
        than in stat), by inode and path, or inode alone.

        A mapping covers file offsets [offset, offset + size); each
        executable segment inside that range gets its own bias. The page a
        mapping starts on may hold another segment's bytes too (lld puts
        the read-only segment and the code in one page), so the segment is
        found by overlap, not by the mapping's first offset."""
        added = 0
        mine = [m for m in maps if m.inode == inode and "x" in m.perms]
        if any(m.dev == dev for m in mine):
            mine = [m for m in mine if m.dev == dev]
        elif any(m.path == path for m in mine):
            mine = [m for m in mine if m.path == path]
        for m in mine:
            for seg in self.elf.text_segments():
                lo = max(m.offset, seg.offset)
                hi = min(m.offset + (m.end - m.start), seg.offset + seg.filesz)
                if lo >= hi:
                    continue
                bias = m.start - m.offset + seg.offset - seg.vaddr
                self._add(m.start + lo - m.offset, m.start + hi - m.offset, bias)
                added += 1
        return added

    def _add(self, start, end, bias):
        rng = (start, end, bias)
        if rng not in self._ranges:
            self._ranges.append(rng)
            self._ranges.sort()

    @property
    def ranges(self):
        return list(self._ranges)

    @property
    def load_bias(self):
        return self._ranges[0][2] if self._ranges else None

    def translator(self):
        """A fast closure for bulk translation (few ranges, many addresses)."""
        ranges = tuple(self._ranges)
        if len(ranges) == 1:
            (start, end, bias), = ranges

            def one(addr):
                return addr - bias if start <= addr < end else None
            return one

        def many(addr):
            for start, end, bias in ranges:
                if start <= addr < end:
                    return addr - bias
            return None
        return many

