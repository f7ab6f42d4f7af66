"""Where a profile comes from: the facts a merge needs to refuse mixing
profiles that cannot be summed, kept beside the profile, never in it.

BOLT refuses any extra line inside a profile (a ``#`` line is a parse error
for perf2bolt 22's pre-aggregated reader, and fdata with one gets "no valid
profile data found"), so these facts go to a sidecar: ``FILE.json`` beside a
single profile, or the profile's entry in a directory's ``index.json``.

``describe()`` builds them; every writer (a recording, a replay, a merge,
and a window of a long recording) calls it with its own start and end::

    {"path": "/srv/app", "build_id": "0123...", "mode": "branch",
     "format": "preagg", "event": "cycles", "frequency": 4999,
     "hosts": ["web-17"], "start": "2026-12-04T21:06:20.000000Z",
     "end": "2026-12-04T21:06:30.000000Z", "inputs": 1,
     "tool": "ebpf-bolt 0.1.0"}

``sidecar()`` adds what a single file's sidecar holds on top (samples,
processes, and the profile's size in bytes, by which a merge tells a
sidecar left from an earlier profile of the same name).
"""
import datetime
import json
import re
import socket

SUFFIX = ".json"      # FILE -> FILE.json

# what a profile's sidecar and its index.json entry carry besides the
# object's path and build id (index.json has those already)
KEYS = ("mode", "format", "event", "frequency", "hosts", "start", "end",
        "inputs", "tool")
# a single profile's sidecar, in this order
SIDECAR_KEYS = ("path", "build_id", "samples", "processes", "bytes") + KEYS

MODES = ("ip", "branch")
# the event of a replayed profile's provenance: nothing sampled it (its
# header names cycles, the event branch stacks are most often taken on)
REPLAY_EVENT = "replay"
_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"
# fixed width (a 4-digit year, as strftime's %Y does not pad): sorts as it
# reads
_TIME_TEXT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
_HEX = re.compile(r"[0-9a-f]+")


def utc(epoch):
    """Seconds since the epoch as ISO-8601 UTC, to the microsecond."""
    t = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return t.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_utc(text):
    """The epoch seconds of utc()'s text; ValueError for anything else."""
    if not (isinstance(text, str) and _TIME_TEXT.fullmatch(text)):
        raise ValueError(f"not a time as utc() writes it: {text!r}")
    return datetime.datetime.strptime(text, _TIME).replace(
        tzinfo=datetime.timezone.utc).timestamp()


def tool():
    from . import __version__
    return f"ebpf-bolt {__version__}"


def describe(*, path, build_id, mode, fmt, event, frequency, start, end,
             hosts=None, inputs=1):
    """The provenance of one profile. `mode`: "ip" or "branch" (a
    Profile's "lbr" is "branch": what the profile holds, not how the CPU
    recorded it); `start`, `end`: the time it covers, as epoch seconds or
    as utc()'s text (kept as it is: a merge folds the text of its inputs,
    which a float would round);
    `frequency`: samples per second per CPU, None where no sampling
    made it (a replay, a merge of several frequencies); `hosts`: default
    this machine; `inputs`: the profiles summed into it (1 unless merged)."""
    return {"path": str(path), "build_id": build_id,
            "mode": "branch" if mode in ("lbr", "branch") else "ip",
            "format": fmt, "event": event, "frequency": frequency,
            "hosts": sorted(set(hosts)) if hosts is not None
            else [socket.gethostname()],
            "start": _time_text(start), "end": _time_text(end),
            "inputs": inputs,
            "tool": tool()}


def _time_text(t):
    if isinstance(t, str):
        parse_utc(t)   # ValueError unless utc()'s text
        return t
    return utc(t)


def sidecar(prov, samples, processes, size):
    """The sidecar of a single profile of `size` bytes, in SIDECAR_KEYS
    order."""
    whole = dict(prov, samples=samples, processes=processes, bytes=size)
    return {key: whole[key] for key in SIDECAR_KEYS}


def sidecar_text(side):
    return json.dumps(side, indent=2) + "\n"


def index_fields(prov):
    """The provenance fields an index.json entry adds to its own."""
    return {key: prov[key] for key in KEYS}


def problem(entry, keys=KEYS):
    """What is wrong with the provenance fields `keys` of `entry` (a
    sidecar or an index.json entry), or None. Writers treat a problem as
    their bug; merge as a bad input."""
    missing = [key for key in keys if key not in entry]
    if missing:
        return f"no {', '.join(missing)}"
    if "path" in keys and not (isinstance(entry["path"], str)
                               and entry["path"]):
        return f"path {entry['path']!r} is not an object's path"
    bid = entry.get("build_id")
    if bid is not None and not (isinstance(bid, str) and _HEX.fullmatch(bid)):
        return f"build_id {bid!r} is not lower-case hex"
    if entry["mode"] not in MODES:
        return f"mode {entry['mode']!r} is not ip or branch"
    for key in ("format", "event", "tool"):
        if not isinstance(entry[key], str):
            return f"{key} {entry[key]!r} is not a string"
    freq = entry["frequency"]
    if freq is not None and (type(freq) is not int or freq <= 0):
        return f"frequency {freq!r} is not a positive whole number or null"
    hosts = entry["hosts"]
    if not (isinstance(hosts, list) and all(isinstance(h, str)
                                            for h in hosts)):
        return f"hosts {hosts!r} is not a list of host names"
    for key in ("start", "end"):
        try:
            parse_utc(entry[key])
        except (TypeError, ValueError):
            return (f"{key} {entry[key]!r} is not a UTC time such as "
                    "2026-12-04T21:06:20.000000Z")
    if entry["start"] > entry["end"]:
        return f"start {entry['start']} is after end {entry['end']}"
    if type(entry["inputs"]) is not int or entry["inputs"] < 1:
        return f"inputs {entry['inputs']!r} is not a count of profiles"
    return None
