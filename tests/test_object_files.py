"""How user space finds the file of each object the kernel numbered
(objects.ObjectTable): through /proc/TGID/map_files/START-END of the
process the kernel noted, which must still map that very file."""
import os

from ebpf_bolt.layout import ObjectInfo
from ebpf_bolt.objects import ObjectTable, kernel_dev


def own_mapping(path_part):
    """(start, end, path) of an executable mapping of this process whose
    path contains path_part."""
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6 and "x" in fields[1] and path_part in fields[5]:
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                return lo, hi, fields[5]
    raise AssertionError(f"no executable mapping of {path_part}")


def info_for(path, tgid, start, end):
    st = os.stat(path)
    info = ObjectInfo()
    info.key.ino, info.key.dev = st.st_ino, kernel_dev(st.st_dev)
    info.tgid, info.state, info.start, info.end = tgid, 1, start, end
    return info


def table():
    t = ObjectTable.__new__(ObjectTable)   # no BPF object: _open only
    t.objects = {}
    return t


def test_the_noted_file_is_opened():
    start, end, path = own_mapping("libc")
    o = table()._open(1, info_for(path, os.getpid(), start, end))
    try:
        assert o.error is None and o.elf is not None
        assert o.name == path
    finally:
        os.close(o.fd)


def test_another_file_at_the_noted_range_is_not_taken_for_it():
    """The process the kernel noted exec'd (or unmapped the object) before
    the poll, and another file is mapped at the same addresses now: two
    non-PIE programs both have their code at 0x401000-0x402000. Taking
    that file would give the first program's samples the second's name,
    build id and symbols (seen: execer-nopie's samples written as
    twofunc-nopie.2.fdata, at work_a, which never ran)."""
    start, end, path = own_mapping("libc")
    other = "/proc/self/exe"
    assert os.stat(other).st_ino != os.stat(path).st_ino
    o = table()._open(1, info_for(other, os.getpid(), start, end))
    assert o.elf is None and o.fd is None
    assert "another file" in o.error, o.error


def test_an_object_whose_process_exited_is_opened_through_another():
    """The process the kernel noted exited before the poll (a build's
    short processes number ld.so and libc first): the file is opened
    through another process that maps it, here this one."""
    import subprocess
    dead = subprocess.Popen(["true"])
    dead.wait()
    start, end, path = own_mapping("libc")
    t = table()
    o = t._open(1, info_for(path, dead.pid, start, end))
    assert o.fd is None and "exited" in o.error
    t.objects[1] = o
    t.reopen_missing()
    try:
        assert o.error is None and o.elf is not None
        assert o.name == os.path.realpath(path)
    finally:
        os.close(o.fd)
