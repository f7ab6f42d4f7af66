"""Profile writers: BOLT's pre-aggregated text (bolt-profile-formats.md §1)
and symbolized fdata (§3). Each takes already-translated ELF addresses.

Basic-sample records are sorted by address; trace records keep the trace
map's order (a big service has a million traces, and sorting would cost
more than writing). Writers return the text: profiles are small next to
perf.data.
"""
import os
from itertools import chain, islice

from . import parallel
from .layout import BR_ONLY

FORMATS = ("preagg", "preagg-bf", "fdata", "yaml")
# LLVM 22 applies a YAML profile of IP samples as an empty one (0 executed
# instructions, as with S records through --pa --ba): YAML for branches only.
FORMATS_FOR = {"ip": ("fdata", "preagg"),
               "lbr": ("preagg", "preagg-bf", "yaml")}


def preagg_basic(samples, event):
    """``E event`` then ``S addr count`` (LLVM >= 21). LLVM 22's
    ``llvm-bolt --pa --ba`` ignores S records: pass this file through
    ``perf2bolt --pa --ba`` first, or use fdata."""
    lines = [f"E {event}\n"]
    lines += [f"S {addr:x} {count}\n" for addr, count in sorted(samples.items())]
    return "".join(lines)


def preagg_traces(traces, event):
    """``E event`` then ``T from to ft_end count`` (LLVM >= 21). LLVM 22
    takes no mispredict field on T, so mispredicts are not written."""
    # In the kernel map's order: sorting a million traces would cost
    # several times the writing.
    columns = getattr(traces, "columns", None)
    if columns is not None:
        text = format_columns("T %x %x %x %d\n", columns[:4])
    else:
        text = format_rows("T %x %x %x %d\n", ((f, t, e, c) for (f, t, e), (c, _m)
                                               in traces.items()))
    return f"E {event}\n" + text


def format_rows(line_format, rows, chunk=8192):
    """`line_format` % row for each row, joined. Lines are formatted a
    chunk at a time by one % over a repeated format and a flat tuple: the
    loop runs in C, faster than one % call per line."""
    out = []
    rows = iter(rows)
    while True:
        part = list(islice(rows, chunk))
        if not part:
            return "".join(out)
        out.append((line_format * len(part)) % tuple(chain.from_iterable(part)))


# Below this many rows, formatting in one process is quick enough.
PARALLEL_ROWS = 100_000


def format_columns(line_format, columns):
    """format_rows over rows given as equal-length columns. A big profile
    (a million traces take ~0.8 s in one process) is cut into one slice per
    usable CPU, formatted in forked children (parallel.map_slices)."""
    n = len(columns[0])
    try:
        workers = min(len(os.sched_getaffinity(0)), 8)
    except OSError:
        workers = 1
    if n < PARALLEL_ROWS or workers < 2:
        return format_rows(line_format, zip(*columns))
    bounds = [n * i // workers for i in range(workers + 1)]
    slices = [[c[lo:hi] for c in columns] for lo, hi in zip(bounds, bounds[1:])]
    return "".join(parallel.map_slices(
        lambda cols: format_rows(line_format, zip(*cols)), slices))


def preagg_branches_fallthroughs(traces):
    """``B from to count mispreds`` plus ``F start end count`` (or ``f`` when
    the branch came from outside the binary, from = 0), read by every LLVM
    from 19 on: the same information as T records, split in two.

    perf2bolt adds the edge into a fall-through's first block only for T
    and ``f`` records (DataAggregator::getFallthroughsInTrace), so a return
    from a shared library must be ``f``, or that edge is lost."""
    branches, fallthroughs = {}, {}
    for (frm, to, ft_end), (count, mis) in traces.items():
        b = branches.setdefault((frm, to), [0, 0])
        b[0] += count
        b[1] += mis
        if ft_end != BR_ONLY and to != 0:
            key = ("f" if frm == 0 else "F", to, ft_end)
            fallthroughs[key] = fallthroughs.get(key, 0) + count
    out = ["B %x %x %d %d\n" % (f, t, c, m) for (f, t), (c, m) in branches.items()]
    out += ["%s %x %x %d\n" % (kind, s, e, c)
            for (kind, s, e), c in fallthroughs.items()]
    return "".join(out)


class FunctionNames:
    """BOLT's names for functions, as fdata must spell them: a global keeps
    its symbol name; the n-th local (static) symbol of a name, in address
    order, is ``name/n`` (what perf2bolt writes, e.g. ``loc/1``)."""

    def __init__(self, symbolizer):
        self._names = {}
        seen = {}
        for f in symbolizer.functions:
            if f.local:
                seen[f.name] = seen.get(f.name, 0) + 1
                self._names[f.addr] = f"{f.name}/{seen[f.name]}"
            else:
                self._names[f.addr] = f.name

    def __getitem__(self, func):
        return self._names[func.addr]


def fdata_basic(samples, event, symbolizer):
    """``no_lbr EVENT`` then ``1 name hexoff count`` per sampled address.

    Returns (text, samples outside any function symbol): those cannot be
    expressed in fdata and are reported, not silently dropped."""
    names = FunctionNames(symbolizer)
    lines, outside = [f"no_lbr {event}\n"], 0
    for addr, count in sorted(samples.items()):
        hit = symbolizer.lookup(addr)
        if hit is None:
            outside += count
            continue
        func, off = hit
        name = names[func]
        lines.append(f"1 {name} {off:x} {count}\n")
    return "".join(lines), outside
