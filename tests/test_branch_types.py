"""Branch types (issue 10): a return's trace kept apart through the kernel,
the drain and translation, and written as BOLT reads returns best.

- Replay input: perf script -F brstack prints FROM/TO/EVENT/INTX/ABORT/
  CYCLES, then (Linux 5.16 on) the branch type and (5.18 on) the
  speculation outcome: tools/perf/builtin-script.c, print_bstack_flags,
  "/%c/%c/%c/%d/%s/%s" with get_branch_type(), which is "" for
  PERF_BR_UNKNOWN (tools/perf/util/branch.c), so `.../0//-` where types
  were not saved. LLVM's own parser test (bolt/unittests/Profile/
  DataAggregator.cpp, parseLBREntryWithBranchType) reads `.../4/RET/-` as a
  return, `.../10/COND/-` and `.../13//-` as none.
- preagg: R for a return's trace, T for the rest (perf2bolt_rules.py cites
  parseAggregatedLBREntry's RETURN case).
- preagg-bf: a typed return from outside the binary gets its f record and
  no `B 0 to`, which LLVM 19 and 22 would read as an entry branch from
  [unknown] into the middle of a function.
"""
import os
import random
import re

import pytest

import perf2bolt_rules as rules
from ebpf_bolt.profile import Profile
from ebpf_bolt.replay import BRANCH_TYPES, Replayer, parse_entry, parse_stacks
from ebpf_bolt.translate import typed_table

RET, COND_RET = BRANCH_TYPES["RET"], BRANCH_TYPES["COND_RET"]


# --- 1. the replay input --------------------------------------------------------

@pytest.mark.parametrize("token,expected", [
    # 6 fields: no type (perf before 5.16)
    ("0x10/0x20/P/-/-/0", (0x10, 0x20, False)),
    # 7 fields (5.16, 5.17): a type, or "-" for none
    ("0x10/0x20/M/-/-/3/-", (0x10, 0x20, True)),
    ("0x10/0x20/P/-/-/3/RET", (0x10, 0x20, False, 6)),
    ("0x10/0x20/P/-/-/3/CALL", (0x10, 0x20, False, 4)),
    # 8 fields (5.18 on): empty type where none was saved, "-" too
    ("0x10/0x20/P/-/-/0//-", (0x10, 0x20, False)),
    ("0x10/0x20/P/-/-/0/-/-", (0x10, 0x20, False)),
    ("0xb001/0xb002/M/-/-/4/RET/-", (0xb001, 0xb002, True, 6)),
    ("0x10/0x20/P/-/-/1/COND_RET/NON_SPEC_CORRECT_PATH", (0x10, 0x20, False, 10)),
    ("0xa001/0xa002/P/-/-/10/COND/-", (0xa001, 0xa002, False, 1)),
    # other names are types that are no returns, never errors
    ("0x10/0x20/P/-/-/0/FAULT_ALGN/-", (0x10, 0x20, False, 0)),
    ("0x10/0x20/P/-/-/0/SOMETHING_NEW/-", (0x10, 0x20, False, 0)),
    ("0x10/0x20/P/-/-/0/ERET/-", (0x10, 0x20, False, 11)),
])
def test_entry_fields(token, expected):
    assert parse_entry(token) == expected


def test_stacks_of_every_width():
    """One line may mix the widths; only RET and COND_RET are returns."""
    line = ("0x1/0x2/P/-/-/0 0x3/0x4/M/-/-/5/RET 0x5/0x6/P/-/-/0//- "
            "0x7/0x8/P/-/-/9/COND_RET/- 0x9/0xa/P/-/-/9/IND/-\n")
    stacks = parse_stacks([line, b"0xb/0xc/-/-/-/0/RET/-\n"])
    assert [[rules.is_return(e) for e in st] for st in stacks] == [
        [False, True, False, True, False], [True]]


# --- 2. typed stacks through the kernel -----------------------------------------

LOAD_BASE = 0x555555554000
TYPES = [RET, COND_RET, 1, 2, 4, 5, 3, 11, 0]


def typed(stacks, rng, code, share=0.5):
    """The same stacks with branch types as the hardware reports them: a
    branch's type is that of its source instruction, so a source inside
    the object (`code`: its ranges, as code_ranges gives them) keeps one
    type, or none, in every entry; a source outside every object stands
    for many instructions, so its entries get types one by one. About
    `share` of them are typed: often a return, else another type or
    unknown (0)."""
    def pick():
        return rng.choice(TYPES) if rng.random() < share else None

    per_source = {}
    out = []
    for st in stacks:
        kept = []
        for e in st:
            inside = any(lo <= e[0] < hi for lo, hi, _ in code)
            ty = per_source.setdefault(e[0], pick()) if inside else pick()
            kept.append(e if ty is None else e + (ty,))
        out.append(kept)
    return out


def profile_rows(prof):
    """{(from, to, ft_end, is_return): (count, mispreds)} of a profile."""
    out = {}
    for f, t, e, c, m, r in prof.traces.typed_rows():
        key = (f, t, e, bool(r))
        assert key not in out, f"trace {key} in two rows"
        out[key] = (c, m)
    return out


@pytest.fixture(scope="module")
def typed_stacks(workload_pie):
    from test_replay import code_ranges, make_stacks
    rng = random.Random(1010)
    return typed(make_stacks(workload_pie, LOAD_BASE, n=1500, seed=1010), rng,
                 code_ranges(workload_pie, LOAD_BASE))


@pytest.mark.root
def test_returns_exactly_where_typed(workload_pie, typed_stacks):
    """R exactly where the entry's branch is a return: the kernel's traces,
    return flag included, equal the reference's count for count, on both
    CPUs, with returns and other branches between the same addresses
    from outside every object kept apart; the preagg records are the
    reference's R and T lines."""
    from test_replay import code_ranges
    runtime = rules.typed_aggregate(typed_stacks)
    assert any(r for *_, r in runtime) and not all(r for *_, r in runtime)
    cs = sorted(os.sched_getaffinity(0))
    with Replayer([(str(workload_pie), LOAD_BASE)], max_entries=1 << 17) as rep:
        for i, cpu in enumerate(cs):
            rep.feed(typed_stacks[i::len(cs)], cpu=cpu)
        prof = rep.profile()
    expected, _ = rules.typed_object_view(runtime,
                                          code_ranges(workload_pie, LOAD_BASE))
    got = profile_rows(prof)
    assert got == expected
    # a return and another branch of the same addresses, both rows there:
    # only from outside every object (from 0), where types vary by entry
    both = {k[:3] for k in expected if k[3]} & {k[:3] for k in expected
                                                  if not k[3]}
    assert both and all(k[0] == 0 for k in both), both
    text = prof.render("preagg")
    assert text.startswith("E cycles\n")
    assert sorted(text.splitlines()[1:]) == rules.preagg_records(expected)
    # the untyped view adds the pairs up
    assert dict(prof.traces.items()) == rules.object_view(
        rules.aggregate(typed_stacks)[0],
        code_ranges(workload_pie, LOAD_BASE))[0]


@pytest.mark.root
def test_returns_of_one_object(workload_pie):
    """Every address in the one object (translation's one-shift path,
    translate._uniform_shift): the return flag stays with its row. The
    stacks walk hot_a; the kernel does not check that a typed source is
    really a return, so any source may be typed RET here."""
    from test_replay import code_ranges, walk_stacks
    rng = random.Random(1011)
    stacks = typed(walk_stacks(workload_pie, "hot_a", 300, LOAD_BASE, 1011),
                   rng, code_ranges(workload_pie, LOAD_BASE), share=0.3)
    with Replayer([(str(workload_pie), LOAD_BASE)], max_entries=1 << 16) as rep:
        rep.feed(stacks)
        prof = rep.profile()
    expected, left = rules.typed_object_view(
        rules.typed_aggregate(stacks), code_ranges(workload_pie, LOAD_BASE))
    assert left == 0 and all(k[0] for k in expected)
    assert any(k[3] for k in expected)
    assert profile_rows(prof) == expected
    assert (sorted(prof.render("preagg").splitlines()[1:]) ==
            rules.preagg_records(expected))


@pytest.mark.root
def test_no_types_no_returns(workload_pie, typed_stacks):
    """Stacks without types (or with types unknown) give T records only."""
    untyped = [[e[:3] + ((0,) if len(e) > 3 else ()) for e in st]
               for st in typed_stacks[:300]]
    with Replayer([(str(workload_pie), LOAD_BASE)], max_entries=1 << 16) as rep:
        rep.feed(untyped)
        prof = rep.profile()
    assert getattr(prof.traces, "returns", None) is None
    lines = prof.render("preagg").splitlines()
    assert len(lines) > 100 and all(l[0] in "ET" for l in lines)


@pytest.mark.root
def test_types_ignored_where_not_asked(workload_pie, typed_stacks):
    """branch_types off (an event without PERF_SAMPLE_BRANCH_TYPE_SAVE):
    the worker skips the test, typed entries or not; replay() turns it on
    only for input with a type, and then keeps returns apart."""
    from ebpf_bolt.replay import replay
    from test_replay import code_ranges
    objects = [(str(workload_pie), LOAD_BASE)]
    with Replayer(objects, max_entries=1 << 16, branch_types=False) as rep:
        rep.feed(typed_stacks[:300])
        assert getattr(rep.profile().traces, "returns", None) is None
    prof = replay(workload_pie, typed_stacks[:300], LOAD_BASE,
                  max_entries=1 << 16)
    assert prof.traces.returns is not None
    assert prof.traces.returns.count(1) == sum(
        r for *_, r in profile_rows(prof))
    assert profile_rows(prof) == rules.typed_object_view(
        rules.typed_aggregate(typed_stacks[:300]),
        code_ranges(workload_pie, LOAD_BASE))[0]


# --- 3. golden cases: returns in both dialects ----------------------------------

def golden_returns(s):
    """{case: (typed traces, preagg records, B/F records)}: ELF addresses
    of the test program of test_preagg_bf."""
    caller, rec, lib = s["asm_caller"], s["asm_rec"], s["asm_libcall"]
    leaf_ret = s["asm_leaf"]["rets"][0]
    return {
        # asm_leaf returns into asm_caller: R; B/F as for an untyped return
        # (LLVM 22 tells a return inside the binary by disassembly,
        # processBranchEvents' checkReturn), f as the source is in another
        # function.
        "return-from-another-function": (
            {(leaf_ret, caller["site"], caller["jump"], 1): (5, 2)},
            [f"R {leaf_ret:x} {caller['site']:x} {caller['jump']:x} 5"],
            [f"B {leaf_ret:x} {caller['site']:x} 5 2",
             f"f {caller['site']:x} {caller['jump']:x} 5"]),
        # labs (libc) returns into asm_libcall: R 0 (FT_EXTERNAL_RETURN,
        # never a branch); its B/F form is the f record alone.
        "return-from-outside": (
            {(0, lib["site"], lib["jump"], 1): (4, 1)},
            [f"R 0 {lib['site']:x} {lib['jump']:x} 4"],
            [f"f {lib['site']:x} {lib['jump']:x} 4"]),
        # the newest entry of a stack, a return from outside: nothing to
        # write in B/F (no branch, no fall-through), R as ever
        "return-from-outside-branch-only": (
            {(0, lib["site"], rules.BR_ONLY, 1): (2, 0)},
            [f"R 0 {lib['site']:x} {rules.BR_ONLY:x} 2"], []),
        # asm_rec returns into itself: R; F (same function)
        "recursive-return": (
            {(rec["rets"][-1], rec["site"], rec["jump"], 1): (3, 0)},
            [f"R {rec['rets'][-1]:x} {rec['site']:x} {rec['jump']:x} 3"],
            [f"B {rec['rets'][-1]:x} {rec['site']:x} 3 0",
             f"F {rec['site']:x} {rec['jump']:x} 3"]),
        # the same (0, site, jump) once as a return, once not (a callback
        # from libc, untyped): T and R apart; B 0 only for the non-return,
        # one f for both
        "outside-return-and-branch": (
            {(0, lib["site"], lib["jump"], 1): (4, 1),
             (0, lib["site"], lib["jump"], 0): (3, 0)},
            [f"R 0 {lib['site']:x} {lib['jump']:x} 4",
             f"T 0 {lib['site']:x} {lib['jump']:x} 3"],
            [f"B 0 {lib['site']:x} 3 0",
             f"f {lib['site']:x} {lib['jump']:x} 7"]),
    }


GOLDEN = ["return-from-another-function", "return-from-outside",
          "return-from-outside-branch-only", "recursive-return",
          "outside-return-and-branch"]


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_returns(name, program, tmp_path):
    """The records worked out by hand; perf2bolt 22 reads the R/T records
    and the B/F records alike, and perf2bolt 19 the B/F records so too."""
    from test_preagg_bf import (assert_same_counts, counts, perf2bolt,
                                sites)
    traces, preagg, bf = golden_returns(sites(program))[name]
    prof = Profile(program, "cycles", "lbr", traces=typed_table(traces))
    assert sorted(prof.render("preagg").splitlines()[1:]) == sorted(preagg)
    assert sorted(prof.render("preagg-bf").splitlines()) == sorted(bf)
    t22 = perf2bolt(22, prof.render("preagg"), program, tmp_path, "t", True)
    if not bf:
        return
    bf22 = perf2bolt(22, prof.render("preagg-bf"), program, tmp_path, "bf",
                     True)
    bf19 = perf2bolt(19, prof.render("preagg-bf"), program, tmp_path, "bf",
                     True)
    assert_same_counts(counts(bf22), counts(t22), "B/F (22) vs R/T (22)")
    assert_same_counts(counts(bf19), counts(t22), "B/F (19) vs R/T (22)")
    if name == "return-from-outside":
        # the entry branch from [unknown] that T (and B 0) would invent
        assert not [l for l in t22 + bf19 if l.startswith("0 [unknown]")]


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    from test_preagg_bf import build_program
    return build_program(tmp_path_factory.mktemp("typesprog"))


# --- 4. live sampling: asking for the types -------------------------------------
# The probe itself needs branch hardware (none here); what can run here is
# the attribute and the fallback logic, with the kernel's answers faked.

def test_event_asks_for_branch_types():
    from ebpf_bolt import perf_event as pe
    header = open("/usr/include/linux/perf_event.h").read()
    shift = re.search(r"PERF_SAMPLE_BRANCH_TYPE_SAVE_SHIFT\s*=\s*(\d+)", header)
    assert pe.PERF_SAMPLE_BRANCH_TYPE_SAVE == 1 << int(shift.group(1))
    typed = pe.make_attr(pe.CYCLES_BRSTACK_TYPED, 1000).branch_sample_type
    plain = pe.make_attr(pe.CYCLES_BRSTACK, 1000).branch_sample_type
    assert typed == plain | pe.PERF_SAMPLE_BRANCH_TYPE_SAVE
    assert not plain & pe.PERF_SAMPLE_BRANCH_TYPE_SAVE


@pytest.mark.parametrize("types_refused", [False, True])
@pytest.mark.parametrize("verbose", [False, True])
def test_types_where_the_kernel_saves_them(monkeypatch, types_refused,
                                           verbose):
    """Branch stacks with types if the kernel takes the typed event, else
    without; -v says which."""
    import errno
    from ebpf_bolt import collector

    def probe(spec, frequency):
        if spec.branch_types and types_refused:
            return OSError(errno.EOPNOTSUPP, "no")
        return None
    monkeypatch.setattr(collector, "probe_event", probe)
    notes = []
    mode, event = collector.choose_event("auto", 1000, notes.append, verbose)
    assert mode == "lbr" and event.branch_stack
    assert event.branch_types is not types_refused
    if not verbose:
        assert notes == []
    elif types_refused:
        assert len(notes) == 1 and "not saved" in notes[0]
    else:
        assert len(notes) == 1 and "types saved" in notes[0]


@pytest.mark.parametrize("saved,returns,says", [
    (True, b"\0\1\1", "branch types: saved; 2 return traces"),
    (False, None, "branch types: not saved"),
    (None, None, "branch types: none in the input"),
    (None, b"\1\0\0", "branch types: read; 1 return traces"),
])
def test_summary_says_whether_types_were_saved(saved, returns, says):
    from array import array
    from ebpf_bolt import cli
    from ebpf_bolt.profile import TraceTable
    cols = [array("Q", [1, 2, 3]) for _ in range(5)]
    prof = Profile("/bin/true", "cycles", "lbr",
                   traces=TraceTable(cols, returns))
    if saved is not None:
        prof.info["branch_types"] = saved
    assert cli.branch_types_line(prof).startswith(says)


# --- 5. BOLT's result on a recorded run with typed stacks -----------------------

@pytest.fixture(scope="module")
def typed_recording(program):
    """Stacks of a run of the test program under qemu-user, each entry
    typed by the instruction at its `from` (brtrace): returns from libc
    (labs) and calls from libc into the program (qsort's comparator)."""
    import brtrace
    from test_preagg_bf import PERIOD, ROUNDS, SEED
    rec = brtrace.record([str(program), str(ROUNDS)], period=PERIOD,
                         seed=SEED, branch_types=True)
    assert rec.returncode == 0 and rec.stats["unknown_blocks"] == 0, rec.stats
    return rec.stacks, rec.load_base


def unknown_entries(fdata_lines):
    """{(function, offset): count} of fdata's `0 [unknown] 0 -> f+off`
    lines (entry branches from code perf2bolt does not know)."""
    out = {}
    for line in fdata_lines:
        f = line.split()
        if f[:3] == ["0", "[unknown]", "0"]:
            key = (f[4], int(f[5], 16))
            out[key] = out.get(key, 0) + int(f[7])
    return out


@pytest.mark.root
def test_returns_spare_bolt_invented_entries(program, typed_recording,
                                             tmp_path):
    """perf2bolt 22 on the R/T records of typed stacks, against the T
    records of the same traces: strictly fewer `[unknown]` entry edges,
    none into the return site of a typed return, 0 mismatching traces
    (perf2bolt() asserts that, and no out-of-range trace)."""
    from ebpf_bolt.elf import Symbolizer
    from ebpf_bolt.replay import replay
    from ebpf_bolt.writers import FunctionNames
    from test_preagg_bf import perf2bolt
    stacks, load_base = typed_recording
    prof = replay(program, stacks, load_base=load_base, max_entries=1 << 16)
    assert prof.stats["traces_lost"] == 0
    rows = profile_rows(prof)
    sym = Symbolizer(prof.elf)
    fnames = FunctionNames(sym)
    return_sites = set()
    for t in {t for (f, t, _e, r) in rows if r and f == 0}:
        func, off = sym.lookup(t)   # fdata's spelling of the address
        return_sites.add((fnames[func], off))
    assert return_sites, "no return from outside the binary was recorded"
    # the same traces without types: T records only
    untyped = Profile(program, "cycles", "lbr", traces=dict(prof.traces.items()))
    assert "\nR " not in untyped.render("preagg")
    text = prof.render("preagg")
    assert "\nR 0 " in text and "\nT 0 " in text   # calls from libc stay T
    with_r = unknown_entries(perf2bolt(22, text, program, tmp_path, "r"))
    with_t = unknown_entries(perf2bolt(22, untyped.render("preagg"), program,
                                       tmp_path, "t"))
    print(f"[unknown] entries: R/T {len(with_r)} edges, {sum(with_r.values())} "
          f"counts; T only {len(with_t)} edges, {sum(with_t.values())} counts")
    assert sum(with_r.values()) < sum(with_t.values()), (with_r, with_t)
    assert len(with_r) < len(with_t)
    assert not set(with_r) & return_sites, sorted(set(with_r) & return_sites)
    assert set(with_t) & return_sites   # what R spared


@pytest.mark.root
def test_typed_dialects_agree_on_recorded_stacks(program, typed_recording,
                                                 tmp_path):
    """On typed stacks too, perf2bolt 22 reads the B/F records (f alone for
    a return from outside) as it reads the R/T records, and perf2bolt 19
    reads the B/F records alike, the mispredict column aside."""
    from ebpf_bolt.replay import replay
    from test_preagg_bf import assert_same_counts, counts, perf2bolt
    stacks, load_base = typed_recording
    prof = replay(program, stacks, load_base=load_base, max_entries=1 << 16)
    bf = prof.render("preagg-bf")
    assert "\nB 0 " in "\n" + bf     # calls from libc keep theirs
    r22 = perf2bolt(22, prof.render("preagg"), program, tmp_path, "r")
    bf22 = perf2bolt(22, bf, program, tmp_path, "bf")
    bf19 = perf2bolt(19, bf, program, tmp_path, "bf")
    assert_same_counts(counts(bf22), counts(r22), "B/F (22) vs R/T (22)")
    assert_same_counts(counts(bf19), counts(r22), "B/F (19) vs R/T (22)")


@pytest.mark.root
def test_cli_replays_typed_text(program, typed_recording, ebpf_bolt_cmd,
                                tmp_path):
    """perf's 8-field text (what perf 5.18+ prints with types saved)
    through the installed command: R exactly for the typed returns, and the
    summary counts them."""
    import brtrace
    from conftest import run
    from test_replay import code_ranges
    stacks, load_base = typed_recording
    text = "".join(line + "\n" for line in brtrace.stacks_to_text(stacks))
    assert "/RET/-" in text and "/COND/-" in text
    out = tmp_path / "typed.preagg"
    res = run([ebpf_bolt_cmd, "replay", "--binary", str(program),
               "--load-base", hex(load_base), "-o", str(out),
               "--max-entries", "65536"], input=text)
    assert res.returncode == 0, res.stderr
    expected, _ = rules.typed_object_view(rules.typed_aggregate(stacks),
                                          code_ranges(program, load_base))
    assert sorted(out.read_text().splitlines()[1:]) == \
        rules.preagg_records(expected)
    n = sum(1 for k in expected if k[3])
    assert f"branch types: read; {n:,} return traces" in res.stderr
