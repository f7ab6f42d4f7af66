"""--interval: windows that add up, key by key, to the whole.

The kernel counts into one of two sets of tables and caches, chosen
through an array of maps (active_set); ending a window switches the set,
flushes the old set's caches into the old set's tables, drains them and
clears them (BoltObject.switch_set, clear_set). Replayed stacks and IPs cut
into many windows, a switch falling inside a run of identical stacks,
must sum to one replay of the same input, count for count."""
import os
import random
from collections import Counter

import pytest

import perf2bolt_rules as rules
from ebpf_bolt.replay import Replayer
from ip_replayer import IpReplayer
from test_replay import LOAD_BASE, make_stacks

pytestmark = [pytest.mark.root, pytest.mark.kernel_matrix]

SEED = 20261204
ENTRIES = 1 << 17


def cpus():
    return sorted(os.sched_getaffinity(0))


def add_traces(total, traces):
    for key, (count, mispreds) in traces.items():
        c, m = total.get(key, (0, 0))
        total[key] = (c + count, m + mispreds)


@pytest.fixture(scope="module")
def window_stacks(workload_pie):
    """Random and loop stacks with a run of 600 identical stacks in the
    middle (a hot loop sampled over and over): its traces sit in the trace
    cache, pending, when a window ends inside the run."""
    stacks = make_stacks(workload_pie, LOAD_BASE, n=2400, seed=SEED)
    hot = max(stacks, key=len)[:32]
    return stacks[:1200] + [hot] * 600 + stacks[1200:]


def cuts(n, windows, rng, inside):
    """`windows - 1` cut points in range(1, n), one of them at `inside`."""
    points = set(rng.sample(range(1, n), windows - 2)) | {inside}
    return sorted(points)


def test_replayed_windows_sum_to_the_whole(workload_pie, window_stacks):
    """25 windows (24 switches), on alternating CPUs; one switch falls in
    the run of identical stacks. Their profiles summed key by key equal
    one replay of all the stacks, and perf2bolt's rules."""
    stacks = window_stacks
    rng = random.Random(SEED)
    points = cuts(len(stacks), 25, rng, inside=1200 + 300)
    cs = cpus()
    pie = [(str(workload_pie), LOAD_BASE)]
    with Replayer(pie, max_entries=ENTRIES) as rep:
        rep.feed(stacks, cpu=cs[0])
        whole = dict(rep.profile().traces.items())
    total, windows = {}, 0
    with Replayer(pie, max_entries=ENTRIES, windows=True) as rep:
        for n, (a, b) in enumerate(zip([0] + points, points + [len(stacks)])):
            rep.feed(stacks[a:b], cpu=cs[n % len(cs)])
            if b < len(stacks):
                prof, = rep.end_window()
                add_traces(total, prof.traces)
                windows += 1
        prof, = rep.profiles()   # the last window: the set in use
        add_traces(total, prof.traces)
        windows += 1
        st = rep.stats()
    assert windows == 25
    assert total == whole
    expected, counters = rules.aggregate(stacks)
    view, _ = rules.object_view(expected, [
        (LOAD_BASE + s.vaddr, LOAD_BASE + s.vaddr + s.filesz, LOAD_BASE)
        for s in prof.elf.text_segments()])
    assert total == view
    assert (st["map_full"], st["traces_lost"]) == (0, 0)


def test_both_cpus_at_once_across_windows(workload_pie, window_stacks):
    """Each window replayed on both CPUs at the same time (shared table,
    both CPUs' caches pending at the switch), 21 windows."""
    stacks = window_stacks
    cs = cpus()[:2]
    pie = [(str(workload_pie), LOAD_BASE)]
    with Replayer(pie, max_entries=ENTRIES) as rep:
        for cpu in cs:
            rep.feed(stacks, cpu=cpu)
        whole = dict(rep.profile().traces.items())
    total = {}
    step = -(-len(stacks) // 21)
    with Replayer(pie, max_entries=ENTRIES, windows=True) as rep:
        for i in range(0, len(stacks), step):
            rep.feed_at_once([(cpu, stacks[i:i + step]) for cpu in cs])
            prof, = rep.end_window()
            add_traces(total, prof.traces)
        prof, = rep.profiles()
        assert not prof.traces      # everything went to a window
    assert total == whole


def test_ip_windows_sum_to_the_whole(test_object):
    """IP samples through sample_ip's own code (replay_ips), cut into 30
    windows, one switch inside a run of one hot IP."""
    rng = random.Random(SEED + 1)
    base = 0x555555554000
    ips = [base + 0x1000 + 4 * rng.randrange(1 << 14) for _ in range(40000)]
    ips[20000:20000] = [base + 0x40] * 5000
    points = cuts(len(ips), 30, rng, inside=22500)
    cs = cpus()
    total = Counter()
    with IpReplayer(test_object, max_entries=1 << 16, windows=True) as rep:
        for n, (a, b) in enumerate(zip([0] + points, points + [len(ips)])):
            rep.feed(ips[a:b], cpu=cs[n % len(cs)])
            if b < len(ips):
                total.update(rep.end_window())
        total.update(rep.counts())
        st = rep.stats()
    assert total == Counter(ips)
    assert st["samples"] == len(ips) and st["map_full"] == 0
