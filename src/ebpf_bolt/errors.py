"""The exceptions ebpf-bolt raises, each with a hint and its own exit code.

The CLI prints ``ebpf-bolt: error: <message>`` and ``  hint: <hint>`` and
exits with ``exit_code``; scripts using :func:`ebpf_bolt.collect` catch the
classes. Every class below is a row of the README's error table (a test
keeps the two in step).
"""


def os_error_text(err):
    """An OSError in a message: its text and its name, 'No such file or
    directory (ENOENT)'."""
    import errno
    import os
    return (f"{err.strerror or os.strerror(err.errno)} "
            f"({errno.errorcode.get(err.errno, err.errno)})")


class EbpfBoltError(Exception):
    exit_code = 1
    hint = ""

    def __init__(self, message, hint=None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class UsageError(EbpfBoltError):
    """Invalid option value (frequency, duration, format, ...) or input
    (replay's stacks, --binary)."""
    exit_code = 2
    hint = "see ebpf-bolt --help"


class PermissionProblem(EbpfBoltError):
    """Not root, or missing CAP_BPF / CAP_PERFMON."""
    exit_code = 3
    hint = "run as root (sudo ebpf-bolt ...) or grant CAP_BPF and CAP_PERFMON"


class ParanoidRefusal(PermissionProblem):
    """kernel.perf_event_paranoid refuses the event."""
    exit_code = 4
    hint = ("grant CAP_PERFMON (with CAP_BPF), run as root, or allow "
            "CPU-wide events with 'sysctl kernel.perf_event_paranoid=0'")


class TargetError(EbpfBoltError):
    """The process to profile does not exist or cannot be started."""
    exit_code = 5
    hint = "check the PID (ps -e, pgrep NAME) or the command"


class CommandNotFound(TargetError):
    """The command (or the interpreter its #! line names) does not exist."""
    exit_code = 127  # what a shell returns for a command it cannot find
    hint = "check the command name and PATH"


class CommandNotExecutable(TargetError):
    """The command exists but cannot be executed (no execute permission, a
    directory, not an executable format)."""
    exit_code = 126  # what a shell returns for a command found but not run
    hint = "check the file's execute permission (chmod +x) and that it is a program"


class OutputError(EbpfBoltError):
    """The profile cannot be written (permissions, read-only, no space)."""
    exit_code = 6
    hint = "write the profile elsewhere with -o FILE"


class LibbpfMissing(EbpfBoltError):
    """libbpf.so.1 (>= 1.0) cannot be loaded."""
    exit_code = 7
    hint = ("install libbpf >= 1.0: 'apt install libbpf1' (Debian/Ubuntu) or "
            "'dnf install libbpf' (Fedora)")


class KernelUnsupported(EbpfBoltError):
    """The kernel lacks BTF, BPF or the requested perf event."""
    exit_code = 8
    hint = "run with -v to see libbpf's messages"


class NoBranchHardware(KernelUnsupported):
    """--mode lbr where no branch-stack sampling is exposed."""
    exit_code = 9
    hint = ("branch stacks need Intel LBR (Haswell or later), AMD Zen 4 "
            "LbrExtV2 or ARM BRBE exposed to this machine; in a VM enable "
            "the virtual PMU (e.g. KVM '-cpu host,pmu=on', lbr-fmt; most "
            "cloud VMs expose none); use --mode ip meanwhile")


class BpfError(EbpfBoltError):
    """libbpf or the kernel refused an operation; message names the call."""
    exit_code = 10
    hint = "run with -v to see libbpf's log"


class InternalError(EbpfBoltError):
    """A bug: an exception no other class describes. The CLI's last resort,
    so that no traceback reaches the user; its message says it is a bug."""
    exit_code = 70  # EX_SOFTWARE of sysexits.h
    hint = ("this is a bug in ebpf-bolt: please report it with the command "
            "line and this message")
