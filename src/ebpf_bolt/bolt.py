"""Finding the installed BOLT and saying how to apply a profile with it."""
import glob
import os
import re
import shlex
import shutil
import subprocess

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
    if fmt in ("fdata", "yaml"):
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


def yaml_profile(profile, tmpdir):
    """BOLT's YAML profile of a branch profile, made by the installed
    perf2bolt from the pre-aggregated records (YAML tolerates a rebuilt binary:
    llvm-bolt matches it to changed functions). Returns the YAML text."""
    from .errors import KernelUnsupported
    perf2bolt, version = find_tool("perf2bolt")
    if perf2bolt is None:
        raise KernelUnsupported("YAML needs perf2bolt, which is not installed",
                                "install bolt-22, or write preagg and convert "
                                "it where BOLT is")
    old = version is not None and version < 21
    src = os.path.join(tmpdir, "profile.preagg")
    out = os.path.join(tmpdir, "profile.yaml")
    with open(src, "w") as f:
        f.write(profile.render("preagg-bf" if old else "preagg"))
    cmd = [perf2bolt, "--pa", "-p", src, "-o", out, "--profile-format=yaml",
           profile.binary]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not os.path.exists(out):
        raise KernelUnsupported("perf2bolt could not make the YAML profile: "
                                + (proc.stderr.strip().splitlines() or ["?"])[-1],
                                "write --format preagg and convert it by hand")
    with open(out) as f:
        return f.read()
