"""A small ctypes wrapper over libbpf: open and load an object, find its programs and
maps, update map elements, and run a program with ``BPF_PROG_TEST_RUN``.

Enough for hashlab's differential tests and benchmarks of QEMU's RSS program; not a
general binding.  By default it uses the ``libbpf.so`` of the kernel build entry
(``hashlab build kernel --print-path``, subdirectory ``libbpf/``) when it exists, else
the system's ``libbpf.so.1``; pass ``lib=`` to choose.

Typical use::

    with BpfObject.open(path, types={"tun_rss_vnet_hash_prog": PROG_TYPE_VNET_HASH},
                        autoload={"tun_rss_steering_prog": False}) as obj:
        obj.load()
        obj.map("tap_rss_map_configurations").update(0, config_bytes)
        res = obj.program("tun_rss_vnet_hash_prog").test_run(frame)
        res.skb.vnet_hash_value
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import HashlabError, MissingToolError
from ..uapi import linux as L

# enum bpf_prog_type values this module needs (their one home: hashlab.uapi.linux).
PROG_TYPE_SOCKET_FILTER = L.BPF_PROG_TYPE_SOCKET_FILTER
PROG_TYPE_VNET_HASH = L.BPF_PROG_TYPE_VNET_HASH


class BpfError(HashlabError):
    """A libbpf or bpf(2) call failed; ``errno`` holds the error number."""

    def __init__(self, what: str, err: int, log: str = ""):
        self.errno = err
        self.log = log
        msg = f"{what}: {os.strerror(err)} (errno {err})"
        if log:
            msg += "\n" + log.rstrip()
        super().__init__(msg)


class SkBuff(ctypes.Structure):
    """``struct __sk_buff`` (Linux 6.12 UAPI) with the lab series' vnet_* fields."""

    _fields_ = [
        ("len", ctypes.c_uint32),
        ("pkt_type", ctypes.c_uint32),
        ("mark", ctypes.c_uint32),
        ("queue_mapping", ctypes.c_uint32),
        ("protocol", ctypes.c_uint32),
        ("vlan_present", ctypes.c_uint32),
        ("vlan_tci", ctypes.c_uint32),
        ("vlan_proto", ctypes.c_uint32),
        ("priority", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("tc_index", ctypes.c_uint32),
        ("cb", ctypes.c_uint32 * 5),
        ("hash", ctypes.c_uint32),
        ("tc_classid", ctypes.c_uint32),
        ("data", ctypes.c_uint32),
        ("data_end", ctypes.c_uint32),
        ("napi_id", ctypes.c_uint32),
        ("family", ctypes.c_uint32),
        ("remote_ip4", ctypes.c_uint32),
        ("local_ip4", ctypes.c_uint32),
        ("remote_ip6", ctypes.c_uint32 * 4),
        ("local_ip6", ctypes.c_uint32 * 4),
        ("remote_port", ctypes.c_uint32),
        ("local_port", ctypes.c_uint32),
        ("data_meta", ctypes.c_uint32),
        ("flow_keys", ctypes.c_uint64),
        ("tstamp", ctypes.c_uint64),
        ("wire_len", ctypes.c_uint32),
        ("gso_segs", ctypes.c_uint32),
        ("sk", ctypes.c_uint64),
        ("gso_size", ctypes.c_uint32),
        ("tstamp_type", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 3),
        ("hwtstamp", ctypes.c_uint64),
        ("vnet_hash_value", ctypes.c_uint32),
        ("vnet_hash_report", ctypes.c_uint16),
        ("vnet_rss_queue", ctypes.c_uint16),
    ]


# The ctypes view libbpf needs, checked against the layout's one home (hashlab.uapi.linux).
assert ctypes.sizeof(SkBuff) == L.SKB_SIZE and SkBuff.hwtstamp.offset == 184
assert (SkBuff.vnet_hash_value.offset, SkBuff.vnet_hash_report.offset,
        SkBuff.vnet_rss_queue.offset) == (L.SKB_VNET_HASH_VALUE, L.SKB_VNET_HASH_REPORT,
                                          L.SKB_VNET_RSS_QUEUE)
SKB_SIZE_UPSTREAM = SkBuff.vnet_hash_value.offset  # __sk_buff without the series


class _TestRunOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


def default_libbpf_path() -> str | None:
    """The kernel entry's libbpf.so if that entry exists (never builds it), else None."""
    env = os.environ.get("HASHLAB_LIBBPF")
    if env:
        return env
    entry = os.environ.get("HASHLAB_KERNEL_ENTRY")
    candidates = []
    if entry:
        candidates.append(Path(entry))
    else:
        try:
            from ..build.qemu import find_kernel_entry

            found = find_kernel_entry(build=False)
            if found:
                candidates.append(found)
        except Exception:  # the kernel builder may not be there yet
            pass
    for c in candidates:
        for name in ("libbpf/libbpf.so", "libbpf/lib/libbpf.so", "libbpf/lib64/libbpf.so"):
            if (c / name).exists():
                return str(c / name)
    return None


class Libbpf:
    """The loaded shared library with prototypes set, plus a captured log."""

    _instances: dict[str, "Libbpf"] = {}

    def __init__(self, path: str):
        self.path = path
        try:
            lib = ctypes.CDLL(path, use_errno=True)
        except OSError as e:
            raise MissingToolError(f"cannot load libbpf from {path}: {e}") from e
        self.lib = lib
        self.log: list[str] = []
        vp, cp, ci = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        sig = {
            "bpf_object__open_file": (vp, [cp, vp]),
            "bpf_object__load": (ci, [vp]),
            "bpf_object__close": (None, [vp]),
            "bpf_object__find_program_by_name": (vp, [vp, cp]),
            "bpf_object__next_program": (vp, [vp, vp]),
            "bpf_object__next_map": (vp, [vp, vp]),
            "bpf_program__name": (cp, [vp]),
            "bpf_map__name": (cp, [vp]),
            "bpf_object__find_map_by_name": (vp, [vp, cp]),
            "bpf_program__set_type": (ci, [vp, ci]),
            "bpf_program__set_autoload": (ci, [vp, ctypes.c_bool]),
            "bpf_program__fd": (ci, [vp]),
            "bpf_map__fd": (ci, [vp]),
            "bpf_map__value_size": (ctypes.c_uint32, [vp]),
            "bpf_map__key_size": (ctypes.c_uint32, [vp]),
            "bpf_map__max_entries": (ctypes.c_uint32, [vp]),
            "bpf_map_update_elem": (ci, [ci, vp, vp, ctypes.c_uint64]),
            "bpf_map_lookup_elem": (ci, [ci, vp, vp]),
            "bpf_map_get_next_id": (ci, [ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32)]),
            "bpf_map_get_fd_by_id": (ci, [ctypes.c_uint32]),
            "bpf_map_get_info_by_fd": (ci, [ci, vp, ctypes.POINTER(ctypes.c_uint32)]),
            "bpf_prog_test_run_opts": (ci, [ci, ctypes.POINTER(_TestRunOpts)]),
            "bpf_program__attach": (vp, [vp]),
            "bpf_link__destroy": (ci, [vp]),
            "libbpf_set_print": (vp, [_PRINT_FN]),
            "libbpf_major_version": (ctypes.c_uint32, []),
            "libbpf_minor_version": (ctypes.c_uint32, []),
        }
        for name, (res, args) in sig.items():
            fn = getattr(lib, name)
            fn.restype = res
            fn.argtypes = args
        # Keep libbpf's messages (the verifier log among them) for error reports.
        libc = ctypes.CDLL(None)
        vsnprintf = libc.vsnprintf
        vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]

        def _print(level, fmt, va):
            buf = ctypes.create_string_buffer(4096)
            vsnprintf(buf, len(buf), fmt, va)
            if level <= 1:  # LIBBPF_WARN, LIBBPF_INFO
                self.log.append(buf.value.decode(errors="replace"))
            return 0

        self._print_cb = _PRINT_FN(_print)
        lib.libbpf_set_print(self._print_cb)

    @property
    def version(self) -> str:
        return f"{self.lib.libbpf_major_version()}.{self.lib.libbpf_minor_version()}"

    @classmethod
    def get(cls, path: str | None = None) -> "Libbpf":
        path = path or default_libbpf_path() or ctypes.util.find_library("bpf") or "libbpf.so.1"
        if path not in cls._instances:
            cls._instances[path] = Libbpf(path)
        return cls._instances[path]

    def take_log(self) -> str:
        out = "".join(self.log)
        self.log.clear()
        return out


@dataclass
class TestRunResult:
    retval: int
    duration_ns: int
    skb: SkBuff  # ctx_out
    ctx_size_out: int
    data_out: bytes


class Program:
    def __init__(self, obj: "BpfObject", ptr: int, name: str):
        self.obj, self.ptr, self.name = obj, ptr, name

    def set_type(self, prog_type: int) -> None:
        err = self.obj.lib.lib.bpf_program__set_type(self.ptr, prog_type)
        if err:
            raise BpfError(f"set type of {self.name}", -err)

    def set_autoload(self, on: bool) -> None:
        err = self.obj.lib.lib.bpf_program__set_autoload(self.ptr, on)
        if err:
            raise BpfError(f"set autoload of {self.name}", -err)

    @property
    def fd(self) -> int:
        return self.obj.lib.lib.bpf_program__fd(self.ptr)

    def attach(self) -> "Link":
        """Attach the loaded program as its section says (kprobe/FUNC, ...)."""
        ctypes.set_errno(0)
        link = self.obj.lib.lib.bpf_program__attach(self.ptr)
        if not link:
            raise BpfError(f"attach {self.name}", ctypes.get_errno() or errno.EINVAL,
                           self.obj.lib.take_log())
        return Link(self.obj.lib, link, self.name)

    def test_run(
        self,
        data: bytes,
        ctx_in: SkBuff | bytes | None = None,
        repeat: int = 1,
        data_out_size: int = 0,
    ) -> TestRunResult:
        """Run the program once (or ``repeat`` times) on ``data`` (an Ethernet frame).

        ``ctx_in`` defaults to an all-zero ``struct __sk_buff``; ``ctx_out`` is always
        requested and returned as ``SkBuff``.  Kernels without the series return only
        the first 192 bytes of it (``ctx_size_out``), leaving the vnet_* fields zero.
        """
        lib = self.obj.lib.lib
        fd = self.fd
        if fd < 0:
            raise BpfError(f"program {self.name} is not loaded", errno.EBADF)
        din = ctypes.create_string_buffer(bytes(data), len(data))
        if ctx_in is None:
            ctx_in = SkBuff()
        cin = ctypes.create_string_buffer(bytes(ctx_in), len(bytes(ctx_in)))
        cout = SkBuff()
        dout = ctypes.create_string_buffer(max(data_out_size, 1))
        opts = _TestRunOpts()
        opts.sz = ctypes.sizeof(_TestRunOpts)
        opts.data_in = ctypes.cast(din, ctypes.c_void_p)
        opts.data_size_in = len(data)
        if data_out_size:
            opts.data_out = ctypes.cast(dout, ctypes.c_void_p)
            opts.data_size_out = data_out_size
        opts.ctx_in = ctypes.cast(cin, ctypes.c_void_p)
        opts.ctx_size_in = len(cin.raw)
        opts.ctx_out = ctypes.addressof(cout)
        opts.ctx_size_out = ctypes.sizeof(cout)
        opts.repeat = repeat
        err = lib.bpf_prog_test_run_opts(fd, ctypes.byref(opts))
        if err:
            raise BpfError(f"BPF_PROG_TEST_RUN of {self.name}", ctypes.get_errno() or -err)
        return TestRunResult(
            retval=opts.retval,
            duration_ns=opts.duration,
            skb=cout,
            ctx_size_out=opts.ctx_size_out,
            data_out=dout.raw[: opts.data_size_out] if data_out_size else b"",
        )


class Link:
    """A ``struct bpf_link``: the attachment lasts until ``destroy()`` (or ``with``)."""

    def __init__(self, lib: Libbpf, ptr: int, name: str):
        self.lib, self.ptr, self.name = lib, ptr, name

    def destroy(self) -> None:
        if self.ptr:
            self.lib.lib.bpf_link__destroy(self.ptr)
            self.ptr = None

    def __enter__(self) -> "Link":
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()


class Map:
    def __init__(self, obj: "BpfObject", ptr: int, name: str):
        self.obj, self.ptr, self.name = obj, ptr, name

    @property
    def fd(self) -> int:
        return self.obj.lib.lib.bpf_map__fd(self.ptr)

    @property
    def value_size(self) -> int:
        return self.obj.lib.lib.bpf_map__value_size(self.ptr)

    @property
    def key_size(self) -> int:
        return self.obj.lib.lib.bpf_map__key_size(self.ptr)

    @property
    def max_entries(self) -> int:
        return self.obj.lib.lib.bpf_map__max_entries(self.ptr)

    @staticmethod
    def _key(key: int | bytes) -> bytes:
        return struct.pack("<I", key) if isinstance(key, int) else bytes(key)

    def update(self, key: int | bytes, value: bytes, flags: int = 0) -> None:
        k = ctypes.create_string_buffer(self._key(key))
        v = ctypes.create_string_buffer(bytes(value), len(value))
        if self.obj.lib.lib.bpf_map_update_elem(self.fd, k, v, flags):
            raise BpfError(f"update {self.name}[{key!r}]", ctypes.get_errno())


class _MapInfo(ctypes.Structure):
    """The head of ``struct bpf_map_info`` (the kernel fills what fits)."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("name", ctypes.c_char * 16)]


@dataclass
class KernelMap:
    """A map loaded in the kernel by any process (found by id, as bpftool does)."""

    id: int
    name: str
    key_size: int
    value_size: int

    def lookup(self, key: int | bytes, lib: Libbpf | None = None) -> bytes:
        lib = lib or Libbpf.get()
        fd = lib.lib.bpf_map_get_fd_by_id(self.id)
        if fd < 0:
            raise BpfError(f"map id {self.id}", ctypes.get_errno())
        try:
            k = ctypes.create_string_buffer(Map._key(key), self.key_size)
            v = ctypes.create_string_buffer(self.value_size)
            if lib.lib.bpf_map_lookup_elem(fd, k, v):
                raise BpfError(f"lookup {self.name}[{key!r}]", ctypes.get_errno())
            return v.raw
        finally:
            os.close(fd)


def kernel_maps(name_prefix: str = "", lib: Libbpf | None = None) -> list[KernelMap]:
    """Every BPF map in the kernel whose (15-character) name starts with NAME_PREFIX."""
    lib = lib or Libbpf.get()
    out, cur, nxt = [], 0, ctypes.c_uint32()
    while lib.lib.bpf_map_get_next_id(cur, ctypes.byref(nxt)) == 0:
        cur = nxt.value
        fd = lib.lib.bpf_map_get_fd_by_id(cur)
        if fd < 0:
            continue  # gone meanwhile
        try:
            info, n = _MapInfo(), ctypes.c_uint32(ctypes.sizeof(_MapInfo))
            if lib.lib.bpf_map_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(n)):
                continue
        finally:
            os.close(fd)
        name = info.name.decode(errors="replace")
        if name.startswith(name_prefix[:15]):
            out.append(KernelMap(info.id, name, info.key_size, info.value_size))
    return out


class BpfObject:
    """A ``struct bpf_object`` opened from an ELF file; close it (or use ``with``)."""

    def __init__(self, lib: Libbpf, ptr: int, path: str):
        self.lib, self.ptr, self.path = lib, ptr, path
        self.loaded = False

    @classmethod
    def open(
        cls,
        path: str | Path,
        types: dict[str, int] | None = None,
        autoload: dict[str, bool] | None = None,
        lib: Libbpf | str | None = None,
    ) -> "BpfObject":
        if not isinstance(lib, Libbpf):
            lib = Libbpf.get(lib)
        lib.take_log()
        ptr = lib.lib.bpf_object__open_file(str(path).encode(), None)
        if not ptr:
            raise BpfError(f"open {path}", ctypes.get_errno() or errno.EINVAL, lib.take_log())
        obj = cls(lib, ptr, str(path))
        try:
            for name, t in (types or {}).items():
                obj.program(name).set_type(t)
            for name, on in (autoload or {}).items():
                obj.program(name).set_autoload(on)
        except BaseException:
            obj.close()
            raise
        return obj

    def program(self, name: str) -> Program:
        p = self.lib.lib.bpf_object__find_program_by_name(self.ptr, name.encode())
        if not p:
            raise BpfError(f"no program {name} in {self.path}", errno.ENOENT)
        return Program(self, p, name)

    def program_names(self) -> list[str]:
        """The object's programs, in ELF order."""
        lib, out, p = self.lib.lib, [], None
        while p := lib.bpf_object__next_program(self.ptr, p):
            out.append(lib.bpf_program__name(p).decode())
        return out

    def map_names(self) -> list[str]:
        """The object's maps (``.maps`` ones and libbpf's internal ones), in order."""
        lib, out, m = self.lib.lib, [], None
        while m := lib.bpf_object__next_map(self.ptr, m):
            out.append(lib.bpf_map__name(m).decode())
        return out

    def map_bytes(self) -> dict[str, int]:
        """Per map, what its entries hold: (key + value size) x max entries, in bytes
        (the kernel's own overhead per map not included)."""
        out = {}
        for name in self.map_names():
            m = self.map(name)
            out[name] = (m.key_size + m.value_size) * m.max_entries
        return out

    def map(self, name: str) -> Map:
        m = self.lib.lib.bpf_object__find_map_by_name(self.ptr, name.encode())
        if not m:
            raise BpfError(f"no map {name} in {self.path}", errno.ENOENT)
        return Map(self, m, name)

    def load(self) -> None:
        self.lib.take_log()
        err = self.lib.lib.bpf_object__load(self.ptr)
        if err:
            raise BpfError(f"load {self.path}", -err, self.lib.take_log())
        self.loaded = True

    def close(self) -> None:
        if self.ptr:
            self.lib.lib.bpf_object__close(self.ptr)
            self.ptr = None

    def __enter__(self) -> "BpfObject":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- QEMU's RSS program: the map layout ebpf/ebpf_rss.c writes -----------------------

RSS_PROG_SOCKET = "tun_rss_steering_prog"
RSS_PROG_VNET_HASH = "tun_rss_vnet_hash_prog"
RSS_MAP_CONFIG = "tap_rss_map_configurations"
RSS_MAP_KEY = "tap_rss_map_toeplitz_key"
RSS_MAP_TABLE = "tap_rss_map_indirection_table"
RSS_TABLE_MAX = 128
RSS_KEY_SIZE = 40
RSS_INPUT_MAX = 36  # bytes hashed at most (IPv6 addresses + ports)
RSS_TOEPLITZ_TABLE_SIZE = RSS_INPUT_MAX * 256 * 4
RSS_KEY_VALUE_SIZE = RSS_KEY_SIZE + RSS_TOEPLITZ_TABLE_SIZE
"""tap_rss_map_toeplitz_key's value with qemu/patches 0006 (table-driven Toeplitz): the
40-byte key as before, then ``u32 table[36][256]``; upstream's value is the key only."""


RSS_CONFIG_SIZE = 14
"""struct EBPFRSSConfig with qemu/patches 0014 (inner header hash: ``u32 tunnel_types``
at the end); upstream's and the series' before it are 10 bytes."""


def rss_config_bytes(
    redirect: bool, populate_hash: bool, hash_types: int, indirections_len: int,
    default_queue: int, tunnel_types: int = 0, size: int = RSS_CONFIG_SIZE,
) -> bytes:
    """struct EBPFRSSConfig: packed {u8 redirect; u8 populate_hash; u32 hash_types;
    u16 indirections_len; u16 default_queue; u32 tunnel_types;} in host byte order;
    ``size`` 10 gives the layout without ``tunnel_types`` (which must then be 0)."""
    out = struct.pack("=BBIHHI", int(redirect), int(populate_hash), hash_types,
                      indirections_len, default_queue, tunnel_types)
    if size == 10 and not tunnel_types:
        return out[:10]
    if size != RSS_CONFIG_SIZE:
        raise ValueError(f"{RSS_MAP_CONFIG}: a {size}-byte value"
                         + (" cannot hold tunnel types" if size == 10 else
                            f", neither 10 nor {RSS_CONFIG_SIZE}"))
    return out


def rss_toeplitz_tables(key: bytes) -> bytes:
    """``u32 table[36][256]`` in host byte order, computed as ebpf_rss.c's
    ebpf_rss_fill_toeplitz_table() does: ``table[i][b]`` is the XOR of the key's 32-bit
    windows at bits ``8i + k`` for each bit ``k`` (MSB first) set in ``b``, each entry one
    XOR away from the entry without its lowest set bit.  (The independent reference is
    ``hashlab.bench.tables``; the tests check that both agree.)"""
    key = bytes(key).ljust(RSS_KEY_SIZE, b"\0")[:RSS_KEY_SIZE]
    rows = []
    for i in range(RSS_INPUT_MAX):
        hi = struct.unpack_from(">I", key, i)[0]
        w = [hi] + [((hi << k) | (key[i + 4] >> (8 - k))) & 0xFFFFFFFF for k in range(1, 8)]
        row = [0] * 256
        for b in range(1, 256):
            low = b & -b
            row[b] = row[b ^ low] ^ w[7 - (low.bit_length() - 1)]
        rows.append(struct.pack("=256I", *row))
    return b"".join(rows)


def rss_key_bytes(key: bytes, tables: bool = True) -> bytes:
    """tap_rss_map_toeplitz_key's value as ebpf_rss.c writes it: the 40-byte key (first
    word host-endian, rest as is), then (``tables``, the patched program) the Toeplitz
    lookup tables QEMU derives from it (:func:`rss_toeplitz_tables`)."""
    key = bytes(key).ljust(RSS_KEY_SIZE, b"\0")[:RSS_KEY_SIZE]
    first = struct.unpack(">I", key[:4])[0]
    out = struct.pack("=I", first) + key[4:]
    return out + rss_toeplitz_tables(key) if tables else out


def configure_rss(
    obj: BpfObject,
    key: bytes,
    hash_types: int,
    table: list[int] | None = None,
    default_queue: int = 0,
    redirect: bool = True,
    populate_hash: bool = True,
    tunnel_types: int = 0,
) -> None:
    """Fill the three maps the way QEMU does for RSS_CONFIG (redirect) or HASH_CONFIG,
    with ``tunnel_types`` (HASH_TUNNEL_SET) when the program has them.

    The key map gets the lookup tables too when its value has room for them (the
    patched program); a 40-byte value (upstream's program) gets the key only."""
    table = list(table or [0])
    if len(table) > RSS_TABLE_MAX or len(table) & (len(table) - 1):
        raise ValueError(f"indirection table length {len(table)} is not a power of two <= 128")
    cmap = obj.map(RSS_MAP_CONFIG)
    cmap.update(0, rss_config_bytes(redirect, populate_hash, hash_types, len(table),
                                    default_queue, tunnel_types, cmap.value_size))
    kmap = obj.map(RSS_MAP_KEY)
    if kmap.value_size == RSS_KEY_VALUE_SIZE:
        kmap.update(0, rss_key_bytes(key, tables=True))
    elif kmap.value_size == RSS_KEY_SIZE:
        kmap.update(0, rss_key_bytes(key, tables=False))
    else:
        raise ValueError(f"{RSS_MAP_KEY} in {obj.path} has a {kmap.value_size}-byte value: "
                         f"neither the key ({RSS_KEY_SIZE}) nor key + tables ({RSS_KEY_VALUE_SIZE})")
    tmap = obj.map(RSS_MAP_TABLE)
    for i in range(RSS_TABLE_MAX):
        tmap.update(i, struct.pack("=H", table[i] if i < len(table) else 0))


# QEMU builds tools/ebpf/rss.bpf.c into one object per program (qemu/patches 0001), so
# that each loads as a whole where it is meant to: request-ebpf ids rss and rss-hash.
RSS_OBJECT_FILES = {"socket": "rss.bpf.o", "vnet_hash": "rss_hash.bpf.o"}
RSS_PROGRAMS = {"socket": (RSS_PROG_SOCKET, PROG_TYPE_SOCKET_FILTER),
                "vnet_hash": (RSS_PROG_VNET_HASH, PROG_TYPE_VNET_HASH)}


def rss_object_file(path: str | Path, form: str) -> Path:
    """The object of ``form`` among QEMU's two: ``path`` is either of them or their
    directory (``<qemu entry>/bpf``)."""
    if form not in RSS_OBJECT_FILES:
        raise ValueError(f"unknown program form {form!r}")
    p = Path(path)
    if p.is_dir():
        return p / RSS_OBJECT_FILES[form]
    if p.name in RSS_OBJECT_FILES.values():
        return p.with_name(RSS_OBJECT_FILES[form])
    raise ValueError(f"{p} is not one of QEMU's RSS objects ({', '.join(RSS_OBJECT_FILES.values())})")


def open_rss_object(path: str | Path, form: str = "vnet_hash", lib=None) -> BpfObject:
    """Open QEMU's RSS object of ``form``: "vnet_hash" (``rss_hash.bpf.o``,
    BPF_PROG_TYPE_VNET_HASH, needs the lab kernel) or "socket" (``rss.bpf.o``, a socket
    filter, loads on any kernel).  ``path``: see :func:`rss_object_file`."""
    prog, ptype = RSS_PROGRAMS.get(form, (None, None))
    obj = rss_object_file(path, form)
    return BpfObject.open(obj, types={prog: ptype}, lib=lib)


def kernel_has_vnet_hash(path: str | Path, lib=None) -> tuple[bool, str]:
    """Can this kernel load the VNET_HASH form of ``path``?  (answer, reason)."""
    try:
        with open_rss_object(path, "vnet_hash", lib=lib) as obj:
            obj.load()
    except BpfError as e:
        return False, str(e).splitlines()[0]
    return True, "BPF_PROG_TYPE_VNET_HASH program loaded"
