"""The merge's reduce as a group-by-sum in DuckDB (``merge --engine
duckdb``, ``pip install 'ebpf-bolt[duckdb]'``): the same regular
expressions and sort order as merge.reduce_builtin, run by DuckDB over the
files on disk, so that both engines write the same bytes.

Each line is read as up to 8 space-separated text columns, put back
together to be checked against the dialect's record pattern (the header's
for the event line), and grouped by its key columns. Addresses stay text
in the key (they are canonical, as the pattern checks: no leading zeros)
and are cast to UBIGINT only to sort: ``ffffffffffffffff`` (a trace
without fall-through) does not fit a signed BIGINT.
"""
from .errors import UsageError

COLUMNS = 8   # the most fields a record has (branch fdata)


def import_duckdb():
    try:
        import duckdb
    except ImportError:
        raise UsageError("--engine duckdb needs the duckdb package, which "
                         "is not installed",
                         "pip install 'ebpf-bolt[duckdb]', or use the "
                         "built-in engine (the default)") from None
    return duckdb


def _sql_string(text):
    return "'" + text.replace("'", "''") + "'"


def reduce_sql(dia, files_sql):
    """The query summing the records of the files `files_sql` (an SQL
    list of paths): rows (flag, key columns..., first sum, second sum),
    flag 1 for records, 0 for header lines (key: the header's text), -1
    for lines that are neither (their text, for the error)."""
    cols = [f"c{i}" for i in range(COLUMNS)]
    k = len(dia.fields)
    key, c1, c2 = cols[:k], cols[k], cols[k + 1] if k + 1 < COLUMNS else None
    header = (f"WHEN regexp_full_match(line, {_sql_string(dia.header_pattern)})"
              " THEN 0 " if dia.header_pattern else "")
    order = []
    for name, t in zip(key, dia.fields):
        if t == "x":
            order.append(f"TRY_CAST('0x' || {name} AS UBIGINT)")
        elif t == "i":
            order.append(f"TRY_CAST({name} AS INTEGER)")
        else:
            order.append(name)
    # TRY_CAST: a line that is no record (flag -1) is reported by its text,
    # not by a conversion error; a record's counts always fit (merge._NUM)
    second = (f"sum(TRY_CAST({c2} AS UBIGINT)) FILTER (WHERE flag = 1)"
              if c2 else "NULL")
    return f"""
WITH lines AS (
  SELECT *, concat_ws(' ', {', '.join(cols)}) AS line
  FROM read_csv({files_sql}, delim = ' ', header = false, quote = '',
                escape = '', null_padding = true, auto_detect = false,
                columns = {{{', '.join(f"'{c}': 'VARCHAR'" for c in cols)}}})
), flagged AS (
  SELECT *, CASE WHEN regexp_full_match(line,
                                        {_sql_string(dia.record_pattern)})
            THEN 1 {header}ELSE -1 END AS flag
  FROM lines
)
SELECT flag,
       CASE WHEN flag = 1 THEN concat_ws(' ', {', '.join(key)})
            ELSE line END AS key,
       sum(TRY_CAST({c1} AS UBIGINT)) FILTER (WHERE flag = 1) AS first,
       {second} AS second
FROM flagged
GROUP BY flag, CASE WHEN flag = 1 THEN concat_ws(' ', {', '.join(key)})
                    ELSE line END, {', '.join(key)}
ORDER BY flag, {', '.join(order)}
"""


def reduce_duckdb(dia, profiles):
    """merge.reduce_builtin's result, (event, {key: first}, {key:
    second}), computed by DuckDB."""
    duckdb = import_duckdb()
    files = "[" + ", ".join(_sql_string(p) for p in profiles) + "]"
    con = duckdb.connect()
    try:
        rows = con.execute(reduce_sql(dia, files))
        first, second, event = {}, {}, None
        while True:
            chunk = rows.fetchmany(65536)
            if not chunk:
                break
            for flag, key, c1, c2 in chunk:
                if flag == -1:
                    raise UsageError(f"not a record of the profiles' format: "
                                     f"{key[:80]!r}", "give unchanged "
                                     "profiles as ebpf-bolt wrote them (the "
                                     "sidecar names their format)")
                if flag == 0:
                    got = dia.header.fullmatch(key).group(1)
                    if event is not None and got != event:
                        raise UsageError(
                            f"the profiles count different events ({event},"
                            f" {got}): their counts cannot be summed",
                            "merge each event's profiles apart")
                    event = got
                    continue
                first[key] = int(c1)
                if c2 is not None:
                    second[key] = int(c2)
        return event, first, second
    except duckdb.Error as e:
        message = " ".join(str(e).split())[:300]
        raise UsageError(f"DuckDB could not read the profiles: {message}",
                         "give unchanged profiles as ebpf-bolt wrote them"
                         ) from None
    finally:
        con.close()
