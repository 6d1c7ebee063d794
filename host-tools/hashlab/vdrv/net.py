"""A virtio-net driver in Python: negotiation, RSS/hash configuration, receive.

Enough of a driver to see exactly what the device writes for every received frame:
the raw 20-byte ``virtio_net_hdr_v1_hash`` (``hash_value``, ``hash_report`` and the
rest) and the frame, per receive queue.  Transmit is not implemented.
"""

from __future__ import annotations

import enum
import struct
import time
from dataclasses import dataclass

from ..host.qtest import QtestMachine
from ..oracle.tunnel import (
    VIRTIO_NET_CTRL_HASH_TUNNEL,
    VIRTIO_NET_CTRL_HASH_TUNNEL_SET,
    VIRTIO_NET_F_HASH_TUNNEL,
)
from .pci import PciResourceAllocator, enumerate_bus
from .virtio import (
    ACKNOWLEDGE,
    DRIVER,
    DRIVER_OK,
    FAILED,
    FEATURES_OK,
    VIRTIO_F_VERSION_1,
    GuestMemory,
    SplitQueue,
    VirtioError,
    VirtioPciModern,
    find_virtio_devices,
)

# Feature bits (virtio 1.3 §5.1.3).
VIRTIO_NET_F_CSUM = 0
VIRTIO_NET_F_GUEST_CSUM = 1
VIRTIO_NET_F_MAC = 5
VIRTIO_NET_F_MRG_RXBUF = 15
VIRTIO_NET_F_STATUS = 16
VIRTIO_NET_F_CTRL_VQ = 17
VIRTIO_NET_F_CTRL_RX = 18
VIRTIO_NET_F_MQ = 22
VIRTIO_NET_F_HASH_REPORT = 57
VIRTIO_NET_F_RSS = 60

FEATURE_NAMES = {
    VIRTIO_NET_F_CSUM: "CSUM", VIRTIO_NET_F_GUEST_CSUM: "GUEST_CSUM", VIRTIO_NET_F_MAC: "MAC",
    VIRTIO_NET_F_MRG_RXBUF: "MRG_RXBUF", VIRTIO_NET_F_STATUS: "STATUS",
    VIRTIO_NET_F_CTRL_VQ: "CTRL_VQ", VIRTIO_NET_F_CTRL_RX: "CTRL_RX", VIRTIO_NET_F_MQ: "MQ",
    VIRTIO_F_VERSION_1: "VERSION_1", VIRTIO_NET_F_HASH_REPORT: "HASH_REPORT",
    VIRTIO_NET_F_RSS: "RSS", VIRTIO_NET_F_HASH_TUNNEL: "HASH_TUNNEL",
}

# Control queue.
VIRTIO_NET_OK = 0
VIRTIO_NET_ERR = 1
VIRTIO_NET_CTRL_MQ = 4
VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET = 0
VIRTIO_NET_CTRL_MQ_RSS_CONFIG = 1
VIRTIO_NET_CTRL_MQ_HASH_CONFIG = 2

HDR_V1_HASH = struct.Struct("<BBHHHHHIHH")  # 20 bytes
HDR_V1_HASH_LEN = HDR_V1_HASH.size
HDR_V1_LEN = 12
NET_CONFIG = struct.Struct("<6sHHHIBBHI")  # through supported_hash_types: 24 bytes
NET_CONFIG_TUNNEL = struct.Struct("<I")  # supported_tunnel_types, with HASH_TUNNEL

RX_SENTINEL = 0xA5  # header bytes the device does not write keep this value


def bit(n: int) -> int:
    return 1 << n


def feature_names(feats: int) -> str:
    return ",".join(FEATURE_NAMES.get(b, str(b)) for b in range(64) if feats & (1 << b))


@dataclass(frozen=True)
class NetConfig:
    mac: bytes
    status: int
    max_virtqueue_pairs: int
    mtu: int
    speed: int
    duplex: int
    rss_max_key_size: int
    rss_max_indirection_table_length: int
    supported_hash_types: int
    supported_tunnel_types: int = 0  # only with VIRTIO_NET_F_HASH_TUNNEL


@dataclass(frozen=True)
class RxFrame:
    """One received frame with the device-written header, as the guest saw it."""

    queue: int  # receive queue number (0-based pair index)
    flags: int
    gso_type: int
    hdr_len: int
    gso_size: int
    csum_start: int
    csum_offset: int
    num_buffers: int
    hash_value: int
    hash_report: int
    padding: int
    data: bytes
    raw_header: bytes

    @classmethod
    def parse(cls, queue: int, buf: bytes, hdr_len: int) -> "RxFrame":
        hdr = buf[:hdr_len]
        padded = hdr + bytes(HDR_V1_HASH_LEN - len(hdr)) if len(hdr) < HDR_V1_HASH_LEN else hdr
        f = HDR_V1_HASH.unpack(padded[:HDR_V1_HASH_LEN])
        if hdr_len < HDR_V1_HASH_LEN:  # no hash fields at all
            f = f[:7] + (0, 0, 0)
        return cls(queue, *f, data=bytes(buf[hdr_len:]), raw_header=bytes(hdr))


class Ack(enum.IntEnum):
    OK = VIRTIO_NET_OK
    ERR = VIRTIO_NET_ERR


def rss_config_payload(hash_types: int, table: list[int], unclassified_queue: int,
                       max_tx_vq: int, key: bytes, *, mask: int | None = None) -> bytes:
    """``struct virtio_net_rss_config``; ``mask`` overrides ``len(table) - 1`` (for bad configs)."""
    if mask is None:
        mask = len(table) - 1
    return (struct.pack("<IHH", hash_types, mask, unclassified_queue)
            + struct.pack(f"<{len(table)}H", *table)
            + struct.pack("<HB", max_tx_vq, len(key)) + bytes(key))


def hash_config_payload(hash_types: int, key: bytes) -> bytes:
    """``struct virtio_net_hash_config``: types, 4 reserved le16, key length, key."""
    return struct.pack("<I4HB", hash_types, 0, 0, 0, 0, len(key)) + bytes(key)


class VirtioNet:
    """A virtio-net function on bus 0, brought up by :meth:`probe` / :meth:`init`.

    ``want`` is the feature set asked for (intersected with the device's); ``require``
    the features without which :meth:`init` fails.  Queue pair *i* is receive queue
    ``2i`` and transmit queue ``2i+1``; the control queue comes last.
    """

    DEFAULT_WANT = (bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_CTRL_VQ) | bit(VIRTIO_NET_F_MQ)
                    | bit(VIRTIO_NET_F_RSS) | bit(VIRTIO_NET_F_HASH_REPORT) | bit(VIRTIO_NET_F_MAC)
                    | bit(VIRTIO_NET_F_HASH_TUNNEL))

    def __init__(self, qt: QtestMachine, *, want: int | None = None, mrg_rxbuf: bool = False,
                 require: int = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_CTRL_VQ),
                 rx_queue_size: int = 256, rx_buf_size: int = 2048, mem: GuestMemory | None = None,
                 index: int = 0):
        self.qt = qt
        self.want = (self.DEFAULT_WANT if want is None else want) | (bit(VIRTIO_NET_F_MRG_RXBUF) if mrg_rxbuf else 0)
        self.require = require
        self.rx_queue_size = rx_queue_size
        self.rx_buf_size = rx_buf_size
        self.mem = mem or GuestMemory(qt)
        self.index = index
        self.pci = None
        self.transport: VirtioPciModern | None = None
        self.device_features = 0
        self.features = 0
        self.config: NetConfig | None = None
        self.rxqs: list[SplitQueue] = []
        self.txqs: list[SplitQueue] = []
        self.ctrlq: SplitQueue | None = None
        self.hdr_len = HDR_V1_LEN
        self._rx_bufs: dict[tuple[int, int], int] = {}  # (queue, head) -> buffer address
        self._ctrl_buf = 0

    # ------------------------------------------------------------------ bring-up

    def probe(self, alloc: PciResourceAllocator | None = None) -> "VirtioNet":
        devs = find_virtio_devices(enumerate_bus(self.qt, 0), 1)
        if len(devs) <= self.index:
            raise VirtioError(f"no virtio-net function #{self.index} on PCI bus 0",
                              self.qt.cmdline, self.qt.log_path)
        self.pci = devs[self.index]
        self.pci.assign_bars(alloc or PciResourceAllocator())
        self.pci.enable(io=True, memory=True, master=True)
        self.transport = VirtioPciModern(self.qt, self.pci)
        return self

    def has(self, feature_bit: int) -> bool:
        return bool(self.features & bit(feature_bit))

    def init(self) -> "VirtioNet":
        """Reset, negotiate, read the config, set up every queue, DRIVER_OK, post rx buffers."""
        t = self.transport
        if t is None:
            self.probe()
            t = self.transport
        t.reset()
        t.add_status(ACKNOWLEDGE)
        t.add_status(DRIVER)
        self.device_features = t.device_features()
        feats = self.device_features & self.want
        missing = self.require & ~feats
        if missing:
            t.add_status(FAILED)
            raise VirtioError(f"device lacks required features {feature_names(missing)} "
                              f"(offers {feature_names(self.device_features)})",
                              self.qt.cmdline, self.qt.log_path)
        # Dependencies the spec states: MQ, RSS and HASH_REPORT need CTRL_VQ, HASH_TUNNEL
        # also RSS or HASH_REPORT.
        if not feats & bit(VIRTIO_NET_F_CTRL_VQ):
            feats &= ~(bit(VIRTIO_NET_F_MQ) | bit(VIRTIO_NET_F_RSS) | bit(VIRTIO_NET_F_HASH_REPORT))
        if not feats & (bit(VIRTIO_NET_F_RSS) | bit(VIRTIO_NET_F_HASH_REPORT)):
            feats &= ~bit(VIRTIO_NET_F_HASH_TUNNEL)
        t.set_driver_features(feats)
        t.add_status(FEATURES_OK)
        if not t.status() & FEATURES_OK:
            t.add_status(FAILED)
            raise VirtioError(f"device refused features {feature_names(feats)} (FEATURES_OK not set)",
                              self.qt.cmdline, self.qt.log_path)
        self.features = feats
        self.hdr_len = HDR_V1_HASH_LEN if self.has(VIRTIO_NET_F_HASH_REPORT) else HDR_V1_LEN
        self.config = self.read_config()
        pairs = self.config.max_virtqueue_pairs if self.has(VIRTIO_NET_F_MQ) else 1
        nq = t.num_queues()
        self.rxqs, self.txqs = [], []
        for i in range(pairs):
            self.rxqs.append(t.setup_queue(2 * i, self.rx_queue_size, self.mem))
            self.txqs.append(t.setup_queue(2 * i + 1, 16, self.mem))
        if self.has(VIRTIO_NET_F_CTRL_VQ):
            ctrl_index = 2 * pairs if self.has(VIRTIO_NET_F_MQ) else 2
            if ctrl_index >= nq:
                raise VirtioError(f"control queue {ctrl_index} beyond num_queues {nq}",
                                  self.qt.cmdline, self.qt.log_path)
            self.ctrlq = t.setup_queue(ctrl_index, 64, self.mem)
            self._ctrl_buf = self.mem.calloc(4096, 16)
        t.add_status(DRIVER_OK)
        for q in range(pairs):
            self._post_rx(q, self.rxqs[q].size)
        return self

    def read_config(self) -> NetConfig:
        tunnel = self.has(VIRTIO_NET_F_HASH_TUNNEL)
        raw = self.transport.read_device_config(NET_CONFIG.size
                                                + (NET_CONFIG_TUNNEL.size if tunnel else 0))
        return NetConfig(*NET_CONFIG.unpack_from(raw),
                         *(NET_CONFIG_TUNNEL.unpack_from(raw, NET_CONFIG.size) if tunnel else ()))

    # ------------------------------------------------------------------ control queue

    def ctrl(self, cls: int, cmd: int, payload: bytes = b"", timeout: float = 10.0) -> int:
        """Send one control command; the ack byte the device wrote (``Ack``)."""
        if self.ctrlq is None:
            raise VirtioError("no control queue negotiated", self.qt.cmdline, self.qt.log_path)
        out = struct.pack("<BB", cls, cmd) + bytes(payload)
        if len(out) + 1 > 4096:
            raise ValueError("control command too long")
        ack_addr = self._ctrl_buf + 4095
        self.qt.write(self._ctrl_buf, out)
        self.qt.writeb(ack_addr, 0xFF)
        (head,) = self.ctrlq.add_chains([[(self._ctrl_buf, len(out), False), (ack_addr, 1, True)]])
        used = self.ctrlq.wait_used(timeout)
        if not used:
            raise VirtioError(f"no answer on the control queue within {timeout} s "
                              f"(class {cls}, cmd {cmd})", self.qt.cmdline, self.qt.log_path)
        if used[0][0] != head:
            raise VirtioError("control queue answered another command", self.qt.cmdline, self.qt.log_path)
        ack = self.qt.readb(ack_addr)
        return Ack(ack) if ack in (0, 1) else ack

    def rss_config(self, hash_types: int, table: list[int], key: bytes, *,
                   unclassified_queue: int = 0, max_tx_vq: int | None = None,
                   mask: int | None = None) -> int:
        """``VIRTIO_NET_CTRL_MQ_RSS_CONFIG``; ``max_tx_vq`` defaults to every pair."""
        if max_tx_vq is None:
            max_tx_vq = len(self.rxqs)
        return self.ctrl(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_RSS_CONFIG,
                         rss_config_payload(hash_types, table, unclassified_queue, max_tx_vq, key,
                                            mask=mask))

    def hash_config(self, hash_types: int, key: bytes) -> int:
        """``VIRTIO_NET_CTRL_MQ_HASH_CONFIG`` (hash reports without RSS steering)."""
        return self.ctrl(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_HASH_CONFIG,
                         hash_config_payload(hash_types, key))

    def hash_tunnel_set(self, tunnel_types: int) -> int:
        """``VIRTIO_NET_CTRL_HASH_TUNNEL_SET``: hash these encapsulations' inner header."""
        return self.ctrl(VIRTIO_NET_CTRL_HASH_TUNNEL, VIRTIO_NET_CTRL_HASH_TUNNEL_SET,
                         struct.pack("<I", tunnel_types))

    def vq_pairs_set(self, pairs: int) -> int:
        return self.ctrl(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, struct.pack("<H", pairs))

    # ------------------------------------------------------------------ receive

    def _post_rx(self, q: int, count: int, addrs: list[int] | None = None) -> None:
        """Make ``count`` receive buffers available on queue ``q`` (new or recycled).

        Every buffer's header area is filled with ``RX_SENTINEL`` first, so that header
        bytes the device leaves alone are recognisable.
        """
        vq = self.rxqs[q]
        if addrs is None:
            base = self.mem.alloc(count * self.rx_buf_size, 64)
            addrs = [base + k * self.rx_buf_size for k in range(count)]
            # one write for all the sentinels of a fresh, contiguous block
            block = (bytes([RX_SENTINEL]) * self.hdr_len + bytes(self.rx_buf_size - self.hdr_len)) * count
            self.qt.write(base, block)
        else:
            for a in addrs:
                self.qt.write(a, bytes([RX_SENTINEL]) * self.hdr_len)
        heads = vq.add_chains([[(a, self.rx_buf_size, True)] for a in addrs])
        for h, a in zip(heads, addrs):
            self._rx_bufs[(q, h)] = a

    def poll_rx(self, queues: list[int] | None = None, refill: bool = True) -> list[RxFrame]:
        """Every frame completed since the last call (no waiting), buffers recycled."""
        out: list[RxFrame] = []
        recycle: dict[int, list[int]] = {}
        for q in (range(len(self.rxqs)) if queues is None else queues):
            vq = self.rxqs[q]
            for head, length in vq.get_used():
                addr = self._rx_bufs.pop((q, head))
                buf = self.qt.read(addr, length) if length else b""
                out.append(RxFrame.parse(q, buf, self.hdr_len))
                recycle.setdefault(q, []).append(addr)
        if refill:
            for q, addrs in recycle.items():
                self._post_rx(q, len(addrs), addrs)
            # A frame the device queued for a full queue is retried when *its* source
            # queue is notified: kick every receive queue after a refill.
            if recycle:
                for vq in self.rxqs:
                    vq.kick()
        return out

    def receive(self, count: int, timeout: float = 10.0, idle: float | None = None) -> list[RxFrame]:
        """Poll until ``count`` frames arrived, or ``timeout`` s passed, or nothing came
        for ``idle`` s after the first frame; returns what arrived."""
        out: list[RxFrame] = []
        start = last = time.monotonic()
        while len(out) < count:
            got = self.poll_rx()
            now = time.monotonic()
            if got:
                out.extend(got)
                last = now
                continue
            if now - start > timeout or (idle is not None and out and now - last > idle):
                break
            time.sleep(0.001)
        return out
