"""Raw Linux interfaces the kernel-level tests poke directly: bpf(2), tun and vhost ioctls.

No libbpf and no compiler here on purpose: the kernel tests assemble a handful of BPF
instructions themselves, so that they exercise exactly the UAPI the kernel series adds
(program type, ``__sk_buff`` offsets) and nothing else.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from dataclasses import dataclass

# ---- bpf(2) ---------------------------------------------------------------------------

NR_BPF = 321  # x86_64
BPF_PROG_LOAD = 5
BPF_PROG_TEST_RUN = 10

BPF_PROG_TYPE_SOCKET_FILTER = 1
BPF_PROG_TYPE_NETFILTER = 32
# The series appends its type right after NETFILTER (the last type in Linux 6.12).
BPF_PROG_TYPE_VNET_HASH = BPF_PROG_TYPE_NETFILTER + 1

# struct __sk_buff: 6.12 ends with `__u64 hwtstamp` at 184; the series appends
# `__u32 vnet_hash_value; __u16 vnet_hash_report; __u16 vnet_rss_queue;`.
SKB_LEN = 0
SKB_VNET_HASH_VALUE = 192
SKB_VNET_HASH_REPORT = 196
SKB_VNET_RSS_QUEUE = 198
SKB_SIZE = 200

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def bpf(cmd: int, attr: bytearray) -> int:
    buf = (ctypes.c_char * len(attr)).from_buffer(attr)
    ret = _libc.syscall(NR_BPF, cmd, buf, len(attr))
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"bpf(cmd={cmd}): {os.strerror(e)}")
    return ret


class Asm:
    """Just enough of an eBPF assembler for the tests' tiny programs."""

    def __init__(self) -> None:
        self.insns: list[bytes] = []

    def _ins(self, code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0):
        self.insns.append(struct.pack("<BBhi", code, (src << 4) | dst, off, imm))
        return self

    def mov64(self, dst: int, imm: int):
        return self._ins(0xB7, dst, imm=imm)

    def mov64_reg(self, dst: int, src: int):
        return self._ins(0xBF, dst, src)

    def and64(self, dst: int, imm: int):
        return self._ins(0x57, dst, imm=imm)

    def mod64(self, dst: int, imm: int):
        return self._ins(0x97, dst, imm=imm)

    def add64(self, dst: int, imm: int):
        return self._ins(0x07, dst, imm=imm)

    def ldx(self, size: int, dst: int, src: int, off: int):
        return self._ins({4: 0x61, 2: 0x69, 1: 0x71, 8: 0x79}[size], dst, src, off)

    def stx(self, size: int, dst: int, off: int, src: int):
        return self._ins({4: 0x63, 2: 0x6B, 1: 0x73, 8: 0x7B}[size], dst, src, off)

    def st(self, size: int, dst: int, off: int, imm: int):
        """BPF_ST | BPF_MEM: store an immediate."""
        return self._ins({4: 0x62, 2: 0x6A, 1: 0x72, 8: 0x7A}[size], dst, off=off, imm=imm)

    def ldxsx(self, size: int, dst: int, src: int, off: int):
        """BPF_LDX | BPF_MEMSX (sign-extending load, Linux 6.6+)."""
        return self._ins({4: 0x81, 2: 0x89, 1: 0x91}[size], dst, src, off)

    def exit(self):
        return self._ins(0x95)

    def code(self) -> bytes:
        return b"".join(self.insns)


def prog_load(prog_type: int, insns: bytes, name: str = "hashlab") -> int:
    """Load a program; on a verifier rejection the OSError carries the verifier log."""
    license_ = ctypes.create_string_buffer(b"GPL")
    code = ctypes.create_string_buffer(insns, len(insns))
    log = ctypes.create_string_buffer(64 * 1024)
    attr = bytearray(128)
    struct.pack_into(
        "<IIQQIIQ", attr, 0, prog_type, len(insns) // 8, ctypes.addressof(code),
        ctypes.addressof(license_), 1, len(log), ctypes.addressof(log),
    )
    attr[48:64] = name.encode()[:15].ljust(16, b"\0")
    try:
        return bpf(BPF_PROG_LOAD, attr)
    except OSError as e:
        raise OSError(e.errno, f"{e.strerror}; verifier log:\n{log.value.decode()}") from None


@dataclass
class TestRun:
    retval: int
    data_out: bytes
    ctx_out: bytes


def prog_test_run(prog_fd: int, data: bytes, ctx_in: bytes | None = None,
                  ctx_size_out: int = SKB_SIZE, repeat: int = 1) -> TestRun:
    din = ctypes.create_string_buffer(data, len(data))
    dout = ctypes.create_string_buffer(len(data) + 256)
    cin = ctypes.create_string_buffer(ctx_in, len(ctx_in)) if ctx_in else None
    cout = ctypes.create_string_buffer(ctx_size_out) if ctx_size_out else None
    attr = bytearray(80)
    struct.pack_into(
        "<IIIIQQIIIIQQ", attr, 0, prog_fd, 0, len(data), len(dout),
        ctypes.addressof(din), ctypes.addressof(dout), repeat, 0,
        len(ctx_in) if ctx_in else 0, ctx_size_out,
        ctypes.addressof(cin) if cin else 0, ctypes.addressof(cout) if cout else 0,
    )
    bpf(BPF_PROG_TEST_RUN, attr)
    retval, size_out = struct.unpack_from("<II", attr, 4)[0], struct.unpack_from("<I", attr, 12)[0]
    ctx_out_size = struct.unpack_from("<I", attr, 44)[0]
    return TestRun(retval, dout.raw[:size_out], cout.raw[:ctx_out_size] if cout else b"")


BPF_OBJ_GET_INFO_BY_FD = 15
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0
PROG_INFO_RUN_CNT = 200  # offsetof(struct bpf_prog_info, run_cnt)
PROG_INFO_SIZE = 232


def prog_run_count(prog_fd: int) -> int:
    """How often the program ran (counted only while ``enable_stats`` is held)."""
    info = ctypes.create_string_buffer(PROG_INFO_SIZE)
    attr = bytearray(16)
    struct.pack_into("<IIQ", attr, 0, prog_fd, PROG_INFO_SIZE, ctypes.addressof(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return struct.unpack_from("<Q", info.raw, PROG_INFO_RUN_CNT)[0]


def enable_stats() -> int:
    """BPF_ENABLE_STATS(BPF_STATS_RUN_TIME): programs count their runs while the
    returned fd is open."""
    attr = bytearray(8)
    struct.pack_into("<I", attr, 0, BPF_STATS_RUN_TIME)
    return bpf(BPF_ENABLE_STATS, attr)


CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21


def drop_capabilities(*caps: int) -> None:
    """Drop CAPS from this process's effective set (capget/capset, no libcap)."""
    libc = ctypes.CDLL(None, use_errno=True)
    hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this pid
    data = (ctypes.c_uint32 * 6)()  # 2 x {effective, permitted, inheritable}
    if libc.syscall(125, hdr, data) != 0:  # capget
        raise OSError(ctypes.get_errno(), "capget")
    for cap in caps:
        data[3 * (cap // 32)] &= ~(1 << (cap % 32))
    if libc.syscall(126, hdr, data) != 0:  # capset
        raise OSError(ctypes.get_errno(), "capset")


# ---- tun ------------------------------------------------------------------------------

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETVNETHDRSZ = 0x400454D8
TUNSETVNETLE = 0x400454DC
TUNSETSTEERINGEBPF = 0x800454E0
TUNGETFEATURES = 0x800454CF
# The tunrss series: tun hashes itself (struct tun_vnet_hash_cap / tun_vnet_hash).
TUNGETVNETHASHCAP = 0x800854E4
TUNSETVNETHASH = 0x400454E5
TUN_VNET_HASH_REPORT = 0x0001
TUN_VNET_HASH_RSS = 0x0002
IFF_TAP = 0x0002
IFF_VNET_HASH = 0x0080  # the series: TUNGETFEATURES says tun writes the hash fields
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100


def ifreq(name: str, flags: int) -> bytes:
    """``struct ifreq`` with ``ifr_name`` and ``ifr_flags`` (what TUNSETIFF takes)."""
    return struct.pack("16sH22x", name.encode(), flags)


def tap_queue(name: str, flags: int = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE) -> int:
    """Open one queue of tap ``name`` (created by the first open); returns its fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, ifreq(name, flags))
    except BaseException:
        os.close(fd)
        raise
    return fd


def tun_vnet_hash_cap() -> tuple[int, int, int] | None:
    """(max indirection table entries, max key bytes, hash types) tun computes itself
    (TUNGETVNETHASHCAP), or None when this kernel's tun does not hash."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        out = fcntl.ioctl(fd, TUNGETVNETHASHCAP, bytes(8))
    except OSError:
        return None
    finally:
        os.close(fd)
    table, key, _pad, types = struct.unpack("=HBBI", out)
    return table, key, types


def ioctl_int(fd: int, req: int, value: int) -> None:
    fcntl.ioctl(fd, req, struct.pack("i", value))


# ---- vhost ----------------------------------------------------------------------------

VHOST_GET_FEATURES = 0x8008AF00
VHOST_SET_FEATURES = 0x4008AF00
VHOST_SET_OWNER = 0xAF01
VHOST_SET_BACKEND_FEATURES = 0x4008AF25
VHOST_GET_BACKEND_FEATURES = 0x8008AF26
VHOST_BACKEND_F_IOTLB_MSG_V2 = 0x1
VHOST_NET_BACKEND_F_HASH_REPORT = 0x20  # the series: HASH_REPORT is opt-in

VIRTIO_NET_F_HASH_REPORT = 57
VIRTIO_F_VERSION_1 = 32


def vhost_get_features(fd: int) -> int:
    buf = bytearray(8)
    fcntl.ioctl(fd, VHOST_GET_FEATURES, buf)
    return struct.unpack("<Q", buf)[0]


def vhost_get_backend_features(fd: int) -> int:
    buf = bytearray(8)
    fcntl.ioctl(fd, VHOST_GET_BACKEND_FEATURES, buf)
    return struct.unpack("<Q", buf)[0]


def vhost_set_backend_features(fd: int, features: int) -> None:
    fcntl.ioctl(fd, VHOST_SET_BACKEND_FEATURES, struct.pack("<Q", features))


def vhost_set_features(fd: int, features: int) -> int:
    """Returns 0 or the errno the kernel refused with."""
    try:
        fcntl.ioctl(fd, VHOST_SET_FEATURES, struct.pack("<Q", features))
    except OSError as e:
        return e.errno or errno.EIO
    return 0
