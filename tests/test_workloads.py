"""The workloads of the object-profiling tests (tests/workloads.py) and
their perf reference (tests/perf_reference.py): each program builds and
prints the same thing every time, the reference sees what each workload
is for, and BOLT rewrites the library and its front end from perf's
profile without changing their output."""
import re
import resource
import subprocess

import pytest

from ebpf_bolt.elf import ElfFile
from ebpf_bolt.writers import fdata_basic
from perf_reference import (cosine, function_shares_from_fdata,
                            perf2bolt_basic, perf_record, perf_reference)
from workloads import (DEMO_SHORT_ARGS, exec_argv, last_line,
                       short_loop_argv)

from conftest import bolt_profiled_functions, bolt_tool, run

CHECKSUM = r"checksum [0-9a-f]{16}"
TIMEOUT = 120


def output(argv, **kw):
    proc = run([str(a) for a in argv], timeout=TIMEOUT, **kw)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# --- builds and output --------------------------------------------------------

def test_built_for_bolt(libhot, front, dlfront, twofunc, exec_pair):
    """Every build keeps symbols and its code relocations (BOLT's
    relocation mode needs them)."""
    builds = [libhot, front, dlfront, *exec_pair["pie"], *exec_pair["nopie"]]
    for path in builds:
        elf = ElfFile(path)
        assert (elf.has_symtab, elf.has_code_relocations) == (True, True), path


def test_front_needs_libhot_by_soname(front, libhot):
    dyn = output(["readelf", "-d", front])
    assert "Shared library: [libhot.so]" in dyn
    assert "Library runpath: [$ORIGIN]" in dyn
    # the dynamic linker finds it next to front
    ldd = output([front], env={"LD_TRACE_LOADED_OBJECTS": "1"})
    assert f"libhot.so => {libhot} " in ldd


@pytest.mark.parametrize("argv", [
    ["{front}", "30"],
    ["{dlfront}", "{libhot}", "0", "30"],
    ["{twofunc}", "a", "30"],
    ["{twofunc}", "b", "30"],
    ["{execer}", "30", "{twofunc}", "a", "30"],
])
def test_output_is_deterministic(argv, front, dlfront, libhot, twofunc,
                                 exec_pair):
    paths = {"front": front, "dlfront": dlfront, "libhot": libhot,
             "twofunc": twofunc, "execer": exec_pair["pie"][0]}
    argv = [a.format(**paths) for a in argv]
    first, second = output(argv), output(argv)
    assert first == second
    assert re.fullmatch(r"(work_[ab] )?" + CHECKSUM, last_line(first)), first


def test_front_ends_agree(front, dlfront, libhot):
    """front and dlfront run the same work: the same checksum, which
    depends on the amount of work."""
    assert last_line(output([front, "20"])) == \
        last_line(output([dlfront, libhot, "0", "20"]))
    assert last_line(output([front, "20"])) != \
        last_line(output([front, "21"]))


def test_twofunc_functions_differ(twofunc):
    a, b = (last_line(output([twofunc, f, "10"])) for f in "ab")
    assert a.startswith("work_a ") and b.startswith("work_b ")
    assert a.split()[-1] != b.split()[-1]


@pytest.mark.parametrize("kind", ["pie", "nopie"])
def test_execer_execs_the_next_program(kind, exec_pair):
    execer, twofunc = exec_pair[kind]
    assert ElfFile(execer).is_pie == (kind == "pie")
    lines = output(exec_argv(execer, 10, twofunc, "b")).splitlines()
    assert [line.split()[0] for line in lines] == ["execer", "work_b"]
    assert lines[1] == last_line(output([twofunc, "b", "10"]))


def test_dlfront_maps_the_library_only_after_the_wait(dlfront, libhot):
    proc = subprocess.Popen([dlfront, libhot, "-", "300"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline() == "waiting\n"
        maps = f"/proc/{proc.pid}/maps"
        with open(maps) as f:
            assert str(libhot) not in f.read()
        proc.stdin.write("x")
        proc.stdin.flush()
        assert proc.stdout.readline() == "loaded\n"
        with open(maps) as f:
            assert str(libhot) in f.read()
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    assert re.fullmatch(CHECKSUM, out.strip())


def test_short_loop_runs_count_processes(tmp_path):
    marks = tmp_path / "marks"
    argv = short_loop_argv("sh", 7, ["-c", f"echo x >> {marks}"])
    assert run(argv).returncode == 0
    assert marks.read_text() == "x\n" * 7
    assert run(short_loop_argv("false", 3, [])).returncode != 0


def test_demo_short_process_takes_tens_of_ms(workload_pie):
    """The demo workload with DEMO_SHORT_ARGS is one short process: tens
    of ms of CPU on the project's VM."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert re.fullmatch(CHECKSUM, last_line(output([workload_pie,
                                                    *DEMO_SHORT_ARGS])))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime -
                                                  before.ru_stime)
    assert 0.01 < cpu < 0.2, cpu


# --- fdata parsing and the similarity --------------------------------------------

class _Func:
    def __init__(self, name, addr, size, local=False):
        self.name, self.addr, self.size, self.local = name, addr, size, local


class _Symbols:
    """The symbolizer interface fdata_basic uses: functions, lookup."""
    functions = [_Func("hot", 0x1000, 0x100), _Func("loc", 0x1100, 0x40,
                                                    local=True)]

    def lookup(self, addr):
        for f in self.functions:
            if f.addr <= addr < f.addr + f.size:
                return f, addr - f.addr
        return None


def test_function_shares_read_both_writers(tmp_path):
    ours, _ = fdata_basic({0x1010: 5, 0x1020: 2, 0x1104: 3}, "cpu-clock",
                          _Symbols())
    (tmp_path / "ours.fdata").write_text(ours)
    (tmp_path / "perf.fdata").write_text(
        "no_lbr cpu-clock:\n1 hot 10 5\n1 hot 20 2\n1 loc/1 4 3\n")
    expected = {"hot": 7, "loc/1": 3}
    assert function_shares_from_fdata(tmp_path / "ours.fdata") == expected
    assert function_shares_from_fdata(tmp_path / "perf.fdata") == expected


def test_function_shares_refuse_branch_fdata(tmp_path):
    branch = tmp_path / "branch.fdata"
    branch.write_text("1 hot 4f 1 hot 1f 3 100\n")
    with pytest.raises(ValueError, match="not a no_lbr"):
        function_shares_from_fdata(branch)


def test_cosine():
    assert cosine({"a": 5, "b": 3}, {"a": 50, "b": 30}) == pytest.approx(1)
    assert cosine({"a": 1}, {"b": 1}) == 0
    assert cosine({"a": 1, "b": 1}, {"a": 1}) == pytest.approx(0.5 ** 0.5)
    assert cosine({}, {"a": 1}) == 0


# --- the perf reference on real runs --------------------------------------------

DEMO_SHARES = {"hot_a": 5, "hot_b": 3, "hot_c": 2}


@pytest.mark.slow
@pytest.mark.root
def test_perf_reference_of_the_short_loop(workload_pie, short_loop, tmp_path):
    """40 short processes: perf2bolt gathers the binary's samples from all
    of them, about CPU time x frequency, in the demo's 5:3:2 shares."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    data = perf_record(short_loop, tmp_path / "perf.data", freq=999)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime
    report = perf2bolt_basic(data, workload_pie, tmp_path / "loop.fdata")
    assert "associated with 40 PID(s)" in report, report
    functions = function_shares_from_fdata(tmp_path / "loop.fdata")
    total = sum(functions.values())
    print(f"perf: {total} samples of the binary, {cpu:.2f} s user CPU, "
          f"{functions}")
    assert 0.7 * cpu * 999 < total < 1.1 * cpu * 999
    assert cosine(functions, DEMO_SHARES) > 0.98


@pytest.mark.slow
@pytest.mark.root
def test_perf_reference_credits_the_library(front, libhot, tmp_path):
    """perf2bolt given libhot.so finds its samples in front's process
    (more than 70% of them), and front's own in front_fold."""
    ref = perf_reference([front, "500"], libhot, tmp_path)
    print(f"libhot.so: {ref.total} samples, {ref.outside} outside, "
          f"{ref.functions}")
    assert 0 < ref.outside < 0.3 * (ref.total + ref.outside), ref.report
    assert {"libhot_mix", "libhot_search", "libhot_switch"} <= \
        set(ref.functions), ref.functions
    own = perf2bolt_basic(tmp_path / "perf.data", front,
                          tmp_path / "front.fdata")
    assert bolt_profiled_functions(own) > 0
    functions = function_shares_from_fdata(tmp_path / "front.fdata")
    # a stray sample may land in main or a PLT entry
    assert functions["front_fold/1"] > 0.9 * sum(functions.values()), \
        functions


@pytest.mark.slow
@pytest.mark.root
def test_perf_reference_of_a_library_dlopened_later(dlfront, libhot,
                                                    tmp_path):
    ref = perf_reference([dlfront, libhot, "300", "300"], libhot, tmp_path)
    assert ref.functions.get("libhot_mix", 0) > 0, ref.report


@pytest.mark.slow
@pytest.mark.root
def test_perf_reference_of_two_processes_of_one_pie(twofunc, tmp_path):
    both = ["sh", "-c", f"{twofunc} a 300 & {twofunc} b 300; wait"]
    ref = perf_reference(both, twofunc, tmp_path)
    print(f"twofunc: {ref.functions}")
    assert ref.functions["work_a"] > 100 and ref.functions["work_b"] > 100


def exec_profiles(exec_pair, kind, tmp_path):
    """perf's profiles of execer and of the twofunc it execs (work_b)."""
    execer, twofunc = exec_pair[kind]
    data = perf_record(exec_argv(execer, 200, twofunc, "b"),
                       tmp_path / "perf.data")
    profiles = []
    for binary in (execer, twofunc):
        fdata = tmp_path / f"{binary.name}.fdata"
        perf2bolt_basic(data, binary, fdata)
        profiles.append(function_shares_from_fdata(fdata))
    print(f"{kind}: execer {profiles[0]}, twofunc {profiles[1]}")
    return profiles


def function_range(binary, name):
    [f] = [f for f in ElfFile(binary).functions() if f.name == name]
    return range(f.addr, f.addr + f.size)


def test_nopie_exec_pair_shares_addresses(exec_pair):
    """The non-PIE pair is a trap by construction: exec_hot's addresses in
    execer are inside twofunc's own functions (work_a, which twofunc b never
    runs, or its neighbours), so crediting by address alone shows up."""
    execer, twofunc = exec_pair["nopie"]
    hot = function_range(execer, "exec_hot")
    others = [f for f in ElfFile(twofunc).functions()
              if f.addr < hot.stop and hot.start < f.addr + f.size]
    assert "work_a" in {f.name for f in others}, others


@pytest.mark.slow
@pytest.mark.root
def test_perf_reference_across_an_exec_pie(exec_pair, tmp_path):
    """perf credits each PIE of an exec with its own function only."""
    execer, twofunc = exec_profiles(exec_pair, "pie", tmp_path)
    assert set(execer) == {"exec_hot"} and execer["exec_hot"] > 100
    assert set(twofunc) == {"work_b"} and twofunc["work_b"] > 100


@pytest.mark.slow
@pytest.mark.root
def test_perf2bolt_miscredits_nopie_across_an_exec(exec_pair, tmp_path):
    """A fact of perf2bolt (LLVM 22), not a wish: given the second non-PIE
    program of an exec, it takes the PID's samples of the first program
    too, at the same addresses, so work_a, which never ran, gets samples.
    perf is no reference for the non-PIE exec test; the truth there is
    that twofunc b runs work_b only, and execer exec_hot only."""
    execer, twofunc = exec_profiles(exec_pair, "nopie", tmp_path)
    assert set(execer) == {"exec_hot"}
    assert twofunc.get("work_a", 0) > 50 and twofunc["work_b"] > 100


# --- BOLT rewrites the library and the front end -------------------------------

@pytest.mark.slow
@pytest.mark.root
def test_bolt_rewrites_library_and_front_end(front, libhot, tmp_path):
    """llvm-bolt (22) applies perf2bolt's profiles to libhot.so and to
    front; the BOLTed pair, found by RUNPATH, prints the same checksum."""
    lib_ref = perf_reference([front, "500"], libhot, tmp_path)
    front_fdata = tmp_path / "front.fdata"
    perf2bolt_basic(tmp_path / "perf.data", front, front_fdata)
    bolted = tmp_path / "bolted"
    bolted.mkdir()
    for binary, fdata in ((libhot, lib_ref.fdata), (front, front_fdata)):
        proc = run([bolt_tool(22, "llvm-bolt"), str(binary), "-o",
                    str(bolted / binary.name), "-data", str(fdata),
                    "-reorder-blocks=ext-tsp", "-reorder-functions=cdsort",
                    "-split-functions"], timeout=TIMEOUT)
        report = proc.stdout + proc.stderr
        assert bolt_profiled_functions(report) > 0, report
        assert ".note.bolt_info" in ElfFile(bolted / binary.name) \
            .section_names()
    ldd = output([bolted / "front"], env={"LD_TRACE_LOADED_OBJECTS": "1"})
    assert f"libhot.so => {bolted / 'libhot.so'} " in ldd
    assert output([bolted / "front", "50"]) == output([front, "50"])
