"""Every error a user can meet, under the real condition that causes it.

Each case must end with one ``ebpf-bolt: error: ...`` line followed by a
``  hint: ...`` line on stderr, the exit code of its class in
ebpf_bolt/errors.py, no output file and no ``.ebpf-bolt-*`` temporary file
left in the output directory. Each case runs twice: through
``ebpf_bolt.cli.main`` (in this process, or with ``python -c`` when it needs
another user or mount namespace) and through the installed ``ebpf-bolt``.
No monkeypatching: other users, capabilities, mounts and sysctls are real.
"""
import atexit
import os
import shutil
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

@pytest.mark.root
@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("which", ["exited", "zero", "negative"])
def test_pid_that_does_not_exist(root, via, which, capsys, ebpf_bolt_cmd,
                                 outdir):
    pid = {"exited": exited_pid, "zero": lambda: 0,
           "negative": lambda: -5}[which]()
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["-o", outdir / "out.fdata", "-p", pid, "1"])
    err, _ = assert_error(res, errors.TargetError, outdir)
    assert str(pid) in err, res


# --- 4. command not found ---------------------------------------------------

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


@pytest.mark.root
@pytest.mark.parametrize("via", VIAS)
def test_no_space_left(root, via, capsys, ebpf_bolt_cmd, full_tmpfs, sleeper):
    out = full_tmpfs / "out.fdata"
    res = run_via(via, capsys, ebpf_bolt_cmd, ["-o", out, "-p", sleeper, "5"])
    assert_error(res, errors.OutputError, full_tmpfs, says=["no space"])
    assert res.elapsed < 3, f"not checked before recording: {res}"
    assert sorted(p.name for p in full_tmpfs.iterdir()) == ["fill"]


# --- 7. invalid frequency and duration --------------------------------------

def test_ten_million_hz_is_above_the_kernel_limit():
    assert 10_000_000 > int(MAX_RATE.read_text())


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("opt,value", [("-F", "0"), ("-f", "-5"),
                                       ("-F", "abc"), ("-F", "10000000")])
def test_invalid_frequency(via, opt, value, capsys, ebpf_bolt_cmd, outdir,
                           sleeper):
    res = run_via(via, capsys, ebpf_bolt_cmd,
                  ["-o", outdir / "out.fdata", opt, value, "-p", sleeper, "1"])
    assert_error(res, errors.UsageError, outdir, says=["frequency", value])


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
@pytest.mark.parametrize("which", ["both", "neither"])
def test_pid_and_command_both_or_neither(via, which, capsys, ebpf_bolt_cmd,
                                         outdir, sleeper):
    args = ["-o", outdir / "out.fdata"]
    if which == "both":
        args += ["-p", sleeper, "--", "/bin/true"]
    res = run_via(via, capsys, ebpf_bolt_cmd, args)
    assert_error(res, errors.UsageError, outdir)


# --- every exit code is its own -----------------------------------------------

def test_exit_codes_are_distinct():
    classes = [errors.UsageError, errors.PermissionProblem,
               errors.ParanoidRefusal, errors.TargetError,
               errors.CommandNotFound, errors.OutputError,
               errors.LibbpfMissing]
    codes = [c.exit_code for c in classes]
    assert len(set(codes)) == len(codes) and 0 not in codes, codes
    assert codes == [2, 3, 4, 5, 127, 6, 7]


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
