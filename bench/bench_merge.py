#!/usr/bin/env python3
"""Merge time and peak memory, built-in against DuckDB, and whether
Parquet helps (issue 11).

Run after scripts/setup.sh (the duckdb extra is installed there):

    .venv/bin/python bench/bench_merge.py [--files 1000] [--traces 100000]

1. Generates --files preagg profiles of one object, each of --traces
   distinct T/R records drawn from a pool of --keys traces (hosts share most
   of their hot code, so the pool is the whole program's traces), with
   random counts, each with its sidecar; about 35 bytes a line, so the
   default is ~3.5 GB of text in a temporary directory (--dir), removed at
   the end. To keep generation short, --variants distinct texts are drawn
   and each file is one of them: the merge reads every file all the same.
2. Runs ``ebpf-bolt merge`` on all of them, then ``merge --engine duckdb``,
   each in its own process: wall time, and peak memory as the kernel counts
   it for that process (ru_maxrss from wait4); checks the two outputs are
   the same bytes.
3. Parquet: each variant exported by DuckDB as Parquet (kind text,
   addresses and count UBIGINT), copied to --files files; prints the size
   on disk against the text, the export time of one profile, and DuckDB's
   group-by-sum over the Parquet files against the same query over the
   text files (the query ``merge --engine duckdb`` runs, which checks each
   line against its record pattern, and a plain one that only splits the
   lines, as the README's Spark SQL does), each in its own process (time
   and peak memory).
4. Against merge-fdata, LLVM BOLT's own tool for summing fdata (what a
   user who runs perf2bolt on each host would pick): --files branch fdata
   profiles (perf2bolt's records, names from a pool of functions) summed by
   merge-fdata, ``ebpf-bolt merge`` and ``merge --engine duckdb``; time and
   peak memory of each, and whether all three sums agree record for record.

--parts picks the parts: text (1 and 2), parquet (3), fdata (4).
"""
import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))   # for the generator only

from ebpf_bolt import provenance  # noqa: E402

BID = "0123456789abcdef0123456789abcdef01234567"
T0 = 1764882380.0
BR_ONLY = 0xffffffffffffffff


def key_pool(n, rng):
    """`n` distinct traces of a 32 MiB PIE: branches within the text,
    fall-through ends a few dozen bytes on, some branch-only (ft_end
    ffffffffffffffff) and returns from outside (from 0)."""
    keys = set()
    while len(keys) < n:
        frm = 0 if rng.random() < 0.03 else rng.randrange(0x1000, 0x2000000)
        to = rng.randrange(0x1000, 0x2000000)
        end = BR_ONLY if rng.random() < 0.1 else to + rng.randrange(2, 200)
        keys.add("%s %x %x %x" % ("R" if rng.random() < 0.1 else "T",
                                  frm, to, end))
    return list(keys)


def generate(directory, files, traces, pool, variants, rng):
    texts = []
    for _ in range(variants):
        lines = ["E cycles\n"]
        lines += ["%s %d\n" % (k, rng.randrange(1, 5000))
                  for k in rng.sample(pool, traces)]
        texts.append("".join(lines).encode())
    return write_hosts(directory, "preagg", texts, files, traces), texts


def write_hosts(directory, fmt, texts, files, records):
    """`files` profiles host0000.FMT... (each one of `texts` in turn) of
    one branch-mode object, each with its sidecar; returns their paths."""
    paths = []
    for i in range(files):
        path = os.path.join(directory, f"host{i:04d}.{fmt}")
        text = texts[i % len(texts)]
        with open(path, "wb") as f:
            f.write(text)
        prov = provenance.describe(
            path="/srv/app", build_id=BID, mode="branch", fmt=fmt,
            event="cycles", frequency=4999, start=T0 + i, end=T0 + i + 600,
            hosts=[f"host{i:04d}"])
        with open(path + ".json", "w") as f:
            f.write(provenance.sidecar_text(provenance.sidecar(
                prov, samples=records, processes=1, size=len(text))))
        paths.append(path)
    return paths


def fdata_pool(n, rng, functions=5000):
    """`n` distinct branch records of perf2bolt's fdata: within a function
    or a call to another, among `functions` functions."""
    keys = set()
    while len(keys) < n:
        f = rng.randrange(functions)
        g = f if rng.random() < 0.8 else rng.randrange(functions)
        keys.add("1 fn%d %x 1 fn%d %x" % (f, rng.randrange(0x2000), g,
                                           rng.randrange(0x2000)))
    return list(keys)


def generate_fdata(directory, files, records, pool, variants, rng):
    texts = []
    for _ in range(variants):
        texts.append("".join(
            "%s %d %d\n" % (k, rng.randrange(0, 50), rng.randrange(50, 5000))
            for k in rng.sample(pool, records)).encode())
    return write_hosts(directory, "fdata", texts, files, records)


def fdata_sums(path):
    """{record key: [mispreds, count]} of an fdata file's branch records
    (merge-fdata may add a header line, which is skipped)."""
    out = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) != 8:
                continue
            out[" ".join(parts[:6])] = [int(parts[6]), int(parts[7])]
    return out


def merge_fdata_tool():
    """The newest installed LLVM's merge-fdata, or None."""
    import glob
    found = sorted(glob.glob("/usr/lib/llvm-*/bin/merge-fdata"),
                   key=lambda p: int(p.split("llvm-")[1].split("/")[0]))
    return found[-1] if found else None


def fdata_part(args, work, rng):
    tool = merge_fdata_tool()
    if tool is None:
        print("\n(fdata part: no merge-fdata installed: apt install bolt-22)")
        return
    fd_dir = os.path.join(work, "fdata")
    os.mkdir(fd_dir)
    pool = fdata_pool(args.keys, rng)
    paths = generate_fdata(fd_dir, args.files, args.traces, pool,
                           min(args.variants, args.files), rng)
    size = sum(os.path.getsize(p) for p in paths)
    print(f"\n{args.files:,} branch fdata profiles of {args.traces:,} records"
          f": {size / 1e9:.2f} GB", flush=True)
    rows, sums = [], {}
    runs = [(f"{tool} (LLVM's merge-fdata)", [tool, *paths, "-o"]),
            ("ebpf-bolt merge", [args.ebpf_bolt, "merge", *paths, "-o"]),
            ("ebpf-bolt merge --engine duckdb",
             [args.ebpf_bolt, "merge", "--engine", "duckdb", *paths, "-o"])]
    for name, argv in runs:
        out = os.path.join(work, f"fdata-{len(rows)}.fdata")
        seconds, rss, _ = measure(argv + [out])
        rows.append((name, seconds, rss))
        sums[name] = fdata_sums(out)
        print(f"  {name}: {seconds:.1f} s, {rss:.0f} MiB", flush=True)
    first = next(iter(sums.values()))
    agree = all(s == first for s in sums.values())
    print(f"\n| sum of {args.files:,} branch fdata profiles ({size / 1e9:.2f} "
          "GB) | wall time | peak RSS |")
    print("|---|---|---|")
    for name, seconds, rss in rows:
        print(f"| {name} | {seconds:.1f} s | {rss:.0f} MiB |")
    print(f"\nthe three sums agree record for record: {agree} "
          f"({len(first):,} records)")


def measure(argv, **kw):
    """(seconds, peak RSS in MiB, stdout) of a command in its own process."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, **kw)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    seconds = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{argv[:3]}... failed with {p.returncode}")
    return seconds, usage.ru_maxrss / 1024, out


DUCKDB_RUN = """
import sys, time, duckdb
con = duckdb.connect()
t0 = time.monotonic()
rows = con.execute(sys.stdin.read()).fetchall()
print("rows", len(rows), time.monotonic() - t0)
"""


def duckdb_query(sql):
    py = os.path.join(os.path.dirname(sys.executable), "python")
    seconds, rss, out = measure([py, "-c", DUCKDB_RUN], stdin=open(sql))
    rows, _ = out.split()[-2:]
    return seconds, rss, int(rows)


def parquet_sql(files):
    listed = ", ".join(f"'{f}'" for f in files)
    return (f"SELECT kind, from_addr, to_addr, ft_end, sum(count) AS count "
            f"FROM read_parquet([{listed}]) "
            f"GROUP BY kind, from_addr, to_addr, ft_end "
            f"ORDER BY kind, from_addr, to_addr, ft_end")


def plain_text_sql(files):
    """The group-by-sum over the text with no check of the records: what a
    cluster engine's query over the uploaded files does (README)."""
    listed = ", ".join(f"'{f}'" for f in files)
    return (f"SELECT c0, c1, c2, c3, sum(CAST(c4 AS UBIGINT)) AS count "
            f"FROM read_csv([{listed}], delim = ' ', header = false, "
            f"quote = '', escape = '', null_padding = true, "
            f"auto_detect = false, columns = {{'c0': 'VARCHAR', "
            f"'c1': 'VARCHAR', 'c2': 'VARCHAR', 'c3': 'VARCHAR', "
            f"'c4': 'VARCHAR'}}) WHERE c0 <> 'E' "
            f"GROUP BY c0, c1, c2, c3 ORDER BY c0, "
            f"CAST('0x' || c1 AS UBIGINT), CAST('0x' || c2 AS UBIGINT), "
            f"CAST('0x' || c3 AS UBIGINT)")


def export_parquet(text_path, parquet_path):
    import duckdb
    con = duckdb.connect()
    con.execute(f"""
COPY (SELECT c0 AS kind, CAST('0x' || c1 AS UBIGINT) AS from_addr,
             CAST('0x' || c2 AS UBIGINT) AS to_addr,
             CAST('0x' || c3 AS UBIGINT) AS ft_end,
             CAST(c4 AS UBIGINT) AS count
      FROM read_csv('{text_path}', delim = ' ', header = false, quote = '',
                    escape = '', null_padding = true, auto_detect = false,
                    columns = {{'c0': 'VARCHAR', 'c1': 'VARCHAR',
                               'c2': 'VARCHAR', 'c3': 'VARCHAR',
                               'c4': 'VARCHAR'}})
      WHERE c0 <> 'E')
TO '{parquet_path}' (FORMAT parquet)""")
    con.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--traces", type=int, default=100_000)
    ap.add_argument("--keys", type=int, default=400_000,
                    help="the pool of distinct traces the files draw from")
    ap.add_argument("--variants", type=int, default=8)
    ap.add_argument("--dir", default=None, help="where the temporary "
                    "directory goes (default: $TMPDIR)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--ebpf-bolt", default=os.path.join(
        os.path.dirname(sys.executable), "ebpf-bolt"))
    ap.add_argument("--parts", default="text,parquet,fdata",
                    help="comma-separated: text, parquet, fdata")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    rng = random.Random(20261204)
    work = tempfile.mkdtemp(prefix="bench-merge-", dir=args.dir)
    try:
        if "fdata" in parts:
            fdata_part(args, work, rng)
        if not parts & {"text", "parquet"}:
            return
        text_dir = os.path.join(work, "text")
        os.mkdir(text_dir)
        t0 = time.monotonic()
        pool = key_pool(args.keys, rng)
        paths, texts = generate(text_dir, args.files, args.traces, pool,
                                min(args.variants, args.files), rng)
        size = sum(os.path.getsize(p) for p in paths)
        print(f"{args.files:,} profiles of {args.traces:,} traces from a "
              f"pool of {args.keys:,}: {size / 1e9:.2f} GB of text, made in "
              f"{time.monotonic() - t0:.0f} s", flush=True)

        rows = []
        outs = {}
        for engine in ("builtin", "duckdb"):
            out = os.path.join(work, f"merged-{engine}.preagg")
            seconds, rss, _ = measure([args.ebpf_bolt, "merge", *paths,
                                       "--engine", engine, "-o", out])
            outs[engine] = out
            rows.append((f"ebpf-bolt merge --engine {engine}", seconds, rss))
            print(f"  {engine}: {seconds:.1f} s, {rss:.0f} MiB", flush=True)
        with open(outs["builtin"], "rb") as a, open(outs["duckdb"], "rb") as b:
            same = a.read() == b.read()
        merged_lines = sum(1 for _ in open(outs["builtin"])) - 1

        # Parquet: the variants exported, then copied to every file name
        pq_dir = os.path.join(work, "parquet")
        os.mkdir(pq_dir)
        t0 = time.monotonic()
        for v in range(min(args.variants, args.files)):
            export_parquet(paths[v], os.path.join(pq_dir, f"v{v}.parquet"))
        export_one = (time.monotonic() - t0) / min(args.variants, args.files)
        pq_paths = []
        for i in range(args.files):
            dst = os.path.join(pq_dir, f"host{i:04d}.parquet")
            shutil.copyfile(os.path.join(
                pq_dir, f"v{i % min(args.variants, args.files)}.parquet"),
                dst)
            pq_paths.append(dst)
        pq_size = sum(os.path.getsize(p) for p in pq_paths)

        from ebpf_bolt.merge import DIALECTS
        from ebpf_bolt.merge_duckdb import reduce_sql
        sql_text = os.path.join(work, "text.sql")
        with open(sql_text, "w") as f:
            f.write(reduce_sql(DIALECTS[("preagg", "branch")],
                               "[" + ", ".join(f"'{p}'" for p in paths)
                               + "]"))
        sql_pq = os.path.join(work, "parquet.sql")
        with open(sql_pq, "w") as f:
            f.write(parquet_sql(pq_paths))
        sql_plain = os.path.join(work, "plain.sql")
        with open(sql_plain, "w") as f:
            f.write(plain_text_sql(paths))
        t_text, rss_text, n_text = duckdb_query(sql_text)
        t_plain, rss_plain, _ = duckdb_query(sql_plain)
        t_pq, rss_pq, n_pq = duckdb_query(sql_pq)

        print()
        print(f"| merge of {args.files:,} profiles ({size / 1e9:.2f} GB) | "
              "wall time | peak RSS |")
        print("|---|---|---|")
        for name, seconds, rss in rows:
            print(f"| {name} | {seconds:.1f} s | {rss:.0f} MiB |")
        print(f"\noutputs identical: {same}; {merged_lines:,} distinct "
              "traces in the sum")
        print()
        print("| DuckDB group-by-sum over | on disk | query process | "
              "peak RSS |")
        print("|---|---|---|---|")
        print(f"| text (merge --engine duckdb's query) | {size / 1e9:.2f} GB "
              f"| {t_text:.1f} s | {rss_text:.0f} MiB |")
        print(f"| text, records not checked (as the README's Spark SQL) | "
              f"{size / 1e9:.2f} GB | {t_plain:.1f} s | {rss_plain:.0f} MiB |")
        print(f"| Parquet (UBIGINT addresses) | {pq_size / 1e9:.2f} GB "
              f"| {t_pq:.1f} s | {rss_pq:.0f} MiB |")
        print(f"\nParquet export: {export_one:.2f} s per profile of "
              f"{args.traces:,} traces (DuckDB, from the text); groups: "
              f"text {n_text - 1:,} + header, Parquet {n_pq:,}")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
