"""Build the bundled demo workload (workload.c next to this file)."""

from __future__ import annotations

import subprocess
from pathlib import Path

WORKLOAD_SOURCE = Path(__file__).with_name("workload.c")

COMMON_FLAGS = [
    "-O2",
    "-g",
    "-fno-omit-frame-pointer",
    "-pthread",
    "-Wl,--emit-relocs",
]
PIE_FLAGS = ["-fPIE", "-pie"]
NO_PIE_FLAGS = ["-fno-pie", "-no-pie"]


def build_workload(out_dir: str | Path, pie: bool = True, cc: str = "cc") -> Path:
    """Compile workload.c into ``out_dir`` and return the binary's path.

    The binary is named ``workload-pie`` or ``workload-nopie``. It is linked
    with ``--emit-relocs`` so that BOLT can rewrite it. Raises RuntimeError,
    carrying the compiler's output, when the compiler is missing or fails.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    binary = out / ("workload-pie" if pie else "workload-nopie")
    cmd = [
        cc,
        *COMMON_FLAGS,
        *(PIE_FLAGS if pie else NO_PIE_FLAGS),
        "-o",
        str(binary),
        str(WORKLOAD_SOURCE),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise RuntimeError(f"cannot run C compiler {cc!r}: {exc}") from exc
    if proc.returncode != 0:
        raise RuntimeError(
            f"building the workload failed (exit {proc.returncode}): "
            f"{' '.join(cmd)}\n{proc.stderr.strip()}"
        )
    return binary
