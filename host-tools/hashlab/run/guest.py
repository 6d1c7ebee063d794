"""The Linux guest's side of a run: configure virtio_net with ethtool, read it back.

Everything goes through the agent (guest-tests/agent) of a running ``Machine``.  What
the guest reports back (key, indirection table, hash types, negotiated features) is
what the oracle uses, so a configuration step that silently did nothing shows up as a
config mismatch rather than as hash mismatches.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field

from ..results import report
from ..oracle import rss
from ..host.machine import Machine
from ..host.qemu_process import load_factor
from .scenario import GuestSpec

IFNAME = "eth0"
VIRTIO_NET_F_CTRL_VQ = 17
VIRTIO_NET_F_MQ = 22
VIRTIO_F_VERSION_1 = 32
VIRTIO_NET_F_HASH_REPORT = 57
VIRTIO_NET_F_RSS = 60
FEATURE_NAMES = {VIRTIO_NET_F_CTRL_VQ: "CTRL_VQ", VIRTIO_NET_F_MQ: "MQ",
                 VIRTIO_F_VERSION_1: "VERSION_1", VIRTIO_NET_F_HASH_REPORT: "HASH_REPORT",
                 VIRTIO_NET_F_RSS: "RSS"}
# The Linux driver's unclassified queue (virtnet_init_default_rss sets 0).
LINUX_UNCLASSIFIED_QUEUE = 0

# Linux 6.12.91 .. 6.12.113 (stable backport of "virtio_net: Use new RSS config structs"
# without "virtio_net: Fix misalignment bug in struct virtnet_info", 6.12.114): the key
# the driver keeps (and ethtool -x shows) sits one byte after the RSS_CONFIG trailer's
# hash_key_data, so the device receives a padding byte (0) followed by the first 39 key
# bytes.  Measured here: Debian's 6.12.95 cloud kernel with stock QEMU 10.0.2 hashes with
# exactly that key.
MISALIGNED_KEY_RANGES = [((6, 12, 91), (6, 12, 114))]


def _kver(version: str) -> tuple[int, int, int] | None:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)) if m else None


def rss_key_quirk(kernel_version: str, setting: str = "auto") -> str:
    """'misaligned' when the guest driver sends the key one byte off, else 'off'."""
    if setting != "auto":
        return setting
    v = _kver(kernel_version)
    if v and any(lo <= v < hi for lo, hi in MISALIGNED_KEY_RANGES):
        return "misaligned"
    return "off"


def device_key(guest_key: bytes, quirk: str) -> bytes:
    """The key the device receives, given the key the guest reports and the quirk."""
    if quirk == "misaligned":
        return b"\0" + guest_key[:-1]
    return guest_key


FLOW_TYPES = {  # ethtool flow -> (address-only type, 4-tuple type)
    "tcp4": (rss.HashType.IPv4, rss.HashType.TCPv4),
    "udp4": (rss.HashType.IPv4, rss.HashType.UDPv4),
    "tcp6": (rss.HashType.IPv6, rss.HashType.TCPv6),
    "udp6": (rss.HashType.IPv6, rss.HashType.UDPv6),
}


def feature_bits(bitstring: str) -> set[int]:
    """``/sys/class/net/X/device/features`` ('1' at index i = feature bit i) as a set."""
    return {i for i, c in enumerate(bitstring.strip()) if c == "1"}


def parse_flow_hash(text: str) -> str:
    """``ethtool -n X rx-flow-hash FLOW`` output -> 'sdfn', 'sd' or 'none'."""
    has_ip = "IP SA" in text and "IP DA" in text
    has_l4 = "L4 bytes 0 & 1" in text and "L4 bytes 2 & 3" in text
    if has_ip and has_l4:
        return "sdfn"
    if has_ip:
        return "sd"
    return "none"


def hash_types_from_flows(flows: dict[str, str]) -> int:
    """The hash types the driver has saved, from its four rx-flow-hash answers.

    virtio_net answers 'sdfn' for a flow when the 4-tuple type is on, 'sd' when only the
    address type is (e.g. tcp4 sd -> IPv4 without TCPv4).
    """
    types = 0
    for flow, val in flows.items():
        ip, l4 = FLOW_TYPES[flow]
        if val in ("sd", "sdfn"):
            types |= ip
        if val == "sdfn":
            types |= l4
    return int(types)


@dataclass
class GuestState:
    features: set[int]
    key: bytes
    table: list[int]
    flows: dict[str, str]
    hash_types: int  # as the driver saved them
    rxhash: bool
    combined: int
    raw: dict[str, str] = field(default_factory=dict)

    def feature_view(self) -> dict[str, bool]:
        return {name: bit in self.features for bit, name in FEATURE_NAMES.items()}


def apply_flow(saved: int, flow: str, fields: str) -> int:
    """The driver's saved hash types after ``ethtool -N X rx-flow-hash FLOW FIELDS``
    (virtnet_set_hashflow: 'sd' keeps only the address type, 'sdfn' adds the 4-tuple)."""
    ip, l4 = FLOW_TYPES[flow]
    saved &= ~int(ip | l4)
    saved |= int(ip) | (int(l4) if fields == "sdfn" else 0)
    return saved


@dataclass
class DriverModel:
    """What Linux 6.12's virtio_net has told the device, command by command.

    The device hashes with the types of the last RSS_CONFIG / HASH_CONFIG the driver
    sent ("commit"), and QEMU turns RSS *and* hash reporting off on VQ_PAIRS_SET (the
    last MQ command wins), which the driver sends for ``ethtool -L`` when it has no RSS
    or the indirection table was set by the user.  The driver's rules:

    * probe: commit the supported types, then set the queue pairs (RSS: commit again;
      otherwise VQ_PAIRS_SET);
    * ``-K rxhash on|off`` (a change): commit the saved types, or none (0);
    * ``-N rx-flow-hash``: new saved types go into the header, committed only with rxhash on;
    * ``-X`` (key and/or table): commit what the header holds;
    * ``-L`` (a change): RSS and no user table: commit; else VQ_PAIRS_SET.
    """

    has_rss: bool
    has_hash_report: bool
    multiqueue: bool
    saved: int
    hdr: int
    rxhash: bool
    queues: int
    committed: int = 0
    hashing: bool = False
    rxfh_configured: bool = False
    commands: list[str] = field(default_factory=list)

    @classmethod
    def at_boot(cls, gs0: "GuestState") -> "DriverModel":
        f = gs0.features
        m = cls(has_rss=VIRTIO_NET_F_RSS in f, has_hash_report=VIRTIO_NET_F_HASH_REPORT in f,
                multiqueue=VIRTIO_NET_F_MQ in f and VIRTIO_NET_F_CTRL_VQ in f,
                saved=gs0.hash_types, hdr=gs0.hash_types, rxhash=gs0.rxhash,
                queues=gs0.combined)
        if m.has_rss or m.has_hash_report:
            m._commit("probe")
            m._set_queues(gs0.combined, "probe")
        return m

    @property
    def device_types(self) -> int:
        """The hash types the device uses now (0: hashing off)."""
        return self.committed if self.hashing else 0

    def _commit(self, why: str) -> None:
        self.committed = self.hdr
        self.hashing = True
        kind = "RSS_CONFIG" if self.has_rss else "HASH_CONFIG"
        self.commands.append(f"{why}: {kind} types {rss.hash_type_names(self.hdr)}")

    def _set_queues(self, n: int, why: str) -> None:
        if not self.multiqueue:
            return
        if self.has_rss and not self.rxfh_configured:
            self._commit(why)
        else:
            self.hashing = False
            self.commands.append(f"{why}: VQ_PAIRS_SET {n} (QEMU: RSS and hash reporting off)")

    def channels(self, n: int) -> None:
        if n != self.queues:
            self.queues = n
            self._set_queues(n, f"ethtool -L combined {n}")

    def set_rxhash(self, on: bool) -> None:
        if on != self.rxhash:
            self.rxhash = on
            self.hdr = self.saved if on else 0
            if self.has_rss or self.has_hash_report:
                self._commit(f"ethtool -K rxhash {'on' if on else 'off'}")

    def flow(self, flow: str, fields: str) -> None:
        new = apply_flow(self.saved, flow, fields)
        if new != self.saved:
            self.saved = new
            self.hdr = new
            if self.rxhash:
                self._commit(f"ethtool -N {flow} {fields}")

    def rxfh(self, table: bool) -> None:
        if table:
            self.rxfh_configured = True
        self._commit("ethtool -X")


def _xargs(key: bytes | None, table, queues: int, has_rss: bool) -> tuple[list[str], bool]:
    """``ethtool -X`` arguments for KEY/TABLE; the table only with RSS."""
    xargs: list[str] = []
    if key is not None:
        xargs += ["hkey", ":".join(f"{b:02x}" for b in key)]
    with_table = False
    if has_rss and table is not None:
        if isinstance(table, list):
            xargs += ["weight", *map(str, table)]
            with_table = True
        elif table.startswith("equal"):
            xargs += ["equal", table.split(":", 1)[1] if ":" in table else str(queues)]
            with_table = True
    return xargs, with_table


async def configure(vm: Machine, spec: GuestSpec, queues: int,
                    model: DriverModel | None = None) -> list[dict]:
    """Apply SPEC in the guest; returns the commands run with their output.

    MODEL, when given, follows every command (see DriverModel).  Without RSS (hash
    reporting only) the driver has no indirection table: a table in SPEC is skipped.
    """
    log: list[dict] = []
    has_rss = model.has_rss if model is not None else True

    async def run(verb: str, *args: str) -> None:
        r = await vm.agent(verb, *args)
        log.append({"cmd": f"{verb} {' '.join(args)}", "rc": r.rc, "out": r.output})

    await run("sh", f"ip link set {IFNAME} up promisc on; "
                    f"echo 1 > /proc/sys/net/ipv6/conf/{IFNAME}/disable_ipv6")
    await run("ethtool", "-L", IFNAME, "combined", str(queues))
    if model is not None:
        model.channels(queues)
    await run("ethtool", "-K", IFNAME, "rxhash", "on" if spec.rxhash else "off")
    if model is not None:
        model.set_rxhash(spec.rxhash)
    xargs, with_table = _xargs(spec.key_bytes(), spec.table, queues, has_rss)
    if not has_rss and spec.table not in ("driver", None) and spec.table != "equal":
        log.append({"cmd": f"(table {spec.table} skipped: no RSS)", "rc": 0, "out": ""})
    if xargs:
        await run("ethtool", "-X", IFNAME, *xargs)
        if model is not None:
            model.rxfh(with_table)
    for flow, fields in spec.flow_hash.items():
        await run("ethtool", "-N", IFNAME, "rx-flow-hash", flow, fields)
        if model is not None:
            model.flow(flow, fields)
    return log


async def reconfigure(vm: Machine, step, model: DriverModel) -> list[dict]:
    """Apply one ``reconfigure`` step (hashlab.run.scenario.ReconfigStep) in the guest."""
    log: list[dict] = []

    async def run(verb: str, *args: str) -> None:
        r = await vm.agent(verb, *args)
        log.append({"cmd": f"{verb} {' '.join(args)}", "rc": r.rc, "out": r.output})

    if step.queues is not None:
        await run("ethtool", "-L", IFNAME, "combined", str(step.queues))
        model.channels(step.queues)
    if step.rxhash is not None:
        await run("ethtool", "-K", IFNAME, "rxhash", "on" if step.rxhash else "off")
        model.set_rxhash(step.rxhash)
    xargs, with_table = _xargs(step.key_bytes(), step.table, model.queues, model.has_rss)
    if xargs:
        await run("ethtool", "-X", IFNAME, *xargs)
        model.rxfh(with_table)
    for flow, fields in step.flow_hash.items():
        await run("ethtool", "-N", IFNAME, "rx-flow-hash", flow, fields)
        model.flow(flow, fields)
    return log


_KEY_RE = re.compile(r"RSS hash key:\s*\n?\s*([0-9a-fA-F:]+)")


def parse_rss(text: str) -> tuple[bytes, list[int]]:
    """``ethtool -x``: (key, table); without RSS the driver has no table: ([0])."""
    try:
        return rss.parse_ethtool_x(text)
    except ValueError:
        m = _KEY_RE.search(text)
        if not m:
            raise
        return rss.parse_key(m.group(1)), []


async def readback(vm: Machine) -> GuestState:
    info = (await vm.agent("info")).kind("info")[0]
    raw = {"features": info["features"]}
    raw["ethtool -x"] = (await vm.agent("ethtool", "-x", IFNAME)).output
    raw["ethtool -l"] = (await vm.agent("ethtool", "-l", IFNAME)).output
    raw["ethtool -k"] = (await vm.agent("ethtool", "-k", IFNAME)).output
    flows = {}
    for flow in FLOW_TYPES:
        out = (await vm.agent("ethtool", "-n", IFNAME, "rx-flow-hash", flow)).output
        raw[f"ethtool -n rx-flow-hash {flow}"] = out
        flows[flow] = parse_flow_hash(out)
    key, table = parse_rss(raw["ethtool -x"])
    rxhash = any(ln.strip() == "receive-hashing: on" for ln in raw["ethtool -k"].splitlines())
    combined = 0
    cur = raw["ethtool -l"].split("Current hardware settings:", 1)[-1]
    for ln in cur.splitlines():
        if ln.strip().startswith("Combined:"):
            combined = int(ln.split(":", 1)[1])
    return GuestState(feature_bits(info["features"]), key, table, flows,
                      hash_types_from_flows(flows), rxhash, combined, raw)


# --------------------------------------------------------------------------- traffic


async def wait_rx(vm: Machine, baseline: int, n_sent: int, timeout: float,
                  settle: float = 0.5) -> int:
    """Poll the guest's rx_packets until all frames are in or the count stops moving.

    Reaching N_SENT is not enough when other frames may still trickle in (filler traffic
    from a reconfiguration): then the count must also stay put for SETTLE seconds."""
    deadline = time.monotonic() + timeout * load_factor()
    last, still = -1, 0
    while True:
        st = (await vm.agent("stats")).kind("stats")[0]
        got = st["rx_packets"] - baseline
        if got >= n_sent:
            if not settle or got == last:
                return got
            last = got
            await asyncio.sleep(settle)
            continue
        still = still + 1 if got == last else 0
        if still >= 3 or time.monotonic() > deadline:
            return got
        last = got
        await asyncio.sleep(1.0)


async def collect(vm: Machine) -> tuple[list[report.Observed], int | None]:
    """The guest's records since the last collect (the trace buffer is cleared), and how
    many trace events were lost (None: not reported)."""
    col = await vm.agent("collect", timeout=120)
    ts = col.kind("trace_stats")
    return [report.Observed.from_agent(r) for r in col.kind("rx")], \
        (ts[0]["overrun"] if ts else None)
