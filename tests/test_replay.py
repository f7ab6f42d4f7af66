"""Exactness of the kernel's branch-stack aggregation (replay_branches).

Branch stacks are replayed through the real BPF program with BPF_PROG_RUN,
the thread pinned to each CPU in turn, and each object's profile must equal,
count for count, what perf2bolt's rules give (tests/perf2bolt_rules.py,
written from DataAggregator.cpp) seen from that object by the translation
rule of bolt-profile-formats.md section 2 (perf2bolt_rules.object_view):
the kernel keys traces by object and file offset, so the runtime addresses
of the stacks are compared through each object's view of them. The written
profiles must be read the same way by the real perf2bolt of LLVM 19 and 22.
"""
import io
import os
import random
import re
import subprocess
import sys

import pytest

import perf2bolt_rules as rules
from conftest import bolt_profiled_functions, bolt_tool, run
from ebpf_bolt import cli
from ebpf_bolt.elf import ElfFile
from ebpf_bolt.replay import Replayer, replay, replay_objects

pytestmark = [pytest.mark.root, pytest.mark.kernel_matrix]

SEED = 20240917
LOAD_BASE = 0x555555554000            # a usual PIE load address
BR_ONLY = rules.BR_ONLY
KERNEL = [rules.KERNEL_BASE_ADDR,     # the first kernel address: dropped
          0xffffffff81000000, 0xffffffffc0a01234, BR_ONLY]
LAST_USER = rules.KERNEL_BASE_ADDR - 1  # kept
OTHER_OBJECT = [0x7f3a12345000, 0x7f3a12345010, 0x7ffff7fc1234]
ENTRIES = 1 << 17   # trace map size: room for every test's traces, quick to load


def cpus():
    return sorted(os.sched_getaffinity(0))


# --- comparing --------------------------------------------------------------

def assert_same_traces(got, expected):
    """Equal trace dicts, or a failure that shows the first differences."""
    if got == expected:
        return
    missing = [(k, v) for k, v in expected.items() if k not in got]
    extra = [(k, v) for k, v in got.items() if k not in expected]
    wrong = [(k, got[k], v) for k, v in expected.items()
             if k in got and got[k] != v]

    def fmt(k):
        return "(%#x, %#x, %#x)" % k
    lines = [f"{len(got)} traces, expected {len(expected)}: {len(missing)} "
             f"missing, {len(extra)} extra, {len(wrong)} with wrong counts"]
    lines += [f"  missing {fmt(k)} {v}" for k, v in missing[:5]]
    lines += [f"  extra   {fmt(k)} {v}" for k, v in extra[:5]]
    lines += [f"  wrong   {fmt(k)} got {g}, expected {v}" for k, g, v in wrong[:5]]
    pytest.fail("\n".join(lines))


def assert_counters(stats, expected):
    """Kernel counters equal the reference's, and nothing was lost."""
    got = {name: stats[name] for name in expected}
    assert got == expected
    lost = {name: stats[name] for name in
            ("map_full", "update_failed", "traces_lost")}
    assert lost == dict(map_full=0, update_failed=0, traces_lost=0), (
        "traces were lost although the trace map has room")


def code_ranges(binary, load_base):
    """The object's code at run time, as object_view takes it: each
    executable segment's file bytes at load_base + p_vaddr."""
    return [(load_base + s.vaddr, load_base + s.vaddr + s.filesz, load_base)
            for s in ElfFile(binary).text_segments()]


def assert_profiles(rep, runtime, lossless=True):
    """Each object's profile equals the runtime reference traces seen from
    that object; the kernel dropped (and counted) exactly the traces in no
    object, and with no loss every other count is in the profile or left
    out of it."""
    profiles = rep.profiles()
    assert len(profiles) == len(rep.objects)
    every = []
    for (path, _, base), prof in zip(rep.objects, profiles):
        ranges = code_ranges(path, base)
        every += ranges
        expected, left_out = rules.object_view(runtime, ranges)
        assert_same_traces(dict(prof.traces.items()), expected)
        if lossless:
            assert prof.stats["traces_outside_binary"] == left_out
    _, in_none = rules.object_view(runtime, every)
    assert profiles[0].stats["traces_outside"] == in_none
    return profiles


def records(text):
    """A rendered profile as (header lines, sorted records): trace records
    come in the kernel map's order, which differs from run to run."""
    lines = text.splitlines()
    head = [l for l in lines if l.startswith("E ")]
    return head, sorted(l for l in lines if not l.startswith("E "))


# --- stacks -----------------------------------------------------------------

def text_ranges(binary):
    """[start, end) of each executable segment, in ELF addresses."""
    return [(s.vaddr, s.vaddr + s.memsz) for s in ElfFile(binary).text_segments()]


class Pools:
    """Runtime addresses to draw entries from: inside the binary's text
    (loaded at load_base), just outside it, in other objects, kernel."""

    def __init__(self, binary, load_base, rng):
        ranges = text_ranges(binary)
        inside = []
        outside = [0, 0x10, LAST_USER] + OTHER_OBJECT
        for lo, hi in ranges:
            inside += [lo, hi - 1] + [rng.randrange(lo, hi) for _ in range(60)]
            outside += [hi + load_base]
            if lo:
                outside.append(lo - 1 + load_base)
        self.inside = [a + load_base for a in inside]
        self.outside = outside

    def user(self, rng):
        return rng.choice(self.inside if rng.random() < 0.85 else self.outside)

    def entry(self, rng):
        r = rng.random()
        if r < 0.06:                       # return from an interrupt/syscall
            frm, to = rng.choice(KERNEL), self.user(rng)
        elif r < 0.12:                     # interrupt or syscall entry
            frm, to = self.user(rng), rng.choice(KERNEL)
        elif r < 0.14:                     # inside the kernel
            frm, to = rng.choice(KERNEL), rng.choice(KERNEL)
        else:
            frm, to = self.user(rng), self.user(rng)
        return frm, to, rng.random() < 0.2

    def random_stack(self, rng, depth):
        return [self.entry(rng) for _ in range(depth)]

    def loop_stack(self, rng, depth):
        """A loop: the same one or two branches over and over, at times
        interrupted (a kernel entry pair) somewhere in it."""
        body = [(self.user(rng), self.user(rng), False)
                for _ in range(rng.choice((1, 1, 2, 3)))]
        stack = []
        while len(stack) < depth:
            for frm, to, _ in body:
                stack.append((frm, to, rng.random() < 0.1))
        stack = stack[:depth]
        if depth > 2 and rng.random() < 0.3:
            i = rng.randrange(depth)
            stack[i:i] = [(rng.choice(KERNEL), stack[i][0], False),
                          (stack[i][0], rng.choice(KERNEL), False)]
        return stack


DEPTHS = (0, 1, 2, 3, 4, 8, 15, 16, 31, 32, 33, 48, 63, 64, 65, 80, 128)


def edge_stacks(pools, rng):
    """Stacks of the edge cases, each spelled out once."""
    u = lambda: (pools.user(rng), pools.user(rng), rng.random() < 0.5)  # noqa: E731
    k_in = lambda: (pools.user(rng), KERNEL[1], False)                 # noqa: E731
    k_out = lambda: (KERNEL[2], pools.user(rng), False)                # noqa: E731
    k_k = lambda: (KERNEL[0], BR_ONLY, False)                          # noqa: E731
    stacks = [
        [],                                              # depth 0
        [u()], [k_in()], [k_out()], [k_k()],             # depth 1
        [u() for _ in range(31)], [u() for _ in range(32)],
        [u() for _ in range(64)],
        [u() for _ in range(65)], [u() for _ in range(100)],  # cut to 64
        [k_out(), u(), u(), u()],                        # kernel newest
        [u(), u(), k_in(), u(), u()],                    # kernel in the middle
        [u(), u(), u(), k_in()],                         # kernel oldest
        [u(), k_out(), k_k(), k_in(), u()],              # consecutive
        [k_out(), k_k(), k_in()],                        # kernel only
        [u() for _ in range(64)] + [k_in()] * 10,        # kernel past the cut
        [k_in()] * 64 + [u()] * 3,                       # users past the cut
        [(LAST_USER, LAST_USER, True), (rules.KERNEL_BASE_ADDR, 0x1000, True),
         (0x1000, LAST_USER, False)],                    # the boundary
        [(pools.inside[0], pools.inside[1], False)] * 64,  # one tight loop
    ]
    return stacks


def make_stacks(binary, load_base, n=3000, seed=SEED):
    rng = random.Random(seed)
    pools = Pools(binary, load_base, rng)
    stacks = edge_stacks(pools, rng)
    while len(stacks) < n:
        depth = rng.choice(DEPTHS) if rng.random() < 0.5 else rng.randrange(65)
        if rng.random() < 0.3:
            stacks.append(pools.loop_stack(rng, depth))
        else:
            stacks.append(pools.random_stack(rng, depth))
    rng.shuffle(stacks)
    return stacks


@pytest.fixture(scope="module")
def stacks(workload_pie):
    return make_stacks(workload_pie, LOAD_BASE)


@pytest.fixture(scope="module")
def pie(workload_pie):
    """The objects of `stacks`: the workload PIE at LOAD_BASE."""
    return [(str(workload_pie), LOAD_BASE)]


# --- 1. exactness against perf2bolt's rules ---------------------------------

@pytest.mark.parametrize("build", ["shipped", "baseline"])
def test_batches_on_different_cpus(stacks, pie, build, request):
    """Each CPU aggregates its own share; the per-CPU maps summed give
    perf2bolt's traces for all stacks. The baseline object (no trace
    cache) must agree too: the benchmark compares against it."""
    path = (request.getfixturevalue("baseline_object")
            if build == "baseline" else None)
    expected, counters = rules.aggregate(stacks)
    cs = cpus()
    with Replayer(pie, max_entries=ENTRIES, path=path) as rep:
        for i, cpu in enumerate(cs):
            rep.feed(stacks[i::len(cs)], cpu=cpu)
        assert_profiles(rep, expected)
        assert_counters(rep.stats(), counters)
    assert sum(c for c, _ in expected.values()) == counters["traces"]


def test_same_batch_on_every_cpu(stacks, pie):
    """The same stacks on every CPU count every trace once per CPU."""
    expected, counters = rules.aggregate(stacks)
    cs = cpus()
    with Replayer(pie, max_entries=ENTRIES) as rep:
        for cpu in cs:
            rep.feed(stacks, cpu=cpu)
        assert_profiles(rep, rules.scale(expected, len(cs)))
        assert_counters(rep.stats(), {k: v * len(cs) for k, v in counters.items()})


def test_small_batches_alternating_cpus(stacks, pie):
    """Many short runs, switching CPU each time: counts held between runs
    (per CPU) and traces moving between CPUs add up exactly."""
    cs = cpus()
    first, second = stacks[:1500], stacks[1000:]   # overlap: traces recur
    expected = rules.merge(rules.aggregate(first)[0], rules.aggregate(second)[0])
    parts = ([first[i:i + 97] for i in range(0, len(first), 97)]
             + [second[i:i + 61] for i in range(0, len(second), 61)])
    with Replayer(pie, max_entries=ENTRIES) as rep:
        for n, part in enumerate(parts):
            rep.feed(part, cpu=cs[n % len(cs)])
        assert_profiles(rep, expected)
        # reading does not drain: a second read gives the same
        assert_profiles(rep, expected)


def test_many_distinct_traces_then_repeats(workload_pie):
    """More distinct traces than any per-CPU cache holds, then each again
    many times, spread over the CPUs: nothing is lost or counted twice."""
    rng = random.Random(SEED + 1)
    (lo, hi, _), = code_ranges(workload_pie, LOAD_BASE)
    assert lo + 0x20000 + 32 * 5000 < hi
    traces = [(lo + 16 * i, lo + 0x20000 + 32 * i) for i in range(5000)]
    stacks = []
    for _ in range(3):
        order = traces[:]
        rng.shuffle(order)
        for i in range(0, len(order), 20):      # 20-deep stacks, mispreds
            stacks.append([(f, t, rng.random() < 0.3) for f, t in order[i:i + 20]])
    expected, counters = rules.aggregate(stacks)
    cs = cpus()
    with Replayer([(workload_pie, LOAD_BASE)], max_entries=ENTRIES) as rep:
        for n, i in enumerate(range(0, len(stacks), 100)):
            rep.feed(stacks[i:i + 100], cpu=cs[n % len(cs)])
        assert_profiles(rep, expected)
        assert_counters(rep.stats(), counters)


@pytest.mark.parametrize("sets", [1, 2, 16])
def test_tiny_cache_evicts_exactly(stacks, pie, sets):
    """A trace cache of a few sets: traces fight over two ways, so ways
    change owner, wear out and are found in the second way all the time;
    counts still add up exactly."""
    expected, counters = rules.aggregate(stacks)
    cs = cpus()
    with Replayer(pie, max_entries=ENTRIES, sets=sets) as rep:
        for n, i in enumerate(range(0, len(stacks), 250)):
            rep.feed(stacks[i:i + 250], cpu=cs[n % len(cs)])
        assert_profiles(rep, expected)
        assert_counters(rep.stats(), counters)


# --- 1a. the shared trace table under concurrency --------------------------

def two_cpus():
    cs = cpus()
    if len(cs) < 2:
        pytest.skip("needs two CPUs to run the replay on at once")
    return cs[:2]


def assert_overlapped(times):
    """The runs of feed_at_once were in the kernel at the same time for a
    while: each started before the other ended."""
    (a0, a1), (b0, b1) = times
    assert a0 < b1 and b0 < a1, times


@pytest.mark.parametrize("sets", [None, 1], ids=["cache", "no-cache"])
def test_cpus_at_once_count_exactly(stacks, pie, sets):
    """Two CPUs replay all the stacks at the same time (one thread pinned
    to each, in the kernel together): every trace is claimed and counted
    in the one table both update, and no count is lost to a race. With a
    1-set cache nearly every trace goes to the table, the most shared
    updates."""
    expected, counters = rules.aggregate(stacks)
    cs = two_cpus()
    for _ in range(3):
        with Replayer(pie, max_entries=ENTRIES, sets=sets) as rep:
            assert_overlapped(rep.feed_at_once([(cpu, stacks) for cpu in cs]))
            assert_profiles(rep, rules.scale(expected, 2))
            assert_counters(rep.stats(),
                            {k: v * 2 for k, v in counters.items()})


def test_cpus_hammering_the_same_traces(stacks, pie):
    """The worst case for a shared counter: both CPUs count the same few
    traces over and over (one 32-deep stack, 20,000 times each, with a
    1-set cache that keeps 2 of its traces), in 5 trials: every count
    arrives. (With 3,000 stacks once, a plain add instead of the atomic
    one went unnoticed in 7 of 10 runs.)"""
    hot = max(stacks, key=len)[:32]
    expected, counters = rules.aggregate([hot])
    cs = two_cpus()
    for _ in range(5):
        with Replayer(pie, max_entries=ENTRIES, sets=1) as rep:
            assert_overlapped(rep.feed_at_once([(cpu, [hot] * 20000)
                                                for cpu in cs]))
            assert_profiles(rep, rules.scale(expected, 40000))
            assert_counters(rep.stats(),
                            {k: v * 40000 for k, v in counters.items()})


@pytest.mark.parametrize("cleared", [1, 100], ids=["noted", "past-notes"])
def test_trace_in_two_slots_is_added_up(stacks, pie, cleared):
    """A CPU that finds its trace's slot claimed but not yet written (the
    claimer was preempted: replay runs can be) stores it in another slot.
    Made here by clearing the `to` word of the hottest slots between two
    replays and putting it back: the drain must add the two slots up. The
    kernel notes the `from` of each trace that raced (raced map), and the
    drain merges only those rows; past RACED_MAX notes ("past-notes"),
    every row."""
    import mmap
    from array import array
    from ebpf_bolt.bpf_object import MAPS
    from ebpf_bolt.drain import drain_traces
    from ebpf_bolt.layout import RACED_MAX
    expected, counters = rules.aggregate(stacks)
    with Replayer(pie, max_entries=ENTRIES, sets=1) as rep:
        rep.feed(stacks)
        size = rep.obj.map_entries["trace_counts"] * MAPS["trace_counts"][1]
        with mmap.mmap(rep.obj.map_fd("trace_counts"),
                       -(-size // mmap.PAGESIZE) * mmap.PAGESIZE) as mem:
            words = array("Q", mem[:size])
            hottest = sorted(range(len(words) // 5),
                             key=lambda i: -words[5 * i + 3])[:cleared]
            saved = {}
            for slot in hottest:   # word 1 of a slot: `to`
                saved[slot] = mem[(5 * slot + 1) * 8:(5 * slot + 2) * 8]
                mem[(5 * slot + 1) * 8:(5 * slot + 2) * 8] = bytes(8)
            rep.feed(stacks)
            for slot, to in saved.items():
                mem[(5 * slot + 1) * 8:(5 * slot + 2) * 8] = to
        races, froms = rep.obj.read_raced()
        assert races > 0 and len(froms) == min(races, RACED_MAX)
        assert (races > RACED_MAX) == (cleared > 1), races
        # each trace once in the drained columns (translation may add up
        # rows of one key, but its fast path for one mapping does not)
        frm, to, ft_end, _, _ = drain_traces(rep.obj)
        assert len(set(zip(frm, to, ft_end))) == len(frm)
        assert_profiles(rep, rules.scale(expected, 2))


# --- 1b. the translated profile ---------------------------------------------

# Hand-worked cases of the translation rule of bolt-profile-formats.md
# section 2, on the binary's code segment [lo, hi) (ELF addresses; at run
# time + the load base): a from or to outside becomes 0 (external); a
# fall-through end outside becomes BR_ONLY, and so does one that starts
# outside (its `to`: perf2bolt cannot place a fall-through that starts
# outside, doTrace counts it as out of range); a trace whose branch has
# neither end inside is left out and counted, whatever its end.
LIB, LIB2 = OTHER_OBJECT[0], OTHER_OBJECT[1]     # another object's code
TRANSLATION_CASES = [
    "inside", "from-outside", "to-outside", "end-outside", "left-out",
    "segment-bounds"]


def translation_case(name, lo, hi, load_base):
    """(stacks in runtime addresses, expected traces, left-out count)."""
    a, b, c, d = lo + 0x10, lo + 0x40, lo + 0x80, lo + 0xc0     # inside

    def r(v):  # runtime address
        return v + load_base
    return {
        # both inside: the load base comes off every address
        "inside": ([[(r(c), r(d), False), (r(a), r(b), True)]],
                   {(c, d, BR_ONLY): (1, 0), (a, b, c): (1, 1)}, 0),
        # a return from a library into the binary: from 0
        "from-outside": ([[(r(c), r(d), False), (LIB, r(a), True)]],
                         {(c, d, BR_ONLY): (1, 0), (0, a, c): (1, 1)}, 0),
        # a call into a library: to 0, and the fall-through from there to
        # c (inside) starts outside: BR_ONLY
        "to-outside": ([[(r(c), r(d), False), (r(a), LIB, False)]],
                       {(c, d, BR_ONLY): (1, 0), (a, 0, BR_ONLY): (1, 0)}, 0),
        # the next branch is a library's: the fall-through end is BR_ONLY
        "end-outside": ([[(LIB, r(c), False), (r(a), r(b), True)]],
                        {(0, c, BR_ONLY): (1, 0), (a, b, BR_ONLY): (1, 1)}, 0),
        # a branch inside a library is left out, though its end is inside
        "left-out": ([[(r(a), r(b), False), (LIB, LIB2, True)]],
                     {(a, b, BR_ONLY): (1, 0)}, 1),
        # lo is inside, hi and lo - 1 are not; two traces that become one
        # add their counts and mispredicts
        "segment-bounds": ([[(r(hi), r(lo), True), (r(lo), r(hi - 1), False)],
                            [(r(lo - 1), r(lo), True)]],
                           {(0, lo, BR_ONLY): (2, 2),
                            (lo, hi - 1, BR_ONLY): (1, 0)}, 0),
    }[name]


@pytest.mark.parametrize("load_base", [0, LOAD_BASE], ids=["base0", "pie-base"])
@pytest.mark.parametrize("name", TRANSLATION_CASES)
def test_translation_by_hand(workload_pie, name, load_base):
    (lo, hi), = text_ranges(workload_pie)    # one code segment
    stacks, expected, left_out = translation_case(name, lo, hi, load_base)
    prof = replay(workload_pie, stacks, load_base, max_entries=64)
    assert dict(prof.traces.items()) == expected
    assert prof.stats["traces_outside_binary"] == left_out


def preagg_text(traces, event="cycles"):
    """Section 1 of the formats doc: E event, then one T record per trace,
    bare hex addresses, decimal count."""
    return "".join([f"E {event}\n"] + [f"T {f:x} {t:x} {e:x} {c}\n"
                                       for (f, t, e), (c, _) in traces.items()])


@pytest.mark.parametrize("load_base", [0, LOAD_BASE], ids=["base0", "pie-base"])
def test_translated_profile(workload_pie, load_base):
    """Random stacks (test_translation_by_hand has the exact cases): every
    address of the profile is the binary's, 0 or BR_ONLY, and every trace
    count is either in the profile or counted as left out."""
    stacks = make_stacks(workload_pie, load_base, n=2000, seed=SEED + load_base % 97)
    runtime, counters = rules.aggregate(stacks)
    prof = replay(workload_pie, stacks, load_base, max_entries=ENTRIES,
                  cpus=cpus())
    ranges = text_ranges(workload_pie)

    def inside(addr):
        return any(lo <= addr < hi for lo, hi in ranges)
    for f, t, e in prof.traces:
        assert f == 0 or inside(f), hex(f)
        assert t == 0 or inside(t), hex(t)
        assert e == BR_ONLY or inside(e), hex(e)
        assert (f, t) != (0, 0)
    left_out = prof.stats["traces_outside_binary"]
    assert left_out and any(k[0] == 0 for k in prof.traces)  # both rules ran
    assert (sum(c for c, _ in prof.traces.values()) + left_out
            == sum(c for c, _ in runtime.values()))
    assert_counters(prof.stats, counters)
    text = prof.render("preagg")
    assert text.endswith("\n") and records(text) == records(preagg_text(prof.traces))


# --- 2. golden cases, worked out by hand --------------------------------------
# Line numbers: bolt/lib/Profile/DataAggregator.cpp at llvm/llvm-project
# 00d20e2b9247441bbe5c22e42b492f1abeca9e03 (see perf2bolt_rules.py).

K_ENTRY, K_EXIT = 0xffffffff81c01000, 0xffffffff81c00b1a
GOLDEN = {
    # parseLBRSample 1509: the newest entry has no NextLBR -> BR_ONLY.
    "one-entry": ([[(0x401010, 0x401100, False)]],
                  {(0x401010, 0x401100, BR_ONLY): (1, 0)}, 0, 0),
    # parseLBRSample 1509-1514: entry i ends its fall-through at the From
    # of the next newer entry; each trace counts 1 and its mispredict bit.
    "chain-of-three": ([[(0x401300, 0x401400, True),
                         (0x401200, 0x401280, False),
                         (0x401010, 0x401100, True)]],
                       {(0x401300, 0x401400, BR_ONLY): (1, 1),
                        (0x401200, 0x401280, 0x401300): (1, 0),
                        (0x401010, 0x401100, 0x401200): (1, 1)}, 0, 0),
    # parseLBRSample 1512-1513: a loop's repeated trace adds up in TraceMap;
    # nothing special for duplicates or for the oldest (loop entry) branch.
    "loop": ([[(0x401050, 0x401020, False)] * 4 + [(0x401000, 0x401020, True)]],
             {(0x401050, 0x401020, BR_ONLY): (1, 0),
              (0x401050, 0x401020, 0x401050): (3, 0),
              (0x401000, 0x401020, 0x401050): (1, 1)}, 0, 0),
    # parseBranchSample 1142-1143 with ignoreKernelInterrupt 1418-1420: an
    # interrupt's two entries (user -> kernel, kernel -> user) are dropped
    # before pairing, so the older trace's fall-through runs to the next
    # kept entry's From (0x401300), across the interrupt.
    "interrupt-in-the-middle": ([[(0x401300, 0x401400, False),
                                  (K_EXIT, 0x401250, False),
                                  (0x401250, K_ENTRY, False),
                                  (0x401200, 0x401240, True)]],
                                {(0x401300, 0x401400, BR_ONLY): (1, 0),
                                 (0x401200, 0x401240, 0x401300): (1, 1)}, 2, 0),
    # The same drop at the newest position (1142-1143), then 1509: the
    # newest KEPT entry gets BR_ONLY, not the From of the dropped syscall.
    "kernel-newest": ([[(K_EXIT, 0x401500, False),
                        (0x401490, K_ENTRY, False),
                        (0x401400, 0x401480, False)]],
                      {(0x401400, 0x401480, BR_ONLY): (1, 0)}, 2, 0),
    # parseBranchEvents 1611-1613: a sample with no entry, or none left
    # after the kernel filter, is a NumSamplesNoLBR and gives no trace.
    "empty-and-kernel-only": ([[], [(K_EXIT, K_ENTRY, False),
                                    (K_EXIT, 0x401000, True)]], {}, 2, 2),
    # ignoreKernelInterrupt 1420: `>= KernelBaseAddr` (0xffff800000000000,
    # DataAggregator.h); the address below it is still user space.
    "kernel-boundary": ([[(0xffff7fffffffeff0, 0xffff7ffffffff000, False),
                          (0xffff800000000000, 0x401000, False),
                          (0x401000, 0xffff7fffffffffff, True)]],
                        {(0xffff7fffffffeff0, 0xffff7ffffffff000, BR_ONLY): (1, 0),
                         (0x401000, 0xffff7fffffffffff, 0xffff7fffffffeff0): (1, 1)},
                        1, 0),
    # parseLBREntry 1072 ('M' is a mispredict) and parseLBRSample 1514:
    # mispredicts add up per trace across samples.
    "mispredicts-across-samples": ([[(0x401010, 0x401100, True)],
                                    [(0x401010, 0x401100, False)],
                                    [(0x401010, 0x401100, True)]],
                                   {(0x401010, 0x401100, BR_ONLY): (3, 2)}, 0, 0),
}


@pytest.mark.parametrize("name", list(GOLDEN))
def test_golden(name, workload_nopie):
    """The golden cases' addresses are in the non-PIE workload's code
    (linked at 0x401000), the ones near the kernel boundary in none."""
    stacks, expected, kernel_branches, empty = GOLDEN[name]
    assert rules.aggregate(stacks)[0] == expected       # the reference agrees
    (lo, hi, _), = code_ranges(workload_nopie, 0)
    assert lo <= 0x401000 and 0x401500 < hi
    cpu = cpus()[-1]
    with Replayer([(workload_nopie, 0)], max_entries=64) as rep:
        rep.feed(stacks, cpu=cpu)
        assert_profiles(rep, expected)
        st = rep.stats()
    assert (st["kernel_branches"], st["empty_stacks"]) == (kernel_branches, empty)
    assert st["traces"] == sum(c for c, _ in expected.values())
    assert st["samples"] == len(stacks)


# --- 3. a full trace map loses exactly what it refuses ----------------------

def test_full_map_loses_exactly_the_excess(workload_pie):
    """--max-entries M gives a table of S = 4M/3 slots; S + K distinct
    traces: exactly K are refused (each a failed insert, one lost count),
    the first S are kept with exact counts. With S below the probe limit
    (MAX_PROBES), a free slot is found wherever it is, so the table takes
    exactly S traces."""
    from ebpf_bolt.layout import MAX_PROBES, table_slots
    m, k = 150, 37
    s = table_slots(m)
    assert m < s <= MAX_PROBES
    (lo, hi, _), = code_ranges(workload_pie, LOAD_BASE)
    distinct = [[(lo + 8 * i, lo + 0x10000 + 8 * i, i % 3 == 0)]
                for i in range(s + k)]
    assert lo + 0x10000 + 8 * (s + k) < hi
    cs = cpus()
    with Replayer([(workload_pie, LOAD_BASE)], max_entries=m) as rep:
        rep.feed(distinct, cpu=cs[0])
        st = rep.stats()
        assert (st["map_full"], st["traces_lost"], st["update_failed"]) == (k, k, 0)
        assert len(rep.profile().traces) == s
        assert_profiles(rep, rules.aggregate(distinct[:s])[0], lossless=False)
        # every CPU again: stored traces count on, each refused one is lost again
        for cpu in cs:
            rep.feed(distinct, cpu=cpu)
        st = rep.stats()
        lost = k * (1 + len(cs))
        assert (st["map_full"], st["traces_lost"],
                st["update_failed"]) == (lost, lost, 0)
        assert_profiles(rep, rules.scale(rules.aggregate(distinct[:s])[0],
                                         1 + len(cs)), lossless=False)
        assert st["traces"] - st["traces_lost"] == s * (1 + len(cs))


def test_room_given_is_kept(workload_pie):
    """--max-entries M: M distinct traces, however their addresses fall,
    are all kept (the table has 4M/3 slots: probing finds room)."""
    m = 20000
    rng = random.Random(SEED + 7)
    (lo, hi, _), = code_ranges(workload_pie, LOAD_BASE)
    pairs = set()
    while len(pairs) < m:
        pairs.add((rng.randrange(lo, hi), rng.randrange(lo, hi)))
    distinct = [[(f, t, False)] for f, t in sorted(pairs)]
    with Replayer([(workload_pie, LOAD_BASE)], max_entries=m) as rep:
        rep.feed(distinct, cpu=cpus()[0])
        st = rep.stats()
        assert (st["map_full"], st["traces_lost"]) == (0, 0)
        assert_profiles(rep, rules.aggregate(distinct)[0])


# --- 4. both dialects, read by the real perf2bolt ---------------------------

INSN = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$")
TARGET = re.compile(r"^([0-9a-f]+) <")


def disassemble(binary, function):
    """[(addr, mnemonic, target or None, operands)] of one function."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn",
                          f"--disassemble={function}", str(binary)],
                         check=True, capture_output=True, text=True).stdout
    insns = []
    for line in out.splitlines():
        m = INSN.match(line)
        if m:
            t = TARGET.match(m.group(3))
            insns.append((int(m.group(1), 16), m.group(2),
                          int(t.group(1), 16) if t else None, m.group(3)))
    assert insns, f"{function} not found in {binary}"
    return insns


def is_branch(mnemonic):
    return mnemonic.startswith("j") or mnemonic.startswith(("call", "ret"))


def walk_stacks(binary, function, n, load_base, seed):
    """Branch stacks of real executions of `function`: start at one of its
    taken jumps, run straight to the next branch, take it (or fall through
    a conditional one), and so on; newest entry first, runtime addresses."""
    insns = [i[:3] for i in disassemble(binary, function)]
    lo, hi = insns[0][0], insns[-1][0]
    jumps = [i for i, (a, op, t) in enumerate(insns)
             if op.startswith("j") and t is not None and lo <= t <= hi]
    index = {a: i for i, (a, _, _) in enumerate(insns)}
    rng = random.Random(seed)
    stacks = []
    for _ in range(n):
        i = rng.choice(jumps)
        taken = [(insns[i][0], insns[i][2])]
        depth = rng.randrange(1, 33)
        while len(taken) < depth:
            j = index[taken[-1][1]]
            while True:
                a, op, t = insns[j]
                if is_branch(op):
                    if op.startswith("ret") or t is None or not lo <= t <= hi:
                        break
                    if op == "jmp" or rng.random() < 0.6:
                        break                   # taken
                j += 1                          # not taken: falls through
            if op.startswith("ret") or t is None or not lo <= t <= hi:
                break
            taken.append((a, t))
        stacks.append([(f + load_base, t + load_base, rng.random() < 0.25)
                       for f, t in reversed(taken)])
    return stacks


def perf2bolt(version, preagg_file, binary, out):
    res = run([bolt_tool(version, "perf2bolt"), "--pa", "-p", str(preagg_file),
               "-o", str(out), str(binary)])
    report = res.stdout + res.stderr
    assert res.returncode == 0, report
    assert "ERROR" not in report and "expected" not in report, report
    for what in ("traces mismatching disassembled function contents",
                 "out of range traces involving unknown regions"):
        m = re.search(what + r": (\d+)", report, re.I)
        assert m and m.group(1) == "0", f"{what}:\n{report}"
    lines = out.read_text().splitlines()
    assert lines, f"perf2bolt {version} wrote an empty profile"
    return lines


def dialect_fdata(prof, binary, tmp_path):
    """perf2bolt's fdata of the profile written as T records (LLVM 22) and
    as B/F records (LLVM 22 and 19); the inputs stay in tmp_path as
    t.preagg and bf.preagg."""
    t_file, bf_file = tmp_path / "t.preagg", tmp_path / "bf.preagg"
    t_file.write_text(prof.render("preagg"))
    bf_file.write_text(prof.render("preagg-bf"))
    return (perf2bolt(22, t_file, binary, tmp_path / "t22.fdata"),
            perf2bolt(22, bf_file, binary, tmp_path / "bf22.fdata"),
            perf2bolt(19, bf_file, binary, tmp_path / "bf19.fdata"))


def without_mispreds(fdata_lines):
    """fdata branch lines `is_sym name off is_sym name off mispreds count`
    with the mispreds column left out, sorted."""
    return sorted(tuple(f[:6] + f[7:]) for f in (l.split() for l in fdata_lines))


def mispreds(fdata_lines):
    return sum(int(l.split()[6]) for l in fdata_lines)


def test_dialects_read_alike(workload_pie, tmp_path):
    """preagg (T) through bolt-22's perf2bolt and llvm-bolt, preagg-bf (B/F)
    through bolt-19's and bolt-22's perf2bolt: the same fdata, except the
    mispredict column, which T cannot carry on LLVM 22."""
    stacks = walk_stacks(workload_pie, "hot_a", 400, LOAD_BASE, SEED)
    prof = replay(workload_pie, stacks, LOAD_BASE, max_entries=ENTRIES,
                  cpus=cpus())
    # every branch of hot_a is inside the binary: the load base comes off
    assert_same_traces(prof.traces, {
        (f - LOAD_BASE, t - LOAD_BASE, e if e == BR_ONLY else e - LOAD_BASE): v
        for (f, t, e), v in rules.aggregate(stacks)[0].items()})
    t22, bf22, bf19 = dialect_fdata(prof, workload_pie, tmp_path)
    assert without_mispreds(t22) == without_mispreds(bf22)
    assert sorted(bf19) == sorted(bf22)
    assert mispreds(t22) == 0
    total_mispreds = sum(m for _, m in prof.traces.values())
    assert total_mispreds > 0 and mispreds(bf22) == total_mispreds
    # more lines than taken branches: fall-through edges (through not-taken
    # conditionals, doTrace) are there too
    assert len(t22) > len({(f, t) for f, t, _ in prof.traces})
    res = run([bolt_tool(22, "llvm-bolt"), str(workload_pie), "--pa", "-p",
               str(tmp_path / "t.preagg"), "-o", str(tmp_path / "bolted")])
    report = res.stdout + res.stderr
    assert res.returncode == 0 and "ERROR" not in report, report
    assert bolt_profiled_functions(report) >= 1, report


def call_return_site(binary, function="main"):
    """A call to a shared library (through the PLT) whose return address
    starts a basic block (it is also a jump target), and the jump that
    ends the straight-line code there: (return address, jump, its target)."""
    insns = disassemble(binary, function)
    targets = {t for _, op, t, _ in insns if op.startswith("j") and t}
    for i, (a, op, t, operands) in enumerate(insns[:-1]):
        ret_addr = insns[i + 1][0]
        if not (op.startswith("call") and "@plt>" in operands
                and ret_addr in targets):
            continue
        b, op2, t2, _ = next(x for x in insns[i + 1:] if is_branch(x[1]))
        if op2.startswith("j") and t2:
            return ret_addr, b, t2
    raise AssertionError(f"no PLT call followed by a block start in {function}")


def test_dialects_agree_on_return_from_outside(workload_pie, tmp_path):
    """A return from a shared library into the binary: the trace (0, R, N)
    starts at R, right after a call. perf2bolt credits the fall-through from
    the call's block into R for a T record (getFallthroughsInTrace 931-947:
    the branch source is outside the function); the B/F form can say the
    same only with an `f` record (external origin), an `F` record loses that
    edge on LLVM 19 and 22 (tried)."""
    ret_addr, nxt, nxt_target = call_return_site(workload_pie)
    stack = [(nxt + LOAD_BASE, nxt_target + LOAD_BASE, False),
             (OTHER_OBJECT[2], ret_addr + LOAD_BASE, True)]
    prof = replay(workload_pie, [stack] * 5, LOAD_BASE, max_entries=64)
    assert prof.traces == {(0, ret_addr, nxt): (5, 5),
                           (nxt, nxt_target, BR_ONLY): (5, 0)}
    t22, bf22, bf19 = dialect_fdata(prof, workload_pie, tmp_path)
    assert without_mispreds(bf22) == without_mispreds(t22), (
        "preagg-bf lost the call -> return fall-through: the writer should "
        f"write 'f {ret_addr:x} {nxt:x}', not 'F', for a trace from outside;"
        f"\n{(tmp_path / 'bf.preagg').read_text()}")
    assert sorted(bf19) == sorted(bf22)


# --- 5. the command line ----------------------------------------------------

def brstack_line(stack, rng):
    """One sample as perf script -F brstack prints it, in either form."""
    out = []
    for frm, to, mis in stack:
        flag = "M" if mis else "P"
        if rng.random() < 0.5:
            out.append(f"0x{frm:x}/0x{to:x}/{flag}/-/-/0")
        else:
            out.append(f"0x{frm:x}/0x{to:x}/{flag}/-/-/0/COND/-")
    return " ".join(out)


@pytest.fixture(scope="module")
def brstack_text(workload_pie):
    rng = random.Random(SEED + 2)
    stacks = walk_stacks(workload_pie, "hot_a", 150, LOAD_BASE, SEED + 3)
    pools = Pools(workload_pie, LOAD_BASE, rng)
    stacks += [pools.random_stack(rng, rng.randrange(0, 40)) for _ in range(50)]
    rng.shuffle(stacks)
    text = "# perf script -F brstack\n\n" + "".join(
        brstack_line(s, rng) + "\n" for s in stacks)
    parsed = [[rules.parse_brstack_entry(tok) for tok in line.split()]
              for line in text.splitlines() if line and not line.startswith("#")]
    assert parsed == [[(f, t, bool(m)) for f, t, m in s] for s in stacks]
    return text, stacks


CLI_CASES = [  # (via, source, format): each way in, each format, once
    ("command", "file", "preagg"), ("command", "stdin", "preagg-bf"),
    ("main", "file", "preagg-bf"), ("main", "stdin", "preagg")]


@pytest.mark.parametrize("via,source,fmt", CLI_CASES,
                         ids=["-".join(c) for c in CLI_CASES])
def test_cli_replay(workload_pie, brstack_text, ebpf_bolt_cmd, tmp_path,
                    monkeypatch, capsys, via, source, fmt):
    text, stacks = brstack_text
    expected = replay(workload_pie, stacks, LOAD_BASE, max_entries=4096).render(fmt)
    stacks_file = tmp_path / "stacks.txt"
    stacks_file.write_text(text)
    out = tmp_path / "out.preagg"
    args = ["replay", "--binary", str(workload_pie), "--load-base",
            hex(LOAD_BASE), "-o", str(out), "--format", fmt,
            "--max-entries", "4096"]
    if source == "file":
        args.append(str(stacks_file))
    if via == "command":
        res = run([ebpf_bolt_cmd] + args,
                  input=text if source == "stdin" else None)
        assert res.returncode == 0, res.stderr
        stderr = res.stderr
    else:
        if source == "stdin":
            monkeypatch.setattr(sys, "stdin", io.StringIO(text))
        assert cli.main(args) == 0
        stderr = capsys.readouterr().err
    assert records(out.read_text()) == records(expected), stderr
    assert f"replayed {len(stacks):,} branch stacks" in stderr


def test_cli_replay_to_stdout(workload_pie, brstack_text, ebpf_bolt_cmd):
    text, stacks = brstack_text
    res = run([ebpf_bolt_cmd, "replay", "--binary", str(workload_pie),
               "--load-base", f"{LOAD_BASE:x}", "--max-entries", "4096"],
              input=text)
    assert res.returncode == 0, res.stderr
    expected = replay(workload_pie, stacks, LOAD_BASE, max_entries=4096)
    assert records(res.stdout) == records(expected.render("preagg")), res.stderr


# --- 6. several objects: per-object translation in the kernel ---------------

LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
LIBC_BASE = 0x7ffff7c00000     # where a usual x86-64 process maps libc


@pytest.fixture(scope="module")
def three_objects(workload_pie, workload_nopie):
    """A PIE, a non-PIE executable and a shared library, each where a
    loader puts it."""
    assert os.path.exists(LIBC), f"{LIBC} missing"
    return [(str(workload_pie), LOAD_BASE), (str(workload_nopie), 0),
            (LIBC, LIBC_BASE)]


def crossing_stacks(objects, n, seed):
    """Random stacks whose entries jump between the objects (calls into the
    library and back), to addresses in none (0, 0x10, the last user
    address, between and just past the objects' code) and to the kernel."""
    rng = random.Random(seed)
    inside, outside = [], [0, 0x10, LAST_USER, 0x7f3a12345000]
    for path, base in objects:
        for lo, hi, _ in code_ranges(path, base):
            inside.append([lo, hi - 1] + [rng.randrange(lo, hi)
                                          for _ in range(200)])
            outside += [lo - 1, hi]

    def user():
        if rng.random() < 0.1:
            return rng.choice(outside)
        return rng.choice(rng.choice(inside))

    def entry():
        r = rng.random()
        if r < 0.05:
            return rng.choice(KERNEL), user(), False
        if r < 0.1:
            return user(), rng.choice(KERNEL), False
        return user(), user(), rng.random() < 0.2

    stacks = []
    for _ in range(n):
        stack = [entry() for _ in range(rng.choice((1, 2, 8, 16, 32, 64)))]
        if rng.random() < 0.3:   # a loop crossing objects, repeated
            stack = (stack[:rng.randrange(1, 4)] * 32)[:64]
        stacks.append(stack)
    return stacks


def test_stacks_crossing_objects(three_objects):
    """Each object's profile equals the reference seen from that object,
    counts and mispredicts, with the stacks spread over every CPU; the
    traces in no object are dropped and counted, and each profile's count
    plus what it leaves out is every trace."""
    objects = three_objects
    stacks = crossing_stacks(objects, 4000, SEED + 6)
    expected, counters = rules.aggregate(stacks)
    cs = cpus()
    assert len(cs) >= 2, "the test spreads stacks over two CPUs at least"
    with Replayer(objects, max_entries=ENTRIES) as rep:
        for i, cpu in enumerate(cs):
            rep.feed(stacks[i::len(cs)], cpu=cpu)
        profiles = assert_profiles(rep, expected)
        assert_counters(rep.stats(), counters)
    total = sum(c for c, _ in expected.values())
    for prof in profiles:
        assert prof.traces, f"{prof.binary} got no trace"
        assert any(f == 0 for f, _, _ in prof.traces)      # entered from outside
        assert any(t == 0 for _, t, _ in prof.traces)      # left for outside
        assert prof.total() + prof.stats["traces_outside_binary"] == total
    assert profiles[0].stats["traces_outside"] > 0
    # the same through replay_objects, the API the CLI uses
    again = replay_objects(objects, stacks, max_entries=ENTRIES, cpus=cs)
    assert [dict(p.traces.items()) for p in again] == \
        [dict(p.traces.items()) for p in profiles]


def test_ranges_are_each_segment_at_its_load_base(three_objects):
    """procs[0]: one range per code segment, delta such that addr - delta
    is the file offset, objects numbered in the order given."""
    from ebpf_bolt.replay import _objects, object_ranges
    proc = object_ranges(_objects(three_objects))
    got = sorted((r.start, r.end, r.delta, r.object) for r in proc.range
                 if r.end)
    want = []
    for oid, (path, base) in enumerate(three_objects, 1):
        for s in ElfFile(path).text_segments():
            start = base + s.vaddr
            want.append((start, start + s.filesz, start - s.offset, oid))
    assert got == sorted(want)


def test_replay_refuses_more_ranges_than_a_process_holds(tmp_path):
    from ebpf_bolt.elf import Segment
    from ebpf_bolt.errors import UsageError
    from ebpf_bolt.layout import PROC_RANGES
    from ebpf_bolt.replay import object_ranges

    class Elf:
        def __init__(self, n):
            self.segs = [Segment(0x10000 * i, 0x100, 0x10000 * i, 0x100, 5)
                         for i in range(n)]

        def text_segments(self):
            return self.segs
    object_ranges([("a", Elf(PROC_RANGES - 1), 0), ("b", Elf(1), 1 << 40)])
    with pytest.raises(UsageError) as e:
        object_ranges([("a", Elf(PROC_RANGES), 0), ("b", Elf(1), 1 << 40)])
    assert f"{PROC_RANGES + 1} executable segments in 2 objects" in str(e.value)
    with pytest.raises(UsageError) as e:   # b's code lies in a's
        object_ranges([("a", Elf(2), 0), ("b", Elf(1), 0x10080)])
    assert "a and b overlap" in str(e.value)
    with pytest.raises(UsageError) as e:
        object_ranges([("a", Elf(1), rules.KERNEL_BASE_ADDR - 0x80)])
    assert "past user space" in str(e.value)


def _with_output_directory(monkeypatch):
    """output.OutputDirectory and profile_names where main has them; until
    they land (another branch), a stand-in with their API writing plain
    files, so that what replay gives them is checked all the same."""
    import json
    from ebpf_bolt import output
    if hasattr(output, "OutputDirectory"):
        return

    class StandIn:
        def __init__(self, path, inputs=()):
            self.path, self.files = path, {}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def add(self, name, text):
            self.files[name] = text

        def commit(self, index):
            os.makedirs(self.path, exist_ok=True)
            for name, text in self.files.items():
                with open(os.path.join(self.path, name), "w") as f:
                    f.write(text)
            with open(os.path.join(self.path, "index.json"), "w") as f:
                json.dump(index, f)

    def names(items):
        return [f"{base}.{fmt}" for base, _, fmt in items]
    monkeypatch.setattr(output, "OutputDirectory", StandIn, raising=False)
    monkeypatch.setattr(output, "profile_names", names, raising=False)


def test_cli_replays_several_objects_on_both_cpus(three_objects, tmp_path,
                                                   monkeypatch, capsys):
    """--binary PATH@LOAD_BASE, repeated, with --cpu on two CPUs: one
    profile per object in the -o directory, each what the reference gives
    for that object, and index.json naming them."""
    import json
    cs = cpus()
    assert len(cs) >= 2
    objects = three_objects
    stacks = crossing_stacks(objects, 600, SEED + 7)
    rng = random.Random(SEED + 8)
    (tmp_path / "stacks.txt").write_text(
        "".join(brstack_line(s, rng) + "\n" for s in stacks))
    _with_output_directory(monkeypatch)
    out = tmp_path / "profiles"
    args = ["replay", str(tmp_path / "stacks.txt"), "-o", str(out),
            "--max-entries", "65536", "--format", "preagg-bf",
            "--cpu", str(cs[0]), "--cpu", str(cs[1])]
    for path, base in objects:
        args += ["--binary", f"{path}@{base:x}"]
    assert cli.main(args) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert f"replayed {len(stacks):,} branch stacks" in err
    index = json.loads((out / "index.json").read_text())["objects"]
    assert [e["path"] for e in index] == [p for p, _ in objects]
    runtime, _ = rules.aggregate(stacks)
    from ebpf_bolt.profile import Profile
    for (path, base), entry in zip(objects, index):
        expected, _ = rules.object_view(runtime, code_ranges(path, base))
        assert entry["samples"] == sum(c for c, _ in expected.values()) > 0
        want = Profile(path, "cycles", "lbr", traces=expected)
        assert records((out / entry["profile"]).read_text()) == \
            records(want.render("preagg-bf"))
        # libc is stripped: no command applies a profile to it
        assert (entry["command"] is None if path == LIBC
                else entry["profile"] in entry["command"])


def test_cli_fdata_of_several_objects_keeps_one_perf2bolt_refuses(
        three_objects, tmp_path, monkeypatch, capsys):
    """--format fdata (made by perf2bolt) of several objects, one of which
    perf2bolt refuses (libc: stripped): the others get fdata, libc its
    preagg-bf records with a warning saying why, and the run succeeds;
    before, the refusal lost every object's profile."""
    import json
    objects = three_objects
    stacks = crossing_stacks(objects, 300, SEED + 9)
    rng = random.Random(SEED + 10)
    (tmp_path / "stacks.txt").write_text(
        "".join(brstack_line(s, rng) + "\n" for s in stacks))
    _with_output_directory(monkeypatch)
    out = tmp_path / "profiles"
    args = ["replay", str(tmp_path / "stacks.txt"), "-o", str(out),
            "--max-entries", "65536", "--format", "fdata"]
    for path, base in objects:
        args += ["--binary", f"{path}@{base:x}"]
    assert cli.main(args) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert re.search(rf"warning: {re.escape(LIBC)}: perf2bolt could not make "
                     r"the fdata profile: .*; its preagg-bf records are "
                     r"written instead", err), err
    index = json.loads((out / "index.json").read_text())["objects"]
    runtime, _ = rules.aggregate(stacks)
    from ebpf_bolt.profile import Profile
    for (path, base), entry in zip(objects, index):
        text = (out / entry["profile"]).read_text()
        if path == LIBC:
            expected, _ = rules.object_view(runtime, code_ranges(path, base))
            want = Profile(path, "cycles", "lbr", traces=expected)
            assert entry["profile"].endswith("preagg-bf")
            assert records(text) == records(want.render("preagg-bf"))
        else:   # fdata branches: "K name offset K name offset mis count"
            assert entry["profile"].endswith("fdata")
            assert all(re.match(r"[012] \S+ [0-9a-f]+ [012] \S+ [0-9a-f]+ "
                                r"\d+ \d+$", line)
                       for line in text.splitlines()), text[:300]


@pytest.mark.parametrize("args,says", [
    (["--binary", "A@1000", "--binary", "B@2000", "--load-base", "0"],
     "--load-base with 2 --binary"),
    (["--binary", "A@1000", "--load-base", "2000"], "has a load base"),
    (["--binary", "A@zz"], "invalid load base in --binary A@zz 'zz'"),
    (["--binary", "A@1000", "--binary", "B@2000"], "-o must name a directory"),
])
def test_cli_replay_object_arguments(args, says, capsys, tmp_path,
                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["replay", *args]) == 2
    err = capsys.readouterr().err
    assert says in err and "hint:" in err, err


def test_cli_load_base_spellings_agree(workload_pie, tmp_path, capsys):
    """--binary BIN --load-base HEX and --binary BIN@HEX: the same profile."""
    stacks = tmp_path / "s.txt"
    stacks.write_text(brstack_line(
        walk_stacks(workload_pie, "hot_a", 1, LOAD_BASE, SEED)[0],
        random.Random(1)) + "\n")
    outs = []
    for i, args in enumerate((["--binary", str(workload_pie), "--load-base",
                               hex(LOAD_BASE)],
                              ["--binary", f"{workload_pie}@{LOAD_BASE:x}"])):
        out = tmp_path / f"{i}.preagg"
        assert cli.main(["replay", str(stacks), "-o", str(out), *args,
                         "--max-entries", "1024"]) == 0
        outs.append(records(out.read_text()))
    assert outs[0] == outs[1] and len(outs[0][1]) > 0
