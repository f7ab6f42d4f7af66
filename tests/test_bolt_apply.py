"""The BOLT command ebpf-bolt prints works, or is withheld with the fix
(issue 8, items 5-7): the binary's ELF is checked before recording, losses
and a costly sampling rate are warned about.

- A binary linked without relocations (no --emit-relocs): warned about
  before recording, and the printed apply command, run as printed, makes
  the real BOLT report profiled functions (an IP recording of a command,
  and a branch profile replayed through the kernel).
- A stripped binary: warned about before recording, no apply command; its
  address profile applies to the unstripped build with the same build id.
- Losses: see test_summary.py.
- A sampling rate that slows code many times over: the decision on
  figures, the probe on this machine, the warning in the CLI.
"""
import re
import shutil
import struct
import subprocess

import pytest

from ebpf_bolt import bolt, cli, collector
from ebpf_bolt import perf_event as pe
from ebpf_bolt.demo.build import WORKLOAD_SOURCE
from ebpf_bolt.elf import ElfFile

from conftest import bolt_profiled_functions, run

LOAD_BASE = 0x555555554000
WORKLOAD_ARGS = ["--scale", "30"]
TIMEOUT = 120


def build(out, name, flags):
    binary = out / name
    proc = run(["cc", "-O2", "-g", "-pthread", "-fPIE", "-pie", *flags, "-o",
                str(binary), str(WORKLOAD_SOURCE)])
    assert proc.returncode == 0, proc.stderr
    return binary


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """The workload linked with and without relocations, and stripped."""
    out = tmp_path_factory.mktemp("bolt-apply")
    relocs = build(out, "with-relocs", ["-Wl,--emit-relocs"])
    norelocs = build(out, "no-relocs", [])
    stripped = out / "stripped"
    shutil.copy(relocs, stripped)
    proc = run(["strip", str(stripped)])
    assert proc.returncode == 0, proc.stderr
    return {"relocs": relocs, "norelocs": norelocs, "stripped": stripped}


def printed_apply(stderr):
    lines = [line for line in stderr.splitlines()
             if line.startswith("ebpf-bolt: apply it: ")]
    assert len(lines) == 1, stderr
    return lines[0].removeprefix("ebpf-bolt: apply it: ")


def run_apply(command, cwd):
    """Run the printed command as a user pastes it into a shell."""
    proc = subprocess.run(command, shell=True, cwd=cwd, capture_output=True,
                          text=True, timeout=TIMEOUT)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{command}\n{report[-3000:]}"
    return report


# --- what the ELF tells ------------------------------------------------------

def test_elf_tells_symbols_and_relocations(builds):
    facts = {k: (ElfFile(p).has_symtab, ElfFile(p).has_code_relocations)
             for k, p in builds.items()}
    # strip drops .rela.text with .symtab (its relocations name symbols)
    assert facts == {"relocs": (True, True), "norelocs": (True, False),
                     "stripped": (False, False)}


def test_section_names_past_65279_sections(builds, tmp_path):
    """With 0xff00 sections or more, e_shstrndx reads SHN_XINDEX and the
    name table's index is section 0's sh_link (the ELF gABI): the same
    file, rewritten that way, must read the same."""
    data = bytearray(builds["relocs"].read_bytes())
    shoff = struct.unpack_from("<Q", data, 40)[0]
    shstrndx = struct.unpack_from("<H", data, 62)[0]
    struct.pack_into("<H", data, 62, 0xFFFF)
    struct.pack_into("<I", data, shoff + 40, shstrndx)   # section 0's sh_link
    xindex = tmp_path / "xindex"
    xindex.write_bytes(bytes(data))
    assert ElfFile(xindex).section_names() == \
        ElfFile(builds["relocs"]).section_names()
    assert ElfFile(xindex).has_symtab and ElfFile(xindex).has_code_relocations


def test_flags_follow_the_binary(builds):
    relocs, norelocs, stripped = (ElfFile(builds[k]) for k in
                                  ("relocs", "norelocs", "stripped"))
    full = bolt.apply_command(str(builds["relocs"]), "p.fdata", "fdata",
                              "basic", elf=relocs)
    assert "-reorder-functions=cdsort" in full.split()
    cut = bolt.apply_command(str(builds["norelocs"]), "p.fdata", "fdata",
                             "basic", elf=norelocs)
    assert "-reorder-functions" not in cut
    assert "-reorder-blocks=ext-tsp" in cut.split()
    assert bolt.apply_command(str(builds["stripped"]), "p", "preagg",
                              "basic", elf=stripped) is None


# --- without relocations: warned, and the printed command works --------------

@pytest.mark.root
def test_recorded_without_relocations_applies(builds, ebpf_bolt_cmd,
                                              tmp_path):
    """An IP recording of a command (fdata): the printed command is the one
    BOLT accepts in non-relocation mode (with -reorder-functions it exits
    with "function reordering only works when relocations are enabled")."""
    out = tmp_path / "norelocs.fdata"
    res = run([ebpf_bolt_cmd, "-o", str(out), "--", str(builds["norelocs"]),
               *WORKLOAD_ARGS], timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr
    warning = res.stderr.index("warning: " + str(builds["norelocs"]) +
                               " was linked without relocations")
    assert warning < res.stderr.index("ebpf-bolt: recording command")
    assert "-Wl,--emit-relocs" in res.stderr
    report = run_apply(printed_apply(res.stderr), tmp_path)
    assert bolt_profiled_functions(report) > 0


def backward_branch(binary, function="hot_a"):
    """(from, to) of a backward conditional branch inside `function` (a
    loop's latch): a stack of such entries is a loop that ran."""
    dis = run(["objdump", "-d", "--no-show-raw-insn", str(binary)]).stdout
    body = dis.split(f"<{function}>:\n", 1)[1].split("\n\n", 1)[0]
    for m in re.finditer(r"^\s*([0-9a-f]+):\s+j(?!mp)\w+\s+([0-9a-f]+) <",
                         body, re.M):
        frm, to = int(m.group(1), 16), int(m.group(2), 16)
        if to < frm:
            return frm, to
    raise AssertionError(f"no backward branch in {function}")


@pytest.mark.root
def test_replayed_without_relocations_applies(builds, ebpf_bolt_cmd,
                                              tmp_path):
    """A branch profile (T records, llvm-bolt --pa) of the same binary:
    replayed loop iterations of hot_a, applied by the printed command."""
    frm, to = backward_branch(builds["norelocs"])
    entry = f"0x{LOAD_BASE + frm:x}/0x{LOAD_BASE + to:x}/P/-/-/0"
    stacks = "".join(" ".join([entry] * 16) + "\n" for _ in range(200))
    out = tmp_path / "norelocs.preagg"
    res = run([ebpf_bolt_cmd, "replay", "--binary", str(builds["norelocs"]),
               "--load-base", hex(LOAD_BASE), "-o", str(out)], input=stacks)
    assert res.returncode == 0, res.stderr
    assert "was linked without relocations" in res.stderr
    assert "warning: " not in res.stderr.split("replayed", 1)[1], res.stderr
    report = run_apply(printed_apply(res.stderr), tmp_path)
    assert bolt_profiled_functions(report) > 0


# --- stripped: warned before recording, no apply command ---------------------

def record_stripped(binary, ebpf_bolt_cmd, out, *options):
    """Record the stripped build: the warning must come before recording,
    and no apply command is printed (BOLT exits on a stripped binary:
    "stripped binaries are not supported"). Returns (stderr, the one
    warning line that replaces the apply command)."""
    res = run([ebpf_bolt_cmd, "-o", str(out), *options, "--", str(binary),
               *WORKLOAD_ARGS], timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr
    warning = res.stderr.index(f"warning: {binary} is stripped")
    assert warning < res.stderr.index("ebpf-bolt: recording command")
    assert "apply it:" not in res.stderr
    advice = [line for line in res.stderr.splitlines()
              if "warning: no apply command" in line]
    assert len(advice) == 1, res.stderr
    return res.stderr, advice[0]


@pytest.mark.root
def test_stripped_binary_fdata(builds, ebpf_bolt_cmd, tmp_path):
    """fdata (the IP default) of a stripped binary names no function: the
    summary says so, with the share of samples left out, and the fix."""
    stderr, advice = record_stripped(builds["stripped"], ebpf_bolt_cmd,
                                     tmp_path / "stripped.fdata")
    assert "record again with --format preagg" in advice
    assert re.search(r"warning: [\d,]+ samples of the binary \(100\.0%\) "
                     "fall outside its function symbols", stderr), stderr
    assert (tmp_path / "stripped.fdata").read_text() == "no_lbr cpu-clock\n"


@pytest.mark.root
def test_stripped_binary_address_profile(builds, ebpf_bolt_cmd, tmp_path):
    """--format preagg keeps the addresses (S records), and the route the
    summary gives for the unstripped build with the same build id works."""
    out = tmp_path / "stripped.preagg"
    _, advice = record_stripped(builds["stripped"], ebpf_bolt_cmd, out,
                                "--format", "preagg")
    build_id = ElfFile(builds["relocs"]).build_id
    assert build_id == ElfFile(builds["stripped"]).build_id
    assert build_id in advice
    assert out.read_text().startswith("E cpu-clock\nS ")
    route = advice.split("(UNSTRIPPED below): ", 1)[1]
    report = run_apply(route.replace("UNSTRIPPED", str(builds["relocs"])),
                       tmp_path)
    assert bolt_profiled_functions(report) > 0


# --- a sampling rate that slows the target ----------------------------------

def test_slowdown_decision():
    assert collector.slowdown_warning(20000, 1.34) is None
    assert collector.slowdown_warning(4999, None) is None
    message = collector.slowdown_warning(50000, 2.6)
    assert "50000 Hz" in message and "2.6x slower" in message
    assert "lower -f (default 4999)" in message
    assert collector.max_rate_warning(100000, 100000) is None
    assert collector.max_rate_warning(None, 50000) is None
    assert "from 100000 to 63000" in collector.max_rate_warning(100000, 63000)


@pytest.mark.root
def test_slowdown_probe_measures_sampling():
    """The probe reads more slowdown at 100 kHz than at 499 Hz: a sample
    costs at least a timer interrupt (here ~12-15 us, 10x+ at 100 kHz;
    ~1 us on bare metal, still 10%)."""
    low = min(collector.sampling_slowdown(pe.CPU_CLOCK, 499) for _ in range(2))
    high = collector.sampling_slowdown(pe.CPU_CLOCK, 100000)
    assert high > low * 1.05, (low, high)


@pytest.mark.root
def test_slowdown_warning_before_recording(builds, monkeypatch, capsys):
    """The CLI says it before recording starts, only above the default
    rate (the probe is replaced by a figure: its reading is the machine's)."""
    readings = []

    def probe(spec, frequency):
        readings.append(frequency)
        return 3.0

    monkeypatch.setattr(collector, "sampling_slowdown", probe)
    argv = ["-o", "-", "--", "true"]
    assert cli.main(["-f", "20000"] + argv) == 0
    err = capsys.readouterr().err
    assert readings == [20000]
    warning = err.index("warning: sampling at 20000 Hz makes code run about "
                        "3.0x slower here")
    assert warning < err.index("ebpf-bolt: recording command")
    assert cli.main(argv) == 0   # the default rate: no probe, no warning
    assert readings == [20000]
    assert "slower" not in capsys.readouterr().err
