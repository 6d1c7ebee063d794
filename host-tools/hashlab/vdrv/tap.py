"""Host-side frame injection: a (multi-queue) tap made with ioctls, and UDP for ``-netdev dgram``.

``TapDevice`` creates a persistent tap (``IFF_TAP | IFF_NO_PI | IFF_VNET_HDR``, plus
``IFF_MULTI_QUEUE`` for more than one queue), turns IPv6 off on it (so the host sends no
router solicitations or MLD reports of its own into the guest), brings it up, and deletes
it on exit, even after a failure.  QEMU attaches to it with ``-netdev tap,ifname=...``.
``send()`` writes frames into it from the host side through an ``AF_PACKET`` socket:
they come out of the tap's queues into QEMU as received frames.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import socket
import struct
import subprocess
from pathlib import Path

from ..errors import Exit, HashlabError

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


class TapError(HashlabError):
    exit_status = Exit.NETDEV


def _ifreq(name: str, flags: int) -> bytes:
    return struct.pack("16sH22x", name.encode(), flags)


class TapDevice:
    """A persistent tap for QEMU to attach to; a context manager that always removes it."""

    def __init__(self, queues: int = 1, name: str | None = None):
        if queues < 1:
            raise ValueError("a tap needs at least one queue")
        self.queues = queues
        self.name = name or f"hlvq{secrets.token_hex(4)}"
        if len(self.name) > 15:
            raise ValueError(f"interface name {self.name!r} is longer than 15 characters")
        self.flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (IFF_MULTI_QUEUE if queues > 1 else 0)
        self.created = False
        self._sock: socket.socket | None = None

    def _tun_ioctl_persist(self, persist: bool) -> None:
        fd = os.open("/dev/net/tun", os.O_RDWR)
        try:
            fcntl.ioctl(fd, TUNSETIFF, _ifreq(self.name, self.flags))
            fcntl.ioctl(fd, TUNSETPERSIST, 1 if persist else 0)
        finally:
            os.close(fd)

    def create(self) -> "TapDevice":
        try:
            self._tun_ioctl_persist(True)
        except OSError as e:
            raise TapError(f"cannot create tap {self.name} ({self.queues} queue(s)): {e.strerror} "
                           "(needs root or CAP_NET_ADMIN and /dev/net/tun)") from None
        self.created = True
        try:
            sysctl = Path(f"/proc/sys/net/ipv6/conf/{self.name}/disable_ipv6")
            if sysctl.exists():
                sysctl.write_text("1\n")
            self._set_up(True)
        except OSError as e:
            self.remove()
            raise TapError(f"cannot bring tap {self.name} up: {e.strerror or e}") from None
        return self

    def _set_up(self, up: bool) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            ifr = fcntl.ioctl(s, SIOCGIFFLAGS, _ifreq(self.name, 0))
            flags = struct.unpack_from("16sH", ifr)[1]
            flags = (flags | IFF_UP) if up else (flags & ~IFF_UP)
            fcntl.ioctl(s, SIOCSIFFLAGS, _ifreq(self.name, flags))

    def remove(self) -> None:
        """Delete the tap (QEMU must have let go of it).  Idempotent, never raises."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if not self.created:
            return
        try:
            self._tun_ioctl_persist(False)
        except OSError:
            subprocess.run(["ip", "link", "delete", self.name], capture_output=True)
        self.created = False

    def exists(self) -> bool:
        return Path(f"/sys/class/net/{self.name}").exists()

    def netdev_arg(self, netdev_id: str = "n0", vhost: bool = False, extra: str = "") -> str:
        arg = (f"tap,id={netdev_id},ifname={self.name},script=no,downscript=no,"
               f"vhost={'on' if vhost else 'off'}")
        if self.queues > 1:
            arg += f",queues={self.queues}"
        return arg + (f",{extra}" if extra else "")

    def send(self, frame: bytes) -> None:
        """Inject one Ethernet frame (the device receives it)."""
        if self._sock is None:
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            self._sock.bind((self.name, 0))
        self._sock.send(bytes(frame))

    def stats(self) -> dict[str, int]:
        """The tap's kernel counters (tx_* are frames towards QEMU)."""
        base = Path(f"/sys/class/net/{self.name}/statistics")
        out = {}
        for k in ("tx_packets", "tx_dropped", "tx_errors", "rx_packets"):
            try:
                out[k] = int((base / k).read_text())
            except OSError:
                pass
        return out

    def __enter__(self) -> "TapDevice":
        return self.create()

    def __exit__(self, et, ev, tb) -> None:
        self.remove()


class UdpInjector:
    """For ``-netdev dgram``: QEMU receives each UDP datagram as one frame (one queue)."""

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self._rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # QEMU's remote end
        self._rx.bind((host, 0))
        self.our_port = self._rx.getsockname()[1]
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind((host, 0))
        self.qemu_port = probe.getsockname()[1]
        probe.close()  # a small race; good enough for a test harness

    def netdev_arg(self, netdev_id: str = "n0") -> str:
        return (f"dgram,id={netdev_id},local.type=inet,local.host={self.host},"
                f"local.port={self.qemu_port},remote.type=inet,remote.host={self.host},"
                f"remote.port={self.our_port}")

    def send(self, frame: bytes) -> None:
        self._rx.sendto(bytes(frame), (self.host, self.qemu_port))

    def remove(self) -> None:
        self._rx.close()
