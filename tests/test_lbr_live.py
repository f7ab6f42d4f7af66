"""The live branch-stack path. On a machine without branch hardware (every
machine here): the probe's answer, the --mode lbr refusal, and the live
program itself, attached to cpu-clock, where every bpf_read_branch_records()
fails and is counted. On a machine with it: a real recording that BOLT
applies. The aggregation behind both is tested by replay (test_replay.py)."""
import errno
import fcntl
import os
import subprocess
import time

import pytest

from ebpf_bolt import perf_event as pe
from ebpf_bolt.bpf_object import BoltObject
from ebpf_bolt.cli import main
from ebpf_bolt.collector import choose_event, online_cpus, probe_event
from ebpf_bolt.errors import NoBranchHardware
from ebpf_bolt.collector import pid_namespace
from ebpf_bolt.drain import drain_traces
from ebpf_bolt.layout import USER_ADDR_END, Config, cache_sets

from conftest import bolt_profiled_functions, bolt_tool, run


def has_branch_hardware():
    return probe_event(pe.CYCLES_BRSTACK, 1000) is None


def skip_on_branch_hardware():
    if has_branch_hardware():
        pytest.skip("this machine samples branch stacks: no fallback to check")


@pytest.mark.no_lbr_hw
@pytest.mark.no_hw_cycles
@pytest.mark.root
def test_probe_finds_no_branch_stacks_and_falls_back_to_cpu_clock():
    skip_on_branch_hardware()
    if probe_event(pe.CYCLES, 1000) is None:
        pytest.skip("this machine has hardware cycles: IP samples use them")
    err = probe_event(pe.CYCLES_BRSTACK, 1000)
    assert err.errno in (errno.ENOENT, errno.EOPNOTSUPP, errno.EINVAL)
    notes = []
    mode, event = choose_event("auto", 1000, notes.append)
    assert (mode, event.name) == ("ip", "cpu-clock")
    assert len(notes) == 1 and "no branch-stack sampling" in notes[0]
    assert "fall-through" in notes[0]  # says what BOLT loses


@pytest.mark.no_lbr_hw
@pytest.mark.root
def test_mode_lbr_is_refused_with_a_hint(tmp_path, capsys):
    skip_on_branch_hardware()
    with pytest.raises(NoBranchHardware) as info:
        choose_event("lbr", 1000, lambda m: None)
    assert "VM" in info.value.hint and "LBR" in info.value.hint
    out = tmp_path / "p.preagg"
    rc = main(["--mode", "lbr", "-o", str(out), "--", "true"])
    err = capsys.readouterr().err
    assert rc == NoBranchHardware.exit_code
    assert "no branch-stack sampling" in err and "hint:" in err
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".ebpf-bolt")]


@pytest.mark.no_lbr_hw
@pytest.mark.root
def test_installed_command_refuses_mode_lbr(ebpf_bolt_cmd, tmp_path):
    skip_on_branch_hardware()
    proc = run([ebpf_bolt_cmd, "--mode", "lbr", "-o", str(tmp_path / "x"),
                "--", "true"])
    assert proc.returncode == NoBranchHardware.exit_code
    assert "hint:" in proc.stderr


@pytest.mark.root
def test_live_branch_program_counts_every_failed_read():
    """sample_branches attached to cpu-clock: on this machine the sample has
    no branch stack, so the read fails on every sample it keeps."""
    spinner = subprocess.Popen(["sh", "-c", "while :; do :; done"])
    try:
        dev, ino = pid_namespace()
        cfg = Config(target_tgid=spinner.pid, pidns_dev=dev, pidns_ino=ino,
                     user_addr_end=USER_ADDR_END)
        with BoltObject(cfg, {"trace_counts": 1024, "procs": 64,
                              "trace_cache": cache_sets(os.cpu_count())},
                        programs=["sample_branches"]) as obj:
            attr = pe.make_attr(pe.CPU_CLOCK, 2000)
            links = [obj.attach("sample_branches",   # attaching enables
                                pe.perf_event_open(attr, -1, cpu))
                     for cpu in online_cpus()]
            time.sleep(0.7)
            for link in links:
                fcntl.ioctl(link.perf_fd, pe.PERF_EVENT_IOC_DISABLE, 0)
            st = obj.stats()
            n = len(drain_traces(obj)[0])
    finally:
        spinner.kill()
        spinner.wait()
    kept = st["samples"] - st["other_process"]
    assert kept > 100, st                      # ~0.7 s x 2000 Hz on one CPU
    assert st["branch_read_failed"] == kept
    assert st["branch_entries"] == 0 and st["traces"] == 0 and n == 0


@pytest.mark.lbr_hw
@pytest.mark.root
def test_live_lbr_recording_on_branch_hardware(workload_pie, tmp_path):
    """Needs Intel LBR / AMD LbrExtV2 / ARM BRBE: records real branch
    stacks and checks that BOLT applies them."""
    if not has_branch_hardware():
        pytest.skip("no branch-sampling hardware on this machine")
    out = tmp_path / "w.preagg"
    rc = main(["--mode", "lbr", "-o", str(out), "--", str(workload_pie),
               "--scale", "50", "--early", "1", "--late", "0"])
    assert rc == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("E ") and any(l.startswith("T ") for l in lines)
    proc = run([bolt_tool(22, "llvm-bolt"), str(workload_pie), "-o",
                str(tmp_path / "w.bolt"), "--pa", "-p", str(out),
                "-dyno-stats"])
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    # hot_a, hot_b and hot_c at least
    assert bolt_profiled_functions(report) >= 3, report
