"""The comparison's logic without a VM: rows, scenarios per row, judging, merging, tables.

Runs on the host tier.  Observations are made up from the oracle (a "perfect" device,
one with no hashes, one on the wrong queue) and go through the same functions that
judge a real run (``hashlab.run.compare``, ``hashlab.run.result.Batch``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hashlab.run import compare as C
from hashlab.results import matrix as M
from hashlab.host import datapath
from hashlab.results import report
from hashlab.frames import packets
from hashlab.oracle import rss
from hashlab.run.result import (Batch, Datapath, GuestConfig, Negotiation, OracleChoice,
                                RunResult, VhostState, hash_queue)
from hashlab.errors import UsageError
from hashlab.oracle.rss import Report

SLICES = ["ipv4-tcp", "ipv4-udp", "ipv6-tcp", "ipv6-udp", "non-ip"]


@pytest.fixture(scope="module")
def frames():
    return packets.corpus(0).select(SLICES)


def oracle(behaviour="spec", types=rss.LINUX_GUEST_TYPES, queues=2):
    return rss.RssConfig.equal_table(queues, key=rss.MS_KEY, hash_types=types,
                                     behaviour=behaviour)


def observe(frames, conf, hashes=True, queue_of=None):
    """What the Linux guest would record if the device behaved like CONF."""
    out = []
    for f in frames:
        e = conf.expect(f.data)
        q = queue_of(e) if queue_of else e.queue
        out.append(report.Observed(len=len(f.data) - 14, hash=e.hash if hashes else 0,
                                   l4_hash=int(e.l4) if hashes else 0, queue=q))
    return out


def fake_run(frames, observed, conf, *, hash_report=True, check_hash=True, queue_model="table",
             rss_on=True, ok=True, behaviour=None, where="host", series=False):
    b = Batch(0, frames, observed, conf, check_hash, queue_model, 2, hash_report)
    cmp = report.compare_batches([(b.sent(), b.observed, b.check_hash)])
    features = {"RSS": rss_on, "HASH_REPORT": hash_report}
    return RunResult(
        "x", Path("/nonexistent"), ok=ok and cmp.ok, comparison=cmp,
        checks=[("vhost_running", None)], seconds=12.3, batches=[b],
        datapath=Datapath(qemu="patched", qemu_binary="qemu", qemu_version="10.0.13",
                          vhost=True, where=where, scenario_where=where, accel="kvm",
                          host_kernel="6.12.117", kernel_has_series=series,
                          design="progtype" if series else None,
                          scenario_design=None, behaviour=behaviour or conf.behaviour),
        negotiation=Negotiation(negotiated=dict(features),
                                offered={"RSS": rss_on, "HASH_REPORT": True}),
        vhost=VhostState(started=True, vhost_dev=True, fds=2, acked_hash_report=hash_report,
                         kernel_offers_hash_report=True, nvqs=4, max_queues=2),
        guest=GuestConfig(features=dict(features), key=conf.key.hex(), table=conf.table,
                          flows={}, hash_types="", rxhash=True, combined=2, raw={}),
        oracle=OracleChoice(key=conf.key.hex(), hash_types="", check_hash=check_hash,
                            behaviour=behaviour or conf.behaviour, hashes="oracle",
                            queues=queue_model),
        qemu_warnings=["warning: something once"])


ROW = C.ROWS_BY_ID["lab-patched-vhost"]


# --------------------------------------------------------------------------- rows


def test_rows_and_parse():
    ids = [r.id for r in C.ROWS]
    assert ids[:5] == ["host-stock", "host-patched", "lab-stock-vhost", "lab-patched",
                       "lab-patched-vhost"]
    assert len(set(ids)) == len(ids)
    assert [r.id for r in C.parse_rows("all")] == ids
    assert {r.where for r in C.parse_rows("lab")} == {"lab"}
    assert [r.id for r in C.parse_rows("lab-patched-vhost,host-stock")] == [
        "host-stock", "lab-patched-vhost"]  # always in table order
    with pytest.raises(UsageError, match="unknown comparison row 'nope'"):
        C.parse_rows("host-stock,nope")
    # the rows the brief asks for are all there: stock software, the mismatched pairing,
    # patched with vhost off and on, patched on a kernel without the series
    want = {("stock", False, "host"), ("stock", True, "lab"), ("patched", False, "lab"),
            ("patched", True, "lab"), ("patched", False, "host")}
    assert want <= {(r.qemu, r.vhost, r.where) for r in C.ROWS}


def test_row_scenarios_from_the_base():
    base = C.load_base()
    base = {**base, "expect": {**(base.get("expect") or {}),
                               "known_divergences": {"ipv4 IHL 4": "pinned"}}}
    docs = {r.id: C.row_scenario_doc(r, base, guest_kernel="lab") for r in C.ROWS}
    for rid, doc in docs.items():
        row = C.ROWS_BY_ID[rid]
        assert doc["name"] == f"compare-{rid}"
        assert doc["datapath"]["qemu"] == row.qemu
        assert doc["datapath"]["vhost"] == ("on" if row.vhost else "off")
        assert "netdev" not in doc["datapath"]
        assert doc["guest"]["kernel"] == ("lab" if row.where == "lab" else base["guest"]["kernel"])
        # QEMU-software pins only where the row's model is QEMU's software path
        assert ("known_divergences" in doc["expect"]) == row.keep_pins
    # stock QEMU on the kernel with the series: judged exactly as on the stock kernel
    sc = C.row_scenario(C.ROWS_BY_ID["lab-stock-vhost"], base)
    ref = C.row_scenario(C.ROWS_BY_ID["lab-stock-vhost-stock-kernel"], base)
    assert sc.datapath.vhost and sc.expect.hash_report_negotiated is False
    assert (sc.expect.hashes, sc.expect.queues, sc.datapath.behaviour) == \
        (ref.expect.hashes, ref.expect.queues, ref.datapath.behaviour)
    sc = C.row_scenario(ROW, base)
    assert sc.datapath.resolved_behaviour("progtype") == "spec" and sc.expect_vhost


def test_rows_name_their_design():
    from hashlab import designs

    for row in C.ROWS:
        assert (row.design is None) == (row.where == "host"), row.id
        assert row.design is None or row.design in designs.NAMES, row.id
        if row.design:  # the row's scenario boots that design's kernel
            assert C.row_scenario_doc(row, C.load_base())["datapath"]["design"] == row.design
        # the baseline: the same QEMU and vhost on the kernel without any series
        if row.baseline:
            b = C.ROWS_BY_ID[row.baseline]
            assert (b.qemu, b.vhost, b.design) == (row.qemu, row.vhost, designs.CONTROL)
    # the table's kernel column and the JSON's design field, as before the registry
    kernels = {r.id: (r.kernel, C.placeholder(r, M.NOT_BUILT, "x").design) for r in C.ROWS}
    assert kernels["host-stock"] == ("host (no series)", None)
    assert kernels["lab-patched-vhost"] == ("lab (progtype series)", "progtype")
    assert kernels["lab-patched-vhost-kfunc"] == ("lab (kfunc series)", "kfunc")
    assert kernels["lab-stock-vhost-stock-kernel"] == ("lab without the series", "stock")
    assert C.lab_part_name("progtype") == "lab" and C.lab_part_name("stock") == "lab-stock-kernel"


def test_availability(monkeypatch):
    row = C.ROWS_BY_ID["lab-stock-vhost-stock-kernel"]
    assert row.design == "stock" and C.ROWS_BY_ID["lab-patched-vhost"].design == "progtype"
    # every build present unless said otherwise: the answer must not depend on the cache
    built = {"progtype"}  # the designs whose lab kernel is built
    monkeypatch.setattr(datapath, "patched_qemu", lambda variant="patched": Path("/bin/true"))
    monkeypatch.setattr(datapath, "lab_kernel_path",
                        lambda design="progtype": Path("/bzImage") if design in built else None)
    monkeypatch.delenv(datapath.LAB_DESIGN_ENV, raising=False)
    status, why = C.availability(row, here_is_lab=False)
    assert status == M.NOT_BUILT and "build-kernel --design stock" in why
    assert why == C.UNPATCHED_LAB_REASON
    built.add("stock")
    assert C.availability(row, here_is_lab=False) is None
    # in a lab VM, rows go to the kernel they need: with the series or without
    monkeypatch.setattr(datapath, "kvm_usable", lambda: True)
    kfunc_row = C.ROWS_BY_ID["lab-patched-vhost-kfunc"]
    for prog_type, kfunc in ((True, False), (False, False), (False, True)):
        monkeypatch.setattr(datapath, "kernel_has_prog_type", lambda: prog_type)
        monkeypatch.setattr(datapath, "kernel_has_kfunc", lambda: kfunc)
        monkeypatch.setattr(datapath, "kernel_has_tun_hash", lambda: False)
        assert (C.availability(row, here_is_lab=True) is None) == (not prog_type and not kfunc)
        assert (C.availability(C.ROWS_BY_ID["lab-patched-vhost"], True) is None) == prog_type
        assert (C.availability(kfunc_row, True) is None) == kfunc
    # the design the lab VM was booted as (lab.run(design=)) wins over the probe
    monkeypatch.setattr(datapath, "kernel_has_prog_type", lambda: True)
    monkeypatch.setenv(datapath.LAB_DESIGN_ENV, "stock")
    assert C.availability(row, here_is_lab=True) is None
    assert C.availability(C.ROWS_BY_ID["lab-patched-vhost"], True) == (
        M.NOT_SUPPORTED, "this lab VM runs the stock kernel, not progtype")
    monkeypatch.delenv(datapath.LAB_DESIGN_ENV)
    built.clear()
    assert C.availability(C.ROWS_BY_ID["lab-stock-vhost"], False) == (
        M.NOT_BUILT, "the lab kernel is not built (scripts/build-kernel)")
    assert C.availability(C.ROWS_BY_ID["host-stock"], False) is None

    def not_built(variant="patched"):
        raise datapath.MissingToolError(f"no {variant}")
    monkeypatch.setattr(datapath, "patched_qemu", not_built)
    assert C.availability(C.ROWS_BY_ID["host-patched"], False)[0] == M.NOT_BUILT
    assert C.availability(C.ROWS_BY_ID["lab-progtype-qemu-kfunc"], False) == (
        M.NOT_BUILT, "no progtype-only")
    monkeypatch.setattr(datapath, "kernel_has_series", lambda: True)
    assert C.availability(C.ROWS_BY_ID["host-stock"], True)[0] == M.NOT_SUPPORTED


# --------------------------------------------------------------------------- judging


def test_designs_json_is_flat_and_numeric(frames):
    """designs.json: one object per row, the keys a comparison of the designs needs,
    counts as numbers (a row that did not run has zeros and says why)."""
    conf = oracle("spec")
    ran = C.row_result_from_run(ROW, fake_run(frames, observe(frames, conf), conf,
                                              where="lab", series=True), 40.0)
    missing = C.placeholder(C.ROWS_BY_ID["lab-patched-vhost-kfunc"], M.NOT_BUILT, "no kernel")
    doc = M.designs_json([ran, missing])
    need = {"design", "qemu", "kernel", "vhost", "hash_report_negotiated", "frames",
            "hashes_right", "queues_right"}
    assert all(need <= set(d) for d in doc)
    a, b = doc
    assert a["design"] == "progtype" and a["vhost"] is True and a["hash_report_negotiated"]
    assert a["frames"] == a["hashes_right"] == a["queues_right"] == len(frames)
    assert all(isinstance(a[k], int) for k in ("frames", "hashes_right", "queues_right"))
    assert b["design"] == "kfunc" and b["status"] == M.NOT_BUILT and b["frames"] == 0
    assert b["reason"] == "no kernel" and b["ok"] is False
    json.dumps(doc)  # plain JSON
    # a guest that gets no hashes has none right, whatever the vacuous count says
    blind = C.row_result_from_run(ROW, fake_run(frames, observe(frames, conf), conf,
                                                hash_report=False, check_hash=False,
                                                where="lab", series=True), 40.0)
    (c,) = M.designs_json([blind])
    assert c["hashes_checked"] is False and c["hashes_right"] == 0
    assert c["queues_right"] == len(frames)


def test_perfect_spec_device(frames):
    conf = oracle("spec")
    res = fake_run(frames, observe(frames, conf), conf, where="lab", series=True)
    r = C.row_result_from_run(ROW, res, 40.0)
    assert r.status == M.RAN and r.ok and r.vhost_running
    assert r.hash_report_offered and r.hash_report_negotiated and r.rss_negotiated
    n = len(frames)
    assert r.spec["seen"] == r.spec["hash_right"] == r.spec["queue_right"] == n
    assert r.spec["hashed_expected"] == r.spec["hashed_right"] == n - len(
        frames.select(["non-ip"]))
    assert r.kernel == "lab 6.12.117 (progtype series)" and r.qemu == "patched 10.0.13"
    assert M.hashes_cell(r) == f"{n}/{n}" and M.queues_cell(r) == f"{n}/{n}"
    assert M.verdict(r) == "PASS (= spec)"
    assert set(r.spec["by_type"]) == {"NONE", "TCPv4", "UDPv4", "TCPv6", "UDPv6"}


def test_no_hash_device_is_judged_against_the_spec(frames):
    """The mismatched pairing: its own model (no hashes, tap's queue) passes, the spec
    columns show what the guest really got."""
    conf = oracle("qemu-software")
    obs = observe(frames, conf, hashes=False, queue_of=lambda e: 1)
    res = fake_run(frames, obs, conf, check_hash=False, queue_model="any")
    assert res.ok
    r = C.row_result_from_run(C.ROWS_BY_ID["lab-stock-vhost"], res, 20.0)
    unhashed = len(frames.select(["non-ip"]))
    assert r.spec["hash_right"] == unhashed  # only the frames the spec does not hash
    assert r.spec["hashed_right"] == 0 and r.spec["hashed_expected"] == len(frames) - unhashed
    assert r.spec["queue_checked"] == len(frames)
    assert 0 < r.spec["queue_right"] < len(frames)
    assert r.own["mismatch"] == 0 and r.own["queue_model"] == "any"
    assert M.verdict(r).startswith("PASS")
    assert "%" in M.hashes_cell(r)


def test_software_row_against_the_spec(frames):
    """A qemu-software row judged against the spec: the same observations, the spec's
    expectations (they agree on these slices with the Linux guest's types)."""
    conf = oracle("qemu-software")
    res = fake_run(frames, observe(frames, conf), conf)
    spec = C.spec_comparison(res)
    assert spec.ok and all(b.oracle.behaviour == "qemu-software" for b in res.batches)
    assert {v.expected["report"] for v in spec.verdicts} >= {"TCPv4", "UDPv6", "NONE"}


def test_wrong_queue_fails_own_model_and_shows(frames):
    conf = oracle("spec")
    obs = observe(frames, conf, queue_of=lambda e: 1 - e.queue)
    res = fake_run(frames, obs, conf)
    r = C.row_result_from_run(ROW, res, 1.0)
    assert not r.ok and r.spec["queue_right"] == 0 and r.spec["hash_right"] == len(frames)
    assert M.verdict(r).startswith("FAIL: ") and "mismatches vs spec" in M.verdict(r)


def test_hash_only_queue_model(frames):
    """Hash reporting without RSS on the patched program: (hash & 0xffff) mod queues."""
    conf = rss.RssConfig(key=rss.MS_KEY, hash_types=rss.LINUX_GUEST_TYPES, table=[0],
                         behaviour="spec")
    obs = observe(frames, conf, queue_of=lambda e: hash_queue(e, 2))
    b = Batch(0, frames, obs, conf, True, "hash", 2, True)
    assert report.compare_batches([(b.sent(), obs, True)]).ok
    e = rss.Expectation(0x12345, Report.TCPv4, 0, True)
    assert hash_queue(e, 4) == 0x2345 % 4 and hash_queue(e, 1) == 0
    assert hash_queue(rss.Expectation(0, Report.NONE, 0, False), 4) == 0
    # with the table model instead, half of them land elsewhere
    assert not report.compare_batches([(b.sent(queue_model="table"), obs, True)]).ok


def test_batches_are_matched_separately(frames):
    """Two batches of the same frames under two keys: each judged with its own oracle."""
    a, b = oracle("spec"), rss.RssConfig.equal_table(2, key=bytes(range(40)), behaviour="spec")
    ba = Batch(0, frames, observe(frames, a), a, True, "table", 2, True)
    bb = Batch(1, frames, observe(frames, b), b, True, "table", 2, True)
    cmp = report.compare_batches([(x.sent(), x.observed, True) for x in (ba, bb)])
    assert cmp.ok and cmp.counts()["sent"] == 2 * len(frames)
    assert {v.batch for v in cmp.verdicts} == {0, 1}
    swapped = report.compare_batches([(ba.sent(), bb.observed, True)])
    assert not swapped.ok


# --------------------------------------------------------------------------- merging


def placeholder(rid, status=M.NOT_BUILT, reason="why"):
    return C.placeholder(C.ROWS_BY_ID[rid], status, reason)


def test_merge_keeps_order_and_reports_missing_rows(frames):
    order = list(C.ROWS)
    conf = oracle("spec")
    ran = C.row_result_from_run(ROW, fake_run(frames, observe(frames, conf), conf), 3.0)
    host = [placeholder("host-stock", M.RAN, "")]
    lab = [ran, placeholder("lab-patched", M.NOT_BUILT, "the patched QEMU is not built")]
    merged = C.merge(order, lab, host)
    assert [r.id for r in merged] == [r.id for r in order]
    by = {r.id: r for r in merged}
    assert by["lab-patched-vhost"] is ran
    assert by["lab-patched"].status == M.NOT_BUILT
    # nobody reported these: never silently missing
    assert by["lab-stock-vhost"].status == M.ERROR and "no result" in by["lab-stock-vhost"].reason
    # a later part wins
    again = C.merge(order, [placeholder("host-stock", M.ERROR, "x")], host)
    assert next(r for r in again if r.id == "host-stock").status == M.RAN


def test_json_round_trip(frames):
    conf = oracle("spec")
    rows = [C.row_result_from_run(ROW, fake_run(frames, observe(frames, conf), conf), 3.0),
            placeholder("lab-stock-vhost-stock-kernel", M.NOT_BUILT, C.UNPATCHED_LAB_REASON)]
    doc = json.loads(json.dumps(M.rows_to_json(rows, {"timings": {"total": 1.0}})))
    back = M.rows_from_json(doc)
    assert [r.to_json() for r in back] == [r.to_json() for r in rows]
    with pytest.raises(UsageError):
        M.rows_from_json({"rows": []})


def test_table_rendering(frames):
    conf = oracle("spec")
    rows = [C.row_result_from_run(ROW, fake_run(frames, observe(frames, conf), conf), 3.0),
            placeholder("lab-patched", M.NOT_BUILT, "the patched QEMU is not built (scripts/build-qemu)"),
            placeholder("lab-stock-vhost-stock-kernel", M.NOT_BUILT, C.UNPATCHED_LAB_REASON)]
    text = M.render_table(rows)
    lines = text.splitlines()
    assert lines[0].startswith("| datapath ") and "hash report offered" in lines[0]
    for col in ("QEMU", "kernel", "hashes right", "queues right"):
        assert f" {col} " in lines[0]
    assert set(lines[1]) <= {"|", "-"}
    assert len(lines) == 2 + len(rows)
    assert len({len(ln) for ln in lines}) == 1  # aligned
    assert "not built: the patched QEMU is not built" in text
    assert "not built: the stock lab kernel (no series) is not built" in text
    types = M.render_types(rows)
    assert types.splitlines()[0].split()[-1] == "lab-patched-vhost"
    assert "(queues right)" in types
    assert M.render_types([rows[1]]) == "(no row ran)"
    # a row whose guest gets no hash at all has nothing to count per type
    import dataclasses
    nohash = dataclasses.replace(rows[0], id="nohash", spec={**rows[0].spec, "check_hash": False})
    lines = M.render_types([rows[0], nohash]).splitlines()
    assert all(ln.split()[-1] == "n/a" for ln in lines[1:-1]), lines
    assert "/" in lines[1].split()[-2] and "/" in lines[-1].split()[-1]


def test_compare_without_lab_kernel(monkeypatch, tmp_path):
    """Lab rows that cannot run come back as placeholders, with the reason."""
    monkeypatch.setattr(datapath, "lab_kernel_path", lambda design="progtype": None)
    monkeypatch.setattr(datapath, "in_lab", lambda: False)
    rows = C.parse_rows("lab")
    results, meta = C.compare(rows, tmp_path, C.DEFAULT_BASE, echo=lambda m: None)
    assert [r.id for r in results] == [r.id for r in rows]
    assert all(r.status == M.NOT_BUILT for r in results)
    assert "lab" not in meta["timings"]


def _ran(row_id: str, rss_on: bool, queue_right: int, check_hash: bool = False) -> M.RowResult:
    row = C.ROWS_BY_ID[row_id]
    return M.RowResult(id=row.id, datapath=row.datapath, status=M.RAN, ok=True, model=row.model,
                       rss_negotiated=rss_on,
                       spec={"sent": 100, "seen": 100, "queue_checked": 100,
                             "queue_right": queue_right, "check_hash": check_hash})


def test_a_row_that_loses_what_the_stock_kernel_gave_is_a_regression():
    # every lab row on the kernel with the series names its baseline on the kernel without
    assert C.ROWS_BY_ID["lab-stock-vhost"].baseline == "lab-stock-vhost-stock-kernel"
    assert C.ROWS_BY_ID["lab-patched-vhost"].baseline == "lab-patched-vhost-stock-kernel"
    assert all(C.ROWS_BY_ID[r.baseline].design == "stock" for r in C.ROWS if r.baseline)
    # what the unfixed series did to stock QEMU: HASH_REPORT taken, RSS lost, queues 247/497
    worse = _ran("lab-stock-vhost", rss_on=True, queue_right=50)
    base = _ran("lab-stock-vhost-stock-kernel", rss_on=True, queue_right=94)
    C.find_regressions([worse, base])
    assert worse.ok is False and base.ok is True
    assert M.verdict(worse) == ("REGRESSION: lost right queues 50/100 (50%) < 94/100 (94%) "
                                "vs lab-stock-vhost-stock-kernel")
    assert "PASS" not in M.render_table([worse])
    lost_rss = _ran("lab-patched-vhost", rss_on=False, queue_right=100)
    C.find_regressions([lost_rss, _ran("lab-patched-vhost-stock-kernel", True, 100)])
    assert M.verdict(lost_rss).startswith("REGRESSION: lost RSS")
    # equal or better is no regression; a baseline that did not run judges nothing
    same = _ran("lab-stock-vhost", rss_on=True, queue_right=94)
    C.find_regressions([same, base])
    assert same.ok and not same.regression
    alone = _ran("lab-stock-vhost", rss_on=True, queue_right=1)
    C.find_regressions([alone])
    assert alone.ok


def test_a_stuck_lab_vm_skips_its_other_rows(monkeypatch, tmp_path):
    """In the lab VM, after a row whose VM failed past its retries, the rest are not run
    there (each would time out) and say why; outside the lab nothing is skipped."""
    rows = [C.ROWS_BY_ID[i] for i in ("lab-stock-vhost-tunrss", "lab-patched-tunrss",
                                      "lab-patched-vhost-tunrss")]
    ran = []

    async def fake_row(row, base, out, guest_kernel, echo):
        ran.append(row.id)
        r = C.placeholder(row, M.ERROR, "QemuStartError: no QMP greeting")
        r.vm_error = "QemuStartError"
        return r

    monkeypatch.setattr(C, "run_row", fake_row)
    monkeypatch.setattr(C, "availability", lambda row, here_lab: None)
    monkeypatch.setattr(datapath, "in_lab", lambda: True)
    res = C.run_rows(rows, tmp_path, {}, echo=lambda m: None)
    assert ran == ["lab-stock-vhost-tunrss"]
    assert [r.vm_error for r in res] == ["QemuStartError", "lab VM stuck", "lab VM stuck"]
    assert "stuck after lab-stock-vhost-tunrss" in res[1].reason
    ran.clear()
    monkeypatch.setattr(datapath, "in_lab", lambda: False)
    C.run_rows(rows, tmp_path, {}, echo=lambda m: None)
    assert len(ran) == 3


def test_rows_a_stuck_lab_vm_lost_get_one_fresh_boot(monkeypatch, tmp_path):
    rows = [C.ROWS_BY_ID[i] for i in ("lab-stock-vhost-tunrss", "lab-patched-vhost-tunrss")]
    boots = []

    def fake_part(runnable, design, out, base, base_path, guest_kernel, lab_timeout, echo,
                  qtest=False):
        boots.append(([r.id for r in runnable], qtest))
        if len(boots) == 1:  # the first boot: the second row's guest stalls
            good = _ran(runnable[0].id, True, 100)
            bad = C.placeholder(runnable[1], M.ERROR, "GuestHang: stalled")
            bad.vm_error = "GuestHang"
            return [good, bad], [{"error": "not run", "ok": False, "lab_stuck": True}]
        return [_ran(r.id, True, 100) for r in runnable], [{"ok": True, "vhost": True}]

    monkeypatch.setattr(C, "_lab_part", fake_part)
    monkeypatch.setattr(C, "availability", lambda row, here_lab: None)
    monkeypatch.setattr(datapath, "in_lab", lambda: False)
    results, meta = C.compare(rows, tmp_path, C.DEFAULT_BASE, echo=lambda m: None, qtest=True)
    assert boots == [(["lab-stock-vhost-tunrss", "lab-patched-vhost-tunrss"], True),
                     (["lab-patched-vhost-tunrss"], True)]
    assert [r.status for r in results] == [M.RAN, M.RAN]
    assert results[1].retries == ["lab VM booted again after: GuestHang: stalled"]
    assert results[0].retries == []
    assert meta["qtest"]["tunrss"] == [{"ok": True, "vhost": True}]
