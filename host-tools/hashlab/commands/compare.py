"""`hashlab compare`: every datapath, one corpus, one table (see hashlab.run.compare)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import Exit
from . import qemu_option


def register(sub):
    from ..run.compare import DEFAULT_BASE, ROWS

    rows_help = "; ".join(f"{r.id}: {r.datapath}" for r in ROWS)
    p = sub.add_parser(
        "compare",
        help="run the base scenario on every datapath and print one comparison table",
        description="Run the base scenario (default scenarios/software-rss.yaml) on each "
        "datapath row: stock and patched QEMU, vhost on and off, on this machine's kernel "
        "(host rows, TCG) and in the lab VM (lab rows, KVM, on the kernel of the row's "
        "design: progtype or kfunc with their series, stock without; one lab VM boot per "
        "design).  "
        "Every frame is judged against the spec for the "
        "table, and against the row's own model for its verdict.  Rows that cannot run say "
        "why.  Writes OUT/compare.json, OUT/designs.json (a flat object per row), OUT/report.md "
        "and OUT/report.html (per-queue "
        "distribution plots) and each row's results under OUT/<row>/.  Exit status 1 when a "
        "row that ran did not behave as expected or failed to run; with --require-all, 11 "
        f"when a row did not run (not built, not supported here).  Rows: {rows_help}.",
    )
    p.add_argument("--rows", default="all",
                   help="all (default), host, lab, or a comma-separated list of row ids")
    p.add_argument("--out", help="output directory (default: results/compare)")
    p.add_argument("--json", help="write the rows here too (default: OUT/compare.json)")
    p.add_argument("--base", default=str(DEFAULT_BASE), help="base scenario YAML")
    p.add_argument("--guest-kernel", default=None,
                   help="guest kernel of the lab rows (debian, lab, ...; default: the base "
                   "scenario's)")
    p.add_argument("--require-all", action=argparse.BooleanOptionalAction,
                   default=bool(os.environ.get("CI")),
                   help="fail (exit 11) when a row asked for did not run (default: on when "
                   "the environment has CI set; scripts/demo turns it on)")
    p.add_argument("--no-lab", action="store_true", help="do not boot the lab VM")
    p.add_argument("--lab-timeout", type=float, default=2400,
                   help="seconds for the lab VM at idle (scaled by load; default 2400)")
    p.add_argument("--qtest", action="store_true",
                   help="also run hashlab's virtio-net driver over qtest (every report type, "
                   "hash-only, refused configurations) with the patched QEMU in each lab "
                   "boot of a design with a series, vhost off and on")
    p.add_argument("--no-report", action="store_true", help="no report.md / report.html")
    p.add_argument("--quiet-table", action="store_true", help=argparse.SUPPRESS)
    qemu_option.add(p)
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ..results import matrix as M
    from ..run import compare as C
    from ..paths import results_root

    rows = C.parse_rows(args.rows)
    out = Path(args.out) if args.out else results_root() / "compare"
    echo = lambda m: print(m, file=sys.stderr, flush=True)
    json_path = Path(args.json) if args.json else out / "compare.json"
    results, meta = C.compare(rows, out, Path(args.base), args.guest_kernel,
                              lab_timeout=args.lab_timeout, echo=echo,
                              run_lab=not args.no_lab, json_path=json_path,
                              qtest=args.qtest)
    meta["qemus"] = qemu_option.probe_all()  # what each QEMU of the run can do, asked
    doc = M.rows_to_json(results, meta)
    text = json.dumps(doc, indent=1, default=str) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(text)
    (out / "designs.json").write_text(json.dumps(M.designs_json(results), indent=1) + "\n")
    if not args.quiet_table:
        print(M.render_table(results))
        print()
        print(M.render_types(results))
        print()
        print(M.render_qemus(meta["qemus"]))
        notes = M.render_notes(results)
        if notes:
            print()
            print(notes)
        t = meta["timings"]
        print()
        print("wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in t.items()))
        if not args.no_report:
            from ..results import evidence, htmlreport, interface

            paths = htmlreport.write_reports(
                evidence.build(doc, costs=interface.design_costs(),
                               growth=interface.tunnel_costs()), out)
            print("report: " + ", ".join(str(p) for p in paths) + f"; JSON: {json_path}")
    bad = [r for r in results if r.status == M.ERROR or (r.status == M.RAN and not r.ok)]
    for design, runs in (meta.get("qtest") or {}).items():
        for q in runs:
            if not q.get("ok"):
                print(f"hashlab compare: the qtest driver on {design} (vhost "
                      f"{'on' if q.get('vhost') else 'off'}) did not pass: "
                      f"{q.get('error') or 'see compare.json'}", file=sys.stderr)
                bad.append(q)
    if bad:
        return Exit.FAILED
    not_run = [r for r in results if r.status != M.RAN]
    if not_run and args.require_all:
        for r in not_run:
            print(f"hashlab compare: {r.id} did not run ({r.status}): {r.reason}",
                  file=sys.stderr)
        return Exit.NOT_RUN
    return Exit.OK
