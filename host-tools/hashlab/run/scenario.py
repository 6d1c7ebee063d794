"""Scenario files: what to boot, how to configure the guest, what to send, what to expect.

A scenario is a YAML mapping, validated strictly (an unknown or mistyped field is a
``UsageError`` naming the file and the field)::

    name: software-rss                # [a-z0-9._-]+, names results/<name>/
    description: free text
    guest:
      kernel: debian                  # versions.env GUEST_KERNEL_PKG, deb:PKG, lab, or a bzImage
      rss_key_quirk: auto             # auto | off | misaligned (see hashlab.guest)
      queues: 2                       # ethtool -L eth0 combined N (default: datapath.queues)
      rxhash: true                    # ethtool -K eth0 rxhash on|off
      key: ms                         # ms | hex (6d5a.. or 6d:5a:..) | random:SEED | driver
      table: equal                    # equal | equal:N | [w0, w1, ...] (weights) | driver
      flow_hash:                      # ethtool -N eth0 rx-flow-hash FLOW FIELDS, in order
        tcp4: sdfn                    # FLOW: tcp4 udp4 tcp6 udp6; FIELDS: sdfn | sd
      cpus: 2                         # default: 2, but 1 under KVM in the lab VM (nested
                                      # KVM under TCG loses IPIs between guest vCPUs)
      memory: 512M
    datapath:
      qemu: stock                     # stock (= host: Debian's /usr/bin/qemu-system-x86_64),
                                      # patched (the cached `hashlab build qemu`), or a path
      vhost: "off"                    # on | off: -netdev tap,vhost=... (vhost_net)
      where: host                     # host (this machine, TCG) | lab (inside the lab VM,
                                      # KVM: `hashlab run` boots the lab VM for it)
      design: progtype                # where: lab only: which lab kernel (hashlab.designs:
                                      # stock | progtype; default progtype).  On the host the
                                      # kernel is the host's own: no design field (it is
                                      # whatever the host runs, probed at run time)
      accel: auto                     # auto (kvm in the lab, tcg on the host) | kvm | tcg
      queues: 2                       # tap queues = the device's queue pairs
      netdev: {}                      # extra -netdev tap options
      device: {rss: "on", hash: "on"} # extra -device virtio-net-pci options (patched QEMU,
                                      # vhost=on, hash=on: vhost-hash-report defaults to on)
      behaviour: auto                 # oracle model: spec | qemu-software | qemu-ebpf | auto
                                      # (auto: for patched QEMU, the running kernel's
                                      # design's behaviour: spec on progtype, where its eBPF
                                      # program hashes; qemu-software otherwise)
    corpus:
      seed: 0
      slices: all                     # or a list of slice names
    reconfigure:                      # optional: RSS reconfigured between batches of traffic
      during_traffic: true            # keep filler frames flowing while the guest reconfigures
      steps:                          # one batch (the whole corpus selection) per step, after
        - {key: random:2, table: [1, 3], flow_hash: {tcp4: sd}, rxhash: true, queues: 2}
    expect:
      rss_negotiated: true
      hash_report_negotiated: true
      hash_types: tcpv4,udpv4,...     # what the guest should end up with (optional)
      hashes: oracle                  # oracle | none (the guest must see no hash at all)
      queues: auto                    # auto | table | hash | any: how the receive queue is
                                      # chosen (table: RSS indirection; hash: (hash & 0xffff)
                                      # mod active queues, hash reporting without RSS; any:
                                      # not checked). auto: table with RSS, hash without RSS on
                                      # a spec (eBPF) datapath, else any
      vhost: auto                     # true | false | auto (= datapath.vhost): vhost_net must be
                                      # running (QMP vhost-started, /dev/vhost-net fds)
      mechanism: ebpf-report/vnet-hash  # what QEMU's x-query-virtio-net-hash must say
                                      # once the guest configured the device: none |
                                      # software | ebpf | ebpf-report | tun (ebpf ones
                                      # optionally /steering | /vnet-hash | /kfunc), or
                                      # absent (a QEMU without the query).  Default: not
                                      # checked; the device's key, table and types are
                                      # checked against the oracle's whenever QEMU answers
      arrive: {truncated: any}        # per slice: true | false | any (default true)
      known_divergences:              # corpus description (without " #n") -> reason:
        "ipv6 AH tcp": "..."          # pinned mismatches; a pin that matches fails
    load:                             # optional: a throughput phase after the checked batches
      frames: 20000                   # the corpus selection, cycled, written to the tap
      rate: 2000                      # offered frames per second (bursts of 16); 0: unpaced
      rounds: 3                       # repeated; every received record is judged (hashlab.run.load)
    timeouts: {boot: 180, command: 60, shutdown: 30}   # seconds at idle, scaled by load
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import designs
from ..host import hashquery
from ..oracle import rss
from ..errors import UsageError
from ..host.qemu_process import HOST_QEMU

FLOWS = ("tcp4", "udp4", "tcp6", "udp6")
FLOW_FIELDS = ("sdfn", "sd")
ARRIVE = (True, False, "any")
RSS_KEY_QUIRKS = ("auto", "off", "misaligned")
RESERVED_DEVICE_OPTS = {"id", "netdev", "mac", "vectors"}
RESERVED_NETDEV_OPTS = {"id", "fds", "fd", "ifname", "queues", "script", "downscript"}


@dataclass
class GuestSpec:
    kernel: str = "debian"
    queues: int | None = None
    rxhash: bool = True
    key: str = "ms"
    table: str | list[int] = "equal"
    flow_hash: dict[str, str] = field(default_factory=dict)
    cpus: int | None = None  # None: 2, or 1 under KVM in the lab VM (resolved_cpus)
    memory: str = "512M"
    rss_key_quirk: str = "auto"

    def resolved_cpus(self, accel: str) -> int:
        if self.cpus is not None:
            return self.cpus
        return 1 if accel == "kvm" else 2

    def key_bytes(self) -> bytes | None:
        """The key to program, or None to keep the driver's (random) one."""
        k = self.key
        if k == "driver":
            return None
        if k == "ms":
            return rss.MS_KEY
        if k.startswith("random:"):
            seed = k.split(":", 1)[1]
            return hashlib.sha256(f"hashlab-key:{seed}".encode()).digest()[:20] + \
                hashlib.sha256(f"hashlab-key2:{seed}".encode()).digest()[:20]
        return rss.parse_key(k)


# plus "host" (= stock) and paths; progtype-only: the patched QEMU before its kfunc patch
QEMU_KINDS = ("stock", "patched", "progtype-only")
WHERE = ("host", "lab")
ACCELS = ("auto", "kvm", "tcg")
QUEUE_MODELS = ("auto", "table", "hash", "any")
HASH_MODELS = ("oracle", "none")


@dataclass
class DatapathSpec:
    qemu: str = "stock"  # stock | patched | progtype-only | a path ("host" is stock)
    queues: int = 2
    netdev: dict[str, str] = field(default_factory=lambda: {"vhost": "off"})
    device: dict[str, str] = field(default_factory=lambda: {"mq": "on", "rss": "on", "hash": "on"})
    behaviour: str = "auto"
    where: str = "host"
    accel: str = "auto"
    design: str | None = None  # where: lab: the lab kernel's design; None: the host's kernel

    @property
    def vhost(self) -> bool:
        return self.netdev.get("vhost", "off") == "on"

    @property
    def qemu_kind(self) -> str:
        """stock, patched, progtype-only, or custom (a path)."""
        return self.qemu if self.qemu in QEMU_KINDS else "custom"

    @property
    def qemu_binary(self) -> str:
        """The QEMU to run; for ``patched`` the cached build (MissingToolError if not built)."""
        if self.qemu == "stock":
            return HOST_QEMU
        if self.qemu in ("patched", "progtype-only"):
            from ..host.datapath import patched_qemu

            return str(patched_qemu(self.qemu))
        return self.qemu

    @property
    def patched(self) -> bool:
        """One of the patched QEMU's builds (with the vhost-hash-report property)."""
        return self.qemu in ("patched", "progtype-only")

    def resolved_accel(self, in_lab: bool) -> str:
        if self.accel != "auto":
            return self.accel
        return "kvm" if in_lab else "tcg"

    def resolved_behaviour(self, running: str | designs.Design) -> str:
        """The oracle model on the RUNNING kernel's design; ``auto``: what the patched
        QEMU's guest sees on that design (spec where its eBPF program hashes), QEMU's
        software path for the others."""
        if self.behaviour != "auto":
            return self.behaviour
        if self.qemu == "patched":
            return designs.get(running).behaviour
        if self.qemu == "progtype-only":  # its eBPF program hashes on progtype alone
            return "spec" if designs.get(running).name == "progtype" else "qemu-software"
        return "qemu-software"


@dataclass
class CorpusSpec:
    seed: int = 0
    slices: list[str] | None = None  # None = all


@dataclass
class ExpectSpec:
    rss_negotiated: bool | None = None
    hash_report_negotiated: bool | None = None
    hash_types: int | None = None
    hashes: str = "oracle"
    queues: str = "auto"
    vhost: bool | None = None  # None: as datapath.vhost
    mechanism: str | None = None  # x-query-virtio-net-hash's label; None: not checked
    arrive: dict[str, Any] = field(default_factory=dict)
    known_divergences: dict[str, str] = field(default_factory=dict)

    def arrival(self, slice_: str) -> bool | str:
        return self.arrive.get(slice_, True)


@dataclass
class ReconfigStep:
    """One reconfiguration of the guest between two batches of traffic."""

    key: str | None = None
    table: str | list[int] | None = None
    flow_hash: dict[str, str] = field(default_factory=dict)
    rxhash: bool | None = None
    queues: int | None = None

    def key_bytes(self) -> bytes | None:
        return None if self.key is None else GuestSpec(key=self.key).key_bytes()

    def describe(self) -> str:
        parts = []
        if self.queues is not None:
            parts.append(f"combined {self.queues}")
        if self.rxhash is not None:
            parts.append(f"rxhash {'on' if self.rxhash else 'off'}")
        if self.key is not None:
            parts.append(f"key {self.key}")
        if self.table is not None:
            parts.append(f"table {self.table}")
        parts += [f"{f} {v}" for f, v in self.flow_hash.items()]
        return ", ".join(parts) or "nothing"


@dataclass
class ReconfigSpec:
    steps: list[ReconfigStep] = field(default_factory=list)
    during_traffic: bool = True


@dataclass
class LoadSpec:
    frames: int = 0  # 0: no load phase
    rounds: int = 1
    rate: int = 0  # offered frames per second; 0: as fast as the sender can


@dataclass
class Scenario:
    name: str
    path: Path | None = None
    description: str = ""
    guest: GuestSpec = field(default_factory=GuestSpec)
    datapath: DatapathSpec = field(default_factory=DatapathSpec)
    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    expect: ExpectSpec = field(default_factory=ExpectSpec)
    reconfigure: ReconfigSpec = field(default_factory=ReconfigSpec)
    load: LoadSpec = field(default_factory=LoadSpec)
    timeouts: dict[str, float] = field(default_factory=lambda: {"boot": 180.0, "command": 60.0,
                                                                  "shutdown": 30.0})

    @property
    def guest_queues(self) -> int:
        return self.guest.queues or self.datapath.queues

    @property
    def where(self) -> str:
        return self.datapath.where

    @property
    def expect_vhost(self) -> bool:
        return self.datapath.vhost if self.expect.vhost is None else self.expect.vhost

    @property
    def rss_on(self) -> bool:
        """The device offers RSS (virtio-net-pci rss=on)."""
        return self.datapath.device.get("rss", "off") == "on"


# --------------------------------------------------------------------------- validation


class _V:
    """Field-by-field validation with errors that name the file and the field path."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, path: str, msg: str):
        raise UsageError(f"{self.where}: field '{path}': {msg}")

    def mapping(self, path: str, value: Any, allowed: set[str], required: set[str] = frozenset()):
        if not isinstance(value, dict):
            self.fail(path or "<top>", f"must be a mapping, not {type(value).__name__}")
        for k in value:
            if not isinstance(k, str) or k not in allowed:
                sub = f"{path}.{k}" if path else str(k)
                self.fail(sub, f"unknown field (valid: {', '.join(sorted(allowed))})")
        for k in required:
            if k not in value:
                self.fail(f"{path}.{k}" if path else k, "required field missing")
        return value

    def typed(self, path: str, value: Any, types, what: str):
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            self.fail(path, f"must be {what}, not a boolean")
        if not isinstance(value, types):
            self.fail(path, f"must be {what}, not {type(value).__name__} {value!r}")
        return value

    def integer(self, path: str, value: Any, lo: int, hi: int) -> int:
        self.typed(path, value, int, "an integer")
        if not lo <= value <= hi:
            self.fail(path, f"{value} out of range [{lo}, {hi}]")
        return value

    def options(self, path: str, value: Any, reserved: set[str]) -> dict[str, str]:
        self.mapping(path, value, set(value) if isinstance(value, dict) else set())
        out = {}
        for k, v in value.items():
            if k in reserved:
                self.fail(f"{path}.{k}", f"is set by hashlab (reserved: {', '.join(sorted(reserved))})")
            if isinstance(v, bool):  # YAML 1.1 reads on/off as booleans
                v = "on" if v else "off"
            if not isinstance(v, (str, int)) or not re.fullmatch(r"[A-Za-z0-9_.:/+-]+", str(v)):
                self.fail(f"{path}.{k}", f"bad option value {v!r}")
            out[k] = str(v)
        return out


def _reconfig_step(v: _V, sp: str, st: Any, sc: Scenario) -> ReconfigStep:
    st = v.mapping(sp, st, {"key", "table", "flow_hash", "rxhash", "queues"})
    step = ReconfigStep()
    if "queues" in st:
        step.queues = v.integer(f"{sp}.queues", st["queues"], 1, sc.datapath.queues)
    if "rxhash" in st:
        step.rxhash = v.typed(f"{sp}.rxhash", st["rxhash"], bool, "true or false")
    if "key" in st:
        step.key = v.typed(f"{sp}.key", st["key"], str, "a key (ms, hex, random:SEED)")
        try:
            kb = step.key_bytes()
        except ValueError as err:
            v.fail(f"{sp}.key", str(err))
        if kb is None or len(kb) != 40:
            v.fail(f"{sp}.key", "needs a 40-byte key (ms, hex or random:SEED)")
    if "table" in st:
        step.table = _table(v, f"{sp}.table", st["table"], step.queues or sc.guest_queues)
    if "flow_hash" in st:
        step.flow_hash = _flow_hash(v, f"{sp}.flow_hash", st["flow_hash"])
    return step


def parse_reconfig_step(data: Any, sc: Scenario, where: str = "<step>") -> ReconfigStep:
    """One ``reconfigure`` step (a mapping as in the scenario file) for scenario SC."""
    return _reconfig_step(_V(where), "step", data, sc)


def parse_scenario(data: Any, where: str = "<scenario>", path: Path | None = None) -> Scenario:
    from ..frames import packets  # the corpus module; imported late (it pulls in scapy)

    v = _V(where)
    top = v.mapping("", data, {"name", "description", "guest", "datapath", "corpus", "expect",
                               "reconfigure", "load", "timeouts"}, {"name"})
    name = v.typed("name", top["name"], str, "a string")
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
        v.fail("name", f"{name!r} must match [a-z0-9][a-z0-9._-]*")
    sc = Scenario(name=name, path=path)
    sc.description = v.typed("description", top.get("description", ""), str, "a string")

    # datapath first: guest.queues defaults to it
    dp = v.mapping("datapath", top.get("datapath", {}) or {},
                   {"qemu", "queues", "netdev", "device", "behaviour", "vhost", "where", "accel",
                    "design"})
    d = sc.datapath
    if "qemu" in dp:
        q = v.typed("datapath.qemu", dp["qemu"], str, "stock, patched or a path")
        d.qemu = "stock" if q == "host" else q
        if d.qemu not in QEMU_KINDS and not Path(d.qemu).is_file():
            v.fail("datapath.qemu", f"{d.qemu} is not stock, patched or an existing file")
    if "queues" in dp:
        d.queues = v.integer("datapath.queues", dp["queues"], 1, 16)
    if "netdev" in dp:
        d.netdev = {"vhost": "off", **v.options("datapath.netdev", dp["netdev"], RESERVED_NETDEV_OPTS)}
    if "vhost" in dp:
        vh = dp["vhost"]
        if isinstance(vh, bool):  # YAML 1.1 reads on/off as booleans
            vh = "on" if vh else "off"
        if vh not in ("on", "off"):
            v.fail("datapath.vhost", f"{vh!r} (valid: on, off)")
        if "netdev" in dp and "vhost" in dp["netdev"] and d.netdev["vhost"] != vh:
            v.fail("datapath.vhost", f"{vh} contradicts datapath.netdev.vhost={d.netdev['vhost']}")
        d.netdev["vhost"] = vh
    if d.netdev.get("vhost") not in ("on", "off"):
        v.fail("datapath.netdev.vhost", f"{d.netdev.get('vhost')!r} (valid: on, off)")
    if "device" in dp:
        d.device = {"mq": "on", **v.options("datapath.device", dp["device"], RESERVED_DEVICE_OPTS)}
    if d.queues > 1 and d.device.get("mq") != "on":
        v.fail("datapath.device.mq", "must be on with more than one queue")
    # The lab's QEMU asks for hash reports with vhost, and refuses to start when the host
    # cannot give them (qemu/patches: vhost-hash-report, off unless asked for).
    if d.patched and d.netdev.get("vhost") == "on" and d.device.get("hash") == "on":
        d.device.setdefault("vhost-hash-report", "on")
    if "behaviour" in dp:
        d.behaviour = v.typed("datapath.behaviour", dp["behaviour"], str, "a string")
        if d.behaviour not in rss.BEHAVIOURS + ("auto",):
            v.fail("datapath.behaviour", f"{d.behaviour!r} (valid: auto, {', '.join(rss.BEHAVIOURS)})")
    if "where" in dp:
        d.where = v.typed("datapath.where", dp["where"], str, "host or lab")
        if d.where not in WHERE:
            v.fail("datapath.where", f"{d.where!r} (valid: {', '.join(WHERE)})")
    if "accel" in dp:
        d.accel = v.typed("datapath.accel", dp["accel"], str, "auto, kvm or tcg")
        if d.accel not in ACCELS:
            v.fail("datapath.accel", f"{d.accel!r} (valid: {', '.join(ACCELS)})")
    if "design" in dp:
        d.design = v.typed("datapath.design", dp["design"], str, "a design name")
        if d.design not in designs.NAMES:
            v.fail("datapath.design", f"{d.design!r} (valid: {', '.join(designs.NAMES)})")
        if d.where != "lab":
            v.fail("datapath.design", "applies to where: lab only (on the host the kernel "
                   "is the host's own)")
    elif d.where == "lab":
        d.design = designs.DEFAULT

    g = v.mapping("guest", top.get("guest", {}) or {},
                  {"kernel", "queues", "rxhash", "key", "table", "flow_hash", "cpus", "memory",
                   "rss_key_quirk"})
    gs = sc.guest
    if "kernel" in g:
        gs.kernel = v.typed("guest.kernel", g["kernel"], str,
                            "'debian', 'deb:linux-image-...', 'lab' or a bzImage path")
        if gs.kernel.startswith("deb:"):
            if not re.fullmatch(r"deb:linux-image-[A-Za-z0-9.+~-]+", gs.kernel):
                v.fail("guest.kernel", f"{gs.kernel!r} is not deb:linux-image-...")
        elif gs.kernel not in ("debian", "lab") and not Path(gs.kernel).is_file():
            v.fail("guest.kernel", f"{gs.kernel} does not exist")
    if "queues" in g:
        gs.queues = v.integer("guest.queues", g["queues"], 1, d.queues)
    if "rxhash" in g:
        gs.rxhash = v.typed("guest.rxhash", g["rxhash"], bool, "true or false")
    if "key" in g:
        gs.key = v.typed("guest.key", g["key"], str, "a string (ms, hex, random:SEED, driver)")
        try:
            kb = gs.key_bytes()
        except ValueError as e:
            v.fail("guest.key", str(e))
        if kb is not None and len(kb) != 40:
            v.fail("guest.key", f"the virtio-net device takes a 40-byte key, not {len(kb)}")
    if "table" in g:
        gs.table = _table(v, "guest.table", g["table"], sc.guest_queues)
    if "flow_hash" in g:
        gs.flow_hash = _flow_hash(v, "guest.flow_hash", g["flow_hash"])
    if "rss_key_quirk" in g:
        gs.rss_key_quirk = v.typed("guest.rss_key_quirk", g["rss_key_quirk"], str, "a string")
        if gs.rss_key_quirk not in RSS_KEY_QUIRKS:
            v.fail("guest.rss_key_quirk", f"{gs.rss_key_quirk!r} (valid: {', '.join(RSS_KEY_QUIRKS)})")
    if "cpus" in g:
        gs.cpus = v.integer("guest.cpus", g["cpus"], 1, 8)
    if "memory" in g:
        gs.memory = v.typed("guest.memory", g["memory"], str, "a size like 512M")
        if not re.fullmatch(r"\d+[MG]", gs.memory):
            v.fail("guest.memory", f"{gs.memory!r} is not a size like 512M")

    c = v.mapping("corpus", top.get("corpus", {}) or {}, {"seed", "slices"})
    if "seed" in c:
        sc.corpus.seed = v.integer("corpus.seed", c["seed"], 0, 2**32)
    if "slices" in c:
        s = c["slices"]
        if s == "all":
            sc.corpus.slices = None
        elif isinstance(s, list) and s:
            for i, x in enumerate(s):
                if x not in packets.SLICES:
                    v.fail(f"corpus.slices[{i}]", f"unknown slice {x!r} (valid: {', '.join(packets.SLICES)})")
            sc.corpus.slices = list(s)
        else:
            v.fail("corpus.slices", "must be 'all' or a non-empty list of slice names")

    e = v.mapping("expect", top.get("expect", {}) or {},
                  {"rss_negotiated", "hash_report_negotiated", "hash_types", "arrive",
                   "known_divergences", "hashes", "queues", "vhost", "mechanism"})
    for k in ("rss_negotiated", "hash_report_negotiated"):
        if k in e:
            setattr(sc.expect, k, v.typed(f"expect.{k}", e[k], bool, "true or false"))
    if "vhost" in e and e["vhost"] != "auto":
        sc.expect.vhost = v.typed("expect.vhost", e["vhost"], bool, "true, false or auto")
    if "mechanism" in e:
        m = v.typed("expect.mechanism", e["mechanism"], str, "a hash mechanism")
        if m != "absent" and not hashquery.valid_label(m):
            v.fail("expect.mechanism", f"{m!r} (valid: absent, or one of "
                   f"{', '.join(hashquery.MECHANISMS)}, ebpf ones optionally /PROGRAM: "
                   f"{', '.join(hashquery.PROGRAMS)})")
        sc.expect.mechanism = m
    if "hashes" in e:
        sc.expect.hashes = v.typed("expect.hashes", e["hashes"], str, "oracle or none")
        if sc.expect.hashes not in HASH_MODELS:
            v.fail("expect.hashes", f"{sc.expect.hashes!r} (valid: {', '.join(HASH_MODELS)})")
    if "queues" in e:
        sc.expect.queues = v.typed("expect.queues", e["queues"], str, "a queue model")
        if sc.expect.queues not in QUEUE_MODELS:
            v.fail("expect.queues", f"{sc.expect.queues!r} (valid: {', '.join(QUEUE_MODELS)})")
    if "hash_types" in e:
        ht = v.typed("expect.hash_types", e["hash_types"], (str, int), "a hash type list")
        try:
            sc.expect.hash_types = rss.parse_hash_types(str(ht))
        except ValueError as err:
            v.fail("expect.hash_types", str(err))
    if "arrive" in e:
        arr = v.mapping("expect.arrive", e["arrive"] or {}, set(packets.SLICES))
        for k, val in arr.items():
            if val not in ARRIVE or isinstance(val, int) and not isinstance(val, bool):
                v.fail(f"expect.arrive.{k}", f"{val!r} (valid: true, false, any)")
        sc.expect.arrive = dict(arr)

    if "known_divergences" in e:
        kd = e["known_divergences"] or {}
        groups = {f.desc.rsplit(" #", 1)[0] for f in packets.corpus(sc.corpus.seed)}
        v.mapping("expect.known_divergences", kd, groups | set(kd if isinstance(kd, dict) else ()))
        for k, reason in kd.items():
            if k not in groups:
                v.fail(f"expect.known_divergences.{k}", "no corpus frames have this description")
            if not isinstance(reason, str) or not reason.strip():
                v.fail(f"expect.known_divergences.{k}", "needs a reason (a non-empty string)")
        sc.expect.known_divergences = dict(kd)

    if "reconfigure" in top:
        r = v.mapping("reconfigure", top["reconfigure"] or {}, {"steps", "during_traffic"},
                      {"steps"})
        if "during_traffic" in r:
            sc.reconfigure.during_traffic = v.typed("reconfigure.during_traffic",
                                                    r["during_traffic"], bool, "true or false")
        steps = r["steps"]
        if not isinstance(steps, list) or not steps:
            v.fail("reconfigure.steps", "must be a non-empty list of steps")
        for i, st in enumerate(steps):
            sc.reconfigure.steps.append(_reconfig_step(v, f"reconfigure.steps[{i}]", st, sc))

    if "load" in top:
        ld = v.mapping("load", top["load"] or {}, {"frames", "rounds", "rate"}, {"frames"})
        sc.load.frames = v.integer("load.frames", ld["frames"], 1, 10_000_000)
        sc.load.rounds = v.integer("load.rounds", ld.get("rounds", 1), 1, 100)
        sc.load.rate = v.integer("load.rate", ld.get("rate", 0), 0, 10_000_000)

    t = v.mapping("timeouts", top.get("timeouts", {}) or {}, {"boot", "command", "shutdown"})
    for k, val in t.items():
        v.typed(f"timeouts.{k}", val, (int, float), "a number of seconds")
        if not 1 <= val <= 3600:
            v.fail(f"timeouts.{k}", f"{val} out of range [1, 3600]")
        sc.timeouts[k] = float(val)
    return sc


def _table(v: _V, path: str, t: Any, queues: int) -> str | list[int]:
    if isinstance(t, str):
        m = re.fullmatch(r"equal(?::(\d+))?|driver", t)
        if not m:
            v.fail(path, f"{t!r}: use equal, equal:N, driver or a list of weights")
        if m.group(1) is not None and not 1 <= int(m.group(1)) <= queues:
            v.fail(path, f"equal:{m.group(1)} needs 1..{queues} queues")
    elif isinstance(t, list):
        if not t or len(t) > queues:
            v.fail(path, f"needs 1..{queues} weights")
        for i, w in enumerate(t):
            v.integer(f"{path}[{i}]", w, 0, 1 << 16)
        if not any(t):
            v.fail(path, "all weights are zero")
    else:
        v.fail(path, f"must be a string or a list of weights, not {type(t).__name__}")
    return t


def _flow_hash(v: _V, path: str, value: Any) -> dict[str, str]:
    fh = v.mapping(path, value or {}, set(FLOWS))
    for k, val in fh.items():
        if val not in FLOW_FIELDS:
            v.fail(f"{path}.{k}", f"{val!r} (valid: {', '.join(FLOW_FIELDS)})")
    return dict(fh)


def load_scenario(path: str | Path) -> Scenario:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"scenario file {p} not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise UsageError(f"{p}: not valid YAML: {e}") from None
    return parse_scenario(data, str(p), p)


def drop_pins(path: str | Path, groups: set[str]) -> list[str]:
    """Remove the ``expect.known_divergences`` entries for GROUPS from the scenario file
    (line-based, comments elsewhere untouched); returns the groups removed.  When no
    entry is left, the ``known_divergences:`` key and the comment block right above it
    go too.  The result is re-validated; nothing is written if it would not parse."""
    p = Path(path)
    lines = p.read_text().splitlines(keepends=True)
    try:
        k = next(i for i, ln in enumerate(lines) if re.match(r"^\s+known_divergences:\s*(#.*)?$", ln))
    except StopIteration:
        return []
    indent = len(lines[k]) - len(lines[k].lstrip())
    removed: list[str] = []
    keep: list[str] = []
    remaining = 0
    i = k + 1
    entry = re.compile(r"""^\s+(?:"((?:[^"\\]|\\.)*)"|'([^']*)'|([^:#]+?))\s*:\s""")
    while i < len(lines):
        ln = lines[i]
        body = ln.strip()
        if body and not body.startswith("#") and len(ln) - len(ln.lstrip()) <= indent:
            break
        m = entry.match(ln)
        if m:
            g = next(x for x in m.groups() if x is not None)
            if g in groups:
                removed.append(g)
                i += 1
                continue
            remaining += 1
        keep.append(ln)
        i += 1
    head = lines[:k + 1]
    if remaining == 0:
        head = lines[:k]
        while head and head[-1].strip().startswith("#") and \
                len(head[-1]) - len(head[-1].lstrip()) == indent:
            head.pop()
        keep = [ln for ln in keep if ln.strip() and not ln.strip().startswith("#")]
    text = "".join(head + keep + lines[i:])
    load = yaml.safe_load(text)
    parse_scenario(load, str(p), p)
    if removed:
        p.write_text(text)
    return removed
