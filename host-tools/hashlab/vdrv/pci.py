"""PCI configuration access and resource assignment for a qtest-driven x86 machine.

No firmware ran, so nothing is configured: we enumerate bus 0 through the legacy
configuration mechanism (ports 0xCF8/0xCFC, which q35 has too), size and place the BARs
ourselves and turn on decoding and bus mastering.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..host.qtest import QtestMachine

CONFIG_ADDRESS = 0xCF8
CONFIG_DATA = 0xCFC

PCI_VENDOR_ID = 0x00
PCI_DEVICE_ID = 0x02
PCI_COMMAND = 0x04
PCI_STATUS = 0x06
PCI_REVISION = 0x08
PCI_CLASS = 0x09
PCI_HEADER_TYPE = 0x0E
PCI_BAR0 = 0x10
PCI_CAP_PTR = 0x34
PCI_INTERRUPT_LINE = 0x3C
PCI_INTERRUPT_PIN = 0x3D

PCI_COMMAND_IO = 1 << 0
PCI_COMMAND_MEMORY = 1 << 1
PCI_COMMAND_MASTER = 1 << 2
PCI_COMMAND_INTX_DISABLE = 1 << 10
PCI_STATUS_CAP_LIST = 1 << 4

PCI_CAP_ID_VNDR = 0x09


@dataclass
class Bar:
    index: int
    size: int
    io: bool
    is64: bool = False
    prefetch: bool = False
    addr: int = 0


class PciResourceAllocator:
    """Naturally aligned bump allocation in the I/O space and the 32-bit PCI hole."""

    def __init__(self, mem_base: int = 0xE000_0000, mem_limit: int = 0xFE00_0000,
                 io_base: int = 0xC000, io_limit: int = 0x10000):
        self.mem_next, self.mem_limit = mem_base, mem_limit
        self.io_next, self.io_limit = io_base, io_limit

    @staticmethod
    def _align(v: int, a: int) -> int:
        return (v + a - 1) & ~(a - 1)

    def alloc(self, size: int, io: bool) -> int:
        if io:
            addr = self._align(self.io_next, max(size, 4))
            if addr + size > self.io_limit:
                raise RuntimeError(f"out of PCI I/O space for a {size:#x} BAR")
            self.io_next = addr + size
        else:
            addr = self._align(self.mem_next, max(size, 0x1000))
            if addr + size > self.mem_limit:
                raise RuntimeError(f"out of 32-bit PCI memory for a {size:#x} BAR")
            self.mem_next = addr + size
        return addr


class PciConfig:
    """Configuration space access through CONFIG_ADDRESS/CONFIG_DATA."""

    def __init__(self, qt: QtestMachine):
        self.qt = qt

    @staticmethod
    def _address(bus: int, dev: int, fn: int, reg: int) -> int:
        return 0x8000_0000 | (bus << 16) | (dev << 11) | (fn << 8) | (reg & 0xFC)

    def read(self, bdf: tuple[int, int, int], reg: int, size: int) -> int:
        self.qt.outl(CONFIG_ADDRESS, self._address(*bdf, reg))
        port = CONFIG_DATA + (reg & 3)
        if size == 1:
            return self.qt.inb(port)
        if size == 2:
            return self.qt.inw(port)
        return self.qt.inl(port)

    def write(self, bdf: tuple[int, int, int], reg: int, size: int, value: int) -> None:
        self.qt.outl(CONFIG_ADDRESS, self._address(*bdf, reg))
        port = CONFIG_DATA + (reg & 3)
        if size == 1:
            self.qt.outb(port, value)
        elif size == 2:
            self.qt.outw(port, value)
        else:
            self.qt.outl(port, value)


@dataclass
class PciDevice:
    cfg: PciConfig
    bus: int
    dev: int
    fn: int
    vendor: int
    device: int
    class_code: int
    header_type: int
    bars: dict[int, Bar] = field(default_factory=dict)

    @property
    def bdf(self) -> tuple[int, int, int]:
        return (self.bus, self.dev, self.fn)

    def __str__(self) -> str:
        return f"{self.bus:02x}:{self.dev:02x}.{self.fn} {self.vendor:04x}:{self.device:04x}"

    def read8(self, reg: int) -> int:
        return self.cfg.read(self.bdf, reg, 1)

    def read16(self, reg: int) -> int:
        return self.cfg.read(self.bdf, reg, 2)

    def read32(self, reg: int) -> int:
        return self.cfg.read(self.bdf, reg, 4)

    def write16(self, reg: int, v: int) -> None:
        self.cfg.write(self.bdf, reg, 2, v)

    def write32(self, reg: int, v: int) -> None:
        self.cfg.write(self.bdf, reg, 4, v)

    def capabilities(self) -> list[tuple[int, int]]:
        """``(offset, cap_id)`` of every capability in the list, in list order."""
        if not self.read16(PCI_STATUS) & PCI_STATUS_CAP_LIST:
            return []
        out: list[tuple[int, int]] = []
        ptr = self.read8(PCI_CAP_PTR) & 0xFC
        while ptr and len(out) < 48:
            out.append((ptr, self.read8(ptr)))
            ptr = self.read8(ptr + 1) & 0xFC
        return out

    def size_bars(self) -> dict[int, Bar]:
        """Probe the six BARs (decoding must be off); fills and returns ``bars``."""
        self.bars = {}
        i = 0
        while i < 6:
            reg = PCI_BAR0 + 4 * i
            orig = self.read32(reg)
            self.write32(reg, 0xFFFF_FFFF)
            probe = self.read32(reg)
            self.write32(reg, orig)
            if probe in (0, 0xFFFF_FFFF) and not orig:
                i += 1
                continue
            if probe & 1:  # I/O
                mask = probe & 0xFFFF_FFFC
                size = (~mask & 0xFFFF) + 1 if mask else 0
                if size:
                    self.bars[i] = Bar(i, size, io=True)
                i += 1
                continue
            kind = (probe >> 1) & 3
            prefetch = bool(probe & 8)
            mask = probe & 0xFFFF_FFF0
            if kind == 2:  # 64-bit
                orig_hi = self.read32(reg + 4)
                self.write32(reg + 4, 0xFFFF_FFFF)
                hi = self.read32(reg + 4)
                self.write32(reg + 4, orig_hi)
                full = (hi << 32) | mask
                size = ((~full) & 0xFFFF_FFFF_FFFF_FFFF) + 1 if full else 0
                if size:
                    self.bars[i] = Bar(i, size, io=False, is64=True, prefetch=prefetch)
                i += 2
                continue
            size = ((~mask) & 0xFFFF_FFFF) + 1 if mask else 0
            if size:
                self.bars[i] = Bar(i, size, io=False, prefetch=prefetch)
            i += 1
        return self.bars

    def assign_bars(self, alloc: PciResourceAllocator) -> dict[int, Bar]:
        """Size every BAR and place it (64-bit BARs too, below 4 GiB); decoding stays off."""
        cmd = self.read16(PCI_COMMAND)
        self.write16(PCI_COMMAND, cmd & ~(PCI_COMMAND_IO | PCI_COMMAND_MEMORY))
        for bar in self.size_bars().values():
            bar.addr = alloc.alloc(bar.size, bar.io)
            reg = PCI_BAR0 + 4 * bar.index
            if bar.io:
                self.write32(reg, bar.addr | 1)
            else:
                self.write32(reg, bar.addr & 0xFFFF_FFF0)
                if bar.is64:
                    self.write32(reg + 4, bar.addr >> 32)
        return self.bars

    def enable(self, io: bool = True, memory: bool = True, master: bool = True,
               intx: bool = True) -> None:
        cmd = self.read16(PCI_COMMAND)
        for bit, on in ((PCI_COMMAND_IO, io), (PCI_COMMAND_MEMORY, memory),
                        (PCI_COMMAND_MASTER, master), (PCI_COMMAND_INTX_DISABLE, not intx)):
            cmd = (cmd | bit) if on else (cmd & ~bit)
        self.write16(PCI_COMMAND, cmd)


def enumerate_bus(qt: QtestMachine, bus: int = 0) -> list[PciDevice]:
    """Every function present on ``bus`` (no bridges are followed)."""
    cfg = PciConfig(qt)
    found: list[PciDevice] = []
    for dev in range(32):
        for fn in range(8):
            ids = cfg.read((bus, dev, fn), PCI_VENDOR_ID, 4)
            vendor = ids & 0xFFFF
            if vendor == 0xFFFF:
                if fn == 0:
                    break
                continue
            header = cfg.read((bus, dev, fn), PCI_HEADER_TYPE, 1)
            cls = cfg.read((bus, dev, fn), PCI_REVISION, 4) >> 8
            found.append(PciDevice(cfg, bus, dev, fn, vendor, ids >> 16, cls, header & 0x7F))
            if fn == 0 and not header & 0x80:
                break
    return found
