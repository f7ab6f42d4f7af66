"""Drain: the kernel's counts, summed over CPUs, read once the programs
have stopped (the data path's step after the per-CPU maps; translation
follows, in translate.py).

Both caches in front of the maps (the IP cache of sample_ip, the trace
cache of the branch worker) follow one rule: a cached key is in its map
already, and the counts a way still holds are added to that key when
draining. The trace map is read by the in-kernel walk (drain_traces,
summed over CPUs there), or by the batch lookup where that walk is not
available or fails. ``Recorder`` and ``Replayer`` both drain through here.
"""
import struct
from array import array

from .layout import CACHE_SLOT_FORMAT, IP_SLOT_FORMAT
from .profile import TraceColumns


def flush_trace_cache(obj):
    """Move the counts still pending in the CPUs' trace caches into the
    trace map (each cached trace is in the map already), then empty the
    caches: afterwards the map alone holds every count. Call it once the
    programs have stopped running."""
    pending = {}
    for cpu in range(obj.ncpus):
        ways = [way for way in struct.iter_unpack(
                    CACHE_SLOT_FORMAT, obj.cpu_table("trace_cache", cpu))
                if way[5] and (way[3] or way[4])]  # owned, pending
        for frm, to, ft_end, count, mis, _credit, _ in ways:
            c, m = pending.get((frm, to, ft_end), (0, 0))
            pending[frm, to, ft_end] = (c + count, m + mis)
        if ways:
            obj.clear_cpu_table("trace_cache", cpu)
    for key, (count, mis) in pending.items():
        obj.add_to_value("trace_counts", array("Q", key).tobytes(), (count, mis))


def drain_ip_counts(obj):
    """{key: samples} summed over CPUs (keys as the maps hold them: object
    << 48 | file offset): the IP map plus the counts still pending in the
    CPUs' IP caches (each cached key is in the map already, so no key is
    added here). Call it once the programs have stopped running."""
    counts = obj.read_u64_counts("ip_counts", "Q")
    for cpu in range(obj.ncpus):
        for ip, count, credit in struct.iter_unpack(
                IP_SLOT_FORMAT, obj.cpu_table("ip_cache", cpu)):
            if credit and count:  # owned, pending
                counts[ip] = counts.get(ip, 0) + count
    return counts


def drain_traces(obj, notice=None):
    """The trace map summed over CPUs, as columns (from, to, ft_end, count,
    mispreds) of keys: a million traces stay cheap, with no Python object
    per trace until something asks for one. If the in-kernel drain fails
    (its output array is up to 80 MiB, which a container's memory limit may
    refuse), the batch lookup reads the map: a recording is never lost to
    the faster path."""
    flush_trace_cache(obj)
    try:
        drained = obj.drain_trace_records()
    except OSError as e:  # LibbpfError included
        drained = None
        if notice:
            notice(f"in-kernel drain failed ({e}); reading the trace map "
                   "with the batch lookup instead")
    if drained is not None:
        w, bounds = drained
        return TraceColumns((w[0::5], w[1::5], w[2::5], w[3::5], w[4::5]),
                            bounds)
    keys, values, n = obj.read_all("trace_counts")
    counts, mispreds = obj.sum_u64_values(values, 2) if n else ([], [])
    k = array("Q", keys)
    return TraceColumns((k[0::3], k[1::3], k[2::3], counts, mispreds))
