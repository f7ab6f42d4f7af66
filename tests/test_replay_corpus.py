"""ebpf-bolt replay on a corpus of malformed branch stacks.

A valid `perf script -F brstack` file is mutated (truncated, bytes flipped,
non-UTF-8 and NUL bytes inserted, addresses made negative, 17 hex digits
wide or non-hex, fields emptied or dropped, flags changed, junk tokens,
a line over 1 MiB, and combinations) with a fixed seed. Every case must end
in a clean profile (exit 0) or in one clean error: UsageError's exit code,
one line naming the line of the input (and for a bad entry its entry and
field), a hint, no traceback. The verdict and the line are checked against
an independent reading of the format (the oracle below), so an input the
parser wrongly accepts or refuses fails too, and so does an answer from
main()'s last-resort handler ("internal error"). All cases run through
cli.main in this process; a few also through the installed command.
"""
import random
import re
import shutil
import subprocess

import pytest

from ebpf_bolt import errors
from ebpf_bolt.cli import main

SEED = 8          # issue 8
CASES = 300
MAX_LINE = 1 << 20
LOAD_BASE = 0x555555554000

# a valid input: PIE addresses of /bin/true's first pages at LOAD_BASE,
# newest entry first, with the extra fields perf writes, a comment and a
# blank line
VALID = (
    "# perf script -F brstack\n"
    "0x555555556a10/0x555555556a40/P/-/-/1 0x555555556a00/0x555555556a08/M/-/-/3"
    " 0x5555555569f0/0x5555555569f8/P/-/-/0\n"
    "\n"
    "0x555555556b20/0x555555556b00/P/-/-/2 0x555555556af0/0x555555556b10/P/-/-/1\n"
    "0x555555556c00/0x555555556c40/-/-/-/0\n"
    "0X555555556D00/0x555555556d40/M/-/-/0/COND 0x555555556cf0/0x555555556cf8/P\n"
    "0xffffffff81000000/0x555555556e00/P/-/-/0 0x555555556df0/0x555555556df8/P/-/-/0\n"
).encode()

FIELD_NAMES = {1: "from address", 2: "to address", 3: "prediction flag"}
ENTRY_RE = re.compile(r"(?:0[xX])?([0-9a-fA-F]+)", re.ASCII)


# --- the oracle: what the format allows, written from the format -------------

def _bad_address(text):
    m = ENTRY_RE.fullmatch(text)
    return m is None or int(m.group(1), 16) >= 1 << 64


def expected(data):
    """None if `data` is a valid input, else (line number, what the error
    must say: a list of phrases)."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for n, raw in enumerate(lines, 1):
        if len(raw) > MAX_LINE:
            return n, ["longer than"]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return n, ["not UTF-8"]
        if "\0" in text:
            return n, ["NUL byte"]
        text = text.strip()
        if not text or text.startswith("#"):
            continue
        for k, token in enumerate(text.split(), 1):
            parts = token.split("/")
            where = f"line {n}, entry {k}:"
            if len(parts) < 3:
                return n, [where, "at least 3"]
            for field in (1, 2):
                if _bad_address(parts[field - 1]):
                    return n, [where, f"field {field} ({FIELD_NAMES[field]})"]
            if parts[2] not in ("M", "P", "-"):
                return n, [where, "field 3 (prediction flag)"]
    return None


def stack_count(data):
    return sum(1 for line in data.decode().splitlines()
               if line.strip() and not line.strip().startswith("#"))


# --- the corpus ----------------------------------------------------------------

NON_UTF8 = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xfe\xff", b"\x80"]
JUNK = ["hello", "0x10", "0x10/0x20", "/", "//", "0x1/0x2/", "-", "0x/0x/P",
        "\u0663/0x10/P", "0x10/0x20/MM", "0x10/0x20/p", "+0x10/0x20/P",
        "0x1_0/0x20/P", "0x10 /0x20/P", "ZZ/0x1/M", "0x10/0x20/P/extra/6/7/8"]


def _addresses(text):
    return [m.span() for m in re.finditer(r"0[xX][0-9a-fA-F]+", text)]


def mutate(rng, data, huge=True):
    """One random mutation of `data` (bytes); `huge`: may add a line over
    1 MiB (only one, rarely: each costs a MiB)."""
    kind = rng.randrange(17)
    if kind == 14 and not (huge and rng.random() < 0.3):
        kind = 11
    text = data.decode("utf-8", "surrogateescape")
    spans = _addresses(text)
    pos = rng.randrange(len(data) + 1)
    if kind == 0:                                   # truncate
        return data[:pos]
    if kind == 1 and data:                          # flip a byte
        i = rng.randrange(len(data))
        return data[:i] + bytes([rng.randrange(256)]) + data[i + 1:]
    if kind == 2:                                   # non-UTF-8 bytes
        return data[:pos] + rng.choice(NON_UTF8) + data[pos:]
    if kind == 3:                                   # NUL
        return data[:pos] + b"\0" + data[pos:]
    if spans and kind in (4, 5, 6, 7, 8):
        a, b = rng.choice(spans)
        new = {4: lambda s: "-" + s,                            # negative
               5: lambda s: "0x1" + "0" * 16,                   # 17 digits
               6: lambda s: "0x" + "f" * rng.randrange(17, 40),  # wider
               7: lambda s: "",                                 # empty field
               8: lambda s: s[:2] + "g" + s[3:]}[kind](text[a:b])  # not hex
        return (text[:a] + new + text[b:]).encode("utf-8", "surrogateescape")
    if kind == 9:                                   # drop a slash
        slashes = [i for i, c in enumerate(text) if c == "/"]
        if slashes:
            i = rng.choice(slashes)
            return (text[:i] + " " + text[i + 1:]).encode("utf-8",
                                                          "surrogateescape")
    if kind == 10:                                  # change a flag
        flags = [m.start(1) for m in re.finditer(r"/([MP-])(/|\s|$)", text)]
        if flags:
            i = rng.choice(flags)
            c = rng.choice("MP-XmQ0 ")
            return (text[:i] + c + text[i + 1:]).encode("utf-8",
                                                        "surrogateescape")
    if kind == 11:                                  # a junk token
        spaces = [i for i, c in enumerate(text) if c == " "] or [0]
        i = rng.choice(spaces)
        return (text[:i] + " " + rng.choice(JUNK) + text[i:]).encode(
            "utf-8", "surrogateescape")
    if kind == 12:                                  # CRLF, tabs: still valid
        return data.replace(b"\n", b"\r\n") if rng.random() < 0.5 else \
            data.replace(b" ", b"\t")
    if kind == 13:                                  # lines moved, copied
        lines = data.split(b"\n")
        rng.shuffle(lines)
        return b"\n".join(lines + lines[:rng.randrange(3)])
    if kind == 14:                                  # a line over 1 MiB
        return data[:pos] + b"0x10/0x20/P " * (MAX_LINE // 12 + 1) + b"\n" \
            + data[pos:]
    if kind == 15:                                  # extra fields: valid
        return data.replace(b"/-/-/0", b"/-/-/0/COND/x", 1)
    # several at once
    for _ in range(rng.randrange(2, 4)):
        data = mutate(rng, data, huge=False)
    return data


def corpus():
    rng = random.Random(SEED)
    cases, seen = [], set()
    while len(cases) < CASES:
        data = mutate(rng, VALID)
        if data not in seen:
            seen.add(data)
            cases.append(data)
    return cases


CORPUS = corpus()
HUGE = [i for i, d in enumerate(CORPUS) if len(d) > MAX_LINE]


def test_corpus_has_every_kind_of_case():
    """The corpus is what it claims: valid and invalid inputs, and each
    class of error (a mutation that silently stopped working would leave
    a kind out)."""
    verdicts = [expected(d) for d in CORPUS]
    valid = sum(v is None for v in verdicts)
    assert 0.05 * CASES < valid < 0.6 * CASES, valid
    said = " ".join(" ".join(v[1]) for v in verdicts if v)
    # ("longer than": a line over MAX_LINE, the HUGE cases, is there)
    for phrase in ("not UTF-8", "NUL byte", "longer than", "at least 3",
                   "field 1 (from address)", "field 2 (to address)",
                   "field 3 (prediction flag)"):
        assert phrase in said, phrase


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    b = tmp_path_factory.mktemp("corpus") / "true"
    shutil.copy("/bin/true", b)
    return b


def check(rc, stderr, data, out):
    """A clean profile or a clean error, as the oracle says."""
    assert "Traceback" not in stderr, stderr
    assert "internal error" not in stderr, f"the catch-all answered: {stderr}"
    verdict = expected(data)
    errs = [line for line in stderr.splitlines()
            if line.startswith("ebpf-bolt: error: ")]
    if verdict is None:
        assert rc == 0 and not errs, f"valid input refused: {stderr}"
        assert out.exists() and out.stat().st_size > 0, stderr
        m = re.search(r"replayed ([\d,]+) branch stack", stderr)
        assert m and int(m.group(1).replace(",", "")) == stack_count(data), \
            stderr
        return
    n, says = verdict
    assert rc == errors.UsageError.exit_code, \
        f"want an error at line {n} ({says}), got exit {rc}: {stderr}"
    assert len(errs) == 1, stderr
    lines = stderr.splitlines()
    i = lines.index(errs[0])
    assert i + 1 < len(lines) and lines[i + 1].startswith("  hint: "), stderr
    msg = errs[0][len("ebpf-bolt: error: "):]
    assert re.match(rf"line {n}\b", msg), f"want line {n}: {msg}"
    for phrase in says:
        assert phrase in msg, f"want {phrase!r}: {msg}"
    assert not out.exists(), "output written on an error"


@pytest.mark.root
@pytest.mark.parametrize("index", range(CASES))
def test_replay_corpus_case(index, binary, tmp_path, capsys):
    data = CORPUS[index]
    stacks = tmp_path / "stacks.txt"
    stacks.write_bytes(data)
    out = tmp_path / "out.preagg"
    capsys.readouterr()
    rc = main(["replay", "--binary", str(binary), "--load-base",
               f"{LOAD_BASE:x}", "--max-entries", "1024", str(stacks),
               "-o", str(out)])
    check(rc, capsys.readouterr().err, data, out)
    assert stacks.read_bytes() == data, "the input was changed"


def _sample_for_the_command():
    """A few cases for the installed command: valid ones, each kind of
    error, and a huge line."""
    picked, kinds = [], set()
    for i, d in enumerate(CORPUS):
        v = expected(d)
        kind = "valid" if v is None else v[1][-1].split("(")[0]
        if kind not in kinds:
            kinds.add(kind)
            picked.append(i)
    return sorted(set(picked[:10] + HUGE[:1]))


@pytest.mark.root
@pytest.mark.parametrize("index", _sample_for_the_command())
def test_replay_corpus_installed_command(index, binary, tmp_path,
                                         ebpf_bolt_cmd):
    data = CORPUS[index]
    out = tmp_path / "out.preagg"
    # the stacks on stdin, as perf script | ebpf-bolt replay gives them
    p = subprocess.run([ebpf_bolt_cmd, "replay", "--binary", str(binary),
                        "--load-base", f"{LOAD_BASE:x}", "--max-entries",
                        "1024", "-o", str(out)], input=data,
                       capture_output=True, timeout=60)
    check(p.returncode, p.stderr.decode(), data, out)
