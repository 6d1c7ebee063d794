"""Kernel-level tests of the series, run inside the lab VM (patched kernel).

They talk to the kernel through its raw UAPI (hashlab.linux): a hand-assembled
VNET_HASH program steers a multi-queue tap and reports a hash that depends on the
packet, and the tests read the tap the way QEMU and vhost_net do.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import subprocess
import time
import uuid

import pytest

from hashlab import linux as L

pytestmark = pytest.mark.lab

NQUEUES = 2
ETH_P_EXP = 0x88B5  # IEEE local experimental ethertype: nothing else in the lab uses it


UNWRITTEN = b"\xee"  # what the read buffer holds where tun writes nothing


def frame(length: int) -> bytes:
    hdr = bytes.fromhex("020000000001" "020000000002") + struct.pack("!H", ETH_P_EXP)
    body = b"HLKT" + struct.pack("!I", length)
    return (hdr + body).ljust(length, b"\xa5")


@pytest.fixture
def tap():
    """A two-queue tap with vnet headers, up, IPv6 off (no stray ND frames); removed after."""
    name = "hlk" + uuid.uuid4().hex[:6]
    fds = [L.tap_queue(name) for _ in range(NQUEUES)]
    try:
        with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as f:
            f.write("1")
    except FileNotFoundError:
        pass
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    tx.bind((name, 0))
    try:
        yield name, fds, tx
    finally:
        tx.close()
        for fd in fds:
            os.close(fd)
    # The last close removes a non-persistent tap.
    assert not os.path.exists(f"/sys/class/net/{name}"), f"tap {name} left behind"


def receive(fds: list[int], count: int, timeout: float = 10.0) -> list[tuple[int, bytes]]:
    """Read ``count`` test frames from whichever queues they land on: (queue, bytes)."""
    out: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        ready, _, _ = select.select(fds, [], [], 0.2)
        for fd in ready:
            # A marked buffer shows which header bytes tun skips rather than writes.
            buf = bytearray(UNWRITTEN * 65536)
            try:
                n = os.readv(fd, [buf])
            except BlockingIOError:
                continue
            data = bytes(buf[:n])
            if b"HLKT" in data:
                out.append((fds.index(fd), data))
    return out


def steer(fds: list[int], tx: socket.socket, prog: int, hdr_len: int) -> list[tuple[int, bytes]]:
    """Attach ``prog`` as the tap's steering program (and consume it), send one test
    frame of each length, and return what each queue read."""
    for fd in fds:
        L.ioctl_int(fd, L.TUNSETVNETLE, 1)
        L.ioctl_int(fd, L.TUNSETVNETHDRSZ, hdr_len)
    try:
        L.ioctl_int(fds[0], L.TUNSETSTEERINGEBPF, prog)
        for n in LENGTHS:
            tx.send(frame(n))
        got = receive(fds, len(LENGTHS))
    finally:
        L.ioctl_int(fds[0], L.TUNSETSTEERINGEBPF, -1)
        os.close(prog)
    assert len(got) == len(LENGTHS)
    return got


def vnet_hash_prog() -> int:
    """hash = skb->len, report = len % 9 + 1, queue = len % 2: all visibly per packet."""
    a = L.Asm()
    a.ldx(4, 2, 1, L.SKB_LEN)
    a.stx(4, 1, L.SKB_VNET_HASH_VALUE, 2)
    a.mov64_reg(3, 2).mod64(3, 9).add64(3, 1)
    a.stx(2, 1, L.SKB_VNET_HASH_REPORT, 3)
    a.mov64_reg(4, 2).and64(4, 1)
    a.stx(2, 1, L.SKB_VNET_RSS_QUEUE, 4)
    a.mov64(0, 0).exit()
    return L.prog_load(L.BPF_PROG_TYPE_VNET_HASH, a.code(), "hl_vnet_hash")


LENGTHS = [60, 61, 100, 201, 514, 1000, 1001, 1514]


@pytest.mark.parametrize("hdr_len", [20, 24])
def test_vnet_hash_program_steers_and_reports(tap, hdr_len):
    name, fds, tx = tap
    got = steer(fds, tx, vnet_hash_prog(), hdr_len)
    for queue, data in got:
        body = data[hdr_len:]
        n = len(body)
        assert n in LENGTHS and body == frame(n)
        value, report, pad = struct.unpack_from("<IHH", data, 12)
        assert (queue, value, report, pad) == (n % NQUEUES, n, n % 9 + 1, 0), data[:hdr_len].hex()
        assert data[:10] == bytes(10)  # no offloads asked for: flags, gso, csum all zero
        # Bytes past the 20-byte header are skipped, not written (as tun always did).
        assert data[20:hdr_len] == UNWRITTEN * (hdr_len - 20), data[:hdr_len].hex()


@pytest.mark.parametrize("hdr_len", [10, 12])
def test_short_vnet_headers_keep_their_layout(tap, hdr_len):
    """With 10/12-byte headers the hash has nowhere to go: the frame follows at once."""
    name, fds, tx = tap
    got = steer(fds, tx, vnet_hash_prog(), hdr_len)
    for queue, data in got:
        # num_buffers (bytes 10-11) is the VMM's to fill in; tun leaves it alone.
        assert data[:10] == bytes(10)
        assert data[10:hdr_len] == UNWRITTEN * (hdr_len - 10), data[:hdr_len].hex()
        body = data[hdr_len:]
        assert body == frame(len(body)) and queue == len(body) % NQUEUES


def test_socket_filter_steering_unchanged(tap):
    """A classic steering program: its return value picks the queue; headers carry no hash."""
    name, fds, tx = tap
    a = L.Asm().ldx(4, 0, 1, L.SKB_LEN).and64(0, 1).exit()  # queue = len % 2
    got = steer(fds, tx, L.prog_load(L.BPF_PROG_TYPE_SOCKET_FILTER, a.code(), "hl_sockfilt"), 20)
    for queue, data in got:
        body = data[20:]
        assert queue == len(body) % NQUEUES
        assert data[:10] == bytes(10)
        assert data[12:20] == bytes(8), "a socket filter must not produce a hash report"


def test_socket_filter_cannot_touch_vnet_fields():
    a = L.Asm().mov64(2, 7).stx(4, 1, L.SKB_VNET_HASH_VALUE, 2).mov64(0, 0).exit()
    with pytest.raises(OSError) as e:
        L.prog_load(L.BPF_PROG_TYPE_SOCKET_FILTER, a.code())
    assert e.value.errno in (errno.EACCES, errno.EINVAL)


def test_vnet_hash_test_run_returns_fields():
    """BPF_PROG_TEST_RUN reports the three fields in ctx_out (the differential tests rely on it)."""
    prog = vnet_hash_prog()
    try:
        for n in (60, 333):
            r = L.prog_test_run(prog, frame(n))
            value, report, queue = struct.unpack_from("<IHH", r.ctx_out, L.SKB_VNET_HASH_VALUE)
            assert (value, report, queue) == (n, n % 9 + 1, n % 2)
    finally:
        os.close(prog)


def test_vhost_net_offers_hash_report_only_with_version_1():
    fd = os.open("/dev/vhost-net", os.O_RDWR)
    try:
        import fcntl

        fcntl.ioctl(fd, L.VHOST_SET_OWNER)
        feats = L.vhost_get_features(fd)
        hr, v1 = 1 << L.VIRTIO_NET_F_HASH_REPORT, 1 << L.VIRTIO_F_VERSION_1
        assert feats & hr, f"vhost_net features {feats:#x} lack HASH_REPORT"
        assert L.vhost_set_features(fd, hr) == errno.EINVAL
        assert L.vhost_set_features(fd, hr | v1) == 0
        assert L.vhost_set_features(fd, v1) == 0
    finally:
        os.close(fd)
