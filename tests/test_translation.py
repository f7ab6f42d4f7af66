"""Address translation on layouts beyond GNU ld's: lld puts the read-only
segment and the code in one page, so the code mapping's file offset lies in
another segment."""
import subprocess
import time

import pytest

import ebpf_bolt
from ebpf_bolt.cli import main
from ebpf_bolt.elf import ElfFile, Segment, Symbolizer
from ebpf_bolt.translate import segment_translator

PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((noinline)) long hot(long n) { long s = 0; for (long i = 0; i < n; i++) s += (i * 7) % 13 ? i : -i; return s; }
__attribute__((noinline)) long cold(long n) { return n * 3; }
int main(int c, char **v) { long t = 0; for (int k = 0; k < atoi(v[1]); k++) t += hot(1000000 + k) + cold(k); printf("%ld\n", t); return 0; }
"""


class FakeElf:
    def __init__(self, segments):
        self.segments = segments

    def text_segments(self):
        return [s for s in self.segments if s.executable]


def test_code_sharing_a_page_with_read_only_data():
    """The kernel keys an address of the code mapping (file offset 0 at
    base + 0x1000, one page) by its file offset; the offset's segment, not
    the mapping's first offset, gives the vaddr."""
    # lld: R at offset 0, R E at offset 0x700 / vaddr 0x1700, one page each
    elf = FakeElf([Segment(0, 0x6F8, 0, 0x6F8, 4),
                   Segment(0x1700, 0x2E0, 0x700, 0x2E0, 5)])
    base = 0x555555554000
    delta = base + 0x1000          # vm_start - vm_pgoff * page size

    def vaddr(addr):
        return segment_translator(elf)(addr - delta)
    assert vaddr(base + 0x1700) == 0x1700
    assert vaddr(base + 0x19DF) == 0x19DF
    assert vaddr(base + 0x16FF) is None          # not code of the binary
    assert vaddr(base + 0x19E0) is None          # past the code's file bytes


@pytest.fixture(scope="module")
def lld_pie(tmp_path_factory):
    d = tmp_path_factory.mktemp("lld")
    (d / "p.c").write_text(PROGRAM)
    exe = d / "p-lld"
    subprocess.run(["clang", "-O1", "-fPIE", "-pie", "-fuse-ld=lld",
                    "-Wl,--emit-relocs", "-o", str(exe), str(d / "p.c")],
                   check=True)
    return exe


@pytest.mark.root
def test_lld_pie_samples_land_in_function_bodies(lld_pie):
    text = ElfFile(lld_pie).text_segments()[0]
    assert text.offset % 0x1000 != 0, "expected lld's unaligned code segment"
    prof = ebpf_bolt.collect(command=[str(lld_pie), "300"])
    assert prof.info["returncode"] == 0
    sym = Symbolizer(prof.elf)
    total = prof.total()
    hits = {}
    for addr, count in prof.samples.items():
        hit = sym.lookup(addr)
        if hit:
            hits[hit[0].name] = hits.get(hit[0].name, 0) + count
    assert total > 100, prof.stats
    assert sum(hits.values()) >= 0.95 * total
    assert hits.get("hot", 0) >= 0.9 * total


@pytest.mark.root
def test_format_not_fitting_the_mode_is_refused_before_recording(tmp_path, capsys):
    out = tmp_path / "p"
    t0 = time.monotonic()
    rc = main(["--format", "preagg-bf", "-o", str(out), "--", "sleep", "5"])
    assert rc == 2 and time.monotonic() - t0 < 3
    err = capsys.readouterr().err
    assert "cannot hold IP samples" in err and "hint:" in err
    assert not out.exists() and not list(tmp_path.iterdir())


# --- translation of drained trace columns -------------------------------------

def keyed_columns(rows):
    from array import array
    cols = [array("Q", c) for c in zip(*rows)]
    return cols + [array("Q", range(1, len(rows) + 1)),
                   array("Q", [7] * len(rows))]


def as_runtime(oid, elf):
    """The object's keys seen as runtime addresses of a process that
    loaded it so (object << 48 | offset): object_view's ranges for them."""
    return [((oid << 48) + s.offset, (oid << 48) + s.offset + s.filesz,
             (oid << 48) + s.offset - s.vaddr) for s in elf.text_segments()]


@pytest.mark.parametrize("vaddr", [0x1000, 0x401000, 0x200],
                         ids=["pie", "non-pie", "vaddr-below-offset"])
@pytest.mark.parametrize("measured", [True, False], ids=["bounds-given", "bounds-computed"])
def test_column_fast_path_equals_per_trace_rules(vaddr, measured):
    """Every key in one segment of the object: the column path (bounds from
    the drain, or computed here; shift by big-integer subtraction) gives
    what the per-trace rules give, BR_ONLY kept; one key of another object
    sends the columns down the per-trace path, with the same result as the
    rules (perf2bolt_rules.object_view, the formats doc's rule)."""
    import random
    import perf2bolt_rules as rules
    from ebpf_bolt.layout import BR_ONLY
    from ebpf_bolt.profile import TraceColumns
    from ebpf_bolt.translate import column_bounds, object_traces
    oid = 3
    elf = FakeElf([Segment(0, 0x800, 0, 0x800, 4),
                   Segment(vaddr, 0x8000, 0x1000, 0x8000, 5)])
    lo, hi = (oid << 48) + 0x1000, (oid << 48) + 0x9000
    rng = random.Random(11)
    keys = {(rng.randrange(lo, hi), rng.randrange(lo, hi),
             BR_ONLY if rng.random() < 0.2 else rng.randrange(lo, hi))
            for _ in range(5000)}
    keys |= {(lo, hi - 1, BR_ONLY), (hi - 1, lo, lo)}   # both ends of the range
    rows = sorted(keys)
    cols = keyed_columns(rows)
    bounds = column_bounds(*cols[:3]) if measured else None
    got, left = object_traces(TraceColumns(cols, bounds), oid, elf)
    expected, expected_left = rules.object_view(
        dict(zip(rows, zip(cols[3], cols[4]))), as_runtime(oid, elf))
    assert hasattr(got, "columns")       # the column path was taken
    assert dict(got.items()) == expected and left == expected_left == 0
    # one ft_end in another object: the per-trace rules decide
    other = ((oid + 1) << 48) + 0x1000
    cols[2][0] = other
    rows[0] = (rows[0][0], rows[0][1], other)
    bounds = column_bounds(*cols[:3]) if measured else None
    got, left = object_traces(TraceColumns(cols, bounds), oid, elf)
    expected, _ = rules.object_view(dict(zip(rows, zip(cols[3], cols[4]))),
                                    as_runtime(oid, elf))
    assert not hasattr(got, "columns") and got == expected
    # formats doc section 2: a fall-through end outside the object becomes
    # BR_ONLY; row 0 keeps its count (1) and mispredicts (7)
    shift = (oid << 48) + 0x1000 - vaddr
    key = (rows[0][0] - shift, rows[0][1] - shift, BR_ONLY)
    assert got[key] == (1, 7)


def test_keys_past_the_segment_take_the_per_trace_path():
    """A key of the object but past its code segment's file bytes (in the
    read-only segment, say): no uniform shift; the per-trace rules count
    the trace as outside the code."""
    from ebpf_bolt.layout import BR_ONLY
    from ebpf_bolt.profile import TraceColumns
    from ebpf_bolt.translate import object_traces
    elf = FakeElf([Segment(0x401000, 0x1000, 0x1000, 0x1000, 5)])
    k = 1 << 48
    rows = [(k + 0x1010, k + 0x1020, BR_ONLY), (k + 0x1030, k + 0x2040, k + 0x1050)]
    got, left = object_traces(TraceColumns(keyed_columns(rows)), 1, elf)
    assert not hasattr(got, "columns")
    assert got == {(0x401010, 0x401020, BR_ONLY): (1, 7)} and left == 2
