"""Comparing what the guest saw with what the oracle expects, and reporting it.

``compare()`` is a pure function: sent frames (each with its oracle expectation and
whether it should arrive) plus the guest's per-frame records in, per-frame verdicts and
summaries out.  No I/O, so it is unit-tested directly (tests/test_compare.py).
``render_table()``, ``to_json()`` and ``junit_xml()`` turn a ``Comparison`` into what
``hashlab run`` prints and writes.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from ..oracle.rss import Expectation, Report

ETH_HLEN = 14

# Verdict statuses
MATCH = "match"
MISMATCH = "mismatch"
MISSING = "missing"  # expected to arrive, not seen
DROPPED_OK = "dropped-as-expected"  # expected not to arrive, not seen
MISSING_OK = "not-seen-allowed"  # arrival 'any', not seen
UNEXPECTED = "unexpected-arrival"  # expected not to arrive, but seen
DUPLICATE = "duplicate"  # seen more than once
KNOWN = "known-divergence"  # mismatches, and the scenario pins that with a reason
STALE_PIN = "stale-pin"  # pinned as a known divergence, but now matches
FAILING = {MISMATCH, MISSING, UNEXPECTED, DUPLICATE, STALE_PIN}


def desc_group(desc: str) -> str:
    """A corpus description without its ' #n' instance suffix."""
    return desc.rsplit(" #", 1)[0]


def hash_class(report: int) -> str:
    """What the Linux guest makes of a report: l4 (TCP/UDP), l3 (IP) or none."""
    r = Report(report)
    if r == Report.NONE:
        return "none"
    return "l4" if r.is_l4 else "l3"


def observed_class(hash_value: int, l4_hash: int) -> str:
    if l4_hash:
        return "l4"
    return "l3" if hash_value else "none"


@dataclass(frozen=True)
class Sent:
    """One frame sent to the guest."""

    id: int
    slice: str
    desc: str
    length: int  # total frame length
    expect: Expectation
    arrive: bool | str = True  # True, False or "any"
    known: str | None = None  # reason, when the scenario pins a known divergence
    check_queue: bool = True  # False: the receive queue is the tap's choice (not judged)
    batch: int = 0  # traffic batch (scenarios that reconfigure between batches)


@dataclass(frozen=True)
class Observed:
    """One napi_gro_receive_entry record from the guest."""

    len: int  # skb->len = frame length - 14
    hash: int
    l4_hash: int
    queue: int
    cpu: int = -1
    ts: float = -1.0  # the guest's trace clock, seconds (-1: not recorded)

    @classmethod
    def from_agent(cls, rec: dict) -> "Observed":
        h = rec["hash"]
        return cls(len=int(rec["len"]), hash=int(h, 16) if isinstance(h, str) else int(h),
                   l4_hash=int(rec["l4_hash"]), queue=int(rec["queue"]),
                   cpu=int(rec.get("cpu", -1)), ts=float(rec.get("ts", -1)))


@dataclass
class Verdict:
    id: int
    slice: str
    desc: str
    length: int
    report: str  # expected report name
    status: str
    expected: dict[str, Any]
    observed: dict[str, Any] | None = None
    fields: list[str] = field(default_factory=list)  # what differs: hash, class, queue
    batch: int = 0


@dataclass
class Comparison:
    verdicts: list[Verdict]
    extras: list[dict]  # records that match no sent frame
    by_report: dict[str, dict[str, int]]
    by_slice: dict[str, dict[str, int]]
    queues: dict[int, dict[str, int]]  # queue -> {"expected": n, "observed": n}
    check_hash: bool = True

    @property
    def failures(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.status in FAILING]

    @property
    def ok(self) -> bool:
        return not self.failures

    def counts(self) -> dict[str, int]:
        c = Counter(v.status for v in self.verdicts)
        return {"sent": len(self.verdicts), "seen": sum(1 for v in self.verdicts if v.observed),
                "match": c[MATCH], "mismatch": c[MISMATCH], "missing": c[MISSING],
                "dropped_as_expected": c[DROPPED_OK] + c[MISSING_OK],
                "unexpected_arrival": c[UNEXPECTED], "duplicate": c[DUPLICATE],
                "known_divergence": c[KNOWN], "stale_pin": c[STALE_PIN],
                "extra_records": len(self.extras)}


def _row() -> dict[str, int]:
    return {"sent": 0, "seen": 0, "match": 0, "mismatch": 0, "known": 0, "missing": 0,
            "dropped": 0}


def compare(sent: Iterable[Sent], observed: Iterable[Observed], check_hash: bool = True) -> Comparison:
    """Match records to frames by length and judge each frame.

    A seen frame matches when its hash value, its hash class (l4_hash / L3 / none) and
    its receive queue all equal the expectation; with ``check_hash`` false (rxhash off in
    the guest) the guest sees no hash at all, so hash 0 and class none are expected.
    """
    sent = list(sent)
    verdicts, extras = _verdicts(sent, observed, check_hash)
    _mark_stale(sent, verdicts)
    return summarize(verdicts, extras, check_hash)


def compare_batches(batches: list[tuple[list[Sent], list[Observed], bool]]) -> Comparison:
    """``compare`` over several batches of traffic, each ``(sent, observed, check_hash)``
    (frames are matched to records within their batch); pins are judged over all."""
    all_sent: list[Sent] = []
    verdicts: list[Verdict] = []
    extras: list[dict] = []
    for sent, observed, check_hash in batches:
        sent = list(sent)
        v, e = _verdicts(sent, observed, check_hash)
        all_sent += sent
        verdicts += v
        extras += e
    _mark_stale(all_sent, verdicts)
    return summarize(verdicts, extras, all(b[2] for b in batches))


def _verdicts(sent: list[Sent], observed: Iterable[Observed], check_hash: bool):
    by_len: dict[int, list[Observed]] = {}
    for o in observed:
        by_len.setdefault(o.len + ETH_HLEN, []).append(o)
    sent_lens = {s.length for s in sent}
    extras = [asdict(o) for ln, obs in sorted(by_len.items()) if ln not in sent_lens for o in obs]

    verdicts: list[Verdict] = []
    for s in sent:
        e = s.expect
        exp_hash, exp_class = _expected(s, check_hash)
        expected = {"hash": f"{exp_hash:#010x}", "class": exp_class,
                    "queue": e.queue if s.check_queue else None,
                    "report": Report(e.report).name}
        seen = by_len.get(s.length, [])
        v = Verdict(s.id, s.slice, s.desc, s.length, Report(e.report).name, MATCH, expected,
                    batch=s.batch)
        if not seen:
            v.status = {True: MISSING, False: DROPPED_OK}.get(s.arrive, MISSING_OK)
        else:
            o = seen[0]
            v.observed = {"hash": f"{o.hash:#010x}", "class": observed_class(o.hash, o.l4_hash),
                          "queue": o.queue, "l4_hash": o.l4_hash, "cpu": o.cpu}
            v.fields = differences(s, o, check_hash)
            if len(seen) > 1:
                v.status = DUPLICATE
                v.observed["times_seen"] = len(seen)
            elif s.arrive is False:
                v.status = UNEXPECTED
            elif v.fields:
                v.status = KNOWN if s.known else MISMATCH
            if s.known:
                v.expected["known_divergence"] = s.known
        verdicts.append(v)

    return verdicts, extras


def _expected(s: Sent, check_hash: bool) -> tuple[int, str]:
    """(hash, class) the guest should see for S; no hash at all when not CHECK_HASH."""
    if not check_hash:
        return 0, "none"
    return s.expect.hash, hash_class(s.expect.report)


def differences(s: Sent, o: Observed, check_hash: bool) -> list[str]:
    """What of record O differs from frame S's expectation: 'hash', 'class', 'queue'."""
    exp_hash, exp_class = _expected(s, check_hash)
    out = []
    if o.hash != exp_hash:
        out.append("hash")
    if observed_class(o.hash, o.l4_hash) != exp_class:
        out.append("class")
    if s.check_queue and o.queue != s.expect.queue:
        out.append("queue")
    return out


def judge_records(sent: Iterable[Sent], observed: Iterable[Observed],
                  check_hash: bool) -> dict:
    """Judge *every* record against the frame of its length (traffic that sends each
    frame many times, where ``compare``'s one-record-per-frame rule does not apply).

    Returns ``{"records", "right", "wrong", "known", "unknown", "wrong_fields": {field:
    n}, "first_wrong": [...]}``; known = differs, on a frame the scenario pins as a known
    divergence; unknown = records of no sent length."""
    by_len = {s.length: s for s in sent}
    out = {"records": 0, "right": 0, "wrong": 0, "known": 0, "unknown": 0,
           "wrong_fields": Counter(), "first_wrong": []}
    for o in observed:
        out["records"] += 1
        s = by_len.get(o.len + ETH_HLEN)
        if s is None:
            out["unknown"] += 1
            continue
        diff = differences(s, o, check_hash)
        if not diff:
            out["right"] += 1
            continue
        if s.known:
            out["known"] += 1
            continue
        out["wrong"] += 1
        out["wrong_fields"].update(diff)
        if len(out["first_wrong"]) < 10:
            out["first_wrong"].append({"id": s.id, "desc": s.desc, "fields": diff,
                                       "observed": {"hash": f"{o.hash:#010x}",
                                                    "l4_hash": o.l4_hash, "queue": o.queue}})
    out["wrong_fields"] = dict(out["wrong_fields"])
    return out


def _mark_stale(sent: list[Sent], verdicts: list[Verdict]) -> None:
    # A pin (per description group) that no frame needs any more is stale: fail it, so
    # that fixed divergences get unpinned.
    pinned: dict[str, list[Verdict]] = {}
    for s, v in zip(sent, verdicts):
        if s.known:
            pinned.setdefault(desc_group(s.desc), []).append(v)
    for group in pinned.values():
        if not any(v.status == KNOWN for v in group):
            for v in group:
                if v.status == MATCH:
                    v.status = STALE_PIN


def summarize(verdicts: list[Verdict], extras: list[dict], check_hash: bool = True) -> Comparison:
    """Per-report, per-slice and per-queue tables over VERDICTS."""
    by_report: dict[str, dict[str, int]] = {r.name: _row() for r in Report}
    by_slice: dict[str, dict[str, int]] = {}
    queues: dict[int, dict[str, int]] = {}
    for v in verdicts:
        for row in (by_report[v.report], by_slice.setdefault(v.slice, _row())):
            row["sent"] += 1
            row["seen"] += v.observed is not None
            if v.status == MATCH:
                row["match"] += 1
            elif v.status in (MISMATCH, UNEXPECTED, DUPLICATE, STALE_PIN):
                row["mismatch"] += 1
            elif v.status == KNOWN:
                row["known"] += 1
            elif v.status == MISSING:
                row["missing"] += 1
            else:
                row["dropped"] += 1
        if v.observed is not None:
            if v.expected["queue"] is not None:
                queues.setdefault(v.expected["queue"], {"expected": 0, "observed": 0})["expected"] += 1
            queues.setdefault(v.observed["queue"], {"expected": 0, "observed": 0})["observed"] += 1
    by_report = {k: r for k, r in by_report.items() if r["sent"]}
    return Comparison(verdicts, extras, by_report, by_slice, dict(sorted(queues.items())), check_hash)


def queue_checked(cmp: Comparison) -> bool:
    return any(v.expected.get("queue") is not None for v in cmp.verdicts)


# --------------------------------------------------------------------------- output


def _table(title: str, rows: dict[str, dict[str, int]]) -> list[str]:
    cols = ["sent", "seen", "match", "mismatch", "known", "missing", "dropped"]
    w = max([len(title)] + [len(k) for k in rows]) + 2
    out = [f"{title:<{w}}" + "".join(f"{c:>10}" for c in cols)]
    tot = Counter()
    for k, r in rows.items():
        out.append(f"{k:<{w}}" + "".join(f"{r[c]:>10}" for c in cols))
        tot.update(r)
    out.append(f"{'total':<{w}}" + "".join(f"{tot[c]:>10}" for c in cols))
    return out


def render_table(cmp: Comparison, max_failures: int = 20) -> str:
    lines = _table("report type", cmp.by_report)
    lines.append("")
    lines.append(f"{'queue':<8}{'expected':>10}{'observed':>10}"
                 + ("" if queue_checked(cmp) else "   (queue not judged: the tap's choice)"))
    for q, r in cmp.queues.items():
        lines.append(f"{q:<8}{r['expected']:>10}{r['observed']:>10}")
    fails = cmp.failures
    if fails:
        lines.append("")
        lines.append(f"{len(fails)} failing frame(s):")
        for v in fails[:max_failures]:
            b = f"batch {v.batch} " if v.batch else ""
            lines.append(f"  {b}#{v.id} [{v.slice}] {v.desc} len={v.length}: {v.status}"
                         f" {','.join(v.fields)} expected={v.expected} observed={v.observed}")
        if len(fails) > max_failures:
            lines.append(f"  ... {len(fails) - max_failures} more in results.json")
    known = [v for v in cmp.verdicts if v.status == KNOWN]
    if known:
        lines.append("")
        lines.append(f"{len(known)} known divergence(s) pinned by the scenario:")
        for grp, n in Counter(f"{desc_group(v.desc)} ({v.expected['known_divergence']})"
                              for v in known).items():
            lines.append(f"  {n} x {grp}")
    not_seen = [v for v in cmp.verdicts if v.observed is None and v.status not in FAILING]
    if not_seen:
        per = Counter(v.slice for v in not_seen)
        lines.append("")
        lines.append("not seen, as the scenario allows: " +
                     ", ".join(f"{s} {n}" for s, n in per.items()))
    if cmp.extras:
        lines.append("")
        lines.append(f"{len(cmp.extras)} record(s) of frames hashlab did not send "
                     f"(lengths {sorted({e['len'] + ETH_HLEN for e in cmp.extras})[:10]})")
    return "\n".join(lines)


def to_json(cmp: Comparison) -> dict:
    return {
        "ok": cmp.ok,
        "counts": cmp.counts(),
        "by_report": cmp.by_report,
        "by_slice": cmp.by_slice,
        "queues": {str(k): v for k, v in cmp.queues.items()},
        "check_hash": cmp.check_hash,
        "frames": [asdict(v) for v in cmp.verdicts],
        "extra_records": cmp.extras,
    }


def junit_xml(suite: str, cmp: Comparison | None, checks: list[tuple[str, str | None]],
              seconds: float = 0.0) -> str:
    """JUnit XML: one testcase per check (negotiation, config) and per report type.

    ``checks`` is ``[(name, failure message or None)]``.
    """
    cases: list[tuple[str, str, str | None]] = [("checks", n, f) for n, f in checks]
    if cmp is not None:
        for rep, row in cmp.by_report.items():
            bad = [v for v in cmp.failures if v.report == rep]
            msg = None
            if bad:
                msg = f"{len(bad)} of {row['sent']} frames failed:\n" + "\n".join(
                    f"#{v.id} [{v.slice}] {v.desc}: {v.status} {','.join(v.fields)} "
                    f"expected={v.expected} observed={v.observed}" for v in bad[:50])
            cases.append(("report", rep, msg))
    ts = ET.Element("testsuite", name=suite, tests=str(len(cases)),
                    failures=str(sum(1 for c in cases if c[2])), errors="0",
                    time=f"{seconds:.1f}")
    for cls, name, fail in cases:
        tc = ET.SubElement(ts, "testcase", classname=f"{suite}.{cls}", name=name)
        if fail:
            f = ET.SubElement(tc, "failure", message=fail.splitlines()[0][:200])
            f.text = fail
    root = ET.Element("testsuites")
    root.append(ts)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
