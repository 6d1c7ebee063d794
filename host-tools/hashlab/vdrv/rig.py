"""A virtio-net device under qtest with a netdev hashlab injects into, plus the driver.

::

    with NetRig(queues=4) as rig:               # tap + QEMU + driver, all brought up
        assert rig.net.rss_config(ALL_TYPES, table, MS_KEY) == Ack.OK
        result = rig.run([f.data for f in corpus()])
        for sent, rx in result.matched: ...

Everything is undone on exit (QEMU killed, tap deleted), failures included; the tap is
not persistent, so not even SIGKILL leaves it behind (``hashlab.host.tap``).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..host.qemu_process import HOST_QEMU
from ..host.qtest import QtestMachine
from ..host.tap import Tap
from .dgram import UdpInjector
from .net import RxFrame, VirtioNet


@dataclass
class RunResult:
    """Frames sent and what came back: matched pairs, frames missing, frames not ours."""

    matched: list[tuple[int, RxFrame]] = field(default_factory=list)  # (index sent, rx)
    missing: list[int] = field(default_factory=list)  # indices never received
    foreign: list[RxFrame] = field(default_factory=list)  # received, not sent by us
    duplicates: list[tuple[int, RxFrame]] = field(default_factory=list)


class NetRig:
    """``queues`` netdev queues (= the device's ``max_virtqueue_pairs``).

    ``netdev``: ``"tap"`` (default; needed for QEMU's eBPF path and for vhost) or
    ``"dgram"`` (UDP on localhost, one queue, no privileges).  ``device_opts`` are added
    to ``-device virtio-net-pci``; ``device_json`` (typed JSON properties) replaces them,
    for array properties such as ``ebpf-rss-fds`` (with ``pass_fds``).  ``qemu_binary`` picks the QEMU (the lab's patched one).
    """

    DEVICE_ID = "net0"
    DEVICE_PATH = f"/machine/peripheral/{DEVICE_ID}"  # for QMP queries of the device

    def __init__(self, queues: int = 4, *, netdev: str = "tap", qemu_binary: str | os.PathLike = HOST_QEMU,
                 device_opts: str = "rss=on,hash=on", vhost: bool = False, mrg_rxbuf: bool = False,
                 want: int | None = None, rx_queue_size: int = 256, log_dir=None,
                 extra_args: Sequence[str] = (), accel: str = "auto", qtest_log: bool = False,
                 pass_fds: Sequence[int] = (), device_json: dict | None = None,
                 driver: bool = True):
        if netdev not in ("tap", "dgram"):
            raise ValueError(f"netdev must be tap or dgram, not {netdev!r}")
        if netdev == "dgram" and queues != 1:
            raise ValueError("-netdev dgram has a single queue")
        self.queues = queues
        self.netdev = netdev
        self.qemu_binary = qemu_binary
        self.device_opts = device_opts
        self.vhost = vhost
        self.mrg_rxbuf = mrg_rxbuf
        self.want = want
        self.rx_queue_size = rx_queue_size
        self.log_dir = log_dir
        self.extra_args = list(extra_args)
        self.pass_fds = tuple(pass_fds)  # fds the device options name (ebpf-rss-fds)
        self.device_json = device_json  # JSON -device properties instead of device_opts
        self.accel = accel
        self.qtest_log = qtest_log
        # False: QEMU only, no driver bring-up (a migration's destination, -incoming)
        self.driver = driver
        self.injector: Tap | UdpInjector | None = None
        self.qt: QtestMachine | None = None
        self.net: VirtioNet | None = None
        self._stack = contextlib.ExitStack()

    def qemu_args(self) -> list[str]:
        if isinstance(self.injector, Tap):
            netdev = self.injector.netdev_arg("n0", "vhost=on" if self.vhost else "")
        else:
            netdev = self.injector.netdev_arg("n0")
        # The rig's own properties, typed as JSON -device wants them; JSON is the only
        # syntax for array properties (ebpf-rss-fds), key=value the usual one.
        dev = {"driver": "virtio-net-pci", "id": self.DEVICE_ID, "netdev": "n0",
               "disable-legacy": "on",
               "vectors": 0, "romfile": "", **({"mq": True} if self.queues > 1 else {})}
        if self.device_json is not None:
            arg = json.dumps({**dev, **self.device_json})
        else:
            driver = dev.pop("driver")
            arg = ",".join([driver, *(f"{k}={'on' if v is True else v}" for k, v in dev.items()),
                            *([self.device_opts] if self.device_opts else [])])
        return ["-netdev", netdev, "-device", arg, *self.extra_args]

    def __enter__(self) -> "NetRig":
        try:
            if self.netdev == "tap":
                self.injector = self._stack.enter_context(Tap(self.queues))
                fds = self.injector.fds
            else:
                self.injector = UdpInjector()
                self._stack.callback(self.injector.remove)
                fds = []
            self.qt = self._stack.enter_context(QtestMachine(
                self.qemu_args(), qemu_binary=self.qemu_binary, log_dir=self.log_dir,
                name="virtio-net", accel=self.accel, qtest_log=self.qtest_log,
                pass_fds=(*fds, *self.pass_fds)))
            if self.netdev == "tap":
                self.injector.release()  # QEMU holds the queues: the tap now lives as long as it
            if self.driver:
                self.net = VirtioNet(self.qt, want=self.want, mrg_rxbuf=self.mrg_rxbuf,
                                     rx_queue_size=self.rx_queue_size).probe().init()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, et, ev, tb) -> None:
        self._stack.close()  # QEMU first (LIFO), then the tap

    def close(self) -> None:
        self._stack.close()

    def send(self, frame: bytes) -> None:
        self.injector.send_one(frame)

    def drain(self, quiet: float = 0.2) -> list[RxFrame]:
        """Collect whatever is still arriving until nothing comes for ``quiet`` s."""
        got: list[RxFrame] = []
        last = time.monotonic()
        while time.monotonic() - last < quiet:
            new = self.net.poll_rx()
            if new:
                got.extend(new)
                last = time.monotonic()
            else:
                time.sleep(0.002)
        return got

    def run(self, frames: Sequence[bytes], *, batch: int | None = None, timeout: float = 10.0,
            idle: float = 1.5) -> RunResult:
        """Inject ``frames`` and match what the driver receives, byte for byte.

        Frames go out in batches that always fit in one receive queue (RSS may put a
        whole batch on one queue); each batch is awaited until complete, or until
        nothing arrives for ``idle`` s (then the rest counts as missing), ``timeout`` s
        at most per batch.
        """
        if batch is None:
            batch = max(1, min(128, self.rx_queue_size // 2))
        by_bytes: dict[bytes, int] = {}
        for i, f in enumerate(frames):
            by_bytes.setdefault(bytes(f), i)
        res = RunResult()
        seen: set[int] = set()

        def take(rx: RxFrame) -> None:
            i = by_bytes.get(rx.data)
            if i is None:
                res.foreign.append(rx)
            elif i in seen:
                res.duplicates.append((i, rx))
            else:
                seen.add(i)
                res.matched.append((i, rx))

        for start in range(0, len(frames), batch):
            chunk = range(start, min(start + batch, len(frames)))
            for i in chunk:
                self.send(frames[i])
            want = len(chunk)
            got = 0
            t0 = last = time.monotonic()
            while got < want:
                new = self.net.poll_rx()
                now = time.monotonic()
                for rx in new:
                    before = len(seen)
                    take(rx)
                    got += len(seen) - before
                if new:
                    last = now
                    continue
                if now - t0 > timeout or now - last > idle:
                    break
                time.sleep(0.001)
        for rx in self.drain(0.05):
            take(rx)
        res.missing = [i for i in range(len(frames)) if i not in seen]
        res.matched.sort(key=lambda p: p[0])
        return res
