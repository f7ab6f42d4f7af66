"""Drain: the kernel's counts, read once the programs have stopped (the
data path's step after the count tables; translation follows, in
translate.py).

The counts are in two places: the count tables shared by all CPUs
(ip_counts, trace_counts: open-addressing hash tables in mmapable arrays,
ebpf_bolt.bpf.c) and the per-CPU caches in front of them, whose ways hold
counts not yet added to keys the tables already have. flush_caches (a
syscall program) adds those with the samples' own code and empties the
caches; then the tables alone hold every count, and are read here in one
copy each. ``Recorder`` and ``Replayer`` both drain through here.

With --interval the tables and caches hold two sets (bpf_object.py
switch_set): a window's set is drained here once the programs count into
the other one, then cleared (BoltObject.clear_set) for the window after
next. Without it, there is one set, 0.
"""
import sys
from array import array
from itertools import compress

from .bpf_object import FLUSH
from .errors import BpfError
from .layout import RACED_MAX, SLOT_USED, TRACE_RETURN, FlushArgs
from .profile import TraceColumns

# A stored trace word has SLOT_USED (bit 62) flipped. Flipping it back, a
# byte at a time over whole columns (bytes.translate), costs no Python
# operation per trace: bit 62 is bit 6 of the word's most significant byte.
_FLIP = bytes(b ^ (SLOT_USED >> 56) for b in range(256))
_TOP_BYTE = 7 if sys.byteorder == "little" else 0


def _unflip(words):
    raw = bytearray(words.tobytes())
    raw[_TOP_BYTE::8] = raw[_TOP_BYTE::8].translate(_FLIP)
    return array("Q", raw)


# A return's trace has TRACE_RETURN (bit 61, bit 5 of the top byte) in its
# `from`: split off the same way, into one byte per trace (1: a return).
_RETURN_BIT = TRACE_RETURN >> 56
_CLEAR_RETURN = bytes(b & ~_RETURN_BIT for b in range(256))
_IS_RETURN = bytes(int(bool(b & _RETURN_BIT)) for b in range(256))


def split_returns(frm):
    """(from column without the return bit, bytes with 1 for each trace
    whose branch is a return, or None when none is)."""
    raw = bytearray(frm.tobytes())
    top = raw[_TOP_BYTE::8]
    returns = bytes(top.translate(_IS_RETURN))
    if 1 not in returns:
        return frm, None
    raw[_TOP_BYTE::8] = top.translate(_CLEAR_RETURN)
    return array("Q", raw), returns


def flush_caches(obj, s=0):
    """Add the counts pending in the CPUs' caches of set `s` to its count
    tables and empty the caches (flush_caches, in the kernel). Only while
    no program counts into the set: afterwards its tables alone hold every
    count."""
    failed = obj.run_program(FLUSH, FlushArgs(set=s))
    if failed:  # a cache it could not walk: its counts would be missing
        raise BpfError(f"{FLUSH} failed (returned {failed}): the per-CPU "
                       "caches' counts could not be added to the profile",
                       "report this as a bug, with the kernel version")


def drain_ip_counts(obj, s=0):
    """{key: samples} of set `s` (keys as the table holds them: object <<
    48 | file offset), caches included."""
    flush_caches(obj, s)
    counts = {}
    for words in obj.read_table("ip_counts", s):
        keys = words[0::2]
        counts.update(compress(zip(keys, words[1::2]), keys))
    return counts


def drain_traces(obj, s=0):
    """Set `s`'s trace table as columns (from, to, ft_end, count,
    mispreds), caches included: a million traces stay cheap, with no Python
    object per trace until something asks for one. `returns` of the result
    marks the traces whose branch is a return (None: no trace is one)."""
    flush_caches(obj, s)
    cols = [array("Q") for _ in range(5)]
    for words in obj.read_table("trace_counts", s):
        used = words[0::5]  # from: 0 only in a free slot
        for i, col in enumerate(cols):
            col.extend(compress(words[i::5], used))
    cols[:3] = [_unflip(c) for c in cols[:3]]
    races, froms = obj.read_raced(s)
    if races:  # before the split: a return's `from` still tells it apart
        cols = _merge_duplicates(cols, None if races > RACED_MAX else
                                 {f ^ SLOT_USED for f in froms})
    cols[0], returns = split_returns(cols[0])
    return TraceColumns(cols, returns=returns)


def _merge_duplicates(cols, froms=None):
    """Columns with each trace once. A trace stored while another CPU was
    writing a slot of the same `from` may have a second slot, whose counts
    belong to the same trace: the kernel noted those `from`s (raced map),
    so only their rows are merged here; with `froms` None (more races than
    it notes), every row is, which costs ~2 s per million traces."""
    frm, to, ft_end, counts, mispreds = cols
    rows = (range(len(frm)) if froms is None else
            [i for i, f in enumerate(frm) if f in froms])
    merged = {}
    for i in rows:
        key = (frm[i], to[i], ft_end[i])
        c, m = merged.get(key, (0, 0))
        merged[key] = (c + counts[i], m + mispreds[i])
    if len(merged) == len(rows):
        return cols  # no trace twice
    keep = bytearray(b"\1") * len(frm)
    for i in rows:
        keep[i] = 0
    out = [array("Q", compress(c, keep)) for c in cols]
    for (f, t, e), (c, m) in merged.items():
        for col, v in zip(out, (f, t, e, c, m)):
            col.append(v)
    return out
