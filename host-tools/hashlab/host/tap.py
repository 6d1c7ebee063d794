"""A multi-queue tap device for one QEMU guest, and sending frames into it.

``Tap(queues=N)`` opens /dev/net/tun N times with ``IFF_TAP|IFF_NO_PI|IFF_VNET_HDR|
IFF_MULTI_QUEUE`` (one fd per queue; the device is not persistent, so it disappears
when the last fd closes), turns IPv6 off on it (no router solicitations or MLD reports
mixed into the guest's traffic) and brings it up.  QEMU gets the fds
(``-netdev tap,fds=a:b:...``); once QEMU holds them we drop ours with ``release()`` —
a queue fd nobody reads would swallow the frames the tap steers to it.

The tap is never persistent, so a process that dies, however it dies, leaves no device
behind: the kernel deletes it with the last fd (ours or QEMU's, and QEMU dies with us).
Guests (``hashlab.run``) and the qtest rig (``hashlab.vdrv``) both use it.

Frames written on the host side of the tap with an AF_PACKET socket (``send``) arrive
in the guest.  Sending is paced (small batches, a pause between) so that a slow TCG guest
does not make the tap's queue overflow.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterable

from ..errors import Exit, HashlabError
from ..uapi.linux import IFF_MULTI_QUEUE, IFF_NO_PI, IFF_TAP, IFF_VNET_HDR, TUNSETIFF, TUNSETPERSIST, ifreq

FLAGS = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE
TUN_DEV = "/dev/net/tun"
SYS_NET = Path("/sys/class/net")

_counter = itertools.count()


class TapError(HashlabError):
    exit_status = Exit.NETDEV


def default_name() -> str:
    return f"hl{os.getpid() % 100000}t{next(_counter)}"[:15]


def exists(name: str) -> bool:
    return (SYS_NET / name).exists()


class Tap:
    """``with Tap(2) as tap: ... tap.fds ... tap.release() ... tap.send(frames)``."""

    def __init__(self, queues: int = 1, name: str | None = None):
        if not 1 <= queues <= 256:
            raise TapError(f"tap queue count {queues} out of range")
        self.queues = queues
        self.name = name or default_name()
        self.fds: list[int] = []
        self._created = False
        self._sock: socket.socket | None = None  # send_one's, kept open until delete()

    # -------------------------------------------------------------- lifecycle
    def create(self) -> "Tap":
        if exists(self.name):
            raise TapError(f"network interface {self.name} already exists")
        ifr = ifreq(self.name, FLAGS)
        try:
            for _ in range(self.queues):
                fd = os.open(TUN_DEV, os.O_RDWR | os.O_CLOEXEC)
                self.fds.append(fd)
                fcntl.ioctl(fd, TUNSETIFF, ifr)
                self._created = True
        except OSError as e:
            self.delete()
            raise TapError(f"cannot create tap {self.name} ({self.queues} queues) on "
                           f"{TUN_DEV}: {e} (needs root and the tun module)") from e
        try:
            v6 = Path(f"/proc/sys/net/ipv6/conf/{self.name}/disable_ipv6")
            if v6.exists():
                v6.write_text("1\n")
            self._ip("link", "set", "dev", self.name, "up")
        except BaseException:
            self.delete()
            raise
        return self

    def recreate(self) -> "Tap":
        """A new device (new name, new queue fds) in place of this one: a QEMU that died
        leaves queue state (attached / detached) behind on the old fds."""
        self.delete()
        self.name = default_name()
        return self.create()

    def _ip(self, *args: str) -> None:
        r = subprocess.run(["ip", *args], capture_output=True, text=True)
        if r.returncode != 0:
            raise TapError(f"ip {' '.join(args)}: {r.stderr.strip()}")

    def netdev_arg(self, netdev_id: str = "net0", extra: str = "") -> str:
        """``-netdev`` value handing QEMU our queue fds (vhost off unless EXTRA says so)."""
        opts = f"tap,id={netdev_id},fds={':'.join(map(str, self.fds))}"
        if "vhost=" not in extra:
            opts += ",vhost=off"
        return opts + (f",{extra}" if extra else "")

    def release(self) -> None:
        """Close our copies of the queue fds (QEMU keeps its own)."""
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []

    def delete(self) -> None:
        """Close our fds and make sure the device is gone (idempotent)."""
        self.release()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if not self._created:
            return
        if exists(self.name):
            # Nobody else should hold it; if it was made persistent, undo that.
            try:
                fd = os.open(TUN_DEV, os.O_RDWR | os.O_CLOEXEC)
                try:
                    fcntl.ioctl(fd, TUNSETIFF, ifreq(self.name, FLAGS))
                    fcntl.ioctl(fd, TUNSETPERSIST, 0)
                finally:
                    os.close(fd)
            except OSError:
                pass
        self._created = False

    def __enter__(self) -> "Tap":
        return self.create()

    def __exit__(self, *exc) -> None:
        self.delete()

    def exists(self) -> bool:
        return exists(self.name)

    # -------------------------------------------------------------- statistics
    def stats(self) -> dict[str, int]:
        out = {}
        d = SYS_NET / self.name / "statistics"
        for f in ("tx_packets", "tx_dropped", "tx_errors", "rx_packets"):
            try:
                out[f] = int((d / f).read_text())
            except (OSError, ValueError):
                out[f] = -1
        return out

    # -------------------------------------------------------------- sending
    def send(self, frames: Iterable[bytes], batch: int = 16, pause: float = 0.02) -> int:
        """Write FRAMES on the tap (they reach the guest); returns how many were sent."""
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        try:
            s.bind((self.name, 0))
            n = 0
            for i, data in enumerate(frames):
                for attempt in range(100):
                    try:
                        s.send(bytes(data))
                        break
                    except (BlockingIOError, InterruptedError):
                        time.sleep(pause)
                    except OSError as e:
                        if e.errno != errno.ENOBUFS:  # ENOBUFS: queue full, back off
                            raise TapError(f"sending a {len(data)}-byte frame on "
                                           f"{self.name}: {e}") from e
                        time.sleep(pause)
                else:
                    raise TapError(f"{self.name}: transmit queue stays full; "
                                   f"sent {n} frames")
                n += 1
                if (i + 1) % batch == 0:
                    time.sleep(pause)
            return n
        finally:
            s.close()

    def send_one(self, frame: bytes) -> None:
        """Write one frame, unpaced: for a caller that paces itself (the qtest rig sends
        batches that fit in a receive queue)."""
        if self._sock is None:
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            self._sock.bind((self.name, 0))
        self._sock.send(bytes(frame))

    def _try_send(self, send, data: bytes, what: str) -> int:
        """1 if DATA went out, 0 if the transmit queue was full (skipped, not an error)."""
        try:
            send(data)
            return 1
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as e:
            if e.errno != errno.ENOBUFS:
                raise TapError(f"{what} on {self.name}: {e}") from e
            return 0

    def blast(self, frames: list[bytes], count: int, rate: float | None = None,
              burst: int = 16) -> tuple[int, float]:
        """Write COUNT frames (FRAMES cycled) for a throughput run: bursts of BURST
        frames on a schedule of RATE frames per second (None: as fast as this process
        can).  The tap drops what its queue cannot hold (``tx_dropped``), which is part
        of the measurement.  Returns (frames written, seconds spent writing)."""
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        try:
            s.bind((self.name, 0))
            data = [bytes(f) for f in frames]
            send = s.send
            n = 0
            t0 = time.perf_counter()
            for i in range(count):
                n += self._try_send(send, data[i % len(data)], "blasting frames")
                if rate and (i + 1) % burst == 0:
                    ahead = t0 + (i + 1) / rate - time.perf_counter()
                    if ahead > 0:
                        time.sleep(ahead)
            return n, time.perf_counter() - t0
        finally:
            s.close()

    def send_until(self, stop: threading.Event, frames: Iterable[bytes],
                   interval: float = 0.005) -> int:
        """Keep writing FRAMES (cycled) until STOP is set; returns how many were sent.

        Background traffic (e.g. while the guest reconfigures RSS): a full transmit
        queue is skipped over, not an error.
        """
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        n = 0
        try:
            s.bind((self.name, 0))
            for data in itertools.cycle([bytes(f) for f in frames]):
                if stop.is_set():
                    break
                n += self._try_send(s.send, data, "sending filler")
                stop.wait(interval)
            return n
        finally:
            s.close()

