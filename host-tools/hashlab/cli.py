"""The `hashlab` command: a thin CLI over the mechanism modules.

Each command module exposes ``register(subparsers)`` which adds its sub-command and
sets ``func`` on the parser; ``func(args)`` returns the exit status.  Modules are
imported lazily by name so that a broken optional part (say, the lab) never stops
``hashlab corpus`` from working.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .commands import qemu_option
from .errors import HashlabError, Terminated, raise_on_termination

# Module (relative to the package) -> what it provides.  Order is the help order.
COMMAND_MODULES = [
    "commands.oracle",  # corpus, expect
    "commands.run",  # run SCENARIO.yaml
    "commands.session",  # session SCENARIO.yaml [-- CMD]
    "commands.build",  # build kernel|qemu|guest
    "commands.lab",  # lab [--] CMD
    "commands.compare",  # compare [--rows ...]
    "commands.bench",  # bench program|datapath|turnaround
    "commands.report",  # report --compare compare.json [--program ...] --out DIR
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hashlab",
        description="virtio-net hash reporting lab: oracle, corpus, VMs, builds.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        mod = importlib.import_module(f"{__package__}.{name}")
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    raise_on_termination()
    try:
        qemu_option.apply(args)
        return int(args.func(args) or 0)
    except HashlabError as e:
        print(f"hashlab: error: {e}", file=sys.stderr)
        return e.exit_status
    except Terminated as e:
        print(f"hashlab: terminated by signal {e.signum}; VMs and taps cleaned up",
              file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("hashlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
