"""Address translation on layouts beyond GNU ld's: lld puts the read-only
segment and the code in one page, so the code mapping's file offset lies in
another segment."""
import subprocess
import time

import pytest

import ebpf_bolt
from ebpf_bolt.addrspace import AddressSpace, Mapping
from ebpf_bolt.cli import main
from ebpf_bolt.elf import ElfFile, Segment, Symbolizer

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
    # lld: R at offset 0, R E at offset 0x700 / vaddr 0x1700, one page each
    elf = FakeElf([Segment(0, 0x6F8, 0, 0x6F8, 4),
                   Segment(0x1700, 0x2E0, 0x700, 0x2E0, 5)])
    base = 0x555555554000
    maps = [Mapping(base, base + 0x1000, 0, "fd:01", 7, "/a", "r--p"),
            Mapping(base + 0x1000, base + 0x2000, 0, "fd:01", 7, "/a", "r-xp")]
    space = AddressSpace(elf)
    assert space.add_process_maps(maps, 7) == 1
    tr = space.translator()
    assert tr(base + 0x1700) == 0x1700
    assert tr(base + 0x19DF) == 0x19DF
    assert tr(base + 0x16FF) is None          # not code of the binary
    assert tr(base + 0x700) is None           # the read-only mapping


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

@pytest.mark.parametrize("load_base", [0, 0x555555554000], ids=["non-pie", "pie"])
@pytest.mark.parametrize("measured", [True, False], ids=["bounds-given", "bounds-computed"])
def test_column_fast_path_equals_per_trace_rules(load_base, measured):
    """One mapping holding every address: the column path (bounds from the
    drain, or computed here; shift by big-integer subtraction) gives what
    the per-trace rules give, BR_ONLY kept; one address outside sends the
    columns down the per-trace path, with the same result as the rules."""
    import random
    from array import array
    from ebpf_bolt.layout import BR_ONLY
    from ebpf_bolt.profile import (TraceColumns, column_bounds,
                                   translate_trace_columns, translate_traces)
    elf = FakeElf([Segment(0x1000, 0x8000, 0x1000, 0x8000, 5)])
    space = AddressSpace.from_load_base(elf, load_base)
    lo, hi = 0x1000 + load_base, 0x9000 + load_base
    rng = random.Random(11)
    keys = {(rng.randrange(lo, hi), rng.randrange(lo, hi),
             BR_ONLY if rng.random() < 0.2 else rng.randrange(lo, hi))
            for _ in range(5000)}
    keys |= {(lo, hi - 1, BR_ONLY), (hi - 1, lo, lo)}   # both ends of the range
    rows = sorted(keys)
    cols = [array("Q", c) for c in zip(*rows)] + \
           [array("Q", range(1, len(rows) + 1)), array("Q", [7] * len(rows))]
    bounds = column_bounds(*cols[:3]) if measured else None
    got, left = translate_trace_columns(TraceColumns(cols, bounds), space)
    expected, expected_left = translate_traces(
        dict(zip(rows, zip(cols[3], cols[4]))), space)
    assert hasattr(got, "columns")       # the column path was taken
    assert dict(got.items()) == expected and left == expected_left == 0
    # one ft_end just past the mapping: the per-trace rules decide
    cols[2][0] = hi
    rows[0] = (rows[0][0], rows[0][1], hi)
    bounds = column_bounds(*cols[:3]) if measured else None
    got, left = translate_trace_columns(TraceColumns(cols, bounds), space)
    expected, _ = translate_traces(dict(zip(rows, zip(cols[3], cols[4]))), space)
    assert not hasattr(got, "columns") and got == expected
    # formats doc section 2: a fall-through end outside the binary becomes
    # BR_ONLY; row 0 keeps its count (1) and mispredicts (7)
    key = (rows[0][0] - load_base, rows[0][1] - load_base, BR_ONLY)
    assert got[key] == (1, 7)
    assert not any(e == hi - load_base for _, _, e in got)


def test_mappings_match_by_device_and_inode():
    """Two files with the same inode number on different devices: only the
    binary's (dev, inode) is translated; where no mapping shows the
    binary's device (overlayfs), the inode alone decides."""
    elf = FakeElf([Segment(0x1000, 0x1000, 0x1000, 0x1000, 5)])
    base, other = 0x555555554000, 0x7f0000000000
    maps = [Mapping(base + 0x1000, base + 0x2000, 0x1000, "fd:01", 7, "/a", "r-xp"),
            Mapping(other + 0x1000, other + 0x2000, 0x1000, "00:2a", 7, "/b", "r-xp")]
    space = AddressSpace(elf)
    assert space.add_process_maps(maps, 7, "fd:01") == 1
    assert space.translator()(base + 0x1800) == 0x1800
    assert space.translator()(other + 0x1800) is None
    overlay = AddressSpace(elf)
    assert overlay.add_process_maps(maps[:1], 7, "00:3b") == 1
    assert overlay.translator()(base + 0x1800) == 0x1800
    # no device matches (btrfs subvolumes): the path tells the two apart
    subvol = AddressSpace(elf)
    assert subvol.add_process_maps(maps, 7, "00:3b", "/b") == 1
    assert subvol.translator()(other + 0x1800) == 0x1800
    assert subvol.translator()(base + 0x1800) is None


def test_negative_bias_takes_the_per_trace_path():
    """A mapping below its link address (bias < 0) would make shift_down
    carry into the next value: such columns take the per-trace rules."""
    from array import array
    from ebpf_bolt.layout import BR_ONLY
    from ebpf_bolt.profile import TraceColumns, translate_trace_columns
    elf = FakeElf([Segment(0x401000, 0x1000, 0x1000, 0x1000, 5)])
    space = AddressSpace.from_load_base(elf, -0x400000)
    rows = [(0x1010, 0x1020, BR_ONLY), (0x1030, 0x1040, 0x1050)]
    cols = [array("Q", c) for c in zip(*rows)] + [array("Q", [3, 4]),
                                                   array("Q", [0, 1])]
    got, left = translate_trace_columns(TraceColumns(cols), space)
    assert not hasattr(got, "columns") and left == 0
    assert got == {(0x401010, 0x401020, BR_ONLY): (3, 0),
                   (0x401030, 0x401040, 0x401050): (4, 1)}
