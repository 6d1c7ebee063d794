"""`hashlab lab [--] CMD`: run a command as root in the lab VM."""

from __future__ import annotations

import sys
from pathlib import Path

from .. import designs
from ..host import lab
from ..errors import Exit, UsageError


def register(sub):
    p = sub.add_parser(
        "lab",
        help="run CMD as root in the lab VM (lab kernel under TCG, host root over 9p)",
        description="Boot the lab VM (our kernel, KVM_AMD/VHOST_NET/TUN built in) under "
        "TCG with the host's files visible, run CMD in it as root and exit with CMD's "
        "status.  A kernel panic exits 5, a hang 6, a VM that died otherwise 4, "
        "kernel warnings with --fail-on-warning 7; the console log is kept and its "
        "path printed.",
    )
    p.add_argument("--design", choices=designs.NAMES, default=None, metavar="NAME",
                   help=f"boot this design's cached kernel: {', '.join(designs.NAMES)} "
                   f"(default {designs.DEFAULT}); with --kernel: what that bzImage is")
    p.add_argument("--kernel", help="bzImage to boot (default: the design's cached kernel)")
    p.add_argument("--kernel-tree", metavar="PATH",
                   help="boot a kernel tree: its own build (arch/x86/boot/bzImage, as "
                   "vng --run PATH) or its cached hashlab build kernel --tree; the kernel's "
                   "design is probed from the build, and again in the lab VM")
    p.add_argument("--timeout", type=float, default=600,
                   help="seconds at idle; scaled by the machine's load (default 600)")
    p.add_argument("--memory", default="4G")
    p.add_argument("--append", action="append", default=[], metavar="KARG",
                   help="extra kernel command-line argument (repeatable)")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("-v", "--verbose", action="store_true", help="show the kernel console")
    p.add_argument("--fail-on-warning", action="store_true",
                   help="exit 7 when the kernel printed a warning, BUG or oops, even if CMD passed")
    p.add_argument("--rwdir", action="append", default=[], metavar="DIR",
                   help="a directory CMD writes to (repeatable).  The lab VM sees the host's "
                   "files read-only, with tmpfs over /tmp and /var/cache: only the checkout, "
                   "the build cache, the working directory and these keep what CMD writes")
    p.add_argument("--rodir", action="append", default=[], metavar="DIR",
                   help="a directory CMD reads that lies under /tmp or another tmpfs of the "
                   "lab VM (repeatable)")
    p.add_argument("--accel", choices=lab.ACCELS, default="tcg",
                   help="how the lab VM runs: tcg (default), kvm, or auto: KVM when "
                   "/dev/kvm runs a Linux guest here (probed once per host boot: a test "
                   "guest, then the lab kernel booted under KVM) and allows nesting, "
                   "else TCG; says which and why in one line")
    p.add_argument("cmd", nargs="+", metavar="CMD")
    p.set_defaults(func=_run)


def _run(args) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if args.kernel_tree:
        from ..build import kernel_tree

        if args.kernel or args.design:
            raise UsageError("--kernel-tree boots the tree's kernel: not with --kernel or "
                             "--design (its design is probed)")
        args.kernel, design, where = kernel_tree.bootable(args.kernel_tree)
        print(f"hashlab lab: {args.kernel} ({where}): design {design}, probed from its "
              "UAPI headers and System.map", file=sys.stderr)
    accel = args.accel
    if accel != "tcg":
        kernel = Path(args.kernel) if args.kernel else lab.default_kernel(
            designs.get(args.design).name)
        accel, why = lab.choose_accel(accel, kernel)
        print(f"hashlab lab: {accel.upper()}: {why}", file=sys.stderr)
    res = lab.run(cmd, kernel=args.kernel, design=args.design, timeout=args.timeout, accel=accel,
                  memory=args.memory, cpus=args.cpus, verbose=args.verbose, append=args.append,
                  writes=[Path(d) for d in args.rwdir], reads=[Path(d) for d in args.rodir])
    for o in res.oopses:
        print(f"hashlab: kernel warning in the lab VM: {o}", file=sys.stderr)
    print(f"hashlab: lab VM done in {res.seconds:.1f}s, status {res.status}, "
          f"{len(res.oopses)} kernel warning(s); console log: {res.log}", file=sys.stderr)
    if res.status == 0 and res.oopses and args.fail_on_warning:
        return Exit.KERNEL_WARNING
    return res.status
