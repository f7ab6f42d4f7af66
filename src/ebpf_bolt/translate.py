"""Address translation: the kernel's keys (object, file offset) -> each
object's ELF virtual addresses, which is what BOLT reads.

The BPF program already turned every runtime address into its object and
file offset (ebpf_bolt.h); a file offset becomes an ELF vaddr through the
loadable segment that holds it (vaddr = offset - p_offset + p_vaddr), the
same for PIE and non-PIE executables and shared libraries.

Traces cross objects (a call from the executable into libc): each object's
profile follows perf2bolt's rule for addresses outside the binary
(bolt-profile-formats.md, section 2): a from or to outside becomes 0, a
fall-through end outside (or after a `to` outside) becomes BR_ONLY, and a
trace with neither from nor to inside is left out of that object.
"""
from .layout import BR_ONLY, OBJECT_SHIFT, OFFSET_MASK


def segment_translator(elf):
    """offset -> vaddr (None outside the code) for one ELF file: only the
    executable segments, where samples and branches land."""
    segs = tuple((s.offset, s.offset + s.filesz, s.vaddr - s.offset)
                 for s in elf.text_segments())

    def vaddr(offset):
        for lo, hi, shift in segs:
            if lo <= offset < hi:
                return offset + shift
        return None
    return vaddr


def object_of(key):
    return key >> OBJECT_SHIFT


def samples_by_object(counts):
    """{key: samples} -> {object: {offset: samples}}."""
    out = {}
    for key, n in counts.items():
        per = out.setdefault(key >> OBJECT_SHIFT, {})
        off = key & OFFSET_MASK
        per[off] = per.get(off, 0) + n
    return out


def object_samples(offsets, elf):
    """One object's {offset: samples} -> ({vaddr: samples}, samples outside
    its code)."""
    tr = segment_translator(elf)
    samples, outside = {}, 0
    for off, n in offsets.items():
        v = tr(off)
        if v is None:
            outside += n
        else:
            samples[v] = samples.get(v, 0) + n
    return samples, outside


def object_traces(columns, oid, elf):
    """The traces of object `oid` (drained columns of keys) in its ELF
    addresses: ({(from, to, ft_end): (count, mispreds)}, traces of this
    object whose addresses fell outside its code)."""
    tr = segment_translator(elf)
    frm, to, ft_end, counts, mispreds = columns
    out, outside = {}, 0
    for f, t, e, c, m in zip(frm, to, ft_end, counts, mispreds):
        f_in = f >> OBJECT_SHIFT == oid
        t_in = t >> OBJECT_SHIFT == oid
        if not (f_in or t_in):
            continue
        fv = tr(f & OFFSET_MASK) if f_in else 0
        tv = tr(t & OFFSET_MASK) if t_in else 0
        if fv is None or tv is None:   # in the file, but not in its code
            outside += c
            continue
        ev = BR_ONLY
        if t_in and e != BR_ONLY and e >> OBJECT_SHIFT == oid:
            ev = tr(e & OFFSET_MASK)
            if ev is None:
                ev = BR_ONLY
        key = (fv, tv, ev)
        prev = out.get(key)
        out[key] = (c, m) if prev is None else (prev[0] + c, prev[1] + m)
    return out, outside


def traces_per_object(columns):
    """{object: traces with an address in it}: how many traces each
    object got, for choosing and reporting objects."""
    frm, to = columns[0], columns[1]
    counts = columns[3]
    out = {}
    for f, t, c in zip(frm, to, counts):
        a, b = f >> OBJECT_SHIFT, t >> OBJECT_SHIFT
        if a:
            out[a] = out.get(a, 0) + c
        if b and b != a:
            out[b] = out.get(b, 0) + c
    return out
