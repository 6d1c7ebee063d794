"""The demo's report, rendered from its JSON document (``results.evidence``):
``report.md`` (plain Markdown tables), ``report.html`` (the same Markdown through
Python-Markdown, the charts inlined as SVG, no external resources), the charts as SVG
files next to them, ``summary.txt`` and a JUnit file.

Rendering is a pure function of the document: ``write_reports(doc, out)`` twice gives
the same files, and so does a run of ``hashlab report --from report.json``.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import markdown as mdlib

from . import charts
from . import matrix as M

LEGEND = """\
* **hash report offered**: QEMU offers `VIRTIO_NET_F_HASH_REPORT` to the guest (and whether
  the Linux guest negotiated it).
* **hashes right**: of the frames the guest received, how many carried the hash value and
  hash type class (L4 / L3 / none, as the Linux guest records them) that the virtio spec
  gives for the configuration the guest programmed (key, hash types, table).
* **queues right**: of the frames the guest received, how many arrived on the receive
  queue the spec's RSS steering picks.
* **verdict**: the row judged against its *own* model (what that datapath is known to do:
  QEMU's software path with its pinned quirks, the spec for the patched eBPF program, or
  no hash at all for the mismatched pairing).  PASS = exactly as expected; REGRESSION =
  the row lost what the same QEMU got from the kernel without any series."""

CSS = """
body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0}
td,th{border:1px solid #bbb;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#eef}
td.pass{color:#1e7b34}td.fail,td.regression{color:#c0392b;font-weight:bold}
pre{background:#f6f6f6;padding:8px;white-space:pre-wrap;overflow-wrap:anywhere}
code{background:#f3f3f3;padding:0 2px}
.charts{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0}svg{max-width:100%;height:auto}
"""


def _cell(text) -> str:
    """A Markdown table cell: no pipes, no emphasis by accident, no raw HTML."""
    s = str(text).replace("\n", " ").replace("|", "\\|").replace("*", "\\*")
    s = s.replace("<", "&lt;")
    return re.sub(r"(^|\s)_", r"\1\\_", s)


def md_table(head: list[str], body: list[list]) -> str:
    rows = [[_cell(h) for h in head]] + [[_cell(c) for c in b] for b in body]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in rows[1:]])


def _lines(pair) -> str:
    return f"+{pair[0]}/−{pair[1]}"


# --------------------------------------------------------------------------- charts


def chart_svgs(doc: dict) -> dict[str, str]:
    """name -> SVG text, for every chart the document has data for."""
    out = {}
    for r in doc["correctness"]["rows"]:
        q = (r.get("spec") or {}).get("queues") if r["status"] == M.RAN else None
        if q:
            out[f"queues-{r['id']}"] = charts.queues(q, f"{r['id']}: frames per queue")
    pp = doc["cost"].get("per_packet")
    if pp:
        series = [{"name": s["name"],
                   "values": [s["classes"].get(c, {}).get("median") for c in pp["classes"]],
                   "low": [s["classes"].get(c, {}).get("low", 0) for c in pp["classes"]],
                   "high": [s["classes"].get(c, {}).get("high", 0) for c in pp["classes"]]}
                  for s in pp["subjects"]]
        out["cost-per-packet"] = charts.cost_bars(
            pp["classes"], series, "hashing, ns per packet (host)", "ns per packet")
    dp = doc["cost"].get("datapath")
    if dp and any(r.get("host_cpu_us_per_frame") for r in dp["rows"]):
        rows = [r for r in dp["rows"] if r.get("host_cpu_us_per_frame")]
        out["cost-datapath"] = charts.cost_bars(
            [r["scenario"] for r in rows],
            [{"name": "host CPU per frame",
              "values": [r["host_cpu_us_per_frame"] for r in rows],
              "low": [r["low"] for r in rows], "high": [r["high"] for r in rows]}],
            "host CPU per frame at a fixed rate (lab VM)", "µs per frame")
    return out


# --------------------------------------------------------------------------- Markdown


def _types_table(rows: list[M.RowResult]) -> str:
    """One line per row that ran: hashes right / frames seen, per report type."""
    ran = [r for r in rows if r.status == M.RAN and r.spec.get("by_type")]
    if not ran:
        return "(no row ran)"
    types = [t for t in M.REPORT_ORDER if any(t in r.spec["by_type"] for r in ran)]
    body = []
    for r in ran:
        cells = [r.id]
        for t in types:
            b = r.spec["by_type"].get(t)
            cells.append("n/a" if b and not r.spec.get("check_hash") else
                         "—" if not b else f"{b['hash_right']}/{b['seen']}")
        cells.append(f"{r.spec['queue_right']}/{r.spec['queue_checked']}"
                     if r.spec.get("queue_checked") else "—")
        body.append(cells)
    return md_table(["row"] + types + ["queues right"], body)


def _qtest_md(doc: dict) -> list[str]:
    from .evidence import qtest_runs

    runs = qtest_runs(doc)
    if not runs:
        return []
    setups = []
    for _, q in runs:
        for st in q.get("setups", []):
            if st["setup"] not in setups:
                setups.append(st["setup"])
    body = []
    for design, q in runs:
        by = {st["setup"]: st for st in q.get("setups", [])}
        ref = q.get("refused", [])
        body.append([design, "on" if q.get("vhost") else "off",
                     "error: " + q["error"] if q.get("error") else
                     ("yes" if q.get("hash_report_negotiated") else "no")]
                    + [f"{by[n]['right']['all']}/{by[n]['received']}"
                       + (f" ({by[n]['missing']} lost)" if by[n]["missing"] else "")
                       if n in by else "—" for n in setups]
                    + [",".join(str(v) for v in by[setups[0]]["reports_seen"])
                       if setups and setups[0] in by else "—",
                       f"{sum(r['refused'] and r['still_right'] == r['probe'] for r in ref)}"
                       f"/{len(ref)}" if ref else "—",
                       " ".join(f"{t['run']} {t['right']}/{t['sent']}"
                                for t in q.get("tunnel", [])) or "—",
                       "PASS" if q.get("ok") else "FAIL"])
    return ["### The exact report values: a virtio-net driver over qtest", "",
            "hashlab's own driver (the Linux guest shows only L3/L4) reads the raw receive "
            "header of every corpus frame: frames with hash, report value and queue as the "
            "spec gives them / frames received, per configuration; then each refused "
            "RSS_CONFIG must leave the previous configuration hashing; then the "
            "encapsulated frames with the inner header hash for every tunnel type, and "
            "for none (right / sent, against oracle.tunnel).", "",
            md_table(["design", "vhost", "HASH_REPORT"] + setups
                     + [f"report values ({setups[0]})" if setups else "report values",
                        "refused, kept the old one", "inner header hash", "verdict"],
                     body), ""]


def _cost_md(doc: dict, chart) -> list[str]:
    out = ["## Cost", ""]
    pp = doc["cost"].get("per_packet")
    if pp:
        out += [f"### Hashing, ns per packet (host, kernel {pp.get('kernel')})", "",
                md_table(["who hashes"] + pp["classes"] + ["what"],
                         [[s["name"]] + [
                             (f"{c['best']:.1f} ({c['x_upstream']:.2f}x)"
                              if c.get("x_upstream") is not None else f"{c['best']:.1f}")
                             if (c := s["classes"].get(k)) else "—" for k in pp["classes"]]
                          + [s["desc"]] for s in pp["subjects"]]),
                "", f"Cells: the best sample in ns (÷ upstream's best). {pp['note']}.", "",
                chart("cost-per-packet", "ns per packet"), ""]
        if pp.get("memory"):
            out += ["### Memory per device in the kernel", "",
                    md_table(["who hashes", "bytes", "what"],
                             [[m["name"], m["bytes"], m["desc"]] for m in pp["memory"]]),
                    "", "eBPF: the program's maps, (key + value) x entries; tun: its "
                    "configuration structure (key, Toeplitz tables, indirection table). "
                    "QEMU's own peak RSS is in the datapath table.", ""]
    else:
        out += ["Per-packet hashing cost: not measured in this run.", ""]
    dp = doc["cost"].get("datapath")
    if dp:
        out += ["### Host CPU per frame through each datapath (lab VM, fixed rate)", "",
                md_table(["datapath", "design", "vhost", "hash report", "host CPU µs/frame",
                          "rounds' range", "x userspace", "x stock vhost", "QEMU peak RSS",
                          "wrong records", "lab VM retries"],
                         [[r["scenario"], r["design"], "on" if r["vhost"] else "off",
                           "yes" if r["hash_report"] else "no",
                           r["host_cpu_us_per_frame"] if r["host_cpu_us_per_frame"] is not None
                           else "—", f"{r['low']}–{r['high']}" if r["rounds"] else "—",
                           r["x_userspace"] or "—", r["x_stock_vhost"] or "—",
                           f"{r['qemu_peak_rss_mib']} MiB" if r["qemu_peak_rss_mib"] else "—",
                           r["wrong"] if r["wrong"] is not None else "—",
                           r.get("lab_vm_retries", "—")]
                          for r in dp["rows"]]),
                "", f"{dp['note']}.", "", chart("cost-datapath", "host CPU per frame"), ""]
    else:
        out += ["Host CPU per frame: not measured in this run (`hashlab bench datapath`).", ""]
    return out


def _interface_md(doc: dict) -> list[str]:
    itf = doc["interface"]
    if not itf:
        return []
    out = ["## Interface", "",
           md_table(["design", "UAPI items", "kfuncs", "kernel lines", "selftest lines",
                     "QEMU patches", "QEMU C lines", "QEMU eBPF lines"],
                    [[i["design"], i["uapi_items"], len(i["kfuncs"]) or "—",
                      _lines(i["kernel_lines"]), _lines(i["selftest_lines"]),
                      ",".join(str(n) for n in i["qemu_patches"]), _lines(i["qemu_c_lines"]),
                      _lines(i["qemu_ebpf_lines"])] for i in itf]),
           "", "Counted over the committed patches' diff lines (kernel: without tools/ and "
           "selftests; QEMU: without the generated skeletons).", ""]
    for i in itf:
        out += [f"### {i['design']}", "",
                f"* UAPI: {', '.join(f'`{u}`' for u in i['uapi']) or 'none'}"
                + (f"; kfuncs (not UAPI by the kernel's rules): "
                   f"{', '.join(f'`{k}`' for k in i['kfuncs'])}" if i["kfuncs"] else ""),
                f"* what QEMU needs: {i['privileges']}",
                f"* the stock QEMU on this kernel (vhost on): {i['old_qemu_new_kernel']}",
                f"* this QEMU on the kernel without a series (vhost on): "
                f"{i['new_qemu_old_kernel']}",
                f"* migration: {i['migration']}", ""]
    return out


def _growth_md(doc: dict) -> list[str]:
    g = doc.get("spec_growth")
    if not g:
        return []
    return ["## When the spec grows: " + g["feature"], "",
            md_table(["design", "kernel patches", "kernel lines", "kselftest lines",
                      "new UAPI items", "QEMU patches", "QEMU C lines", "QEMU eBPF lines",
                      "a running host needs a new kernel"],
                     [[r["design"], ",".join(str(n) for n in r["kernel_patches"]) or "none",
                       _lines(r["kernel_lines"]), _lines(r.get("selftest_lines", (0, 0))),
                       len(r["uapi"]),
                       ",".join(str(n) for n in r["qemu_patches"]),
                       _lines(r["qemu_c_lines"]), _lines(r["qemu_ebpf_lines"]),
                       "yes" if r["new_kernel"] else "no"] for r in g["rows"]]),
            "", f"{g['note'][0].upper()}{g['note'][1:]}.", ""] + [
            f"* {r['design']} UAPI: {', '.join(f'`{u}`' for u in r['uapi'])}"
            for r in g["rows"] if r["uapi"]] + [""]


def markdown(doc: dict, chart=None) -> str:
    """The report as Markdown; CHART(name, alt) gives the text standing for a chart
    (default: an image link to name.svg)."""
    chart = chart or (lambda name, alt: f"![{alt}]({name}.svg)")
    svgs = set(doc.get("charts", []))
    ch = lambda name, alt: chart(name, alt) if name in svgs else ""
    m = doc["meta"]
    rows = [M.RowResult.from_json(r) for r in doc["correctness"]["rows"]]
    t = m.get("timings", {})
    lines = ["# hashlab: virtio-net hash reporting, design by design", "",
             f"Run {m.get('finished', '?')}; hashlab `{m.get('commit', '?')}`; "
             f"{m.get('versions', '')}; base scenario `{m.get('base')}`.", "",
             f"Reproduce: `{m.get('reproduce', 'scripts/demo')}`", "",
             "## Summary for the thread", "", "```text", doc["summary"], "```", "",
             "## Correctness", "", M.render_table(rows).replace("*", "\\*"), "", LEGEND, "",
             "### Hashes right, by report type (against the spec)", "",
             _types_table(rows), ""]
    cross = doc["correctness"]["cross_pairings"]
    if cross:
        lines += ["### Each QEMU on each kernel", ""]
        lines += [f"* `{c['row']}`: {c['qemu']} QEMU on the {c['kernel']} kernel, vhost "
                  f"{'on' if c['vhost'] else 'off'}: {c['what']}" for c in cross]
        lines.append("")
    if m.get("qemus"):
        lines += ["### The QEMUs of this run, as each answered over QMP", "",
                  M.render_qemus(m["qemus"]), ""]
    lines += _qtest_md(doc)
    notes = M.render_notes(rows)
    if notes:
        lines += ["### What QEMU said", "", "```text", notes, "```", ""]
    lines += _cost_md(doc, ch)
    lines += _interface_md(doc)
    lines += _growth_md(doc)
    q = [r for r in rows if f"queues-{r.id}" in svgs]
    if q:
        lines += ["## Receive queues: expected (spec) vs observed", ""]
        for r in q:
            lines += [f"### {r.id}: {r.datapath}", "", ch(f"queues-{r.id}", f"queues of {r.id}"),
                      ""]
    lines += ["## Rows", ""]
    lines += [f"* `{r.id}`: {M.verdict(r)}" + (f" (results: `{r.results_dir}`)"
                                                if r.results_dir else "") for r in rows]
    # The demo's phases, then the comparison's own parts (its "total" is the comparison's).
    phases = m.get("phases") or {}
    timed = [[k, f"{v:.0f}"] for k, v in phases.items()]
    if m.get("phases_total") is not None:
        timed.append(["demo, until the report", f"{m['phases_total']:.0f}"])
    timed += [[f"comparison: {'all' if k == 'total' else k}", f"{v:.0f}"] for k, v in t.items()]
    lines += ["", "## Wall time", "", md_table(["phase", "seconds"], timed), ""]
    return "\n".join(lines) + "\n"


_VERDICT_CLASS = (("REGRESSION", "regression"), ("FAIL", "fail"), ("PASS", "pass"),
                  ("error", "fail"))


def html_report(doc: dict, svgs: dict[str, str]) -> str:
    text = markdown(doc, chart=lambda name, alt: f"CHART:{name}")
    body = mdlib.markdown(text, extensions=["tables", "fenced_code"], output_format="html")
    for name, svg in svgs.items():
        body = body.replace(f"<p>CHART:{name}</p>", f"<figure>{svg}</figure>")
    for word, cls in _VERDICT_CLASS:
        body = body.replace(f"<td>{word}", f'<td class="{cls}">{word}')
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>hashlab report</title><style>{CSS}</style></head><body>\n"
            f"{body}\n</body></html>\n")


def junit(doc: dict) -> str:
    """One testcase per comparison row, and one per benchmark that ran."""
    suite = ET.Element("testsuite", name="hashlab-demo")
    n = fails = 0
    for r in doc["correctness"]["rows"]:
        row = M.RowResult.from_json(r)
        tc = ET.SubElement(suite, "testcase", classname="demo.correctness", name=row.id,
                           time=f"{row.seconds:.1f}")
        n += 1
        if not (row.status == M.RAN and row.ok):
            fails += 1
            v = M.verdict(row)
            ET.SubElement(tc, "failure", message=v[:200]).text = v
    from .evidence import qtest_runs

    for design, q in qtest_runs(doc):
        tc = ET.SubElement(suite, "testcase", classname="demo.qtest",
                           name=f"{design}-vhost-{'on' if q.get('vhost') else 'off'}",
                           time=f"{q.get('seconds', 0):.1f}")
        n += 1
        if not q.get("ok"):
            fails += 1
            msg = q.get("error") or "; ".join(
                w for st in q.get("setups", []) for w in st["first_wrong"])[:2000] or \
                "a refused configuration did not keep the old one"
            ET.SubElement(tc, "failure", message=msg[:200]).text = msg
    dp = doc["cost"].get("datapath")
    if dp:
        tc = ET.SubElement(suite, "testcase", classname="demo.cost", name="datapath")
        n += 1
        if not dp["ok"]:
            fails += 1
            ET.SubElement(tc, "failure", message=f"{dp.get('wrong_records')} wrong records "
                          "under load, or a row failed")
    suite.set("tests", str(n))
    suite.set("failures", str(fails))
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_reports(doc: dict, out: Path) -> list[Path]:
    """OUT/report.{json,md,html}, the charts as OUT/<name>.svg, OUT/summary.txt and
    OUT/junit-demo.xml; returns the paths of the reports."""
    out.mkdir(parents=True, exist_ok=True)
    svgs = chart_svgs(doc)
    doc["charts"] = sorted(svgs)
    for name, svg in svgs.items():
        (out / f"{name}.svg").write_text(svg)
    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html"}
    paths["json"].write_text(json.dumps(doc, indent=1, default=str) + "\n")
    paths["md"].write_text(markdown(doc))
    paths["html"].write_text(html_report(doc, svgs))
    (out / "summary.txt").write_text(doc["summary"] + "\n")
    (out / "junit-demo.xml").write_text(junit(doc))
    return list(paths.values())
