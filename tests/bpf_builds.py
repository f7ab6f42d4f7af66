"""Other builds of the shipped BPF source, for tests and benchmarks; the
shipped object (setup.py, bpf/Makefile) is built with none of these
switches, so nothing here ships.

- BASELINE (-DEB_BASELINE_NO_CACHES): every trace and IP goes straight to
  its map (no trace cache, no IP cache); comparing it with the shipped
  object shows what the caches change.
- TEST_PROGRAMS (-DEB_TEST_PROGRAMS): the shipped programs plus replay_ips,
  which counts supplied IPs through sample_ip's code (tests/ip_replayer.py).
"""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BASELINE = ("EB_BASELINE_NO_CACHES",)
TEST_PROGRAMS = ("EB_TEST_PROGRAMS",)


def build_object(out_dir, defines):
    """Build bpf/ebpf_bolt.bpf.c with `defines` (macro names) into
    `out_dir`, which must hold no other build (make would keep it); returns
    the object's path."""
    flags = " ".join(f"-D{d}" for d in defines)
    subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "bpf"),
                    f"OUT={out_dir}", f"BPF_EXTRA_CFLAGS={flags}"],
                   check=True)
    return os.path.join(out_dir, "ebpf_bolt.bpf.o")
