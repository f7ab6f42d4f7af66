"""Just enough ELF (64-bit, little-endian) to translate and symbolize
addresses: file type, loadable segments, function symbols and build id."""
import bisect
import os
import stat
import struct
from dataclasses import dataclass

ET_EXEC, ET_DYN = 2, 3
PT_LOAD, PT_NOTE = 1, 4
PF_X = 1
SHT_SYMTAB, SHT_DYNSYM = 2, 11
STT_FUNC, STT_GNU_IFUNC = 2, 10
STB_LOCAL = 0
NT_GNU_BUILD_ID = 3
SHN_XINDEX = 0xFFFF


class ElfError(ValueError):
    """The file is not an ELF this module can read; the message names the
    file and what is wrong. Callers turn it into their own error class."""


def read_binary(path, hint):
    """The ElfFile of a --binary option, read before it is used: a file that
    cannot be read, or is not a 64-bit little-endian ELF, is a UsageError
    saying which, with `hint`."""
    from .errors import UsageError, os_error_text
    try:
        return ElfFile(path)
    except OSError as e:
        raise UsageError(f"cannot read --binary {path}: {os_error_text(e)}",
                         hint) from None
    except ElfError as e:
        raise UsageError(f"--binary {e}", hint) from None


SHT_NOBITS = 8
EHDR_SIZE, PHDR_SIZE, SHDR_SIZE, SYM_SIZE = 64, 56, 64, 24
ELFCLASS = {1: "32-bit", 2: "64-bit"}
ELFDATA = {1: "little-endian", 2: "big-endian"}


@dataclass(frozen=True)
class Segment:
    vaddr: int
    memsz: int
    offset: int
    filesz: int
    flags: int

    @property
    def executable(self):
        return bool(self.flags & PF_X)


@dataclass(frozen=True)
class Symbol:
    name: str
    addr: int
    size: int
    local: bool


class ElfFile:
    """Reading checks every table it uses against the file's size: a
    truncated or malformed file raises ElfError, never struct.error or
    IndexError."""

    def __init__(self, path):
        self.path = str(path)
        # a device would be read without end (/dev/zero), a FIFO's open
        # waits for a writer: looked at before opening, and again after
        mode = os.stat(path).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # open says EISDIR
            raise ElfError(f"{path}: not a regular file")
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ElfError(f"{path}: not a regular file")
            self._data = f.read()
        d = self._data
        if not d:
            raise ElfError(f"{path}: empty file, not an ELF executable")
        if d[:4] != b"\x7fELF":
            raise ElfError(f"{path}: not an ELF file (it starts with "
                           f"{d[:4]!r}, not b'\\x7fELF')")
        if len(d) < EHDR_SIZE:
            raise ElfError(f"{path}: truncated ELF header ({len(d)} bytes, "
                           f"a 64-bit header has {EHDR_SIZE})")
        if d[4] != 2 or d[5] != 1:
            raise ElfError(f"{path}: {ELFCLASS.get(d[4], f'class {d[4]}')} "
                           f"{ELFDATA.get(d[5], f'data encoding {d[5]}')} ELF; "
                           "only 64-bit little-endian ELF is supported")
        (self.type, self.machine, _, self.entry, phoff, shoff, _, _, phentsize,
         phnum, shentsize, shnum, shstrndx) = struct.unpack_from(
            "<HHIQQQIHHHHHH", d, 16)
        if self.type not in (ET_EXEC, ET_DYN):
            raise ElfError(f"{path}: ELF type {self.type} is not an executable "
                           "or shared object (an object file or core dump?)")
        self.segments = []
        self._notes = []
        self._table(phoff, phnum, phentsize, PHDR_SIZE, "program header")
        for i in range(phnum):
            (p_type, p_flags, p_offset, p_vaddr, _, p_filesz, p_memsz,
             _) = struct.unpack_from("<IIQQQQQQ", d, phoff + i * phentsize)
            if p_type == PT_LOAD:
                self.segments.append(Segment(p_vaddr, p_memsz, p_offset,
                                             p_filesz, p_flags))
            elif p_type == PT_NOTE:
                self._within(p_offset, p_filesz, f"note segment {i}")
                self._notes.append((p_offset, p_filesz))
        self._table(shoff, shnum, shentsize, SHDR_SIZE, "section header")
        self._sections = []
        for i in range(shnum):
            self._sections.append(struct.unpack_from(
                "<IIQQQQIIQQ", d, shoff + i * shentsize))
        for i, sec in enumerate(self._sections):
            if sec[1] in (SHT_SYMTAB, SHT_DYNSYM):
                self._check_symtab(i, sec)
        self._shstrndx = self._name_table(shstrndx)
        self._symbols = None

    def _within(self, offset, size, what):
        if offset + size > len(self._data):
            raise ElfError(f"{self.path}: {what} (bytes {offset:#x}-"
                           f"{offset + size:#x}) runs past the end of the "
                           f"file ({len(self._data):#x} bytes): truncated?")

    def _table(self, offset, count, entsize, minimum, what):
        if count == 0:
            return
        if entsize < minimum:
            raise ElfError(f"{self.path}: {what} entries of {entsize} bytes, "
                           f"fewer than the {minimum} of 64-bit ELF")
        self._within(offset, count * entsize, f"the {what} table")

    def _check_symtab(self, index, sec):
        """A symbol table, and the string table it names, lie inside the
        file and have whole entries."""
        _, _, _, _, off, size, link, _, _, entsize = sec
        if entsize and entsize < SYM_SIZE:
            raise ElfError(f"{self.path}: section {index}: symbols of "
                           f"{entsize} bytes, fewer than {SYM_SIZE}")
        self._within(off, size, f"symbol table (section {index})")
        if link >= len(self._sections) or link == 0:
            raise ElfError(f"{self.path}: symbol table (section {index}) names "
                           f"string table section {link}, which does not exist")
        strtab = self._sections[link]
        if strtab[1] == SHT_NOBITS:
            raise ElfError(f"{self.path}: string table (section {link}) has "
                           "no data in the file")
        self._within(strtab[4], strtab[5], f"string table (section {link})")

    def _name_table(self, shstrndx):
        """The index of the section name table (e_shstrndx), checked to be
        a section whose bytes lie in the file; None for SHN_UNDEF (no
        names). An index past the sections is a malformed file, not one
        without .symtab."""
        if shstrndx == SHN_XINDEX and self._sections:
            shstrndx = self._sections[0][6]   # too big: in section 0's link
        if shstrndx == 0:
            return None
        if shstrndx >= len(self._sections):
            raise ElfError(f"{self.path}: the section name table is section "
                           f"{shstrndx}, which does not exist (the file has "
                           f"{len(self._sections)} sections)")
        sec = self._sections[shstrndx]
        if sec[1] == SHT_NOBITS:
            raise ElfError(f"{self.path}: the section name table (section "
                           f"{shstrndx}) has no data in the file")
        self._within(sec[4], sec[5], f"the section name table (section "
                                     f"{shstrndx})")
        return shstrndx

    @property
    def is_pie(self):
        return self.type == ET_DYN

    def text_segments(self):
        return [s for s in self.segments if s.executable]

    def offset_to_vaddr(self, offset):
        """ELF virtual address of a file offset inside a loadable segment."""
        for s in self.segments:
            if s.offset <= offset < s.offset + s.filesz:
                return offset - s.offset + s.vaddr
        return None

    @property
    def build_id(self):
        for off, size in self._notes:
            pos = off
            while pos + 12 <= off + size:
                namesz, descsz, ntype = struct.unpack_from("<III", self._data, pos)
                name_end = pos + 12 + (namesz + 3) // 4 * 4
                if name_end + descsz > off + size:
                    break  # a note cut short: no build id to trust
                desc = self._data[name_end:name_end + descsz]
                if ntype == NT_GNU_BUILD_ID and self._data[pos + 12:pos + 15] == b"GNU":
                    return desc.hex()
                pos = name_end + (descsz + 3) // 4 * 4
        return None

    def _strtab(self, index):
        _, _, _, _, off, size, *_ = self._sections[index]
        return self._data[off:off + size]

    def functions(self):
        """Function symbols with a size, sorted by address. .symtab when
        present (it has the static functions), else .dynsym."""
        if self._symbols is None:
            self._symbols = self._read_functions()
        return self._symbols

    def _read_functions(self):
        tables = [s for s in self._sections if s[1] == SHT_SYMTAB] or \
                 [s for s in self._sections if s[1] == SHT_DYNSYM]
        seen, out = set(), []
        for (_, _, _, _, off, size, link, _, _, entsize) in tables:
            strtab = self._strtab(link)
            entsize = entsize or SYM_SIZE
            # whole entries only (checked in __init__ to lie in the file)
            for pos in range(off, off + size - entsize + 1, entsize):
                name_off, info, _, shndx, value, sym_size = struct.unpack_from(
                    "<IBBHQQ", self._data, pos)
                if (info & 0xF) not in (STT_FUNC, STT_GNU_IFUNC) or shndx == 0:
                    continue
                end = strtab.find(b"\0", name_off)
                if end < 0:
                    raise ElfError(f"{self.path}: a symbol's name (string "
                                   f"table offset {name_off:#x}) is not inside "
                                   "its string table")
                name = strtab[name_off:end].decode(errors="replace")
                if not name or (name, value) in seen:
                    continue
                seen.add((name, value))
                out.append(Symbol(name, value, sym_size, (info >> 4) == STB_LOCAL))
        out.sort(key=lambda s: (s.addr, s.local, s.name))
        return out

    # --- what BOLT needs of the file (RewriteInstance::readSpecialSections
    # in LLVM's bolt/lib/Rewrite: it looks sections up by name) -------------
    def section_names(self):
        """Names of the sections, in file order ([] where the file has no
        section name table, e_shstrndx SHN_UNDEF)."""
        if self._shstrndx is None:
            return []
        _, _, _, _, off, size, *_ = self._sections[self._shstrndx]
        table = self._data[off:off + size]
        names = []
        for sh_name, *_ in self._sections:
            end = table.find(b"\0", sh_name)
            names.append(table[sh_name:end].decode(errors="replace")
                         if 0 <= sh_name < end else "")
        return names

    @property
    def has_symtab(self):
        """A .symtab section: BOLT refuses a file without one ("BOLT-ERROR:
        stripped binaries are not supported"), and fdata, which names
        functions, has nothing to name them with."""
        return ".symtab" in self.section_names()

    @property
    def has_code_relocations(self):
        """A .rela.text section, kept by linking with --emit-relocs (-q).
        BOLT runs in relocation mode only with it; without, it refuses
        -reorder-functions ("BOLT-ERROR: function reordering only works
        when relocations are enabled") and rewrites functions in place."""
        return ".rela.text" in self.section_names()


class Symbolizer:
    """vaddr -> (symbol, offset) for addresses inside a sized function."""

    def __init__(self, elf):
        funcs = [f for f in elf.functions() if f.size > 0]
        # one symbol per start address: prefer the global name (aliases)
        by_addr = {}
        for f in funcs:
            if f.addr not in by_addr or (by_addr[f.addr].local and not f.local):
                by_addr[f.addr] = f
        self.functions = sorted(by_addr.values(), key=lambda f: f.addr)
        self._starts = [f.addr for f in self.functions]

    def lookup(self, vaddr):
        i = bisect.bisect_right(self._starts, vaddr) - 1
        if i < 0:
            return None
        f = self.functions[i]
        if vaddr < f.addr + f.size:
            return f, vaddr - f.addr
        return None
