"""The Python API for scripts against a live guest (``hashlab session SCENARIO -- python
my.py``): its QEMU's QMP, the guest agent, frames in and the oracle's verdict out.

    import asyncio
    from hashlab.scripting import Session

    async def main():
        async with Session.attach() as s:          # from HASHLAB_SESSION
            print((await s.query_hash()).label)    # x-query-virtio-net-hash
            await s.reconfigure(key="random:7")    # ethtool -X in the guest
            await s.wait_event()                   # VIRTIO_NET_HASH_CHANGED
            verdict = await s.send(["ipv4-tcp"])   # corpus frames, judged
            assert verdict["ok"], verdict["mismatches"]

    asyncio.run(main())

``qmp`` is a connected ``qemu.qmp.QMPClient`` on QEMU's own monitor; everything else
goes through the session's socket (hashlab.run.session), where the guest's driver model
and the oracle live: configuration changes made with ``reconfigure()`` are followed by
the oracle, raw ``agent("ethtool", ...)`` ones are not.  docs/scripting.md has the
whole API and examples/ three scripts.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from qemu.qmp import EventListener, QMPClient

from .errors import HashlabError, UsageError
from .host import hashquery
from .oracle import rss
from .run.session import ENV_INFO

__all__ = ["Session", "SessionError", "in_session"]


class SessionError(HashlabError):
    """The session refused a request or went away."""


def in_session() -> bool:
    """True when this process runs under ``hashlab session`` (HASHLAB_SESSION is set)."""
    return bool(os.environ.get(ENV_INFO))


class Session:
    """A live guest: ``async with Session.attach() as s: ...``."""

    def __init__(self, info: dict):
        self.info = info
        self.nic: str = info["nic"]  # the NIC's QOM path, for QMP
        self.tap: str = info["tap"]
        self.qmp = QMPClient("hashlab-script")
        self._events = EventListener(hashquery.EVENT)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def attach(cls, info_path: str | os.PathLike | None = None) -> "Session":
        """The session that started this process (or the one INFO_PATH describes)."""
        path = info_path or os.environ.get(ENV_INFO)
        if not path:
            raise UsageError(f"not in a hashlab session ({ENV_INFO} is not set): run "
                             "hashlab session SCENARIO -- python SCRIPT")
        try:
            return cls(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read the session's {path}: {e}") from None

    async def __aenter__(self) -> "Session":
        self.qmp.register_listener(self._events)
        await self.qmp.connect(self.info["qmp_socket"])
        self._reader, self._writer = await asyncio.open_unix_connection(
            self.info["session_socket"], limit=1 << 24)
        return self

    async def __aexit__(self, *exc) -> None:
        if self._writer is not None:
            self._writer.close()
        await self.qmp.disconnect()
        self.qmp.remove_listener(self._events)

    # ------------------------------------------------------------------ QMP
    async def query_hash(self) -> hashquery.DeviceHash:
        """QEMU's x-query-virtio-net-hash for the NIC (it re-arms the event); the events
        that came since the last query are counted in ``.events``."""
        info = await self.qmp.execute(hashquery.COMMAND, {"path": self.nic})
        return hashquery.DeviceHash.from_qmp(info, events=len(self._events.clear()))

    async def wait_event(self, timeout: float = 30.0) -> dict:
        """The next VIRTIO_NET_HASH_CHANGED (its data: path, mechanism)."""
        try:
            ev = await asyncio.wait_for(self._events.get(), timeout)
        except asyncio.TimeoutError:
            raise SessionError(f"no {hashquery.EVENT} within {timeout:.0f} s") from None
        return dict(ev["data"])

    def pending_events(self) -> list[dict]:
        """The VIRTIO_NET_HASH_CHANGED events not yet taken, taken now."""
        return [dict(e["data"]) for e in self._events.clear()]

    # ------------------------------------------------------------------ hashlab's side
    async def _request(self, req: dict) -> dict:
        async with self._lock:
            self._writer.write(json.dumps(req).encode() + b"\n")
            await self._writer.drain()
            line = await self._reader.readline()
        if not line:
            raise SessionError("the session closed its socket")
        ans = json.loads(line)
        if ans.pop("status") != "ok":
            raise SessionError(f"session refused {req.get('op')}: {ans['error']}")
        return ans

    async def agent(self, verb: str, *args: str, timeout: float | None = None) -> dict:
        """One guest agent command (ping, info, ethtool, sh, stats, ...): rc, err, lines."""
        return await self._request({"op": "agent", "verb": verb, "args": list(args),
                                    "timeout": timeout})

    async def sh(self, command: str) -> str:
        """COMMAND in the guest's shell; its output (SessionError if it fails)."""
        r = await self.agent("sh", command)
        out = "\n".join(ln.get("out", "") for ln in r["lines"] if ln.get("kind") == "output")
        if r["rc"] != 0:
            raise SessionError(f"guest command {command!r} failed (status {r['rc']}): "
                               f"{r['err'] or out}")
        return out

    async def reconfigure(self, **step) -> dict:
        """A scenario ``reconfigure`` step (key=, table=, flow_hash=, rxhash=, queues=)
        applied with ethtool in the guest; the commands run and the new oracle."""
        return await self._request({"op": "reconfigure", "step": step})

    async def oracle(self) -> rss.RssConfig:
        """The configuration the next frames are judged with (from the guest's ethtool
        view and the driver model, never from QEMU)."""
        o = (await self._request({"op": "oracle"}))["oracle"]
        return rss.RssConfig(key=bytes.fromhex(o["key"]), hash_types=o["hash_types"],
                             table=o["table"], unclassified_queue=o["unclassified_queue"],
                             behaviour=o["behaviour"])

    async def send(self, slices: str | list[str] = "all") -> dict:
        """The corpus frames of SLICES through the tap; what the guest saw of them and
        the oracle's verdict: ok, counts, by_report, mismatches, observed."""
        return await self._request({"op": "send", "slices": slices})
