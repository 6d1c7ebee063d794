"""The comparison: the same guest, corpus and configuration on every datapath, one table.

Rows (``ROWS``) name a datapath: which QEMU (Debian's stock build or ours), vhost on or
off, and where it runs (``host``: this machine's kernel, which lacks the series, under
TCG; ``lab``: inside the lab VM, under KVM, on the kernel of the row's *design*,
``hashlab.designs``: ``progtype`` with the series, ``stock`` without).  Each row
runs the base scenario (default ``scenarios/software-rss.yaml``: 2 queue pairs, Microsoft
key, equal table, the whole corpus) with its datapath, and is judged twice from the
same observations:

* against the **spec** (``hashlab.oracle.rss`` behaviour "spec"), for the table: how many of
  the frames the guest saw carried the right hash value and type class, and arrived on
  the right queue;
* against **the row's own model** (what that datapath is known to do: QEMU's software
  path with its pinned quirks, the spec for our eBPF program, "no hashes at all" for
  the mismatched pairing), for the verdict: PASS means the datapath behaved exactly as
  expected.

A row that cannot run says why ("not built: ...", "not supported: ..."); it is never
silently missing.  ``run_rows`` runs rows here; ``compare`` (the ``hashlab compare``
command) runs the host rows here and the lab rows in one lab VM boot per design, and merges them
into one table and one JSON document.  Merging here and rendering (``hashlab.results.matrix``)
are pure functions over ``RowResult`` (tests/test_compare_matrix.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from .. import designs, retries
from ..host import datapath
from ..host.machine import GuestHang, QemuExited, QemuStartError
from ..results import report
from ..oracle import rss
from ..errors import HashlabError, MissingToolError, UsageError
from ..paths import SCENARIOS_DIR
from ..results.matrix import (ERROR, NOT_BUILT, NOT_SUPPORTED, RAN, RowResult, queues_cell,
                              rows_from_json, rows_to_json, verdict)
from .scenario import DatapathSpec

DEFAULT_BASE = SCENARIOS_DIR / "software-rss.yaml"


@dataclass(frozen=True)
class Row:
    id: str
    datapath: str  # what moves the packets, for the table
    qemu: str  # stock | patched
    vhost: bool
    where: str  # host | lab
    design: str | None  # the lab kernel (hashlab.designs); None: the host's own kernel
    model: str  # the row's own expectation, in words
    behaviour: str = "auto"  # oracle model for the verdict
    expect: dict = field(default_factory=dict)  # scenario `expect` overrides
    keep_pins: bool = False  # the base scenario's known divergences apply (qemu-software)
    # The same QEMU and vhost on the kernel without the series: a new kernel must give
    # this row at least what that one gives (RSS, right queues, hashes); else REGRESSION.
    baseline: str = ""
    device: dict = field(default_factory=dict)  # extra -device options over the base's
    # What QEMU's x-query-virtio-net-hash must say once the guest configured the device
    # (hashlab.host.hashquery.label); absent: a QEMU without the query
    mechanism: str = "absent"

    @property
    def kernel(self) -> str:
        """For the table when the row does not run."""
        if self.design is None:
            return "host (no series)"
        d = designs.get(self.design)
        return f"lab ({d.name} series)" if d.series else "lab without the series"


ROWS: tuple[Row, ...] = (
    Row("host-stock", "QEMU userspace RSS + hash (tap, vhost=off)", "stock", False, "host",
        None, "QEMU software model", "qemu-software",
        {"rss_negotiated": True, "hash_report_negotiated": True}, keep_pins=True),
    Row("host-patched", "patched QEMU, kernel without the series (tap, vhost=off)", "patched",
        False, "host", None,
        "software fallback, as upstream", "qemu-software",
        {"rss_negotiated": True, "hash_report_negotiated": True}, keep_pins=True, mechanism="software"),
    # The series makes HASH_REPORT opt-in for the VMM (VHOST_NET_BACKEND_F_HASH_REPORT):
    # stock QEMU, which does not opt in, must see exactly the stock kernel.
    Row("lab-stock-vhost", "stock QEMU + patched vhost_net (vhost=on)", "stock", True, "lab",
        "progtype",
        "as on the stock kernel: no HASH_REPORT, eBPF steering", "qemu-ebpf",
        {"rss_negotiated": True, "hash_report_negotiated": False},
        baseline="lab-stock-vhost-stock-kernel"),
    Row("lab-patched", "patched QEMU, eBPF hash via tap (vhost=off)", "patched", False, "lab",
        "progtype", "spec", "spec",
        {"rss_negotiated": True, "hash_report_negotiated": True}, mechanism="ebpf-report/vnet-hash"),
    Row("lab-patched-vhost", "patched QEMU, eBPF hash via vhost_net (vhost=on)", "patched",
        True, "lab", "progtype", "spec", "spec",
        {"rss_negotiated": True, "hash_report_negotiated": True},
        baseline="lab-patched-vhost-stock-kernel", mechanism="ebpf-report/vnet-hash"),
    Row("lab-stock-vhost-stock-kernel", "stock QEMU + stock vhost_net (vhost=on)", "stock",
        True, "lab", "stock",
        "upstream: no HASH_REPORT, eBPF steering", "qemu-ebpf",
        {"rss_negotiated": True, "hash_report_negotiated": False}),
    Row("lab-patched-vhost-stock-kernel", "patched QEMU + stock vhost_net (vhost=on)",
        "patched", True, "lab", "stock",
        "no HASH_REPORT (vhost_net lacks it), eBPF steering", "spec",
        {"rss_negotiated": True, "hash_report_negotiated": False},
        # auto: QEMU starts without hash reports and says why (on would refuse to start)
        device={"vhost-hash-report": "auto"}, mechanism="ebpf/steering"),
    # The kfunc design: the same patched QEMU; its socket filter calls the kfunc here.
    Row("lab-stock-vhost-kfunc", "stock QEMU + kfunc vhost_net (vhost=on)", "stock", True,
        "lab", "kfunc", "as on the stock kernel: no HASH_REPORT, eBPF steering", "qemu-ebpf",
        {"rss_negotiated": True, "hash_report_negotiated": False},
        baseline="lab-stock-vhost-stock-kernel"),
    Row("lab-patched-kfunc", "patched QEMU, kfunc hash via tap (vhost=off)", "patched", False,
        "lab", "kfunc", "spec", "spec",
        {"rss_negotiated": True, "hash_report_negotiated": True}, mechanism="ebpf-report/kfunc"),
    Row("lab-patched-vhost-kfunc", "patched QEMU, kfunc hash via vhost_net (vhost=on)",
        "patched", True, "lab", "kfunc", "spec", "spec",
        {"rss_negotiated": True, "hash_report_negotiated": True},
        baseline="lab-patched-vhost-stock-kernel", mechanism="ebpf-report/kfunc"),
    # Mismatched: a QEMU built before the kfunc patch on the kfunc kernel.  Its loader
    # finds no BPF_PROG_TYPE_VNET_HASH and its socket filter does not call the kfunc:
    # with vhost, no hash reports (auto: it says why) but eBPF steering; without, QEMU
    # hashes in software as upstream does.
    Row("lab-progtype-qemu-vhost-kfunc", "progtype-only QEMU + kfunc vhost_net (vhost=on)",
        "progtype-only", True, "lab", "kfunc",
        "no HASH_REPORT (its program cannot report here), eBPF steering", "spec",
        {"rss_negotiated": True, "hash_report_negotiated": False},
        device={"vhost-hash-report": "auto"}),
    Row("lab-progtype-qemu-kfunc", "progtype-only QEMU, kfunc kernel (vhost=off)",
        "progtype-only", False, "lab", "kfunc", "software fallback, as upstream",
        "qemu-software", {"rss_negotiated": True, "hash_report_negotiated": True},
        keep_pins=True),
    # The tunrss design: tun hashes itself; the same patched QEMU hands it the guest's
    # configuration (hash-offload=tun pins that: it fails to start otherwise).
    Row("lab-stock-vhost-tunrss", "stock QEMU + tunrss vhost_net (vhost=on)", "stock", True,
        "lab", "tunrss", "as on the stock kernel: no HASH_REPORT, eBPF steering", "qemu-ebpf",
        {"rss_negotiated": True, "hash_report_negotiated": False},
        baseline="lab-stock-vhost-stock-kernel"),
    Row("lab-patched-tunrss", "patched QEMU, tun hashes (tap, vhost=off)", "patched", False,
        "lab", "tunrss", "spec", "spec",
        {"rss_negotiated": True, "hash_report_negotiated": True},
        device={"hash-offload": "tun"}, mechanism="tun"),
    Row("lab-patched-vhost-tunrss", "patched QEMU, tun hashes via vhost_net (vhost=on)",
        "patched", True, "lab", "tunrss", "spec", "spec",
        {"rss_negotiated": True, "hash_report_negotiated": True},
        baseline="lab-patched-vhost-stock-kernel", device={"hash-offload": "tun"}, mechanism="tun"),
    # The eBPF designs' QEMU on this kernel (hash-offload=ebpf: patches 1-10 alone): its
    # program can only steer here, so with vhost no hash reports (auto: it says why).
    Row("lab-ebpf-qemu-vhost-tunrss", "patched QEMU, hash-offload=ebpf, tunrss kernel "
        "(vhost=on)", "patched", True, "lab", "tunrss",
        "no HASH_REPORT (its program cannot report here), eBPF steering", "spec",
        {"rss_negotiated": True, "hash_report_negotiated": False},
        device={"hash-offload": "ebpf", "vhost-hash-report": "auto"}, mechanism="ebpf/steering"),
)
ROW_IDS = tuple(r.id for r in ROWS)
ROWS_BY_ID = {r.id: r for r in ROWS}
UNPATCHED_LAB_REASON = datapath.kernel_not_built(designs.CONTROL)


def parse_rows(text: str | None) -> list[Row]:
    """'all', 'host', 'lab' or a comma-separated list of row ids (in table order)."""
    if not text or text == "all":
        return list(ROWS)
    if text in ("host", "lab"):
        return [r for r in ROWS if r.where == text]
    want = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in want if t not in ROWS_BY_ID]
    if bad:
        raise UsageError(f"unknown comparison row {bad[0]!r} (rows: {', '.join(ROW_IDS)})")
    return [r for r in ROWS if r.id in want]


def _queue_share(r: RowResult) -> float | None:
    s = r.spec or {}
    return s["queue_right"] / s["queue_checked"] if s.get("queue_checked") else None


def find_regressions(rows: list[RowResult]) -> None:
    """Mark each row that gives less than its baseline row (the same QEMU and vhost on
    the kernel without the series): RSS lost, fewer frames on the right queue, or
    hashes lost.  Such a row is not ok, whatever its own model says."""
    by_id = {r.id: r for r in rows}
    for r in rows:
        row = ROWS_BY_ID.get(r.id)
        b = by_id.get(row.baseline) if row and row.baseline else None
        if r.status != RAN or b is None or b.status != RAN:
            continue
        lost = []
        if b.rss_negotiated and not r.rss_negotiated:
            lost.append("RSS")
        qr, qb = _queue_share(r), _queue_share(b)
        if qb is not None and (qr is None or qr < qb):
            lost.append(f"right queues {queues_cell(r)} < {queues_cell(b)}")
        if b.spec.get("check_hash") and not r.spec.get("check_hash"):
            lost.append("hash reports")
        if lost:
            r.regression = f"{', '.join(lost)} vs {b.id}"
            r.ok = False


def judge(cmp: report.Comparison) -> dict:
    """Counts for the table from a comparison (hash = value and class; queue)."""
    seen = [v for v in cmp.verdicts if v.observed is not None]
    hashed = [v for v in seen if v.report != "NONE"]
    qchecked = [v for v in seen if v.expected.get("queue") is not None]
    counts = cmp.counts()
    by_type: dict[str, dict[str, int]] = {}
    for v in seen:
        t = by_type.setdefault(v.report, {"seen": 0, "hash_right": 0, "queue_checked": 0,
                                          "queue_right": 0})
        t["seen"] += 1
        t["hash_right"] += "hash" not in v.fields and "class" not in v.fields
        if v.expected.get("queue") is not None:
            t["queue_checked"] += 1
            t["queue_right"] += "queue" not in v.fields
    return {
        "sent": counts["sent"], "seen": len(seen),
        "hash_right": sum(1 for v in seen if "hash" not in v.fields and "class" not in v.fields),
        "hashed_expected": len(hashed),
        "hashed_right": sum(1 for v in hashed if "hash" not in v.fields and "class" not in v.fields),
        "queue_checked": len(qchecked),
        "queue_right": sum(1 for v in qchecked if "queue" not in v.fields),
        "match": counts["match"], "known": counts["known_divergence"],
        "mismatch": counts["mismatch"], "missing": counts["missing"],
        "stale_pin": counts["stale_pin"], "check_hash": cmp.check_hash,
        "by_report": cmp.by_report,
        "by_type": by_type,
        "queues": {str(k): v for k, v in cmp.queues.items()},
    }


def spec_comparison(res) -> report.Comparison:
    """The run's observations judged against the spec (hashlab.run.result.RunResult)."""
    parts = []
    for b in res.batches:
        o = b.oracle
        spec = rss.RssConfig(key=o.key, hash_types=o.hash_types, table=o.table,
                             unclassified_queue=o.unclassified_queue, behaviour="spec")
        rss_on = res.guest is not None and res.guest.features.get("RSS")
        qm = "table" if rss_on else b.queue_model
        parts.append((b.sent(oracle=spec, queue_model=qm), b.observed, b.hash_report))
    return report.compare_batches(parts)


def row_result_from_run(row: Row, res, seconds: float) -> RowResult:
    """ROW's result from its run (hashlab.run.result.RunResult)."""
    dp, q, vh, oracle = res.datapath, res.negotiation, res.vhost, res.oracle
    spec = spec_comparison(res) if res.batches else None
    return RowResult(
        id=row.id, datapath=row.datapath, status=RAN, design=row.design,
        qemu=f"{dp.qemu} {dp.qemu_version}",
        kernel=f"{'lab' if dp.where == 'lab' else 'host'} {dp.host_kernel} "
               f"({(dp.design or '') + ' series' if dp.kernel_has_series else 'no series'})",
        where=dp.where, vhost=row.vhost, model=row.model,
        hash_report_offered=q.offered.get("HASH_REPORT"),
        hash_report_negotiated=q.negotiated.get("HASH_REPORT"),
        rss_negotiated=q.negotiated.get("RSS"),
        vhost_running=vh.running,
        spec=judge(spec) if spec else {},
        own={**(judge(res.comparison) if res.comparison else {}),
             "behaviour": oracle.behaviour, "hashes": oracle.hashes,
             "queue_model": oracle.queues},
        ok=res.ok, seconds=round(seconds, 1), results_dir=str(res.out_dir),
        qemu_warnings=res.qemu_warnings or [],
        mechanism=res.device_hash[0].label if res.device_hash else "absent",
        checks=[{"name": n, "ok": f is None, "failure": f} for n, f in res.checks],
        retries=[f"boot attempt {b.attempt}: {b.error}" for b in res.boot_failures or []]
        + [f"run {b.attempt}: {b.error}" for b in res.retried_after])


# --------------------------------------------------------------------------- scenarios


def load_base(path: str | Path | None = None) -> dict:
    p = Path(path or DEFAULT_BASE)
    if not p.is_file():
        raise UsageError(f"base scenario {p} not found")
    return yaml.safe_load(p.read_text())


def row_scenario_doc(row: Row, base: dict, guest_kernel: str | None = None) -> dict:
    """The base scenario with the row's datapath and expectations."""
    doc = copy.deepcopy(base)
    doc["name"] = f"compare-{row.id}"
    doc["description"] = f"{row.datapath}; base: {base.get('name')}"
    dp = dict(doc.get("datapath") or {})
    dp.pop("netdev", None)
    dp.pop("design", None)
    dp.update({"qemu": row.qemu, "vhost": "on" if row.vhost else "off", "where": row.where,
               "behaviour": row.behaviour})
    if row.design:
        dp["design"] = row.design
    if row.device:
        dp["device"] = {**(dp.get("device") or DatapathSpec().device), **row.device}
    doc["datapath"] = dp
    g = dict(doc.get("guest") or {})
    if guest_kernel and row.where == "lab":
        g["kernel"] = guest_kernel
    doc["guest"] = g
    ex = dict(doc.get("expect") or {})
    if not row.keep_pins:
        ex.pop("known_divergences", None)
    ex.update(row.expect)
    ex["mechanism"] = row.mechanism
    doc["expect"] = ex
    return doc


def row_scenario(row: Row, base: dict, guest_kernel: str | None = None):
    from .scenario import parse_scenario

    return parse_scenario(row_scenario_doc(row, base, guest_kernel), f"<row {row.id}>")


def availability(row: Row, here_is_lab: bool) -> tuple[str, str] | None:
    """(status, reason) when ROW cannot run from here, else None."""
    if row.where == "lab" and here_is_lab:
        running = datapath.running_design()
        if running != row.design:
            return NOT_SUPPORTED, f"this lab VM runs the {running} kernel, not {row.design}"
    if row.qemu != "stock":
        try:
            datapath.patched_qemu(row.qemu)
        except MissingToolError as e:
            return NOT_BUILT, str(e)
    if row.where == "lab" and not here_is_lab:
        if datapath.lab_kernel_path(row.design) is None:
            return NOT_BUILT, datapath.kernel_not_built(row.design)
    if row.where == "host" and here_is_lab:
        return NOT_SUPPORTED, "a host row: it runs on the host kernel, not in the lab VM"
    if row.where == "lab" and here_is_lab and not datapath.kvm_usable():
        return NOT_SUPPORTED, "/dev/kvm is not usable in this lab VM"
    return None


def placeholder(row: Row, status: str, reason: str) -> RowResult:
    return RowResult(id=row.id, datapath=row.datapath, status=status, reason=reason,
                     qemu=datapath.qemu_label(row.qemu) if row.qemu == "stock" else
                     (row.qemu if status == NOT_BUILT and "QEMU" in reason
                      else datapath.qemu_label(row.qemu)),
                     kernel=row.kernel, design=row.design, where=row.where, vhost=row.vhost,
                     model=row.model)


async def run_row(row: Row, base: dict, out: Path, guest_kernel: str | None,
                  echo: Callable[[str], None]) -> RowResult:
    from .orchestrator import run_scenario

    sc = row_scenario(row, base, guest_kernel)
    t0 = time.monotonic()
    try:
        res = await run_scenario(sc, out / row.id, echo=echo)
    except MissingToolError as e:
        return placeholder(row, NOT_BUILT, str(e))
    except (HashlabError, OSError) as e:
        r = placeholder(row, ERROR, f"{type(e).__name__}: {str(e).splitlines()[0]}")
        r.seconds = round(time.monotonic() - t0, 1)
        r.results_dir = str(out / row.id)
        r.ok = False
        if isinstance(e, (QemuStartError, GuestHang, QemuExited)):
            r.vm_error = type(e).__name__
        return r
    return row_result_from_run(row, res, time.monotonic() - t0)


def run_rows(rows: list[Row], out: Path, base: dict, guest_kernel: str | None = None,
             echo: Callable[[str], None] = print,
             progress: Callable[[list[RowResult]], None] | None = None) -> list[RowResult]:
    """Run ROWS here, one after the other; rows that cannot run get a placeholder.
    PROGRESS (if given) gets the results so far after every row."""
    here_lab = datapath.in_lab()
    results = []
    stuck = ""  # in the lab VM: the row whose VM failed past its retries
    for i, row in enumerate(rows, 1):
        why = availability(row, here_lab)
        if stuck and not why:
            # Nested KVM under TCG: after a guest that stalls past its retries, this lab
            # VM starts no QEMU any more (each row would time out); the caller boots a
            # fresh lab VM for these rows.
            echo(f"hashlab compare: [{i}/{len(rows)}] {row.id}: not run here: the lab VM "
                 f"is stuck after {stuck}'s VM failure")
            r = placeholder(row, ERROR, f"not run: the lab VM was stuck after {stuck}'s "
                            "VM failure")
            r.vm_error = "lab VM stuck"
            results.append(r)
        elif why:
            echo(f"hashlab compare: [{i}/{len(rows)}] {row.id}: {why[0]}: {why[1]}")
            results.append(placeholder(row, *why))
        else:
            echo(f"hashlab compare: [{i}/{len(rows)}] {row.id}: {row.datapath}")
            r = asyncio.run(run_row(row, base, out, guest_kernel, echo))
            echo(f"hashlab compare: [{i}/{len(rows)}] {row.id}: {verdict(r)} ({r.seconds:.0f}s)")
            results.append(r)
            if here_lab and r.vm_error:
                stuck = row.id
        if progress:
            progress(results)
    return results


# --------------------------------------------------------------------------- merging


def merge(order: list[Row], *parts: list[RowResult]) -> list[RowResult]:
    """One list in ORDER from several partial runs; a later part wins; a row that no
    part has becomes an 'error' row saying so (never silently missing)."""
    by_id: dict[str, RowResult] = {}
    for part in parts:
        for r in part:
            by_id[r.id] = r
    out = []
    for row in order:
        out.append(by_id.get(row.id) or placeholder(
            row, ERROR, "no result (the run that should have produced it did not report it)"))
    return out


# --------------------------------------------------------------------------- the command


def lab_argv(rows: list[Row], json_out: Path, out: Path, base: Path,
             guest_kernel: str | None, qtest: bool = False) -> list[str]:
    argv = datapath.hashlab_argv("compare", "--rows", ",".join(r.id for r in rows),
                                 "--json", str(json_out), "--out", str(out),
                                 "--base", str(base), "--quiet-table")
    if guest_kernel:
        argv += ["--guest-kernel", guest_kernel]
    if qtest:
        argv.append("--qtest")
    return argv


def qtest_here(echo) -> list[dict]:
    """The qtest driver's verdict with the patched QEMU on this kernel, vhost off and on
    (``run.qtest_check``); a failure to run is a result too, never an exception."""
    from . import qtest_check

    out = []
    mechanism = designs.get(datapath.running_design()).mechanism
    for vhost in (False, True):
        try:
            res = qtest_check.check(datapath.patched_qemu(), vhost)
        except (HashlabError, OSError, AssertionError) as e:
            res = {"vhost": vhost, "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
        res["mechanism_expected"] = mechanism
        res["ok"] = "error" not in res and qtest_check.ok(res, mechanism)
        echo(f"hashlab compare: qtest driver, vhost {'on' if vhost else 'off'}: "
             + ("ok" if res["ok"] else f"NOT ok {res.get('error', '')}")
             + f" ({res.get('seconds', 0):.0f}s)")
        out.append(res)
    return out


def lab_part_name(design: str) -> str:
    """'lab' for the default design's boot, 'lab-<design>-kernel' for the others (names
    its timing and its JSON file, as before the registry: 'lab-stock-kernel')."""
    return "lab" if design == designs.DEFAULT else f"lab-{design}-kernel"


def _lab_part(runnable: list[Row], design: designs.Design, out: Path, base: dict,
              base_path: Path, guest_kernel: str | None, lab_timeout: float,
              echo, qtest: bool = False) -> tuple[list[RowResult], list[dict] | None]:
    """RUNNABLE in one lab VM boot of DESIGN's kernel (and with QTEST the qtest driver's
    verdict there)."""
    json_out = out / f"{lab_part_name(design.name)}-rows.json"
    json_out.unlink(missing_ok=True)
    try:
        scs = [row_scenario(r, base, guest_kernel) for r in runnable]
        _, env = datapath.prepare_lab({sc.guest.kernel for sc in scs},
                                      {sc.corpus.seed for sc in scs}, out,
                                      {r.qemu for r in runnable})
    except HashlabError as e:
        return [placeholder(r, NOT_BUILT, f"preparing the lab run: {e}")
                for r in runnable], None
    argv = lab_argv(runnable, json_out, out, base_path, guest_kernel, qtest)
    which = "" if design.name == designs.DEFAULT else \
        f" ({design.name} kernel{'' if design.series else ', no series'})"
    echo(f"hashlab compare: booting the lab VM{which}"
         f" for {len(runnable)} row(s): {', '.join(r.id for r in runnable)}")
    try:
        res = datapath.run_in_lab(argv, env, lab_timeout, echo, design=design.name,
                                  writes=[out], reads=[base_path], expect=[json_out])
        status = f"lab VM done in {res.seconds:.0f}s, status {res.status}"
    except HashlabError as e:
        status = f"lab VM failed: {str(e).splitlines()[0]}"
    echo(f"hashlab compare: {status}")
    got, qt = [], None
    if json_out.is_file():
        with contextlib.suppress(ValueError, UsageError):
            doc = json.loads(json_out.read_text())
            got = rows_from_json(doc)
            qt = (doc.get("meta", {}).get("qtest") or {}).get(design.name)
    if qtest and qt is None:
        qt = [{"error": f"no qtest result from the lab VM ({status})", "ok": False}]
    have = {r.id for r in got}
    return got + [placeholder(r, ERROR, f"no result from the lab VM ({status})")
                  for r in runnable if r.id not in have], qt


def compare(rows: list[Row], out: Path, base_path: Path, guest_kernel: str | None = None,
            lab_timeout: float = 2400, echo: Callable[[str], None] = print,
            run_lab: bool = True, json_path: Path | None = None,
            qtest: bool = False) -> tuple[list[RowResult], dict]:
    """Run ROWS: those for here directly, lab rows in one lab VM boot; merged, in order.

    With JSON_PATH the rows run here are written there after each one (so a lab VM that
    runs out of time still reports the rows it finished).  With QTEST, each lab boot of a
    design with a series also runs the qtest driver (``meta["qtest"][design]``); in the
    lab VM itself, this kernel's."""
    base = load_base(base_path)
    out = Path(out).resolve()  # the lab VM runs elsewhere (cwd: the checkout)
    base_path = Path(base_path).resolve()
    out.mkdir(parents=True, exist_ok=True)
    here_lab = datapath.in_lab()
    timings: dict[str, float] = {}
    local = [r for r in rows if here_lab or r.where == "host"]
    lab_rows = [] if here_lab else [r for r in rows if r.where == "lab"]
    t0 = time.monotonic()
    def progress(done: list[RowResult]) -> None:
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = json_path.with_suffix(".partial")
            tmp.write_text(json.dumps(rows_to_json(done, {"partial": True}), indent=1,
                                      default=str) + "\n")
            tmp.rename(json_path)

    results_local = run_rows(local, out, base, guest_kernel, echo, progress)
    timings["here"] = round(time.monotonic() - t0, 1)
    qtests: dict[str, list[dict]] = {}
    if qtest and here_lab:
        stuck = [r.id for r in results_local if r.vm_error]
        qtests[datapath.running_design()] = qtest_here(echo) if not stuck else [
            {"error": f"not run: the lab VM was stuck after {stuck[0]}'s VM failure",
             "ok": False, "lab_stuck": True}]

    results_lab: list[RowResult] = []
    runnable = []
    for r in lab_rows:
        why = availability(r, False)
        if why:
            echo(f"hashlab compare: {r.id}: {why[0]}: {why[1]}")
            results_lab.append(placeholder(r, *why))
        else:
            runnable.append(r)
    if runnable and not run_lab:
        results_lab += [placeholder(r, NOT_SUPPORTED, "lab rows skipped (--no-lab)")
                        for r in runnable]
        runnable = []
    # One lab VM boot per design: the default one first, then the others (the control).
    for d in sorted(designs.DESIGNS, key=lambda d: d.name != designs.DEFAULT):
        group = [r for r in runnable if r.design == d.name]
        if group:
            t1 = time.monotonic()
            want_qt = qtest and d.series is not None
            part, qt = _lab_part(group, d, out, base, base_path, guest_kernel,
                                 lab_timeout, echo, qtest=want_qt)
            again = [r for r in group if any(x.id == r.id and x.vm_error for x in part)]
            qt_again = want_qt and any(q.get("lab_stuck") for q in qt or [])
            if again:
                # One fresh lab VM for what a stuck one could not run; counted and shown.
                why = next((x.reason for x in part if x.vm_error), "the qtest driver")
                echo(f"hashlab compare: booting the lab VM again for {len(again)} row(s)"
                     f"{' and the qtest driver' if qt_again else ''} (retry: {why[:150]})")
                retries.record("lab", f"{d.name}: {why}")
                part2, qt2 = _lab_part(again, d, out, base, base_path, guest_kernel,
                                       lab_timeout, echo, qtest=qt_again)
                first = {x.id: x for x in part}
                for x in part2:
                    x.retries = [*first[x.id].retries,
                                 f"lab VM booted again after: {first[x.id].reason}"]
                    first[x.id] = x
                part = [first[r.id] for r in group if r.id in first]
                if qt_again and qt2 is not None:
                    qt = qt2
            results_lab += part
            if qt is not None:
                qtests[d.name] = qt
            timings[lab_part_name(d.name)] = round(time.monotonic() - t1, 1)
    merged = merge(rows, results_local, results_lab)
    find_regressions(merged)
    timings["total"] = round(time.monotonic() - t0, 1)
    meta = {"base": str(base_path), "guest_kernel": guest_kernel,
            "host_kernel": datapath.kernel_release(), "in_lab": here_lab,
            "timings": timings, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "argv": shlex.join(sys.argv)}
    if qtest:
        meta["qtest"] = qtests
    return merged, meta
