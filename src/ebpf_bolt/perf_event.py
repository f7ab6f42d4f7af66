"""perf_event_open(2) through ctypes: the events the BPF program runs on.

Only the attribute fields ebpf-bolt sets are named; the structure is laid
out as <linux/perf_event.h> up to PERF_ATTR_SIZE_VER7 (128 bytes), which
kernels since 4.x accept (they zero-extend or check the unknown tail).
"""
import ctypes
import errno
import os
import platform

PERF_TYPE_HARDWARE = 0
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_HW_CPU_CYCLES = 0
PERF_COUNT_SW_CPU_CLOCK = 0

PERF_SAMPLE_IP = 1 << 0
PERF_SAMPLE_TID = 1 << 1
PERF_SAMPLE_BRANCH_STACK = 1 << 11

PERF_SAMPLE_BRANCH_USER = 1 << 0
PERF_SAMPLE_BRANCH_ANY = 1 << 3
PERF_SAMPLE_BRANCH_TYPE_SAVE = 1 << 16   # each entry's type (Linux 4.14)

# bit positions in the attribute's flag word
_BIT = {"inherit": 1, "exclude_kernel": 5, "exclude_hv": 6, "freq": 10}

PERF_EVENT_IOC_DISABLE = 0x2401   # _IO('$', 1), the generic ioctl encoding
PERF_FLAG_PID_CGROUP = 1 << 2   # pid is a cgroup directory's fd
PERF_FLAG_FD_CLOEXEC = 1 << 3

# perf_event_open's syscall number on the architectures ebpf-bolt knows
_NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241, "riscv64": 241}


class perf_event_attr(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32), ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period_or_freq", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64), ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32), ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64), ("config2", ctypes.c_uint64),
        ("branch_sample_type", ctypes.c_uint64),
        ("sample_regs_user", ctypes.c_uint64),
        ("sample_stack_user", ctypes.c_uint32), ("clockid", ctypes.c_int32),
        ("sample_regs_intr", ctypes.c_uint64),
        ("aux_watermark", ctypes.c_uint32),
        ("sample_max_stack", ctypes.c_uint16), ("reserved_2", ctypes.c_uint16),
        ("aux_sample_size", ctypes.c_uint32), ("reserved_3", ctypes.c_uint32),
        ("sig_data", ctypes.c_uint64),
    ]


assert ctypes.sizeof(perf_event_attr) == 128


class EventSpec:
    """What to sample: a software or hardware event, optionally with branch
    stacks. ``name`` is what BOLT's ``E`` record and fdata header call it."""

    def __init__(self, name, type_, config, branch_stack=False,
                 branch_types=False):
        self.name, self.type, self.config = name, type_, config
        self.branch_stack = branch_stack
        self.branch_types = branch_types  # PERF_SAMPLE_BRANCH_TYPE_SAVE

    def __repr__(self):
        return f"EventSpec({self.name!r})"


CPU_CLOCK = EventSpec("cpu-clock", PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK)
CYCLES = EventSpec("cycles", PERF_TYPE_HARDWARE, PERF_COUNT_HW_CPU_CYCLES)
CYCLES_BRSTACK = EventSpec("cycles", PERF_TYPE_HARDWARE,
                           PERF_COUNT_HW_CPU_CYCLES, branch_stack=True)
CYCLES_BRSTACK_TYPED = EventSpec("cycles", PERF_TYPE_HARDWARE,
                                 PERF_COUNT_HW_CPU_CYCLES, branch_stack=True,
                                 branch_types=True)


def make_attr(spec, frequency, inherit=False):
    """Attributes of a sampling event at `frequency` Hz. `inherit`: a
    per-task event that every thread and process the task creates gets a
    copy of (with the BPF program). No enable_on_exec: attaching the
    program enables the event."""
    attr = perf_event_attr()
    attr.type = spec.type
    attr.size = ctypes.sizeof(attr)
    attr.config = spec.config
    attr.sample_period_or_freq = frequency
    attr.sample_type = PERF_SAMPLE_IP | PERF_SAMPLE_TID
    flags = (1 << _BIT["freq"]) | (1 << _BIT["exclude_hv"])
    if inherit:
        flags |= 1 << _BIT["inherit"]
    if spec.branch_stack:
        attr.sample_type |= PERF_SAMPLE_BRANCH_STACK
        attr.branch_sample_type = PERF_SAMPLE_BRANCH_USER | PERF_SAMPLE_BRANCH_ANY
        if spec.branch_types:  # (branch hardware only: untested here)
            attr.branch_sample_type |= PERF_SAMPLE_BRANCH_TYPE_SAVE
        # branch-stack samples of kernel code carry no user branches
        flags |= 1 << _BIT["exclude_kernel"]
    attr.flags = flags
    return attr


def hybrid_core_pmus():
    """Names of the CPU-core PMUs of a hybrid CPU (Intel cpu_core and
    cpu_atom), or [] where one PMU serves every CPU."""
    root = "/sys/bus/event_source/devices"
    try:
        names = [n for n in os.listdir(root) if n in ("cpu_core", "cpu_atom")]
    except OSError:
        return []
    return sorted(names) if len(names) > 1 else []


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def perf_event_open(attr, pid, cpu, group_fd=-1, flags=PERF_FLAG_FD_CLOEXEC):
    """Returns the event fd; raises OSError with the kernel's errno."""
    nr = _NR_PERF_EVENT_OPEN.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"perf_event_open: unknown syscall number "
                      f"on {platform.machine()}")
    fd = _libc.syscall(ctypes.c_long(nr), ctypes.byref(attr),
                       ctypes.c_int(pid), ctypes.c_int(cpu),
                       ctypes.c_int(group_fd), ctypes.c_ulong(flags))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"perf_event_open: {os.strerror(err)}")
    return fd


def _sysctl_int(name):
    try:
        with open(f"/proc/sys/kernel/{name}") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def paranoid_level():
    return _sysctl_int("perf_event_paranoid")


def max_sample_rate():
    return _sysctl_int("perf_event_max_sample_rate")
