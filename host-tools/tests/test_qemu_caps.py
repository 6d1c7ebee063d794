"""``--qemu PATH`` and the probe behind it (hashlab.host.qemu_caps): each QEMU is asked,
over QMP, what it can do for hashing; nothing comes from its path or version string."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hashlab.errors import UsageError
from hashlab.host import datapath, qemu_caps
from hashlab.host.qemu_process import HOST_QEMU
from hashlab.paths import REPO


def test_debians_qemu_reports_in_software_only():
    c = qemu_caps.probe(HOST_QEMU)
    assert not c.error, c.error
    assert c.version.startswith("10.0.")
    assert set(c.props) == {"rss", "hash", "ebpf-rss-fds"}  # upstream's, none of ours
    assert c.ebpf_objects == ["rss"] and not c.kfunc_call and not c.query
    assert c.designs == []
    assert "none through vhost_net" in c.summary()


def test_a_build_directory_is_searched(tmp_path):
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "qemu-system-x86_64").symlink_to(HOST_QEMU)
    assert qemu_caps.resolve(tmp_path) == qemu_caps.resolve(HOST_QEMU)
    with pytest.raises(UsageError, match="no such file or directory"):
        qemu_caps.resolve(tmp_path / "build" / "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no qemu-system-x86_64 in it"):
        qemu_caps.resolve(tmp_path / "empty")
    (tmp_path / "plain").write_text("")
    with pytest.raises(UsageError, match="not executable"):
        qemu_caps.resolve(tmp_path / "plain")


def test_not_a_qemu_is_refused_with_its_reason():
    """``/bin/true`` as --qemu: the command stops before doing anything (status 3)."""
    r = subprocess.run([sys.executable, "-m", "hashlab", "run", "--qemu", "/bin/true",
                        str(REPO / "scenarios" / "software-rss.yaml")],
                       capture_output=True, text=True, timeout=120, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO / "host-tools")})
    assert r.returncode == 3, r.stderr
    assert "/true does not speak QMP: not a qemu-system binary?" in r.stderr


@pytest.mark.built
@pytest.mark.parametrize("variant, designs, ours", [
    ("patched", ["progtype", "kfunc", "tunrss"], True),
    ("progtype-only", ["progtype"], False),  # patches 1-8: before kfunc, tun, tunnel, query
])
def test_the_patched_builds_say_what_they_can(variant, designs, ours):
    c = qemu_caps.probe(datapath.patched_qemu(variant))
    assert not c.error, c.error
    assert c.designs == designs
    assert ("hash-tunnel" in c.props) is ours and c.query is ours
    assert {"rss", "hash", "ebpf-rss-fds", "vhost-hash-report"} <= set(c.props)
