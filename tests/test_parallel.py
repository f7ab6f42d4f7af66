"""parallel.map_slices: slices made in forked children come back whole and
in order, and the caller's process is left as it was whatever happens to
the children or to the caller."""
import os
import signal

import pytest

from ebpf_bolt import parallel

SLICES = [list(range(i * 1000, (i + 1) * 1000)) for i in range(4)]


def text_of(numbers):
    return "".join(f"{n:x}\n" for n in numbers)


EXPECTED = [text_of(s) for s in SLICES]


def children_left():
    try:
        os.waitpid(-1, os.WNOHANG)   # running, or a zombie (reaped now)
        return True
    except ChildProcessError:
        return False


def open_fds():
    return set(os.listdir("/proc/self/fd"))


def test_slices_come_back_in_order():
    fds = open_fds()
    assert parallel.map_slices(text_of, SLICES) == EXPECTED
    assert not children_left() and open_fds() == fds


def test_children_run_elsewhere_with_default_signal_actions():
    parent = os.getpid()
    seen = parallel.map_slices(
        lambda s: f"{os.getpid() != parent} {signal.getsignal(signal.SIGINT)!r}",
        SLICES)
    assert seen[0].startswith("False")              # the first: this process
    assert all(t == f"True {signal.SIG_DFL!r}" for t in seen[1:]), seen


def test_a_killed_child_costs_time_not_text():
    parent = os.getpid()

    def dies_in_a_child(s):
        if os.getpid() != parent and s is SLICES[2]:
            os.kill(os.getpid(), signal.SIGKILL)
        return text_of(s)

    assert parallel.map_slices(dies_in_a_child, SLICES) == EXPECTED
    assert not children_left()


def test_no_fork_means_no_children(monkeypatch):
    def no_fork():
        raise OSError(11, "Resource temporarily unavailable")
    monkeypatch.setattr(parallel.os, "fork", no_fork)
    assert parallel.map_slices(text_of, SLICES) == EXPECTED


def test_interrupted_caller_reaps_children_and_closes_pipes():
    """KeyboardInterrupt while this process makes its slice: the children
    (still blocked writing theirs) are killed and reaped, pipes closed."""
    parent = os.getpid()
    fds = open_fds()

    def interrupted_here(s):
        if os.getpid() == parent:
            raise KeyboardInterrupt
        return text_of(s) * 200   # more than a pipe holds: child blocks

    with pytest.raises(KeyboardInterrupt):
        parallel.map_slices(interrupted_here, SLICES)
    assert not children_left() and open_fds() == fds


def test_ignored_sigchld_still_gives_whole_text():
    """With SIGCHLD ignored the kernel reaps children itself; the length
    header, not the exit status, says whether a text is whole."""
    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        assert parallel.map_slices(text_of, SLICES) == EXPECTED
    finally:
        signal.signal(signal.SIGCHLD, old)
