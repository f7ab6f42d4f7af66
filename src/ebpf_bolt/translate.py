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
import sys
from array import array

from .layout import BR_ONLY, OBJECT_SHIFT, OFFSET_MASK
from .profile import TraceTable


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


def column_bounds(frm, to, ft_end):
    """(lowest, highest, br_only) of drained columns
    (profile.TraceColumns.bounds, where the drain measured them): the lowest and
    highest key among from, to and every ft_end but BR_ONLY, and how many
    ft_end are BR_ONLY."""
    n_br = ft_end.count(BR_ONLY)
    lows, highs = [min(frm), min(to)], [max(frm), max(to)]
    if n_br < len(ft_end):  # BR_ONLY is the highest u64: min is unaffected
        lows.append(min(ft_end))
        highs.append(max(filter(BR_ONLY.__ne__, ft_end)))
    return min(lows), max(highs), n_br


def shift_down(column, shift):
    """array('Q') of column[i] - shift, every value being >= shift. Done as
    one big-integer subtraction over the whole column: each native-order
    u64 of its bytes is one 64-bit digit of the integer, and no digit
    borrows from the next as none is below `shift`. Twice as fast as one
    Python-level subtraction per value, for a million values."""
    n = len(column)
    order = sys.byteorder
    value = int.from_bytes(column.tobytes(), order)
    ones = int.from_bytes((array("Q", [1]) * n).tobytes(), order)
    out = array("Q")
    out.frombytes((value - shift * ones).to_bytes(8 * n, order))
    return out


def _uniform_shift(columns, oid, elf):
    """The usual case of one object recorded or replayed: every key of the
    columns (BR_ONLY aside) in object `oid` and in one of its executable
    segments. Then every key becomes its vaddr by one subtraction,
    key - (oid << 48 | p_offset) + p_vaddr, done column by column at C
    speed. Returns the TraceTable, or None where the case does not hold
    (checked with the bounds the drain measured, or min/max here)."""
    frm, to, ft_end, counts, mispreds = columns
    if not len(frm):
        return None
    bounds = getattr(columns, "bounds", None) or column_bounds(frm, to, ft_end)
    lowest, highest, n_br = bounds
    if lowest >> OBJECT_SHIFT != oid or highest >> OBJECT_SHIFT != oid:
        return None   # another object's keys, or 0 (outside every object)
    lo, hi = lowest & OFFSET_MASK, highest & OFFSET_MASK
    seg = next((s for s in elf.text_segments()
                if s.offset <= lo and hi < s.offset + s.filesz), None)
    if seg is None:
        return None
    # >= 0 and <= every key: oid >= 1 outweighs any vaddr of user space
    shift = (oid << OBJECT_SHIFT) + seg.offset - seg.vaddr
    frm, to, shifted = (shift_down(c, shift) for c in (frm, to, ft_end))
    i = -1
    for _ in range(n_br):  # BR_ONLY stays BR_ONLY
        i = ft_end.index(BR_ONLY, i + 1)
        shifted[i] = BR_ONLY
    return TraceTable((frm, to, shifted, counts, mispreds),
                      getattr(columns, "returns", None))


def object_traces(columns, oid, elf, rows=None):
    """The traces of object `oid` (drained columns of keys) in its ELF
    addresses: ({(from, to, ft_end): (count, mispreds)}, traces of this
    object whose addresses fell outside its code); a TraceTable that keeps
    the columns' `returns` where they have any. `rows`: the rows with
    an address in the object (rows_by_object), so that several objects'
    profiles cost one pass over the columns, not one each."""
    fast = _uniform_shift(columns, oid, elf)
    if fast is not None:
        return fast, 0
    tr = segment_translator(elf)
    frm, to, ft_end, counts, mispreds = columns
    returns = getattr(columns, "returns", None)
    if rows is None:
        rows = range(len(frm))
    out, outside = {}, 0
    for i in rows:
        f, t, e, c, m = frm[i], to[i], ft_end[i], counts[i], mispreds[i]
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
        key = (fv, tv, ev) if returns is None else (fv, tv, ev, returns[i])
        prev = out.get(key)
        out[key] = (c, m) if prev is None else (prev[0] + c, prev[1] + m)
    if returns is None:
        return out, outside
    return typed_table(out), outside


def typed_table(traces):
    """{(from, to, ft_end, is_return): (count, mispreds)} -> TraceTable."""
    cols = [array("Q") for _ in range(5)]
    flags = bytearray()
    for (f, t, e, r), (c, m) in traces.items():
        for col, v in zip(cols, (f, t, e, c, m)):
            col.append(v)
        flags.append(r)
    return TraceTable(cols, bytes(flags) if 1 in flags else None)


def rows_by_object(columns):
    """{object: array of the rows (traces) with a from or to in it}, in
    one pass: what each object's profile reads (object_traces), and, with
    the counts, how many traces each object got."""
    frm, to = columns[0], columns[1]
    out = {}
    for i, (f, t) in enumerate(zip(frm, to)):
        a, b = f >> OBJECT_SHIFT, t >> OBJECT_SHIFT
        if a:
            out.setdefault(a, array("I")).append(i)
        if b and b != a:
            out.setdefault(b, array("I")).append(i)
    return out
