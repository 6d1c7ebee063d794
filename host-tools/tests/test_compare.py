"""The comparison (hashlab.results.report.compare): expected vs observed -> verdicts, no VM."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from hashlab.frames import packets
from hashlab.results import report
from hashlab.oracle import rss
from hashlab.results.report import (DROPPED_OK, DUPLICATE, KNOWN, MATCH, MISMATCH, MISSING,
                            MISSING_OK, STALE_PIN, UNEXPECTED, Observed, Sent)
from hashlab.oracle.rss import Expectation, Report

QUEUES = 4


@pytest.fixture(scope="module")
def oracle():
    return rss.RssConfig.equal_table(QUEUES, key=rss.MS_KEY, hash_types=rss.LINUX_GUEST_TYPES,
                                     behaviour="qemu-software")


@pytest.fixture(scope="module")
def frames():
    return packets.corpus(0).select(["ipv4-tcp", "ipv4-udp", "ipv4-other", "ipv6-tcp",
                                     "ipv6-udp", "non-ip"])


def sent_for(frames, oracle, **kw):
    return [Sent(f.id, f.slice, f.desc, len(f.data), oracle.expect(f.data), **kw) for f in frames]


def perfect_guest(sent):
    """What a correct device + Linux guest would record for each sent frame."""
    return [Observed(len=s.length - 14, hash=s.expect.hash, l4_hash=int(s.expect.l4),
                     queue=s.expect.queue) for s in sent]


def test_perfect_guest_matches_everything(frames, oracle):
    sent = sent_for(frames, oracle)
    cmp = report.compare(sent, perfect_guest(sent))
    assert cmp.ok
    c = cmp.counts()
    assert c["sent"] == c["seen"] == c["match"] == len(frames)
    assert c["mismatch"] == c["missing"] == c["extra_records"] == 0
    # every report type the slices produce shows up in the table, with its counts
    assert {"NONE", "IPv4", "TCPv4", "UDPv4", "TCPv6", "UDPv6"} <= set(cmp.by_report)
    assert sum(r["sent"] for r in cmp.by_report.values()) == len(frames)
    assert sum(q["expected"] for q in cmp.queues.values()) == len(frames)
    assert all(q["expected"] == q["observed"] for q in cmp.queues.values())


def test_deliberately_wrong_expectation_is_a_mismatch(frames, oracle):
    """Corrupt one expectation (not the oracle): exactly that frame must be reported."""
    sent = sent_for(frames, oracle)
    observed = perfect_guest(sent)
    victim = next(i for i, s in enumerate(sent) if s.expect.report == Report.TCPv4)
    e = sent[victim].expect
    sent[victim] = Sent(sent[victim].id, sent[victim].slice, sent[victim].desc,
                        sent[victim].length, Expectation(e.hash ^ 1, e.report, e.queue, e.l4))
    cmp = report.compare(sent, observed)
    assert not cmp.ok
    assert [(v.id, v.status, v.fields) for v in cmp.failures] == \
        [(sent[victim].id, MISMATCH, ["hash"])]
    assert cmp.by_report["TCPv4"]["mismatch"] == 1
    assert "1 failing frame" in report.render_table(cmp)


@pytest.mark.parametrize("field", ["hash", "class", "queue"])
def test_each_wrong_field_is_caught(frames, oracle, field):
    sent = sent_for(frames, oracle)
    observed = perfect_guest(sent)
    i = next(i for i, s in enumerate(sent) if s.expect.report == Report.UDPv6)
    o = observed[i]
    if field == "hash":
        observed[i] = Observed(o.len, o.hash ^ 0x80000000, o.l4_hash, o.queue)
    elif field == "class":  # an L4 hash reported as L3
        observed[i] = Observed(o.len, o.hash, 0, o.queue)
    else:
        observed[i] = Observed(o.len, o.hash, o.l4_hash, (o.queue + 1) % QUEUES)
    cmp = report.compare(sent, observed)
    assert [v.fields for v in cmp.failures] == [[field]]


def test_l3_report_hidden_as_none_is_a_class_mismatch(frames, oracle):
    """An IPv4 (L3) report must show as hash != 0 with l4_hash 0, not as no hash."""
    sent = sent_for(frames, oracle)
    observed = perfect_guest(sent)
    i = next(i for i, s in enumerate(sent) if s.expect.report == Report.IPv4)
    observed[i] = Observed(observed[i].len, 0, 0, observed[i].queue)
    cmp = report.compare(sent, observed)
    assert cmp.failures[0].fields == ["hash", "class"]


def test_missing_dropped_unexpected_duplicate_and_extra(frames, oracle):
    arrive = {"ipv4-tcp": True, "ipv4-udp": False, "ipv4-other": "any"}
    sent = [Sent(f.id, f.slice, f.desc, len(f.data), oracle.expect(f.data),
                 arrive.get(f.slice, True)) for f in frames]
    by_slice = {}
    for s in sent:
        by_slice.setdefault(s.slice, []).append(s)
    observed = perfect_guest(sent)
    keep = []
    for s, o in zip(sent, observed):
        if s is by_slice["ipv4-tcp"][0]:
            continue  # lost: MISSING
        if s.slice == "ipv4-udp" and s is not by_slice["ipv4-udp"][0]:
            continue  # expected not to arrive, did not: fine
        if s.slice == "ipv4-other":
            continue  # 'any'
        keep.append(o)
    keep.append(perfect_guest([by_slice["ipv6-tcp"][0]])[0])  # seen twice
    keep.append(Observed(len=9999, hash=0, l4_hash=0, queue=0))  # not ours
    cmp = report.compare(sent, keep)
    st = {v.id: v.status for v in cmp.verdicts}
    assert st[by_slice["ipv4-tcp"][0].id] == MISSING
    assert st[by_slice["ipv4-udp"][0].id] == UNEXPECTED
    assert all(st[s.id] == DROPPED_OK for s in by_slice["ipv4-udp"][1:])
    assert all(st[s.id] == MISSING_OK for s in by_slice["ipv4-other"])
    assert st[by_slice["ipv6-tcp"][0].id] == DUPLICATE
    assert len(cmp.extras) == 1 and cmp.extras[0]["len"] == 9999
    assert {v.status for v in cmp.failures} == {MISSING, UNEXPECTED, DUPLICATE}
    c = cmp.counts()
    assert c["missing"] == 1 and c["unexpected_arrival"] == 1 and c["duplicate"] == 1


def test_known_divergence_pins_and_stale_pins(frames, oracle):
    sent = sent_for(frames, oracle)
    observed = perfect_guest(sent)
    tcp = [i for i, s in enumerate(sent) if s.slice == "ipv4-tcp"]
    udp = [i for i, s in enumerate(sent) if s.slice == "ipv4-udp"]
    for i in tcp[:1]:  # one frame of the pinned tcp group really diverges
        o = observed[i]
        observed[i] = Observed(o.len, o.hash ^ 1, o.l4_hash, o.queue)
    pin = {report.desc_group(sent[tcp[0]].desc): "diverges", report.desc_group(sent[udp[0]].desc): "fixed since"}
    sent = [Sent(s.id, s.slice, s.desc, s.length, s.expect, True,
                 pin.get(report.desc_group(s.desc))) for s in sent]
    cmp = report.compare(sent, observed)
    st = [cmp.verdicts[i].status for i in tcp]
    assert st[0] == KNOWN and set(st[1:]) <= {MATCH}
    # the udp pin is no longer needed by any frame: every frame of it fails as stale
    assert {cmp.verdicts[i].status for i in udp} == {STALE_PIN}
    assert not cmp.ok


def test_rxhash_off_expects_no_hash_but_queues(frames, oracle):
    sent = sent_for(frames, oracle)
    observed = [Observed(s.length - 14, 0, 0, s.expect.queue) for s in sent]
    assert report.compare(sent, observed, check_hash=False).ok
    assert not report.compare(sent, observed, check_hash=True).ok


def test_outputs_json_and_junit(frames, oracle):
    sent = sent_for(frames, oracle)
    observed = perfect_guest(sent)
    observed[0] = Observed(observed[0].len, observed[0].hash ^ 2, observed[0].l4_hash,
                           observed[0].queue)
    cmp = report.compare(sent, observed)
    doc = report.to_json(cmp)
    json.dumps(doc)
    assert doc["ok"] is False and doc["counts"]["mismatch"] == 1
    xml = report.junit_xml("hashlab.t", cmp, [("rss_negotiated", None), ("guest_config", "bad key")])
    root = ET.fromstring(xml.split("\n", 1)[1])
    suite = root.find("testsuite")
    cases = {tc.get("name"): tc for tc in suite.iter("testcase")}
    assert set(cmp.by_report) | {"rss_negotiated", "guest_config"} == set(cases)
    assert cases["guest_config"].find("failure") is not None
    failing_report = Report(sent[0].expect.report).name
    assert cases[failing_report].find("failure") is not None
    assert int(suite.get("failures")) == 2


def test_observed_from_agent_record():
    o = Observed.from_agent({"id": 3, "kind": "rx", "queue": 1, "hash": "0x8000000a",
                             "l4_hash": 1, "len": 242, "cpu": 0})
    assert (o.len, o.hash, o.l4_hash, o.queue) == (242, 0x8000000A, 1, 1)
    assert report.observed_class(o.hash, o.l4_hash) == "l4"
    assert report.observed_class(5, 0) == "l3" and report.observed_class(0, 0) == "none"
