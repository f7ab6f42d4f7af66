import ctypes, ctypes.util, subprocess, struct, os, time
lb = ctypes.CDLL("libbpf.so.1", use_errno=True)
lb.bpf_object__open_file.restype = ctypes.c_void_p
lb.bpf_object__open_file.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
lb.bpf_object__load.argtypes = [ctypes.c_void_p]
lb.bpf_object__find_program_by_name.restype = ctypes.c_void_p
lb.bpf_object__find_program_by_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
lb.bpf_program__attach.restype = ctypes.c_void_p
lb.bpf_program__attach.argtypes = [ctypes.c_void_p]
lb.bpf_object__find_map_fd_by_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
lb.bpf_map_lookup_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
obj = lb.bpf_object__open_file(b"ex.bpf.o", None); assert obj
assert lb.bpf_object__load(obj) == 0
link = lb.bpf_program__attach(lb.bpf_object__find_program_by_name(obj, b"on_exec")); assert link
for a in [["./i9test"]]*20:
    p = subprocess.Popen(a, stdout=subprocess.PIPE); out = p.communicate()[0]
    if len(a) == 1:
        maps = None
time.sleep(0.2)
cfd = lb.bpf_object__find_map_fd_by_name(obj, b"cnt"); efd = lb.bpf_object__find_map_fd_by_name(obj, b"evs")
def get(fd, k, size):
    kk = ctypes.c_uint32(k); buf = ctypes.create_string_buffer(size)
    assert lb.bpf_map_lookup_elem(fd, ctypes.byref(kk), buf) == 0; return buf.raw
n = struct.unpack("Q", get(cfd, 0, 8))[0]
for i in range(min(n, 64)):
    r = get(efd, i, 80)
    tgid, dev, start, end, pgoff, ino, flags, addr, ret = struct.unpack("IIQQQQQQq", r[:64]); comm = r[64:80].split(b"\0")[0]
    print(f"tgid={tgid} comm={comm.decode()} addr={addr:#x} find_vma={ret} vma {start:#x}-{end:#x} pgoff={pgoff:#x} ns={flags} s_dev={dev:#x} (MAJOR {dev>>20} MINOR {dev&0xfffff}) ino={ino}")
st = os.stat("/tmp/i9exp/i9test"); print("stat i9test st_dev", hex(st.st_dev), "os.major/minor", os.major(st.st_dev), os.minor(st.st_dev), "ino", st.st_ino, "-> kernel s_dev", hex(os.major(st.st_dev) << 20 | os.minor(st.st_dev)))
st = os.stat("/lib64/ld-linux-x86-64.so.2"); print("ld.so ino", st.st_ino)
