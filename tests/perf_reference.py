"""The reference a test compares ebpf-bolt's IP profile of one object
against: perf record on cpu-clock at the same frequency, then LLVM 22's
perf2bolt in basic mode (--ba, IP samples without branch stacks) for the
object, an executable or a shared library.

Measured on the project's VM (kernel 6.18, perf 6.1, bolt-22):
- cpu-clock is an hrtimer event: -F FREQ becomes a fixed period of
  1e9/FREQ ns (perf_event_max_sample_rate is 100000 here).
- perf2bolt takes the object's samples from every process that mapped it
  (it matches the build id and the file name, a basename); this holds for
  shared libraries too, also one dlopen'ed after the recording began.
- --no-buildid-cache keeps perf from copying every recorded object into
  ~/.debug; the build ids stay in perf.data, where perf2bolt checks them.
- perf2bolt --ba writes fdata "no_lbr cpu-clock:" then "1 name hexoff
  count" lines, locals named "name/N" (ebpf-bolt's writers.fdata_basic
  writes the same lines, with "no_lbr cpu-clock").
"""
import math
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

PERF2BOLT = "/usr/lib/llvm-22/bin/perf2bolt"
DEFAULT_FREQ = 999
TIMEOUT = 300


@dataclass
class PerfReference:
    functions: dict     # BOLT's function name -> samples
    total: int          # samples in the object's functions
    outside: int        # samples of its processes outside it (perf2bolt's
                        # "out of range samples recorded in unknown regions")
    fdata: Path
    report: str         # perf2bolt's output


def _run(cmd, what, **kw):
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=TIMEOUT, **kw)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"{what}: {exc}") from exc
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): "
                           f"{' '.join(cmd)}: {proc.stderr.strip()[-2000:]}")
    return proc


def perf_record(argv, data, freq=DEFAULT_FREQ):
    """perf record -e cpu-clock -F freq of the command `argv` (and every
    process it starts) into `data`."""
    _run(["perf", "record", "-q", "-e", "cpu-clock", "-F", str(freq),
          "--no-buildid-cache", "-o", str(data), "--", *map(str, argv)],
         "perf record")
    return Path(data)


def perf2bolt_basic(data, binary, fdata):
    """perf2bolt --ba: the IP samples of `binary` in `data` as fdata;
    returns perf2bolt's output."""
    proc = _run([PERF2BOLT, "--ba", "-p", str(data), "-o", str(fdata),
                 str(binary)], "perf2bolt")
    return proc.stdout + proc.stderr


def function_shares_from_fdata(path):
    """{function name: samples} of a no_lbr fdata file (perf2bolt --ba's
    or ebpf-bolt's): the sum of each function's `is_sym name hexoff count`
    lines."""
    lines = Path(path).read_text().splitlines()
    if not lines or not lines[0].startswith("no_lbr"):
        raise ValueError(f"{path}: not a no_lbr fdata file")
    functions = {}
    for line in lines[1:]:
        fields = line.split()
        if len(fields) != 4:
            raise ValueError(f"{path}: not a sample line: {line!r}")
        name, count = fields[1], int(fields[3])
        functions[name] = functions.get(name, 0) + count
    return functions


def cosine(a, b):
    """Cosine similarity of two {function: samples} dicts (0 when either
    is empty)."""
    dot = sum(a[k] * b.get(k, 0) for k in a)
    norm = math.sqrt(sum(v * v for v in a.values()) *
                     sum(v * v for v in b.values()))
    return dot / norm if norm else 0.0


def perf_reference(argv, binary, workdir, freq=DEFAULT_FREQ):
    """Record `argv` with perf and aggregate the samples of `binary`."""
    workdir = Path(workdir)
    data = perf_record(argv, workdir / "perf.data", freq)
    fdata = workdir / f"{Path(binary).name}.perf.fdata"
    report = perf2bolt_basic(data, binary, fdata)
    functions = function_shares_from_fdata(fdata)
    m = re.search(r"out of range samples recorded in unknown regions: "
                  r"(\d+)", report)
    return PerfReference(functions, sum(functions.values()),
                         int(m.group(1)) if m else 0, fdata, report)
