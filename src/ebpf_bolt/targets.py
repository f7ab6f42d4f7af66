"""What is profiled: a running process (-p PID) or a command we start.

Both are one process (a thread group): the BPF program keeps samples whose
tgid is the target's, so every thread counts, including threads created
during the recording by any thread, with no race against thread creation.
"""
import ctypes
import errno
import os
import select
import shutil
import signal

from .handle import Handle
from .errors import (CommandNotExecutable, CommandNotFound, TargetError,
                     UsageError)

PF_KTHREAD = 0x00200000   # include/linux/sched.h: the task is a kernel thread
PID_T_MAX = 2**31 - 1     # pid_t is a signed 32-bit int


def _pidfd(pid):
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None  # kernels < 5.3: fall back to polling /proc


class Target(Handle):
    """A handle on the target process: close() releases its pidfd. Use it
    as a context manager; after close, waiting for the target's exit raises
    ValueError (wait() of a command stays usable: reaping the child is not
    tied to the handle)."""
    pid = None
    child = False
    _fd = None
    _closed = False

    def _check_open(self):
        if self._closed:
            raise ValueError(f"{type(self).__name__} of {self.pid} is closed")

    def alive(self):
        self._check_open()
        if self.child:
            return self.returncode is None and self._reap(os.WNOHANG) is None
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            return state not in ("Z", "X")
        except OSError:
            return False

    def wait_exit(self, timeout):
        """Sleep up to `timeout` seconds or until the target exits (or a
        signal arrives); returns True if it has exited."""
        self._check_open()
        if self._fd is not None:
            ready, _, _ = select.select([self._fd], [], [], timeout)
            return bool(ready) and not self.alive()
        select.select([], [], [], min(timeout, 0.2))
        return not self.alive()

    def close(self):
        self._closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def pid_max():
    """The largest PID the kernel gives, plus one (kernel.pid_max); None
    where it cannot be read."""
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


PID_HINT = "give the ID of a running process (ps -e, pgrep NAME)"


def check_pid(pid, name="PID"):
    """Refuse a value that cannot be a process ID, as an invalid value
    (UsageError): below 1, or above the largest PID the kernel gives.
    `name` is how the message calls it (the CLI: -p/--pid)."""
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise UsageError(f"invalid {name} {pid!r}: not a whole number",
                         PID_HINT)
    if pid <= 0:
        raise UsageError(f"invalid {name} {pid}: PIDs start at 1", PID_HINT)
    limit = pid_max()
    if limit is not None and pid >= limit:
        raise UsageError(f"invalid {name} {pid}: PIDs go up to {limit - 1}: "
                         f"kernel.pid_max is {limit}", PID_HINT)
    if pid > PID_T_MAX:
        raise UsageError(f"invalid {name} {pid}: PIDs go up to {PID_T_MAX} "
                         "(pid_t is a signed 32-bit int)", PID_HINT)


def _status_field(pid, name):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split()[1]
    return None


class ProcessTarget(Target):
    """A running process. A thread id is resolved to its process (`note`
    says so): -p records every thread of a process anyway, and a TID is
    what top -H and ps -L show, so the user means that process."""

    def __init__(self, pid, note=None):
        check_pid(pid)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise TargetError(f"no process with PID {pid}",
                              "check the PID (ps -e, pgrep NAME)") from None
        except PermissionError:
            pass  # exists; privileges are checked separately
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read().rsplit(")", 1)[1].split()
            comm = _status_field(pid, "Name")
            tgid = int(_status_field(pid, "Tgid"))
        except (OSError, TypeError, ValueError, IndexError):
            raise TargetError(f"process {pid} has exited", "check the PID") \
                from None
        if int(stat[6]) & PF_KTHREAD:  # field 9, flags
            raise TargetError(f"PID {pid} ({comm}) is a kernel thread: it runs "
                              "no user-space code to profile",
                              "give the PID of a user-space process "
                              "(ps -e, pgrep NAME)")
        if tgid != pid:
            if note:
                note(f"{pid} is a thread of process {tgid} ({comm}): "
                     f"recording process {tgid}, all its threads")
            pid = tgid
        self.pid = pid
        if not self.alive():
            raise TargetError(f"process {pid} has exited", "check the PID")
        check_readable(pid)
        self._fd = _pidfd(pid)

    def describe(self):
        return f"process {self.pid}"


def check_readable(pid):
    """ebpf-bolt reads the target's executable and mappings: the kernel
    allows that only to a process that may ptrace it (ptrace_may_access:
    CAP_SYS_PTRACE, or the same user and a dumpable target). Found before
    recording rather than after it."""
    for what in ("exe", "maps"):
        try:
            if what == "exe":
                os.readlink(f"/proc/{pid}/exe")
            else:
                with open(f"/proc/{pid}/maps") as f:
                    f.read(1)
        except FileNotFoundError:
            raise TargetError(f"process {pid} has exited",
                              "check the PID") from None
        except OSError as e:
            raise TargetError(
                f"cannot read /proc/{pid}/{what} of process {pid}: "
                f"{os.strerror(e.errno)} ({errno.errorcode.get(e.errno, e.errno)})",
                "the kernel shows a process's executable only to a process "
                "that may ptrace it: run as root with CAP_SYS_PTRACE, or as "
                "its user if it is dumpable") from None


def _split_example(text):
    text = os.fsdecode(text)
    return text.split() or ["./app"]


def exec_error(name, code):
    """The error for an exec that failed with errno `code`, by the shell's
    rule: 127 not found (ENOENT also when the #! interpreter is missing),
    126 found but not executable."""
    what = f"{os.strerror(code)} ({errno.errorcode.get(code, code)})"
    if code == errno.ENOENT:
        return CommandNotFound(f"command not found: {name} ({what}: the file "
                               "or the interpreter its #! line names)")
    if code in (errno.EACCES, errno.EPERM, errno.EISDIR):
        return CommandNotExecutable(f"cannot run {name}: {what}")
    if code == errno.ENOEXEC:
        return CommandNotExecutable(
            f"cannot run {name}: {what}: not an executable this kernel "
            "runs, and no #! line", "add a #! line (e.g. #!/bin/sh) or "
            f"run it through its interpreter: -- sh {name}")
    return TargetError(f"cannot run {name}: {what}")


def find_command(name):
    """The path execv will run for `name`, as a shell finds it: a name
    with a slash as it is, else the first executable file of that name on
    PATH. A name that exists but cannot be run raises CommandNotExecutable
    (exit 126, like a shell), one that does not CommandNotFound (127)."""
    if "/" in name:
        candidates = [name]
    else:
        candidates = [os.path.join(d or ".", name) for d in
                      os.environ.get("PATH", os.defpath).split(os.pathsep)]
    unrunnable = None
    for path in candidates:
        if os.path.isdir(path):
            if "/" in name:   # a PATH search skips directories
                unrunnable = unrunnable or (path, errno.EISDIR)
        elif os.path.exists(path):
            if os.access(path, os.X_OK):
                return path
            unrunnable = unrunnable or (path, errno.EACCES)
    if unrunnable:
        path, code = unrunnable
        raise exec_error(name if "/" in name else f"{name} ({path})", code)
    raise CommandNotFound(f"command not found: {name}")


_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p,
                         ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long
PTRACE_TRACEME, PTRACE_CONT, PTRACE_DETACH = 0, 7, 17


class CommandTarget(Target):
    """A command forked and held twice: before exec, until recording is
    set up (the events count its tgid from the first instruction), and
    right after exec (a ptrace stop), so its executable and mappings are
    read even if it would exit at once."""
    child = True

    def __init__(self, argv):
        if isinstance(argv, (str, bytes)):
            # list(str) would run its first character; splitting it would
            # guess at quoting: ask for the argv list, as subprocess does
            # without a shell
            raise UsageError(f"command given as a string: {argv!r}",
                             "give the command as a list of arguments, e.g. "
                             f"command={_split_example(argv)!r}")
        if not argv:
            raise UsageError("no command given: the argv list is empty",
                             "give the program and its arguments, e.g. "
                             "['./app', '-x']")
        self.argv = [os.fsdecode(a) for a in argv]
        self.returncode = None
        self._traced = False
        exe = find_command(self.argv[0])
        gate_r, gate_w = os.pipe()
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # child: wait for the go, then exec
            try:
                os.close(gate_w)
                os.close(err_r)
                if os.read(gate_r, 1) != b"g":
                    os._exit(127)  # ebpf-bolt gave up before the exec
                os.close(gate_r)
                # what Python changed, the command gets back (as subprocess
                # does with restore_signals)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
                            signal.SIGPIPE, signal.SIGXFSZ):
                    signal.signal(sig, signal.SIG_DFL)
                # stop at the exec (SIGTRAP) for the parent to look at us
                traced = _libc.ptrace(PTRACE_TRACEME, 0, None, None) == 0
                os.write(err_w, b"T" if traced else b"N")
                os.execv(exe, self.argv)
            except OSError as e:
                os.write(err_w, str(e.errno).encode())
            finally:
                os._exit(127)
        os.close(gate_r)
        os.close(err_w)
        self.pid, self.exe = pid, exe
        self._gate, self._err = gate_w, err_r
        self._fd = _pidfd(pid)

    def describe(self):
        return "command " + " ".join(self.argv)

    def start(self):
        """Let the child exec. Returns once the exec succeeded; the child is
        then stopped (if ptrace allowed it) until resume()."""
        os.write(self._gate, b"g")
        os.close(self._gate)
        self._gate = None
        self._traced = os.read(self._err, 1) == b"T"
        while self._traced:
            _, status = os.waitpid(self.pid, 0)
            if not os.WIFSTOPPED(status):   # exited: the exec failed
                self._traced = False
                self.returncode = os.waitstatus_to_exitcode(status)
            elif os.WSTOPSIG(status) == signal.SIGTRAP:
                break                       # stopped at the exec
            else:  # a signal arrived before the exec: deliver it, go on
                _libc.ptrace(PTRACE_CONT, self.pid, None,
                             ctypes.c_void_p(os.WSTOPSIG(status)))
        data = os.read(self._err, 16)  # EOF when exec closed the pipe
        os.close(self._err)
        self._err = None
        if data:
            self._reap(0)
            raise exec_error(self.argv[0], int(data))

    def resume(self):
        """Let the command run on after its post-exec stop."""
        if self._traced:
            self._traced = False
            _libc.ptrace(PTRACE_DETACH, self.pid, None, None)

    def abandon(self):
        """Set-up failed before the command ran (before its exec, or held
        at it): make the child go away."""
        for name in ("_gate", "_err"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._reap(0)

    def _reap(self, flags):
        if self.returncode is not None:
            return self.returncode
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:
            self.returncode = 0
            return 0
        if pid == 0:
            return None
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self):
        """Block until the command exits; its status as a shell gives it."""
        code = self._reap(0)
        return 128 - code if code < 0 else code

    def signal(self, sig):
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


def interpreters(path, depth=4):
    """The programs a #! script at `path` runs: its interpreter, that
    one's own if it is a script too (the kernel follows 4 levels), and for
    `#!/usr/bin/env NAME` the NAME that env finds on PATH. The executable
    ebpf-bolt records is the last; -o must be none of them."""
    found = []
    for _ in range(depth):
        try:
            with open(path, "rb") as f:
                line = f.readline(256)
        except OSError:
            break
        if not line.startswith(b"#!"):
            break
        words = line[2:].split()
        if not words:
            break
        path = os.fsdecode(words[0])
        found.append(path)
        if os.path.basename(path) == "env":
            names = [os.fsdecode(w) for w in words[1:]
                     if not w.startswith(b"-")]
            where = shutil.which(names[0]) if names else None
            if where:
                found.append(where)
                path = where
    return found


class SystemTarget(Target):
    """-a: every process on the machine; nothing to wait for but the
    duration."""
    pid = 0

    def alive(self):
        self._check_open()
        return True

    def wait_exit(self, timeout):
        self._check_open()
        select.select([], [], [], timeout)
        return False

    def describe(self):
        return "every process"
