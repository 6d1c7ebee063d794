"""What a scenario run found, typed, and the ``results.json`` it is written as.

Each part is filled in by one step of the run (hashlab.run.steps); a part that is still
None was not reached (the run failed before it) and is left out of the JSON, as the
error document has always done.  ``to_json`` gives the keys in the order the file has
always had them: ``tests/data/orchestrator/`` pins it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..frames import packets
from ..host.hashquery import DeviceHash
from ..oracle import rss
from ..results import report


@dataclass
class Datapath:
    """The QEMU, kernel and accelerator this run uses, and what the scenario asked."""

    qemu: str  # stock, patched or custom
    qemu_binary: str
    qemu_version: str
    vhost: bool
    where: str  # lab or host: where this run is
    scenario_where: str
    accel: str
    host_kernel: str
    kernel_has_series: bool
    design: str | None  # the lab VM's design; None on the host
    scenario_design: str | None
    behaviour: str  # the oracle behaviour the guest is judged with

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class GuestImageInfo:
    key: str
    kernel: str
    modules: list[str]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class GuestAtBoot:
    """The driver's defaults, read back before the scenario configures anything."""

    hash_types: str
    rxhash: bool
    combined: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class GuestConfig:
    """The configuration the guest read back after the scenario configured it."""

    features: dict[str, bool]  # feature name -> negotiated, as the guest sees it
    key: str  # hex
    table: list[int]
    flows: dict[str, str]
    hash_types: str
    rxhash: bool
    combined: int
    raw: dict[str, str]  # the command outputs it was parsed from

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Negotiation:
    """RSS and HASH_REPORT as QEMU sees them (``x-query-virtio-status``)."""

    negotiated: dict[str, bool]  # QEMU's guest-features
    offered: dict[str, bool]  # QEMU's host-features

    def to_json(self) -> dict:
        return {"features": {"guest-features": self.negotiated, "host-features": self.offered}}


@dataclass
class VhostState:
    """Is vhost_net moving the packets?  From x-query-virtio-status and QEMU's fds."""

    started: bool
    vhost_dev: bool
    fds: int  # /dev/vhost-net fds QEMU holds
    acked_hash_report: bool
    kernel_offers_hash_report: bool
    nvqs: int | None
    max_queues: int | None

    @property
    def running(self) -> bool:
        return bool(self.started and self.vhost_dev and self.fds)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class OracleChoice:
    """The model the first batch is judged with, from what the guest read back."""

    key: str  # hex, as the device sees it (after the driver's key quirk)
    hash_types: str
    behaviour: str
    check_hash: bool  # the guest can see hashes (HASH_REPORT and rxhash on)
    hashes: str  # expect.hashes
    queues: str  # the queue model: table, hash or any

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ReconfigureStep:
    """One reconfiguration between batches, and what the guest read back after it."""

    batch: int
    step: str
    commands: list[dict]
    filler_sent: int
    filler_seen: int
    key: str
    table: list[int]
    combined: int
    device_types: str
    queues: str
    check_hash: bool

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Delivery:
    """Frames sent in all batches, against the guest's and the tap's counters."""

    sent: int
    guest_rx_packets: int
    guest_rx_dropped: int
    guest_rx_length_errors: int
    tap_tx_dropped: int
    trace_overrun: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Retry:
    """A boot attempt (boot_failures) or a whole run (retried_after) lost and redone."""

    attempt: int
    error: str
    log: str  # where the lost attempt's VM log was kept

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def hash_queue(e: rss.Expectation, active_queues: int, default_queue: int = 0) -> int:
    """Hash reporting without RSS on the patched eBPF program: the program returns
    ``hash & 0xffff`` as the queue and tun takes it modulo the queues in use."""
    if e.report == rss.Report.NONE:
        return default_queue
    return (e.hash & 0xFFFF) % max(active_queues, 1)


@dataclass
class Batch:
    """One batch of traffic and what the guest saw of it, with the configuration in force."""

    index: int
    frames: packets.Corpus
    observed: list[report.Observed]
    oracle: rss.RssConfig  # key, device hash types, table, behaviour
    check_hash: bool  # the guest sees hashes (HASH_REPORT, rxhash on, hashes: oracle)
    queue_model: str  # table | hash | any
    active_queues: int
    hash_report: bool  # HASH_REPORT negotiated and rxhash on (what the guest can see)

    def sent(self, oracle: rss.RssConfig | None = None, check_hash: bool | None = None,
             queue_model: str | None = None, arrival=None, known=None) -> list[report.Sent]:
        """The frames with their expectations under ORACLE (default: the run's)."""
        oracle = oracle or self.oracle
        qm = queue_model or self.queue_model
        out = []
        for f in self.frames:
            e = oracle.expect(f.data)
            if qm == "hash":
                e = rss.Expectation(e.hash, e.report, hash_queue(e, self.active_queues), e.l4)
            grp = report.desc_group(f.desc)
            out.append(report.Sent(f.id, f.slice, f.desc, len(f.data), e,
                                   arrival(f.slice) if arrival else True,
                                   known.get(grp) if known else None,
                                   check_queue=qm != "any", batch=self.index))
        return out

    def to_json(self) -> dict:
        o = self.oracle
        return {"batch": self.index, "records": [dataclasses.asdict(r) for r in self.observed],
                "oracle": {"key": o.key.hex(), "hash_types": o.hash_types, "table": o.table,
                           "behaviour": o.behaviour,
                           "unclassified_queue": o.unclassified_queue},
                "check_hash": self.check_hash, "hash_report": self.hash_report,
                "queue_model": self.queue_model, "active_queues": self.active_queues}


# The parts of a run in results.json's order; None (not reached) is left out, except
# for the scenario file, which is always there.
PARTS = ("scenario_file", "retried_after", "datapath", "guest_image", "reconfigure", "tap",
         "boot_failures", "qemu_cmdline", "boot_seconds", "guest_at_boot", "configure",
         "guest", "negotiation", "vhost", "guest_kernel", "rss_key_quirk", "driver_commands",
         "oracle", "device_hash", "delivery", "load", "diagnosis", "qemu_warnings")
JSON_KEYS = {"negotiation": "qemu"}  # the JSON's name where it differs from the attribute


def _json(value):
    if isinstance(value, list):
        return [_json(v) for v in value]
    return value.to_json() if hasattr(value, "to_json") else value


@dataclass
class RunResult:
    """A run, filled in step by step; ok, comparison and seconds once it has ended."""

    scenario: str
    out_dir: Path
    ok: bool = False
    comparison: report.Comparison | None = None
    checks: list[tuple[str, str | None]] = field(default_factory=list)
    seconds: float = 0.0
    batches: list[Batch] = field(default_factory=list)
    scenario_file: str | None = None
    retried_after: list[Retry] = field(default_factory=list)
    datapath: Datapath | None = None
    guest_image: GuestImageInfo | None = None
    reconfigure: list[ReconfigureStep] | None = None
    tap: str | None = None
    boot_failures: list[Retry] | None = None
    qemu_cmdline: list[str] | None = None
    boot_seconds: float | None = None
    guest_at_boot: GuestAtBoot | None = None
    configure: list[dict] | None = None  # the guest commands run, with their output
    guest: GuestConfig | None = None
    negotiation: Negotiation | None = None
    vhost: VhostState | None = None
    guest_kernel: str | None = None
    rss_key_quirk: str | None = None
    driver_commands: list[str] | None = None
    oracle: OracleChoice | None = None
    # x-query-virtio-net-hash after the configuration and each reconfiguration; None:
    # QEMU has no such command (stock QEMU)
    device_hash: list[DeviceHash] | None = None
    delivery: Delivery | None = None
    load: dict | None = None  # hashlab.run.load.run's figures
    diagnosis: str | None = None
    qemu_warnings: list[str] | None = None

    def _parts_json(self) -> dict:
        out = {"scenario": self.scenario}
        for name in PARTS:
            value = getattr(self, name)
            if value is not None or name == "scenario_file":
                out[JSON_KEYS.get(name, name)] = _json(value)
        return out

    def _checks_json(self) -> list[dict]:
        return [{"name": n, "ok": f is None, "failure": f} for n, f in self.checks]

    def to_json(self) -> dict:
        """results.json of a run that ended (passed or failed its checks)."""
        return {"scenario": self.scenario, "ok": self.ok, "seconds": round(self.seconds, 1),
                "checks": self._checks_json(), **self._parts_json(),
                "comparison": report.to_json(self.comparison) if self.comparison else None,
                "observed": [b.to_json() for b in self.batches]}

    def error_json(self, error: BaseException) -> dict:
        """results.json of a run that died of ERROR: what it found up to then."""
        return {"scenario": self.scenario, "ok": False, "seconds": round(self.seconds, 1),
                "error": {"type": type(error).__name__, "message": str(error)},
                "checks": self._checks_json(), **self._parts_json(), "comparison": None}

    def summary(self) -> str:
        lines = [f"scenario {self.scenario}: {'PASS' if self.ok else 'FAIL'} "
                 f"in {self.seconds:.1f}s"]
        dp = self.datapath
        if dp:
            lines.append(f"  datapath: QEMU {dp.qemu} ({dp.qemu_version}), vhost "
                         f"{'on' if dp.vhost else 'off'}, {dp.accel} on "
                         f"{dp.host_kernel} ("
                         f"{(dp.design or 'a') + ' series' if dp.kernel_has_series else 'no series'}"
                         f"), where {dp.where}")
        for name, fail in self.checks:
            lines.append(f"  [{'ok' if fail is None else 'FAIL'}] {name}"
                         + ("" if fail is None else f": {fail}"))
        g, q = self.guest, self.negotiation
        if g and q:
            lines.append("  negotiated (guest / QEMU guest-features / QEMU offers): " + ", ".join(
                f"{f} {_yn(g.features[f])}/{_yn(q.negotiated[f])}/{_yn(q.offered[f])}"
                for f in ("RSS", "HASH_REPORT")))
            lines.append(f"  guest {self.guest_kernel or '?'}: {g.combined} "
                         f"queue(s), rxhash {'on' if g.rxhash else 'off'}, hash types "
                         f"{g.hash_types}, key quirk {self.rss_key_quirk}; "
                         f"oracle {self.oracle.behaviour if self.oracle else None}")
        vh = self.vhost
        if vh:
            lines.append(f"  vhost: started {_yn(vh.started)}, vhost-dev "
                         f"{_yn(vh.vhost_dev)}, /dev/vhost-net fds {vh.fds}, acked "
                         f"HASH_REPORT {_yn(vh.acked_hash_report)}")
        for dh in self.device_hash or []:
            lines.append(f"  QEMU's hashing ({dh.when}): {dh.label}, RSS "
                         f"{'on' if dh.rss_enabled else 'off'}, hash reports "
                         f"{'on' if dh.hash_report_enabled else 'off'}, "
                         f"{dh.events} {'event' if dh.events == 1 else 'events'}")
        for w in self.qemu_warnings or []:
            lines.append(f"  QEMU says: {w}")
        for b in self.retried_after:
            lines.append(f"  run {b.attempt} failed and was run again: {b.error[:160]}"
                         f" (log {b.log})")
        for b in self.boot_failures or []:
            lines.append(f"  boot attempt {b.attempt} failed and was retried: {b.error[:160]}"
                         f" (log {b.log})")
        d = self.delivery
        if d:
            lines.append(f"  delivery: {d.sent} sent, guest rx_packets +{d.guest_rx_packets}"
                         f", tap tx_dropped {d.tap_tx_dropped}, trace overrun "
                         f"{d.trace_overrun}")
        ld = self.load
        if ld:
            m, t = ld["median"], ld["totals"]
            lines.append(f"  load: {len(ld['rounds'])} x {ld['frames_per_round']} frames; median "
                         f"offered {m['offered_fps']} fps, delivered {m['delivered_fps']} fps, "
                         f"right {m['right_fps']} fps; {t['right']} right, {t['wrong']} wrong, "
                         f"{t['tap_tx_dropped']} dropped by the tap, {t['guest_rx_dropped']} "
                         f"by the guest; QEMU peak RSS {ld['qemu_peak_rss_kib']} KiB")
        for r in self.reconfigure or []:
            lines.append(f"  batch {r.batch}: reconfigured ({r.step}) with "
                         f"{r.filler_sent} filler frames flowing ({r.filler_seen} seen); "
                         f"device types {r.device_types}")
        if self.comparison is not None:
            lines.append("")
            lines.append(report.render_table(self.comparison))
        lines.append("")
        lines.append(f"results: {self.out_dir}/results.json, junit.xml; VM log: "
                     f"{self.out_dir}/qemu.log")
        return "\n".join(lines)


def _yn(b: bool) -> str:
    return "yes" if b else "no"
