"""What each design costs in interface and code, counted from the patch series.

Pure over the committed series (``kernel/series/<design>/``, ``qemu/patches/``): lines
added and removed per file, split into kernel code, selftests, QEMU C and QEMU eBPF, and
the user API a series adds (``include/uapi/``), counted item by item.  Nothing here is an
estimate: every number is a count over ``+``/``-`` lines of the patches, as
``git diff --stat`` would give it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import designs
from ..paths import QEMU_DIR

QEMU_PATCHES = QEMU_DIR / "patches"


@dataclass
class FileDelta:
    path: str
    added: int = 0
    removed: int = 0


@dataclass
class SeriesCount:
    """Lines of a set of patches, by kind, and the UAPI items they add."""

    patches: int = 0
    kernel: tuple[int, int] = (0, 0)  # (added, removed), selftests and tools/ excluded
    selftests: tuple[int, int] = (0, 0)
    c: tuple[int, int] = (0, 0)  # QEMU's C (generated skeleton headers excluded)
    ebpf: tuple[int, int] = (0, 0)  # QEMU's eBPF program source
    uapi: list[str] = field(default_factory=list)  # "#define IFF_VNET_HASH", ...
    kfuncs: list[str] = field(default_factory=list)  # not UAPI by the kernel's policy
    files: list[FileDelta] = field(default_factory=list)


def file_deltas(patch_text: str) -> list[FileDelta]:
    """Per file, the lines a patch adds and removes (its diff hunks, not its message)."""
    out: list[FileDelta] = []
    cur: FileDelta | None = None
    in_hunk = False
    for line in patch_text.splitlines():
        if line.startswith("diff --git "):
            cur, in_hunk = None, False
            continue
        if line.startswith("+++ "):
            cur = FileDelta(line[4:].removeprefix("b/"))
            out.append(cur)
            continue
        if line.startswith("@@"):
            in_hunk = True
            continue
        if line == "-- ":  # the signature after the last hunk
            in_hunk = False
        if cur is None or not in_hunk:
            continue
        if line.startswith("+"):
            cur.added += 1
        elif line.startswith("-"):
            cur.removed += 1
    return out


_DEFINE = re.compile(r"^\+#define\s+(\w+)")
_STRUCT = re.compile(r"^\+struct\s+(\w+)\s*\{")
_ENUM_CONST = re.compile(r"^\+\s+([A-Z][A-Z0-9_]+)\s*(=.*)?,")
_MEMBER = re.compile(r"^\+\s+__[us]\d+\s+(\w+)")
_KFUNC = re.compile(r"^\+__bpf_kfunc\s+.*?(\w+)\s*\(")


def uapi_items(patch_text: str) -> list[str]:
    """The items a patch adds to include/uapi/: macros, new structures, enum constants,
    members of existing structures (a new structure's members belong to it)."""
    items: list[str] = []
    in_uapi = in_new_struct = in_hunk = False
    for line in patch_text.splitlines():
        if line.startswith("+++ "):
            in_uapi = line.startswith("+++ b/include/uapi/")
            in_new_struct = in_hunk = False
            continue
        if line.startswith("@@"):
            in_hunk = True
            continue
        if not (in_uapi and in_hunk) or not line.startswith("+"):
            continue
        if in_new_struct:
            in_new_struct = not line.startswith("+};")
            continue
        if m := _STRUCT.match(line):
            items.append(f"struct {m[1]}")
            in_new_struct = True
        elif m := _DEFINE.match(line):
            items.append(f"#define {m[1]}")
        elif m := _MEMBER.match(line):
            items.append(f"member {m[1]}")
        elif m := _ENUM_CONST.match(line):
            items.append(f"enum {m[1]}")
    return items


def kfuncs(patch_text: str) -> list[str]:
    return [m[1] for line in patch_text.splitlines() if (m := _KFUNC.match(line))]


def _kind(path: str, qemu: bool) -> str:
    if qemu:
        if path.endswith(".bpf.c"):
            return "ebpf"
        if path.endswith(".skeleton.h"):
            return "generated"
        return "c"
    if path.startswith("tools/testing/selftests/"):
        return "selftests"
    if path.startswith("tools/"):
        return "tools"
    return "kernel"


def count(patches: list[Path], qemu: bool = False) -> SeriesCount:
    sc = SeriesCount(patches=len(patches))
    sums: dict[str, list[int]] = {}
    for p in patches:
        text = p.read_text(errors="replace")
        for fd in file_deltas(text):
            sc.files.append(fd)
            s = sums.setdefault(_kind(fd.path, qemu), [0, 0])
            s[0] += fd.added
            s[1] += fd.removed
        sc.uapi += uapi_items(text)
        sc.kfuncs += kfuncs(text)
    for k in ("kernel", "selftests", "c", "ebpf"):
        if k in sums:
            setattr(sc, k, tuple(sums[k]))
    return sc


def series_patches(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("[0-9][0-9][0-9][0-9]-*.patch")
                  if not p.name.startswith("0000-"))


def qemu_patches(numbers: tuple[int, ...]) -> list[Path]:
    by_no = {int(p.name[:4]): p for p in series_patches(QEMU_PATCHES)}
    return [by_no[n] for n in numbers if n in by_no]


def design_costs() -> dict[str, dict]:
    """Per design with a series: its kernel series' counts and the QEMU patches its path
    needs (``Design.qemu_patches``), as JSON-ready dicts."""
    out = {}
    for d in designs.with_series():
        k = count(series_patches(d.series_dir))
        q = count(qemu_patches(d.qemu_patches), qemu=True)
        out[d.name] = {
            "kernel_patches": k.patches, "kernel_lines": list(k.kernel),
            "selftest_lines": list(k.selftests), "uapi": k.uapi, "kfuncs": k.kfuncs,
            "qemu_patches": list(d.qemu_patches), "qemu_c_lines": list(q.c),
            "qemu_ebpf_lines": list(q.ebpf), "privileges": d.privileges,
            "kernel_files": [asdict(f) for f in k.files
                             if _kind(f.path, False) == "kernel"],
        }
    return out


def tunnel_costs() -> dict[str, dict]:
    """Per design with a series: what the inner header hash (VIRTIO_NET_F_HASH_TUNNEL)
    cost it, counted from the patches that implement it (``Design.tunnel_*_patches``):
    kernel lines, kselftest lines and UAPI items, QEMU C and eBPF lines, and whether a
    running host needs a new kernel for its guests to get the feature."""
    out = {}
    for d in designs.with_series():
        by_no = {int(p.name[:4]): p for p in series_patches(d.series_dir)}
        k = count([by_no[n] for n in d.tunnel_kernel_patches if n in by_no])
        q = count(qemu_patches(d.tunnel_qemu_patches), qemu=True)
        out[d.name] = {
            "kernel_patches": list(d.tunnel_kernel_patches),
            "kernel_patches_found": k.patches,
            "kernel_lines": list(k.kernel), "selftest_lines": list(k.selftests),
            "uapi": k.uapi,
            "qemu_patches": list(d.tunnel_qemu_patches), "qemu_c_lines": list(q.c),
            "qemu_ebpf_lines": list(q.ebpf),
            "new_kernel": bool(d.tunnel_kernel_patches),
        }
    return out
