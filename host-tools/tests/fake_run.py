"""A scenario run without QEMU: the orchestrator over a scripted guest, tap and host.

The fakes answer what the orchestrator asks (agent verbs, QMP, tap stats) with fixed,
made-up values, so that ``results.json`` and the summary of a run depend only on the
scenario: tests pin the JSON the orchestrator writes against a copy kept in
``data/orchestrator/`` (written by the code before the step refactor).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from qemu.qmp import ExecuteError
from qemu.qmp.message import Message
from qemu.qmp.models import ErrorResponse

from hashlab.build.guest import GuestImage
from hashlab.host import datapath, hashquery
from hashlab.host.machine import AgentReply, QemuExited, QemuStartError  # noqa: F401
from hashlab.oracle import rss
from hashlab.run import guest as guestmod
from hashlab.run import load, steps
from hashlab.run.scenario import parse_scenario

GOLDEN = Path(__file__).parent / "data" / "orchestrator"
FEATURES = {guestmod.VIRTIO_NET_F_CTRL_VQ, guestmod.VIRTIO_NET_F_MQ, guestmod.VIRTIO_F_VERSION_1,
            guestmod.VIRTIO_NET_F_HASH_REPORT, guestmod.VIRTIO_NET_F_RSS}
QEMU_FEATURES = ["VIRTIO_NET_F_RSS: RSS", "VIRTIO_NET_F_HASH_REPORT: hash report",
                 "VIRTIO_NET_F_MQ: mq"]


class FakeGuest:
    """The guest's driver state, changed by the ethtool commands it is sent."""

    def __init__(self, frames):
        self.key = rss.MS_KEY
        self.table = [0, 1] * 64
        self.combined = 1
        self.rxhash = True
        self.flows = {f: "sdfn" for f in guestmod.FLOW_TYPES}
        self.frames = frames
        self.rx_packets = 0
        self.pending: list[dict] = []

    def run(self, verb: str, args: tuple[str, ...]) -> list[dict]:
        if verb == "info":
            bits = "".join("1" if i in FEATURES else "0" for i in range(64))
            return [{"kind": "info", "features": bits}]
        if verb == "stats":
            return [{"kind": "stats", "rx_packets": self.rx_packets, "rx_dropped": 1,
                     "rx_length_errors": 0}]
        if verb == "collect":
            recs, self.pending = self.pending, []
            return [{"kind": "rx", **r} for r in recs] + [{"kind": "trace_stats", "overrun": 0}]
        if verb == "ethtool":
            return [{"kind": "output", "out": ln} for ln in self.ethtool(list(args))]
        return []

    def ethtool(self, a: list[str]) -> list[str]:
        if a[0] == "-L":
            self.combined = int(a[3])
        elif a[0] == "-K":
            self.rxhash = a[3] == "on"
        elif a[0] == "-N":
            self.flows[a[3]] = a[4]
        elif a[0] == "-x":
            rows = [f"{i:5}: " + " ".join(f"{q:5}" for q in self.table[i:i + 8])
                    for i in range(0, len(self.table), 8)]
            return ([f"RX flow hash indirection table for eth0 with {self.combined} RX ring(s):"]
                    + rows + ["RSS hash key:", ":".join(f"{b:02x}" for b in self.key)])
        elif a[0] == "-l":
            return ["Current hardware settings:", f"Combined:\t{self.combined}"]
        elif a[0] == "-k":
            return [f"receive-hashing: {'on' if self.rxhash else 'off'}"]
        elif a[0] == "-n":
            f = self.flows[a[3]]
            return (["IP SA", "IP DA"] if f != "none" else []) + \
                (["L4 bytes 0 & 1 [TCP/UDP src port]", "L4 bytes 2 & 3 [TCP/UDP dst port]"]
                 if f == "sdfn" else [])
        return []

    def receive(self, frames: list[bytes]) -> None:
        """Each frame arrives on queue 0 with a made-up hash (a few of them right)."""
        self.rx_packets += len(frames)
        for i, data in enumerate(frames):
            self.pending.append({"len": len(data) - 14, "hash": f"{0x1000 + i:#x}",
                                 "l4_hash": i % 2, "queue": 0})


class FakeTap:
    """A tap that counts; frames sent go straight to the current fake guest."""

    guest: FakeGuest | None = None
    created: list[str] = []
    deleted: list[str] = []

    def __init__(self, queues: int = 1, name: str | None = None):
        self.queues = queues
        self.n = 0
        self.name = ""
        self.fds = [10 + i for i in range(queues)]

    def _new(self):
        self.n += 1
        self.name = f"hlfake{self.n}"
        FakeTap.created.append(self.name)

    def __enter__(self):
        self._new()
        return self

    def __exit__(self, *exc):
        FakeTap.deleted.append(self.name)

    def recreate(self):
        FakeTap.deleted.append(self.name)
        self._new()
        return self

    def netdev_arg(self, netdev_id="net0", extra=""):
        return f"tap,id={netdev_id},fds={':'.join(map(str, self.fds))}" + (f",{extra}" if extra else "")

    def release(self):
        pass

    def stats(self):
        return {"tx_dropped": 0}

    def send(self, frames, batch=16, pause=0.02):
        frames = list(frames)
        FakeTap.guest.receive(frames)
        return len(frames)

    def send_until(self, stop, frames, pause=0.0):
        stop.wait(5)
        return 7


class FakeProc:
    pid = 0  # no /proc/0/fd: no vhost-net fds


class FakeMachine:
    """A Machine whose guest is a FakeGuest; START_FAILURES boots fail first."""

    start_failures: list[type] = []
    closed: list[bool] = []

    def __init__(self, cfg):
        self.cfg = cfg
        self.cmdline = ["qemu-system-x86_64", "-name", cfg.name]
        self.proc = FakeProc()
        self.ready_info = {"kernel": "6.12.99-fake"}
        self.guest = None
        self.events = []

    async def start(self):
        log = Path(self.cfg.log_path)
        log.write_text("booting\nqemu-system-x86_64: warning: fake warning\n"
                       "qemu-system-x86_64: warning: fake warning\n")
        if FakeMachine.start_failures:
            cls = FakeMachine.start_failures.pop(0)
            raise cls("fake failure", self.cmdline, log)
        self.guest = FakeTap.guest = FakeGuest(None)

    async def close(self, graceful=True):
        FakeMachine.closed.append(graceful)

    async def qmp_cmd(self, cmd, **args):
        if cmd == hashquery.COMMAND:  # stock QEMU: no such command
            raise ExecuteError(ErrorResponse({"error": {"class": "CommandNotFound",
                                                        "desc": "not found"}}),
                               Message({"execute": cmd}), Message({}))
        if cmd == "x-query-virtio":
            return [{"name": "virtio-net", "path": f"/machine/peripheral/{steps.NIC_ID}/"
                                                   "virtio-backend"}]
        feats = {"dev-features": QEMU_FEATURES}
        return {"guest-features": feats, "host-features": feats, "vhost-started": False}

    async def agent(self, verb, *args, timeout=None):
        return AgentReply(1, 0, self.guest.run(verb, args))


async def fake_load_run(vm, tap, frames, count, rounds, rate, sent, check_hash, pid, echo=print):
    return {"frames_per_round": count, "rate": rate,
            "rounds": [{"wrong_fields": {"hash": 1}, "offered_fps": 10.0}],
            "median": {"offered_fps": 10.0, "delivered_fps": 9.0, "right_fps": 8.0},
            "totals": {"delivered": count, "right": count - 1, "wrong": 1, "unknown": 0,
                       "tap_tx_dropped": 0, "guest_rx_dropped": 0},
            "sender_bound_rounds": 0, "qemu_peak_rss_kib": 1234}


def install(monkeypatch, tmp_path: Path) -> None:
    """Replace QEMU, the tap, the guest image and the host probes with the fakes."""
    image = GuestImage(kernel=tmp_path / "bzImage", initrd=tmp_path / "initrd", key="fakekey",
                       kernel_version="6.12.0-fake", modules=("virtio_net",))
    monkeypatch.setattr(steps, "Machine", FakeMachine)
    monkeypatch.setattr(steps, "Tap", FakeTap)
    monkeypatch.setattr(steps, "build_guest", lambda k: image)
    monkeypatch.setattr(load, "run", fake_load_run)
    monkeypatch.setattr(steps, "load_factor", lambda: 1.0)
    monkeypatch.setattr("hashlab.retries.record", lambda what, detail: None)
    for name, value in {"kernel_has_series": False, "running_design": "stock", "in_lab": False,
                        "qemu_version": "10.0.99", "kernel_release": "6.12.0-host",
                        "kvm_usable": False}.items():
        monkeypatch.setattr(datapath, name, lambda *a, v=value, **k: v)
    monkeypatch.setattr(guestmod, "wait_rx", fake_wait_rx)
    FakeTap.created, FakeTap.deleted, FakeMachine.closed = [], [], []
    FakeMachine.start_failures = []


async def fake_wait_rx(vm, baseline, n_sent, timeout, settle=0.5):
    return vm.guest.rx_packets - baseline


SCENARIOS = {
    # RSS with reconfiguration and load: most of the JSON's fields
    "reconfigure": {
        "name": "fake-reconfigure", "guest": {"kernel": "debian", "queues": 2, "key": "ms",
                                              "table": "equal"},
        "datapath": {"qemu": "stock", "vhost": "off", "queues": 2,
                     "device": {"rss": "on", "hash": "on"}, "behaviour": "qemu-software"},
        "corpus": {"seed": 3, "slices": ["ipv4-tcp", "non-ip"]},
        "reconfigure": {"during_traffic": True,
                        "steps": [{"key": "random:8", "table": [1, 0]},
                                  {"flow_hash": {"tcp4": "sd"}}, {"rxhash": False}]},
        "load": {"frames": 50, "rounds": 1},
        "expect": {"rss_negotiated": True, "hash_report_negotiated": True},
    },
    # vhost expected but not running: the vhost check fails, with every reason
    "vhost": {
        "name": "fake-vhost", "guest": {"kernel": "debian", "queues": 1},
        "datapath": {"qemu": "stock", "vhost": "on", "queues": 1,
                     "device": {"rss": "on", "hash": "on"}},
        "corpus": {"seed": 1, "slices": ["ipv4-udp"]},
        "expect": {"rss_negotiated": False, "hashes": "none", "queues": "any"},
    },
}


def scenario(which: str):
    return parse_scenario(json.loads(json.dumps(SCENARIOS[which])), f"<fake {which}>")


def normalise(doc, out: Path):
    """DOC with the run's timings and the output directory replaced by placeholders."""
    text = json.dumps(doc, sort_keys=True).replace(str(out), "<out>")
    text = re.sub(r'"(seconds|boot_seconds)": [0-9.]+', r'"\1": 0', text)
    text = re.sub(r'"qemu_binary": "[^"]*"', '"qemu_binary": "<qemu>"', text)
    return json.loads(text)


def normalise_summary(text: str, out: Path) -> str:
    text = text.replace(str(out), "<out>")
    text = re.sub(r"in [0-9.]+s", "in 0s", text)
    return text
