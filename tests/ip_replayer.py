"""IpReplayer: IPs counted through sample_ip's own code (count_ip: IP cache,
map, loss counters) by replay_ips, a syscall program that only the tests'
build of the object has (tests/bpf_builds.py TEST_PROGRAMS): perf_event
programs cannot be run with BPF_PROG_RUN."""
import ctypes
import errno
import mmap
from array import array

from ebpf_bolt import _libbpf
from ebpf_bolt.bpf_object import BoltObject, possible_cpus
from ebpf_bolt.collector import check_privileges
from ebpf_bolt.drain import drain_ip_counts
from ebpf_bolt.layout import (REPLAY_IPS, USER_ADDR_END, Config, ReplayIpArgs,
                              ReplayIps, ip_cache_slots,
                              table_slots)
from ebpf_bolt.replay import _MappedInput, at_once, run_on_cpu


# IP buffers: threads that can replay at the same time
BUFFERS = 8


class IpReplayer(_MappedInput):
    """A loaded test object whose replay_ips program counts supplied IPs
    the way sample_ip counts a sample's IP."""

    def __init__(self, path, max_entries, slots=None, windows=False):
        """path: the object built with TEST_PROGRAMS; windows: two sets of
        tables, for end_window() (--interval's switch)."""
        check_privileges()
        self._mem = None
        self.obj = BoltObject(Config(user_addr_end=USER_ADDR_END),
                              {"ip_counts": table_slots(max_entries),
                               "ip_cache": slots or ip_cache_slots(possible_cpus()),
                               "replay_ip_buf": BUFFERS},
                              programs=["replay_ips"], path=path,
                              sets=2 if windows else 1)
        size = -(-ctypes.sizeof(ReplayIps) * BUFFERS // mmap.PAGESIZE) * \
            mmap.PAGESIZE
        self._mem = mmap.mmap(self.obj.map_fd("replay_ip_buf"), size,
                              mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def feed(self, ips, cpu=0, buf=0):
        """Count `ips` on `cpu`, through element `buf` of the IP buffer."""
        at = buf * ctypes.sizeof(ReplayIps)
        for i in range(0, len(ips), REPLAY_IPS):
            chunk = array("Q", ips[i:i + REPLAY_IPS])
            self._mem[at:at + len(chunk) * chunk.itemsize] = chunk.tobytes()
            args = ReplayIpArgs(count=len(chunk), buf=buf)
            run_on_cpu(self.obj, "replay_ips", args, cpu)
            if args.done != len(chunk):
                raise _libbpf.LibbpfError("replay_ips", errno.EINVAL,
                                          f"{args.done} of {len(chunk)} counted")

    def feed_at_once(self, shares):
        """Count several lists of IPs at the same time, each on its own CPU
        (`shares`: [(cpu, ips)], at most BUFFERS, CPUs distinct), one thread
        each (replay.at_once). Returns each share's (start, end) times."""
        return [times for _, times in at_once([
            (cpu, lambda buf=buf, cpu=cpu, ips=ips: self.feed(ips, cpu, buf))
            for buf, (cpu, ips) in enumerate(shares)])]

    def counts(self):
        return drain_ip_counts(self.obj, self.obj.active)

    def end_window(self):
        """The counts of the window that ended (the set the worker counted
        into until the switch), that set then cleared: --interval's step."""
        old = self.obj.switch_set()
        try:
            return drain_ip_counts(self.obj, old)
        finally:
            self.obj.clear_set(old)

    def stats(self):
        return self.obj.stats()

