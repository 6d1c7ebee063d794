"""The hostile corpus (hashlab.frames.hostile) and the oracle's totality on hostile input."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashlab.frames import hostile
from hashlab.oracle import rss
from hashlab.frames.hostile import MIN_FRAME_LEN, SLICES

FRAMES = hostile.hostile()
KEY2 = random.Random(11).randbytes(40)
TYPE_MASKS = (rss.ALL_TYPES, rss.LINUX_GUEST_TYPES, 0, 0x1C0, 0x1C8, int(rss.HashType.IPv4 | rss.HashType.TCPv6))
CONTEXTS = [("spec", {}), ("qemu-software", {}), ("qemu-ebpf", {"ebpf_context": "af_packet"}),
            ("qemu-ebpf", {"ebpf_context": "test_run"})]


def digest(frames) -> str:
    h = hashlib.sha256()
    for f in frames:
        h.update(f"{f.id}|{f.slice}|{f.desc}|{int(f.fixed)}|{f.pad}|".encode() + f.data)
    return h.hexdigest()


def check_result(value, report, types, behaviour):
    assert 0 <= value < 2**32
    assert report in range(10)
    if report == 0:
        assert value == 0
    elif behaviour != "qemu-ebpf":  # the eBPF model reports the type of the bytes it hashed
        assert types & (1 << (report - 1))


# --------------------------------------------------------------------------- the set


_CHILD = """
import hashlib
from hashlab.frames import hostile
h = hashlib.sha256()
for f in hostile.hostile():
    h.update(f"{f.id}|{f.slice}|{f.desc}|{int(f.fixed)}|{f.pad}|".encode() + f.data)
print(h.hexdigest())
"""


def test_deterministic_across_processes():
    here = digest(FRAMES)
    assert digest(hostile.hostile()) == here
    env = dict(os.environ, PYTHONHASHSEED="12345")
    child = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env,
                           timeout=60, check=True)
    assert child.stdout.strip() == here


def test_ids_unique_and_stable_form():
    ids = [f.id for f in FRAMES]
    assert len(set(ids)) == len(ids)
    assert len({f.data for f in FRAMES}) == len(FRAMES), "two frames share their bytes"
    for f in FRAMES:
        assert f.id.startswith(f.slice + "/") and f.desc and f.pad == 0
        assert len(f.data) >= MIN_FRAME_LEN


def test_every_slice_present():
    counts = Counter(f.slice for f in FRAMES)
    assert set(counts) == set(SLICES)
    assert [f.slice for f in FRAMES] == sorted((f.slice for f in FRAMES), key=SLICES.index)
    assert len(FRAMES) > 800
    assert hostile.hostile(["runt"]) == tuple(f for f in FRAMES if f.slice == "runt")
    with pytest.raises(ValueError, match="unknown hostile slice"):
        hostile.hostile(["nope"])


def test_slice_contents():
    by_id = {f.id: f for f in FRAMES}
    # truncations: every length from 15 to the end of the L4 header, per base
    v4 = sorted(len(f) for f in FRAMES if f.id.startswith("truncated/v4-tcp/"))
    assert v4 == list(range(15, 55))
    v6 = {len(f) for f in FRAMES if f.id.startswith("truncated/v6-udp-rh2-hao/")}
    assert set(range(20, 111)) <= v6  # 15..19 are the same bytes as another base's cut
    # extension chains around and beyond every limit
    for depth in (8, 11, 12, 16, 17, 32, 64):
        assert f"ext-chain/dstopts-x{depth}-tcp" in by_id
    # VLAN stacks: every mix of three TPIDs, 0..4 deep
    assert sum(1 for f in FRAMES if f.slice == "vlan-stack" and f.id.endswith("-v4-tcp")) == 1 + 3 + 9 + 27 + 81
    for ihl in range(5):
        assert f"bad-ihl/tcp-ihl{ihl}" in by_id
    assert max(len(f) for f in FRAMES if f.slice == "jumbo") == 9018
    runts = [len(f) for f in FRAMES if f.slice == "runt"]
    assert min(runts) == 15 and max(runts) == 59
    assert {f.fixed for f in FRAMES if f.slice in ("truncated", "runt", "jumbo")} == {True}
    for name in ("bogus-hao/in-hbh-tcp", "bogus-rh2/segleft0-tcp", "bogus-rh2/type0-udp",
                 "fragments/v6-atomic-udp", "fragments/v4-middle-tcp", "options/dstopts-30-pad1-then-hao"):
        assert name in by_id


def test_hostile_frames_are_hostile():
    """Every QEMU model parses some hostile frames unlike the spec (else the set misses them)."""
    for behaviour, kw in CONTEXTS[1:]:
        differ = sum(1 for f in FRAMES if rss.parse_frame(f.data, behaviour, **kw) != rss.parse_frame(f.data))
        assert differ > 100, (behaviour, kw, differ)


# --------------------------------------------------------------------------- batches


@pytest.mark.parametrize("max_len", [1514, 9018])
def test_batches_unique_lengths_and_complete(max_len):
    batches = hostile.batches(max_len)
    assert [b.frames for b in hostile.batches(max_len)] == [b.frames for b in batches]  # deterministic
    seen = Counter()
    originals = {f.id: f for f in FRAMES}
    for b in batches:
        lengths = [len(f) for f in b]
        assert len(set(lengths)) == len(lengths)
        assert max(lengths) <= max_len and min(lengths) >= MIN_FRAME_LEN
        for f in b:
            seen[f.id] += 1
            orig = originals[f.id]
            assert f.data == orig.data + bytes(f.pad)
            assert b.frame_for_guest_len(len(f) - 14) is f
            if orig.fixed:
                assert f.pad == 0
    expected = {f.id for f in FRAMES if len(f) <= max_len}
    assert set(seen) == expected and set(seen.values()) == {1}
    assert {originals[i].slice for i in seen} == set(SLICES) - ({"jumbo"} if max_len == 1514 else set())
    assert len(batches) <= 12


def test_padding_keeps_every_parsers_view():
    for b in hostile.batches():
        for f in b:
            if not f.pad:
                continue
            orig = f.data[:-f.pad]
            for behaviour, kw in CONTEXTS:
                assert rss.parse_frame(f.data, behaviour, **kw) == rss.parse_frame(orig, behaviour, **kw), f.id


def test_batches_rejects_tiny_max_len():
    with pytest.raises(ValueError):
        hostile.batches(10)


# --------------------------------------------------------------------------- oracle totality


def test_oracle_total_on_the_hostile_set():
    for f in FRAMES:
        for behaviour, kw in CONTEXTS:
            for types in TYPE_MASKS:
                for key in (rss.MS_KEY, KEY2):
                    v, r = rss.hash_packet(f.data, key, types, behaviour, **kw)
                    check_result(v, r, types, behaviour)
            info = rss.parse_frame(f.data, behaviour, **kw)
            assert info is None or info.family in (4, 6)


# --------------------------------------------------------------------------- random frames


def test_random_frames_reproducible():
    a = hostile.random_frames(7, 500)
    assert a == hostile.random_frames(7, 500)
    assert a != hostile.random_frames(8, 500)
    assert hostile.random_frames(7, 50) == a[:50]
    it = hostile.iter_random_frames(7)
    assert [next(it) for _ in range(20)] == a[:20]
    assert all(14 <= len(f) <= 1514 for f in a)
    assert [f[:200] for f in a] == hostile.random_frames(7, 500, max_len=200)
    with pytest.raises(ValueError):
        hostile.random_frames(7, 1, max_len=13)
    assert hashlib.sha256(b"".join(a[:100])).hexdigest() == \
        hashlib.sha256(b"".join(hostile.random_frames(7, 100))).hexdigest()


def test_random_frames_structure_mix():
    frames = hostile.random_frames(3, 4000)
    reports = Counter()
    for f in frames:
        for behaviour, kw in CONTEXTS:
            reports[(behaviour, rss.hash_packet(f, rss.MS_KEY, rss.ALL_TYPES, behaviour, **kw)[1])] += 1
    # every report type is reached by the spec, and plenty of frames are not hashed
    assert {r for (b, r) in reports if b == "spec"} == set(range(10))
    assert reports[("spec", 0)] > 400
    differ = sum(1 for f in frames if len({rss.hash_packet(f, rss.MS_KEY, rss.LINUX_GUEST_TYPES, b)
                                           for b in rss.BEHAVIOURS}) > 1)
    assert differ > 400


def test_oracle_total_on_random_frames():
    for f in hostile.random_frames(5, 3000):
        for behaviour, kw in CONTEXTS:
            for types in (rss.ALL_TYPES, rss.LINUX_GUEST_TYPES, 0x1C0):
                v, r = rss.hash_packet(f, KEY2, types, behaviour, **kw)
                check_result(v, r, types, behaviour)


def test_random_frames_are_reproducible():
    # the fuzz tests name a failing frame by (seed, index): the same seed gives the same frames
    a, b = hostile.random_frames(99, 2000), hostile.random_frames(99, 2000)
    assert len(a) == 2000 and a == b
    assert hostile.random_frames(98, 2000) != a


# --------------------------------------------------------------------------- arbitrary bytes

PREFIXES = [b"", bytes(12) + b"\x08\x00", bytes(12) + b"\x86\xdd", bytes(12) + b"\x81\x00",
            bytes(12) + b"\x88\xa8\x00\x01\x81\x00", bytes(12) + b"\x91\x00",
            bytes(12) + b"\x86\xdd\x60" + bytes(5) + b"\x3c"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PREFIXES), st.binary(max_size=400), st.integers(0, 0x1FF))
def test_never_raises_on_arbitrary_bytes(prefix, data, types):
    frame = prefix + data
    for behaviour, kw in CONTEXTS:
        info = rss.parse_frame(frame, behaviour, **kw)
        assert info is None or info.family in (4, 6)
        v, r = rss.hash_packet(frame, rss.MS_KEY, types, behaviour, **kw)
        check_result(v, r, types, behaviour)
