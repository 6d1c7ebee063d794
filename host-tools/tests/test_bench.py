"""hashlab bench: the table / ratio / JSON code on synthetic numbers (no timing asserted),
the helpers' wire formats, the Toeplitz tables, and the benchmark's packet classes."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest

from hashlab.oracle import rss
from hashlab.bench import report, tables, testrun

HERE_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _m(subject, cls, ns, where="host", **kw):
    return report.measurement(subject, where, cls, [ns, ns * 1.5, ns * 2], 1000, **kw)


def synthetic(lab: bool = True) -> dict:
    classes = [{"name": c, "desc": c} for c in ("ipv4-tcp", "ipv6-tcp", "non-ip")]
    subjects = [{"name": n, "desc": n, "kind": k, "reports_hash": r} for n, k, r in (
        ("empty", "bpf", False), ("upstream", "bpf", False), ("ours", "bpf", True),
        ("proto-table", "bpf", True), ("floor-table", "c", False))]
    ms = [
        _m("empty", "ipv4-tcp", 10), _m("empty", "ipv6-tcp", 10), _m("empty", "non-ip", 10),
        _m("upstream", "ipv4-tcp", 200), _m("upstream", "ipv6-tcp", 310), _m("upstream", "non-ip", 20),
        _m("ours", "ipv4-tcp", 210), _m("ours", "ipv6-tcp", 300), _m("ours", "non-ip", 20),
        _m("proto-table", "ipv4-tcp", 50), _m("proto-table", "ipv6-tcp", 100),
        _m("proto-table", "non-ip", 25),
        _m("floor-table", "ipv4-tcp", 40), _m("floor-table", "ipv6-tcp", 120),
    ]
    host = {"environments": {"host": {"kernel": "6.x", "bpf_jit_enable": 1}},
            "classes": classes, "subjects": subjects, "measurements": ms}
    if not lab:
        return host
    part = {"environments": {"lab": {"kernel": "6.12", "bpf_jit_enable": 1, "note": "TCG",
                                     "emulated": True}},
            "classes": classes, "subjects": subjects + [{"name": "ours-socket", "desc": "",
                                                          "kind": "bpf", "reports_hash": True}],
            "measurements": [_m("upstream", "ipv6-tcp", 9000, "lab"), _m("ours", "ipv6-tcp", 2000, "lab"),
                             _m("ours-socket", "ipv6-tcp", 1900, "lab")]}
    return report.merge(host, part)


def test_measurement_best_and_median():
    m = report.measurement("ours", "host", "ipv6-tcp", [30, 10, 20, 50], 99, "socket")
    assert m["ns_best"] == 10 and m["ns_median"] == 30 and m["samples"] == [10, 20, 30, 50]
    assert m["repeat"] == 99 and m["form"] == "socket" and report.value(m) == 10
    with pytest.raises(ValueError):
        report.measurement("x", "host", "c", [], 1)


def test_ratio_edge_cases():
    assert report.ratio(300, 100) == 3
    assert report.ratio(None, 1) is None and report.ratio(1, None) is None
    assert report.ratio(1, 0) is None


def test_merge_keeps_both_parts_and_unions_names():
    r = synthetic()
    assert report.wheres(r) == ["host", "lab"]
    assert set(r["environments"]) == {"host", "lab"}
    assert [s["name"] for s in r["subjects"]].count("ours") == 1
    assert "ours-socket" in [s["name"] for s in r["subjects"]]
    assert report.ns(r, "lab", "ours", "ipv6-tcp") == 2000
    assert report.ns(r, "host", "ours", "ipv6-tcp") == 300
    assert report.merge(synthetic(lab=False), None) == synthetic(lab=False)


def test_ratios_and_goal():
    r = report.finish(synthetic())
    assert r["kind"] == report.KIND and r["version"] == report.VERSION
    by = {(x["where"], x["class"], x["subject"]): x for x in r["ratios"]}
    assert ("host", "ipv6-tcp", "empty") not in by  # a reference, not a subject
    p = by[("host", "ipv6-tcp", "proto-table")]
    assert p["speedup_vs_upstream"] == pytest.approx(3.1)
    assert p["ns_without_test_run"] == 90
    assert p["speedup_vs_upstream_without_test_run"] == pytest.approx(300 / 90)
    assert p["x_floor"] == pytest.approx(100 / 120)
    assert by[("host", "ipv6-tcp", "floor-table")]["x_floor"] is None
    assert by[("host", "ipv6-tcp", "floor-table")]["ns_without_test_run"] is None  # C, not BPF
    assert ("host", "non-ip", "floor-table") not in by
    g = r["goal"]["host"]
    assert g["class"] == "ipv6-tcp" and g["required_speedup"] == 3.0
    assert g["ours_speedup"] == pytest.approx(310 / 300) and g["ours_meets_goal"] is False
    assert g["prototype_speedup"] == pytest.approx(3.1) and g["prototype_meets_goal"] is True
    assert g["verdict"] is True
    lab = r["goal"]["lab"]
    assert lab["verdict"] is False  # TCG's costs are not a CPU's
    assert lab["ours_speedup"] == pytest.approx(4.5) and lab["ours_meets_goal"] is True
    assert lab["prototype_speedup"] is None and lab["prototype_meets_goal"] is None


def test_table_text():
    r = report.finish(synthetic())
    text = report.table(r)
    lines = text.splitlines()
    assert lines[0].startswith("host: ns per packet") and "bpf_jit_enable=1" in lines[0]
    header = lines[1].split()
    assert header[:3] == ["class", "empty", "upstream"] and "proto-table" in header
    firsts = [(ln.split() or [""])[0] for ln in lines]
    row = dict(zip(header, lines[firsts.index("ipv6-tcp")].split()))
    assert row["upstream"] == "310" and row["proto-table"] == "100" and row["empty"] == "10.0"
    nonip = lines[firsts.index("non-ip")].split()
    assert nonip[-1] == "-"  # no floor for a frame that is not hashed
    assert "speed-up over upstream" in text and "3.10x" in text
    assert "goal (ipv6-tcp, >= 3x upstream): ours 1.03x (not met), prototype 3.10x (met)" in text
    assert "lab: ns per packet" in text and "ours 4.50x (met), prototype - (n/a)" in text
    assert "(emulated, for information only) goal" in text
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_table_without_baseline_or_goal():
    r = synthetic(lab=False)
    r["measurements"] = [m for m in r["measurements"] if m["subject"] != "upstream"]
    report.finish(r)
    text = report.table(r)
    assert "speed-up" not in text
    assert r["goal"]["host"]["ours_speedup"] is None
    assert "ours - (n/a)" in text


def test_json_round_trip(tmp_path):
    r = report.finish(synthetic())
    path = report.write(r, tmp_path / "bench" / "program.json")
    back = json.loads(path.read_text())
    assert back == json.loads(json.dumps(r))
    assert report.table(back) == report.table(r)


# --------------------------------------------------------------------------- helpers' formats


def test_testrun_wire_format():
    raw = testrun.encode([b"abc", b"\x01" * 20], [5, 7], ctx_size=200)
    assert raw[:4] == b"HLTR" and struct.unpack_from("<III", raw, 4) == (1, 200, 2)
    assert struct.unpack_from("<II", raw, 16) == (5, 3) and raw[24:27] == b"abc"
    assert len(testrun.encode([b"x"], 1)) == 16 + 8 + 1
    with pytest.raises(ValueError):
        testrun.encode([b"x", b"y"], [1])
    rec = struct.pack("<iIIIIHH", 22, 0, 0, 0, 0, 0, 0) + struct.pack("<iIIIIHH", 0, 3, 40, 200,
                                                                       0xDEADBEEF, 5, 2)
    a, b = testrun.decode(rec, 2)
    assert a.err == 22 and (b.retval, b.duration, b.ctx_size_out) == (3, 40, 200)
    assert (b.hash, b.report, b.queue) == (0xDEADBEEF, 5, 2)
    with pytest.raises(testrun.TestRunError):
        testrun.decode(rec[:-1], 2)


def test_toeplitz_tables_match_the_oracle():
    import random

    rng = random.Random(8)
    for key in (rss.MS_KEY, bytes(rng.randrange(256) for _ in range(40))):
        for n in (0, 1, 12, 36):
            data = bytes(rng.randrange(256) for _ in range(n))
            assert tables.check(key, data)
    v = tables.map_value(rss.MS_KEY)
    assert len(v) == 36 * 256 * 4 and struct.unpack_from("=I", v, 0) == (0,)
    assert struct.unpack_from("=I", v, 4 * 0x80)[0] == tables.window(rss.MS_KEY, 0) == 0x6D5A56DA
    assert len(tables.map_value(rss.MS_KEY, "nibble")) == 72 * 16 * 4
    with pytest.raises(ValueError):
        tables.byte_tables(bytes(39))


def test_bench_classes_are_what_they_say():
    from hashlab.bench import program

    infos = {c["name"]: c for c in (program.class_info(*c) for c in program.CLASSES)}
    assert list(infos) == ["ipv4-tcp", "ipv4-udp", "ipv6-tcp", "ipv6-ext", "non-ip"]
    assert {n: i["report"] for n, i in infos.items()} == {
        "ipv4-tcp": "TCPv4", "ipv4-udp": "UDPv4", "ipv6-tcp": "TCPv6", "ipv6-ext": "TCPv6_EX",
        "non-ip": "NONE"}
    assert [infos[n]["hash_input_len"] for n in infos] == [12, 12, 36, 36, 0]
    f = dict((n, fr) for n, _, fr in program.CLASSES)["ipv6-ext"]
    info = rss.parse_frame(f)
    assert info.hao is not None and info.rh2 is not None and info.ext_headers == (0, 43, 60)


def test_floor_binary_hashes_like_the_oracle():
    from hashlab.bench import tools

    exe = tools.floor_binary()  # scripts/setup installs the compiler: a failure is ours
    data = bytes(range(36))
    out = subprocess.run([str(exe), rss.MS_KEY.hex(), data.hex(), "10", "1"], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[0] == "bitwise" and out[4] == "table"
    assert int(out[3], 16) == int(out[7], 16) == rss.toeplitz(rss.MS_KEY, data)


def test_cli_registers_bench():
    r = subprocess.run([sys.executable, "-m", "hashlab", "bench", "--help"], capture_output=True,
                       text=True, cwd=HERE_REPO)
    assert r.returncode == 0 and "program" in r.stdout and "turnaround" in r.stdout
    for what, bad in (("datapath", ["--frames", "0"]), ("datapath", ["--rate", "-1"])):
        r = subprocess.run([sys.executable, "-m", "hashlab", "bench", what, *bad],
                           capture_output=True, text=True, cwd=HERE_REPO)
        assert r.returncode != 0 and "must be" in r.stderr  # refused before any VM boots


def test_key_map_tables_are_qemus():
    """hashlab.host.bpf fills the key map's tables (qemu/patches 0006) with the algorithm of
    ebpf_rss_fill_toeplitz_table(); they must equal the independent reference here."""
    import random

    from hashlab.host import bpf

    rng = random.Random(4)
    keys = [rss.MS_KEY, bytes(40), b"\xff" * 40] + [bytes(rng.randrange(256) for _ in range(40))
                                                    for _ in range(3)]
    for key in keys:
        value = bpf.rss_key_bytes(key)
        assert len(value) == bpf.RSS_KEY_VALUE_SIZE
        assert value[:40] == bpf.rss_key_bytes(key, tables=False)
        assert value[40:] == tables.map_value(key)


def test_uapi_layout_is_the_libbpf_wrappers():
    """The __sk_buff layout and the VNET_HASH program type have their home in uapi.linux;
    host.bpf still spells them out for libbpf (ctypes), and the two must agree."""
    import ctypes

    from hashlab.host import bpf
    from hashlab.uapi import linux as L

    assert bpf.PROG_TYPE_VNET_HASH == L.BPF_PROG_TYPE_VNET_HASH
    assert bpf.PROG_TYPE_SOCKET_FILTER == L.BPF_PROG_TYPE_SOCKET_FILTER
    assert ctypes.sizeof(bpf.SkBuff) == L.SKB_SIZE == testrun.SKB_SIZE
    assert (bpf.SkBuff.len.offset, bpf.SkBuff.vnet_hash_value.offset,
            bpf.SkBuff.vnet_hash_report.offset, bpf.SkBuff.vnet_rss_queue.offset) == \
        (L.SKB_LEN, L.SKB_VNET_HASH_VALUE, L.SKB_VNET_HASH_REPORT, L.SKB_VNET_RSS_QUEUE)


def _design_part(where: str, design: str, forms: dict, ms: list) -> dict:
    return {"environments": {where: {"kernel": "6.12", "emulated": True, "design": design,
                                     "forms": forms}},
            "classes": [], "subjects": [], "measurements": ms}


def test_designs_side_by_side_each_against_its_own_upstream():
    """progtype's VNET_HASH form and kfunc's socket form, each over upstream's program
    in its own lab VM: ratios travel between VMs, ns do not."""
    r = synthetic()
    r["environments"]["lab"].update(design="progtype",
                                    forms={"ours": "vnet_hash", "ours-socket": "socket"})
    r = report.merge(r, _design_part("lab-kfunc", "kfunc", {"ours-socket": "socket"}, [
        _m("upstream", "ipv6-tcp", 12000, "lab-kfunc"),
        _m("ours-socket", "ipv6-tcp", 3000, "lab-kfunc")]))
    r = report.finish(r)
    assert r["designs"]["forms"] == {"progtype": {"where": "lab", "subject": "ours"},
                                     "kfunc": {"where": "lab-kfunc", "subject": "ours-socket"}}
    row = {x["class"]: x for x in r["designs"]["ratios"]}["ipv6-tcp"]
    assert row["progtype_x_upstream"] == pytest.approx(2000 / 9000)
    assert row["kfunc_x_upstream"] == pytest.approx(3000 / 12000)
    assert row["kfunc_x_progtype"] == pytest.approx((3000 / 12000) / (2000 / 9000))
    text = report.table(r)
    assert "designs:" in text and "kfunc_x_progtype" in text and "lab-kfunc:" in text
    # one design alone: nothing to set side by side
    assert "designs" not in report.finish(synthetic())


def test_floor_parse_ratio_net_of_the_harness():
    r = synthetic(lab=False)
    r["measurements"] += [_m("floor-parse", "ipv6-tcp", 20), _m("floor-parse", "ipv4-tcp", 10),
                          _m("floor-parse", "non-ip", 2)]
    g = report.finish(r)["goal"]["host"]
    # ours net of the empty harness (10 ns) over the whole job in C
    assert g["ours_x_floor_parse"]["ipv6-tcp"] == pytest.approx((300 - 10) / 20)
    assert g["ours_x_floor_parse"]["non-ip"] == pytest.approx((20 - 10) / 2)
    assert g["ours_within_parse_goal"] is False and g["parse_goal"] == report.PARSE_GOAL
    assert "floor-parse (aim <= 2x)" in report.table(report.finish(r))


def test_floor_parse_hashes_and_reports_like_the_oracle():
    """The C floor's parse picks the spec's type and hashes like the oracle, every class."""
    from hashlab.bench import program, tools

    exe = tools.floor_binary()
    cfg = program.BENCH_CONFIG
    for name, _, frame in program.CLASSES:
        h, rep = rss.hash_packet(frame, cfg.key, cfg.types, "hashlab-ebpf")
        out = subprocess.run([str(exe), "--parse", cfg.key.hex(), frame.hex(), str(cfg.types),
                              "10", "1"], capture_output=True, text=True, check=True).stdout
        _, _, _, hx, got = out.split()
        assert (int(hx, 16), int(got)) == (h, rep), name


def test_kfunc_calls_pair_with_the_frames_the_kernel_ran():
    """The kfunc form's calls (a kprobe's record) belong to the frames in order: one per
    frame run while hashes are populated, none otherwise; any other count is an error."""
    from hashlab.bench import differential as diff
    from hashlab.bench.kfunc import CaptureError

    ran = testrun.Result(0, 1, 0, 0, 0, 0, 0)
    refused = testrun.Result(22, 0, 0, 0, 0, 0, 0)
    cfg = diff.Config("c", rss.MS_KEY, rss.ALL_TYPES)
    calls = [(0x11, 2), (0x22, 5)]
    assert diff._pair_calls([ran, refused, ran], list(calls), cfg, 0) == [
        (0x11, 2), None, (0x22, 5)]
    with pytest.raises(CaptureError, match="1 calls of bpf_skb_set_vnet_hash, expected 2"):
        diff._pair_calls([ran, ran], calls[:1], cfg, 0)
    quiet = diff.Config("q", rss.MS_KEY, rss.ALL_TYPES, populate_hash=False)
    assert diff._pair_calls([ran, ran], [], quiet, 0) == [None, None]
    with pytest.raises(CaptureError, match="expected 0"):
        diff._pair_calls([ran], calls[:1], quiet, 5)
    with pytest.raises(ValueError, match="kfunc form"):
        diff.run(None, None, [], [], form="kfunc")
