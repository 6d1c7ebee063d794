"""A live lab session: a scenario's guest booted and configured, then left running for
the user (``hashlab session``), with everything undone when it ends.

The guest comes up by the same steps as a run (hashlab.run.steps: tap, boot with
retries, the scenario's configuration, the negotiation, vhost and QEMU-query checks),
and QEMU gets a second QMP monitor on a UNIX socket for the user.  The session's
directory (a ``hashlab-session-*`` temp dir) holds:

* ``qmp.sock``: QEMU's own QMP (``qmp-shell``, ``qemu.qmp.QMPClient``);
* ``session.sock``: hashlab's side, JSON lines, one request and one answer per line:
  ``{"op": "agent", "verb": V, "args": [...]}`` (the guest agent; not ``poweroff``),
  ``{"op": "reconfigure", "step": {...}}`` (a scenario ``reconfigure`` step: ethtool
  in the guest, the driver model and the oracle follow), ``{"op": "oracle"}`` (the
  configuration the next frames are judged with), ``{"op": "send", "slices": [...]}``
  (corpus frames through the tap; what the guest saw, judged by the oracle).  An answer
  is ``{"status": "ok", ...}`` or ``{"status": "error", "error": "..."}``;
* ``session.json``: where everything is (the paths above, the tap, the NIC's QOM path,
  the VM log), for scripts; ``hashlab.scripting`` reads it.

The environment of the user's command names them: HASHLAB_SESSION (session.json),
HASHLAB_QMP_SOCKET, HASHLAB_SESSION_SOCKET.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from ..errors import HashlabError, UsageError
from ..frames import packets
from ..host import datapath
from ..paths import results_root
from ..results import report
from . import guest as guestmod
from . import steps
from .result import RunResult
from .scenario import Scenario, parse_reconfig_step

ENV_INFO = "HASHLAB_SESSION"
ENV_QMP = "HASHLAB_QMP_SOCKET"
ENV_SOCKET = "HASHLAB_SESSION_SOCKET"
REFUSED_VERBS = {"poweroff"}  # the session ends the guest itself


def oracle_json(env: steps.RunEnv) -> dict:
    o = env.oracle
    return {"key": o.key.hex(), "hash_types": o.hash_types, "table": list(o.table),
            "unclassified_queue": o.unclassified_queue, "behaviour": o.behaviour,
            "hash_reported": env.hash_reported, "queue_model": env.queue_model,
            "active_queues": env.model.queues}


class Session:
    """The running guest of one scenario and the session's sockets."""

    def __init__(self, env: steps.RunEnv, sdir: Path):
        self.env = env
        self.dir = sdir
        self.qmp_socket = sdir / "qmp.sock"
        self.socket = sdir / "session.sock"
        self.info_path = sdir / "session.json"
        self._lock = asyncio.Lock()  # one request at a time reaches the guest

    def info(self) -> dict:
        env, res = self.env, self.env.result
        return {"scenario": env.sc.name, "scenario_file": str(env.sc.path or ""),
                "dir": str(self.dir), "qmp_socket": str(self.qmp_socket),
                "session_socket": str(self.socket), "tap": env.tap.name,
                "nic": f"/machine/peripheral/{steps.NIC_ID}", "mac": packets.GUEST_MAC,
                "qemu": env.qemu_bin, "qemu_pid": env.pid, "vm_log": str(env.out / "qemu.log"),
                "results_dir": str(env.out), "where": res.datapath.where,
                "design": res.datapath.design, "vhost": env.sc.datapath.vhost,
                "guest_kernel": res.guest_kernel,
                "checks": [{"name": n, "ok": f is None, "failure": f} for n, f in res.checks],
                "device_hash": [d.to_json() for d in res.device_hash or []]}

    def environ(self) -> dict[str, str]:
        return {ENV_INFO: str(self.info_path), ENV_QMP: str(self.qmp_socket),
                ENV_SOCKET: str(self.socket)}

    # ------------------------------------------------------------------ requests
    async def handle(self, req: dict) -> dict:
        op = req.get("op")
        async with self._lock:
            if op == "agent":
                verb = str(req.get("verb", ""))
                if verb in REFUSED_VERBS:
                    raise UsageError(f"agent verb {verb!r}: the session ends the guest itself")
                r = await self.env.vm.agent(verb, *map(str, req.get("args", [])),
                                            timeout=req.get("timeout"), check=False)
                return {"rc": r.rc, "err": r.err, "lines": r.lines}
            if op == "reconfigure":
                return await self._reconfigure(req.get("step") or {})
            if op == "oracle":
                return {"oracle": oracle_json(self.env)}
            if op == "send":
                return await self._send(req.get("slices", "all"))
        raise UsageError(f"unknown session request {op!r} (agent, reconfigure, oracle, send)")

    async def _reconfigure(self, doc: dict) -> dict:
        env = self.env
        step = parse_reconfig_step(doc, env.sc, "session reconfigure")
        log = await guestmod.reconfigure(env.vm, step, env.model)
        env.state = await guestmod.readback(env.vm)
        steps.follow_guest(env)
        return {"commands": log, "failures": steps.reconfigure_failures(env, step, log),
                "oracle": oracle_json(env)}

    async def _send(self, slices) -> dict:
        env = self.env
        env.frames = datapath.corpus(env.sc.corpus.seed).select(slices)
        index = len(env.result.batches)
        env.traffic.batch_stats = await steps.guest_stats(env)
        await steps.send_batch(env, index)
        b = env.result.batches[-1]
        cmp = report.compare_batches([(b.sent(arrival=env.sc.expect.arrival,
                                               known=env.sc.expect.known_divergences),
                                       b.observed, b.check_hash)])
        return {"batch": index, "sent": len(b.frames), "received": len(b.observed),
                "ok": cmp.ok, "counts": cmp.counts(), "by_report": cmp.by_report,
                "mismatches": [dataclasses.asdict(v) for v in cmp.failures][:50],
                "observed": [dataclasses.asdict(o) for o in b.observed],
                "oracle": oracle_json(env)}

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while line := await r.readline():
                try:
                    ans = {"status": "ok", **await self.handle(json.loads(line))}
                except (HashlabError, ValueError, TypeError, KeyError) as e:
                    ans = {"status": "error", "error": f"{type(e).__name__}: {e}"}
                w.write(json.dumps(ans, default=str).encode() + b"\n")
                await w.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()

    async def serve(self) -> asyncio.AbstractServer:
        server = await asyncio.start_unix_server(self._client, path=str(self.socket))
        self.info_path.write_text(json.dumps(self.info(), indent=1) + "\n")
        return server


@contextlib.asynccontextmanager
async def live(sc: Scenario, out_dir: Path | None = None, kernel: str | None = None,
               echo=print):
    """``async with live(sc) as s``: SC's guest up and configured, its checks recorded
    (``s.env.result.checks``), the sockets served; all of it undone on the way out."""
    t0 = time.monotonic()
    out = Path(out_dir) if out_dir else results_root() / sc.name / "session"
    out.mkdir(parents=True, exist_ok=True)
    res = RunResult(sc.name, out, scenario_file=str(sc.path) if sc.path else None)
    sdir = Path(tempfile.mkdtemp(prefix="hashlab-session-"))
    try:
        async with contextlib.AsyncExitStack() as undo:
            env = steps.RunEnv(sc, out, echo, t0, undo, res, kernel=kernel)
            s = Session(env, sdir)
            # The user's QMP: a second monitor, on a socket QEMU listens on
            env.extra_args = ["-chardev", f"socket,id=qmp-user,path={s.qmp_socket},"
                              "server=on,wait=off", "-mon", "chardev=qmp-user,mode=control"]
            steps.check_datapath(env)
            steps.prepare_guest(env)
            steps.create_tap(env)
            await steps.boot(env)
            await steps.configure_guest(env)
            await steps.query_device(env)
            steps.check_negotiation(env)
            steps.check_vhost(env)
            steps.check_guest_config(env)
            steps.choose_oracle(env)
            await steps.check_device_hash(env, "configured")
            await steps.start_trace(env)
            server = await s.serve()
            try:
                yield s
            finally:
                server.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 5)
    finally:
        shutil.rmtree(sdir, ignore_errors=True)


async def run_command(s: Session, cmd: list[str], echo=print) -> int:
    """CMD in the session's environment; its exit status.  Ctrl-C and SIGTERM stop it
    (SIGTERM, then SIGKILL after 10 s) before the session is undone."""
    env = {**os.environ, **s.environ()}
    try:
        proc = await asyncio.create_subprocess_exec(*cmd, env=env)
    except OSError as e:
        raise UsageError(f"cannot run {cmd[0]!r}: {e.strerror}") from None
    try:
        return await proc.wait()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


def qmp_shell() -> list[str]:
    """qemu.qmp's interactive shell, from this Python's environment."""
    exe = Path(sys.executable).with_name("qmp-shell")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "qemu.qmp.qmp_shell"]
