"""End to end with stock QEMU: software RSS + hash report, Linux guest, 2 queue pairs.

Boots the guest on a fresh multi-queue tap, configures it, sends the whole corpus and
compares every frame with the oracle.  A single wrong hash, hash class or queue fails
(the scenario pins known QEMU-vs-oracle divergences, each with its reason; a pin that
no longer diverges fails too).  Afterwards nothing may be left: no tap device, no QEMU
process, no temporary files.
"""

from __future__ import annotations

import json
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hashlab.host import datapath
from hashlab.run import guest
from hashlab.results import report
from hashlab.run.orchestrator import run_scenario
from hashlab.paths import SCENARIOS_DIR, versions
from hashlab.run.scenario import load_scenario, parse_scenario
from hashlab.host.tap import SYS_NET
from procs import qemu_pids

pytestmark = pytest.mark.vm


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Point TMPDIR at an empty directory, to see whether the run leaves anything there."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setenv("TMPDIR", str(d))
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


async def run_and_check_cleanup(sc, out: Path, private_tmp: Path):
    before = qemu_pids(f"hashlab-{sc.name}")
    res = await run_scenario(sc, out, echo=lambda m: None)
    tap = res.tap
    assert not (SYS_NET / tap).exists(), f"tap {tap} left behind"
    left = qemu_pids(f"hashlab-{sc.name}") - before
    assert not left, f"QEMU processes left: {left}"
    assert list(private_tmp.iterdir()) == [], "temporary files left"
    return res


async def test_software_rss_two_queues(tmp_path, private_tmp):
    sc = load_scenario(SCENARIOS_DIR / "software-rss.yaml")
    assert sc.datapath.queues == 2 and sc.guest_queues == 2
    out = tmp_path / "out"
    res = await run_and_check_cleanup(sc, out, private_tmp)
    print(res.summary())

    assert all(fail is None for _, fail in res.checks), res.checks
    cmp = res.comparison
    c = cmp.counts()
    bad = [(v.id, v.desc, v.status, v.fields, v.expected, v.observed) for v in cmp.failures]
    assert not bad, bad[:10]
    assert c["mismatch"] == c["missing"] == c["duplicate"] == c["stale_pin"] == 0
    assert c["seen"] == c["sent"] == len(cmp.verdicts) > 400
    assert {v.status for v in cmp.verdicts} <= {report.MATCH, report.KNOWN}
    # the scenario pins nothing (its model is QEMU's own parser), and every report type
    # the Linux guest can enable really was exercised and matched
    assert sc.expect.known_divergences in (None, {}) and c["known_divergence"] == 0
    for rep in ("NONE", "IPv4", "TCPv4", "UDPv4", "IPv6", "TCPv6", "UDPv6"):
        assert cmp.by_report[rep]["match"] > 0, rep
    # both queues got traffic, as the oracle said
    assert set(cmp.queues) == {0, 1}
    assert all(q["observed"] > 0 for q in cmp.queues.values())

    # QEMU's view and the guest's agree, and both negotiated RSS + HASH_REPORT
    assert res.guest.features["RSS"] and res.guest.features["HASH_REPORT"]
    assert res.negotiation.negotiated == {"RSS": True, "HASH_REPORT": True}
    assert res.delivery.tap_tx_dropped == 0

    doc = json.loads((out / "results.json").read_text())
    assert doc["ok"] is True and doc["comparison"]["counts"] == c
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert suite.get("failures") == "0"
    assert (out / "qemu.log").stat().st_size > 0


async def test_wrong_model_is_caught(tmp_path, private_tmp):
    """The negative control of the whole chain (guest trace -> collect -> compare): the
    oracle is told that the guest driver sends its RSS key one byte off (the quirk of
    Linux 6.12.91..6.12.113; the pinned guest kernel has it fixed), so it expects every
    hash under the wrong key.  Every hashed frame must be reported, by id, as a hash
    mismatch; a chain that compared nothing, or compared hashes with themselves, passes."""
    kver = versions()["GUEST_KERNEL_PKG"].removeprefix("linux-image-")
    assert guest.rss_key_quirk(kver) == "off", f"{kver} is not the fixed guest kernel"
    sc = parse_scenario({"name": "negative-key", "guest": {"rss_key_quirk": "misaligned"},
                         "corpus": {"slices": ["ipv4-tcp", "ipv6-udp", "non-ip"]},
                         "expect": {"rss_negotiated": True}}, "negative")
    res = await run_and_check_cleanup(sc, tmp_path / "out", private_tmp)
    assert not res.ok
    hashed = {v.id for v in res.comparison.verdicts if v.report != "NONE"}
    unhashed = {v.id for v in res.comparison.verdicts if v.report == "NONE"}
    wrong = {v.id for v in res.comparison.failures if "hash" in v.fields}
    assert len(hashed) > 50 and unhashed  # TCPv4 and UDPv6 frames, and non-IP ones
    assert wrong == hashed, (sorted(hashed - wrong)[:10], sorted(wrong - hashed)[:10])
    assert res.comparison.counts()["mismatch"] >= len(hashed)
    # the JUnit names the frames: the first failure of each report type, at least
    junit = (tmp_path / "out" / "junit.xml").read_text()
    firsts = {}
    for v in res.comparison.failures:
        firsts.setdefault(v.report, v.id)
    assert firsts and all(f"#{i} " in junit for i in firsts.values()), firsts


async def test_hash_report_without_rss(tmp_path, private_tmp):
    """rss=off, hash=on (HASH_CONFIG): hashes as the oracle says; the tap picks queues."""
    sc = load_scenario(SCENARIOS_DIR / "software-hash-only.yaml")
    sc.corpus.slices = ["ipv4-tcp", "ipv6-udp", "ipv6-ext", "non-ip"]
    res = await run_and_check_cleanup(sc, tmp_path / "out", private_tmp)
    assert res.ok, res.summary()
    assert not res.guest.features["RSS"] and res.guest.features["HASH_REPORT"]
    assert res.oracle.queues == "any"
    # the driver's probe sends VQ_PAIRS_SET after HASH_CONFIG, which QEMU takes as "hash
    # reporting off"; turning rxhash on commits HASH_CONFIG again
    cmds = res.driver_commands
    assert any("VQ_PAIRS_SET" in c for c in cmds) and "HASH_CONFIG" in cmds[-1]
    assert res.comparison.by_report["UDPv6"]["match"] > 0


async def test_reconfigure_under_traffic(tmp_path, private_tmp):
    """Key/table and hash types changed between batches while filler frames flow."""
    sc = parse_scenario({
        "name": "reconf", "guest": {"queues": 4, "key": "ms", "table": "equal"},
        "datapath": {"queues": 4, "behaviour": "qemu-software"},
        "corpus": {"slices": ["ipv4-tcp", "ipv6-udp", "non-ip"]},
        "reconfigure": {"steps": [{"key": "random:9", "table": [0, 1, 0, 2]},
                                  {"rxhash": False}, {"rxhash": True, "flow_hash": {"tcp4": "sd"}}]},
        "expect": {"rss_negotiated": True, "hash_report_negotiated": True}}, "reconf")
    res = await run_and_check_cleanup(sc, tmp_path / "out", private_tmp)
    assert res.ok, res.summary()
    steps = res.reconfigure
    assert [s.device_types for s in steps] == [
        "ipv4,tcpv4,udpv4,ipv6,tcpv6,udpv6", "none", "ipv4,udpv4,ipv6,tcpv6,udpv6"]
    assert all(s.filler_sent > 0 and s.filler_seen > 0 for s in steps)
    batches = {b: [v for v in res.comparison.verdicts if v.batch == b] for b in range(4)}
    assert all(batches[b] for b in range(4))
    # weights 0 1 0 2 for what is hashed; the rest (non-IP) to the unclassified queue 0
    assert {v.observed["queue"] for v in batches[1] if v.report != "NONE"} == {1, 3}
    assert {v.observed["queue"] for v in batches[2]} == {0}  # no types: unclassified
    assert all(v.observed["hash"] == "0x00000000" for v in batches[2])


@pytest.mark.built
async def test_patched_qemu_without_the_series_falls_back(tmp_path, private_tmp):
    """Patched QEMU on this machine's kernel (no VNET_HASH): QEMU says why, once, and
    hashes in software exactly like stock QEMU."""
    if datapath.patched_qemu_entry() is None:
        pytest.fail("the patched QEMU is not built (scripts/build-qemu)")
    sc = load_scenario(SCENARIOS_DIR / "host-patched.yaml")
    sc.corpus.slices = ["ipv4-tcp", "ipv4-udp", "ipv6-tcp", "ipv6-ext", "non-ip"]
    res = await run_and_check_cleanup(sc, tmp_path / "out", private_tmp)
    assert res.ok, res.summary()
    assert res.datapath.qemu == "patched" and not res.datapath.kernel_has_series
    warn = [w for w in res.qemu_warnings if "hash reporting is done in software" in w]
    assert len(warn) == 1 and "BPF_PROG_TYPE_VNET_HASH" in warn[0]


async def test_boot_retry_gets_a_fresh_tap(tmp_path, private_tmp, monkeypatch):
    """A boot that fails after QEMU set its queues up (here: a boot timeout) is retried on
    a new tap.  Reusing the old queue fds makes the next QEMU abort ("could not disable
    queue", virtio_net_set_queue_pairs) with more than one queue pair -- seen in the lab."""
    from hashlab.host.machine import Machine, QemuStartError
    from hashlab.host.tap import Tap

    real_start, real_recreate = Machine.start, Tap.recreate
    calls, names = [], []

    async def flaky_start(self):
        calls.append(1)
        if len(calls) == 1:
            self.cfg.boot_timeout = 2
        return await real_start(self)

    def recreate(self):
        names.append(self.name)
        real_recreate(self)
        names.append(self.name)
        return self

    monkeypatch.setattr(Machine, "start", flaky_start)
    monkeypatch.setattr(Tap, "recreate", recreate)
    monkeypatch.setattr("hashlab.host.qemu_process.load_factor", lambda: 1.0)
    doc = {"name": "retry", "guest": {"queues": 4},
           "datapath": {"queues": 4, "behaviour": "qemu-software"},
           "corpus": {"slices": ["ipv4-udp"]}, "expect": {"rss_negotiated": True}}
    res = await run_and_check_cleanup(parse_scenario(doc, "retry"), tmp_path / "out", private_tmp)
    assert res.ok, res.summary()
    assert len(calls) == 2 and len(names) == 2 and names[0] != names[1]
    assert res.tap == names[1]
    assert [f.attempt for f in res.boot_failures] == [1]
    assert (tmp_path / "out" / "qemu.attempt1.log").exists()

    # the same retry on the old tap: QEMU aborts
    calls.clear()
    monkeypatch.setattr(Tap, "recreate", lambda self: self)
    with pytest.raises(QemuStartError):
        await run_scenario(parse_scenario(doc, "retry"), tmp_path / "old", echo=lambda m: None)
    log = (tmp_path / "old" / "qemu.log").read_text()
    assert "could not disable queue" in log, log[-2000:]
