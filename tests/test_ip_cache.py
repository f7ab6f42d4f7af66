"""Exactness of the IP cache (sample_ip's per-CPU table in front of the
IP map): IPs are counted through the kernel's own code (replay_ips, in the
tests' build of the object, shares count_ip with sample_ip) with the thread pinned to each CPU, and the
drained counts must equal, sample for sample, a plain count of the IPs,
whatever the table size (1 slot: every other IP collides) and however
full the map."""
import os
import random
import struct
from collections import Counter

import pytest

from ebpf_bolt.layout import IP_SLOT_FORMAT, REPLAY_IPS, USER_ADDR_END
from ip_replayer import IpReplayer

pytestmark = pytest.mark.root

SEED = 20261126
BASE = 0x555555554000


def cpus():
    return sorted(os.sched_getaffinity(0))


def skewed_ips(rng, n, distinct):
    """n samples over `distinct` IPs of a code range, a few of them hot (as
    loops make them), the rest a long tail."""
    ips = [BASE + 0x1000 + 4 * rng.randrange(1 << 16) for _ in range(distinct)]
    weights = [1 / (i + 1) for i in range(distinct)]
    return rng.choices(ips, weights, k=n)


@pytest.mark.parametrize("slots", [1, 2, 16, None])
def test_counts_equal_a_plain_count(slots, test_object):
    rng = random.Random(SEED + (slots or 0))
    expected = Counter()
    with IpReplayer(test_object, max_entries=1 << 14, slots=slots) as rep:
        for cpu in cpus():
            ips = skewed_ips(rng, 3 * REPLAY_IPS + 123, 2000)
            rep.feed(ips, cpu=cpu)
            expected.update(ips)
        # interleaved pairs: with one slot they take it from each other
        pair = [BASE + 0x10, BASE + 0x20] * 500 + [BASE + 0x10] * 7
        rep.feed(pair, cpu=cpus()[0])
        expected.update(pair)
        # the table is in use: counts wait in slots, not all in the map
        pending = sum(count for cpu in cpus() for _, count, credit in
                      struct.iter_unpack(IP_SLOT_FORMAT, rep.obj.cpu_table("ip_cache", cpu))
                      if credit)
        assert pending > 0
        assert rep.counts() == expected
        st = rep.stats()
    assert st["samples"] == sum(expected.values())
    assert (st["map_full"], st["update_failed"], st["kernel_ip"]) == (0, 0, 0)


@pytest.mark.parametrize("slots", [1, None], ids=["no-cache", "cache"])
def test_cpus_at_once_count_exactly(slots, test_object):
    """Two CPUs count IPs at the same time (a thread pinned to each) into
    the one IP table: first sightings race to claim slots and hot IPs
    take atomic adds from both; no count is lost or stored twice. With a
    1-slot cache nearly every sample goes to the table."""
    cs = cpus()
    if len(cs) < 2:
        pytest.skip("needs two CPUs to count on at once")
    rng = random.Random(SEED + 5)
    # 20,000 first sightings each, in disjoint interleaved sets (their
    # claims race for the same free slots: a claim by a plain store lost
    # counts in every trial), then skewed repeats of a shared set
    firsts = [BASE + 8 * i for i in range(40000)]
    shares = [(cpu, firsts[n::2] + skewed_ips(rng, 10 * REPLAY_IPS, 3000))
              for n, cpu in enumerate(cs[:2])]
    with IpReplayer(test_object, max_entries=50000, slots=slots) as rep:
        (a0, a1), (b0, b1) = rep.feed_at_once(shares)
        assert a0 < b1 and b0 < a1   # in the kernel at the same time
        got, st = rep.counts(), rep.stats()
    expected = Counter(shares[0][1]) + Counter(shares[1][1])
    assert got == expected
    assert (st["map_full"], st["update_failed"]) == (0, 0)


def test_cpus_hammering_the_same_ips(test_object):
    """The worst case for a shared counter: both CPUs count the same 64
    IPs over and over through a 1-slot cache (so nearly every sample adds
    to the table), 320,000 samples each, in 3 trials: every count
    arrives."""
    cs = cpus()
    if len(cs) < 2:
        pytest.skip("needs two CPUs to count on at once")
    hot = [BASE + 0x40 * i for i in range(64)] * 5000
    for _ in range(3):
        with IpReplayer(test_object, max_entries=1 << 10, slots=1) as rep:
            (a0, a1), (b0, b1) = rep.feed_at_once([(cs[0], hot), (cs[1], hot)])
            assert a0 < b1 and b0 < a1   # in the kernel at the same time
            assert rep.counts() == Counter(hot * 2)


def keys_at(first_slot, slots, n, rng):
    """n IP keys whose first slot, in a table of `slots`, is `first_slot`:
    the kernel's hash (table_add_ip: the high half of ip x K, scaled to the
    table) run backwards, to build the worst case for claims."""
    k_inv = pow(0x9E3779B97F4A7C15, -1, 1 << 64)
    lo = -(-(first_slot << 32) // slots)
    hi = -(-((first_slot + 1) << 32) // slots)
    keys = []
    while len(keys) < n:
        ip = ((rng.randrange(lo, hi) << 32) | rng.getrandbits(32)) * k_inv \
            % (1 << 64)
        if 0 < ip < USER_ADDR_END:
            keys.append(ip)
    return keys


def test_claims_racing_for_one_slot_lose_nothing(test_object):
    """Two CPUs insert different new IPs whose first slot is the same, at
    the same time: each insert walks the same cluster to its end and
    claims the free slot there, so both CPUs race for every slot they
    take. 100 groups of 200 such IPs, one CPU going through the groups
    forwards and the other backwards, so that they meet on a group
    whatever their start times. A claim made by a plain store instead of
    cmpxchg lost counts in 3 of 10 trials; 40 trials here."""
    from ebpf_bolt.layout import table_slots
    cs = cpus()
    if len(cs) < 2:
        pytest.skip("needs two CPUs to count on at once")
    room = 150000
    slots = table_slots(room)
    rng = random.Random(SEED + 9)
    firsts = [j * (slots // 100) for j in range(100)]
    groups = [keys_at(s, slots, 200, rng) for s in firsts]
    forwards = [k for g in groups for k in g[0::2]]
    backwards = [k for g in reversed(groups) for k in g[1::2]]
    expected = Counter(forwards + backwards)
    for _ in range(40):
        with IpReplayer(test_object, max_entries=room, slots=1) as rep:
            rep.feed_at_once([(cs[0], forwards), (cs[1], backwards)])
            assert rep.counts() == expected
            assert rep.stats()["map_full"] == 0


def test_kernel_ips_are_counted_apart(test_object):
    user = [BASE + 0x40] * 10 + [USER_ADDR_END - 1]
    kernel = [USER_ADDR_END, 0xffffffff81000000, (1 << 64) - 1]
    with IpReplayer(test_object, max_entries=64) as rep:
        rep.feed(user + kernel * 3 + user, cpu=cpus()[-1])
        assert rep.counts() == Counter(user * 2)
        assert rep.stats()["kernel_ip"] == 9


@pytest.mark.parametrize("slots", [1, None])
def test_full_map_refuses_exactly_the_new_ips(slots, test_object):
    """--max-entries M: a table of S = 4M/3 slots (all within reach of a
    probe: S <= MAX_PROBES). Once S IPs are in it, every sample of another
    IP is refused and counted (map_full), never cached; the S keep exact
    counts, whatever the cache held when the table filled."""
    from ebpf_bolt.layout import MAX_PROBES, table_slots
    m, k, repeat = 150, 31, 3
    s = table_slots(m)
    assert s <= MAX_PROBES
    rng = random.Random(SEED)
    stored = [BASE + 8 * i for i in range(s)]
    refused = [BASE + 0x100000 + 8 * i for i in range(k)]
    with IpReplayer(test_object, max_entries=m, slots=slots) as rep:
        first = rng.choices(stored, k=5000)
        rep.feed(stored + first, cpu=cpus()[0])   # fills the map
        late = refused * repeat + rng.choices(stored, k=3000)
        rng.shuffle(late)
        for cpu in cpus():
            rep.feed(late, cpu=cpu)
        got = rep.counts()
        st = rep.stats()
    expected = Counter(stored + first)
    for _ in cpus():
        expected.update(ip for ip in late if ip not in refused)
    assert got == expected
    assert st["map_full"] == k * repeat * len(cpus())
    assert st["update_failed"] == 0
