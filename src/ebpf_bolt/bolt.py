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
