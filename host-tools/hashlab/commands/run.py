"""`hashlab run SCENARIO.yaml [--out DIR]`: one end-to-end scenario in a QEMU guest."""

from __future__ import annotations

import asyncio
import sys


def register(sub):
    p = sub.add_parser(
        "run",
        help="run a scenario end to end (boot, configure, send the corpus, compare)",
        description="Boot the guest on a tap with the scenario's datapath, configure "
        "virtio_net as the scenario says, send the corpus from the host, and compare every "
        "frame's hash, hash class and queue with the oracle.  Prints a per-report-type "
        "table and the queue distribution; writes results.json and junit.xml to "
        "results/<scenario>/ (or --out).  Exit status 1 on any mismatch.",
    )
    p.add_argument("scenario", help="scenario YAML file (see scenarios/)")
    p.add_argument("--out", help="output directory (default: results/<scenario name>)")
    p.add_argument("--kernel", help="guest kernel: debian, deb:linux-image-..., lab or a "
                   "bzImage path (overrides the scenario's guest.kernel)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ..orchestrator import run_scenario
    from ..scenario import load_scenario

    sc = load_scenario(args.scenario)
    res = asyncio.run(run_scenario(sc, args.out, kernel=args.kernel,
                                   echo=lambda m: print(m, file=sys.stderr)))
    print(res.summary())
    return 0 if res.ok else 1
