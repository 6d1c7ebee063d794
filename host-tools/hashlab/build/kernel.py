"""Build a design's lab kernel: Debian's linux-source + its series + kernel/lab.config.

The result is a cache entry ``<cache>/kernel/<key>/`` holding

    bzImage          the lab kernel (lab VM under TCG, and the KVM guest inside it)
    config           its .config
    System.map
    kernel.release   `make kernelrelease`
    lab.config       the fragment it was configured with
    series           the patches applied, in order
    headers/         `make headers_install`: the patched UAPI (include/linux/bpf.h, ...)
    libbpf/          libbpf of the patched tree: include/bpf/*.h, lib/libbpf.a,
                     lib/libbpf.so*, lib/pkgconfig/libbpf.pc (relocatable)
    bpftool          bpftool of the patched tree (knows SEC("vnet_hash"))
    selftests/       the series' kselftests, built against its UAPI (tun_vnet_hash)
    build.log        make's output
    .done            stamp with the inputs (see cache.py)

The key covers the source package version, every patch file's content, lab.config,
the compiler version and RECIPE_VERSION below: bump RECIPE_VERSION whenever this file
changes what ends up in an entry.

Which series is a *design* (``hashlab.designs``): ``progtype`` applies
``kernel/series/progtype/`` (entry kind ``kernel``); ``stock`` builds the same source with
the same lab.config and compiler but without any series (kind ``kernel-stock``, without
libbpf and bpftool): the control for the comparison rows that need "a kernel without the
series".  The key names the patch files, not their directory: moving a series does not
rebuild it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from .. import designs
from ..cache import CacheEntry, InputKey
from . import steps
from .steps import run_step
from ..errors import BuildError, MissingToolError
from ..paths import KERNEL_DIR, cache_root, versions

# Bump when the recipe (steps, make variables, layout of the entry) changes.
RECIPE_VERSION = "kernel-recipe-2"

LAB_CONFIG = KERNEL_DIR / "lab.config"
PROGRESS_SECONDS = 5.0

# Fixed build identity: the same inputs give the same `uname -v` (and better ccache hits).
KBUILD_ENV = {
    "KBUILD_BUILD_USER": "hashlab",
    "KBUILD_BUILD_HOST": "hashlab",
    "KBUILD_BUILD_TIMESTAMP": "Thu Jan  1 00:00:00 UTC 1970",
    "KBUILD_BUILD_VERSION": "1",
}


class KernelBuildError(BuildError):
    """A step of the kernel build failed; the message names the step and the log."""


def log(msg: str) -> None:
    print(f"hashlab build kernel: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- inputs


def patch_files(design: str | designs.Design = designs.DEFAULT) -> list[Path]:
    """DESIGN's series, in application order (the cover letter skipped); [] for none."""
    d = designs.get(design).series_dir
    return steps.series_files(d) if d else []


def source_tarball() -> tuple[str, str, Path]:
    """(package, version, tarball) of the pinned Debian linux-source package."""
    v = versions()
    pkg = v["LINUX_SOURCE_PKG"]
    want = v["LINUX_SOURCE_VERSION"]
    hint = f"install it with: apt-get install -y {pkg}={want}"
    try:
        got = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", pkg],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except FileNotFoundError:
        got = ""
    tarball = Path("/usr/src") / f"{pkg}.tar.xz"
    if not got:
        raise MissingToolError(f"Debian package {pkg} is not installed; {hint}")
    if got != want:
        raise MissingToolError(
            f"Debian package {pkg} is at version {got}, versions.env pins {want}; {hint}"
        )
    if not tarball.is_file():
        raise MissingToolError(f"{tarball} is missing although {pkg} {got} is installed; "
                               f"reinstall it: apt-get install --reinstall -y {pkg}={want}")
    return pkg, want, tarball


def compiler_version() -> str:
    try:
        return subprocess.run(["gcc", "--version"], capture_output=True, text=True,
                              check=True).stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        raise MissingToolError("gcc not found; apt-get install -y build-essential")


def input_key(design: str | designs.Design = designs.DEFAULT) -> InputKey:
    d = designs.get(design)
    patches = patch_files(d)
    pkg, version, _ = source_tarball()
    key = InputKey(d.cache_kind)
    key.add_text("recipe", RECIPE_VERSION)
    key.add_text("source", f"{pkg}={version}")
    key.add_text("compiler", compiler_version())
    key.add_file(LAB_CONFIG, "lab.config")
    # names and contents only (the "patches/" prefix is historic): where the series
    # lives is not an input
    key.add_text("series", "\n".join(p.name for p in patches))
    key.add_files(patches, prefix="patches/")
    return key


def entry(design: str | designs.Design = designs.DEFAULT) -> CacheEntry:
    return CacheEntry(input_key(design))


# --------------------------------------------------------------------------- config


def read_fragment(path: Path) -> dict[str, str]:
    """CONFIG_FOO -> 'y' | 'n' | value, from a fragment (``# CONFIG_FOO is not set`` -> 'n')."""
    want: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        m = re.fullmatch(r"# (CONFIG_\w+) is not set", line)
        if m:
            want[m.group(1)] = "n"
            continue
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"(CONFIG_\w+)=(.*)", line)
        if not m:
            raise KernelBuildError(f"{path}:{n}: not a config line: {line!r}")
        want[m.group(1)] = m.group(2)
    return want


def check_config(fragment: Path, dotconfig: Path) -> None:
    """Fail, listing them, unless every symbol of the fragment has its requested value."""
    got = read_fragment(dotconfig)
    bad = []
    for sym, value in read_fragment(fragment).items():
        have = got.get(sym, "n")
        if have != value:
            bad.append(f"{sym}={value} (got {'unset' if have == 'n' else have})")
    if bad:
        raise KernelBuildError(
            f"{len(bad)} symbol(s) of {fragment.name} did not end up as requested "
            f"(missing dependency?): " + ", ".join(bad)
        )


# --------------------------------------------------------------------------- running


def _progress(logfile: Path, label: str, stop: threading.Event, t0: float) -> None:
    pos, cc, ld = 0, 0, 0
    while not stop.wait(PROGRESS_SECONDS):
        try:
            with open(logfile, "rb") as f:
                f.seek(pos)
                chunk = f.read()
        except OSError:
            continue
        # count only whole lines
        end = chunk.rfind(b"\n") + 1
        pos += end
        for line in chunk[:end].splitlines():
            s = line.lstrip()
            if s.startswith((b"CC ", b"CC\t", b"AS ", b"AS\t")):
                cc += 1
            elif s.startswith((b"LD ", b"AR ", b"LINK ")):
                ld += 1
        el = int(time.monotonic() - t0)
        log(f"{label}: {cc} compiled, {ld} linked, {el // 60}m{el % 60:02d}s")


def run(cmd: list[str], logfile: Path, label: str, cwd: Path | None = None,
        env: dict[str, str] | None = None, nice: int = 0, progress: bool = False) -> None:
    run_step(cmd, logfile, label, error=KernelBuildError, log=log, cwd=cwd, env=env, nice=nice,
             progress=_progress if progress else None)


def locked(path: Path):
    return steps.locked(path, log)


def _make_env(work: Path) -> dict[str, str]:
    env = dict(KBUILD_ENV)
    env["CCACHE_DIR"] = str(cache_root() / "ccache")
    # Relative paths inside the work dir: hits across work dirs (keys) and clones.
    env["CCACHE_BASEDIR"] = str(work)
    env["CCACHE_NOHASHDIR"] = "1"
    env.setdefault("CCACHE_MAXSIZE", os.environ.get("CCACHE_MAXSIZE", "5G"))
    return env


# --------------------------------------------------------------------------- steps


def unpack(tarball: Path, src: Path, logfile: Path) -> None:
    src.mkdir(parents=True)
    xz = "xz -T0" if shutil.which("xz") else "xz"
    run(["tar", "-I", xz, "-xf", str(tarball), "-C", str(src), "--strip-components=1"],
        logfile, f"unpack {tarball.name}")


def apply_series(src: Path, patches: list[Path], logfile: Path) -> None:
    for p in patches:
        with open(logfile, "ab") as out:
            out.write(f"\n### apply {p.name}\n".encode())
            rc = subprocess.run(["patch", "-p1", "--batch", "--forward", "-i", str(p)],
                                cwd=src, stdout=out, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            raise KernelBuildError(f"patch {p.name} does not apply to the pristine source "
                                   f"(after the patches before it); see {logfile}")
    log(f"applied {len(patches)} patch(es)")


def configure(src: Path, obj: Path, logfile: Path, make: list[str],
              fragment: Path = LAB_CONFIG, quiet: bool = False) -> None:
    """allnoconfig + FRAGMENT, checked symbol by symbol."""
    run(make + ["allnoconfig"], logfile, "allnoconfig")
    run([str(src / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(obj),
         str(obj / ".config"), str(fragment)], logfile, f"merge {fragment.name}", cwd=src)
    run(make + ["olddefconfig"], logfile, "olddefconfig")
    check_config(fragment, obj / ".config")
    if not quiet:
        log(f"config: every {fragment.name} symbol has its requested value")


def build_libbpf(src: Path, work: Path, dest: Path, logfile: Path, jobs: int,
                 nice: int) -> None:
    out = work / "libbpf-build"
    out.mkdir()
    run(["make", "-C", str(src / "tools/lib/bpf"), f"-j{jobs}", f"OUTPUT={out}/",
         f"DESTDIR={dest}", "prefix=", "libdir_relative=lib", "install"],
        logfile, "libbpf", nice=nice)
    # Make the pkg-config file relocatable: the entry is built in a temp dir and renamed.
    pcs = list(dest.rglob("libbpf.pc"))
    if not pcs:
        raise KernelBuildError(f"libbpf install produced no libbpf.pc; see {logfile}")
    pc = pcs[0]
    wanted = dest / "lib" / "pkgconfig" / "libbpf.pc"
    if pc != wanted:
        wanted.parent.mkdir(parents=True, exist_ok=True)
        pc.rename(wanted)
    text = wanted.read_text()
    text = re.sub(r"(?m)^prefix=.*$", "prefix=${pcfiledir}/../..", text)
    text = re.sub(r"(?m)^libdir=.*$", "libdir=${prefix}/lib", text)
    wanted.write_text(text)
    if not (dest / "include/bpf/libbpf.h").is_file() or not (dest / "lib/libbpf.a").is_file():
        raise KernelBuildError(f"libbpf install is incomplete under {dest}; see {logfile}")


def build_bpftool(src: Path, work: Path, dest: Path, logfile: Path, jobs: int,
                  nice: int) -> None:
    out = work / "bpftool-build"
    out.mkdir()
    # VMLINUX_BTF= : never build bpftool's own BPF skeletons from the host's BTF;
    # feature-llvm=0/feature-libbfd*=0 : no JIT disassembler (no libLLVM dependency).
    run(["make", "-C", str(src / "tools/bpf/bpftool"), f"-j{jobs}", f"OUTPUT={out}/",
         "VMLINUX_BTF=", "feature-llvm=0", "feature-libbfd=0", "feature-libbfd-liberty=0",
         "feature-libbfd-liberty-z=0"],
        logfile, "bpftool", nice=nice)
    shutil.copy2(out / "bpftool", dest)


# The series' kselftests: source in the patched tree -> binary in the entry.
SELFTESTS = {"tun_vnet_hash": "tools/testing/selftests/net/tun_vnet_hash.c"}


def build_selftests(src: Path, dest: Path, logfile: Path) -> None:
    """Build the series' kselftests against its own UAPI headers (the entry's headers/);
    the lab tier runs them and reads their KTAP output."""
    out = dest / "selftests"
    out.mkdir()
    for name, rel in SELFTESTS.items():
        if not (src / rel).is_file():
            continue  # a series without that test
        run(["gcc", "-O2", "-Wall", "-Werror", "-I", str(dest / "headers" / "include"),
             "-I", str(src / "tools/testing/selftests"), "-o", str(out / name), str(src / rel)],
            logfile, f"selftest {name}")


def build(e: CacheEntry, jobs: int, nice: int, keep_work: bool,
          design: designs.Design) -> Path:
    pkg, version, tarball = source_tarball()
    patches = patch_files(design)
    work = cache_root() / "kernel-work" / e.ikey.key
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    logfile = work / "build.log"
    src, obj = work / "src", work / "obj"
    t0 = time.monotonic()
    log(f"building {e.path} (design {design.name}: {pkg} {version}, {len(patches)} patches"
        f"{'' if design.series else ' (no series)'}, work dir {work})")

    cc = "gcc"
    if shutil.which("ccache"):
        cc = "ccache gcc"
    else:
        log("ccache not found (apt-get install -y ccache): building without it")
    make = ["make", "-C", str(src), f"O={obj}", f"CC={cc}", f"HOSTCC={cc}", f"-j{jobs}"]
    env = _make_env(work)

    def mk(args: list[str], label: str, progress: bool = False) -> None:
        run(make + args, logfile, label, env=env, nice=nice, progress=progress)

    cc0 = steps.ccache_counts(Path(env["CCACHE_DIR"]))
    with e.fill() as dest:
        unpack(tarball, src, logfile)
        apply_series(src, patches, logfile)
        obj.mkdir()
        configure(src, obj, logfile, make, LAB_CONFIG)
        mk(["bzImage"], "bzImage", progress=True)
        mk([f"INSTALL_HDR_PATH={dest / 'headers'}", "headers_install"], "headers_install")
        if design.series:  # only the series' programs need our libbpf and bpftool
            build_libbpf(src, work, dest / "libbpf", logfile, jobs, nice)
            build_bpftool(src, work, dest, logfile, jobs, nice)
            build_selftests(src, dest, logfile)

        shutil.copy2(obj / "arch/x86/boot/bzImage", dest / "bzImage")
        shutil.copy2(obj / ".config", dest / "config")
        shutil.copy2(obj / "System.map", dest / "System.map")
        shutil.copy2(obj / "include/config/kernel.release", dest / "kernel.release")
        shutil.copy2(LAB_CONFIG, dest / "lab.config")
        (dest / "series").write_text("".join(p.name + "\n" for p in patches))
        shutil.copy2(logfile, dest / "build.log")
        e.extra["ccache"] = steps.ccache_delta(cc0, steps.ccache_counts(Path(env["CCACHE_DIR"])))

    if keep_work:
        log(f"work dir kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    el = time.monotonic() - t0
    log(f"done in {int(el) // 60}m{int(el) % 60:02d}s: {e.path}")
    return e.path


def ensure_kernel(force: bool = False, jobs: int | None = None, nice: int = 10,
                  keep_work: bool = False, design: str | designs.Design = designs.DEFAULT) -> Path:
    """Path of DESIGN's cache entry for the current inputs, building it if needed."""
    design = designs.get(design)
    e = entry(design)
    if e.done and not force:
        return e.path
    jobs = jobs or (os.cpu_count() or 1) + 1
    with locked(e.path.with_name(e.path.name + ".lock")):
        if e.done and not force:  # another process built it while we waited
            return e.path
        try:
            return build(e, jobs, nice, keep_work, design)
        except KernelBuildError:
            log(f"work dir left for inspection: {cache_root() / 'kernel-work' / e.ikey.key}")
            raise
