"""Kernel-level tests of the series, run inside the lab VM (patched kernel).

They talk to the kernel through its raw UAPI (hashlab.uapi.linux): a hand-assembled
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

from hashlab.uapi import linux as L

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


def test_vhost_net_offers_hash_report_only_when_asked():
    """A VMM that does not ack VHOST_NET_BACKEND_F_HASH_REPORT (stock QEMU) sees the
    features of a kernel without the series: it must not pass HASH_REPORT to a guest
    with no hash behind it (and lose RSS for it)."""
    import fcntl

    hr, v1 = 1 << L.VIRTIO_NET_F_HASH_REPORT, 1 << L.VIRTIO_F_VERSION_1
    fd = os.open("/dev/vhost-net", os.O_RDWR)
    try:
        fcntl.ioctl(fd, L.VHOST_SET_OWNER)
        assert not L.vhost_get_features(fd) & hr, "HASH_REPORT offered without being asked"
        assert L.vhost_set_features(fd, hr | v1) == errno.EOPNOTSUPP
        backend = L.vhost_get_backend_features(fd)
        assert backend & (1 << L.VHOST_NET_BACKEND_F_HASH_REPORT), f"{backend:#x}"
        # what stock QEMU acks changes nothing
        L.vhost_set_backend_features(fd, 1 << L.VHOST_BACKEND_F_IOTLB_MSG_V2)
        assert not L.vhost_get_features(fd) & hr
        L.vhost_set_backend_features(fd, (1 << L.VHOST_BACKEND_F_IOTLB_MSG_V2)
                                     | (1 << L.VHOST_NET_BACKEND_F_HASH_REPORT))
        feats = L.vhost_get_features(fd)
        assert feats & hr, f"vhost_net features {feats:#x} lack HASH_REPORT once asked"
        assert L.vhost_set_features(fd, hr) == errno.EINVAL  # needs VERSION_1
        assert L.vhost_set_features(fd, hr | v1) == 0
        assert L.vhost_set_features(fd, v1) == 0
    finally:
        os.close(fd)


def test_tun_says_it_writes_the_hash():
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        buf = bytearray(4)
        import fcntl

        fcntl.ioctl(fd, L.TUNGETFEATURES, buf)
        assert struct.unpack("<I", buf)[0] & L.IFF_VNET_HASH
    finally:
        os.close(fd)


def reporting_prog(report_of_len) -> int:
    """hash = skb->len, queue = len % 2, report = REPORT_OF_LEN(asm, reg 3 <- len)."""
    a = L.Asm()
    a.ldx(4, 2, 1, L.SKB_LEN)
    a.stx(4, 1, L.SKB_VNET_HASH_VALUE, 2)
    a.mov64_reg(3, 2)
    report_of_len(a)
    a.stx(2, 1, L.SKB_VNET_HASH_REPORT, 3)
    a.mov64_reg(4, 2).and64(4, 1)
    a.stx(2, 1, L.SKB_VNET_RSS_QUEUE, 4)
    a.mov64(0, 0).exit()
    return L.prog_load(L.BPF_PROG_TYPE_VNET_HASH, a.code(), "hl_report")


def test_report_out_of_range_reaches_nobody(tap):
    """A report that is no VIRTIO_NET_HASH_REPORT_* value (> 9) is no hash."""
    name, fds, tx = tap
    got = steer(fds, tx, reporting_prog(lambda a: a.and64(3, 1).mod64(3, 7).add64(3, 10)), 20)
    for queue, data in got:
        assert queue == len(data[20:]) % NQUEUES  # the queue still counts
        value, report, pad = struct.unpack_from("<IHH", data, 12)
        assert (value, report, pad) == (0, 0, 0), data[:20].hex()


@pytest.fixture
def tap1():
    """A single-queue tap with vnet headers, up; removed after."""
    name = "hlk" + uuid.uuid4().hex[:6]
    fd = L.tap_queue(name, L.IFF_TAP | L.IFF_NO_PI | L.IFF_VNET_HDR)
    try:
        with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as f:
            f.write("1")
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        yield name, fd
    finally:
        os.close(fd)


def test_program_runs_once_per_packet_with_qdisc_bypass(tap1):
    """AF_PACKET's PACKET_QDISC_BYPASS calls ndo_select_queue() even with one queue,
    then tun_net_xmit(): the program must still run once per packet."""
    name, fd = tap1
    L.ioctl_int(fd, L.TUNSETVNETLE, 1)
    L.ioctl_int(fd, L.TUNSETVNETHDRSZ, 20)
    prog = vnet_hash_prog()
    stats = L.enable_stats()
    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        tx.setsockopt(263, 20, 1)  # SOL_PACKET, PACKET_QDISC_BYPASS
        tx.bind((name, 0))
        L.ioctl_int(fd, L.TUNSETSTEERINGEBPF, prog)
        before = L.prog_run_count(prog)
        for n in LENGTHS:
            tx.send(frame(n))
        got = receive([fd], len(LENGTHS))
        assert len(got) == len(LENGTHS)
        for _, data in got:
            n = len(data) - 20
            assert struct.unpack_from("<IH", data, 12) == (n, n % 9 + 1)
        assert L.prog_run_count(prog) - before == len(LENGTHS)
    finally:
        L.ioctl_int(fd, L.TUNSETSTEERINGEBPF, -1)
        tx.close()
        os.close(stats)
        os.close(prog)


def test_hash_stays_with_the_device_that_computed_it(tap):
    """tun A's program reports a hash, A's qdisc redirects the packet to tun B (no
    program): B's reader must see no hash, not A's."""
    a_name, a_fds, tx = tap
    b_name = "hlk" + uuid.uuid4().hex[:6]
    b_fd = L.tap_queue(b_name, L.IFF_TAP | L.IFF_NO_PI | L.IFF_VNET_HDR)
    try:
        L.ioctl_int(b_fd, L.TUNSETVNETLE, 1)
        L.ioctl_int(b_fd, L.TUNSETVNETHDRSZ, 20)
        subprocess.run(["ip", "link", "set", b_name, "up"], check=True)
        for cmd in (f"qdisc add dev {a_name} root handle 1: prio",
                    f"filter add dev {a_name} parent 1: matchall action mirred egress "
                    f"redirect dev {b_name}"):
            subprocess.run(["tc", *cmd.split()], check=True)
        for fd in a_fds:
            L.ioctl_int(fd, L.TUNSETVNETLE, 1)
            L.ioctl_int(fd, L.TUNSETVNETHDRSZ, 20)
        prog = vnet_hash_prog()
        try:
            L.ioctl_int(a_fds[0], L.TUNSETSTEERINGEBPF, prog)
            for n in LENGTHS:
                tx.send(frame(n))
            got = receive([b_fd], len(LENGTHS))
        finally:
            L.ioctl_int(a_fds[0], L.TUNSETSTEERINGEBPF, -1)
            os.close(prog)
        assert len(got) == len(LENGTHS), "the redirect to the second tap did not happen"
        for _, data in got:
            assert struct.unpack_from("<IHH", data, 12) == (0, 0, 0), data[:20].hex()
    finally:
        os.close(b_fd)


def test_macvtap_reports_no_hash_in_a_20_byte_header():
    """vhost_net's other backend: macvtap computes no hash, so a 20-byte vnet header
    says NONE instead of carrying the reader's stale bytes."""
    import fcntl

    tag = uuid.uuid4().hex[:5]
    low, peer, mvt = f"hlv{tag}a", f"hlv{tag}b", f"hlm{tag}"
    subprocess.run(["ip", "link", "add", low, "type", "veth", "peer", "name", peer], check=True)
    try:
        subprocess.run(["ip", "link", "add", "link", low, "name", mvt, "type", "macvtap",
                        "mode", "bridge"], check=True)
        for dev in (low, peer, mvt):
            with open(f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6", "w") as f:
                f.write("1")
            subprocess.run(["ip", "link", "set", dev, "up"], check=True)
        ifindex = int(open(f"/sys/class/net/{mvt}/ifindex").read())
        mac = bytes.fromhex(open(f"/sys/class/net/{mvt}/address").read().strip().replace(":", ""))
        fd = os.open(f"/dev/tap{ifindex}", os.O_RDWR | os.O_NONBLOCK)
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        try:
            fcntl.ioctl(fd, L.TUNSETIFF, struct.pack("16sH22x", b"", L.IFF_TAP | L.IFF_NO_PI
                                                     | L.IFF_VNET_HDR))
            L.ioctl_int(fd, L.TUNSETVNETLE, 1)
            L.ioctl_int(fd, L.TUNSETVNETHDRSZ, 20)
            tx.bind((peer, 0))
            for n in LENGTHS:
                tx.send(mac + frame(n)[6:])
            got = receive([fd], len(LENGTHS))
        finally:
            tx.close()
            os.close(fd)
        assert len(got) == len(LENGTHS)
        for _, data in got:
            # bytes 0..9 are virtio_net_hdr (veth marks frames DATA_VALID)
            assert data[10:12] == UNWRITTEN * 2  # num_buffers: the reader's
            assert data[12:20] == bytes(8), data[:20].hex()
    finally:
        subprocess.run(["ip", "link", "del", low], check=False)


def test_vnet_fields_take_immediate_stores(tap):
    """BPF_ST (an immediate) to the vnet_* fields is rewritten like BPF_STX."""
    name, fds, tx = tap
    a = L.Asm()
    a.st(4, 1, L.SKB_VNET_HASH_VALUE, 0x1234567)
    a.st(2, 1, L.SKB_VNET_HASH_REPORT, 3)
    a.st(2, 1, L.SKB_VNET_RSS_QUEUE, 1)
    a.mov64(0, 0).exit()
    got = steer(fds, tx, L.prog_load(L.BPF_PROG_TYPE_VNET_HASH, a.code(), "hl_st"), 20)
    for queue, data in got:
        assert queue == 1 and struct.unpack_from("<IHH", data, 12) == (0x1234567, 3, 0)


@pytest.mark.parametrize("field,size", [(L.SKB_VNET_HASH_VALUE, 4), (L.SKB_VNET_HASH_REPORT, 2),
                                        (L.SKB_VNET_RSS_QUEUE, 2)])
def test_vnet_fields_refuse_sign_extending_loads(field, size):
    ok = L.Asm().ldx(size, 2, 1, field).mov64(0, 0).exit()
    os.close(L.prog_load(L.BPF_PROG_TYPE_VNET_HASH, ok.code()))  # the plain load is fine
    sx = L.Asm().ldxsx(size, 2, 1, field).mov64(0, 0).exit()
    with pytest.raises(OSError) as e:
        L.prog_load(L.BPF_PROG_TYPE_VNET_HASH, sx.code())
    assert e.value.errno == errno.EACCES


def test_vnet_hash_programs_need_cap_net_admin():
    """A process with CAP_BPF but without CAP_NET_ADMIN (and CAP_SYS_ADMIN, which implies
    it) may load a socket filter, not a VNET_HASH program."""
    prog = L.Asm().mov64(0, 0).exit().code()
    pid = os.fork()
    if pid == 0:  # the child reports through its exit status
        rc = 9
        try:
            L.drop_capabilities(L.CAP_NET_ADMIN, L.CAP_SYS_ADMIN)
            os.close(L.prog_load(L.BPF_PROG_TYPE_SOCKET_FILTER, prog))
            try:
                os.close(L.prog_load(L.BPF_PROG_TYPE_VNET_HASH, prog))
                rc = 1
            except OSError as e:
                rc = 0 if e.errno == errno.EPERM else 2
        finally:
            os._exit(rc)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, {
        1: "loaded without CAP_NET_ADMIN", 2: "refused, but not with EPERM",
        9: "the child failed before the check"}.get(os.waitstatus_to_exitcode(status))
