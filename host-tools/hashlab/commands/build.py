"""`hashlab build kernel|qemu|guest`: build (or find in the cache) the lab's artefacts.

Each sub-command prints where its cache entry is.  The builders live in
``hashlab.build.<name>``; ``kernel`` is implemented here.  ``qemu`` and ``guest`` are
registered only when their modules exist and provide ``register_cli(sub)`` (add the
sub-command's parser and set ``func``), so a missing or broken optional builder never
stops ``hashlab build kernel`` from working.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from .. import designs
from ..errors import UsageError

# Optional builders, owned by other parts of the lab: module -> what it builds.
OPTIONAL_BUILDERS = {
    "qemu": "hashlab.build.qemu",
    "guest": "hashlab.build.guest",
}


def _kernel_design(args: argparse.Namespace) -> designs.Design:
    """--design NAME, or --stock (its old spelling); UsageError on a contradiction."""
    if args.stock and args.design not in (None, designs.CONTROL):
        raise UsageError(f"--stock is --design {designs.CONTROL}; it contradicts "
                         f"--design {args.design}")
    return designs.get(designs.CONTROL if args.stock else args.design)


def _kernel(args: argparse.Namespace) -> int:
    from ..build import kernel

    if args.tree:
        return _kernel_tree(args)
    design = _kernel_design(args)
    if args.bisect:
        import json

        from ..build import kernel_bisect

        kernel_bisect.design_with_series(design)  # refuses the control before any work
        path = kernel_bisect.ensure_bisect(force=args.force, jobs=args.jobs, nice=args.nice,
                                           design=design)
        doc = json.loads((path / "bisect.json").read_text())
        which = "" if design.name == designs.DEFAULT else f" ({design.name})"
        print(f"kernel series bisect{which}: {path}: {len(doc['patches'])} patches x "
              f"TUN=y/m, {len(doc['results'])} builds, all ok ({doc['seconds']:.0f}s)")
        return 0

    path = kernel.ensure_kernel(force=args.force, jobs=args.jobs, nice=args.nice,
                                keep_work=args.keep_work, design=design)
    if args.print_path:
        print(path)
    elif not design.series:
        print(f"{design.name} kernel (no series): {path}")
        print(f"  bzImage  {path / 'bzImage'}  ({(path / 'kernel.release').read_text().strip()})")
    else:
        which = "" if design.name == designs.DEFAULT else f" ({design.name})"
        print(f"kernel{which}: {path}")
        print(f"  bzImage  {path / 'bzImage'}  ({(path / 'kernel.release').read_text().strip()})")
        print(f"  headers  {path / 'headers' / 'include'}")
        print(f"  libbpf   PKG_CONFIG_PATH={path / 'libbpf' / 'lib' / 'pkgconfig'}")
        print(f"  bpftool  {path / 'bpftool'}")
    return 0


def _kernel_tree(args: argparse.Namespace) -> int:
    """--tree PATH: a developer's own tree, built out of tree into the cache."""
    import json
    from pathlib import Path

    from ..build import kernel_tree

    if args.design or args.stock or args.bisect or args.keep_work:
        raise UsageError("--tree builds the tree as it is: --design, --stock, --bisect and "
                         "--keep-work do not apply (its design is probed from the build)")
    path = kernel_tree.ensure(args.tree, Path(args.config) if args.config else None,
                              force=args.force, jobs=args.jobs, nice=args.nice)
    if args.print_path:
        print(path)
        return 0
    info = json.loads((path / "tree.json").read_text())
    print(f"kernel of {info['tree']} ({info['describe']}): {path}")
    print(f"  bzImage  {path / 'bzImage'}  ({(path / 'kernel.release').read_text().strip()})")
    print(f"  design   {info['design']} (probed from its UAPI headers and System.map)")
    print(f"  boot it  hashlab lab --kernel-tree {args.tree} -- CMD")
    return 0


def _register_kernel(sub) -> None:
    p = sub.add_parser(
        "kernel",
        help="a design's lab kernel (Debian linux-source + kernel/series/<design> + "
        "kernel/lab.config)",
        description="Build a design's lab kernel, its UAPI headers, libbpf and bpftool into "
        "the content-keyed cache (or find them there) and say where they are.  Designs: "
        + "; ".join(f"{d.name}: {d.title}" for d in designs.DESIGNS) + ".",
    )
    p.add_argument("--print-path", action="store_true",
                   help="print only the cache entry's path (building it first if needed)")
    p.add_argument("--force", action="store_true", help="rebuild even if the entry exists")
    p.add_argument("-j", "--jobs", type=int, default=None,
                   help="parallel make jobs (default: CPUs + 1)")
    p.add_argument("--nice", type=int, default=10,
                   help="run make under nice -n N (default 10; 0 disables)")
    p.add_argument("--keep-work", action="store_true",
                   help="keep the unpacked source and object tree after a successful build")
    p.add_argument("--design", choices=designs.NAMES, default=None, metavar="NAME",
                   help=f"which design's kernel: {', '.join(designs.NAMES)} "
                   f"(default {designs.DEFAULT})")
    p.add_argument("--bisect", action="store_true",
                   help="check that every prefix of the design's series "
                   "(kernel/series/<design>) builds, with TUN=y and =m (the objects of the "
                   "files the series touches; cached by the series); not for "
                   f"{designs.CONTROL}, which has none")
    p.add_argument("--stock", action="store_true",
                   help=f"an alias for --design {designs.CONTROL}: the control, the same "
                   "source and lab.config without any series (for the comparison's "
                   "\"kernel without the series\" rows)")
    p.add_argument("--tree", metavar="PATH",
                   help="build your own kernel git tree instead, out of tree (make O= in the "
                   "cache, keyed by its git describe --dirty and a hash of its diff), with "
                   "kernel/lab.config merged on top of the base config")
    p.add_argument("--config", metavar="FILE",
                   help="with --tree: the base config (default: allnoconfig, as for "
                   "hashlab's own kernels)")
    p.set_defaults(func=_kernel)


def _register_optional(sub, name: str, module: str) -> None:
    if importlib.util.find_spec(module) is None:
        return
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # a broken optional builder must not break the others
        print(f"hashlab: warning: {module} failed to import: {e}", file=sys.stderr)
        return
    reg = getattr(mod, "register_cli", None)
    if reg is not None:
        reg(sub)


def _build_parent(args: argparse.Namespace) -> int:
    args.build_parser.print_help(sys.stderr)
    return 2


def register(sub) -> None:
    p = sub.add_parser("build", help="build the lab's artefacts (kernel, qemu, guest)",
                       description="Build the lab's artefacts into the content-keyed cache.")
    p.set_defaults(func=_build_parent, build_parser=p)
    bsub = p.add_subparsers(dest="build_what", metavar="WHAT")
    _register_kernel(bsub)
    # --- other builders: `hashlab build qemu`, `hashlab build guest` -------------------
    # Implement `register_cli(sub)` in hashlab/build/qemu.py or hashlab/build/guest.py.
    for name, module in OPTIONAL_BUILDERS.items():
        _register_optional(bsub, name, module)
