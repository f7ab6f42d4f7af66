"""End to end on the branch-stack (LBR) path, with branch stacks recorded in
software from real runs of the demo workload.

No machine here has branch-sampling hardware, so tests/brtrace.py records
the taken branches of the workload under qemu-user, cuts them into 32-deep
stacks every ~1000 taken branches, and the stacks go through the kernel's
aggregation with ebpf_bolt.replay (the same BPF worker as live LBR
sampling). The result must be what BOLT needs:
- perf2bolt finds (almost) no trace that contradicts the disassembly;
- llvm-bolt applies it (non-empty profile, executed instructions > 0) and the
  optimized binary computes the same checksum;
- on the icache workload, under cachegrind with an 8 KiB 2-way I1, the
  binary optimized with the LBR profile misses the I-cache at least 10% less
  than the original, and less than one optimized with an IP profile that
  ebpf-bolt recorded from a native run;
- in the multi-threaded shares mode, each thread's branches stay apart
  (no mismatching traces) and the 5:3:2 split of hot_a/hot_b/hot_c shows.
Figures are printed (run with -s).
"""
import re
import time
from pathlib import Path

import pytest

import brtrace
from conftest import bolt_tool, run
from ebpf_bolt.elf import ElfFile
from ebpf_bolt.replay import replay

pytestmark = [pytest.mark.root, pytest.mark.slow]

RECORD_SCALE = 1        # icache --scale under qemu: ~2.6 M taken branches
CACHEGRIND_SCALE = 2    # ~46 M instructions: a few seconds under cachegrind
IP_SCALE = 200          # native run for the IP profile: ~2 s, ~10k samples
PERIOD = 1009           # taken branches between samples (+-25%, seeded)
SEED = 7
MAX_MISMATCH_PCT = 5.0
BOLT_FLAGS = ["-reorder-blocks=ext-tsp", "-reorder-functions=cdsort",
              "-split-functions", "-split-all-cold", "-dyno-stats"]
I1 = "--I1=8192,2,64"


def say(*args):
    print("[lbr-e2e]", *args, flush=True)


def checksum(text):
    lines = [line for line in text.splitlines() if line.startswith("checksum ")]
    assert lines, f"no checksum line in {text!r}"
    return lines[-1]


def native_checksum(binary, *args):
    res = run([str(binary), *args])
    assert res.returncode == 0, res.stderr
    return checksum(res.stdout)


def record_and_replay(binary, args, out_dir, name):
    """Record `binary args` under qemu, replay through the kernel, write the
    pre-aggregated profile. Returns (recording, profile, profile path)."""
    t0 = time.monotonic()
    rec = brtrace.record([str(binary), *args], period=PERIOD, seed=SEED)
    t1 = time.monotonic()
    assert rec.returncode == 0, rec.stderr
    assert rec.stats["unknown_blocks"] == 0, rec.stats
    assert rec.stacks, rec.stats
    assert all(len(st) == brtrace.DEFAULT_DEPTH for st in rec.stacks)
    prof = replay(binary, rec.stacks, load_base=rec.load_base, cpus=[0, 1])
    path = Path(out_dir) / f"{name}.preagg"
    path.write_text(prof.render("preagg"))
    t2 = time.monotonic()
    say(f"{name}: qemu load base 0x{rec.load_base:x}; {rec.stats['tb_executions']:,} "
        f"TB executions, {rec.stats['branches']:,} taken branches in "
        f"{rec.stats['threads']} thread(s); {len(rec.stacks):,} stacks of "
        f"{brtrace.DEFAULT_DEPTH}; kernel: {prof.stats['traces']:,} traces "
        f"-> {len(prof.traces):,} distinct in the binary "
        f"({prof.stats['traces_outside_binary']:,} left out: outside); "
        f"recording {t1 - t0:.1f} s, replay {t2 - t1:.1f} s")
    assert prof.stats["samples"] == len(rec.stacks), prof.stats
    assert prof.stats["traces_lost"] == 0 and prof.stats["map_full"] == 0
    assert prof.traces
    return rec, prof, path


def perf2bolt(binary, profile, out):
    """Run perf2bolt --pa and return its figures."""
    res = run([bolt_tool(22, "perf2bolt"), "--pa", "-p", str(profile),
               "-o", str(out), str(binary)])
    text = res.stdout + res.stderr
    assert res.returncode == 0, text
    fig = {}
    for key, pat in (("mismatch", r"traces mismatching disassembled function "
                                  r"contents: (\d+) \(([\d.]+)%\)"),
                     ("out_of_range", r"out of range traces involving unknown "
                                      r"regions: (\d+) \(([\d.]+)%\)")):
        m = re.search(pat, text)
        assert m, f"perf2bolt did not report {key}:\n{text}"
        fig[key] = int(m.group(1))
        fig[key + "_pct"] = float(m.group(2))
    m = re.search(r"read (\d+) aggregated", text)
    assert m, text
    fig["records"] = int(m.group(1))
    m = re.search(r"(\d+) out of (\d+) functions in the binary .* have "
                  r"non-empty execution profile", text)
    assert m, text
    fig["profiled_functions"] = int(m.group(1))
    assert Path(out).stat().st_size > 0
    return fig


def bolt(binary, out, profile_args):
    """llvm-bolt with the given profile; returns its dyno-stats figures.
    Judged by its report, not by its exit code alone."""
    res = run([bolt_tool(22, "llvm-bolt"), str(binary), "-o", str(out),
               *profile_args, *BOLT_FLAGS])
    text = res.stdout + res.stderr
    assert res.returncode == 0, text
    m = re.search(r"(\d+) out of \d+ functions in the binary .* have "
                  r"non-empty execution profile", text)
    assert m and int(m.group(1)) > 0, text
    execd = re.findall(r"^\s*(\d+) : executed instructions", text, re.M)
    assert execd and int(execd[0]) > 0, f"empty profile applied:\n{text}"
    taken = re.search(r"^\s*\d+ : taken branches \(([-+][\d.]+)%\)", text, re.M)
    hot = re.search(r"splitting separates (\d+) hot bytes", text)
    assert Path(out).exists()
    return {"executed": int(execd[0]),
            "taken_change_pct": float(taken.group(1)) if taken else None,
            "hot_bytes": int(hot.group(1)) if hot else None}


def cachegrind_i1(binary, scale):
    res = run(["valgrind", "--tool=cachegrind", "--cache-sim=yes", I1,
               "--cachegrind-out-file=/dev/null", str(binary),
               "--mode", "icache", "--scale", str(scale)])
    assert res.returncode == 0, res.stderr
    m = re.search(r"I1\s+misses:\s+([\d,]+)", res.stderr)
    assert m, res.stderr
    return int(m.group(1).replace(",", "")), checksum(res.stdout)


# --- the recorder on a hand-written qemu log ---------------------------------

SYNTH_LOG = """\
----------------
IN: _start
0x4000001000:  55                       pushq    %rbp
0x4000001001:  48 b8 00 00 00 00 00 00  movabsq  $0, %rax
0x4000001009:  00 00
0x400000100b:  74 13                    je       0x4000001020

Trace 0: 0x7f0000000100 [0000000000000000/0000004000001000/1040c0b3/00000200] _start
----------------
IN: _start
0x400000100d:  e8 00 00 00 00           callq    0x4000001012

Trace 0: 0x7f0000000200 [0000000000000000/000000400000100d/1040c0b3/00000200] _start
----------------
IN: _start
0x4000001012:  f3 48 ab                 rep stosq %rax, (%rdi)

Trace 0: 0x7f0000000300 [0000000000000000/0000004000001012/1040c0b3/00000200] _start
Trace 0: 0x7f0000000300 [0000000000000000/0000004000001012/1040c0b3/00000200] _start
----------------
IN: _start
0x4000001015:  48 01 c3                 addq     %rax, %rbx

Trace 0: 0x7f0000000400 [0000000000000000/0000004000001015/1040c0b3/00000200] _start
----------------
IN: _start
0x4000001018:  eb e6                    jmp      0x4000001000

Trace 0: 0x7f0000000500 [0000000000000000/0000004000001018/1040c0b3/00000200] _start
Trace 0: 0x7f0000000100 [0000000000000000/0000004000001000/1040c0b3/00000200] _start
----------------
IN: other
0x7f00a0000000:  c3                       retq

Trace 1: 0x7f0000000600 [0000000000000000/00007f00a0000000/1040c0b3/00000200] other
----------------
IN: _start
0x4000001020:  c3                       retq

Trace 0: 0x7f0000000700 [0000000000000000/0000004000001020/1040c0b3/00000200] _start
Trace 1: 0x7f0000000200 [0000000000000000/000000400000100d/1040c0b3/00000200] _start
Trace 0: 0x7f0000000600 [0000000000000000/00007f00a0000000/1040c0b3/00000200] other
Stopped execution of TB chain before 0x7f0000000600 [00007f00a0000000] other
Trace 0: 0x7f0000000600 [0000000000000000/00007f00a0000000/1040c0b3/00000200] other
Trace 0: 0x7f0000000100 [0000000000000000/0000004000001000/1040c0b3/00000200] _start
"""


def test_brtrace_parses_qemu_log():
    """Branches vs fall-throughs, long instructions, rep iterations, calls to
    the next instruction, threads, an interrupted TB, the load base and the
    cutting into stacks, on a log in qemu 7.2's format."""
    seen = []
    entry_code = bytes.fromhex("5548b80000000000000000741300000000")
    tr = brtrace.BranchTracer(depth=2, period=1, jitter=0, entry=0x1000,
                              entry_code=entry_code, is_pie=True,
                              on_branch=lambda cpu, f, t: seen.append((cpu, f, t)))
    tr.feed_lines(SYNTH_LOG.splitlines(keepends=True))
    assert tr.load_base == 0x4000000000
    base = 0x4000000000
    assert seen == [
        ("0", base + 0x100d, base + 0x1012),     # call to the next insn: taken
        # rep iteration and 0x1012 -> 0x1015 -> 0x1018: no branch
        ("0", base + 0x1018, base + 0x1000),     # jmp
        ("0", base + 0x100b, base + 0x1020),     # je taken
        # thread 1: 0x7f00a0000000 -> 0x100d is its own, not thread 0's
        ("1", 0x7F00A0000000, base + 0x100d),
        ("0", base + 0x1020, 0x7F00A0000000),    # ret into a library
        # the stopped TB runs again: no branch to itself
        ("0", 0x7F00A0000000, base + 0x1000),
    ]
    assert tr.stats["threads"] == 2 and tr.stats["stopped"] == 1
    assert tr.stats["unknown_blocks"] == 0
    # depth 2, a sample at every branch once a thread has 2: newest first
    e = {(f, t): (f, t, False) for _, f, t in seen}
    assert tr.stacks == [
        [e[base + 0x1018, base + 0x1000], e[base + 0x100d, base + 0x1012]],
        [e[base + 0x100b, base + 0x1020], e[base + 0x1018, base + 0x1000]],
        [e[base + 0x1020, 0x7F00A0000000], e[base + 0x100b, base + 0x1020]],
        [e[0x7F00A0000000, base + 0x1000], e[base + 0x1020, 0x7F00A0000000]],
    ]
    # the text form that replay also reads
    text = brtrace.stacks_to_text(tr.stacks[:1])
    assert text == ["0x4000001018/0x4000001000/P/-/-/0 "
                    "0x400000100d/0x4000001012/P/-/-/0"]
    # with branch types: the type of the instruction at `from`
    typed = brtrace.BranchTracer(depth=2, period=1, jitter=0, entry=0x1000,
                                 entry_code=entry_code, is_pie=True,
                                 branch_types=True)
    typed.feed_lines(SYNTH_LOG.splitlines(keepends=True))
    assert [[e[:3] for e in st] for st in typed.stacks] == tr.stacks
    types = {e[:2]: e[3] for st in typed.stacks for e in st}
    assert types == {(base + 0x100d, base + 0x1012): brtrace.BR_CALL,
                     (base + 0x1018, base + 0x1000): brtrace.BR_UNCOND,
                     (base + 0x100b, base + 0x1020): brtrace.BR_COND,
                     (base + 0x1020, 0x7F00A0000000): brtrace.BR_RET,
                     (0x7F00A0000000, base + 0x1000): brtrace.BR_RET}
    assert brtrace.stacks_to_text(typed.stacks[2:3]) == [
        "0x4000001020/0x7f00a0000000/P/-/-/0/RET/- "
        "0x400000100b/0x4000001020/P/-/-/0/COND/-"]


# --- icache mode: perf2bolt, BOLT and the I-cache -----------------------------

@pytest.fixture(scope="module")
def icache_lbr(workload_pie, tmp_path_factory):
    out = tmp_path_factory.mktemp("lbr-icache")
    args = ["--mode", "icache", "--scale", str(RECORD_SCALE)]
    rec, prof, path = record_and_replay(workload_pie, args, out, "icache")
    assert checksum(rec.stdout) == native_checksum(workload_pie, *args), \
        "the program computed something else under qemu"
    return out, rec, prof, path


def test_icache_profile_matches_disassembly(workload_pie, icache_lbr):
    out, rec, prof, path = icache_lbr
    fig = perf2bolt(workload_pie, path, out / "icache.fdata")
    say(f"icache perf2bolt: {fig['records']:,} records, "
        f"{fig['mismatch']:,} traces mismatching ({fig['mismatch_pct']}%), "
        f"{fig['out_of_range']:,} out of range ({fig['out_of_range_pct']}%), "
        f"{fig['profiled_functions']} functions profiled")
    assert fig["mismatch_pct"] <= MAX_MISMATCH_PCT
    assert fig["out_of_range_pct"] <= MAX_MISMATCH_PCT
    assert fig["profiled_functions"] >= 96      # the hot functions at least


def test_icache_bolt_lbr_beats_original_and_ip(workload_pie, icache_lbr,
                                               ebpf_bolt_cmd):
    out, rec, prof, path = icache_lbr
    lbr_bin = out / "workload.bolt.lbr"
    lbr = bolt(workload_pie, lbr_bin, ["--pa", "-p", str(path)])

    ip_fdata = out / "ip.fdata"
    res = run([ebpf_bolt_cmd, "-o", str(ip_fdata), "--", str(workload_pie),
               "--mode", "icache", "--scale", str(IP_SCALE)])
    assert res.returncode == 0, res.stderr
    assert ip_fdata.read_text().startswith("no_lbr"), "expected an IP profile"
    ip_samples = sum(int(line.split()[-1])
                     for line in ip_fdata.read_text().splitlines()[1:])
    ip_bin = out / "workload.bolt.ip"
    ip = bolt(workload_pie, ip_bin, ["-data", str(ip_fdata)])

    expect = native_checksum(workload_pie, "--mode", "icache",
                             "--scale", str(CACHEGRIND_SCALE))
    misses = {}
    for name, binary in (("original", workload_pie), ("lbr", lbr_bin),
                         ("ip", ip_bin)):
        misses[name], got = cachegrind_i1(binary, CACHEGRIND_SCALE)
        assert got == expect, f"{name} binary computes {got}, not {expect}"
        assert native_checksum(binary, "--mode", "icache", "--scale", "3") == \
            native_checksum(workload_pie, "--mode", "icache", "--scale", "3")

    cut_lbr = 1 - misses["lbr"] / misses["original"]
    cut_ip = 1 - misses["ip"] / misses["original"]
    say(f"BOLT lbr: {lbr['executed']:,} executed instructions in profile, "
        f"taken branches {lbr['taken_change_pct']}%, {lbr['hot_bytes']} hot bytes")
    say(f"BOLT ip ({ip_samples:,} samples): {ip['executed']:,} executed "
        f"instructions in profile, taken branches {ip['taken_change_pct']}%, "
        f"{ip['hot_bytes']} hot bytes")
    say(f"cachegrind {I1} --scale {CACHEGRIND_SCALE}: I1 misses original "
        f"{misses['original']:,}, LBR-BOLTed {misses['lbr']:,} "
        f"({-100 * cut_lbr:+.1f}%), IP-BOLTed {misses['ip']:,} "
        f"({-100 * cut_ip:+.1f}%)")
    assert cut_lbr >= 0.10, misses
    assert misses["lbr"] < misses["ip"], misses


# --- shares mode: threads -------------------------------------------------------

def test_shares_threads_kept_apart(workload_pie, tmp_path):
    """Two worker threads run at once under qemu (their log lines
    interleave): per-thread branch sequences give traces that match the
    disassembly, and hot_a/hot_b/hot_c get 50/30/20% of the branches."""
    args = ["--mode", "shares", "--scale", "1", "--early", "2", "--late", "0"]
    rec, prof, path = record_and_replay(workload_pie, args, tmp_path, "shares")
    assert checksum(rec.stdout) == native_checksum(workload_pie, *args)
    assert rec.stats["threads"] >= 3, rec.stats
    fig = perf2bolt(workload_pie, path, tmp_path / "shares.fdata")
    say(f"shares perf2bolt: {fig['records']:,} records, {fig['mismatch']:,} "
        f"traces mismatching ({fig['mismatch_pct']}%), {fig['out_of_range']:,} "
        f"out of range ({fig['out_of_range_pct']}%)")
    assert fig["mismatch_pct"] <= MAX_MISMATCH_PCT
    assert fig["out_of_range_pct"] <= MAX_MISMATCH_PCT

    funcs = {s.name: s for s in ElfFile(workload_pie).functions()}
    into = {}
    for name in ("hot_a", "hot_b", "hot_c"):
        f = funcs[name]
        into[name] = sum(c for (_, to, _), (c, _) in prof.traces.items()
                         if f.addr <= to < f.addr + f.size)
    total = sum(into.values())
    shares = {n: c / total for n, c in into.items()}
    say("shares of traces landing in hot_a/b/c: " +
        ", ".join(f"{n} {100 * s:.1f}%" for n, s in shares.items()))
    for name, want in (("hot_a", 0.5), ("hot_b", 0.3), ("hot_c", 0.2)):
        assert abs(shares[name] - want) < 0.04, shares


def test_icache_yaml_profile_through_perf2bolt(workload_pie, icache_lbr):
    """--format yaml: the installed perf2bolt turns the replayed traces into
    BOLT's YAML profile, which llvm-bolt applies (-data reads YAML too)."""
    out, rec, prof, path = icache_lbr
    yaml_path = out / "icache.yaml"
    yaml_path.write_text(prof.render("yaml"))
    head = yaml_path.read_text()[:400]
    assert "profile-flags:   [ lbr ]" in head, head
    fig = bolt(workload_pie, out / "workload.bolt.yaml", ["-data", str(yaml_path)])
    assert fig["executed"] > 0
