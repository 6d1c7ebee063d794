"""The demo's report as one JSON document (``report.json``): correctness, cost, interface.

``build()`` is pure over what this run wrote: the comparison (``compare.json``, rows and
meta), the benchmarks' JSON (``hashlab bench program`` and ``datapath``, when they ran),
and the interface counts of the committed series (``results.interface``).  Every number
the report shows is in this document; ``results.htmlreport`` only renders it, so a report
regenerated from ``report.json`` is the same report (tests/test_evidence.py).
"""

from __future__ import annotations

import textwrap

from . import matrix as M

KIND = "hashlab-report"
VERSION = 1

# The per-packet classes the report shows (bench program's names), in this order.
CLASSES = ("ipv4-tcp", "ipv4-udp", "ipv6-tcp", "ipv6-ext", "non-ip")
# Who does the hashing, per design, in the host's per-packet bench: the eBPF designs run
# hashlab's program (its socket-filter form on the host; in the kernel the progtype form
# writes __sk_buff fields, the kfunc form calls a kfunc), tunrss runs tun's own function.
PROGRAM_SUBJECTS = (("upstream", "upstream QEMU's program (queue only, no report)"),
                    ("ours", "progtype and kfunc: hashlab's eBPF program"),
                    ("tun-c", "tunrss: tun's hash function (C, built for the host)"),
                    ("empty", "BPF_PROG_TEST_RUN's own cost (in every eBPF number)"))
USERSPACE = "bench-software"
STOCK_VHOST = "bench-stock-vhost"


def _row_words(r: M.RowResult) -> str:
    if r.status != M.RAN:
        return f"{r.status}: {r.reason}"
    return (f"hash report {M.offered_cell(r)}; hashes right {M.hashes_cell(r)}; queues right "
            f"{M.queues_cell(r)}; {M.verdict(r)}")


def cross_pairings(rows: list[M.RowResult]) -> list[dict]:
    """Each QEMU on each kernel, in words, from the rows that ran."""
    out = []
    for r in rows:
        if r.where != "lab":
            continue
        out.append({"row": r.id, "qemu": r.qemu.split(" ")[0] if r.qemu else "?",
                    "kernel": r.design or "host", "vhost": r.vhost, "what": _row_words(r)})
    return out


def _spread(m: dict) -> tuple[float, float, float]:
    s = m.get("samples") or [m["ns_best"]]
    return m.get("ns_median", m["ns_best"]), min(s), max(s)


def per_packet(program: dict | None) -> dict | None:
    """ns per packet on the host (native JIT) per class and subject: median, the spread
    of the samples, and the ratio to upstream's program (best samples)."""
    if not program:
        return None
    by = {(m["subject"], m["class"]): m for m in program.get("measurements", [])
          if m["where"] == "host"}
    subjects = []
    for name, desc in PROGRAM_SUBJECTS:
        cells = {}
        for cls in CLASSES:
            m = by.get((name, cls))
            if m is None:
                continue
            med, lo, hi = _spread(m)
            up = by.get(("upstream", cls))
            cells[cls] = {"best": round(m["ns_best"], 1), "median": round(med, 1),
                          "low": round(lo, 1), "high": round(hi, 1),
                          "samples": len(m.get("samples") or []),
                          "x_upstream": round(m["ns_best"] / up["ns_best"], 2)
                          if up and up["ns_best"] > 0 else None}
        if cells:
            subjects.append({"name": name, "desc": desc, "classes": cells})
    env = program.get("environments", {}).get("host", {})
    mem = env.get("memory_bytes") or {}
    return {"where": "host", "kernel": env.get("kernel"), "classes": list(CLASSES),
            "subjects": subjects,
            "memory": [{"name": n, "desc": d, "bytes": mem[n]} for n, d in PROGRAM_SUBJECTS
                       if n in mem and n != "empty"],
            "note": "ns per packet, BPF_PROG_TEST_RUN for the eBPF programs (the harness's "
                    "own cost is the 'empty' row), a loop over the same frames for tun's C; "
                    "bar = median, whiskers = the samples' range; x upstream = best / "
                    "upstream's best"}


def datapath_cost(dp: dict | None) -> dict | None:
    """Host CPU per frame through each datapath at the bench's fixed rate, with the
    spread over its rounds, as ratios to QEMU's userspace hashing and to stock
    vhost_net without reports (both in the same run)."""
    if not dp:
        return None
    rows = dp.get("rows", [])
    by = {r["scenario"]: r for r in rows}
    soft = by.get(USERSPACE, {}).get("host_cpu_us_per_frame")
    stock = by.get(STOCK_VHOST, {}).get("host_cpu_us_per_frame")
    out = []
    for r in rows:
        cpu = r.get("host_cpu_us_per_frame")
        rounds = [v for v in r.get("round_host_cpu_us_per_frame") or [] if v is not None]
        name, _, design = r["scenario"].partition("@")
        out.append({
            "scenario": r["scenario"], "datapath": r.get("datapath"),
            "design": r.get("design") or design or (dp.get("designs") or ["?"])[0],
            "vhost": r.get("vhost"), "hash_report": r.get("hash_report"),
            "ok": bool(r.get("ran") and r.get("ok")), "wrong": r.get("wrong"),
            "right": r.get("right"), "offered_fps": r.get("offered_fps"),
            "host_cpu_us_per_frame": cpu,
            "low": min(rounds) if rounds else cpu, "high": max(rounds) if rounds else cpu,
            "rounds": len(rounds),
            "x_userspace": round(cpu / soft, 2) if cpu and soft else None,
            "x_stock_vhost": round(cpu / stock, 2) if cpu and stock else None,
            "qemu_peak_rss_mib": round(r["qemu_peak_rss_kib"] / 1024, 1)
            if r.get("qemu_peak_rss_kib") else None,
            # lab VMs whose nested guest was lost and that were booted again for the row
            "lab_vm_retries": len(r.get("lab_failures") or []),
        })
    return {"rows": out, "wrong_records": dp.get("wrong_records"), "ok": dp.get("ok"),
            "note": "host CPU per frame = vhost worker + QEMU's own threads (no vCPU), "
                    "median over the rounds, whiskers = the rounds' range; in the lab VM "
                    "under TCG, so compare within this table only"}


def interface_rows(costs: dict[str, dict], rows: list[M.RowResult]) -> list[dict]:
    """Per design: the counted interface and code, and what the cross pairings did."""
    by = {(r.design, r.qemu.split(" ")[0] if r.qemu else "", r.vhost): r for r in rows}
    out = []
    for design, c in costs.items():
        old_qemu = by.get((design, "stock", True))
        new_qemu_old_kernel = by.get(("stock", "patched", True))
        out.append({
            "design": design, "uapi_items": len(c["uapi"]), "uapi": c["uapi"],
            "kfuncs": c["kfuncs"], "kernel_patches": c["kernel_patches"],
            "kernel_lines": c["kernel_lines"], "selftest_lines": c["selftest_lines"],
            "qemu_patches": c["qemu_patches"], "qemu_c_lines": c["qemu_c_lines"],
            "qemu_ebpf_lines": c["qemu_ebpf_lines"], "privileges": c["privileges"],
            "old_qemu_new_kernel": _row_words(old_qemu) if old_qemu else "not run",
            "new_qemu_old_kernel": _row_words(new_qemu_old_kernel)
            if new_qemu_old_kernel else "not run",
            "migration": "not measured in this run",
        })
    return out


def summary(doc: dict) -> str:
    """The paragraph for the thread: facts and numbers of this run, no adjectives."""
    m = doc["meta"]
    rows = [M.RowResult.from_json(r) for r in doc["correctness"]["rows"]]
    ran = [r for r in rows if r.status == M.RAN]
    spec_rows = [r for r in ran if r.design in ("progtype", "kfunc", "tunrss")
                 and r.hash_report_negotiated and r.qemu.startswith("patched")]
    n_reg = sum(1 for r in ran if r.regression)
    parts = [f"hashlab {m.get('commit', '?')}, {m.get('finished', '?')}: "
             f"{len(ran)} of {len(rows)} datapath rows ran, "
             f"{sum(1 for r in ran if r.ok)} as their model says"
             + (f", {n_reg} regression{'s' if n_reg != 1 else ''}" if n_reg else "") + "."]
    for r in spec_rows:
        s = r.spec
        parts.append(f"{r.design}, vhost {'on' if r.vhost else 'off'}: "
                     f"{s.get('hash_right', 0)}/{s.get('seen', 0)} hashes and "
                     f"{s.get('queue_right', 0)}/{s.get('queue_checked', 0)} queues as the "
                     f"virtio spec gives them.")
    qt = qtest_runs(doc)
    if qt:
        frames = sum(st["received"] for _, q in qt for st in q.get("setups", []))
        right = sum(st["right"]["all"] for _, q in qt for st in q.get("setups", []))
        kept = sum(r["still_right"] == r["probe"] and r["refused"]
                   for _, q in qt for r in q.get("refused", []))
        n_ref = sum(len(q.get("refused", [])) for _, q in qt)
        parts.append(f"A virtio-net driver over qtest, {len(qt)} runs (designs x vhost): "
                     f"{right}/{frames} frames with the exact report value, hash and queue; "
                     f"{kept}/{n_ref} refused RSS_CONFIGs kept the previous configuration.")
    pp = doc["cost"].get("per_packet")
    if pp:
        bits = []
        for s in pp["subjects"]:
            c = s["classes"].get("ipv6-tcp")
            if c and s["name"] != "empty":
                bits.append(f"{s['name']} {c['best']:.0f} ns")
        if bits:
            parts.append("Per IPv6 TCP packet on the host: " + ", ".join(bits) + ".")
    dp = doc["cost"].get("datapath")
    if dp:
        bits = [f"{r['scenario']} {r['host_cpu_us_per_frame']:.0f}" for r in dp["rows"]
                if r.get("host_cpu_us_per_frame")]
        if bits:
            parts.append("Host CPU per frame (us) at a fixed rate: " + ", ".join(bits) + ".")
    for i in doc["interface"]:
        parts.append(f"{i['design']}: {i['uapi_items']} UAPI items"
                     + (f" and {len(i['kfuncs'])} kfunc" if i["kfuncs"] else "")
                     + f", kernel +{i['kernel_lines'][0]}/-{i['kernel_lines'][1]} lines, "
                     f"QEMU C +{i['qemu_c_lines'][0]}/-{i['qemu_c_lines'][1]}, eBPF "
                     f"+{i['qemu_ebpf_lines'][0]}/-{i['qemu_ebpf_lines'][1]}.")
    g = doc.get("spec_growth")
    if g:
        parts.append("When the spec grew (virtio 1.3's inner header hash): " + "; ".join(
            f"{r['design']} kernel +{r['kernel_lines'][0]}/-{r['kernel_lines'][1]} lines and "
            f"{len(r['uapi'])} UAPI items, QEMU C +{r['qemu_c_lines'][0]}, eBPF "
            f"+{r['qemu_ebpf_lines'][0]}, " + ("a new host kernel" if r["new_kernel"]
                                               else "no new host kernel")
            for r in g["rows"]) + ".")
    parts.append(f"Versions: {m.get('versions', '?')}. Reproduce: {m.get('reproduce', '?')}.")
    return textwrap.fill(" ".join(parts), 72, break_on_hyphens=False, break_long_words=False)


def spec_growth(growth: dict[str, dict] | None) -> dict | None:
    """What virtio 1.3's inner header hash cost each design (results.interface
    .tunnel_costs), as the report's table rows."""
    if not growth:
        return None
    return {"feature": "inner header hash (VIRTIO_NET_F_HASH_TUNNEL, virtio 1.3)",
            "rows": [{"design": d, **c} for d, c in growth.items()],
            "note": "counted over the patches that implement it; the eBPF designs' QEMU "
                    "patches are the program (14) and the device (15), tunrss's the "
                    "device and tun's interface (15, 16), its kernel patches tun's code "
                    "and UAPI (8) and their kselftest (9)"}


def build(compare_doc: dict, program: dict | None = None, datapath: dict | None = None,
          costs: dict[str, dict] | None = None, extra_meta: dict | None = None,
          growth: dict[str, dict] | None = None) -> dict:
    rows = M.rows_from_json(compare_doc)
    meta = {**compare_doc.get("meta", {}), **(extra_meta or {})}
    row_docs = [r.to_json() for r in rows]
    doc = {
        "kind": KIND, "version": VERSION, "meta": meta,
        "correctness": {"rows": row_docs, "designs": M.designs_json(rows),
                        "cross_pairings": cross_pairings(rows),
                        "qtest": meta.pop("qtest", None)},
        "cost": {"per_packet": per_packet(program), "datapath": datapath_cost(datapath)},
        "interface": interface_rows(costs or {}, rows),
        "spec_growth": spec_growth(growth),
    }
    doc["summary"] = summary(doc)
    return doc


def qtest_runs(doc: dict) -> list[tuple[str, dict]]:
    """(design, run) for every qtest driver run in the document."""
    return [(d, q) for d, runs in (doc["correctness"].get("qtest") or {}).items() for q in runs]


def ok(doc: dict) -> bool:
    rows = [M.RowResult.from_json(r) for r in doc["correctness"]["rows"]]
    dp = doc["cost"].get("datapath")
    return (all(r.status == M.RAN and r.ok for r in rows) and (dp is None or bool(dp["ok"]))
            and all(q.get("ok") for _, q in qtest_runs(doc)))
