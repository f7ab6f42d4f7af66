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
"""
import sys
from array import array
from itertools import compress

from .bpf_object import FLUSH
from .layout import SLOT_USED
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


def flush_caches(obj):
    """Add the counts pending in the CPUs' caches to the count tables and
    empty the caches (flush_caches, in the kernel). Only while no program
    runs: afterwards the tables alone hold every count."""
    obj.run_program(FLUSH)


def drain_ip_counts(obj):
    """{key: samples} (keys as the table holds them: object << 48 | file
    offset), caches included."""
    flush_caches(obj)
    counts = {}
    for words in obj.read_table("ip_counts"):
        keys = words[0::2]
        counts.update(compress(zip(keys, words[1::2]), keys))
    return counts


def drain_traces(obj):
    """The trace table as columns (from, to, ft_end, count, mispreds), caches
    included: a million traces stay cheap, with no Python object per trace
    until something asks for one."""
    flush_caches(obj)
    cols = [array("Q") for _ in range(5)]
    for words in obj.read_table("trace_counts"):
        used = words[0::5]  # from: 0 only in a free slot
        for i, col in enumerate(cols):
            col.extend(compress(words[i::5], used))
    cols[:3] = [_unflip(c) for c in cols[:3]]
    if obj.stats()["table_races"]:
        cols = _merge_duplicates(cols)
    return TraceColumns(cols)


def _merge_duplicates(cols):
    """Columns with each trace once: a trace stored while another CPU was
    writing its first slot may have a second one (table_races), whose
    counts belong to the same trace."""
    merged = {}
    for frm, to, ft, count, mis in zip(*cols):
        c, m = merged.get((frm, to, ft), (0, 0))
        merged[frm, to, ft] = (c + count, m + mis)
    out = [array("Q") for _ in range(5)]
    for (frm, to, ft), (count, mis) in merged.items():
        for col, v in zip(out, (frm, to, ft, count, mis)):
            col.append(v)
    return out
