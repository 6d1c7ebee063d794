"""``hashlab corpus`` and ``hashlab expect`` run as a user would (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hashlab.frames import packets
from hashlab.oracle import rss


def hashlab(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "hashlab", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def corpus_pcap(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "corpus.pcap"
    r = hashlab("corpus", "--out", path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    corp = packets.corpus(0)
    assert len(lines) == len(corp.slices()) + 1
    assert lines[0].split()[:2] == ["ipv4-tcp", "48"]
    assert lines[-1].split()[:2] == ["total", str(len(corp))]
    return path


def test_corpus_writes_every_frame(corpus_pcap):
    assert packets.read_pcap(corpus_pcap) == [f.data for f in packets.corpus(0)]


def test_corpus_slices_and_seed(tmp_path):
    out = tmp_path / "s.pcap"
    r = hashlab("corpus", "--out", out, "--seed", 7, "--slices", "ipv6-hao, truncated")
    assert r.returncode == 0, r.stderr
    expected = packets.corpus(7).select(["ipv6-hao", "truncated"])
    assert packets.read_pcap(out) == [f.data for f in expected]
    assert [ln.split()[0] for ln in r.stdout.splitlines()] == ["ipv6-hao", "truncated", "total"]


def expect_lines(*args):
    r = hashlab("expect", *args)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_expect_matches_oracle(corpus_pcap):
    table = [0, 1, 2, 3, 3, 2, 1, 0]
    recs = expect_lines("--key", "ms", "--types", "linux", "--table", ",".join(map(str, table)),
                        "--unclassified", "2", corpus_pcap)
    corp = packets.corpus(0)
    assert len(recs) == len(corp)
    cfg = rss.RssConfig(rss.MS_KEY, rss.LINUX_GUEST_TYPES, table, 2)
    for rec, f in zip(recs, corp):
        e = cfg.expect(f.data)
        assert rec == {
            "id": f.id, "slice": f.slice, "desc": f.desc, "len": len(f.data),
            "hash": e.hash, "hash_hex": f"0x{e.hash:08x}", "report": e.report,
            "report_name": rss.Report(e.report).name, "queue": e.queue, "l4": e.l4,
        }
    assert {r["queue"] for r in recs} == {0, 1, 2, 3}
    assert {r["report"] for r in recs} == set(range(7))


def test_expect_behaviours_and_key_forms(tmp_path, corpus_pcap):
    out = tmp_path / "hao.pcap"
    assert hashlab("corpus", "--out", out, "--slices", "ipv6-hao").returncode == 0
    colon_key = ":".join(f"{b:02x}" for b in rss.MS_KEY)
    by_behaviour = {}
    for behaviour in rss.BEHAVIOURS:
        recs = expect_lines("--key", colon_key, "--types", "tcpv6,ip_ex", "--queues", 2,
                            "--behaviour", behaviour, out)
        by_behaviour[behaviour] = [r["report_name"] for r in recs]
    # tcp with a HAO and TCPv6|IPv6_EX enabled: the three disagree on the TCP frames
    assert by_behaviour["spec"][0] == "IPv6_EX"
    assert by_behaviour["qemu-software"][0] == "TCPv6"
    assert by_behaviour["qemu-ebpf"][0] == "TCPv6"


def test_expect_foreign_pcap_ids_by_index(tmp_path):
    path = tmp_path / "x.pcap"
    packets.write_pcap([b"\x01" * 3000, b"\x02" * 3001], path)
    recs = expect_lines("--key", "ms", "--types", "all", path)
    assert [(r["id"], r["report"], r["queue"]) for r in recs] == [(0, 0, 0), (1, 0, 0)]
    assert "slice" not in recs[0]


@pytest.mark.parametrize("args,needle", [
    (["--key", "6d:5a", "--types", "all"], "expected 40"),
    (["--key", "zz", "--types", "all"], "--key"),
    (["--key", "ms", "--types", "tcpv4,bogus"], "unknown hash type 'bogus'"),
    (["--key", "ms", "--types", "all", "--table", "0,1,1"], "power of two"),
    (["--key", "ms", "--types", "all", "--table", "0,1,x,1"], "--table"),
    (["--key", "ms", "--types", "all", "--table", "0,1,2,3", "--queues", "2"], "out of range"),
    (["--key", "ms", "--types", "all", "--queues", "2", "--unclassified", "2"], "--unclassified"),
    (["--key", "ms", "--types", "all", "--queues", "0"], "--queues"),
    (["--key", "ms", "--types", "all", "--key-size", "52"], "expected 52"),
])
def test_expect_bad_input(corpus_pcap, args, needle):
    r = hashlab("expect", *args, corpus_pcap)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hashlab: error: "), r.stderr
    assert needle in lines[0]
    assert r.stdout == ""


def test_expect_short_key_with_key_size(corpus_pcap):
    # a 16-byte key cannot hash IPv6 inputs: reported, not a traceback
    r = hashlab("expect", "--key", "ab" * 16, "--key-size", 16, "--types", "all", corpus_pcap)
    assert r.returncode == 2
    assert r.stderr.startswith("hashlab: error: frame ") and "too short" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_expect_unreadable_pcap(tmp_path):
    bad = tmp_path / "bad.pcap"
    bad.write_text("not a pcap")
    for path, needle in ((bad, "not a pcap"), (tmp_path / "missing.pcap", "cannot read")):
        r = hashlab("expect", "--key", "ms", "--types", "all", path)
        assert r.returncode == 2
        assert r.stderr.strip().splitlines() == [r.stderr.strip()]
        assert r.stderr.startswith("hashlab: error: ") and needle in r.stderr


def test_corpus_bad_slice(tmp_path):
    r = hashlab("corpus", "--out", tmp_path / "x.pcap", "--slices", "ipv4-tcp,nope")
    assert r.returncode == 2
    assert r.stderr.strip().startswith("hashlab: error: unknown corpus slice 'nope'")
    r = hashlab("corpus", "--out", tmp_path / "no" / "such" / "dir.pcap")
    assert r.returncode == 2 and r.stderr.startswith("hashlab: error: cannot write")
