#!/usr/bin/env python3
"""Benchmark: ebpf-bolt in IP mode against ``perf record -e cpu-clock:u`` +
``perf2bolt --ba`` on the bundled demo workload, at the same frequency.

Run as root from the repository (after ``bash scripts/setup.sh``):

    python3 bench/bench_ip.py [--runs N] [--frequency F] [--scale S]

It prints a markdown table of measured figures (medians over the runs) and
whether each goal of the issue is met:

  * workload slowdown under ebpf-bolt no worse than under perf;
  * ebpf-bolt's CPU time (collection + writing fdata) at most half of
    perf record's + perf2bolt's;
  * ebpf-bolt's output at most a fifth of perf.data.

It is a measurement, not a test: nothing fails when a goal is missed.

How a run works, and why -p PID for both profilers
--------------------------------------------------
The benchmark script itself starts the workload, so it is the workload's
parent and the profilers are its siblings, never its parents. That gives:

  * exact CPU time and peak RSS of each profiler from wait4() on the
    profiler's PID (done by a small C helper, see MEASURE_C): the rusage
    wait4 returns covers that process and the children it reaped
    (perf2bolt runs ``perf script`` jobs), and never includes the
    workload's own CPU (in command mode the workload would be the
    profiler's child and its CPU would land in the profiler's rusage);
  * an exact workload end: the moment os.wait4() reaps the workload. The
    "end to ready profile" time is then the profiler's exit (ebpf-bolt has
    written the fdata when it exits) or, for perf, perf2bolt's exit (perf
    record exits when the target does, then perf2bolt converts perf.data).
    In command mode the profiler reaps the workload and the end of the
    workload is not visible from outside.

Attaching by PID races with the workload's start, so the workload is
started gated: ``--early 0 --late 1 --wait-signal`` runs the same two
worker threads as ``--early 2 --late 0`` (one "late" thread and the
"grand" thread it starts), but only after SIGUSR1; until then it sleeps in
sigwait. The script sends SIGUSR1 once the profiler is recording:
ebpf-bolt prints "recording ..." after its events and BPF program are
enabled; perf record is started with its events disabled (``-D -1``) and
enabled through its control FIFO (``--control fifo:ctl,ack``), which
acknowledges once they are on. Workload wall time is SIGUSR1 to reaping.

Kernel-side sampling work (timer interrupt, the BPF program, perf's ring
buffer writes) runs in the workload's context, so it shows up in the
workload's slowdown, not in the profiler's CPU time.

The runs of the three kinds (unprofiled, ebpf-bolt, perf) are interleaved
and rotated so that drift in machine load spreads over all of them; one
short unrecorded warm-up round comes first (page cache, Python bytecode).
"""
import argparse
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

DEFAULT_EBPF_BOLT = REPO / ".venv" / "bin" / "ebpf-bolt"
DEFAULT_PERF = "/usr/bin/perf"
DEFAULT_PERF2BOLT = "/usr/lib/llvm-22/bin/perf2bolt"

KINDS = ("base", "ebpf", "perf")
LABEL = {"base": "unprofiled", "ebpf": "ebpf-bolt",
         "perf": "perf record + perf2bolt"}


# Peak RSS needs a small parent: Linux carries the RSS high-water mark of the
# memory a process had before exec() into its ru_maxrss, and a child forked
# (or vforked) from this Python script starts from the script's ~18 MiB, so
# every profiler started directly from here would report at least that.
# This helper, written for this benchmark, runs a command from a small C
# process and writes the command's own rusage (which covers the children it
# reaped, e.g. perf2bolt's perf script jobs) and its exit time in
# CLOCK_MONOTONIC (Python's time.monotonic()) to a report file.
MEASURE_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: measure REPORT COMMAND [ARGS...]\n");
        return 127;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("measure: fork");
        return 127;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execvp(argv[2], argv + 2);
        perror(argv[2]);
        _exit(127);
    }
    int status;
    struct rusage ru;
    while (wait4(pid, &status, 0, &ru) < 0) {
        if (errno != EINTR) {
            perror("measure: wait4");
            return 127;
        }
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    FILE *f = fopen(argv[1], "w");
    if (!f) {
        perror(argv[1]);
        return 127;
    }
    fprintf(f, "%d %ld.%06ld %ld.%06ld %ld %ld.%09ld\n", code,
            (long)ru.ru_utime.tv_sec, (long)ru.ru_utime.tv_usec,
            (long)ru.ru_stime.tv_sec, (long)ru.ru_stime.tv_usec,
            ru.ru_maxrss, (long)ts.tv_sec, ts.tv_nsec);
    fclose(f);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
"""


class BenchError(Exception):
    pass


def build_measure(work, cc="cc"):
    src, exe = work / "measure.c", work / "measure"
    src.write_text(MEASURE_C)
    proc = subprocess.run([cc, "-O2", "-o", str(exe), str(src)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"cannot build the measure helper: {proc.stderr}")
    return exe


class Measured:
    """A command run under the measure helper."""

    def __init__(self, measure, report, cmd, stdout, stderr):
        self.report = Path(report)
        self.report.unlink(missing_ok=True)
        self.proc = subprocess.Popen([str(measure), str(report), *cmd],
                                     stdin=subprocess.DEVNULL, stdout=stdout,
                                     stderr=stderr)
        self.pid = self.proc.pid
        self.args = cmd

    def poll(self):
        return self.proc.poll()

    @property
    def returncode(self):
        return self.proc.returncode

    def finished(self, exit_info):
        """From reap()'s entry for the helper: (exit time, exit code, CPU
        seconds, peak RSS in KiB) of the command itself."""
        self.proc.returncode = exit_info[1]
        try:
            f = self.report.read_text().split()
        except OSError:
            raise BenchError(f"{self.args[0]} was not measured (helper "
                             f"exit {exit_info[1]})") from None
        code, ut, st, maxrss, t_exit = f
        return float(t_exit), int(code), float(ut) + float(st), int(maxrss)


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def reap(pids, timeout):
    """Block in os.wait4 until every pid in `pids` has exited; returns
    {pid: (monotonic exit time, exit code, rusage, busy_seconds())}.
    Blocking (not polling) keeps this script off the CPUs the workload
    runs on."""
    left, done = set(pids), {}
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(max(1, int(timeout)))
    try:
        while left:
            pid, status, ru = os.wait4(-1, 0)
            t, busy = time.monotonic(), busy_seconds()
            if pid in left:
                left.discard(pid)
                done[pid] = (t, os.waitstatus_to_exitcode(status), ru, busy)
    except _Timeout:
        raise BenchError(f"processes {sorted(left)} still running after "
                         f"{timeout:.0f} s") from None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return done


def cpu_seconds(ru):
    return ru.ru_utime + ru.ru_stime


def mib(kib):
    return kib / 1024.0


def kill_quietly(proc):
    proc = getattr(proc, "proc", proc)
    if proc is not None and proc.returncode is None:
        try:
            proc.kill()
            proc.wait()
        except OSError:
            pass


def go_and_reap(wl, prof, timeout):
    """Release the held workload and wait for it and the profiler; on any
    error (or Ctrl-C) neither is left running."""
    try:
        wl.go()
        return reap([wl.pid, prof.pid], timeout)
    except BaseException:
        kill_quietly(wl.proc)
        kill_quietly(prof)
        raise


def busy_seconds():
    """CPU-seconds all CPUs have been busy since boot (/proc/stat: user,
    nice, system, irq, softirq and hypervisor steal)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    # guest time is already included in user/nice
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Workload:
    """The demo workload, started gated (see the module docstring)."""

    def __init__(self, binary, scale):
        self.proc = subprocess.Popen(
            [str(binary), "--scale", str(scale), "--early", "0", "--late", "1",
             "--wait-signal"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            kill_quietly(self.proc)
            raise BenchError(f"workload did not say ready (got {line!r})")
        self.pid = self.proc.pid
        self.t_go = None

    def go(self):
        self.busy_go = busy_seconds()
        self.t_go = time.monotonic()
        os.kill(self.pid, signal.SIGUSR1)

    def finished(self, exit_info):
        t_end, code, ru, busy_end = exit_info
        busy = busy_end - self.busy_go
        self.proc.returncode = code          # reaped by reap(), not Popen
        out = self.proc.stdout.read()
        self.proc.stdout.close()
        if code != 0:
            raise BenchError(f"workload exited with {code}")
        m = re.search(r"checksum ([0-9a-f]+)", out)
        if not m:
            raise BenchError(f"workload printed no checksum: {out!r}")
        return {"wall": t_end - self.t_go, "t_end": t_end,
                "workload_cpu": cpu_seconds(ru), "checksum": m.group(1),
                # CPU the machine spent on anything but the workload while it
                # ran: the profiler's collection and other processes (noise)
                "other_cpu": max(0.0, busy - cpu_seconds(ru))}


def wait_for_text(path, pattern, proc, timeout=30.0):
    """Wait until file `path` contains `pattern` (the profiler's stderr),
    failing if the profiler exits first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            text = ""
        if pattern in text:
            return
        if proc.poll() is not None:
            raise BenchError(f"{proc.args[0]} exited with {proc.returncode} "
                             f"before recording: {text.strip()[-800:]}")
        time.sleep(0.01)
    raise BenchError(f"{proc.args[0]} not recording after {timeout:g} s")


def fdata_facts(path):
    """(bytes, header line, number of records, sum of sample counts) of a
    no_lbr fdata file."""
    data = Path(path).read_bytes()
    lines = data.decode(errors="replace").splitlines()
    header = lines[0] if lines else ""
    total = records = 0
    for line in lines[1:]:
        parts = line.split()
        if len(parts) >= 4:
            records += 1
            total += int(parts[-1])
    return len(data), header, records, total


def check_fdata(path, who):
    size, header, records, total = fdata_facts(path)
    if size == 0 or not header.startswith("no_lbr") or total == 0:
        raise BenchError(f"{who} fdata {path} is not a usable no_lbr profile "
                         f"({size} bytes, header {header!r}, {records} "
                         f"records, {total} samples)")
    return size, records, total


def run_base(wl_binary, scale, timeout, work):
    wl = Workload(wl_binary, scale)
    try:
        wl.go()
        done = reap([wl.pid], timeout)
    except BaseException:
        kill_quietly(wl.proc)
        raise
    return wl.finished(done[wl.pid])


def run_ebpf(wl_binary, scale, timeout, work, args, tag):
    out = work / f"ebpf-{tag}.fdata"
    err = work / f"ebpf-{tag}.err"
    for p in (out, err):
        p.unlink(missing_ok=True)
    wl = Workload(wl_binary, scale)
    prof = None
    try:
        # duration far beyond the run: ebpf-bolt stops when the target exits
        cmd = [str(args.ebpf_bolt), "--mode", "ip", "-F", str(args.frequency),
               "-o", str(out), "-p", str(wl.pid), str(int(timeout) + 60)]
        with open(err, "w") as ferr:
            prof = Measured(args.measure, work / "ebpf.rusage", cmd,
                            subprocess.DEVNULL, ferr)
        wait_for_text(err, "ebpf-bolt: recording ", prof)
    except BaseException:
        kill_quietly(wl.proc)
        kill_quietly(prof)
        raise
    done = go_and_reap(wl, prof, timeout)
    res = wl.finished(done[wl.pid])
    t_exit, code, cpu, maxrss = prof.finished(done[prof.pid])
    text = err.read_text(errors="replace")
    if code != 0:
        raise BenchError(f"ebpf-bolt exited with {code}: {text.strip()}")
    size, records, in_fdata = check_fdata(out, "ebpf-bolt")
    m = re.search(r"samples: ([\d,]+) of the process, ([\d,]+) in the binary",
                  text)
    k = re.search(r"kernel memory: ([\d.]+) MiB", text)
    s = re.search(r"stopped by ([^;]+);", text)
    if not (m and k and s):
        raise BenchError(f"cannot parse ebpf-bolt's summary: {text.strip()}")
    if s.group(1) != "target exited":
        raise BenchError(f"ebpf-bolt stopped by {s.group(1)!r}, not the "
                         "target's exit")
    res.update({
        "prof_cpu": cpu, "rss_mib": mib(maxrss),
        "kernel_mib": float(k.group(1)),
        "latency": t_exit - res["t_end"],
        "samples": int(m.group(1).replace(",", "")),
        "in_fdata": in_fdata, "fdata_records": records,
        "out_bytes": size,
    })
    return res


def run_perf(wl_binary, scale, timeout, work, args, tag):
    data = work / f"perf-{tag}.data"
    out = work / f"perf-{tag}.fdata"
    err = work / f"perf-{tag}.err"
    p2b_log = work / f"perf2bolt-{tag}.log"
    ctl, ack = work / "perf.ctl", work / "perf.ack"
    for p in (data, out, err, p2b_log, ctl, ack):
        p.unlink(missing_ok=True)
    os.mkfifo(ctl)
    os.mkfifo(ack)
    # O_RDWR never blocks on a FIFO, whether perf has opened its end or not
    ctl_fd = os.open(ctl, os.O_RDWR)
    ack_fd = os.open(ack, os.O_RDWR | os.O_NONBLOCK)
    wl = Workload(wl_binary, scale)
    prof = None
    try:
        # perf record's default build-id cache (copies of the profiled
        # binaries, normally in ~/.debug) is kept, as part of perf's cost,
        # but goes to the work directory so that no litter is left behind
        cmd = [args.perf, "--buildid-dir", str(work / "buildid-cache"),
               "record", "-e", "cpu-clock:u", "-F",
               str(args.frequency), "-p", str(wl.pid), "-o", str(data),
               "-D", "-1", "--control", f"fifo:{ctl},{ack}"]
        with open(err, "w") as ferr:
            prof = Measured(args.measure, work / "perf.rusage", cmd,
                            subprocess.DEVNULL, ferr)
        os.write(ctl_fd, b"enable\n")
        acked = b""
        end = time.monotonic() + 30
        while b"ack" not in acked:
            if time.monotonic() > end or prof.poll() is not None:
                raise BenchError("perf record did not acknowledge 'enable': "
                                 + err.read_text(errors="replace").strip())
            r, _, _ = select.select([ack_fd], [], [], 0.1)
            if r:
                acked += os.read(ack_fd, 64)
    except BaseException:
        kill_quietly(wl.proc)
        kill_quietly(prof)
        os.close(ctl_fd)
        os.close(ack_fd)
        raise
    try:
        done = go_and_reap(wl, prof, timeout)
    finally:
        os.close(ctl_fd)
        os.close(ack_fd)
    res = wl.finished(done[wl.pid])
    t_rec_exit, code, rec_cpu, rec_rss = prof.finished(done[prof.pid])
    text = err.read_text(errors="replace")
    if code != 0:
        raise BenchError(f"perf record exited with {code}: {text.strip()}")
    m = re.search(r"\((\d+) samples\)", text)
    if not m:
        raise BenchError(f"cannot parse perf record's output: {text.strip()}")
    # conversion: the step perf needs before BOLT can use the profile
    with open(p2b_log, "w") as flog:
        p2b = Measured(args.measure, work / "perf2bolt.rusage",
                       [args.perf2bolt, "--ba", "-p", str(data), "-o",
                        str(out), str(wl_binary)], flog, subprocess.STDOUT)
    try:
        t_ready, code, p2b_cpu, p2b_rss = p2b.finished(
            reap([p2b.pid], timeout)[p2b.pid])
    except BaseException:
        kill_quietly(p2b)
        raise
    log = p2b_log.read_text(errors="replace")
    if code != 0:
        raise BenchError(f"perf2bolt exited with {code}: {log.strip()[-800:]}")
    size, records, in_fdata = check_fdata(out, "perf2bolt")
    r = re.search(r"read (\d+) basic samples", log)
    res.update({
        "rec_cpu": rec_cpu, "p2b_cpu": p2b_cpu,
        "prof_cpu": rec_cpu + p2b_cpu,
        "rec_rss_mib": mib(rec_rss), "p2b_rss_mib": mib(p2b_rss),
        "latency": t_ready - res["t_end"],
        "rec_tail": t_rec_exit - res["t_end"],
        "samples": int(m.group(1)),
        "p2b_samples": int(r.group(1)) if r else None,
        "in_fdata": in_fdata, "fdata_records": records,
        "out_bytes": data.stat().st_size, "p2b_fdata_bytes": size,
    })
    return res


# --------------------------------------------------------------------------
# report

def med(results, key):
    vals = [r[key] for r in results if r.get(key) is not None]
    return statistics.median(vals) if vals else float("nan")


def spread(results, key, fmt):
    vals = [r[key] for r in results if r.get(key) is not None]
    if len(vals) < 2:
        return ""
    return f" ({fmt.format(min(vals))}–{fmt.format(max(vals))})"


def fig(results, key, fmt):
    return fmt.format(med(results, key)) + spread(results, key, fmt)


def human_bytes(n):
    for unit, div in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f} B"


def first_line(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    for line in out.splitlines():
        if line.strip():
            return line.strip()
    return "?"


def machine_facts(args):
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        maxrate = Path("/proc/sys/kernel/perf_event_max_sample_rate"
                       ).read_text().strip()
    except OSError:
        maxrate = "?"
    return {
        "nproc": os.cpu_count(),
        "usable CPUs": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "CPU": model,
        "perf": first_line([args.perf, "--version"]),
        "perf2bolt": first_line([args.perf2bolt, "--version"]),
        "ebpf-bolt": first_line([str(args.ebpf_bolt), "--version"]),
        "perf_event_max_sample_rate": maxrate,
    }


def loadavg():
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def report(args, facts, res, load_before, load_after):
    base, eb, pf = res["base"], res["ebpf"], res["perf"]
    base_wall = med(base, "wall")
    for kind in ("ebpf", "perf"):
        for r in res[kind]:
            r["slowdown"] = 100.0 * (r["wall"] / base_wall - 1.0)
    eb_slow, pf_slow = med(eb, "slowdown"), med(pf, "slowdown")
    eb_cpu, pf_cpu = med(eb, "prof_cpu"), med(pf, "prof_cpu")
    eb_out, pf_out = med(eb, "out_bytes"), med(pf, "out_bytes")

    p = print

    def row(*cells):
        p("| " + " | ".join(cells) + " |")

    p("## ebpf-bolt (IP mode) vs perf record -e cpu-clock:u + perf2bolt --ba")
    p()
    p(f"Workload: demo `workload-pie --scale {args.scale}` (2 worker "
      f"threads), {args.frequency} Hz, {args.runs} run(s) of each kind"
      + (f", niceness {args.nice}" if args.nice else "")
      + "; medians, (min–max) over runs.")
    p()
    row("machine", "")
    row("---", "---")
    for k, v in facts.items():
        row(k, str(v))
    row("load average before / after", f"{load_before} / {load_after}")
    p()
    row("figure", LABEL["base"], LABEL["ebpf"], LABEL["perf"])
    row("---", "---", "---", "---")

    def three(key, fmt, with_base=True):
        return (fig(base, key, fmt) if with_base else "–",
                fig(eb, key, fmt), fig(pf, key, fmt))

    row("workload wall time (s)", *three("wall", "{:.2f}"))
    row("workload slowdown vs unprofiled",
        *three("slowdown", "{:+.1f}%", with_base=False))
    row("workload CPU, user+sys (s)", *three("workload_cpu", "{:.2f}"))
    base_cpu = med(base, "workload_cpu")
    for kind in ("ebpf", "perf"):
        for r in res[kind]:
            r["cpu_increase"] = 100.0 * (r["workload_cpu"] / base_cpu - 1.0)
    row("workload CPU increase vs unprofiled",
        *three("cpu_increase", "{:+.1f}%", with_base=False))
    row("other CPU busy during the workload (s: profiler, other "
        "processes, steal)", *three("other_cpu", "{:.2f}"))
    row("samples recorded", "–", fig(eb, "samples", "{:,.0f}"),
        fig(pf, "samples", "{:,.0f}") + " (perf2bolt read "
        f"{med(pf, 'p2b_samples'):,.0f})")
    row("samples in the fdata (records)", "–",
        f"{med(eb, 'in_fdata'):,.0f} ({med(eb, 'fdata_records'):,.0f})",
        f"{med(pf, 'in_fdata'):,.0f} ({med(pf, 'fdata_records'):,.0f})")
    row("profiler CPU, user+sys (s)", "–", fig(eb, "prof_cpu", "{:.3f}"),
        fig(pf, "prof_cpu", "{:.3f}") + f" = record "
        f"{med(pf, 'rec_cpu'):.3f} + perf2bolt {med(pf, 'p2b_cpu'):.3f}")
    row("workload end → profile ready (s)", "–",
        fig(eb, "latency", "{:.3f}"),
        fig(pf, "latency", "{:.3f}") + " (perf record exits after "
        f"{med(pf, 'rec_tail'):.3f})")
    row("output size", "–", f"fdata {human_bytes(eb_out)}",
        f"perf.data {human_bytes(pf_out)} (perf2bolt fdata "
        f"{human_bytes(med(pf, 'p2b_fdata_bytes'))})")
    row("peak RSS (MiB)", "–",
        fig(eb, "rss_mib", "{:.1f}") + " + kernel maps "
        f"{med(eb, 'kernel_mib'):.2f}",
        f"record {fig(pf, 'rec_rss_mib', '{:.1f}')}, perf2bolt "
        f"{fig(pf, 'p2b_rss_mib', '{:.1f}')}")
    p()

    def yes(ok):
        return "**met**" if ok else "**not met**"

    cpu_ratio = eb_cpu / pf_cpu if pf_cpu else float("inf")
    out_ratio = eb_out / pf_out if pf_out else float("inf")
    p("| goal | ebpf-bolt | perf | result |")
    p("|---|---|---|---|")
    p(f"| slowdown no worse than perf's | {eb_slow:+.1f}% | {pf_slow:+.1f}% | "
      f"{yes(eb_slow <= pf_slow)} |")
    p(f"| collection + conversion CPU ≤ ½ of perf's | {eb_cpu:.3f} s | "
      f"{pf_cpu:.3f} s | ratio {cpu_ratio:.2f}: {yes(cpu_ratio <= 0.5)} |")
    p(f"| output ≤ ⅕ of perf.data | {human_bytes(eb_out)} | "
      f"{human_bytes(pf_out)} | ratio {out_ratio:.4f}: "
      f"{yes(out_ratio <= 0.2)} |")
    checks = {r["checksum"] for k in KINDS for r in res[k]}
    p()
    ncpu = len(os.sched_getaffinity(0))
    busy_share = med(base, "other_cpu") / (ncpu * base_wall)
    if busy_share > 0.1:
        p(f"Note: other work kept the machine {100 * busy_share:.0f}% busy "
          "during the unprofiled runs (other CPU busy / (CPUs x wall)), so "
          "the wall-time slowdowns carry that load's noise; the workload "
          "CPU increase is less sensitive to it. More --runs or --nice -10 "
          "help.")
        p()
    p("Workload checksum identical in all runs: "
      f"{'yes' if len(checks) == 1 else 'NO: ' + ', '.join(sorted(checks))}.")


# --------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="ebpf-bolt (IP mode) vs perf record + perf2bolt --ba")
    p.add_argument("--runs", type=int, default=3,
                   help="runs of each kind (default 3)")
    p.add_argument("--frequency", "-F", type=int, default=4999,
                   help="sampling frequency for both profilers (default 4999)")
    p.add_argument("--scale", type=int, default=500,
                   help="workload --scale; 100 is ~1 CPU-second per worker "
                        "thread, 2 threads (default 500: ~5 s on 2 CPUs)")
    p.add_argument("--nice", type=int, default=0,
                   help="niceness for this script and so for everything it "
                        "starts (workload, profilers, perf2bolt) alike, "
                        "also as autogroup niceness in a session of its own; "
                        "e.g. -10 to shield the runs from other load on a "
                        "shared machine (default 0: unchanged)")
    p.add_argument("--no-warmup", action="store_true",
                   help="skip the short unrecorded warm-up round")
    p.add_argument("--keep", action="store_true",
                   help="keep the work directory (profiles, logs)")
    p.add_argument("--ebpf-bolt", default=str(DEFAULT_EBPF_BOLT))
    p.add_argument("--perf", default=DEFAULT_PERF)
    p.add_argument("--perf2bolt", default=DEFAULT_PERF2BOLT)
    args = p.parse_args(argv)
    if args.runs < 1 or args.frequency < 1 or args.scale < 1:
        p.error("--runs, --frequency and --scale must be positive")
    return args


def apply_nice(nice):
    """Give this script and all it starts niceness `nice`. With scheduler
    autogroups (kernel.sched_autogroup_enabled=1) niceness only ranks
    processes of one session against each other, so the benchmark then
    forks into a session of its own and sets that session's autogroup
    niceness too (leaving the caller's session as it was). Returns None in
    the process that goes on benchmarking, the exit code in the parent."""
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    try:
        autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled"
                         ).read_text().strip() == "1"
    except OSError:
        autogroup = False
    if not autogroup:
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        Path("/proc/self/autogroup").write_text(str(nice))
        return None
    while True:     # the new session gets no Ctrl-C from the terminal
        try:
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status)
        except KeyboardInterrupt:
            os.kill(pid, signal.SIGINT)


def main(argv=None):
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench_ip: run as root (both profilers need it)",
              file=sys.stderr)
        return 2
    for tool in (args.ebpf_bolt, args.perf, args.perf2bolt):
        if not (os.path.isfile(tool) and os.access(tool, os.X_OK)):
            print(f"bench_ip: {tool} not found (run scripts/setup.sh)",
                  file=sys.stderr)
            return 2
    from ebpf_bolt.demo.build import build_workload
    if args.nice:
        parent_code = apply_nice(args.nice)
        if parent_code is not None:
            return parent_code

    work = Path(tempfile.mkdtemp(prefix="bench_ip."))
    try:
        binary = build_workload(work, pie=True)
        args.measure = build_measure(work)
        timeout = 120 + 20 * args.scale / 100.0   # generous: a hang guard
        facts = machine_facts(args)
        runners = {
            "base": lambda s, tag: run_base(binary, s, timeout, work),
            "ebpf": lambda s, tag: run_ebpf(binary, s, timeout, work, args,
                                            tag),
            "perf": lambda s, tag: run_perf(binary, s, timeout, work, args,
                                            tag),
        }
        load_before = loadavg()
        if not args.no_warmup:
            say("warm-up round (scale 20, not recorded)")
            for kind in KINDS:
                runners[kind](20, "warmup")
        res = {k: [] for k in KINDS}
        for i in range(args.runs):
            order = KINDS[i % 3:] + KINDS[:i % 3]
            for kind in order:
                r = runners[kind](args.scale, str(i))
                res[kind].append(r)
                say(run_line(i, args.runs, kind, r))
        load_after = loadavg()
        report(args, facts, res, load_before, load_after)
    except BenchError as e:
        print(f"bench_ip: error: {e}", file=sys.stderr)
        if not args.keep:
            print("bench_ip: run with --keep to keep the logs", file=sys.stderr)
        return 1
    finally:
        # tens of MiB (perf.data, profiles): removed unless --keep, errors
        # included
        if args.keep:
            print(f"bench_ip: work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def run_line(i, runs, kind, r):
    line = (f"run {i + 1}/{runs} {LABEL[kind]}: wall {r['wall']:.2f} s, "
            f"other CPU busy {r['other_cpu']:.2f} s")
    if kind != "base":
        line += (f", profiler CPU {r['prof_cpu']:.3f} s, ready "
                 f"{r['latency']:.3f} s after the end, {r['samples']:,} "
                 "samples")
    if kind == "perf":
        line += f" (perf record exited {r['rec_tail']:.3f} s after the end)"
    return line


def say(msg):
    print(f"bench_ip: {msg}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
