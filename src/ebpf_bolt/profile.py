"""The profile of one binary, in its ELF address space, and how it is written.

``Profile`` is what :func:`ebpf_bolt.collect` returns and the CLI writes:
basic samples (``samples``: vaddr -> count) or branch traces (``traces``:
(from, to, ft_end) -> (count, mispreds)), plus what was left out and why.
"""
import tempfile
from collections.abc import Mapping
from itertools import compress

from . import provenance, writers
from .elf import ElfFile, Symbolizer
from .errors import UsageError
from .output import OutputFile, commit_with_sidecar, sidecar_output


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
        columns = getattr(self.traces, "columns", None)
        if columns is not None:
            return sum(columns[3])
        return sum(c for c, _ in self.traces.values())

    def render(self, fmt=None):
        """The profile as text in `fmt` (preagg, preagg-bf, fdata or yaml).
        A branch profile's fdata and YAML are made by the installed
        perf2bolt (bolt.perf2bolt_profile), which info["made_by"] names."""
        fmt = fmt or self.default_format
        if fmt not in writers.FORMATS:
            raise UsageError(f"unknown format {fmt!r}",
                             "use one of " + ", ".join(writers.FORMATS))
        if fmt not in writers.FORMATS_FOR[self.mode]:
            raise UsageError(f"format {fmt} cannot hold a {self.mode}-mode "
                             "profile", "use " + " or ".join(
                                 writers.FORMATS_FOR[self.mode]))
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
            return writers.preagg_branches_fallthroughs(
                self.traces, Symbolizer(self.elf))
        from .bolt import perf2bolt_profile     # fdata, yaml
        with tempfile.TemporaryDirectory(prefix="ebpf-bolt-") as tmp:
            return perf2bolt_profile(self, fmt, tmp)

    def provenance(self, fmt):
        """provenance.describe() of a recorded profile: the recording's
        wall clock, event and frequency, on this host."""
        i = self.info
        return provenance.describe(
            path=self.binary, build_id=i.get("build_id"), mode=self.mode,
            fmt=fmt, event=self.event, frequency=i.get("frequency"),
            start=i["started"], end=i["stopped"])

    def write(self, path=None, fmt=None):
        """Write to `path` (None or '-' for stdout) all at once: a file is
        complete or absent, and never the profiled binary. A recorded
        profile written to a file gets its sidecar FILE.json (what `ebpf-bolt
        merge` reads), made before and written after it."""
        fmt = fmt or self.default_format
        with OutputFile(path, inputs=[self.binary]) as out:
            side = (sidecar_output(out) if "started" in self.info
                    else None)   # a replay's times are its caller's
            text = self.render(fmt)
            side_text = None if side is None else self.sidecar_text(
                self.provenance(fmt), text)
            commit_with_sidecar(out, side, text, side_text)

    def sidecar_text(self, prov, text):
        """The text of the sidecar of `text`, this profile rendered, whose
        provenance is `prov` (provenance.py)."""
        size = len(text.encode() if isinstance(text, str) else text)
        return provenance.sidecar_text(provenance.sidecar(
            prov, samples=self.total(),
            processes=self.info.get("processes", 1), size=size))


# 1 for a row that is not a return, from TraceTable.returns
_NOT = bytes([1, 0]) + bytes(254)


class TraceTable(Mapping):
    """Traces as columns (from, to, ft_end, count, mispreds), one row per
    distinct trace, read as a {(from, to, ft_end): (count, mispreds)}
    mapping. Writers format the columns directly; the dict is built only
    when a key is looked up.

    `returns`: bytes with 1 for each row whose branch is a return (the
    kernel keeps the branch type where it is known), or None where no row
    is one. A return and another branch between the same addresses are two
    rows (a `from` of 0 stands for every address outside the binary); the
    mapping, which knows no types, adds them up, and then goes through the
    dict for its length and iteration too."""

    def __init__(self, columns, returns=None):
        self.columns = columns
        self.returns = returns
        self._dict = None

    def _as_dict(self):
        if self._dict is None:
            f, t, e, c, m = self.columns
            if self.returns is None:
                self._dict = dict(zip(zip(f, t, e), zip(c, m)))
            else:  # the other rows at C speed, then the returns added
                merged = dict(self._pick(self.returns.translate(_NOT)))
                for key, (cnt, mis) in self._pick(self.returns):
                    prev = merged.get(key)
                    merged[key] = ((cnt, mis) if prev is None else
                                   (prev[0] + cnt, prev[1] + mis))
                self._dict = merged
        return self._dict

    def _pick(self, rows):
        """((from, to, ft_end), (count, mispreds)) of the rows marked 1."""
        f, t, e, c, m = (compress(col, rows) for col in self.columns)
        return zip(zip(f, t, e), zip(c, m))

    def __getitem__(self, key):
        return self._as_dict()[key]

    def __iter__(self):
        if self.returns is not None:
            return iter(self._as_dict())
        f, t, e, _, _ = self.columns
        return zip(f, t, e)

    def __len__(self):
        if self.returns is not None:
            return len(self._as_dict())
        return len(self.columns[0])

    def items(self):
        if self.returns is not None:
            return self._as_dict().items()
        f, t, e, c, m = self.columns
        return zip(zip(f, t, e), zip(c, m))

    def values(self):
        if self.returns is not None:
            return self._as_dict().values()
        _, _, _, c, m = self.columns
        return zip(c, m)

    def typed_rows(self):
        """(from, to, ft_end, count, mispreds, is_return) for each row."""
        f, t, e, c, m = self.columns
        r = self.returns if self.returns is not None else bytes(len(f))
        return zip(f, t, e, c, m, r)


class TraceColumns(tuple):
    """Drained traces as columns (from, to, ft_end, count, mispreds), and
    `bounds` = (lowest, highest, br_only) where the drain measured them:
    the lowest and highest key among from, to and every ft_end but
    BR_ONLY, and how many ft_end are BR_ONLY (None: not measured).
    `returns`: as TraceTable's (the rows whose branch is a return)."""

    def __new__(cls, columns, bounds=None, returns=None):
        self = super().__new__(cls, columns)
        self.bounds = bounds
        self.returns = returns
        return self
