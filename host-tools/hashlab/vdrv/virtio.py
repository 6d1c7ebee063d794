"""virtio 1.x over PCI ("modern" transport) and split virtqueues, driven through qtest.

Guest memory is plain RAM we hand out with a bump allocator; the device reads and writes
it by DMA, we read and write it with qtest ``b64read``/``b64write``.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from ..host.qtest import QtestError, QtestMachine
from .pci import PCI_CAP_ID_VNDR, PciDevice

# Device status bits.
ACKNOWLEDGE = 1
DRIVER = 2
DRIVER_OK = 4
FEATURES_OK = 8
DEVICE_NEEDS_RESET = 64
FAILED = 128

VIRTIO_F_VERSION_1 = 32

# virtio_pci_cap.cfg_type
CAP_COMMON = 1
CAP_NOTIFY = 2
CAP_ISR = 3
CAP_DEVICE = 4
CAP_PCI_CFG = 5

# struct virtio_pci_common_cfg offsets
CC_DEVICE_FEATURE_SELECT = 0
CC_DEVICE_FEATURE = 4
CC_DRIVER_FEATURE_SELECT = 8
CC_DRIVER_FEATURE = 12
CC_MSIX_CONFIG = 16
CC_NUM_QUEUES = 18
CC_DEVICE_STATUS = 20
CC_CONFIG_GENERATION = 21
CC_QUEUE_SELECT = 22
CC_QUEUE_SIZE = 24
CC_QUEUE_MSIX_VECTOR = 26
CC_QUEUE_ENABLE = 28
CC_QUEUE_NOTIFY_OFF = 30
CC_QUEUE_DESC = 32
CC_QUEUE_DRIVER = 40
CC_QUEUE_DEVICE = 48

VIRTIO_MSI_NO_VECTOR = 0xFFFF

VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2

VIRTIO_VENDOR = 0x1AF4


class VirtioError(QtestError):
    """The device refused something (FEATURES_OK, a queue, ...)."""


class GuestMemory:
    """A bump allocator over guest RAM (nothing is ever freed)."""

    def __init__(self, qt: QtestMachine, base: int = 0x10_0000, limit: int = 0x0800_0000):
        self.qt = qt
        self.next = base
        self.limit = limit

    def alloc(self, size: int, align: int = 16) -> int:
        addr = (self.next + align - 1) & ~(align - 1)
        if addr + size > self.limit:
            raise VirtioError(f"guest memory exhausted allocating {size:#x} bytes",
                              self.qt.cmdline, self.qt.log_path)
        self.next = addr + size
        return addr

    def calloc(self, size: int, align: int = 16) -> int:
        addr = self.alloc(size, align)
        self.qt.memset(addr, size, 0)
        return addr


@dataclass
class VirtioCap:
    cfg_type: int
    bar: int
    offset: int
    length: int
    cap_offset: int
    notify_off_multiplier: int = 0


class SplitQueue:
    """A split virtqueue: descriptor table, available ring, used ring in guest RAM."""

    def __init__(self, transport: "VirtioPciModern", index: int, size: int, mem: GuestMemory):
        self.t = transport
        self.qt = transport.qt
        self.index = index
        self.size = size
        self.desc = mem.calloc(16 * size, 16)
        self.avail = mem.calloc(6 + 2 * size, 2)
        self.used = mem.calloc(6 + 8 * size, 4)
        self.free = list(range(size))
        self.chains: dict[int, list[int]] = {}  # head -> descriptor ids
        self.avail_idx = 0
        self.last_used = 0
        self.notify_addr = 0

    # Descriptor chains ------------------------------------------------------------

    def add_chains(self, chains: list[list[tuple[int, int, bool]]], kick: bool = True) -> list[int]:
        """Make chains of ``(addr, len, device_writable)`` buffers available; their heads.

        Descriptors, ring entries and the new index are written with as few qtest
        commands as possible (the index last).
        """
        need = sum(len(c) for c in chains)
        if need > len(self.free):
            raise VirtioError(f"virtqueue {self.index}: {need} descriptors wanted, "
                              f"{len(self.free)} free", self.qt.cmdline, self.qt.log_path)
        heads: list[int] = []
        desc_writes: dict[int, bytes] = {}
        for chain in chains:
            ids = [self.free.pop(0) for _ in chain]
            for k, (addr, length, writable) in enumerate(chain):
                flags = (VIRTQ_DESC_F_WRITE if writable else 0)
                nxt = 0
                if k + 1 < len(chain):
                    flags |= VIRTQ_DESC_F_NEXT
                    nxt = ids[k + 1]
                desc_writes[ids[k]] = struct.pack("<QIHH", addr, length, flags, nxt)
            self.chains[ids[0]] = ids
            heads.append(ids[0])
        self._write_runs(self.desc, 16, desc_writes)
        ring: dict[int, bytes] = {}
        for n, head in enumerate(heads):
            ring[(self.avail_idx + n) % self.size] = struct.pack("<H", head)
        self._write_runs(self.avail + 4, 2, ring)
        self.avail_idx = (self.avail_idx + len(heads)) & 0xFFFF
        self.qt.writew(self.avail + 2, self.avail_idx)
        if kick:
            self.kick()
        return heads

    def _write_runs(self, base: int, stride: int, items: dict[int, bytes]) -> None:
        """Write ``items`` (slot -> bytes) with one command per run of consecutive slots."""
        slots = sorted(items)
        i = 0
        while i < len(slots):
            j = i
            while j + 1 < len(slots) and slots[j + 1] == slots[j] + 1:
                j += 1
            self.qt.write(base + stride * slots[i], b"".join(items[s] for s in slots[i:j + 1]))
            i = j + 1

    def kick(self) -> None:
        self.t.notify(self)

    def used_idx(self) -> int:
        return self.qt.readw(self.used + 2)

    def pending(self) -> int:
        return (self.used_idx() - self.last_used) & 0xFFFF

    def get_used(self) -> list[tuple[int, int]]:
        """New used elements ``(head, written_len)``; their descriptors are freed."""
        idx = self.used_idx()
        n = (idx - self.last_used) & 0xFFFF
        if not n:
            return []
        start = self.last_used % self.size
        first = min(n, self.size - start)
        raw = self.qt.read(self.used + 4 + 8 * start, 8 * first)
        if n > first:
            raw += self.qt.read(self.used + 4, 8 * (n - first))
        out = []
        for k in range(n):
            head, length = struct.unpack_from("<II", raw, 8 * k)
            ids = self.chains.pop(head, None)
            if ids is None:
                raise VirtioError(f"virtqueue {self.index}: device used unknown head {head}",
                                  self.qt.cmdline, self.qt.log_path)
            self.free.extend(ids)
            out.append((head, length))
        self.last_used = idx
        return out

    def wait_used(self, timeout: float = 5.0) -> list[tuple[int, int]]:
        """Poll the used ring until something arrives (``[]`` after ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.get_used()
            if got or time.monotonic() > deadline:
                return got
            time.sleep(0.0005)


class VirtioPciModern:
    """The virtio 1.x PCI transport of one device."""

    def __init__(self, qt: QtestMachine, pci: PciDevice):
        self.qt = qt
        self.pci = pci
        self.caps: dict[int, VirtioCap] = {}
        for off, cap_id in pci.capabilities():
            if cap_id != PCI_CAP_ID_VNDR:
                continue
            cfg_type = pci.read8(off + 3)
            cap = VirtioCap(cfg_type, pci.read8(off + 4), pci.read32(off + 8),
                            pci.read32(off + 12), off)
            if cfg_type == CAP_NOTIFY:
                cap.notify_off_multiplier = pci.read32(off + 16)
            self.caps.setdefault(cfg_type, cap)  # the first of each type is preferred
        missing = [n for t, n in ((CAP_COMMON, "common"), (CAP_NOTIFY, "notify"), (CAP_ISR, "ISR"),
                                  (CAP_DEVICE, "device")) if t not in self.caps]
        if missing:
            raise VirtioError(f"{pci}: no virtio {', '.join(missing)} capability (not a modern "
                              "virtio device?)", qt.cmdline, qt.log_path)
        self.common = self._addr(CAP_COMMON)
        self.notify_base = self._addr(CAP_NOTIFY)
        self.isr = self._addr(CAP_ISR)
        self.device_cfg = self._addr(CAP_DEVICE)
        self.notify_mult = self.caps[CAP_NOTIFY].notify_off_multiplier
        self.queues: dict[int, SplitQueue] = {}

    def _addr(self, cfg_type: int) -> int:
        cap = self.caps[cfg_type]
        bar = self.pci.bars.get(cap.bar)
        if bar is None or bar.io:
            raise VirtioError(f"{self.pci}: capability {cfg_type} points at BAR {cap.bar}, "
                              "which is not an assigned memory BAR", self.qt.cmdline, self.qt.log_path)
        return bar.addr + cap.offset

    # Common configuration ----------------------------------------------------------

    def status(self) -> int:
        return self.qt.readb(self.common + CC_DEVICE_STATUS)

    def set_status(self, value: int) -> None:
        self.qt.writeb(self.common + CC_DEVICE_STATUS, value)

    def add_status(self, bits: int) -> None:
        self.set_status(self.status() | bits)

    def reset(self, timeout: float = 5.0) -> None:
        self.set_status(0)
        deadline = time.monotonic() + timeout
        while self.status() != 0:
            if time.monotonic() > deadline:
                raise VirtioError(f"{self.pci}: device did not reset", self.qt.cmdline, self.qt.log_path)
            time.sleep(0.001)
        self.queues.clear()

    def device_features(self) -> int:
        feats = 0
        for sel in (0, 1):
            self.qt.writel(self.common + CC_DEVICE_FEATURE_SELECT, sel)
            feats |= self.qt.readl(self.common + CC_DEVICE_FEATURE) << (32 * sel)
        return feats

    def set_driver_features(self, feats: int) -> None:
        for sel in (0, 1):
            self.qt.writel(self.common + CC_DRIVER_FEATURE_SELECT, sel)
            self.qt.writel(self.common + CC_DRIVER_FEATURE, (feats >> (32 * sel)) & 0xFFFF_FFFF)

    def num_queues(self) -> int:
        return self.qt.readw(self.common + CC_NUM_QUEUES)

    def config_generation(self) -> int:
        return self.qt.readb(self.common + CC_CONFIG_GENERATION)

    def read_device_config(self, length: int) -> bytes:
        """The device-specific configuration, read consistently (config_generation)."""
        for _ in range(10):
            gen = self.config_generation()
            # byte-wise reads: the device config region accepts any access size
            data = self.qt.read(self.device_cfg, length)
            if self.config_generation() == gen:
                return data
        raise VirtioError(f"{self.pci}: device configuration keeps changing", self.qt.cmdline,
                          self.qt.log_path)

    def setup_queue(self, index: int, size: int | None, mem: GuestMemory) -> SplitQueue:
        c = self.common
        self.qt.writew(c + CC_QUEUE_SELECT, index)
        max_size = self.qt.readw(c + CC_QUEUE_SIZE)
        if max_size == 0:
            raise VirtioError(f"{self.pci}: virtqueue {index} does not exist", self.qt.cmdline,
                              self.qt.log_path)
        size = min(size or max_size, max_size)
        if size & (size - 1):
            raise VirtioError(f"virtqueue size {size} is not a power of two", self.qt.cmdline,
                              self.qt.log_path)
        q = SplitQueue(self, index, size, mem)
        self.qt.writew(c + CC_QUEUE_SIZE, size)
        self.qt.writew(c + CC_QUEUE_MSIX_VECTOR, VIRTIO_MSI_NO_VECTOR)
        for off, addr in ((CC_QUEUE_DESC, q.desc), (CC_QUEUE_DRIVER, q.avail), (CC_QUEUE_DEVICE, q.used)):
            self.qt.writel(c + off, addr & 0xFFFF_FFFF)
            self.qt.writel(c + off + 4, addr >> 32)
        notify_off = self.qt.readw(c + CC_QUEUE_NOTIFY_OFF)
        q.notify_addr = self.notify_base + notify_off * self.notify_mult
        self.qt.writew(c + CC_QUEUE_ENABLE, 1)
        self.queues[index] = q
        return q

    def notify(self, q: SplitQueue) -> None:
        self.qt.writew(q.notify_addr, q.index)


def find_virtio_devices(devices: list[PciDevice], device_type: int) -> list[PciDevice]:
    """Virtio functions of ``device_type`` (1 = net): modern id 0x1040+type, or transitional."""
    transitional = {1: 0x1000, 2: 0x1001, 3: 0x1003}.get(device_type)
    return [d for d in devices if d.vendor == VIRTIO_VENDOR
            and (d.device == 0x1040 + device_type or d.device == transitional)]
