"""--interval: windows that add up, key by key, to the whole.

The kernel counts into one of two sets of tables and caches, chosen
through an array of maps (active_set); ending a window switches the set,
flushes the old set's caches into the old set's tables, drains them and
clears them (BoltObject.switch_set, clear_set). Replayed stacks and IPs cut
into many windows, a switch falling inside a run of identical stacks,
must sum to one replay of the same input, count for count."""
import ctypes
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from array import array
from collections import Counter
from pathlib import Path

import pytest

import perf2bolt_rules as rules
from ebpf_bolt import _libbpf, cli
from ebpf_bolt.collector import Recorder
from ebpf_bolt.replay import Replayer, pack_stacks
from ebpf_bolt.windows import Windows
from ip_replayer import IpReplayer
from test_replay import LOAD_BASE, make_stacks

# the tests that load the object or record face the kernel (kernel_matrix:
# CI runs them again under Debian 12's 6.1); the command line's refusals
# come before anything is loaded
pytestmark = pytest.mark.root

SEED = 20261204
ENTRIES = 1 << 17


def cpus():
    return sorted(os.sched_getaffinity(0))


def add_traces(total, traces):
    for key, (count, mispreds) in traces.items():
        c, m = total.get(key, (0, 0))
        total[key] = (c + count, m + mispreds)


@pytest.fixture(scope="module")
def window_stacks(workload_pie):
    """Random and loop stacks with a run of 600 identical stacks in the
    middle (a hot loop sampled over and over): its traces sit in the trace
    cache, pending, when a window ends inside the run."""
    stacks = make_stacks(workload_pie, LOAD_BASE, n=2400, seed=SEED)
    hot = max(stacks, key=len)[:32]
    return stacks[:1200] + [hot] * 600 + stacks[1200:]


def cuts(n, windows, rng, inside):
    """`windows - 1` cut points in range(1, n), one of them at `inside`."""
    points = set(rng.sample(range(1, n), windows - 2)) | {inside}
    return sorted(points)


@pytest.mark.kernel_matrix
def test_replayed_windows_sum_to_the_whole(workload_pie, window_stacks):
    """25 windows (24 switches), on alternating CPUs; one switch falls in
    the run of identical stacks. Their profiles summed key by key equal
    one replay of all the stacks, and perf2bolt's rules."""
    stacks = window_stacks
    rng = random.Random(SEED)
    points = cuts(len(stacks), 25, rng, inside=1200 + 300)
    cs = cpus()
    pie = [(str(workload_pie), LOAD_BASE)]
    with Replayer(pie, max_entries=ENTRIES) as rep:
        rep.feed(stacks, cpu=cs[0])
        whole = dict(rep.profile().traces.items())
    total, windows = {}, 0
    with Replayer(pie, max_entries=ENTRIES, windows=True) as rep:
        for n, (a, b) in enumerate(zip([0] + points, points + [len(stacks)])):
            rep.feed(stacks[a:b], cpu=cs[n % len(cs)])
            if b < len(stacks):
                prof, = rep.end_window()
                add_traces(total, prof.traces)
                windows += 1
        prof, = rep.profiles()   # the last window: the set in use
        add_traces(total, prof.traces)
        windows += 1
        st = rep.stats()
    assert windows == 25
    assert total == whole
    expected, counters = rules.aggregate(stacks)
    view, _ = rules.object_view(expected, [
        (LOAD_BASE + s.vaddr, LOAD_BASE + s.vaddr + s.filesz, LOAD_BASE)
        for s in prof.elf.text_segments()])
    assert total == view
    assert (st["map_full"], st["traces_lost"]) == (0, 0)


@pytest.mark.kernel_matrix
def test_both_cpus_at_once_across_windows(workload_pie, window_stacks):
    """Each window replayed on both CPUs at the same time (shared table,
    both CPUs' caches pending at the switch), 21 windows."""
    stacks = window_stacks
    cs = cpus()[:2]
    pie = [(str(workload_pie), LOAD_BASE)]
    with Replayer(pie, max_entries=ENTRIES) as rep:
        for cpu in cs:
            rep.feed(stacks, cpu=cpu)
        whole = dict(rep.profile().traces.items())
    total = {}
    step = -(-len(stacks) // 21)
    with Replayer(pie, max_entries=ENTRIES, windows=True) as rep:
        for i in range(0, len(stacks), step):
            rep.feed_at_once([(cpu, stacks[i:i + step]) for cpu in cs])
            prof, = rep.end_window()
            add_traces(total, prof.traces)
        prof, = rep.profiles()
        assert not prof.traces      # everything went to a window
    assert total == whole


@pytest.mark.kernel_matrix
def test_ip_windows_sum_to_the_whole(test_object):
    """IP samples through sample_ip's own code (replay_ips), cut into 30
    windows, one switch inside a run of one hot IP."""
    rng = random.Random(SEED + 1)
    base = 0x555555554000
    ips = [base + 0x1000 + 4 * rng.randrange(1 << 14) for _ in range(40000)]
    ips[20000:20000] = [base + 0x40] * 5000
    points = cuts(len(ips), 30, rng, inside=22500)
    cs = cpus()
    total = Counter()
    with IpReplayer(test_object, max_entries=1 << 16, windows=True) as rep:
        for n, (a, b) in enumerate(zip([0] + points, points + [len(ips)])):
            rep.feed(ips[a:b], cpu=cs[n % len(cs)])
            if b < len(ips):
                total.update(rep.end_window())
        total.update(rep.counts())
        st = rep.stats()
    assert total == Counter(ips)
    assert st["samples"] == len(ips) and st["map_full"] == 0


# --- live: the CLI and the Recorder on cpu-clock ---------------------------

WORKLOAD = ["--scale", "400", "--early", "2", "--late", "0"]  # ~4 s, 2 CPUs
S_RECORD = re.compile(r"S ([0-9a-f]+) ([0-9]+)")


def s_records(path):
    """{address: count} of a preagg file of IP samples (S records)."""
    out = Counter()
    for line in Path(path).read_text().splitlines():
        m = S_RECORD.fullmatch(line)
        if m:
            out[int(m.group(1), 16)] += int(m.group(2))
        else:
            assert line.startswith("E "), line
    return out


@pytest.mark.kernel_matrix
def test_live_windows_sum_to_the_total(ebpf_bolt_cmd, workload_pie, tmp_path):
    """--interval 1 over a ~4 s workload: 3 windows or more, each complete
    when it appears, and their S records summed equal the total's; each
    window's sidecar covers its own span, one after the other, and
    `ebpf-bolt merge` of the windows gives the total."""
    out = tmp_path / "w.preagg"
    res = subprocess.run([ebpf_bolt_cmd, "--mode", "ip", "--interval", "1",
                          "--format", "preagg", "-o", str(out), "--",
                          str(workload_pie), *WORKLOAD],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    windows = sorted(p for p in tmp_path.glob("w.preagg.*")
                     if p.suffix != ".json")
    assert len(windows) >= 3, res.stderr
    assert [w.name for w in windows] == [f"w.preagg.{n:04d}" for n in
                                          range(1, len(windows) + 1)]
    total = s_records(out)
    summed = Counter()
    for w in windows:
        summed.update(s_records(w))
    assert sum(total.values()) > 1000
    assert summed == total
    spans = [json.loads(Path(f"{w}.json").read_text()) for w in windows]
    whole = json.loads(Path(f"{out}.json").read_text())
    assert spans[0]["start"] == whole["start"]
    assert spans[-1]["end"] == whole["end"]
    for a, b in zip(spans, spans[1:]):
        assert a["end"] == b["start"] and a["start"] < a["end"], (a, b)
    assert [s["samples"] for s in spans] == [sum(s_records(w).values())
                                             for w in windows]
    merged = tmp_path / "merged.preagg"
    res_m = subprocess.run([ebpf_bolt_cmd, "merge", *map(str, windows),
                            "-o", str(merged)], capture_output=True,
                           text=True, timeout=120)
    assert res_m.returncode == 0, res_m.stderr
    assert s_records(merged) == total
    assert f"windows: {len(windows)} windows of 1 s written" in res.stderr
    assert "earlier run" not in res.stderr
    # the table's bytes are both sets', its slots and room each set's
    m = re.search(r"the IPs' table ([\d.]+) MiB \(2 sets of ([\d,]+) slots, "
                  r"shared by all CPUs: room for ([\d,]+) IPs each;",
                  res.stderr)
    assert m, res.stderr
    slots, room = (int(g.replace(",", "")) for g in m.groups()[1:])
    assert room < slots and float(m[1]) * 2**20 >= 2 * slots * 16
    assert not list(tmp_path.glob(".ebpf-bolt-*"))


def test_collect_with_an_interval(workload_pie):
    """collect(interval=): on_window gets each window's profiles, numbered
    from 1, while recording; what it returns is their total, key by key."""
    from ebpf_bolt import collect
    got = []

    def on_window(n, profiles, early):
        got.append((n, Counter(profiles[0].samples), early))
    profile = collect(command=[str(workload_pie), *WORKLOAD], mode="ip",
                      interval=0.7, on_window=on_window)
    assert [n for n, _, _ in got] == list(range(1, len(got) + 1))
    assert len(got) >= 3 and profile.info["windows"] == len(got)
    summed = Counter()
    for _, samples, _ in got:
        summed.update(samples)
    assert sum(profile.samples.values()) > 1000
    assert summed == Counter(profile.samples)
    assert profile.info["returncode"] == 0


def test_collect_ctrl_c_while_a_window_ends(workload_pie):
    """Ctrl-C (SIGINT, Python's own handler) while on_window takes window
    2: it waits until the window is handed over whole, then stops the
    recording; the windows received still sum to the total."""
    from ebpf_bolt import collect
    got = []

    def on_window(n, profiles, early):
        if n == 2:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.3)
        got.append(Counter(profiles[0].samples))
    profile = collect(command=[str(workload_pie), *WORKLOAD], mode="ip",
                      interval=0.5, on_window=on_window)
    assert len(got) == profile.info["windows"] == 3
    summed = Counter()
    for samples in got:
        summed.update(samples)
    assert summed == Counter(profile.samples) and sum(summed.values()) > 100


@pytest.mark.parametrize("interval", [0, -1, True, "1", float("nan"),
                                      float("inf")])
def test_collect_refuses_a_bad_interval(interval):
    from ebpf_bolt import collect, errors
    with pytest.raises(errors.UsageError, match="invalid interval"):
        collect(command=["true"], interval=interval)


@pytest.mark.kernel_matrix
def test_windows_of_an_earlier_run_are_warned_about(ebpf_bolt_cmd,
                                                    workload_pie, tmp_path):
    """Windows numbered past this run's last one (an earlier, longer run's)
    are named in a warning: adding FILE.* up would count them."""
    out = tmp_path / "w.preagg"
    for name in ("w.preagg.0050", "w.preagg.0007", "w.preagg.x0003",
                 "v.preagg.0009"):
        (tmp_path / name).write_text("E cpu-clock\n")
    res = subprocess.run([ebpf_bolt_cmd, "--mode", "ip", "--interval", "5",
                          "--format", "preagg", "-o", str(out), "--",
                          str(workload_pie), "--scale", "20"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "w.preagg.0001").exists()
    assert (f"warning: 2 windows past this recording's 1 "
            f"({tmp_path / 'w.preagg.0007'} first) are an earlier run's"
            in res.stderr), res.stderr


class RunCount:
    """bpf_prog_info.run_cnt of a program, counted while BPF_ENABLE_STATS
    (BPF_STATS_RUN_TIME) is held: how often the kernel ran it."""
    RUN_CNT, INFO_SIZE = 200, 232   # offsetof(struct bpf_prog_info, run_cnt)

    def __init__(self):
        self.lib = ctypes.CDLL(_libbpf.SONAME, use_errno=True)
        self.lib.bpf_enable_stats.argtypes = [ctypes.c_int]
        self.lib.bpf_obj_get_info_by_fd.argtypes = [
            ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
        self.fd = self.lib.bpf_enable_stats(0)   # BPF_STATS_RUN_TIME
        assert self.fd >= 0, os.strerror(ctypes.get_errno())

    def __call__(self, prog_fd):
        info = ctypes.create_string_buffer(self.INFO_SIZE)
        size = ctypes.c_uint32(self.INFO_SIZE)
        assert self.lib.bpf_obj_get_info_by_fd(prog_fd, info,
                                               ctypes.byref(size)) == 0
        return int.from_bytes(info.raw[self.RUN_CNT:self.RUN_CNT + 8],
                              sys.byteorder)

    def close(self):
        os.close(self.fd)


# every way sample_ip leaves a sample out of the tables, each counted once
SKIPPED = ("other_process", "before_exec", "kernel_ip", "anon_ip",
           "unresolved", "map_full", "update_failed")


@pytest.mark.kernel_matrix
@pytest.mark.parametrize("max_entries", [None, 300],
                         ids=["default", "early-drains"])
def test_live_every_run_is_in_one_window(workload_pie, max_entries):
    """Over all windows, the samples in the tables (every object's) plus
    every skip and drop counter equal the times the kernel ran sample_ip
    (run_cnt under BPF_ENABLE_STATS): no sample is lost or counted twice
    across a switch. With a table of 300 keys, windows are drained early
    (reported), and the run still loses nothing to a full table."""
    # icache mode: 96 hot functions, thousands of IPs
    args = (["--mode", "icache", "--scale", "300"] if max_entries
            else WORKLOAD)
    notes = []
    runs = RunCount()
    try:
        with Recorder(command=[str(workload_pie), *args], mode="ip",
                      max_entries=max_entries, windows=True) as rec:
            rec.start()
            written = []
            windows = Windows(rec, 1.0, lambda n, p, early: written.append(
                (n, p, early)), notes.append)
            rec.run(poll=windows.poll)
            windows.finish()
            run_cnt = runs(rec.obj.program_fd("sample_ip"))
            st = rec.obj.stats()
            total = sum(windows.total.values())
            profile = rec.profiles[0]
    finally:
        runs.close()
    assert windows.count == len(written) >= 3
    assert total == sum(windows.sums) > 1000
    assert st["samples"] == run_cnt
    assert total + sum(st[k] for k in SKIPPED) == run_cnt, st
    # the binary's windows add up to its total profile, key by key
    summed = Counter()
    for _, (window,), _ in written:
        summed.update(window.samples)
    assert summed == Counter(profile.samples)
    if max_entries:
        assert windows.early >= 1 and len(notes) == windows.early
        assert "drained early" in notes[0]
        assert st["map_full"] == 0
        assert len(windows.total) > max_entries   # more than one table holds


# --- switching while the programs run ---------------------------------------

def replay_rcu(rep, count, cpu):
    """One BPF_PROG_RUN of replay_branches_rcu (the tests' object) over
    `count` loaded stacks on `cpu`: the worker run inside rcu_read_lock(),
    as a sample's program is."""
    args = (ctypes.c_uint64 * 2)(0, count)
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        return rep.obj.run_program("replay_branches_rcu", args)
    finally:
        os.sched_setaffinity(0, old)


@pytest.mark.kernel_matrix
def test_switching_while_replaying_loses_nothing(workload_pie, window_stacks,
                                                 test_object):
    """One CPU replays the stacks over and over, in runs of 1,024 (each
    about a millisecond in the kernel, inside rcu_read_lock as a sample's
    program is), while the other CPU ends 25 windows: switches land while
    a run is in the kernel. Each window is drained and cleared only once no
    run still counts into it (the array of maps' update waits for them),
    so the windows sum, count for count, to the stacks' traces times the
    runs. Checked: a switch through a plain array the program reads (no
    wait) fails this."""
    cs = cpus()
    if len(cs) < 2:
        pytest.skip("needs two CPUs: one replays while the other switches")
    stacks = window_stacks[:1024]
    pie = [(str(workload_pie), LOAD_BASE)]
    with Replayer(pie, max_entries=ENTRIES) as rep:
        rep.feed(stacks, cpu=cs[0])
        once = dict(rep.profile().traces.items())
    total, done, errors = {}, [], []
    stop = threading.Event()
    with Replayer(pie, max_entries=ENTRIES, windows=True, path=test_object,
                  programs=["replay_branches_rcu"]) as rep:
        count = rep.load(pack_stacks(stacks)[0])

        def replayer():
            try:
                while not stop.is_set():
                    done.append(replay_rcu(rep, count, cs[1]))
            except BaseException as e:   # re-raised below
                errors.append(e)
        thread = threading.Thread(target=replayer)
        thread.start()
        try:
            for _ in range(25):
                time.sleep(0.002)
                prof, = rep.end_window()
                add_traces(total, prof.traces)
        finally:
            stop.set()
            thread.join()
        prof, = rep.profiles()
        add_traces(total, prof.traces)
    assert not errors and done == [count] * len(done)
    runs = len(done)
    assert runs >= 25
    assert total == {k: (c * runs, m * runs) for k, (c, m) in once.items()}


# --- the command line --------------------------------------------------------

@pytest.mark.parametrize("output", [None, "-", "/dev/null", "fifo",
                                    "/dev/stdout"])
def test_interval_needs_a_file_or_directory(output, tmp_path, capsys):
    """--interval writes files beside -o FILE or into -o DIR: stdout, a
    device, a FIFO or a descriptor is refused before anything runs, in one
    line with a hint (exit 2), and nothing is written."""
    if output == "fifo":
        output = str(tmp_path / "fifo")
        os.mkfifo(output)   # opening it would wait for a reader
    args = ["--interval", "1"] + (["-o", output] if output else [])
    code = cli.main(args + ["--", "true"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert len(err) == 2 and err[0].startswith("ebpf-bolt: error: --interval")
    assert err[1].startswith("  hint: give --interval a regular file or a "
                             "directory with -o")
    assert sorted(os.listdir(tmp_path)) == (["fifo"] if "fifo" in
                                            (output or "") else [])


@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon"])
def test_interval_must_be_seconds(value, capsys, tmp_path):
    code = cli.main(["--interval", value, "-o", str(tmp_path / "p"), "--",
                     "true"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and err[0].startswith("ebpf-bolt: error: invalid "
                                           "--interval")
    assert err[1].startswith("  hint: ") and not os.listdir(tmp_path)


@pytest.mark.kernel_matrix
def test_directory_windows_sum_to_the_total(ebpf_bolt_cmd, workload_pie,
                                            tmp_path):
    """--all-objects --interval: DIR/0001/ and on, each with its index.json,
    and the total in DIR with index.json last; per object, the windows'
    samples add up to the total's."""
    out = tmp_path / "profiles"
    res = subprocess.run([ebpf_bolt_cmd, "--mode", "ip", "--interval", "1",
                          "--all-objects", "-o", str(out), "--",
                          str(workload_pie), "--scale", "300", "--early", "2",
                          "--late", "0"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    windows = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(windows) >= 3
    assert [w.name for w in windows] == [f"{n:04d}" for n in
                                          range(1, len(windows) + 1)]
    summed = Counter()
    for w in windows:
        for entry in json.loads((w / "index.json").read_text())["objects"]:
            assert (w / entry["profile"]).is_file()
            summed[entry["path"]] += entry["samples"]
    total = {e["path"]: e["samples"] for e in
             json.loads((out / "index.json").read_text())["objects"]}
    assert summed == total and total[str(workload_pie)] > 1000
    assert not [p for p in out.iterdir() if p.name.startswith(".ebpf-bolt")]
    assert f"{len(windows)} windows of 1 s written" in res.stderr


@pytest.mark.kernel_matrix
def test_stop_signal_ends_the_last_window(ebpf_bolt_cmd, workload_pie,
                                          tmp_path):
    """SIGINT while windows are written every 0.3 s (a window may be
    ending when it arrives: it waits until the window is written): the
    recording ends normally, and the windows still sum to the total."""
    target = subprocess.Popen([str(workload_pie), "--scale", "2000",
                               "--early", "1", "--late", "0"],
                              stdout=subprocess.DEVNULL)
    try:
        out = tmp_path / "s.preagg"
        rec = subprocess.Popen([ebpf_bolt_cmd, "--mode", "ip", "--interval",
                                "0.3", "--format", "preagg", "-o", str(out),
                                "-p", str(target.pid), "30"],
                               stderr=subprocess.PIPE, text=True)
        # the signal once windows are being written (a slow machine, such
        # as a kernel under emulation, may still be starting up at 2 s)
        first = tmp_path / "s.preagg.0001"
        deadline = time.monotonic() + 90
        while not first.exists() and rec.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        rec.send_signal(signal.SIGINT)
        _, err = rec.communicate(timeout=60)
    finally:
        target.kill()
        target.wait()
    assert rec.returncode == 0, err
    assert "stopped by SIGINT" in err
    windows = sorted(p for p in tmp_path.glob("s.preagg.*")
                     if p.suffix != ".json")
    assert len(windows) >= 3
    summed = Counter()
    for w in windows:
        summed.update(s_records(w))
    assert summed == s_records(out) and sum(summed.values()) > 100


def index_samples(index, names=None):
    """{build id (or path): samples} of an index.json; `names`, a dict,
    gets each one's path."""
    out = Counter()
    for entry in json.loads(Path(index).read_text())["objects"]:
        key = entry["build_id"] or entry["path"]
        out[key] += entry["samples"]
        if names is not None:
            names[key] = entry["path"]
    return out


@pytest.mark.kernel_matrix
def test_windows_keep_objects_of_exited_processes(ebpf_bolt_cmd, tmp_path):
    """--all-objects --interval over hundreds of short processes: libc and
    ld.so are numbered by processes that exit before their files are
    opened. Each window reopens them through a process that maps them now
    (the shell), so per object the windows' samples add up to the
    total's. An object no live process maps when its window ends (awk,
    between two runs) may miss a window: that is said in a warning."""
    out = tmp_path / "short"
    script = ('for i in $(seq 600); do '
              'awk "BEGIN{for(i=0;i<30000;i++)s+=i}"; done')
    res = subprocess.run([ebpf_bolt_cmd, "--mode", "ip", "--interval", "0.2",
                          "--all-objects", "-o", str(out), "--", "sh", "-c",
                          script], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    windows = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(windows) >= 3, res.stderr
    summed = Counter()
    for w in windows:
        summed.update(index_samples(w / "index.json"))
    names = {}
    total = index_samples(out / "index.json", names)
    libc = [k for k, path in names.items() if "/libc.so" in path]
    assert libc and total[libc[0]] > 20, res.stderr
    assert summed[libc[0]] == total[libc[0]]
    assert sum(total.values()) > 100
    if summed != total:
        assert re.search(r"warning: window \d+: .*samples get no profile "
                         "in this window", res.stderr), res.stderr


@pytest.mark.parametrize("taken", ["directory", "fifo", "sidecar-directory",
                                   "long-name"])
def test_window_names_are_checked_before_recording(taken, tmp_path, capsys):
    """A window's name taken by a directory or FIFO (FILE.0002, or its
    sidecar FILE.0002.json), or too long for the directory (FILE.0001.json
    past NAME_MAX, room kept for 5 digits): refused before anything runs,
    in one line with a hint (exit 6), and nothing is written."""
    out = tmp_path / "w.fdata"
    if taken == "directory":
        (tmp_path / "w.fdata.0002").mkdir()
    elif taken == "fifo":
        os.mkfifo(tmp_path / "w.fdata.0007")
    elif taken == "sidecar-directory":
        (tmp_path / "w.fdata.0002.json").mkdir()
    else:
        name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
        out = tmp_path / ("p" * (name_max - len(".00000.json") + 1))
    before = sorted(os.listdir(tmp_path))
    code = cli.main(["--mode", "ip", "--interval", "1", "-o", str(out),
                     "--", "true"])
    err = capsys.readouterr().err.splitlines()
    assert code == 6, err
    assert len(err) == 2 and err[0].startswith("ebpf-bolt: error: "
                                               "--interval: "), err
    assert err[1].startswith("  hint: ")
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.kernel_matrix
@pytest.mark.parametrize("taken", ["directory", "FIFO"])
def test_a_window_not_written_is_a_warning(taken, ebpf_bolt_cmd, workload_pie,
                                           tmp_path):
    """A window that cannot be written when it ends (its name made a
    directory or a FIFO after the start: a FIFO's open would wait for a
    reader, with the stop signals deferred): a warning names it and the
    cause, and recording, the later windows and the total go on."""
    out = tmp_path / "w.preagg"
    rec = subprocess.Popen([ebpf_bolt_cmd, "--mode", "ip", "--interval", "1",
                            "--format", "preagg", "-o", str(out), "--",
                            str(workload_pie), *WORKLOAD],
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "w.preagg.0001").exists():
            assert time.monotonic() < deadline and rec.poll() is None
            time.sleep(0.01)
        if taken == "FIFO":
            os.mkfifo(tmp_path / "w.preagg.0002")
        else:
            (tmp_path / "w.preagg.0002").mkdir()
        _, err = rec.communicate(timeout=60)
    finally:
        if rec.poll() is None:
            rec.kill()
            rec.wait()
    assert rec.returncode == 0, err
    assert re.search(r"warning: window 2 \(.*w\.preagg\.0002\) was not "
                     rf"written: .*{taken}.*the windows no longer add up "
                     "to the total", err), err
    assert (tmp_path / "w.preagg.0003").is_file(), err
    assert sum(s_records(out).values()) > 1000
    assert "warning: 1 window not written (2)" in err


@pytest.mark.parametrize("sets", [1, 2])
def test_max_entries_hint_names_the_default_of_its_sets(sets):
    """--max-entries refused with --interval: the hint's default is that of
    one set of two (half the budget), as the recording would take."""
    from ebpf_bolt import collector, errors
    with pytest.raises(errors.UsageError) as e:
        collector.check_max_entries(collector.TABLE_MAX_ENTRIES + 1,
                                    "trace_counts", sets)
    default = collector.default_max_entries(
        "trace_counts", collector.MAP_BUDGET // sets)
    assert f"default is {default:,}:" in e.value.hint
    assert ("per set" in e.value.hint) == (sets > 1)


@pytest.mark.kernel_matrix
def test_early_drain_while_a_window_is_written(workload_pie):
    """Keys arriving fast (the icache workload: thousands of IPs) into a
    table of 300, while each window's writing takes 0.4 s: the table that
    counts meanwhile is watched, and drained early as it fills, so nothing
    is lost to a full table; had anything been, the summary's warning says
    so (loss_warnings)."""
    notes, written = [], []

    def write(n, profiles, early):
        written.append((n, profiles, early))
        time.sleep(0.4)   # a slow disk, or many objects to render

    with Recorder(command=[str(workload_pie), "--mode", "icache", "--scale",
                           "300"], mode="ip", max_entries=300,
                  windows=True) as rec:
        rec.start()
        windows = Windows(rec, 1.0, write, notes.append)
        rec.run(poll=windows.poll)
        windows.finish()
        st = rec.obj.stats()
        profile = rec.profiles[0]
    assert windows.early >= 2 and len(notes) == windows.early
    assert [n for n, _, _ in written] == list(range(1, windows.count + 1))
    summed = Counter()
    for _, (window,), _ in written:
        summed.update(window.samples)
    assert summed == Counter(profile.samples)
    lost = cli.loss_warnings(profile, "fdata")
    assert st["map_full"] == 0, (st["map_full"], lost)
    assert not [w for w in lost if "lost" in w]


@pytest.mark.kernel_matrix
def test_no_window_ends_past_the_duration(workload_pie):
    """-p/duration with --interval: window ends (here 0.3 s each, a slow
    write) do not stretch the recording: none starts once the duration
    has passed, the run stops at it (or, if a window was being written
    then, right after that write), and the summary's drain and
    translation time leaves out writing the last window. Times are taken
    from the run, not assumed: a window end takes ~0.1 s here and several
    times that under an emulated kernel (kernel-check)."""
    written, finished, ends = [], [], []

    def write(n, profiles, early):
        written.append(n)
        # the last window (written after the run) takes 3 s: the drain
        # time must leave that out, however slow the drain itself is
        time.sleep(3.0 if hasattr(rec, "t_stop") else 0.3)
        finished.append(time.monotonic())

    with Recorder(command=[str(workload_pie), *WORKLOAD], mode="ip",
                  duration=1.5, windows=True) as rec:
        rec.start()
        end_window = rec.end_window

        def timed_end(*args, **kwargs):
            ends.append(time.monotonic())
            return end_window(*args, **kwargs)
        rec.end_window = timed_end
        windows = Windows(rec, 0.5, write)
        rec.run(poll=windows.poll)
        ran = rec.t_stop - rec.t_start
        windows.finish()
        profile = rec.profiles[0]
        rec.target.signal(signal.SIGKILL)   # it runs on past the duration
        rec.target.wait()
    assert rec.stopped_by == "duration"
    assert ends and all(t - rec.t_start < 1.5 for t in ends), \
        [t - rec.t_start for t in ends]
    # the run may end later than the duration only by the work of a window
    # whose end had begun before it (none may begin after: `ends` above):
    # its end (switch, drain; slow under an emulated kernel) and its write.
    # The n-th end_window is the n-th write's; finish() writes the last.
    due = rec.t_start + 1.5
    in_progress = [f for e, f in zip(ends, finished) if e < due]
    stop_by = max([due] + in_progress) - rec.t_start + 0.15
    assert 1.5 <= ran < stop_by, (ran, stop_by)
    assert len(written) >= 2 and written == list(range(1, len(written) + 1))
    assert profile.info["drain_seconds"] < 3.0, profile.info


@pytest.mark.kernel_matrix
def test_trace_in_two_slots_of_set_b_is_added_up(workload_pie):
    """test_replay's duplicate slot, in the second set: after one window,
    the worker counts into set 1, whose raced notes (not set 0's) tell the
    drain which rows to add up. Made by hand as there: the `to` word of
    set 1's hottest slot cleared between two replays and put back."""
    import mmap
    from ebpf_bolt.bpf_object import MAPS
    from ebpf_bolt.drain import drain_traces
    from ebpf_bolt.layout import RACED_MAX
    stacks = make_stacks(workload_pie, LOAD_BASE)
    with Replayer([(str(workload_pie), LOAD_BASE)], max_entries=ENTRIES,
                  sets=1, windows=True) as rep:
        rep.feed(stacks[:10])
        rep.end_window()
        assert rep.obj.active == 1
        rep.feed(stacks)
        per_set = rep.obj.map_entries["trace_counts"] * MAPS["trace_counts"][1]
        with mmap.mmap(rep.obj.map_fd("trace_counts"),
                       -(-2 * per_set // mmap.PAGESIZE) * mmap.PAGESIZE) as mem:
            words = array("Q", mem[per_set:2 * per_set])
            slot = max(range(len(words) // 5), key=lambda i: words[5 * i + 3])
            at = per_set + (5 * slot + 1) * 8   # word 1 of a slot: `to`
            saved = mem[at:at + 8]
            mem[at:at + 8] = bytes(8)
            rep.feed(stacks)
            mem[at:at + 8] = saved
        races, froms = rep.obj.read_raced(1)
        assert races > 0 and len(froms) == min(races, RACED_MAX)
        assert rep.obj.read_raced(0) == (0, [])
        frm, to, ft_end, _, _ = drain_traces(rep.obj, 1)
        assert len(set(zip(frm, to, ft_end))) == len(frm)
        got = dict(rep.profile().traces.items())
    with Replayer([(str(workload_pie), LOAD_BASE)], max_entries=ENTRIES,
                  sets=1) as ref:   # the same two replays, in one set
        ref.feed(stacks)
        ref.feed(stacks)
        assert got == dict(ref.profile().traces.items())
