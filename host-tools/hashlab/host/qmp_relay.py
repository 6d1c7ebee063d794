"""Carry one QMP connection between a UNIX socket and a virtio-serial port.

``hashlab session`` of a lab scenario without a command: the guest's QEMU runs in the lab
VM, the user's terminal is on the host.  The lab VM's QEMU gets a virtio-serial port whose
host end is a UNIX socket (``lab.run(qemu_opts=...)``, ``qemu_opts()`` here); in the lab VM
this relay joins that port to the guest QEMU's QMP socket, and ``qmp-shell`` on the host
talks through it.  The relay ends when the host side hangs up (the shell ended), which
ends the session in the lab VM, or when the guest's QEMU closes its socket.

    python -m hashlab.host.qmp_relay --port PORT --qmp SOCKET [--ready FILE]
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import select
import socket
import sys
import time
from pathlib import Path

PORT_NAME = "hashlab.qmp"
PORT = Path("/dev/virtio-ports") / PORT_NAME
CHARDEV_ID = "hashlab-qmp"


def qemu_opts(host_socket: Path) -> list[str]:
    """The lab VM QEMU's options for the port: its own virtio-serial device, and the host
    end as a listening socket (the shell connects when the guest is up)."""
    return ["-chardev", f"socket,id={CHARDEV_ID},path={host_socket},server=on,wait=off",
            "-device", "virtio-serial-pci",
            "-device", f"virtserialport,name={PORT_NAME},chardev={CHARDEV_ID}"]


def _wait_for_port(path: Path, timeout: float) -> int:
    """Open the port once udev has made its node (it comes up with the lab VM's boot)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(path, os.O_RDWR | os.O_NONBLOCK)
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise SystemExit(f"qmp-relay: no {path} after {timeout:.0f}s "
                                 "(was the lab VM booted with qemu_opts()?)") from None
            time.sleep(0.2)


def _host_connected(fd: int) -> bool:
    # A virtio-serial port polls as HUP while nothing listens on the host end.
    p = select.poll()
    p.register(fd, select.POLLOUT)
    return not any(ev & select.POLLHUP for _, ev in p.poll(0))


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            data = data[os.write(fd, data):]
        except BlockingIOError:
            select.select([], [fd], [], 1)


def relay(port: int, qmp: socket.socket) -> str:
    """Pump bytes both ways until one side ends; which one it was."""
    while not _host_connected(port):  # QEMU's greeting must wait for a reader
        time.sleep(0.2)
    p = select.poll()
    p.register(port, select.POLLIN)
    p.register(qmp.fileno(), select.POLLIN)
    while True:
        for fd, ev in p.poll():
            if fd == port:
                if ev & select.POLLIN:
                    try:
                        data = os.read(port, 65536)
                    except BlockingIOError:
                        continue
                    if data:
                        qmp.sendall(data)
                        continue
                if ev & (select.POLLHUP | select.POLLIN):
                    return "host"
            else:
                data = qmp.recv(65536)
                if not data:
                    return "qemu"
                _write_all(port, data)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="qmp-relay", description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=Path, default=PORT)
    ap.add_argument("--qmp", default=os.environ.get("HASHLAB_QMP_SOCKET"),
                    help="the guest QEMU's QMP socket (default: $HASHLAB_QMP_SOCKET)")
    ap.add_argument("--ready", type=Path, help="file written once both ends are open")
    ap.add_argument("--port-timeout", type=float, default=60)
    a = ap.parse_args(argv)
    if not a.qmp:
        ap.error("--qmp or HASHLAB_QMP_SOCKET is needed")
    port = _wait_for_port(a.port, a.port_timeout)
    qmp = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    qmp.connect(a.qmp)
    if a.ready:
        a.ready.write_text(json.dumps({"port": str(a.port), "qmp": a.qmp,
                                       "pid": os.getpid()}) + "\n")
    try:
        ended = relay(port, qmp)
    except OSError as e:
        if e.errno not in (errno.EPIPE, errno.ECONNRESET):
            raise
        ended = "qemu"
    finally:
        qmp.close()
        os.close(port)
    print(f"qmp-relay: the {'shell on the host' if ended == 'host' else 'guest QEMU'} "
          "closed the connection", file=sys.stderr)
    return 0 if ended == "host" else 1


if __name__ == "__main__":
    sys.exit(main())
