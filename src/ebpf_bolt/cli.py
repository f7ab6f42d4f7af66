"""Command line: ``ebpf-bolt [options] -p PID [duration]`` or
``ebpf-bolt [options] [duration] -- COMMAND [ARGS]``."""
import argparse
import contextlib
import errno
import os
import re
import shutil
import signal
import stat
import sys
import threading
import time

from . import __version__, bolt, provenance
from .collector import (DEFAULT_DURATION, DEFAULT_FREQUENCY, TABLE_MAX_ENTRIES,
                        MODES, Recorder)
from .elf import read_binary
from .errors import (EbpfBoltError, InternalError, KernelUnsupported,
                     OutputError, UsageError, os_error_text)
from .output import (OutputDirectory, OutputFile, commit_with_sidecar,
                     file_type, profile_names, sidecar_output)
from .windows import EARLY_FILL, Windows
from .targets import interpreters
from .perf_event import max_sample_rate
from .targets import PID_HINT, check_pid
from .writers import FORMATS, FORMATS_FOR

PROG = "ebpf-bolt"


def _say(msg):
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def plural(n, noun, nouns=None):
    """'1 sample', '2 samples', '1,000 samples': counts in messages."""
    return f"{n:,} {noun if n == 1 else nouns or noun + 's'}"


class _ArgumentParser(argparse.ArgumentParser):
    """argparse's errors as UsageError: one line and a hint like every other
    error, rather than argparse's usage text and exit."""

    def error(self, message):
        raise UsageError(message, f"see {self.prog} --help")


def _parser():
    p = _ArgumentParser(
        prog=PROG,
        usage="%(prog)s [options] -p PID [duration]\n"
              "       %(prog)s [options] [duration] -- COMMAND [ARGS...]",
        description="Collect a profile for the LLVM BOLT optimizer with eBPF: "
                    "branch stacks where the CPU records them, else IP samples, "
                    "aggregated in the kernel.")
    p.add_argument("-p", "--pid", help="profile this process (all "
                   "its threads, including ones it creates while recorded)")
    p.add_argument("-a", "--all", action="store_true", dest="all",
                   help="record every process on the machine (with --binary "
                   "or --all-objects)")
    p.add_argument("--binary", action="append", dest="binaries",
                   metavar="PATH", help="write the profile of this executable "
                   "or shared library, from every recorded process that runs "
                   "it (repeat for several; default: the command's or PID's "
                   "executable)")
    p.add_argument("--all-objects", action="store_true",
                   help="one profile per object that got samples (-o names "
                   "a directory)")
    p.add_argument("duration", nargs="?", help="seconds to record (default "
                   f"{DEFAULT_DURATION:g} for -p; a command is recorded until it "
                   "exits)")
    p.add_argument("-f", "-F", "--frequency", dest="frequency",
                   default=str(DEFAULT_FREQUENCY),
                   help=f"samples per second per CPU (default {DEFAULT_FREQUENCY}: "
                        "near perf's 4000, off the beat of timer ticks)")
    p.add_argument("-o", "--output", help="profile file (default: stdout)")
    p.add_argument("--interval", metavar="SECONDS", help="also write the "
                   "profile of every SECONDS of the recording: -o FILE gets "
                   "FILE.0001, FILE.0002, ... and the total in FILE; -o DIR "
                   "gets DIR/0001/, ... and the total in DIR")
    p.add_argument("--format", choices=FORMATS, help="fdata (default for IP "
                   "samples: every BOLT reads it; for branch stacks made by "
                   "the installed perf2bolt), preagg (pre-aggregated "
                   "text, llvm-bolt --pa; default for branch stacks), "
                   "preagg-bf (B/F records for LLVM 19-22), yaml (branch "
                   "stacks: BOLT's YAML profile, made by the installed "
                   "perf2bolt; it survives rebuilds of the binary)")
    p.add_argument("--mode", choices=MODES, default="auto",
                   help="lbr: branch stacks (needs LBR/BRBE hardware); ip: "
                        "instruction-pointer samples; auto: lbr if available")
    p.add_argument("--max-entries", type=int, help="distinct IPs or traces "
                   "the sample map has room for (default: what fits a "
                   "64 MiB kernel memory budget)")
    p.add_argument("--btf", metavar="FILE", help="the running kernel's BTF, "
                   "where /sys/kernel/btf/vmlinux is missing")
    p.add_argument("--threads", action="store_true",
                   help="also count samples per thread and report them")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("-V", "--version", action="version",
                   version=f"{PROG} {__version__}")
    return p


def _split_command(argv):
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, None


def _parse_number(text, kind, conv, hint):
    try:
        value = conv(text)
    except (TypeError, ValueError):
        raise UsageError(f"invalid {kind} {text!r}", hint) from None
    if not value > 0 or value != value or value == float("inf"):
        raise UsageError(f"invalid {kind} {text!r}", hint)
    return value


def _frequency_hint():
    limit = max_sample_rate()
    return ("give a whole number of samples per second" +
            (f", 1 to {limit} (kernel.perf_event_max_sample_rate)"
             if limit else ""))


def _parse_pid(text):
    """-p's value as a PID: a whole number in the kernel's range, else a
    UsageError (as any invalid option value)."""
    if not re.fullmatch(r"-?[0-9]+", text.strip()):
        raise UsageError(f"invalid -p/--pid {text!r}: not a whole number",
                         PID_HINT)
    pid = int(text)
    check_pid(pid, "-p/--pid")
    return pid


class _Progress:
    """A one-line progress display, only when stderr is a terminal."""

    def __init__(self, enabled):
        self.enabled = enabled
        self.shown = False
        self.windows = None   # --interval: the windows written so far

    def __call__(self, elapsed, duration, stats):
        if not self.enabled:
            return
        total = f"/{duration:g}" if duration else ""
        kept = stats["samples"] - stats["other_process"]
        window = (f", window {self.windows.count + 1}" if self.windows
                  else "")
        sys.stderr.write(f"\r{PROG}: recording {elapsed:5.1f}{total} s, "
                         f"{plural(kept, 'sample')}{window} ")
        sys.stderr.flush()
        self.shown = True

    def clear(self):
        if self.shown:
            sys.stderr.write("\r\033[K")
            self.shown = False


_signals_received = []
_deferring = False  # True while a recorded profile is being written


def _on_stop_signal(signum, frame):
    """SIGINT, SIGTERM and SIGHUP end a recording like Ctrl-C. Once the
    recording is over they wait until the profile is written: a second
    Ctrl-C must not throw away what was recorded."""
    _signals_received.append(signum)
    if not _deferring:
        # the name says how the recording stopped, in the summary
        raise KeyboardInterrupt(*stop_reason())


def stop_reason():
    """The arguments of the KeyboardInterrupt of the last stop signal
    received: its name, or none where no signal came (a KeyboardInterrupt
    without cli's handlers)."""
    if not _signals_received:
        return ()
    signum = _signals_received[-1]
    return (signal.Signals(signum).name
            + (" (Ctrl-C)" if signum == signal.SIGINT else ""),)


_MODE_DATA = {"ip": "IP samples", "lbr": "branch stacks"}


# a branch profile in these formats is made by the installed perf2bolt
PERF2BOLT_FORMATS = ("fdata", "yaml")


def _check_format(fmt):
    def check(mode):
        if fmt and fmt not in FORMATS_FOR[mode]:
            raise UsageError(
                f"--format {fmt} cannot hold {_MODE_DATA[mode]} (--mode {mode})",
                f"use --format {' or '.join(FORMATS_FOR[mode])} for "
                f"{_MODE_DATA[mode]}")
        if mode == "lbr" and fmt in PERF2BOLT_FORMATS:
            bolt.find_perf2bolt(fmt)     # before recording, not after
    return check


def summary_lines(profile, fmt, output, text):
    i, st = profile.info, profile.stats
    kept = st["samples"] - st["other_process"] - st["before_exec"]
    in_binary = profile.total()
    lines = []
    pie = "PIE" if i["is_pie"] else "non-PIE"
    who = (f"pid {i['pid']} and the processes it started" if i['pid']
           else "every process")
    lines.append(f"recorded {profile.binary} ({pie}) in {who} for "
                 f"{i['duration']:.2f} s, stopped by {i['stopped_by']}; "
                 f"mode {profile.mode} ({profile.event} at {i['frequency']} Hz"
                 + (f", events {i['scope']})" if i.get("scope") else ")"))
    if profile.kind == "basic":
        share = 100.0 * in_binary / kept if kept else 0.0
        lines.append(f"samples: {kept:,} of the recorded processes, "
                     f"{in_binary:,} in the binary ({share:.1f}%, from "
                     f"{plural(i.get('processes', 0), 'process', 'processes')}), "
                     f"{st['outside_binary']:,} in other objects, "
                     f"{st['anon_ip']:,} in memory mapping no file, "
                     f"{st['kernel_ip']:,} in the kernel; "
                     + plural(i["distinct_addresses"], "distinct address",
                              "distinct addresses"))
    else:
        lines.append(f"samples: {kept:,} of the process with "
                     f"{st['branch_entries']:,} branch entries; "
                     f"{st['kernel_branches']:,} kernel entries dropped, "
                     f"{st['stack_cut']:,} stacks cut at 64, "
                     f"{st['branch_read_failed']:,} unreadable, "
                     f"{st['empty_stacks']:,} with no user branch")
        lines.append(f"traces: {len(profile.traces):,} distinct in the binary, "
                     f"{in_binary:,} counted; {st['outside_binary']:,} left out "
                     "(no end in the binary)")
        lines.append(branch_types_line(profile))
        if fmt == "preagg":
            lines.append("mispredicts left out: LLVM 22 takes none on T "
                         "records; --format preagg-bf keeps them")
    if "objects_seen" in i:
        # what translating in the kernel took: its mapping lookups are the
        # only expensive step (bpf_find_vma, once per process and mapping)
        lines.append(f"objects: {i['objects_seen']:,} mapped at sampled "
                     f"addresses; {plural(st['vma_lookups'], 'mapping lookup')}"
                     f" from samples, {st['unresolved']:,} addresses unplaced")
    dropped = st["map_full"] + st["update_failed"] + st["scratch_failed"]
    lost = (f", trace counts lost {st['traces_lost']:,}"
            if profile.kind == "branch" else "")
    lines.append(f"dropped: {dropped:,} (map full {st['map_full']:,}, update "
                 f"failures {st['update_failed']:,}{lost})" +
                 (f"; raise --max-entries (now {i['map_entries']:,})"
                  if st["map_full"] else ""))
    what = "IPs" if profile.kind == "basic" else "traces"
    sets = i.get("table_sets", 1)
    # with --interval, the bytes are both sets', the slots and room each's
    slots = (f"{i['table_slots']:,} slots, shared by all CPUs: room for "
             f"{i['map_entries']:,} {what}" if sets == 1 else
             f"{sets} sets of {i['table_slots']:,} slots, shared by all "
             f"CPUs: room for {i['map_entries']:,} {what} each")
    lines.append(f"kernel memory: {i['kernel_bytes'] / 2**20:.2f} MiB: the "
                 f"{what}' table {i['table_bytes'] / 2**20:.2f} MiB "
                 f"({slots}; "
                 f"{plural(st['table_updates'], 'update')} past the per-CPU "
                 f"caches), caches and process tables "
                 f"{(i['kernel_bytes'] - i['table_bytes']) / 2**20:.2f} MiB "
                 f"({i['ncpus']} possible CPUs); drain and translation "
                 f"{i['drain_seconds']:.3f} s")
    user = i.get("user_samples") or 0
    if user and i.get("object_samples", 0) * 2 < user and i.get("top_objects"):
        lines.append(f"{profile.binary} got {_share(i['object_samples'], user)}"
                     " of the user-space samples; the objects that got most:")
        for path, n, procs in i["top_objects"]:
            lines.append(f"  {path}: {plural(n, 'sample')} in "
                         f"{plural(procs, 'process', 'processes')}")
        lines.append(f"  profile one with --binary {i['top_objects'][0][0]}, "
                     "or all with --all-objects -o DIR")
    if st["other_process"]:
        # what the events' scope cost: samples of tasks that are not the
        # target (on the same CPUs, in the cgroup, or the command's child
        # processes, which inherit its event)
        lines.append(f"other processes: {plural(st['other_process'], 'sample')}"
                     " of tasks that are not the target, skipped in the kernel")
    if i.get("threads"):
        lines.append(f"threads sampled: {len(i['threads'])} ("
                     + ", ".join(f"{t}:{c}" for t, c in
                                 sorted(i["threads"].items())) + ")")
    where = output if output not in (None, "-") else "stdout"
    if windows_line(profile, output):
        lines.append(windows_line(profile, output))
        lines += stale_windows(profile, output)
    extra = ""
    if fmt == "fdata" and st.get("outside_functions"):
        extra = (f"; {plural(st['outside_functions'], 'sample')} outside "
                 "function symbols left out")
    lines.append(f"wrote {fmt} profile to {where} ("
                 f"{plural(len(text), 'byte')}, "
                 f"{plural(text.count(chr(10)), 'line')}){extra}")
    lines += _made_by(profile)
    lines += loss_warnings(profile, fmt)
    lines.append(_apply_line(profile, fmt, output))
    return lines


_FD_LINK = re.compile(r"/proc/\d+(/task/\d+)?/fd/\d+")


def _is_fd_link(path):
    """True where `path` resolves through a link to a file descriptor of
    the process (/dev/stdout, /dev/fd/N, /proc/self/fd/N): a name whose
    meaning is this process's, not one the profile can be found by."""
    path = os.path.abspath(path)
    for _ in range(40):   # the kernel's limit of links followed
        path = os.path.join(os.path.realpath(os.path.dirname(path)),
                            os.path.basename(path))
        if _FD_LINK.fullmatch(path):
            return True
        try:
            target = os.readlink(path)
        except OSError:   # not a link (or gone): the end of the chain
            return False
        path = os.path.join(os.path.dirname(path), target)
    return False


def _holds_profile(output):
    """True where the path given as -o is a regular file after the write,
    one the apply command can name; False for stdout, a character device
    (/dev/null), a FIFO and a link to a file descriptor (/dev/stdout)."""
    if output in (None, "-") or _is_fd_link(output):
        return False
    try:
        return stat.S_ISREG(os.stat(output).st_mode)
    except OSError:
        return False


def _made_by(profile):
    """The line naming the perf2bolt that made the profile (branch fdata
    or YAML), if one did."""
    made_by = profile.info.get("made_by")
    return [f"made by {made_by}"] if made_by else []


def _apply_line(profile, fmt, output):
    """The apply command for BOLT, or (stripped binary) why there is none.
    An output that holds no profile afterwards (see _holds_profile) gets
    FILE and the advice to save it there, as stdout does."""
    named = _holds_profile(output)
    path = output if named else "FILE"
    command = bolt.apply_command(profile.binary, path, fmt, profile.kind,
                                 elf=profile.elf)
    if command is None:
        return "warning: " + bolt.stripped_advice(
            profile.elf, path, fmt, profile.kind, binary=profile.binary)
    if not named:
        return "apply it: save it with -o FILE, then: " + command
    return "apply it: " + command


def _raise_entries(entries, refused):
    """The fix for a full map, with a --max-entries to suggest where the
    size is known. Each of the `refused` inserts (the map_full counter)
    was at most one key the map lacked room for, so the map's size plus
    them holds the whole run: that with a quarter more, as a power of two,
    up to the largest map ebpf-bolt makes."""
    if not entries:
        return "raise --max-entries"
    need = (entries + refused) * 5 // 4
    suggested = min(1 << max(need - 1, 1).bit_length(), TABLE_MAX_ENTRIES)
    return (f"raise --max-entries (now {entries:,}), e.g. --max-entries "
            f"{suggested}")


def _share(part, whole):
    """A percentage that reads 100% only for all, and 0% only for none."""
    if not whole:
        return "all"
    share = 100.0 * part / whole
    if part < whole and share >= 99.95:
        return f"{min(share, 99.99):.2f}%"
    if part and share < 0.05:
        return "<0.1%"
    return f"{share:.1f}%"


def loss_warnings(profile, fmt):
    """A "warning: ..." line for every loss, with its figure and the option
    that fixes it. The profile is written all the same (as perf does) and
    the exit status stays 0: what was kept is exact."""
    st, out = profile.stats, []
    entries = profile.info.get("map_entries")
    if profile.kind == "basic":
        kept = st["samples"] - st["other_process"] - st["before_exec"]
        lost = st["map_full"]
        if lost:
            more = _raise_entries(entries, st["map_full"])
            out.append(f"{plural(lost, 'sample')} ({_share(lost, kept)}) "
                       f"lost: the IP map was full; {more}")
        if fmt == "fdata" and st.get("outside_functions") and \
                profile.total():
            left, total = st["outside_functions"], profile.total()
            if left * 100 >= total:   # a few in PLT stubs are usual
                falls, is_, its = (("falls", "is", "its address")
                                   if left == 1 else
                                   ("fall", "are", "their addresses"))
                out.append(f"{plural(left, 'sample')} of the binary "
                           f"({_share(left, total)}) {falls} outside its "
                           f"function symbols and {is_} not in the fdata; "
                           f"--format preagg keeps {its}")
    else:
        counted = st["traces"]
        lost = st["traces_lost"]
        if lost:
            more = _raise_entries(entries, st["map_full"])
            cause = (f"the trace map was full ({st['map_full']:,} refused "
                     f"inserts); {more}" if st["map_full"] else
                     f"{plural(st['update_failed'], 'trace map update')} "
                     "failed (no free element or a busy lock)")
            out.append(f"{lost:,} of {counted:,} trace counts "
                       f"({_share(lost, counted)}) lost: {cause}")
        if st["stack_cut"]:
            out.append(f"{plural(st['stack_cut'], 'branch stack')} deeper "
                       "than 64 entries: their entries beyond the newest 64 "
                       "are not counted")
        if st["branch_read_failed"]:
            out.append(f"{plural(st['branch_read_failed'], 'sample')} "
                       f"({_share(st['branch_read_failed'], st['samples'])}) "
                       "had no readable branch stack and are not counted")
        left = st.get("traces_outside_binary")
        if left and left * 2 > counted - lost:
            out.append(f"{left:,} of {counted - lost:,} trace counts "
                       f"({_share(left, counted - lost)}) have neither end "
                       "in the binary: check --binary and --load-base")
    if st["unresolved"]:
        out.append(f"{plural(st['unresolved'], 'address', 'addresses')} "
                   "could not be placed in an object (the kernel's mapping "
                   "lookup was busy) and are not counted")
    if st["procs_full"]:
        out.append(f"{plural(st['procs_full'], 'process', 'processes')} "
                   "not recorded: the process table was full")
    if st["objects_full"]:
        out.append(f"{plural(st['objects_full'], 'mapping')} of objects "
                   "beyond the object table's size are not counted")
    if st["update_failed"] and profile.kind == "basic":
        out.append(f"{plural(st['update_failed'], 'sample')} lost: the "
                   "kernel refused IP map updates (no free element or a "
                   "busy lock)")
    if st["scratch_failed"]:
        out.append(f"{plural(st['scratch_failed'], 'sample')} lost: no "
                   "per-CPU scratch space for their branch stacks")
    if st["thread_map_full"]:
        out.append(f"{plural(st['thread_map_full'], 'sample')} missing from "
                   "the thread counts (--threads): the thread map was full")
    return ["warning: " + line for line in out]


def record(args, command):
    global _deferring
    if args.all and (args.pid is not None or command):
        raise UsageError("-a/--all records every process: give no -p PID "
                         "or command with it", "drop -p or the command, or -a")
    if args.pid is None and not command and not args.all:
        raise UsageError("nothing to profile",
                         "give -p PID, -- COMMAND or -a --binary PATH")
    if args.pid is not None and command:
        raise UsageError("give -p PID or a command, not both",
                         "use -p PID to attach to a running process, or "
                         "-- COMMAND to start one")
    pid = _parse_pid(args.pid) if args.pid is not None else None
    frequency = _parse_number(args.frequency, "frequency", int,
                              _frequency_hint())
    duration = (_parse_number(args.duration, "duration", float,
                              "give a positive number of seconds")
                if args.duration is not None else None)
    interval = (_parse_number(args.interval, "--interval", float,
                              "give a positive number of seconds")
                if args.interval is not None else None)
    if interval is not None:
        _check_interval_output(args.output)
    progress = _Progress(sys.stderr.isatty())

    def notice(message):   # a note during recording takes its own line
        progress.clear()
        _say("note: " + message)

    def warning(message):
        progress.clear()
        _say("warning: " + message)

    rec = Recorder(pid=pid, command=command, duration=duration,
                   frequency=frequency, mode=args.mode,
                   max_entries=args.max_entries, count_threads=args.threads,
                   notice=notice, verbose=args.verbose, warn=warning,
                   binaries=args.binaries or (), all_objects=args.all_objects,
                   all_processes=args.all, btf=args.btf,
                   windows=interval is not None)
    # what is recorded must not become the profile: the command's program
    # as it will be run, or what /proc/PID/exe points to, and the objects
    inputs = ([f"/proc/{pid}/exe"] if pid is not None
              else _command_inputs(command) if command else [])
    inputs += list(args.binaries or ())
    if args.all_objects or len(rec.binaries) > 1:
        return record_objects(args, rec, inputs, progress, frequency,
                              duration, interval)
    if interval is not None:
        _check_window_names(args.output)
    unwritten = []
    try:
        # the output opened, hence checked, before recording; the recording
        # closed on leaving, whatever happens
        with rec, OutputFile(args.output, inputs=inputs) as out, \
                _sidecar_of(out) as side:
            @_window_writer(unwritten, lambda n: window_name(args.output, n))
            def write_window(n, profiles, early):
                with OutputFile(window_name(args.output, n), inputs=inputs,
                                regular=True) as w, _sidecar_of(w) as ws:
                    _commit_profile(w, ws, rec, profiles[0], args.format)
                what = "sample" if rec.mode == "ip" else "trace count"
                _say(f"window {n}: {window_name(args.output, n)}, "
                     f"{plural(profiles[0].total(), what)}"
                     + (" (drained early)" if early else ""))
            profile = _record_until_done(
                rec, args, progress, frequency, duration,
                check_binary=lambda exe: out.check_inputs([exe]),
                interval=interval, write_window=write_window)
            fmt, text = _commit_profile(out, side, rec, profile, args.format)
        for line in summary_lines(profile, fmt, args.output, text):
            _say(line)
        for line in unwritten_warning(unwritten):
            _say(line)
        if profile.total() == 0:
            _say("warning: no samples in the binary; is it running on CPU?")
    finally:
        _deferring = False
        progress.clear()
    if rec.target.child:
        return wait_for_command(rec.target)
    return 0


def _sidecar_of(out):
    """The Sidecar beside `out`'s profile, or an empty context where the
    profile gets none (stdout, a device, a FIFO)."""
    side = sidecar_output(out)
    return side if side is not None else contextlib.nullcontext()


def replayed_provenance(profile, fmt, started, stopped):
    """provenance.describe() of a replayed profile: event "replay", no
    frequency (no sampling made it), the replay's own run for its times."""
    return provenance.describe(
        path=profile.binary, build_id=profile.info.get("build_id"),
        mode=profile.mode, fmt=fmt, event=provenance.REPLAY_EVENT,
        frequency=None, start=started, end=stopped)


def _commit_with_sidecar(out, side, profile, text, prov):
    """Commit `text`, the profile `profile` rendered, to `out`, and its
    sidecar of provenance `prov` to `side` (None: it gets none), made
    before either is written (output.commit_with_sidecar)."""
    side_text = None
    if side is not None:
        side.check_inputs([profile.binary])
        side_text = profile.sidecar_text(prov, text)
    commit_with_sidecar(out, side, text, side_text)


def _commit_profile(out, side, rec, profile, fmt):
    """Write one recorded profile to `out` (an OutputFile) and its sidecar
    to `side` (None: it gets none): the total, and each window of
    --interval. Returns (format, text)."""
    fmt = fmt or profile.default_format
    text = profile.render(fmt)
    # the executable recorded, and what the process runs now if it
    # exec'd another program since
    out.check_inputs([profile.binary] + (
        [f"/proc/{rec.target.pid}/exe"] if rec.target.pid and
        rec.target.alive() else []))
    _commit_with_sidecar(out, side, profile, text, profile.provenance(fmt))
    return fmt, text


def window_name(output, n, directory=False):
    """Where window `n` of --interval goes: FILE.0001 beside -o FILE, or
    DIR/0001 in -o DIR (several objects)."""
    return (os.path.join(output, f"{n:04d}") if directory
            else f"{output}.{n:04d}")


def stale_windows(profile, output):
    """A warning when windows numbered past this run's last one are beside
    -o FILE (left by an earlier, longer run): adding FILE.* up would count
    them."""
    n = profile.info.get("windows")
    if not n:
        return []
    stale = [(number, path) for number, path, sidecar in
             _window_files(output) if not sidecar and number > n]
    if not stale:
        return []
    return [f"warning: {plural(len(stale), 'window')} past this recording's "
            f"{n} ({stale[0][1]} first) "
            "are an earlier run's: remove them before adding windows up"]


def windows_line(profile, output, directory=False):
    """The summary's line on the windows of --interval (None without)."""
    n = profile.info.get("windows")
    if not n:
        return None
    early = profile.info.get("early_windows", 0)
    return (f"windows: {plural(n, 'window')} of "
            f"{profile.info['interval']:g} s written, "
            f"{window_name(output, 1, directory)} to "
            f"{window_name(output, n, directory)}"
            + (f", {early:,} of them drained early (their table passed "
               f"{100 * EARLY_FILL:.0f}% of its room)" if early else "")
            + f"; the total, their sum, in {output}")


def _window_writer(unwritten, name):
    """Decorates a write_window: a window that cannot be written (a full
    disk, a name taken since the start) is a warning, and its number goes
    to `unwritten`; recording, the later windows and the total go on."""
    def wrap(write):
        def write_window(n, profiles, early):
            try:
                write(n, profiles, early)
            except (OutputError, OSError) as e:
                why = (e.args[0] if isinstance(e, OutputError) else
                       f"{e.filename or name(n)}: {e.strerror or e}")
                hint = getattr(e, "hint", "")
                unwritten.append(n)
                _say(f"warning: window {n} ({name(n)}) was not written: "
                     f"{why}{f' ({hint})' if hint else ''}; recording goes "
                     "on, but the windows no longer add up to the total")
        return write_window
    return wrap


def unwritten_warning(unwritten):
    """The summary's warning on windows that could not be written."""
    if not unwritten:
        return []
    return [f"warning: {plural(len(unwritten), 'window')} not written "
            f"({', '.join(map(str, unwritten))}): the windows written do "
            "not add up to the total"]


# window numbers have 4 digits, more past 9999: names are checked for 5
WINDOW_SUFFIX = ".00000.json"


def _window_files(output):
    """The windows of -o FILE there now, and their sidecars: sorted
    (number, path, is a sidecar) of the names FILE.0001, FILE.0001.json
    and on beside it ([] where its directory cannot be read)."""
    where = os.path.dirname(output) or "."
    pattern = re.compile(re.escape(os.path.basename(output))
                         + r"\.([0-9]{4,})(\.json)?")
    try:
        names = os.listdir(where)
    except OSError:
        return []
    return sorted((int(m[1]), os.path.join(where, name), bool(m[2]))
                  for name in names if (m := pattern.fullmatch(name)))


def _check_window_names(output):
    """Before recording, that -o FILE's windows, FILE.0001 and on, and
    their sidecars FILE.0001.json, can be written: their names fit the
    directory's NAME_MAX, and those already there are regular files (a
    FIFO would stop the recording until read)."""
    where = os.path.dirname(output) or "."
    base = os.path.basename(output)
    try:
        name_max = os.pathconf(where, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = None   # no such directory: OutputFile says so
    if name_max and len(os.fsencode(base + WINDOW_SUFFIX)) > name_max:
        raise OutputError(f"--interval: the windows of -o {output} would be "
                          f"named {base}.0001.json and on, longer than the "
                          f"{name_max} bytes a file name can have there",
                          "give -o a shorter file name")
    for _, path, _ in _window_files(output):
        try:
            st = os.stat(path)   # through links: their target is written
        except OSError:
            continue             # a dangling link: its target is made
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(f"--interval: {path}, where a window of -o "
                              f"{output} goes, is {file_type(st.st_mode)}",
                              "remove it, or give -o another file name")


def _check_interval_output(output):
    """--interval writes files beside -o FILE or into -o DIR while
    recording: stdout, a device, a FIFO or a descriptor cannot take them."""
    hint = "give --interval a regular file or a directory with -o"
    if output in (None, "-"):
        raise UsageError("--interval writes a profile per window: stdout "
                         "cannot take them", hint)
    if _is_fd_link(output):
        raise UsageError(f"--interval: -o {output} is a file descriptor, "
                         "which cannot take a profile per window", hint)
    try:
        st = os.stat(output)
    except OSError:
        return   # a new file or directory (OutputFile checks the rest)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise UsageError(f"--interval: -o {output} is not a regular file or "
                         "a directory", hint)


@contextlib.contextmanager
def _deferred_signals():
    """Stop signals wait while a window ends (its counts drained, cleared
    and written), then stop the recording as they would have."""
    global _deferring
    before = len(_signals_received)
    _deferring = True
    try:
        yield
    finally:
        _deferring = False
    if len(_signals_received) > before:
        raise KeyboardInterrupt(*stop_reason())


def _record_until_done(rec, args, progress, frequency, duration,
                       check_binary=None, interval=None, write_window=None):
    """The steps every output shares: start (checks before anything runs),
    say what is recorded, record until the end, drain. Returns the first
    profile; all are in rec.profiles. With `interval`, every window is
    written by write_window(number, profiles, early) as it ends, and the
    profiles are the windows' total (windows.py)."""
    global _deferring
    rec.start(check_mode=_check_format(args.format), check_binary=check_binary)
    _say(f"recording {rec.target.describe()} "
         f"({rec.mode} mode, {rec.event.name} at {frequency} Hz, "
         f"events {rec.scope})"
         + (f", a window every {interval:g} s" if interval else "")
         + ("; Ctrl-C stops" if duration is None or duration > 2 else ""))
    if interval is None:
        rec.run(progress)
        _deferring = True   # signals now wait until the profile is written
        progress.clear()
        return rec.finish()

    def notice(message):
        progress.clear()
        _say("note: " + message)

    def write(n, profiles, early):
        progress.clear()
        write_window(n, profiles, early)
    windows = Windows(rec, interval, write, notice, _deferred_signals)
    progress.windows = windows
    rec.run(progress, poll=windows.poll)
    _deferring = True
    progress.clear()
    windows.finish()
    return rec.profiles[0] if rec.profiles else None


def render_each(profiles, fmt):
    """[(profile, format, text)] and warnings, for a directory of several
    profiles. An object perf2bolt cannot make fdata or YAML of (a stripped
    library, say: perf2bolt refuses those) gets its preagg-bf records
    instead, with a warning, rather than losing the whole recording."""
    out, warnings = [], []
    for profile in profiles:
        f = fmt or profile.default_format
        try:
            out.append((profile, f, profile.render(f)))
        except KernelUnsupported as e:
            if f not in PERF2BOLT_FORMATS or profile.kind != "branch":
                raise
            warnings.append(f"warning: {profile.binary}: {e}; its preagg-bf "
                            "records are written instead")
            out.append((profile, "preagg-bf", profile.render("preagg-bf")))
    return out, warnings


def _commit_objects(out, profiles, fmt, directory, provenance_of=None):
    """Write several profiles and their index.json to `out` (an
    OutputDirectory for `directory`): a recording's total, each window of
    --interval, a replay's. provenance_of(profile, format): their
    provenance (default: Profile.provenance, a recording's). Returns
    (texts, names, warnings) as render_each gives them."""
    provenance_of = provenance_of or (lambda p, f: p.provenance(f))
    entries = []
    texts, warnings = render_each(profiles, fmt)
    names = profile_names([(os.path.basename(p.binary),
                            p.info.get("build_id"), f)
                           for p, f, _ in texts])
    for (profile, f, text), name in zip(texts, names):
        out.add(name, text)
        path = os.path.join(directory, name)
        command = bolt.apply_command(profile.binary, path, f,
                                     profile.kind, elf=profile.elf)
        entries.append({"path": profile.binary,
                        "build_id": profile.info.get("build_id"),
                        "profile": name,
                        "samples": profile.total(),
                        # a replay has one address space, and no count
                        "processes": profile.info.get("processes", 1),
                        "command": command,
                        **provenance.index_fields(provenance_of(profile, f))})
    out.commit({"objects": entries})
    return texts, names, warnings


def record_objects(args, rec, inputs, progress, frequency, duration,
                   interval=None):
    """Record, then write one profile per object into the -o directory,
    with its index.json (complete or absent, as a single file is). With
    `interval`, each window goes to DIR/0001/ and so on while recording,
    and the total's files into DIR itself, index.json last."""
    global _deferring
    if args.output in (None, "-"):
        raise UsageError("several objects get a profile: -o must name a "
                         "directory", "give -o DIR")
    unwritten = []
    try:
        with rec, OutputDirectory(args.output, inputs=inputs,
                                  in_place=interval is not None) as out:
            @_window_writer(unwritten, lambda n: window_name(
                args.output, n, directory=True))
            def write_window(n, profiles, early):
                where = window_name(args.output, n, directory=True)
                with OutputDirectory(where, inputs=inputs) as w:
                    _commit_objects(w, profiles, args.format, where)
                _say(f"window {n}: {where}/, "
                     f"{plural(len(profiles), 'profile')}"
                     + (" (drained early)" if early else ""))
            _record_until_done(rec, args, progress, frequency, duration,
                               interval=interval, write_window=write_window)
            fmt = args.format
            texts, names, warnings = _commit_objects(out, rec.profiles, fmt,
                                                     args.output)
        for (profile, f, text), name in zip(texts, names):
            _say(f"{name}: {profile.binary}, "
                 f"{plural(profile.total(), 'sample')} in "
                 f"{plural(profile.info.get('processes', 0), 'process', 'processes')}")
        if rec.profiles:
            first = rec.profiles[0]
            for line in _made_by(first) + warnings + loss_warnings(
                    first, fmt or first.default_format):
                _say(line)
        # (no earlier run's windows: -o DIR was new or empty at the start)
        if rec.profiles and windows_line(rec.profiles[0], args.output, True):
            _say(windows_line(rec.profiles[0], args.output, True))
        for line in unwritten_warning(unwritten):
            _say(line)
        _say(f"wrote {plural(len(names), 'profile')} and index.json to "
             f"{args.output}")
    finally:
        _deferring = False
        progress.clear()
    if rec.target.child:
        return wait_for_command(rec.target)
    return 0


def _command_inputs(command):
    """The command's program as it will be run, and the interpreters a #!
    script runs (the executable recorded is the last of them)."""
    exe = shutil.which(command[0])
    return [exe] + interpreters(exe) if exe else []


def wait_for_command(target):
    """Wait for the command after recording; a SIGTERM meant for ebpf-bolt
    is passed on to it (Ctrl-C reaches it from the terminal by itself)."""
    while True:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if sig in _signals_received:
                target.signal(sig)
                _signals_received.remove(sig)
        try:
            return target.wait()
        except KeyboardInterrupt:
            continue


def _replay_parser():
    p = _ArgumentParser(
        prog=f"{PROG} replay",
        description="Aggregate branch stacks given as text (perf script -F "
                    "brstack form, one sample per line, newest entry first) "
                    "through the same kernel code that live LBR sampling "
                    "uses, and write the profile of each --binary (one: "
                    "-o FILE; several: -o DIR, one profile each and "
                    "index.json).")
    p.add_argument("stacks", nargs="?", default="-",
                   help="file of branch stacks (default: stdin)")
    p.add_argument("--binary", required=True, action="append",
                   dest="binaries", metavar="PATH[@LOAD_BASE]",
                   help="an object the stacks ran in (executable or shared "
                   "library), with the hex runtime address of its first "
                   "segment after @ (PIE, library; 0, the default, for "
                   "non-PIE); repeat for each object")
    p.add_argument("--load-base", help="the load base of the one --binary "
                   "(hex), as PATH@LOAD_BASE gives it")
    p.add_argument("-o", "--output", help="profile file (default: stdout); "
                   "with several --binary, a directory")
    p.add_argument("--format", choices=FORMATS_FOR["lbr"], default="preagg",
                   help="preagg (T records, default), preagg-bf (B/F "
                   "records, LLVM 19-22), fdata or yaml (made by the "
                   "installed perf2bolt)")
    p.add_argument("--max-entries", type=int, help="traces the trace map "
                   "has room for")
    p.add_argument("--cpu", type=int, action="append", dest="cpus",
                   help="CPU to run on (repeat: the stacks are dealt to "
                        "the CPUs, which replay them at the same time; "
                        "default: the first CPU allowed)")
    return p


def _merge_parser():
    from .merge import ENGINES
    p = _ArgumentParser(
        prog=f"{PROG} merge",
        description="Sum profiles of one object (from several runs or "
                    "hosts) into one: files ebpf-bolt wrote, with their "
                    "sidecars (FILE.json), and index.json directories, "
                    "merged per object into a directory.")
    p.add_argument("profiles", nargs="+", metavar="PROFILE",
                   help="a profile with its sidecar, or a directory with "
                   "index.json")
    p.add_argument("-o", "--output", help="the merged profile (default: "
                   "stdout, without sidecar); a directory where an input "
                   "is one")
    p.add_argument("--binary", metavar="PATH", help="the object the "
                   "profiles are of: needed for a profile without sidecar "
                   "(its build id is read from PATH)")
    p.add_argument("--engine", choices=ENGINES, default="builtin",
                   help="builtin (default) or duckdb (pip install "
                   "'ebpf-bolt[duckdb]'): the same group-by-sum, run by "
                   "DuckDB over the files")
    return p


def _check_binary(path):
    """--binary is read before the stacks are replayed."""
    return read_binary(path, "give the profiled executable (64-bit "
                       "little-endian ELF) with --binary")


def _check_cpus(cpus):
    """--cpu values this process may run on (sched_setaffinity would
    refuse the others, or overflow on a negative one), each once: the CPUs
    replay at the same time, and two runs sharing a CPU's cache would
    lose counts wherever the kernel preempts one for the other."""
    allowed = sorted(os.sched_getaffinity(0))
    for n, cpu in enumerate(cpus or ()):
        if cpu not in allowed:
            raise UsageError(f"--cpu {cpu}: not a CPU this process may run on",
                             f"choose among CPUs {_cpu_list(allowed)}")
        if cpu in cpus[:n]:
            raise UsageError(f"--cpu {cpu} is given twice",
                             "give each CPU once: the stacks are dealt to "
                             "the CPUs, which replay them at the same time")


def _cpu_list(cpus):
    """[0, 1, 2, 5] -> '0-2,5'."""
    runs = []
    for cpu in cpus:
        if runs and runs[-1][1] == cpu - 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs)


def _load_base(text, what):
    try:
        load_base = int(text, 16)
    except ValueError:
        raise UsageError(f"invalid {what} {text!r}",
                         "give a hexadecimal address, e.g. 0x555555554000")
    if not 0 <= load_base < 1 << 64:
        raise UsageError(f"invalid {what} {text!r}: not a 64-bit address",
                         "give a hexadecimal address, e.g. 0x555555554000")
    return load_base


def replay_objects_of(binaries, load_base=None):
    """[(path, load base)] from --binary PATH[@LOAD_BASE] (repeated) and
    --load-base (one object only). The load base follows the last @,
    unless the whole argument names an existing file."""
    if load_base is not None and len(binaries) > 1:
        raise UsageError(f"--load-base with {len(binaries)} --binary: "
                         "whose load base is it?",
                         "give each object its own: --binary PATH@LOAD_BASE")
    out = []
    for spec in binaries:
        path, sep, base = spec.rpartition("@")
        if not sep or os.path.exists(spec):
            path, base = spec, None
        if base is not None and load_base is not None:
            raise UsageError(f"--binary {spec} has a load base, and "
                             f"--load-base {load_base} another",
                             "give one of them")
        if base is not None:
            out.append((path, _load_base(base, f"load base in --binary {spec}")))
        else:
            out.append((path, _load_base(load_base or "0", "--load-base")))
    return out


def replay_command(args):
    from .collector import check_fd_limit, check_max_entries
    from .replay import parse_stacks, replay_objects
    objects = replay_objects_of(args.binaries, args.load_base)
    several = len(objects) > 1
    if several and args.output in (None, "-"):
        raise UsageError("several objects get a profile: -o must name a "
                         "directory", "give -o DIR")
    elfs = [_check_binary(path) for path, _ in objects]
    if args.format in PERF2BOLT_FORMATS:
        bolt.find_perf2bolt(args.format)     # before replaying
    _check_cpus(args.cpus)
    check_fd_limit(0)   # no events, but the BPF object's fds
    if args.max_entries is not None:
        check_max_entries(args.max_entries, "trace_counts")
    if args.stacks == "-":
        if sys.stdin is None:   # started with stdin closed
            raise UsageError("no stacks file given and stdin is closed",
                             "give the stacks file, or pipe perf script "
                             "-F brstack into ebpf-bolt replay")
        # bytes where stdin has them (a text stream put in its place, as
        # a caller of main() may do, is read as text)
        stacks = parse_stacks(getattr(sys.stdin, "buffer", sys.stdin))
    else:
        try:
            with open(args.stacks, "rb") as f:
                stacks = parse_stacks(f)
        except OSError as e:
            raise UsageError(f"cannot read {args.stacks}: {os_error_text(e)}",
                             "check the stacks file") from None
    # what keeps BOLT from using a profile of it, before replaying
    for elf, (path, _) in zip(elfs, objects):
        for message in bolt.binary_warnings(elf, path):
            _say("warning: " + message)
    # stdin too: it may be the file given as -o (replay ... < FILE -o FILE)
    inputs = [path for path, _ in objects] + [
        args.stacks if args.stacks != "-" else "/proc/self/fd/0"]
    if several:
        return replay_to_directory(args, objects, stacks, inputs)
    with OutputFile(args.output, inputs=inputs) as out, \
            _sidecar_of(out) as side:
        started = time.time()
        profile, = replay_objects(objects, stacks,
                                  max_entries=args.max_entries, cpus=args.cpus)
        text = profile.render(args.format)
        _commit_with_sidecar(out, side, profile, text, replayed_provenance(
            profile, args.format, started, time.time()))
    for line in replay_summary(profile, args.format, len(stacks),
                               args.output):
        _say(line)
    return 0


def replay_to_directory(args, objects, stacks, inputs):
    """Several objects: one profile each in the -o directory, with its
    index.json (complete or absent), as record_objects writes them."""
    from .replay import replay_objects
    fmt = args.format
    with OutputDirectory(args.output, inputs=inputs) as out:
        started = time.time()
        profiles = replay_objects(objects, stacks,
                                  max_entries=args.max_entries, cpus=args.cpus)
        stopped = time.time()
        _, names, warnings = _commit_objects(
            out, profiles, fmt, args.output,
            lambda p, f: replayed_provenance(p, f, started, stopped))
    _say(replay_summary(profiles[0], fmt, len(stacks))[0])
    for line in _made_by(profiles[0]) + warnings:   # one tool made them
        _say(line)
    for profile, name in zip(profiles, names):
        st = profile.stats
        _say(f"{name}: {profile.binary} at {profile.info['load_base']:#x}, "
             f"{len(profile.traces):,} distinct traces, "
             f"{profile.total():,} counted; outside it: "
             f"{st['traces_outside_binary']:,}")
    # losses are the run's, the same for every object; what is outside one
    # object is another's, so only an object with nothing is worth a word
    for line in loss_warnings(profiles[0], fmt):
        if "neither end in the binary" not in line:
            _say(line)
    for profile in profiles:
        if not profile.traces:
            _say(f"warning: {profile.binary}: no trace has an end in it: "
                 "check its load base (--binary PATH@LOAD_BASE)")
    _say(f"wrote {plural(len(names), 'profile')} and index.json to "
         f"{args.output}")
    return 0


def replay_summary(profile, fmt, nstacks, output=None):
    st = profile.stats
    lines = [f"replayed {plural(nstacks, 'branch stack')}: "
             f"{plural(st['branch_entries'], 'entry', 'entries')}, "
             f"{st['kernel_branches']:,} kernel entries dropped, "
             f"{st['stack_cut']:,} stacks cut to 64 entries, "
             f"{st['empty_stacks']:,} with no user entry"]
    lines.append(f"traces: {len(profile.traces):,} distinct, "
                 f"{profile.total():,} counted; lost (trace map full): "
                 f"{st['traces_lost']:,} in {st['map_full']:,} failed inserts; "
                 f"outside the binary: {st['traces_outside_binary']:,}")
    lines.append(branch_types_line(profile))
    if fmt == "preagg":
        lines.append("mispredicts are left out: LLVM 22 takes no mispredict "
                     "field on T records; --format preagg-bf keeps them")
    lines += _made_by(profile)
    lines += loss_warnings(profile, fmt)
    lines.append(_apply_line(profile, fmt, output))
    return lines


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    own, command = _split_command(argv)
    # only the main thread may set handlers; main() called from another
    # thread keeps the defaults
    in_main = threading.current_thread() is threading.main_thread()
    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old_handlers = {}
    if in_main:
        for sig in stop_signals:
            old_handlers[sig] = signal.signal(sig, _on_stop_signal)
    _signals_received.clear()
    try:
        if own[:1] == ["replay"]:
            return replay_command(_replay_parser().parse_args(own[1:]))
        if own[:1] == ["merge"]:
            from .merge import merge_command
            return merge_command(_merge_parser().parse_args(own[1:]), _say)
        args = _parser().parse_args(own)
        return record(args, command)
    except EbpfBoltError as e:
        _say(f"error: {e}")
        if e.hint:
            print(f"  hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        # a recording stopped by a signal ends normally (its profile is
        # written): here it had not started, or it was a replay, which
        # records nothing and writes its profile only at the end
        how = f" by {e.args[0]}" if e.args else ""
        if own[:1] in (["replay"], ["merge"]):
            _say(f"{own[0]} interrupted{how}: no profile written")
        else:
            _say(f"interrupted{how} before recording started: no profile "
                 "written")
        return 130
    except BrokenPipeError:
        return 141
    except Exception as e:
        # a bug, not a bad input: still one line and an exit code, but a
        # message of its own (the tests fail on it); EBPF_BOLT_DEBUG=1
        # shows the traceback
        if os.environ.get("EBPF_BOLT_DEBUG") == "1":
            raise
        detail = " ".join(str(e).split())
        if isinstance(e, OSError) and e.errno in (errno.EMFILE, errno.ENFILE):
            # out of file descriptors wherever it happens (a ulimit -n of a
            # few): the user's limit, not a bug
            err = KernelUnsupported(f"too many open files ({detail})",
                                    "raise the limit: ulimit -n 65536")
        else:
            err = InternalError(f"internal error: {type(e).__name__}: {detail}")
        _say(f"error: {err}")
        print(f"  hint: {err.hint}", file=sys.stderr)
        return err.exit_code
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)


def branch_types_line(profile):
    """What the summary says about branch types: whether the kernel saved
    them (a recording's info["branch_types"]) and how many traces are
    returns, which preagg writes as R records."""
    returns = getattr(profile.traces, "returns", None)
    n = returns.count(1) if returns is not None else 0
    saved = profile.info.get("branch_types")
    if saved is False:
        return ("branch types: not saved (the kernel refused "
                "PERF_SAMPLE_BRANCH_TYPE_SAVE): every trace is a T record")
    if saved is None and not n:
        return "branch types: none in the input: every trace is a T record"
    return (f"branch types: {'saved' if saved else 'read'}; "
            f"{n:,} return traces (R records in preagg)")
