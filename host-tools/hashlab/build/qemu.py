"""`hashlab build qemu`: the lab's QEMU (Debian's QEMU source package + qemu/patches).

Steps, all logged to ``<entry>/build.log``:

1. find the source package (``.dsc`` + tarballs) of ``QEMU_SOURCE_VERSION`` in the cache
   (``<cache>/sources``, or ``<cache>/dev`` where setup put it), else fetch it with
   ``apt-get source --download-only`` (needs a ``deb-src`` line for trixie);
2. unpack it with ``dpkg-source -x`` (this applies Debian's own patches, which fix the
   ``+ds`` tarball's missing wheels and EDK2 blobs) into ``<entry>/src``;
3. apply ``qemu/patches/*.patch`` in order (``git apply``), failing with the name of the
   patch that does not apply;
4. build the eBPF RSS object from ``tools/ebpf/rss.bpf.c`` with clang against the kernel
   entry's UAPI headers and libbpf headers, and regenerate ``ebpf/rss.bpf.skeleton.h``
   with the kernel entry's ``bpftool gen skeleton``, twice: ``rss.bpf.o`` (the socket
   filter) and ``rss_hash.bpf.o`` (``-DRSS_VNET_HASH``, the VNET_HASH program), each with
   its skeleton in ``ebpf/``; ``.done`` records whether the series' committed skeletons
   are byte-identical to these.  The objects are kept in ``<entry>/bpf/`` (BTF kept) for
   the differential tests and benchmarks;
5. configure only what the lab needs, with libbpf from the kernel entry linked
   statically (a private ``libbpf.pc`` naming ``libbpf.a``), then ``ninja`` under
   ``nice`` with ccache (``<cache>/ccache-qemu``), progress lines on stderr.

The entry holds ``bin/qemu-system-x86_64`` (a copy of the built binary; it finds the
BIOS and option ROMs in Debian's ``/usr/share/seabios``, ``/usr/lib/ipxe/qemu`` and
``/usr/share/qemu``, which the lab VM sees too), ``bpf/``, ``src/`` and ``build/`` (the
meson build tree, kept for qtests).  A meson build tree cannot be moved, so unlike
``CacheEntry.fill()`` the entry is built in place; it counts as complete only once its
``.done`` stamp exists, and an incomplete one is wiped and rebuilt.

Key: recipe version, source version (+ the .dsc's checksums), the patch series, the
kernel entry key (headers, libbpf, bpftool), compiler versions and the configure line.

libbpf source: ``--libbpf kernel`` uses (and if needed builds) the kernel entry.
``--libbpf system`` uses Debian's libbpf, the host's bpftool and a generated copy of
``/usr/include/linux/bpf.h`` with the series' additions: for working before the kernel
entry exists.  The default, ``auto``, takes the kernel entry when it is already built
and says so when it falls back to ``system``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..cache import CacheEntry, InputKey, record_build
from . import steps
from .steps import run_step
from ..errors import BuildError, HashlabError, MissingToolError, UsageError
from ..paths import QEMU_DIR, cache_root, versions

RECIPE_VERSION = "qemu-recipe-3"
PATCH_DIR = QEMU_DIR / "patches"
PROGRESS_SECONDS = 10.0
CLANG = "clang-19"
# Debian's python3 with Debian's meson (bookworm-backports): QEMU's configure bases its
# build/pyvenv on this python, and qtests rebuild in that tree later, so it must not be a
# checkout's .venv that goes away with the checkout (CI on 2026-12-07 hit exactly that).
BUILD_PYTHON = "/usr/bin/python3"
MESON_MIN = (1, 5)
LLVM_STRIP = "llvm-strip-19"
SOURCE_DIRS = ("sources", "dev")  # under the cache root; downloads go to the first

CONFIGURE_ARGS = [
    "--prefix=/usr",
    # Not relocatable: the binary is copied out of the build tree and must find
    # Debian's firmware at these absolute paths (as Debian's own build does).
    "--disable-relocatable",
    "--firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu",
    "--target-list=x86_64-softmmu",
    "--without-default-features",
    "--enable-kvm",
    "--enable-tcg",
    "--enable-vhost-net",
    "--enable-vhost-kernel",
    "--enable-bpf",
    "--enable-fdt=system",
    "--enable-virtfs",
    "--enable-attr",
    "--enable-cap-ng",
    "--enable-trace-backends=log",
    "--disable-download",
    "--disable-install-blobs",
    "--disable-docs",
    "--disable-werror",
    "--disable-debug-info",
]

# Lines the series adds to linux/bpf.h (for --libbpf system only).
_UAPI_PROG_TYPE = "\tBPF_PROG_TYPE_NETFILTER,\n"
_UAPI_SKB_TAIL = "\t__u64 hwtstamp;\n};"
_UAPI_SKB_NEW = ("\t__u64 hwtstamp;\n\n\t__u32 vnet_hash_value;\n\t__u16 vnet_hash_report;\n"
                 "\t__u16 vnet_rss_queue;\n};")


class QemuBuildError(BuildError):
    pass


def log(msg: str) -> None:
    print(f"hashlab build qemu: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- inputs


# The QEMU builds.  "patched": the whole series.  "progtype-only": the series up to its
# first patch whose subject names the kfunc, i.e. the QEMU a host built before the kfunc
# design runs: the comparison's mismatched pairing on the kfunc kernel.
VARIANTS = {"patched": None, "progtype-only": "kfunc"}
DEFAULT_VARIANT = "patched"


def _subject(patch: Path) -> str:
    """The patch's Subject header, unfolded (format-patch wraps long ones)."""
    lines = patch.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Subject:"):
            while i + 1 < len(lines) and lines[i + 1][:1] in (" ", "\t"):
                i += 1
                line += " " + lines[i].strip()
            return line
    return ""


def patch_files(patch_dir: Path = PATCH_DIR, variant: str = DEFAULT_VARIANT) -> list[Path]:
    """VARIANT's series, in application order; the cover letter is skipped."""
    if variant not in VARIANTS:
        raise UsageError(f"unknown QEMU variant {variant!r} (variants: {', '.join(VARIANTS)})")
    files = steps.series_files(patch_dir)
    stop = VARIANTS[variant]
    if stop is None:
        return files
    for i, p in enumerate(files):
        if stop in _subject(p):
            return files[:i]
    raise HashlabError(f"QEMU variant {variant}: no patch in {patch_dir} names {stop!r}")


def source_version() -> str:
    v = versions().get("QEMU_SOURCE_VERSION")
    if not v:
        raise HashlabError("QEMU_SOURCE_VERSION is not set in versions.env")
    return v


def _dsc_name(version: str) -> str:
    return f"qemu_{version.split(':', 1)[-1]}.dsc"


def _dsc_files(dsc: Path) -> list[str]:
    names, section = [], False
    for line in dsc.read_text(errors="replace").splitlines():
        if line.startswith("Files:"):
            section = True
            continue
        if section:
            if not line.startswith(" "):
                break
            names.append(line.split()[-1])
    return names


def source_package(download: bool = True) -> Path:
    """The .dsc of QEMU_SOURCE_VERSION with all its files present (downloading if asked)."""
    version = source_version()
    name = _dsc_name(version)
    for d in SOURCE_DIRS:
        dsc = cache_root() / d / name
        if dsc.is_file() and all((dsc.parent / f).is_file() for f in _dsc_files(dsc)):
            return dsc
    if not download:
        raise MissingToolError(f"QEMU source package {name} not in {cache_root()}/{SOURCE_DIRS}")
    dest = cache_root() / SOURCE_DIRS[0]
    dest.mkdir(parents=True, exist_ok=True)
    log(f"fetching qemu={version} with apt-get source --download-only into {dest}")
    r = subprocess.run(["apt-get", "source", "--download-only", f"qemu={version}"], cwd=dest,
                       capture_output=True, text=True)
    dsc = dest / name
    if r.returncode != 0 or not dsc.is_file():
        raise MissingToolError(
            f"apt-get source qemu={version} failed (is there a deb-src line for trixie?): "
            + (r.stderr.strip().splitlines() or ["no output"])[-1])
    return dsc


def build_python() -> str:
    """BUILD_PYTHON and its meson's version, checked against QEMU's minimum."""
    r = subprocess.run([BUILD_PYTHON, "-c", "import platform; print(platform.python_version()); "
                        "import mesonbuild.coredata as c; print(c.version)"],
                       capture_output=True, text=True)
    py, _, found = r.stdout.strip().partition("\n")
    nums = tuple(int(n) for n in re.findall(r"\d+", found)[:2])
    if r.returncode or nums < MESON_MIN:
        have = f"meson {found}" if found else "no meson"
        raise MissingToolError(
            f"QEMU needs meson >= {'.'.join(map(str, MESON_MIN))} for {BUILD_PYTHON}, which has "
            f"{have}: apt-get install -t bookworm-backports meson (scripts/setup does)")
    return f"{BUILD_PYTHON} {py} meson {found}"


def _tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        raise MissingToolError(f"{cmd[0]} not found or not working")
    return out.splitlines()[0] if out else ""


class BpfToolchain:
    """Where the UAPI headers, libbpf and bpftool come from."""

    def __init__(self, mode: str, kernel_entry: Path | None):
        self.mode = mode  # "kernel" | "system"
        self.kernel_entry = kernel_entry

    @property
    def bpftool(self) -> str:
        if self.mode == "kernel":
            return str(self.kernel_entry / "bpftool")
        return shutil.which("bpftool") or "/usr/sbin/bpftool"

    def libbpf_prefix(self) -> Path | None:
        return self.kernel_entry / "libbpf" if self.mode == "kernel" else None

    def key_parts(self) -> list[tuple[str, str]]:
        if self.mode == "kernel":
            return [("kernel-entry", self.kernel_entry.name)]
        uapi = Path("/usr/include/linux/bpf.h").read_text()
        return [
            ("libbpf", "system " + _tool_version(["pkg-config", "--modversion", "libbpf"])),
            ("bpftool", _tool_version([self.bpftool, "version"])),
            ("uapi-bpf.h", hashlib.sha256(uapi.encode()).hexdigest()),
        ]


def find_kernel_entry(build: bool = False) -> Path | None:
    """The kernel cache entry (headers, libbpf, bpftool); builds it only if ``build``."""
    env = os.environ.get("HASHLAB_KERNEL_ENTRY")
    if env:
        return Path(env)
    try:
        from . import kernel
    except ImportError:
        return None
    if build:
        return kernel.ensure_kernel()
    e = kernel.entry()
    return e.path if e.done else None


def toolchain(mode: str) -> BpfToolchain:
    if mode == "system":
        return BpfToolchain("system", None)
    if mode == "kernel":
        return BpfToolchain("kernel", find_kernel_entry(build=True))
    entry = find_kernel_entry(build=False)
    if entry is not None:
        return BpfToolchain("kernel", entry)
    log("the kernel entry is not built yet: using Debian's libbpf, the host's bpftool and "
        "a generated linux/bpf.h (rerun after `hashlab build kernel` for the real thing)")
    return BpfToolchain("system", None)


def input_key(tc: BpfToolchain, dsc: Path, variant: str = DEFAULT_VARIANT) -> InputKey:
    patches = patch_files(variant=variant)
    key = InputKey("qemu" if variant == DEFAULT_VARIANT else f"qemu-{variant}")
    key.add_text("recipe", RECIPE_VERSION)
    key.add_text("source", f"qemu={source_version()}")
    key.add_file(dsc, "source.dsc")
    key.add_text("series", "\n".join(p.name for p in patches))
    key.add_files(patches, prefix="patches/")
    for name, value in tc.key_parts():
        key.add_text(name, value)
    key.add_text("cc", _tool_version(["gcc", "--version"]))
    key.add_text("clang", _tool_version([CLANG, "--version"]))
    key.add_text("python", build_python())
    key.add_text("configure", " ".join(CONFIGURE_ARGS))
    return key


# --------------------------------------------------------------------------- running


def _progress(logfile: Path, label: str, stop: threading.Event, t0: float) -> None:
    step = re.compile(rb"^\[(\d+)/(\d+)\]")
    last = b""
    while not stop.wait(PROGRESS_SECONDS):
        try:
            with open(logfile, "rb") as f:
                f.seek(max(0, os.path.getsize(logfile) - 4096))
                tail = f.read().splitlines()
        except OSError:
            continue
        for line in reversed(tail):
            m = step.match(line)
            if m:
                last = m.group(0)
                done, total = int(m.group(1)), int(m.group(2))
                el = int(time.monotonic() - t0)
                log(f"{label}: {done}/{total} ({100 * done // max(total, 1)}%) "
                    f"{el // 60}m{el % 60:02d}s")
                break
        else:
            if not last:
                log(f"{label}: running, {int(time.monotonic() - t0)}s")


def run(cmd: list[str], logfile: Path, label: str, cwd: Path | None = None,
        env: dict[str, str] | None = None, nice: int = 0, progress: bool = False) -> None:
    run_step(cmd, logfile, label, error=QemuBuildError, log=log, cwd=cwd, env=env, nice=nice,
             progress=_progress if progress else None)


def locked(path: Path):
    return steps.locked(path, log)


# --------------------------------------------------------------------------- steps


def unpack(dsc: Path, src: Path, logfile: Path) -> None:
    run(["dpkg-source", "--no-check", "-x", str(dsc), str(src)], logfile,
        f"dpkg-source -x {dsc.name}")


def apply_series(src: Path, patches: list[Path], logfile: Path) -> None:
    for p in patches:
        with open(logfile, "ab") as out:
            out.write(f"\n### apply {p.name}\n".encode())
            out.flush()
            rc = subprocess.run(["git", "apply", "--verbose", "--whitespace=nowarn", str(p)],
                                cwd=src, stdout=out, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            raise QemuBuildError(f"patch {p.name} does not apply to qemu {source_version()} "
                                 f"(see {logfile})")
    log(f"applied {len(patches)} patch(es)")


def _patched_uapi(dest: Path) -> Path:
    """A copy of the host's linux/bpf.h with the series' additions (--libbpf system)."""
    text = Path("/usr/include/linux/bpf.h").read_text()
    if "BPF_PROG_TYPE_VNET_HASH" not in text:
        if _UAPI_PROG_TYPE not in text or _UAPI_SKB_TAIL not in text:
            raise QemuBuildError("cannot add the vnet hash fields to /usr/include/linux/bpf.h")
        text = text.replace(_UAPI_PROG_TYPE, _UAPI_PROG_TYPE + "\tBPF_PROG_TYPE_VNET_HASH,\n", 1)
        text = text.replace(_UAPI_SKB_TAIL, _UAPI_SKB_NEW, 1)
    (dest / "linux").mkdir(parents=True, exist_ok=True)
    (dest / "linux" / "bpf.h").write_text(text)
    return dest


# tools/ebpf/rss.bpf.c is built into two objects (qemu/patches 0001): the socket filter
# every kernel loads, and with -DRSS_VNET_HASH the BPF_PROG_TYPE_VNET_HASH program.
BPF_OBJECTS = {"rss": [], "rss_hash": ["-DRSS_VNET_HASH"]}


def build_bpf(src: Path, out: Path, tc: BpfToolchain, logfile: Path) -> dict[str, bool]:
    """Compile both objects of rss.bpf.c and regenerate their skeletons in ebpf/.

    The series commits the skeletons, as upstream does; regenerating them here keeps
    the binary true to the source whatever the series holds.  Returns, per skeleton,
    whether the series' copy is byte-identical to the regenerated one (a patch that
    changed the program without regenerating it shows up as False)."""
    out.mkdir(parents=True, exist_ok=True)
    incs: list[str] = []
    if tc.mode == "kernel":
        incs += ["-I", str(tc.kernel_entry / "headers" / "include"),
                 "-I", str(tc.kernel_entry / "libbpf" / "include")]
    else:
        incs += ["-I", str(_patched_uapi(out / "uapi"))]
    incs += ["-I", "/usr/include/x86_64-linux-gnu"]  # asm/ for a plain /usr/include
    matches: dict[str, bool] = {}
    for name, defines in BPF_OBJECTS.items():
        obj = out / f"{name}.bpf.o"
        debug = out / f"{name}.bpf.debug.o"
        # In tools/ebpf with a relative source and compilation dir, as Makefile.ebpf
        # builds it: BTF line info names the source, so the object (and the skeleton)
        # does not depend on where the tree is.
        run([CLANG, "-O2", "-g", "-Wall", "-target", "bpf", "-fdebug-compilation-dir=.",
             *defines, *incs, "-c", "rss.bpf.c", "-o", str(debug)],
            logfile, f"clang rss.bpf.c -> {obj.name}", cwd=src / "tools" / "ebpf")
        # What QEMU embeds: DWARF stripped, BTF kept (as tools/ebpf/Makefile.ebpf does).
        run([LLVM_STRIP, "-g", str(debug), "-o", str(obj)], logfile, f"llvm-strip {obj.name}")
        skel = src / "ebpf" / f"{name}.bpf.skeleton.h"
        with open(logfile, "ab") as lf:
            lf.write(f"\n### bpftool gen skeleton {obj.name} ({tc.bpftool})\n".encode())
            r = subprocess.run([tc.bpftool, "gen", "skeleton", str(obj), "name", f"{name}_bpf"],
                               capture_output=True)
            lf.write(r.stderr)
        if r.returncode != 0 or f"{name}_bpf__open".encode() not in r.stdout:
            raise QemuBuildError(f"bpftool gen skeleton {obj.name} failed; see {logfile}")
        matches[skel.name] = skel.is_file() and skel.read_bytes() == r.stdout
        if not matches[skel.name]:
            log(f"{skel.name}: the series' copy differs from the one generated from "
                f"rss.bpf.c (regenerated; is a patch missing its skeleton update?)")
        skel.write_bytes(r.stdout)
        shutil.copy2(skel, out / skel.name)
    (out / "README").write_text(
        "QEMU's RSS eBPF objects as embedded in qemu-system-x86_64 (BTF, no DWARF),\n"
        "both built from tools/ebpf/rss.bpf.c; each holds one program and the same maps:\n"
        "  rss.bpf.o       tun_rss_steering_prog  SEC(\"socket\")  socket filter, returns\n"
        "                  the queue; calls bpf_skb_set_vnet_hash() (__weak) where the\n"
        "                  kernel has it (request-ebpf id=rss)\n"
        "  rss_hash.bpf.o  tun_rss_vnet_hash_prog SEC(\"vnet_hash\") BPF_PROG_TYPE_VNET_HASH,\n"
        "                  sets __sk_buff.vnet_hash_value/vnet_hash_report/vnet_rss_queue\n"
        "                  (-DRSS_VNET_HASH; request-ebpf id=rss-hash)\n"
        "  maps: tap_rss_map_configurations, tap_rss_map_toeplitz_key,\n"
        "        tap_rss_map_indirection_table (layout: ebpf/ebpf_rss.c, hashlab/host/bpf.py)\n"
        "*.bpf.debug.o: the same with DWARF.\n"
        "*.bpf.skeleton.h: the skeletons generated from them (bpftool gen skeleton).\n")
    return matches


def _static_libbpf_pc(tc: BpfToolchain, dest: Path) -> Path:
    """A pkg-config dir whose libbpf.pc links the kernel entry's libbpf.a statically."""
    prefix = tc.libbpf_prefix()
    pcdir = dest / "pkgconfig"
    pcdir.mkdir(parents=True, exist_ok=True)
    orig = (prefix / "lib" / "pkgconfig" / "libbpf.pc").read_text()
    version = re.search(r"(?m)^Version:\s*(\S+)", orig)
    if not version or not (prefix / "lib" / "libbpf.a").is_file():
        raise QemuBuildError(f"no usable libbpf in {prefix}")
    (pcdir / "libbpf.pc").write_text(
        f"prefix={prefix}\n"
        "libdir=${prefix}/lib\n"
        "includedir=${prefix}/include\n\n"
        "Name: libbpf\n"
        "Description: BPF library (kernel entry, linked statically)\n"
        f"Version: {version.group(1)}\n"
        "Libs: ${libdir}/libbpf.a -lelf -lz\n"
        "Cflags: -I${includedir}\n")
    return pcdir


def _env(entry: Path, tc: BpfToolchain) -> dict[str, str]:
    env = {
        # ccache through its masquerade directory; QEMU's configure runs plain `cc`.
        "PATH": "/usr/lib/ccache:" + os.environ["PATH"],
        "CCACHE_DIR": str(cache_root() / "ccache-qemu"),
        # Meson uses paths relative to the build dir: hits across entries and the dev tree.
        "CCACHE_BASEDIR": str(cache_root()),
        "CCACHE_NOHASHDIR": "1",
        "CCACHE_MAXSIZE": os.environ.get("CCACHE_MAXSIZE", "4G"),
    }
    if tc.mode == "kernel":
        env["PKG_CONFIG_PATH"] = str(_static_libbpf_pc(tc, entry))
    return env


def configure(src: Path, build: Path, env: dict[str, str], logfile: Path, nice: int) -> None:
    build.mkdir()
    build_python()
    run(["../configure", f"--python={BUILD_PYTHON}", *CONFIGURE_ARGS], logfile,
        "configure", cwd=build, env=env, nice=nice)
    text = (build / "meson-logs" / "meson-log.txt").read_text(errors="replace")
    if not re.search(r"bpf support\s*:\s*YES", text):
        raise QemuBuildError(f"configure did not enable eBPF support; see {logfile}")


def build(e: CacheEntry, tc: BpfToolchain, dsc: Path, nice: int, jobs: int | None,
          variant: str = DEFAULT_VARIANT) -> Path:
    dest = e.path
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    logfile = dest / "build.log"
    src, bld = dest / "src", dest / "src" / "build"
    t0 = time.monotonic()
    patches = patch_files(variant=variant)
    log(f"building {dest} (qemu {source_version()}, {variant}: {len(patches)} patches, "
        f"libbpf from {'kernel entry ' + tc.kernel_entry.name if tc.mode == 'kernel' else 'the system'}); "
        f"log: {logfile}")
    env = _env(dest, tc)
    cc0 = steps.ccache_counts(Path(env["CCACHE_DIR"]))
    unpack(dsc, src, logfile)
    apply_series(src, patches, logfile)
    skeletons = build_bpf(src, dest / "bpf", tc, logfile)
    configure(src, bld, env, logfile, nice)
    jobs = jobs or os.cpu_count() or 1
    # The series' unit test of the vhost hash-report decision is built with the binary.
    ninja = ["ninja", "-C", str(bld), f"-j{jobs}", "qemu-system-x86_64",
             *(["tests/unit/test-virtio-net-hash"]
               if (src / "tests/unit/test-virtio-net-hash.c").is_file() else [])]
    run(ninja, logfile, "ninja", env=env, nice=nice, progress=True)
    (dest / "bin").mkdir()
    shutil.copy2(bld / "qemu-system-x86_64", dest / "bin" / "qemu-system-x86_64")
    os.symlink("src/build", dest / "build")
    (dest / "series").write_text("".join(p.name + "\n" for p in patches))
    seconds = round(time.monotonic() - t0, 1)
    meta = {
        "kind": e.ikey.kind,
        "variant": variant,
        "key": e.ikey.key,
        "inputs": e.ikey.describe(),
        "libbpf": tc.mode,
        "kernel_entry": str(tc.kernel_entry) if tc.kernel_entry else None,
        "build_seconds": seconds,
        # per skeleton: is the series' committed copy the one rss.bpf.c gives?
        "skeletons_match_series": skeletons,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "ccache": steps.ccache_delta(cc0, steps.ccache_counts(Path(env["CCACHE_DIR"]))),
    }
    (dest / ".done").write_text(json.dumps(meta, indent=1) + "\n")
    record_build(meta)
    log(f"done in {int(seconds) // 60}m{int(seconds) % 60:02d}s: {dest}")
    return dest


def build_qemu(force: bool = False, progress: bool = True, libbpf: str = "auto",
               nice: int = 10, jobs: int | None = None,
               variant: str = DEFAULT_VARIANT) -> Path:
    """The cache entry of the lab's QEMU (VARIANTS) for the current inputs, building it
    if needed."""
    t0 = time.monotonic()
    for tool in ("dpkg-source", "git", "ninja", CLANG, LLVM_STRIP, "pkg-config"):
        if not shutil.which(tool):
            raise MissingToolError(f"{tool} not found")
    tc = toolchain(libbpf)
    dsc = source_package()
    e = CacheEntry(input_key(tc, dsc, variant))
    if e.done and not force:
        if progress:
            log(f"up to date ({time.monotonic() - t0:.1f}s): {e.path}")
        return e.path
    with locked(e.path.with_name(e.path.name + ".lock")):
        if e.done and not force:
            return e.path
        return build(e, tc, dsc, nice, jobs, variant)


def find_qemu_entry(libbpf: str = "auto", variant: str = DEFAULT_VARIANT) -> Path | None:
    """The entry for the current inputs if it is built (never builds anything)."""
    try:
        tc = BpfToolchain("kernel", find_kernel_entry(build=False))
        if libbpf == "system" or (libbpf == "auto" and tc.kernel_entry is None):
            tc = BpfToolchain("system", None)
        elif tc.kernel_entry is None:
            return None
        e = CacheEntry(input_key(tc, source_package(download=False), variant))
    except HashlabError:
        return None
    return e.path if e.done else None


# --------------------------------------------------------------------------- CLI


def _cli(args: argparse.Namespace) -> int:
    if args.bisect:
        from . import qemu_bisect

        path = qemu_bisect.ensure_bisect(force=args.force, jobs=args.jobs, nice=args.nice,
                                         libbpf="kernel" if args.libbpf == "auto" else args.libbpf)
        doc = json.loads((path / "bisect.json").read_text())
        print(f"qemu series bisect: {path}: {len(doc['patches'])} patches, "
              f"{len(doc['results'])} builds, all ok ({doc['seconds']:.0f}s)")
        return 0
    path = build_qemu(force=args.force, libbpf=args.libbpf, nice=args.nice, jobs=args.jobs,
                      variant=args.variant)
    if args.print_path:
        print(path)
    else:
        meta = json.loads((path / ".done").read_text())
        print(f"qemu ({args.variant}): {path}")
        print(f"  binary   {path / 'bin' / 'qemu-system-x86_64'}")
        print(f"  bpf      {path / 'bpf' / 'rss.bpf.o'}  (socket filter, kfunc where the "
              "kernel has it), rss_hash.bpf.o (VNET_HASH)")
        print(f"  build    {path / 'build'}  (meson build tree, for qtests)")
        print(f"  libbpf   {meta.get('libbpf')} {meta.get('kernel_entry') or ''}".rstrip())
        print(f"  built in {meta.get('build_seconds')}s")
    return 0


def register_build(sub) -> None:
    p = sub.add_parser(
        "qemu",
        help="the lab's QEMU (Debian source package + qemu/patches, eBPF hash reporting)",
        description="Build QEMU with qemu/patches, its eBPF RSS object and skeleton, "
        "into the content-keyed cache (or find it there) and say where it is.",
    )
    p.add_argument("--print-path", action="store_true",
                   help="print only the cache entry's path (building it first if needed)")
    p.add_argument("--force", action="store_true", help="rebuild even if the entry exists")
    p.add_argument("--bisect", action="store_true",
                   help="check that QEMU builds at every patch of the series (committed "
                   "skeletons, nothing regenerated; cached by the series)")
    p.add_argument("--variant", choices=tuple(VARIANTS), default=DEFAULT_VARIANT,
                   help="patched: the whole series (default); progtype-only: the series "
                   "before the kfunc patch, as a host built before it runs")
    p.add_argument("--libbpf", choices=("auto", "kernel", "system"), default="auto",
                   help="UAPI headers/libbpf/bpftool from the kernel entry (kernel; built if "
                   "needed), from Debian (system), or kernel if built else system (auto)")
    p.add_argument("-j", "--jobs", type=int, default=None, help="ninja jobs (default: CPUs)")
    p.add_argument("--nice", type=int, default=10,
                   help="run the compilers under nice -n N (default 10; 0 disables)")
    p.set_defaults(func=_cli)


# hashlab/commands/build.py looks for register_cli().
register_cli = register_build
