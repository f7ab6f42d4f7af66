"""The profile of one binary, in its ELF address space, and how it is written.

``Profile`` is what :func:`ebpf_bolt.collect` returns and the CLI writes:
basic samples (``samples``: vaddr -> count) or branch traces (``traces``:
(from, to, ft_end) -> (count, mispreds)), plus what was left out and why.
"""
import sys
import tempfile
from array import array
from collections.abc import Mapping

from . import writers
from .elf import ElfFile, Symbolizer
from .errors import UsageError
from .layout import BR_ONLY
from .output import OutputFile


class Profile:
    def __init__(self, binary, event, mode, samples=None, traces=None,
                 stats=None):
        self.binary = str(binary)
        self.event = event
        self.mode = mode                    # "ip" or "lbr"
        self.samples = samples if samples is not None else {}
        self.traces = traces if traces is not None else {}
        self.stats = dict(stats or {})      # kernel counters and left-outs
        self.info = {}                      # run facts for the summary
        self._elf = None

    @property
    def kind(self):
        return "branch" if self.mode == "lbr" else "basic"

    @property
    def elf(self):
        if self._elf is None:
            self._elf = ElfFile(self.binary)
        return self._elf

    @property
    def default_format(self):
        # IP profiles default to fdata: LLVM 22's --pa --ba drops S records
        return "preagg" if self.kind == "branch" else "fdata"

    def total(self):
        if self.kind == "basic":
            return sum(self.samples.values())
        return sum(c for c, _ in self.traces.values())

    def render(self, fmt=None):
        """The profile as text in `fmt` (preagg, preagg-bf or fdata)."""
        fmt = fmt or self.default_format
        if fmt not in writers.FORMATS:
            raise UsageError(f"unknown format {fmt!r}",
                             "use one of " + ", ".join(writers.FORMATS))
        if fmt not in writers.FORMATS_FOR[self.mode]:
            raise UsageError(f"format {fmt} cannot hold a {self.mode}-mode "
                             "profile", "use " + " or ".join(
                                 writers.FORMATS_FOR[self.mode]))
        if fmt == "yaml":
            from .bolt import yaml_profile
            with tempfile.TemporaryDirectory(prefix="ebpf-bolt-") as tmp:
                return yaml_profile(self, tmp)
        if self.kind == "basic":
            if fmt == "preagg":
                return writers.preagg_basic(self.samples, self.event)
            if fmt == "fdata":
                text, outside = writers.fdata_basic(
                    self.samples, self.event, Symbolizer(self.elf))
                self.stats["outside_functions"] = outside
                return text
            raise UsageError("format preagg-bf needs a branch profile",
                             "use --format fdata or preagg for IP samples")
        if fmt == "preagg":
            return writers.preagg_traces(self.traces, self.event)
        if fmt == "preagg-bf":
            return writers.preagg_branches_fallthroughs(self.traces)
        raise UsageError("fdata is written for IP profiles only",
                         "write --format preagg or preagg-bf; perf2bolt --pa "
                         "turns either into fdata or YAML")

    def write(self, path=None, fmt=None):
        """Write to `path` (None or '-' for stdout) all at once: a file is
        complete or absent, and never the profiled binary."""
        with OutputFile(path, inputs=[self.binary]) as out:
            out.commit(self.render(fmt))


def translate_samples(runtime_counts, space):
    """Runtime IP -> count into vaddr -> count; returns (samples, outside)."""
    tr = space.translator()
    samples, outside = {}, 0
    for addr, count in runtime_counts.items():
        v = tr(addr)
        if v is None:
            outside += count
        else:
            samples[v] = samples.get(v, 0) + count
    return samples, outside


def translate_traces(runtime_traces, space):
    """Runtime traces into the binary's addresses (formats doc §2): a from
    or to outside becomes 0 (external), a fall-through end outside, or one
    starting outside, becomes BR_ONLY; a trace whose branch has neither end
    inside is left out. Returns (traces, left-out trace count)."""
    tr = space.translator()
    out, left_out = {}, 0
    for (frm, to, ft_end), (count, mis) in runtime_traces.items():
        f, t = tr(frm), tr(to)
        if f is None and t is None:
            left_out += count      # nothing of the binary is left
            continue
        e = tr(ft_end) if t is not None and ft_end != BR_ONLY else None
        _add(out, (f or 0, t or 0, BR_ONLY if e is None else e), count, mis)
    return out, left_out


def _add(out, key, count, mis):
    prev = out.get(key)
    out[key] = (count, mis) if prev is None else (prev[0] + count, prev[1] + mis)


class TraceTable(Mapping):
    """Traces as columns (from, to, ft_end, count, mispreds), one row per
    distinct trace, read as a {(from, to, ft_end): (count, mispreds)}
    mapping. Writers format the columns directly; the dict is built only
    when a key is looked up."""

    def __init__(self, columns):
        self.columns = columns
        self._dict = None

    def _as_dict(self):
        if self._dict is None:
            f, t, e, c, m = self.columns
            self._dict = dict(zip(zip(f, t, e), zip(c, m)))
        return self._dict

    def __getitem__(self, key):
        return self._as_dict()[key]

    def __iter__(self):
        f, t, e, _, _ = self.columns
        return zip(f, t, e)

    def __len__(self):
        return len(self.columns[0])

    def items(self):
        f, t, e, c, m = self.columns
        return zip(zip(f, t, e), zip(c, m))

    def values(self):
        _, _, _, c, m = self.columns
        return zip(c, m)


class TraceColumns(tuple):
    """Drained traces as columns (from, to, ft_end, count, mispreds), and
    `bounds` = (lowest, highest, br_only) where the drain measured them:
    the lowest and highest address among from, to and every ft_end but
    BR_ONLY, and how many ft_end are BR_ONLY (None: not measured)."""

    def __new__(cls, columns, bounds=None):
        self = super().__new__(cls, columns)
        self.bounds = bounds
        return self


def column_bounds(frm, to, ft_end):
    """TraceColumns.bounds, for drains that do not measure them."""
    n_br = ft_end.count(BR_ONLY)
    lows, highs = [min(frm), min(to)], [max(frm), max(to)]
    if n_br < len(ft_end):  # BR_ONLY is the highest u64: min is unaffected
        lows.append(min(ft_end))
        highs.append(max(filter(BR_ONLY.__ne__, ft_end)))
    return min(lows), max(highs), n_br


def shift_down(column, bias):
    """array('Q') of column[i] - bias, every value being >= bias. Done as
    one big-integer subtraction over the whole column: each native-order
    u64 of its bytes is one 64-bit digit of the integer, and no digit
    borrows from the next as none is below bias. Twice as fast as one
    Python-level subtraction per value, for a million values."""
    n = len(column)
    order = sys.byteorder
    value = int.from_bytes(column.tobytes(), order)
    ones = int.from_bytes((array("Q", [1]) * n).tobytes(), order)
    out = array("Q")
    out.frombytes((value - bias * ones).to_bytes(8 * n, order))
    return out


def translate_trace_columns(columns, space):
    """translate_traces for traces given as columns, as drained. The usual
    case, one executable mapping holding every address, is a uniform shift:
    checked with the bounds the drain measured (or min/max over the
    columns) and done column by column at C speed, so a million traces take
    a fraction of a second. Otherwise, the per-trace rules."""
    frm, to, ft_end, counts, mispreds = columns
    ranges = space.ranges
    if len(ranges) == 1 and len(frm):
        start, end, bias = ranges[0]
        bounds = getattr(columns, "bounds", None) or column_bounds(frm, to, ft_end)
        lowest, highest, n_br = bounds
        # (a negative bias, never seen, would carry in shift_down)
        if start <= lowest and highest < end and bias >= 0:
            if bias:
                frm, to = shift_down(frm, bias), shift_down(to, bias)
                shifted = shift_down(ft_end, bias)
                i = -1
                for _ in range(n_br):  # BR_ONLY stays BR_ONLY
                    i = ft_end.index(BR_ONLY, i + 1)
                    shifted[i] = BR_ONLY
                ft_end = shifted
            return TraceTable((frm, to, ft_end, counts, mispreds)), 0
    return translate_traces(dict(zip(zip(frm, to, ft_end),
                                     zip(counts, mispreds))), space)
