"""Just enough ELF (64-bit, little-endian) to translate and symbolize
addresses: file type, loadable segments, function symbols and build id."""
import bisect
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
    pass


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
    def __init__(self, path):
        self.path = str(path)
        with open(path, "rb") as f:
            self._data = f.read()
        d = self._data
        if d[:4] != b"\x7fELF":
            raise ElfError(f"{path}: not an ELF file")
        if d[4] != 2 or d[5] != 1:
            raise ElfError(f"{path}: only 64-bit little-endian ELF is supported")
        (self.type, self.machine, _, self.entry, phoff, shoff, _, _, phentsize,
         phnum, shentsize, shnum, shstrndx) = struct.unpack_from(
            "<HHIQQQIHHHHHH", d, 16)
        self.segments = []
        self._notes = []
        for i in range(phnum):
            (p_type, p_flags, p_offset, p_vaddr, _, p_filesz, p_memsz,
             _) = struct.unpack_from("<IIQQQQQQ", d, phoff + i * phentsize)
            if p_type == PT_LOAD:
                self.segments.append(Segment(p_vaddr, p_memsz, p_offset,
                                             p_filesz, p_flags))
            elif p_type == PT_NOTE:
                self._notes.append((p_offset, p_filesz))
        self._sections = []
        for i in range(shnum):
            self._sections.append(struct.unpack_from(
                "<IIQQQQIIQQ", d, shoff + i * shentsize))
        self._symbols = None

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
            for pos in range(off, off + size, entsize or 24):
                name_off, info, _, shndx, value, sym_size = struct.unpack_from(
                    "<IBBHQQ", self._data, pos)
                if (info & 0xF) not in (STT_FUNC, STT_GNU_IFUNC) or shndx == 0:
                    continue
                end = strtab.index(b"\0", name_off)
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
        """Names of the sections, in file order ([] where the section name
        table is missing or out of bounds)."""
        (shstrndx,) = struct.unpack_from("<H", self._data, 62)
        if shstrndx == SHN_XINDEX and self._sections:
            shstrndx = self._sections[0][6]   # too big: in section 0's link
        if not 0 < shstrndx < len(self._sections):
            return []
        _, _, _, _, off, size, *_ = self._sections[shstrndx]
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
