"""The merge's reduce as a group-by-sum in DuckDB (``merge --engine
duckdb``, ``pip install 'ebpf-bolt[duckdb]'``): the same regular
expressions and sort order as merge.reduce_builtin, run by DuckDB over the
files on disk, so that both engines write the same bytes or refuse the
same input.

Each file is read whole as text and split at "\\n" into numbered lines, as
the built-in engine reads it (a last "\\n" ends the last line; any other
empty line is a line, and refused). Every line is checked against the
dialect's record pattern (the header's, on line 1); only then are its
fields split at the spaces and grouped by the key's. Counts are summed as
HUGEINT, so that a sum past 2^64-1 comes back whole and is refused as the
built-in engine refuses it (merge.check_counts). Addresses stay text in
the key (they are canonical, as the pattern checks: no leading zeros) and
are cast to UBIGINT only to sort: ``ffffffffffffffff`` (a trace without
fall-through) does not fit a signed BIGINT.

DuckDB takes a file name as a glob pattern (``a[1].preagg`` would read
``a1.preagg``), and cannot be told not to: it reads the profiles through
symbolic links of plain names (0000000, 0000001, ...) in a temporary
directory, one per input, and errors name the inputs again.
"""
import os
import shutil
import tempfile
import threading

from .errors import UsageError

_GLOB = set("*?[]{}\\")   # what DuckDB's glob may read as a pattern


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
    list of paths): rows (flag, key, first sum, second sum, first_pos,
    first_line).
    flag 1: a record's key and sums. flag 0: a header line (key: its text).
    flag -1: one row for all the lines that are neither. `first_pos` is the
    first line of the group as 'file:line number' (fixed width: it sorts
    as the files and lines are read), `first_line` that line."""
    k = len(dia.fields)
    header = (f"WHEN n = 1 AND regexp_full_match(line, "
              f"{_sql_string(dia.header_pattern)}) THEN 0 "
              if dia.header_pattern else "")
    order = []
    for i, t in enumerate(dia.fields, 1):
        field = f"string_split(key, ' ')[{i}]"
        if t == "x":
            order.append(f"TRY_CAST('0x' || {field} AS UBIGINT)")
        elif t == "i":
            order.append(f"TRY_CAST({field} AS INTEGER)")
        else:
            order.append(field)
    # TRY_CAST: the sums are filtered to records, whose counts always fit
    # HUGEINT (merge._NUM: at most 20 digits), but DuckDB may convert the
    # other lines' fields before filtering them out
    return f"""
WITH files AS (
  SELECT filename, string_split(content, chr(10)) AS lines
  FROM read_text({files_sql})
), numbered AS (
  SELECT filename, unnest(lines) AS line,
         unnest(range(1, len(lines) + 1)) AS n,
         len(lines) - CASE WHEN lines[-1] = '' THEN 1 ELSE 0 END AS last
  FROM files
), flagged AS (
  SELECT line, filename || ':' || lpad(n::VARCHAR, 20, '0') AS pos,
         CASE WHEN regexp_full_match(line, {_sql_string(dia.record_pattern)})
              THEN 1 {header}ELSE -1 END AS flag
  FROM numbered
  WHERE n <= last
), fields AS (
  SELECT *, string_split(line, ' ') AS f FROM flagged
)
SELECT flag,
       CASE flag WHEN 1 THEN array_to_string(f[1:{k}], ' ')
                 WHEN 0 THEN line END AS key,
       sum(TRY_CAST(f[{k + 1}] AS HUGEINT)) FILTER (WHERE flag = 1) AS first,
       sum(TRY_CAST(f[{k + 2}] AS HUGEINT)) FILTER (WHERE flag = 1) AS second,
       min(pos) AS first_pos, arg_min(line, pos) AS first_line
FROM fields
GROUP BY flag, key
ORDER BY flag, CASE flag WHEN 1 THEN '' ELSE first_pos END, {', '.join(order)}
"""


def reduce_duckdb(dia, profiles):
    """merge.reduce_builtin's result, (event, {key: first}, {key:
    second}), computed by DuckDB; its refusals too."""
    duckdb = import_duckdb()
    from .merge import bad_line, cannot_read, other_event
    links = tempfile.mkdtemp(prefix="ebpf-bolt-duckdb-")
    try:
        if _GLOB & set(links):
            raise UsageError(f"the temporary directory {links} has a glob "
                             "character in its path, which DuckDB would "
                             "read as a pattern", "set TMPDIR to a "
                             "directory without * ? [ ] { } \\ in its path")
        names = {}   # link -> the input it stands for
        for n, path in enumerate(profiles):
            try:
                open(path, "rb").close()   # DuckDB reads no file as none
            except OSError as e:
                raise cannot_read(path, e) from None
            link = os.path.join(links, f"{n:07d}")
            os.symlink(os.path.abspath(path), link)
            names[link] = path
        files = "[" + ", ".join(map(_sql_string, names)) + "]"
        con = duckdb.connect()
        try:
            return _interruptible(con, lambda: _collect(
                dia, con.execute(reduce_sql(dia, files)), names, bad_line,
                other_event))
        except (duckdb.Error, RuntimeError) as e:
            _interrupted(e)
            message = " ".join(str(e).split())
            for link, path in names.items():
                message = message.replace(link, path)
            if "valid UTF-8" in message:
                path = next((p for p in profiles if repr(p) in message
                             or f"'{p}'" in message), "a profile")
                raise UsageError(f"{path}: not text (UTF-8)",
                                 "give profiles ebpf-bolt wrote") from None
            raise UsageError(f"DuckDB could not read the profiles: "
                             f"{message[:300]}", "give unchanged profiles as "
                             "ebpf-bolt wrote them") from None
        finally:
            con.close()
    finally:
        shutil.rmtree(links, ignore_errors=True)


def _collect(dia, rows, names, bad_line, other_event):
    """(event, first, second) of the query's rows; the refusal the
    built-in engine gives for the first wrong line, in the order it reads
    them (the files in order, each from its first line)."""
    def place(at):
        link, n = at.rsplit(":", 1)
        return names[link], int(n)

    first, second = {}, {}
    event = refusal = refusal_at = None
    while True:
        chunk = rows.fetchmany(65536)
        if not chunk:
            break
        for flag, key, c1, c2, at, text in chunk:
            if flag == 1:
                first[key] = int(c1)
                if c2 is not None:
                    second[key] = int(c2)
            elif flag == -1:
                refusal, refusal_at = bad_line(*place(at), text, dia), at
            else:   # headers, in the order they are read
                got = dia.header.fullmatch(key).group(1)
                if event is None:
                    event = got
                elif refusal_at is None or at < refusal_at:
                    refusal = other_event(place(at)[0], got, [event])
                    refusal_at = at
    if refusal is not None:
        raise refusal
    return event, first, second


def _interruptible(con, work):
    """What work() returns (it runs `con`'s query and reads its rows), run
    in a thread while this one waits where Python handles signals: a stop
    signal (cli's handlers raise KeyboardInterrupt here) interrupts the
    query at once (con.interrupt()). Left to DuckDB, which looks for
    signals itself while the query runs in this thread, one was seen to be
    missed under load, the query running on. The end is an Event, not
    Thread.join: a join a signal interrupts can leave the thread marked
    ended while it runs (CPython's _wait_for_tstate_lock releases the lock
    the thread holds), and con.close() would then meet a busy connection."""
    done, finished = {}, threading.Event()

    def run():
        try:
            done["value"] = work()
        except BaseException as e:   # raised again in this thread
            done["error"] = e
        finally:
            finished.set()
    threading.Thread(target=run, name="duckdb-query", daemon=True).start()
    try:
        while not finished.wait(0.05):
            pass
    except KeyboardInterrupt as stop:
        # again until the thread ends: DuckDB clears the flag when a query
        # begins, so one sent before it began is lost; a second signal
        # changes nothing (the thread must end before the connection
        # closes)
        while True:
            con.interrupt()
            try:
                if finished.wait(0.05):
                    break
            except KeyboardInterrupt:
                pass
        raise stop
    if "error" in done:
        raise done["error"]
    return done["value"]


def _interrupted(error):
    """KeyboardInterrupt where `error` is DuckDB's for a query stopped by a
    signal (Ctrl-C, SIGTERM: cli's handler raised KeyboardInterrupt, which
    DuckDB turned into "Query interrupted")."""
    if "interrupted" not in str(error).lower():
        return
    from .cli import stop_reason
    raise KeyboardInterrupt(*stop_reason()) from None
