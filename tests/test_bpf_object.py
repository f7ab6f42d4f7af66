"""The BPF object: every program loads and verifies on this kernel, the
shipped object holds no test program, the ctypes mirrors and constants
match the shared header and the object's BTF, and the binding table
matches libbpf's headers."""
import ctypes
import errno
import fcntl
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from ebpf_bolt import _libbpf, bpf_object, layout
from ebpf_bolt import perf_event as pe
from ebpf_bolt.bpf_object import MAPS, TEST_ONLY_MAPS, BoltObject, object_path
from ebpf_bolt.errors import BpfError
from ebpf_bolt.layout import COUNTERS, MIRRORS, Config

pytestmark = pytest.mark.kernel_matrix

ROOT = Path(__file__).resolve().parent.parent
HEADER = ROOT / "bpf" / "ebpf_bolt.h"

SHIPPED_PROGRAMS = {"sample_ip", "sample_branches", "replay_branches",
                    "flush_caches", "on_fork", "on_exec", "on_exit",
                    "on_unmapped_area"}
TEST_PROGRAMS = {"replay_ips", "replay_branches_rcu"}  # bpf_builds.TEST_PROGRAMS
# maps of fixed size, not in MAPS
FIXED_MAPS = {"stats", "scratch", "set_a", "set_b", "active_set"}
# types only the tests' build holds (replay_ips and its input)
TEST_ONLY_TYPES = ("eb_replay_ips", "eb_replay_ip_args")


def btf_types(path=None):
    out = subprocess.run(["bpftool", "-j", "btf", "dump", "file",
                          path or object_path()],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["types"]


def programs_and_maps(path):
    """The programs and maps of an object file, opened but not loaded."""
    lib = _libbpf.lib()
    obj = lib.bpf_object__open_file(str(path).encode(), None)
    try:
        progs, p = set(), None
        while True:
            p = lib.bpf_object__next_program(obj, p)
            if not p:
                break
            progs.add(lib.bpf_program__name(p).decode())
        maps, m = set(), None
        while True:
            m = lib.bpf_object__next_map(obj, m)
            if not m:
                break
            maps.add(lib.bpf_map__name(m).decode())
    finally:
        lib.bpf_object__close(obj)
    return progs, {m for m in maps if "." not in m}  # not .rodata


def test_shipped_object_holds_no_test_programs():
    """The installed object has the four programs the tool runs, and not
    the tests' replay_ips nor its map; the tests' build has them too."""
    progs, maps = programs_and_maps(object_path())
    assert progs == SHIPPED_PROGRAMS
    assert maps == set(MAPS) - TEST_ONLY_MAPS | FIXED_MAPS


def test_test_build_adds_only_the_test_programs(test_object):
    progs, maps = programs_and_maps(test_object)
    assert progs == SHIPPED_PROGRAMS | TEST_PROGRAMS
    assert maps == set(MAPS) | FIXED_MAPS


def by_name(types, kind, name):
    found = [t for t in types if t["kind"] == kind and t.get("name") == name]
    assert len(found) == 1, f"{kind} {name} not (uniquely) in the object's BTF"
    return found[0]


# Types the object's BTF does not hold: the cache maps (trace_cache,
# ip_cache) are sized at load time, so they are declared by byte size,
# without a BTF value type.
HEADER_ONLY = ("eb_cache_set", "eb_cache_slot", "eb_ip_slot")


@pytest.fixture(scope="module")
def header_btf(tmp_path_factory):
    """BTF of the shared header as clang compiles it for the BPF target
    (as bpf/Makefile does), with a variable of each HEADER_ONLY type."""
    d = tmp_path_factory.mktemp("header-btf")
    src = d / "anchor.c"
    src.write_text("typedef unsigned int __u32;\n"
                   "typedef unsigned long long __u64;\n"
                   f'#include "{ROOT / "bpf" / "ebpf_bolt.h"}"\n' +
                   "".join(f"struct {n} anchor_{n};\n" for n in HEADER_ONLY))
    subprocess.run(["clang", "-g", "-O2", "-target", "bpf", "-c", str(src),
                    "-o", str(d / "anchor.o")], check=True)
    out = subprocess.run(["bpftool", "-j", "btf", "dump", "file",
                          str(d / "anchor.o")], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)["types"]


@pytest.mark.parametrize("cname", sorted(MIRRORS))
def test_ctypes_mirror_matches_btf(cname, header_btf, test_object):
    if cname in HEADER_ONLY:
        types = header_btf
    else:
        types = btf_types(test_object if cname in TEST_ONLY_TYPES else None)
    mirror, renames = MIRRORS[cname]
    struct = by_name(types, "STRUCT", cname)
    assert struct["size"] == ctypes.sizeof(mirror)
    assert len(struct["members"]) == len(mirror._fields_)
    for member in struct["members"]:
        field = getattr(mirror, renames.get(member["name"], member["name"]))
        assert member["bits_offset"] == field.offset * 8, member["name"]


def test_counters_match_enum():
    """layout.COUNTERS follows enum eb_counter of the shared header (the
    enum is not in the BTF: no variable has its type)."""
    header = HEADER.read_text()
    body = re.search(r"enum eb_counter \{(.*?)\};", header, re.S).group(1)
    names = re.findall(r"^\s*(EB_[A-Z_]+)", body, re.M)
    assert names[-1] == "EB_NR_COUNTERS"
    assert names[:-1] == ["EB_" + c.upper() for c in COUNTERS]
    stats = by_name(btf_types(), "STRUCT", "eb_stats")
    assert stats["size"] == 8 * len(COUNTERS)


def test_config_is_the_whole_rodata():
    """The options struct is written over .rodata as one blob: it must be
    the only variable there and start at offset 0."""
    types = btf_types()
    sec = by_name(types, "DATASEC", ".rodata")
    assert len(sec["vars"]) == 1
    var = next(t for t in types if t["id"] == sec["vars"][0]["type_id"])
    assert var["name"] == "cfg" and sec["vars"][0]["offset"] == 0
    assert sec["vars"][0]["size"] == ctypes.sizeof(Config)


def header_defines():
    """{name: value} of the header's `#define EB_NAME value` lines."""
    found = re.findall(r"^#define (EB_\w+)\s+(\S+)", HEADER.read_text(), re.M)
    return {name: int(value.rstrip("UL"), 0) for name, value in found}


def test_header_defines_match_layout():
    """Every constant of the shared header has its mirror in layout, under
    its name without EB_, with the same value."""
    defines = header_defines()
    assert {"EB_MAX_BRANCHES", "EB_BR_ONLY", "EB_BRANCH_MISPRED",
            "EB_CACHE_WAYS", "EB_CACHE_MAX_CREDIT", "EB_IP_FLUSH_AT",
            "EB_REPLAY_IPS", "EB_MAX_PROBES", "EB_SLOT_USED"} <= set(defines), \
        defines
    mirrored = {name: getattr(layout, name[3:], None) for name in defines}
    assert mirrored == defines


@pytest.mark.parametrize("build", ["shipped", "test"])
def test_map_sizes_match_btf(build, test_object):
    types = btf_types(test_object if build == "test" else None)
    kinds = {t["id"]: t for t in types}

    def resolved_size(type_id):
        t = kinds[type_id]
        while t["kind"] in ("TYPEDEF", "CONST", "VOLATILE"):
            t = kinds[t["type_id"]]
        return t["size"]

    def declared_size(members, field):
        """__type(field, T) gives sizeof(T); __uint(field_size, N), for a
        map declared by byte size, a pointer to an array of N ints."""
        if field in members:
            return resolved_size(kinds[members[field]["type_id"]]["type_id"])
        array = kinds[kinds[members[field + "_size"]["type_id"]]["type_id"]]
        return array["nr_elems"]

    maps = by_name(types, "DATASEC", ".maps")
    declared = {kinds[v["type_id"]]["name"] for v in maps["vars"]}
    sized = set(MAPS) - (TEST_ONLY_MAPS if build == "shipped" else set())
    assert declared == sized | FIXED_MAPS   # MAPS names every sized map
    for name in sized:
        ksz, vsz, _kind = MAPS[name]
        var = by_name(types, "VAR", name)
        members = {m["name"]: m for m in kinds[var["type_id"]]["members"]}
        assert declared_size(members, "key") == ksz, name
        assert declared_size(members, "value") == vsz, name


@pytest.mark.root
def test_every_program_loads_and_verifies():
    with BoltObject(map_entries={name: 16 for name in MAPS}) as obj:
        for name in obj.program_names():
            assert obj.program_fd(name) > 0
        assert obj.stats() == {c: 0 for c in COUNTERS + ("traces",
                                                         "table_races")}


@pytest.mark.root
def test_only_the_named_programs_load():
    """Recording loads its one program and the drain's (flush_caches): the
    others may need what the kernel lacks, which must not stop recording
    where it could run."""
    from ebpf_bolt.bpf_object import FLUSH
    with BoltObject(map_entries={name: 16 for name in MAPS},
                    programs=["sample_ip"]) as obj:
        names = obj.program_names()
        assert set(names) == SHIPPED_PROGRAMS, names
        assert obj.program_fd("sample_ip") > 0 and obj.program_fd(FLUSH) > 0
        for name in set(names) - {"sample_ip", FLUSH}:
            with pytest.raises(OSError):
                obj.program_fd(name)


LIBBPF_HEADERS = [Path("/usr/include/bpf/libbpf.h"), Path("/usr/include/bpf/bpf.h")]
# size and signedness of the C integer types libbpf's prototypes use here
C_INTS = {"int": (4, True), "__u32": (4, False), "unsigned int": (4, False),
          "__u64": (8, False), "size_t": (8, False), "bool": (1, False)}


def c_kind(decl):
    """'ptr', 'void' or (size, signed) of a C parameter or result type."""
    words = re.sub(r"\b(const|struct)\b", " ", decl).split()
    if "*" in decl or words[0].endswith("_fn_t"):  # libbpf_print_fn_t
        return "ptr"
    if words == ["void"]:
        return "void"
    typ = " ".join(words)
    if typ not in C_INTS:       # drop the parameter's name: `int fd`
        typ = " ".join(words[:-1])
    return C_INTS.get(typ, typ)


def ctypes_kind(t):
    if t is None:
        return "void"
    if t in (ctypes.c_void_p, ctypes.c_char_p) or issubclass(
            t, (ctypes._Pointer, ctypes._CFuncPtr)):
        return "ptr"
    return ctypes.sizeof(t), t(-1).value == -1


def libbpf_prototypes():
    """{name: (result kind, [parameter kinds])} from libbpf's headers."""
    text = "".join(h.read_text() for h in LIBBPF_HEADERS)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    protos = {}
    for ret, name, params in re.findall(
            r"LIBBPF_API\s+([^;(]*?)\b(\w+)\s*\(([^)]*)\)\s*;", text):
        params = [] if params.strip() in ("", "void") else params.split(",")
        protos[name] = (c_kind(ret), [c_kind(p) for p in params])
    return protos


def test_prototype_table_matches_libbpf_headers():
    """Each declared function takes and returns what libbpf's headers say:
    pointers where C has pointers, integers of the same size and
    signedness (an unsigned result would hide a negative errno)."""
    protos = libbpf_prototypes()
    for name, (argtypes, restype, _) in _libbpf._PROTOTYPES.items():
        assert name in protos, f"{name} not in {LIBBPF_HEADERS}"
        ret, params = protos[name]
        assert ctypes_kind(restype) == ret, name
        assert [ctypes_kind(a) for a in argtypes] == params, name


def test_only_declared_functions_are_reachable():
    """A libbpf function missing from the table cannot be called by
    mistake with ctypes' default types (an int result truncates pointers)."""
    lib = _libbpf.lib()
    for name, (argtypes, restype, _) in _libbpf._PROTOTYPES.items():
        fn = getattr(lib, name)
        assert fn.argtypes == argtypes and fn.restype is restype, name
    with pytest.raises(AttributeError):
        lib.bpf_object__open_mem   # in libbpf, not in the table


@pytest.mark.root
def test_libbpf_errors_name_the_call():
    with pytest.raises(_libbpf.LibbpfError) as info:
        _libbpf.lib().bpf_object__open_file(b"/nonexistent.bpf.o", None)
    assert info.value.errno == errno.ENOENT
    assert "bpf_object__open_file" in str(info.value)
    assert isinstance(info.value, OSError)


@pytest.mark.root
def test_closed_object_raises_instead_of_crashing():
    obj = BoltObject(map_entries={name: 16 for name in MAPS})
    obj.close()
    with pytest.raises(ValueError):
        obj.map_fd("ip_counts")
    obj.close()  # closing twice is harmless


@pytest.mark.root
def test_closed_link_raises_instead_of_crashing():
    """A link owns its perf event fd and closes it: after close() the fd
    number is not handed out (another file may hold it by then)."""
    cpu = min(os.sched_getaffinity(0))
    with BoltObject(map_entries={"ip_counts": 16},
                    programs=["sample_ip"]) as obj:
        fd = pe.perf_event_open(pe.make_attr(pe.CPU_CLOCK, 100), -1, cpu)
        with obj.attach("sample_ip", fd) as link:
            fcntl.ioctl(link.perf_fd, pe.PERF_EVENT_IOC_DISABLE, 0)
            assert obj.links == [link] and not link.closed
        assert link.closed and obj.links == []
        with pytest.raises(ValueError):
            link.perf_fd
        with pytest.raises(OSError) as info:
            os.fstat(fd)                # closed with the link
        assert info.value.errno == errno.EBADF
        link.close()                    # closing twice is harmless
    # leaving `with obj` closed the object's links again: harmless too


def test_package_holds_no_test_code():
    """The software branch tracer is the tests' and benchmarks' own
    (tests/brtrace.py): it must not be installed with the tool (a build/
    directory left from before it moved would still ship it)."""
    import importlib.util
    assert importlib.util.find_spec("ebpf_bolt.brtrace") is None


@pytest.mark.root
def test_object_without_a_required_map_is_refused(monkeypatch):
    """A map of MAPS missing from the object means another version of the
    shared header; only the tests' maps (TEST_ONLY_MAPS) may be absent."""
    monkeypatch.setattr(bpf_object, "MAPS", dict(MAPS, no_such_map=(4, 8, "hash")))
    with pytest.raises(BpfError, match="no map no_such_map"):
        BoltObject(programs=["sample_ip"])
    monkeypatch.setattr(bpf_object, "TEST_ONLY_MAPS",
                        TEST_ONLY_MAPS | {"no_such_map"})
    with BoltObject(programs=["sample_ip"]) as obj:
        assert "no_such_map" not in obj.map_entries
