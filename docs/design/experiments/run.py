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
obj = lb.bpf_object__open_file(b"mm.bpf.o", None); assert obj
assert lb.bpf_object__load(obj) == 0
link = lb.bpf_program__attach(lb.bpf_object__find_program_by_name(obj, b"on_mmap")); assert link
for a in (["./i9test"], ["./i9test", "libm.so.6"]):
    p = subprocess.Popen(a, stdout=subprocess.PIPE); out = p.communicate()[0]
    print("ran", a, p.pid, out.strip())
    if len(a) == 1:
        maps = None
time.sleep(0.2)
cfd = lb.bpf_object__find_map_fd_by_name(obj, b"cnt"); efd = lb.bpf_object__find_map_fd_by_name(obj, b"evs")
def get(fd, k, size):
    kk = ctypes.c_uint32(k); buf = ctypes.create_string_buffer(size)
    assert lb.bpf_map_lookup_elem(fd, ctypes.byref(kk), buf) == 0; return buf.raw
tot = struct.unpack("Q", get(cfd, 0, 8))[0]; n = struct.unpack("Q", get(cfd, 1, 8))[0]
print("perf_event_mmap calls seen:", tot, "exec file mappings of i9*:", n)
for i in range(min(n, 256)):
    r = get(efd, i, 4+4+8*7+16)
    tgid, dev, start, end, pgoff, ino, mm, cmm, exe = struct.unpack("IIQQQQQQQ", r[:72]); comm = r[72:88].split(b"\0")[0]
    print(f"tgid={tgid} comm={comm.decode()} {start:#x}-{end:#x} pgoff={pgoff:#x} dev={dev:#x}(maj {dev>>20} min {dev&0xfffff}) ino={ino} vm_mm==cur->mm:{mm==cmm} exe_ino={exe}")
st = os.stat("/tmp/i9exp/i9test"); print("stat i9test st_dev", hex(st.st_dev), "major/minor", os.major(st.st_dev), os.minor(st.st_dev), "ino", st.st_ino, "-> kernel s_dev", hex(os.major(st.st_dev) << 20 | os.minor(st.st_dev)))
