"""The design registry (hashlab.designs) and what the kernel build makes of it.

The cache keys are pinned against the recipe as it was before the registry: moving
``kernel/patches`` to ``kernel/series/progtype`` (or anywhere) must not rebuild a kernel.
"""

from __future__ import annotations

import shutil

import pytest

from hashlab import designs
from hashlab.build import kernel as K
from hashlab.build import kernel_bisect as B
from hashlab.build import steps
from hashlab.cache import CacheEntry, InputKey
from hashlab.errors import UsageError
from hashlab.oracle import rss
from hashlab.paths import KERNEL_DIR


@pytest.fixture
def fixed_toolchain(monkeypatch):
    """The key's machine inputs fixed: the test must not depend on what is installed."""
    monkeypatch.setattr(K, "source_tarball",
                        lambda: ("linux-source-6.12", "6.12.0-1", KERNEL_DIR / "none.tar.xz"))
    monkeypatch.setattr(K, "compiler_version", lambda: "gcc (Debian 12.2.0-14) 12.2.0")


def pre_registry_key(stock: bool) -> InputKey:
    """build/kernel.py's input_key() before the registry, verbatim but for where the
    series is read from (then kernel/patches, now kernel/series/progtype)."""
    pkg, version, _ = K.source_tarball()
    series = [] if stock else steps.series_files(KERNEL_DIR / "series" / "progtype")
    key = InputKey("kernel-stock" if stock else "kernel")
    key.add_text("recipe", K.RECIPE_VERSION)
    key.add_text("source", f"{pkg}={version}")
    key.add_text("compiler", K.compiler_version())
    key.add_file(K.LAB_CONFIG, "lab.config")
    key.add_text("series", "\n".join(p.name for p in series))
    key.add_files(series, prefix="patches/")
    return key


def test_the_designs_entries_are_where_they_were_before_the_registry(fixed_toolchain):
    assert K.entry("progtype").path == CacheEntry(pre_registry_key(stock=False)).path
    assert K.entry("stock").path == CacheEntry(pre_registry_key(stock=True)).path
    assert K.entry().path == K.entry("progtype").path  # the default design
    assert K.entry("progtype").path.parent.name == "kernel"
    assert K.entry("stock").path.parent.name == "kernel-stock"
    old_bisect = pre_registry_key(stock=False)
    old_bisect.kind = "kernel-bisect"
    old_bisect.add_text("bisect-recipe", B.RECIPE_VERSION)
    assert B.entry().path == B.entry("progtype").path == CacheEntry(old_bisect).path


def test_moving_a_series_directory_keeps_its_key(fixed_toolchain, tmp_path, monkeypatch):
    here = K.entry("progtype").path
    moved = tmp_path / "elsewhere"
    shutil.copytree(designs.SERIES_DIR, moved)
    monkeypatch.setattr(designs, "SERIES_DIR", moved)
    assert K.patch_files("progtype")[0].is_relative_to(moved)
    assert K.entry("progtype").path == here
    # ...while a patch's content is an input
    p = K.patch_files("progtype")[0]
    p.write_text(p.read_text() + "\n")
    assert K.entry("progtype").path != here


def test_the_registry():
    assert designs.NAMES == ("stock", "progtype", "kfunc", "tunrss")
    assert designs.DEFAULT == "progtype"
    assert len({d.cache_kind for d in designs.DESIGNS}) == len(designs.DESIGNS)
    for d in designs.DESIGNS:
        assert d.behaviour in rss.BEHAVIOURS and d.title and "\n" not in d.title
        assert set(d.divergences) <= set(rss.DIVERGENCES), d.name
        if d.series:
            assert d.series_dir == KERNEL_DIR / "series" / d.name
            assert K.patch_files(d), d.name
            assert (d.series_dir / "0000-cover-letter.patch").is_file()
        else:
            assert d.series_dir is None and K.patch_files(d) == []
    stock, progtype = designs.get("stock"), designs.get("progtype")
    assert not stock.hash_report_with_vhost and progtype.hash_report_with_vhost
    assert designs.get() is progtype and designs.get(stock) is stock
    kfunc, tunrss = designs.get("kfunc"), designs.get("tunrss")
    assert designs.with_series() == (progtype, kfunc, tunrss)
    assert tunrss.hash_report_with_vhost and tunrss.behaviour == "spec"
    # one config for every design: BTF too (QEMU's one object needs it on every kernel)
    assert K.read_fragment(K.LAB_CONFIG)["CONFIG_DEBUG_INFO_BTF"] == "y"
    # every series directory belongs to a design
    assert {p.name for p in designs.SERIES_DIR.iterdir()} == {
        d.series for d in designs.with_series()}
    with pytest.raises(UsageError, match="unknown design 'nope' .*stock, progtype"):
        designs.get("nope")
    with pytest.raises(ValueError, match="behaviour"):
        designs.Design("x", "x", None, False, "qemu-hardware", "kernel-x")


def test_only_a_design_with_a_series_is_bisected(fixed_toolchain):
    with pytest.raises(UsageError, match="design stock has no kernel series.*progtype"):
        B.entry("stock")


def test_build_kernel_refuses_what_it_cannot_build_before_any_work(capsys):
    from hashlab import cli

    # the control has no series to bisect; --stock is --design stock
    assert cli.main(["build", "kernel", "--bisect", "--design", "stock"]) == 2
    assert "design stock has no kernel series to bisect" in capsys.readouterr().err
    assert cli.main(["build", "kernel", "--bisect", "--stock"]) == 2
    assert cli.main(["build", "kernel", "--stock", "--design", "progtype"]) == 2
    assert "--stock is --design stock" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["build", "kernel", "--design", "nope"])
    assert e.value.code == 2 and "choose from 'stock', 'progtype'" in capsys.readouterr().err


def test_hashlab_lab_boots_the_design_it_is_given(monkeypatch):
    from hashlab import cli
    from hashlab.host import lab

    got = []

    def fake_run(cmd, **kw):
        got.append((cmd, kw["design"], kw["kernel"]))
        return lab.LabResult(0, KERNEL_DIR / "console.log", 1.0)

    monkeypatch.setattr(lab, "run", fake_run)
    assert cli.main(["lab", "--design", "stock", "--", "true"]) == 0
    assert cli.main(["lab", "--", "true"]) == 0  # lab.run picks the default design
    assert got == [(["true"], "stock", None), (["true"], None, None)]
    with pytest.raises(SystemExit):
        cli.main(["lab", "--design", "nope", "--", "true"])


def test_the_running_design(monkeypatch, tmp_path):
    """In a lab VM the design it was booted as; else the kernel is probed."""
    from hashlab.host import datapath

    probes = {"kernel_has_prog_type": False, "kernel_has_kfunc": False,
              "kernel_has_tun_hash": False}
    for name in probes:
        monkeypatch.setattr(datapath, name, lambda name=name: probes[name])
    monkeypatch.delenv(datapath.LAB_DESIGN_ENV, raising=False)
    assert datapath.running_design() == "stock" and not datapath.kernel_has_series()
    probes["kernel_has_tun_hash"] = True
    assert datapath.running_design() == "tunrss" and datapath.kernel_has_series()
    probes["kernel_has_kfunc"] = True
    assert datapath.running_design() == "kfunc" and datapath.kernel_has_series()
    probes["kernel_has_prog_type"] = True
    assert datapath.running_design() == "progtype"
    monkeypatch.setenv(datapath.LAB_DESIGN_ENV, "stock")
    assert datapath.running_design() == "stock"
    # inside the lab VM the running kernel is the lab kernel of its own design only
    bz = tmp_path / "bzImage"
    bz.write_bytes(b"")
    monkeypatch.setenv("HASHLAB_LAB_KERNEL", str(bz))
    assert datapath.lab_kernel_path("stock") == bz
    assert datapath.lab_kernel_path("progtype") != bz
    assert datapath.kernel_not_built("stock") == (
        "the stock lab kernel (no series) is not built (scripts/build-kernel --design stock)")
    assert datapath.kernel_not_built("progtype") == (
        "the lab kernel is not built (scripts/build-kernel)")


@pytest.mark.labvm
@pytest.mark.parametrize("design", ["stock", "progtype", "kfunc", "tunrss"])
def test_the_probe_names_each_design_kernel(design):
    """Booted by path (no design named), each kernel is told apart by probing it."""
    import subprocess
    import sys

    from hashlab.build import kernel as K

    entry = K.entry(design)
    if not entry.done:
        pytest.fail(f"the {design} kernel is not built: hashlab build kernel --design {design}")
    r = subprocess.run(
        [sys.executable, "-m", "hashlab", "lab", "--kernel", str(entry.path / "bzImage"), "--",
         sys.executable, "-c",
         "from hashlab.host import datapath; print('design=' + datapath.running_design())"],
        capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"design={design}" in r.stdout.split(), r.stdout[-2000:]
