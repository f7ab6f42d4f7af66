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

from .errors import CommandNotFound, TargetError


def _pidfd(pid):
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None  # kernels < 5.3: fall back to polling /proc


class Target:
    pid = None
    child = False

    def alive(self):
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
        if self._fd is not None:
            ready, _, _ = select.select([self._fd], [], [], timeout)
            return bool(ready) and not self.alive()
        select.select([], [], [], min(timeout, 0.2))
        return not self.alive()

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ProcessTarget(Target):
    def __init__(self, pid):
        if pid <= 0:
            raise TargetError(f"invalid PID {pid}", "give a positive process ID")
        self.pid = pid
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise TargetError(f"no process with PID {pid}",
                              "check the PID (ps -e, pgrep NAME)") from None
        except PermissionError:
            pass  # exists; privileges are checked separately
        if not self.alive():
            raise TargetError(f"process {pid} has exited", "check the PID")
        self._fd = _pidfd(pid)

    def describe(self):
        return f"process {self.pid}"


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
        if not argv:
            raise TargetError("no command given", "put the command after --")
        self.argv = list(argv)
        self.returncode = None
        self._traced = False
        exe = shutil.which(self.argv[0])
        if exe is None:
            raise CommandNotFound(f"command not found: {self.argv[0]}")
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
            code = int(data)
            if code in (errno.ENOENT, errno.EACCES, errno.ENOEXEC):
                raise CommandNotFound(f"cannot run {self.argv[0]}: "
                                      f"{os.strerror(code)}")
            raise TargetError(f"cannot run {self.argv[0]}: {os.strerror(code)}")

    def resume(self):
        """Let the command run on after its post-exec stop."""
        if self._traced:
            self._traced = False
            _libc.ptrace(PTRACE_DETACH, self.pid, None, None)

    def abandon(self):
        """Setup failed before exec: make the held child go away."""
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
