"""Builds of the test workloads in tests/workloads/, for the tests of
profiling objects across processes (issue 9).

Every program prints a deterministic last line ("checksum <hex>", with a
prefix for twofunc and execer), so that a BOLTed build can be checked to
give the same output. Amounts of work are in units of about 1 ms of CPU on
the project's VM. All are built as the demo workload is (-O2 -g, frame
pointers, --emit-relocs, so that BOLT can rewrite them):

- libhot.so: the shared library; libhot_run() calls libhot_mix,
  libhot_search and libhot_switch (shares about 55/27/15% under perf).
- front UNITS: PIE linked against libhot.so (RUNPATH $ORIGIN, so that
  LD_LIBRARY_PATH, or a BOLTed copy next to a copy of front, wins); about
  97% of its samples are in libhot.so, 3% in its own front_fold.
- dlfront LIBRARY WAIT_MS|- UNITS: waits, then dlopens LIBRARY; prints the
  same checksum as front UNITS.
- twofunc a|b UNITS: runs work_a or work_b (PIE and non-PIE).
- execer UNITS PROGRAM [ARG...]: runs exec_hot, then execs PROGRAM (PIE
  and non-PIE).
- short_loop_argv(): the build-like run, 40 short processes of the demo
  workload under one shell.
"""
import shlex
import subprocess
from pathlib import Path

from ebpf_bolt.demo.build import COMMON_FLAGS, NO_PIE_FLAGS, PIE_FLAGS

SOURCES = Path(__file__).resolve().parent / "workloads"

# the demo workload as one short process: one worker thread, about 40 ms
DEMO_SHORT_ARGS = ["--scale", "5", "--early", "1", "--late", "0"]


def compile_c(out, source, flags, cc="cc"):
    """Compile SOURCES/source with the demo's flags plus `flags` into
    `out`; returns the output path. RuntimeError with the compiler's output
    on failure."""
    cmd = [cc, *COMMON_FLAGS, "-Wall", "-o", str(out), str(SOURCES / source),
           *flags]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise RuntimeError(f"cannot run C compiler {cc!r}: {exc}") from exc
    if proc.returncode != 0:
        raise RuntimeError(f"building {source} failed (exit "
                           f"{proc.returncode}): {shlex.join(cmd)}: "
                           f"{' '.join(proc.stderr.split())}")
    return Path(out)


def build_libhot(out_dir):
    # the soname is what a program linked against it records as needed
    return compile_c(Path(out_dir) / "libhot.so", "libhot.c",
                     ["-fPIC", "-shared", "-Wl,-soname,libhot.so"])


def build_front(out_dir, libhot):
    """front, in out_dir; `libhot` must be out_dir/libhot.so for its
    RUNPATH ($ORIGIN) to find it."""
    return compile_c(Path(out_dir) / "front", "front.c",
                     [*PIE_FLAGS, str(libhot), "-Wl,-rpath,$ORIGIN"])


def build_dlfront(out_dir):
    return compile_c(Path(out_dir) / "dlfront", "dlfront.c",
                     [*PIE_FLAGS, "-ldl"])


def build_program(out_dir, name, pie=True):
    """twofunc or execer: `name` or `name-nopie` in out_dir."""
    out = Path(out_dir) / (name if pie else f"{name}-nopie")
    return compile_c(out, f"{name}.c", PIE_FLAGS if pie else NO_PIE_FLAGS)


def short_loop_argv(binary, count=40, args=DEMO_SHORT_ARGS):
    """argv of a shell that runs `binary args` `count` times in a row, as
    short processes (the demo workload: about 40 ms each)."""
    one = shlex.join([str(binary), *args])
    return ["sh", "-c",
            f"i=0; while [ $i -lt {count} ]; do {one} >/dev/null 2>&1 || "
            f"exit 1; i=$((i + 1)); done"]


def exec_argv(execer, units, twofunc, func="b", func_units=None):
    """execer runs exec_hot for `units`, then execs `twofunc func
    func_units` (default: the same units)."""
    return [str(execer), str(units), str(twofunc), func,
            str(units if func_units is None else func_units)]


def last_line(stdout):
    lines = stdout.strip().splitlines()
    return lines[-1] if lines else ""
