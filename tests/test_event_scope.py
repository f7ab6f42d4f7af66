"""Which tasks the sampling events interrupt.

A profiler on a production host should not interrupt the CPUs of other
services. ebpf-bolt opens:
- for a command: one per-task event, inherited by its threads;
- for -p PID in its own cgroup (v2): per-CPU events of that cgroup;
- otherwise: CPU-wide events (every CPU, other processes filtered out in
  the kernel and counted as other_process).
Each case runs the workload next to two busy processes that are not the
target: the number of samples the BPF program saw for them
(other_process) tells which events were opened. Late threads (started
after recording began) must be recorded in every case.
"""
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ebpf_bolt.collector import Recorder, cgroup2_mount

pytestmark = pytest.mark.root

ARGS = ["--scale", "30", "--early", "1", "--late", "2", "--wait-signal"]


@pytest.fixture
def neighbours():
    """Two busy processes on the machine's CPUs, not the target."""
    procs = [subprocess.Popen(["sh", "-c", "while :; do :; done"])
             for _ in range(2)]
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def record(target_pid=None, command=None, ready_file=None, notes=None,
           after_start=None):
    """Record with late threads released once sampling runs; the Profile.
    A command's "ready" line is awaited in `ready_file` (its stdout)."""
    rec = Recorder(pid=target_pid, command=command, duration=None,
                   mode="ip", count_threads=True,
                   notice=None if notes is None else notes.append)
    try:
        rec.start()
        if after_start:
            after_start()
        deadline = time.monotonic() + 30
        while ready_file and b"ready" not in ready_file.read_bytes():
            assert time.monotonic() < deadline, "workload never ready"
            time.sleep(0.01)
        os.kill(rec.target.pid, signal.SIGUSR1)
        rec.run()
        return rec.finish()
    except BaseException:
        # a failed test must not leave its command waiting for the signal
        if command is not None and rec.target and rec.target.alive():
            os.kill(rec.target.pid, signal.SIGKILL)
        raise
    finally:
        rec.close()


@contextlib.contextmanager
def output_to(out, err):
    """This process's stdout and stderr (a command inherits them) to files."""
    saved = [os.dup(1), os.dup(2)]
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(f, fd)
        os.close(f)
    try:
        yield
    finally:
        for fd, old in zip((1, 2), saved):
            os.dup2(old, fd)
            os.close(old)


def late_tids(err_text):
    return {int(line.split()[2]) for line in err_text.splitlines()
            if line.startswith(("tid late", "tid grand"))}


@pytest.mark.kernel_matrix
def test_command_events_follow_its_tasks_only(workload_pie, neighbours, tmp_path):
    out, err = tmp_path / "out", tmp_path / "err"
    with output_to(out, err):
        prof = record(command=[str(workload_pie)] + ARGS, ready_file=out)
    assert prof.info["scope"].startswith("per task"), prof.info
    st = prof.stats
    assert st["samples"] > 1000, st
    assert st["other_process"] == 0, st   # the neighbours were never sampled
    late = late_tids(err.read_text())
    assert len(late) == 4 and late <= set(prof.info["threads"]), prof.info


@pytest.fixture
def own_cgroup():
    mount = cgroup2_mount()
    assert mount, "no cgroup v2 hierarchy mounted"
    path = Path(mount) / f"ebpf-bolt-test-{os.getpid()}"
    path.mkdir()
    yield path
    for _ in range(100):   # the workload's exit reaches the cgroup soon after
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.05)
    path.rmdir()


def start(binary):
    proc = subprocess.Popen([str(binary)] + ARGS, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_pid_in_own_cgroup_samples_only_while_it_runs(workload_pie, neighbours,
                                                      own_cgroup):
    proc = start(workload_pie)
    try:
        (own_cgroup / "cgroup.procs").write_text(str(proc.pid))
        prof = record(target_pid=proc.pid)
    finally:
        proc.kill() if proc.poll() is None else None
        _, err = proc.communicate()
    assert prof.info["scope"] == f"on each CPU while cgroup /{own_cgroup.name} runs"
    st = prof.stats
    assert st["samples"] > 1000 and st["other_process"] == 0, st
    late = late_tids(err)
    assert len(late) == 4 and late <= set(prof.info["threads"]), prof.info


def test_pid_in_root_cgroup_samples_every_cpu(workload_pie, neighbours):
    mount = cgroup2_mount()
    proc = start(workload_pie)
    try:
        (Path(mount) / "cgroup.procs").write_text(str(proc.pid))
        prof = record(target_pid=proc.pid)
    finally:
        proc.kill() if proc.poll() is None else None
        _, err = proc.communicate()
    assert prof.info["scope"] == "on every CPU"
    st = prof.stats
    # CPU-wide events also fire for the neighbours; the program drops them
    assert st["samples"] > 1000 and st["other_process"] > 100, st
    late = late_tids(err)
    assert len(late) == 4 and late <= set(prof.info["threads"]), prof.info


def test_threads_in_a_threaded_subtree_are_all_covered(workload_pie, neighbours,
                                                       own_cgroup):
    """Threads of one process may sit in different cgroups of a threaded
    subtree: the events go on the subtree's domain, which holds them all."""
    leaf = own_cgroup / "t"
    leaf.mkdir()
    proc = start(workload_pie)
    try:
        (leaf / "cgroup.type").write_text("threaded")
        (own_cgroup / "cgroup.procs").write_text(str(proc.pid))
        # the main thread (which starts the late ones) into the leaf; the
        # early worker stays in the domain
        (leaf / "cgroup.threads").write_text(str(proc.pid))
        prof = record(target_pid=proc.pid)
    finally:
        proc.kill() if proc.poll() is None else None
        _, err = proc.communicate()
        for _ in range(100):
            try:
                leaf.rmdir()
                break
            except OSError:
                time.sleep(0.05)
    assert prof.info["scope"] == f"on each CPU while cgroup /{own_cgroup.name} runs"
    assert prof.stats["other_process"] == 0, prof.stats
    workers = {int(line.split()[2]) for line in err.splitlines()
               if line.startswith(("tid early", "tid late", "tid grand"))}
    assert len(workers) == 5 and workers <= set(prof.info["threads"]), prof.info


def test_move_to_another_cgroup_is_reported(workload_pie, own_cgroup):
    mount = Path(cgroup2_mount())
    proc = start(workload_pie)
    notes = []
    try:
        (own_cgroup / "cgroup.procs").write_text(str(proc.pid))
        prof = record(target_pid=proc.pid, notes=notes, after_start=lambda: (
            mount / "cgroup.procs").write_text(str(proc.pid)))
    finally:
        proc.kill() if proc.poll() is None else None
        proc.communicate()
    assert prof.info["scope"].endswith(f"cgroup /{own_cgroup.name} runs")
    assert any(f"moved from cgroup /{own_cgroup.name} to /" in n
               for n in notes), notes
