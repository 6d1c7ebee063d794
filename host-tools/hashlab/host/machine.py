"""A QEMU guest as an asyncio context manager: start, talk to it, always clean up.

``Machine`` launches QEMU with three socketpairs handed over as inherited fds (no
sockets on disk, nothing to clean up):

* QMP (``-chardev socket,fd=N -mon mode=control``), driven with ``qemu.qmp.QMPClient``;
* the serial console, which we read and append to the per-VM log (QEMU's own stdout and
  stderr go to the same file), watching it for panics and for boot progress;
* the guest agent's virtio-serial port ``hashlab.0`` (protocol: guest-tests/agent).

The process, its log, the errors' context and the last steps of the shutdown are
:class:`~hashlab.host.qemu_process.QemuProcess`'s.  Failures are told apart and each
carries the QEMU command line and the kept log path:
``QemuStartError`` (QEMU did not come up / exited before the guest was ready),
``GuestPanic`` (panic text on the console or QMP ``GUEST_PANICKED`` from pvpanic),
``GuestHang`` (no answer within a timeout scaled by the machine's load) and
``QemuExited`` (QEMU went away later).  Shutdown is graceful first (agent ``poweroff``),
then QMP ``quit``, then SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from ..errors import Exit, HashlabError
from ..paths import results_root
from .qemu_process import HOST_QEMU, QemuError, QemuProcess, panic_line

log = logging.getLogger(__name__)

AGENT_PORT = "hashlab.0"


class MachineError(QemuError):
    """A VM failure; names the QEMU command line and the (kept) log."""

    what = "failed"


class QemuStartError(MachineError):
    what = "QEMU failed to start"


class QemuExited(MachineError):
    what = "QEMU exited unexpectedly"


class GuestPanic(MachineError):
    exit_status = Exit.PANIC
    what = "guest kernel panicked"


class GuestHang(MachineError):
    exit_status = Exit.HANG
    what = "guest hung"


class AgentError(HashlabError):
    """The agent answered, but the command failed."""

    exit_status = Exit.ERROR


@dataclass
class AgentReply:
    id: int
    rc: int
    lines: list[dict] = field(default_factory=list)
    err: str = ""

    def kind(self, k: str) -> list[dict]:
        return [ln for ln in self.lines if ln.get("kind") == k]

    @property
    def output(self) -> str:
        return "\n".join(ln.get("out", "") for ln in self.kind("output"))


@dataclass
class MachineConfig:
    kernel: Path
    initrd: Path
    name: str = "guest"
    qemu: str = HOST_QEMU
    machine: str = "q35"
    accel: str = "tcg"
    cpu: str = "max"
    cpus: int = 2
    memory: str = "512M"
    append: str = ""  # extra kernel command line
    extra_args: list[str] = field(default_factory=list)  # e.g. -netdev/-device
    pass_fds: tuple[int, ...] = ()  # fds the extra args refer to (tap queues)
    log_path: Path | None = None
    boot_timeout: float = 120.0  # at idle; scaled by load_factor()
    # A boot whose console stays quiet this long (at idle; scaled) has stalled: nested
    # KVM under TCG now and then stops a guest mid-boot for good.  None: only boot_timeout.
    boot_stall_timeout: float | None = None
    command_timeout: float = 60.0
    shutdown_timeout: float = 30.0
    pvpanic: bool = True


class Machine(QemuProcess):
    """``async with Machine(cfg) as vm: await vm.agent("info")``."""

    start_error = QemuStartError

    def __init__(self, cfg: MachineConfig):
        self.cfg = cfg
        if cfg.log_path is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            cfg.log_path = results_root() / "vm-logs" / f"{cfg.name}-{stamp}-{os.getpid()}.log"
        super().__init__(Path(cfg.log_path))
        self.qmp: QMPClient | None = None
        self.ready_info: dict = {}
        self.events: list[dict] = []
        self.console_tail = b""
        self.last_progress = 0.0
        self._tasks: list[asyncio.Task] = []
        self._panicked = asyncio.Event()
        self._panic_reason = ""
        self._agent_w: asyncio.StreamWriter | None = None
        self._agent_q: asyncio.Queue = asyncio.Queue()
        self._ready = asyncio.Event()
        self._agent_lock = asyncio.Lock()
        self._next_id = 1
        self._closed = False

    # ------------------------------------------------------------------ context manager
    async def __aenter__(self) -> "Machine":
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, et, ev, tb) -> None:
        await self.close(graceful=et is None)

    # ------------------------------------------------------------------ helpers
    @property
    def alive(self) -> bool:
        return self.running

    def build_cmdline(self, qmp_fd: int, con_fd: int, agent_fd: int) -> list[str]:
        c = self.cfg
        append = f"console=ttyS0 panic=-1 oops=panic loglevel=6 {c.append}".strip()
        args = [
            c.qemu, "-name", f"{c.name},debug-threads=on", "-nodefaults", "-no-user-config", "-display", "none",
            "-machine", c.machine, "-accel", c.accel, "-cpu", c.cpu,
            "-smp", str(c.cpus), "-m", c.memory, "-no-reboot",
            "-action", "panic=pause",
            "-chardev", f"socket,id=qmp,fd={qmp_fd}", "-mon", "chardev=qmp,mode=control",
            "-chardev", f"socket,id=con,fd={con_fd}", "-serial", "chardev:con",
            "-device", "virtio-serial-pci,id=vser",
            "-chardev", f"socket,id=agent,fd={agent_fd}",
            "-device", f"virtserialport,bus=vser.0,chardev=agent,name={AGENT_PORT}",
            "-kernel", str(c.kernel), "-initrd", str(c.initrd), "-append", append,
        ]
        if c.pvpanic:
            args += ["-device", "pvpanic"]
        return args + list(c.extra_args)

    # ------------------------------------------------------------------ start
    async def start(self) -> None:
        c = self.cfg
        self.open_log(truncate=True)
        qmp_ours, qmp_fd = self.socketpair()
        con_ours, con_fd = self.socketpair()
        ag_ours, ag_fd = self.socketpair()
        self.spawn(self.build_cmdline(qmp_fd, con_fd, ag_fd), c.pass_fds)
        self.last_progress = time.monotonic()
        self._tasks.append(asyncio.create_task(self._console_reader(con_ours), name="console"))
        ar, aw = await asyncio.open_connection(sock=ag_ours)
        self._agent_w = aw
        self._tasks.append(asyncio.create_task(self._agent_reader(ar), name="agent"))

        self.qmp = QMPClient(c.name)
        self.qmp.logger.setLevel(logging.CRITICAL)  # its teardown chatter is not ours
        try:
            await self._race(self.qmp.connect(qmp_ours), self.scaled(30), "QMP greeting",
                             on_exit=QemuStartError, on_timeout=QemuStartError)
        except MachineError:
            raise
        except Exception as e:  # ConnectError and friends
            await self.wait_async(2)
            raise self._err(QemuStartError, f"QMP connect failed: {e!r}") from e
        self._tasks.append(asyncio.create_task(self._qmp_events(), name="qmp-events"))
        await self._race(self._ready.wait(), self.scaled(c.boot_timeout), "agent ready",
                         on_exit=QemuStartError,
                         stall=self.scaled(c.boot_stall_timeout) if c.boot_stall_timeout else None)
        self.note(f"guest ready: {self.ready_info}")

    async def _stalled(self, quiet_for: float) -> None:
        """Return once the console has been quiet for QUIET_FOR seconds."""
        while (left := self.last_progress + quiet_for - time.monotonic()) > 0:
            await asyncio.sleep(min(left + 0.05, 1.0))

    async def _race(self, coro, timeout: float, what: str, on_exit=QemuExited,
                    on_timeout=GuestHang, stall: float | None = None) -> Any:
        """Await CORO unless the guest panics, QEMU exits, TIMEOUT passes or (with STALL)
        the console stays quiet for STALL seconds first."""
        main = asyncio.ensure_future(coro)
        exit_t = asyncio.ensure_future(self.exited())
        panic_t = asyncio.ensure_future(self._panicked.wait())
        watchers = [exit_t, panic_t]
        if stall:
            watchers.append(asyncio.ensure_future(self._stalled(stall)))
        try:
            done, _ = await asyncio.wait({main, *watchers}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in watchers:
                t.cancel()
        if main in done:
            return main.result()
        main.cancel()
        with contextlib.suppress(BaseException):
            await main
        if panic_t in done or self._panicked.is_set():
            await asyncio.sleep(0.5)  # let the rest of the oops reach the log
            raise self._err(GuestPanic, f"{self._panic_reason} (while waiting for {what})")
        if exit_t in done:
            await asyncio.sleep(0.2)  # drain the console
            if self._panicked.is_set() or panic_line(self.console_tail):
                raise self._err(GuestPanic, f"panic on the console, QEMU exited "
                                            f"(status {self.proc.returncode})")
            raise self._err(on_exit, f"QEMU exited with status {self.proc.returncode} "
                                     f"while waiting for {what}")
        quiet = time.monotonic() - self.last_progress
        if stall and quiet >= stall:
            raise self._err(on_timeout, f"no {what}: stalled, console quiet for {quiet:.0f}s "
                                        f"(limit {stall:.0f}s)")
        raise self._err(on_timeout, f"no {what} within {timeout:.0f}s "
                                    f"(load factor {self.scaled(1.0):.1f}; console quiet for {quiet:.0f}s)")

    # ------------------------------------------------------------------ readers
    async def _console_reader(self, sock: socket.socket) -> None:
        r, w = await asyncio.open_connection(sock=sock)
        try:
            while True:
                data = await r.read(4096)
                if not data:
                    break
                self.write_log(data)
                self.last_progress = time.monotonic()
                self.console_tail = (self.console_tail + data)[-65536:]
                if not self._panicked.is_set() and (line := panic_line(self.console_tail)):
                    self._panic_reason = "console: " + line
                    self._panicked.set()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    async def _agent_reader(self, r: asyncio.StreamReader) -> None:
        try:
            while True:
                line = await r.readline()
                if not line:
                    break
                self.last_progress = time.monotonic()
                try:
                    msg = json.loads(line)
                except ValueError:
                    self.note(f"agent: unparsable line {line[:200]!r}")
                    continue
                if msg.get("event") == "ready":
                    self.ready_info = msg
                    self._ready.set()
                elif "id" in msg:
                    await self._agent_q.put(msg)
                else:
                    self.note(f"agent event: {msg}")
        except (ConnectionError, OSError, ValueError):
            pass

    async def _qmp_events(self) -> None:
        with contextlib.suppress(Exception):
            async for ev in self.qmp.events:
                self.events.append(ev)
                if ev["event"] == "GUEST_PANICKED" and not self._panicked.is_set():
                    self._panic_reason = f"QMP GUEST_PANICKED {ev.get('data', {})}"
                    self._panicked.set()

    # ------------------------------------------------------------------ API
    async def qmp_cmd(self, cmd: str, **args) -> Any:
        return await self._race(self.qmp.execute(cmd, args or None),
                                self.scaled(self.cfg.command_timeout), f"QMP {cmd}")

    async def agent(self, verb: str, *args: str, timeout: float | None = None,
                    check: bool = True) -> AgentReply:
        """Run one agent command; returns its data lines and status."""
        async with self._agent_lock:
            cid = self._next_id
            self._next_id += 1
            line = " ".join([str(cid), verb, *map(str, args)])
            if "\n" in line:
                raise ValueError("agent commands are single lines")
            self._agent_w.write(line.encode() + b"\n")
            await self._agent_w.drain()
            reply = AgentReply(cid, -1)

            async def collect():
                while True:
                    msg = await self._agent_q.get()
                    if msg.get("id") != cid:
                        self.note(f"agent: stray reply {msg}")
                        continue
                    if msg.get("end"):
                        reply.rc = msg.get("rc", -1)
                        reply.err = msg.get("err", "")
                        return reply
                    reply.lines.append(msg)

            await self._race(collect(), self.scaled(timeout or self.cfg.command_timeout),
                             f"agent reply to {verb!r}")
        if check and reply.rc != 0:
            raise AgentError(f"guest command `{verb} {' '.join(args)}` failed "
                             f"(status {reply.rc}): {reply.err or reply.output}")
        return reply

    async def panic_now(self) -> None:
        """Ask the agent to crash the kernel (sysrq c); returns once it has answered."""
        await self.agent("panic")

    async def wait_exit(self, timeout: float) -> int:
        return await self._race_exit(timeout)

    async def _race_exit(self, timeout: float) -> int:
        panic_t = asyncio.ensure_future(self._panicked.wait())
        exit_t = asyncio.ensure_future(self.exited())
        done, _ = await asyncio.wait({panic_t, exit_t}, timeout=self.scaled(timeout),
                                     return_when=asyncio.FIRST_COMPLETED)
        panic_t.cancel()
        exit_t.cancel()
        if self._panicked.is_set():
            await asyncio.sleep(0.5)
            raise self._err(GuestPanic, self._panic_reason)
        if exit_t in done:
            return self.proc.returncode
        raise self._err(GuestHang, f"QEMU still running after {timeout:.0f}s")

    # ------------------------------------------------------------------ shutdown
    async def close(self, graceful: bool = True) -> None:
        """Stop QEMU (agent poweroff, then the base's QMP quit, SIGTERM, SIGKILL) and release
        everything."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.alive and graceful and self._ready.is_set() and not self._panicked.is_set():
                self.note("shutdown: agent poweroff")
                with contextlib.suppress(Exception):
                    self._agent_w.write(f"{self._next_id} poweroff\n".encode())
                    await self._agent_w.drain()
                await self.wait_async(self.scaled(self.cfg.shutdown_timeout))
            qmp_up = self.qmp is not None and self.qmp.runstate.name == "RUNNING"
            await self.stop_async((lambda: self.qmp.execute("quit")) if qmp_up else None)
        finally:
            if self.qmp is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.qmp.disconnect(), 5)
            for t in self._tasks:
                t.cancel()
            for t in self._tasks:
                with contextlib.suppress(BaseException):
                    await t
            if self._agent_w is not None:
                self._agent_w.close()
            self.release()
