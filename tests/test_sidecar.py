"""Provenance beside every profile (ebpf_bolt/provenance.py): FILE.json
beside a single profile, the fields in each index.json entry of a
directory, none for stdout; a sidecar never replaces what is not a regular
file, and the profile itself holds no extra line (BOLT refuses one)."""
import json
import os
import random
import socket
import time

import pytest

from conftest import run
from ebpf_bolt import provenance
from ebpf_bolt.elf import ElfFile
from test_replay import LOAD_BASE, SEED, Pools, brstack_line

pytestmark = [pytest.mark.root]


@pytest.fixture(scope="module")
def stacks_file(workload_pie, tmp_path_factory):
    rng = random.Random(SEED + 40)
    pools = Pools(workload_pie, LOAD_BASE, rng)
    path = tmp_path_factory.mktemp("stacks") / "stacks.txt"
    path.write_text("".join(brstack_line(pools.random_stack(rng, 16), rng)
                            + "\n" for _ in range(200)))
    return path


def replay_args(workload_pie, stacks_file, *more):
    return ["replay", "--binary", f"{workload_pie}@{LOAD_BASE:x}",
            "--max-entries", "4096", str(stacks_file)] + list(more)


def test_replay_writes_sidecar_with_provenance(workload_pie, stacks_file,
                                               ebpf_bolt_cmd, tmp_path):
    out = tmp_path / "app.preagg"
    before = time.time()
    res = run([ebpf_bolt_cmd] + replay_args(workload_pie, stacks_file,
                                            "-o", str(out)))
    after = time.time()
    assert res.returncode == 0, res.stderr
    side = json.loads((tmp_path / "app.preagg.json").read_text())
    assert tuple(side) == provenance.SIDECAR_KEYS
    assert provenance.problem(side) is None
    assert side["path"] == str(workload_pie)
    assert side["build_id"] == ElfFile(str(workload_pie)).build_id
    assert (side["mode"], side["format"], side["event"], side["frequency"],
            side["inputs"]) == ("branch", "preagg", "replay", None, 1)
    assert side["hosts"] == [socket.gethostname()]
    assert side["bytes"] == out.stat().st_size
    text = out.read_text()
    assert side["samples"] == sum(int(line.split()[-1]) for line in
                                  text.splitlines() if line[0] in "TR")
    # the replay's own run, not some other clock
    start = provenance.parse_utc(side["start"])
    end = provenance.parse_utc(side["end"])
    assert before - 1 <= start <= end <= after + 1
    # nothing but records in the profile itself
    assert all(line[0] in "ETR" for line in text.splitlines())


def test_stdout_gets_no_sidecar(workload_pie, stacks_file, ebpf_bolt_cmd,
                                tmp_path):
    res = run([ebpf_bolt_cmd] + replay_args(workload_pie, stacks_file),
              cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("E ")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("what", ["symlink", "fifo", "directory"])
def test_sidecar_never_replaces_what_is_not_a_file(
        what, workload_pie, stacks_file, ebpf_bolt_cmd, tmp_path):
    """FILE.json a symlink (to a file that must stay), a FIFO or a
    directory: refused before the replay (exit 6), and neither the profile
    nor anything else is written."""
    out = tmp_path / "app.preagg"
    side = tmp_path / "app.preagg.json"
    keep = tmp_path / "precious"
    keep.write_text("keep me\n")
    if what == "symlink":
        side.symlink_to(keep)
    elif what == "fifo":
        os.mkfifo(side)
    else:
        side.mkdir()
    res = run([ebpf_bolt_cmd] + replay_args(workload_pie, stacks_file,
                                            "-o", str(out)), timeout=60)
    assert res.returncode == 6, res.stderr
    assert "sidecar" in res.stderr and "hint:" in res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()
    assert keep.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["app.preagg.json", "precious"])


def test_sidecar_never_replaces_an_input(workload_pie, stacks_file,
                                         ebpf_bolt_cmd, tmp_path):
    """-o X where X.json is the stacks file being replayed: refused before
    the replay, so no profile is written either."""
    stacks = tmp_path / "app.preagg.json"
    stacks.write_bytes(stacks_file.read_bytes())
    res = run([ebpf_bolt_cmd] + replay_args(workload_pie, stacks,
                                            "-o", str(tmp_path / "app.preagg")))
    assert res.returncode == 6, res.stderr
    assert "same file as the input" in res.stderr
    assert stacks.read_bytes() == stacks_file.read_bytes()
    assert not (tmp_path / "app.preagg").exists()


def test_directory_index_carries_provenance(workload_pie, workload_nopie,
                                            stacks_file, ebpf_bolt_cmd,
                                            tmp_path):
    out = tmp_path / "profiles"
    res = run([ebpf_bolt_cmd, "replay", "--binary",
               f"{workload_pie}@{LOAD_BASE:x}", "--binary",
               str(workload_nopie), "--max-entries", "4096",
               str(stacks_file), "-o", str(out)])
    assert res.returncode == 0, res.stderr
    index = json.loads((out / "index.json").read_text())["objects"]
    assert len(index) == 2
    for entry in index:
        assert provenance.problem(entry) is None
        assert (entry["mode"], entry["event"], entry["inputs"]) == (
            "branch", "replay", 1)
        assert entry["build_id"] == ElfFile(entry["path"]).build_id
    # sidecars are for single files: the index is the directory's
    assert not list(out.glob("*.json.json")) and \
        sorted(p.name for p in out.iterdir() if p.suffix == ".json") == \
        ["index.json"]


def test_python_write_gives_a_recorded_profile_its_sidecar(workload_pie,
                                                           tmp_path):
    """Profile.write (ebpf_bolt.collect()'s result): the sidecar of a
    recorded profile, its recording's times; none for stdout."""
    from ebpf_bolt.profile import Profile
    prof = Profile(str(workload_pie), "cpu-clock", "ip",
                   samples={0x1139: 7, 0x1140: 3})
    prof.info.update(build_id=ElfFile(str(workload_pie)).build_id,
                     frequency=999, started=1764882380.0,
                     stopped=1764882390.5, processes=3)
    out = tmp_path / "app.preagg"
    prof.write(out, "preagg")
    side = json.loads((tmp_path / "app.preagg.json").read_text())
    assert provenance.problem(side, provenance.SIDECAR_KEYS) is None
    assert (side["mode"], side["format"], side["event"], side["frequency"],
            side["samples"], side["processes"]) == (
        "ip", "preagg", "cpu-clock", 999, 10, 3)
    assert (side["start"], side["end"]) == (
        "2025-12-04T21:06:20.000000Z", "2025-12-04T21:06:30.500000Z")
    assert side["bytes"] == out.stat().st_size
