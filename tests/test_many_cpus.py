"""Many possible CPUs: the count tables' room does not shrink with them.

The kernel allocates every per-CPU map once per *possible* CPU, online or
not: a host with 192 possible CPUs pays 192 copies. The count tables
(ip_counts, trace_counts) used to be per-CPU hashes, and the 64 MiB budget
then held 21,124 traces or 41,287 IPs at 192 CPUs (per_cpu_hash_room);
they are now tables shared by all CPUs, whose default room (3.1M IPs or
1.26M traces) is the same on any machine.

These tests run in the normal suite (2 CPUs here) and, marked many_cpus,
under Linux 6.1 booted with 192 possible CPUs (2 online) by
`KERNEL_CHECK_APPEND=possible_cpus=192 scripts/kernel-check.sh "" -m
many_cpus tests` (CI), where every per-CPU map is allocated 192 times:
- replay with the default map size, over both CPUs at once: more distinct
  traces (and IPs) than the old design held at 192 CPUs, nothing lost,
  every count exact;
- a recording of a command (IP mode: no PMU in the guest): nothing lost,
  and the summary's kernel memory line against what the kernel reports
  for the recording's maps (test_memory.memory_pairs says what can be
  compared before Linux 6.4).
"""
import os
import random
import re
from collections import Counter

import pytest

import perf2bolt_rules as rules
from ebpf_bolt import cli
from ebpf_bolt.bpf_object import hash_buckets_bytes, possible_cpus
from ebpf_bolt.collector import MAP_BUDGET, Recorder, default_max_entries
from ebpf_bolt.layout import table_room, table_slots
from ebpf_bolt.replay import Replayer
from ip_replayer import IpReplayer
from test_memory import assert_matches_kernel, memory_pairs
from test_replay import LOAD_BASE, assert_profiles, code_ranges

pytestmark = [pytest.mark.root, pytest.mark.many_cpus]

SEED = 20261204
BIG_HOST = 192          # possible CPUs of the host the issue was found on
# the old tables' key and value sizes: a trace (from, to, ft_end) -> (count,
# mispreds); an IP key -> count
OLD_TRACE, OLD_IP = (24, 16), (8, 8)


def cpus():
    return sorted(os.sched_getaffinity(0))


def per_cpu_hash_room(key_size, value_size, ncpus, budget=MAP_BUDGET):
    """Keys a per-CPU hash (the old count tables) had room for within
    `budget` at `ncpus` possible CPUs: the most entries whose kernel memory,
    entries x (value x ncpus + 48 + key + 8) + buckets (kernel/bpf/
    hashtab.c htab_map_mem_usage; what ebpf-bolt's summary counted then),
    fits."""
    def old_bytes(n):
        return n * (value_size * ncpus + 48 + key_size + 8) + \
            hash_buckets_bytes(n)
    lo, hi = 0, budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if old_bytes(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def cpu_list(text):
    """CPU numbers of a kernel CPU list such as 0-1 or 0-3,8-11."""
    out = []
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def two_cpus():
    cs = cpus()
    if len(cs) < 2:
        pytest.skip("needs two CPUs to replay on at once")
    return cs[:2]


def test_possible_cpus_are_the_kernels():
    """possible_cpus(), which sizes every per-CPU map and which the summary
    reports, is the kernel's count of possible CPUs, however many are
    online; with possible_cpus=N on the kernel's command line (the 192-CPU
    guest), it is N."""
    n = possible_cpus()
    with open("/sys/devices/system/cpu/possible") as f:
        assert n == len(cpu_list(f.read()))
    with open("/sys/devices/system/cpu/online") as f:
        assert len(cpu_list(f.read())) <= n
    with open("/proc/cmdline") as f:
        booted = re.search(r"(?:^|\s)possible_cpus=(\d+)", f.read())
    if booted:
        assert n == int(booted.group(1)), (n, booted.group(0))


# --- replay: more distinct keys than the old tables held --------------------

DISTINCT_STACKS = 7500     # of 16 entries: 120,000 distinct traces
DEPTH = 16


def test_more_distinct_traces_than_per_cpu_hashes_held(workload_pie):
    """120,000 distinct traces (the old per-CPU hash held 21,124 at 192
    CPUs), a third of them again, spread over two CPUs replaying at the
    same time, into the default trace table (max_entries None): none lost,
    the profile equal to perf2bolt's rules count for count."""
    rng = random.Random(SEED)
    (lo, hi, _), = code_ranges(workload_pie, LOAD_BASE)
    stacks = [[(rng.randrange(lo, hi), rng.randrange(lo, hi),
                rng.random() < 0.2) for _ in range(DEPTH)]
              for _ in range(DISTINCT_STACKS)]
    repeats = stacks[:DISTINCT_STACKS // 3]
    cs = two_cpus()
    shares = [(cs[0], stacks[0::2] + repeats[1::2]),
              (cs[1], stacks[1::2] + repeats[0::2])]
    expected, counters = rules.aggregate(stacks + repeats)
    assert len(expected) >= 100000
    n = possible_cpus()
    old = per_cpu_hash_room(*OLD_TRACE, max(n, BIG_HOST))
    assert len(expected) > 4 * old, (len(expected), old)
    with Replayer([(workload_pie, LOAD_BASE)]) as rep:
        room = rep.max_entries
        assert rep.obj.ncpus == n
        rep.feed_at_once(shares)
        st = rep.stats()
        assert (st["map_full"], st["traces_lost"], st["update_failed"]) == \
            (0, 0, 0), (st, n, room)
        assert st["traces"] == counters["traces"]
        assert_profiles(rep, expected)
    assert room > old


def test_more_distinct_ips_than_per_cpu_hashes_held(test_object):
    """60,000 distinct IPs (the old per-CPU hash held 41,287 at 192 CPUs),
    each once, then a skewed tail of hot ones, counted on two CPUs at the
    same time through sample_ip's code into the default IP table: every
    count exact, none refused."""
    rng = random.Random(SEED + 1)
    base = 0x555555554000
    distinct = [base + 4 * i for i in range(60000)]
    rng.shuffle(distinct)
    hot = rng.choices(distinct[:500], k=20000)
    cs = two_cpus()
    shares = [(cs[0], distinct[0::2] + hot[0::2]),
              (cs[1], distinct[1::2] + hot[1::2])]
    old = per_cpu_hash_room(*OLD_IP, max(possible_cpus(), BIG_HOST))
    assert len(distinct) > old, (len(distinct), old)
    room = default_max_entries("ip_counts")
    with IpReplayer(test_object, room) as rep:
        assert table_room(rep.obj.map_entries["ip_counts"]) >= room
        rep.feed_at_once(shares)
        got, st = rep.counts(), rep.stats()
    assert (st["map_full"], st["update_failed"]) == (0, 0), (st, room)
    assert got == Counter(distinct + hot)
    assert room > old


# --- a recording: nothing lost, the summary's memory figure ----------------

ICACHE_SCALE = 100    # about 0.7 s on this machine, a few seconds emulated
KERNEL_MEMORY = re.compile(
    r"kernel memory: ([\d.]+) MiB: the IPs' table ([\d.]+) MiB \(([\d,]+) "
    r"slots, shared by all CPUs: room for ([\d,]+) IPs; [\d,]+ updates? past "
    r"the per-CPU caches\), caches and process tables ([\d.]+) MiB \((\d+) "
    r"possible CPUs\)")


def test_recording_loses_nothing_and_reports_its_memory(workload_pie):
    """A command recorded in IP mode with the default map size (the demo's
    icache workload: about a thousand IPs in 0.7 s here): no sample
    refused or lost; the summary's kernel memory line gives the default
    table, the possible CPUs and a figure that matches what the kernel
    reports for the recording's own maps, read while they exist
    (test_memory)."""
    n = possible_cpus()
    argv = [str(workload_pie), "--mode", "icache", "--scale",
            str(ICACHE_SCALE)]
    with Recorder(command=argv, mode="ip") as rec:
        rec.start()
        rec.run()
        pairs = memory_pairs(rec.obj)
        prof = rec.finish()
    st, info = prof.stats, prof.info
    assert rec.stopped_by == "target exited"
    assert (st["map_full"], st["update_failed"]) == (0, 0), st
    assert info["distinct_addresses"] >= 500, info["distinct_addresses"]
    assert prof.total() >= 0.9 * (st["samples"] - st["other_process"] -
                                  st["before_exec"]), st
    line, = [l for l in cli.summary_lines(prof, "fdata", "out.fdata", "x\n")
             if l.startswith("kernel memory:")]
    m = KERNEL_MEMORY.match(line)
    assert m, line
    total, table, slots, room, rest, ncpus = m.groups()
    entries = default_max_entries("ip_counts")
    assert int(room.replace(",", "")) == info["map_entries"] >= entries
    assert int(slots.replace(",", "")) == table_slots(entries)
    assert int(ncpus) == n
    mib = {what: f"{value / 2**20:.2f}" for what, value in (
        ("total", info["kernel_bytes"]), ("table", info["table_bytes"]),
        ("rest", info["kernel_bytes"] - info["table_bytes"]))}
    assert (total, table, rest) == (mib["total"], mib["table"], mib["rest"])
    # the figures the line gives are the ones compared with the kernel
    figures = {what: figure for what, figure, _ in pairs}
    assert figures.get("every map", info["kernel_bytes"]) == \
        info["kernel_bytes"]
    assert figures.get("ip_counts", info["table_bytes"]) == \
        info["table_bytes"]
    assert_matches_kernel(pairs)
