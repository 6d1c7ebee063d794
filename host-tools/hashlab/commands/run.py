"""`hashlab run SCENARIO.yaml... [--out DIR]`: end-to-end scenarios in QEMU guests.

Scenarios with ``datapath.where: lab`` run inside the lab VM: from the host, all of them
for one design (``datapath.design``) share one lab VM boot of that design's kernel
(``hashlab run --here ...`` inside it); the others run here.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from .. import designs
from . import qemu_option


def register(sub):
    p = sub.add_parser(
        "run",
        help="run scenarios end to end (boot, configure, send the corpus, compare)",
        description="Boot the guest on a tap with the scenario's datapath, configure "
        "virtio_net as the scenario says, send the corpus, and compare every frame's hash, "
        "hash class and queue with the oracle.  Prints a per-report-type table and the "
        "queue distribution; writes results.json and junit.xml to results/<scenario>/ (or "
        "--out; with several scenarios --out is their parent directory).  Scenarios with "
        "datapath.where: lab run in one lab VM boot per datapath.design (its kernel must be "
        "built).  Exit "
        "status 1 on any mismatch.",
    )
    p.add_argument("scenario", nargs="+", help="scenario YAML file(s) (see scenarios/)")
    p.add_argument("--out", help="output directory (default: results/<scenario name>)")
    p.add_argument("--kernel", help="guest kernel: debian, deb:linux-image-..., lab or a "
                   "bzImage path (overrides the scenario's guest.kernel)")
    p.add_argument("--drop-stale-pins", action="store_true",
                   help="remove known divergences that no longer diverge (stale pins) from "
                   "the scenario file after the run")
    p.add_argument("--here", action="store_true",
                   help="run every scenario here, even those meant for the lab VM")
    p.add_argument("--lab-timeout", type=float, default=1800,
                   help="seconds for the lab VM at idle (scaled by load; default 1800)")
    p.add_argument("--load-frames", type=int, metavar="N",
                   help="override the scenarios' load phase: N frames per round (0: none)")
    p.add_argument("--load-rounds", type=int, metavar="R",
                   help="override the scenarios' load phase: R rounds")
    p.add_argument("--load-rate", type=int, metavar="FPS",
                   help="override the scenarios' load phase: offered frames/s (0: unpaced)")
    import argparse

    p.add_argument("--out-parent", help=argparse.SUPPRESS)  # OUT/<name> for each scenario
    qemu_option.add(p)
    p.set_defaults(func=_run)


def _out_for(args, sc, many: bool) -> Path | None:
    if args.out_parent:
        return Path(args.out_parent) / sc.name
    if not args.out:
        return None
    return Path(args.out) / sc.name if many else Path(args.out)


def _run(args) -> int:
    from ..host import datapath
    from ..errors import HashlabError
    from ..run.scenario import load_scenario

    scs = [(path, load_scenario(path)) for path in args.scenario]
    for _, sc in scs:
        _override_load(args, sc)
    many = len(scs) > 1
    here_is_lab = datapath.in_lab()
    lab_scs = [] if (args.here or here_is_lab) else [(p, s) for p, s in scs if s.where == "lab"]
    if lab_scs:  # this machine may be the lab itself: no nesting for its design
        design, why = datapath.host_lab()
        if design and any(sc.datapath.design == design for _, sc in lab_scs):
            print(f"hashlab run: {why}: running its scenarios here", file=sys.stderr)
            datapath.become_lab(design)
            lab_scs = [(p, s) for p, s in lab_scs if s.datapath.design != design]
    local = [(p, s) for p, s in scs if (p, s) not in lab_scs]
    rc = 0
    for path, sc in local:
        rc |= _one(args, path, sc, _out_for(args, sc, many))
    if lab_scs:
        echo = lambda m: print(m, file=sys.stderr, flush=True)
        try:
            kernels = {args.kernel or sc.guest.kernel for _, sc in lab_scs}
            prep, env = datapath.prepare_lab(kernels, {sc.corpus.seed for _, sc in lab_scs},
                                          _prep_dir(args),
                                          {sc.datapath.qemu for _, sc in lab_scs})
        except HashlabError as e:
            print(f"hashlab run: cannot run {', '.join(sc.name for _, sc in lab_scs)} in the "
                  f"lab VM: {e}", file=sys.stderr)
            return e.exit_status if not rc else rc
        # one lab VM boot per design, the default one first
        for d in sorted(designs.DESIGNS, key=lambda d: d.name != designs.DEFAULT):
            group = [(p, sc) for p, sc in lab_scs if sc.datapath.design == d.name]
            if not group:
                continue
            try:
                rc |= _run_in_lab(args, group, d.name, prep, env, many, echo)
            except HashlabError as e:
                print(f"hashlab run: {e}", file=sys.stderr)
                return e.exit_status
    return rc


def _run_in_lab(args, lab_scs, design: str, prep, env, many: bool, echo) -> int:
    """LAB_SCS (all for DESIGN) in one lab VM boot of DESIGN's kernel; its status
    (HashlabError when the lab VM cannot boot or dies)."""
    from ..host import datapath

    outs = [_lab_out(args, sc, many) for _, sc in lab_scs]
    kernel = _kernel_arg(args.kernel) if args.kernel else None
    argv = datapath.hashlab_argv("run", "--here")
    if args.out and many:
        argv += ["--out-parent", str(Path(args.out).resolve())]
    elif args.out:
        argv += ["--out", str(Path(args.out).resolve())]
    if kernel:
        argv += ["--kernel", kernel]
    if args.drop_stale_pins:
        argv.append("--drop-stale-pins")
    for opt in ("load_frames", "load_rounds", "load_rate"):
        if getattr(args, opt) is not None:
            argv += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
    argv += [str(Path(p).resolve()) for p, _ in lab_scs]
    echo(f"hashlab run: booting the lab VM ({design} kernel) for "
         f"{', '.join(sc.name for _, sc in lab_scs)}")
    files = [Path(p).resolve().parent for p, _ in lab_scs]
    # --drop-stale-pins edits the scenario files in place
    writes = outs + (files if args.drop_stale_pins else [])
    reads = [prep] + ([] if args.drop_stale_pins else files)
    if kernel and Path(kernel).exists():  # a bzImage path, not a name
        reads.append(Path(kernel))
    res = datapath.run_in_lab(argv, env, args.lab_timeout, echo, design=design,
                              writes=writes, reads=reads,
                              expect=[o / "results.json" for o in outs])
    echo(f"hashlab run: lab VM done in {res.seconds:.0f}s, status {res.status}; "
         f"console log: {res.log}")
    return res.status


def _lab_out(args, sc, many: bool) -> Path:
    """Where the lab VM writes SC's results (as ``_out_for`` and the orchestrator say)."""
    from ..paths import results_root

    out = _out_for(args, sc, many)
    return (out if out else results_root() / sc.name).resolve()


def _kernel_arg(kernel: str) -> str:
    """--kernel as the lab VM must see it: a bzImage path made absolute, names as given."""
    p = Path(kernel)
    return str(p.resolve()) if p.exists() else kernel


def _override_load(args, sc) -> None:
    from ..errors import UsageError

    if args.load_frames is not None:
        if not 0 <= args.load_frames <= 10_000_000:
            raise UsageError(f"--load-frames {args.load_frames} out of range [0, 10000000]")
        sc.load.frames = args.load_frames
    if args.load_rounds is not None:
        if not 1 <= args.load_rounds <= 100:
            raise UsageError(f"--load-rounds {args.load_rounds} out of range [1, 100]")
        sc.load.rounds = args.load_rounds
    if args.load_rate is not None:
        if not 0 <= args.load_rate <= 10_000_000:
            raise UsageError(f"--load-rate {args.load_rate} out of range [0, 10000000]")
        sc.load.rate = args.load_rate


def _prep_dir(args) -> Path:
    from ..paths import results_root

    return Path(args.out).resolve() if args.out else results_root()


def _one(args, path, sc, out) -> int:
    from ..results import report
    from ..errors import HashlabError
    from ..run.orchestrator import run_scenario
    from ..run.scenario import drop_pins

    try:
        res = asyncio.run(run_scenario(sc, out, kernel=args.kernel,
                                       echo=lambda m: print(m, file=sys.stderr, flush=True)))
    except HashlabError as e:
        print(f"hashlab: {sc.name}: error: {e}", file=sys.stderr)
        return e.exit_status
    print(res.summary())
    stale = {report.desc_group(v.desc) for v in (res.comparison.verdicts if res.comparison else [])
             if v.status == report.STALE_PIN}
    if stale and args.drop_stale_pins:
        removed = drop_pins(path, stale)
        print(f"dropped {len(removed)} stale pin(s) from {path}: {', '.join(removed)}")
        return 0 if res.ok or _only_stale(res) else 1
    if stale:
        print(f"{len(stale)} stale pin(s): those divergences are gone (modelled or fixed); "
              f"remove them with `hashlab run {path} --drop-stale-pins`")
    return 0 if res.ok else 1


def _only_stale(res) -> bool:
    from ..results import report

    return all(f is None for _, f in res.checks) and \
        all(v.status == report.STALE_PIN for v in res.comparison.failures)
