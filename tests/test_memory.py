"""The summary's kernel memory figure against what the kernel reports.

Not in the kernel matrix: before Linux 6.4 fdinfo's memlock is a rough
key-plus-value product per entry (bpf_map_memory_footprint), not the
memory the map holds; 6.4 brought each map type's own mem_usage."""
import pytest

from ebpf_bolt.bpf_object import BoltObject, possible_cpus
from ebpf_bolt.layout import USER_ADDR_END, Config

pytestmark = pytest.mark.root


def _memlock(obj):
    """fdinfo's memlock over the object's maps: what the kernel charges."""
    total = 0
    for name in obj.map_names():
        with open(f"/proc/self/fdinfo/{obj.map_fd(name)}") as f:
            total += next(int(line.split()[1]) for line in f
                          if line.startswith("memlock:"))
    return total


@pytest.mark.parametrize("mode", ["ip", "lbr"])
def test_kernel_memory_figure_matches_the_kernel(mode):
    """The summary's kernel memory (BoltObject.kernel_bytes, with the
    recording's map sizes) is within 10% of what the kernel reports for
    the maps (fdinfo memlock): buckets and the shared maps included."""
    from ebpf_bolt.bpf_object import TRACKERS
    from ebpf_bolt.collector import (MAX_OBJECT_PROCS, MAX_PROCS,
                                     default_max_entries)
    from ebpf_bolt.layout import cache_sets, ip_cache_slots, table_slots
    n = possible_cpus()
    name = "ip_counts" if mode == "ip" else "trace_counts"
    sizes = {name: table_slots(default_max_entries(name)), "procs": MAX_PROCS,
             "object_procs": MAX_OBJECT_PROCS}
    if mode == "ip":
        sizes["ip_cache"] = ip_cache_slots(n)
    else:
        sizes["trace_cache"] = cache_sets(n)
    program = "sample_ip" if mode == "ip" else "sample_branches"
    with BoltObject(Config(user_addr_end=USER_ADDR_END), sizes,
                    programs=[program, *TRACKERS]) as obj:
        figure = obj.kernel_bytes()
        kernel = _memlock(obj)
    assert abs(figure - kernel) <= 0.1 * kernel, (figure, kernel)
