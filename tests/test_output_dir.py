"""Several profiles in one -o directory, complete or absent
(ebpf_bolt/output.py: OutputDirectory, profile_names).

The directory is made, or an empty one replaced, by one rename of a hidden
sibling that holds every profile and index.json; anything else -o names is
refused and left as it was, and a failure at any point leaves no hidden
directory and no partial output.
"""
import errno
import json
import os
import stat
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from ebpf_bolt import errors, output
from ebpf_bolt.output import (INDEX_KEYS, TMP_PREFIX, OutputDirectory,
                              profile_names)

pytestmark = pytest.mark.root

NOBODY = 65534
BUILD_ID = "0123456789ABCDEF0123456789abcdef01234567"


def entry(profile, path="/srv/app", build_id=None, samples=10, processes=2):
    return {"path": path, "build_id": build_id, "profile": profile,
            "samples": samples, "processes": processes,
            "command": f"llvm-bolt {path} -o {path}.bolt -data {profile}",
            # the provenance a merge reads (ebpf_bolt/provenance.py)
            "mode": "branch", "format": "preagg", "event": "cycles",
            "frequency": 4999, "hosts": ["web-17"],
            "start": "2026-12-04T21:06:20.000000Z",
            "end": "2026-12-04T21:06:30.000000Z", "inputs": 1,
            "tool": "ebpf-bolt 0.1.0"}


PROFILES = {"app.preagg": "E cycles\nT 401000 401010 401020 3\n",
            "liblua.so.preagg": "E cycles\nT 0 1000 1010 1\n"}
INDEX = {"objects": [entry("app.preagg", "/srv/app", BUILD_ID.lower(), 3, 1),
                     entry("liblua.so.preagg", "/usr/lib/liblua.so", None,
                           1, 2)]}


def write_all(path, **kw):
    with OutputDirectory(path, **kw) as out:
        for name, text in PROFILES.items():
            out.add(name, text)
        out.commit(INDEX)


def assert_written(d):
    assert sorted(p.name for p in d.iterdir()) == sorted(
        list(PROFILES) + ["index.json"])
    for name, text in PROFILES.items():
        assert (d / name).read_text() == text
    assert json.loads((d / "index.json").read_text()) == INDEX


def no_temporaries(directory):
    left = sorted(p.name for p in Path(directory).glob(TMP_PREFIX + "*"))
    assert not left, f"temporary entries left in {directory}: {left}"


def state(path):
    """What `path` is: None, or (type, inode, mode, owner, entries)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    inside = (sorted(os.listdir(path)) if stat.S_ISDIR(st.st_mode)
              else Path(path).read_bytes() if stat.S_ISREG(st.st_mode)
              else None)
    return (stat.S_IFMT(st.st_mode), st.st_ino, stat.S_IMODE(st.st_mode),
            st.st_uid, st.st_gid, inside)


# --- where the directory goes ------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_missing_directory_is_made(umask, tmp_path):
    d = tmp_path / "profiles"
    old = os.umask(umask)
    try:
        write_all(d)
    finally:
        os.umask(old)
    assert_written(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o777 & ~umask
    for name in PROFILES:
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["profiles"]


def test_empty_directory_keeps_its_mode_and_owner(tmp_path):
    """`mkdir out; chmod 2750 out; chown nobody out`, then sudo ebpf-bolt:
    the directory is replaced, its mode and owner are the user's."""
    d = tmp_path / "profiles"
    d.mkdir()
    os.chown(d, NOBODY, NOBODY)
    os.chmod(d, 0o2750)
    write_all(d)
    assert_written(d)
    st = d.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == \
        (0o2750, NOBODY, NOBODY)
    assert [p.name for p in tmp_path.iterdir()] == ["profiles"]


def test_nothing_is_made_before_the_first_profile(tmp_path):
    """Opened before a recording, which a SIGKILL may end: until add(), no
    hidden directory exists to be left behind."""
    with OutputDirectory(tmp_path / "profiles") as out:
        assert list(tmp_path.iterdir()) == []
        out.add("app.preagg", "x")
        assert len(list(tmp_path.glob(TMP_PREFIX + "*"))) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_symlink_stays_a_link(where, tmp_path):
    """A link to a directory (or to where one will be): the link stays, the
    directory it points to gets the profiles, in its own parent."""
    links, targets = tmp_path / "links", tmp_path / "targets"
    links.mkdir()
    targets.mkdir()
    target = targets / "profiles"
    if where == "empty":
        target.mkdir()
    link = links / "out"
    link.symlink_to(Path("..") / "targets" / "profiles")
    write_all(link)
    assert link.is_symlink()
    assert os.readlink(link) == os.path.join("..", "targets", "profiles")
    assert_written(target)
    assert [p.name for p in links.iterdir()] == ["out"]
    assert [p.name for p in targets.iterdir()] == ["profiles"]


def test_no_profiles_still_gives_an_index(tmp_path):
    """--all-objects where no object got a sample: an index listing none."""
    d = tmp_path / "profiles"
    with OutputDirectory(d) as out:
        out.commit({"objects": []})
    assert [p.name for p in d.iterdir()] == ["index.json"]
    assert json.loads((d / "index.json").read_text()) == {"objects": []}


# --- what is refused, and left as it was -------------------------------------

def refused(path, says, watch=None, **kw):
    """write_all(path) raises an OutputError that `says` these, with a
    hint, and `watch` (default: path) is left as it was."""
    watch = path if watch is None else watch
    before = state(watch)
    with pytest.raises(errors.OutputError) as e:
        write_all(path, **kw)
    for word in says:
        assert word in str(e.value), str(e.value)
    assert e.value.hint, "no hint"
    assert state(watch) == before
    return e.value


@pytest.mark.parametrize("hidden", [False, True])
def test_non_empty_directory_refused(hidden, tmp_path):
    d = tmp_path / "profiles"
    d.mkdir()
    (d / (".keep" if hidden else "notes.txt")).write_text("mine\n")
    refused(d, ["not empty", str(d)])
    assert (d / (".keep" if hidden else "notes.txt")).read_text() == "mine\n"
    no_temporaries(tmp_path)


@pytest.mark.parametrize("count,says", [(3, "3 objects"),
                                        (None, "several objects")])
@pytest.mark.parametrize("kind", ["file", "fifo", "file-with-slash"])
def test_file_refused(kind, count, says, tmp_path):
    f = tmp_path / "app.preagg"
    if kind == "fifo":
        os.mkfifo(f)
    else:
        f.write_text("old profile\n")
    path = str(f) + ("/" if kind == "file-with-slash" else "")
    refused(path, [f"-o {path} names a file", says, "get a profile"],
            watch=f, count=count)
    no_temporaries(tmp_path)


@pytest.mark.parametrize("path", [None, "-"])
def test_stdout_refused(path):
    with pytest.raises(errors.OutputError, match="stdout") as e:
        OutputDirectory(path, count=2)
    assert "-o DIR" in e.value.hint


def test_directory_given_as_input_refused(tmp_path):
    """Never the case of a real input (a file), but the check covers the
    directory itself: given as an input, at open or later."""
    d = tmp_path / "profiles"
    d.mkdir()
    refused(d, ["same file as the input"], inputs=[tmp_path / "x", d])
    with OutputDirectory(d) as out:
        with pytest.raises(errors.OutputError, match="same file as the input"):
            out.check_inputs([d])
    assert state(d)[-1] == [] and list(tmp_path.iterdir()) == [d]


def test_working_directory_refused(tmp_path, monkeypatch):
    """`cd out && ebpf-bolt -o .`: replacing it would leave the shell in a
    removed directory."""
    d = tmp_path / "profiles"
    d.mkdir()
    monkeypatch.chdir(d)
    refused(".", ["working directory"])
    no_temporaries(tmp_path)


@contextmanager
def tmpfs(d, *options):
    """An empty tmpfs mounted on the directory `d` while in the block;
    detached lazily, so that a file left open by a failing test cannot
    keep it mounted."""
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", *options, "tmpfs", d],
                   check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", d], check=True)


def test_mount_point_refused(tmp_path):
    """An empty file system mounted there: a rename cannot replace it."""
    with tmpfs(tmp_path / "mnt") as d:
        refused(d, ["mount point"])
        assert os.listdir(d) == []
    no_temporaries(tmp_path)


def test_read_only_parent_refused_when_opened(tmp_path):
    """Found when opened, before a recording, not at commit."""
    with tmpfs(tmp_path / "ro", "-o", "ro") as d:
        with pytest.raises(errors.OutputError, match="Read-only"):
            OutputDirectory(d / "profiles")


def test_missing_parent_refused(tmp_path):
    refused(tmp_path / "no" / "profiles", ["directory does not exist"])
    assert list(tmp_path.iterdir()) == []


# --- failures on the way: nothing left ---------------------------------------

@pytest.mark.parametrize("stop", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("where", ["missing", "empty"])
def test_failure_between_profiles_leaves_nothing(stop, where, tmp_path):
    d = tmp_path / "profiles"
    if where == "empty":
        d.mkdir()
    before = state(d)
    with pytest.raises(stop):
        with OutputDirectory(d) as out:
            out.add("app.preagg", PROFILES["app.preagg"])
            raise stop()
    assert state(d) == before
    assert [p.name for p in tmp_path.iterdir()] == \
        ([] if where == "missing" else ["profiles"])


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_failed_move_leaves_nothing(where, tmp_path, monkeypatch):
    """The last step, the rename, fails (an I/O error): an OutputError, the
    target as it was, no hidden directory."""
    d = tmp_path / "profiles"
    if where == "empty":
        d.mkdir()
    before = state(d)

    def rename(*args, **kw):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(output.os, "rename", rename)
    with pytest.raises(errors.OutputError, match="Input/output error"):
        write_all(d)
    # without a with block: the failed commit itself cleans up
    out = OutputDirectory(d)
    out.add("app.preagg", PROFILES["app.preagg"])
    with pytest.raises(errors.OutputError, match="Input/output error"):
        out.commit({"objects": [entry("app.preagg")]})
    monkeypatch.undo()
    assert state(d) == before
    assert [p.name for p in tmp_path.iterdir()] == \
        ([] if where == "missing" else ["profiles"])


def test_file_put_in_meanwhile_is_kept(tmp_path):
    """Empty when opened, not at commit: refused, the user's file kept."""
    d = tmp_path / "profiles"
    d.mkdir()
    with pytest.raises(errors.OutputError, match="no longer empty"):
        with OutputDirectory(d) as out:
            out.add("app.preagg", PROFILES["app.preagg"])
            (d / "notes.txt").write_text("mine\n")
            out.commit({"objects": [entry("app.preagg")]})
    assert [p.name for p in d.iterdir()] == ["notes.txt"]
    assert (d / "notes.txt").read_text() == "mine\n"
    assert [p.name for p in tmp_path.iterdir()] == ["profiles"]


def no_hard_links(monkeypatch):
    """os.link as on a file system without hard links (vfat)."""
    def refuse(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(os, "link", refuse)


@pytest.mark.parametrize("links", [True, False], ids=["links", "no-links"])
@pytest.mark.parametrize("put", ["symlink", "fifo", "file", "index"])
def test_in_place_names_taken_meanwhile_are_kept(put, links, tmp_path,
                                                 monkeypatch):
    """In place (the total of --interval -o DIR, whose windows are in it
    already): a name taken while recording is refused, what took it kept
    as it was, and no profile nor index.json of this commit is left; on a
    file system without hard links too."""
    if not links:
        no_hard_links(monkeypatch)
    d = tmp_path / "profiles"
    precious = tmp_path / "precious"
    precious.write_text("mine\n")
    taken = d / ("index.json" if put == "index" else "app.preagg")
    with pytest.raises(errors.OutputError, match="appeared while"):
        with OutputDirectory(d, in_place=True) as out:
            (d / "0001").mkdir()            # a window
            out.add("app.preagg", PROFILES["app.preagg"])
            out.add("lib.preagg", PROFILES["app.preagg"])
            if put == "symlink":
                taken.symlink_to(precious)
            elif put == "fifo":
                os.mkfifo(taken)
            else:
                taken.write_text("mine\n")
            out.commit({"objects": [entry("app.preagg"),
                                    entry("lib.preagg")]})
    assert sorted(p.name for p in d.iterdir()) == ["0001", taken.name]
    if put == "symlink":
        assert taken.is_symlink() and precious.read_text() == "mine\n"
    elif put == "fifo":
        assert stat.S_ISFIFO(taken.lstat().st_mode)
    else:
        assert taken.read_text() == "mine\n"


def test_in_place_without_hard_links(tmp_path, monkeypatch):
    """In place on a file system without hard links: the files get their
    names all the same, and no hidden temporary is left."""
    no_hard_links(monkeypatch)
    d = tmp_path / "profiles"
    with OutputDirectory(d, in_place=True) as out:
        (d / "0001").mkdir()
        out.add("app.preagg", PROFILES["app.preagg"])
        out.commit({"objects": [entry("app.preagg")]})
    assert sorted(p.name for p in d.iterdir()) == ["0001", "app.preagg",
                                                   "index.json"]
    assert (d / "app.preagg").read_text() == PROFILES["app.preagg"]


def test_closed_output_raises_a_python_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # where a use after close would write
    out = OutputDirectory(tmp_path / "a")
    out.close()
    out.close()   # closing twice is harmless
    for use in (lambda: out.add("x.preagg", "x"),
                lambda: out.commit({"objects": []})):
        with pytest.raises(ValueError, match="closed"):
            use()
    write_all(tmp_path / "b")
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


# --- index.json --------------------------------------------------------------

def test_index_keys_exactly_and_profiles_relative(tmp_path):
    d = tmp_path / "profiles"
    shuffled = {"objects": [dict(reversed(list(e.items())))
                            for e in INDEX["objects"]]}
    with OutputDirectory(d) as out:
        for name, text in PROFILES.items():
            out.add(name, text)
        out.commit(shuffled)
    index = json.loads((d / "index.json").read_text())
    assert list(index) == ["objects"]
    for e in index["objects"]:
        assert tuple(e) == INDEX_KEYS == (
            "path", "build_id", "profile", "samples", "processes", "command",
            "mode", "format", "event", "frequency", "hosts", "start", "end",
            "inputs", "tool")
        assert "/" not in e["profile"] and (d / e["profile"]).is_file()
        assert type(e["samples"]) is int and type(e["processes"]) is int
    assert index == INDEX


BAD_INDEXES = {
    "extra key": {"objects": [dict(entry("app.preagg"), pid=1)]},
    "missing key": {"objects": [{k: v for k, v in entry("app.preagg").items()
                                 if k != "command"}]},
    "upper-case build id": {"objects": [entry("app.preagg",
                                              build_id=BUILD_ID)]},
    "samples not an int": {"objects": [entry("app.preagg", samples=1.0)]},
    "profile not added": {"objects": [entry("other.preagg")]},
    "profile listed twice": {"objects": [entry("app.preagg")] * 2},
    "top-level key": {"objects": [entry("app.preagg")], "version": 1},
    "mode not ip or branch": {"objects": [entry("app.preagg") | {
        "mode": "lbr"}]},
    "start not UTC": {"objects": [entry("app.preagg") | {
        "start": "2026-12-04 21:06:20"}]},
    "start after end": {"objects": [entry("app.preagg") | {
        "start": "2026-12-05T00:00:00.000000Z"}]},
}


@pytest.mark.parametrize("which", BAD_INDEXES)
def test_index_not_as_specified_is_a_bug_and_leaves_nothing(which, tmp_path):
    with pytest.raises(ValueError):
        with OutputDirectory(tmp_path / "profiles") as out:
            out.add("app.preagg", "x")
            out.commit(BAD_INDEXES[which])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["index.json", "a/b", "..", "", "app.preagg"])
def test_bad_or_repeated_profile_name_is_a_bug(name, tmp_path):
    with OutputDirectory(tmp_path / "profiles") as out:
        out.add("app.preagg", "x")
        with pytest.raises(ValueError):
            out.add(name, "y")


# --- profile_names -----------------------------------------------------------

def test_distinct_names_are_kept():
    assert profile_names([("liblua.so", None, "fdata"),
                          ("app", BUILD_ID, "preagg"),
                          ("app", None, "fdata")]) == \
        ["liblua.so.fdata", "app.preagg", "app.fdata"]


def test_shared_name_gets_the_build_id():
    """Every object of the clash gets its build id (lower-case, 12 hex),
    not only the second one."""
    other = "fedcba9876543210" * 2
    assert profile_names([("app", BUILD_ID, "preagg"),
                          ("lib", None, "preagg"),
                          ("app", other, "preagg")]) == \
        ["app.0123456789ab.preagg", "lib.preagg", "app.fedcba987654.preagg"]


def test_no_or_same_build_id_gets_a_counter():
    assert profile_names([("app", None, "preagg"),
                          ("app", BUILD_ID, "preagg"),
                          ("app", None, "preagg"),
                          ("app", BUILD_ID.lower(), "preagg"),
                          ("app", "99" * 20, "preagg")]) == \
        ["app.1.preagg", "app.2.preagg", "app.3.preagg", "app.4.preagg",
         "app.999999999999.preagg"]


def test_counter_never_takes_another_objects_name():
    """An object whose own name looks like a counter's keeps it, whatever
    the order; no profile is called index.json."""
    objs = [("app", None, "preagg"), ("app", None, "preagg"),
            ("app.1", None, "preagg"), ("index", None, "json")]
    names = profile_names(objs)
    assert names == ["app.2.preagg", "app.3.preagg", "app.1.preagg",
                     "index.1.json"]
    assert profile_names(objs) == names   # the same objects, the same names
    back = profile_names(objs[::-1])
    assert back[1] == "app.1.preagg" and len(set(back)) == 4


@pytest.mark.parametrize("obj", [("a/b", None, "preagg"), ("", None, "fdata"),
                                 ("..", None, "fdata"),
                                 ("app", "not hex", "fdata")])
def test_profile_names_refuses_what_names_no_file(obj):
    with pytest.raises(ValueError):
        profile_names([obj])
