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
# Without .rela.text BOLT runs in non-relocation mode and exits on
# -reorder-functions ("BOLT-ERROR: function reordering only works when
# relocations are enabled", RewriteInstance::adjustCommandLineOptions);
# block reordering and splitting still work there, functions being
# rewritten in place (tried on LLVM 19 and 22).
NEEDS_RELOCATIONS = ("-reorder-functions",)


def optimize_flags(elf=None):
    """OPTIMIZE_FLAGS that BOLT accepts for this binary (all of them where
    `elf` is not known)."""
    if elf is None or elf.has_code_relocations:
        return list(OPTIMIZE_FLAGS)
    return [f for f in OPTIMIZE_FLAGS
            if not f.startswith(NEEDS_RELOCATIONS)]


def binary_warnings(elf, binary=None):
    """What keeps BOLT from using a profile of `elf` as ebpf-bolt prints it
    to apply, with the fix: said before recording, as warnings."""
    binary = binary or elf.path
    if not elf.has_symtab:
        return [f"{binary} is stripped (no .symtab): BOLT refuses stripped "
                "binaries and fdata cannot name its functions, so no apply "
                "command will be printed; keep its symbols (do not strip or "
                "link with -s), or record an address profile (--format "
                "preagg) and apply it to the unstripped build with the same "
                "build id"
                + (f" ({elf.build_id})" if elf.build_id else "")]
    if not elf.has_code_relocations:
        return [f"{binary} was linked without relocations (no .rela.text): "
                "BOLT cannot reorder its functions, only lay out blocks "
                "inside each one in place; relink with -Wl,--emit-relocs "
                "(or -Wl,-q) for the full optimization. The apply command "
                "leaves -reorder-functions out"]
    return []


def stripped_advice(elf, profile_path, fmt, kind, binary=None):
    """What to do instead of an apply command for a stripped binary."""
    binary = binary or elf.path
    bid = f" {elf.build_id}" if elf.build_id else ""
    if fmt not in ("preagg", "preagg-bf"):
        return (f"no apply command: {binary} is stripped, BOLT refuses it "
                f"and this {fmt} profile names no function; record again with "
                "--format preagg and apply that to the unstripped build "
                f"(build id{bid})")
    return (f"no apply command: {binary} is stripped and BOLT refuses it; "
            f"this profile holds addresses, valid for the unstripped build "
            f"with the same build id{bid} (UNSTRIPPED below): "
            + apply_command("UNSTRIPPED", profile_path, fmt, kind))


def _version_of(path):
    m = re.search(r"llvm-(\d+)", os.path.realpath(path))
    return int(m.group(1)) if m else None


# where Debian's LLVM packages put each version's tools (llvm-N/bin)
LLVM_TOOL_DIRS = "/usr/lib/llvm-*/bin"


def find_tool(name="llvm-bolt"):
    """(path, LLVM major version or None) of the newest BOLT tool, or
    (None, None). PATH first, then Debian's /usr/lib/llvm-N/bin."""
    found = shutil.which(name)
    if found:
        return found, _version_of(found)
    candidates = sorted(glob.glob(os.path.join(LLVM_TOOL_DIRS, name)),
                        key=lambda p: _version_of(p) or 0)
    if candidates:
        return candidates[-1], _version_of(candidates[-1])
    return None, None


def apply_command(binary, profile_path, fmt, kind, elf=None):
    """The shell command that makes the installed BOLT apply the profile,
    or what to do instead where that BOLT cannot read this format (T and S
    records need LLVM >= 21). With the binary's `elf`: None for a stripped
    binary (see stripped_advice), and only the flags BOLT accepts for it."""
    if elf is not None and not elf.has_symtab:
        return None
    flags = optimize_flags(elf)
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
                         q(profile_path)] + flags)
    perf2bolt = os.path.join(tooldir, "perf2bolt") if tooldir else "perf2bolt"
    if kind == "basic":
        # LLVM 22's llvm-bolt --pa --ba accepts S records but applies them as
        # an empty profile: convert with perf2bolt first.
        fdata = profile_path + ".fdata"
        return (" ".join([q(perf2bolt), "--pa", "--ba", "-p", q(profile_path),
                          "-o", q(fdata), q(binary)]) + " && " +
                " ".join([q(bolt), q(binary), "-o", q(out), "-data", q(fdata)]
                         + flags))
    return " ".join([q(bolt), q(binary), "-o", q(out), "--pa", "-p",
                     q(profile_path)] + flags)


# The package that gives perf2bolt, named where none is installed.
PERF2BOLT_PACKAGE = "bolt-22"


def find_perf2bolt(fmt):
    """(path, LLVM major version or None) of the perf2bolt that makes a
    branch profile's `fmt` (fdata, yaml); KernelUnsupported where none is
    installed. Checked before recording too, so that no run is lost."""
    from .errors import KernelUnsupported
    perf2bolt, version = find_tool("perf2bolt")
    if perf2bolt is None:
        raise KernelUnsupported(
            f"--format {fmt} of branch stacks is made by perf2bolt, which is "
            "not installed",
            f"install {PERF2BOLT_PACKAGE} (apt-get install "
            f"{PERF2BOLT_PACKAGE}), or write --format preagg-bf and convert "
            "it where BOLT is: perf2bolt --pa -p FILE -o OUT BINARY"
            + (" --profile-format=yaml" if fmt == "yaml" else ""))
    return perf2bolt, version


def tool_version(path):
    """LLVM's version as `path --version` prints it ("22.1.8"), or None."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"LLVM version (\S+)", out)
    return m.group(1) if m else None


def perf2bolt_profile(profile, fmt, tmpdir):
    """A branch profile as fdata or as BOLT's YAML profile (which tolerates
    a rebuilt binary: llvm-bolt matches it to changed functions), made by
    the installed perf2bolt from the pre-aggregated records; the tool is
    named in profile.info["made_by"]. fdata comes from the B/F records,
    which keep mispredicts (LLVM 22 takes no mispredict field on T) and
    which every perf2bolt from LLVM 19 on reads; YAML from T records where
    the perf2bolt reads them (LLVM >= 21). Returns the text."""
    from .errors import KernelUnsupported
    perf2bolt, version = find_perf2bolt(fmt)
    old = version is not None and version < 21
    source = "preagg-bf" if fmt == "fdata" or old else "preagg"
    src = os.path.join(tmpdir, "profile.preagg")
    out = os.path.join(tmpdir, "profile." + fmt)
    with open(src, "w") as f:
        f.write(profile.render(source))
    rest = (["--profile-format=yaml"] if fmt == "yaml" else []) + [
        profile.binary]
    proc = subprocess.run([perf2bolt, "--pa", "-p", src, "-o", out] + rest,
                          capture_output=True, text=True)
    if proc.returncode != 0 or not os.path.exists(out):
        raise KernelUnsupported(
            f"perf2bolt could not make the {fmt} profile: "
            + (proc.stderr.strip().splitlines() or ["?"])[-1],
            f"write --format {source} and convert it by hand: "
            + " ".join(shlex.quote(a) for a in
                       [perf2bolt, "--pa", "-p", "FILE", "-o", "OUT"] + rest))
    full = tool_version(perf2bolt)
    profile.info["made_by"] = (f"{perf2bolt} (LLVM {full or version or '?'})"
                               f" from {source} records")
    with open(out) as f:
        return f.read()
