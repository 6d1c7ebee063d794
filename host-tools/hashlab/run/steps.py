"""The steps of one scenario run, each over the run's environment (``RunEnv``).

A step does one thing and records what it found in ``env.result`` (hashlab.run.result);
a step that changes something (a tap, a VM, filler traffic) registers its undo on
``env.undo`` right after the change, so that whatever fails later, everything made so
far is undone in reverse order.  hashlab.run.orchestrator runs them in sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import retries
from ..build.guest import GuestImage, build_guest
from ..errors import HashlabError
from ..frames import packets
from ..frames.filler import filler_frames
from ..host import datapath, hashquery
from ..host.machine import GuestHang, Machine, MachineConfig, QemuExited, QemuStartError
from ..host.qemu_process import load_factor
from ..host.tap import Tap
from ..oracle import rss
from ..results import report
from . import guest as guestmod
from . import load as loadmod
from .result import (Batch, Datapath, Delivery, GuestAtBoot, GuestConfig, GuestImageInfo,
                     Negotiation, OracleChoice, ReconfigureStep, Retry, RunResult, VhostState)
from .scenario import Scenario

NIC_ID = "nic0"
# Under KVM (in the lab VM, itself under TCG's emulated SVM) the guest gets no PMU: the
# Linux guest's perf MSR writes only add VM exits to a nested setup that is fragile
# enough as it is.
KVM_CPU = "host,pmu=off"
# Under nested KVM a guest boots in 4-10 s, printing all along; a boot that stops
# printing for this long has stalled for good (seen: twice in a row at the same line):
# give up on it and boot again instead of waiting out the whole boot timeout.
BOOT_STALL = 45.0


@dataclass
class Traffic:
    """Counters across the batches: the baselines and what was sent and lost."""

    first_stats: dict  # the guest's counters before the first batch
    tap_stats: dict  # the tap's counters before the first batch
    batch_stats: dict  # the guest's counters before the current batch
    filler: list[bytes]  # frames of lengths the corpus does not use (never judged)
    sent: int = 0
    received: int = 0
    overrun: int = 0


@dataclass
class RunEnv:
    """One run's scenario, resources and results so far; the steps read and fill it."""

    sc: Scenario
    out: Path  # the log and results directory
    echo: Callable[[str], None]
    t0: float
    undo: contextlib.AsyncExitStack
    result: RunResult
    kernel: str | None = None  # the guest kernel, overriding the scenario's
    qemu_bin: str = ""
    image: GuestImage | None = None
    frames: packets.Corpus | None = None
    tap: Tap | None = None
    vm: Machine | None = None
    state: guestmod.GuestState | None = None  # the guest's configuration, read back
    model: guestmod.DriverModel | None = None
    quirk: str = "off"
    traffic: Traffic | None = None
    # The configuration the next batch is judged with (follows every reconfiguration)
    oracle: rss.RssConfig | None = None
    hash_reported: bool = False
    queue_model: str = "any"
    extra_args: list[str] = field(default_factory=list)  # more QEMU arguments (a session's QMP)
    hash_events_seen: int = 0  # vm.events already looked at for VIRTIO_NET_HASH_CHANGED
    checks: list = field(init=False)

    def __post_init__(self):
        self.checks = self.result.checks

    def check(self, name: str, failures: list[str] | str | None) -> None:
        """Record check NAME: passed unless FAILURES (a message or a list of them)."""
        if isinstance(failures, list):
            failures = "; ".join(failures) or None
        self.checks.append((name, failures))

    @property
    def dp(self) -> Datapath:
        return self.result.datapath

    @property
    def pid(self) -> int | None:
        return self.vm.proc.pid if self.vm.proc else None


# --------------------------------------------------------------------------- probes


def _feature_names(feats: dict) -> list[str]:
    return [s.split(":", 1)[0] for s in (feats or {}).get("dev-features", [])]


def qemu_features(status: dict) -> Negotiation:
    """RSS/HASH_REPORT in QEMU's x-query-virtio-status (guest- and host-features)."""
    sides = {}
    for side in ("guest-features", "host-features"):
        names = _feature_names(status.get(side, {}))
        sides[side] = {"RSS": "VIRTIO_NET_F_RSS" in names,
                       "HASH_REPORT": "VIRTIO_NET_F_HASH_REPORT" in names}
    return Negotiation(negotiated=sides["guest-features"], offered=sides["host-features"])


def vhost_fds(pid: int | None) -> int:
    """How many /dev/vhost-net fds process PID holds."""
    if not pid:
        return 0
    n = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/vhost-net":
                    n += 1
            except OSError:
                pass
    except OSError:
        return 0
    return n


def vhost_status(status: dict, pid: int | None) -> VhostState:
    """Is vhost_net moving the packets?  From x-query-virtio-status and QEMU's fds."""
    dev = status.get("vhost-dev")
    acked = _feature_names(dev.get("acked-features", {})) if dev else []
    offered = _feature_names(dev.get("features", {})) if dev else []
    return VhostState(started=bool(status.get("vhost-started")), vhost_dev=dev is not None,
                      fds=vhost_fds(pid), acked_hash_report="VIRTIO_NET_F_HASH_REPORT" in acked,
                      kernel_offers_hash_report="VIRTIO_NET_F_HASH_REPORT" in offered,
                      nvqs=dev.get("nvqs") if dev else None,
                      max_queues=dev.get("max-queues") if dev else None)


def qemu_warnings(log_path: Path) -> list[str]:
    """QEMU's own messages in the VM log (e.g. why hash reporting falls back to software,
    qemu/patches/0005), each once, without the program name."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return []
    seen: dict[str, None] = {}
    for line in text.splitlines():
        m = re.match(r"^\S*qemu-system-x86_64: (.*)$", line.strip())
        if m:
            seen.setdefault(m.group(1).strip(), None)
    return list(seen)


def device_args(sc: Scenario, tap: Tap, mac: str) -> list[str]:
    dp = sc.datapath
    n = dp.queues
    dev = {"mq": "on" if n > 1 else "off", **dp.device}
    devopts = ",".join(f"{k}={v}" for k, v in dev.items())
    netextra = ",".join(f"{k}={v}" for k, v in dp.netdev.items())
    return ["-netdev", tap.netdev_arg("net0", netextra),
            "-device", f"virtio-net-pci,id={NIC_ID},netdev=net0,mac={mac},"
                       f"vectors={2 * n + 2},{devopts}"]


def datapath_info(sc: Scenario, qemu_bin: str) -> Datapath:
    has_series = datapath.kernel_has_series()
    running = datapath.running_design()
    inside = datapath.in_lab()
    return Datapath(
        qemu=sc.datapath.qemu_kind, qemu_binary=qemu_bin,
        qemu_version=datapath.qemu_version(qemu_bin), vhost=sc.datapath.vhost,
        where="lab" if inside else "host", scenario_where=sc.where,
        accel=sc.datapath.resolved_accel(inside), host_kernel=datapath.kernel_release(),
        kernel_has_series=has_series, design=running if inside else None,
        scenario_design=sc.datapath.design, behaviour=sc.datapath.resolved_behaviour(running))


def resolve_queue_model(sc: Scenario, gf: dict[str, bool], behaviour: str,
                        hashing: bool) -> str:
    """How the receive queue is chosen (``expect.queues``; auto: see scenario.py)."""
    if sc.expect.queues != "auto":
        return sc.expect.queues
    if gf["RSS"]:
        # VQ_PAIRS_SET (last MQ command) turns RSS off in QEMU: the tap picks the queue.
        return "table" if hashing else "any"
    if gf["HASH_REPORT"] and behaviour == "spec" and hashing:
        return "hash"
    return "any"


def diagnose_key(cmp: report.Comparison, frames, oracle: rss.RssConfig, quirk: str) -> str | None:
    """If the hashes are wrong, try the known guest-driver key mistakes on them."""
    bad = [v for v in cmp.verdicts if "hash" in v.fields]
    if not bad:
        return None
    alt = "misaligned" if quirk == "off" else "off"
    akey = guestmod.device_key(oracle.key, "misaligned") if alt == "misaligned" \
        else oracle.key[1:] + b"\0"
    aconf = rss.RssConfig(key=akey, hash_types=oracle.hash_types, table=oracle.table,
                          unclassified_queue=oracle.unclassified_queue,
                          behaviour=oracle.behaviour)
    explained = sum(1 for v in bad
                    if f"{aconf.expect(frames.by_id[v.id].data).hash:#010x}" == v.observed["hash"])
    if explained == len(bad):
        return (f"all {len(bad)} hash mismatches match the key {akey.hex()}: the guest "
                f"driver's RSS key quirk is '{alt}', not '{quirk}' "
                f"(set guest.rss_key_quirk, see hashlab.run.guest.MISALIGNED_KEY_RANGES)")
    return None


@contextlib.asynccontextmanager
async def boot_machine(cfg, attempts: int, echo, failures: list[Retry], before_retry=None):
    """``async with boot_machine(...) as vm``: a Machine whose *boot* is retried.

    Nested KVM under TCG (the lab) now and then loses a guest during boot (a reset, or
    a boot that stops printing); a boot that fails before the agent is ready (QEMU gone,
    no agent) is retried up to ATTEMPTS times.  A panic is never retried, nor is anything
    after the boot.  Each failed attempt's log is kept as qemu.attemptN.log and listed in
    FAILURES.  CFG is a MachineConfig or a function returning one (called for every
    attempt, after BEFORE_RETRY).
    """
    make = cfg if callable(cfg) else (lambda: dataclasses.replace(cfg))
    for attempt in range(1, attempts + 1):
        if attempt > 1 and before_retry is not None:
            before_retry()
        c = make()
        log = Path(c.log_path)
        vm = Machine(c)
        try:
            await vm.start()
            break
        except (QemuStartError, GuestHang, QemuExited) as e:
            await vm.close(graceful=False)
            if attempt == attempts:
                raise
            kept = log.with_name(f"{log.stem}.attempt{attempt}{log.suffix}")
            with contextlib.suppress(OSError):
                log.rename(kept)
            first = str(e).splitlines()[0]
            failures.append(Retry(attempt=attempt, error=first, log=str(kept)))
            echo(f"hashlab: boot attempt {attempt} failed ({first[:120]}); retrying")
            retries.record("boot", first)
        except BaseException:
            await vm.close(graceful=False)
            raise
    try:
        yield vm
    except BaseException:
        await vm.close(graceful=False)
        raise
    await vm.close(graceful=True)


# --------------------------------------------------------------------------- steps


def check_datapath(env: RunEnv) -> None:
    """Which QEMU, kernel and accelerator run here; notes where the scenario wants another."""
    sc = env.sc
    env.qemu_bin = sc.datapath.qemu_binary  # MissingToolError: the patched QEMU is not built
    dp = env.result.datapath = datapath_info(sc, env.qemu_bin)
    if sc.where == "lab" and dp.where != "lab":
        env.echo(f"hashlab: note: {sc.name} is meant for the lab VM (where: lab); "
                 f"running it here")
    elif sc.datapath.design and dp.where == "lab" and dp.design != sc.datapath.design:
        env.echo(f"hashlab: note: {sc.name} is meant for the {sc.datapath.design} kernel; "
                 f"this lab VM runs {dp.design}")
    if dp.accel == "kvm" and not datapath.kvm_usable():
        raise HashlabError("datapath needs KVM (-accel kvm) but /dev/kvm is not usable here "
                           "(run it in the lab VM: where: lab)")


def prepare_guest(env: RunEnv) -> None:
    """The guest image (built or cached) and the corpus frames to send."""
    sc = env.sc
    image = env.image = build_guest(env.kernel or sc.guest.kernel)
    env.result.guest_image = GuestImageInfo(key=image.key, kernel=image.kernel_version,
                                            modules=list(image.modules))
    env.frames = datapath.corpus(sc.corpus.seed).select(sc.corpus.slices)
    env.result.reconfigure = []


def _read_warnings_after_vm(env: RunEnv):
    """An undo that reads QEMU's warnings once the VM has gone (its log is complete); a
    run that failed reports none, as it always has."""
    async def read(exc_type, exc, tb):
        if exc_type is None:
            env.result.qemu_warnings = qemu_warnings(env.out / "qemu.log")
    return read


def create_tap(env: RunEnv) -> None:
    """A fresh multi-queue tap, deleted when the run ends."""
    env.tap = env.undo.enter_context(Tap(env.sc.datapath.queues))
    env.result.tap = env.tap.name
    env.undo.push_async_exit(_read_warnings_after_vm(env))


def machine_config(env: RunEnv) -> MachineConfig:
    """The VM for one boot attempt, on the tap's current queues."""
    sc, dp, image = env.sc, env.dp, env.image
    kvm = dp.accel == "kvm"
    return MachineConfig(
        kernel=image.kernel, initrd=image.initrd, name=f"hashlab-{sc.name}",
        qemu=env.qemu_bin, cpus=sc.guest.resolved_cpus(dp.accel),
        memory=sc.guest.memory, accel=dp.accel, cpu=KVM_CPU if kvm else "max",
        extra_args=device_args(sc, env.tap, packets.GUEST_MAC) + env.extra_args,
        pass_fds=tuple(env.tap.fds),
        log_path=env.out / "qemu.log", boot_timeout=sc.timeouts["boot"],
        boot_stall_timeout=BOOT_STALL if kvm else None,
        command_timeout=sc.timeouts["command"], shutdown_timeout=sc.timeouts["shutdown"])


async def boot(env: RunEnv) -> None:
    """Boot the guest (retried when a nested boot is lost); shut down when the run ends."""
    sc, dp, tap = env.sc, env.dp, env.tap
    env.echo(f"hashlab: booting {sc.name} (QEMU {dp.qemu} {dp.qemu_version}, "
             f"{dp.accel}, vhost {'on' if sc.datapath.vhost else 'off'}, tap {tap.name}, "
             f"{sc.datapath.queues} queue(s), load factor {load_factor():.1f})")
    failures = env.result.boot_failures = []
    attempts = 3 if dp.where == "lab" else 2
    # A dead QEMU leaves its queue state (attached or detached) on our tap fds: every
    # boot attempt gets a fresh tap.
    env.vm = await env.undo.enter_async_context(
        boot_machine(lambda: machine_config(env), attempts, env.echo, failures,
                     before_retry=tap.recreate))
    env.result.tap = tap.name
    tap.release()  # QEMU holds the queues now
    env.result.qemu_cmdline = env.vm.cmdline
    env.result.boot_seconds = round(time.monotonic() - env.t0, 1)


async def configure_guest(env: RunEnv) -> None:
    """The driver's defaults, then the scenario's configuration, read back."""
    sc, vm = env.sc, env.vm
    at_boot = await guestmod.readback(vm)
    env.result.guest_at_boot = GuestAtBoot(hash_types=rss.hash_type_names(at_boot.hash_types),
                                           rxhash=at_boot.rxhash, combined=at_boot.combined)
    env.model = guestmod.DriverModel.at_boot(at_boot)
    env.result.configure = await guestmod.configure(vm, sc.guest, sc.guest_queues, env.model)
    gs = env.state = await guestmod.readback(vm)
    env.result.guest = GuestConfig(
        features=gs.feature_view(), key=gs.key.hex(), table=gs.table, flows=gs.flows,
        hash_types=rss.hash_type_names(gs.hash_types), rxhash=gs.rxhash,
        combined=gs.combined, raw=gs.raw)


async def query_device(env: RunEnv) -> None:
    """QEMU's view of the NIC: negotiated features and vhost."""
    status = {}
    for dev in await env.vm.qmp_cmd("x-query-virtio"):
        if dev["name"] == "virtio-net" and f"/{NIC_ID}/" in dev["path"]:
            status = await env.vm.qmp_cmd("x-query-virtio-status", path=dev["path"])
    env.result.negotiation = qemu_features(status)
    env.result.vhost = vhost_status(status, env.pid)


async def check_device_hash(env: RunEnv, when: str) -> None:
    """QEMU's own account of the hashing (x-query-virtio-net-hash) after the guest
    configured the device (WHEN: configured, reconfigure_N): the mechanism as the
    scenario expects, the device's key, types and table as the oracle's (set up from what
    the guest read back), and a VIRTIO_NET_HASH_CHANGED since the last query."""
    res, want = env.result, env.sc.expect.mechanism
    info = await hashquery.query(env.vm, f"/machine/peripheral/{NIC_ID}")
    await asyncio.sleep(0.05)  # an event sent before the answer is in vm.events by now
    name = "device_hash" if when == "configured" else f"device_hash_{when}"
    if info is None:
        res.device_hash = None
        fail = None
        if env.sc.datapath.qemu_kind == "patched":
            fail = f"the patched QEMU has no {hashquery.COMMAND}"
        elif want not in (None, "absent"):
            fail = f"expected mechanism {want}, but this QEMU has no {hashquery.COMMAND}"
        if fail or want:
            env.check(name, fail)
        return
    events = [e for e in env.vm.events[env.hash_events_seen:]
              if e.get("event") == hashquery.EVENT]
    env.hash_events_seen = len(env.vm.events)
    dh = hashquery.DeviceHash.from_qmp(info, events=len(events), when=when)
    res.device_hash = [*(res.device_hash or []), dh]
    fails = dh.differences(env.oracle)
    if want == "absent":
        fails.insert(0, f"expected no {hashquery.COMMAND}, QEMU answers {dh.label}")
    elif want is not None and dh.label != want:
        fails.insert(0, f"mechanism {dh.label}, expected {want}")
    gf = res.guest.features
    if (gf["RSS"] or gf["HASH_REPORT"]) and not (dh.rss_enabled or dh.hash_report_enabled):
        fails.append("the guest negotiated RSS or HASH_REPORT but the device has no "
                     "configuration")
    if (dh.rss_enabled or dh.hash_report_enabled) and not events:
        fails.append(f"no {hashquery.EVENT} since the previous query")
    env.check(name, fails)


def check_negotiation(env: RunEnv) -> None:
    """RSS and HASH_REPORT: the guest and QEMU agree, and as the scenario expects."""
    gf, q = env.result.guest.features, env.result.negotiation
    for feat, want in (("RSS", env.sc.expect.rss_negotiated),
                       ("HASH_REPORT", env.sc.expect.hash_report_negotiated)):
        fail = None
        if gf[feat] != q.negotiated[feat]:
            fail = f"guest says {gf[feat]}, QEMU says {q.negotiated[feat]}"
        elif want is not None and gf[feat] != want:
            fail = f"expected {want}, negotiated {gf[feat]} (QEMU offers {q.offered[feat]})"
        env.check(f"{feat.lower()}_negotiated", fail)


def check_vhost(env: RunEnv) -> None:
    """vhost_net really in use (or really not): no silent fallback to QEMU's own
    datapath, which would make a vhost row test QEMU instead."""
    vh = env.result.vhost
    if not env.sc.expect_vhost:
        env.check("vhost_off", "vhost started although vhost=off"
                  if vh.started or vh.fds else None)
        return
    fails = []
    if not vh.started:
        fails.append("QMP vhost-started is false")
    if not vh.vhost_dev:
        fails.append("no vhost-dev in x-query-virtio-status")
    if vh.fds < 1:
        fails.append("QEMU holds no /dev/vhost-net fd")
    if env.result.guest.features["HASH_REPORT"] and vh.vhost_dev and not vh.acked_hash_report:
        fails.append("the guest negotiated HASH_REPORT but vhost_net did not ack it")
    env.check("vhost_running", fails)


def check_guest_config(env: RunEnv) -> None:
    """The configuration the guest ended up with, against what the scenario asked."""
    sc, gs, model = env.sc, env.state, env.model
    gf = env.result.guest.features
    fails = []
    want_key = sc.guest.key_bytes()
    if want_key is not None and gs.key != want_key:
        fails.append(f"key {gs.key.hex()} != requested {want_key.hex()}")
    if gs.combined != sc.guest_queues:
        fails.append(f"{gs.combined} combined channels, requested {sc.guest_queues}")
    if gs.rxhash != sc.guest.rxhash:
        fails.append(f"rxhash {gs.rxhash}, requested {sc.guest.rxhash}")
    if sc.expect.hash_types is not None and gs.hash_types != sc.expect.hash_types:
        fails.append(f"hash types {rss.hash_type_names(gs.hash_types)}, expected "
                     f"{rss.hash_type_names(sc.expect.hash_types)}")
    if (gf["RSS"] or gf["HASH_REPORT"]) and model.saved != gs.hash_types:
        fails.append(f"driver model says saved types {rss.hash_type_names(model.saved)},"
                     f" the guest says {rss.hash_type_names(gs.hash_types)}")
    env.check("guest_config", fails)


def follow_guest(env: RunEnv) -> None:
    """The oracle, hash visibility and queue model for the guest's current configuration."""
    gs, model, gf = env.state, env.model, env.result.guest.features
    env.oracle = rss.RssConfig(key=guestmod.device_key(gs.key, env.quirk),
                               hash_types=model.device_types, table=gs.table or [0],
                               unclassified_queue=guestmod.LINUX_UNCLASSIFIED_QUEUE,
                               behaviour=env.dp.behaviour)
    env.hash_reported = gf["HASH_REPORT"] and model.rxhash
    env.queue_model = resolve_queue_model(env.sc, gf, env.dp.behaviour, model.hashing)


def choose_oracle(env: RunEnv) -> None:
    """The guest kernel's RSS key quirk, and the model the first batch is judged with."""
    res = env.result
    kernel_version = env.vm.ready_info.get("kernel", env.image.kernel_version)
    res.guest_kernel = kernel_version
    env.quirk = guestmod.rss_key_quirk(kernel_version, env.sc.guest.rss_key_quirk)
    if env.quirk != "off":
        env.echo(f"hashlab: guest kernel {kernel_version}: modelling the driver's "
                 f"'{env.quirk}' RSS key quirk")
    res.rss_key_quirk = env.quirk
    res.driver_commands = env.model.commands
    follow_guest(env)
    o = env.oracle
    res.oracle = OracleChoice(key=o.key.hex(), hash_types=rss.hash_type_names(o.hash_types),
                              behaviour=o.behaviour, check_hash=env.hash_reported,
                              hashes=env.sc.expect.hashes, queues=env.queue_model)


async def guest_stats(env: RunEnv) -> dict:
    return (await env.vm.agent("stats")).kind("stats")[0]


async def start_trace(env: RunEnv) -> None:
    """The guest's receive tracepoint on, and the counters' baselines."""
    await env.vm.agent("trace_start")
    first = await guest_stats(env)
    used_lens = {len(f.data) for f in env.frames}
    filler = filler_frames([n for n in range(64, 1515) if n not in used_lens][:64],
                           packets.GUEST_MAC)
    env.traffic = Traffic(first_stats=first, tap_stats=env.tap.stats(), batch_stats=first,
                          filler=filler)


@contextlib.asynccontextmanager
async def filler_flowing(tap: Tap, frames: list[bytes], on: bool):
    """``async with filler_flowing(...) as sent``: filler traffic through TAP while the
    block runs (when ON); ``sent[0]``: how many frames it sent."""
    sent = [0]
    if not on:
        yield sent
        return
    stop = threading.Event()

    def fill():
        sent[0] = tap.send_until(stop, frames)

    thread = threading.Thread(target=fill, daemon=True)
    thread.start()
    try:
        await asyncio.sleep(0.2)  # traffic flowing before the change
        yield sent
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 30)


def reconfigure_failures(env: RunEnv, step, log: list[dict]) -> list[str]:
    """What of STEP the guest did not take, and the guest commands that failed."""
    gs, model = env.state, env.model
    fails = []
    if step.key is not None and gs.key != step.key_bytes():
        fails.append(f"key {gs.key.hex()} != requested {step.key_bytes().hex()}")
    if step.queues is not None and gs.combined != step.queues:
        fails.append(f"{gs.combined} channels, requested {step.queues}")
    if model.saved != gs.hash_types:
        fails.append(f"driver model saved types {rss.hash_type_names(model.saved)}"
                     f" != guest {rss.hash_type_names(gs.hash_types)}")
    bad = [c for c in log if c["rc"] != 0]
    if bad:
        fails.append("; ".join(f"`{c['cmd']}` failed: {c['out']}" for c in bad))
    return fails


async def reconfigure(env: RunEnv, batch: int) -> None:
    """Apply the scenario's step before BATCH (with filler traffic flowing, if asked),
    let the filler drain, and judge the next batch with what the guest read back."""
    sc, vm, traffic = env.sc, env.vm, env.traffic
    step = sc.reconfigure.steps[batch - 1]
    async with filler_flowing(env.tap, traffic.filler, sc.reconfigure.during_traffic) as sent:
        log = await guestmod.reconfigure(vm, step, env.model)
        env.state = await guestmod.readback(vm)
    before = await guest_stats(env)
    await guestmod.wait_rx(vm, before["rx_packets"], 1 << 30, 15)  # filler drains
    filler_seen, overrun = await guestmod.collect(vm)  # filler (and stragglers): not judged
    traffic.overrun += overrun or 0
    traffic.batch_stats = await guest_stats(env)
    follow_guest(env)
    env.check(f"reconfigure_{batch}", reconfigure_failures(env, step, log))
    await check_device_hash(env, f"reconfigure_{batch}")
    gs = env.state
    env.result.reconfigure.append(ReconfigureStep(
        batch=batch, step=step.describe(), commands=log, filler_sent=sent[0],
        filler_seen=len(filler_seen), key=gs.key.hex(), table=gs.table, combined=gs.combined,
        device_types=rss.hash_type_names(env.model.device_types), queues=env.queue_model,
        check_hash=env.hash_reported))


async def send_batch(env: RunEnv, batch: int) -> None:
    """Send the corpus through the tap and collect what the guest recorded of it."""
    sc, vm, frames, traffic = env.sc, env.vm, env.frames, env.traffic
    env.echo(f"hashlab: sending {len(frames)} frames"
             + (f" (batch {batch})" if sc.reconfigure.steps else "")
             + f" ({', '.join(frames.slices())})")
    n = await asyncio.to_thread(env.tap.send, [f.data for f in frames])
    got = await guestmod.wait_rx(vm, traffic.batch_stats["rx_packets"], n, 60,
                                 settle=0.5 if batch > 0 else 0)
    observed, overrun = await guestmod.collect(vm)
    traffic.overrun += overrun or 0
    traffic.sent += n
    traffic.received += got
    env.result.batches.append(Batch(
        batch, frames, observed, env.oracle, env.hash_reported and sc.expect.hashes == "oracle",
        env.queue_model, env.model.queues, env.hash_reported))


async def count_delivery(env: RunEnv) -> None:
    """Frames sent in all batches against the guest's and the tap's counters."""
    t = env.traffic
    last, tap_now = await guest_stats(env), env.tap.stats()
    env.result.delivery = Delivery(
        sent=t.sent, guest_rx_packets=t.received,
        guest_rx_dropped=last["rx_dropped"] - t.first_stats["rx_dropped"],
        guest_rx_length_errors=last["rx_length_errors"] - t.first_stats["rx_length_errors"],
        tap_tx_dropped=tap_now["tx_dropped"] - t.tap_stats["tx_dropped"],
        trace_overrun=t.overrun)


async def load(env: RunEnv) -> None:
    """Rounds of the corpus at the scenario's rate, judged like the last batch."""
    sc = env.sc
    last = env.result.batches[-1]
    sent = last.sent(arrival=sc.expect.arrival, known=sc.expect.known_divergences)
    ld = env.result.load = await loadmod.run(
        env.vm, env.tap, [f.data for f in env.frames], sc.load.frames, sc.load.rounds,
        sc.load.rate, sent, last.check_hash, env.pid, env.echo)
    t = ld["totals"]
    env.check("load", None if not t["wrong"] and not t["unknown"] else
              f"{t['wrong']} of {t['delivered']} records under load had a wrong hash, class "
              f"or queue ({ld['rounds'][0]['wrong_fields']}), {t['unknown']} of unknown length")


def judge(env: RunEnv) -> None:
    """Every batch against its oracle; a hint when a key quirk explains wrong hashes."""
    sc, res = env.sc, env.result
    kd = sc.expect.known_divergences
    cmp = res.comparison = report.compare_batches([
        (b.sent(arrival=sc.expect.arrival, known=kd), b.observed, b.check_hash)
        for b in res.batches])
    hint = diagnose_key(cmp, env.frames, res.batches[0].oracle, env.quirk)
    if hint:
        res.diagnosis = hint
        env.check("diagnosis", hint)
    if env.traffic.overrun:
        env.check("trace", f"{env.traffic.overrun} trace events lost")


def conclude(env: RunEnv) -> None:
    """The run's time and verdict: every check passed and every frame as expected."""
    res = env.result
    res.seconds = time.monotonic() - env.t0
    res.ok = all(f is None for _, f in res.checks) and (res.comparison is None
                                                        or res.comparison.ok)


def write_results(res: RunResult, doc: dict, cmp: report.Comparison | None) -> None:
    """results.json (DOC) and junit.xml (with comparison CMP) in the run's directory."""
    (res.out_dir / "results.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (res.out_dir / "junit.xml").write_text(
        report.junit_xml(f"hashlab.{res.scenario}", cmp, res.checks, res.seconds))
