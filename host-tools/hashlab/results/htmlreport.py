"""The comparison as a Markdown and an HTML report, with hand-written SVG bar charts.

No plotting library: ``queue_svg`` draws, per receive queue, how many frames the spec
put there (expected) next to how many the guest saw there (observed).  The Markdown
report links the SVG files; the HTML report inlines them.
"""

from __future__ import annotations

import html
from pathlib import Path

from . import matrix as M

EXPECTED_COLOUR = "#9aa5b1"
OBSERVED_COLOUR = "#2f6fb0"
WRONG_COLOUR = "#c0392b"


def queue_svg(queues: dict[str, dict[str, int]], title: str, width: int = 360,
              height: int = 200) -> str:
    """Grouped bars: expected (grey) and observed (blue; red when it differs) per queue."""
    qs = sorted(queues, key=lambda q: int(q))
    peak = max([1] + [max(v.get("expected", 0), v.get("observed", 0)) for v in queues.values()])
    left, right, top, bottom = 40, 10, 28, 34
    pw, ph = width - left - right, height - top - bottom
    group = pw / max(len(qs), 1)
    bar = min(28.0, group / 2.6)
    e = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<title>{e(title)}</title>',
           f'<text x="{width / 2:.0f}" y="14" text-anchor="middle" font-size="12">{e(title)}</text>',
           f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#333"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#333"/>']
    for frac in (0.5, 1.0):
        y = top + ph - ph * frac
        out.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">'
                   f'{round(peak * frac)}</text>')
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" '
                   f'stroke="#ddd"/>')
    for i, q in enumerate(qs):
        v = queues[q]
        x0 = left + group * i + (group - 2 * bar) / 2
        for j, (kind, colour) in enumerate((("expected", EXPECTED_COLOUR),
                                            ("observed", OBSERVED_COLOUR))):
            n = v.get(kind, 0)
            if kind == "observed" and n != v.get("expected", 0):
                colour = WRONG_COLOUR
            h = ph * n / peak
            x = x0 + j * bar
            out.append(f'<rect x="{x:.1f}" y="{top + ph - h:.1f}" width="{bar - 2:.1f}" '
                       f'height="{h:.1f}" fill="{colour}"><title>queue {e(q)} {kind}: {n}'
                       f'</title></rect>')
            out.append(f'<text x="{x + bar / 2 - 1:.1f}" y="{top + ph - h - 3:.1f}" '
                       f'text-anchor="middle" font-size="9">{n}</text>')
        out.append(f'<text x="{x0 + bar:.1f}" y="{top + ph + 14}" text-anchor="middle">'
                   f'q{e(q)}</text>')
    ly = height - 8
    out.append(f'<rect x="{left}" y="{ly - 9}" width="10" height="10" fill="{EXPECTED_COLOUR}"/>'
               f'<text x="{left + 14}" y="{ly}">expected (spec)</text>'
               f'<rect x="{left + 120}" y="{ly - 9}" width="10" height="10" '
               f'fill="{OBSERVED_COLOUR}"/><text x="{left + 134}" y="{ly}">observed</text>'
               f'<rect x="{left + 200}" y="{ly - 9}" width="10" height="10" '
               f'fill="{WRONG_COLOUR}"/><text x="{left + 214}" y="{ly}">observed, differs</text>')
    out.append("</svg>")
    return "\n".join(out)


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
  no hash at all for the mismatched pairing).  PASS = exactly as expected."""


def markdown(rows: list[M.RowResult], meta: dict, svgs: dict[str, str]) -> str:
    lines = ["# hashlab: virtio-net hash reporting, datapath by datapath", ""]
    t = meta.get("timings", {})
    lines += [f"Run {meta.get('finished', '?')}; base scenario `{meta.get('base')}`; "
              f"host kernel {meta.get('host_kernel')}; wall time "
              + ", ".join(f"{k} {v:.0f}s" for k, v in t.items()) + ".", ""]
    lines += [M.render_table(rows), "", LEGEND, "", "## Per report type (against the spec)",
              "", "```", M.render_types(rows), "```", ""]
    notes = M.render_notes(rows)
    if notes:
        lines += ["## What QEMU said", "", "```", notes, "```", ""]
    lines += ["## Receive queues: expected (spec) vs observed", ""]
    for r in rows:
        if r.id in svgs:
            lines += [f"### {r.id}: {r.datapath}", "", f"![queues of {r.id}]({svgs[r.id]})", ""]
    lines += ["## Rows", ""]
    for r in rows:
        lines.append(f"* `{r.id}` — {r.datapath}: {M.verdict(r)}"
                     + (f" (results: `{r.results_dir}`)" if r.results_dir else ""))
    return "\n".join(lines) + "\n"


def _html_table(rows: list[M.RowResult]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in M.TABLE_COLUMNS)
    body = []
    for r, cells in zip(rows, M.table_rows(rows)):
        cls = ("pass" if r.ok else "fail") if r.status == M.RAN else "skip"
        body.append(f'<tr class="{cls}">' + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def html_report(rows: list[M.RowResult], meta: dict, svg_text: dict[str, str]) -> str:
    e = html.escape
    t = meta.get("timings", {})
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             "<title>hashlab comparison</title><style>",
             "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}",
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #bbb;"
             "padding:4px 6px;text-align:left;vertical-align:top}th{background:#eef}",
             "tr.pass td:nth-child(7){color:#1e7b34}tr.fail td:nth-child(7){color:#c0392b;"
             "font-weight:bold}tr.skip td{color:#777}",
             "pre{background:#f6f6f6;padding:8px;overflow-x:auto}",
             ".charts{display:flex;flex-wrap:wrap;gap:12px}",
             "</style></head><body>",
             "<h1>hashlab: virtio-net hash reporting, datapath by datapath</h1>",
             f"<p>Run {e(str(meta.get('finished', '?')))}; base scenario "
             f"<code>{e(str(meta.get('base')))}</code>; host kernel "
             f"{e(str(meta.get('host_kernel')))}; wall time "
             + e(", ".join(f"{k} {v:.0f}s" for k, v in t.items())) + ".</p>",
             _html_table(rows),
             "<ul>" + "".join(f"<li>{e(li.lstrip('* '))}</li>" for li in
                              LEGEND.replace("\n  ", " ").splitlines()) + "</ul>",
             "<h2>Per report type (against the spec)</h2>",
             f"<pre>{e(M.render_types(rows))}</pre>"]
    notes = M.render_notes(rows)
    if notes:
        parts += ["<h2>What QEMU said</h2>", f"<pre>{e(notes)}</pre>"]
    parts.append("<h2>Receive queues: expected (spec) vs observed</h2><div class='charts'>")
    for r in rows:
        if r.id in svg_text:
            parts.append(f"<figure>{svg_text[r.id]}<figcaption>{e(r.id)}: "
                         f"{e(r.datapath)}</figcaption></figure>")
    parts.append("</div><h2>Rows</h2><ul>")
    for r in rows:
        parts.append(f"<li><code>{e(r.id)}</code> — {e(r.datapath)}: {e(M.verdict(r))}"
                     + (f" (<code>{e(r.results_dir)}</code>)" if r.results_dir else "") + "</li>")
    parts.append("</ul></body></html>")
    return "\n".join(parts) + "\n"


def write_reports(rows: list[M.RowResult], meta: dict, out: Path) -> list[Path]:
    """OUT/report.md, OUT/report.html and OUT/queues-<row>.svg; returns the reports."""
    out.mkdir(parents=True, exist_ok=True)
    svg_files: dict[str, str] = {}
    svg_text: dict[str, str] = {}
    for r in rows:
        q = r.spec.get("queues") if r.status == M.RAN else None
        if q:
            text = queue_svg(q, f"{r.id}: frames per receive queue")
            name = f"queues-{r.id}.svg"
            (out / name).write_text(text + "\n")
            svg_files[r.id] = name
            svg_text[r.id] = text
    md = out / "report.md"
    md.write_text(markdown(rows, meta, svg_files))
    ht = out / "report.html"
    ht.write_text(html_report(rows, meta, svg_text))
    return [md, ht]

