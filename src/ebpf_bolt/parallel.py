"""Text made in forked children, one slice of the work each.

Formatting a million profile lines is CPU-bound Python; threads would take
turns on the GIL, so the slices go to forked children, which send their
text back through a pipe while this process makes the first slice's.

Forking inside a library has to leave the caller's process as it was:
- a slice whose child fails (cannot fork, dies, is killed, sends less than
  it announced) is made here instead, so the result never depends on fork;
- children are reaped on every path, killed first if the caller's code is
  interrupted, and keep no descriptor of another child's pipe (which would
  keep that child blocked on a pipe nobody reads);
- the signals a user sends (SIGINT, SIGTERM, SIGHUP) are blocked across the
  fork, and the child restores their default action before unblocking
  them: the caller's handlers (which raise KeyboardInterrupt or write a
  profile) never run in a child, and a child always leaves by os._exit.
"""
import os
import signal
import struct
import warnings

USER_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
_HEADER = struct.Struct("=Q")  # length of the text that follows


def map_slices(make_text, slices):
    """[make_text(s) for s in slices], the slices after the first made in
    forked children."""
    children = []
    try:
        for s in slices[1:]:
            open_fds = [c.fd for c in children if c]
            children.append(_Child.start(make_text, s, open_fds))
        texts = [make_text(slices[0])]
        for s, child in zip(slices[1:], children):
            text = child.result() if child else None
            texts.append(make_text(s) if text is None else text)
        return texts
    finally:
        for child in children:
            if child:
                child.reap()


class _Child:
    def __init__(self, pid, fd):
        self.pid, self.fd = pid, fd

    @classmethod
    def start(cls, make_text, piece, open_fds):
        """Fork a child making piece's text; None if it cannot start."""
        try:
            rfd, wfd = os.pipe()
        except OSError:
            return None
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, USER_SIGNALS)
        try:
            with warnings.catch_warnings():
                # Python 3.12+ warns about fork in a threaded process: the
                # child only formats and leaves, touching no lock
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
        except OSError:
            pid = None
        if pid == 0:
            _child_main(make_text, piece, wfd, [rfd] + open_fds, mask)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(wfd)
        if pid is None:
            os.close(rfd)
            return None
        return cls(pid, rfd)

    def result(self):
        """The child's text, or None unless it arrived whole."""
        chunks = []
        while True:
            b = os.read(self.fd, 1 << 20)
            if not b:
                break
            chunks.append(b)
        data = b"".join(chunks)
        self.reap()
        if len(data) < _HEADER.size:
            return None
        (size,) = _HEADER.unpack_from(data)
        if size != len(data) - _HEADER.size:
            return None
        return data[_HEADER.size:].decode()

    def reap(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.pid is not None:
            pid, self.pid = self.pid, None
            try:
                # after result() the child has closed its pipe: it is
                # exiting or gone; otherwise the caller gave up on it
                if os.waitpid(pid, os.WNOHANG) == (0, 0):
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
            except ChildProcessError:  # SIGCHLD ignored: reaped already
                pass


def _child_main(make_text, piece, wfd, close_fds, mask):
    status = 1
    try:
        for sig in USER_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for fd in close_fds:
            os.close(fd)
        data = make_text(piece).encode()
        for buf in (_HEADER.pack(len(data)), data):
            view = memoryview(buf)
            while view:
                view = view[os.write(wfd, view):]
        status = 0
    finally:
        os._exit(status)
