"""What a datapath needs and whether this machine has it: QEMU builds, lab kernel, KVM.

Rows of the comparison and scenarios name their datapath abstractly (``qemu: patched``,
``where: lab``, ``vhost: on``); this module turns that into binaries and says, in one
line, why something cannot run ("not built: ...", "not supported: ...").  Nothing here
ever starts a build.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

from .. import designs
from ..errors import MissingToolError
from .qemu_process import HOST_QEMU
from ..paths import REPO, cache_root

# Set by lab.run() for every command in the lab VM (and by scripts/test lab).
LAB_ENV = ("HASHLAB_LAB_KERNEL", "HASHLAB_IN_LAB")
LAB_DESIGN_ENV = "HASHLAB_LAB_DESIGN"  # the design the lab VM booted (lab.run(design=))
PATCHED_QEMU_ENV = "HASHLAB_PATCHED_QEMU"  # override: a qemu-system-x86_64 to use as "patched"
# The patched QEMU's builds (hashlab.build.qemu.VARIANTS) a datapath can name, and the
# environment variable that overrides each (the lab VM gets them from the host).
QEMU_VARIANT_ENV = {"patched": PATCHED_QEMU_ENV, "progtype-only": "HASHLAB_PROGTYPE_ONLY_QEMU"}
PREP_ENV = "HASHLAB_LAB_PREP"  # JSON the host wrote for the lab VM (see prepare_lab)
LAB_CPUS = 2  # vCPUs of the lab VM for hashlab's own runs (HASHLAB_LAB_CPUS overrides)


def in_lab() -> bool:
    """True inside the lab VM (lab.run sets HASHLAB_LAB_KERNEL for the command)."""
    return any(os.environ.get(k) for k in LAB_ENV)


def patched_qemu_entry(variant: str = "patched") -> Path | None:
    """The cache entry of the patched QEMU's VARIANT for the current inputs, if built."""
    try:
        from ..build import qemu as qb
    except ImportError:
        return None
    for mode in ("auto", "kernel", "system"):
        try:
            e = qb.find_qemu_entry(mode, variant)
        except Exception:  # a half-written source tree must not break scenario runs
            e = None
        if e is not None and (Path(e) / "bin" / "qemu-system-x86_64").is_file():
            return Path(e)
    return None


def patched_qemu(variant: str = "patched") -> Path:
    """The patched qemu-system-x86_64 (VARIANT: QEMU_VARIANT_ENV); MissingToolError("not
    built ...") when absent."""
    var = QEMU_VARIANT_ENV[variant]
    env = os.environ.get(var)
    if env:
        if not Path(env).is_file():
            raise MissingToolError(f"{var}={env} does not exist")
        return Path(env)
    e = patched_qemu_entry(variant)
    if e is None:
        opt = "" if variant == "patched" else f" --variant {variant}"
        raise MissingToolError(f"the patched QEMU ({variant}) is not built: run "
                               f"scripts/build-qemu{opt} (= hashlab build qemu{opt})")
    return e / "bin" / "qemu-system-x86_64"


def lab_kernel_path(design: str = designs.DEFAULT) -> Path | None:
    """DESIGN's cached lab kernel's bzImage, if built (inside a lab VM that booted
    DESIGN: the running one)."""
    env = os.environ.get("HASHLAB_LAB_KERNEL")
    if env and Path(env).is_file() and os.environ.get(LAB_DESIGN_ENV, designs.DEFAULT) == design:
        return Path(env)
    try:
        from ..build import kernel as kb

        e = kb.entry(design)
    except Exception:
        return None
    if e.done and (e.path / "bzImage").is_file():
        return e.path / "bzImage"
    return None


def kernel_not_built(design: str = designs.DEFAULT) -> str:
    """Why DESIGN's lab kernel cannot boot, with the command that builds it."""
    d = designs.get(design)
    if d.name == designs.DEFAULT:
        return "the lab kernel is not built (scripts/build-kernel)"
    what = f"the {d.name} lab kernel{'' if d.series else ' (no series)'}"
    return f"{what} is not built (scripts/build-kernel --design {d.name})"


def running_design() -> str:
    """The design of the kernel running here: what the lab VM was booted as, else (a
    kernel booted without naming one, or the host's own) by probing it: the RFC's
    program type loads on ``progtype`` only, the kfunc is in ``kfunc``'s BTF only, and
    only ``tunrss``'s tun answers TUNGETVNETHASHCAP."""
    name = os.environ.get(LAB_DESIGN_ENV)
    if name in designs.BY_NAME:
        return name
    if kernel_has_prog_type():
        return "progtype"
    if kernel_has_kfunc():
        return "kfunc"
    return "tunrss" if kernel_has_tun_hash() else designs.CONTROL


def host_lab() -> tuple[str | None, str]:
    """(design, why) when this machine is itself a lab: its running kernel has a
    design's series, /dev/vhost-net opens and KVM runs guests; then ``hashlab run`` and
    ``hashlab session`` run that design's ``where: lab`` scenarios here, with KVM,
    instead of booting a lab VM under TCG.  (None, why not) otherwise."""
    if in_lab():
        return None, "already in the lab VM"
    d = designs.get(running_design())
    if not d.series:
        return None, f"the running kernel {kernel_release()} has no design's series"
    try:
        os.close(os.open("/dev/vhost-net", os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        return None, f"/dev/vhost-net: {e.strerror}"
    from . import kvm

    v = kvm.probe(timeout=10)
    if not v.usable:
        return None, f"KVM cannot run guests here: {v.reason}"
    return d.name, (f"the running kernel {kernel_release()} is a {d.name} lab: its series, "
                    "/dev/vhost-net and KVM are here")


def become_lab(design: str) -> None:
    """Run the rest of this process as the lab VM's hashlab would (after host_lab())."""
    os.environ["HASHLAB_IN_LAB"] = "1"
    os.environ[LAB_DESIGN_ENV] = designs.get(design).name


def prep() -> dict:
    """What the host prepared for this lab VM run ({} elsewhere)."""
    p = os.environ.get(PREP_ENV)
    if not p:
        return {}
    try:
        return json.loads(Path(p).read_text())
    except (OSError, ValueError):
        return {}


@functools.lru_cache(maxsize=None)
def qemu_version(binary: str | Path) -> str:
    known = prep().get("qemu_versions", {}).get(str(binary))
    if known:
        return known
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    m = re.search(r"version (\S+)", out)
    return m.group(1) if m else "?"


def kernel_has_series() -> bool:
    """Does the running kernel have a design's series (progtype, kfunc or tunrss)?"""
    return kernel_has_prog_type() or kernel_has_kfunc() or kernel_has_tun_hash()


def kernel_has_tun_hash() -> bool:
    """Does the running kernel's tun hash packets itself (the tunrss design)?"""
    from ..uapi import linux as L

    try:
        return L.tun_vnet_hash_cap() is not None
    except OSError:  # no /dev/net/tun
        return False


def kernel_has_kfunc() -> bool:
    """Does the running kernel's BTF have the kfunc design's bpf_skb_set_vnet_hash()?"""
    try:
        btf = Path("/sys/kernel/btf/vmlinux").read_bytes()
    except OSError:
        return False
    return b"\0bpf_skb_set_vnet_hash\0" in btf  # a name in BTF's string section


def kernel_has_prog_type() -> bool:
    """Does the running kernel load BPF_PROG_TYPE_VNET_HASH programs (the RFC series)?"""
    from ..uapi import linux as L

    a = L.Asm()
    a.mov64(0, 0).exit()
    try:
        fd = L.prog_load(L.BPF_PROG_TYPE_VNET_HASH, a.code(), "hl_probe")
    except OSError:
        return False
    os.close(fd)
    return True


def kernel_release() -> str:
    return os.uname().release


def kvm_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def qemu_label(kind: str) -> str:
    """'stock 10.0.2' / 'patched 10.0.13' for tables."""
    if kind == "stock":
        return f"stock {qemu_version(HOST_QEMU)}"
    if kind in QEMU_VARIANT_ENV:
        try:
            return f"{kind} {qemu_version(patched_qemu(kind))}"
        except MissingToolError:
            return f"{kind} (not built)"
    return kind


# --------------------------------------------------------------------------- the lab VM
#
# Python under TCG is slow (imports ~10 s, the corpus ~30 s, hashing a guest image's
# inputs over 9p ~20 s): the host prepares what it can (guest images, QEMU versions, the
# corpus, in the build cache, which lab.run mounts) and the lab VM gets a JSON naming
# what was prepared.


def corpus(seed: int):
    """``packets.corpus(seed)``, cached on disk (keyed by the corpus and oracle sources)."""
    from ..frames import packets

    src = Path(packets.__file__).read_bytes()
    lock = REPO / "requirements.lock"  # pins scapy, which builds the frames
    src += lock.read_bytes() if lock.is_file() else b""
    key = hashlib.sha256(src + f"|{seed}|{sys.version_info[:2]}".encode()).hexdigest()[:20]
    path = cache_root() / "corpus" / f"{key}.pickle"
    try:
        with open(path, "rb") as f:
            c = pickle.load(f)
        if isinstance(c, packets.Corpus):
            return c
    except (OSError, pickle.PickleError, EOFError, AttributeError, ImportError):
        pass
    c = packets.corpus(seed)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            pickle.dump(c, f)
        tmp.rename(path)
    except OSError:
        pass
    return c


def prepare_lab(guest_kernels: set[str], seeds: set[int], out: Path,
                qemus: set[str] | bool) -> tuple[Path, dict[str, str]]:
    """Build (cached) what lab runs need and write the prep JSON; returns its path and
    the environment for lab.run.  Raises MissingToolError for what is not built."""
    from ..build.guest import build_guest

    images = {}
    for k in sorted(guest_kernels):
        images[k] = str(build_guest(k).kernel.parent)
    for seed in seeds:
        corpus(seed)
    versions = {HOST_QEMU: qemu_version(HOST_QEMU)}
    env = {"HASHLAB_IN_LAB": "1"}
    # QEMUS: the patched builds the runs name (True: "patched"; stock is always there)
    if isinstance(qemus, bool):
        qemus = {"patched"} if qemus else set()
    for variant in sorted(set(qemus) & set(QEMU_VARIANT_ENV)):
        pq = patched_qemu(variant)
        versions[str(pq)] = qemu_version(pq)
        env[QEMU_VARIANT_ENV[variant]] = str(pq)
    doc = {"guest_images": images, "qemu_versions": versions}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "lab-prep.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    env[PREP_ENV] = str(path)
    return path, env


def hashlab_argv(*args: str) -> list[str]:
    """The command line that runs ``hashlab ARGS`` in the lab VM with this interpreter's
    environment (wherever its virtual environment lives: lab.run makes it visible)."""
    return [sys.executable, "-m", "hashlab", *args]


def run_in_lab(argv: list[str], env: dict[str, str], timeout: float, echo=print,
               design: str = designs.DEFAULT, writes=(), reads=(), expect=(), qemu_opts=()):
    """Run ARGV in one lab VM boot of DESIGN's kernel with the build cache visible;
    returns lab.LabResult.  WRITES, READS, EXPECT: as for ``lab.run`` (what it writes
    and reads outside the checkout, and the files it must leave on the host).

    Never builds the kernel: a lab kernel that is not built is a MissingToolError."""
    from . import lab

    kernel = lab_kernel_path(design)
    if kernel is None:
        raise MissingToolError(kernel_not_built(design))
    cpus = int(os.environ.get("HASHLAB_LAB_CPUS", LAB_CPUS))
    res = lab.run(argv, kernel=kernel, design=design, timeout=timeout, cwd=REPO, env=env,
                  cpus=cpus, writes=writes, reads=reads, expect=expect, qemu_opts=qemu_opts)
    for o in res.oopses:
        echo(f"hashlab: kernel warning in the lab VM: {o}")
    return res
