import ctypes, struct
lb = ctypes.CDLL("libbpf.so.1", use_errno=True)
lb.bpf_object__open_file.restype = ctypes.c_void_p; lb.bpf_object__open_file.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
lb.bpf_object__load.argtypes = [ctypes.c_void_p]
lb.bpf_object__find_program_by_name.restype = ctypes.c_void_p; lb.bpf_object__find_program_by_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
lb.bpf_program__fd.argtypes = [ctypes.c_void_p]
lb.bpf_object__find_map_fd_by_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
lb.bpf_map_lookup_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
lb.bpf_prog_test_run_opts.argtypes = [ctypes.c_int, ctypes.c_void_p]
obj = lb.bpf_object__open_file(b"lk.bpf.o", None); assert lb.bpf_object__load(obj) == 0
fd = lb.bpf_program__fd(lb.bpf_object__find_program_by_name(obj, b"bench"))
pfd = lb.bpf_object__find_map_fd_by_name(obj, b"procs")
lb.bpf_map_update_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64]
for t in range(1000, 1064):
    v = struct.pack("II", 0, 8) + b"".join(struct.pack("QQQ", 0x1000 + j*0x100000, 0x1000 + j*0x100000 + 0x80000, j) for j in range(8))
    kk = ctypes.c_uint32(t); assert lb.bpf_map_update_elem(pfd, ctypes.byref(kk), v, 0) == 0
opts = (ctypes.c_ubyte * 128)(); struct.pack_into("Q", opts, 0, 128)  # sz; rest zero
ofd = lb.bpf_object__find_map_fd_by_name(obj, b"out")
for rep in range(3):
    assert lb.bpf_prog_test_run_opts(fd, opts) == 0
    r = []
    for k in range(2):
        kk = ctypes.c_uint32(k); v = ctypes.c_uint64(); lb.bpf_map_lookup_elem(ofd, ctypes.byref(kk), ctypes.byref(v)); r.append(v.value)
    print(f"per iteration: compare {r[0]/1e6:.1f} ns, hash(tgid)+8-range scan {r[1]/1e6:.1f} ns (warm caches; includes bpf_loop callback overhead)")
