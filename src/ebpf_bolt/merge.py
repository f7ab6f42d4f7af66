"""``ebpf-bolt merge``: the sum of profiles of one object, from several
runs or hosts.

A profile is a set of records, each a key (record kind and addresses, or
fdata's names and offsets) and one or two counts; the sum of profiles adds
the counts of equal keys. Only profiles of the same object (build id), the
same mode (IP samples or branch traces), the same format and the same event
can be summed: their provenance (provenance.py, from the sidecar or the
index.json entry) says which, and anything else is refused before reading a
record.

Memory holds the summed key -> count table and, per input, its provenance
(a small dict): files are read a block of lines at a time (reduce_builtin),
and the provenance of the inputs is folded (ProvenanceSum) before any
record is read. The output is sorted by key, so merging is associative
and commutative byte for byte, and a merge's output (with its own
sidecar) is an input like any other.

The same reduce runs as a group-by-sum in DuckDB (engine="duckdb",
``pip install 'ebpf-bolt[duckdb]'``) over the files on disk; the regular
expressions and the sort order below are shared by both engines, which is
how they write the same bytes.
"""
import json
import os
import re

from . import provenance
from .errors import UsageError, os_error_text

ENGINES = ("builtin", "duckdb")

_HEX = r"(?:0|[1-9a-f][0-9a-f]{0,15})"   # as the writers spell addresses
# a count: no sign, no leading 0, at most 20 digits; its value is checked
# against COUNT_MAX with the sums (check_counts)
_NUM = r"(?:0|[1-9][0-9]{0,19})"
_NAME = r"[^ \n]+"                        # an fdata name or DSO
_EVENT = r"([!-~]+)"   # printable ASCII but space: no "\r" of a CRLF line

# BOLT reads a count as uint64: an input may hold any, and a sum past it
# is refused (check_counts), never wrapped nor clipped, so that a merge's
# output is always a valid input and merges compose exactly
COUNT_MAX = (1 << 64) - 1


class Dialect:
    """One kind of profile text: `fields`, the types of the key's fields
    (k: record kind, x: hex address, i: decimal, s: name), sorted as those
    types; `record`, the regular expression of a line: group 1 the key,
    group 2 the first count, group 3 the optional second count (summed
    apart); `header`, that of the first line, whose group 1 is the event,
    or None where the format has no header."""

    def __init__(self, fields, record, header=None, header_format=None):
        self.fields = fields
        self.record_pattern = record
        self.record = re.compile(record)
        # every line of a block of text, in one findall (reduce_builtin):
        # no part of `record` matches "\n", so each match is a whole line
        self.block = re.compile(f"^(?:{record})$", re.MULTILINE)
        self.header_pattern = header
        self.header = re.compile(header) if header else None
        self.header_format = header_format    # % event

    def sort_key(self, key):
        parts = key.split(" ")
        return tuple(int(p, 16) if t == "x" else int(p) if t == "i" else p
                     for t, p in zip(self.fields, parts))


DIALECTS = {
    # T/R from to ft_end count (writers.preagg_traces)
    ("preagg", "branch"): Dialect(
        "kxxx", rf"([TR] {_HEX} {_HEX} {_HEX}) ({_NUM})()",
        "E " + _EVENT, "E %s\n"),
    # B from to count mispreds; F/f start end count
    # (writers.preagg_branches_fallthroughs)
    ("preagg-bf", "branch"): Dialect(
        "kxx", rf"(B {_HEX} {_HEX}) ({_NUM}) ({_NUM})|"
               rf"([Ff] {_HEX} {_HEX}) ({_NUM})()"),
    # S addr count (writers.preagg_basic)
    ("preagg", "ip"): Dialect(
        "kx", rf"(S {_HEX}) ({_NUM})()", "E " + _EVENT, "E %s\n"),
    # is_sym name offset count (writers.fdata_basic)
    ("fdata", "ip"): Dialect(
        "isx", rf"([012] {_NAME} {_HEX}) ({_NUM})()",
        "no_lbr " + _EVENT, "no_lbr %s\n"),
    # is_sym name offset is_sym name offset mispreds count (perf2bolt's)
    ("fdata", "branch"): Dialect(
        "isxisx", rf"([012] {_NAME} {_HEX} [012] {_NAME} {_HEX}) ({_NUM}) "
                  rf"({_NUM})"),
}


def dialect(fmt, mode, source):
    d = DIALECTS.get((fmt, mode))
    if d is None:
        if fmt == "yaml":
            raise UsageError(f"{source}: YAML profiles cannot be summed "
                             "record by record", "merge the preagg or "
                             "preagg-bf profiles, then make YAML of the sum "
                             "with perf2bolt")
        raise UsageError(f"{source}: no {mode}-mode profile is written in "
                         f"format {fmt}", "give profiles ebpf-bolt wrote")
    return d


# --- inputs and their provenance --------------------------------------------

class Input:
    """One profile to merge: its file and its provenance."""

    def __init__(self, profile, prov, source):
        self.profile = profile   # the profile file
        self.prov = prov         # sidecar or index entry, or made by --binary
        self.source = source     # where the provenance came from, for errors


def _read_json(path, what):
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror}",
                         "check the path") from None
    except ValueError as e:
        raise UsageError(f"{what} {path} is not JSON ({e})",
                         "give the sidecar or index.json ebpf-bolt wrote")


def _bad_provenance(source, wrong):
    return UsageError(f"{source}: {wrong}", "give a sidecar or index.json "
                      "as ebpf-bolt writes it")


def _count(value):
    return type(value) is int and value >= 0


def _count_or_unknown(value):
    """samples and processes: null where a merged input had no sidecar."""
    return value is None or _count(value)


def directory_inputs(path):
    """The profiles of a directory's index.json, one Input per object."""
    index_path = os.path.join(path, "index.json")
    index = _read_json(index_path, "index")
    if not (isinstance(index, dict) and isinstance(index.get("objects"),
                                                   list)):
        raise _bad_provenance(index_path, 'not {"objects": [...]}')
    for n, entry in enumerate(index["objects"], 1):
        source = f"{index_path} (object {n})"
        if not isinstance(entry, dict):
            raise _bad_provenance(source, "not an object")
        wrong = provenance.problem(entry, provenance.KEYS + (
            "path", "build_id", "profile", "samples", "processes"))
        if wrong is None and not all(_count_or_unknown(entry[k]) for k in
                                     ("samples", "processes")):
            wrong = "samples and processes are not counts or null"
        if wrong is None and not (isinstance(entry["profile"], str) and
                                  "/" not in entry["profile"]):
            wrong = f"profile {entry['profile']!r} is not a file name"
        if wrong:
            raise _bad_provenance(source, wrong)
        yield Input(os.path.join(path, entry["profile"]), entry, source)


def file_input(path, binary):
    """The Input of a single profile: its sidecar FILE.json, or, without
    one, the provenance `binary` (an ElfFile, from --binary) and the
    profile's first lines give."""
    side_path = path + provenance.SUFFIX
    try:
        size = os.stat(path).st_size
    except OSError as e:
        raise cannot_read(path, e) from None
    if not os.path.exists(side_path):
        if binary is None:
            raise UsageError(f"{path} has no sidecar {side_path}: nothing "
                             "says which object, mode and event it is of",
                             "name its object with --binary PATH (its build "
                             "id is read from it), or merge profiles "
                             "ebpf-bolt wrote with -o FILE")
        return Input(path, _provenance_of_bare(path, binary),
                     f"{path} (no sidecar; --binary {binary.path})")
    side = _read_json(side_path, "sidecar")
    if not isinstance(side, dict):
        raise _bad_provenance(side_path, "not an object")
    wrong = provenance.problem(side, provenance.SIDECAR_KEYS)
    if wrong is None and not (_count(side["bytes"]) and all(
            _count_or_unknown(side[k]) for k in ("samples", "processes"))):
        wrong = "samples, processes or bytes is not a count"
    if wrong:
        raise _bad_provenance(side_path, wrong)
    if side["bytes"] != size:
        raise UsageError(f"{side_path} describes a profile of "
                         f"{side['bytes']:,} bytes, but {path} has "
                         f"{size:,}: the profile was replaced without it",
                         "remove the stale sidecar and name the object "
                         "with --binary PATH")
    if binary is not None and side["build_id"] != binary.build_id:
        raise UsageError(f"{path} is a profile of build id "
                         f"{side['build_id']} ({side['path']}), --binary "
                         f"{binary.path} has {binary.build_id}",
                         "give --binary the object the profiles are of")
    return Input(path, side, side_path)


def _provenance_of_bare(path, binary):
    """What --binary and the profile's first lines tell of a profile that
    has no sidecar. Its time is the file's modification time; its host and
    frequency, samples and processes unknown (None: a merge's sum of them
    is unknown too, rather than short of this input's)."""
    fmt, mode, event = sniff(path)
    mtime = os.stat(path).st_mtime
    prov = provenance.describe(
        path=binary.path, build_id=binary.build_id, mode=mode, fmt=fmt,
        event=event or UNKNOWN_EVENT, frequency=None, start=mtime,
        end=mtime, hosts=[])
    return dict(prov, samples=None, processes=None)


UNKNOWN_EVENT = "unknown"   # an input without sidecar nor header


def sniff(path):
    """(format, mode, event or None) of a profile from its first lines."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            first, second = f.readline(), f.readline()
    except OSError as e:
        raise cannot_read(path, e) from None
    first, second = first.rstrip("\n"), second.rstrip("\n")
    if first.startswith("E "):
        mode = "ip" if second.startswith("S ") else "branch"
        return "preagg", mode, first[2:]
    if first.startswith("no_lbr "):
        return "fdata", "ip", first[7:]
    if first[:2] in ("B ", "F ", "f "):
        return "preagg-bf", "branch", None
    if first.startswith("---"):
        return "yaml", "branch", None
    if len(first.split(" ")) == 8:
        return "fdata", "branch", None
    raise UsageError(f"{path}: not a profile ebpf-bolt writes (first line "
                     f"{first[:60]!r})", "give preagg, preagg-bf or fdata "
                     "profiles")


def object_of(prov):
    """What tells objects apart: the build id, or the path where an object
    has none."""
    return prov["build_id"] or ("path", prov["path"])


def _object_name(prov):
    return (f"build id {prov['build_id']} ({prov['path']})"
            if prov["build_id"] else f"{prov['path']} (no build id)")


def gather(paths, binary=None):
    """{object: [Input]} of `paths` (profiles and index.json directories),
    objects keyed by object_of(), and whether any input was a directory.
    The same profile file given twice (by another path, a link, or in two
    directories) is refused: it would be counted twice."""
    groups, any_dir, seen = {}, False, {}
    for path in paths:
        if os.path.isdir(path):
            any_dir = True
            inputs = directory_inputs(path)
        else:
            inputs = [file_input(path, binary)]
        for inp in inputs:
            try:
                st = os.stat(inp.profile)
            except OSError as e:
                raise cannot_read(inp.profile, e) from None
            again = seen.setdefault((st.st_dev, st.st_ino), inp)
            if again is not inp:
                raise UsageError(f"{inp.profile} is {again.profile} again: its "
                                 "counts would be summed twice",
                                 "give each profile once")
            groups.setdefault(object_of(inp.prov), []).append(inp)
    return groups, any_dir


class ProvenanceSum:
    """The provenance of a sum, folded an input at a time (nothing kept per
    input): refuses an input that cannot be summed with those before."""

    def __init__(self):
        self.first = None
        self.events = set()
        self.frequencies = set()
        self.hosts = set()
        self.start = self.end = None
        self.inputs = self.samples = self.processes = 0
        self.path = None

    def add(self, inp):
        p, first = inp.prov, self.first
        if first is None:
            self.first = first = inp
        f = first.prov
        if object_of(p) != object_of(f):
            raise UsageError(
                f"{inp.source} is of {_object_name(p)}, {first.source} of "
                f"{_object_name(f)}: profiles of different objects cannot be "
                "summed", "merge each object's profiles apart (an index.json "
                "directory merges per object)")
        if p["mode"] != f["mode"]:
            raise UsageError(
                f"{inp.source} holds {_MODE_NAMES[p['mode']]}, "
                f"{first.source} {_MODE_NAMES[f['mode']]}: IP and branch "
                "profiles cannot be summed", "merge each mode's profiles "
                "apart")
        if p["format"] != f["format"]:
            raise UsageError(
                f"{inp.source} is in format {p['format']}, {first.source} in "
                f"{f['format']}: their records cannot be summed",
                "record them in one format (--format)")
        if p["event"] != UNKNOWN_EVENT:
            self.events.add(p["event"])
            if len(self.events) > 1:
                raise other_event(inp.source, p["event"],
                                  sorted(self.events - {p["event"]}))
        self.frequencies.add(p["frequency"])
        self.hosts.update(p["hosts"])
        self.start = min(filter(None, (self.start, p["start"])))
        self.end = max(filter(None, (self.end, p["end"])))
        self.inputs += p["inputs"]
        self.samples = _sum_known(self.samples, p["samples"])
        self.processes = _sum_known(self.processes, p["processes"])
        self.path = min(filter(None, (self.path, p["path"])))

    @property
    def frequency(self):
        """The inputs' frequency where all share one, else None."""
        return (next(iter(self.frequencies)) if len(self.frequencies) == 1
                else None)

    def warnings(self):
        freqs = sorted(f for f in self.frequencies if f is not None)
        if len(self.frequencies) > 1 and freqs:
            return [f"{self.path}: inputs sampled at different frequencies "
                    f"({', '.join(map(str, freqs))} Hz"
                    + (", and some unknown" if None in self.frequencies
                       else "") + "): their counts are summed as they are, "
                    "so what was sampled faster weighs more"]
        return []

    def describe(self):
        f = self.first.prov
        prov = provenance.describe(
            path=self.path, build_id=f["build_id"], mode=f["mode"],
            fmt=f["format"], event=(next(iter(self.events)) if self.events
                                    else UNKNOWN_EVENT),
            frequency=self.frequency, start=self.start, end=self.end,
            hosts=self.hosts,
            inputs=self.inputs)
        return prov


_MODE_NAMES = {"ip": "IP samples", "branch": "branch traces"}


def _sum_known(a, b):
    return None if a is None or b is None else a + b


# --- the reduce --------------------------------------------------------------

# bytes read at once by reduce_builtin: 256 KiB is as fast as 4 MiB, whose
# findall list of ~120,000 tuples raised the peak RSS by 60 MiB (40 reads
# of 100,000 T records: 84 MiB per line, 89 MiB here, 145 MiB at 4 MiB)
BLOCK = 1 << 18


def reduce_builtin(dia, profiles):
    """Sum the records of `profiles` (paths of one dialect): (event of the
    headers or None, {key: first count}, {key: second count}). Files are
    read a block (BLOCK bytes, cut after a line) at a time, and a block's
    lines checked and split by one findall, in C: a Python loop per line
    cost 1.5 times as much. Only the sums are kept."""
    first, second = {}, {}
    event = None
    for path in profiles:
        try:
            f = open(path, "rb")
        except OSError as e:
            raise cannot_read(path, e) from None
        with f:
            line_no = 1     # of the block's first line
            for text in _blocks(f, path):
                if line_no == 1 and dia.header:
                    h = dia.header.match(text)
                    if h is not None and text[h.end():h.end() + 1] == "\n":
                        if event is not None and h.group(1) != event:
                            raise other_event(path, h.group(1), [event])
                        event = h.group(1)
                        text = text[h.end() + 1:]
                        line_no += 1
                records = dia.block.findall(text)
                lines = text.count("\n")
                if len(records) != lines:
                    raise _first_bad_line(dia, path, text, line_no)
                line_no += lines
                _add(records, first, second)
    return event, first, second


def _blocks(f, path):
    """The text of binary file `f`, in blocks of whole lines, each ending
    in "\n" (one is added after a last line without). A line longer than
    a block is gathered in pieces, joined once."""
    pieces = []   # a line begun, not ended
    while True:
        data = f.read(BLOCK)
        if not data:
            if pieces:
                yield _decode(b"".join(pieces) + b"\n", path)
            return
        cut = data.rfind(b"\n") + 1   # "\n" is no part of a UTF-8 sequence
        if not cut:
            pieces.append(data)
            continue
        pieces.append(data[:cut])
        yield _decode(b"".join(pieces), path)
        pieces = [data[cut:]] if cut < len(data) else []


def _decode(data, path):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not text (UTF-8)",
                         "give profiles ebpf-bolt wrote") from None


def _add(records, first, second):
    """Sum findall's tuples: (key, first count, second count or '');
    preagg-bf's pattern has two alternatives of three groups."""
    get1, get2 = first.get, second.get
    if records and len(records[0]) == 6:
        records = [r[:3] if r[0] else r[3:] for r in records]
    for key, c1, c2 in records:
        first[key] = get1(key, 0) + int(c1)
        if c2:
            second[key] = get2(key, 0) + int(c2)


def _first_bad_line(dia, path, text, line_no):
    """The refusal of the first line of `text` (line `line_no` of `path`)
    that is no record."""
    for n, line in enumerate(text.split("\n")[:-1], line_no):
        if dia.record.fullmatch(line) is None:
            return bad_line(path, n, line, dia)
    raise AssertionError("a block with a line findall did not match")


def cannot_read(path, err):
    return UsageError(f"cannot read {path}: {os_error_text(err)}",
                      "check the profile's path")


def bad_line(path, n, line, dia):
    crlf = " (a CRLF line end)" if line.endswith("\r") else ""
    return UsageError(f"{path}, line {n}: not a record of this profile's "
                      f"format{crlf}: {line[:80]!r}", "give unchanged "
                      "profiles as ebpf-bolt wrote them (the sidecar names "
                      "their format)")


def other_event(where, event, others):
    """The refusal of `where`'s event among those of `others`; names as
    Python strings where they are not plain text (a "\r" must show)."""
    def shown(name):
        return name if name.isprintable() else repr(name)
    return UsageError(f"{where} counts event {shown(event)}, others "
                      f"{', '.join(map(shown, others))}: counts of different "
                      "events cannot be summed",
                      "merge each event's profiles apart")


def check_counts(first, second, source):
    """Refuse a sum (or an input's count) past COUNT_MAX, the most BOLT
    reads, rather than write a profile BOLT and merge itself cannot read.
    Either engine's sums, checked once."""
    for counts in (first, second):
        if counts and max(counts.values()) > COUNT_MAX:
            key = next(k for k, c in counts.items() if c > COUNT_MAX)
            raise UsageError(
                f"{source}: the counts of record {key!r} sum to "
                f"{counts[key]}, past {COUNT_MAX} (2^64-1), the most a BOLT "
                "profile's count holds", "merge fewer profiles into one (or "
                "profiles recorded over less time)")


def render(dia, event, first, second, presorted=False):
    """The summed profile's text: the header, then the records sorted by
    key (so that the order of the inputs does not show). `presorted`: the
    keys of `first` are in that order already (DuckDB's ORDER BY)."""
    out = [dia.header_format % event] if dia.header_format and event else []
    for key in (first if presorted else sorted(first, key=dia.sort_key)):
        c2 = second.get(key)
        out.append(f"{key} {first[key]}\n" if c2 is None
                   else f"{key} {first[key]} {c2}\n")
    return "".join(out)


def fold(inputs):
    """The ProvenanceSum of `inputs`, Inputs of one object: refuses what
    cannot be summed, before any record is read."""
    total = ProvenanceSum()
    for inp in inputs:
        total.add(inp)
    return total


def merge_group(inputs, engine="builtin", total=None):
    """(text, ProvenanceSum) of the sum of `inputs`, Inputs of one object,
    `total` their fold() where it was made already."""
    total = total or fold(inputs)
    f = total.first.prov
    dia = dialect(f["format"], f["mode"], total.first.source)
    profiles = [inp.profile for inp in inputs]
    if engine == "duckdb":
        from .merge_duckdb import reduce_duckdb
        event, first, second = reduce_duckdb(dia, profiles)
    else:
        event, first, second = reduce_builtin(dia, profiles)
    if dia.header and event is None:
        raise UsageError(f"{total.first.source}: no profile has a header "
                         "line naming its event",
                         "give unchanged profiles as ebpf-bolt wrote them")
    recorded = total.events - {provenance.REPLAY_EVENT}
    if event is not None and recorded and event not in recorded:
        raise UsageError(f"{total.path}: the profiles' header lines name "
                         f"event {event}, their provenance "
                         f"{', '.join(sorted(recorded))}",
                         "give unchanged profiles and sidecars as ebpf-bolt "
                         "wrote them")
    check_counts(first, second, total.path)
    return render(dia, event, first, second,
                  presorted=engine == "duckdb"), total


# --- the command --------------------------------------------------------------

def merge_command(args, say):
    """ebpf-bolt merge: one profile (-o FILE) where the inputs are files,
    a directory with index.json (-o DIR) where any input is a directory."""
    from .output import (OutputDirectory, OutputFile, commit_with_sidecar,
                         profile_names, sidecar_output)
    if args.engine == "duckdb":
        from .merge_duckdb import import_duckdb
        import_duckdb()    # before anything: the hint says how to get it
    binary = _binary(args.binary) if args.binary else None
    groups, any_dir = gather(args.profiles, binary)
    inputs = [p for path in args.profiles for p in (
        [path, os.path.join(path, "index.json")] if os.path.isdir(path)
        else [path, path + provenance.SUFFIX])]
    inputs += [inp.profile for group in groups.values() for inp in group]
    if args.binary:
        inputs.append(args.binary)
    if not any_dir:
        if len(groups) > 1:   # files of several objects: refused
            fold(group[0] for group in groups.values())
        group, = groups.values()
        with OutputFile(args.output, inputs=inputs) as out:
            side = sidecar_output(out)
            try:
                text, total = merge_group(group, args.engine)
                commit_with_sidecar(out, side, text, provenance.sidecar_text(
                    provenance.sidecar(total.describe(), total.samples,
                                       total.processes, len(text.encode()))))
            finally:
                if side is not None:
                    side.close()
        for line in total.warnings():
            say("warning: " + line)
        say(f"merged {_plural(len(group), 'profile')} of {total.path} "
            f"({total.inputs:,} recorded or replayed) into "
            f"{args.output if args.output not in (None, '-') else 'stdout'}")
        return 0
    if args.output in (None, "-"):
        raise UsageError("an index.json directory merges into a directory: "
                         "-o must name one", "give -o DIR")
    with OutputDirectory(args.output, inputs=inputs) as out:
        # objects in a fixed order (their build id, or path), whatever the
        # order of the inputs; every object's provenance checked before
        # any record is read
        keys = sorted(groups, key=lambda k: (isinstance(k, tuple), str(k)))
        totals = [fold(groups[key]) for key in keys]
        results = [merge_group(groups[key], args.engine, total)
                   for key, total in zip(keys, totals)]
        names = profile_names([(os.path.basename(t.path),
                                t.first.prov["build_id"],
                                t.first.prov["format"]) for _, t in results])
        entries = []
        for (text, total), name in zip(results, names):
            out.add(name, text)
            prov = total.describe()
            entries.append({"path": total.path,
                            "build_id": prov["build_id"],
                            "profile": name, "samples": total.samples,
                            "processes": total.processes,
                            "command": _apply_command(
                                total, os.path.join(args.output, name)),
                            **provenance.index_fields(prov)})
        out.commit({"objects": entries})
    for (_, total), name in zip(results, names):
        for line in total.warnings():
            say("warning: " + line)
        say(f"{name}: {total.path}, "
            f"{_plural(total.inputs, 'recorded or replayed profile')} summed")
    say(f"wrote {_plural(len(names), 'profile')} and index.json to "
        f"{args.output}")
    return 0


def _apply_command(total, profile_path):
    """The command applying the merged profile to its object, where the
    object is on this machine with the build id of the profiles."""
    from . import bolt
    from .elf import ElfError, ElfFile
    prov = total.first.prov
    try:
        elf = ElfFile(total.path)
    except (OSError, ElfError):
        return None
    if elf.build_id != prov["build_id"]:
        return None
    kind = "branch" if prov["mode"] == "branch" else "basic"
    return bolt.apply_command(total.path, profile_path, prov["format"], kind,
                              elf=elf)


def _binary(path):
    from .elf import read_binary
    return read_binary(path, "give the object the profiles are of (a 64-bit "
                       "little-endian ELF file)")


def _plural(n, noun):
    return f"{n:,} {noun if n == 1 else noun + 's'}"

