"""Differential fuzzing: hashlab's eBPF RSS program against the oracle (issue 9).

The program is the built ``rss.bpf.o`` of the patched QEMU (``<qemu entry>/bpf/``, or
``$HASHLAB_RSS_BPF_O``).  Frames: ``hashlab.frames.hostile.random_frames(seed, n)`` (seed from
``$HASHLAB_FUZZ_SEED``, default :data:`DEFAULT_SEED`, printed and recorded in the junit
properties; ``n`` from ``$HASHLAB_FUZZ_FRAMES``, default 100,000) and the whole hostile
corpus, each under several keys, hash-type sets and indirection tables (:data:`CONFIGS`).
They go through ``BPF_PROG_TEST_RUN`` in the ``hashlab-testrun`` helper (one bpf(2) call
per frame, no Python in the loop; :mod:`hashlab.bench.testrun`), and the program's hash,
report and queue are compared with ``rss.hash_info(..., behaviour="hashlab-ebpf")`` (the
spec plus the program's named parser bounds) and ``select_queue``.

* lab tier (``BPF_PROG_TYPE_VNET_HASH``, inside the lab VM): hash, report and queue;
* lab tier, kfunc VM (marker ``lab_kfunc``: the socket filter on the ``kfunc`` kernel):
  hash and report as the program hands them to ``bpf_skb_set_vnet_hash()`` (a kprobe
  catches the calls: ``hashlab.bench.kfunc``), queue from the return value;
* host tier (the socket-filter form on the host's kernel, natively): the queue, with a
  hash-only configuration making it the hash's low 16 bits; fewer frames.

Verdicts on what the fuzzing found (see :data:`REGRESSION_CASES`):

* ``hashlab-ebpf-hao-30-options`` -- the program looks for a Home Address option at
  most 30 options deep: a legitimate bound of a verifier-checked parser (Linux itself
  drops a Destination Options header with more than 8 options or more than 7 bytes of
  consecutive padding, ``net.ipv6.max_dst_opts_number``).  Named divergence of
  ``behaviour="hashlab-ebpf"`` in ``hashlab.oracle.rss``.
* ``rss-bpf-ext-chain-16-refused`` -- was a program bug (an off-by-one in
  ``parse_ipv6_ext``: a chain of exactly 16 extension headers got no hash), fixed in
  qemu/patches 0001; its frames are now "boundary" cases held to the spec.  A new
  program bug would be pinned in ``hashlab.bench.differential.PROGRAM_BUGS`` (its runs
  counted apart, the tests xfail while it is there).

Frames the kernel refuses (``EINVAL``: an untagged IPv4/IPv6 frame shorter than its
fixed IP header, ``bpf_prog_test_run_skb``) are counted per reason and reported; any
other refusal fails.
"""

from __future__ import annotations

import os
import time

import pytest

from hashlab.host import bpf
from hashlab.oracle import rss
from hashlab.bench import differential as diff
from hashlab.bench import kfunc, testrun
from hashlab.frames.hostile import (
    DST, TCP, UDP, V6_DST, V6_HOA, V6_SRC, _dst, _hao_dst, _v6, hao, hostile, opt_pad,
    random_frames,
)
from hashlab.oracle.rss import ALL_TYPES, LINUX_GUEST_TYPES, MS_KEY, HashType as T, Report

DEFAULT_SEED = 20261128
DEFAULT_FRAMES = 100_000
HOST_FRAMES = 20_000

_KEY_RANDOM = bytes.fromhex("3b9f2c58e1d04a7791c6af2e5b08d3f46c1e77a9204fd5b8e29c61a3d74f0b5e8a1c2d3e4f506172")
_KEY_ALT = bytes.fromhex("0123456789abcdeffedcba9876543210a5a55a5affff0000c3c33c3c1248edb7f00f0ff0deadbeef")
_TABLE_128x4 = tuple(i % 4 for i in range(128))
_TABLE_IDENTITY = tuple(range(128))
_TABLE_64 = tuple((i * 37 + 5) % 8 for i in range(64))

CONFIGS = [
    diff.Config("ms-all-128x4", MS_KEY, ALL_TYPES, _TABLE_128x4, 3),
    diff.Config("rand-linux-64", _KEY_RANDOM, LINUX_GUEST_TYPES, _TABLE_64, 7),
    diff.Config("alt-ex-mix-identity", _KEY_ALT,
                int(T.IPv4 | T.TCPv4 | T.IPv6_EX | T.TCPv6_EX | T.UDPv6), _TABLE_IDENTITY, 200),
    diff.Config("rand-all-hashonly", _KEY_RANDOM, ALL_TYPES, (0,), 5, redirect=False),
    diff.Config("alt-udp-ipex-hashonly", _KEY_ALT, int(T.UDPv4 | T.UDPv6_EX | T.IPv6_EX | T.IPv6),
                (0,), 9, redirect=False),
]
"""The random frames run under each of these (five keys/types/tables/modes)."""

HOSTILE_CONFIGS = CONFIGS + [
    diff.Config("ms-none", MS_KEY, 0, _TABLE_128x4, 2),
    diff.Config("ms-ex-only", MS_KEY, int(T.IPv6_EX | T.TCPv6_EX | T.UDPv6_EX), _TABLE_IDENTITY, 1),
    diff.Config("ms-ip-only-1", MS_KEY, int(T.IPv4 | T.IPv6), (6,), 0),
    diff.Config("ms-all-redirect-no-populate", MS_KEY, ALL_TYPES, _TABLE_IDENTITY, 4, populate_hash=False),
    diff.Config("ms-all-off", MS_KEY, ALL_TYPES, _TABLE_IDENTITY, 11, redirect=False,
                populate_hash=False),
]
"""The hostile corpus is small: every configuration above and a few more."""

HOST_CONFIGS = [c for c in HOSTILE_CONFIGS if not c.redirect] + [
    diff.Config("ms-linux-hashonly", MS_KEY, LINUX_GUEST_TYPES, (0,), 3, redirect=False),
    diff.Config("ms-all-identity", MS_KEY, ALL_TYPES, _TABLE_IDENTITY, 255),
]
"""The socket form shows the queue only: mostly hash-only configurations."""

EXT = T.TCPv6 | T.TCPv6_EX | T.UDPv6 | T.UDPv6_EX


def _chain(n: int, l4: int = TCP) -> bytes:
    return _v6([_dst(opt_pad(6))] * n, l4)


def _pads_then_hao(n: int, l4: int = TCP) -> bytes:
    return _v6([_dst(b"\0" * n + hao())], l4)


# name -> (frame, hash types, what the program must answer, verdict).  The answer is
# "spec" (the spec oracle) or "hashlab-ebpf" (the spec with the named parser bound);
# the verdict names the divergence, the pinned program bug, or "boundary" (the
# neighbours of a limit, where program and spec agree).
REGRESSION_CASES: dict[str, tuple[bytes, int, str, str]] = {
    "ext-chain-15-tcp": (_chain(15), LINUX_GUEST_TYPES, "spec", "boundary"),
    "ext-chain-16-tcp": (_chain(16), LINUX_GUEST_TYPES, "spec", "boundary"),
    "ext-chain-16-udp-ex": (_chain(16, UDP), ALL_TYPES, "spec", "boundary"),
    "ext-chain-16-hao-last": (_v6([_dst(opt_pad(6))] * 15 + [_hao_dst()], TCP), int(EXT), "spec",
                              "boundary"),
    "ext-chain-17-tcp": (_chain(17), ALL_TYPES, "spec", "boundary"),  # no hash: too long
    "hao-after-29-pad1": (_pads_then_hao(29), int(EXT), "spec", "boundary"),
    "hao-after-30-pad1": (_pads_then_hao(30), int(EXT), "hashlab-ebpf", "hashlab-ebpf-hao-30-options"),
    "hao-after-30-padn0-udp": (_v6([_dst(opt_pad(2) * 30 + hao())], UDP), int(EXT), "hashlab-ebpf",
                               "hashlab-ebpf-hao-30-options"),
    "hao-after-40-pad1-ip-ex": (_pads_then_hao(40, 253), int(T.IPv6 | T.IPv6_EX), "hashlab-ebpf",
                                "hashlab-ebpf-hao-30-options"),
}


def test_regression_cases_are_what_they_claim():
    """Host tier, no program: each case's verdict matches what the oracle says."""
    assert _chain(16)[12:14] == b"\x86\xdd" and _chain(16)[20] == DST
    for name, (frame, types, answer, verdict) in REGRESSION_CASES.items():
        spec = rss.hash_packet(frame, MS_KEY, types, "spec")
        ours = rss.hash_packet(frame, MS_KEY, types, "hashlab-ebpf")
        if verdict in rss.DIVERGENCES:
            assert answer == "hashlab-ebpf" and spec != ours, name
        else:
            assert spec == ours, name
        if verdict in diff.PROGRAM_BUGS:
            assert diff.PROGRAM_BUGS[verdict].hits(rss.parse_frame(frame, "spec")), name
    f = REGRESSION_CASES["hao-after-30-pad1"][0]
    assert rss.hash_packet(f, MS_KEY, EXT, "hashlab-ebpf") == (
        rss.toeplitz(MS_KEY, V6_SRC + V6_DST + b"\x9c\x40\x01\xbb"), Report.TCPv6_EX)
    assert rss.hash_packet(f, MS_KEY, EXT, "spec")[0] == rss.toeplitz(
        MS_KEY, V6_HOA + V6_DST + b"\x9c\x40\x01\xbb")


# --------------------------------------------------------------------------- fixtures


def _seed() -> int:
    return int(os.environ.get("HASHLAB_FUZZ_SEED", str(DEFAULT_SEED)), 0)


@pytest.fixture(scope="module")
def vnet_prog(rss_object):
    ok, why = bpf.kernel_has_vnet_hash(rss_object)
    if not ok:
        pytest.fail(f"the lab kernel cannot load the VNET_HASH program: {why}")
    with bpf.open_rss_object(rss_object, "vnet_hash") as obj:
        obj.load()
        yield obj, obj.program(bpf.RSS_PROG_VNET_HASH)


@pytest.fixture(scope="module")
def socket_prog(rss_object):
    with bpf.open_rss_object(rss_object, "socket") as obj:
        obj.load()
        yield obj, obj.program(bpf.RSS_PROG_SOCKET)


def _finish(out: diff.Outcome, record_property, what: str) -> None:
    """Print and record the counts; fail on mismatches and unexpected refusals; xfail
    when the only disagreements are pinned program bugs."""
    text = f"{what}\n{out.summary()}"
    print(text)
    record_property("fuzz_summary", text)
    problems = []
    if out.n_mismatches:
        problems.append(f"{out.n_mismatches} mismatch(es) with the oracle "
                        f"(first {len(out.mismatches)}):")
        problems += [f"  {m}" for m in out.mismatches]
    if out.unexpected_refusals:
        problems.append(f"{out.unexpected_refusals} unexpected refusal(s)")
    assert not problems, text + "\n" + "\n".join(problems)
    assert out.compared > 0
    if out.bugs:
        pytest.xfail("pinned program bug(s) still present: "
                     + ", ".join(f"{k} ({n} runs)" for k, n in out.bugs.items()))


# --------------------------------------------------------------------------- lab tier


@pytest.mark.lab
@pytest.mark.parametrize("name", list(REGRESSION_CASES))
def test_regression_case_vnet_hash(vnet_prog, name):
    obj, prog = vnet_prog
    frame, types, answer, verdict = REGRESSION_CASES[name]
    cfg = diff.Config(f"regression-{name}", MS_KEY, types, _TABLE_IDENTITY, 99)
    cfg.apply(obj)
    (res,) = testrun.run(prog.fd, [frame])
    assert res.err == 0
    want = cfg.expect(*rss.hash_packet(frame, MS_KEY, types, answer))
    got = (res.hash, res.report, res.queue)
    if verdict in diff.PROGRAM_BUGS and got != want:
        assert got == diff.PROGRAM_BUGS[verdict].wrong(cfg), "not even the pinned bug's answer"
        pytest.xfail(f"program bug {verdict}: {diff.PROGRAM_BUGS[verdict].what}")
    assert got == want, f"{name}: program {got}, {answer} {want}"


@pytest.mark.lab
def test_fuzz_random_frames_vnet_hash(vnet_prog, record_property):
    obj, prog = vnet_prog
    seed = _seed()
    n = int(os.environ.get("HASHLAB_FUZZ_FRAMES", DEFAULT_FRAMES))
    print(f"HASHLAB_FUZZ_SEED={seed} frames={n}")
    record_property("fuzz_seed", seed)
    t0 = time.monotonic()
    frames = random_frames(seed, n)
    gen = time.monotonic() - t0
    out = diff.run(obj, prog, frames, CONFIGS, form="vnet_hash")
    out.seconds["generate"] = gen
    _finish(out, record_property, f"random frames, seed {seed}, {n} frames x {len(CONFIGS)} configs")
    assert out.frames >= 100_000 or "HASHLAB_FUZZ_FRAMES" in os.environ


@pytest.mark.lab
def test_fuzz_hostile_corpus_vnet_hash(vnet_prog, record_property):
    obj, prog = vnet_prog
    frames = hostile()
    out = diff.run(obj, prog, [f.data for f in frames], HOSTILE_CONFIGS, form="vnet_hash",
                   labels=[f"{f.id} ({f.desc})" for f in frames])
    _finish(out, record_property, f"hostile corpus, {len(frames)} frames x {len(HOSTILE_CONFIGS)} configs")


# --------------------------------------------------------------------------- kfunc VM


@pytest.fixture(scope="module")
def kfunc_prog(rss_object):
    """The socket filter on the kfunc kernel, with the kprobe that sees its kfunc calls."""
    from hashlab.host.datapath import kernel_has_kfunc

    if not kernel_has_kfunc():
        pytest.fail(f"this kernel's BTF has no {kfunc.KFUNC}: not the kfunc lab kernel")
    with bpf.open_rss_object(rss_object, "socket") as obj, kfunc.KfuncCapture() as cap:
        obj.load()
        yield obj, obj.program(bpf.RSS_PROG_SOCKET), cap


@pytest.mark.lab_kfunc
@pytest.mark.parametrize("name", list(REGRESSION_CASES))
def test_regression_case_kfunc(kfunc_prog, name):
    obj, prog, cap = kfunc_prog
    frame, types, answer, verdict = REGRESSION_CASES[name]
    cfg = diff.Config(f"regression-{name}", MS_KEY, types, _TABLE_IDENTITY, 99)
    cfg.apply(obj)
    cap.reset()
    (res,) = testrun.run(prog.fd, [frame])
    assert res.err == 0
    calls = cap.take()
    assert len(calls) == 1, f"{len(calls)} calls of {kfunc.KFUNC} for one frame"
    want = cfg.expect(*rss.hash_packet(frame, MS_KEY, types, answer))
    got = (*calls[0], res.retval)
    if verdict in diff.PROGRAM_BUGS and got != want:
        assert got == diff.PROGRAM_BUGS[verdict].wrong(cfg), "not even the pinned bug's answer"
        pytest.xfail(f"program bug {verdict}: {diff.PROGRAM_BUGS[verdict].what}")
    assert got == want, f"{name}: program {got}, {answer} {want}"


@pytest.mark.lab_kfunc
def test_no_kfunc_call_without_hash_population(kfunc_prog):
    """RSS without hash reports: the program steers and never calls the kfunc."""
    obj, prog, cap = kfunc_prog
    cfg = diff.Config("no-populate", MS_KEY, ALL_TYPES, _TABLE_IDENTITY, 4, populate_hash=False)
    cfg.apply(obj)
    cap.reset()
    frames = [f.data for f in hostile()][:50]
    res = testrun.run(prog.fd, frames)
    assert any(r.err == 0 for r in res) and cap.take() == []


@pytest.mark.lab_kfunc
def test_fuzz_random_frames_kfunc(kfunc_prog, record_property):
    obj, prog, cap = kfunc_prog
    seed = _seed()
    n = int(os.environ.get("HASHLAB_FUZZ_FRAMES", DEFAULT_FRAMES))
    print(f"HASHLAB_FUZZ_SEED={seed} frames={n}")
    record_property("fuzz_seed", seed)
    out = diff.run(obj, prog, random_frames(seed, n), CONFIGS, form="kfunc", capture=cap)
    _finish(out, record_property, f"kfunc form, random frames, seed {seed}, {n} frames x "
            f"{len(CONFIGS)} configs")


@pytest.mark.lab_kfunc
def test_fuzz_hostile_corpus_kfunc(kfunc_prog, record_property):
    obj, prog, cap = kfunc_prog
    frames = hostile()
    out = diff.run(obj, prog, [f.data for f in frames], HOSTILE_CONFIGS, form="kfunc",
                   capture=cap, labels=[f"{f.id} ({f.desc})" for f in frames])
    _finish(out, record_property, f"kfunc form, hostile corpus, {len(frames)} frames x "
            f"{len(HOSTILE_CONFIGS)} configs")


# --------------------------------------------------------------------------- host tier


@pytest.mark.parametrize("name", list(REGRESSION_CASES))
def test_regression_case_socket_hash_only(socket_prog, name):
    """The regression cases on the host: a hash-only configuration makes the socket
    form's queue the hash's low 16 bits."""
    obj, prog = socket_prog
    frame, types, answer, verdict = REGRESSION_CASES[name]
    cfg = diff.Config(f"regression-{name}", MS_KEY, types, (0,), 99, redirect=False)
    cfg.apply(obj)
    (res,) = testrun.run(prog.fd, [frame])
    assert res.err == 0
    want = cfg.expect(*rss.hash_packet(frame, MS_KEY, types, answer))
    if verdict in diff.PROGRAM_BUGS and res.retval != want[2]:
        assert res.retval == diff.PROGRAM_BUGS[verdict].wrong(cfg)[2], "not even the pinned bug's answer"
        pytest.xfail(f"program bug {verdict}: {diff.PROGRAM_BUGS[verdict].what}")
    assert res.retval == want[2], f"{name}: program queue {res.retval}, {answer} {want}"


def test_fuzz_socket_form_on_host(socket_prog, record_property):
    """The socket-filter form on the host's kernel: queues (low 16 hash bits)."""
    obj, prog = socket_prog
    seed = _seed()
    frames = [f.data for f in hostile()] + random_frames(seed, HOST_FRAMES)
    print(f"HASHLAB_FUZZ_SEED={seed} frames={len(frames)}")
    out = diff.run(obj, prog, frames, HOST_CONFIGS, form="socket")
    _finish(out, record_property, f"socket form, hostile + {HOST_FRAMES} random frames (seed {seed})")
