"""Profile writers: BOLT's pre-aggregated text (bolt-profile-formats.md §1)
and symbolized fdata (§3). Each takes already-translated ELF addresses.

Basic-sample records are sorted by address; trace records keep the trace
map's order (a big service has a million traces, and sorting would cost
more than writing). Writers return the text: profiles are small next to
perf.data.
"""
import bisect
import os
from array import array
from itertools import chain, compress, islice

from . import parallel
from .layout import BR_ONLY

FORMATS = ("preagg", "preagg-bf", "fdata", "yaml")
# LLVM 22 applies a YAML profile of IP samples as an empty one (0 executed
# instructions, as with S records through --pa --ba): YAML for branches only.
# A branch profile's fdata and YAML are made by the installed perf2bolt.
FORMATS_FOR = {"ip": ("fdata", "preagg"),
               "lbr": ("preagg", "preagg-bf", "fdata", "yaml")}


def preagg_basic(samples, event):
    """``E event`` then ``S addr count`` (LLVM >= 21). LLVM 22's
    ``llvm-bolt --pa --ba`` ignores S records: pass this file through
    ``perf2bolt --pa --ba`` first, or use fdata."""
    lines = [f"E {event}\n"]
    lines += [f"S {addr:x} {count}\n" for addr, count in sorted(samples.items())]
    return "".join(lines)


# 1 for a row that is not a return, from TraceTable.returns
_NOT = bytes([1, 0]) + bytes(254)


def typed_rows(traces):
    """(from, to, ft_end, count, mispreds, is_return) of each trace of a
    TraceTable, or of a {(from, to, ft_end): (count, mispreds)} dict (no
    types: no return)."""
    if hasattr(traces, "typed_rows"):
        return traces.typed_rows()
    return ((f, t, e, c, m, 0) for (f, t, e), (c, m) in traces.items())


def preagg_traces(traces, event):
    """``E event`` then ``R from to ft_end count`` for each trace whose
    branch is a return, ``T from to ft_end count`` for the others, and for
    every trace where the types are unknown (LLVM >= 21 reads both; R
    from 0 is a return from outside the binary, which no disassembly can
    tell). LLVM 22 takes no mispredict field on T or R, so mispredicts are
    not written."""
    # In the kernel map's order: sorting a million traces would cost
    # several times the writing. Returns are picked out whole columns at a
    # time (compress), T lines first.
    columns = getattr(traces, "columns", None)
    returns = getattr(traces, "returns", None)
    if columns is None:
        text = format_rows("T %x %x %x %d\n", ((f, t, e, c) for (f, t, e), (c, _m)
                                               in traces.items()))
    elif returns is None:
        text = format_columns("T %x %x %x %d\n", columns[:4])
    else:
        others = returns.translate(_NOT)
        text = "".join(
            format_columns(line, [array("Q", compress(c, keep))
                                  for c in columns[:4]])
            for line, keep in (("T %x %x %x %d\n", others),
                               ("R %x %x %x %d\n", returns)))
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


def preagg_branches_fallthroughs(traces, symbolizer):
    """``B from to count mispreds`` plus ``F start end count`` or ``f start
    end count`` per fall-through: the T records' information split in two,
    read by LLVM 19 to 22, mispredicts included (LLVM 22 takes none on T).

    ``f`` (external origin) where the branch that began the fall-through
    came from outside the *function* holding its start (`symbolizer`: the
    ELF function symbols, which are BOLT's functions) or from outside the
    binary (from = 0), else ``F``: perf2bolt's own rule for the traces it
    aggregates. The letter matters at a return site that starts a block:
    only for ``f`` does perf2bolt also credit the edge from the call's
    block into it. In bolt/lib/Profile/DataAggregator.cpp:

    - LLVM 19 (barrietech/llvm-project 426c86aacb29, an LLVM 19-era copy):
      parseLBRSample counts `++Info.ExternCount` where
      `!TraceBF->containsAddress(LBR.From)`, replayed with `First.From = 0`
      as processPreAggregated replays ``f``; getFallthroughsInTrace moves
      FromBB to the call block only if `!BF.containsAddress(FirstLBR.From)`.
    - LLVM 22 (llvm/llvm-project 00d20e2b9247, LLVM 22-era main):
      parseAggregatedLBREntry 1382-1395 gives F the branch FT_ONLY and f
      FT_EXTERNAL_ORIGIN; getFallthroughsInTrace 931-947 moves FromBB only
      if `Trace.Branch != FT_ONLY && !BF.containsAddress(Trace.Branch)`.

    A start in no function symbol (a PLT stub) has no CFG in BOLT: there
    ``f`` only for from = 0, as before. No ``r`` record: LLVM 19 refuses
    it ("expected B, F or f"). A return from outside the binary (typed,
    from = 0) gets its ``f`` record only, without ``B 0 to``: that is how
    LLVM 22 reads the R record of it (parseAggregatedLBREntry turns from
    0 of an R into FT_EXTERNAL_RETURN, a branch processBranchEvents never
    counts: checkReturn holds for it), where ``B 0 to`` would be an entry
    into the middle of a function from [unknown].
    tests/test_preagg_bf.py checks all this against both."""
    funcs = symbolizer.functions           # sorted by start, one per start
    starts = [f.addr for f in funcs]
    ends = [f.addr + f.size for f in funcs]
    find = bisect.bisect_right
    branches, fallthroughs = {}, {}
    for frm, to, ft_end, count, mis, is_return in typed_rows(traces):
        if frm or not is_return:
            b = branches.setdefault((frm, to), [0, 0])
            b[0] += count
            b[1] += mis
        if ft_end != BR_ONLY and to != 0:
            i = find(starts, to) - 1        # the function holding `to`
            external = frm == 0 or (i >= 0 and to < ends[i] and
                                    not starts[i] <= frm < ends[i])
            key = ("f" if external else "F", to, ft_end)
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
