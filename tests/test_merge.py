"""ebpf-bolt merge (ebpf_bolt/merge.py): sums of profiles of one object.

The sum must be what adding the counts of equal keys gives, the same bytes
whatever the order and grouping of the inputs (associative, commutative),
equal to one replay of all the stacks, in memory that does not grow with
the number of inputs, and the same from DuckDB as from the built-in
engine. Profiles that cannot be summed (other object, other mode, other
format, no sidecar and no --binary) are refused with one line and a hint.
"""
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter

import pytest

from conftest import run
from ebpf_bolt import cli, merge, provenance
from ebpf_bolt.elf import ElfFile
from test_replay import LOAD_BASE, SEED, Pools, brstack_line

BID = "0123456789abcdef0123456789abcdef01234567"
OTHER_BID = "fedcba9876543210fedcba9876543210fedcba98"
T0 = 1764882380.0                  # 2025-12-04T21:06:20Z
BR_ONLY = 0xffffffffffffffff


# --- generated profiles --------------------------------------------------------

def key_pool(dialect, n, rng):
    """`n` distinct record keys of a dialect, as ebpf-bolt writes them:
    addresses of every length up to ffffffffffffffff, so that sorting them
    as text would differ from sorting them as numbers."""
    def addr():
        return rng.choice([0, BR_ONLY, rng.randrange(1 << 12),
                           rng.randrange(1 << 24), rng.randrange(1 << 48)])
    keys = set()
    while len(keys) < n:
        if dialect == ("preagg", "branch"):
            k = "%s %x %x %x" % (rng.choice("TR"), addr(), addr(), addr())
        elif dialect == ("preagg-bf", "branch"):
            k = "%s %x %x" % (rng.choice("BFf"), addr(), addr())
        elif dialect == ("preagg", "ip"):
            k = "S %x" % addr()
        elif dialect == ("fdata", "ip"):
            k = "1 %s %x" % (rng.choice(["main", "work", "f/1", "zlib"]),
                             rng.randrange(1 << 16))
        else:
            k = "1 %s %x %d %s %x" % (
                rng.choice(["main", "work"]), rng.randrange(1 << 12),
                rng.choice([0, 1, 2]), rng.choice(["main", "[unknown]"]),
                rng.randrange(1 << 12))
        keys.add(k)
    return sorted(keys)


def two_counts(key):
    return key[0] == "B" or len(key.split(" ")) == 6


def render_records(dialect, records, event="cycles"):
    """Profile text of {key: (first, second)} in a random order (as the
    kernel map's order is)."""
    fmt, mode = dialect
    head = {("preagg", "branch"): f"E {event}\n", ("preagg", "ip"):
            f"E {event}\n", ("fdata", "ip"): f"no_lbr {event}\n"}
    lines = []
    for key, (c1, c2) in records.items():
        if len(key.split(" ")) == 6:     # fdata branch: mispreds, count
            lines.append(f"{key} {c2} {c1}\n")
        elif two_counts(key):
            lines.append(f"{key} {c1} {c2}\n")
        else:
            lines.append(f"{key} {c1}\n")
    random.Random(len(lines)).shuffle(lines)
    return head.get(dialect, "") + "".join(lines)


def write_profile(path, text, dialect, build_id=BID, host="web-1",
                  start=T0, duration=10.0, frequency=4999, event="cycles",
                  object_path="/srv/app", sidecar=True):
    path = str(path)
    with open(path, "w") as f:
        f.write(text)
    if sidecar:
        prov = provenance.describe(
            path=object_path, build_id=build_id, mode=dialect[1],
            fmt=dialect[0], event=event, frequency=frequency, start=start,
            end=start + duration, hosts=[host])
        with open(path + ".json", "w") as f:
            f.write(provenance.sidecar_text(provenance.sidecar(
                prov, samples=10, processes=2, size=len(text.encode()))))
    return path


def expected_sum(dialect, parts):
    """{key: (first, second)} summed with Counters: the reference."""
    first, second = Counter(), Counter()
    for records in parts:
        for key, (c1, c2) in records.items():
            first[key] += c1
            second[key] += c2
    return {k: (first[k], second[k]) for k in first}


def parse_profile(text):
    """{key: (first, second)} of a written profile (fdata branch lines
    have mispreds before the count)."""
    out = {}
    for line in text.splitlines():
        if line.startswith(("E ", "no_lbr ")):
            continue
        parts = line.split(" ")
        if len(parts) == 8:
            out[" ".join(parts[:6])] = (int(parts[7]), int(parts[6]))
        elif parts[0] == "B":
            out[" ".join(parts[:3])] = (int(parts[3]), int(parts[4]))
        else:
            out[" ".join(parts[:-1])] = (int(parts[-1]), 0)
    return out


def random_parts(dialect, nparts, seed, nkeys=300):
    rng = random.Random(seed)
    pool = key_pool(dialect, nkeys, rng)
    parts = []
    for _ in range(nparts):
        keys = rng.sample(pool, rng.randrange(1, nkeys))
        parts.append({k: (rng.randrange(1, 10**6),
                          rng.randrange(0, 1000) if two_counts(k) else 0)
                      for k in keys})
    return parts


def merge_main(capsys, *args):
    code = cli.main(["merge"] + [str(a) for a in args])
    return code, capsys.readouterr().err


DIALECT_IDS = ["-".join(d) for d in merge.DIALECTS]


@pytest.fixture(params=list(merge.DIALECTS), ids=DIALECT_IDS)
def dialect(request):
    return request.param


@pytest.fixture
def three(dialect, tmp_path):
    """Three profiles of one object from three hosts, and their records."""
    parts = random_parts(dialect, 3, SEED + list(merge.DIALECTS).index(dialect))
    paths = [write_profile(tmp_path / f"p{i}.{dialect[0]}",
                           render_records(dialect, r), dialect,
                           host=f"web-{i}", start=T0 + 100 * i,
                           frequency=4999)
             for i, r in enumerate(parts)]
    return paths, parts


# --- sums, associative and commutative ------------------------------------------

def test_merge_is_the_sum(dialect, three, tmp_path, capsys):
    paths, parts = three
    out = tmp_path / "sum"
    code, err = merge_main(capsys, *paths, "-o", out)
    assert code == 0, err
    assert parse_profile(out.read_text()) == expected_sum(dialect, parts)
    side = json.loads((tmp_path / "sum.json").read_text())
    assert provenance.problem(side, provenance.SIDECAR_KEYS) is None
    assert side["hosts"] == ["web-0", "web-1", "web-2"]
    assert side["start"] == provenance.utc(T0)
    assert side["end"] == provenance.utc(T0 + 210)
    assert (side["inputs"], side["samples"], side["processes"]) == (3, 30, 6)
    assert (side["build_id"], side["mode"], side["format"], side["event"],
            side["frequency"]) == (BID, dialect[1], dialect[0], "cycles",
                                   4999)
    assert side["bytes"] == out.stat().st_size


@pytest.mark.parametrize("block", [1, 7, 64])
def test_blocks_cut_anywhere(dialect, three, block, tmp_path, capsys,
                             monkeypatch):
    """The built-in reduce reads BLOCK bytes at a time: with blocks cut
    inside lines, inside a UTF-8 name and after several lines, the sum is
    that of whole lines, a last line without "\\n" counts, and a bad line
    is named by its number in the file."""
    monkeypatch.setattr(merge, "BLOCK", block)
    paths, parts = three
    if dialect[0] == "fdata":       # a name of 2-byte characters
        key = "1 f\u00fc\u00fcf 10" if dialect[1] == "ip" \
            else "1 f\u00fcnf 10 1 f\u00fc\u00fcf 20"
        parts[0][key] = (5, 0 if dialect[1] == "ip" else 2)
    texts = [render_records(dialect, r).rstrip("\n") for r in parts]
    for path, text in zip(paths, texts):
        write_profile(path, text, dialect)
    code, err = merge_main(capsys, *paths, "-o", tmp_path / "sum")
    assert code == 0, err
    assert parse_profile((tmp_path / "sum").read_text()) == \
        expected_sum(dialect, parts)
    lines = texts[2].split("\n")
    lines.insert(5, lines[5] + " 1")
    write_profile(paths[2], "\n".join(lines), dialect)
    code, err = merge_main(capsys, *paths, "-o", tmp_path / "bad")
    assert_refused(code, err, f"{paths[2]}, line 6: not a record",
                   "unchanged profiles")


def outputs(path):
    return (open(path).read(), open(str(path) + ".json").read())


def test_commutative(dialect, three, tmp_path, capsys):
    paths, _ = three
    got = []
    for n, order in enumerate([paths, paths[::-1], paths[1:] + paths[:1]]):
        out = tmp_path / f"sum{n}"
        code, err = merge_main(capsys, *order, "-o", out)
        assert code == 0, err
        got.append(outputs(out))
    assert got[0] == got[1] == got[2]


def test_associative(dialect, three, tmp_path, capsys):
    """(a + b) + c, a + (b + c) and a + b + c: the same bytes, sidecar
    included (inputs counted through, hosts and times folded)."""
    a, b, c = three[0]
    d = tmp_path
    for args in ([a, b, "-o", d / "ab"], [d / "ab", c, "-o", d / "ab_c"],
                 [b, c, "-o", d / "bc"], [a, d / "bc", "-o", d / "a_bc"],
                 [a, b, c, "-o", d / "abc"]):
        code, err = merge_main(capsys, *args)
        assert code == 0, err
    assert outputs(d / "ab_c") == outputs(d / "a_bc") == outputs(d / "abc")
    assert json.loads(outputs(d / "abc")[1])["inputs"] == 3


# --- refusals -------------------------------------------------------------------

def assert_refused(code, err, says, hint):
    assert code == 2, err
    lines = err.splitlines()
    assert lines[0].startswith("ebpf-bolt: error: ") and says in lines[0], err
    assert lines[1].startswith("  hint: ") and hint in lines[1], err
    assert "Traceback" not in err


def one(tmp_path, name, dialect=("preagg", "branch"), seed=0, **kw):
    records = random_parts(dialect, 1, SEED + seed, nkeys=20)[0]
    return write_profile(tmp_path / name, render_records(dialect, records),
                         dialect, **kw)


def test_refuses_mixed_build_ids(tmp_path, capsys):
    a = one(tmp_path, "a.preagg")
    b = one(tmp_path, "b.preagg", build_id=OTHER_BID)
    code, err = merge_main(capsys, a, b, "-o", tmp_path / "out")
    assert_refused(code, err, "different objects", "each object")
    assert not (tmp_path / "out").exists()


def test_refuses_mixed_modes(tmp_path, capsys):
    """IP samples (preagg S records) with branch traces (preagg T records):
    the same format name, not summable."""
    a = one(tmp_path, "a.preagg")
    b = one(tmp_path, "b.preagg", dialect=("preagg", "ip"))
    code, err = merge_main(capsys, a, b, "-o", tmp_path / "out")
    assert_refused(code, err, "IP and branch profiles cannot be summed",
                   "each mode")
    assert not (tmp_path / "out").exists()


def test_refuses_mixed_formats(tmp_path, capsys):
    a = one(tmp_path, "a.preagg")
    b = one(tmp_path, "b.preagg-bf", dialect=("preagg-bf", "branch"))
    code, err = merge_main(capsys, a, b, "-o", tmp_path / "out")
    assert_refused(code, err, "cannot be summed", "one format")


def test_refuses_profile_without_sidecar_unless_binary(tmp_path, capsys,
                                                       workload_pie):
    a = one(tmp_path, "a.preagg",
            build_id=ElfFile(str(workload_pie)).build_id)
    bare = one(tmp_path, "bare.preagg", seed=1, sidecar=False)
    code, err = merge_main(capsys, a, bare, "-o", tmp_path / "out")
    assert_refused(code, err, "has no sidecar", "--binary")
    assert not (tmp_path / "out").exists()
    # naming the object: merged, the build id read from it
    code, err = merge_main(capsys, a, bare, "--binary", workload_pie,
                           "-o", tmp_path / "out")
    assert code == 0, err
    side = json.loads((tmp_path / "out.json").read_text())
    assert side["build_id"] == ElfFile(str(workload_pie)).build_id
    assert side["inputs"] == 2
    # the bare input's samples are not known: so is the sum (not a's 10),
    # and the merged profile merges again
    assert (side["samples"], side["processes"]) == (None, None)
    code, err = merge_main(capsys, tmp_path / "out", a, "-o",
                           tmp_path / "again")
    assert code == 0, err
    assert json.loads((tmp_path / "again.json").read_text())["samples"] \
        is None
    # --binary of another object than a sidecar says: refused
    other = one(tmp_path, "other.preagg", build_id=OTHER_BID)
    code, err = merge_main(capsys, other, bare, "--binary", workload_pie,
                           "-o", tmp_path / "out2")
    assert_refused(code, err, "is a profile of build id", "--binary")


def test_refuses_stale_sidecar_and_bad_lines(tmp_path, capsys):
    a = one(tmp_path, "a.preagg")
    b = one(tmp_path, "b.preagg", seed=1)
    with open(b, "a") as f:          # rewritten without its sidecar
        f.write("T 1 2 3 4\n")
    code, err = merge_main(capsys, a, b, "-o", tmp_path / "out")
    assert_refused(code, err, "the profile was replaced without it",
                   "stale sidecar")
    c = one(tmp_path, "c.preagg", seed=2)
    text = open(c).read().replace("\nT ", "\nT 0x", 1)   # a 0x: BOLT refuses
    write_profile(c, text, ("preagg", "branch"))
    code, err = merge_main(capsys, a, c, "-o", tmp_path / "out")
    assert_refused(code, err, "not a record", "unchanged profiles")
    assert "line " in err


BAD_SIDECARS = {
    "empty path": {"path": ""},
    "list path": {"path": ["x"], "build_id": None},
    "number path": {"path": 5},
    "mode": {"mode": "lbr"},
    "hosts": {"hosts": "web-1"},
    "start": {"start": "yesterday"},
    "frequency": {"frequency": -1},
    "samples": {"samples": "7"},
    "no event": {"event": None},
}


@pytest.mark.parametrize("bad", list(BAD_SIDECARS), ids=list(BAD_SIDECARS))
def test_refuses_malformed_sidecar(bad, tmp_path, capsys):
    """A sidecar field of the wrong type or value, next to a good input:
    one line naming the sidecar and the field, with a hint, exit 2."""
    a = one(tmp_path, "a.preagg")
    b = one(tmp_path, "b.preagg", seed=1)
    side = json.loads(open(b + ".json").read())
    side.update(BAD_SIDECARS[bad])
    with open(b + ".json", "w") as f:
        json.dump(side, f)
    code, err = merge_main(capsys, a, b, "-o", tmp_path / "out")
    field = next(iter(BAD_SIDECARS[bad]))
    assert_refused(code, err, f"{b}.json: {field}", "as ebpf-bolt writes it")


@pytest.mark.parametrize("engine", merge.ENGINES)
def test_refuses_header_event_other_than_the_sidecars(engine, tmp_path,
                                                      capsys):
    """Sidecars that say instructions over profiles headed cycles: refused,
    not a profile of one event with a sidecar of another."""
    a = preagg(tmp_path, "a.preagg", ["T 1 2 3 4"], event="instructions")
    b = preagg(tmp_path, "b.preagg", ["T 1 2 3 5"], event="instructions")
    code, err = merge_main(capsys, a, b, *engine_args(engine),
                           "-o", tmp_path / "out")
    assert_refused(code, err, "header lines name event cycles, their "
                   "provenance instructions", "unchanged profiles and "
                   "sidecars")
    assert not (tmp_path / "out").exists()


def test_refuses_output_that_is_an_input(tmp_path, capsys):
    a = one(tmp_path, "a.preagg")
    b = one(tmp_path, "b.preagg", seed=1)
    before = open(b).read()
    code, err = merge_main(capsys, a, b, "-o", b)
    assert code == 6, err
    assert "same file as the input" in err and "Traceback" not in err
    assert open(b).read() == before


def test_duckdb_missing_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    """The extra is an extra: without it, one line saying which."""
    a = one(tmp_path, "a.preagg")
    monkeypatch.setitem(sys.modules, "duckdb", None)   # import fails
    code, err = merge_main(capsys, a, "--engine", "duckdb", "-o",
                           tmp_path / "out")
    assert_refused(code, err, "needs the duckdb package",
                   "ebpf-bolt[duckdb]")


# --- directories: per object ----------------------------------------------------

def index_dir(path, objects):
    """A directory as ebpf-bolt writes one: {name: (text, build id,
    object path)} and index.json with provenance."""
    os.makedirs(path)
    entries = []
    for name, (text, bid, obj) in objects.items():
        with open(os.path.join(path, name), "w") as f:
            f.write(text)
        prov = provenance.describe(path=obj, build_id=bid, mode="branch",
                                   fmt="preagg", event="cycles",
                                   frequency=4999, start=T0, end=T0 + 1)
        entries.append({"path": obj, "build_id": bid, "profile": name,
                        "samples": 5, "processes": 1, "command": None,
                        **provenance.index_fields(prov)})
    with open(os.path.join(path, "index.json"), "w") as f:
        json.dump({"objects": entries}, f)
    return path


def test_directories_merge_per_object(tmp_path, capsys):
    d = ("preagg", "branch")
    parts = random_parts(d, 4, SEED + 30)
    run1 = index_dir(tmp_path / "run1", {
        "app.preagg": (render_records(d, parts[0]), BID, "/srv/app"),
        "lib.so.preagg": (render_records(d, parts[1]), OTHER_BID,
                          "/srv/lib.so")})
    # the other run lists its objects the other way round
    run2 = index_dir(tmp_path / "run2", {
        "lib.so.preagg": (render_records(d, parts[3]), OTHER_BID,
                          "/srv/lib.so"),
        "app.preagg": (render_records(d, parts[2]), BID, "/srv/app")})
    out = tmp_path / "merged"
    code, err = merge_main(capsys, run1, run2, "-o", out)
    assert code == 0, err
    index = json.loads((out / "index.json").read_text())["objects"]
    by_bid = {e["build_id"]: e for e in index}
    assert set(by_bid) == {BID, OTHER_BID}
    for bid, (i, j) in ((BID, (0, 2)), (OTHER_BID, (1, 3))):
        e = by_bid[bid]
        assert provenance.problem(e) is None and e["inputs"] == 2
        assert parse_profile((out / e["profile"]).read_text()) == \
            expected_sum(d, [parts[i], parts[j]])
    # the order of the directories does not show
    out2 = tmp_path / "merged2"
    code, err = merge_main(capsys, run2, run1, "-o", out2)
    assert code == 0, err
    assert sorted(os.listdir(out)) == sorted(os.listdir(out2))
    for name in os.listdir(out):
        assert (out / name).read_bytes() == (out2 / name).read_bytes()


# --- against the kernel's aggregation ------------------------------------------

@pytest.mark.root
@pytest.mark.parametrize("fmt", ["preagg", "preagg-bf"])
def test_merged_replays_equal_one_replay(fmt, workload_pie, ebpf_bolt_cmd,
                                         tmp_path):
    """Stacks replayed in three parts (three profiles with sidecars), then
    merged: the same records as one replay of all the stacks."""
    rng = random.Random(SEED + 50)
    pools = Pools(workload_pie, LOAD_BASE, rng)
    stacks = [pools.loop_stack(rng, rng.randrange(1, 33)) if i % 3 else
              pools.random_stack(rng, rng.randrange(1, 33))
              for i in range(900)]
    lines = [brstack_line(s, rng) + "\n" for s in stacks]

    def replay(text, out):
        (tmp_path / "stacks.txt").write_text(text)
        res = run([ebpf_bolt_cmd, "replay", "--binary",
                   f"{workload_pie}@{LOAD_BASE:x}", "--max-entries", "65536",
                   "--format", fmt, str(tmp_path / "stacks.txt"),
                   "-o", str(out)])
        assert res.returncode == 0, res.stderr
        assert "warning" not in res.stderr, res.stderr
    parts = [tmp_path / f"part{i}.{fmt}" for i in range(3)]
    for i, part in enumerate(parts):
        replay("".join(lines[i::3]), part)
    replay("".join(lines), tmp_path / f"whole.{fmt}")
    res = run([ebpf_bolt_cmd, "merge"] + [str(p) for p in parts] +
              ["-o", str(tmp_path / f"merged.{fmt}")])
    assert res.returncode == 0, res.stderr
    whole = (tmp_path / f"whole.{fmt}").read_text()
    merged = (tmp_path / f"merged.{fmt}").read_text()
    assert sorted(merged.splitlines()) == sorted(whole.splitlines())
    assert len(merged.splitlines()) > 100
    side = json.loads((tmp_path / f"merged.{fmt}.json").read_text())
    assert (side["inputs"], side["event"], side["mode"]) == (3, "replay",
                                                             "branch")


# --- memory ---------------------------------------------------------------------

MEMORY_CODE = """
import sys, tracemalloc
from ebpf_bolt import merge
paths = sys.argv[1:]
groups, _ = merge.gather(paths)
tracemalloc.start()
text, total = merge.merge_group(next(iter(groups.values())))
print(tracemalloc.get_traced_memory()[1], total.inputs)
"""


def test_memory_does_not_grow_with_inputs(tmp_path):
    """50 and 200 profiles over the same 5,000 keys: the merge's peak of
    Python memory (tracemalloc, in a fresh interpreter each) within 10%."""
    d = ("preagg", "branch")
    rng = random.Random(SEED + 60)
    keys = key_pool(d, 5_000, rng)
    texts = [render_records(d, {k: (rng.randrange(1, 1000), 0)
                                for k in keys}) for _ in range(5)]
    paths = [write_profile(tmp_path / f"p{i}.preagg", texts[i % 5], d,
                           host=f"h{i % 7}", start=T0 + i)
             for i in range(200)]
    peaks = {}
    for n in (50, 200):
        res = subprocess.run([sys.executable, "-c", MEMORY_CODE] + paths[:n],
                             capture_output=True, text=True, check=True)
        peak, inputs = map(int, res.stdout.split())
        assert inputs == n
        peaks[n] = peak
    print("tracemalloc peaks:", peaks)
    assert peaks[200] <= peaks[50] * 1.10, peaks


# --- the same on DuckDB -------------------------------------------------------

def test_duckdb_gives_the_same_bytes(tmp_path, capsys):
    """200 profiles, every dialect: --engine duckdb writes what the
    built-in merge writes, byte for byte, sidecar included."""
    pytest.importorskip("duckdb", reason="the duckdb extra is not installed "
                        "(pip install '.[test,duckdb]', as scripts/setup.sh "
                        "does)")
    for n, d in enumerate(merge.DIALECTS):
        parts = random_parts(d, 200 if n == 0 else 20, SEED + 70 + n,
                             nkeys=500)
        sub = tmp_path / "-".join(d)
        sub.mkdir()
        paths = [write_profile(sub / f"p{i}", render_records(d, r), d,
                               start=T0 + i)
                 for i, r in enumerate(parts)]
        for engine in merge.ENGINES:
            code, err = merge_main(capsys, *paths, "--engine", engine,
                                   "-o", sub / f"out-{engine}")
            assert code == 0, err
        assert outputs(sub / "out-builtin") == outputs(sub / "out-duckdb"), d
        assert parse_profile((sub / "out-duckdb").read_text()) == \
            expected_sum(d, parts)


def test_duckdb_refuses_what_builtin_refuses(tmp_path, capsys):
    """A line that is no record, through DuckDB: one line and a hint."""
    pytest.importorskip("duckdb", reason="the duckdb extra is not installed")
    a = one(tmp_path, "a.preagg")
    c = one(tmp_path, "c.preagg", seed=2)
    text = open(c).read().replace("\nT ", "\nT 0x", 1)
    write_profile(c, text, ("preagg", "branch"))
    code, err = merge_main(capsys, a, c, "--engine", "duckdb", "-o",
                           tmp_path / "out")
    assert_refused(code, err, "not a record", "unchanged profiles")
    assert not (tmp_path / "out").exists()


# --- counts up to 2^64-1 ----------------------------------------------------------

U64_MAX = (1 << 64) - 1
ENGINE_IDS = list(merge.ENGINES)


def engine_args(engine):
    if engine == "duckdb":
        pytest.importorskip("duckdb", reason="the duckdb extra is not "
                            "installed")
    return ["--engine", engine]


def preagg(tmp_path, name, records, **kw):
    """A preagg branch profile of `records` (lines after E cycles)."""
    return write_profile(tmp_path / name, "E cycles\n" + "".join(
        line + "\n" for line in records), ("preagg", "branch"), **kw)


@pytest.mark.parametrize("engine", ENGINE_IDS)
def test_counts_up_to_u64_max_merge(engine, tmp_path, capsys):
    """BOLT reads a count as uint64: any u64 count is an input, also past
    10^19, and a sum of exactly 2^64-1 is written."""
    a = preagg(tmp_path, "a.preagg", [f"T 10 20 30 {U64_MAX}", "T 1 2 3 4"])
    b = preagg(tmp_path, "b.preagg", ["T 10 20 30 0", "T 1 2 3 5"])
    code, err = merge_main(capsys, a, b, *engine_args(engine),
                           "-o", tmp_path / "out")
    assert code == 0, err
    assert (tmp_path / "out").read_text() == \
        f"E cycles\nT 1 2 3 9\nT 10 20 30 {U64_MAX}\n"


@pytest.mark.parametrize("engine", ENGINE_IDS)
@pytest.mark.parametrize("counts", [[9999999999999999999] * 3,
                                    [U64_MAX, 1], [U64_MAX + 1]],
                         ids=["three-19-digit", "max-plus-one", "20-digit"])
def test_count_past_u64_max_refused(engine, counts, tmp_path, capsys):
    """A sum (or a count) past 2^64-1 is refused, one line and a hint, by
    both engines alike; nothing is written."""
    paths = [preagg(tmp_path, f"p{i}.preagg", [f"T 10 20 30 {c}"])
             for i, c in enumerate(counts)]
    code, err = merge_main(capsys, *paths, *engine_args(engine),
                           "-o", tmp_path / "out")
    assert_refused(code, err, f"past {U64_MAX} (2^64-1)", "fewer profiles")
    assert str(sum(counts)) in err
    assert not (tmp_path / "out").exists()


# --- objects without build id -----------------------------------------------------

def test_objects_without_build_id_told_apart_by_path(tmp_path, capsys):
    a = one(tmp_path, "a.preagg", build_id=None, object_path="/srv/app")
    b = one(tmp_path, "b.preagg", seed=1, build_id=None,
            object_path="/srv/other")
    code, err = merge_main(capsys, a, b, "-o", tmp_path / "out")
    assert_refused(code, err, "different objects", "each object")
    assert "/srv/other (no build id)" in err
    assert not (tmp_path / "out").exists()
    # the same path: one object
    c = one(tmp_path, "c.preagg", seed=2, build_id=None,
            object_path="/srv/app")
    code, err = merge_main(capsys, a, c, "-o", tmp_path / "out")
    assert code == 0, err
    assert json.loads((tmp_path / "out.json").read_text())["build_id"] is None


# --- the same file twice --------------------------------------------------------------

def test_same_profile_twice_refused(tmp_path, capsys, monkeypatch):
    a = one(tmp_path, "a.preagg")
    b = one(tmp_path, "b.preagg", seed=1)
    monkeypatch.chdir(tmp_path)
    for args in (["a.preagg", "b.preagg", "a.preagg"],
                 ["a.preagg", "./a.preagg"], [a, "b.preagg", "./b.preagg"]):
        code, err = merge_main(capsys, *args, "-o", tmp_path / "out")
        assert_refused(code, err, "would be summed twice",
                       "each profile once")
        assert not (tmp_path / "out").exists()
    assert merge_main(capsys, a, b, "-o", tmp_path / "out")[0] == 0


# --- DuckDB reads what the built-in engine reads -----------------------------------

def test_duckdb_reads_paths_literally(tmp_path, capsys):
    """DuckDB takes file names as glob patterns: a[1].preagg would read
    a1.preagg, st*r.preagg also stXr.preagg. Each name is the file it
    names."""
    pytest.importorskip("duckdb", reason="the duckdb extra is not installed")
    files = {"a[1].preagg": "T 1 2 3 1", "a1.preagg": "T 1 2 3 10",
             "st*r.preagg": "T 1 2 3 100", "stXr.preagg": "T 1 2 3 1000",
             "q?.preagg": "T 4 5 6 7", "qq.preagg": "T 4 5 6 70"}
    paths = {name: preagg(tmp_path, name, [line])
             for name, line in files.items()}
    given = [paths["a[1].preagg"], paths["st*r.preagg"], paths["q?.preagg"]]
    for engine in merge.ENGINES:
        code, err = merge_main(capsys, *given, "--engine", engine,
                               "-o", tmp_path / f"out-{engine}")
        assert code == 0, err
        assert (tmp_path / f"out-{engine}").read_text() == \
            "E cycles\nT 1 2 3 101\nT 4 5 6 7\n", engine


MALFORMED = {
    "trailing-space": "T 1 2 3 4 \n",
    "leading-space": " T 1 2 3 4\n",
    "double-space": "T 10  20 30 5\n",
    "empty-line": "\n",
    "event-after-line-1": "E cycles\n",
    "crlf": "T 1 2 3 4\r\n",
    "tab": "T 1 2 3\t4\n",
    "no-count": "T 1 2 3\n",
}


@pytest.mark.parametrize("bad", list(MALFORMED), ids=list(MALFORMED))
def test_engines_refuse_the_same_lines(bad, tmp_path, capsys):
    """A line that is no record: both engines refuse it with the same
    line, naming the file and the line (the first wrong one as read)."""
    pytest.importorskip("duckdb", reason="the duckdb extra is not installed")
    a = preagg(tmp_path, "a.preagg", ["T 1 2 3 4", "T 10 20 30 5"])
    text = "E cycles\nT 10 20 30 5\n" + MALFORMED[bad] + "T 1 2 3 4\n"
    b = write_profile(tmp_path / "b.preagg", text, ("preagg", "branch"))
    c = write_profile(tmp_path / "c.preagg", "E cycles\n\n",
                      ("preagg", "branch"))   # a later file's bad line
    errs = []
    for engine in merge.ENGINES:
        code, err = merge_main(capsys, a, b, c, "--engine", engine,
                               "-o", tmp_path / "out")
        assert_refused(code, err, f"{b}, line 3: not a record",
                       "unchanged profiles")
        errs.append(err)
        assert not (tmp_path / "out").exists()
    assert errs[0] == errs[1]
    if bad == "crlf":
        assert "CRLF" in errs[0] and "\\r" in errs[0]


def test_engines_refuse_crlf_headers_alike(tmp_path, capsys):
    """A CRLF file's header is refused as a line, shown with its "\\r",
    not as a second event spelled like the first."""
    pytest.importorskip("duckdb", reason="the duckdb extra is not installed")
    a = preagg(tmp_path, "a.preagg", ["T 1 2 3 4"])
    b = write_profile(tmp_path / "b.preagg", "E cycles\r\nT 1 2 3 4\r\n",
                      ("preagg", "branch"))
    errs = []
    for engine in merge.ENGINES:
        code, err = merge_main(capsys, a, b, "--engine", engine,
                               "-o", tmp_path / "out")
        assert_refused(code, err, f"{b}, line 1: not a record of this "
                       "profile's format (a CRLF line end): 'E cycles\\r'",
                       "unchanged profiles")
        errs.append(err)
    assert errs[0] == errs[1]


def test_engines_refuse_other_events_alike(tmp_path, capsys):
    pytest.importorskip("duckdb", reason="the duckdb extra is not installed")
    a = preagg(tmp_path, "a.preagg", ["T 1 2 3 4"])
    b = write_profile(tmp_path / "b.preagg", "E instructions\nT 1 2 3 4\n",
                      ("preagg", "branch"))   # the sidecar says cycles
    errs = []
    for engine in merge.ENGINES:
        code, err = merge_main(capsys, a, b, "--engine", engine,
                               "-o", tmp_path / "out")
        assert_refused(code, err, f"{b} counts event instructions, others "
                       "cycles", "each event")
        errs.append(err)
    assert errs[0] == errs[1]


@pytest.mark.parametrize("when", ["running", "before"])
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_duckdb_merge_interrupted(sig, when, tmp_path, capsys, monkeypatch):
    """Ctrl-C or SIGTERM while DuckDB runs the query, or before it began
    (DuckDB clears an interrupt when a query begins): what the built-in
    engine says (exit 130, no profile written), not an internal error,
    and at once, not when the query ends."""
    import signal
    import threading
    pytest.importorskip("duckdb", reason="the duckdb extra is not installed")
    from ebpf_bolt import merge_duckdb
    # a query of the rows' columns that runs for minutes, the signal sent
    # a second after it is made (DuckDB is running it then), or while the
    # query is being made
    started = threading.Event()
    sent = []

    def slow_sql(dia, files):
        started.set()
        if when == "before":
            time.sleep(0.5)
        return """
        SELECT 1 AS flag, 'T 1 2 3' AS key, sum(a.range * b.range) AS first,
               NULL AS second, '' AS first_pos, '' AS first_line
        FROM range(1000000000) a, range(60) b"""
    monkeypatch.setattr(merge_duckdb, "reduce_sql", slow_sql)
    a = one(tmp_path, "a.preagg")
    out = tmp_path / "out"
    out.write_text("old\n")

    done = threading.Event()

    def interrupt():
        # once: the query runs in a thread the signal stops
        # (merge_duckdb._interruptible), where DuckDB left alone was seen
        # to miss one under load
        if started.wait(30) and not done.wait(1 if when == "running"
                                               else 0.1):
            sent.append(time.monotonic())
            os.kill(os.getpid(), getattr(signal, sig))
    timer = threading.Thread(target=interrupt, daemon=True)
    timer.start()
    try:
        code, err = merge_main(capsys, a, "--engine", "duckdb", "-o", out)
    finally:
        done.set()
        timer.join()
    assert sent and time.monotonic() - sent[0] < 10, "the query ran on"
    assert code == 130, err
    assert err.splitlines() == [
        f"ebpf-bolt: merge interrupted by {sig}"
        + (" (Ctrl-C)" if sig == "SIGINT" else "") + ": no profile written"]
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.preagg", "a.preagg.json", "out"]


# --- the sidecar with its profile --------------------------------------------------

def test_interrupt_between_profile_and_sidecar_leaves_no_stale_sidecar(
        tmp_path, capsys, monkeypatch):
    """Stopped after the profile is written, before its sidecar: the old
    profile's sidecar is gone, so the new profile cannot be merged with
    the old one's hosts and times; it is refused until named with
    --binary."""
    from ebpf_bolt import output
    a = one(tmp_path, "a.preagg")
    b = one(tmp_path, "b.preagg", seed=1)
    out = tmp_path / "out.preagg"
    code, err = merge_main(capsys, a, "-o", out)     # the old pair
    assert code == 0, err

    def stopped(self, data):
        raise KeyboardInterrupt("SIGINT (Ctrl-C)")
    monkeypatch.setattr(output.Sidecar, "commit", stopped)
    code, err = merge_main(capsys, a, b, "-o", out)
    assert code == 130, err
    assert out.read_text() != open(a).read()          # the new profile
    assert not (tmp_path / "out.preagg.json").exists()
    monkeypatch.undo()
    code, err = merge_main(capsys, out, "-o", tmp_path / "again")
    assert_refused(code, err, "has no sidecar", "--binary")


def test_sidecar_made_before_the_profile_is_written(tmp_path, capsys,
                                                    monkeypatch):
    """Making the sidecar fails (here: a bug made to happen): nothing is
    written, the old profile and its sidecar stay as they were."""
    a = one(tmp_path, "a.preagg")
    b = one(tmp_path, "b.preagg", seed=1)
    out = tmp_path / "out.preagg"
    assert merge_main(capsys, a, "-o", out)[0] == 0
    before = outputs(out)

    def broken(side):
        raise ValueError("made to fail")
    monkeypatch.setattr(provenance, "sidecar_text", broken)
    code, err = merge_main(capsys, a, b, "-o", out)
    assert code == 70 and "made to fail" in err, err
    assert outputs(out) == before


@pytest.mark.parametrize("time_text", ["9999-12-31T23:59:59.999999Z",
                                       "0001-01-01T00:00:00.000000Z"])
def test_extreme_times_kept_as_they_are(time_text, tmp_path, capsys):
    """Times at the ends of what the sidecar can spell: merged as the text
    they are (no float in between to round 9999-12-31T23:59:59.999999
    into year 10000), and year 1 spelled with 4 digits, so that the output
    is an input again."""
    a = one(tmp_path, "a.preagg")
    b = one(tmp_path, "b.preagg", seed=1)
    side = json.loads(open(b + ".json").read())
    side["start"] = side["end"] = time_text
    with open(b + ".json", "w") as f:
        f.write(provenance.sidecar_text(side))
    code, err = merge_main(capsys, a, b, "-o", tmp_path / "out")
    assert code == 0, err
    merged = json.loads((tmp_path / "out.json").read_text())
    assert time_text in (merged["start"], merged["end"])
    assert provenance.problem(merged, provenance.SIDECAR_KEYS) is None
    code, err = merge_main(capsys, tmp_path / "out", "-o", tmp_path / "out2")
    assert code == 0, err


def test_utc_spells_four_digit_years():
    assert provenance.utc(-62135596800) == "0001-01-01T00:00:00.000000Z"
    assert provenance.parse_utc("0001-01-01T00:00:00.000000Z") == \
        -62135596800
    with pytest.raises(ValueError):
        provenance.parse_utc("1-01-01T00:00:00.000000Z")


# --- directories: all provenance first ----------------------------------------------

def test_directories_check_every_object_before_reading(tmp_path, capsys):
    """The first object's records are wrong, the second object's formats
    differ between the runs: the provenance is refused, before any record
    is read. And the summary counts in the singular where it is one."""
    d = ("preagg", "branch")
    good = render_records(d, random_parts(d, 1, SEED + 80)[0])
    run1 = index_dir(tmp_path / "run1", {
        "app.preagg": ("E cycles\nnot a record\n", BID, "/srv/app"),
        "lib.so.preagg": (good, OTHER_BID, "/srv/lib.so")})
    run2 = index_dir(tmp_path / "run2", {
        "lib.so.preagg": (good, OTHER_BID, "/srv/lib.so")})
    index = json.loads((run2 / "index.json").read_text())
    index["objects"][0]["format"] = "preagg-bf"
    (run2 / "index.json").write_text(json.dumps(index))
    code, err = merge_main(capsys, run1, run2, "-o", tmp_path / "out")
    assert_refused(code, err, "format preagg-bf", "one format")
    code, err = merge_main(capsys, run1 / "lib.so.preagg", "-o",
                           tmp_path / "x")    # no sidecar: refused
    assert code == 2
    run3 = index_dir(tmp_path / "run3", {
        "lib.so.preagg": (good, OTHER_BID, "/srv/lib.so")})
    code, err = merge_main(capsys, run3, "-o", tmp_path / "out3")
    assert code == 0, err
    assert "1 recorded or replayed profile summed" in err
