"""`hashlab report`: the demo's report from this run's JSON (see hashlab.results.evidence)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ..errors import Exit, UsageError
from ..paths import REPO


def register(sub):
    p = sub.add_parser(
        "report", help="write report.{json,md,html} from a comparison and the benchmarks",
        description="Build the report document (report.json: correctness rows, cost, "
        "interface counts of the committed series, the summary paragraph) from "
        "compare.json and, when given, the benchmarks' JSON, and render report.md, "
        "report.html (charts inlined, no external resources), the charts as SVG, "
        "summary.txt and junit-demo.xml into OUT.  With --from, render an existing "
        "report.json again (the same files).  Exit status 1 when a row or the datapath "
        "bench failed.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--compare", help="compare.json of `hashlab compare`")
    src.add_argument("--from", dest="from_json", help="an existing report.json to render")
    p.add_argument("--program", help="results of `hashlab bench program` (JSON)")
    p.add_argument("--datapath", help="results of `hashlab bench datapath` (JSON)")
    p.add_argument("--phases", help="demo-timing.json: the demo's phases and their seconds")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=_run)


def _load(path: str | None) -> dict | None:
    if not path:
        return None
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise UsageError(f"{p}: no such file") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{p}: not JSON ({e})") from None


def _commit() -> str:
    r = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                       capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def _versions() -> str:
    env = {}
    for line in (REPO / "versions.env").read_text().splitlines():
        k, _, v = line.partition("=")
        if v and not k.startswith("#"):
            env[k.strip()] = v.strip()
    return (f"Linux {env.get('LINUX_SOURCE_VERSION', '?')} (Debian's linux-source) with "
            f"kernel/series/<design>; QEMU {env.get('QEMU_SOURCE_VERSION', '?')} "
            "(Debian's source) with qemu/patches")


def _run(args) -> int:
    from ..results import evidence, htmlreport, interface

    out = Path(args.out)
    if args.from_json:
        doc = _load(args.from_json)
        if doc.get("kind") != evidence.KIND:
            raise UsageError(f"{args.from_json}: not a hashlab report.json")
    else:
        phases = _load(args.phases) or {}
        extra = {"commit": _commit(), "versions": _versions(),
                 "reproduce": "git clone <hashlab> && cd hashlab && scripts/demo",
                 "phases": phases.get("seconds", {}),
                 "phases_total": phases.get("total_seconds")}
        doc = evidence.build(_load(args.compare), _load(args.program), _load(args.datapath),
                             interface.design_costs(), extra, interface.tunnel_costs())
    paths = htmlreport.write_reports(doc, out)
    print("report: " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return Exit.OK if evidence.ok(doc) else Exit.FAILED
