"""Frame injection for ``-netdev dgram``: QEMU receives each UDP datagram as one frame.

One queue and no privileges; the tap (``hashlab.host.tap``) is the other netdev the rig
uses (needed for QEMU's eBPF path and for vhost).
"""

from __future__ import annotations

import socket


class UdpInjector:
    """QEMU's ``-netdev dgram`` end on localhost, and ours that sends to it."""

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

    def send_one(self, frame: bytes) -> None:
        self._rx.sendto(bytes(frame), (self.host, self.qemu_port))

    def remove(self) -> None:
        self._rx.close()
