"""``hashlab bench datapath``: frames per second into the guest, per datapath, one run.

The rows are the ``scenarios/bench-*.yaml`` scenarios: one guest (the lab kernel, 2 queue
pairs, Microsoft key), one corpus selection (IPv4/IPv6 TCP/UDP and IPv6 with extension
headers), one load phase (``hashlab.run.load``), four datapaths:

    bench-software     stock QEMU hashes in userspace, tap vhost=off (what exists)
    bench-ebpf-tap     patched QEMU: the eBPF program reports, tap vhost=off
    bench-ebpf-vhost   patched QEMU: the eBPF program reports, vhost_net (vhost=on)
    bench-stock-vhost  stock QEMU, hash=off: eBPF steering only, vhost_net (reference)

Each row runs in a lab VM boot of its own (``hashlab run --here`` inside it), one after
the other, with the same lab kernel, guest image and QEMU builds.  Each row first passes
the scenario's checked
batch (every frame's hash, class and queue against the oracle), then the load rounds,
where every received record is judged too: "right fps" counts only records with the
oracle's hash, class and queue.  The result is the ratios; everything runs nested under
TCG, so the absolute numbers mean little.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from .. import designs, retries
from ..errors import HashlabError
from ..paths import SCENARIOS_DIR, results_root

KIND = "hashlab-bench-datapath"
VERSION = 1

# (scenario, short label); the first is the baseline of the ratios.
ROWS = (
    ("bench-software", "QEMU userspace hash (stock, vhost=off)"),
    ("bench-ebpf-tap", "eBPF hash report via tap (patched, vhost=off)"),
    ("bench-ebpf-vhost", "eBPF hash report via vhost_net (patched, vhost=on)"),
    ("bench-stock-vhost", "eBPF steering, no hash report (stock, vhost=on)"),
)
BASELINE = "bench-software"
OURS = "bench-ebpf-vhost"
REFERENCE = "bench-stock-vhost"  # today's fast path, without hashes
# With several designs (--design progtype,kfunc) the first runs every row, the others
# the rows whose program depends on the kernel's design, named "<scenario>@<design>".
DESIGN_ROWS = ("bench-ebpf-tap", "bench-ebpf-vhost")


class BenchError(HashlabError):
    exit_status = 1


# A row that ended with one of these lost its guest (nested KVM under TCG), not its
# hashes: it is run again in a fresh lab VM boot.
VM_ERRORS = ("GuestHang", "QemuExited", "QemuStartError")


def _vm_lost(results: Path) -> str | None:
    """Why the row's run was lost to the VM (None: it has a result to report)."""
    if not results.is_file():
        return "no results.json"
    try:
        err = json.loads(results.read_text()).get("error") or {}
    except ValueError:
        return "unreadable results.json"
    if err.get("type") in VM_ERRORS:
        return f"{err['type']}: {str(err.get('message', '')).splitlines()[0][:160]}"
    return None


def scenario_paths() -> list[Path]:
    return [SCENARIOS_DIR / f"{name}.yaml" for name, _ in ROWS]


def default_output() -> Path:
    return results_root() / "bench" / "datapath.json"


# --------------------------------------------------------------------------- pure


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return round(a / b, 2)


def _sum(*vals: float | None) -> float | None:
    return None if any(v is None for v in vals) else round(sum(vals), 2)


def row_from_results(name: str, label: str, doc: dict | None) -> dict:
    """One table row from a scenario's results.json (None: the row did not run)."""
    if doc is None:
        return {"scenario": name, "datapath": label, "ran": False,
                "error": "no results.json (the run did not get that far)"}
    ld = doc.get("load")
    dp = doc.get("datapath", {})
    row = {"scenario": name, "datapath": label, "ran": ld is not None, "ok": doc.get("ok"),
           "qemu": f"{dp.get('qemu', '?')} {dp.get('qemu_version', '?')}",
           "vhost": dp.get("vhost"), "kernel": dp.get("host_kernel"),
           "hash_report": bool(doc.get("oracle", {}).get("check_hash")),
           "checked_batch": (doc.get("comparison") or {}).get("counts"),
           "failed_checks": [c["name"] + ": " + str(c["failure"])
                             for c in doc.get("checks", []) if not c["ok"]]}
    if doc.get("error"):
        row["error"] = f"{doc['error']['type']}: {doc['error']['message']}"
    if ld is None:
        row.setdefault("error", "no load phase in results.json")
        return row
    m, t = ld["median"], ld["totals"]
    row.update({
        "frames_per_round": ld["frames_per_round"], "rounds": len(ld["rounds"]),
        "offered_fps": m["offered_fps"], "delivered_fps": m["delivered_fps"],
        "right_fps": m["right_fps"],
        "right": t["right"], "wrong": t["wrong"], "known": t["known"],
        "delivered": t["delivered"], "offered": t["offered"],
        "tap_tx_dropped": t["tap_tx_dropped"], "guest_rx_dropped": t["guest_rx_dropped"],
        "trace_overrun": t["trace_overrun"],
        "sender_bound_rounds": ld["sender_bound_rounds"],
        "cpu_us_per_frame": {k: m.get(f"cpu_us_per_frame_{k}") for k in ("vcpu", "vhost", "other")},
        # what moving a frame costs the host outside the guest: vhost worker + QEMU's
        # own threads (main loop, I/O), without the vCPUs (the guest's work)
        "host_cpu_us_per_frame": _sum(m.get("cpu_us_per_frame_vhost"),
                                      m.get("cpu_us_per_frame_other")),
        "qemu_peak_rss_kib": ld["qemu_peak_rss_kib"],
        "round_right_fps": [r["right_fps"] for r in ld["rounds"]],
        "round_host_cpu_us_per_frame": [
            _sum(r["qemu_cpu_us_per_frame"].get("vhost"), r["qemu_cpu_us_per_frame"].get("other"))
            for r in ld["rounds"] if r.get("qemu_cpu_us_per_frame")],
    })
    spread = [v for v in row["round_right_fps"] if v]
    row["right_fps_spread"] = round((max(spread) - min(spread)) / statistics.median(spread), 3) \
        if len(spread) > 1 else None
    return row


def summarize(rows: list[dict], meta: dict | None = None) -> dict:
    """Ratios against the baseline (right fps), and ours against today's fast path."""
    by = {r["scenario"]: r for r in rows}
    base = by.get(BASELINE, {}).get("right_fps")
    for r in rows:
        r["ratio_vs_software"] = _ratio(r.get("right_fps"), base)
    ours, ref = by.get(OURS, {}), by.get(REFERENCE, {})
    others = {}
    for r in rows:
        name, _, design = r["scenario"].partition("@")
        if design:  # the same datapath on another design's kernel, vs the first's
            first = by.get(name, {})
            others.setdefault(design, {})[name] = {
                "right_fps_vs_first": _ratio(r.get("right_fps"), first.get("right_fps")),
                "host_cpu_vs_first": _ratio(r.get("host_cpu_us_per_frame"),
                                            first.get("host_cpu_us_per_frame")),
                "host_cpu_us_per_frame": r.get("host_cpu_us_per_frame")}
    findings = {
        "vhost_ebpf_vs_software": _ratio(ours.get("right_fps"), base),
        "tap_ebpf_vs_software": _ratio(by.get("bench-ebpf-tap", {}).get("right_fps"), base),
        "vhost_with_hashes_vs_without": _ratio(ours.get("delivered_fps"),
                                               ref.get("delivered_fps")),
        # host CPU per frame: how much less the fast path costs than hashing in QEMU,
        # and what reporting hashes adds to today's vhost_net path
        "host_cpu_software_vs_vhost_ebpf": _ratio(by.get(BASELINE, {}).get("host_cpu_us_per_frame"),
                                                  ours.get("host_cpu_us_per_frame")),
        "host_cpu_vhost_with_vs_without_hashes": _ratio(ours.get("host_cpu_us_per_frame"),
                                                        ref.get("host_cpu_us_per_frame")),
        "other_designs": others,
    }
    wrong = sum(r.get("wrong", 0) for r in rows)
    return {"kind": KIND, "version": VERSION, **(meta or {}), "rows": rows,
            "findings": findings, "wrong_records": wrong,
            "ok": all(r.get("ran") and r.get("ok") for r in rows) and wrong == 0}


def _f(v, fmt="{:.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def table(result: dict) -> str:
    head = ["datapath", "hash report", "offered fps", "delivered fps", "right fps",
            "vs software", "wrong", "tap drops", "guest drops", "host CPU us/frame",
            "(vCPU/vhost/QEMU)", "QEMU peak RSS"]
    lines_ = []
    for r in result["rows"]:
        if not r.get("ran"):
            why = (r.get("error") or "?").splitlines()[0][:100]
            lines_.append([r["datapath"]] + ["-"] * 10 + [f"did not run: {why}"])
            continue
        c = r["cpu_us_per_frame"]
        lines_.append([
            r["datapath"], "yes" if r["hash_report"] else "no",
            _f(r["offered_fps"]) + ("*" if r["sender_bound_rounds"] else ""),
            _f(r["delivered_fps"]), _f(r["right_fps"]),
            _f(r["ratio_vs_software"], "{:.2f}x"),
            f"{r['wrong']}/{r['delivered']}", str(r["tap_tx_dropped"]),
            str(r["guest_rx_dropped"]), _f(r["host_cpu_us_per_frame"]),
            "/".join(_f(c[k], "{:.0f}") for k in ("vcpu", "vhost", "other")),
            _f(r["qemu_peak_rss_kib"] and r["qemu_peak_rss_kib"] / 1024, "{:.0f} MiB"),
        ])
    w = [max(len(head[i]), *(len(x[i]) for x in lines_)) for i in range(len(head))]
    out = ["  ".join(h.ljust(w[i]) for i, h in enumerate(head)),
           "  ".join("-" * n for n in w)]
    out += ["  ".join(x[i].ljust(w[i]) for i in range(len(head))) for x in lines_]
    f = result["findings"]
    out.append("")
    out.append(f"eBPF hash report + vhost_net vs QEMU userspace hashing: "
               f"{_f(f['vhost_ebpf_vs_software'], '{:.2f}x')} (right fps); via tap: "
               f"{_f(f['tap_ebpf_vs_software'], '{:.2f}x')}")
    out.append(f"vhost_net with hash reports vs without (stock, steering only): "
               f"{_f(f['vhost_with_hashes_vs_without'], '{:.2f}x')} (delivered fps)")
    out.append(f"host CPU per frame (vhost + QEMU, without vCPUs), QEMU userspace hashing vs "
               f"eBPF + vhost_net: {_f(f['host_cpu_software_vs_vhost_ebpf'], '{:.2f}x')}; "
               f"vhost_net with vs without hash reports: "
               f"{_f(f['host_cpu_vhost_with_vs_without_hashes'], '{:.2f}x')}")
    first = (result.get("designs") or [result.get("design")])[0]
    for design, per in f.get("other_designs", {}).items():
        for name, v in per.items():
            out.append(f"{name} on {design} vs on {first}: host CPU per frame "
                       f"{_f(v['host_cpu_vs_first'], '{:.2f}x')}, right fps "
                       f"{_f(v['right_fps_vs_first'], '{:.2f}x')}")
    out.append(f"wrong hash/class/queue under load: {result['wrong_records']} records")
    if any(r.get("sender_bound_rounds") for r in result["rows"] if r.get("ran")):
        out.append("* delivered >= 90% of offered: the datapath kept up with the offered rate "
                   "(its capacity is higher; compare host CPU per frame at equal load)")
    lost = [f"{r['scenario']} attempt {f['attempt']}: {f['error']} ({f['log']})"
            for r in result["rows"] for f in r.get("lab_failures", [])]
    for line in lost:
        out.append(f"lab VM lost and booted again: {line}")
    out.append("nested under TCG: read the ratios, not the absolute rates")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- running


def run(frames: int | None, rounds: int | None, rate: int | None, out_dir: Path,
        timeout: float, log=print, attempts: int = 3,
        design: str | list[str] = designs.DEFAULT) -> dict:
    """Run the rows, each in its own lab VM boot of DESIGN's kernel (whatever design the
    scenarios name: the bench measures the kernels it is told); returns the summarized
    result.  With several designs, the first runs every row and the others DESIGN_ROWS
    (``<scenario>@<design>``), the same frames on each.

    One boot per row: the lab kernel runs under TCG's emulated SVM, which now and then
    crashes the lab kernel itself under sustained guest traffic (stock QEMU with vhost=off
    at 12k fps: a page fault storm right after a VM exit, in the lab kernel's KVM vCPU
    thread), and hangs or resets nested guests now and then.  A row whose lab VM dies, or
    whose guest is lost twice within one boot (the orchestrator retries once), is booted
    again, up to ATTEMPTS times in all; every lost boot is listed (``lab_failures``).
    Wrong hashes are never retried."""
    from ..host import datapath
    from ..run.scenario import load_scenario

    paths = scenario_paths()
    scs = [load_scenario(p) for p in paths]
    _, env = datapath.prepare_lab({s.guest.kernel for s in scs}, {s.corpus.seed for s in scs},
                                  out_dir, True)
    out_dir = out_dir.resolve()
    argv = datapath.hashlab_argv("run", "--here")
    if frames is not None:
        argv += ["--load-frames", str(frames)]
    if rounds is not None:
        argv += ["--load-rounds", str(rounds)]
    if rate is not None:
        argv += ["--load-rate", str(rate)]
    wanted = [design] if isinstance(design, str) else list(design)

    def label_on(label: str, d: str) -> str:  # tunrss: tun hashes, not the program
        return label.replace("eBPF hash report", f"{designs.get(d).hasher} hash report")

    plan = [(name, label_on(label, wanted[0]) if name in DESIGN_ROWS else label, path,
             wanted[0]) for (name, label), path in zip(ROWS, paths)]
    for d in wanted[1:]:
        plan += [(f"{name}@{d}", f"{label_on(label, d)} [{d}]", path, d)
                 for (name, label), path in zip(ROWS, paths) if name in DESIGN_ROWS]
    rows, lab_seconds = [], 0.0
    for name, label, path, row_design in plan:
        results = out_dir / name / "results.json"
        failures = []
        for attempt in range(1, attempts + 1):
            results.unlink(missing_ok=True)  # never read a previous run's results
            log(f"bench: {name}: booting the lab VM (attempt {attempt})")
            try:
                res = datapath.run_in_lab(argv + ["--out", str(out_dir / name), str(path)],
                                          env, timeout, log, design=row_design,
                                          writes=[out_dir / name], reads=[path])
            except HashlabError as e:  # the lab VM panicked, hung or died
                failures.append({"attempt": attempt, "error": str(e).splitlines()[0],
                                 "log": str(getattr(e, "log", ""))})
                log(f"bench: {name}: lab VM lost: {failures[-1]['error']}")
                retries.record("lab", f"{name}: {failures[-1]['error']}")
                continue
            lab_seconds += res.seconds
            log(f"bench: {name}: lab VM done in {res.seconds:.0f}s, status {res.status}; "
                f"console log {res.log}")
            lost = _vm_lost(results)
            if lost is None:
                break
            failures.append({"attempt": attempt, "error": lost, "log": str(res.log)})
            log(f"bench: {name}: {lost}")
            retries.record("lab", f"{name}: {lost}")
        doc = json.loads(results.read_text()) if results.is_file() else None
        row = row_from_results(name, label, doc)
        row["design"] = row_design
        row["lab_failures"] = failures
        rows.append(row)
    meta = {"lab_seconds": round(lab_seconds, 1), "results_dir": str(out_dir),
            "design": wanted[0], "designs": wanted}
    return summarize(rows, meta)
