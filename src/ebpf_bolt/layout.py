"""ctypes mirrors of bpf/ebpf_bolt.h: its structs, and its #defines under
their names without EB_ (tests/test_bpf_object.py checks the structs
against the object's BTF and the constants against the header, so the two
sides cannot drift apart silently)."""
import ctypes

MAX_BRANCHES = 64
BR_ONLY = 0xFFFFFFFFFFFFFFFF
BRANCH_MISPRED = 1
# an entry's branch type (PERF_SAMPLE_BRANCH_TYPE_SAVE): flags bits 20-23;
# the types that are returns (<linux/perf_event.h>)
BRANCH_TYPE_SHIFT = 20
BRANCH_TYPE_MASK = 0xF
BRANCH_TYPE_BITS = BRANCH_TYPE_MASK << BRANCH_TYPE_SHIFT  # the field in place
BR_RET = 6
BR_COND_RET = 10
RETURN_TYPES = 1 << BR_RET | 1 << BR_COND_RET
# bit 61 of a trace key's `from`: the trace's branch is a return
TRACE_RETURN_BIT = 61
TRACE_RETURN = 1 << TRACE_RETURN_BIT
# the replacement rule's cap on a cache way's credit
CACHE_MAX_CREDIT = 8
# an IP slot's pending count goes to the map when it reaches this
IP_FLUSH_AT = 0x80000000
# Count tables (ip_counts, trace_counts): a key is stored within
# MAX_PROBES slots of its first one; a stored key word has SLOT_USED
# flipped (ebpf_bolt.h).
MAX_PROBES = 256
SLOT_USED = 1 << 62
# The tables are sized for a load of 3/4: room for N keys is 4N/3 slots.
# Linear probing at 3/4 full takes 8.5 probes on average to find a free
# slot; a million random keys needed at most 167 (MAX_PROBES: 256).


def table_slots(keys):
    """Slots of a count table with room for `keys` keys."""
    return -(-keys * 4 // 3)


def table_room(slots):
    """Keys a count table of `slots` slots has room for."""
    return slots * 3 // 4
# Lowest kernel address on x86-64 and arm64 (48-bit VA); perf2bolt drops
# branch entries at or above it when profiling user code.
USER_ADDR_END = 0xFFFF800000000000

# enum eb_counter, in order
COUNTERS = (
    "samples", "other_process", "kernel_ip", "map_full", "update_failed",
    "thread_map_full", "branch_read_failed", "stack_cut", "scratch_failed",
    "branch_entries", "kernel_branches", "empty_stacks", "traces_lost",
    "anon_ip", "unresolved", "vma_lookups", "procs_full", "objects_full",
    "traces_outside", "before_exec", "table_updates",
)

# Keys of the maps: object << OBJECT_SHIFT | file offset (ebpf_bolt.h)
OBJECT_SHIFT = 48
OFFSET_MASK = (1 << OBJECT_SHIFT) - 1
MAX_OBJECTS = 4096
ADDR_UNRESOLVED = 0x8000000000000000
PROC_RANGES = 16


class Config(ctypes.Structure):
    _fields_ = [("target_tgid", ctypes.c_uint32),
                ("count_threads", ctypes.c_uint32),
                ("user_addr_end", ctypes.c_uint64),
                ("cache_mask", ctypes.c_uint32),
                ("ncpus", ctypes.c_uint32),
                ("pidns_dev", ctypes.c_uint64),
                ("pidns_ino", ctypes.c_uint64),
                ("ip_cache_mask", ctypes.c_uint32),
                ("all_processes", ctypes.c_uint32),
                ("page_shift", ctypes.c_uint32),
                ("target_at_exec", ctypes.c_uint32),
                ("tid_pidns_dev", ctypes.c_uint64),
                ("tid_pidns_ino", ctypes.c_uint64),
                ("ip_slots", ctypes.c_uint32),
                ("trace_slots", ctypes.c_uint32),
                ("branch_types", ctypes.c_uint32),
                ("reserved", ctypes.c_uint32)]


class Stats(ctypes.Structure):
    _fields_ = [("counter", ctypes.c_uint64 * len(COUNTERS))]


class Trace(ctypes.Structure):
    _fields_ = [("from_", ctypes.c_uint64), ("to", ctypes.c_uint64),
                ("ft_end", ctypes.c_uint64)]


class TraceEntry(ctypes.Structure):
    _fields_ = [("key", Trace), ("count", ctypes.c_uint64),
                ("mispreds", ctypes.c_uint64)]


# raced traces noted one by one (ebpf_bolt.h struct eb_raced)
RACED_MAX = 63


class Raced(ctypes.Structure):
    _fields_ = [("n", ctypes.c_uint64), ("from_", ctypes.c_uint64 * RACED_MAX)]


# Sets of count tables and caches (--interval): each table and cache map
# holds SETS slices; the programs count into the one active_set holds
# (ebpf_bolt.h struct eb_set, ebpf_bolt.bpf.c).
SETS = 2


class EbSet(ctypes.Structure):
    _fields_ = [("index", ctypes.c_uint32), ("reserved", ctypes.c_uint32),
                ("claimed", ctypes.c_uint64), ("raced", Raced)]


class FlushArgs(ctypes.Structure):
    _fields_ = [("set", ctypes.c_uint32), ("reserved", ctypes.c_uint32)]


class IpEntry(ctypes.Structure):
    _fields_ = [("ip", ctypes.c_uint64), ("count", ctypes.c_uint64)]


class Branch(ctypes.Structure):
    _fields_ = [("from_", ctypes.c_uint64), ("to", ctypes.c_uint64),
                ("flags", ctypes.c_uint64)]


# Trace cache sets per CPU (CACHE_WAYS ways of 48 bytes each): up to
# MAX_CACHE_SETS, within CACHE_BUDGET bytes of kernel memory over all
# possible CPUs.
CACHE_WAYS = 2
MAX_CACHE_SETS = 8192
CACHE_BUDGET = 16 << 20


def cache_sets(ncpus):
    sets = MAX_CACHE_SETS
    while sets > 32 and sets * ctypes.sizeof(CacheSet) * ncpus > CACHE_BUDGET:
        sets //= 2
    return sets


# IP cache slots per CPU (16 bytes each): up to MAX_IP_CACHE_SLOTS (64 KiB,
# room for the hot IPs of a big program while the table stays small enough
# that a sample's one slot is rarely far from a cached page), within
# IP_CACHE_BUDGET bytes over all possible CPUs.
MAX_IP_CACHE_SLOTS = 4096
IP_CACHE_BUDGET = 8 << 20
# IPs per run of replay_ips (in the tests' build only)
REPLAY_IPS = 4096


def ip_cache_slots(ncpus):
    slots = MAX_IP_CACHE_SLOTS
    while slots > 64 and slots * ctypes.sizeof(IpSlot) * ncpus > IP_CACHE_BUDGET:
        slots //= 2
    return slots


# struct format of one IpSlot, in the machine's byte order, for reading a
# whole cache table at once (struct.iter_unpack)
IP_SLOT_FORMAT = "=QII"


class IpSlot(ctypes.Structure):
    _fields_ = [("ip", ctypes.c_uint64), ("count", ctypes.c_uint32),
                ("credit", ctypes.c_uint32)]


class ReplayIps(ctypes.Structure):
    _fields_ = [("ip", ctypes.c_uint64 * REPLAY_IPS)]


class ReplayIpArgs(ctypes.Structure):
    _fields_ = [("count", ctypes.c_uint32), ("done", ctypes.c_uint32),
                ("buf", ctypes.c_uint32), ("reserved", ctypes.c_uint32)]


class CacheSlot(ctypes.Structure):
    _fields_ = [("key", Trace), ("count", ctypes.c_uint64),
                ("mispreds", ctypes.c_uint64), ("credit", ctypes.c_uint32),
                ("type_bits", ctypes.c_uint32)]


class CacheSet(ctypes.Structure):
    _fields_ = [("way", CacheSlot * CACHE_WAYS)]


class BranchStack(ctypes.Structure):
    _fields_ = [("nr", ctypes.c_uint32), ("reserved", ctypes.c_uint32),
                ("entries", Branch * MAX_BRANCHES)]


class Range(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64),
                ("delta", ctypes.c_uint64), ("object", ctypes.c_uint32),
                ("sampled", ctypes.c_uint32)]


class Proc(ctypes.Structure):
    _fields_ = [("next", ctypes.c_uint32), ("serial", ctypes.c_uint32),
                ("range", Range * PROC_RANGES)]


class LastSample(ctypes.Structure):
    _fields_ = [("tgid", ctypes.c_uint32), ("gen", ctypes.c_uint32),
                ("range", Range)]


class ObjectKey(ctypes.Structure):
    _fields_ = [("ino", ctypes.c_uint64), ("dev", ctypes.c_uint32),
                ("generation", ctypes.c_uint32)]


class ObjectInfo(ctypes.Structure):
    _fields_ = [("key", ObjectKey), ("tgid", ctypes.c_uint32),
                ("state", ctypes.c_uint32), ("start", ctypes.c_uint64),
                ("end", ctypes.c_uint64)]


class ReplayArgs(ctypes.Structure):
    _fields_ = [("first", ctypes.c_uint32), ("count", ctypes.c_uint32),
                ("done", ctypes.c_uint32), ("bad", ctypes.c_uint32)]


# C name -> (ctypes mirror, {C member name: mirror field name})
MIRRORS = {
    "eb_config": (Config, {}),
    "eb_stats": (Stats, {}),
    "eb_trace": (Trace, {"from": "from_"}),
    "eb_trace_entry": (TraceEntry, {}),
    "eb_ip_entry": (IpEntry, {}),
    "eb_raced": (Raced, {"from": "from_"}),
    "eb_set": (EbSet, {}),
    "eb_flush_args": (FlushArgs, {}),
    "eb_branch": (Branch, {"from": "from_"}),
    "eb_cache_slot": (CacheSlot, {}),
    "eb_cache_set": (CacheSet, {}),
    "eb_ip_slot": (IpSlot, {}),
    "eb_replay_ips": (ReplayIps, {}),
    "eb_replay_ip_args": (ReplayIpArgs, {}),
    "eb_branch_stack": (BranchStack, {}),
    "eb_replay_args": (ReplayArgs, {}),
    "eb_range": (Range, {}),
    "eb_proc": (Proc, {}),
    "eb_last_sample": (LastSample, {}),
    "eb_object_key": (ObjectKey, {}),
    "eb_object": (ObjectInfo, {}),
}
