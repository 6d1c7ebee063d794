"""hashlab bench datapath / turnaround and the load phase: the judging, the ratios, the
tables and the build history on synthetic inputs (no timing asserted), and the unpaced
sender on a real tap."""

from __future__ import annotations

import json
import os

import pytest

from hashlab import cache
from hashlab.run import load
from hashlab.results import report
from hashlab.oracle import rss
from hashlab.bench import datapath as bd
from hashlab.bench import turnaround as bt
from hashlab.errors import UsageError
from hashlab.run.scenario import load_scenario, parse_scenario


def _sent(n=3, known_id=None):
    out = []
    for i in range(n):
        e = rss.Expectation(0x1000 + i, rss.Report.TCPv4, i % 2, True)
        out.append(report.Sent(i, "ipv4-tcp", f"tcp #{i}", 100 + i, e,
                               known="pinned" if i == known_id else None))
    return out


def _obs(s, **kw):
    o = dict(len=s.length - 14, hash=s.expect.hash, l4_hash=1, queue=s.expect.queue, ts=1.0)
    o.update(kw)
    return report.Observed(**o)


def test_judge_records_judges_every_record_not_only_the_first():
    sent = _sent()
    obs = [_obs(s) for s in sent] * 3  # every frame three times
    obs.append(_obs(sent[1], hash=0xdead))  # one wrong copy
    obs.append(_obs(sent[2], queue=1 - sent[2].expect.queue))
    obs.append(report.Observed(len=999, hash=0, l4_hash=0, queue=0))  # not ours
    j = report.judge_records(sent, obs, check_hash=True)
    assert (j["records"], j["right"], j["wrong"], j["unknown"]) == (12, 9, 2, 1)
    assert j["wrong_fields"] == {"hash": 1, "queue": 1}
    assert [w["id"] for w in j["first_wrong"]] == [1, 2]


def test_judge_records_without_hash_report_expects_no_hash_and_counts_pins():
    sent = _sent(known_id=0)
    j = report.judge_records(sent, [_obs(s, hash=0, l4_hash=0) for s in sent], check_hash=False)
    assert j["right"] == 3 and j["wrong"] == 0
    j = report.judge_records(sent, [_obs(s, hash=7) for s in sent], check_hash=True)
    assert (j["right"], j["wrong"], j["known"]) == (0, 2, 1)


def test_differences_is_what_compare_uses():
    s = _sent()[1]
    assert report.differences(s, _obs(s), True) == []
    assert report.differences(s, _obs(s, l4_hash=0), True) == ["class"]
    assert report.differences(s, _obs(s), False) == ["hash", "class"]


def test_load_section_is_validated():
    base = {"name": "x", "datapath": {"queues": 2}}
    sc = parse_scenario({**base, "load": {"frames": 50, "rounds": 2}})
    assert (sc.load.frames, sc.load.rounds) == (50, 2)
    assert parse_scenario(base).load.frames == 0
    for bad in ({"frames": 0}, {"rounds": 2}, {"frames": 10, "burst": 1}, {"frames": "many"}):
        with pytest.raises(UsageError, match="load"):
            parse_scenario({**base, "load": bad})


def test_bench_scenarios_share_guest_corpus_and_load():
    scs = [load_scenario(p) for p in bd.scenario_paths()]
    assert [s.name for s in scs] == [n for n, _ in bd.ROWS]
    for s in scs:
        assert s.where == "lab" and s.load.frames > 0
        assert (s.guest, s.corpus, s.load) == (scs[0].guest, scs[0].corpus, scs[0].load)
    by = {s.name: s for s in scs}
    assert not by["bench-software"].datapath.vhost and by["bench-software"].datapath.qemu == "stock"
    assert by["bench-ebpf-vhost"].datapath.vhost and by["bench-ebpf-vhost"].datapath.qemu == "patched"
    assert by["bench-stock-vhost"].datapath.device["hash"] == "off"


def _results(name, right_fps, wrong=0, hash_report=True, ok=True):
    rnd = {"right_fps": right_fps}
    return {"scenario": name, "ok": ok, "checks": [{"name": "load", "ok": ok, "failure": None}],
            "datapath": {"qemu": "patched", "qemu_version": "10.0.13", "vhost": True,
                         "host_kernel": "6.12.117"},
            "oracle": {"check_hash": hash_report},
            "comparison": {"counts": {"sent": 208, "match": 208}},
            "load": {"frames_per_round": 1000, "rounds": [rnd, rnd],
                     "median": {"offered_fps": 9000.0, "delivered_fps": right_fps + 10,
                                "right_fps": right_fps, "cpu_us_per_frame_vcpu": 50.0,
                                "cpu_us_per_frame_vhost": 5.0, "cpu_us_per_frame_other": 1.0},
                     "totals": {"offered": 2000, "delivered": 1800, "right": 1800 - wrong,
                                "wrong": wrong, "known": 0, "unknown": 0,
                                "tap_tx_dropped": 200, "guest_rx_dropped": 0,
                                "trace_overrun": 0, "lost": 200},
                     "sender_bound_rounds": 0, "qemu_peak_rss_kib": 300000}}


def test_datapath_ratios_and_table():
    fps = {"bench-software": 1000.0, "bench-ebpf-tap": 1500.0, "bench-ebpf-vhost": 4000.0,
           "bench-stock-vhost": 5000.0}
    rows = [bd.row_from_results(n, label, _results(n, fps[n], hash_report=n != "bench-stock-vhost"))
            for n, label in bd.ROWS]
    res = bd.summarize(rows)
    assert res["ok"] and res["wrong_records"] == 0
    assert [r["ratio_vs_software"] for r in res["rows"]] == [1.0, 1.5, 4.0, 5.0]
    assert res["findings"]["vhost_ebpf_vs_software"] == 4.0
    assert res["findings"]["vhost_with_hashes_vs_without"] == pytest.approx(4010 / 5010, abs=0.01)
    assert rows[0]["host_cpu_us_per_frame"] == 6.0
    assert res["findings"]["host_cpu_software_vs_vhost_ebpf"] == 1.0
    text = bd.table(res)
    assert "4.00x" in text and "293 MiB" in text and "wrong hash/class/queue under load: 0" in text
    json.dumps(res)


def test_datapath_other_designs_side_by_side():
    """--design progtype,kfunc: the eBPF rows again on kfunc's kernel, each against the
    same row on the first design (host CPU per frame, right fps)."""
    rows = [bd.row_from_results(n, label, _results(n, 1000.0)) for n, label in bd.ROWS]
    k = _results("bench-ebpf-vhost", 800.0)
    k["load"]["median"]["cpu_us_per_frame_vhost"] = 7.0  # 8 us/frame vs 6
    rows.append(bd.row_from_results("bench-ebpf-vhost@kfunc", "x [kfunc]", k))
    res = bd.summarize(rows, {"design": "progtype", "designs": ["progtype", "kfunc"]})
    got = res["findings"]["other_designs"]["kfunc"]["bench-ebpf-vhost"]
    assert got == {"right_fps_vs_first": 0.8, "host_cpu_vs_first": pytest.approx(1.33),
                   "host_cpu_us_per_frame": 8.0}
    assert "bench-ebpf-vhost on kfunc vs on progtype: host CPU per frame 1.33x" in bd.table(res)


def test_datapath_wrong_records_or_missing_rows_fail_the_bench():
    rows = [bd.row_from_results(n, label, _results(n, 100.0, wrong=n == "bench-ebpf-tap"))
            for n, label in bd.ROWS]
    res = bd.summarize(rows)
    assert not res["ok"] and res["wrong_records"] == 1
    rows[1] = bd.row_from_results("bench-ebpf-tap", "x", None)
    res = bd.summarize(rows)
    assert not res["ok"] and "did not run" in bd.table(res)
    rows[1] = bd.row_from_results("bench-ebpf-tap", "x", {
        "ok": False, "error": {"type": "GuestHang", "message": "hung\n  qemu: ...\n  log"}})
    text = bd.table(bd.summarize(rows))
    assert "did not run: GuestHang: hung" in text and "qemu: ..." not in text


def test_build_history_and_recorded_builds(tmp_path):
    for secs, hit, miss in ((520.0, 0, 1700), (88.0, 1650, 50)):
        cache.record_build({"kind": "kernel", "key": "k1", "build_seconds": secs,
                            "ccache": {"hit": hit, "miss": miss}, "finished": "x"}, tmp_path)
    (tmp_path / cache.HISTORY).open("a").write("not json\n")
    rec = bt.recorded_builds(cache.build_history(tmp_path))
    assert rec["kernel"]["builds"] == 2
    assert rec["kernel"]["slowest"]["build_seconds"] == 520.0
    assert rec["kernel"]["latest"]["ccache"] == {"hit": 1650, "miss": 50}


def test_cache_entry_records_its_build(tmp_path):
    key = cache.InputKey("thing").add_text("a", "b")
    e = cache.CacheEntry(key, tmp_path)
    with e.fill() as d:
        (d / "x").write_text("y")
        e.extra["ccache"] = {"hit": 1, "miss": 2}
    assert e.done and e.meta()["ccache"] == {"hit": 1, "miss": 2}
    assert cache.build_history(tmp_path)[-1]["key"] == key.key


def test_turnaround_table():
    res = {"recorded_builds": bt.recorded_builds([
               {"kind": "kernel", "key": "a", "build_seconds": 520.0,
                "ccache": {"hit": 0, "miss": 1700}, "finished": "x"}]),
           "cache_hits": {"lab kernel": {"seconds": 0.6, "status": 0, "built_now": False}},
           "lab_boot": {"boot_to_command_seconds": 6.2, "boot_to_poweroff_seconds": 12.5},
           "first_report": {"seconds": 48.0, "guest_boot_seconds": 20.1, "frames": 497,
                            "matching": 497, "mismatches": 0, "status": 0},
           "demo": {"seconds": 77.0, "goal_seconds": 180.0, "goal_met": True, "phases": "p"}}
    text = bt.table(res)
    assert "8m40s" in text and "ccache 0 hit / 1700 miss" in text
    assert "497/497 frames right, 0 mismatches" in text and "goal < 3m00s: met" in text


def test_thread_cpu_and_peak_rss_of_a_real_process():
    cpu = load.thread_cpu(os.getpid())
    assert set(cpu) == {"vcpu", "vhost", "other"} and cpu["other"] > 0
    assert load.peak_rss_kib(os.getpid()) > 1000
    assert load.peak_rss_kib(2 ** 22 + 1) is None  # beyond pid_max: no such process


def test_blast_writes_every_frame_unpaced_to_a_real_tap():
    from hashlab.host.tap import Tap

    frames = [bytes([0x02] * 6 + [0x04] * 6) + b"\x08\x00" + bytes([i]) * (60 + i)
              for i in range(5)]
    with Tap(1) as tap:
        n, secs = tap.blast(frames, 23)
        assert n == 23 and secs > 0
        got = []
        os.set_blocking(tap.fds[0], False)
        while True:
            try:
                got.append(os.read(tap.fds[0], 4096))
            except BlockingIOError:
                break
        # our queue fd reads them back behind a 10-byte virtio_net_hdr, cycled in order
        assert [g[10:] for g in got] == [frames[i % 5] for i in range(23)]
        assert tap.stats()["tx_dropped"] == 0


def test_a_row_lost_to_the_vm_is_run_again_but_wrong_hashes_are_not(tmp_path):
    p = tmp_path / "results.json"
    assert bd._vm_lost(p) == "no results.json"
    p.write_text(json.dumps({"error": {"type": "GuestHang", "message": "no agent reply\nmore"}}))
    assert bd._vm_lost(p) == "GuestHang: no agent reply"
    p.write_text(json.dumps(_results("bench-software", 10.0, wrong=3, ok=False)))
    assert bd._vm_lost(p) is None  # a result, even a failing one, is reported as it is
    p.write_text(json.dumps({"error": {"type": "UsageError", "message": "bad"}}))
    assert bd._vm_lost(p) is None
