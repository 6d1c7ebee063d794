"""End to end with stock QEMU: software RSS + hash report, Linux guest, 2 queue pairs.

Boots the guest on a fresh multi-queue tap, configures it, sends the whole corpus and
compares every frame with the oracle.  A single wrong hash, hash class or queue fails
(the scenario pins known QEMU-vs-oracle divergences, each with its reason; a pin that
no longer diverges fails too).  Afterwards nothing may be left: no tap device, no QEMU
process, no temporary files.
"""

from __future__ import annotations

import json
import os
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hashlab import guest, report
from hashlab.orchestrator import run_scenario
from hashlab.paths import SCENARIOS_DIR, versions
from hashlab.scenario import load_scenario, parse_scenario
from hashlab.tap import SYS_NET

pytestmark = pytest.mark.vm


def qemu_pids() -> set[int]:
    pids = set()
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if b"qemu-system" in (p / "cmdline").read_bytes().split(b"\0")[0]:
                    pids.add(int(p.name))
            except OSError:
                pass
    return pids


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Point TMPDIR at an empty directory, to see whether the run leaves anything there."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setenv("TMPDIR", str(d))
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


async def run_and_check_cleanup(sc, out: Path, private_tmp: Path):
    before = qemu_pids()
    res = await run_scenario(sc, out, echo=lambda m: None)
    tap = res.info["tap"]
    assert not (SYS_NET / tap).exists(), f"tap {tap} left behind"
    left = qemu_pids() - before
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
    # pinned divergences stay the exception, and every report type the Linux guest can
    # enable really was exercised and matched
    assert c["known_divergence"] < c["sent"] // 10
    for rep in ("NONE", "IPv4", "TCPv4", "UDPv4", "IPv6", "TCPv6", "UDPv6"):
        assert cmp.by_report[rep]["match"] > 0, rep
    # both queues got traffic, as the oracle said
    assert set(cmp.queues) == {0, 1}
    assert all(q["observed"] > 0 for q in cmp.queues.values())

    # QEMU's view and the guest's agree, and both negotiated RSS + HASH_REPORT
    assert res.info["guest"]["features"]["RSS"] and res.info["guest"]["features"]["HASH_REPORT"]
    assert res.info["qemu"]["features"]["guest-features"] == {"RSS": True, "HASH_REPORT": True}
    assert res.info["delivery"]["tap_tx_dropped"] == 0

    doc = json.loads((out / "results.json").read_text())
    assert doc["ok"] is True and doc["comparison"]["counts"] == c
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert suite.get("failures") == "0"
    assert (out / "qemu.log").stat().st_size > 0


@pytest.mark.skipif(
    guest.rss_key_quirk(versions()["GUEST_KERNEL_PKG"].removeprefix("linux-image-")) != "misaligned",
    reason="needs a guest kernel with the misaligned RSS key (Linux 6.12.91..6.12.113)")
async def test_wrong_key_model_fails_with_diagnosis(tmp_path, private_tmp):
    """The negative run: tell the harness the guest key is used as is (it is not)."""
    base = load_scenario(SCENARIOS_DIR / "software-rss-2q.yaml")
    sc = parse_scenario({"name": "negative-key", "guest": {"rss_key_quirk": "off"},
                         "corpus": {"slices": ["ipv4-tcp", "ipv6-udp"]},
                         "expect": {"rss_negotiated": True}}, "negative")
    assert base.datapath.device == sc.datapath.device
    res = await run_and_check_cleanup(sc, tmp_path / "out", private_tmp)
    assert not res.ok
    assert res.comparison.counts()["mismatch"] > 0
    diag = dict(res.checks).get("diagnosis") or ""
    assert "misaligned" in diag, res.checks
    assert os.path.exists(tmp_path / "out" / "junit.xml")
