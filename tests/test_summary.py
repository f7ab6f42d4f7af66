"""The summary makes every loss impossible to miss (issue 8, item 6): a
"warning:" line with the figure, its share, and the option that fixes it,
in recording (cli.summary_lines) and replay (cli.replay_summary); exit
status 0, since the profile is written all the same.

Checked on figures (a Profile with chosen counters), and once end to end:
a replay that overflows --max-entries.
"""
import os
import re

import pytest

from ebpf_bolt import cli
from ebpf_bolt.elf import ElfFile
from ebpf_bolt.layout import COUNTERS
from ebpf_bolt.profile import Profile

from conftest import run

LOAD_BASE = 0x555555554000


def recorded(binary, mode="ip", fmt=None, **stats):
    """A Profile as Recorder.finish() leaves it, with chosen counters."""
    counters = dict.fromkeys(COUNTERS, 0)
    counters.update(outside_binary=0, traces=0)
    counters.update(stats)
    if mode == "ip":
        prof = Profile(binary, "cpu-clock", "ip", samples={0x1000: 100},
                       stats=counters)
    else:
        prof = Profile(binary, "cycles", "lbr",
                       traces={(0x1000, 0x1010, 0x1020): (100, 0)},
                       stats=counters)
    prof.info.update(
        pid=1234, frequency=4999, scope="per task, inherited by the threads "
        "and processes it creates", duration=1.0,
        stopped_by="target exited", distinct_addresses=1, map_entries=1024,
        table_slots=1366, table_bytes=1 << 15, kernel_bytes=1 << 16,
        ncpus=2, threads={}, is_pie=True, load_bias=LOAD_BASE,
        build_id=None, drain_seconds=0.0)
    return prof


def warnings_of(lines):
    return [line for line in lines if line.startswith("warning: ")]


@pytest.mark.parametrize("stats,expected", [
    ({"samples": 1000}, []),
    ({"samples": 1000, "map_full": 700},
     ["700 samples (70.0%) lost: the IP map was full; raise --max-entries "
      "(now 1,024), e.g. --max-entries 4096"]),
    ({"samples": 1000, "update_failed": 1},
     ["1 sample lost: the kernel refused IP map updates"]),
    ({"samples": 1000, "thread_map_full": 5},
     ["5 samples missing from the thread counts"]),
    # samples of the binary outside any function: a few (PLT stubs) are
    # usual, from 1% of the 100 in the binary on they are said
    ({"samples": 1000, "outside_functions": 0}, []),
    ({"samples": 1000, "outside_functions": 1},
     ["1 sample of the binary (1.0%) falls outside its function symbols "
      "and is not in the fdata; --format preagg keeps its address"]),
    ({"samples": 1000, "outside_functions": 5},
     ["5 samples of the binary (5.0%) fall outside its function symbols "
      "and are not in the fdata; --format preagg keeps their addresses"]),
    # a command's children are recorded: other processes are no loss
    ({"samples": 1000, "other_process": 990}, []),
    # what the translation in the kernel could not place
    ({"samples": 1000, "unresolved": 3},
     ["3 addresses could not be placed in an object (the kernel's mapping "
      "lookup was busy) and are not counted"]),
    ({"samples": 1000, "procs_full": 1},
     ["1 process not recorded: the process table was full"]),
    ({"samples": 1000, "objects_full": 2},
     ["2 mappings of objects beyond the object table's size are not "
      "counted"]),
])
def test_recording_ip_losses(workload_pie, stats, expected):
    prof = recorded(str(workload_pie), **stats)
    got = warnings_of(cli.summary_lines(prof, "fdata", "out.fdata", "x\n"))
    assert len(got) == len(expected), got
    for line, start in zip(got, expected):
        assert line.startswith("warning: " + start), line


@pytest.mark.parametrize("stats,expected", [
    ({"samples": 100, "traces": 3000}, []),
    ({"samples": 100, "traces": 3000, "traces_lost": 2100, "map_full": 2100},
     ["2,100 of 3,000 trace counts (70.0%) lost: the trace map was full "
      "(2,100 refused inserts); raise --max-entries (now 1,024), e.g. "
      "--max-entries 4096"]),
    ({"samples": 100, "traces": 3000, "traces_lost": 3, "update_failed": 2},
     ["3 of 3,000 trace counts (0.1%) lost: 2 trace map updates failed"]),
    ({"samples": 100, "traces": 3000, "stack_cut": 1},
     ["1 branch stack deeper than 64 entries: their entries beyond"]),
    ({"samples": 100, "traces": 3000, "branch_read_failed": 10},
     ["10 samples (10.0%) had no readable branch stack"]),
    ({"samples": 100, "traces": 3000, "scratch_failed": 4},
     ["4 samples lost: no per-CPU scratch space"]),
])
def test_recording_branch_losses(workload_pie, stats, expected):
    prof = recorded(str(workload_pie), mode="lbr", **stats)
    got = warnings_of(cli.summary_lines(prof, "preagg", "out.preagg", "x\n"))
    assert len(got) == len(expected), got
    for line, start in zip(got, expected):
        assert line.startswith("warning: " + start), line


@pytest.mark.parametrize("entries,refused,suggested", [
    (1024, 700, 4096),       # 1,724 x 1.25 = 2,155
    (1024, 1976, 4096),      # the README's example: 3,000 x 1.25 = 3,750
    (1024, 1, 2048),
    (64, 158_702, 262_144),  # 158,766 needed: 4096 was suggested
    (4096, 154_670, 262_144),
    (1 << 29, 1 << 29, 1 << 30),   # capped: the largest map the kernel makes
])
def test_raise_entries_suggests_room_for_every_refused_insert(
        entries, refused, suggested):
    """The map's size plus the inserts it refused is room for every key
    of the run (each refused insert is at most one new key): the hint
    suggests the power of two at or above that, with a quarter more, up to
    the largest map check_max_entries accepts."""
    from ebpf_bolt.collector import TABLE_MAX_ENTRIES
    got = cli._raise_entries(entries, refused)
    assert got == (f"raise --max-entries (now {entries:,}), e.g. "
                   f"--max-entries {suggested}"), got
    assert suggested >= min(entries + refused, TABLE_MAX_ENTRIES)
    assert cli._raise_entries(None, refused) == "raise --max-entries"


def test_replay_outside_binary(workload_pie):
    """Most traces outside the binary in a replay: the load base or the
    binary given is wrong."""
    prof = recorded(str(workload_pie), mode="lbr", samples=10, traces=100,
                    traces_outside_binary=80)
    got = warnings_of(cli.replay_summary(prof, "preagg", 10, "p.preagg"))
    assert got == ["warning: 80 of 100 trace counts (80.0%) have neither "
                   "end in the binary: check --binary and --load-base"]
    prof.stats["traces_outside_binary"] = 50
    assert warnings_of(cli.replay_summary(prof, "preagg", 10)) == []


@pytest.mark.root
def test_replay_overflow_warns(workload_pie, ebpf_bolt_cmd, tmp_path):
    """3,000 distinct traces into a map with room for 150 (a table of 200
    slots, all within a probe's reach: it takes exactly 200): 2,800 counts
    (93.3%) are lost; the warning gives the figure and an --max-entries
    that holds them all, and the replay with it warns of nothing."""
    text = ElfFile(workload_pie).text_segments()[0]
    assert text.memsz > 8 * 3000
    base = LOAD_BASE + text.vaddr
    stacks = "".join(f"0x{base + 8 * i:x}/0x{base + 8 * i + 4:x}/P/-/-/0\n"
                     for i in range(3000))
    args = [ebpf_bolt_cmd, "replay", "--binary", str(workload_pie),
            "--load-base", hex(LOAD_BASE), "-o", str(tmp_path / "p.preagg")]
    res = run(args + ["--max-entries", "150"], input=stacks)
    assert res.returncode == 0, res.stderr   # the profile is still written
    m = re.search(r"ebpf-bolt: warning: ([\d,]+) of 3,000 trace counts "
                  r"\(([\d.]+)%\) lost: the trace map was full .*"
                  r"raise --max-entries \(now 150\), e\.g\. "
                  r"--max-entries (\d+)", res.stderr)
    assert m, res.stderr
    assert int(m.group(1).replace(",", "")) == 3000 - 200
    assert m.group(2) == "93.3"
    assert int(m.group(3)) >= 3000
    res = run(args + ["--max-entries", m.group(3)], input=stacks)
    assert res.returncode == 0, res.stderr
    assert "warning:" not in res.stderr, res.stderr


@pytest.mark.root
def test_recording_overflow_warns(workload_pie, ebpf_bolt_cmd, tmp_path):
    """A recording into a 32-entry IP map (the workload samples ~200
    addresses): the samples refused are a warning with their share of the
    process's samples and a bigger --max-entries; exit 0, profile written."""
    out = tmp_path / "small.fdata"
    res = run([ebpf_bolt_cmd, "--max-entries", "32", "-o", str(out), "--",
               str(workload_pie), "--scale", "10"], timeout=120)
    assert res.returncode == 0, res.stderr
    assert out.read_text().startswith("no_lbr cpu-clock\n")
    kept = int(re.search(r"samples: ([\d,]+) of the recorded processes",
                         res.stderr).group(1).replace(",", ""))
    m = re.search(r"ebpf-bolt: warning: ([\d,]+) samples \(([\d.]+)%\) lost: "
                  r"the IP map was full; raise --max-entries \(now 32\), "
                  r"e\.g\. --max-entries (\d+)", res.stderr)
    assert m, res.stderr
    lost = int(m.group(1).replace(",", ""))
    assert 0 < lost < kept
    assert float(m.group(2)) == pytest.approx(100 * lost / kept, abs=0.05)
    assert int(m.group(3)) >= 32 + lost   # room for every refused insert


def test_counts_of_one_read_as_one(workload_pie):
    """'1 sample', '1 line', '1 branch stack', '1 entry': never '1 samples'."""
    prof = recorded(str(workload_pie), samples=3, other_process=1)
    text = "\n".join(cli.summary_lines(prof, "fdata", "p.fdata", "x\n"))
    assert "1 sample of tasks" in text
    assert "(2 bytes, 1 line)" in text
    prof = recorded(str(workload_pie), mode="lbr", samples=1,
                    branch_entries=1, traces_outside_binary=0)
    text = "\n".join(cli.replay_summary(prof, "preagg", 1))
    assert "replayed 1 branch stack: 1 entry," in text
    assert not re.search(r"\b1 (samples|lines|branch stacks|entries)\b", text)


def apply_line(lines):
    (line,) = [x for x in lines if x.startswith("apply it: ")]
    return line


@pytest.mark.parametrize("kind", ["/dev/null", "fifo", "/dev/stdout",
                                  "/dev/fd/N", "/proc/self/fd/N"])
def test_apply_line_for_output_that_holds_no_profile(workload_pie, tmp_path,
                                                     kind):
    """-o naming a device, a FIFO or one of the process's descriptors: the
    name holds no profile afterwards, so the apply command has FILE, as
    for stdout (it had -data /dev/null, -data fifo, -p /dev/stdout)."""
    fd = os.open(tmp_path / "behind-the-fd", os.O_WRONLY | os.O_CREAT)
    try:
        output = {"/dev/null": "/dev/null", "/dev/stdout": "/dev/stdout",
                  "fifo": str(tmp_path / "fifo"), "/dev/fd/N": f"/dev/fd/{fd}",
                  "/proc/self/fd/N": f"/proc/self/fd/{fd}"}[kind]
        if kind == "fifo":
            os.mkfifo(output)
        for mode, fmt in (("ip", "fdata"), ("lbr", "preagg")):
            prof = recorded(str(workload_pie), mode=mode, samples=100,
                            traces=100)
            line = apply_line(cli.summary_lines(prof, fmt, output, "x\n"))
            assert line.startswith("apply it: save it with -o FILE, then: "), \
                line
            assert output not in line and "behind-the-fd" not in line, line
            assert re.search(r"(-data|-p) FILE\b", line), line
    finally:
        os.close(fd)


def test_apply_line_names_a_regular_file(workload_pie, tmp_path):
    """A regular file, also through a symlink, is named as given."""
    out = tmp_path / "p.fdata"
    out.write_text("x\n")
    link = tmp_path / "link.fdata"
    link.symlink_to(out)
    for path in (out, link):
        prof = recorded(str(workload_pie), samples=100)
        line = apply_line(cli.summary_lines(prof, "fdata", str(path), "x\n"))
        assert line.startswith("apply it: ") and "save it" not in line, line
        assert f"-data {path} " in line, line


@pytest.mark.parametrize("in_object,shown", [(10, True), (50, False)])
def test_summary_names_the_objects_that_got_most(in_object, shown):
    """Under half of the user-space samples in the default object: the
    summary names the objects that got most, and the --binary to give."""
    prof = recorded("/bin/sh", samples=1000)
    prof.info.update(object_samples=in_object, user_samples=100,
                     top_objects=[("/usr/bin/cc1", 80, 40),
                                  ("/usr/lib/libc.so.6", 10, 41)])
    lines = cli.summary_lines(prof, "fdata", "out.fdata", "no_lbr\n")
    named = [l for l in lines if "/usr/bin/cc1: 80 samples in 40 processes"
             in l]
    advice = [l for l in lines if "--binary /usr/bin/cc1" in l]
    assert bool(named) == shown and bool(advice) == shown, lines


@pytest.mark.parametrize("fmt,source", [("fdata", "preagg-bf"),
                                        ("yaml", "preagg")])
def test_summary_names_the_perf2bolt_that_made_it(workload_pie, tmp_path,
                                                  fmt, source):
    """A branch recording written as fdata or YAML: the line after what was
    written names the perf2bolt that made it, its version and the records
    it read; a profile ebpf-bolt writes itself names none."""
    from ebpf_bolt import bolt
    prof = recorded(str(workload_pie), mode="lbr", samples=100, traces=100)
    text = prof.render(fmt)
    lines = cli.summary_lines(prof, fmt, str(tmp_path / f"p.{fmt}"), text)
    perf2bolt, _ = bolt.find_tool("perf2bolt")
    made = (f"made by {perf2bolt} (LLVM {bolt.tool_version(perf2bolt)}) "
            f"from {source} records")
    assert made in lines, lines
    assert lines[lines.index(made) - 1].startswith(f"wrote {fmt} profile "), \
        lines
    prof = recorded(str(workload_pie), mode="lbr", samples=100, traces=100)
    lines = cli.summary_lines(prof, "preagg-bf", "p.preagg", "x\n")
    assert not [line for line in lines if line.startswith("made by")], lines
