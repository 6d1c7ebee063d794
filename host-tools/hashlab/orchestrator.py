"""One scenario run, end to end.

boot (tap + QEMU + guest image) -> configure the guest -> read its key/table/hash types
back -> check negotiation (guest's feature bits and QEMU's ``x-query-virtio-status``) ->
start the tracepoint -> send the corpus frames -> collect the guest's records ->
compare with the oracle configured from what the guest read back -> write
``results.json`` and ``junit.xml``.

Every resource is released on every path (tap via ``with``, QEMU via ``async with``),
Ctrl-C included.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import guest as guestmod
from . import packets, report, rss
from .build.guest import build_guest
from .errors import HashlabError
from .machine import Machine, MachineConfig, load_factor
from .paths import results_root
from .scenario import Scenario
from .tap import Tap

NIC_ID = "nic0"


@dataclass
class RunResult:
    scenario: str
    out_dir: Path
    ok: bool
    comparison: report.Comparison | None
    checks: list[tuple[str, str | None]]
    seconds: float
    info: dict = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"scenario {self.scenario}: {'PASS' if self.ok else 'FAIL'} "
                 f"in {self.seconds:.1f}s"]
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
        d = self.info.get("delivery")
        if d:
            lines.append(f"  delivery: {d['sent']} sent, guest rx_packets +{d['guest_rx_packets']}"
                         f", tap tx_dropped {d['tap_tx_dropped']}, trace overrun "
                         f"{d['trace_overrun']}")
        if self.comparison is not None:
            lines.append("")
            lines.append(report.render_table(self.comparison))
        lines.append("")
        lines.append(f"results: {self.out_dir}/results.json, junit.xml; VM log: "
                     f"{self.out_dir}/qemu.log")
        return "\n".join(lines)


def _yn(b: bool) -> str:
    return "yes" if b else "no"


def qemu_features(status: dict) -> dict[str, dict[str, bool]]:
    """RSS/HASH_REPORT in QEMU's x-query-virtio-status (guest- and host-features)."""
    out = {}
    for side in ("guest-features", "host-features"):
        names = [s.split(":", 1)[0] for s in status.get(side, {}).get("dev-features", [])]
        out[side] = {"RSS": "VIRTIO_NET_F_RSS" in names,
                     "HASH_REPORT": "VIRTIO_NET_F_HASH_REPORT" in names}
    return out


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
                f"(set guest.rss_key_quirk, see hashlab.guest.MISALIGNED_KEY_RANGES)")
    return None


async def _wait_arrival(vm: Machine, baseline: int, n_sent: int, timeout: float) -> int:
    """Poll the guest's rx_packets until all frames are in or the count stops moving."""
    deadline = time.monotonic() + timeout * load_factor()
    last, still = -1, 0
    while True:
        st = (await vm.agent("stats")).kind("stats")[0]
        got = st["rx_packets"] - baseline
        if got >= n_sent:
            return got
        still = still + 1 if got == last else 0
        if still >= 3 or time.monotonic() > deadline:
            return got
        last = got
        await asyncio.sleep(1.0)


async def run_scenario(sc: Scenario, out_dir: Path | None = None, kernel: str | None = None,
                       echo=print) -> RunResult:
    """Run SC; results go to OUT_DIR (default results/<name>) even when the run fails."""
    t0 = time.monotonic()
    out = Path(out_dir) if out_dir else results_root() / sc.name
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("results.json", "junit.xml"):
        (out / stale).unlink(missing_ok=True)
    checks: list[tuple[str, str | None]] = []
    info: dict = {"scenario": sc.name, "scenario_file": str(sc.path) if sc.path else None}
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


async def _run(sc: Scenario, out: Path, kernel: str | None, echo, t0: float,
               checks: list, info: dict) -> RunResult:

    image = build_guest(kernel or sc.guest.kernel)
    info["guest_image"] = {"key": image.key, "kernel": image.kernel_version,
                           "modules": list(image.modules)}
    frames = packets.corpus(sc.corpus.seed).select(sc.corpus.slices)
    mac = packets.GUEST_MAC
    cmp = None
    with Tap(sc.datapath.queues) as tap:
        info["tap"] = tap.name
        cfg = MachineConfig(
            kernel=image.kernel, initrd=image.initrd, name=f"hashlab-{sc.name}",
            qemu=sc.datapath.qemu_binary, cpus=sc.guest.cpus, memory=sc.guest.memory,
            extra_args=device_args(sc, tap, mac), pass_fds=tuple(tap.fds),
            log_path=out / "qemu.log", boot_timeout=sc.timeouts["boot"],
            command_timeout=sc.timeouts["command"], shutdown_timeout=sc.timeouts["shutdown"])
        echo(f"hashlab: booting {sc.name} (tap {tap.name}, {sc.datapath.queues} queue(s), "
             f"load factor {load_factor():.1f})")
        async with Machine(cfg) as vm:
            tap.release()  # QEMU holds the queues now
            info["qemu_cmdline"] = vm.cmdline
            info["boot_seconds"] = round(time.monotonic() - t0, 1)
            gs0 = await guestmod.readback(vm)
            info["guest_at_boot"] = {"hash_types": rss.hash_type_names(gs0.hash_types),
                                     "rxhash": gs0.rxhash, "combined": gs0.combined}
            info["configure"] = await guestmod.configure(vm, sc.guest, sc.guest_queues)
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
            info["qemu"] = {"features": qf}
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
            checks.append(("guest_config", "; ".join(cfail) or None))

            hash_reported = gf["HASH_REPORT"] and gs.rxhash
            kernel_version = vm.ready_info.get("kernel", image.kernel_version)
            info["guest_kernel"] = kernel_version
            quirk = guestmod.rss_key_quirk(kernel_version, sc.guest.rss_key_quirk)
            dkey = guestmod.device_key(gs.key, quirk)
            if quirk != "off":
                echo(f"hashlab: guest kernel {kernel_version}: modelling the driver's "
                     f"'{quirk}' RSS key quirk (device key {dkey.hex()})")
            info["rss_key_quirk"] = quirk
            oracle = rss.RssConfig(key=dkey, hash_types=guestmod.device_hash_types(gs0, gs),
                                   table=gs.table,
                                   unclassified_queue=guestmod.LINUX_UNCLASSIFIED_QUEUE,
                                   behaviour=sc.datapath.behaviour)
            info["oracle"] = {"key": oracle.key.hex(), "hash_types":
                              rss.hash_type_names(oracle.hash_types),
                              "behaviour": oracle.behaviour, "check_hash": hash_reported}

            await vm.agent("trace_start")
            st0 = (await vm.agent("stats")).kind("stats")[0]
            tstats0 = tap.stats()
            echo(f"hashlab: sending {len(frames)} frames "
                 f"({', '.join(frames.slices())})")
            n = await asyncio.to_thread(tap.send, [f.data for f in frames])
            got = await _wait_arrival(vm, st0["rx_packets"], n, 60)
            col = await vm.agent("collect", timeout=120)
            st1 = (await vm.agent("stats")).kind("stats")[0]
            tstats1 = tap.stats()
            info["delivery"] = {
                "sent": n, "guest_rx_packets": got,
                "guest_rx_dropped": st1["rx_dropped"] - st0["rx_dropped"],
                "guest_rx_length_errors": st1["rx_length_errors"] - st0["rx_length_errors"],
                "tap_tx_dropped": tstats1["tx_dropped"] - tstats0["tx_dropped"],
                "trace_overrun": col.kind("trace_stats")[0]["overrun"] if col.kind("trace_stats") else None,
            }
            observed = [report.Observed.from_agent(r) for r in col.kind("rx")]
            kd = sc.expect.known_divergences
            sent = [report.Sent(f.id, f.slice, f.desc, len(f.data), oracle.expect(f.data),
                                sc.expect.arrival(f.slice), kd.get(report.desc_group(f.desc)))
                    for f in frames]
            cmp = report.compare(sent, observed, check_hash=hash_reported)
            hint = diagnose_key(cmp, frames, oracle, quirk)
            if hint:
                info["diagnosis"] = hint
                checks.append(("diagnosis", hint))
            if info["delivery"]["trace_overrun"]:
                checks.append(("trace", f"{info['delivery']['trace_overrun']} trace events lost"))
    seconds = time.monotonic() - t0
    ok = all(f is None for _, f in checks) and (cmp is None or cmp.ok)
    res = RunResult(sc.name, out, ok, cmp, checks, seconds, info)
    doc = {"scenario": sc.name, "ok": ok, "seconds": round(seconds, 1),
           "checks": [{"name": n, "ok": f is None, "failure": f} for n, f in checks],
           **info, "comparison": report.to_json(cmp) if cmp else None}
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (out / "junit.xml").write_text(report.junit_xml(f"hashlab.{sc.name}", cmp, checks, seconds))
    return res
