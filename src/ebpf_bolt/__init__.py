"""ebpf-bolt: profiles for the LLVM BOLT optimizer, aggregated in the kernel.

    import ebpf_bolt
    profile = ebpf_bolt.collect(pid=1234, duration=5)
    profile.write("app.fdata")          # or fmt="preagg"
"""
__version__ = "0.1.0"

from .collector import collect  # noqa: E402
from .profile import Profile  # noqa: E402
from .errors import EbpfBoltError  # noqa: E402

__all__ = ["collect", "Profile", "EbpfBoltError", "__version__"]
