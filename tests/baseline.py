"""The baseline BPF object for tests and benchmarks: the shipped source
built with -DEB_BASELINE_NO_CACHES, in which every trace and IP goes
straight to its map (no trace cache, no IP cache). The shipped object is
built without it; comparing the two shows what the caches change."""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_baseline_object(out_dir):
    """Build the baseline into `out_dir`; returns the object's path."""
    subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "bpf"),
                    f"OUT={out_dir}", "BPF_EXTRA_CFLAGS=-DEB_BASELINE_NO_CACHES"],
                   check=True)
    return os.path.join(out_dir, "ebpf_bolt.bpf.o")
