"""The guest image: a kernel plus a small initramfs (busybox, ethtool, the agent).

Two kernels are supported:

* ``debian`` (default): Debian's cloud kernel named by ``GUEST_KERNEL_PKG`` in
  versions.env, fetched with ``apt-get download`` into the cache (never installed on the
  host).  virtio_net and friends are modules there, so they go into the initramfs
  (decompressed on the host: busybox's insmod cannot read ``.ko.xz``) together with their
  dependencies, and the guest's init loads them in order.
* ``deb:PKG``: another Debian kernel package, the same way.
* ``lab``: the lab kernel from the cache (``hashlab build kernel``), no modules.
* a path to a ``bzImage`` (the lab kernel, everything built in): no modules needed, but a
  module directory can still be given.

The result is a cache entry ``<cache>/guest/<key>`` with ``vmlinuz``, ``initramfs.cpio.gz``
and ``manifest.json``; the key covers every input (kernel bytes, module bytes, busybox,
ethtool and its libraries, the agent, this builder).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..cache import CacheEntry, InputKey
from ..errors import MissingToolError, UsageError
from ..paths import GUEST_TESTS_DIR, cache_root, versions

BUSYBOX = Path("/bin/busybox")
ETHTOOL = Path("/usr/sbin/ethtool")
# Modules the guest needs (dependencies are added from modinfo).  Missing ones are an
# error for virtio_net only: pvpanic is a nicety (QMP GUEST_PANICKED).
DEBIAN_MODULES = ["virtio_net", "pvpanic_pci", "pvpanic_mmio"]
REQUIRED_MODULES = {"virtio_net"}
AGENT_FILES = ["init", "agent"]


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    kernel_version: str
    modules: tuple[str, ...]
    key: str


# --------------------------------------------------------------------------- Debian kernel


def fetch_deb(pkg: str) -> Path:
    """``apt-get download`` PKG into the cache (once) and unpack it; returns the tree."""
    entry_dir = cache_root() / "debs" / pkg
    tree = entry_dir / "tree"
    if (entry_dir / ".done").exists():
        return tree
    if not shutil.which("apt-get"):
        raise MissingToolError("apt-get not found: the Debian guest kernel needs it")
    tmp = entry_dir.with_name(pkg + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        r = subprocess.run(["apt-get", "download", pkg], cwd=tmp, capture_output=True, text=True)
        debs = list(tmp.glob("*.deb"))
        if r.returncode != 0 or not debs:
            raise MissingToolError(
                f"apt-get download {pkg} failed (status {r.returncode}): "
                f"{r.stderr.strip()[-500:]}; is bookworm-backports in the apt sources "
                "(scripts/setup) and `apt-get update` done?")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(tmp / "tree")], check=True)
        (tmp / ".done").write_text(json.dumps({"deb": debs[0].name}) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(entry_dir, ignore_errors=True)
    tmp.rename(entry_dir)
    return tree


def _norm(name: str) -> str:
    return name.replace("-", "_")


def _module_index(moddir: Path) -> dict[str, Path]:
    idx = {}
    for p in moddir.rglob("*.ko*"):
        m = re.match(r"(.+)\.ko(\.xz|\.zst|\.gz)?$", p.name)
        if m:
            idx[_norm(m.group(1))] = p
    return idx


def _depends(ko: Path) -> list[str]:
    r = subprocess.run(["modinfo", "-F", "depends", str(ko)], capture_output=True, text=True)
    if r.returncode != 0:
        raise MissingToolError(f"modinfo failed on {ko}: {r.stderr.strip()} (install kmod)")
    return [_norm(d) for d in r.stdout.strip().split(",") if d]


def resolve_modules(moddir: Path, wanted: list[str]) -> list[tuple[str, Path]]:
    """Wanted modules plus their dependencies, dependencies first."""
    idx = _module_index(moddir)
    builtin = set()
    bfile = moddir / "modules.builtin"
    if bfile.exists():
        builtin = {_norm(Path(line.strip()).name.split(".ko")[0])
                   for line in bfile.read_text().splitlines() if line.strip()}
    order: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = _norm(name)
        if name in seen or name in builtin:
            return
        seen.add(name)
        if name not in idx:
            if name in REQUIRED_MODULES:
                raise MissingToolError(f"module {name} not found under {moddir}")
            return
        for dep in _depends(idx[name]):
            visit(dep)
        order.append((name, idx[name]))

    for w in wanted:
        visit(w)
    return order


def _decompress(p: Path) -> bytes:
    data = p.read_bytes()
    if p.name.endswith(".xz"):
        return lzma.decompress(data)
    if p.name.endswith(".gz"):
        return gzip.decompress(data)
    if p.name.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", str(p)], check=True, capture_output=True).stdout
    return data


# --------------------------------------------------------------------------- cpio (newc)


class Cpio:
    """A deterministic newc archive built in memory: root-owned, mtime 0."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.ino = 1
        self.names: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)):
        name = name.lstrip("/")
        if name in self.names:
            return
        self.names.add(name)
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(name) + 1, 0]
        self.ino += 1
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.buf.write(hdr + name.encode() + b"\0")
        self._pad()
        self.buf.write(data)
        self._pad()

    def _pad(self):
        self.buf.write(b"\0" * (-self.buf.tell() % 4))

    def _parent(self, name: str):
        d = os.path.dirname(name.strip("/"))
        if d:
            self.dir(d)

    def dir(self, name: str):
        parts = name.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            self._entry("/".join(parts[:i]), 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644):
        self._parent(name)
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str):
        self._parent(name)
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600):
        self._entry(name, 0o020000 | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def _shared_libs(binary: Path) -> list[Path]:
    r = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    if "not a dynamic executable" in (r.stdout + r.stderr):
        return []
    libs = []
    for line in r.stdout.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


def _busybox_applets() -> list[str]:
    if not BUSYBOX.exists():
        raise MissingToolError(f"{BUSYBOX} not found: apt-get install busybox-static")
    r = subprocess.run([str(BUSYBOX), "--list-full"], capture_output=True, text=True)
    if r.returncode != 0 or _shared_libs(BUSYBOX):
        raise MissingToolError(f"{BUSYBOX} is not a static busybox: apt-get install busybox-static")
    return r.stdout.split()


# --------------------------------------------------------------------------- build


def _kernel_version_of(bzimage: Path) -> str:
    """The version string embedded in a bzImage (offset at 0x20E of the setup header)."""
    data = bzimage.read_bytes()[:0x10000]
    try:
        off = int.from_bytes(data[0x20E:0x210], "little") + 0x200
        return data[off:data.index(b"\0", off)].decode(errors="replace").split()[0]
    except (ValueError, IndexError):
        return "unknown"


def lab_kernel() -> Path:
    """The cached lab kernel's bzImage (never builds it: that takes a quarter hour)."""
    from . import kernel as labk

    env = os.environ.get("HASHLAB_LAB_KERNEL")  # inside the lab VM: the running kernel
    if env and Path(env).is_file():
        return Path(env)
    e = labk.entry()
    if not e.done or not (e.path / "bzImage").exists():
        raise MissingToolError("the lab kernel is not built yet: run `hashlab build kernel` "
                               "(or scripts/build-kernel)")
    return e.path / "bzImage"


def build_guest(kernel: str | Path = "debian", modules: list[str] | None = None,
                module_dir: Path | None = None, rebuild: bool = False) -> GuestImage:
    """Return the (cached) guest image for KERNEL.

    KERNEL is ``"debian"`` (the package named by versions.env GUEST_KERNEL_PKG),
    ``"deb:linux-image-..."`` (another Debian kernel package), ``"lab"`` (the cached lab
    kernel, everything built in) or a bzImage path.
    """
    prepared = _prepared(kernel, modules, module_dir, rebuild)
    if prepared is not None:
        return prepared
    for f in AGENT_FILES:
        if not (GUEST_TESTS_DIR / f).exists():
            raise MissingToolError(f"guest agent file missing: {GUEST_TESTS_DIR / f}")
    if not ETHTOOL.exists():
        raise MissingToolError(f"{ETHTOOL} not found: apt-get install ethtool")
    applets = _busybox_applets()

    kernel = str(kernel)
    if kernel == "lab":
        kernel = str(lab_kernel())
    memo = _memo_path(kernel, modules, module_dir)
    if memo is not None and not rebuild:
        try:
            key = memo.read_text().strip()
            path = cache_root() / "guest" / key
            if (path / ".done").exists():
                return _image(path, key)
        except OSError:
            pass
    if kernel == "debian" or kernel.startswith("deb:"):
        pkg = versions()["GUEST_KERNEL_PKG"] if kernel == "debian" else kernel[4:]
        if not re.fullmatch(r"linux-image-[A-Za-z0-9.+~-]+", pkg):
            raise UsageError(f"guest kernel package {pkg!r} is not a linux-image-* name")
        tree = fetch_deb(pkg)
        vmlinuz = next((tree / "boot").glob("vmlinuz-*"))
        kver = vmlinuz.name[len("vmlinuz-"):]
        module_dir = tree / "lib" / "modules" / kver
        wanted = DEBIAN_MODULES if modules is None else modules
    else:
        pkg = None
        vmlinuz = Path(kernel)
        if not vmlinuz.is_file():
            raise UsageError(f"guest kernel {vmlinuz} does not exist")
        kver = _kernel_version_of(vmlinuz)
        wanted = modules or []
        if wanted and module_dir is None:
            raise UsageError("modules for a custom kernel need module_dir")
    mods = resolve_modules(Path(module_dir), wanted) if wanted else []

    libs = _shared_libs(ETHTOOL)
    ikey = InputKey("guest")
    ikey.add_file(Path(__file__), "builder")
    ikey.add_file(vmlinuz, "vmlinuz")
    for name, p in mods:
        ikey.add_file(p, f"mod:{name}")
    ikey.add_file(BUSYBOX, "busybox")
    ikey.add_file(ETHTOOL, "ethtool")
    for lib in libs:
        ikey.add_file(lib, f"lib:{lib}")
    for f in AGENT_FILES:
        ikey.add_file(GUEST_TESTS_DIR / f, f"agent:{f}")
    entry = CacheEntry(ikey)

    if entry.done and not rebuild:
        _memo_write(memo, ikey.key)
        return _image(entry.path, ikey.key)

    with entry.fill() as out:
        c = Cpio()
        for d in ["bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run",
                  "etc/hashlab", "lib/modules", "root"]:
            c.dir(d)
        c.chardev("dev/console", 5, 1)
        c.chardev("dev/null", 1, 3, 0o666)
        c.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
        for a in applets:
            a = a.lstrip("/")
            if a != "bin/busybox":
                c.symlink(a, "/bin/busybox")
        c.file("usr/sbin/ethtool", ETHTOOL.read_bytes(), 0o755)
        for lib in libs:
            c.file(str(lib), lib.resolve().read_bytes(), 0o755)
        c.file("init", (GUEST_TESTS_DIR / "init").read_bytes(), 0o755)
        c.file("bin/agent", (GUEST_TESTS_DIR / "agent").read_bytes(), 0o755)
        order = []
        for name, p in mods:
            c.file(f"lib/modules/{name}.ko", _decompress(p))
            order.append(f"{name}.ko")
        c.file("etc/hashlab/modules", "".join(m + "\n" for m in order).encode())
        c.file("etc/hashlab/kernel", (kver + "\n").encode())
        (out / "initramfs.cpio.gz").write_bytes(gzip.compress(c.finish(), 6, mtime=0))
        shutil.copyfile(vmlinuz, out / "vmlinuz")
        (out / "manifest.json").write_text(json.dumps({
            "kernel_version": kver,
            "kernel_source": pkg if pkg else kernel,
            "modules": [n for n, _ in mods],
            "ethtool_libs": [str(x) for x in libs],
        }, indent=1) + "\n")
    _memo_write(memo, ikey.key)
    return _image(entry.path, ikey.key)


def _memo_path(kernel: str, modules, module_dir) -> Path | None:
    """Where the entry key for these inputs' *file stats* is remembered.

    Computing the real key reads every input (kernel, modules, busybox, ethtool, its
    libraries) and runs modinfo/ldd: seconds on the host, half a minute in the lab VM
    over 9p under TCG.  Like make, trust (path, size, mtime, inode) of the files that
    name the inputs; the remembered key still has to point at a finished entry.
    """
    if modules is not None or module_dir is not None:
        return None
    if kernel == "debian" or kernel.startswith("deb:"):
        pkg = versions()["GUEST_KERNEL_PKG"] if kernel == "debian" else kernel[4:]
        done = cache_root() / "debs" / pkg / ".done"
        if not done.exists():
            return None
        files = [done]
    else:
        files = [Path(kernel)]
    files += [Path(__file__), BUSYBOX, ETHTOOL] + [GUEST_TESTS_DIR / f for f in AGENT_FILES]
    h = hashlib.sha256(kernel.encode())
    try:
        for f in files:
            st = f.stat()
            h.update(f"|{f}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}".encode())
    except OSError:
        return None
    return cache_root() / "guest" / ".memo" / h.hexdigest()[:24]


def _memo_write(memo: Path | None, key: str) -> None:
    if memo is None:
        return
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(key + "\n")
    except OSError:
        pass


def _prepared(kernel, modules, module_dir, rebuild) -> GuestImage | None:
    """In the lab VM: the image the host built for KERNEL (hashlab.host.datapath.prepare_lab);
    hashing every input again over 9p under TCG takes half a minute."""
    if modules is not None or module_dir is not None or rebuild:
        return None
    from ..host.datapath import prep

    d = prep().get("guest_images", {}).get(str(kernel))
    if d and (Path(d) / ".done").exists():
        return _image(Path(d), Path(d).name)
    return None


def _image(path: Path, key: str) -> GuestImage:
    m = json.loads((path / "manifest.json").read_text())
    return GuestImage(kernel=path / "vmlinuz", initrd=path / "initramfs.cpio.gz",
                      kernel_version=m["kernel_version"], modules=tuple(m["modules"]), key=key)


# --------------------------------------------------------------------------- CLI


def register_cli(sub) -> None:
    """``hashlab build guest``: build (or find) the guest image and say where it is."""
    p = sub.add_parser(
        "guest",
        help="the guest image: kernel + initramfs with busybox, ethtool and the agent",
        description="Build the guest image (Debian's cloud kernel from versions.env by "
        "default, its virtio_net modules, busybox-static, ethtool, guest-tests/) into the "
        "content-keyed cache, or find it there.",
    )
    p.add_argument("--kernel", default="debian",
                   help="debian (versions.env GUEST_KERNEL_PKG), deb:linux-image-..., lab "
                   "(the cached lab kernel) or a bzImage path (default: debian)")
    p.add_argument("--force", action="store_true", help="rebuild even if the entry exists")
    p.add_argument("--print-path", action="store_true", help="print only the entry's path")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    img = build_guest(args.kernel, rebuild=args.force)
    if args.print_path:
        print(img.kernel.parent)
    else:
        print(f"guest: {img.kernel.parent}")
        print(f"  kernel   {img.kernel}  ({img.kernel_version})")
        print(f"  initrd   {img.initrd}")
        print(f"  modules  {', '.join(img.modules) or '(none)'}")
    return 0
