"""The demo's report (results.evidence, results.htmlreport, `hashlab report`) without a VM.

Rows are judged by the same functions as a real run (observations made up from the
oracle, as in test_compare_matrix); the benchmarks' JSON has their real shape.  Runs on
the host tier.
"""

from __future__ import annotations

import json
import re
import subprocess
import xml.etree.ElementTree as ET

import pytest

from hashlab import cli, designs
from hashlab.paths import REPO
from hashlab.results import evidence, htmlreport, interface
from hashlab.results import matrix as M
from hashlab.run import compare as C

from test_compare_matrix import fake_run, frames, observe, oracle, placeholder  # noqa: F401


def _program() -> dict:
    ms = []
    for subj, base in (("upstream", 190.0), ("ours", 33.0), ("tun-c", 10.4), ("empty", 14.0)):
        for i, cls in enumerate(evidence.CLASSES):
            samples = [base + i, base + i + 2.5, base + i + 7.25]
            ms.append({"subject": subj, "where": "host", "form": "", "class": cls,
                       "ns_best": samples[0], "ns_median": samples[1], "samples": samples,
                       "repeat": 1000})
    return {"kind": "hashlab-bench-program",
            "environments": {"host": {"kernel": "6.1.0", "memory_bytes": {
                "upstream": 1234, "ours": 41000, "tun-c": 37240, "empty": 0}}},
            "measurements": ms}


def _datapath() -> dict:
    def row(name, cpu, rounds, vhost=True, report=True):
        return {"scenario": name, "datapath": name, "ran": True, "ok": True, "vhost": vhost,
                "hash_report": report, "wrong": 0, "right": 18000, "offered_fps": 6000,
                "host_cpu_us_per_frame": cpu, "round_host_cpu_us_per_frame": rounds,
                "qemu_peak_rss_kib": 122880}
    return {"kind": "hashlab-bench-datapath", "ok": True, "wrong_records": 0,
            "designs": ["progtype", "kfunc", "tunrss"],
            "rows": [row("bench-software", 95.0, [94.0, 95.0, 99.5], vhost=False),
                     row("bench-ebpf-vhost", 50.0, [49.0, 50.0, 52.0]),
                     row("bench-stock-vhost", 42.0, [41.0, 42.0, 43.0], report=False),
                     row("bench-ebpf-vhost@tunrss", 47.0, [46.0, 47.0, 48.5])]}


def _qtest(vhost: bool, wrong: int = 0) -> dict:
    setup = {"setup": "rss-all-mskey", "sent": 497, "received": 497, "missing": 0,
             "right": {"hash": 497, "report": 497 - wrong, "queue": 497, "all": 497 - wrong},
             "reports_seen": list(range(10)), "first_wrong": ["f: got x"] if wrong else []}
    res = {"vhost": vhost, "hash_report_negotiated": True, "setups": [setup],
           "refused": [{"command": "key-too-long-41", "refused": True, "probe": 30,
                        "still_right": 30}], "seconds": 5.0, "tunnel_offered": True,
           "tunnel": [{"run": r, "tunnel_types": t, "acked": True, "sent": 129,
                       "received": 129, "right": 129, "inner_hashed": {}, "first_wrong": []}
                      for r, t in (("all", 0x1FF), ("none", 0))]}
    from hashlab.run import qtest_check
    res["ok"] = qtest_check.ok(res)
    return res


@pytest.fixture()
def doc(frames):  # noqa: F811
    conf = oracle("spec")
    good = C.row_result_from_run(C.ROWS_BY_ID["lab-patched-vhost"],
                                 fake_run(frames, observe(frames, conf), conf), 3.0)
    bad = C.row_result_from_run(C.ROWS_BY_ID["lab-patched-vhost-kfunc"],
                                fake_run(frames, observe(frames, conf), conf), 4.0)
    bad.regression, bad.ok = "RSS vs lab-patched-vhost-stock-kernel", False
    rows = [good, bad, placeholder("lab-patched")]
    compare_doc = M.rows_to_json(rows, {"timings": {"here": 1.0, "total": 9.0},
                                        "base": "b.yaml", "finished": "2026-12-03T06:00:00",
                                        "qtest": {"tunrss": [_qtest(False), _qtest(True, 2)]}})
    return evidence.build(json.loads(json.dumps(compare_doc)), _program(), _datapath(),
                          interface.design_costs(),
                          {"commit": "abc123", "versions": "v", "reproduce": "scripts/demo"},
                          interface.tunnel_costs())


def test_regenerated_from_report_json_is_the_same_report(doc, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    htmlreport.write_reports(doc, a)
    assert cli.main(["report", "--from", str(a / "report.json"), "--out", str(b)]) == 1
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert {"report.json", "report.md", "report.html", "summary.txt", "junit-demo.xml",
            "cost-per-packet.svg", "cost-datapath.svg",
            "queues-lab-patched-vhost.svg"} <= set(names)
    for n in names:
        assert (a / n).read_text() == (b / n).read_text(), n


def test_the_tables_show_the_documents_numbers(doc):
    md = htmlreport.markdown(doc)
    pp = doc["cost"]["per_packet"]
    for s in pp["subjects"]:
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {s['name']} "))
        cells = [c.strip() for c in line.strip("|").split("|")]
        for cls, cell in zip(pp["classes"], cells[1:]):
            c = s["classes"][cls]
            assert cell == f"{c['best']:.1f} ({c['x_upstream']:.2f}x)", (s["name"], cls)
    assert "| tun-c      | 37240 |" in md and "| ours       | 41000 |" in md
    ipv6 = {s["name"]: s["classes"]["ipv6-tcp"] for s in pp["subjects"]}
    assert ipv6["ours"]["x_upstream"] == round(35.0 / 192.0, 2)
    assert ipv6["ours"]["low"] == 35.0 and ipv6["ours"]["high"] == round(42.25, 1)
    dp = {r["scenario"]: r for r in doc["cost"]["datapath"]["rows"]}
    assert dp["bench-ebpf-vhost@tunrss"]["x_userspace"] == round(47 / 95, 2)
    assert dp["bench-ebpf-vhost@tunrss"]["design"] == "tunrss"
    assert (dp["bench-software"]["low"], dp["bench-software"]["high"]) == (94.0, 99.5)
    for i in doc["interface"]:
        row = next(ln for ln in md.splitlines() if ln.startswith(f"| {i['design']} ")
                   and "/−" in ln)
        assert f"+{i['kernel_lines'][0]}/−{i['kernel_lines'][1]}" in row
    summary = " ".join(doc["summary"].split())
    assert "2 of 3 datapath rows ran, 1 as their model says, 1 regression." in summary
    assert all(len(ln) <= 72 for ln in doc["summary"].splitlines())  # for a mail reply


def test_html_is_self_contained_and_markdown_is_rendered(doc):
    svgs = htmlreport.chart_svgs(doc)
    doc["charts"] = sorted(svgs)
    page = htmlreport.html_report(doc, svgs)
    assert page.count("<svg") == len(svgs) >= 4
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<script" not in page and "<link" not in page
    text = re.sub(r"<(pre|code)>.*?</\1>", "", page, flags=re.S)
    text = re.sub(r"<svg.*?</svg>", "", text, flags=re.S)
    assert "**" not in text and "`" not in text, "Markdown leaked into the page"
    assert "<table>" in page and "<strong>hash report offered</strong>" in page


def test_a_regression_is_red_never_pass(doc):
    page = htmlreport.html_report(doc, {})
    assert '<td class="regression">REGRESSION: lost RSS' in page
    assert '<td class="pass">PASS' in page
    assert "td.fail,td.regression{color:#c0392b" in page


def test_junit_fails_every_row_that_did_not_behave(doc):
    root = ET.fromstring(htmlreport.junit(doc))
    suite = root.find("testsuite")
    failed = {tc.get("name") for tc in suite.iter("testcase") if tc.find("failure") is not None}
    assert failed == {"lab-patched-vhost-kfunc", "lab-patched", "tunrss-vhost-on"}
    assert suite.get("failures") == "3" and suite.get("tests") == "6"


def test_the_qtest_drivers_counts_are_shown(doc):
    md = htmlreport.markdown(doc)
    rows = [ln for ln in md.splitlines() if ln.startswith("| tunrss ") and "497" in ln]
    assert len(rows) == 2
    assert "497/497" in rows[0] and "0,1,2,3,4,5,6,7,8,9" in rows[0] and "PASS" in rows[0]
    assert "495/497" in rows[1] and "FAIL" in rows[1] and "1/1" in rows[1]
    assert all("all 129/129 none 129/129" in r for r in rows)
    assert not evidence.ok(doc)
    assert "992/994 frames with the exact report value" in " ".join(doc["summary"].split())


def test_markdown_cells_cannot_break_the_table():
    t = htmlreport.md_table(["a", "b"], [["x|y", "*not bold* _nor this_"]])
    assert t.splitlines()[2].count(" | ") == 1
    html = htmlreport.mdlib.markdown(t, extensions=["tables"])
    assert "<em>" not in html and "<strong>" not in html and "x|y" in html


@pytest.mark.parametrize("design", [d.name for d in designs.with_series()])
def test_interface_counts_equal_git_apply_numstat(design):
    """The line counts are the patches' own (git apply --numstat), per kind."""
    d = designs.get(design)
    sums = {"kernel": [0, 0], "selftests": [0, 0]}
    for p in interface.series_patches(d.series_dir):
        out = subprocess.run(["git", "apply", "--numstat", str(p)], capture_output=True,
                             text=True, check=True, cwd=REPO).stdout
        for line in out.splitlines():
            a, r, path = line.split("\t")
            kind = interface._kind(path, False)
            if kind in sums:
                sums[kind][0] += int(a)
                sums[kind][1] += int(r)
    c = interface.design_costs()[design]
    assert c["kernel_lines"] == sums["kernel"] and c["selftest_lines"] == sums["selftests"]
    q = [0, 0]
    for p in interface.qemu_patches(d.qemu_patches):
        for line in subprocess.run(["git", "apply", "--numstat", str(p)], capture_output=True,
                                   text=True, check=True, cwd=REPO).stdout.splitlines():
            a, r, path = line.split("\t")
            if interface._kind(path, True) == "c":
                q[0] += int(a)
                q[1] += int(r)
    assert c["qemu_c_lines"] == q


def test_uapi_items_are_counted_item_by_item():
    c = interface.design_costs()
    assert "#define TUNSETVNETHASH" in c["tunrss"]["uapi"]
    assert "struct tun_vnet_hash_cap" in c["tunrss"]["uapi"]
    assert not any(u.startswith("member max_") for u in c["tunrss"]["uapi"])  # in the struct
    assert {"enum BPF_PROG_TYPE_VNET_HASH", "member vnet_hash_value"} <= set(c["progtype"]["uapi"])
    assert c["kfunc"]["kfuncs"] == ["bpf_skb_set_vnet_hash"] and c["progtype"]["kfuncs"] == []


def test_what_the_inner_header_hash_cost_each_design(doc):
    """#18's table: counted from the patches that implement the feature; the eBPF
    designs need no kernel change, tunrss needs kernel code and UAPI."""
    c = interface.tunnel_costs()
    for d in ("progtype", "kfunc"):
        assert c[d]["kernel_lines"] == [0, 0] and c[d]["uapi"] == [] and not c[d]["new_kernel"]
        assert c[d]["qemu_ebpf_lines"][0] > 100 and c[d]["qemu_c_lines"][0] > 100
    t = c["tunrss"]
    assert t["kernel_patches_found"] == len(t["kernel_patches"]) == 2 and t["new_kernel"]
    assert t["kernel_lines"][0] > 100 and t["qemu_ebpf_lines"] == [0, 0]
    assert {"#define TUN_VNET_HASH_TUNNEL", "#define TUNGETVNETHASHTUNNELS",
            "struct virtio_net_hash_tunnel"} <= set(t["uapi"])
    md = htmlreport.markdown(doc)
    assert "## When the spec grows: inner header hash" in md
    table = md.split("## When the spec grows")[1]
    row = next(ln for ln in table.splitlines() if ln.startswith("| tunrss "))
    assert row.rstrip(" |").endswith("yes")
    assert f"+{t['kernel_lines'][0]}/−{t['kernel_lines'][1]}" in row
    assert f"| {len(t['uapi'])} " in row
