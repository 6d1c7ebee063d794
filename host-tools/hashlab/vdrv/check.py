"""Configure the device like a guest would, send a corpus, and compare with the oracle.

Shared by the qtest tests and reusable with another QEMU (``NetRig(qemu_binary=...)``)
and another oracle behaviour (``"spec"``, ``"qemu-ebpf"``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..oracle import rss
from ..frames.packets import CorpusFrame
from .net import Ack, RxFrame
from .rig import NetRig


@dataclass(frozen=True)
class HashSetup:
    """One device configuration: ``mode`` is ``"rss"`` (RSS_CONFIG) or ``"hash"`` (HASH_CONFIG)."""

    name: str
    hash_types: int
    key: bytes = rss.MS_KEY
    mode: str = "rss"
    table: tuple[int, ...] = tuple(i % 4 for i in range(128))
    unclassified_queue: int = 0
    pairs: int = 4  # max_tx_vq (RSS_CONFIG) / the queue pairs in use

    def apply(self, rig: NetRig) -> int:
        if self.mode == "rss":
            return rig.net.rss_config(self.hash_types, list(self.table), self.key,
                                      unclassified_queue=self.unclassified_queue, max_tx_vq=self.pairs)
        if self.mode == "hash":
            ack = rig.net.vq_pairs_set(self.pairs) if len(rig.net.rxqs) > 1 else Ack.OK
            return ack if ack != Ack.OK else rig.net.hash_config(self.hash_types, self.key)
        raise ValueError(f"mode must be rss or hash, not {self.mode!r}")

    def expect(self, frame: bytes, behaviour: str = "qemu-software") -> rss.Expectation:
        h, r = rss.hash_packet(frame, self.key, self.hash_types, behaviour)
        if self.mode == "rss":
            q = rss.select_queue(h, r, list(self.table), self.unclassified_queue) % self.pairs
        else:
            q = -1  # no steering: the queue the backend delivered on
        return rss.Expectation(h, r, q, rss.Report(r).is_l4)


@dataclass
class Observation:
    frame: CorpusFrame
    rx: RxFrame | None  # None: never arrived

    def got(self) -> tuple[int, int, int] | None:
        return None if self.rx is None else (self.rx.hash_value, self.rx.hash_report, self.rx.queue)


@dataclass
class Outcome:
    setup: HashSetup
    observations: list[Observation]
    foreign: list[RxFrame] = field(default_factory=list)

    @property
    def received(self) -> list[Observation]:
        return [o for o in self.observations if o.rx is not None]

    @property
    def missing(self) -> list[Observation]:
        return [o for o in self.observations if o.rx is None]

    def reports(self) -> Counter:
        return Counter(rss.Report(o.rx.hash_report).name for o in self.received
                       if o.rx.hash_report in rss.Report._value2member_map_)

    def mismatches(self, behaviour: str = "qemu-software", skip=lambda f: False) -> list[str]:
        """One line per received frame whose (hash, report, queue) differs from the oracle."""
        out = []
        for o in self.received:
            if skip(o.frame):
                continue
            e = self.setup.expect(o.frame.data, behaviour)
            q_ok = (e.queue == -1 and 0 <= o.rx.queue < self.setup.pairs) or e.queue == o.rx.queue
            if (o.rx.hash_value, o.rx.hash_report) != (e.hash, e.report) or not q_ok:
                out.append(f"{self.setup.name}: frame {o.frame.id} ({o.frame.desc}): got hash "
                           f"{o.rx.hash_value:#010x} report {o.rx.hash_report} queue {o.rx.queue}, "
                           f"{behaviour} oracle says {e.hash:#010x} report {e.report} queue {e.queue}")
        return out


def run_setup(rig: NetRig, setup: HashSetup, frames: Sequence[CorpusFrame]) -> Outcome:
    """Apply ``setup`` (its ack must be OK) and send ``frames``; what came back, per frame."""
    ack = setup.apply(rig)
    if ack != Ack.OK:
        raise AssertionError(f"{setup.name}: the device answered {ack!r} to the configuration")
    res = rig.run([f.data for f in frames])
    by_index = dict(res.matched)
    obs = [Observation(f, by_index.get(i)) for i, f in enumerate(frames)]
    return Outcome(setup, obs, res.foreign)
