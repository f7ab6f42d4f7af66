"""Profile files that appear whole or not at all, and never harm what the
path names.

``OutputFile(path, inputs)`` is opened before the work that produces the
data (a recording, a replay), so that an unwritable directory, a full file
system or an output that is one of the inputs is reported before anyone
waits for a profile; ``commit(data)`` then writes it at once. Leaving the
``with`` block without a commit (an error, Ctrl-C) leaves nothing::

    with OutputFile(path, inputs=[binary]) as out:
        data = work()
        out.commit(data)

What the path names decides how it is written:

- nothing yet, or a regular file: an unnamed temporary file (``O_TMPFILE``)
  in the same directory takes the data; at commit it gets a hidden name and
  is renamed over the path. Readers see the old file or the whole new one,
  and a SIGKILL leaves nothing. Where the file system refuses ``O_TMPFILE``,
  a named hidden temporary file is used instead.
- a symlink: the file it resolves to is replaced, in that file's directory;
  the link stays a link (a dangling one gets its target created).
- a character device or a FIFO: written directly, as a shell redirection
  would (``-o /dev/null`` stays a device, a FIFO's reader gets the data).
  A FIFO is opened at once, so this waits for its reader before recording.
- a directory, a block device, a socket: refused.

A new file gets mode ``0666`` less the umask, as files made by a shell
redirection, cp or perf do (``0644`` under the usual umask 022).

Several profiles (one per object) go to a directory, ``OutputDirectory``,
complete or absent too: the files and ``index.json`` are built in a hidden
sibling directory, which one rename(2) puts in place::

    with OutputDirectory(path, inputs=[binary]) as out:
        for name, text in zip(profile_names(objects), texts):
            out.add(name, text)
        out.commit({"objects": [...]})

With --interval the directory takes windows while recording (DIR/0001/,
each an OutputDirectory of its own) and the total at the end:
``OutputDirectory(path, in_place=True)`` makes the directory when opened,
and its commit renames each profile into it, then index.json last.
"""
import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import secrets
from collections import Counter
import select
import stat
import sys

from . import provenance
from .handle import Handle
from .errors import OutputError

TMP_PREFIX = ".ebpf-bolt-"   # hidden temporary names in the output directory
RESERVE = 64 * 1024          # bytes that must be free before recording

AT_FDCWD = -100
AT_SYMLINK_FOLLOW = 0x400
AT_EMPTY_PATH = 0x1000
# how kernels and file systems without O_TMPFILE refuse it (open(2))
_NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)

_libc = None


def _linkat(olddirfd, oldpath, newdirfd, newpath, flags):
    """linkat(2), which os.link cannot call with AT_EMPTY_PATH."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.linkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                 ctypes.c_char_p, ctypes.c_int]
        _libc.linkat.restype = ctypes.c_int
    if _libc.linkat(olddirfd, oldpath, newdirfd, os.fsencode(newpath),
                    flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), newpath)


def _name_unnamed(fd, dirfd):
    """Give the O_TMPFILE file `fd` a fresh hidden name in `dirfd`, and
    return it. linkat refuses an existing name, hence a hidden one that a
    rename then moves over the destination."""
    for _ in range(100):
        name = TMP_PREFIX + secrets.token_hex(6)
        try:
            try:
                _linkat(fd, b"", dirfd, name, AT_EMPTY_PATH)
            except OSError as e:
                # AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH before Linux 6.10
                # (ENOENT without it); the /proc link works for the opener
                if e.errno != errno.ENOENT:
                    raise
                _linkat(AT_FDCWD, f"/proc/self/fd/{fd}".encode(), dirfd,
                        name, AT_SYMLINK_FOLLOW)
            return name
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name")


def _create_named(dirfd):
    """A new hidden temporary file in `dirfd`: (fd, name)."""
    for _ in range(100):
        name = TMP_PREFIX + secrets.token_hex(6)
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | os.O_CLOEXEC, 0o666, dir_fd=dirfd)
        except FileExistsError:
            continue
        return fd, name
    raise FileExistsError(errno.EEXIST, "no free temporary name")


def _open_unnamed(dirfd):
    """An O_TMPFILE file in `dirfd` that can be given a name later, or None
    where the file system or the kernel cannot do both."""
    flags = os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC
    try:
        fd = os.open(".", flags, 0o666, dir_fd=dirfd)
    except OSError as e:
        if e.errno in _NO_TMPFILE:
            return None
        raise
    # naming it is only tried at commit: try it now on a throwaway file, so
    # that a file system or kernel refusing it falls back before recording
    try:
        probe = os.open(".", flags, 0o666, dir_fd=dirfd)
        try:
            os.unlink(_name_unnamed(probe, dirfd), dir_fd=dirfd)
        finally:
            os.close(probe)
    except OSError:
        os.close(fd)
        return None
    return fd


def open_temporary(dirfd, tmpfile=True):
    """A temporary file in `dirfd` to be renamed over a name there:
    (fd, None) for an unnamed O_TMPFILE file, (fd, name) for a named one
    (where O_TMPFILE is refused, or `tmpfile` is False)."""
    fd = _open_unnamed(dirfd) if tmpfile else None
    if fd is not None:
        return fd, None
    return _create_named(dirfd)


def _reserve(fd, size):
    """Fail now (ENOSPC) unless `size` bytes can be written to `fd`, an
    empty file, rather than after the recording."""
    if not size:
        return
    try:
        os.posix_fallocate(fd, 0, size)
        os.ftruncate(fd, 0)
    except OSError as e:
        if e.errno != errno.EOPNOTSUPP:  # fs cannot preallocate
            raise


def _umask():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o22)   # kernels before 4.7: read it by setting it
    os.umask(old)
    return old


def _write_all(fd, data):
    """All of `data`, also to a pipe another program set non-blocking (a
    short write or EAGAIN then waits for the reader, not lose the rest)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            select.select([], [fd], [])


def _same_file(a, b):
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


_FD_LINK = re.compile(r"/proc/(?:self|thread-self|(\d+))(?:/task/\d+)?"
                      r"/fd/(\d+)")


def _own_fd(path):
    """The fd number if `path` names one of this process's file
    descriptors through /proc (/dev/stdout, /dev/fd/N, /proc/self/fd/N),
    else None. Its links are followed one by one: resolving them all would
    give the file the fd has open, or a name such as 'pipe:[1234]'."""
    # not abspath: it drops "x/.." as text, before x's link is followed
    p = os.path.join(os.getcwd(), path)
    try:   # our pid as /proc shows it (another PID namespace's /proc)
        own = os.readlink("/proc/self")
    except OSError:
        own = str(os.getpid())
    for _ in range(40):   # the kernel's own limit of links in a path
        head = os.path.realpath(os.path.dirname(p))
        p = os.path.join(head, os.path.basename(p))
        m = _FD_LINK.fullmatch(p)
        if m:
            if m.group(1) not in (None, own):
                raise OutputError(
                    f"output {path} is another process's file descriptor",
                    "give a file name with -o")
            return int(m.group(2))
        if not os.path.islink(p):
            return None
        p = os.path.join(head, os.readlink(p))
    return None


# what -o must never name whatever the command: the Python running us
_ALWAYS_INPUTS = ["/proc/self/exe"]


def _stdout_fd():
    """fd 1 when sys.stdout writes there, else None (a stream put in its
    place has no descriptor)."""
    try:
        return sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _refuse_inputs(shown, written, inputs):
    """OutputError when `written` (a stat, or None for nothing yet) is the
    file of one of `inputs` (paths; missing ones skipped)."""
    # a device is no file to harm: -o /dev/null with stdin /dev/null
    if written is None or stat.S_ISCHR(written.st_mode):
        return
    for name in inputs:
        try:
            ist = os.stat(name)
        except OSError:
            continue   # what does not exist cannot be overwritten
        if _same_file(ist, written):
            raise OutputError(
                f"output {shown} is the same file as the input "
                f"{os.path.realpath(name)}",
                "write the profile to another file with -o: an "
                "input is never overwritten")


_FILE_TYPES = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
               (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISLNK, "a symlink"))


def file_type(mode):
    """What a file that is not a regular one is, for messages."""
    return next((name for test, name in _FILE_TYPES if test(mode)),
                "not a regular file")


class OutputFile(Handle):
    """The file `path` (None or "-": stdout), written whole by commit() or
    not at all. `inputs` are paths of files the output must not be (after
    resolving links and hard links); missing ones are skipped. `reserve`
    bytes must be free. `tmpfile=False` uses a named temporary file, as file
    systems without O_TMPFILE get. `regular`: only a regular file is
    written (made or replaced); a device, FIFO or file descriptor there is
    refused rather than written into (the windows of --interval, written
    while recording: a FIFO's open would wait for a reader)."""

    def __init__(self, path, inputs=(), reserve=RESERVE, tmpfile=True,
                 regular=False):
        self.path = path
        self.regular = regular
        self.target = None     # the file replaced: links resolved
        self.direct = False    # written in place: a device, FIFO or fd
        self._inputs = []
        self._fd = self._dirfd = self._tmpname = None
        self._closed = False
        if path in (None, "-"):
            if sys.stdout is None:   # started with fd 1 closed
                raise OutputError("stdout is closed",
                                  "give the profile a file with -o FILE")
            self._inputs = list(inputs)
            self.check_inputs(())   # `ebpf-bolt ... >> BINARY`
            return
        self.path = os.fspath(path)
        self._inputs = list(inputs) + _ALWAYS_INPUTS
        try:
            self._open(reserve, tmpfile)
            self.check_inputs(())
        except BaseException as e:
            self.close()
            if isinstance(e, OSError):
                raise output_error(self.path, e) from None
            raise

    def _open(self, reserve, tmpfile):
        path = self.path
        if not path:   # realpath("") would be the working directory
            raise OutputError("empty output file name",
                              "give a file name with -o")
        fd = _own_fd(path)
        if fd is not None and self.regular:
            raise OutputError(f"output {path} is a file descriptor, not a "
                              "regular file", REGULAR_HINT)
        if fd is not None:
            # /dev/stdout, /dev/fd/N, /proc/self/fd/N: this process's fd N,
            # written at its offset as a shell does (`> /dev/stdout`).
            # Replacing the file it resolves to would destroy a log that
            # fd 1 appends to.
            self.direct = True
            try:
                mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
            except (OSError, OverflowError):
                raise OutputError(f"output {path}: file descriptor {fd} is "
                                  "not open", "give a file name with -o")
            if mode != os.O_RDONLY:
                self._fd = os.dup(fd)
                return
            # open for reading only (-o /dev/stdin < /dev/null): a device or
            # FIFO is opened anew for writing; a file is not ours to write
            st = os.fstat(fd)
            if not (stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
                raise OutputError(f"output {path}: file descriptor {fd} is "
                                  "open for reading only",
                                  "give a file name with -o")
            self._check_against_inputs(st)
            self._fd = os.open(path, os.O_WRONLY | os.O_NOCTTY
                               | os.O_CLOEXEC)
            return
        if path.endswith("/") or os.path.isdir(path):
            raise OutputError(f"output {path} is a directory",
                              "give a file name with -o")
        try:
            st = os.stat(path)   # through links
        except FileNotFoundError:
            st = None            # a new file, or a dangling link's target
        if st is not None and (stat.S_ISCHR(st.st_mode)
                               or stat.S_ISFIFO(st.st_mode)):
            if self.regular:
                raise OutputError(f"output {path} is "
                                  f"{file_type(st.st_mode)}", REGULAR_HINT)
            self.direct = True
            # before the open: a FIFO's open waits for a reader, and the
            # FIFO may be the input just read
            self._check_against_inputs(st)
            # O_NOCTTY: a terminal given as -o must not become ours
            self._fd = os.open(path, os.O_WRONLY | os.O_NOCTTY
                               | os.O_CLOEXEC)
            return
        # a symlink's target is what gets replaced, so the link stays
        self.target = os.path.realpath(path)
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise OutputError(f"output {path} is {file_type(st.st_mode)}",
                              "give a file name, a character device or a "
                              "FIFO with -o")
        self._dirfd = os.open(os.path.dirname(self.target),
                              os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._fd, self._tmpname = open_temporary(self._dirfd, tmpfile)
        os.fchmod(self._fd, 0o666 & ~_umask())
        _reserve(self._fd, reserve)

    def _written(self):
        """What the profile will overwrite or write into: the stat of the
        fd written directly, or of the existing file replaced (None for a
        new file, or stdout without a file descriptor of its own)."""
        if self.path in (None, "-"):
            fd = _stdout_fd()
            return None if fd is None else os.fstat(fd)
        if self.direct:
            return os.fstat(self._fd)
        try:
            return os.stat(self.target)
        except FileNotFoundError:
            return None

    def check_inputs(self, inputs):
        """Refuse (OutputError) when the output is one of `inputs` (paths;
        links and hard links resolved, missing ones skipped): an input is
        never overwritten, nor written into (a pipe that is also stdin).
        They are checked again at commit, with those found later (the
        program a command execs), since the files may change meanwhile."""
        self._check_open()
        self._inputs.extend(inputs)
        self._check_against_inputs(self._written())

    def _check_against_inputs(self, written):
        _refuse_inputs("stdout" if self.path in (None, "-") else self.path,
                       written, self._inputs)

    def __enter__(self):
        self._check_open()
        return self

    def _check_open(self):
        if self._closed:
            raise ValueError(f"output {self.path} is closed")

    def commit(self, data):
        """Write `data` (str or bytes) and put it in place; then closed."""
        self._check_open()
        try:
            self.check_inputs(())
            if self.path in (None, "-"):
                fd = _stdout_fd()
                if fd is None:   # a stream in its place (a caller's, tests')
                    sys.stdout.write(data if isinstance(data, str)
                                     else data.decode())
                    sys.stdout.flush()
                else:   # sys.stdout.write may stop short on a pipe, silently
                    sys.stdout.flush()
                    _write_all(fd, data.encode() if isinstance(data, str)
                               else data)
                self.close()
                return
            if isinstance(data, str):
                data = data.encode()
            _write_all(self._fd, data)
            if not self.direct:
                self._check_still_regular()
                os.fsync(self._fd)
                if self._tmpname is None:
                    self._tmpname = _name_unnamed(self._fd, self._dirfd)
                os.rename(self._tmpname, os.path.basename(self.target),
                          src_dir_fd=self._dirfd, dst_dir_fd=self._dirfd)
                self._tmpname = None
        except OSError as e:
            self.close()
            if e.errno == errno.EPIPE:
                raise   # the reader went away: main() exits as a shell would
            raise output_error(self.path or "stdout", e) from None
        except BaseException:
            self.close()
            raise
        self.close()

    def _check_still_regular(self):
        """What the rename would replace is still a regular file or
        nothing: a device, FIFO or symlink put at the name while the
        profile was made (a long recording) is refused, not replaced."""
        try:
            st = os.lstat(self.target)
        except FileNotFoundError:
            return
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(f"output {self.path} became "
                              f"{file_type(st.st_mode)} while the profile "
                              "was made: it is not replaced",
                              "give -o a new file name")

    def close(self):
        """Release the file; without a commit before, nothing is left (a
        FIFO's reader or a device may have had part of the data)."""
        if self._closed:
            return
        self._closed = True
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if self._tmpname is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._tmpname, dir_fd=self._dirfd)
            self._tmpname = None
        if self._dirfd is not None:
            os.close(self._dirfd)
            self._dirfd = None


# link(2)'s errors where a file system has no hard links
_NO_HARD_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK)

REGULAR_HINT = ("remove it, or give -o another file name: the windows of "
                "--interval and sidecars are written to regular files only")


def sidecar_output(out):
    """The Sidecar of the profile that the OutputFile `out` writes:
    FILE.json beside FILE, checked with it, before the work. None where
    the profile gets no sidecar: stdout, a device, a FIFO, a file
    descriptor (no file to be beside)."""
    if out.path in (None, "-") or out.direct:
        return None
    return Sidecar(out.path + provenance.SUFFIX, out._inputs)


def commit_with_sidecar(out, side, data, side_data):
    """Commit the profile `data` to `out` (an OutputFile) and its sidecar
    `side_data` (text made before, so that nothing can fail between the
    two but the writing) to `side` (a Sidecar, or None where the profile
    gets none). The old sidecar goes first, then the profile, then the new
    sidecar: stopped or failing anywhere, the profile there has its own
    sidecar or none (which merge refuses), never an earlier profile's."""
    if side is not None:
        out.check_inputs(())   # what commit refuses, before removing
        side.remove()
    out.commit(data)
    if side is not None:
        side.commit(side_data)


class Sidecar(Handle):
    """A profile's sidecar (provenance.py) at `path`, written whole by
    commit() through an OutputFile, or not at all. An existing file there
    is replaced only if it is a regular file: a symlink, a device, a FIFO
    or a directory is refused, as an input is, so that a sidecar never
    harms what the name holds. Checked when made and again at commit; no
    file descriptor is held in between (a recording's descriptors are
    counted against RLIMIT_NOFILE before it starts)."""

    def __init__(self, path, inputs=()):
        self.path = os.fspath(path)
        self._inputs = list(inputs) + _ALWAYS_INPUTS
        self._closed = False
        self._check()

    def _check(self):
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise output_error(self.path, e) from None
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise OutputError(f"{self.path}, where the profile's sidecar "
                              f"goes, is {file_type(st.st_mode)}",
                              "move it away, or give "
                              "the profile another name with -o")
        _refuse_inputs(self.path, st, self._inputs)
        if st is None and not os.access(os.path.dirname(
                os.path.abspath(self.path)), os.W_OK):
            raise OutputError(f"cannot write {self.path}: "
                              f"{os.strerror(errno.EACCES)}",
                              "choose a writable directory with -o")

    def check_inputs(self, inputs):
        if self._closed:
            raise ValueError(f"sidecar {self.path} is closed")
        self._inputs.extend(inputs)
        self._check()

    def remove(self):
        """Remove the file there (a regular file, as checked), so that no
        earlier profile's sidecar is left beside the profile about to be
        committed."""
        self.check_inputs(())
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def commit(self, data):
        """Write `data` in place of the file, whole; then closed."""
        self.check_inputs(())
        try:
            with OutputFile(self.path, inputs=self._inputs, reserve=0,
                            regular=True) as f:
                f.commit(data)
        finally:
            self.close()

    def close(self):
        self._closed = True


INDEX_NAME = "index.json"
# index.json's keys for each object, in this order (issue 9), then the
# provenance a merge needs (issue 11)
INDEX_KEYS = ("path", "build_id", "profile", "samples", "processes",
              "command") + provenance.KEYS
_HEX = re.compile(r"[0-9a-f]+")


def _file_name(name):
    """`name` if it can name a file in a directory, else ValueError."""
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name
            or "\0" in name):
        raise ValueError(f"not a file name: {name!r}")
    return name


def profile_names(objects):
    """The file names of the profiles of `objects`, tuples (file name of
    the object, build id as hex or None, format), in their order.

    NAME.FORMAT (liblua.so.fdata, app.preagg); objects sharing NAME.FORMAT
    all get the first 12 hex digits of their build id
    (app.1a2b3c4d5e6f.preagg), so that none takes the plain name by the
    luck of the order; those the build id cannot tell apart (none, or the
    same one: a copy of the file) get a counter (app.1.preagg). No name is
    index.json, and the same objects always get the same names."""
    objects = [(_file_name(base), _build_id(bid), _file_name(fmt))
               for base, bid, fmt in objects]
    plain = Counter(f"{base}.{fmt}" for base, _, fmt in objects)
    by_id = Counter((base, bid[:12], fmt) for base, bid, fmt in objects
                    if bid)
    names, used = [None] * len(objects), {INDEX_NAME}
    # first the names without a counter, so that a counter never takes one
    for i, (base, bid, fmt) in enumerate(objects):
        if plain[f"{base}.{fmt}"] == 1:
            name = f"{base}.{fmt}"
        elif bid and by_id[(base, bid[:12], fmt)] == 1:
            name = f"{base}.{bid[:12]}.{fmt}"
        else:
            continue
        if name not in used:
            names[i] = name
            used.add(name)
    for i, (base, _, fmt) in enumerate(objects):
        if names[i] is None:
            n = 1
            while f"{base}.{n}.{fmt}" in used:
                n += 1
            names[i] = f"{base}.{n}.{fmt}"
            used.add(names[i])
    return names


def _build_id(bid):
    if bid is None:
        return None
    if not isinstance(bid, str) or not _HEX.fullmatch(bid.lower()):
        raise ValueError(f"build id {bid!r} is not hex")
    return bid.lower()


class OutputDirectory(Handle):
    """The directory `path` with several profiles and index.json, put in
    place whole by commit() or not at all. Used as OutputFile is: opened
    (hence checked) before the work, then add() each profile, then
    commit(index).

    `path` may name nothing yet (the directory is made, mode 0777 less the
    umask), an empty directory (replaced by the new one, which takes its
    mode and owner), or a symlink to either (the link stays; the directory
    it points to is made or replaced, in that directory's parent). Anything
    else is refused: a file, a non-empty directory, stdout, a mount point,
    the working directory, an input. `count`, the number of profiles when
    known, is named in the refusal of a file.

    The profiles are written to a hidden directory beside the target, made
    at the first add(); commit() writes index.json last and renames the
    hidden directory over the target. rename(2) replaces an empty directory
    in one step and refuses a non-empty one, so a user's file put there
    meanwhile is never lost, and a reader sees no directory (or the empty
    one) or the complete one. (In place, each file is linked to its name
    instead, which replaces nothing: _link_in_place.) Leaving without a commit removes the hidden
    directory; only a SIGKILL between the first add() and the commit (the
    writing of the profiles, after the work) can leave it behind. The
    parent of the directory must be writable."""

    def __init__(self, path, inputs=(), count=None, reserve=RESERVE,
                 in_place=False):
        """in_place: the directory is made (or the empty one kept) now,
        so that other things can be put in it before the commit (the
        windows of --interval); add() writes each profile to a hidden
        temporary file in it, which commit() renames to its name, then
        index.json last: each file is complete when it appears, and a
        directory with index.json holds every profile."""
        self.path = path
        self.in_place = in_place
        self._temps = {}       # in place: name -> hidden temporary name
        self.target = None     # the directory put in place: links resolved
        self._inputs = list(inputs) + _ALWAYS_INPUTS
        self._count = count
        self._parentfd = self._tmpfd = self._tmpname = None
        self._names = []       # the files made in the hidden directory
        self._closed = False
        try:
            self._open(reserve)
            self.check_inputs(())
        except BaseException as e:
            self.close()
            if isinstance(e, OSError):
                raise output_error(self.path, e) from None
            raise

    def _several(self):
        return (f"{self._count} objects" if self._count
                else "several objects")

    def _open(self, reserve):
        if self.path in (None, "-"):
            raise OutputError(f"{self._several()} get a profile: stdout "
                              "holds one", "give a directory with -o DIR")
        self.path = path = os.fspath(self.path)
        if not path:
            raise OutputError("empty output directory name",
                              "give a directory with -o DIR")
        self.target = os.path.realpath(path)
        st = self._stat_target()
        if st is not None:
            if not stat.S_ISDIR(st.st_mode):
                raise OutputError(f"-o {path} names a file, but "
                                  f"{self._several()} get a profile",
                                  "give a directory with -o DIR: a new or "
                                  "an empty one")
            with os.scandir(self.target) as entries:
                if next(entries, None) is not None:
                    raise OutputError(f"output directory {path} is not "
                                      "empty", "give a new or an empty "
                                      "directory with -o: what is in it "
                                      "is not overwritten")
            try:
                cwd = os.stat(".")
            except OSError:
                cwd = None
            if cwd is not None and _same_file(cwd, st):
                # it is replaced by another directory: a shell in it would
                # be left in a removed one, seeing none of the profiles
                raise OutputError(f"output directory {path} is the working "
                                  "directory", "give -o a new directory "
                                  "name, e.g. -o profiles")
            if os.stat(os.path.dirname(self.target)).st_dev != st.st_dev:
                raise OutputError(f"output directory {path} is a mount "
                                  "point", "give a directory inside it with "
                                  "-o")
        self._parentfd = os.open(os.path.dirname(self.target),
                                 os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        # the parent takes the hidden directory and the rename: check now
        # that it is writable and has room, not after the recording
        fd, name = open_temporary(self._parentfd)
        try:
            _reserve(fd, reserve)
        finally:
            os.close(fd)
            if name is not None:
                os.unlink(name, dir_fd=self._parentfd)
        if self.in_place:
            if st is None:   # 0777: the umask applies, as for mkdir(1)
                os.mkdir(os.path.basename(self.target), 0o777,
                         dir_fd=self._parentfd)
            self._tmpfd = os.open(os.path.basename(self.target), os.O_RDONLY
                                  | os.O_DIRECTORY | os.O_NOFOLLOW
                                  | os.O_CLOEXEC, dir_fd=self._parentfd)

    def _stat_target(self):
        try:
            return os.lstat(self.target)
        except FileNotFoundError:
            return None

    def check_inputs(self, inputs):
        """Refuse (OutputError) when the directory is one of `inputs`, as
        OutputFile.check_inputs does; the files it will hold are new, so
        none can be an input."""
        self._check_open()
        self._inputs.extend(inputs)
        _refuse_inputs(self.path, self._stat_target(), self._inputs)

    def __enter__(self):
        self._check_open()
        return self

    def _check_open(self):
        if self._closed:
            raise ValueError(f"output {self.path} is closed")

    def add(self, name, data):
        """Write the profile `data` (str or bytes) as the file `name`."""
        self._check_open()
        if _file_name(name) == INDEX_NAME or name in self._names:
            raise ValueError(f"{name} is already in {self.path}")
        try:
            self._write(name, data)
        except BaseException as e:
            self.close()
            if isinstance(e, OSError):
                raise output_error(self.path, e) from None
            raise

    def _write(self, name, data):
        if self.in_place:   # a hidden name now, its own at the commit
            fd, tmp = _create_named(self._tmpfd)
            self._temps[name] = tmp
            self._names.append(name)
            try:
                os.fchmod(fd, 0o666 & ~_umask())
                _write_all(fd, data.encode() if isinstance(data, str)
                           else data)
                os.fsync(fd)
            finally:
                os.close(fd)
            return
        if self._tmpfd is None:
            self._make_hidden()
        # 0666: the umask applies, as to a file a shell makes
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                     | os.O_CLOEXEC, 0o666, dir_fd=self._tmpfd)
        self._names.append(name)   # close() removes it, whatever happens
        try:
            _write_all(fd, data.encode() if isinstance(data, str) else data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _make_hidden(self):
        for _ in range(100):
            name = TMP_PREFIX + secrets.token_hex(6)
            try:
                # 0700 until commit: nobody reads a partial set
                os.mkdir(name, 0o700, dir_fd=self._parentfd)
            except FileExistsError:
                continue
            self._tmpname = name
            self._tmpfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY
                                  | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  dir_fd=self._parentfd)
            return
        raise FileExistsError(errno.EEXIST, "no free temporary name")

    def _index_text(self, index):
        """index.json for `index`, checked: exactly INDEX_KEYS for each
        object, and each added profile listed once (else ValueError, a
        caller's bug)."""
        if (not isinstance(index, dict) or set(index) != {"objects"}
                or not isinstance(index["objects"], list)):
            raise ValueError('the index is {"objects": [...]}')
        objects = []
        for entry in index["objects"]:
            if not isinstance(entry, dict) or set(entry) != set(INDEX_KEYS):
                raise ValueError(f"index entry {entry!r}: its keys are "
                                 f"{', '.join(INDEX_KEYS)}")
            bid = entry["build_id"]
            if bid is not None and not (isinstance(bid, str)
                                        and _HEX.fullmatch(bid)):
                raise ValueError(f"build_id {bid!r}: lower-case hex or None")
            for key in ("samples", "processes"):   # null: not known (merge)
                if entry[key] is not None and (type(entry[key]) is not int
                                               or entry[key] < 0):
                    raise ValueError(f"{key} {entry[key]!r}: a count or None")
            for key in ("path", "profile"):
                if not isinstance(entry[key], str):
                    raise ValueError(f"{key} {entry[key]!r}: a string")
            # null: no command applies it (a stripped object: BOLT
            # refuses it)
            if entry["command"] is not None and \
                    not isinstance(entry["command"], str):
                raise ValueError(f"command {entry['command']!r}: a string "
                                 "or None")
            wrong = provenance.problem(entry)
            if wrong:
                raise ValueError(f"index entry of {entry['profile']}: {wrong}")
            objects.append({key: entry[key] for key in INDEX_KEYS})
        listed = sorted(entry["profile"] for entry in objects)
        if listed != sorted(self._names):
            raise ValueError(f"the index lists {listed}, the directory "
                             f"holds {sorted(self._names)}")
        return json.dumps({"objects": objects}, indent=2) + "\n"

    def commit(self, index):
        """Write `index` as index.json, {"objects": [{key: value for key in
        INDEX_KEYS}, ...]} with one entry per profile added, and put the
        directory in place; then closed."""
        self._check_open()
        try:
            text = self._index_text(index)
            self.check_inputs(())
            # last: a directory holding index.json holds everything
            self._write(INDEX_NAME, text)
            if self.in_place:
                self._link_in_place()
                self.close()
                return
            st = self._stat_target()
            if st is None:
                mode = 0o777 & ~_umask()   # as mkdir would make it
            elif stat.S_ISDIR(st.st_mode):
                # the user's directory, replaced: keep what they chose
                mode = stat.S_IMODE(st.st_mode)
                try:   # before the chmod: a chown may clear set-id bits
                    os.fchown(self._tmpfd, st.st_uid, st.st_gid)
                except PermissionError:
                    pass   # not root: the files stay ours, as the profiles
            else:
                raise OutputError(f"output directory {self.path} was "
                                  "replaced by a file while the profiles "
                                  "were made", "give a directory with -o "
                                  "DIR: a new or an empty one")
            os.fchmod(self._tmpfd, mode)
            os.fsync(self._tmpfd)
            # one step: replaces nothing or an empty directory, refuses a
            # non-empty one (ENOTEMPTY, EEXIST) and a file (ENOTDIR)
            os.rename(self._tmpname, os.path.basename(self.target),
                      src_dir_fd=self._parentfd, dst_dir_fd=self._parentfd)
            self._tmpname, self._names = None, []
        except OSError as e:
            self.close()
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise OutputError(f"output directory {self.path} is no "
                                  "longer empty: something was put in it "
                                  "while the profiles were made",
                                  "give a new or an empty directory with "
                                  "-o") from None
            raise output_error(self.path, e) from None
        except BaseException:
            self.close()
            raise
        self.close()

    def _link_in_place(self):
        """In place, each file gets its name (index.json last of all) by a
        hard link, which, unlike rename(2), replaces nothing: a file, link,
        FIFO or device put at a name while recording is refused, and the
        files linked before it are taken back (no index.json without all
        the profiles it lists)."""
        placed = []
        try:
            for name in list(self._names):
                if not self._place(self._temps[name], name):
                    self._temps[name] = None   # renamed: no temporary left
                placed.append(name)
        except BaseException:
            for name in placed:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=self._tmpfd)
            raise
        for name in placed:   # close() spares them; the temporary goes
            tmp = self._temps.pop(name)
            if tmp is not None:
                os.unlink(tmp, dir_fd=self._tmpfd)
            self._names.remove(name)
        os.fsync(self._tmpfd)

    def _place(self, tmp, name):
        """The file `tmp` also at `name`, replacing nothing: True for a
        hard link. A file system without hard links (vfat, some FUSE
        mounts) gets a rename once nothing is seen at `name` (a name taken
        between the two is the one race left): False, `tmp` is gone."""
        def taken():
            return OutputError(f"{os.path.join(self.path, name)} appeared "
                               "while the profiles were made: it is not "
                               "replaced", "give -o a new or an empty "
                               "directory")
        try:
            os.link(tmp, name, src_dir_fd=self._tmpfd, dst_dir_fd=self._tmpfd,
                    follow_symlinks=False)
            return True
        except FileExistsError:
            raise taken() from None
        except OSError as e:
            if e.errno not in _NO_HARD_LINKS:
                raise
        try:
            os.stat(name, dir_fd=self._tmpfd, follow_symlinks=False)
        except FileNotFoundError:
            os.rename(tmp, name, src_dir_fd=self._tmpfd,
                      dst_dir_fd=self._tmpfd)
            return False
        raise taken()

    def close(self):
        """Release the directory; without a commit before, the hidden
        directory and what it holds are removed."""
        if self._closed:
            return
        self._closed = True
        if self._tmpfd is not None:
            for name in self._names:
                # in place: the hidden temporary, unless renamed (_place)
                path = self._temps.get(name) if self.in_place else name
                if path is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(path, dir_fd=self._tmpfd)
            os.close(self._tmpfd)
            self._tmpfd = None
        self._names = []
        if self._tmpname is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self._tmpname, dir_fd=self._parentfd)
            self._tmpname = None
        if self._parentfd is not None:
            os.close(self._parentfd)
            self._parentfd = None


def output_error(path, err):
    """The OutputError for `err`, an OSError met writing `path`."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"no space left to write {path}",
                           "free space there or write elsewhere with -o")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"cannot write {path}: {os.strerror(err.errno)}",
                           "choose a writable directory with -o")
    if err.errno == errno.ENOENT:
        return OutputError(f"cannot write {path}: directory does not exist",
                           "create the directory or fix the -o path")
    return OutputError(f"cannot write {path}: {os.strerror(err.errno)}",
                       "check the -o path")
