"""One scenario run, end to end.

boot (tap + QEMU + guest image) -> configure the guest -> read its key/table/hash types
back -> check negotiation (guest's feature bits and QEMU's ``x-query-virtio-status``)
and, with ``vhost=on``, that vhost_net really moves the packets (QMP ``vhost-started``
and ``vhost-dev``, QEMU's ``/dev/vhost-net`` fds) -> start the tracepoint -> send the
corpus frames -> collect the guest's records -> compare with the oracle configured from
what the guest read back -> [reconfigure the guest, with filler traffic flowing, and send
the next batch] -> write ``results.json`` and ``junit.xml``.

The run keeps what the guest saw (``RunResult.batches``), so that the same observations
can be judged against another model as well (hashlab.run.compare judges every row against
the spec).

Every resource is released on every path (tap via ``with``, QEMU via ``async with``),
Ctrl-C included.
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

from ..host import datapath
from . import guest as guestmod
from . import load
from ..frames import packets
from ..results import report
from .. import retries
from ..oracle import rss
from ..build.guest import build_guest
from ..errors import HashlabError
from ..host.machine import (GuestHang, Machine, MachineConfig, MachineError, QemuExited,
                            QemuStartError)
from ..host.qemu_process import load_factor
from ..paths import results_root
from .scenario import Scenario
from ..frames.filler import filler_frames
from ..host.tap import Tap

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
class Batch:
    """One batch of traffic and what the guest saw of it, with the configuration in force."""

    index: int
    frames: packets.Corpus
    observed: list[report.Observed]
    oracle: rss.RssConfig  # key, device hash types, table, behaviour
    check_hash: bool  # the guest sees hashes (HASH_REPORT, rxhash on, hashes: oracle)
    queue_model: str  # table | hash | any
    active_queues: int
    hash_report: bool  # HASH_REPORT negotiated and rxhash on (what the guest can see)

    def sent(self, oracle: rss.RssConfig | None = None, check_hash: bool | None = None,
             queue_model: str | None = None, arrival=None, known=None) -> list[report.Sent]:
        """The frames with their expectations under ORACLE (default: the run's)."""
        oracle = oracle or self.oracle
        qm = queue_model or self.queue_model
        out = []
        for f in self.frames:
            e = oracle.expect(f.data)
            if qm == "hash":
                e = rss.Expectation(e.hash, e.report, hash_queue(e, self.active_queues), e.l4)
            grp = report.desc_group(f.desc)
            out.append(report.Sent(f.id, f.slice, f.desc, len(f.data), e,
                                   arrival(f.slice) if arrival else True,
                                   known.get(grp) if known else None,
                                   check_queue=qm != "any", batch=self.index))
        return out


def hash_queue(e: rss.Expectation, active_queues: int, default_queue: int = 0) -> int:
    """Hash reporting without RSS on the patched eBPF program: the program returns
    ``hash & 0xffff`` as the queue and tun takes it modulo the queues in use."""
    if e.report == rss.Report.NONE:
        return default_queue
    return (e.hash & 0xFFFF) % max(active_queues, 1)


@dataclass
class RunResult:
    scenario: str
    out_dir: Path
    ok: bool
    comparison: report.Comparison | None
    checks: list[tuple[str, str | None]]
    seconds: float
    info: dict = field(default_factory=dict)
    batches: list[Batch] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"scenario {self.scenario}: {'PASS' if self.ok else 'FAIL'} "
                 f"in {self.seconds:.1f}s"]
        dp = self.info.get("datapath")
        if dp:
            lines.append(f"  datapath: QEMU {dp['qemu']} ({dp['qemu_version']}), vhost "
                         f"{'on' if dp['vhost'] else 'off'}, {dp['accel']} on "
                         f"{dp['host_kernel']} ({'with' if dp['kernel_has_series'] else 'without'}"
                         f" the VNET_HASH series), where {dp['where']}")
        for name, fail in self.checks:
            lines.append(f"  [{'ok' if fail is None else 'FAIL'}] {name}"
                         + ("" if fail is None else f": {fail}"))
        g, q = self.info.get("guest", {}), self.info.get("qemu", {}).get("features", {})
        if g and q:
            lines.append("  negotiated (guest / QEMU guest-features / QEMU offers): " + ", ".join(
                f"{f} {_yn(g['features'][f])}/{_yn(q['guest-features'][f])}/"
                f"{_yn(q['host-features'][f])}" for f in ("RSS", "HASH_REPORT")))
            lines.append(f"  guest {self.info.get('guest_kernel', '?')}: {g['combined']} "
                         f"queue(s), rxhash {'on' if g['rxhash'] else 'off'}, hash types "
                         f"{g['hash_types']}, key quirk {self.info.get('rss_key_quirk')}; "
                         f"oracle {self.info.get('oracle', {}).get('behaviour')}")
        vh = self.info.get("vhost")
        if vh:
            lines.append(f"  vhost: started {_yn(vh['started'])}, vhost-dev "
                         f"{_yn(vh['vhost_dev'])}, /dev/vhost-net fds {vh['fds']}, acked "
                         f"HASH_REPORT {_yn(vh['acked_hash_report'])}")
        for w in self.info.get("qemu_warnings", []):
            lines.append(f"  QEMU says: {w}")
        for b in self.info.get("retried_after", []):
            lines.append(f"  run {b['attempt']} failed and was run again: {b['error'][:160]}"
                         f" (log {b['log']})")
        for b in self.info.get("boot_failures", []):
            lines.append(f"  boot attempt {b['attempt']} failed and was retried: {b['error'][:160]}"
                         f" (log {b['log']})")
        d = self.info.get("delivery")
        if d:
            lines.append(f"  delivery: {d['sent']} sent, guest rx_packets +{d['guest_rx_packets']}"
                         f", tap tx_dropped {d['tap_tx_dropped']}, trace overrun "
                         f"{d['trace_overrun']}")
        ld = self.info.get("load")
        if ld:
            m, t = ld["median"], ld["totals"]
            lines.append(f"  load: {len(ld['rounds'])} x {ld['frames_per_round']} frames; median "
                         f"offered {m['offered_fps']} fps, delivered {m['delivered_fps']} fps, "
                         f"right {m['right_fps']} fps; {t['right']} right, {t['wrong']} wrong, "
                         f"{t['tap_tx_dropped']} dropped by the tap, {t['guest_rx_dropped']} "
                         f"by the guest; QEMU peak RSS {ld['qemu_peak_rss_kib']} KiB")
        for r in self.info.get("reconfigure", []):
            lines.append(f"  batch {r['batch']}: reconfigured ({r['step']}) with "
                         f"{r['filler_sent']} filler frames flowing ({r['filler_seen']} seen); "
                         f"device types {r['device_types']}")
        if self.comparison is not None:
            lines.append("")
            lines.append(report.render_table(self.comparison))
        lines.append("")
        lines.append(f"results: {self.out_dir}/results.json, junit.xml; VM log: "
                     f"{self.out_dir}/qemu.log")
        return "\n".join(lines)


def _yn(b: bool) -> str:
    return "yes" if b else "no"


def _feature_names(feats: dict) -> list[str]:
    return [s.split(":", 1)[0] for s in (feats or {}).get("dev-features", [])]


def qemu_features(status: dict) -> dict[str, dict[str, bool]]:
    """RSS/HASH_REPORT in QEMU's x-query-virtio-status (guest- and host-features)."""
    out = {}
    for side in ("guest-features", "host-features"):
        names = _feature_names(status.get(side, {}))
        out[side] = {"RSS": "VIRTIO_NET_F_RSS" in names,
                     "HASH_REPORT": "VIRTIO_NET_F_HASH_REPORT" in names}
    return out


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


def vhost_status(status: dict, pid: int | None) -> dict:
    """Is vhost_net moving the packets?  From x-query-virtio-status and QEMU's fds."""
    dev = status.get("vhost-dev")
    acked = _feature_names(dev.get("acked-features", {})) if dev else []
    offered = _feature_names(dev.get("features", {})) if dev else []
    return {"started": bool(status.get("vhost-started")), "vhost_dev": dev is not None,
            "fds": vhost_fds(pid), "acked_hash_report": "VIRTIO_NET_F_HASH_REPORT" in acked,
            "kernel_offers_hash_report": "VIRTIO_NET_F_HASH_REPORT" in offered,
            "nvqs": dev.get("nvqs") if dev else None,
            "max_queues": dev.get("max-queues") if dev else None}


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


async def run_scenario(sc: Scenario, out_dir: Path | None = None, kernel: str | None = None,
                       echo=print, attempts: int | None = None) -> RunResult:
    """Run SC; results go to OUT_DIR (default results/<name>) even when the run fails.

    A run that dies of a VM failure (QEMU gone, guest hung or panicked: MachineError) is
    run again up to ATTEMPTS times in all (default: 2 in the lab VM, where nested KVM
    under TCG loses a guest now and then, else 1).  Wrong hashes are never retried.  Each
    retry is listed in ``info["retried_after"]`` and printed in the summary; the failed
    attempt's VM log is kept as qemu.runN.log.
    """
    if attempts is None:
        attempts = 2 if datapath.in_lab() else 1
    failures: list[dict] = []
    for attempt in range(1, attempts + 1):
        try:
            res = await _run_once(sc, out_dir, kernel, echo, failures)
        except MachineError as e:
            if attempt == attempts:
                raise
            out = Path(out_dir) if out_dir else results_root() / sc.name
            kept = out / f"qemu.run{attempt}.log"
            with contextlib.suppress(OSError):
                (out / "qemu.log").rename(kept)
            first = str(e).splitlines()[0]
            failures.append({"attempt": attempt, "error": f"{type(e).__name__}: {first}",
                             "log": str(kept)})
            echo(f"hashlab: {sc.name}: run {attempt} failed ({first[:120]}); running it again")
            retries.record("run", f"{sc.name}: {type(e).__name__}: {first}")
            continue
        return res
    raise AssertionError("unreachable")


async def _run_once(sc: Scenario, out_dir: Path | None, kernel: str | None, echo,
                    failures: list[dict]) -> RunResult:
    t0 = time.monotonic()
    out = Path(out_dir) if out_dir else results_root() / sc.name
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("results.json", "junit.xml"):
        (out / stale).unlink(missing_ok=True)
    checks: list[tuple[str, str | None]] = []
    info: dict = {"scenario": sc.name, "scenario_file": str(sc.path) if sc.path else None,
                  "retried_after": failures}
    try:
        return await _run(sc, out, kernel, echo, t0, checks, info)
    except (HashlabError, OSError) as e:
        seconds = time.monotonic() - t0
        checks.append(("run", f"{type(e).__name__}: {e}"))
        doc = {"scenario": sc.name, "ok": False, "seconds": round(seconds, 1),
               "error": {"type": type(e).__name__, "message": str(e)},
               "checks": [{"name": n, "ok": f is None, "failure": f} for n, f in checks],
               **info, "comparison": None}
        (out / "results.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
        (out / "junit.xml").write_text(report.junit_xml(f"hashlab.{sc.name}", None, checks, seconds))
        raise


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


def datapath_info(sc: Scenario, qemu_bin: str) -> dict:
    has_series = datapath.kernel_has_series()
    running = datapath.running_design()
    inside = datapath.in_lab()
    return {"qemu": sc.datapath.qemu_kind, "qemu_binary": qemu_bin,
            "qemu_version": datapath.qemu_version(qemu_bin), "vhost": sc.datapath.vhost,
            "where": "lab" if inside else "host", "scenario_where": sc.where,
            "accel": sc.datapath.resolved_accel(inside), "host_kernel": datapath.kernel_release(),
            "kernel_has_series": has_series, "design": running if inside else None,
            "scenario_design": sc.datapath.design,
            "behaviour": sc.datapath.resolved_behaviour(running)}


@contextlib.asynccontextmanager
async def boot(cfg, attempts: int, echo, info: dict, before_retry=None):
    """``async with boot(...) as vm``: a Machine whose *boot* is retried.

    Nested KVM under TCG (the lab) now and then loses a guest during boot (a reset, or
    a boot that stops printing); a boot that fails before the agent is ready (QEMU gone,
    no agent) is retried up to ATTEMPTS times.  A panic is never retried, nor is anything
    after the boot.  Each failed attempt's log is kept as qemu.attemptN.log and listed in
    ``info["boot_failures"]``.  CFG is a MachineConfig or a function returning one (called
    for every attempt, after BEFORE_RETRY).
    """
    info.setdefault("boot_failures", [])
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
            info["boot_failures"].append({"attempt": attempt, "error": first, "log": str(kept)})
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


async def _run(sc: Scenario, out: Path, kernel: str | None, echo, t0: float,
               checks: list, info: dict) -> RunResult:

    qemu_bin = sc.datapath.qemu_binary  # MissingToolError when the patched QEMU is not built
    dp = datapath_info(sc, qemu_bin)
    info["datapath"] = dp
    if sc.where == "lab" and dp["where"] != "lab":
        echo(f"hashlab: note: {sc.name} is meant for the lab VM (where: lab); running it here")
    elif sc.datapath.design and dp["where"] == "lab" and dp["design"] != sc.datapath.design:
        echo(f"hashlab: note: {sc.name} is meant for the {sc.datapath.design} kernel; this "
             f"lab VM runs {dp['design']}")
    if dp["accel"] == "kvm" and not datapath.kvm_usable():
        raise HashlabError("datapath needs KVM (-accel kvm) but /dev/kvm is not usable here "
                           "(run it in the lab VM: where: lab)")
    behaviour = dp["behaviour"]
    image = build_guest(kernel or sc.guest.kernel)
    info["guest_image"] = {"key": image.key, "kernel": image.kernel_version,
                           "modules": list(image.modules)}
    frames = datapath.corpus(sc.corpus.seed).select(sc.corpus.slices)
    mac = packets.GUEST_MAC
    batches: list[Batch] = []
    cmp = None
    info["reconfigure"] = []
    kd = sc.expect.known_divergences
    with Tap(sc.datapath.queues) as tap:
        info["tap"] = tap.name
        def make_cfg() -> MachineConfig:  # per boot attempt: the tap's current queues
            return MachineConfig(
                kernel=image.kernel, initrd=image.initrd, name=f"hashlab-{sc.name}",
                qemu=qemu_bin, cpus=sc.guest.resolved_cpus(dp["accel"]),
                memory=sc.guest.memory, accel=dp["accel"],
                cpu=KVM_CPU if dp["accel"] == "kvm" else "max",
                extra_args=device_args(sc, tap, mac), pass_fds=tuple(tap.fds),
                log_path=out / "qemu.log", boot_timeout=sc.timeouts["boot"],
                boot_stall_timeout=BOOT_STALL if dp["accel"] == "kvm" else None,
                command_timeout=sc.timeouts["command"], shutdown_timeout=sc.timeouts["shutdown"])

        echo(f"hashlab: booting {sc.name} (QEMU {dp['qemu']} {dp['qemu_version']}, "
             f"{dp['accel']}, vhost {'on' if sc.datapath.vhost else 'off'}, tap {tap.name}, "
             f"{sc.datapath.queues} queue(s), load factor {load_factor():.1f})")
        attempts = 3 if dp["where"] == "lab" else 2
        # A dead QEMU leaves its queue state (attached or detached) on our tap fds: every
        # boot attempt gets a fresh tap.
        async with boot(make_cfg, attempts, echo, info, before_retry=tap.recreate) as vm:
            info["tap"] = tap.name
            tap.release()  # QEMU holds the queues now
            info["qemu_cmdline"] = vm.cmdline
            info["boot_seconds"] = round(time.monotonic() - t0, 1)
            gs0 = await guestmod.readback(vm)
            info["guest_at_boot"] = {"hash_types": rss.hash_type_names(gs0.hash_types),
                                     "rxhash": gs0.rxhash, "combined": gs0.combined}
            model = guestmod.DriverModel.at_boot(gs0)
            info["configure"] = await guestmod.configure(vm, sc.guest, sc.guest_queues, model)
            gs = await guestmod.readback(vm)
            info["guest"] = {"features": gs.feature_view(), "key": gs.key.hex(),
                             "table": gs.table, "flows": gs.flows,
                             "hash_types": rss.hash_type_names(gs.hash_types),
                             "rxhash": gs.rxhash, "combined": gs.combined, "raw": gs.raw}
            vstat = {}
            for dev in await vm.qmp_cmd("x-query-virtio"):
                if dev["name"] == "virtio-net" and f"/{NIC_ID}/" in dev["path"]:
                    vstat = await vm.qmp_cmd("x-query-virtio-status", path=dev["path"])
            qf = qemu_features(vstat)
            vh = vhost_status(vstat, vm.proc.pid if vm.proc else None)
            info["qemu"] = {"features": qf}
            info["vhost"] = vh
            gf = gs.feature_view()

            for feat, want in (("RSS", sc.expect.rss_negotiated),
                               ("HASH_REPORT", sc.expect.hash_report_negotiated)):
                fail = None
                if gf[feat] != qf["guest-features"][feat]:
                    fail = f"guest says {gf[feat]}, QEMU says {qf['guest-features'][feat]}"
                elif want is not None and gf[feat] != want:
                    fail = f"expected {want}, negotiated {gf[feat]} (QEMU offers " \
                           f"{qf['host-features'][feat]})"
                checks.append((f"{feat.lower()}_negotiated", fail))

            # vhost_net really in use (or really not): no silent fallback to QEMU's own
            # datapath, which would make a vhost row test QEMU instead.
            want_vhost = sc.expect_vhost
            if want_vhost:
                vfail = []
                if not vh["started"]:
                    vfail.append("QMP vhost-started is false")
                if not vh["vhost_dev"]:
                    vfail.append("no vhost-dev in x-query-virtio-status")
                if vh["fds"] < 1:
                    vfail.append("QEMU holds no /dev/vhost-net fd")
                if gf["HASH_REPORT"] and vh["vhost_dev"] and not vh["acked_hash_report"]:
                    vfail.append("the guest negotiated HASH_REPORT but vhost_net did not ack it")
                checks.append(("vhost_running", "; ".join(vfail) or None))
            else:
                checks.append(("vhost_off", "vhost started although vhost=off"
                               if vh["started"] or vh["fds"] else None))

            # The configuration the guest ended up with, against what the scenario asked.
            cfail = []
            want_key = sc.guest.key_bytes()
            if want_key is not None and gs.key != want_key:
                cfail.append(f"key {gs.key.hex()} != requested {want_key.hex()}")
            if gs.combined != sc.guest_queues:
                cfail.append(f"{gs.combined} combined channels, requested {sc.guest_queues}")
            if gs.rxhash != sc.guest.rxhash:
                cfail.append(f"rxhash {gs.rxhash}, requested {sc.guest.rxhash}")
            if sc.expect.hash_types is not None and gs.hash_types != sc.expect.hash_types:
                cfail.append(f"hash types {rss.hash_type_names(gs.hash_types)}, expected "
                             f"{rss.hash_type_names(sc.expect.hash_types)}")
            if (gf["RSS"] or gf["HASH_REPORT"]) and model.saved != gs.hash_types:
                cfail.append(f"driver model says saved types {rss.hash_type_names(model.saved)},"
                             f" the guest says {rss.hash_type_names(gs.hash_types)}")
            checks.append(("guest_config", "; ".join(cfail) or None))

            kernel_version = vm.ready_info.get("kernel", image.kernel_version)
            info["guest_kernel"] = kernel_version
            quirk = guestmod.rss_key_quirk(kernel_version, sc.guest.rss_key_quirk)
            if quirk != "off":
                echo(f"hashlab: guest kernel {kernel_version}: modelling the driver's "
                     f"'{quirk}' RSS key quirk")
            info["rss_key_quirk"] = quirk
            info["driver_commands"] = model.commands

            def oracle_for(state: guestmod.GuestState) -> rss.RssConfig:
                return rss.RssConfig(key=guestmod.device_key(state.key, quirk),
                                     hash_types=model.device_types,
                                     table=state.table or [0],
                                     unclassified_queue=guestmod.LINUX_UNCLASSIFIED_QUEUE,
                                     behaviour=behaviour)

            oracle = oracle_for(gs)
            hash_reported = gf["HASH_REPORT"] and model.rxhash
            qmodel = resolve_queue_model(sc, gf, behaviour, model.hashing)
            info["oracle"] = {"key": oracle.key.hex(), "hash_types":
                              rss.hash_type_names(oracle.hash_types),
                              "behaviour": oracle.behaviour, "check_hash": hash_reported,
                              "hashes": sc.expect.hashes, "queues": qmodel}

            await vm.agent("trace_start")
            st0 = (await vm.agent("stats")).kind("stats")[0]
            st_first = st0
            tstats0 = tap.stats()
            n_total = got_total = 0
            overrun = 0
            used_lens = {len(f.data) for f in frames}
            filler = filler_frames([n for n in range(64, 1515) if n not in used_lens][:64], mac)
            for bi in range(len(sc.reconfigure.steps) + 1):
                if bi > 0:
                    step = sc.reconfigure.steps[bi - 1]
                    stop = threading.Event()
                    fill_n = [0]

                    def fill():
                        fill_n[0] = tap.send_until(stop, filler)

                    ft = None
                    if sc.reconfigure.during_traffic:
                        ft = threading.Thread(target=fill, daemon=True)
                        ft.start()
                        await asyncio.sleep(0.2)  # traffic flowing before the change
                    try:
                        log = await guestmod.reconfigure(vm, step, model)
                        gs = await guestmod.readback(vm)
                    finally:
                        stop.set()
                        if ft is not None:
                            await asyncio.to_thread(ft.join, 30)
                    stb = (await vm.agent("stats")).kind("stats")[0]
                    await guestmod.wait_rx(vm, stb["rx_packets"], 1 << 30, 15)  # filler drains
                    fobs, o = await guestmod.collect(vm)  # filler (and stragglers): not judged
                    overrun += o or 0
                    st0 = (await vm.agent("stats")).kind("stats")[0]
                    oracle = oracle_for(gs)
                    hash_reported = gf["HASH_REPORT"] and model.rxhash
                    qmodel = resolve_queue_model(sc, gf, behaviour, model.hashing)
                    rfail = []
                    if step.key is not None and gs.key != step.key_bytes():
                        rfail.append(f"key {gs.key.hex()} != requested {step.key_bytes().hex()}")
                    if step.queues is not None and gs.combined != step.queues:
                        rfail.append(f"{gs.combined} channels, requested {step.queues}")
                    if model.saved != gs.hash_types:
                        rfail.append(f"driver model saved types {rss.hash_type_names(model.saved)}"
                                     f" != guest {rss.hash_type_names(gs.hash_types)}")
                    bad = [c for c in log if c["rc"] != 0]
                    if bad:
                        rfail.append("; ".join(f"`{c['cmd']}` failed: {c['out']}" for c in bad))
                    checks.append((f"reconfigure_{bi}", "; ".join(rfail) or None))
                    info["reconfigure"].append({
                        "batch": bi, "step": step.describe(), "commands": log,
                        "filler_sent": fill_n[0], "filler_seen": len(fobs),
                        "key": gs.key.hex(), "table": gs.table, "combined": gs.combined,
                        "device_types": rss.hash_type_names(model.device_types),
                        "queues": qmodel, "check_hash": hash_reported})
                echo(f"hashlab: sending {len(frames)} frames"
                     + (f" (batch {bi})" if sc.reconfigure.steps else "")
                     + f" ({', '.join(frames.slices())})")
                n = await asyncio.to_thread(tap.send, [f.data for f in frames])
                got = await guestmod.wait_rx(vm, st0["rx_packets"], n, 60,
                                          settle=0.5 if bi > 0 else 0)
                observed, o = await guestmod.collect(vm)
                overrun += o or 0
                n_total += n
                got_total += got
                batches.append(Batch(bi, frames, observed, oracle,
                                     hash_reported and sc.expect.hashes == "oracle", qmodel,
                                     model.queues, hash_reported))
            st1 = (await vm.agent("stats")).kind("stats")[0]
            tstats1 = tap.stats()
            info["delivery"] = {
                "sent": n_total, "guest_rx_packets": got_total,
                "guest_rx_dropped": st1["rx_dropped"] - st_first["rx_dropped"],
                "guest_rx_length_errors": st1["rx_length_errors"] - st_first["rx_length_errors"],
                "tap_tx_dropped": tstats1["tx_dropped"] - tstats0["tx_dropped"],
                "trace_overrun": overrun,
            }
            if sc.load.frames:
                last = batches[-1]
                ld = await load.run(vm, tap, [f.data for f in frames], sc.load.frames,
                                    sc.load.rounds, sc.load.rate, last.sent(arrival=sc.expect.arrival,
                                                              known=kd),
                                    last.check_hash, vm.proc.pid if vm.proc else None, echo)
                info["load"] = ld
                t = ld["totals"]
                checks.append(("load", None if not t["wrong"] and not t["unknown"] else
                               f"{t['wrong']} of {t['delivered']} records under load had a "
                               f"wrong hash, class or queue ({ld['rounds'][0]['wrong_fields']}"
                               f"), {t['unknown']} of unknown length"))
            cmp = report.compare_batches([
                (b.sent(arrival=sc.expect.arrival, known=kd), b.observed, b.check_hash)
                for b in batches])
            hint = diagnose_key(cmp, frames, batches[0].oracle, quirk)
            if hint:
                info["diagnosis"] = hint
                checks.append(("diagnosis", hint))
            if overrun:
                checks.append(("trace", f"{overrun} trace events lost"))
        info["qemu_warnings"] = qemu_warnings(out / "qemu.log")
    seconds = time.monotonic() - t0
    ok = all(f is None for _, f in checks) and (cmp is None or cmp.ok)
    res = RunResult(sc.name, out, ok, cmp, checks, seconds, info, batches)
    doc = {"scenario": sc.name, "ok": ok, "seconds": round(seconds, 1),
           "checks": [{"name": n, "ok": f is None, "failure": f} for n, f in checks],
           **info, "comparison": report.to_json(cmp) if cmp else None,
           "observed": [{"batch": b.index, "records": [dataclasses.asdict(o) for o in b.observed],
                         "oracle": {"key": b.oracle.key.hex(), "hash_types": b.oracle.hash_types,
                                    "table": b.oracle.table, "behaviour": b.oracle.behaviour,
                                    "unclassified_queue": b.oracle.unclassified_queue},
                         "check_hash": b.check_hash, "hash_report": b.hash_report,
                         "queue_model": b.queue_model, "active_queues": b.active_queues}
                        for b in batches]}
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (out / "junit.xml").write_text(report.junit_xml(f"hashlab.{sc.name}", cmp, checks, seconds))
    return res
