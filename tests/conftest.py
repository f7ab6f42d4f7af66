"""Shared fixtures: the bundled workload, the installed command, BOLT.

Tests run as root on the real kernel. With EBPF_BOLT_STRICT_SKIPS=1 (set by
scripts/test.sh, hence CI) a skipped test fails the run unless a marker says
which hardware decides whether it can run: lbr_hw (needs branch-sampling
hardware, which no machine here has), no_lbr_hw and no_hw_cycles (check the
fallback of a machine without it, as every machine here is; skipped where
the hardware is present). An expected failure (xfail, strict) is a test
that ran: it documents a known limit."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bpf_builds import BASELINE, TEST_PROGRAMS, build_object
from ebpf_bolt.demo.build import build_workload
from workloads import (build_dlfront, build_front, build_libhot,
                       build_program, short_loop_argv)

ROOT = Path(__file__).resolve().parent.parent
LLVM22 = Path("/usr/lib/llvm-22/bin")
LLVM19 = Path("/usr/lib/llvm-19/bin")


def installed_command():
    """The ebpf-bolt console script of the environment running the tests."""
    exe = Path(sys.executable).parent / "ebpf-bolt"
    if exe.exists():
        return str(exe)
    return shutil.which("ebpf-bolt")


@pytest.fixture(scope="session")
def ebpf_bolt_cmd():
    cmd = installed_command()
    assert cmd, "the ebpf-bolt command is not installed (run scripts/setup.sh)"
    return cmd


@pytest.fixture(scope="session")
def workload_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("workload")


@pytest.fixture(scope="session")
def test_object(tmp_path_factory):
    """The BPF object with the test-only programs (bpf_builds.TEST_PROGRAMS)."""
    return build_object(str(tmp_path_factory.mktemp("test-object")),
                        TEST_PROGRAMS)


@pytest.fixture(scope="session")
def baseline_object(tmp_path_factory):
    """The BPF object without caches (bpf_builds.BASELINE)."""
    return build_object(str(tmp_path_factory.mktemp("baseline")), BASELINE)


@pytest.fixture(scope="session")
def workload_pie(workload_dir):
    return build_workload(workload_dir, pie=True)


@pytest.fixture(scope="session")
def workload_nopie(workload_dir):
    return build_workload(workload_dir, pie=False)


@pytest.fixture(scope="session")
def workloads_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("workloads")


@pytest.fixture(scope="session")
def libhot(workloads_dir):
    return build_libhot(workloads_dir)


@pytest.fixture(scope="session")
def front(workloads_dir, libhot):
    return build_front(workloads_dir, libhot)


@pytest.fixture(scope="session")
def dlfront(workloads_dir):
    return build_dlfront(workloads_dir)


@pytest.fixture(scope="session")
def twofunc(workloads_dir):
    return build_program(workloads_dir, "twofunc")


@pytest.fixture(scope="session")
def twofunc_nopie(workloads_dir):
    return build_program(workloads_dir, "twofunc", pie=False)


@pytest.fixture(scope="session")
def exec_pair(workloads_dir, twofunc, twofunc_nopie):
    """{"pie": (execer, twofunc), "nopie": (...)}: execer runs exec_hot,
    then execs twofunc (workloads.exec_argv)."""
    return {"pie": (build_program(workloads_dir, "execer"), twofunc),
            "nopie": (build_program(workloads_dir, "execer", pie=False),
                      twofunc_nopie)}


@pytest.fixture(scope="session")
def short_loop(workload_pie):
    """argv of the build-like run: 40 short processes of the demo."""
    return short_loop_argv(workload_pie)


def bolt_tool(version, name):
    path = {22: LLVM22, 19: LLVM19}[version] / name
    assert path.exists(), f"{path} missing: install bolt-{version}"
    return str(path)


def bolt_profiled_functions(report):
    """N of llvm-bolt's "N out of M functions in the binary (P%) have
    non-empty execution profile"; fails where the line is missing."""
    m = re.search(r"(\d+) out of \d+ functions in the binary .* have "
                  r"non-empty execution profile", report)
    assert m, f"no profiled-functions line in BOLT's output:\n{report}"
    return int(m.group(1))


def run(cmd, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run(cmd, **kw)


# markers of tests that only machines with (lbr_hw) or without (no_*) some
# hardware can run: their skips are the machine's, not the tests'
HARDWARE_MARKERS = ("lbr_hw", "no_lbr_hw", "no_hw_cycles")


def pytest_configure(config):
    config.addinivalue_line("markers", "no_lbr_hw: checks what a machine "
                            "without branch-sampling hardware does (skipped "
                            "where there is some)")
    config.addinivalue_line("markers", "no_hw_cycles: checks what a machine "
                            "without a hardware cycles event does (skipped "
                            "where there is one)")


_bad_skips = []


def pytest_runtest_logreport(report):
    # an expected failure (xfail, strict: it must fail) ran: not a skip
    if report.skipped and not hasattr(report, "wasxfail") and \
            not any(m in report.keywords for m in HARDWARE_MARKERS):
        _bad_skips.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("EBPF_BOLT_STRICT_SKIPS") == "1" and _bad_skips:
        print("\nskipped tests that must run here:\n  " + "\n  ".join(_bad_skips))
        session.exitstatus = 1
