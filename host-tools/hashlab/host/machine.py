"""A QEMU guest as an asyncio context manager: start, talk to it, always clean up.

``Machine`` launches QEMU with three socketpairs handed over as inherited fds (no
sockets on disk, nothing to clean up):

* QMP (``-chardev socket,fd=N -mon mode=control``), driven with ``qemu.qmp.QMPClient``;
* the serial console, which we read and append to the per-VM log (QEMU's own stdout and
  stderr go to the same file), watching it for panics and for boot progress;
* the guest agent's virtio-serial port ``hashlab.0`` (protocol: guest-tests/agent).

Failures are told apart and each carries the QEMU command line and the kept log path:
``QemuStartError`` (QEMU did not come up / exited before the guest was ready),
``GuestPanic`` (panic text on the console or QMP ``GUEST_PANICKED`` from pvpanic),
``GuestHang`` (no answer within a timeout scaled by the machine's load) and
``QemuExited`` (QEMU went away later).  Shutdown is graceful first (agent ``poweroff``),
then QMP ``quit``, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from ..errors import Exit, HashlabError
from ..paths import results_root
from .qemu_process import HOST_QEMU, PANIC_BYTES_RE, load_factor

log = logging.getLogger(__name__)

AGENT_PORT = "hashlab.0"


class MachineError(HashlabError):
    """A VM failure; names the QEMU command line and the (kept) log."""

    exit_status = Exit.VM_DIED
    what = "failed"

    def __init__(self, detail: str, cmdline: list[str], log_path: Path, tail: str = ""):
        self.detail = detail
        self.cmdline = cmdline
        self.log_path = log_path
        msg = f"VM {self.what}: {detail}; log: {log_path}\n  qemu: {shlex.join(cmdline)}"
        if tail:
            msg += "\n  last log lines:\n" + "\n".join("    " + ln for ln in tail.splitlines())
        super().__init__(msg)


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


class Machine:
    """``async with Machine(cfg) as vm: await vm.agent("info")``."""

    def __init__(self, cfg: MachineConfig):
        self.cfg = cfg
        if cfg.log_path is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            cfg.log_path = results_root() / "vm-logs" / f"{cfg.name}-{stamp}-{os.getpid()}.log"
        self.log_path = Path(cfg.log_path)
        self.cmdline: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self.qmp: QMPClient | None = None
        self.ready_info: dict = {}
        self.events: list[dict] = []
        self.console_tail = b""
        self.last_progress = 0.0
        self._log_fd = -1
        self._socks: list[socket.socket] = []
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
    def _timeout(self, base: float) -> float:
        return base * load_factor()

    def _log(self, text: str) -> None:
        if self._log_fd >= 0:
            os.write(self._log_fd, f"[hashlab {time.strftime('%H:%M:%S')}] {text}\n".encode())

    def tail(self, n: int = 15) -> str:
        try:
            data = self.log_path.read_bytes()[-16384:]
        except OSError:
            return ""
        lines = data.decode(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def _err(self, cls, detail: str) -> MachineError:
        return cls(detail, self.cmdline, self.log_path, self.tail())

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

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
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
        (qmp_ours, qmp_theirs), (con_ours, con_theirs), (ag_ours, ag_theirs) = pairs
        self._socks = [qmp_ours, con_ours, ag_ours]
        theirs = [qmp_theirs, con_theirs, ag_theirs]
        self.cmdline = self.build_cmdline(*(s.fileno() for s in theirs))
        self._log(f"starting: {shlex.join(self.cmdline)}")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.cmdline, stdin=asyncio.subprocess.DEVNULL, stdout=self._log_fd,
                stderr=self._log_fd, pass_fds=[s.fileno() for s in theirs] + list(c.pass_fds),
                start_new_session=True)
        except OSError as e:
            raise self._err(QemuStartError, f"cannot execute {c.qemu}: {e}") from e
        finally:
            for s in theirs:
                s.close()
        self.last_progress = time.monotonic()
        self._tasks.append(asyncio.create_task(self._console_reader(con_ours), name="console"))
        ar, aw = await asyncio.open_connection(sock=ag_ours)
        self._agent_w = aw
        self._tasks.append(asyncio.create_task(self._agent_reader(ar), name="agent"))

        self.qmp = QMPClient(c.name)
        self.qmp.logger.setLevel(logging.CRITICAL)  # its teardown chatter is not ours
        try:
            await self._race(self.qmp.connect(qmp_ours), self._timeout(30), "QMP greeting",
                             on_exit=QemuStartError, on_timeout=QemuStartError)
        except MachineError:
            raise
        except Exception as e:  # ConnectError and friends
            await self._reap(2)
            raise self._err(QemuStartError, f"QMP connect failed: {e!r}") from e
        self._tasks.append(asyncio.create_task(self._qmp_events(), name="qmp-events"))
        await self._race(self._ready.wait(), self._timeout(c.boot_timeout), "agent ready",
                         on_exit=QemuStartError,
                         stall=self._timeout(c.boot_stall_timeout) if c.boot_stall_timeout else None)
        self._log(f"guest ready: {self.ready_info}")

    async def _reap(self, timeout: float) -> None:
        if self.proc:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.proc.wait(), timeout)

    async def _stalled(self, quiet_for: float) -> None:
        """Return once the console has been quiet for QUIET_FOR seconds."""
        while (left := self.last_progress + quiet_for - time.monotonic()) > 0:
            await asyncio.sleep(min(left + 0.05, 1.0))

    async def _race(self, coro, timeout: float, what: str, on_exit=QemuExited,
                    on_timeout=GuestHang, stall: float | None = None) -> Any:
        """Await CORO unless the guest panics, QEMU exits, TIMEOUT passes or (with STALL)
        the console stays quiet for STALL seconds first."""
        main = asyncio.ensure_future(coro)
        exit_t = asyncio.ensure_future(self.proc.wait())
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
            if self._panicked.is_set() or PANIC_BYTES_RE.search(self.console_tail):
                raise self._err(GuestPanic, f"panic on the console, QEMU exited "
                                            f"(status {self.proc.returncode})")
            raise self._err(on_exit, f"QEMU exited with status {self.proc.returncode} "
                                     f"while waiting for {what}")
        quiet = time.monotonic() - self.last_progress
        if stall and quiet >= stall:
            raise self._err(on_timeout, f"no {what}: stalled, console quiet for {quiet:.0f}s "
                                        f"(limit {stall:.0f}s)")
        raise self._err(on_timeout, f"no {what} within {timeout:.0f}s "
                                    f"(load factor {load_factor():.1f}; console quiet for {quiet:.0f}s)")

    # ------------------------------------------------------------------ readers
    async def _console_reader(self, sock: socket.socket) -> None:
        r, w = await asyncio.open_connection(sock=sock)
        try:
            while True:
                data = await r.read(4096)
                if not data:
                    break
                os.write(self._log_fd, data)
                self.last_progress = time.monotonic()
                self.console_tail = (self.console_tail + data)[-65536:]
                if not self._panicked.is_set():
                    m = PANIC_BYTES_RE.search(self.console_tail)
                    if m:
                        line = self.console_tail[m.start():].split(b"\n", 1)[0]
                        self._panic_reason = "console: " + line.decode(errors="replace").strip()
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
                    self._log(f"agent: unparsable line {line[:200]!r}")
                    continue
                if msg.get("event") == "ready":
                    self.ready_info = msg
                    self._ready.set()
                elif "id" in msg:
                    await self._agent_q.put(msg)
                else:
                    self._log(f"agent event: {msg}")
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
                                self._timeout(self.cfg.command_timeout), f"QMP {cmd}")

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
                        self._log(f"agent: stray reply {msg}")
                        continue
                    if msg.get("end"):
                        reply.rc = msg.get("rc", -1)
                        reply.err = msg.get("err", "")
                        return reply
                    reply.lines.append(msg)

            await self._race(collect(), self._timeout(timeout or self.cfg.command_timeout),
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
        exit_t = asyncio.ensure_future(self.proc.wait())
        done, _ = await asyncio.wait({panic_t, exit_t}, timeout=self._timeout(timeout),
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
        """Stop QEMU (agent poweroff, QMP quit, SIGKILL) and release everything."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.alive and graceful and self._ready.is_set() and not self._panicked.is_set():
                self._log("shutdown: agent poweroff")
                with contextlib.suppress(Exception):
                    self._agent_w.write(f"{self._next_id} poweroff\n".encode())
                    await self._agent_w.drain()
                await self._reap(self._timeout(self.cfg.shutdown_timeout))
            if self.alive and self.qmp is not None and self.qmp.runstate.name == "RUNNING":
                self._log("shutdown: QMP quit")
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.qmp.execute("quit"), 5)
                await self._reap(10)
            if self.alive:
                self._log("shutdown: SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signal.SIGKILL)
                await self._reap(10)
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
            for s in self._socks:
                s.close()
            if self.proc is not None:
                self._log(f"QEMU exit status {self.proc.returncode}")
            if self._log_fd >= 0:
                os.close(self._log_fd)
                self._log_fd = -1
