"""Every error a user can meet, under the real condition that causes it.

Each case must end with one ``ebpf-bolt: error: ...`` line followed by a
``  hint: ...`` line on stderr, the exit code of its class in
ebpf_bolt/errors.py (read from the class, never written here), no output
file, no ``.ebpf-bolt-*`` temporary file left in the output directory, and
the files and processes it pointed at unchanged. Each case runs twice:
through ``ebpf_bolt.cli.main`` (in this process, or with ``python -c`` when
it needs another user or mount namespace) and through the installed
``ebpf-bolt``. No monkeypatching: other users, capabilities, mounts and
sysctls are real. Every class of errors.py has at least one case here
(``covers``); only InternalError, which no real input may reach, is reached
by a simulated bug.
"""
import atexit
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ebpf_bolt import errors
from ebpf_bolt.cli import main

NOBODY = 65534
SETPRIV_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                  "--clear-groups"]
NO_CAPS = SETPRIV_NOBODY + ["--inh-caps=-all"]
BPF_CAP_ONLY = SETPRIV_NOBODY + ["--inh-caps=+bpf", "--ambient-caps=+bpf"]
# main() of the installed package, run in a fresh interpreter
MAIN_CODE = ("import sys; from ebpf_bolt.cli import main; "
             "sys.exit(main(sys.argv[1:]))")
PARANOID = Path("/proc/sys/kernel/perf_event_paranoid")
MAX_RATE = Path("/proc/sys/kernel/perf_event_max_sample_rate")
VIAS = ["main", "cli"]


def error_classes():
    """Every error class the CLI reports (the base class is never raised)."""
    return [c for c in vars(errors).values()
            if isinstance(c, type) and issubclass(c, errors.EbpfBoltError)
            and c is not errors.EbpfBoltError]


COVERED = set()


def covers(*classes):
    """Marks a test as a real case of these error classes."""
    def mark(fn):
        COVERED.update(classes)
        return fn
    return mark


def snapshot(*paths):
    """What the user pointed at, to compare after the run: each path's
    kind, mode and content hash (or its absence)."""
    out = {}
    for p in paths:
        p = Path(p)
        try:
            st = p.lstat()
        except FileNotFoundError:
            out[str(p)] = None
            continue
        digest = None
        if p.is_file():
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
        out[str(p)] = (st.st_mode, st.st_ino, digest)
    return out


# --- checks -----------------------------------------------------------------

class Result:
    def __init__(self, rc, stderr, elapsed):
        self.rc, self.stderr, self.elapsed = rc, stderr, elapsed

    def __repr__(self):
        return f"Result(rc={self.rc}, {self.elapsed:.2f} s, stderr={self.stderr!r})"


def assert_error(res, exc_class, outdir, output="out.fdata", says=()):
    """`res` is the failure of class `exc_class`, reported as one error line
    and a hint, with nothing left in `outdir`; the error line contains every
    string of `says` (case-insensitive)."""
    assert res.rc == exc_class.exit_code, res
    assert res.rc != 0
    assert "Traceback" not in res.stderr, res
    assert "internal error" not in res.stderr, f"a bug answered: {res}"
    lines = res.stderr.splitlines()
    errs = [i for i, line in enumerate(lines)
            if line.startswith("ebpf-bolt: error: ")]
    assert len(errs) == 1, f"want one error line: {res}"
    i = errs[0]
    assert len(lines[i]) > len("ebpf-bolt: error: ") + 5, res
    assert i + 1 < len(lines) and lines[i + 1].startswith("  hint: "), \
        f"no hint after the error line: {res}"
    assert lines[i + 1][len("  hint: "):].strip(), f"empty hint: {res}"
    for word in says:
        assert word.lower() in lines[i].lower(), \
            f"error line lacks {word!r}: {res}"
    if outdir is not None:
        outdir = Path(outdir)
        if outdir.is_dir():
            assert not (outdir / output).exists(), f"output written: {res}"
            left = sorted(p.name for p in outdir.glob(".ebpf-bolt-*"))
            assert not left, f"temporary files left in {outdir}: {left}"
        else:
            assert not outdir.exists()
    return lines[i], lines[i + 1]


def run_main(capsys, args):
    """cli.main in this process."""
    capsys.readouterr()
    t0 = time.monotonic()
    rc = main([str(a) for a in args])
    elapsed = time.monotonic() - t0
    return Result(rc, capsys.readouterr().err, elapsed)


def run_proc(cmd, timeout=30):
    t0 = time.monotonic()
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    return Result(p.returncode, p.stderr, time.monotonic() - t0)


_nobody_env = []


def nobody_python(ebpf_bolt_cmd):
    """(python, installed command) that user nobody can read. The checkout
    may sit in a directory only root can enter (mktemp -d makes 0700 ones);
    then the installed environment is copied to one nobody can enter. Its
    command script is run through its python, as its #! names the original
    place."""
    if not _nobody_env:
        probe = subprocess.run(SETPRIV_NOBODY + [sys.executable, "-c",
                                                 "import ebpf_bolt"],
                               capture_output=True)
        if probe.returncode == 0:
            _nobody_env.append(([sys.executable], [ebpf_bolt_cmd]))
        else:
            top = Path(tempfile.mkdtemp(prefix="ebpf-bolt-nobody-"))
            top.chmod(0o755)
            atexit.register(shutil.rmtree, top, True)
            env = top / "venv"
            shutil.copytree(sys.prefix, env, symlinks=True)
            py = str(env / "bin" / Path(sys.executable).name)
            script = str(env / "bin" / Path(ebpf_bolt_cmd).name)
            _nobody_env.append(([py], [py, script]))
    return _nobody_env[0]


def run_via(via, capsys, ebpf_bolt_cmd, args, prefix=None):
    """Run ebpf-bolt ARGS through main() or the installed command; with a
    `prefix` (setpriv, unshare ...) main() runs in `python -c` under it."""
    python, command = [sys.executable], [ebpf_bolt_cmd]
    if prefix and prefix[:len(SETPRIV_NOBODY)] == SETPRIV_NOBODY:
        python, command = nobody_python(ebpf_bolt_cmd)
    if via == "cli":
        return run_proc(list(prefix or []) + command + list(args))
    if prefix:
        return run_proc(list(prefix) + python + ["-c", MAIN_CODE]
                        + list(args))
    return run_main(capsys, args)


# --- fixtures -----------------------------------------------------------------

@pytest.fixture
def root():
    assert os.geteuid() == 0, "this test needs root (sudo scripts/test.sh)"


def _start_sleeper(prefix=()):
    p = subprocess.Popen(list(prefix) + ["sleep", "30"],
                         stdin=subprocess.DEVNULL)
    # wait until it is sleep itself (setpriv execs it)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{p.pid}/comm").read_text().strip() == "sleep":
                break
        except OSError:
            pass
        time.sleep(0.01)
    return p


def _stop(p):
    p.kill()
    p.wait()


@pytest.fixture
def sleeper():
    """A `sleep 30` to give with -p; killed after the test."""
    p = _start_sleeper()
    yield p.pid
    _stop(p)


@pytest.fixture
def nobody_sleeper():
    """A `sleep 30` of user nobody."""
    p = _start_sleeper(NO_CAPS)
    yield p.pid
    _stop(p)


@pytest.fixture
def outdir(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d


@pytest.fixture
def nobody_outdir():
    """An output directory nobody can write, on a path nobody can reach
    (pytest's tmp_path is under a root-only directory)."""
    d = tempfile.mkdtemp(prefix="ebpf-bolt-test-", dir="/tmp")
    os.chown(d, NOBODY, NOBODY)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def _umount(path):
    r = subprocess.run(["umount", str(path)], capture_output=True, text=True)
    if r.returncode != 0 and os.path.ismount(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
    assert not os.path.ismount(path), f"cannot unmount {path}: {r.stderr}"


@pytest.fixture
def tmpfs(tmp_path):
    """mount(options) -> a fresh directory with a tmpfs mounted on it;
    unmounted after the test whatever its outcome."""
    mounted = []

    def mount(options):
        d = tmp_path / f"mnt{len(mounted)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs",
                            str(d)], capture_output=True, text=True)
        assert r.returncode == 0, f"mount -o {options} failed: {r.stderr}"
        mounted.append(d)
        return d

    yield mount
    for d in reversed(mounted):
        _umount(d)


@pytest.fixture
def paranoid_at_least_1():
    """kernel.perf_event_paranoid >= 1 (set to 2, and restored, if lower)."""
    old = PARANOID.read_text().strip()
    if int(old) < 1:
        PARANOID.write_text("2\n")
    yield
    if PARANOID.read_text().strip() != old:
        PARANOID.write_text(old + "\n")


def exited_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    with pytest.raises(ProcessLookupError):
        os.kill(p.pid, 0)
    return p.pid


# --- 1. not root, no CAP_BPF ------------------------------------------------

@covers(errors.PermissionProblem)
@pytest.mark.root
@pytest.mark.parametrize("via", VIAS)
def test_not_root_without_cap_bpf(root, via, capsys, ebpf_bolt_cmd,
                                  nobody_sleeper, nobody_outdir):
    out = nobody_outdir / "out.fdata"
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["-o", out, "-p", nobody_sleeper, "1"], prefix=NO_CAPS)
    err, hint = assert_error(res, errors.PermissionProblem, nobody_outdir)
    assert "CAP_BPF" in err and "65534" in err, res
    assert "CAP_BPF" in hint or "root" in hint, res


# --- 2. perf_event_paranoid refuses the CPU-wide event ----------------------

@covers(errors.ParanoidRefusal)
@pytest.mark.root
@pytest.mark.parametrize("via", VIAS)
def test_paranoid_refuses_cpu_wide_event(root, via, capsys, ebpf_bolt_cmd,
                                         paranoid_at_least_1, nobody_sleeper,
                                         nobody_outdir):
    level = int(PARANOID.read_text())
    assert level >= 1, f"kernel.perf_event_paranoid is {level}"
    out = nobody_outdir / "out.fdata"
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["-o", out, "-p", nobody_sleeper, "1"], prefix=BPF_CAP_ONLY)
    err, hint = assert_error(res, errors.ParanoidRefusal, nobody_outdir,
                             says=["perf_event_paranoid"])
    assert f"perf_event_paranoid={level}" in err, res
    assert "CAP_PERFMON" in hint or "perf_event_paranoid" in hint, res


# --- 3. no such process -----------------------------------------------------

@covers(errors.TargetError)
@pytest.mark.root
@pytest.mark.parametrize("via", VIAS)
def test_pid_that_does_not_exist(root, via, capsys, ebpf_bolt_cmd, outdir):
    pid = exited_pid()
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["-o", outdir / "out.fdata", "-p", pid, "1"])
    err, _ = assert_error(res, errors.TargetError, outdir)
    assert str(pid) in err, res


# --- 4. command not found ---------------------------------------------------

@covers(errors.CommandNotFound)
@pytest.mark.root
@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("command", ["/nonexistent/cmd",
                                     "no-such-command-xyz"])
def test_command_not_found(root, via, command, capsys, ebpf_bolt_cmd, outdir):
    assert shutil.which(command) is None
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["-o", outdir / "out.fdata", "--", command, "arg"])
    assert errors.CommandNotFound.exit_code == 127
    err, _ = assert_error(res, errors.CommandNotFound, outdir,
                          says=["command not found", command])


# --- 5. output not writable, found before recording -------------------------

@covers(errors.OutputError)
@pytest.mark.root
@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("where", ["read-only", "missing-dir"])
def test_output_not_writable(root, via, where, capsys, ebpf_bolt_cmd, tmpfs,
                             tmp_path, sleeper):
    if where == "read-only":
        d = tmpfs("ro,size=1m")
        with pytest.raises(OSError):  # the condition is real, even for root
            (d / "probe").write_text("x")
        says = ["read-only"]
    else:
        d = tmp_path / "no" / "such" / "dir"
        says = ["does not exist"]
    out = d / "out.fdata"
    res = run_via(via, capsys, ebpf_bolt_cmd, ["-o", out, "-p", sleeper, "5"])
    assert_error(res, errors.OutputError, d, says=says + [str(out)])
    assert res.elapsed < 3, f"not checked before recording: {res}"
    assert os.path.exists(f"/proc/{sleeper}"), "the target was harmed"


# --- 6. no space left, found before recording -------------------------------

@pytest.fixture
def full_tmpfs(tmpfs):
    d = tmpfs("size=64k")
    r = subprocess.run(["dd", "if=/dev/zero", f"of={d / 'fill'}", "bs=4k"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "No space left" in r.stderr, r.stderr
    st = os.statvfs(d)
    assert st.f_bavail == 0, f"{d} still has {st.f_bavail} free blocks"
    return d


@covers(errors.OutputError)
@pytest.mark.root
@pytest.mark.parametrize("via", VIAS)
def test_no_space_left(root, via, capsys, ebpf_bolt_cmd, full_tmpfs, sleeper):
    out = full_tmpfs / "out.fdata"
    res = run_via(via, capsys, ebpf_bolt_cmd, ["-o", out, "-p", sleeper, "5"])
    assert_error(res, errors.OutputError, full_tmpfs, says=["no space"])
    assert res.elapsed < 3, f"not checked before recording: {res}"
    assert sorted(p.name for p in full_tmpfs.iterdir()) == ["fill"]


# --- 7. invalid frequency and duration --------------------------------------

@covers(errors.UsageError)
@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("opt,value", [("-F", "0"), ("-f", "-5"),
                                       ("-F", "abc"), ("-f", "1e9"),
                                       ("-f", "1.5"), ("-F", "above")])
def test_invalid_frequency(via, opt, value, capsys, ebpf_bolt_cmd, outdir,
                           sleeper):
    limit = MAX_RATE.read_text().strip()
    if value == "above":   # one above this kernel's limit, whatever it is
        value = str(int(limit) + 1)
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["-o", outdir / "out.fdata", opt, value, "-p", sleeper, "1"])
    err, hint = assert_error(res, errors.UsageError, outdir,
                             says=["frequency", value])
    # what a valid one is: a whole number (1e9 was told "a positive
    # number"), up to the kernel's limit
    assert limit in err + hint, res
    if value != str(int(limit) + 1):
        assert "whole number" in hint, res


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan"])
def test_invalid_duration(via, value, capsys, ebpf_bolt_cmd, outdir, sleeper):
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["-o", outdir / "out.fdata", "-p", sleeper, value])
    assert_error(res, errors.UsageError, outdir, says=["duration", value])


# --- 8. libbpf missing -------------------------------------------------------

def libbpf_path():
    """Where the dynamic loader finds libbpf.so.1 (ldconfig -p)."""
    r = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True)
    found = []
    for line in r.stdout.splitlines():
        name, _, path = line.strip().partition(" => ")
        if name.startswith("libbpf.so.1 "):
            found.append((name, path.strip()))
    assert found, f"libbpf.so.1 not in ldconfig -p:\n{r.stdout}"
    for name, path in found:
        if os.uname().machine != "x86_64" or "x86-64" in name:
            return path
    return found[0][1]


@covers(errors.LibbpfMissing)
@pytest.mark.root
@pytest.mark.parametrize("via", VIAS)
def test_libbpf_missing(root, via, capsys, ebpf_bolt_cmd, outdir):
    lib = libbpf_path()
    assert os.path.exists(lib)
    hide = ["unshare", "-m", "--propagation", "private", "sh", "-c",
            f'mount --bind /dev/null "{lib}" && exec "$@"', "sh"]
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["-o", outdir / "out.fdata", "--", "/bin/true"], prefix=hide)
    err, hint = assert_error(res, errors.LibbpfMissing, outdir,
                             says=["libbpf"])
    assert "libbpf1" in hint and "Debian" in hint, res
    assert "dnf install libbpf" in hint and "Fedora" in hint, res
    # the bind mount stayed in its namespace
    real = os.path.realpath(lib)
    mounts = [line.split()[4] for line in
              Path("/proc/self/mountinfo").read_text().splitlines()]
    assert real not in mounts and lib not in mounts
    assert os.path.getsize(real) > 0


# --- 9. -p and a command, or neither ------------------------------------------

@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("which", ["both", "neither", "nothing-after-dashes"])
def test_pid_and_command_both_or_neither(via, which, capsys, ebpf_bolt_cmd,
                                         outdir, sleeper):
    args = ["-o", outdir / "out.fdata"]
    if which == "both":
        args += ["-p", sleeper, "--", "/bin/true"]
    elif which == "nothing-after-dashes":
        args += ["--"]
    res = run_via(via, capsys, ebpf_bolt_cmd, args)
    _, hint = assert_error(res, errors.UsageError, outdir)
    if which != "both":   # the CLI's words, not collect()'s argument
        assert "-- COMMAND" in hint and "command=" not in hint, res


# --- every exit code is its own -----------------------------------------------

def test_exit_codes_are_distinct():
    """Each class its own code, none that means something else: 0 success,
    1 Python's uncaught exception, 130 and 141 the CLI's interruption and
    broken pipe, above 255 not an exit status."""
    classes = error_classes()
    assert len(classes) >= 10, classes
    codes = {c: c.exit_code for c in classes}
    assert len(set(codes.values())) == len(codes), codes
    for c, code in codes.items():
        # the status a shell sees when the CLI ends with this error: an
        # exit code above 255 would wrap, one of 0, 1, 130, 141 would lie
        status = subprocess.run(
            [sys.executable, "-c",
             "import sys\nfrom ebpf_bolt import cli, errors\n"
             "def fail(*a):\n"
             f"    raise errors.{c.__name__}('test')\n"
             "cli.record = fail\n"
             "sys.exit(cli.main(['-p', '1']))\n"],
            capture_output=True, timeout=60).returncode
        assert status == code and status not in (0, 1, 130, 141), (c, status)
        assert c.hint.strip(), f"{c.__name__} has no default hint"
        assert (c.__doc__ or "").strip(), f"{c.__name__} has no docstring"
    # the shell's meanings, which scripts test for
    assert errors.CommandNotFound.exit_code == 127
    assert errors.CommandNotExecutable.exit_code == 126


README = Path(__file__).resolve().parent.parent / "README.md"


def readme_error_table():
    """{class name: exit code} from the README's error table (the rows
    `| exit | `Class` | meaning |` after the header `| exit | class |`)."""
    rows, inside = {}, False
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:2] == ["exit", "class"]:
            inside = True
            continue
        if inside:
            if not line.startswith("|"):
                break
            if set(cells[0]) <= set("-"):
                continue
            name = cells[1].strip("`")
            assert name not in rows, f"{name} twice in the README's table"
            rows[name] = int(cells[0])
    assert rows, "no error table (| exit | class | meaning |) in README.md"
    return rows


def test_readme_error_table_matches_the_classes():
    """Every class with its exit code, and no row for a class that is
    gone or a code that changed."""
    table = readme_error_table()
    classes = {c.__name__: c.exit_code for c in error_classes()}
    assert table == classes, (
        f"README rows not in errors.py: "
        f"{sorted(set(table.items()) - set(classes.items()))}; "
        f"errors.py classes not in README: "
        f"{sorted(set(classes.items()) - set(table.items()))}")


def test_every_error_class_has_a_real_case():
    """A class without a case here can regress unseen (three had none)."""
    missing = sorted(c.__name__ for c in error_classes() if c not in COVERED)
    assert not missing, f"error classes with no case in this file: {missing}"


# --- the installed command needs no compiler ----------------------------------

SPIN_C = r"""
#include <time.h>
volatile unsigned long sink;
static unsigned long spin(unsigned long n) {
    unsigned long s = 0;
    for (unsigned long i = 0; i < n; i++) s += i * i ^ (s >> 3);
    return s;
}
int main(void) {
    while (clock() < CLOCKS_PER_SEC / 2) sink += spin(100000);
    return 0;
}
"""


@pytest.mark.root
def test_installed_command_runs_without_clang_in_path(root, ebpf_bolt_cmd,
                                                      tmp_path):
    src = tmp_path / "spin.c"
    src.write_text(SPIN_C)
    prog = tmp_path / "spin"
    r = subprocess.run(["gcc", "-O1", "-o", str(prog), str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    bindir = os.path.dirname(ebpf_bolt_cmd)
    assert shutil.which("clang", path=bindir) is None
    assert shutil.which("cc", path=bindir) is None
    out = tmp_path / "spin.fdata"
    p = subprocess.run([ebpf_bolt_cmd, "-o", str(out), "--", str(prog)],
                       capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, PATH=bindir))
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    text = out.read_text()
    assert text, p.stderr
    assert text.splitlines()[0].startswith("no_lbr"), text[:200]
    assert len(text.splitlines()) > 1, f"no samples: {p.stderr}"


# --- 10. replay input: each malformed shape, named by line, entry and field --

GOOD_LINE = b"0x1000/0x1010/P/-/-/0 0x1020/0x1030/M/-/-/0\n"


@pytest.fixture
def replay_binary(tmp_path):
    """An ELF executable to give as --binary (a copy: the test checks it
    is left unchanged)."""
    b = tmp_path / "app"
    shutil.copy("/bin/true", b)
    return b


# name -> (file content, words the error line must hold)
BAD_STACKS = {
    "non-utf8": (GOOD_LINE + b"0x10\xff/0x20/P\n", ["line 2", "UTF-8", "0xff"]),
    "binary": (GOOD_LINE * 2 + bytes(range(256)), ["line 3", "NUL"]),
    "nul-byte": (b"0x10\x00/0x20/P\n", ["line 1", "NUL", "column 5"]),
    "negative": (GOOD_LINE + b"0x10/-0x20/P\n",
                 ["line 2", "entry 1", "field 2", "to address", "-0x20"]),
    "17-hex-digits": (b"0x10/0x20/P 0x10000000000000000/0x20/P\n",
                      ["line 1", "entry 2", "field 1", "wider than 64 bits"]),
    "not-hex": (b"0x10/0xfoo/P\n", ["line 1", "field 2", "not a hexadecimal"]),
    "empty-field": (b"/0x20/P\n", ["line 1", "field 1", "empty"]),
    "underscore": (b"0x1_0/0x20/P\n", ["line 1", "field 1", "0x1_0"]),
    "too-few-fields": (GOOD_LINE * 3 + b"0x10/0x20\n",
                       ["line 4", "entry 1", "2 fields", "at least 3"]),
    "one-field": (b"hello world\n", ["line 1", "entry 1", "1 field"]),
    "bad-flag": (b"0x10/0x20/X/-/-/0\n", ["line 1", "field 3", "M, P or -"]),
    "huge-line": (b"0x10/0x20/P " * 200_000, ["line 1", "longer than 1 MiB"]),
}


@covers(errors.UsageError)
@pytest.mark.root
@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("case", sorted(BAD_STACKS))
def test_malformed_replay_input(root, via, case, capsys, ebpf_bolt_cmd,
                                outdir, tmp_path, replay_binary):
    content, says = BAD_STACKS[case]
    stacks = tmp_path / "stacks.txt"
    stacks.write_bytes(content)
    before = snapshot(stacks, replay_binary)
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["replay", "--binary", replay_binary, stacks,
                   "-o", outdir / "out.fdata"])
    assert_error(res, errors.UsageError, outdir, says=says)
    assert snapshot(stacks, replay_binary) == before


@covers(errors.UsageError)
@pytest.mark.root
@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("which", ["directory", "missing", "unreadable"])
def test_replay_stacks_file_not_readable(root, via, which, capsys,
                                         ebpf_bolt_cmd, nobody_outdir):
    """A directory, a missing file, and (as user nobody, as root reads
    anything) a file of mode 0600 owned by root."""
    binary = nobody_outdir / "app"
    shutil.copy("/bin/true", binary)
    binary.chmod(0o755)
    stacks = {"directory": nobody_outdir / "dir",
              "missing": nobody_outdir / "missing.txt",
              "unreadable": nobody_outdir / "secret.txt"}[which]
    if which == "directory":
        stacks.mkdir()
    elif which == "unreadable":
        stacks.write_bytes(GOOD_LINE)
        stacks.chmod(0o600)
    before = snapshot(stacks, binary)
    out = nobody_outdir / "out.fdata"
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["replay", "--binary", binary, stacks, "-o", out],
                  prefix=NO_CAPS if which == "unreadable" else None)
    code = {"directory": "EISDIR", "missing": "ENOENT",
            "unreadable": "EACCES"}[which]
    assert_error(res, errors.UsageError, nobody_outdir,
                 says=["cannot read", str(stacks), code])
    assert snapshot(stacks, binary) == before


# --- 11. --binary: each shape of file that is not a 64-bit LE executable -------

def _patched_elf(dest, patch):
    data = bytearray(Path("/bin/true").read_bytes())
    patch(data)
    dest.write_bytes(bytes(data))


def _section_headers(data):
    shoff = int.from_bytes(data[0x28:0x30], "little")
    shentsize = int.from_bytes(data[0x3a:0x3c], "little")
    shnum = int.from_bytes(data[0x3c:0x3e], "little")
    return [shoff + i * shentsize for i in range(shnum)]


def _break_symtab_link(data):
    """The dynamic symbol table names a string table that does not exist."""
    for off in _section_headers(data):
        if int.from_bytes(data[off + 4:off + 8], "little") == 11:  # SHT_DYNSYM
            data[off + 40:off + 44] = (999).to_bytes(4, "little")
            return
    raise AssertionError("no .dynsym in /bin/true")


def _set_shstrndx(data, index):
    data[62:64] = index.to_bytes(2, "little")


def _name_table_past_the_end(data):
    """The section name table's offset beyond the end of the file."""
    shstrndx = int.from_bytes(data[62:64], "little")
    off = _section_headers(data)[shstrndx]
    data[off + 24:off + 32] = (len(data) + 4096).to_bytes(8, "little")


def _make_binary(kind, d):
    """The --binary of case `kind` inside directory `d`, and the words its
    error line must hold."""
    b = d / f"app-{kind}"
    size = Path("/bin/true").stat().st_size
    if kind == "truncated-header":
        b.write_bytes(Path("/bin/true").read_bytes()[:40])
        return b, ["truncated ELF header"]
    if kind == "truncated-phdrs":
        b.write_bytes(Path("/bin/true").read_bytes()[:200])
        return b, ["program header table", "past the end"]
    if kind == "truncated-sections":
        b.write_bytes(Path("/bin/true").read_bytes()[:size * 2 // 3])
        return b, ["section header table", "past the end"]
    if kind == "32-bit":
        _patched_elf(b, lambda x: x.__setitem__(4, 1))
        return b, ["32-bit", "only 64-bit little-endian"]
    if kind == "big-endian":
        _patched_elf(b, lambda x: x.__setitem__(5, 2))
        return b, ["big-endian", "only 64-bit little-endian"]
    if kind == "object-file":
        _patched_elf(b, lambda x: x.__setitem__(slice(16, 18), b"\x01\x00"))
        return b, ["ELF type 1", "not an executable"]
    if kind == "bad-symtab-link":
        _patched_elf(b, _break_symtab_link)
        return b, ["string table section 999"]
    if kind == "bad-shstrndx":   # was read as stripped: no names, no .symtab
        _patched_elf(b, lambda x: _set_shstrndx(x, 999))
        return b, ["section name table", "section 999", "does not exist"]
    if kind == "name-table-past-end":
        _patched_elf(b, _name_table_past_the_end)
        return b, ["section name table", "past the end"]
    if kind == "text":
        b.write_text("#!/bin/sh\necho not an ELF\n")
        return b, ["not an ELF file"]
    if kind == "empty":
        b.write_bytes(b"")
        return b, ["empty file"]
    if kind == "directory":
        b.mkdir()
        return b, ["cannot read", "EISDIR"]
    if kind == "missing":
        return b, ["cannot read", "ENOENT"]
    if kind == "unreadable":
        shutil.copy("/bin/true", b)
        b.chmod(0o600)
        return b, ["cannot read", "EACCES"]
    raise AssertionError(kind)


BAD_BINARIES = ["truncated-header", "truncated-phdrs", "truncated-sections",
                "32-bit", "big-endian", "object-file", "bad-symtab-link",
                "bad-shstrndx", "name-table-past-end",
                "text", "empty", "directory", "missing", "unreadable"]


@covers(errors.UsageError)
@pytest.mark.root
@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("kind", BAD_BINARIES)
def test_replay_binary_not_a_readable_elf(root, via, kind, capsys,
                                          ebpf_bolt_cmd, nobody_outdir):
    binary, says = _make_binary(kind, nobody_outdir)
    stacks = nobody_outdir / "stacks.txt"
    stacks.write_bytes(GOOD_LINE)
    stacks.chmod(0o644)
    before = snapshot(stacks, binary)
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["replay", "--binary", binary, stacks,
                   "-o", nobody_outdir / "out.fdata"],
                  prefix=NO_CAPS if kind == "unreadable" else None)
    assert_error(res, errors.UsageError, nobody_outdir,
                 says=says + [str(binary)])
    assert snapshot(stacks, binary) == before


@covers(errors.UsageError)
@pytest.mark.root
@pytest.mark.parametrize("kind", ["/dev/zero", "fifo"])
def test_replay_binary_not_a_regular_file(kind, ebpf_bolt_cmd, tmp_path,
                                          memory_cgroup):
    """A device or FIFO as --binary is refused, not read: /dev/zero was
    read until the machine ran out of memory. Run in a memory cgroup of
    256 MiB, so that a broken check is killed there, not the machine."""
    binary = Path(kind) if kind.startswith("/") else tmp_path / kind
    if kind == "fifo":
        os.mkfifo(binary)
        # a writer, so that opening the FIFO does not block
        writer = subprocess.Popen(["sh", "-c", f'exec yes > "{binary}"'])
    stacks = tmp_path / "stacks.txt"
    stacks.write_bytes(GOOD_LINE)
    try:
        p = subprocess.run(memory_cgroup(256 << 20) + [
            ebpf_bolt_cmd, "replay", "--binary", str(binary), str(stacks),
            "-o", str(tmp_path / "out.preagg")],
            capture_output=True, text=True, timeout=60)
    finally:
        if kind == "fifo":
            writer.kill()
            writer.wait()
    assert_error(Result(p.returncode, p.stderr, 0), errors.UsageError,
                 tmp_path, output="out.preagg", says=["not a regular file"])


# --- 12. replay options: --cpu, --max-entries ---------------------------------

def _replay_per_entry_bytes():
    """Bytes of trace table per trace of room: 4/3 slots of 40 bytes."""
    from ebpf_bolt.bpf_object import MAPS
    return MAPS["trace_counts"][1] * 4 / 3


def _own_memory_cgroup():
    """(directory of this process's memory cgroup, limit file name): v1's
    memory hierarchy or v2's unified one with the memory controller."""
    mounts = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _, options = right.split()[:3]
        if left.split()[3] != "/":
            continue
        if fstype == "cgroup" and "memory" in options.split(","):
            mounts["v1"] = left.split()[4]
        elif fstype == "cgroup2":
            mounts["v2"] = left.split()[4]
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, ctrls, path = line.split(":", 2)
        if "memory" in ctrls.split(",") and "v1" in mounts:
            return Path(mounts["v1"] + path), "memory.limit_in_bytes"
        if hid == "0" and "v2" in mounts:
            d = Path(mounts["v2"] + path)
            if "memory" in (d / "cgroup.subtree_control").read_text().split():
                return d, "memory.max"
    raise AssertionError("no memory cgroup controller to use")


@pytest.fixture
def memory_cgroup():
    """make(limit) -> a prefix that runs a command in a new child memory
    cgroup of `limit` bytes; the cgroup is removed after the test."""
    made = []

    def make(limit):
        parent, limit_file = _own_memory_cgroup()
        d = parent / f"ebpf-bolt-test-{os.getpid()}-{len(made)}"
        d.mkdir()
        made.append(d)
        (d / limit_file).write_text(str(limit))
        assert int((d / limit_file).read_text()) == limit
        return ["sh", "-c", f'echo $$ > "{d}/cgroup.procs" && exec "$@"', "sh"]

    yield make
    for d in made:
        for _ in range(50):   # its processes may still be exiting
            try:
                d.rmdir()
                break
            except OSError:
                time.sleep(0.1)


@covers(errors.UsageError)
@pytest.mark.root
@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("opt,value,says", [
    ("--cpu", "-1", ["--cpu -1", "not a CPU"]),
    ("--cpu", "100000", ["--cpu 100000", "not a CPU"]),
    ("--cpu", "x", ["--cpu", "invalid int value"]),
    ("--max-entries", "0", ["--max-entries 0"]),
    ("--max-entries", "-7", ["--max-entries -7"]),
    ("--max-entries", "1e5", ["--max-entries", "invalid int value"]),
    ("--max-entries", str(2**32), ["above the largest map"]),
    ("--max-entries", "4000000", ["GiB of kernel memory", "more than half",
                                  "cgroup"]),
    ("--load-base", "-0x1000", ["--load-base", "not a 64-bit address"]),
    ("--load-base", "zz", ["--load-base", "zz"]),
])
def test_replay_bad_option(root, via, opt, value, says, capsys, ebpf_bolt_cmd,
                           outdir, tmp_path, replay_binary, memory_cgroup):
    prefix = None
    if value == "4000000":
        # in a memory cgroup of 256 MiB, room for 4,000,000 traces (a
        # table of 53 bytes per trace, whatever the number of CPUs) needs
        # more than half of it: refused before anything is allocated.
        # (MemAvailable alone moves with other processes, so it cannot be
        # the test's condition; a container's limit is what the check must
        # see.)
        assert 4_000_000 * _replay_per_entry_bytes() > 128 << 20
        prefix = memory_cgroup(256 << 20)
    stacks = tmp_path / "stacks.txt"
    stacks.write_bytes(GOOD_LINE)
    before = snapshot(stacks, replay_binary)
    t0 = time.monotonic()
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["replay", "--binary", replay_binary, stacks, opt + "=" + value,
                   "-o", outdir / "out.fdata"], prefix=prefix)
    _, hint = assert_error(res, errors.UsageError, outdir, says=says)
    if opt == "--max-entries" and value.isdigit() and int(value) > 1 << 20:
        # the limit named, and the option that fixes it
        assert "lower --max-entries" in hint, res
        assert "kernel version" not in res.stderr and "5.7" not in res.stderr
        assert_default_sizes(hint)
        from ebpf_bolt.collector import default_max_entries
        default = default_max_entries("trace_counts")
        assert f"{default:,}" in hint, res
    assert time.monotonic() - t0 < 10, "a huge map was allocated"
    assert snapshot(stacks, replay_binary) == before


# --- 13. -p: PIDs that cannot be recorded, each said as it is ------------------

def _kernel_thread():
    """A kernel thread's PID (PF_KTHREAD in /proc/PID/stat's flags)."""
    for d in sorted(Path("/proc").iterdir(), key=lambda p: p.name):
        if d.name.isdigit():
            try:
                flags = int((d / "stat").read_text().rsplit(")", 1)[1].split()[6])
            except (OSError, IndexError):
                continue
            if flags & 0x00200000:
                return int(d.name), (d / "comm").read_text().strip()
    raise AssertionError("no kernel thread in /proc")


def _pid_max():
    return int(Path("/proc/sys/kernel/pid_max").read_text())


@covers(errors.TargetError)
@pytest.mark.root
@pytest.mark.parametrize("via", VIAS)
def test_kernel_thread_is_no_target(root, via, capsys, ebpf_bolt_cmd, outdir):
    pid, comm = _kernel_thread()
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["-o", outdir / "out.fdata", "-p", pid, "1"])
    err, _ = assert_error(res, errors.TargetError, outdir,
                          says=["kernel thread", comm, "no user-space code",
                                str(pid)])
    assert "exited" not in err, res
    assert res.elapsed < 5, f"not found before recording: {res}"


def _pid_value_words(value):
    """What the error line of `-p VALUE` must say beyond the value."""
    if value in ("0", "-5"):
        return ["PIDs start at 1"]
    if value.isdigit():
        return [f"PIDs go up to {_pid_max() - 1}",
                f"kernel.pid_max is {_pid_max()}"]
    return ["whole number"]


@covers(errors.UsageError)
@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("value", ["abc", "1.5", "", "0x10", "0", "-5",
                                   "pid_max", "2^31", "2^64"])
def test_pid_value_invalid(via, value, capsys, ebpf_bolt_cmd, outdir):
    """A value that is no PID is an invalid option value, whichever way it
    is wrong (0 and -5 were TargetErrors, 0x10 a UsageError)."""
    value = {"pid_max": str(_pid_max()), "2^31": str(2**31),
             "2^64": str(2**64)}.get(value, value)
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["-o", outdir / "out.fdata", "-p", value, "1"])
    err, _ = assert_error(res, errors.UsageError, outdir,
                          says=["invalid -p/--pid", value]
                          + _pid_value_words(value))
    assert res.elapsed < 5, f"not found before recording: {res}"


NO_PTRACE = ["setpriv", "--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace"]


@covers(errors.TargetError)
@pytest.mark.root
@pytest.mark.parametrize("via", VIAS)
def test_pid_whose_executable_cannot_be_read(root, via, capsys, ebpf_bolt_cmd,
                                             nobody_sleeper, outdir):
    """Root without CAP_SYS_PTRACE may not read another user's /proc/PID/exe
    (the kernel's ptrace access check): said before anything is loaded,
    not a PermissionError traceback at the end."""
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["-o", outdir / "out.fdata", "-p", nobody_sleeper, "1"],
                  prefix=NO_PTRACE)
    err, hint = assert_error(res, errors.TargetError, outdir,
                             says=[f"/proc/{nobody_sleeper}/exe", "EACCES"])
    assert "ptrace" in hint.lower(), res
    assert os.path.exists(f"/proc/{nobody_sleeper}"), "the target was harmed"


def _pid1_exe_hidden():
    try:
        os.readlink("/proc/1/exe")
    except PermissionError:
        return True
    return False


@covers(errors.TargetError)
@pytest.mark.root
@pytest.mark.parametrize("via", VIAS)
def test_pid_1(root, via, capsys, ebpf_bolt_cmd, outdir):
    """-p 1: where the sandbox hides init's executable even from root (as
    on the machine of issue 8), a TargetError before anything is loaded;
    elsewhere init passes the target checks and the next check answers
    (a --format that cannot hold IP samples), so nothing is recorded."""
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["-o", outdir / "out.fdata", "--mode", "ip", "--format",
                   "yaml", "-p", "1", "1"])
    if _pid1_exe_hidden():
        assert_error(res, errors.TargetError, outdir,
                     says=["/proc/1/exe", "EACCES"])
    else:
        assert_error(res, errors.UsageError, outdir, says=["--format yaml"])


SPIN_THREAD = ("import threading, time\n"
               "def spin():\n"
               "    while True: sum(range(1000))\n"
               "threading.Thread(target=spin, daemon=True).start()\n"
               "time.sleep(60)\n")


@pytest.mark.root
@pytest.mark.parametrize("via", VIAS)
def test_pid_of_a_thread_records_its_process(root, via, capsys, ebpf_bolt_cmd,
                                             tmp_path):
    """-p TID: the thread's process is recorded, with a note saying so
    (it recorded nothing and blamed the CPU)."""
    p = subprocess.Popen([sys.executable, "-c", SPIN_THREAD])
    try:
        deadline = time.monotonic() + 10
        tids = []
        while len(tids) < 2 and time.monotonic() < deadline:
            tids = sorted(int(t) for t in os.listdir(f"/proc/{p.pid}/task"))
            time.sleep(0.05)
        tid = next(t for t in tids if t != p.pid)
        out = tmp_path / "out.fdata"
        res = run_via(via, capsys, ebpf_bolt_cmd, ["-o", out, "-p", tid, "1"])
        assert res.rc == 0, res
        assert "Traceback" not in res.stderr, res
        assert f"{tid} is a thread of process {p.pid}" in res.stderr, res
        assert f"pid {p.pid} and the processes it started for" in res.stderr, res
        # the spinning thread's samples were taken (the interpreter may
        # run in libpython, outside the binary)
        m = re.search(r"samples: ([\d,]+) of the recorded processes",
                      res.stderr)
        assert m and int(m.group(1).replace(",", "")) > 100, res
        assert out.read_text().startswith("no_lbr"), res
        assert p.poll() is None, "the target was harmed"
    finally:
        _stop(p)


# --- 14. --max-entries when recording -------------------------------------------

@covers(errors.UsageError)
@pytest.mark.root
@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("value,says", [
    ("0", ["--max-entries 0"]), ("-3", ["--max-entries -3"]),
    (str(2**30 + 1), ["above the largest map", "1,073,741,824"]),
    (str(2**40), ["above the largest map"]),
])
def test_record_max_entries(root, via, value, says, capsys, ebpf_bolt_cmd,
                            outdir, sleeper):
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["-o", outdir / "out.fdata", "--max-entries", value,
                   "-p", sleeper, "1"])
    _, hint = assert_error(res, errors.UsageError, outdir, says=says)
    assert "kernel version" not in res.stderr and "5.7" not in res.stderr
    if int(value) > 0:
        assert "lower --max-entries" in hint, res
        assert_default_sizes(hint)
    assert os.path.exists(f"/proc/{sleeper}"), "the target was harmed"


def assert_default_sizes(hint):
    """A figure in a --max-entries hint is a default map size (one hint
    said 932,067, a default for another number of CPUs, when defaults
    had a CPU factor) or the budget."""
    from ebpf_bolt.collector import MAP_BUDGET, default_max_entries
    defaults = {f"{default_max_entries(m):,}"
                for m in ("ip_counts", "trace_counts")}
    assert len(defaults) == 2, defaults
    for figure in re.findall(r"\d+(?:,\d{3})*", hint):
        assert figure in defaults | {str(MAP_BUDGET >> 20)}, hint


@covers(errors.UsageError)
@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("value", ["", "1e400", "1e-400", "0x10", "inf"])
def test_more_invalid_durations(via, value, capsys, ebpf_bolt_cmd, outdir,
                                sleeper):
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["-o", outdir / "out.fdata", "-p", sleeper, value])
    assert_error(res, errors.UsageError, outdir, says=["duration"])
    assert os.path.exists(f"/proc/{sleeper}"), "the target was harmed"


# --- 15. a command that exists but cannot run: 126, as a shell says -----------

def _command_file(kind, d):
    f = d / f"cmd-{kind}"
    if kind == "not-executable":
        f.write_text("#!/bin/sh\nexit 0\n")
        f.chmod(0o644)
        return f, errors.CommandNotExecutable, ["EACCES"]
    if kind == "directory":
        f.mkdir()
        return f, errors.CommandNotExecutable, ["EISDIR"]
    if kind == "no-shebang":
        f.write_text("echo hello\n")
        f.chmod(0o755)
        return f, errors.CommandNotExecutable, ["ENOEXEC", "#!"]
    if kind == "missing-interpreter":
        f.write_text("#!/nonexistent/interpreter\n")
        f.chmod(0o755)
        return f, errors.CommandNotFound, ["ENOENT", "interpreter"]
    raise AssertionError(kind)


@covers(errors.CommandNotExecutable, errors.CommandNotFound)
@pytest.mark.root
@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("kind", ["not-executable", "directory", "no-shebang",
                                  "missing-interpreter"])
def test_command_that_cannot_run(root, via, kind, capsys, ebpf_bolt_cmd,
                                 outdir, tmp_path):
    cmd, cls, says = _command_file(kind, tmp_path)
    before = snapshot(cmd)
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["-o", outdir / "out.fdata", "--", cmd, "arg"])
    err, _ = assert_error(res, cls, outdir, says=says + [str(cmd)])
    if cls is errors.CommandNotExecutable:
        assert "not found" not in err, res
    assert snapshot(cmd) == before


@covers(errors.CommandNotExecutable)
@pytest.mark.root
@pytest.mark.parametrize("via", VIAS)
def test_command_on_path_not_executable(root, via, capsys, ebpf_bolt_cmd,
                                        outdir, tmp_path):
    """A bare name whose only match on PATH lacks the execute bit."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "mytool").write_text("#!/bin/sh\n")
    (bindir / "mytool").chmod(0o644)
    env = ["env", f"PATH={bindir}:{os.environ['PATH']}"]
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["-o", outdir / "out.fdata", "--", "mytool"], prefix=env)
    assert_error(res, errors.CommandNotExecutable, outdir,
                 says=["mytool", str(bindir / "mytool"), "EACCES"])


# --- 16. collect() from Python ---------------------------------------------------

@covers(errors.UsageError)
@pytest.mark.parametrize("command", ["./app -x", b"./app -x"])
def test_collect_refuses_a_command_string(command):
    """A str would run its first character; the hint gives the list."""
    from ebpf_bolt import collect
    with pytest.raises(errors.UsageError) as e:
        collect(command=command, duration=1)
    assert "string" in str(e.value)
    assert "command=['./app', '-x']" in e.value.hint
    assert e.value.exit_code == errors.UsageError.exit_code


@covers(errors.UsageError)
@pytest.mark.parametrize("command", [[], ()])
def test_collect_refuses_an_empty_command(command):
    """The hint speaks of the argument, not of the CLI's --."""
    from ebpf_bolt import collect
    with pytest.raises(errors.UsageError) as e:
        collect(command=command, duration=1)
    assert "no command" in str(e.value)
    assert "command=['./app', '-x']" in e.value.hint
    assert "--" not in e.value.hint


@covers(errors.UsageError)
@pytest.mark.parametrize("which", ["zero", "negative", "pid_max", "2^64"])
def test_collect_refuses_an_invalid_pid(which):
    """As -p does, before anything is set up."""
    from ebpf_bolt import collect
    pid = {"zero": 0, "negative": -5, "pid_max": _pid_max(),
           "2^64": 2**64}[which]
    with pytest.raises(errors.UsageError) as e:
        collect(pid=pid, duration=1)
    assert str(e.value).startswith(f"invalid PID {pid}: "), e.value
    assert e.value.hint


# --- 17. the kernel's and libbpf's refusals -------------------------------------

@covers(errors.NoBranchHardware)
@pytest.mark.root
@pytest.mark.no_lbr_hw
@pytest.mark.parametrize("via", VIAS)
def test_mode_lbr_without_branch_hardware(root, via, capsys, ebpf_bolt_cmd,
                                          outdir, sleeper):
    from ebpf_bolt import perf_event as pe
    from ebpf_bolt.collector import probe_event
    if probe_event(pe.CYCLES_BRSTACK, 99) is None:
        pytest.skip("this machine samples branch stacks")
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["-o", outdir / "out.fdata", "--mode", "lbr", "-p", sleeper,
                   "1"])
    err, _ = assert_error(res, errors.NoBranchHardware, outdir,
                          says=["no branch-stack sampling"])
    # what the errno means, not a bare strerror
    assert "No such file or directory" not in err, res


@covers(errors.KernelUnsupported)
@pytest.mark.root
@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("nofile", [5, 12, 20])
def test_too_few_file_descriptors(root, via, nofile, capsys, ebpf_bolt_cmd,
                                  outdir, sleeper):
    """RLIMIT_NOFILE (soft and hard) too low for the events or the BPF
    object's maps, programs and libbpf's probes (at 20 the probes failed
    and the load was blamed on the kernel's version): refused up front."""
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["-o", outdir / "out.fdata", "--mode", "ip", "-p", sleeper,
                   "1"], prefix=["prlimit", f"--nofile={nofile}:{nofile}"])
    err, hint = assert_error(res, errors.KernelUnsupported, outdir,
                             says=["too many open files", f"is {nofile}"])
    assert "ulimit -n" in hint and "5.7" not in hint, res
    assert os.path.exists(f"/proc/{sleeper}"), "the target was harmed"


@pytest.mark.root
@pytest.mark.parametrize("via", VIAS)
def test_low_soft_fd_limit_is_raised(root, via, capsys, ebpf_bolt_cmd,
                                     tmp_path, sleeper):
    """A soft limit below the need and a hard one above it: ebpf-bolt
    raises its soft limit (as perf does) and records."""
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard == resource.RLIM_INFINITY or hard >= 256, hard
    hard = "unlimited" if hard == resource.RLIM_INFINITY else hard
    out = tmp_path / "out.fdata"
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["-o", out, "--mode", "ip", "-p", sleeper, "0.5"],
                  prefix=["prlimit", f"--nofile=12:{hard}"])
    assert res.rc == 0 and "Traceback" not in res.stderr, res
    assert out.read_text().startswith("no_lbr"), res


@covers(errors.BpfError)
@pytest.mark.root
@pytest.mark.parametrize("via", VIAS)
def test_bpf_object_missing(root, via, capsys, ebpf_bolt_cmd, outdir,
                            tmp_path):
    """A broken install: the package without its BPF object (a copy of the
    installed package, found first through PYTHONPATH)."""
    import ebpf_bolt
    from ebpf_bolt.bpf_object import OBJECT_NAME
    installed = Path(ebpf_bolt.__file__).parent
    broken = tmp_path / "site" / "ebpf_bolt"
    shutil.copytree(installed, broken,
                    ignore=shutil.ignore_patterns("__pycache__"))
    missing = broken / "bpf" / OBJECT_NAME
    missing.unlink()
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["-o", outdir / "out.fdata", "--", "/bin/true"],
                  prefix=["env", f"PYTHONPATH={broken.parent}"])
    assert_error(res, errors.BpfError, outdir,
                 says=["BPF object missing", str(missing)])
    assert (installed / "bpf" / OBJECT_NAME).exists()


BUG_CODE = ("import sys, ebpf_bolt.cli as cli\n"
            "def record(args, command):\n"
            "    raise KeyError('simulated bug')\n"
            "cli.record = record\n"
            "sys.exit(cli.main(sys.argv[1:]))\n")


@covers(errors.InternalError)
def test_internal_error_is_the_last_resort(outdir):
    """No real input reaches it (each has its own class); a simulated bug
    does: one line that says it is a bug, exit 70, no traceback."""
    res = run_proc([sys.executable, "-c", BUG_CODE, "-o", outdir / "out",
                    "--", "/bin/true"])
    assert res.rc == errors.InternalError.exit_code, res
    assert "Traceback" not in res.stderr, res
    lines = res.stderr.splitlines()
    assert lines[0] == ("ebpf-bolt: error: internal error: KeyError: "
                        "'simulated bug'"), res
    assert lines[1].startswith("  hint: this is a bug"), res


@covers(errors.UsageError)
@pytest.mark.parametrize("via", VIAS)
def test_replay_with_stdin_closed(via, capsys, ebpf_bolt_cmd, outdir,
                                  replay_binary):
    """No stacks file and no stdin at all (sys.stdin is None)."""
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["replay", "--binary", replay_binary,
                   "-o", outdir / "out.fdata"],
                  prefix=["sh", "-c", 'exec "$@" <&-', "sh"])
    assert_error(res, errors.UsageError, outdir, says=["stdin is closed"])


@covers(errors.KernelUnsupported)
@pytest.mark.root
@pytest.mark.parametrize("via", VIAS)
def test_replay_with_too_few_file_descriptors(root, via, capsys, ebpf_bolt_cmd,
                                              outdir, tmp_path, replay_binary):
    stacks = tmp_path / "stacks.txt"
    stacks.write_bytes(GOOD_LINE)
    before = snapshot(stacks, replay_binary)
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["replay", "--binary", replay_binary, stacks,
                   "-o", outdir / "out.fdata"], prefix=["prlimit", "--nofile=15:15"])
    assert_error(res, errors.KernelUnsupported, outdir,
                 says=["too many open files", "is 15"])
    assert snapshot(stacks, replay_binary) == before


# --- Ctrl-C before there is a profile -------------------------------------------

def _interrupted(cmd, ready, sig=None):
    """Run `cmd` (stdin a pipe left open), wait until `ready()` holds, send
    SIGINT; its Result."""
    p = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not ready(p) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready(p), "never got ready"
        time.sleep(0.3)   # into the blocking read or open
        t0 = time.monotonic()
        p.send_signal(sig or signal.SIGINT)
        _, err = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return Result(p.returncode, err, time.monotonic() - t0)


def _started(p):
    """The Python of `p` runs main(): the CLI's SIGINT handler is set."""
    try:
        status = Path(f"/proc/{p.pid}/status").read_text()
    except OSError:
        return False
    caught = int(re.search(r"SigCgt:\s*(\w+)", status).group(1), 16)
    return bool(caught & (1 << (signal.SIGINT - 1))) and \
        bool(caught & (1 << (signal.SIGHUP - 1)))


@pytest.mark.root
def test_ctrl_c_during_replay(root, ebpf_bolt_cmd, outdir, replay_binary):
    """Replay records nothing: its Ctrl-C (here while it reads stacks from
    a pipe still open) says the replay was interrupted and no profile
    written, not 'before recording started'."""
    res = _interrupted([ebpf_bolt_cmd, "replay", "--binary", replay_binary,
                        "-o", outdir / "out.preagg"], _started)
    assert res.rc == 130, res
    assert "Traceback" not in res.stderr, res
    assert res.stderr.splitlines() == [
        "ebpf-bolt: replay interrupted by SIGINT (Ctrl-C): no profile "
        "written"], res
    assert not list(outdir.iterdir()), res


@pytest.mark.root
def test_ctrl_c_before_recording(root, ebpf_bolt_cmd, tmp_path):
    """A recording whose output is a FIFO waits for the FIFO's reader
    before recording: Ctrl-C there is before recording started."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    res = _interrupted([ebpf_bolt_cmd, "-o", fifo, "--", "/bin/true"],
                       _started)
    assert res.rc == 130, res
    assert "Traceback" not in res.stderr, res
    assert res.stderr.splitlines() == [
        "ebpf-bolt: interrupted by SIGINT (Ctrl-C) before recording "
        "started: no profile written"], res
