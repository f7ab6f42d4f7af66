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
