"""Recording: perf events -> BPF program -> per-CPU caches and shared count
tables -> drain -> address translation -> Profile.

``Recorder`` runs the steps one by one (the CLI needs to write the profile
before a command it started has finished); ``collect`` runs them all.
"""
import errno
import fcntl
import os
import re
import resource
import time

from .windows import Windows, deferred_sigint
from .handle import Handle
from . import _libbpf, bolt
from . import perf_event as pe
import mmap
from .objects import Binary, ObjectTable, kernel_dev
from .writers import typed_rows
from .translate import (object_samples, object_traces, rows_by_object,
                        samples_by_object, typed_table)
from .bpf_object import (TRACKERS, BoltObject, map_kernel_bytes,
                         possible_cpus, MAPS)
from .elf import ElfFile, ElfError
from .errors import (KernelUnsupported, NoBranchHardware,
                     ParanoidRefusal, PermissionProblem, TargetError,
                     UsageError)
from .layout import (SETS, USER_ADDR_END, Config, cache_sets,
                     ip_cache_slots, table_room, table_slots)
from .drain import drain_ip_counts, drain_traces
from .profile import Profile
from .targets import (CommandTarget, ProcessTarget, SystemTarget, _split_example,
                      check_pid)

# 4999 Hz: near perf's 4000 Hz default rate of samples, but not a multiple
# of the 100/250/1000 Hz of timer ticks and periodic work, so samples do not
# lock step with them (the reason bcc and bpftrace use 49/99 Hz).
DEFAULT_FREQUENCY = 4999
DEFAULT_DURATION = 10.0     # seconds, for -p PID
# Kernel memory budget of the count table (of the mode's one: ip_counts or
# trace_counts), shared by all CPUs: 64 MiB has room for 3.1M IPs or 1.25M
# traces whatever the number of CPUs; --max-entries overrides.
MAP_BUDGET = 64 << 20
MIN_ENTRIES = 1024
# The largest --max-entries: its table's slots (4/3 of it) must fit the
# u32 max_entries of an array map.
TABLE_MAX_ENTRIES = 1 << 30
MODES = ("auto", "lbr", "ip")
# Processes recorded at once (procs map, ~600 bytes each, preallocated),
# and (object, process) pairs noted for the summary.
MAX_PROCS = 8192
MAX_OBJECT_PROCS = 1 << 16
# How often new objects are looked for while recording: their files are
# opened through the process that mapped them, which must still live.
OBJECT_POLL = 0.02

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39


def default_max_entries(map_name, budget=MAP_BUDGET):
    """Keys the count table of `map_name` has room for within the budget
    (the same on every machine: the table has no per-CPU part)."""
    return max(MIN_ENTRIES, table_room(budget // MAPS[map_name][1]))


_MAP_WHAT = {"ip_counts": "IP map", "trace_counts": "trace map"}


def check_max_entries(entries, map_name=None, sets=1):
    """Refuse, before anything is loaded, a --max-entries the kernel would
    refuse or that needs more memory than the machine has available.
    Without `map_name` (the mode not yet known) only what is wrong for any
    map: not a positive int, or above the largest map ebpf-bolt makes."""
    if isinstance(entries, bool) or not isinstance(entries, int) or entries <= 0:
        raise UsageError(f"invalid --max-entries {entries!r}",
                         "give a positive number of map entries")
    # --interval: two sets of tables share the budget (_load_and_attach)
    budget = MAP_BUDGET // sets
    per = f"{budget >> 20} MiB" + (" per set, of --interval's two"
                                    if sets > 1 else "")
    if map_name is None:
        hint = ("lower --max-entries (by default the map takes what fits "
                f"{per} of kernel memory)")
    else:
        default = default_max_entries(map_name, budget)
        hint = (f"lower --max-entries (the {_MAP_WHAT.get(map_name, map_name)}"
                f"'s default is {default:,}: what fits {per})")
    if entries > TABLE_MAX_ENTRIES:
        raise UsageError(f"--max-entries {entries:,} is above the largest map "
                         f"ebpf-bolt makes ({TABLE_MAX_ENTRIES:,} entries: "
                         "its slots must fit an array's 32-bit size)", hint)
    if map_name is None:
        return
    ksz, vsz, kind = MAPS[map_name]
    # the table takes all its memory at load
    need = map_kernel_bytes(ksz, vsz, table_slots(entries) * sets, 1, kind)
    avail = memory_available()
    # kernel memory is not swapped out: a map taking most of what is free
    # would push other processes out or into the OOM killer
    if avail is not None and need > avail // 2:
        raise UsageError(f"--max-entries {entries:,} needs {need / 2**30:.2f} "
                         f"GiB of kernel memory for the {map_name} map, more "
                         f"than half the {avail / 2**30:.2f} GiB available "
                         "(free memory, or the memory cgroup's limit)",
                         hint)


def memory_available():
    """Bytes this process may still allocate: MemAvailable, or less where
    a memory cgroup (a container's limit) allows less, since a BPF map's
    memory is charged to the cgroup of the process that creates it. None
    if neither is known."""
    known = [b for b in (mem_available(), cgroup_memory_free()) if b is not None]
    return min(known) if known else None


def _read_int(path):
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None   # "max": no limit


def _cgroup_v1_mount(controller):
    """Where the cgroup v1 hierarchy of `controller` is mounted, if its
    root is this namespace's root."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields, (fstype, _, options) = left.split(), right.split()[:3]
                if fstype == "cgroup" and controller in options.split(",") \
                        and fields[3] == "/":
                    return _unescape(fields[4])
    except (OSError, ValueError):
        pass
    return None


def cgroup_memory_free():
    """The least (limit - usage) over this process's memory cgroup and its
    ancestors, v2 (memory.max) or v1 (memory.limit_in_bytes); None where
    no limit applies or none can be read."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = []
    for line in lines:
        hid, ctrls, path = line.split(":", 2)
        if hid == "0" and ctrls == "":
            mount, files = cgroup2_mount(), ("memory.max", "memory.current")
        elif "memory" in ctrls.split(","):
            mount = _cgroup_v1_mount("memory")
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        if not mount or not path.startswith("/") or path.startswith("/.."):
            continue
        while True:
            directory = os.path.join(mount, path.lstrip("/"))
            limit = _read_int(os.path.join(directory, files[0]))
            usage = _read_int(os.path.join(directory, files[1]))
            if limit is not None and usage is not None and limit < 1 << 62:
                found.append(max(limit - usage, 0))
            if path == "/":
                break
            path = os.path.dirname(path)
    return min(found) if found else None


def mem_available():
    """MemAvailable of /proc/meminfo in bytes, or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# File descriptors a recording takes besides one event per CPU: the BPF
# object's maps, programs, BTF and libbpf's feature probes, the pidfd
# (measured on Linux 6.18: below ~20 libbpf's probes fail; the rest is
# margin, which each tracker program and its link take two of).
FDS_BESIDES_EVENTS = 40


def check_fd_limit(ncpus):
    """Make room for the recording's file descriptors under RLIMIT_NOFILE,
    raising the soft limit up to the hard one if needed (as perf does); a
    limit still too low is refused before anything is opened. Too few fds
    made libbpf's feature probes fail, and the load then looked like a
    kernel that refuses the object."""
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 3
    need = in_use + ncpus + FDS_BESIDES_EVENTS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard == resource.RLIM_INFINITY or hard > soft:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    if soft < need:
        raise KernelUnsupported(
            f"too many open files: the limit (ulimit -n) is {soft}, "
            f"ebpf-bolt needs about {need} (the BPF object"
            + (f" and an event for each of {ncpus} CPUs)" if ncpus else ")"),
            f"raise the limit: ulimit -n {max(need, 1024)}")


def effective_caps():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def check_privileges():
    caps = effective_caps()
    if caps & (1 << CAP_SYS_ADMIN) or caps & (1 << CAP_BPF):
        return
    raise PermissionProblem(
        f"not permitted to load BPF programs (uid {os.geteuid()}, "
        "no CAP_BPF or CAP_SYS_ADMIN)")


def online_cpus():
    try:
        with open("/sys/devices/system/cpu/online") as f:
            text = f.read().strip()
    except OSError:
        return list(range(os.cpu_count() or 1))
    cpus = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def _open_error(err, spec, frequency, scope="CPU-wide"):
    """Turn a perf_event_open errno into the exception users can act on."""
    if err.errno in (errno.EACCES, errno.EPERM):
        level = pe.paranoid_level()
        return ParanoidRefusal(
            f"kernel.perf_event_paranoid={level} refuses {scope} "
            f"{spec.name} events without CAP_PERFMON")
    if err.errno == errno.EMFILE:
        return KernelUnsupported("too many open files for the perf events",
                                 "raise the limit: ulimit -n 65536")
    if err.errno == errno.EINVAL and frequency > (pe.max_sample_rate() or 0):
        return UsageError(
            f"frequency {frequency} Hz is above the kernel's limit "
            f"(kernel.perf_event_max_sample_rate={pe.max_sample_rate()})",
            "lower -F/-f")
    return KernelUnsupported(f"cannot open the {spec.name} event: "
                             f"{os.strerror(err.errno)}")


def _unescape(path):
    """mountinfo writes blanks and backslashes in paths as octal (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def cgroup2_mount():
    """Where the unified (v2) cgroup hierarchy is mounted with its root at
    this cgroup namespace's root, or None. A mount of another subtree (its
    root field is not "/", e.g. "/.." after unshare -C) would give wrong
    directories for the names /proc/PID/cgroup shows here."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if right.split(" ", 1)[0] == "cgroup2" and fields[3] == "/":
                    return _unescape(fields[4])
    except OSError:
        pass
    return None


def _cgroup_name(pid):
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return next((line[3:].rstrip("\n") for line in f
                         if line.startswith("0::")), None)
    except OSError:
        return None


def process_cgroup(pid):
    """(name, directory) of the cgroup v2 whose per-CPU events cover every
    thread of process `pid`, or None where that is the root (every task:
    no narrower than CPU-wide), outside this cgroup namespace, or unknown.
    In a threaded subtree the process's threads may sit in sibling
    cgroups: the events go on the subtree's domain, which holds them all
    (cgroup events count the tasks of the cgroup's descendants too)."""
    name, mount = _cgroup_name(pid), cgroup2_mount()
    if not name or not mount or not name.startswith("/") or \
            name.startswith("/..") or name == "/":
        return None
    directory = os.path.join(mount, name.lstrip("/"))
    try:
        while _read_text(os.path.join(directory, "cgroup.type")) == "threaded":
            name = os.path.dirname(name)
            directory = os.path.dirname(directory)
        with open(os.path.join(directory, "cgroup.procs")) as f:
            # the directory is the process's own (a check on the path)
            if name == "/" or not any(line.strip() == str(pid) for line in f):
                return None
    except OSError:
        return None
    return name, directory


def _read_text(path):
    with open(path) as f:
        return f.read().strip()


def open_per_cpu(attr, pid=-1, flags=pe.PERF_FLAG_FD_CLOEXEC):
    """One event per online CPU (pid -1: every task; or a cgroup's fd with
    PERF_FLAG_PID_CGROUP), skipping CPUs that go offline meanwhile. On a
    refusal it closes what it opened and raises the OSError."""
    fds = []
    try:
        for cpu in online_cpus():
            try:
                fds.append(pe.perf_event_open(attr, pid, cpu, flags=flags))
            except OSError as e:
                if e.errno != errno.ENODEV:
                    raise
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def probe_event(spec, frequency):
    """None if `spec` can be sampled here, else the OSError it gives."""
    try:
        fd = pe.perf_event_open(pe.make_attr(spec, frequency), -1,
                                online_cpus()[0])
    except OSError as e:
        return e
    os.close(fd)
    return None


def choose_event(mode, frequency, notice, verbose=False):
    """Resolve --mode into (mode, event): branch stacks on hardware cycles
    (with branch types where the kernel saves them) if asked or available,
    else IP samples (hardware cycles, then cpu-clock). In auto mode, says
    what it got and what BOLT loses; with `verbose`, why types are not
    saved."""
    if mode in ("auto", "lbr"):
        err = probe_event(pe.CYCLES_BRSTACK, frequency)
        if err is None:
            # Branch hardware only (not run here): each entry's type where
            # the kernel saves it, so returns become R records; else T.
            typed = probe_event(pe.CYCLES_BRSTACK_TYPED, frequency)
            if typed is None:
                if verbose:
                    notice("branch types saved (PERF_SAMPLE_BRANCH_TYPE_SAVE):"
                           " returns are written as R records")
                return "lbr", pe.CYCLES_BRSTACK_TYPED
            if verbose:
                notice("branch types not saved (PERF_SAMPLE_BRANCH_TYPE_SAVE "
                       f"refused: {os.strerror(typed.errno)}): returns are "
                       "written as T records")
            return "lbr", pe.CYCLES_BRSTACK
        if err.errno in (errno.EACCES, errno.EPERM):
            raise _open_error(err, pe.CYCLES_BRSTACK, frequency)
        if mode == "lbr":
            raise NoBranchHardware(
                "no branch-stack sampling on this machine: "
                + no_branch_reason(err) + branch_hardware_note())
        notice("no branch-stack sampling here: " + no_branch_reason(err)
               + "; recording IP samples: BOLT gets no taken-branch or "
               "fall-through counts, only where time is spent, so its block "
               "layout is less exact")
    for spec in (pe.CYCLES, pe.CPU_CLOCK):
        err = probe_event(spec, frequency)
        if err is None:
            return "ip", spec
        if err.errno in (errno.EACCES, errno.EPERM):
            raise _open_error(err, spec, frequency)
    raise _open_error(err, pe.CPU_CLOCK, frequency)


KERNEL_BTF = "/sys/kernel/btf/vmlinux"


def check_btf(btf):
    """The BPF object reads kernel structures through BTF relocations and
    attaches to tracepoints by their BTF types: without BTF nothing can be
    recorded (a missing file is refused here, BTF that lacks the types
    when the object loads)."""
    path = btf or KERNEL_BTF
    if not os.path.isfile(path):
        raise KernelUnsupported(
            f"no BTF for this kernel: {path} " + ("does not exist" if btf
                                                  else "is missing"),
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian's are), "
            "or give its BTF with --btf FILE")


def _identity(path):
    st = os.stat(path)
    return kernel_dev(st.st_dev), st.st_ino


def pid_namespace():
    """(dev, inode) of this process's PID namespace."""
    st = os.stat("/proc/self/ns/pid")
    # the kernel's dev_t packs major << 20 | minor, unlike st_dev
    return kernel_dev(st.st_dev), st.st_ino


def pid_filter(pid):
    """How the kernel recognises process `pid` (an id as this process sees
    it, 0 for none): (pidns_dev, pidns_ino, tgid) for eb_config. The BPF
    program asks for the current task's ids in a namespace, which answers
    only for tasks whose own namespace it is: the target's, in which its
    id is the last of its NSpid line (the target may run in a namespace
    nested inside ours)."""
    dev, ino = pid_namespace()
    if not pid:
        return dev, ino, 0
    try:
        ns = os.stat(f"/proc/{pid}/ns/pid")
        with open(f"/proc/{pid}/status") as f:
            ids = next(line.split()[1:] for line in f
                       if line.startswith("NSpid:"))
        return kernel_dev(ns.st_dev), ns.st_ino, int(ids[-1])
    except (OSError, StopIteration, ValueError, IndexError):
        return dev, ino, pid


def no_branch_reason(err):
    """What the kernel's refusal of a cycles event with a branch stack
    means (perf_event_open(2) and the PMU drivers' errors)."""
    name = errno.errorcode.get(err.errno, str(err.errno))
    if err.errno == errno.ENOENT:
        return (f"the kernel exposes no hardware cycles event ({name}): no "
                "PMU, as in most VMs")
    if err.errno == errno.EOPNOTSUPP:
        return (f"the CPU's PMU records no branch stacks ({name}): no LBR "
                "or BRBE, or the hypervisor hides it")
    return f"the kernel refuses a cycles event with a user branch stack ({name}: {os.strerror(err.errno)})"


def branch_hardware_note():
    """What the CPU flags say about branch recording, for the refusal."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set()
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        return ""
    if "brs" in flags and "amd_lbr_v2" not in flags:
        # Zen 3 BRS samples only retired taken branches at a fixed period,
        # with no user-only filter: not the event this tool opens
        return ("; this CPU has AMD Zen 3 BRS, which ebpf-bolt does not "
                "support (Zen 4 LbrExtV2 is)")
    if flags & {"arch_lbr", "amd_lbr_v2"}:
        return "; the CPU has it, so the kernel or hypervisor hides it"
    return ""


def validate(frequency, duration):
    if not isinstance(frequency, int) or frequency <= 0:
        raise UsageError(f"invalid frequency {frequency!r}",
                         "give a positive whole number of samples per second")
    limit = pe.max_sample_rate()
    if limit and frequency > limit:
        raise UsageError(
            f"frequency {frequency} Hz is above the kernel's limit of "
            f"{limit} Hz (kernel.perf_event_max_sample_rate)", "lower -F/-f")
    if duration is not None and not duration > 0:
        raise UsageError(f"invalid duration {duration!r}",
                         "give a positive number of seconds")


# A sampling rate whose interrupts make code run this many times slower or
# more gets a warning. Measured here (2 vCPUs under a hypervisor, cpu-clock,
# where each sample costs ~12-15 us of interrupt and timer exits): the
# workload of tests/test_record.py ran 1.06x / 1.4x / 3.4x / 14x slower at
# 4999 / 20000 / 50000 / 100000 Hz, and the probe below read 1.09x / 1.46x /
# 3.6-4.0x / 16-23x (1.00 +- 0.01 at 499 Hz). The kernel did not lower
# perf_event_max_sample_rate: only PMU interrupt handlers time samples for
# it (perf_sample_event_took, called from arch/x86/events/core.c's NMI
# handler), not cpu-clock's hrtimer.
SLOWDOWN_WARN = 2.0


def _spin(n):
    x = 0
    for i in range(n):
        x += i
    return x


def _fastest(n, runs=3):
    """The least CPU time of this thread that _spin(n) took in `runs`
    runs: CPU time, not wall time, so other tasks taking the CPU do not
    count (the interrupts of sampling do: the kernel charges them to the
    task they interrupt, unless built with CONFIG_IRQ_TIME_ACCOUNTING)."""
    best = None
    for _ in range(runs):
        t = time.thread_time()
        _spin(n)
        t = time.thread_time() - t
        best = t if best is None or t < best else best
    return best


def sampling_slowdown(spec, frequency, work=0.01, rounds=3):
    """How many times slower a busy loop runs on this thread under a
    sampling event `spec` at `frequency` Hz than without: what the
    target's code will pay. Afterwards neither the samples nor the
    target's CPU time would show it, the cost being charged to the target
    as its own time. The fastest of `rounds` runs of each (~`work` s of CPU
    unsampled), taken in turns. None where the event cannot be opened."""
    n = 1 << 14
    while _fastest(n, 1) < work and n < 1 << 30:
        n <<= 1
    plain = sampled = None
    for _ in range(rounds):
        t = _fastest(n, 1)
        plain = t if plain is None else min(plain, t)
        try:
            fd = pe.perf_event_open(pe.make_attr(spec, frequency), 0, -1)
        except OSError:
            return None
        try:
            t = _fastest(n, 1)
        finally:
            os.close(fd)
        sampled = t if sampled is None else min(sampled, t)
    return sampled / plain


def slowdown_warning(frequency, slowdown, default=DEFAULT_FREQUENCY):
    """The warning for a measured slowdown factor, or None."""
    if slowdown is None or slowdown < SLOWDOWN_WARN:
        return None
    return (f"sampling at {frequency} Hz makes code run about "
            f"{slowdown:.1f}x slower here (measured on a busy loop): the "
            "target runs that much slower while recorded, and the kernel may "
            f"throttle the event; lower -f (default {default})")


def max_rate_warning(before, after):
    """The kernel lowers kernel.perf_event_max_sample_rate when sample
    handling takes too long (it logs "perf: interrupt took too long",
    kernel/events/core.c perf_sample_event_took) and then throttles
    events above the new rate. A warning if it did while recording."""
    if before is None or after is None or after >= before:
        return None
    return (f"the kernel lowered kernel.perf_event_max_sample_rate from "
            f"{before} to {after} while recording (sampling took too long; "
            "see dmesg): events above it were throttled and the profile "
            "has fewer samples than asked for; lower -f")


class Recorder(Handle):
    """One recording. Call start(), run(), then finish() for the Profile;
    close() releases everything (also on errors)."""

    max_rate_start = None   # kernel.perf_event_max_sample_rate at start

    def __init__(self, pid=None, command=None, duration=None,
                 frequency=DEFAULT_FREQUENCY, mode="auto", max_entries=None,
                 count_threads=False, notice=None, verbose=False,
                 warn=None, binaries=(), all_objects=False,
                 all_processes=False, btf=None, windows=False):
        """windows: load two sets of tables, so that end_window() can cut
        the recording into windows (--interval, windows.py)."""
        if all_processes:
            if pid is not None or command is not None:
                raise UsageError("-a/--all records every process: give no "
                                 "PID or command with it",
                                 "drop -p or the command, or drop -a")
            if not binaries and not all_objects:
                raise UsageError("-a/--all needs --binary PATH or "
                                 "--all-objects: every process runs its own "
                                 "executable", "name the object to profile, "
                                 "e.g. -a --binary /usr/bin/clang")
            if duration is None:
                duration = DEFAULT_DURATION
        elif (pid is None) == (command is None):
            raise UsageError("give either a PID or a command to profile",
                             "pid=1234 or command=['./app', '-x']")
        if isinstance(command, (str, bytes)):
            raise UsageError(f"command given as a string: {command!r}",
                             "give the command as a list of arguments, e.g. "
                             f"command={_split_example(command)!r}")
        if command is not None and not command:
            raise UsageError("no command given: command is empty",
                             "give the program and its arguments as a list, "
                             "e.g. command=['./app', '-x']")
        if mode not in MODES:
            raise UsageError(f"unknown mode {mode!r}", "use auto, lbr or ip")
        if pid is not None:
            check_pid(pid)
        if max_entries is not None:
            # the size is checked against the map of the mode, and the
            # memory it takes, in start(); here what is wrong in every mode
            check_max_entries(max_entries)
        if pid is not None and duration is None:
            duration = DEFAULT_DURATION
        validate(frequency, duration)
        self.pid, self.command = pid, command
        self.duration, self.frequency = duration, frequency
        self.mode_requested, self.max_entries = mode, max_entries
        self.count_threads = count_threads
        self.all_processes, self.all_objects = all_processes, all_objects
        self.btf = btf   # the kernel's BTF, where /sys/kernel/btf has none
        self.windows = windows
        if isinstance(binaries, (str, bytes, os.PathLike)):
            binaries = [binaries]
        self.binaries = []
        for b in map(Binary.open, binaries):
            # the same file twice (or a link and its target): one profile
            if all(b.identity != seen.identity for seen in self.binaries):
                self.binaries.append(b)
        self.objects = None   # ObjectTable once loaded
        self.notice = notice or (lambda msg: None)
        self._warn_callback = warn or self.notice
        self.warnings = []   # what the profile's user must know, in order
        _libbpf.set_verbose(verbose)
        self.verbose = verbose
        self.target = None
        self.obj = None
        self._fds = []
        self.stopped_by = None
        self.scope = None   # which tasks and CPUs the events cover
        self.cgroup = None  # the cgroup the events follow, if they do
        self.cgroup_moved = None
        self._closed = False

    def _check_open(self):
        if self._closed:
            raise ValueError("the Recorder is closed")

    # --- set-up ------------------------------------------------------------
    def start(self, check_mode=None, check_binary=None):
        """Set everything up; sampling runs when this returns. check_mode,
        if given, is called with the resolved mode ("ip" or "lbr") before
        anything runs, to refuse early what cannot be written later.
        check_binary, if given, is called with a path of the executable
        recorded once it is known: for a command, after its exec (a #!
        script's interpreter, say) while it is still held, so that raising
        there ends it before it runs."""
        self._check_open()
        if self.target is not None:
            raise ValueError("the Recorder was started already")
        check_fd_limit(len(online_cpus()))
        check_privileges()
        _libbpf.lib()  # fails early with the package name if missing
        if self.command is not None:
            self.target = CommandTarget(self.command)
        elif self.all_processes:
            self.target = SystemTarget()
        else:
            self.target = ProcessTarget(self.pid, note=self.notice)
        try:
            self.mode, self.event = choose_event(self.mode_requested,
                                                 self.frequency, self.notice,
                                                 self.verbose)
            if check_mode:
                check_mode(self.mode)
            if self.max_entries is not None:
                check_max_entries(
                    self.max_entries,
                    "ip_counts" if self.mode == "ip" else "trace_counts",
                    SETS if self.windows else 1)
            self._check_frequency()
            self._open_events()
            # attaching enables the events (libbpf issues the ioctl): for a
            # command that is before its exec, so its first instructions
            # count; it is held after the exec while its mappings are read
            self._load_and_attach()
            if self.target.child:
                self.target.start()
            if not self.all_processes:
                self._read_target()   # a command is still held at its exec
                if check_binary:
                    check_binary(f"/proc/{self.target.pid}/exe")
            if self.target.child:
                self.target.resume()
        except BaseException:
            if self.target.child and self.target.returncode is None:
                self.target.abandon()
            self.close()
            raise
        self.t_start = time.monotonic()
        self.wall_start = time.time()   # for the sidecar (provenance.py)

    def _open_events(self):
        """Open the sampling events, scoped as narrowly as can be done
        without racing the target's creation of threads (threads made
        between listing them and opening their events would be missed):
        - a command: one event on the child, opened before its exec and
          inherited by every thread and process it creates (as perf record
          does it), so nothing else is interrupted;
        - -p PID in a cgroup of its own (v2, a systemd service or a
          container): one event per CPU that runs only while a task of that
          cgroup runs there; new threads stay in the cgroup;
        - otherwise: CPU-wide events, which interrupt every CPU.
        In every case the BPF program keeps the target's tgid and counts
        the rest as other_process. Opened before the BPF load, so a
        perf_event_paranoid refusal is reported as such."""
        if self.target.child and not (pe.hybrid_core_pmus() and
                                      self.event.type == pe.PERF_TYPE_HARDWARE):
            attr = pe.make_attr(self.event, self.frequency, inherit=True)
            try:
                self._fds.append(pe.perf_event_open(attr, self.target.pid, -1))
            except OSError as e:
                raise _open_error(e, self.event, self.frequency,
                                  "per-task") from None
            self.scope = "per task, inherited by the threads and processes it creates"
            return
        # (A per-task hardware event on a hybrid CPU, Intel P and E cores,
        # binds to one core type's PMU and misses the time on the other;
        # per-CPU events each get their CPU's PMU. Not testable here.)
        attr = pe.make_attr(self.event, self.frequency)
        cgroup = None if self.target.child or self.all_processes else \
            process_cgroup(self.target.pid)
        if cgroup and self._open_cgroup_events(attr, *cgroup):
            self.cgroup = cgroup[0]
            self.scope = f"on each CPU while cgroup {cgroup[0]} runs"
            return
        try:
            self._fds.extend(open_per_cpu(attr))
        except OSError as e:
            raise _open_error(e, self.event, self.frequency) from None
        self.scope = "on every CPU"

    def _open_cgroup_events(self, attr, name, directory):
        """Per-CPU events of one cgroup; False (nothing kept open) where the
        kernel refuses them, e.g. built without CONFIG_CGROUP_PERF or with
        the perf_event controller on a cgroup v1 hierarchy."""
        try:
            cgfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fds = open_per_cpu(attr, cgfd, pe.PERF_FLAG_FD_CLOEXEC |
                               pe.PERF_FLAG_PID_CGROUP)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EMFILE):
                raise _open_error(e, self.event, self.frequency,
                                  "cgroup") from None
            self.notice(f"the kernel refuses perf events for cgroup {name} "
                        f"({os.strerror(e.errno)}): sampling on every CPU "
                        "instead")
            return False
        finally:
            os.close(cgfd)
        self._fds.extend(fds)
        return bool(fds)

    def _load_and_attach(self):
        ncpus = possible_cpus()
        self.map_name = "ip_counts" if self.mode == "ip" else "trace_counts"
        # --interval: two sets of tables share the memory budget
        sets = SETS if self.windows else 1
        entries = self.max_entries or default_max_entries(
            self.map_name, MAP_BUDGET // sets)
        sizes = {self.map_name: table_slots(entries)}
        if self.mode == "lbr":
            sizes["trace_cache"] = cache_sets(ncpus)
        else:
            sizes["ip_cache"] = ip_cache_slots(ncpus)
        if self.count_threads:
            sizes["thread_samples"] = 4096
        sizes["procs"] = MAX_PROCS
        sizes["object_procs"] = MAX_OBJECT_PROCS
        dev, ino, tgid = pid_filter(self.target.pid)
        cfg = Config(target_tgid=tgid, pidns_dev=dev,
                     pidns_ino=ino, tid_pidns_dev=dev, tid_pidns_ino=ino,
                     count_threads=int(self.count_threads),
                     all_processes=int(self.all_processes),
                     target_at_exec=int(self.command is not None),
                     page_shift=mmap.PAGESIZE.bit_length() - 1,
                     user_addr_end=USER_ADDR_END,
                     branch_types=int(self.event.branch_types))
        program = "sample_ip" if self.mode == "ip" else "sample_branches"
        check_btf(self.btf)
        try:
            self.obj = BoltObject(cfg, sizes, programs=[program, *TRACKERS],
                                  btf=self.btf,
                                  sets=sets)
        except _libbpf.LibbpfError as e:
            if e.errno in (errno.ENOMEM, errno.E2BIG) and self.max_entries:
                raise UsageError(
                    f"the kernel refused a {self.map_name} map of "
                    f"{entries:,} entries ({e}): too large for it",
                    "lower --max-entries") from None
            if e.errno in (errno.EMFILE, errno.ENFILE):
                # not the kernel's version: each map and program is an fd
                raise KernelUnsupported(
                    f"too many open files to load the BPF object ({e})",
                    "raise the limit: ulimit -n 65536") from None
            if e.errno in (errno.EPERM, errno.EACCES):
                raise PermissionProblem(
                    f"the kernel refused to load the BPF program ({e}); "
                    "it needs CAP_BPF and CAP_PERFMON") from None
            raise KernelUnsupported(
                f"the kernel refused the BPF object ({e})",
                "run with -v to see the verifier's log; recording needs "
                "Linux 5.17 or later and the kernel's BTF, which must "
                "describe its tasks, mappings and sched tracepoints "
                "(/sys/kernel/btf/vmlinux, or --btf FILE)") from None
        # the process tree is followed from before the first sample
        for tracker in TRACKERS:
            try:
                self.obj.attach_tracepoint(tracker)
            except OSError as e:
                raise KernelUnsupported(
                    f"cannot attach {tracker} to its tracepoint ({e})",
                    "following processes needs Linux 5.17 or later with "
                    "BTF (/sys/kernel/btf/vmlinux)") from None
        self.objects = ObjectTable(self.obj)
        while self._fds:
            self.obj.attach(program, self._fds.pop())  # the link owns the fd

    def _disable(self):
        """Stop sampling before the maps are read."""
        for link in self.obj.links if self.obj else ():
            fcntl.ioctl(link.perf_fd, pe.PERF_EVENT_IOC_DISABLE, 0)

    def _read_target(self):
        """The target's executable: the default object to profile."""
        pid = self.target.pid
        try:
            self.exe_path = os.readlink(f"/proc/{pid}/exe")
            self.exe = Binary(self.exe_path.removesuffix(" (deleted)"),
                              ElfFile(f"/proc/{pid}/exe"),
                              _identity(f"/proc/{pid}/exe"))
        except FileNotFoundError:
            raise TargetError(f"process {pid} exited before recording "
                              "started", "check that it is running") from None
        except OSError as e:
            raise TargetError(f"cannot read the executable of process {pid}: "
                              f"{os.strerror(e.errno)} "
                              f"({errno.errorcode.get(e.errno, e.errno)})",
                              "run as root with CAP_SYS_PTRACE") from None
        except ElfError as e:
            raise TargetError(f"cannot read the executable of process {pid}: "
                              f"{e}", "profile a 64-bit little-endian ELF "
                              "program") from None
        self.elf = self.exe.elf
        if not self.binaries and not self.all_objects:
            for message in bolt.binary_warnings(self.elf, self.exe_path):
                self.warn(message)
        if self.exe_path.endswith(" (deleted)"):
            self.notice(f"{self.exe_path}: the executable was replaced on disk "
                        "after it started; BOLT needs the file that ran")

    def warn(self, message):
        self.warnings.append(message)
        self._warn_callback(message)

    def _check_frequency(self):
        """Above the default rate, measure what sampling costs code here
        (0.1-0.2 s; 0.9 s at a rate that slows it 20x) and warn before
        recording if the target will run many times slower. Also keep the
        kernel's rate limit, which it lowers when sampling takes too long."""
        self.max_rate_start = pe.max_sample_rate()
        if self.frequency <= DEFAULT_FREQUENCY:
            return
        message = slowdown_warning(self.frequency, sampling_slowdown(
            self.event, self.frequency))
        if message:
            self.warn(message)

    def _check_cgroup(self):
        """Cgroup events stop sampling a process moved out of the cgroup
        (by systemd or a container runtime): say so, once."""
        if not self.cgroup or self.cgroup_moved or not self.target.alive():
            return
        now = _cgroup_name(self.target.pid)
        if now and now != self.cgroup and \
                not now.startswith(self.cgroup.rstrip("/") + "/"):
            self.cgroup_moved = now
            self.notice(f"process {self.target.pid} moved from cgroup "
                        f"{self.cgroup} to {now} while recorded: its samples "
                        "after the move are not taken")

    # --- recording ---------------------------------------------------------
    def run(self, progress=None, tick=1.0, poll=None):
        """Record until the duration passes, the target exits, or Ctrl-C /
        SIGTERM (KeyboardInterrupt). Records how it stopped. `poll`, if
        given, is called at every turn of the loop (every 20 ms; not once
        the duration has passed): the windows of --interval end there
        (windows.py)."""
        self._check_open()
        end = None if self.duration is None else self.t_start + self.duration
        next_tick = time.monotonic() + tick
        try:
            while True:
                self.objects.poll()
                self._check_cgroup()   # a move is noticed while it lives
                # the duration is checked before and after `poll` (a window
                # end takes 0.1 s or more): none starts after the end, and
                # the recording stops as soon as one that ran over returns
                if end is not None and time.monotonic() >= end:
                    self.stopped_by = "duration"
                    break
                if poll:
                    poll()
                now = time.monotonic()
                if end is not None and now >= end:
                    self.stopped_by = "duration"
                    break
                wait = OBJECT_POLL if end is None else min(OBJECT_POLL,
                                                           end - now)
                if self.target.wait_exit(wait):
                    self.stopped_by = "target exited"
                    break
                if time.monotonic() >= next_tick:
                    next_tick += tick
                    if progress:
                        progress(time.monotonic() - self.t_start,
                                 self.duration, self.obj.stats())
        except KeyboardInterrupt as e:
            # the CLI's handler names the signal; Python's own SIGINT
            # handler raises a bare KeyboardInterrupt
            self.stopped_by = e.args[0] if e.args else "SIGINT (Ctrl-C)"
        self.t_stop = time.monotonic()
        self._disable()

    def finish(self, combine=None):
        """Drain the maps and translate: the Profile of the binary (with
        several objects chosen, of the first; all are in self.profiles).
        combine: called with the drained counts, returns the counts to
        profile (--interval: the last window is written, and the total of
        all windows profiled; windows.py)."""
        self._check_open()
        if self.obj is None or not hasattr(self, "t_stop"):
            raise ValueError("finish() needs start() and run() first")
        t0 = time.monotonic()
        self.objects.poll()
        self.objects.reopen_missing()
        self.objects.read_processes()
        self._check_cgroup()
        message = max_rate_warning(self.max_rate_start,
                                   pe.max_sample_rate())
        if message:
            self.warn(message)
        counts = self.drain()
        if combine is not None:
            # writing the last window is not the total's drain and
            # translation (drain_seconds)
            t = time.monotonic()
            counts = combine(counts)
            t0 += time.monotonic() - t
        self.profiles = self.profiles_of(counts, t0)
        return self.profiles[0] if self.profiles else None

    # --- windows (--interval) ------------------------------------------------
    def drain(self, s=None):
        """The counts of set `s` (default: the one the programs count into,
        once they have stopped): {key: samples} in IP mode, TraceColumns
        in branch mode (drain.py)."""
        s = self.obj.active if s is None else s
        if self.mode == "ip":
            return drain_ip_counts(self.obj, s)
        return drain_traces(self.obj, s)

    def refresh_objects(self):
        """Read the objects numbered since the last poll, and look for the
        files of those whose process exited before they were opened."""
        self.objects.poll()
        self.objects.reopen_missing()

    def end_window(self, objects=True):
        """Start a new window while recording: the programs switch to the
        other set of tables (waiting for those still running on the old
        one, BoltObject.switch_set), whose counts are drained here and
        then cleared. Returns the counts of the window that ended, as
        drain() does. The objects are read after the switch (one numbered
        while it waited for the old set's programs has keys in the window),
        and those whose process exited before their file was opened are
        looked for in the processes that live now, as finish() does: a
        window's profiles are translated before the recording ends.
        objects=False: not here (Windows' watcher thread; the caller calls
        refresh_objects() before translating the counts)."""
        def read(old):
            if objects:   # the objects the window's keys name
                self.refresh_objects()
            return self.drain(old)
        return self.obj.end_window(read)

    def wall_time(self, t):
        """The wall-clock time of monotonic time `t` of this recording (one
        mapping for windows and total, so their sidecars' times meet)."""
        return self.wall_start + (t - self.t_start)

    def window_fill(self):
        """The share of the room of the table the programs count into now
        that its keys have taken (claimed slots / room)."""
        claimed = self.obj.read_set(self.obj.active).claimed
        return claimed / table_room(self.obj.map_entries[self.map_name])

    def profiles_of(self, counts, t0=None, duration=None, report=True,
                    span=None, window=None):
        """The profiles of the chosen objects from drained `counts` (as
        drain() gives them: a window's, or the sum of all windows); the
        counters are the recording's so far. `duration`: the time they
        cover (default: the recording's), `span` the same as monotonic
        (start, end) for the sidecar's wall-clock times (default: the
        recording's); report: say how objects were matched, and which get
        no profile (once, for the total: not for every window); window: the
        number of the window `counts` are, whose objects left without a
        profile are warned about even so."""
        started, stopped = ((self.wall_time(span[0]), self.wall_time(span[1]))
                            if span else (self.wall_start,
                                          self.wall_time(self.t_stop)))
        t0 = time.monotonic() if t0 is None else t0
        if self.mode == "ip":
            runtime = counts
            in_map = len(runtime)
            by_object = samples_by_object(runtime)
            per_object = {oid: sum(c.values()) for oid, c in by_object.items()}
        else:
            columns = counts
            in_map = len(columns[0])
            rows = rows_by_object(columns)
            counts = columns[3]
            per_object = {oid: sum(counts[i] for i in r)
                          for oid, r in rows.items()}
        stats = self.obj.stats()  # after the drain: its flush counts too
        total = sum(per_object.values())
        threads = (self.obj.read_u64_counts("thread_samples", "I")
                   if self.count_threads else {})
        chosen = self._choose_objects(per_object, report, window)
        profiles = []
        for binary, objects, how in chosen:
            oids = {o.id for o in objects}
            got = sum(per_object.get(oid, 0) for oid in oids)
            samples, traces, outside = {}, {}, 0
            for oid in oids:
                if self.mode == "ip":
                    s, out = object_samples(by_object.get(oid, {}), binary.elf)
                    for k, v in s.items():
                        samples[k] = samples.get(k, 0) + v
                elif len(oids) == 1:
                    traces, out = object_traces(columns, oid, binary.elf,
                                                rows.get(oid, ()))
                else:  # one file numbered twice: add up, types kept
                    t, out = object_traces(columns, oid, binary.elf,
                                           rows.get(oid, ()))
                    for f, to, e, c, m, r in typed_rows(t):
                        k = (f, to, e, r)
                        p = traces.get(k)
                        traces[k] = (c, m) if p is None else (p[0] + c, p[1] + m)
                outside += out
            if self.mode != "ip" and len(oids) > 1:
                traces = typed_table(traces)
            st = dict(stats)
            st["outside_binary"] = total - got + outside
            profile = Profile(binary.path, self.event.name, self.mode,
                              samples=samples, traces=traces, stats=st)
            profile._elf = binary.elf
            processes = set().union(*(o.processes for o in objects))
            profile.info.update(
                pid=self.target.pid, frequency=self.frequency,
                scope=self.scope, duration=(self.t_stop - self.t_start
                                            if duration is None else duration),
                started=started, stopped=stopped,
                stopped_by=self.stopped_by, distinct_addresses=in_map,
                map_entries=table_room(self.obj.map_entries[self.map_name]),
                table_slots=self.obj.map_entries[self.map_name],
                table_sets=self.obj.sets,
                table_bytes=self.obj.table_bytes(self.map_name),
                kernel_bytes=self.obj.kernel_bytes(),
                ncpus=self.obj.ncpus,
                threads=threads, is_pie=binary.elf.is_pie,
                branch_types=self.event.branch_types,
                build_id=binary.build_id, matched_by=how if objects else None,
                processes=len(processes), object_samples=got,
                user_samples=total,
                top_objects=self._top_objects(per_object),
                objects_seen=len(self.objects.objects),
                drain_seconds=time.monotonic() - t0,
                warnings=list(self.warnings))
            profiles.append(profile)
        return profiles

    def _choose_objects(self, per_object, report=True, window=None):
        """[(Binary, its objects in the table, how they matched)] to write:
        the --binary files, every object with samples (--all-objects), or
        the target's executable. report=False: say nothing about them, but
        for the samples of window `window` that get no profile."""
        table = self.objects
        if self.all_objects:
            out = []
            for oid in sorted(per_object, key=per_object.get, reverse=True):
                o = table.objects.get(oid)
                if o is None or o.elf is None:
                    name = o.name if o else f"[object {oid}]"
                    why = (o.error if o and o.error else
                           "its file was never read")
                    if report:
                        self.warn(f"{name}: {per_object[oid]:,} samples get "
                                  f"no profile: {why}")
                    elif window is not None:
                        self.warn(f"window {window}: {name}: "
                                  f"{per_object[oid]:,} samples get no "
                                  f"profile in this window: {why}; its "
                                  "windows may not add up to the total")
                    continue
                out.append((Binary(o.name, o.elf, o.identity), [o],
                            "identity"))
            return out
        binaries = self.binaries or [self.exe]
        out = []
        for b in binaries:
            found, how = b.find(table)
            if not report:
                out.append((b, found, how))
                continue
            if found and how == "build id":
                self.notice(f"{b.path}: matched by build id {b.build_id} to "
                            f"{', '.join(o.name for o in found)} (another "
                            "file than the one that ran)")
            if b.replaced():
                self.warn(f"{b.path} was replaced on disk during the "
                          "recording: the profile is for the file that was "
                          "there when it started (build id "
                          f"{b.build_id or 'none'})")
            out.append((b, found, how))
        return out

    def _top_objects(self, per_object, n=5):
        """[(path, samples, processes)] of the objects with most samples."""
        out = []
        for oid in sorted(per_object, key=per_object.get, reverse=True)[:n]:
            o = self.objects.objects.get(oid)
            name = o.name if o else f"[object {oid}]"
            out.append((name, per_object[oid], len(o.processes) if o else 0))
        return out

    def close(self):
        self._closed = True
        if self.objects is not None:
            self.objects.close()
            self.objects = None
        if self.obj is not None:
            self.obj.close()
            self.obj = None
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        if self.target is not None:
            self.target.close()


def collect(pid=None, command=None, duration=None,
            frequency=DEFAULT_FREQUENCY, mode="auto", max_entries=None,
            count_threads=False, notice=None, verbose=False, warn=None,
            binaries=(), all_objects=False, all_processes=False, btf=None,
            interval=None, on_window=None):
    """Profile a process (`pid`) and the processes it starts, a command
    (`command`, an argv list) and every process it starts, or every process
    (`all_processes`, with `binaries` or `all_objects`), and return the
    :class:`ebpf_bolt.profile.Profile` of the executable, or of the one
    object in `binaries`; with several objects (`binaries` of more than one,
    `all_objects`) a list of them.

    A command is recorded until it exits (or for `duration` seconds, then
    left running until it exits); its exit status is in
    ``profile.info["returncode"]``. A PID is recorded for `duration`
    seconds (default 10) or until it exits. `notice` and `warn` (default:
    `notice`) are called with messages as they arise; the warnings are also
    in ``profile.info["warnings"]``.

    `interval` (seconds), as --interval: the counts are drained every
    `interval` seconds, and earlier where the table passes 80% full, so a
    long recording loses nothing for want of room; each window's
    profiles (a list, one per object) go to ``on_window(number, profiles,
    early)`` while recording, and the return value is their total, with
    ``info["windows"]``.

    Raises the classes of :mod:`ebpf_bolt.errors` (all EbpfBoltError, each
    with ``exit_code`` and ``hint``), e.g. UsageError for a command given as
    a string instead of a list."""
    if interval is not None and (isinstance(interval, bool) or not isinstance(
            interval, (int, float)) or not 0 < interval < float("inf")):
        raise UsageError(f"invalid interval {interval!r}",
                         "give a positive number of seconds")
    with Recorder(pid=pid, command=command, duration=duration,
                  frequency=frequency, mode=mode, max_entries=max_entries,
                  count_threads=count_threads, notice=notice,
                  verbose=verbose, warn=warn, binaries=binaries,
                  all_objects=all_objects,
                  all_processes=all_processes, btf=btf,
                  windows=interval is not None) as rec:
        rec.start()
        if interval is None:
            rec.run()
            rec.finish()
        else:
            windows = Windows(rec, interval, on_window or (lambda *a: None),
                              notice, deferred_sigint)
            rec.run(poll=windows.poll)
            windows.finish()
    if command is not None:
        code = rec.target.wait()
        for profile in rec.profiles:
            profile.info["returncode"] = code
    several = all_objects or len(rec.binaries) > 1
    return rec.profiles if several else rec.profiles[0]
