"""A BPF RSS program against the oracle, frame by frame (differential fuzzing).

The program is QEMU's ``rss.bpf.o`` (or any object with the same three maps and
result convention, e.g. the bench's prototype), loaded with :mod:`hashlab.host.bpf`, its
maps filled per :class:`Config` the way QEMU fills them, and every frame run through
``BPF_PROG_TEST_RUN`` by the ``hashlab-testrun`` helper (:mod:`.testrun`).  What it
returns is compared with the oracle (``rss.hash_info`` with ``behaviour``, by default
``"hashlab-ebpf"``: the spec plus the program's named parser bounds) and
``select_queue``:

* ``form="vnet_hash"`` (``BPF_PROG_TYPE_VNET_HASH``, lab kernel): hash value, report
  type and queue, from ``ctx_out``;
* ``form="socket"`` (a socket filter, any kernel): the queue only (the return value).
  A hash-only configuration (``redirect=False``) makes the queue the hash's low 16
  bits, which is what makes this form worth fuzzing too;
* ``form="kfunc"`` (the same socket filter on the ``kfunc`` kernel): hash value and
  report type as the program hands them to ``bpf_skb_set_vnet_hash()``, caught by a
  kprobe (:mod:`.kfunc`), and the queue from the return value.

Every (frame, configuration) run ends in exactly one bucket of :class:`Outcome`:
refused by the kernel (with the reason), matched, matched where the spec and the
oracle differ (counted per named divergence), explained by a pinned program bug
(:data:`PROGRAM_BUGS`), or a mismatch.
"""

from __future__ import annotations

import errno as errno_mod
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ..host import bpf
from ..oracle import rss, tunnel
from ..oracle.rss import Report
from . import testrun


@dataclass(frozen=True)
class Config:
    """One configuration of the program's maps (what QEMU writes for RSS_CONFIG /
    HASH_CONFIG)."""

    name: str
    key: bytes
    types: int
    table: tuple[int, ...] = (0,)
    default_queue: int = 0
    redirect: bool = True  # RSS_CONFIG; False: HASH_CONFIG, hash reporting only
    populate_hash: bool = True
    tunnel_types: int = 0  # HASH_TUNNEL_SET: hash these encapsulations' inner header

    def apply(self, obj: bpf.BpfObject) -> None:
        bpf.configure_rss(obj, self.key, self.types, list(self.table), self.default_queue,
                          redirect=self.redirect, populate_hash=self.populate_hash,
                          tunnel_types=self.tunnel_types)

    def expect(self, hash_value: int, report: int) -> tuple[int, int, int]:
        """(hash, report, queue) the program must produce for the oracle's answer."""
        if not self.redirect and not self.populate_hash:
            return 0, 0, self.default_queue
        if report == Report.NONE:
            return 0, 0, self.default_queue
        if self.redirect and not self.populate_hash:
            # RSS without hash reporting: the hash picks the queue and is not reported
            return 0, 0, self.table[hash_value & (len(self.table) - 1)]
        if self.redirect:
            return hash_value, report, self.table[hash_value & (len(self.table) - 1)]
        # hash reporting without RSS: the queue is the hash's low 16 bits (tun takes
        # it modulo the number of queues)
        return hash_value, report, hash_value & 0xFFFF


# --------------------------------------------------------------------------- refusals

# PAGE_SIZE - NET_SKB_PAD - SKB_DATA_ALIGN(sizeof(struct skb_shared_info)) on x86_64 is
# 3712; a little slack for other configurations.
TEST_RUN_MAX_FRAME = 3500


def refusal_reason(frame: bytes, err: int) -> str:
    """Why BPF_PROG_TEST_RUN refused ``frame``; a name for the expected cases
    (bpf_prog_test_run_skb: at least 14 bytes; an untagged IPv4/IPv6 frame needs its
    fixed IP header; bpf_test_init: the frame must fit one page with the skb's
    headroom and shared info, about 3.7 KiB), ``unexpected errno N`` otherwise."""
    if err == errno_mod.EINVAL:
        if len(frame) < 14:
            return "einval-shorter-than-ethernet"
        if len(frame) > TEST_RUN_MAX_FRAME:
            return "einval-larger-than-a-page"
        ethertype = struct.unpack_from("!H", frame, 12)[0]
        need = {0x0800: 20, 0x86DD: 40}.get(ethertype)
        if need is not None and len(frame) - 14 < need:
            return "einval-short-ip-header"
    return f"unexpected errno {err} ({errno_mod.errorcode.get(err, '?')})"


# --------------------------------------------------------------------------- pinned bugs


@dataclass(frozen=True)
class ProgramBug:
    """A way the program is wrong (reported, to be fixed in qemu/patches): the frames it
    hits and what the program wrongly answers on them, so that its mismatches are told
    apart from new ones."""

    name: str
    what: str
    hits: Callable[[rss.FrameInfo | None], bool]  # on the oracle's parse
    wrong: Callable[[Config], tuple[int, int, int]]  # the program's (wrong) answer


PROGRAM_BUGS: dict[str, ProgramBug] = {}
"""Pinned program bugs by name (none once qemu/patches is fixed)."""


def pin(bug: ProgramBug) -> ProgramBug:
    PROGRAM_BUGS[bug.name] = bug
    return bug


# None pinned.  The last one, "rss-bpf-ext-chain-16-refused" (parse_ipv6_ext gave a chain
# of exactly 16 extension headers no hash), is fixed in qemu/patches 0001; the 15/16/17
# boundary cases in test_program_fuzz.REGRESSION_CASES keep it fixed.


# --------------------------------------------------------------------------- the run


@dataclass
class Mismatch:
    label: str
    config: str
    frame: bytes
    got: tuple[int, int, int]  # (hash, report, queue); hash/report None-ish for socket form
    want: tuple[int, int, int]

    def __str__(self) -> str:
        g, w = self.got, self.want
        return (f"{self.label} [{self.config}]: got hash={g[0]:#010x} report={g[1]} queue={g[2]}, "
                f"oracle hash={w[0]:#010x} report={w[1]} queue={w[2]}  frame={self.frame.hex()}")


@dataclass
class Outcome:
    form: str
    behaviour: str
    frames: int = 0  # distinct frames
    runs: int = 0  # (frame, configuration) pairs tried
    refused: Counter = field(default_factory=Counter)  # reason -> runs
    compared: int = 0
    matched: int = 0
    by_report: Counter = field(default_factory=Counter)  # oracle report name -> runs compared
    divergences: Counter = field(default_factory=Counter)  # named divergence -> runs where it mattered
    bugs: Counter = field(default_factory=Counter)  # pinned bug -> runs it explained
    mismatches: list[Mismatch] = field(default_factory=list)
    n_mismatches: int = 0
    seconds: dict = field(default_factory=dict)

    @property
    def unexpected_refusals(self) -> int:
        return sum(n for r, n in self.refused.items() if r.startswith("unexpected"))

    def merge(self, other: "Outcome") -> None:
        self.frames += other.frames
        self.runs += other.runs
        self.refused.update(other.refused)
        self.compared += other.compared
        self.matched += other.matched
        self.by_report.update(other.by_report)
        self.divergences.update(other.divergences)
        self.bugs.update(other.bugs)
        self.mismatches += other.mismatches
        self.n_mismatches += other.n_mismatches
        for k, v in other.seconds.items():
            self.seconds[k] = self.seconds.get(k, 0.0) + v

    def summary(self) -> str:
        lines = [
            f"{self.form} form vs {self.behaviour!r}: {self.frames} frames, {self.runs} runs, "
            f"{self.compared} compared, {self.matched} matched, {self.n_mismatches} mismatched, "
            f"{sum(self.refused.values())} refused by the kernel",
        ]
        for reason, n in sorted(self.refused.items()):
            lines.append(f"  refused  {reason}: {n}")
        for name, n in sorted(self.by_report.items(), key=lambda kv: Report[kv[0]]):
            lines.append(f"  report   {name}: {n}")
        for name, n in sorted(self.divergences.items()):
            lines.append(f"  divergence {name} (spec differs, program = oracle): {n}")
        for name, n in sorted(self.bugs.items()):
            lines.append(f"  PROGRAM BUG {name}: {n} runs")
        if self.seconds:
            lines.append("  time " + ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items()))
        return "\n".join(lines)


def _divergence_name(spec_info, info) -> str:
    """Which named divergence makes the oracle's parse differ from the spec's."""
    if spec_info is not None and info is not None and spec_info.hao != info.hao:
        return "hashlab-ebpf-hao-30-options"
    return "unnamed"


def run(obj: bpf.BpfObject, prog: bpf.Program, frames: Sequence[bytes], configs: Iterable[Config],
        form: str = "vnet_hash", behaviour: str = "hashlab-ebpf", labels: Sequence[str] | None = None,
        bugs: Iterable[ProgramBug] | None = None, keep: int = 20, chunk: int = 20000,
        on_configure: Callable[[bpf.BpfObject, Config], None] | None = None,
        capture=None) -> Outcome:
    """Every frame under every configuration; see the module docstring.  ``on_configure``
    fills whatever else a program needs per configuration (e.g. the prototype's tables);
    ``capture``: the :class:`.kfunc.KfuncCapture` of the ``kfunc`` form."""
    import time

    if form not in ("vnet_hash", "socket", "kfunc"):
        raise ValueError(f"unknown form {form!r}")
    if (form == "kfunc") != (capture is not None):
        raise ValueError("the kfunc form, and only it, takes a capture")
    if capture is not None:
        from .kfunc import CAPTURE_MAX

        chunk = min(chunk, CAPTURE_MAX)
    full = form in ("vnet_hash", "kfunc")  # hash and report are observed too
    bugs = list(PROGRAM_BUGS.values() if bugs is None else bugs)
    out = Outcome(form=form, behaviour=behaviour, frames=len(frames))
    t0 = time.monotonic()
    infos = [rss.parse_frame(f, behaviour) for f in frames]
    if behaviour != "spec":
        spec_infos = [rss.parse_frame(f, "spec") for f in frames]
    else:
        spec_infos = infos
    differs = [a != b for a, b in zip(spec_infos, infos)] if spec_infos is not infos else None
    bug_hits = [[b for b in bugs if b.hits(i)] for i in spec_infos]
    out.seconds["oracle-parse"] = time.monotonic() - t0
    hash_info = rss.hash_info
    report_names = {int(r): r.name for r in Report}
    for cfg in configs:
        cfg.apply(obj)
        if on_configure is not None:
            on_configure(obj, cfg)
        t1 = time.monotonic()
        results: list[testrun.Result] = []
        calls: list[tuple[int, int] | None] = []
        for s in range(0, len(frames), chunk):
            part = testrun.run(prog.fd, frames[s:s + chunk])
            results += part
            if capture is not None:
                calls += _pair_calls(part, capture.take(), cfg, s)
        out.seconds["test-run"] = out.seconds.get("test-run", 0.0) + time.monotonic() - t1
        t2 = time.monotonic()
        for i, (frame, res) in enumerate(zip(frames, results)):
            out.runs += 1
            if res.err:
                out.refused[refusal_reason(frame, res.err)] += 1
                continue
            info = infos[i]
            if cfg.tunnel_types:
                # the inner packet when the outer header matches (oracle.tunnel)
                inner = tunnel.header_for_hash(frame, cfg.tunnel_types)
                info = None if inner is None else rss.parse_frame(inner, behaviour)
            h, r = hash_info(info, cfg.key, cfg.types, behaviour)
            want = cfg.expect(h, r)
            if form == "vnet_hash":
                got = (res.hash, res.report, res.queue)
            elif form == "kfunc":
                got = (*(calls[i] or (0, 0)), res.retval)
            else:
                got = (0, 0, res.retval)
            same = got == want if full else got[2] == want[2]
            out.compared += 1
            if same:
                out.matched += 1
                out.by_report[report_names[want[1]]] += 1
                if differs is not None and differs[i]:
                    sh, sr = hash_info(spec_infos[i], cfg.key, cfg.types, "spec")
                    if cfg.expect(sh, sr) != want:
                        out.divergences[_divergence_name(spec_infos[i], info)] += 1
                continue
            explained = None
            for b in bug_hits[i]:
                w = b.wrong(cfg)
                if (got == w) if full else (got[2] == w[2]):
                    explained = b.name
                    break
            if explained:
                out.bugs[explained] += 1
                continue
            out.n_mismatches += 1
            if len(out.mismatches) < keep:
                label = labels[i] if labels else f"frame {i}"
                out.mismatches.append(Mismatch(label, cfg.name, bytes(frame), got, want))
        out.seconds["compare"] = out.seconds.get("compare", 0.0) + time.monotonic() - t2
    return out


def _pair_calls(results: Sequence[testrun.Result], calls: list[tuple[int, int]], cfg: Config,
                first: int) -> list[tuple[int, int] | None]:
    """The kfunc call of each frame of a batch: one per frame the kernel ran when CFG
    populates hashes (the program calls the kfunc exactly then), else none."""
    ran = [r.err == 0 for r in results]
    want = sum(ran) if cfg.populate_hash else 0
    if len(calls) != want:
        from .kfunc import KFUNC, CaptureError

        raise CaptureError(
            f"config {cfg.name}, frames {first}..{first + len(results) - 1}: {len(calls)} "
            f"calls of {KFUNC}, expected {want} (one per frame run when hashes are populated)",
            71)  # EPROTO
    it = iter(calls)
    return [next(it) if r and cfg.populate_hash else None for r in ran]
