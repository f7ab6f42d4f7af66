"""Builds the BPF object with clang while the package is built, and tags the
wheel for this CPU architecture (the object is per architecture)."""
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

try:
    from wheel.bdist_wheel import bdist_wheel
except ImportError:  # pragma: no cover - wheel is a build requirement
    bdist_wheel = None

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildWithBpf(build_py):
    def run(self):
        # start from an empty copy: a module removed from src/ (brtrace.py
        # moved to tests/) would otherwise still ship from an earlier build
        shutil.rmtree(os.path.join(self.build_lib, "ebpf_bolt"),
                      ignore_errors=True)
        super().run()
        out = os.path.join(os.path.abspath(self.build_lib), "ebpf_bolt", "bpf")
        try:
            subprocess.run(["make", "-C", os.path.join(HERE, "bpf"), f"OUT={out}"],
                           check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise SystemExit(
                f"building the BPF object failed ({e}); install clang, llvm "
                "and libbpf-dev (Debian/Ubuntu) or clang, llvm and "
                "libbpf-devel (Fedora)")


cmdclass = {"build_py": BuildWithBpf}

if bdist_wheel is not None:
    class PlatformWheel(bdist_wheel):
        def finalize_options(self):
            super().finalize_options()
            self.root_is_pure = False  # carries a per-architecture object

        def get_tag(self):
            _, _, plat = super().get_tag()
            return "py3", "none", plat

    cmdclass["bdist_wheel"] = PlatformWheel

setup(cmdclass=cmdclass)
