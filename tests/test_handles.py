"""Recorder and Target are handles: `with` closes them, and a closed one
raises a Python error when used instead of touching closed descriptors."""
import os
import subprocess

import pytest

from ebpf_bolt.collector import Recorder
from ebpf_bolt.targets import CommandTarget, ProcessTarget


def open_fds():
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def sleeper():
    p = subprocess.Popen(["sleep", "30"], stdin=subprocess.DEVNULL)
    yield p.pid
    p.kill()
    p.wait()


def test_process_target_with_closes_its_pidfd(sleeper):
    before = open_fds()
    with ProcessTarget(sleeper) as t:
        assert t.alive()
        assert open_fds() - before, "no pidfd was opened"
    assert open_fds() == before, "the pidfd was left open"
    with pytest.raises(ValueError, match="closed"):
        t.alive()
    with pytest.raises(ValueError, match="closed"):
        t.wait_exit(0.01)
    t.close()  # twice is harmless


def test_command_target_closed_can_still_be_reaped():
    """Closing the handle does not lose the child: wait() still reaps it."""
    with CommandTarget(["/bin/true"]) as t:
        t.start()
        t.resume()
    with pytest.raises(ValueError, match="closed"):
        t.alive()
    assert t.wait() == 0


@pytest.mark.root
def test_recorder_with_releases_everything_and_refuses_use_after(sleeper):
    before = open_fds()
    with Recorder(pid=sleeper, duration=0.2, mode="ip") as rec:
        rec.start()
        rec.run()
        profile = rec.finish()
        assert rec.obj is not None
    assert profile.info["pid"] == sleeper
    assert rec.obj is None
    assert open_fds() == before, "descriptors left open"
    for use in (rec.start, rec.run, rec.finish):
        with pytest.raises(ValueError, match="closed"):
            use()
    rec.close()  # twice is harmless


@pytest.mark.root
def test_recorder_closed_by_with_on_an_error(sleeper):
    """An exception inside the block still closes the recording."""
    before = open_fds()
    with pytest.raises(RuntimeError):
        with Recorder(pid=sleeper, duration=5, mode="ip") as rec:
            rec.start()
            raise RuntimeError("stop")
    assert rec.obj is None and open_fds() == before
    with pytest.raises(ValueError, match="closed"):
        rec.run()


def test_recorder_finish_before_start_is_a_python_error(sleeper):
    with Recorder(pid=sleeper, duration=1) as rec:
        with pytest.raises(ValueError, match="start"):
            rec.finish()
