"""``hashlab bench program|datapath|turnaround``: benchmarks (issue 8)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import designs
from . import qemu_option
from ..errors import HashlabError


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks: steering program cost, datapath throughput, turnaround",
        description="Benchmarks, each writing JSON under results/bench/ and a short table.  "
        "`program`: ns per packet of upstream QEMU's RSS program, hashlab's, and the "
        "table-driven prototype, through BPF_PROG_TEST_RUN, against a plain C Toeplitz "
        "floor; on the host and in the lab VM.  `datapath`: frames per second into the "
        "guest with right hash reports, per datapath, as ratios.  `turnaround`: build, "
        "boot and demo times.",
    )
    bsub = p.add_subparsers(dest="bench", metavar="WHAT")
    bsub.required = True

    pp = bsub.add_parser(
        "program",
        help="ns per packet of the eBPF steering programs, per packet class",
        description="Time upstream QEMU 10.0's rss.bpf.c (built from the pristine source), "
        "hashlab's rss.bpf.o (socket form on the host, VNET_HASH form in the lab VM), the "
        "table-driven prototype (bench/proto_rss.bpf.c) and a C Toeplitz floor, per packet "
        "class, with BPF_PROG_TEST_RUN and a large repeat.  Writes JSON (default "
        "results/bench/program.json) and prints a short table with the ratios.",
    )
    pp.add_argument("--lab", choices=("auto", "yes", "no"), default="auto",
                    help="also measure inside the lab VM (auto: when the lab kernel is built)")
    pp.add_argument("--design", type=_design_list, default=[designs.DEFAULT],
                    metavar="NAME[,NAME...]",
                    help=f"one lab VM per design, each booting its kernel: "
                    f"{', '.join(designs.NAMES)} (default {designs.DEFAULT}); e.g. "
                    "progtype,kfunc sets their forms side by side")
    pp.add_argument("--samples", type=int, default=7, help="samples per subject and class (default 7)")
    pp.add_argument("--target-ms", type=float, default=50.0,
                    help="approximate length of one sample in ms (sets repeat; default 50)")
    pp.add_argument("--out", type=Path, default=None,
                    help="JSON output (default results/bench/program.json)")
    pp.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    pp.add_argument("--lab-part", type=Path, default=None, metavar="FILE",
                    help=argparse.SUPPRESS)  # the lab VM's half of a run
    pp.set_defaults(func=_program)

    dp = bsub.add_parser(
        "datapath",
        help="frames per second into the guest with right hash reports, per datapath",
        description="Run scenarios/bench-*.yaml (QEMU userspace hashing with vhost=off, the "
        "eBPF hash report via tap and via vhost_net, and stock vhost_net without hash "
        "reports) in one lab VM boot: each checks the corpus against the oracle, then "
        "writes the corpus unpaced to the tap for some rounds and judges every record the "
        "guest receives.  Prints the rates, ratios, drops, host CPU per frame and QEMU's "
        "peak memory; writes JSON (default results/bench/datapath.json).  Exit status 1 "
        "when a row fails or any record under load is wrong.",
    )
    dp.add_argument("--design", type=_design_list, default=[designs.DEFAULT],
                    metavar="NAME[,NAME...]",
                    help=f"the lab VM boots this design's kernel for every row: "
                    f"{', '.join(designs.NAMES)} (default {designs.DEFAULT}); with several, "
                    "the first runs every row and the others the eBPF rows, side by side")
    dp.add_argument("--frames", type=int, default=None,
                    help="frames per round (default: the scenarios', 10000)")
    dp.add_argument("--rounds", type=int, default=None,
                    help="rounds per datapath (default: the scenarios', 3)")
    dp.add_argument("--rate", type=int, default=None,
                    help="offered frames per second (default: the scenarios'; 0: unpaced)")
    dp.add_argument("--out", type=Path, default=None,
                    help="JSON output (default results/bench/datapath.json; per-row results "
                    "next to it in datapath/)")
    dp.add_argument("--timeout", type=float, default=2400,
                    help="seconds for the lab VM at idle (default 2400)")
    dp.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    qemu_option.add(dp)
    dp.set_defaults(func=_datapath)

    tp = bsub.add_parser(
        "turnaround",
        help="time from a change to a checked result: builds, cache hits, boots, the demo",
        description="Builds (the current entries', the slowest and latest on record in "
        "<cache>/history.jsonl, and with --cold measured now into an empty temporary "
        "cache), cache lookups, the lab VM's boot, the first verified report (`hashlab run "
        "scenarios/lab-vhost.yaml`) and a warm scripts/demo.  Writes JSON (default "
        "results/bench/turnaround.json) and prints a table.",
    )
    tp.add_argument("--cold", action="store_true",
                    help="also measure cold builds now, into an empty cache (~16 min)")
    tp.add_argument("--no-demo", action="store_true", help="skip the warm scripts/demo")
    tp.add_argument("--out", type=Path, default=None,
                    help="JSON output (default results/bench/turnaround.json)")
    tp.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    tp.set_defaults(func=_turnaround)


def _design_list(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    for n in names:
        if n not in designs.NAMES:
            raise argparse.ArgumentTypeError(f"unknown design {n!r} ({', '.join(designs.NAMES)})")
    if not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError("a comma-separated list of distinct designs")
    return names


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _program(args) -> int:
    from ..bench import program, report

    if args.samples < 1 or args.samples > 64:
        raise HashlabError("--samples must be 1..64")
    if args.lab_part is not None:  # inside the lab VM, called by the host's run
        from ..host.datapath import running_design

        part = program.run_part(program.lab_where(running_design()), args.samples,
                                args.target_ms, _log)
        report.write(part, args.lab_part)
        return 0
    built = program.prebuild()
    _log("bench: built " + ", ".join(f"{k} {v}" for k, v in built.items()))
    result = program.run_part("host", args.samples, args.target_ms, _log)
    if args.lab != "no":
        for design in args.design:
            lab_part = program.run_lab_part(args.samples, args.target_ms, log=_log,
                                            design=design)
            if lab_part is None and args.lab == "yes":
                raise HashlabError(f"--lab yes: the {design} lab VM cannot run (see above)")
            result = report.merge(result, lab_part)
    report.finish(result)
    out = report.write(result, args.out or program.default_output())
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(report.table(result), end="")
        print(f"written: {out}")
    return 0


def _datapath(args) -> int:
    from ..bench import datapath

    if args.frames is not None and not 1 <= args.frames <= 1_000_000:
        raise HashlabError("--frames must be 1..1000000")
    if args.rounds is not None and not 1 <= args.rounds <= 20:
        raise HashlabError("--rounds must be 1..20")
    out = args.out or datapath.default_output()
    if args.rate is not None and not 0 <= args.rate <= 1_000_000:
        raise HashlabError("--rate must be 0..1000000")
    result = datapath.run(args.frames, args.rounds, args.rate, out.with_suffix(""),
                          args.timeout, _log, design=args.design)
    return _finish(args, result, out, datapath.table,
                   f" (per row: {out.with_suffix('')}/<scenario>/)")


def _turnaround(args) -> int:
    from ..bench import turnaround

    result = turnaround.run(args.cold, not args.no_demo, _log)
    return _finish(args, result, args.out or turnaround.default_output(), turnaround.table)


def _finish(args, result: dict, out: Path, table, note: str = "") -> int:
    """Write RESULT as JSON to OUT, print the table (or the JSON); status 1 unless ok."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(table(result), end="")
        print(f"written: {out}{note}")
    return 0 if result["ok"] else 1
