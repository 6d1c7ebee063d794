"""`hashlab build kernel --bisect`: every prefix of the series builds, with TUN=y and =m.

A posted series must build at every patch (`git bisect` lands anywhere).  For each
prefix 1..k of a design's series (default ``progtype``: kernel/series/progtype), applied
to the pristine source, this compiles the kernel objects of every C file the series
touches (the headers it touches are compiled through them), once with lab.config (everything built in) and once with tun, tap, macvtap and
vhost_net as modules (``-DMODULE``: the ``=m`` side of ``IS_ENABLED()``).  Objects only,
no link: the full build (`hashlab build kernel`) links the whole series.  ccache keeps a
rerun to the objects a patch really changes.

The result is a cache entry of kind ``kernel-bisect`` for ``progtype``
(``kernel-bisect-<name>`` for another design; keyed like its kernel: source, compiler,
lab.config, every patch), holding ``bisect.json``; a failure names the patch and the
configuration, and keeps the log.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from .. import designs
from ..cache import CacheEntry
from ..errors import UsageError
from ..paths import cache_root
from . import kernel as K
from . import steps

RECIPE_VERSION = "kernel-bisect-1"

# The =m configuration: lab.config with modules, and the drivers the series touches as
# modules (VHOST follows VHOST_NET, TAP follows MACVTAP).
MODULE_OVERRIDES = {"CONFIG_MODULES": "y", "CONFIG_TUN": "m", "CONFIG_VHOST_NET": "m",
                    "CONFIG_MACVLAN": "m", "CONFIG_MACVTAP": "m"}
# What =m must compile as modules (the rest of the objects are built in either way).
MODULE_OBJECTS = ("drivers/net/tun.o", "drivers/net/tap.o", "drivers/vhost/net.o")


def design_with_series(design: str | designs.Design = designs.DEFAULT) -> designs.Design:
    """DESIGN, which must have a series to bisect (UsageError for the control)."""
    d = designs.get(design)
    if not d.series:
        with_series = ", ".join(x.name for x in designs.with_series())
        raise UsageError(f"design {d.name} has no kernel series to bisect "
                         f"(designs with a series: {with_series})")
    return d


def entry(design: str | designs.Design = designs.DEFAULT) -> CacheEntry:
    d = design_with_series(design)
    key = K.input_key(d)
    # "kernel" -> "kernel-bisect" (progtype's entries as before), "kernel-x" -> "kernel-bisect-x"
    key.kind = d.cache_kind.replace("kernel", "kernel-bisect", 1)
    key.add_text("bisect-recipe", RECIPE_VERSION)
    return CacheEntry(key)


def touched_objects(patches: list[Path]) -> list[str]:
    """The kernel objects of the C files the series changes (not tools/, not docs)."""
    files: set[str] = set()
    for p in patches:
        for m in re.finditer(r"^\+\+\+ b/(\S+)$", p.read_text(errors="replace"), re.M):
            f = m.group(1)
            if f.endswith(".c") and not f.startswith(("tools/", "Documentation/", "samples/")):
                files.add(f[:-2] + ".o")
    return sorted(files)


def module_fragment(dest: Path) -> Path:
    """lab.config with MODULE_OVERRIDES applied, written to DEST."""
    lines = []
    seen = set()
    for line in K.LAB_CONFIG.read_text().splitlines():
        m = re.fullmatch(r"(?:# )?(CONFIG_\w+)(?:=.*| is not set)", line.strip())
        if m and m.group(1) in MODULE_OVERRIDES:
            sym = m.group(1)
            seen.add(sym)
            lines.append(f"{sym}={MODULE_OVERRIDES[sym]}")
        else:
            lines.append(line)
    lines += [f"{s}={v}" for s, v in MODULE_OVERRIDES.items() if s not in seen]
    dest.write_text("\n".join(lines) + "\n")
    return dest


def ensure_bisect(force: bool = False, jobs: int | None = None, nice: int = 10,
                  design: str | designs.Design = designs.DEFAULT) -> Path:
    d = design_with_series(design)
    e = entry(d)
    if e.done and not force:
        return e.path
    with K.locked(e.path.with_name(e.path.name + ".lock")):
        if e.done and not force:
            return e.path
        return _bisect(e, jobs or 3, nice, d)


def _bisect(e: CacheEntry, jobs: int, nice: int, design: designs.Design) -> Path:
    _, _, tarball = K.source_tarball()
    patches = K.patch_files(design)
    objects = touched_objects(patches)
    work = cache_root() / "kernel-bisect-work" / e.ikey.key
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    logfile, src = work / "build.log", work / "src"
    env = K._make_env(work)
    cc = "ccache gcc" if shutil.which("ccache") else "gcc"
    t0 = time.monotonic()
    K.log(f"bisect: design {design.name}, {len(patches)} patches x (=y, =m), "
          f"objects {' '.join(objects)}; "
          f"log: {logfile}")
    K.unpack(tarball, src, logfile)
    configs = {"y": K.LAB_CONFIG, "m": module_fragment(work / "modules.config")}
    results = []
    for k, patch in enumerate(patches, 1):
        K.apply_series(src, [patch], logfile)
        for name, fragment in configs.items():
            obj = work / f"obj-{name}"
            obj.mkdir(exist_ok=True)
            make = ["make", "-C", str(src), f"O={obj}", f"CC={cc}", f"HOSTCC={cc}", f"-j{jobs}"]
            t1 = time.monotonic()
            label = f"bisect {k}/{len(patches)} {patch.name} (TUN={name})"
            try:
                # every prefix: patch 4 changes a Kconfig select
                K.configure(src, obj, logfile, make, fragment, quiet=True)
                K.run(make + objects, logfile, label, env=env, nice=nice)
            except K.KernelBuildError as err:
                raise K.KernelBuildError(
                    f"the series does not build at patch {k} ({patch.name}) with TUN={name}: "
                    f"{err}; work dir left: {work}") from None
            if name == "m":
                built = [o for o in MODULE_OBJECTS if (obj / o).is_file()]
                if sorted(built) != sorted(MODULE_OBJECTS):
                    raise K.KernelBuildError(f"{label}: {set(MODULE_OBJECTS) - set(built)} "
                                             f"were not built as modules; see {logfile}")
            results.append({"patch": k, "name": patch.name, "config": name,
                            "seconds": round(time.monotonic() - t1, 1)})
    return steps.finish_bisect(
        e, {"design": design.name, "patches": [p.name for p in patches], "objects": objects,
            "module_overrides": MODULE_OVERRIDES, "results": results},
        logfile, work, t0, K.log)
