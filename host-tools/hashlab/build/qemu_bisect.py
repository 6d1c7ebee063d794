"""`hashlab build qemu --bisect`: QEMU builds at every patch of qemu/patches.

A posted series must build at every patch.  This unpacks the pristine source package,
configures it once (the lab's configure line), then applies the patches one at a time and
runs ``ninja`` after each: meson reconfigures by itself when a patch changes a
``meson.build``, and ninja rebuilds what each patch touched.  Unlike ``hashlab build qemu``
nothing is regenerated: each patch must carry its own ``ebpf/*.skeleton.h`` (the
generated eBPF skeletons QEMU commits), so a patch that changes ``tools/ebpf/rss.bpf.c``
without them is caught when ``hashlab build qemu`` reports the committed skeleton stale
(``skeletons_match_series`` in its ``.done``), and a tree that does not compile fails here.
ccache (shared with ``hashlab build qemu``) keeps it to a few minutes.

The result is a cache entry of kind ``qemu-bisect`` (keyed like the QEMU build: source,
series, toolchain, configure line) holding ``bisect.json``; a failure names the patch
and keeps the work directory and its log.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from ..cache import CacheEntry
from ..paths import cache_root
from . import qemu as Q
from . import steps

RECIPE_VERSION = "qemu-bisect-1"


def entry(tc: Q.BpfToolchain, dsc: Path) -> CacheEntry:
    key = Q.input_key(tc, dsc)
    key.kind = "qemu-bisect"
    key.add_text("bisect-recipe", RECIPE_VERSION)
    return CacheEntry(key)


def ninja_targets(src: Path) -> list[str]:
    """The binary, and the series' unit test once a patch has added it."""
    targets = ["qemu-system-x86_64"]
    if (src / "tests/unit/test-virtio-net-hash.c").is_file():
        targets.append("tests/unit/test-virtio-net-hash")
    return targets


def ensure_bisect(force: bool = False, jobs: int | None = None, nice: int = 10,
                  libbpf: str = "kernel") -> Path:
    tc = Q.toolchain(libbpf)
    dsc = Q.source_package()
    e = entry(tc, dsc)
    if e.done and not force:
        return e.path
    with Q.locked(e.path.with_name(e.path.name + ".lock")):
        if e.done and not force:
            return e.path
        return _bisect(e, tc, dsc, jobs or os.cpu_count() or 1, nice)


def _bisect(e: CacheEntry, tc: Q.BpfToolchain, dsc: Path, jobs: int, nice: int) -> Path:
    patches = Q.patch_files()
    work = cache_root() / "qemu-bisect-work" / e.ikey.key
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    logfile, src = work / "build.log", work / "src"
    bld = src / "build"
    t0 = time.monotonic()
    Q.log(f"bisect: {len(patches)} patches, one ninja run each; log: {logfile}")
    env = Q._env(work, tc)
    Q.unpack(dsc, src, logfile)
    Q.configure(src, bld, env, logfile, nice)
    results = []
    for k, patch in enumerate(patches, 1):
        Q.apply_series(src, [patch], logfile)
        targets = ninja_targets(src)
        t1 = time.monotonic()
        label = f"bisect {k}/{len(patches)} {patch.name}"
        try:
            Q.run(["ninja", "-C", str(bld), f"-j{jobs}", *targets], logfile, label,
                  env=env, nice=nice, progress=True)
        except Q.QemuBuildError as err:
            raise Q.QemuBuildError(f"the series does not build at patch {k} ({patch.name}): "
                                   f"{err}; work dir left: {work}") from None
        results.append({"patch": k, "name": patch.name, "targets": targets,
                        "seconds": round(time.monotonic() - t1, 1)})
    return steps.finish_bisect(e, {"patches": [p.name for p in patches], "results": results},
                               logfile, work, t0, Q.log)
