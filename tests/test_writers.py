"""Writers against the real BOLT: ebpf-bolt's own fdata must equal what
perf2bolt makes of the same samples, including BOLT's names for static
functions (name/1, name/2 in address order)."""
import subprocess

import pytest

from ebpf_bolt.elf import ElfFile, Symbolizer
from ebpf_bolt.profile import Profile
from ebpf_bolt.layout import BR_ONLY

from conftest import bolt_tool, run

UNIT_A = r"""
static __attribute__((noinline)) int loc(int x) { int s = 0; for (int i = 0; i < x; i++) s += (i & 1) ? i * 3 : i ^ 7; return s; }
int fa(int x) { return loc(x) + 1; }
"""
UNIT_B = r"""
static __attribute__((noinline)) int loc(int x) { int s = 0; for (int i = 0; i < x; i++) s += (i & 2) ? i * 5 : i ^ 9; return s; }
int fb(int x) { return loc(x) + 2; }
"""
MAIN = r"""
#include <stdio.h>
int fa(int), fb(int);
int main(int c, char **v) { printf("%d\n", fa(100 + c) + fb(200 + c)); return 0; }
"""


@pytest.fixture(scope="module")
def two_statics(tmp_path_factory):
    d = tmp_path_factory.mktemp("statics")
    for name, text in (("a.c", UNIT_A), ("b.c", UNIT_B), ("m.c", MAIN)):
        (d / name).write_text(text)
    exe = d / "prog"
    subprocess.run(["cc", "-O2", "-Wl,--emit-relocs", "-o", str(exe),
                    str(d / "m.c"), str(d / "b.c"), str(d / "a.c")], check=True)
    return exe


def perf2bolt_fdata(binary, preagg_text, tmp_path, basic=True):
    src = tmp_path / "in.preagg"
    src.write_text(preagg_text)
    out = tmp_path / "out.fdata"
    cmd = [bolt_tool(22, "perf2bolt"), "--pa"] + (["--ba"] if basic else []) + \
        ["-p", str(src), "-o", str(out), str(binary)]
    proc = run(cmd)
    assert proc.returncode == 0, proc.stderr
    return out.read_text(), proc.stdout + proc.stderr


def test_basic_fdata_equals_perf2bolt(two_statics, tmp_path):
    elf = ElfFile(two_statics)
    funcs = [f for f in Symbolizer(elf).functions if f.name in ("loc", "fa", "fb", "main")]
    assert sorted(f.name for f in funcs).count("loc") == 2
    samples = {}
    for i, f in enumerate(funcs):
        for off in range(0, min(f.size, 24), 3):
            samples[f.addr + off] = 10 * (i + 1) + off
    samples[0x10] = 5                      # outside every function
    prof = Profile(two_statics, "cpu-clock", "ip", samples=samples)
    ours = prof.render("fdata")
    theirs, report = perf2bolt_fdata(two_statics, prof.render("preagg"), tmp_path)
    assert ours.splitlines()[0] == theirs.splitlines()[0] == "no_lbr cpu-clock"
    assert sorted(ours.splitlines()[1:]) == sorted(theirs.splitlines()[1:])
    assert {"loc/1", "loc/2"} <= {l.split()[1] for l in ours.splitlines()[1:]}
    assert prof.stats["outside_functions"] == 5


def test_trace_dialects_give_the_same_fdata(two_statics, tmp_path):
    """T records and B/F records of the same traces: perf2bolt --pa makes
    the same fdata, but for mispredicts, which T cannot carry on LLVM 22."""
    elf = ElfFile(two_statics)
    fa = next(f for f in elf.functions() if f.name == "fa")
    main = next(f for f in elf.functions() if f.name == "main")
    traces = {(main.addr + 4, fa.addr, fa.addr + 4): (100, 7),
              (fa.addr + 4, 0, BR_ONLY): (3, 1),
              (0, main.addr, main.addr + 4): (2, 0)}
    prof = Profile(two_statics, "cycles", "lbr", traces=traces)
    (tmp_path / "t").mkdir()
    (tmp_path / "bf").mkdir()
    t_fdata, _ = perf2bolt_fdata(two_statics, prof.render("preagg"),
                                 tmp_path / "t", basic=False)
    bf_fdata, _ = perf2bolt_fdata(two_statics, prof.render("preagg-bf"),
                                  tmp_path / "bf", basic=False)
    assert t_fdata.strip() and bf_fdata.strip()

    def without_mispreds(text):
        rows = []
        for line in text.splitlines():
            f = line.split()
            if len(f) == 8:   # branch: ... mispreds count
                f[6] = "*"
            rows.append(" ".join(f))
        return sorted(rows)

    assert without_mispreds(t_fdata) == without_mispreds(bf_fdata)
    t_mis = {tuple(l.split()[:6]): l.split()[6] for l in t_fdata.splitlines()
             if len(l.split()) == 8}
    bf_mis = {tuple(l.split()[:6]): l.split()[6] for l in bf_fdata.splitlines()
              if len(l.split()) == 8}
    assert set(t_mis.values()) == {"0"}
    assert "7" in bf_mis.values()


# --- formatting big profiles in several processes ---------------------------

def trace_columns(n, seed=5):
    import random
    from array import array
    rng = random.Random(seed)
    frm = array("Q", (0x401000 + rng.randrange(1 << 20) for _ in range(n)))
    to = array("Q", (0x401000 + rng.randrange(1 << 20) for _ in range(n)))
    ft_end = array("Q", (BR_ONLY if rng.random() < 0.1 else
                         0x401000 + rng.randrange(1 << 20) for _ in range(n)))
    counts = array("Q", (rng.randrange(1, 1 << 40) for _ in range(n)))
    return frm, to, ft_end, counts


def one_line_per_row(columns):
    return "".join("T %x %x %x %d\n" % row for row in zip(*columns))


@pytest.mark.parametrize("n", [0, 1, 7, 20_011])
def test_parallel_formatting_equals_one_line_at_a_time(n, monkeypatch):
    """Rows cut into one slice per CPU, formatted by forked children, come
    back whole and in order (the threshold is lowered so that small
    inputs take the parallel path too)."""
    from ebpf_bolt import writers
    monkeypatch.setattr(writers, "PARALLEL_ROWS", 1)
    monkeypatch.setattr(writers.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    cols = trace_columns(n)
    assert writers.format_columns("T %x %x %x %d\n", cols) == one_line_per_row(cols)
