"""End to end through the patched kernel, inside the lab VM (``scripts/test lab``).

The patched QEMU boots a Linux guest under KVM (nested, in the lab VM) on a multi-queue
tap; QEMU's eBPF program computes hash and report (BPF_PROG_TYPE_VNET_HASH), tun puts
them into the 20-byte vnet header, and with ``vhost=on`` vhost_net hands that header to
the guest.  Every frame the guest receives is checked against the spec oracle for the
key, hash types and table the guest itself configured: zero mismatches.  QMP and QEMU's
file descriptors must show vhost_net really running (no silent fallback to QEMU's own
datapath).  The mismatched pairing (stock QEMU + the patched vhost_net) is pinned: the
guest negotiates HASH_REPORT and gets no hash at all.

A representative slice of scenarios/lab-*.yaml; the whole matrix runs with
``hashlab run scenarios/lab-*.yaml``.  Wall time matters (nested KVM under TCG): the
guest is the lab kernel, and the corpus is trimmed where the whole of it adds nothing.
"""

from __future__ import annotations


import pytest

from hashlab.host import datapath
from hashlab.oracle import rss
from hashlab.run.orchestrator import run_scenario
from hashlab.paths import SCENARIOS_DIR, results_root
from hashlab.run.scenario import load_scenario, parse_scenario
from hashlab.host.tap import SYS_NET
from procs import qemu_pids

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module", autouse=True)
def lab_ready():
    if not datapath.kernel_has_series():
        pytest.fail("this kernel has no BPF_PROG_TYPE_VNET_HASH: not the lab kernel")
    if not datapath.kvm_usable():
        pytest.fail("/dev/kvm is not usable in the lab VM (KVM_AMD under TCG -cpu max?)")
    try:
        datapath.patched_qemu()
    except datapath.MissingToolError as e:
        pytest.fail(str(e))


async def run(sc, tmp_path):
    # results (VM logs included) go where the host can read them after the lab VM is gone
    before = qemu_pids(f"hashlab-{sc.name}")
    res = await run_scenario(sc, results_root() / "lab-e2e" / sc.name, echo=print)
    print(res.summary())
    assert not (SYS_NET / res.tap).exists(), "tap left behind"
    assert not (qemu_pids(f"hashlab-{sc.name}") - before), "QEMU left running"
    return res


def assert_clean(res, *, vhost: bool):
    failed = [(n, f) for n, f in res.checks if f is not None]
    assert not failed, failed
    cmp = res.comparison
    c = cmp.counts()
    bad = [(v.batch, v.id, v.desc, v.status, v.fields, v.expected, v.observed)
           for v in cmp.failures]
    assert not bad, bad[:10]
    assert c["mismatch"] == c["missing"] == c["duplicate"] == c["known_divergence"] == 0
    assert c["seen"] == c["sent"] > 0
    assert res.datapath.kernel_has_series and res.datapath.accel == "kvm"
    assert res.oracle.behaviour == "spec"
    vh = res.vhost
    if vhost:
        assert vh.started and vh.vhost_dev and vh.fds >= 1, vh
        assert vh.kernel_offers_hash_report and vh.acked_hash_report, vh
    else:
        assert not vh.started and vh.fds == 0, vh
    assert res.delivery.tap_tx_dropped == 0


def per_type(res) -> dict[str, int]:
    return {k: r["match"] for k, r in res.comparison.by_report.items()}


async def test_patched_vhost_whole_corpus(tmp_path):
    """The headline: patched QEMU + vhost_net, the whole corpus, every frame as the spec."""
    sc = load_scenario(SCENARIOS_DIR / "lab-vhost.yaml")
    assert sc.datapath.vhost and sc.datapath.qemu == "patched"
    res = await run(sc, tmp_path)
    assert_clean(res, vhost=True)
    g, q = res.guest.features, res.negotiation
    assert g["RSS"] and g["HASH_REPORT"] and q.negotiated["HASH_REPORT"]
    # every type the Linux guest can enable was exercised, on both queues
    for rep in ("NONE", "IPv4", "TCPv4", "UDPv4", "IPv6", "TCPv6", "UDPv6"):
        assert per_type(res)[rep] > 0, rep
    assert all(v["observed"] > 0 for v in res.comparison.queues.values())
    assert len(res.comparison.queues) == 2
    # the warning QEMU prints when it cannot report hashes through eBPF must not appear
    assert not [w for w in res.qemu_warnings if "hash reporting" in w]


async def test_patched_without_vhost(tmp_path):
    """Same program, QEMU reads the tap and copies the hash from its vnet header."""
    sc = load_scenario(SCENARIOS_DIR / "lab-novhost.yaml")
    sc.corpus.slices = ["ipv4-tcp", "ipv4-udp", "ipv4-frag", "vlan", "ipv6-udp", "ipv6-ext",
                        "ipv6-hao-rh2", "non-ip", "truncated"]
    res = await run(sc, tmp_path)
    assert_clean(res, vhost=False)
    assert per_type(res)["UDPv6"] > 0 and per_type(res)["IPv4"] > 0


async def test_patched_vhost_weights_subsets_and_reconfiguration(tmp_path):
    """Four queue pairs, a random key and weighted table, then ethtool -N subsets and a
    new key/table while filler traffic flows through vhost_net."""
    base = load_scenario(SCENARIOS_DIR / "lab-vhost-reconfigure.yaml")
    sc = parse_scenario({
        "name": "lab-e2e-reconfigure",
        "guest": {"kernel": base.guest.kernel, "queues": 4, "key": "random:11",
                  "table": [3, 1, 0, 4]},
        "datapath": {"qemu": "patched", "vhost": "on", "where": "lab", "queues": 4},
        "corpus": {"seed": 11, "slices": ["ipv4-tcp", "ipv4-udp", "ipv6-tcp", "ipv6-udp",
                                          "non-ip"]},
        "reconfigure": {"steps": [{"flow_hash": {"tcp4": "sd", "udp6": "sd"}},
                                  {"key": "ms", "table": "equal:2"}]},
        "expect": {"rss_negotiated": True, "hash_report_negotiated": True},
    }, "lab-e2e-reconfigure")
    res = await run(sc, tmp_path)
    assert_clean(res, vhost=True)
    steps = res.reconfigure
    assert [s.batch for s in steps] == [1, 2]
    assert all(s.filler_sent > 0 for s in steps), steps
    assert steps[0].device_types == rss.hash_type_names(
        rss.LINUX_GUEST_TYPES & ~(rss.HashType.TCPv4 | rss.HashType.UDPv6))
    # queue 2 has weight 0 in batch 0; in batch 2 only queues 0 and 1 are in the table
    by_batch = {b: {v.observed["queue"] for v in res.comparison.verdicts if v.batch == b}
                for b in (0, 2)}
    assert 2 not in by_batch[0] and by_batch[2] <= {0, 1}
    assert {v.batch for v in res.comparison.verdicts} == {0, 1, 2}


async def test_hash_report_without_rss(tmp_path):
    """rss=off, hash=on: HASH_CONFIG; hashes reported, queue = hash mod queues in use."""
    sc = load_scenario(SCENARIOS_DIR / "lab-vhost-hash-only.yaml")
    sc.corpus.slices = ["ipv4-tcp", "ipv6-udp", "ipv6-ext", "non-ip"]
    res = await run(sc, tmp_path)
    assert_clean(res, vhost=True)
    assert not res.guest.features["RSS"]
    assert res.oracle.queues == "hash"
    assert res.comparison.check_hash and per_type(res)["TCPv4"] > 0


async def test_mismatched_pairing_stock_qemu_patched_vhost(tmp_path):
    """Stock QEMU + the patched vhost_net behaves as on the stock kernel: stock QEMU does
    not ack VHOST_NET_BACKEND_F_HASH_REPORT, so vhost_net does not offer HASH_REPORT, the
    guest does not negotiate it, and QEMU's eBPF program keeps steering by RSS.  (Before
    the series made the feature opt-in, the guest negotiated it, got no hash, and lost
    RSS: a kernel upgrade alone took RSS away.)"""
    sc = load_scenario(SCENARIOS_DIR / "lab-stock-vhost.yaml")
    sc.corpus.slices = ["ipv4-tcp", "ipv6-udp", "non-ip"]
    res = await run(sc, tmp_path)
    failed = [(n, f) for n, f in res.checks if f is not None]
    assert not failed, failed
    assert res.datapath.qemu == "stock"
    assert res.guest.features["RSS"]
    assert not res.guest.features["HASH_REPORT"]
    assert not res.vhost.kernel_offers_hash_report
    assert not res.vhost.acked_hash_report and res.vhost.started
    assert res.oracle.queues == "table"  # RSS: every queue judged by the table
    cmp = res.comparison
    assert cmp.ok and not cmp.check_hash
    assert all(v.observed for v in cmp.verdicts)


async def test_load_phase_judges_every_record(tmp_path):
    """The datapath bench's load phase, small: the corpus offered at a fixed rate, every
    record the guest traces judged against the oracle.  CPU accounting must put the work
    where the datapath does it: vhost_net's worker thread.  (Not the vhost=off rows here:
    sustained traffic through QEMU's own datapath is what most often takes the lab
    kernel down under TCG's emulated SVM; hashlab bench datapath retries those.)"""
    sc = load_scenario(SCENARIOS_DIR / "bench-ebpf-vhost.yaml")
    sc.load.frames, sc.load.rounds, sc.load.rate = 1200, 1, 4000
    res = await run(sc, tmp_path)
    failed = [(n, f) for n, f in res.checks if f is not None]
    assert not failed, failed
    ld = res.load
    t, r = ld["totals"], ld["rounds"][0]
    assert t["offered"] == 1200 and t["unknown"] == 0 and t["wrong"] == 0
    # every frame is accounted for: received, or dropped by the tap
    assert t["delivered"] + t["tap_tx_dropped"] >= t["offered"] - t["trace_overrun"]
    assert t["right"] == t["delivered"] > 0 and r["delivered_fps"] > 0
    assert r["rx_span_seconds"] > 0
    cpu = r["qemu_cpu_seconds"]
    assert cpu["vcpu"] > 0, cpu  # QEMU names its threads (debug-threads=on)
    if sc.datapath.vhost:
        assert cpu["vhost"] > 0, cpu
    else:
        assert cpu["vhost"] == 0, cpu
    assert ld["qemu_peak_rss_kib"] > 10_000
