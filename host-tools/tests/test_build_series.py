"""The series as the builds see them: cover letters skipped, the bisect build's inputs."""

from __future__ import annotations

import re
import subprocess

import pytest

from hashlab import designs
from hashlab.build import kernel as K
from hashlab.build import kernel_bisect as B
from hashlab.build import qemu as Q


# Every kernel design's series, and QEMU's.
SERIES = [K.patch_files(d) for d in designs.with_series()] + [Q.patch_files()]


def test_cover_letters_are_not_applied():
    for files in SERIES:
        names = [p.name for p in files]
        assert names and not any(n.startswith("0000-") for n in names)
        assert names == sorted(names)
        # numbered 1..N without gaps, as `git format-patch` writes them
        assert [int(n[:4]) for n in names] == list(range(1, len(names) + 1))


def test_every_series_has_a_cover_letter_and_credits_the_rfc():
    for d in [d.series_dir for d in designs.with_series()] + [Q.PATCH_DIR]:
        cover = (d / "0000-cover-letter.patch").read_text()
        assert "*** SUBJECT HERE ***" not in cover and "*** BLURB HERE ***" not in cover
        assert "Akihiko Odaki" in cover and "Link: https://lore.kernel.org/" in cover
    for files, prefix in ((K.patch_files("progtype"), "[RFC PATCH v3 bpf-next "),
                          (Q.patch_files(), "[RFC PATCH ")):
        for p in files:
            text = p.read_text()
            assert f"Subject: {prefix}" in text, p.name
            assert "From: hashlab developers <hashlab@localhost>" in text, p.name
            assert "Signed-off-by: hashlab developers <hashlab@localhost>" in text, p.name


def test_qemu_patches_that_change_the_program_carry_its_skeletons():
    """QEMU commits the generated ebpf/*.skeleton.h: a patch that changes rss.bpf.c
    without them does not build by itself (the bisect build would use stale ones)."""
    changed = 0
    for p in Q.patch_files():
        files = set(re.findall(r"^\+\+\+ b/(\S+)$", p.read_text(errors="replace"), re.M))
        if "tools/ebpf/rss.bpf.c" in files:
            changed += 1
            assert {"ebpf/rss.bpf.skeleton.h", "ebpf/rss_hash.bpf.skeleton.h"} <= files, p.name
    assert changed >= 2  # the hash rules (and the second object), the table-driven hash


def test_bisect_builds_the_objects_the_series_touches():
    objs = B.touched_objects(K.patch_files())
    for o in ("drivers/net/tun.o", "drivers/net/tap.o", "drivers/vhost/net.o",
              "net/core/filter.o", "net/bpf/test_run.o"):
        assert o in objs
    assert not any(o.startswith("tools/") for o in objs)


def test_bisect_module_config(tmp_path):
    frag = K.read_fragment(B.module_fragment(tmp_path / "m.config"))
    assert {s: frag[s] for s in B.MODULE_OVERRIDES} == B.MODULE_OVERRIDES
    lab = K.read_fragment(K.LAB_CONFIG)
    assert {s: v for s, v in frag.items() if s not in B.MODULE_OVERRIDES} == \
        {s: v for s, v in lab.items() if s not in B.MODULE_OVERRIDES}


def test_qemu_variants_cut_the_series_before_the_kfunc_patch():
    """progtype-only: the QEMU a host built before the kfunc patch (the mismatched
    pairing); its entry is its own (kind qemu-progtype-only)."""
    from hashlab.errors import UsageError

    whole = Q.patch_files()
    old = Q.patch_files(variant="progtype-only")
    assert 0 < len(old) < len(whole) and whole[:len(old)] == old
    assert "kfunc" in Q._subject(whole[len(old)])
    assert not any("kfunc" in Q._subject(p) for p in old)
    with pytest.raises(UsageError, match="unknown QEMU variant"):
        Q.patch_files(variant="nope")


def test_qemu_build_python_without_meson_is_a_missing_tool(tmp_path, monkeypatch):
    """QEMU configures with Debian's python; one without meson is named with the fix,
    before an hour of kernel builds reaches configure."""
    from hashlab.errors import MissingToolError

    assert Q.build_python().startswith(f"{Q.BUILD_PYTHON} 3.")
    subprocess.run([Q.BUILD_PYTHON, "-m", "venv", "--without-pip", str(tmp_path / "bare")],
                   check=True)
    monkeypatch.setattr(Q, "BUILD_PYTHON", str(tmp_path / "bare" / "bin" / "python3"))
    with pytest.raises(MissingToolError, match=r"meson >= 1\.5 .* which has no meson: "
                                               r"apt-get install -t bookworm-backports meson"):
        Q.build_python()
