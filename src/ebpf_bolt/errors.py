"""The exceptions ebpf-bolt raises, each with a hint and its own exit code.

The CLI prints ``ebpf-bolt: <message>`` and ``  hint: <hint>`` and exits with
``exit_code``; scripts using :func:`ebpf_bolt.collect` catch the classes.
"""


class EbpfBoltError(Exception):
    exit_code = 1
    hint = ""

    def __init__(self, message, hint=None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class UsageError(EbpfBoltError):
    """Invalid option value (frequency, duration, format, ...)."""
    exit_code = 2


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


class CommandNotFound(TargetError):
    exit_code = 127  # what a shell returns for a command it cannot find
    hint = "check the command name and PATH"


class OutputError(EbpfBoltError):
    """The profile cannot be written (permissions, read-only, no space)."""
    exit_code = 6


class LibbpfMissing(EbpfBoltError):
    exit_code = 7
    hint = ("install libbpf >= 1.0: 'apt install libbpf1' (Debian/Ubuntu) or "
            "'dnf install libbpf' (Fedora)")


class KernelUnsupported(EbpfBoltError):
    """The kernel lacks BTF, BPF or the requested perf event."""
    exit_code = 8


class NoBranchHardware(KernelUnsupported):
    exit_code = 9
    hint = ("branch stacks need Intel LBR (Haswell or later), AMD Zen 4 "
            "LbrExtV2 or ARM BRBE exposed to this machine; in a VM enable "
            "the virtual PMU (e.g. KVM '-cpu host,pmu=on', lbr-fmt; most "
            "cloud VMs expose none); use --mode ip meanwhile")


class BpfError(EbpfBoltError):
    """libbpf or the kernel refused an operation; message names the call."""
    exit_code = 10
