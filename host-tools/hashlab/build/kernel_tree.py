"""A developer's own kernel tree, built out of tree into the cache.

``hashlab build kernel --tree PATH`` builds the git tree at PATH with ``make O=`` into
``<cache>/kernel-tree/<key>``, the key made of the tree's ``git describe --dirty``, a
hash of what differs from its HEAD (tracked changes and untracked files), the base
config and ``kernel/lab.config``, and the compiler: an edit to the tree is a new entry,
an unchanged tree is found again.  The config is the base (``--config FILE``, or
``allnoconfig`` as for hashlab's own kernels) with ``lab.config`` merged on top as a
fragment and checked symbol by symbol, so the kernel can be the lab VM and its guest.
The entry has the layout of hashlab's own kernel entries (bzImage, headers, libbpf,
bpftool, the series' kselftests where the tree has them).

Which design the kernel is, is read from what was built, never assumed from a name:
see ``design_of``.  Everything is built into the work directory (kbuild's ``O=``, the
tools' ``OUTPUT=``); kbuild refuses ``O=`` from a tree with an in-tree build, which is
refused here first, with the way out.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from .. import designs
from ..cache import CacheEntry, InputKey
from ..errors import UsageError
from ..paths import cache_root
from . import kernel as K
from . import steps

RECIPE_VERSION = "1"
KIND = "kernel-tree"


def _git(tree: Path, *args: str) -> bytes:
    r = subprocess.run(["git", "-C", str(tree), *args], capture_output=True)
    if r.returncode != 0:
        raise UsageError(f"git {' '.join(args)} in {tree} failed: "
                         f"{r.stderr.decode(errors='replace').strip()}")
    return r.stdout


def tree_state(path: str | Path, opt: str = "--tree") -> tuple[Path, str, str]:
    """(top of the git tree, its ``git describe --always --dirty``, the hash of what
    differs from HEAD); UsageError when PATH is not a kernel git tree."""
    p = Path(path).expanduser().resolve()
    if not p.is_dir():
        raise UsageError(f"{opt} {path}: no such directory")
    if shutil.which("git") is None:
        raise UsageError("--tree needs git (apt-get install git)")
    r = subprocess.run(["git", "-C", str(p), "rev-parse", "--show-toplevel"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise UsageError(f"{opt} {path}: not a git tree, so its state cannot key the cache "
                         "(git init && git add -A && git commit there, or build it yourself "
                         "and boot it with hashlab lab --kernel-tree)")
    top = Path(r.stdout.strip())
    if not (top / "Kbuild").is_file() or not (top / "arch" / "x86").is_dir():
        raise UsageError(f"{opt} {path}: {top} is not a Linux source tree")
    describe = _git(top, "describe", "--always", "--dirty", "--abbrev=12").decode().strip()
    h = hashlib.sha256(_git(top, "diff", "HEAD", "--binary"))
    for name in sorted(_git(top, "ls-files", "--others", "--exclude-standard", "-z")
                       .split(b"\0")):
        if name:
            h.update(b"\0untracked\0" + name + b"\0")
            f = top / name.decode(errors="surrogateescape")
            h.update(f.read_bytes() if f.is_file() else b"")
    return top, describe, h.hexdigest()


def input_key(tree: Path, describe: str, diff: str, base_config: Path | None) -> InputKey:
    key = InputKey(KIND)
    key.add_text("recipe", RECIPE_VERSION)
    key.add_text("tree", f"{describe} diff {diff}")
    key.add_text("compiler", K.compiler_version())
    key.add_file(K.LAB_CONFIG, "lab.config")
    if base_config:
        key.add_file(base_config, "base config")
    else:
        key.add_text("base config", "allnoconfig")
    return key


def entry(path: str | Path, base_config: Path | None = None,
          opt: str = "--tree") -> CacheEntry:
    top, describe, diff = tree_state(path, opt)
    e = CacheEntry(input_key(top, describe, diff, base_config))
    e.extra.update({"tree": str(top), "describe": describe, "diff_sha256": diff})
    return e


def design_of(headers: Path, system_map: Path) -> str:
    """The design a built kernel is, from what it has: the RFC's program type in its
    UAPI (progtype), the kfunc among its symbols (kfunc), tun's hashing ioctls in its
    UAPI (tunrss); none of them: the control (stock)."""
    def has(f: Path, what: bytes) -> bool:
        try:
            return what in f.read_bytes()
        except OSError:
            return False

    if has(headers / "linux" / "bpf.h", b"BPF_PROG_TYPE_VNET_HASH"):
        return "progtype"
    if has(system_map, b" bpf_skb_set_vnet_hash\n"):
        return "kfunc"
    if has(headers / "linux" / "if_tun.h", b"TUNSETVNETHASH"):
        return "tunrss"
    return designs.CONTROL


def ensure(path: str | Path, base_config: Path | None = None, force: bool = False,
           jobs: int | None = None, nice: int = 10) -> Path:
    """The cache entry of PATH's kernel as it is now, building it if needed."""
    if base_config is not None and not Path(base_config).is_file():
        raise UsageError(f"--config {base_config}: no such file")
    e = entry(path, base_config)
    if e.done and not force:
        return e.path
    tree = Path(e.extra["tree"])
    if (tree / ".config").exists() or (tree / "include" / "config").is_dir():
        raise UsageError(f"--tree {path}: the tree has an in-tree build (.config), from "
                         "which kbuild refuses to build out of tree; run `make mrproper` "
                         "there, or `git worktree add` a clean tree, or boot your own build "
                         "with hashlab lab --kernel-tree")
    with K.locked(e.path.with_name(e.path.name + ".lock")):
        if e.done and not force:
            return e.path
        return _build(e, tree, base_config, jobs or (os.cpu_count() or 1) + 1, nice)


def _build(e: CacheEntry, tree: Path, base_config: Path | None, jobs: int, nice: int) -> Path:
    work = cache_root() / "kernel-tree-work" / e.ikey.key
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    logfile, obj = work / "build.log", work / "obj"
    obj.mkdir()
    t0 = time.monotonic()
    K.log(f"building {tree} ({e.extra['describe']}) out of tree into {e.path} "
          f"(work dir {work})")
    cc = "ccache gcc" if shutil.which("ccache") else "gcc"
    make = ["make", "-C", str(tree), f"O={obj}", f"CC={cc}", f"HOSTCC={cc}", f"-j{jobs}"]
    env = K._make_env(work)

    def mk(args: list[str], label: str, progress: bool = False) -> None:
        K.run(make + args, logfile, label, env=env, nice=nice, progress=progress)

    cc0 = steps.ccache_counts(Path(env["CCACHE_DIR"]))
    try:
        with e.fill() as dest:
            if base_config:
                shutil.copy2(base_config, obj / ".config")
                K.run([str(tree / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(obj),
                       str(obj / ".config"), str(K.LAB_CONFIG)], logfile, "merge lab.config",
                      cwd=tree)
                K.run(make + ["olddefconfig"], logfile, "olddefconfig")
                K.check_config(K.LAB_CONFIG, obj / ".config")
            else:
                K.configure(tree, obj, logfile, make, K.LAB_CONFIG)
            mk(["bzImage"], "bzImage", progress=True)
            mk([f"INSTALL_HDR_PATH={dest / 'headers'}", "headers_install"], "headers_install")
            K.build_libbpf(tree, work, dest / "libbpf", logfile, jobs, nice)
            K.build_bpftool(tree, work, dest, logfile, jobs, nice)
            K.build_selftests(tree, dest, logfile)
            for name, rel in (("bzImage", "arch/x86/boot/bzImage"), ("config", ".config"),
                              ("System.map", "System.map"),
                              ("kernel.release", "include/config/kernel.release")):
                shutil.copy2(obj / rel, dest / name)
            shutil.copy2(K.LAB_CONFIG, dest / "lab.config")
            shutil.copy2(logfile, dest / "build.log")
            design = design_of(dest / "headers" / "include", dest / "System.map")
            (dest / "tree.json").write_text(json.dumps(
                {**e.extra, "design": design}, indent=1) + "\n")
            e.extra["design"] = design
            e.extra["ccache"] = steps.ccache_delta(
                cc0, steps.ccache_counts(Path(env["CCACHE_DIR"])))
    except K.KernelBuildError:
        K.log(f"work dir left for inspection: {work}")
        raise
    shutil.rmtree(work, ignore_errors=True)
    el = time.monotonic() - t0
    K.log(f"done in {int(el) // 60}m{int(el) % 60:02d}s: {e.path} (design {design})")
    return e.path


def bootable(path: str | Path) -> tuple[Path, str, str]:
    """What ``hashlab lab --kernel-tree PATH`` boots: (bzImage, design, where it came
    from).  A tree built in place (``arch/x86/boot/bzImage``, as ``vng --run`` takes it)
    first; else this tree state's cache entry; UsageError when neither exists."""
    p = Path(path).expanduser().resolve()
    if not p.is_dir():
        raise UsageError(f"--kernel-tree {path}: no such directory")
    own = p / "arch" / "x86" / "boot" / "bzImage"
    if own.is_file():  # its UAPI sources and System.map say what it is
        return own, design_of(p / "include" / "uapi", p / "System.map"), "built in the tree"
    e = entry(p, opt="--kernel-tree")
    if e.done:
        d = json.loads((e.path / "tree.json").read_text()).get("design", designs.CONTROL)
        return e.path / "bzImage", d, f"cache entry {e.path}"
    raise UsageError(f"--kernel-tree {path}: neither {own} nor a cached build of the tree as "
                     f"it is now ({e.extra['describe']}); run hashlab build kernel --tree {path}")



# A developer's tree, made from what hashlab pins: for the tests of --tree and
# --kernel-tree (scripts/test tree).  Fixed identity and dates: the same inputs make the
# same commits, so `git describe` (and the build's cache key) is the same on every machine.
_GIT_ID = {"GIT_AUTHOR_NAME": "hashlab developers", "GIT_AUTHOR_EMAIL": "hashlab@localhost",
           "GIT_COMMITTER_NAME": "hashlab developers",
           "GIT_COMMITTER_EMAIL": "hashlab@localhost",
           "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
           "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z"}


def fixture(design: str = designs.DEFAULT) -> Path:
    """A git tree of the pinned linux-source with DESIGN's series as commits (git am),
    in the cache (made once per inputs); its top directory."""
    d = designs.get(design)
    pkg, version, tarball = K.source_tarball()
    patches = K.patch_files(d)
    key = InputKey("tree-fixture")
    key.add_text("recipe", RECIPE_VERSION)
    key.add_text("source", f"{pkg}={version}")
    key.add_files(patches, prefix="patches/")
    e = CacheEntry(key)
    if e.done:
        return e.path / "linux"
    env = {**os.environ, **_GIT_ID}
    with K.locked(e.path.with_name(e.path.name + ".lock")):
        if e.done:
            return e.path / "linux"
        with e.fill() as dest:
            src = dest / "linux"
            logfile = dest / "make.log"
            K.unpack(tarball, src, logfile)
            # -f: Debian's linux-source ships a .gitignore whose "/*" (its packaging's
            # rule) ignores every top-level entry: a plain add commits nothing.
            for args, label in ((["init", "-q", "-b", "pristine"], "git init"),
                                (["add", "-A", "-f"], "git add"),
                                (["commit", "-q", "-m", f"{pkg} {version}"], "git commit")):
                K.run(["git", "-C", str(src), *args], logfile, label, env=env)
            if patches:
                K.run(["git", "-C", str(src), "am", "-q", "--committer-date-is-author-date",
                       *map(str, patches)], logfile, f"git am the {d.name} series", env=env)
        K.log(f"a {d.name} tree for --tree: {e.path / 'linux'}")
    return e.path / "linux"
