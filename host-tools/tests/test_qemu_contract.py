"""What the patched QEMU promises to the people around it (qemu/patches 0003, 0007, 0008).

* The series carries its generated eBPF skeletons, so each patch builds by itself.
* ``request-ebpf``: ``rss`` is what it always was (one socket filter, three maps, loads
  as a whole on a kernel without the series); ``rss-hash`` is the hash-reporting object
  with the same maps.  Both are byte for byte the objects the build made.
* ``vhost-hash-report``: off (the default) keeps upstream's behaviour, auto warns when the
  host cannot report, on refuses to start; a management application that hands in the
  ``rss-hash`` program with ``ebpf-rss-fds`` gets hash reports through vhost_net.
* QEMU's own unit test of the per-peer decision (vhost-vdpa keeps the feature) passes.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path

import pytest

from hashlab.host import bpf
from hashlab.oracle import rss
from hashlab.build.qemu import find_qemu_entry
from hashlab.frames.packets import corpus
from hashlab.host.qtest import QtestMachine, QtestStartError
from hashlab.vdrv import NetRig
from hashlab.vdrv.check import HashSetup, run_setup

MAPS = {bpf.RSS_MAP_CONFIG, bpf.RSS_MAP_KEY, bpf.RSS_MAP_TABLE}
HASH_REPORT = 1 << 57
FRAMES = corpus(0).select(["ipv4-tcp", "ipv6-udp", "ipv6-hao", "non-ip"])
SETUP = HashSetup("rss-all-2q", rss.ALL_TYPES, rss.MS_KEY, "rss", tuple(i % 2 for i in range(128)),
                  0, 2)
LOSS_WARNING = "hash reporting is not offered to the guest with vhost"


@pytest.fixture(scope="module")
def entry() -> Path:
    e = find_qemu_entry()
    if e is None:
        pytest.fail("the patched QEMU is not built: run scripts/build-qemu")
    return e


@pytest.fixture(scope="module")
def objects(entry, tmp_path_factory) -> dict[str, bytes]:
    """What request-ebpf hands a management application, asked once per module."""
    with QtestMachine(qemu_binary=entry / "bin/qemu-system-x86_64",
                      log_dir=tmp_path_factory.mktemp("request-ebpf"), name="request-ebpf") as qt:
        return {i: base64.b64decode(qt.qmp("request-ebpf", id=i)["object"])
                for i in ("rss", "rss-hash")}


def _programs_and_maps(data: bytes, tmp_path: Path, name: str) -> tuple[list[str], set[str]]:
    path = tmp_path / name
    path.write_bytes(data)
    with bpf.BpfObject.open(path) as obj:
        return obj.program_names(), set(obj.map_names())


@pytest.mark.built
def test_the_series_carries_its_skeletons(entry):
    """Each patch that changes tools/ebpf/rss.bpf.c regenerates ebpf/*.skeleton.h, as
    upstream does: the skeletons the series commits are the ones the build generates."""
    import json

    meta = json.loads((entry / ".done").read_text())
    assert meta["skeletons_match_series"] == {"rss.bpf.skeleton.h": True,
                                              "rss_hash.bpf.skeleton.h": True}


@pytest.mark.built
def test_qemu_unit_test_of_the_per_peer_decision(entry):
    """tests/unit/test-virtio-net-hash: on a tap the property and the program decide;
    vhost-vdpa and vhost-user keep HASH_REPORT whatever both say."""
    exe = entry / "build/tests/unit/test-virtio-net-hash"
    r = subprocess.run([str(exe), "--tap", "-k"], capture_output=True, text=True, timeout=60)
    ok = re.findall(r"(?m)^ok \d+ (\S+)", r.stdout)
    not_ok = re.findall(r"(?m)^not ok \d+ (\S+)", r.stdout)
    assert r.returncode == 0 and not not_ok, r.stdout + r.stderr
    assert ok == ["/virtio-net/vhost-hash-report/tap",
                  "/virtio-net/vhost-hash-report/other-backends"], r.stdout


@pytest.mark.built
def test_request_ebpf_objects(entry, objects, tmp_path):
    """rss: one socket filter and the three maps (what a stock-kernel caller always got);
    rss-hash: one VNET_HASH program and the same maps; both are the build's objects."""
    objs = objects
    assert objs["rss"] == (entry / "bpf/rss.bpf.o").read_bytes()
    assert objs["rss-hash"] == (entry / "bpf/rss_hash.bpf.o").read_bytes()
    assert _programs_and_maps(objs["rss"], tmp_path, "rss.o") == ([bpf.RSS_PROG_SOCKET], MAPS)
    assert _programs_and_maps(objs["rss-hash"], tmp_path, "rss-hash.o") == \
        ([bpf.RSS_PROG_VNET_HASH], MAPS)


@pytest.mark.built
def test_request_ebpf_rss_loads_whole_here(objects, tmp_path):
    """A management application loads the whole ``rss`` object on this machine's kernel,
    which has no VNET_HASH series, as it did with upstream QEMU."""
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root (not running as root)")
    path = tmp_path / "rss.o"
    path.write_bytes(objects["rss"])
    with bpf.BpfObject.open(path) as obj:
        obj.load()
        assert obj.program(bpf.RSS_PROG_SOCKET).fd >= 0


# --------------------------------------------------------------------------- in the lab


def _fds_of(obj: bpf.BpfObject, prog: str) -> list[int]:
    return [obj.program(prog).fd, obj.map(bpf.RSS_MAP_CONFIG).fd, obj.map(bpf.RSS_MAP_KEY).fd,
            obj.map(bpf.RSS_MAP_TABLE).fd]


def _loaded(objects: dict[str, bytes], tmp_path: Path, which: str) -> bpf.BpfObject:
    """What a management application does: request-ebpf, then load the whole object."""
    path = tmp_path / f"{which}.o"
    path.write_bytes(objects[which])
    obj = bpf.BpfObject.open(path)
    try:
        obj.load()
    except BaseException:
        obj.close()
        raise
    return obj


def _fd_rig(entry: Path, tmp_path: Path, obj: bpf.BpfObject, prog: str, **props) -> NetRig:
    fds = _fds_of(obj, prog)
    return NetRig(qemu_binary=entry / "bin/qemu-system-x86_64", queues=2, vhost=True,
                  log_dir=tmp_path, pass_fds=fds,
                  device_json={"rss": True, "hash": True,
                               "ebpf-rss-fds": [str(f) for f in fds], **props})


def _log(rig: NetRig) -> str:
    return Path(rig.qt.log_path).read_text(errors="replace")


@pytest.mark.lab
def test_default_keeps_upstream_behaviour(entry, tmp_path):
    """No vhost-hash-report: the kernel could report, but QEMU offers no HASH_REPORT with
    vhost, and says nothing, exactly as upstream QEMU."""
    with NetRig(qemu_binary=entry / "bin/qemu-system-x86_64", queues=2, vhost=True,
                log_dir=tmp_path, device_opts="rss=on,hash=on") as rig:
        assert rig.net.features & (1 << 60), "RSS not negotiated"
        assert not rig.net.features & HASH_REPORT
        assert rig.net.hdr_len == 12
        assert LOSS_WARNING not in _log(rig)


@pytest.mark.lab
def test_management_application_hands_in_rss_hash(entry, objects, tmp_path):
    """libvirt's way: load request-ebpf's rss-hash object, pass its four fds with
    ebpf-rss-fds and vhost-hash-report=on: hash reports through vhost_net, and every hash,
    report and queue is the oracle's."""
    with _loaded(objects, tmp_path, "rss-hash") as obj, \
            _fd_rig(entry, tmp_path, obj, bpf.RSS_PROG_VNET_HASH,
                    **{"vhost-hash-report": "on"}) as rig:
        assert rig.net.features & HASH_REPORT and rig.net.hdr_len == 20
        out = run_setup(rig, SETUP, FRAMES)
        bad = []
        for o in out.received:
            e = SETUP.expect(o.frame.data, "hashlab-ebpf")
            if (o.rx.hash_value, o.rx.hash_report, o.rx.queue) != (e.hash, e.report, e.queue):
                bad.append(f"{o.frame.desc}: got {o.rx.hash_value:#010x}/{o.rx.hash_report}/"
                           f"q{o.rx.queue}, oracle {e.hash:#010x}/{e.report}/q{e.queue}")
        assert not out.missing and not bad, bad[:20]
        assert len(out.received) == len(FRAMES)


@pytest.mark.lab
def test_on_refuses_a_program_that_cannot_report(entry, objects, tmp_path):
    """vhost-hash-report=on with the socket filter handed in: QEMU does not start, and
    says why."""
    with _loaded(objects, tmp_path, "rss") as obj:
        with pytest.raises(QtestStartError) as err:
            with _fd_rig(entry, tmp_path, obj, bpf.RSS_PROG_SOCKET,
                         **{"vhost-hash-report": "on"}):
                pass
    msg = str(err.value)
    assert "vhost-hash-report=on" in msg, msg
    assert "not the hash-reporting one" in msg, msg


@pytest.mark.lab
def test_auto_warns_and_goes_on_without_hash_reports(entry, objects, tmp_path):
    """vhost-hash-report=auto with the socket filter: no HASH_REPORT, RSS still on, and
    a warning that names the reason."""
    with _loaded(objects, tmp_path, "rss") as obj, \
            _fd_rig(entry, tmp_path, obj, bpf.RSS_PROG_SOCKET,
                    **{"vhost-hash-report": "auto"}) as rig:
        assert rig.net.features & (1 << 60) and not rig.net.features & HASH_REPORT
        log = _log(rig)
        assert LOSS_WARNING in log and "not the hash-reporting one" in log, log[-2000:]


@pytest.mark.lab
def test_request_ebpf_rss_hash_loads_whole_in_the_lab(entry, objects, tmp_path):
    """On the lab kernel (the series) both objects load as a whole."""
    for which, prog in (("rss", bpf.RSS_PROG_SOCKET), ("rss-hash", bpf.RSS_PROG_VNET_HASH)):
        with _loaded(objects, tmp_path, which) as obj:
            assert obj.program(prog).fd >= 0
