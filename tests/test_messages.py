"""Wording of counts and of the progress line."""
from ebpf_bolt.cli import _Progress, plural


def test_plural():
    assert plural(1, "sample") == "1 sample"
    assert plural(0, "sample") == "0 samples"
    assert plural(2, "branch stack") == "2 branch stacks"
    assert plural(1234, "sample") == "1,234 samples"
    assert plural(1, "entry", "entries") == "1 entry"
    assert plural(3, "entry", "entries") == "3 entries"


def test_progress_line_counts_one_sample_as_one(capsys):
    progress = _Progress(True)
    progress(1.0, 5, {"samples": 3, "other_process": 2})
    assert "1 sample " in capsys.readouterr().err
    progress(2.0, 5, {"samples": 4, "other_process": 2})
    assert "2 samples " in capsys.readouterr().err
