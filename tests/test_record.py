"""End to end: record the bundled workload on the real kernel and apply the
profile with the real BOLT.

The workload (``--wait-signal``) starts its early threads, prints ``ready``
and waits for SIGUSR1; recording starts, then SIGUSR1 makes it start late
threads, each of which starts a grandchild thread, all while recorded. Each
of a PIE and a non-PIE build is recorded once through the installed
``ebpf-bolt`` command and once through ``ebpf_bolt.collect()``; the session
fixture keeps those four recordings and the tests check them:

- every worker thread (early, late, grand) got samples;
- >= 95% of the samples in the binary fall inside function bodies;
- hot_a / hot_b / hot_c come out at the 50 / 30 / 20% they are built with;
- LLVM 22 BOLT applies the profile (dyno-stats: executed instructions > 0,
  profiled functions > 0, hot_a the hottest) and the optimized binary
  prints the same checksum.

Then the pre-aggregated route (perf2bolt --pa --ba gives the same fdata as
ebpf-bolt's own writer), command mode (exit status, a duration shorter
than the command, a SIGTERM while ebpf-bolt waits for its command), the
normal ends of a -p recording (target exit, SIGINT, SIGTERM) and a profile
written to stdout.

No monkeypatching: real perf events, BPF programs, processes and BOLT.
Each recorded workload runs about 1.6 s on 2 vCPUs.
"""
import collections
import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

import ebpf_bolt
from ebpf_bolt.elf import ElfFile, Symbolizer

pytestmark = pytest.mark.root

# 4 early + 2 late + 2 grand workers, 0.4 s of CPU each: ~1.6 s on 2 vCPUs.
# More early workers than CPUs keeps them running well after recording starts.
WORKLOAD_ARGS = ["--scale", "40", "--early", "4", "--late", "2"]
ROLE_COUNTS = {"main": 1, "early": 4, "late": 2, "grand": 2}
WORKER_ROLES = ("early", "late", "grand")
BUILT_SHARES = {"hot_a": 50.0, "hot_b": 30.0, "hot_c": 20.0}
SHARE_TOLERANCE = 6.0           # percentage points
MIN_IN_FUNCTIONS = 0.95
TIMEOUT = 60                    # seconds for anything that should take ~2 s
KINDS = ["pie", "nopie"]
VIAS = ["cli", "api"]

LLVM22 = Path("/usr/lib/llvm-22/bin")
FDATA_SAMPLE = re.compile(r"1 (\S+) ([0-9a-f]+) ([1-9][0-9]*)")


# --- helpers ----------------------------------------------------------------

def bolt_tool(name):
    path = LLVM22 / name
    assert path.exists(), f"{path} missing: install bolt-22 (scripts/setup.sh)"
    return str(path)


class Lines:
    """Reads a text stream line by line in a thread, so tests can wait for a
    line with a timeout instead of blocking forever on a stuck process."""

    def __init__(self, stream, name):
        self.name = name
        self.lines = []
        self._q = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,),
                                        daemon=True)
        self._thread.start()

    def _pump(self, stream):
        for line in stream:
            self._q.put(line)
        self._q.put(None)

    def wait_for(self, pattern, timeout=TIMEOUT):
        """The first line (from now on) matching the regex `pattern`."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._q.get(timeout=max(left, 0.01))
            except queue.Empty:
                line = None
                eof = False
            else:
                eof = line is None
            if line is not None:
                self.lines.append(line)
                if re.search(pattern, line):
                    return line
                continue
            if eof or left <= 0:
                pytest.fail(f"{self.name}: no line matching {pattern!r} "
                            f"({'end of output' if eof else 'timeout'}); "
                            f"got:\n{self.text()}")

    def rest(self, timeout=TIMEOUT):
        """Everything up to the end of the stream."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"{self.name}: still open"
        while True:
            line = self._q.get()
            if line is None:
                break
            self.lines.append(line)
        return self.text()

    def text(self):
        return "".join(self.lines)


def start_workload(binary, args, wait_signal=True):
    """Start the workload; with --wait-signal, return once it said ready."""
    cmd = [str(binary)] + list(args) + (["--wait-signal"] if wait_signal else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    proc.out = Lines(proc.stdout, f"{binary.name} stdout")
    proc.err = Lines(proc.stderr, f"{binary.name} stderr")
    if wait_signal:
        proc.out.wait_for(r"^ready$", timeout=30)
    return proc


def stop(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(TIMEOUT)


def finish_workload(proc):
    """Wait for the workload; (stdout, stderr)."""
    try:
        proc.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        stop(proc)
        pytest.fail(f"workload {proc.args} did not finish in {TIMEOUT} s")
    out, err = proc.out.rest(), proc.err.rest()
    assert proc.returncode == 0, f"workload exited {proc.returncode}: {err}"
    return out, err


def thread_ids(stderr_text):
    """{role: [tid, ...]} from the workload's 'tid ROLE TID' lines."""
    tids = collections.defaultdict(list)
    for role, tid in re.findall(r"^tid (\w+) (\d+)$", stderr_text, re.M):
        tids[role].append(int(tid))
    return dict(tids)


def checksum_of(stdout_text):
    lines = stdout_text.splitlines()
    assert lines and re.fullmatch(r"checksum [0-9a-f]{16}", lines[-1]), \
        f"no checksum as the last line of stdout: {stdout_text!r}"
    return lines[-1]


def parse_fdata(text):
    """(event, Counter of function name -> samples) of a no_lbr fdata text;
    fails on any line that is not a well-formed sample record."""
    lines = text.splitlines()
    assert lines and lines[0].startswith("no_lbr "), \
        f"fdata does not start with 'no_lbr EVENT': {text[:200]!r}"
    assert text.endswith("\n"), "fdata does not end with a newline"
    funcs = collections.Counter()
    seen = set()
    for line in lines[1:]:
        m = FDATA_SAMPLE.fullmatch(line)
        assert m, f"malformed fdata sample line: {line!r}"
        name, off = m.group(1), int(m.group(2), 16)
        assert (name, off) not in seen, f"duplicate fdata record: {line!r}"
        seen.add((name, off))
        funcs[name] += int(m.group(3))
    return lines[0].split(" ", 1)[1], funcs


def _num(s):
    return int(s.replace(",", ""))


class Summary:
    """The facts of ebpf-bolt's summary on stderr."""

    def __init__(self, stderr_text):
        self.text = stderr_text

        def find(pattern):
            m = re.search(pattern, stderr_text, re.M)
            assert m, f"no {pattern!r} in ebpf-bolt's stderr:\n{stderr_text}"
            return m

        m = find(r"^ebpf-bolt: recorded (.+) \((PIE|non-PIE)\) in pid (\d+) "
                 r"and the processes it started for ([\d.]+) s, stopped by "
                 r"([^;]+);")
        self.binary, self.pie_text = m.group(1), m.group(2)
        self.pid, self.duration = int(m.group(3)), float(m.group(4))
        self.stopped_by = m.group(5)
        m = find(r"^ebpf-bolt: samples: ([\d,]+) of the recorded processes, "
                 r"([\d,]+) in the binary \([\d.]+%, from (\d+) process")
        self.process_samples, self.in_binary = _num(m.group(1)), _num(m.group(2))
        self.processes = int(m.group(3))
        m = find(r"^ebpf-bolt: wrote (\S+) profile to (.+) \(([\d,]+) bytes?, "
                 r"([\d,]+) lines?\)(?:; ([\d,]+) samples? outside function "
                 r"symbols left out)?$")
        self.format, self.where = m.group(1), m.group(2)
        self.bytes, self.lines = _num(m.group(3)), _num(m.group(4))
        self.outside_functions = _num(m.group(5)) if m.group(5) else 0
        m = re.search(r"^ebpf-bolt: threads sampled: (\d+) \((.*)\)$",
                      stderr_text, re.M)
        self.threads = None
        if m:
            self.threads = {int(t): int(c) for t, c in
                            (p.split(":") for p in m.group(2).split(", "))}
            assert len(self.threads) == int(m.group(1)), m.group(0)

    def check_written(self, text):
        """The profile text is complete: what the summary says was written."""
        assert len(text.encode()) == self.bytes and \
            text.count("\n") == self.lines, (
                f"profile has {len(text.encode())} bytes, {text.count(chr(10))} "
                f"lines; the summary says {self.bytes} bytes, {self.lines} lines")


def wait_recording_started(lines):
    return lines.wait_for(r"^ebpf-bolt: recording ", timeout=30)


def bpf_links():
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:bpf_link":
                n += 1
        except OSError:
            pass
    return n


def online_cpu_count():
    text = Path("/sys/devices/system/cpu/online").read_text().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


def shares(funcs):
    total = sum(funcs[f] for f in BUILT_SHARES)
    assert total > 0, f"no samples in hot_a/hot_b/hot_c: {dict(funcs)}"
    return {f: 100.0 * funcs[f] / total for f in BUILT_SHARES}


# --- the four recordings ----------------------------------------------------

class Recording:
    """One recorded run of the workload, through the CLI or the API."""
    kind = via = binary = fdata = None
    checksum = tids = None
    threads = None          # {tid: samples}
    funcs = None            # Counter: function name -> samples (fdata)
    in_binary = None        # samples in the binary
    in_functions = None     # of those, inside a function body
    stopped_by = None
    summary = None          # CLI
    profile = None          # API
    is_pie = None


def record_cli(cmd, binary, out_dir):
    rec = Recording()
    rec.fdata = out_dir / "cli.fdata"
    wl = start_workload(binary, WORKLOAD_ARGS)
    try:
        # IP mode named: where branch hardware exists, auto records branch
        # stacks, and these tests check IP samples
        eb = subprocess.Popen([cmd, "--mode", "ip", "-p", str(wl.pid), "30",
                               "--threads", "-o", str(rec.fdata)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
        eb.err = Lines(eb.stderr, "ebpf-bolt stderr")
        wait_recording_started(eb.err)
        time.sleep(0.2)
        wl.send_signal(signal.SIGUSR1)   # late and grand threads start now
        out, err = finish_workload(wl)
        try:
            eb.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            stop(eb)
            pytest.fail("ebpf-bolt did not stop after its target exited")
        eb_out, eb_err = eb.stdout.read(), eb.err.rest()
    finally:
        stop(wl)
    assert eb.returncode == 0, f"ebpf-bolt exited {eb.returncode}:\n{eb_err}"
    assert eb_out == "", f"ebpf-bolt wrote to stdout with -o: {eb_out[:200]!r}"
    rec.checksum, rec.tids = checksum_of(out), thread_ids(err)
    s = rec.summary = Summary(eb_err)
    assert s.threads is not None, f"no 'threads sampled' line:\n{eb_err}"
    rec.threads, rec.stopped_by = s.threads, s.stopped_by
    rec.is_pie = s.pie_text.startswith("PIE")
    text = rec.fdata.read_text()
    s.check_written(text)
    _, rec.funcs = parse_fdata(text)
    rec.in_binary = s.in_binary
    rec.in_functions = sum(rec.funcs.values())
    assert rec.in_functions + s.outside_functions == s.in_binary, (
        f"fdata holds {rec.in_functions} samples and {s.outside_functions} "
        f"were left out, but {s.in_binary} were in the binary")
    return rec


def record_api(binary, out_dir):
    rec = Recording()
    rec.fdata = out_dir / "api.fdata"
    wl = start_workload(binary, WORKLOAD_ARGS)
    result = {}

    def collect():
        try:
            result["profile"] = ebpf_bolt.collect(pid=wl.pid, duration=30,
                                                  mode="ip", count_threads=True)
        except BaseException as e:  # reported by the test thread
            result["error"] = e

    try:
        links_before = bpf_links()
        t = threading.Thread(target=collect, daemon=True)
        t.start()
        deadline = time.monotonic() + 30
        while bpf_links() < links_before + online_cpu_count():
            assert t.is_alive(), f"collect() ended early: {result}"
            assert time.monotonic() < deadline, "collect() attached no events"
            time.sleep(0.01)
        time.sleep(0.3)     # attached; give it the moment to enable them
        wl.send_signal(signal.SIGUSR1)
        out, err = finish_workload(wl)
        t.join(TIMEOUT)
        assert not t.is_alive(), "collect() did not return after the target exited"
    finally:
        stop(wl)
    if "error" in result:
        raise result["error"]
    p = rec.profile = result["profile"]
    rec.checksum, rec.tids = checksum_of(out), thread_ids(err)
    rec.threads, rec.stopped_by = p.info["threads"], p.info["stopped_by"]
    rec.is_pie = p.info["is_pie"]
    assert p.mode == "ip" and p.kind == "basic", (p.mode, p.kind)
    sym = Symbolizer(ElfFile(binary))
    rec.funcs = collections.Counter()
    rec.in_binary = p.total()
    # the kernel's own account: every sample of the process is either a
    # kernel IP, refused by a full map, outside the binary, or in total()
    st = p.stats
    assert (st["map_full"], st["update_failed"]) == (0, 0), st
    assert rec.in_binary == (st["samples"] - st["other_process"] - st["kernel_ip"]
                             - st["outside_binary"]), st
    rec.in_functions = 0
    for addr, count in p.samples.items():
        hit = sym.lookup(addr)
        if hit is not None:
            rec.in_functions += count
            rec.funcs[hit[0].name] += count
    p.write(str(rec.fdata), "fdata")
    return rec


@pytest.fixture(scope="session")
def recordings(ebpf_bolt_cmd, workload_pie, workload_nopie, tmp_path_factory):
    """recordings(kind, via): each recorded once per session."""
    binaries = {"pie": workload_pie, "nopie": workload_nopie}
    cache = {}

    def get(kind, via):
        key = (kind, via)
        if key not in cache:
            out_dir = tmp_path_factory.mktemp(f"rec-{kind}-{via}")
            if via == "cli":
                rec = record_cli(ebpf_bolt_cmd, binaries[kind], out_dir)
            else:
                rec = record_api(binaries[kind], out_dir)
            rec.kind, rec.via, rec.binary = kind, via, binaries[kind]
            cache[key] = rec
        return cache[key]

    return get


BOTH = pytest.mark.parametrize("kind,via", [(k, v) for k in KINDS for v in VIAS])


@pytest.mark.kernel_matrix
@BOTH
def test_records_the_binary_it_was_asked_for(recordings, kind, via):
    rec = recordings(kind, via)
    assert rec.is_pie == (kind == "pie")
    if via == "cli":
        assert rec.summary.binary == str(rec.binary)
        assert rec.summary.format == "fdata"
    else:
        assert rec.profile.binary == str(rec.binary)
    assert rec.in_binary > 1000, f"only {rec.in_binary} samples in the binary"


@BOTH
def test_samples_come_from_every_thread(recordings, kind, via):
    rec = recordings(kind, via)
    got = {role: len(t) for role, t in rec.tids.items()}
    assert got == ROLE_COUNTS, f"workload announced {rec.tids}"
    missing = {role: [t for t in rec.tids[role] if rec.threads.get(t, 0) == 0]
               for role in WORKER_ROLES}
    assert not any(missing.values()), (
        f"threads without samples: {missing}; sampled: {rec.threads}; "
        f"workload threads: {rec.tids}")
    known = {t for ts in rec.tids.values() for t in ts}
    assert set(rec.threads) <= known, (
        f"samples from threads that are not the workload's: "
        f"{set(rec.threads) - known}")


@BOTH
def test_samples_fall_inside_function_bodies(recordings, kind, via):
    rec = recordings(kind, via)
    share = rec.in_functions / rec.in_binary
    assert share >= MIN_IN_FUNCTIONS, (
        f"only {100 * share:.1f}% of {rec.in_binary} samples in the binary are "
        f"inside function bodies (need {100 * MIN_IN_FUNCTIONS:.0f}%)")


@pytest.mark.kernel_matrix
@BOTH
def test_hot_function_shares_match_the_workload(recordings, kind, via):
    rec = recordings(kind, via)
    got = shares(rec.funcs)
    off = {f: round(got[f] - BUILT_SHARES[f], 1) for f in BUILT_SHARES}
    assert all(abs(d) <= SHARE_TOLERANCE for d in off.values()), (
        f"shares {', '.join(f'{f} {got[f]:.1f}%' for f in got)}; built as "
        f"50/30/20 (off by {off}, tolerance {SHARE_TOLERANCE} points); "
        f"all functions: {rec.funcs.most_common(8)}")


@pytest.mark.kernel_matrix
@pytest.mark.parametrize("kind", KINDS)
def test_pid_target_exit_ends_recording_with_complete_file(recordings, kind):
    """-p: the target exiting is a normal end; the file is whole."""
    rec = recordings(kind, "cli")
    assert rec.stopped_by == "target exited", rec.summary.text
    assert rec.summary.duration < 30
    assert rec.summary.where == str(rec.fdata)
    # check_written (in record_cli) compared the file with the summary
    api = recordings(kind, "api")
    assert api.stopped_by == "target exited"
    assert api.profile.info["duration"] < 30


# --- BOLT -------------------------------------------------------------------

def run_bolt(binary, fdata, out):
    cmd = [bolt_tool("llvm-bolt"), str(binary), "-o", str(out),
           "-data", str(fdata), "-reorder-blocks=ext-tsp",
           "-reorder-functions=cdsort", "-split-functions", "-dyno-stats",
           "-print-sorted-by=executed-instructions"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    log = p.stdout + p.stderr
    assert p.returncode == 0, f"llvm-bolt failed ({p.returncode}):\n{log}"
    return log


def bolt_facts(log):
    """(executed instructions before optimization, profiled functions,
    [(function, executed instructions)] hottest first) from a BOLT log."""
    m = re.search(r"^\s*(\d+) : executed instructions\s*$", log, re.M)
    assert m, f"no dyno-stats 'executed instructions' in the BOLT log:\n{log}"
    executed = int(m.group(1))
    m = re.search(r"BOLT-INFO: (\d+) out of (\d+) functions in the binary "
                  r"\([\d.]+%\) have non-empty execution profile", log)
    assert m, f"no 'functions ... have non-empty execution profile':\n{log}"
    profiled = int(m.group(1))
    m = re.search(r"top functions sorted by \(executed instructions\) are:\n"
                  r"((?:  \S+ \(executed-instructions=\d+\)\n)+)", log)
    assert m, f"no list of top functions in the BOLT log:\n{log}"
    top = [(f, int(n)) for f, n in re.findall(
        r"  (\S+) \(executed-instructions=(\d+)\)", m.group(1))]
    return executed, profiled, top


@BOTH
def test_bolt_applies_the_profile(recordings, kind, via, tmp_path):
    rec = recordings(kind, via)
    out = tmp_path / f"{rec.binary.name}.bolt"
    log = run_bolt(rec.binary, rec.fdata, out)
    executed, profiled, top = bolt_facts(log)
    assert executed > 0, f"BOLT applied an empty profile:\n{log}"
    assert profiled > 0, f"no function has a profile:\n{log}"
    assert top and top[0][0] == "hot_a" and top[0][1] > 0, \
        f"hot_a is not the hottest profiled function: {top}"
    assert {"hot_b", "hot_c"} <= {f for f, n in top if n > 0}, top

    p = subprocess.run([str(out)] + WORKLOAD_ARGS, capture_output=True,
                       text=True, timeout=TIMEOUT)
    assert p.returncode == 0, f"optimized binary exited {p.returncode}:\n{p.stderr}"
    assert p.stdout == rec.checksum + "\n", (
        f"the BOLT-optimized binary printed {p.stdout!r}, the original "
        f"{rec.checksum!r}")
    roles = {r: len(t) for r, t in thread_ids(p.stderr).items()}
    assert roles == ROLE_COUNTS, p.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_preagg_via_perf2bolt_equals_own_fdata(recordings, kind, tmp_path):
    """One collect() result written as preagg and converted by LLVM 22's
    perf2bolt --pa --ba gives the very records ebpf-bolt's fdata writer does."""
    rec = recordings(kind, "api")
    preagg = tmp_path / "profile.preagg"
    preagg.write_text(rec.profile.render("preagg"))
    own = rec.profile.render("fdata")
    converted = tmp_path / "perf2bolt.fdata"
    p = subprocess.run([bolt_tool("perf2bolt"), "--pa", "--ba", "-p",
                        str(preagg), "-o", str(converted), str(rec.binary)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and converted.exists(), \
        f"perf2bolt failed ({p.returncode}):\n{p.stdout}{p.stderr}"
    theirs = converted.read_text()
    assert len(own.splitlines()) > 10, own
    assert sorted(theirs.splitlines()) == sorted(own.splitlines()), (
        "perf2bolt's fdata differs from ebpf-bolt's:\n"
        f"only perf2bolt: {sorted(set(theirs.splitlines()) - set(own.splitlines()))[:10]}\n"
        f"only ebpf-bolt: {sorted(set(own.splitlines()) - set(theirs.splitlines()))[:10]}")


# --- command mode -----------------------------------------------------------

@pytest.mark.kernel_matrix
def test_command_recorded_until_exit(ebpf_bolt_cmd, workload_pie, tmp_path):
    out = tmp_path / "cmd.fdata"
    p = subprocess.run([ebpf_bolt_cmd, "--threads", "-o", str(out), "--",
                        str(workload_pie), "--scale", "30", "--early", "1",
                        "--late", "1"],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, f"exit {p.returncode}:\n{p.stderr}"
    checksum_of(p.stdout)       # the command's own output, untouched
    s = Summary(p.stderr)
    assert s.stopped_by == "target exited", p.stderr
    assert s.binary == str(workload_pie)
    text = out.read_text()
    s.check_written(text)
    _, funcs = parse_fdata(text)
    assert funcs["hot_a"] > 0, funcs
    tids = thread_ids(p.stderr)
    workers = [t for r in WORKER_ROLES for t in tids.get(r, [])]
    assert len(workers) == 3, tids
    assert s.threads and all(s.threads.get(t, 0) > 0 for t in workers), \
        f"threads {tids}, sampled {s.threads}"


@pytest.mark.parametrize("via", ["command", "pid", "nested"])
def test_pid_namespace_of_a_container(ebpf_bolt_cmd, workload_pie, tmp_path, via):
    """ebpf-bolt inside a PID namespace (as in a container without the
    host's PIDs) is given that namespace's ids: the kernel filter must
    match them, not the root namespace's, or nothing is recorded; also for
    a target in a namespace nested inside ebpf-bolt's."""
    out = tmp_path / "ns.fdata"
    work = f"{workload_pie} --scale 100 --early 1 --late 1"  # ~3 s
    rec = f"{ebpf_bolt_cmd} --threads -o {out}"
    script = {
        "command": f"exec {rec} -- {work}",
        "pid": f"{work} & exec {rec} -p $!",   # $!: the namespace's pid
        # the workload is unshare's child, in a namespace of its own
        "nested": f"unshare --pid --fork {work} & sleep 0.2; "
                  f"exec {rec} -p $(cat /proc/$!/task/$!/children)",
    }[via]
    p = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "sh",
                        "-c", script], capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert p.returncode == 0, f"exit {p.returncode}:\n{p.stderr}"
    s = Summary(p.stderr)
    assert s.stopped_by == "target exited", p.stderr
    assert s.pid < 10, p.stderr        # a fresh namespace's small pid
    _, funcs = parse_fdata(out.read_text())
    assert funcs["hot_a"] > 0, funcs
    tids = thread_ids(p.stderr)        # the workload's own view: ns ids
    workers = [t for r in WORKER_ROLES for t in tids.get(r, [])]
    assert len(workers) == 3 and max(workers) < 20, tids
    assert all(s.threads.get(t, 0) > 0 for t in workers), \
        f"threads {tids}, sampled {s.threads}"


@pytest.mark.parametrize("script,status", [("exit 3", 3),
                                           ("kill -TERM $$", 128 + 15)])
def test_command_exit_status_is_returned(ebpf_bolt_cmd, tmp_path, script,
                                         status):
    """A command that fails at once: its status, and a (nearly empty) profile.
    Run a few times: a command this short races ebpf-bolt's start-up."""
    for attempt in range(1, 5):
        out = tmp_path / f"fail-{attempt}.fdata"
        p = subprocess.run([ebpf_bolt_cmd, "-o", str(out), "--", "sh", "-c",
                            script], capture_output=True, text=True,
                           timeout=TIMEOUT)
        assert p.returncode == status, (
            f"run {attempt}: ebpf-bolt exited {p.returncode}, the command "
            f"{status}:\n{p.stderr}")
        assert out.exists(), f"run {attempt}: no profile written:\n{p.stderr}"
        s = Summary(p.stderr)
        assert s.stopped_by == "target exited", p.stderr
        text = out.read_text()
        s.check_written(text)
        parse_fdata(text)


def test_duration_shorter_than_command(ebpf_bolt_cmd, workload_pie, tmp_path):
    """Recording stops after the duration and the profile is written while
    the command runs on; ebpf-bolt exits with its status when it ends."""
    out = tmp_path / "short.fdata"
    eb = subprocess.Popen([ebpf_bolt_cmd, "0.3", "-o", str(out), "--",
                           str(workload_pie), "--scale", "60", "--early", "2",
                           "--late", "1"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    try:
        err = Lines(eb.stderr, "ebpf-bolt stderr")
        err.wait_for(r"^ebpf-bolt: wrote ")
        s = Summary(err.text())
        state = Path(f"/proc/{s.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert state not in ("Z", "X"), \
            "the command had already ended when the profile was written"
        assert eb.poll() is None, "ebpf-bolt exited before its command"
        assert out.exists(), "profile not written when recording stopped"
        s.check_written(out.read_text())
        eb.wait(TIMEOUT)
        stdout = eb.stdout.read()
        stderr = err.rest()
    finally:
        stop(eb)
    assert eb.returncode == 0, f"exit {eb.returncode}:\n{stderr}"
    assert s.stopped_by == "duration", stderr
    assert 0.25 <= s.duration < 0.8, f"recorded {s.duration} s for 0.3 s"
    checksum_of(stdout)         # the command ran to its end
    assert not Path(f"/proc/{s.pid}").exists()  # and was reaped


def test_duration_shorter_than_failing_command(ebpf_bolt_cmd, tmp_path):
    out = tmp_path / "short-fail.fdata"
    t0 = time.monotonic()
    p = subprocess.run([ebpf_bolt_cmd, "0.3", "-o", str(out), "--", "sh", "-c",
                        "sleep 1.5; exit 4"], capture_output=True, text=True,
                       timeout=TIMEOUT)
    elapsed = time.monotonic() - t0
    assert p.returncode == 4, f"exit {p.returncode}:\n{p.stderr}"
    assert elapsed >= 1.4, "ebpf-bolt did not wait for its command"
    s = Summary(p.stderr)
    assert s.stopped_by == "duration", p.stderr
    s.check_written(out.read_text())


def test_sigterm_while_waiting_for_command_is_passed_on(ebpf_bolt_cmd,
                                                        tmp_path):
    """After a duration-stopped recording ebpf-bolt waits for its command; a
    SIGTERM then is meant for both, as during recording: the command gets it
    and ebpf-bolt returns its status, with the profile already written."""
    out = tmp_path / "term-wait.fdata"
    eb = subprocess.Popen([ebpf_bolt_cmd, "0.3", "-o", str(out), "--",
                           "sleep", "30"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    child = None
    try:
        err = Lines(eb.stderr, "ebpf-bolt stderr")
        err.wait_for(r"^ebpf-bolt: wrote ")
        s = Summary(err.text())
        child = s.pid
        s.check_written(out.read_text())
        time.sleep(0.2)
        eb.send_signal(signal.SIGTERM)
        try:
            eb.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail("ebpf-bolt did not end on SIGTERM")
        time.sleep(0.2)
        child_alive = Path(f"/proc/{child}").exists()
    finally:
        stop(eb)
        if child is not None:   # it shares ebpf-bolt's stderr: end it first
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
    stderr = err.rest()
    assert "before recording started" not in stderr, \
        f"wrong message for a SIGTERM after recording:\n{stderr}"
    assert not child_alive, "the command was left running after SIGTERM"
    assert eb.returncode == 128 + signal.SIGTERM, \
        f"exit {eb.returncode}, want the command's 143:\n{stderr}"


# --- -p: signals and stdout -------------------------------------------------

@pytest.fixture
def spinning_workload(workload_pie):
    """A workload whose one early thread runs for minutes (killed after)."""
    wl = start_workload(workload_pie, ["--scale", "30000", "--early", "1",
                                       "--late", "0"])
    yield wl
    stop(wl)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_stops_recording_and_writes_profile(ebpf_bolt_cmd,
                                                   spinning_workload,
                                                   tmp_path, sig):
    wl = spinning_workload
    out = tmp_path / "signal.fdata"
    eb = subprocess.Popen([ebpf_bolt_cmd, "-p", str(wl.pid), "30", "-o",
                           str(out)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    try:
        err = Lines(eb.stderr, "ebpf-bolt stderr")
        wait_recording_started(err)
        time.sleep(0.5)
        eb.send_signal(sig)
        try:
            eb.wait(15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"ebpf-bolt did not stop on {sig.name}")
        stderr = err.rest()
    finally:
        stop(eb)
    assert eb.returncode == 0, f"{sig.name}: exit {eb.returncode}:\n{stderr}"
    s = Summary(stderr)
    # the summary names the signal
    assert s.stopped_by == {signal.SIGINT: "SIGINT (Ctrl-C)",
                            signal.SIGTERM: "SIGTERM"}[sig], stderr
    assert s.duration < 10, s.duration
    text = out.read_text()
    s.check_written(text)
    _, funcs = parse_fdata(text)
    assert sum(funcs.values()) > 100 and funcs["hot_a"] > 0, funcs
    assert wl.poll() is None, f"{sig.name} to ebpf-bolt -p ended the target too"
    assert not list(tmp_path.glob(".ebpf-bolt-*")), "temporary file left"


def test_profile_to_stdout_summary_to_stderr(ebpf_bolt_cmd, spinning_workload):
    wl = spinning_workload
    p = subprocess.run([ebpf_bolt_cmd, "-p", str(wl.pid), "1"],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, f"exit {p.returncode}:\n{p.stderr}"
    s = Summary(p.stderr)
    assert s.where == "stdout" and s.stopped_by == "duration", p.stderr
    s.check_written(p.stdout)
    _, funcs = parse_fdata(p.stdout)   # stdout is the profile and only that
    assert funcs["hot_a"] > 0, funcs
    assert not re.search(r"^1 \S+ [0-9a-f]+ \d+$", p.stderr, re.M), \
        "profile records on stderr"
    assert all(line.startswith(("ebpf-bolt: ", "  hint: "))
               for line in p.stderr.splitlines()), p.stderr
