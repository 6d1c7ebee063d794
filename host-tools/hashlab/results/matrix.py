"""The comparison's results: one ``RowResult`` per datapath row, its JSON document, and
the tables (Markdown/plain text) that ``hashlab compare`` prints and the HTML report embeds.

Pure functions over rows that already ran (here or, as JSON, in the lab VM): nothing here
knows how a row runs (``hashlab.run.compare``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import UsageError
from ..oracle import rss

# Row status
RAN = "ran"
NOT_BUILT = "not built"
NOT_SUPPORTED = "not supported"
ERROR = "error"


@dataclass
class RowResult:
    id: str
    datapath: str
    status: str  # ran | not built | not supported | error
    reason: str = ""
    qemu: str = ""  # "stock 10.0.2"
    kernel: str = ""  # "host 6.18.44 (no series)"
    design: str | None = None  # the lab kernel's design (hashlab.designs); None: the host's
    where: str = ""
    vhost: bool = False
    model: str = ""
    hash_report_offered: bool | None = None  # QEMU offers it to the guest
    hash_report_negotiated: bool | None = None
    rss_negotiated: bool | None = None
    vhost_running: bool | None = None
    spec: dict = field(default_factory=dict)  # judged against the spec
    own: dict = field(default_factory=dict)  # judged against the row's model
    ok: bool | None = None  # the row behaved as its model says
    seconds: float = 0.0
    results_dir: str = ""
    qemu_warnings: list[str] = field(default_factory=list)
    # QEMU's x-query-virtio-net-hash once the guest configured the device; absent: no
    # such command in this QEMU
    mechanism: str = ""
    checks: list[dict] = field(default_factory=list)
    retries: list[str] = field(default_factory=list)  # VM failures retried (nested KVM)
    regression: str = ""  # what it lost against its baseline row (the kernel without the series)
    # The row failed because a VM failed (after its own retries), or did not run because
    # the lab VM was stuck after another row's VM failure: worth a fresh lab VM boot.
    vm_error: str = ""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "RowResult":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def rows_to_json(rows: list[RowResult], meta: dict | None = None) -> dict:
    return {"hashlab_compare": 1, "meta": meta or {}, "rows": [r.to_json() for r in rows]}


def designs_json(rows: list[RowResult]) -> list[dict]:
    """``designs.json``: one flat object per row, numbers as numbers, for comparing the
    designs (``design``: the lab kernel's, "host" for the host's own kernel).  Counts are
    over the frames the guest saw, judged against the spec: hash value and type class
    right; queue right among the frames whose queue the spec decides.  A row whose guest
    gets no hashes (``hashes_checked`` false) has 0 hashes right, not the vacuous count."""
    out = []
    for r in rows:
        s = r.spec or {}
        checked = bool(s.get("check_hash"))
        out.append({
            "row": r.id, "design": r.design or "host", "qemu": r.qemu, "kernel": r.kernel,
            "vhost": r.vhost, "status": r.status, "ok": bool(r.ok) and r.status == RAN,
            "hash_report_negotiated": bool(r.hash_report_negotiated),
            "rss_negotiated": bool(r.rss_negotiated),
            "mechanism": r.mechanism or None,
            "frames": int(s.get("seen", 0)), "sent": int(s.get("sent", 0)),
            "hashes_checked": checked,
            "hashes_right": int(s.get("hash_right", 0)) if checked else 0,
            "queues_checked": int(s.get("queue_checked", 0)),
            "queues_right": int(s.get("queue_right", 0)),
            "mismatches": int(s.get("mismatch", 0)),
            "reason": r.reason,
        })
    return out


def rows_from_json(doc: dict) -> list[RowResult]:
    if doc.get("hashlab_compare") != 1:
        raise UsageError("not a hashlab compare JSON document")
    return [RowResult.from_json(r) for r in doc["rows"]]


# --------------------------------------------------------------------------- rendering


def _frac(n: int | None, m: int | None) -> str:
    if n is None or not m:
        return "—"
    return f"{n}/{m} ({100 * n / m:.0f}%)" if n != m else f"{n}/{m}"


def offered_cell(r: RowResult) -> str:
    if r.status != RAN:
        return "—"
    if not r.hash_report_offered:
        return "no"
    return "yes, negotiated" if r.hash_report_negotiated else "yes, not negotiated"


def hashes_cell(r: RowResult) -> str:
    if r.status != RAN or not r.spec:
        return "—"
    if not r.spec.get("check_hash"):
        return "n/a (guest gets no hashes)" if not r.hash_report_negotiated else "n/a (rxhash off)"
    return _frac(r.spec["hash_right"], r.spec["seen"])


def queues_cell(r: RowResult) -> str:
    if r.status != RAN or not r.spec:
        return "—"
    if not r.spec.get("queue_checked"):
        return "n/a (no RSS)"
    return _frac(r.spec["queue_right"], r.spec["queue_checked"])


def verdict(r: RowResult) -> str:
    if r.status != RAN:
        return f"{r.status}: {r.reason}"
    if r.regression:
        return f"REGRESSION: lost {r.regression}"
    fails = [c["name"] for c in r.checks if not c["ok"]]
    own = r.own or {}
    if r.ok:
        extra = f", {own['known']} pinned" if own.get("known") else ""
        return f"PASS (= {r.model}{extra})"
    bits = []
    if own.get("mismatch"):
        bits.append(f"{own['mismatch']} mismatches vs {own.get('behaviour')}")
    if own.get("missing"):
        bits.append(f"{own['missing']} missing")
    if own.get("stale_pin"):
        bits.append(f"{own['stale_pin']} stale pins")
    if fails:
        bits.append("failed checks: " + ", ".join(fails))
    return "FAIL: " + ("; ".join(bits) or "see " + r.results_dir)


TABLE_COLUMNS = ["datapath", "QEMU", "kernel", "hash report offered", "QEMU says (QMP)",
                 "hashes right", "queues right", "verdict", "time"]


def mechanism_cell(r: RowResult) -> str:
    """What x-query-virtio-net-hash said once the guest had configured the device."""
    if r.status != RAN or not r.mechanism:
        return "—"
    return "n/a (no query)" if r.mechanism == "absent" else r.mechanism


def table_rows(rows: list[RowResult]) -> list[list[str]]:
    return [[r.datapath, r.qemu or "—", r.kernel or "—", offered_cell(r), mechanism_cell(r),
             hashes_cell(r), queues_cell(r), verdict(r),
             f"{r.seconds:.0f}s" if r.seconds else "—"]
            for r in rows]


def render_table(rows: list[RowResult]) -> str:
    """A Markdown table (readable as plain text too)."""
    body = table_rows(rows)
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(TABLE_COLUMNS)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    out = [line(TABLE_COLUMNS), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(b) for b in body]
    return "\n".join(out)


REPORT_ORDER = [r.name for r in rss.Report]


def render_types(rows: list[RowResult]) -> str:
    """Per report type (the spec's), per row that ran: hashes right / frames seen."""
    ran = [r for r in rows if r.status == RAN and r.spec.get("by_type")]
    if not ran:
        return "(no row ran)"
    types = [t for t in REPORT_ORDER if any(t in r.spec["by_type"] for r in ran)]
    head = ["hashes right, by type"] + [r.id for r in ran]
    body = []
    for t in types:
        cells = [t]
        for r in ran:
            b = r.spec["by_type"].get(t)
            if b and not r.spec.get("check_hash"):  # nothing to judge: no hash reaches the guest
                cells.append("n/a")
            else:
                cells.append("—" if not b else f"{b['hash_right']}/{b['seen']}")
        body.append(cells)
    cells = ["(queues right)"]
    for r in ran:
        s = r.spec
        cells.append(f"{s['queue_right']}/{s['queue_checked']}" if s.get("queue_checked") else "—")
    body.append(cells)
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(head)] + [fmt(b) for b in body])


def render_qemus(qemus: dict[str, dict]) -> str:
    """The QEMUs of the run, as each answered the probe (hashlab.host.qemu_caps)."""
    if not qemus:
        return ""
    yn = lambda b: "yes" if b else "no"
    lines = ["| QEMU | version | binary | eBPF RSS | hash reports through vhost_net on | "
             "inner header hash | x-query-virtio-net-hash |",
             "|---|---|---|---|---|---|---|"]
    for kind, c in qemus.items():
        if c.get("error"):
            lines.append(f"| {kind} | ? | `{c['binary']}` | {c['error']} | | | |")
            continue
        lines.append(f"| {kind} | {c['version']} | `{c['binary']}` | "
                     f"{yn('ebpf-rss-fds' in c['props'])} | {', '.join(c['designs']) or 'none'} | "
                     f"{yn('hash-tunnel' in c['props'])} | {yn(c['query'])} |")
    return "\n".join(lines)


def render_notes(rows: list[RowResult]) -> str:
    out = []
    for r in rows:
        if r.status == RAN:
            for w in r.qemu_warnings:
                out.append(f"{r.id}: QEMU: {w}")
            if r.vhost and not r.vhost_running:
                out.append(f"{r.id}: vhost=on but vhost_net is NOT running")
            for t in r.retries:
                out.append(f"{r.id}: retried after a VM failure ({t[:150]})")
    return "\n".join(out)
