"""``--qemu PATH``: a user's own QEMU as the patched one (run, session, compare, bench).

The binary (or the one in a build directory) replaces the patched QEMU build for this
command and for the lab VMs it boots (through HASHLAB_PATCHED_QEMU, which they inherit);
what it can do is probed (``hashlab.host.qemu_caps``) and shown, never assumed.
"""

from __future__ import annotations

import argparse
import sys


def add(p: argparse.ArgumentParser) -> None:
    p.add_argument("--qemu", metavar="PATH",
                   help="use this QEMU (a qemu-system-x86_64, or a QEMU build directory) "
                   "as the patched QEMU; what it can do is probed and shown")


def apply(args) -> None:
    """Called by the CLI before the command runs."""
    if not getattr(args, "qemu", None):
        return
    from ..host import datapath, qemu_caps

    caps = qemu_caps.use(args.qemu, datapath.PATCHED_QEMU_ENV)
    args.qemu_caps = caps
    print(f"hashlab: the patched QEMU is {caps.summary()}", file=sys.stderr)


def probe_all() -> dict[str, dict]:
    """Every QEMU hashlab would run here (stock, and each patched variant that is built
    or given), probed: {kind: QemuCaps.to_json()}."""
    from ..errors import MissingToolError
    from ..host import datapath, qemu_caps
    from ..host.qemu_process import HOST_QEMU

    out = {"stock": qemu_caps.probe(HOST_QEMU).to_json()}
    for kind in datapath.QEMU_VARIANT_ENV:
        try:
            out[kind] = qemu_caps.probe(datapath.patched_qemu(kind)).to_json()
        except MissingToolError:
            continue
    return out
