"""ctypes bindings to the system libbpf (libbpf.so.1, libbpf >= 1.0).

Every function the tool calls is declared once in ``_PROTOTYPES`` with its
argument types, result type and error convention; ``_bind`` applies the
table, so a misspelt attribute (ctypes silently ignores ``.argtype``) cannot
slip in, and ``lib()`` holds only the table's functions, so a call of one
missing from it fails instead of running with ctypes' default int types.
tests/test_bpf_object.py checks the table against libbpf's headers.

libbpf 1.x reports failure as a negative errno (int results) or as NULL with
errno set (pointer results); the checkers turn both into LibbpfError, an
OSError that names the call.
"""
import ctypes
import ctypes.util
import errno as _errno
import os

from .errors import BpfError, LibbpfMissing

c_int, c_uint, c_size_t, c_void_p, c_char_p, c_bool, c_uint32 = (
    ctypes.c_int, ctypes.c_uint, ctypes.c_size_t, ctypes.c_void_p,
    ctypes.c_char_p, ctypes.c_bool, ctypes.c_uint32)


class LibbpfError(BpfError, OSError):
    """A libbpf call failed; ``errno`` is the kernel's or libbpf's error."""

    def __init__(self, call, err, detail=""):
        self.call = call
        msg = f"{call}: {os.strerror(err)}"
        if detail:
            msg += f" ({detail})"
        BpfError.__init__(self, msg)
        self.errno = err


# --- structures from <bpf/bpf.h> and <bpf/libbpf.h> ------------------------

class bpf_map_batch_opts(ctypes.Structure):
    _fields_ = [("sz", c_size_t), ("elem_flags", ctypes.c_uint64),
                ("flags", ctypes.c_uint64)]


class bpf_object_open_opts(ctypes.Structure):
    """libbpf >= 1.0's layout, as far as this tool sets it (sz tells
    libbpf where it ends)."""
    _fields_ = [("sz", c_size_t), ("object_name", c_char_p),
                ("relaxed_maps", ctypes.c_bool), ("pin_root_path", c_char_p),
                ("_removed_attach_prog_fd", c_uint32),
                ("kconfig", c_char_p), ("btf_custom_path", c_char_p),
                ("kernel_log_buf", c_char_p), ("kernel_log_size", c_size_t),
                ("kernel_log_level", c_uint32)]


class bpf_test_run_opts(ctypes.Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_void_p), ("data_out", c_void_p),
        ("data_size_in", c_uint32), ("data_size_out", c_uint32),
        ("ctx_in", c_void_p), ("ctx_out", c_void_p),
        ("ctx_size_in", c_uint32), ("ctx_size_out", c_uint32),
        ("retval", c_uint32), ("repeat", c_int), ("duration", c_uint32),
        ("flags", c_uint32), ("cpu", c_uint32), ("batch_size", c_uint32),
    ]


# --- error conventions ------------------------------------------------------

def _check_int(result, func, args):
    if result < 0:
        raise LibbpfError(func.__name__, -result)
    return result


def _check_ptr(result, func, args):
    if not result:
        err = ctypes.get_errno() or _errno.EINVAL
        raise LibbpfError(func.__name__, err)
    return result


_INT, _PTR, _NONE = _check_int, _check_ptr, None
PRINT_FN = ctypes.CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)
_pp = c_void_p  # opaque libbpf handles: struct bpf_object *, bpf_map *, ...

# name: (argtypes, restype, errcheck)
_PROTOTYPES = {
    "libbpf_major_version": ([], c_uint32, _NONE),
    "libbpf_minor_version": ([], c_uint32, _NONE),
    "libbpf_num_possible_cpus": ([], c_int, _INT),
    "libbpf_set_print": ([PRINT_FN], c_void_p, _NONE),
    "bpf_object__open_file": ([c_char_p, c_void_p], _pp, _PTR),
    "bpf_object__load": ([_pp], c_int, _INT),
    "bpf_object__close": ([_pp], None, _NONE),
    "bpf_object__find_map_by_name": ([_pp, c_char_p], _pp, _PTR),
    "bpf_object__find_program_by_name": ([_pp, c_char_p], _pp, _PTR),
    # NULL ends the walk: not an error
    "bpf_object__next_program": ([_pp, _pp], _pp, _NONE),
    "bpf_program__name": ([_pp], ctypes.c_char_p, _NONE),
    "bpf_object__next_map": ([_pp, _pp], _pp, _NONE),  # NULL ends the walk
    "bpf_map__name": ([_pp], ctypes.c_char_p, _NONE),
    "bpf_map__set_max_entries": ([_pp, c_uint32], c_int, _INT),
    "bpf_map__set_value_size": ([_pp, c_uint32], c_int, _INT),
    "bpf_map__key_size": ([_pp], c_uint32, _NONE),
    "bpf_map__value_size": ([_pp], c_uint32, _NONE),
    "bpf_map__set_initial_value": ([_pp, c_void_p, c_size_t], c_int, _INT),
    "bpf_map__fd": ([_pp], c_int, _INT),
    "bpf_program__fd": ([_pp], c_int, _INT),
    "bpf_program__set_autoload": ([_pp, c_bool], c_int, _INT),
    "bpf_program__attach_perf_event": ([_pp, c_int], _pp, _PTR),
    "bpf_program__attach": ([_pp], _pp, _PTR),
    "bpf_link__destroy": ([_pp], c_int, _INT),
    "bpf_map_lookup_elem": ([c_int, c_void_p, c_void_p], c_int, _INT),
    "bpf_map_update_elem": ([c_int, c_void_p, c_void_p, ctypes.c_uint64],
                            c_int, _INT),
    "bpf_map_get_next_key": ([c_int, c_void_p, c_void_p], c_int, _INT),
    "bpf_map_lookup_batch": ([c_int, c_void_p, c_void_p, c_void_p, c_void_p,
                              ctypes.POINTER(c_uint32),
                              ctypes.POINTER(bpf_map_batch_opts)],
                             c_int, _NONE),  # -ENOENT marks the last batch
    "bpf_prog_test_run_opts": ([c_int, ctypes.POINTER(bpf_test_run_opts)],
                               c_int, _INT),
}

SONAME = "libbpf.so.1"


def _load_library():
    """libbpf by its soname; only where that fails, ctypes.util.find_library,
    which runs ldconfig (and gcc where ldconfig finds nothing): tens of
    milliseconds that every run would pay for nothing."""
    try:
        return ctypes.CDLL(SONAME, use_errno=True)
    except OSError:
        pass
    found = ctypes.util.find_library("bpf")
    if found and found != SONAME:
        try:
            return ctypes.CDLL(found, use_errno=True)
        except OSError:
            pass
    raise LibbpfMissing(f"cannot load {SONAME} (libbpf >= 1.0)")


class _Bound:
    """The table's functions, and nothing else of the library."""


def _bind(lib):
    bound = _Bound()
    for name, (argtypes, restype, errcheck) in _PROTOTYPES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise LibbpfMissing(
                f"{SONAME} lacks {name}(): libbpf >= 1.0 is needed") from None
        fn.argtypes = argtypes
        fn.restype = restype
        if errcheck is not None:
            fn.errcheck = errcheck
        setattr(bound, name, fn)
    return bound


_lib = None
_libc = None
_verbose = False


def _print_cb(level, fmt, va_list):
    """libbpf's messages (the verifier's log among them) go to stderr with
    -v, and nowhere otherwise."""
    if _verbose:
        buf = ctypes.create_string_buffer(1 << 18)  # verifier logs are long
        _libc.vsnprintf(buf, len(buf), fmt, va_list)
        os.write(2, b"libbpf: " + buf.value)
    return 0


_print_ref = PRINT_FN(_print_cb)  # kept alive for as long as libbpf uses it


def lib():
    """The bound library, loaded on first use (raises LibbpfMissing)."""
    global _lib, _libc
    if _lib is None:
        bound = _bind(_load_library())
        if bound.libbpf_major_version() < 1:
            raise LibbpfMissing("libbpf %d.%d is too old: >= 1.0 is needed" % (
                bound.libbpf_major_version(), bound.libbpf_minor_version()))
        _libc = ctypes.CDLL(None)
        _libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
        _libc.vsnprintf.restype = c_int
        bound.libbpf_set_print(_print_ref)
        _lib = bound
    return _lib


def set_verbose(on):
    global _verbose
    _verbose = bool(on)

