"""QEMU's own virtio-net and net qtests, run against the patched QEMU (marker ``built``).

The patched QEMU must still pass what upstream tests about virtio-net and netdevs.  The
qtest binaries are built on demand in the cached meson tree (seconds with ccache).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from hashlab.build.qemu import find_qemu_entry

pytestmark = pytest.mark.built

# From qos-test, only the virtio-net paths: the rest needs qemu-img, which the lab's
# QEMU build leaves out.
QTESTS = ["qos-test", "netdev-socket", "test-filter-mirror", "test-filter-redirector"]


@pytest.fixture(scope="module")
def entry():
    e = find_qemu_entry()
    if e is None:
        pytest.fail("patched QEMU is not built: run scripts/build-qemu")
    targets = [f"tests/qtest/{t}" for t in QTESTS]
    r = subprocess.run(["nice", "-n", "10", "ninja", "-C", str(e / "build"), *targets],
                       capture_output=True, text=True)
    log = e / "qtests-build.log"
    log.write_text(r.stdout + r.stderr)
    if r.returncode:
        tail = "\n".join((r.stdout + r.stderr).splitlines()[-15:])
        pytest.fail(f"building the qtests failed (status {r.returncode}); log: {log}\n{tail}")
    return e


def test_meson_tree_needs_nothing_from_a_checkout():
    """The cached meson tree outlives the checkout that built it, and qtests rebuild in it:
    its pyvenv must rest on Debian's python and meson, not on a checkout's .venv (one
    built from a CI clone broke every qtest once the clone was gone)."""
    from hashlab.build.qemu import BUILD_PYTHON

    e = find_qemu_entry()
    if e is None:
        pytest.fail("patched QEMU is not built: run scripts/build-qemu")
    venv = (e / "build" / "pyvenv").resolve()
    cfg = dict(line.split(" = ", 1) for line in
               (venv / "pyvenv.cfg").read_text().splitlines() if " = " in line)
    assert cfg["home"] == os.path.dirname(BUILD_PYTHON), cfg
    assert cfg.get("include-system-site-packages") == "true", cfg
    for pth in venv.glob("lib/python3*/site-packages/*.pth"):
        for line in pth.read_text().splitlines():
            assert not line.startswith("/") or Path(line).is_relative_to("/usr"), \
                f"{pth}: {line}"
    r = subprocess.run([str(venv / "bin" / "meson"), "--version"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _series_files() -> set[str]:
    from hashlab.build.qemu import patch_files

    files = set()
    for p in patch_files():
        files |= set(re.findall(r"^\+\+\+ b/(\S+)", p.read_text(errors="replace"), re.M))
    return files


def test_no_compiler_warning_in_the_files_the_series_touches(entry):
    """The lab's QEMU builds without -Werror (Debian's source is not a git tree), so a
    warning in our own code would pass unseen: an implicit declaration once built a
    QEMU that crashed in the new QMP command.  None in the binary's or the qtests'
    build, in any file the series touches."""
    files = _series_files()
    assert "hw/net/virtio-net.c" in files
    text = (entry / "build.log").read_text(errors="replace") + \
        (entry / "qtests-build.log").read_text(errors="replace")
    warned = sorted({m.group(0) for m in re.finditer(
        r"^\.\./(\S+?):\d+:\d+: warning: .*$", text, re.M) if m.group(1) in files})
    assert not warned, "\n".join(warned[:20])


@pytest.mark.parametrize("name", QTESTS)
def test_qtest_suite(entry, name):
    env = dict(os.environ, QTEST_QEMU_BINARY=str(entry / "bin/qemu-system-x86_64"),
               QTEST_QEMU_IMG="/bin/false", MALLOC_PERTURB_="0")
    binary = str(entry / "build/tests/qtest" / name)
    paths: list[str] = []
    if name == "qos-test":
        listing = subprocess.run([binary, "-l"], cwd=entry / "build", env=env,
                                 capture_output=True, text=True, check=True).stdout
        for t in re.findall(r"^(/\S*virtio-net\S*)$", listing, re.M):
            paths += ["-p", t]
        assert paths, "qos-test lists no virtio-net path"
    r = subprocess.run([binary, "--tap", "-k", *paths],
                       cwd=entry / "build", env=env, capture_output=True, text=True, timeout=900)
    oks = re.findall(r"^ok \d+ (\S+)", r.stdout, re.M)
    bad = re.findall(r"^not ok \d+ (\S+)", r.stdout, re.M)
    assert r.returncode == 0 and not bad, f"{name}: failed {bad}\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}"
    assert oks, f"{name} ran no test:\n{r.stdout[-2000:]}"
    if name == "qos-test":
        assert any("virtio-net" in t for t in oks), "no virtio-net qos path ran"
    print(f"{name}: {len(oks)} passed")
