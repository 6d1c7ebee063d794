"""The designs under test: which kernel series, what a guest can expect on it.

A *design* is one answer to "how does the kernel give the VMM virtio-net hash reports":
a kernel patch series (``kernel/series/<name>/``), or none at all for the control.
Everything else asks this registry instead of spelling a design out: the kernel build
and its cache entry (``build.kernel``), the lab VM (``hashlab lab --design``),
scenarios (``datapath.design``), the comparison rows (``run.compare``) and the bench.

Adding a design: its series directory, one ``Design`` in ``DESIGNS``, and, if the
patched QEMU's guest sees something new on it, an oracle behaviour in ``oracle.rss``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .oracle.rss import BEHAVIOURS
from .paths import KERNEL_DIR

SERIES_DIR = KERNEL_DIR / "series"


@dataclass(frozen=True)
class Design:
    name: str
    title: str  # one line, for tables and --help
    series: str | None  # directory under kernel/series/; None: the kernel as Debian ships it
    # Does vhost_net give a VMM that asks for it VIRTIO_NET_F_HASH_REPORT on this kernel?
    hash_report_with_vhost: bool
    # The oracle behaviour (oracle.rss.BEHAVIOURS) the patched QEMU's guest sees here.
    behaviour: str
    # The cache entry kind of its kernel build.  Spelled out, not derived: the entries
    # built before the registry existed keep their paths ("kernel", "kernel-stock").
    cache_kind: str
    divergences: tuple[str, ...] = ()  # known divergences from the spec (oracle names)
    # The QEMU series' patches (qemu/patches/NNNN-*) the patched QEMU's path on this
    # design needs: what the design costs in QEMU (results.interface counts them).
    qemu_patches: tuple[int, ...] = ()
    # What QEMU needs to use the design, in words (for the report's interface table).
    privileges: str = ""
    # Who computes the hash the patched QEMU's guest gets on this kernel, for labels.
    hasher: str = "eBPF"
    # What the patched QEMU's x-query-virtio-net-hash says here once a guest asked for
    # RSS and hash reports (hashlab.host.hashquery.label; vhost on or off alike).
    mechanism: str = "ebpf/steering"
    # What virtio 1.3's inner header hash (VIRTIO_NET_F_HASH_TUNNEL) costs the design: the
    # patches of its kernel series and of the QEMU series its path needs for it.
    tunnel_kernel_patches: tuple[int, ...] = ()
    tunnel_qemu_patches: tuple[int, ...] = ()

    def __post_init__(self):  # a typo here would only show as a wrong verdict much later
        if self.behaviour not in BEHAVIOURS:
            raise ValueError(f"design {self.name}: unknown behaviour {self.behaviour!r}")

    @property
    def series_dir(self) -> Path | None:
        return SERIES_DIR / self.series if self.series else None


# QEMU patches every design's path uses: the vhost_net backend feature (4), the hash
# from the tap header (5), the vhost-hash-report property and its test (7, 8), a refused
# command keeping the configuration (12).  The eBPF designs add the program (1-3, 6, 10).
_QEMU_COMMON = (4, 5, 7, 8, 12)
_QEMU_EBPF = (1, 2, 3, 6, 10)
# The inner header hash: the program (14) and the device (15); tun's own (16).
_QEMU_TUNNEL_EBPF = (14, 15)
_FDS = ("; or none when a management application loads the program (request-ebpf) and "
        "passes its fds (ebpf-rss-fds)")

DESIGNS: tuple[Design, ...] = (
    Design("stock", "the control: the lab kernel without any series", None,
           hash_report_with_vhost=False, behaviour="qemu-software", cache_kind="kernel-stock"),
    Design("progtype", "the RFC's BPF_PROG_TYPE_VNET_HASH: tun runs a hash program",
           "progtype", hash_report_with_vhost=True, behaviour="spec", cache_kind="kernel",
           mechanism="ebpf-report/vnet-hash",
           qemu_patches=tuple(sorted(_QEMU_COMMON + _QEMU_EBPF)),
           tunnel_qemu_patches=_QEMU_TUNNEL_EBPF,
           privileges="CAP_BPF and CAP_NET_ADMIN to load a BPF_PROG_TYPE_VNET_HASH program"
           + _FDS),
    Design("kfunc", "the BPF maintainers' way: the socket filter calls a kfunc",
           "kfunc", hash_report_with_vhost=True, behaviour="spec", cache_kind="kernel-kfunc",
           mechanism="ebpf-report/kfunc",
           qemu_patches=tuple(sorted(_QEMU_COMMON + _QEMU_EBPF + (9,))),
           tunnel_qemu_patches=_QEMU_TUNNEL_EBPF,
           privileges="CAP_BPF to load a socket filter that calls a kfunc (unprivileged "
           "programs may not)" + _FDS),
    Design("tunrss", "the series' later way: tun hashes itself, set by ioctls",
           "tunrss", hash_report_with_vhost=True, behaviour="spec", cache_kind="kernel-tunrss",
           qemu_patches=tuple(sorted(_QEMU_COMMON + (11,))), hasher="tun", mechanism="tun",
           tunnel_kernel_patches=(8, 9), tunnel_qemu_patches=(15, 16),
           privileges="none beyond the tap fd QEMU already holds (two ioctls on it); "
           "a passed tap fd works as it is"),
)
BY_NAME = {d.name: d for d in DESIGNS}
NAMES = tuple(BY_NAME)
DEFAULT = "progtype"  # the series under review: what the lab VM boots unless told
CONTROL = "stock"


def get(name: str | Design | None = None) -> Design:
    """The design NAME (a Design passes through; None: DEFAULT); UsageError if unknown."""
    if isinstance(name, Design):
        return name
    d = BY_NAME.get(name or DEFAULT)
    if d is None:
        raise UsageError(f"unknown design {name!r} (designs: {', '.join(NAMES)})")
    return d


def with_series() -> tuple[Design, ...]:
    return tuple(d for d in DESIGNS if d.series)
