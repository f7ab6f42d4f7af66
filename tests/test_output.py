"""What -o points at is never harmed (ebpf_bolt/output.py).

A character device or a FIFO is written directly, a symlink stays a link
and its target is replaced, a block device, socket or directory is refused,
and an output that is one of the inputs (replay's binary and stacks file,
the recorded command's executable, -p's /proc/PID/exe) is refused before
anything runs, the input left byte-identical. Most cases replay
branch stacks (no sampling needed) and run twice, through cli.main and the
installed command, as tests/test_errors.py does.
"""
import json
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ebpf_bolt import errors
from ebpf_bolt.output import TMP_PREFIX, OutputFile
from ebpf_bolt.profile import Profile
from test_errors import MAIN_CODE, VIAS, Result, assert_error, run_via

pytestmark = pytest.mark.root

TEXT_START = 0x401000   # the non-PIE workload's first executable page


# --- fixtures and checks ------------------------------------------------------

@pytest.fixture
def binary(workload_nopie, tmp_path):
    """A private copy of the non-PIE workload: the tests may try to
    overwrite it."""
    d = tmp_path / "bin"
    d.mkdir()
    return Path(shutil.copy2(workload_nopie, d / "app"))


@pytest.fixture
def stacks(tmp_path):
    """A stacks file of 4,000 distinct traces: a profile of over 64 KiB, so
    a FIFO's reader must read while ebpf-bolt writes (a pipe holds 64 KiB)."""
    lines = []
    for i in range(400):
        entries = [f"{TEXT_START + 0x10 * (i * 10 + j):#x}/"
                   f"{TEXT_START + 0x8 + 0x10 * (i * 10 + j):#x}/P/-/-/0"
                   for j in range(10)]
        lines.append(" ".join(entries))
    path = tmp_path / "stacks.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def expected(binary, stacks, tmp_path):
    """The profile the replay writes to a regular file."""
    out = tmp_path / "expected.preagg"
    r = subprocess.run([sys.executable, "-m", "ebpf_bolt", "replay",
                        "--binary", binary, stacks, "-o", out],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    out.unlink()
    assert len(text) > 64 * 1024 and text.count("\nT ") == 4000, text[:300]
    return text


def same_profile(a, b):
    """Equal profiles: the same header and records (their order follows the
    kernel map's, which differs from run to run)."""
    a, b = a.splitlines(), b.splitlines()
    return a[:1] == b[:1] and sorted(a) == sorted(b)


def replay_args(binary, stacks, out):
    return ["replay", "--binary", binary, stacks, "-o", out]


def assert_ok(res):
    assert res.rc == 0, res
    assert "Traceback" not in res.stderr, res
    assert "error:" not in res.stderr, res


def snapshot(directory):
    """Every entry of `directory`: name -> (type, link target or content)."""
    out = {}
    for p in Path(directory).iterdir():
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[p.name] = ("link", os.readlink(p))
        elif stat.S_ISREG(st.st_mode):
            out[p.name] = ("file", p.read_bytes(), st.st_ino)
        else:
            out[p.name] = (stat.S_IFMT(st.st_mode), st.st_rdev, st.st_ino)
    return out


def no_temporaries(directory):
    left = sorted(p.name for p in Path(directory).glob(TMP_PREFIX + "*"))
    assert not left, f"temporary files left in {directory}: {left}"


# --- character devices and FIFOs: written in place -----------------------------

@pytest.mark.parametrize("via", VIAS)
def test_char_device_stays_a_device(via, capsys, ebpf_bolt_cmd, binary,
                                    stacks, tmp_path):
    """A node of the null device (1, 3), made for the test: the code under
    test may be broken, and /dev/null is everyone's."""
    d = tmp_path / "dev"
    d.mkdir()
    null = d / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    before = snapshot(d)
    res = run_via(via, capsys, ebpf_bolt_cmd, replay_args(binary, stacks, null))
    assert_ok(res)
    assert snapshot(d) == before
    assert stat.S_ISCHR(null.lstat().st_mode)


PRIVATE_DEV = (
    # a private /dev (a tmpfs in a mount namespace) holding a null device
    # and what $1 makes: the device paths as users type them, without
    # risking the real ones; each must be itself afterwards ($2) and alone
    'mount -t tmpfs tmpfs /dev && mknod -m 666 /dev/null c 1 3 && sh -c "$1" '
    '|| exit 90\n'
    'entries=$(ls -A /dev | tr "\\n" " "); check=$2; shift 2\n'
    '"$@"; rc=$?\n'
    'test "$(ls -A /dev | tr "\\n" " ")" = "$entries" || { ls -lA /dev >&2; '
    'exit 91; }\n'
    'sh -c "$check" || { ls -lA /dev >&2; exit 92; }\n'
    'exit $rc')
DEVICES = {  # name: (how it is made, the test that it is still itself)
    "null": ("true", "test -c /dev/null"),
    "stdout": ("ln -s /proc/self/fd/1 /dev/stdout",
               "test -c /dev/null && test -L /dev/stdout")}


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("name", DEVICES)
def test_dev_null_and_stdout(via, name, ebpf_bolt_cmd, binary, stacks,
                             expected):
    """-o /dev/null: exit 0, still the device; -o /dev/stdout (fd 1 a
    pipe): the profile on stdout, still a link."""
    make, check = DEVICES[name]
    prefix = ["unshare", "-m", "--propagation", "private", "sh", "-c",
              PRIVATE_DEV, "sh", make, check]
    run = [ebpf_bolt_cmd] if via == "cli" else [sys.executable, "-c",
                                                MAIN_CODE]
    p = subprocess.run(prefix + run + [str(a) for a in replay_args(
        binary, stacks, f"/dev/{name}")], capture_output=True, text=True,
        timeout=60)
    res = Result(p.returncode, p.stderr, 0)
    assert_ok(res)
    if name == "stdout":
        assert same_profile(p.stdout, expected), res
    else:
        assert p.stdout == "", res
    # the real ones: untouched by the namespace
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)
    assert os.readlink("/dev/stdout") == "/proc/self/fd/1"


@pytest.mark.parametrize("via", VIAS)
def test_full_device_is_no_space(via, capsys, ebpf_bolt_cmd, binary, stacks,
                                 tmp_path):
    """/dev/full's node (1, 7) refuses every write: one error line, and the
    device is left as it was."""
    d = tmp_path / "dev"
    d.mkdir()
    full = d / "full"
    os.mknod(full, stat.S_IFCHR | 0o666, os.makedev(1, 7))
    before = snapshot(d)
    res = run_via(via, capsys, ebpf_bolt_cmd, replay_args(binary, stacks, full))
    assert_error(res, errors.OutputError, None, says=["no space", str(full)])
    assert snapshot(d) == before


@pytest.mark.parametrize("via", VIAS)
def test_fifo_reader_gets_the_profile(via, capsys, ebpf_bolt_cmd, binary,
                                      stacks, expected, tmp_path):
    d = tmp_path / "fifo"
    d.mkdir()
    fifo = d / "profile"
    os.mkfifo(fifo)
    got = []

    def read():
        with open(fifo, "rb") as f:
            got.append(f.read())
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        res = run_via(via, capsys, ebpf_bolt_cmd,
                      replay_args(binary, stacks, fifo))
    finally:
        if reader.is_alive():   # ebpf-bolt never opened it: free the reader
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        reader.join(10)
    assert_ok(res)
    assert got and same_profile(got[0].decode(), expected)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert [p.name for p in d.iterdir()] == ["profile"]


# --- symlinks: the link stays, its target is replaced -------------------------

def take_sidecar(side, profile):
    """The sidecar of the profile written through a link is beside the
    name given to -o (the link), a regular file describing `profile`;
    removed, so that the rest of a test sees the directories as before."""
    assert side.is_file() and not side.is_symlink()
    assert json.loads(side.read_text())["bytes"] == profile.stat().st_size
    side.unlink()


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("where", ["other-dir", "same-dir"])
def test_symlink_stays_a_link(via, where, capsys, ebpf_bolt_cmd, binary,
                              stacks, expected, tmp_path):
    links, targets = tmp_path / "links", tmp_path / "targets"
    links.mkdir()
    targets.mkdir()
    if where == "same-dir":
        targets = links
    target = targets / "app.preagg"
    target.write_text("old profile\n")
    (targets / "neighbour").write_text("keep me\n")
    (links / "other").write_text("keep me too\n")
    link = links / "app.link"
    link.symlink_to(target if where == "other-dir" else target.name)
    before_links, before_targets = snapshot(links), snapshot(targets)
    res = run_via(via, capsys, ebpf_bolt_cmd, replay_args(binary, stacks, link))
    assert_ok(res)
    assert link.is_symlink() and os.readlink(link) == before_links["app.link"][1]
    assert same_profile(target.read_text(), expected)
    take_sidecar(links / "app.link.json", target)
    after = snapshot(targets)
    assert after.pop("app.preagg")[2] != before_targets.pop("app.preagg")[2], \
        "the target was rewritten in place, not replaced"
    assert after == before_targets   # the link too, in the same directory
    if where == "other-dir":
        assert snapshot(links) == before_links
    no_temporaries(links)
    no_temporaries(targets)


@pytest.mark.parametrize("via", VIAS)
def test_dangling_symlink_gets_its_target(via, capsys, ebpf_bolt_cmd, binary,
                                         stacks, expected, tmp_path):
    links, targets = tmp_path / "links", tmp_path / "targets"
    links.mkdir()
    targets.mkdir()
    link = links / "app.link"
    link.symlink_to(Path("..") / "targets" / "new.preagg")
    res = run_via(via, capsys, ebpf_bolt_cmd, replay_args(binary, stacks, link))
    assert_ok(res)
    assert link.is_symlink()
    assert os.readlink(link) == os.path.join("..", "targets", "new.preagg")
    assert same_profile((targets / "new.preagg").read_text(), expected)
    take_sidecar(links / "app.link.json", targets / "new.preagg")
    assert [p.name for p in links.iterdir()] == ["app.link"]
    assert [p.name for p in targets.iterdir()] == ["new.preagg"]


# --- what cannot hold a profile: refused, untouched ----------------------------

@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("kind", ["block-device", "socket", "directory"])
def test_refused_kinds(via, kind, capsys, ebpf_bolt_cmd, binary, stacks,
                       tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    out = d / "node"
    if kind == "block-device":
        os.mknod(out, stat.S_IFBLK | 0o660, os.makedev(7, 0))  # a loop device
        says = ["is a block device"]
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(out))
        sock.close()
        says = ["is a socket"]
    else:
        out.mkdir()
        (out / "inside").write_text("x")
        says = ["is a directory"]
    before = snapshot(d)
    res = run_via(via, capsys, ebpf_bolt_cmd, replay_args(binary, stacks, out))
    assert_error(res, errors.OutputError, None, says=says + [str(out)])
    assert snapshot(d) == before
    if kind == "directory":
        assert [p.name for p in out.iterdir()] == ["inside"]


@pytest.mark.parametrize("via", VIAS)
def test_empty_name_refused(via, capsys, ebpf_bolt_cmd, binary, stacks,
                            tmp_path, monkeypatch):
    """-o '': not the working directory's name in its parent."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    res = run_via(via, capsys, ebpf_bolt_cmd, replay_args(binary, stacks, ""))
    assert_error(res, errors.OutputError, None, says=["empty"])
    assert snapshot(tmp_path) == before and list(work.iterdir()) == []


# --- never an input ------------------------------------------------------------

def assert_refused_input(res, inputs_before):
    """Exit 6 with one error line naming the input, every input file left
    byte-identical (same inode, same content, same mtime)."""
    err, _ = assert_error(res, errors.OutputError, None,
                          says=["is the same file as the input"])
    assert_refused_input_files(inputs_before, res)
    return err


def assert_refused_input_files(inputs_before, res=None):
    for path, (data, st) in inputs_before.items():
        now = os.stat(path)
        assert Path(path).read_bytes() == data, f"{path} changed: {res}"
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), res
        no_temporaries(Path(path).parent)


def keep(*paths):
    return {str(p): (Path(p).read_bytes(), os.stat(p)) for p in paths}


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("which", ["binary", "stacks", "hard-link-to-binary",
                                   "symlink-to-binary"])
def test_replay_input_as_output(via, which, capsys, ebpf_bolt_cmd, binary,
                                stacks, tmp_path):
    before = keep(binary, stacks)
    if which == "binary":
        out = binary
    elif which == "stacks":
        out = stacks
    elif which == "hard-link-to-binary":
        out = tmp_path / "hard"
        os.link(binary, out)
    else:
        out = tmp_path / "soft"
        out.symlink_to(binary)
    res = run_via(via, capsys, ebpf_bolt_cmd, replay_args(binary, stacks, out))
    err = assert_refused_input(res, before)
    named = stacks if which == "stacks" else binary
    assert str(out) in err and str(named) in err, res
    if which == "symlink-to-binary":
        assert out.is_symlink()


@pytest.mark.parametrize("via", VIAS)
def test_replay_stdin_file_as_output(via, ebpf_bolt_cmd, binary, stacks):
    """replay --binary B -o FILE < FILE: the stacks read from stdin come
    from the file that would be overwritten."""
    before = keep(binary, stacks)
    run = [ebpf_bolt_cmd] if via == "cli" else [sys.executable, "-c",
                                                MAIN_CODE]
    with open(stacks) as stdin:
        p = subprocess.run(run + ["replay", "--binary", str(binary), "-o",
                                  str(stacks)], stdin=stdin,
                           capture_output=True, text=True, timeout=60)
    err = assert_refused_input(Result(p.returncode, p.stderr, 0), before)
    assert str(stacks) in err


@pytest.fixture
def own_true(tmp_path):
    """/bin/true copied to a directory of its own: the executable a command
    runs, and which the test then tries to write the profile over."""
    d = tmp_path / "cmd"
    d.mkdir()
    return Path(shutil.copy2("/bin/true", d / "true"))


@pytest.mark.parametrize("via", VIAS)
def test_command_executable_as_output(via, capsys, ebpf_bolt_cmd, own_true):
    before = keep(own_true)
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["-o", own_true, "--", own_true])
    assert_refused_input(res, before)
    assert "recording" not in res.stderr, f"refused too late: {res}"


@pytest.mark.parametrize("via", VIAS)
def test_command_found_in_path_as_output(via, capsys, ebpf_bolt_cmd, own_true,
                                         monkeypatch):
    """The command named without a directory, found by PATH lookup as the
    command itself will be."""
    before = keep(own_true)
    monkeypatch.setenv("PATH", f"{own_true.parent}:{os.environ['PATH']}")
    monkeypatch.chdir(own_true.parent.parent)
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["-o", own_true, "--", "true"])
    assert_refused_input(res, before)


@pytest.mark.parametrize("via", VIAS)
def test_pid_executable_as_output(via, capsys, ebpf_bolt_cmd, tmp_path):
    d = tmp_path / "cmd"
    d.mkdir()
    sleep = Path(shutil.copy2(shutil.which("sleep"), d / "sleep"))
    before = keep(sleep)
    proc = subprocess.Popen([sleep, "30"])
    try:
        deadline = time.monotonic() + 5
        while os.path.realpath(f"/proc/{proc.pid}/exe") != str(sleep):
            assert time.monotonic() < deadline, "sleep did not start"
            time.sleep(0.01)
        link = tmp_path / "link"   # and through a symlink
        link.symlink_to(sleep)
        for out in (sleep, link):
            res = run_via(via, capsys, ebpf_bolt_cmd,
                          ["-o", out, "-p", proc.pid, "1"])
            assert_refused_input(res, before)
        assert proc.poll() is None, "the target was harmed"
    finally:
        proc.kill()
        proc.wait()


def test_script_interpreter_as_output(ebpf_bolt_cmd, tmp_path):
    """A #! script runs its interpreter: that is the executable recorded,
    and it is known only after the exec. Refused there, while the command
    is held: nothing of the script runs."""
    d = tmp_path / "cmd"
    d.mkdir()
    shell = Path(shutil.copy2("/bin/dash", d / "mysh"))
    ran = tmp_path / "ran"
    script = d / "s.sh"
    script.write_text(f"#!{shell}\ntouch {ran}\n")
    script.chmod(0o755)
    before = keep(shell, script)
    p = subprocess.run([ebpf_bolt_cmd, "-o", shell, "--", script],
                       capture_output=True, text=True, timeout=60)
    assert_refused_input(Result(p.returncode, p.stderr, 0), before)
    assert not ran.exists(), "the command ran after the refusal"


def test_program_execd_while_recorded_as_output(ebpf_bolt_cmd, tmp_path):
    """A wrapper that execs the program: the output is checked again, at
    the end, against what the process runs then."""
    d = tmp_path / "cmd"
    d.mkdir()
    sleep = Path(shutil.copy2(shutil.which("sleep"), d / "mysleep"))
    wrapper = d / "wrap.sh"
    wrapper.write_text(f"#!/bin/sh\nexec {sleep} 3\n")
    wrapper.chmod(0o755)
    before = keep(sleep)
    p = subprocess.run([ebpf_bolt_cmd, "-o", sleep, "1", "--", wrapper],
                       capture_output=True, text=True, timeout=60)
    assert_refused_input(Result(p.returncode, p.stderr, 0), before)


def test_stdin_pipe_as_output(ebpf_bolt_cmd, binary, stacks):
    """-o /dev/stdin with the stacks piped in: the profile must not go into
    its own input (a profile over 64 KiB then hung for good)."""
    p = subprocess.Popen(["sh", "-c", 'cat "$1" | "$2" replay --binary "$3" '
                          "-o /dev/stdin", "sh", stacks, ebpf_bolt_cmd, binary],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        _, err = p.communicate(timeout=60)
    finally:   # a hung pipeline (the bug) is killed whole
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert_error(Result(p.returncode, err, 0), errors.OutputError, None,
                 says=["is the same file as the input"])


@pytest.mark.parametrize("name", ["/dev/stdout", "/dev/fd/1",
                                  "/proc/self/fd/1"])
def test_fd_link_writes_through_the_fd(name, ebpf_bolt_cmd, binary, stacks,
                                       expected, tmp_path):
    """-o /dev/stdout when fd 1 is a file opened for appending: the profile
    is appended, as a shell's `> /dev/stdout` would; the file's earlier
    lines stay (it was replaced by the profile alone)."""
    log = tmp_path / "log.txt"
    log.write_text("first line of my log\n")
    p = subprocess.run(["sh", "-c", '"$1" replay --binary "$2" "$3" -o "$4" '
                        '>> "$5"', "sh", ebpf_bolt_cmd, binary, stacks, name,
                        log], capture_output=True, text=True, timeout=60)
    assert_ok(Result(p.returncode, p.stderr, 0))
    head, _, rest = log.read_text().partition("\n")
    assert head == "first line of my log", p.stderr
    assert same_profile(rest, expected)


@pytest.mark.parametrize("how,says", [(">/dev/full", "no space"),
                                      (">&-", "stdout is closed")])
def test_stdout_errors_are_output_errors(how, says, ebpf_bolt_cmd, binary,
                                         stacks):
    """The default output, stdout, full or closed: exit 6 with one line,
    not an internal error."""
    p = subprocess.run(["sh", "-c", f'"$1" replay --binary "$2" "$3" {how}',
                        "sh", ebpf_bolt_cmd, binary, stacks],
                       capture_output=True, text=True, timeout=60)
    assert_error(Result(p.returncode, p.stderr, 0), errors.OutputError, None,
                 says=[says])


def sh(script, *args, timeout=60):
    """`script` run by sh with $1... = args, in its own session, killed
    whole if it hangs (a hang is the bug some of these tests look for)."""
    p = subprocess.Popen(["sh", "-c", script, "sh", *map(str, args)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return p.returncode, out, err


def test_stdout_reader_gone_is_141(ebpf_bolt_cmd, binary, stacks, expected):
    """A reader that stops early: exit 141 as a shell's programs give, and
    no claim that the profile was written. The profile is over 64 KiB:
    sys.stdout.write stopped short on the pipe, silently, and exited 0."""
    p = subprocess.Popen([ebpf_bolt_cmd, "replay", "--binary", binary,
                          stacks], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        assert len(p.stdout.read(10)) == 10
        p.stdout.close()
        err = p.stderr.read().decode()
        rc = p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert rc == 141, err
    assert "wrote preagg profile" not in err, err


def test_nonblocking_stdout_gets_everything(ebpf_bolt_cmd, binary, stacks,
                                            expected):
    """stdout a pipe set non-blocking by the reader's side, read slowly:
    the whole profile arrives (a write stopped short after 64 KiB)."""
    code = ("import fcntl, os, subprocess, sys, time\n"
            "r, w = os.pipe()\n"
            "fcntl.fcntl(w, fcntl.F_SETFL, os.O_NONBLOCK)\n"
            "p = subprocess.Popen(sys.argv[1:], stdout=w, "
            "stderr=subprocess.DEVNULL)\n"
            "os.close(w)\n"
            "time.sleep(1)\n"
            "data = b''\n"
            "while chunk := os.read(r, 65536):\n"
            "    data += chunk\n"
            "sys.stdout.write(str(p.wait()) + '\\n' + data.decode())\n")
    p = subprocess.run([sys.executable, "-c", code, ebpf_bolt_cmd, "replay",
                        "--binary", binary, stacks], capture_output=True,
                       text=True, timeout=60)
    rc, _, text = p.stdout.partition("\n")
    assert rc == "0", p
    assert same_profile(text, expected)


def test_read_only_fd_device_is_reopened(ebpf_bolt_cmd, binary, stacks):
    """-o /dev/stdin with stdin /dev/null (read-only): written to the
    device, as before fds were written through."""
    rc, _, err = sh('"$1" replay --binary "$2" "$3" -o /dev/stdin '
                    '</dev/null', ebpf_bolt_cmd, binary, stacks)
    assert_ok(Result(rc, err, 0))


def test_fd_link_after_dotdot(ebpf_bolt_cmd, binary, stacks, expected,
                              tmp_path):
    """A link, then '..': the link is followed before the '..' (the kernel's
    way), which still names fd 1; text normalisation lost the log."""
    d = tmp_path / "dd"
    d.mkdir()
    (d / "l").symlink_to("/proc/self/fd")
    log = tmp_path / "log.txt"
    log.write_text("first line of my log\n")
    rc, _, err = sh('cd "$5" && "$1" replay --binary "$2" "$3" '
                    '-o dd/l/../fd/1 >> "$4"', ebpf_bolt_cmd, binary, stacks,
                    log, tmp_path)
    assert_ok(Result(rc, err, 0))
    head, _, rest = log.read_text().partition("\n")
    assert head == "first line of my log", err
    assert same_profile(rest, expected)


@pytest.mark.parametrize("name,says", [
    ("/dev/fd/4294967297", "is not open"),
    ("other", "another process's file descriptor")])
def test_fd_links_refused(name, says, ebpf_bolt_cmd, binary, stacks,
                          tmp_path):
    other = subprocess.Popen(["sleep", "30"],
                             stdout=open(tmp_path / "olog.txt", "a"))
    try:
        if name == "other":
            name = f"/proc/{other.pid}/fd/1"
        rc, _, err = sh('"$1" replay --binary "$2" "$3" -o "$4"',
                        ebpf_bolt_cmd, binary, stacks, name)
    finally:
        other.kill()
        other.wait()
    assert_error(Result(rc, err, 0), errors.OutputError, None, says=[says])


def test_stdout_appending_to_the_binary(ebpf_bolt_cmd, binary, stacks):
    """`ebpf-bolt replay --binary app ... >> app`: stdout is an input too."""
    before = keep(binary)
    rc, _, err = sh('"$1" replay --binary "$2" "$3" >> "$2"', ebpf_bolt_cmd,
                    binary, stacks)
    assert_refused_input(Result(rc, err, 0), before)


def test_env_interpreter_as_output(ebpf_bolt_cmd, tmp_path):
    """#!/usr/bin/env INTERPRETER: what env runs is an input too."""
    d = tmp_path / "cmd"
    d.mkdir()
    shell = Path(shutil.copy2("/bin/dash", d / "mysh"))
    script = d / "s.sh"
    script.write_text(f"#!/usr/bin/env {shell}\ntrue\n")
    script.chmod(0o755)
    before = keep(shell, script)
    rc, _, err = sh('"$1" -o "$2" -- "$3"', ebpf_bolt_cmd, shell, script)
    assert_refused_input(Result(rc, err, 0), before)


def test_fifo_given_as_binary_and_as_stacks(ebpf_bolt_cmd, binary, stacks,
                                            tmp_path):
    """A FIFO as --binary is refused without opening it (its open waits for
    a writer); the FIFO the stacks came from as -o is refused before its
    open waits for a reader."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    rc, _, err = sh('"$1" replay --binary "$2" "$3"', ebpf_bolt_cmd, fifo,
                    stacks, timeout=20)
    assert_error(Result(rc, err, 0), errors.UsageError, None,
                 says=["not a regular file"])
    rc, _, err = sh('cat "$3" > "$4" & "$1" replay --binary "$2" "$4" '
                    '-o "$4"', ebpf_bolt_cmd, binary, stacks, fifo,
                    timeout=20)
    assert_error(Result(rc, err, 0), errors.OutputError, None,
                 says=["is the same file as the input"])


# --- nothing left behind ---------------------------------------------------------

def test_sigkill_leaves_nothing(ebpf_bolt_cmd, tmp_path):
    """With an unnamed temporary file a killed ebpf-bolt leaves nothing in
    the output directory (a named one would stay behind)."""
    d = tmp_path / "out"
    d.mkdir()
    eb = subprocess.Popen([ebpf_bolt_cmd, "-o", d / "out.fdata", "--",
                           "sleep", "5"], stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL)
    children = []
    try:
        seen, deadline = b"", time.monotonic() + 30
        while b"ebpf-bolt: recording " not in seen:
            left = deadline - time.monotonic()
            assert left > 0 and eb.poll() is None, seen.decode()
            if select.select([eb.stderr], [], [], left)[0]:
                seen += os.read(eb.stderr.fileno(), 4096)
        children = Path(f"/proc/{eb.pid}/task/{eb.pid}/children") \
            .read_text().split()
        eb.send_signal(signal.SIGKILL)
        eb.wait(10)
    finally:
        eb.kill()
        eb.wait()
        for pid in children:   # the command outlives a killed ebpf-bolt
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert eb.returncode == -signal.SIGKILL
    assert list(d.iterdir()) == []


# --- OutputFile itself ---------------------------------------------------------

@pytest.mark.parametrize("tmpfile", [True, False], ids=["O_TMPFILE", "named"])
def test_commit_is_atomic(tmpfile, tmp_path):
    """The old file stays whole until commit, then the new one is there
    whole; with O_TMPFILE no name appears before commit. tmpfile=False is
    what file systems without O_TMPFILE get."""
    dest = tmp_path / "profile"
    dest.write_text("old\n")
    with OutputFile(dest, tmpfile=tmpfile) as out:
        assert dest.read_text() == "old\n"
        hidden = sorted(p.name for p in tmp_path.glob(TMP_PREFIX + "*"))
        assert len(hidden) == (0 if tmpfile else 1), hidden
        out.commit(b"new\n" * 1000)
    assert dest.read_bytes() == b"new\n" * 1000
    assert [p.name for p in tmp_path.iterdir()] == ["profile"]


@pytest.mark.parametrize("tmpfile", [True, False], ids=["O_TMPFILE", "named"])
@pytest.mark.parametrize("stop", [RuntimeError, KeyboardInterrupt])
def test_leaving_without_commit_leaves_nothing(tmpfile, stop, tmp_path):
    new, old = tmp_path / "new", tmp_path / "old"
    old.write_text("old\n")
    for dest in (new, old):
        with pytest.raises(stop):
            with OutputFile(dest, tmpfile=tmpfile):
                raise stop()
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
    assert old.read_text() == "old\n"


def test_closed_output_raises_a_python_error(tmp_path):
    out = OutputFile(tmp_path / "a")
    out.close()
    out.close()   # closing twice is harmless
    with pytest.raises(ValueError, match="closed"):
        out.commit("x")
    with pytest.raises(ValueError, match="closed"):
        with out:
            pass
    with OutputFile(tmp_path / "b") as out:
        out.commit("x")
    with pytest.raises(ValueError, match="closed"):
        out.commit("y")
    assert (tmp_path / "b").read_text() == "x"
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("tmpfile", [True, False], ids=["O_TMPFILE", "named"])
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_mode_follows_umask(tmpfile, umask, tmp_path):
    old = os.umask(umask)
    try:
        with OutputFile(tmp_path / "p", tmpfile=tmpfile) as out:
            out.commit("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "p").st_mode) == 0o666 & ~umask


def test_inputs_compared_by_inode_not_name(tmp_path):
    """The Python API takes any list of inputs (as a merge command will):
    the same file under another name is refused, a missing input skipped,
    a different file with equal content accepted."""
    a = tmp_path / "a"
    a.write_text("same\n")
    twin = tmp_path / "twin"
    twin.write_text("same\n")
    os.link(a, tmp_path / "a2")
    with pytest.raises(errors.OutputError, match="input"):
        OutputFile(tmp_path / "a2", inputs=[tmp_path / "missing", a])
    with OutputFile(twin, inputs=[tmp_path / "missing", a]) as out:
        out.commit("profile\n")
    assert a.read_text() == "same\n" and twin.read_text() == "profile\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "a2", "twin"]


def test_profile_write_never_overwrites_its_binary(binary, tmp_path):
    """Profile.write, the Python API's way out, refuses the profiled binary
    (here through a hard link) and writes elsewhere."""
    before = keep(binary)
    profile = Profile(binary, "cycles", "lbr", traces={(0x401000, 0x401010,
                                                        0x401020): (3, 0)})
    os.link(binary, tmp_path / "hard")
    with pytest.raises(errors.OutputError, match="same file as the input"):
        profile.write(tmp_path / "hard")
    assert_refused_input_files(before)
    profile.write(tmp_path / "app.preagg")
    assert (tmp_path / "app.preagg").read_text() == \
        "E cycles\nT 401000 401010 401020 3\n"


@pytest.mark.parametrize("kind", ["fifo", "device", "descriptor"])
def test_regular_only_output_refuses_what_it_would_write_into(kind, tmp_path):
    """OutputFile(regular=True), a window of --interval: a FIFO, a device
    or a descriptor at the name is refused at once (a FIFO's open would
    wait for a reader), and left as it was."""
    path = {"fifo": tmp_path / "w.0002", "device": "/dev/null",
            "descriptor": "/dev/stdout"}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    with pytest.raises(errors.OutputError, match="regular file|is a FIFO|"
                       "is a character device") as e:
        OutputFile(path, regular=True)
    assert "--interval" in e.value.hint
    if kind == "fifo":
        assert stat.S_ISFIFO(os.lstat(path).st_mode)


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_name_taken_while_recording_is_not_replaced(kind, tmp_path):
    """A FIFO or symlink put at -o FILE after it was checked (a long
    recording) is refused at commit, not replaced by the profile."""
    path, other = tmp_path / "app.fdata", tmp_path / "other"
    other.write_text("mine\n")
    out = OutputFile(path)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(other)
    with pytest.raises(errors.OutputError, match="while the profile was "
                       "made"):
        out.commit("no_lbr cycles\n1 main 0 1\n")
    assert (stat.S_ISFIFO(os.lstat(path).st_mode) if kind == "fifo"
            else path.is_symlink())
    assert other.read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.fdata", "other"]
