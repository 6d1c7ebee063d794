"""``hashlab bench program|datapath|turnaround``: benchmarks (issue 8)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import HashlabError


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks: the steering programs' ns per packet (program)",
        description="Benchmarks.  `program`: ns per packet of upstream QEMU's RSS program, "
        "hashlab's, and the table-driven prototype, through BPF_PROG_TEST_RUN, against a "
        "plain C Toeplitz floor; on the host and in the lab VM.",
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
    pp.add_argument("--samples", type=int, default=7, help="samples per subject and class (default 7)")
    pp.add_argument("--target-ms", type=float, default=50.0,
                    help="approximate length of one sample in ms (sets repeat; default 50)")
    pp.add_argument("--out", type=Path, default=None,
                    help="JSON output (default results/bench/program.json)")
    pp.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    pp.add_argument("--lab-part", type=Path, default=None, metavar="FILE",
                    help=argparse.SUPPRESS)  # the lab VM's half of a run
    pp.set_defaults(func=_program)

    for name, what in (("datapath", "issue 8 part 2: frames per second through tap/vhost into a guest"),
                       ("turnaround", "issue 8 part 3: time from a change to a checked result")):
        q = bsub.add_parser(name, help=f"(not implemented yet) {what}",
                            description=f"Not implemented yet: {what}.")
        q.set_defaults(func=_not_yet, what=name)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _not_yet(args) -> int:
    raise HashlabError(f"`hashlab bench {args.what}` is not implemented yet")


def _program(args) -> int:
    from ..bench import program, report

    if args.samples < 1 or args.samples > 64:
        raise HashlabError("--samples must be 1..64")
    if args.lab_part is not None:  # inside the lab VM, called by the host's run
        part = program.run_part("lab", args.samples, args.target_ms, _log)
        report.write(part, args.lab_part)
        return 0
    built = program.prebuild()
    _log("bench: built " + ", ".join(f"{k} {v}" for k, v in built.items()))
    result = program.run_part("host", args.samples, args.target_ms, _log)
    if args.lab != "no":
        lab_part = program.run_lab_part(args.samples, args.target_ms, log=_log)
        if lab_part is None and args.lab == "yes":
            raise HashlabError("--lab yes: the lab VM cannot run (see above)")
        result = report.merge(result, lab_part)
    report.finish(result)
    out = report.write(result, args.out or program.default_output())
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(report.table(result), end="")
        print(f"written: {out}")
    return 0
