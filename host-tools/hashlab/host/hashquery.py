"""QEMU's own account of a virtio-net device's receive hashing: ``x-query-virtio-net-hash``.

The patched QEMU (qemu/patches/0013) answers, for a device path, which mechanism hashes
the packets and picks the queue (``none``, ``software``, ``ebpf``, ``ebpf-report``,
``tun``), which eBPF program it loaded (``steering``, ``vnet-hash``, ``kfunc``), and the
guest's configuration as the device holds it (hash types, key, indirection table).  It
emits ``VIRTIO_NET_HASH_CHANGED`` once when that state changes, then not again until the
query has been issued: so "an event since the last query" is a yes/no question.

Stock QEMU and QEMU builds before that patch have no such command: ``query`` returns
None for them, never a guess.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from qemu.qmp import ExecuteError

from ..oracle import rss, tunnel

COMMAND = "x-query-virtio-net-hash"
EVENT = "VIRTIO_NET_HASH_CHANGED"
MECHANISMS = ("none", "software", "ebpf", "ebpf-report", "tun")
PROGRAMS = ("steering", "vnet-hash", "kfunc")
# QAPI VirtioNetHashType: the VIRTIO_NET_RSS_HASH_TYPE_* bits, in bit order.
TYPE_NAMES = {t.name.lower().replace("_", "-"): int(t) for t in rss.HashType}


# QAPI VirtioNetTunnelType (qemu/patches 0014): the VIRTIO_NET_HASH_TUNNEL_TYPE_* bits.
TUNNEL_NAMES = {t.name.lower().replace("_", "-"): int(t) for t in tunnel.TunnelType}


def types_mask(names: list[str]) -> int:
    """The VIRTIO_NET_RSS_HASH_TYPE_* mask of the query's type names."""
    return sum(TYPE_NAMES[n] for n in names)


def tunnel_mask(names: list[str]) -> int:
    """The VIRTIO_NET_HASH_TUNNEL_TYPE_* mask of the query's tunnel type names."""
    return sum(TUNNEL_NAMES[n] for n in names)


def label(mechanism: str, program: str | None) -> str:
    """``ebpf-report/vnet-hash``, ``tun``, ...: the mechanism, with the eBPF program when
    the mechanism is the program (a loaded but detached program is not named)."""
    return f"{mechanism}/{program}" if mechanism.startswith("ebpf") and program else mechanism


def valid_label(text: str) -> bool:
    mech, _, prog = text.partition("/")
    return mech in MECHANISMS and (not prog or (mech.startswith("ebpf") and prog in PROGRAMS))


@dataclass
class DeviceHash:
    """One answer of the query, in hashlab's terms."""

    mechanism: str
    ebpf_program: str | None
    rss_enabled: bool
    hash_report_enabled: bool
    hash_types: int
    key: str | None  # hex, the device's whole key buffer (40 bytes)
    table: list[int]
    unclassified_queue: int
    tunnel_types: int = 0  # inner header hash (absent before qemu/patches 0014)
    events: int = 0  # VIRTIO_NET_HASH_CHANGED since the previous query
    when: str = ""  # which point of the run (configured, reconfigure_1, ...)

    @classmethod
    def from_qmp(cls, info: dict, events: int = 0, when: str = "") -> "DeviceHash":
        return cls(mechanism=info["mechanism"], ebpf_program=info.get("ebpf-program"),
                   rss_enabled=info["rss-enabled"],
                   hash_report_enabled=info["hash-report-enabled"],
                   hash_types=types_mask(info["hash-types"]), key=info.get("key"),
                   table=list(info["indirection-table"]),
                   unclassified_queue=info["unclassified-queue"],
                   tunnel_types=tunnel_mask(info.get("tunnel-types", [])), events=events,
                   when=when)

    @property
    def label(self) -> str:
        return label(self.mechanism, self.ebpf_program)

    def differences(self, oracle: rss.RssConfig) -> list[str]:
        """Where the device's configuration differs from the oracle's (which was set up
        from what the guest read back through ethtool)."""
        if not (self.rss_enabled or self.hash_report_enabled):
            return []
        out = []
        if self.hash_types != oracle.hash_types:
            out.append(f"device hash types {rss.hash_type_names(self.hash_types)}, oracle "
                       f"{rss.hash_type_names(oracle.hash_types)}")
        if self.key is not None and not self.key.startswith(oracle.key.hex()):
            out.append(f"device key {self.key}, oracle {oracle.key.hex()}")
        if self.rss_enabled:
            if self.table != list(oracle.table):
                out.append(f"device table ({len(self.table)}) {self.table[:8]}..., oracle "
                           f"({len(oracle.table)}) {list(oracle.table)[:8]}...")
            if self.unclassified_queue != oracle.unclassified_queue:
                out.append(f"device unclassified queue {self.unclassified_queue}, oracle "
                           f"{oracle.unclassified_queue}")
        return out

    def to_json(self) -> dict:
        d = asdict(self)
        d["hash_types"] = rss.hash_type_names(self.hash_types)
        d["label"] = self.label
        return d


async def query(vm, path: str) -> dict | None:
    """The query's answer for PATH from a ``Machine``; None when QEMU has no such command."""
    try:
        return await vm.qmp_cmd(COMMAND, path=path)
    except ExecuteError as e:
        if e.error_class == "CommandNotFound":
            return None
        raise


def query_sync(qt, path: str) -> dict | None:
    """The same from a ``QtestMachine`` (synchronous QMP)."""
    from .qtest import QtestError

    try:
        return qt.qmp(COMMAND, path=path)
    except QtestError as e:
        if "CommandNotFound" in str(e) or "has not been found" in str(e):
            return None
        raise
