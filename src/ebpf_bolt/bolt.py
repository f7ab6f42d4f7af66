"""Finding the installed BOLT and saying how to apply a profile with it."""
import glob
import os
import re
import shlex
import shutil

# Layout passes that use a profile; -dyno-stats makes BOLT report what the
# profile covered (judge a run by it, not by the exit code).
OPTIMIZE_FLAGS = ["-reorder-blocks=ext-tsp", "-reorder-functions=cdsort",
                  "-split-functions", "-split-all-cold", "-dyno-stats"]


def _version_of(path):
    m = re.search(r"llvm-(\d+)", os.path.realpath(path))
    return int(m.group(1)) if m else None


def find_tool(name="llvm-bolt"):
    """(path, LLVM major version or None) of the newest BOLT tool, or
    (None, None). PATH first, then Debian's /usr/lib/llvm-N/bin."""
    found = shutil.which(name)
    if found:
        return found, _version_of(found)
    candidates = sorted(glob.glob(f"/usr/lib/llvm-*/bin/{name}"),
                        key=lambda p: _version_of(p) or 0)
    if candidates:
        return candidates[-1], _version_of(candidates[-1])
    return None, None


def apply_command(binary, profile_path, fmt, kind):
    """The shell command that makes the installed BOLT apply the profile,
    or what to do instead where that BOLT cannot read this format (T and S
    records need LLVM >= 21)."""
    bolt, version = find_tool("llvm-bolt")
    if version is not None and version < 21 and fmt == "preagg":
        other = "preagg-bf" if kind == "branch" else "fdata"
        return (f"LLVM {version}'s BOLT reads no {'T' if kind == 'branch' else 'S'} "
                f"records: record with --format {other}")
    bolt = bolt or "llvm-bolt"
    tooldir = os.path.dirname(bolt)
    out = binary + ".bolt"
    q = shlex.quote
    if fmt == "fdata":
        return " ".join([q(bolt), q(binary), "-o", q(out), "-data",
                         q(profile_path)] + OPTIMIZE_FLAGS)
    perf2bolt = os.path.join(tooldir, "perf2bolt") if tooldir else "perf2bolt"
    if kind == "basic":
        # LLVM 22's llvm-bolt --pa --ba accepts S records but applies them as
        # an empty profile: convert with perf2bolt first.
        fdata = profile_path + ".fdata"
        return (" ".join([q(perf2bolt), "--pa", "--ba", "-p", q(profile_path),
                          "-o", q(fdata), q(binary)]) + " && " +
                " ".join([q(bolt), q(binary), "-o", q(out), "-data", q(fdata)]
                         + OPTIMIZE_FLAGS))
    return " ".join([q(bolt), q(binary), "-o", q(out), "--pa", "-p",
                     q(profile_path)] + OPTIMIZE_FLAGS)
