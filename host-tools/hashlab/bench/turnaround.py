"""``hashlab bench turnaround``: how long from a change to a checked result.

What a developer waits for, step by step:

Point ``HASHLAB_CACHE`` at another cache to read its history and time its entries (e.g.
the empty cache a cold ``scripts/demo`` filled).

* **builds**: per artefact (lab kernel, stock control kernel, patched QEMU, guest image),
  the build of the current cache entry and, from ``<cache>/history.jsonl``, the slowest
  build on record (cold: ccache misses) and the latest warm one; with ``--cold`` a cold
  build is measured now, into an empty temporary cache (ccache included), which is
  deleted afterwards;
* **cache hits**: finding each artefact when nothing changed (every run pays this);
* **lab VM**: boot to the command (the lab kernel's uptime when the command starts) and
  boot to power-off (``true``);
* **first verified report**: ``hashlab run scenarios/lab-vhost.yaml`` from the host: lab
  VM, patched QEMU with vhost_net, guest boot (from results.json), the corpus checked
  against the oracle;
* **demo**: ``scripts/demo`` (warm), with its phases (``--no-demo`` skips it).

Goal (issue 8): a warm ``scripts/demo`` under 3 minutes on this machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..cache import build_history
from ..errors import HashlabError
from ..paths import REPO, SCENARIOS_DIR, cache_root, results_root

KIND = "hashlab-bench-turnaround"
VERSION = 1
GOAL_DEMO_SECONDS = 180.0
FIRST_REPORT_SCENARIO = SCENARIOS_DIR / "lab-vhost.yaml"
HASHLAB = str(Path(sys.executable).parent / "hashlab")

# artefact -> (cache kind, `hashlab build ...` arguments)
ARTEFACTS = {
    "lab kernel": ("kernel", ["kernel"]),
    "stock kernel (control)": ("kernel-stock", ["kernel", "--design", "stock"]),
    "patched QEMU": ("qemu", ["qemu"]),
    "guest image (lab kernel)": ("guest", ["guest", "--kernel", "lab"]),
}


class TurnaroundError(HashlabError):
    exit_status = 1


def default_output() -> Path:
    return results_root() / "bench" / "turnaround.json"


def _timed(argv: list[str], env: dict | None = None, log=print, label: str = "") -> tuple[float, int, str]:
    log(f"bench: {label or ' '.join(argv)}")
    t0 = time.monotonic()
    r = subprocess.run(argv, cwd=REPO, env={**os.environ, **(env or {})},
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return round(time.monotonic() - t0, 2), r.returncode, r.stdout


def _entry_meta(path: str) -> dict:
    try:
        return json.loads((Path(path.strip().splitlines()[-1]) / ".done").read_text())
    except (OSError, ValueError, IndexError):
        return {}


# --------------------------------------------------------------------------- parts


def recorded_builds(history: list[dict]) -> dict[str, dict]:
    """Per cache kind: the slowest build on record and the latest (pure)."""
    out: dict[str, dict] = {}
    for m in history:
        k = m.get("kind")
        if not k or m.get("build_seconds") is None:
            continue
        d = out.setdefault(k, {"builds": 0, "slowest": None, "latest": None})
        d["builds"] += 1
        slim = {x: m.get(x) for x in ("key", "build_seconds", "ccache", "finished")}
        if d["slowest"] is None or m["build_seconds"] > d["slowest"]["build_seconds"]:
            d["slowest"] = slim
        d["latest"] = slim
    return out


def cache_hits(log=print) -> dict[str, dict]:
    """Time `hashlab build X --print-path` per artefact: a cache hit when nothing changed
    (a miss builds: then this is a build time, and says so)."""
    out = {}
    for name, (kind, args) in ARTEFACTS.items():
        before = time.time()
        secs, rc, text = _timed([HASHLAB, "build", *args, "--print-path"], log=log,
                                label=f"cache lookup: {name}")
        meta = _entry_meta(text) if rc == 0 else {}
        fresh = bool(meta) and _finished(meta) >= before - 1
        out[name] = {"kind": kind, "seconds": secs, "status": rc,
                     "key": meta.get("key"), "built_now": fresh,
                     "entry_build_seconds": meta.get("build_seconds"),
                     "entry_ccache": meta.get("ccache")}
        if rc != 0:
            out[name]["error"] = text.strip().splitlines()[-1:] or ["?"]
    return out


def _finished(meta: dict) -> float:
    try:
        return time.mktime(time.strptime(meta["finished"], "%Y-%m-%dT%H:%M:%S%z"))
    except (KeyError, ValueError):
        return 0.0


def cold_builds(log=print) -> dict[str, dict]:
    """Every artefact built now into an empty temporary cache (removed afterwards)."""
    tmp = Path(tempfile.mkdtemp(prefix="hashlab-cold-", dir="/var/tmp"))
    out = {}
    try:
        for name, (kind, args) in ARTEFACTS.items():
            secs, rc, text = _timed([HASHLAB, "build", *args, "--print-path"],
                                    env={"HASHLAB_CACHE": str(tmp)}, log=log,
                                    label=f"cold build: {name} (cache {tmp})")
            meta = _entry_meta(text) if rc == 0 else {}
            out[name] = {"kind": kind, "seconds": secs, "status": rc,
                         "build_seconds": meta.get("build_seconds"), "ccache": meta.get("ccache")}
            log(f"bench:   {secs:.0f}s (status {rc})")
            if rc != 0:
                out[name]["error"] = text.strip().splitlines()[-3:]
                break
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def lab_boot(log=print) -> dict:
    """Boot the lab VM for `cat /proc/uptime` (boot to command) and for `true`."""
    from ..host import lab

    fd, name = tempfile.mkstemp(prefix="hashlab-uptime-", dir=cache_root())
    os.close(fd)
    try:
        log("bench: lab VM: boot, `cat /proc/uptime`, power off")
        r = lab.run(f"cat /proc/uptime > {name}", timeout=600)
        uptime = float(Path(name).read_text().split()[0]) if r.status == 0 else None
    finally:
        Path(name).unlink(missing_ok=True)
    return {"boot_to_command_seconds": uptime, "boot_to_poweroff_seconds": round(r.seconds, 2),
            "status": r.status, "log": str(r.log)}


def first_report(out_dir: Path, log=print) -> dict:
    """`hashlab run scenarios/lab-vhost.yaml` from the host, timed; its results.json."""
    secs, rc, text = _timed([HASHLAB, "run", str(FIRST_REPORT_SCENARIO), "--out",
                             str(out_dir)], log=log,
                            label="first verified report: hashlab run scenarios/lab-vhost.yaml")
    try:
        doc = json.loads((out_dir / "results.json").read_text())
    except (OSError, ValueError):
        doc = {}
    counts = (doc.get("comparison") or {}).get("counts", {})
    return {"seconds": secs, "status": rc, "ok": doc.get("ok"),
            "guest_boot_seconds": doc.get("boot_seconds"),
            "scenario_seconds": doc.get("seconds"), "frames": counts.get("sent"),
            "matching": counts.get("match"), "mismatches": counts.get("mismatch"),
            "results": str(out_dir / "results.json"),
            "tail": text.strip().splitlines()[-3:] if rc else []}


def demo(log=print) -> dict:
    secs, rc, text = _timed(["scripts/demo"], log=log, label="scripts/demo (warm)")
    try:
        timing = json.loads((results_root() / "demo" / "demo-timing.json").read_text())
    except (OSError, ValueError):
        timing = {}
    return {"seconds": secs, "status": rc, "phases": timing.get("phases"),
            "goal_seconds": GOAL_DEMO_SECONDS, "goal_met": rc == 0 and secs < GOAL_DEMO_SECONDS}


# --------------------------------------------------------------------------- report


def _s(v) -> str:
    if v is None:
        return "-"
    v = float(v)
    return f"{v:.1f}s" if v < 120 else f"{int(v) // 60}m{int(v) % 60:02d}s"


def _cc(c: dict | None, kind: str = "") -> str:
    if kind == "guest":  # packs files, compiles nothing
        return ""
    return f"ccache {c['hit']} hit / {c['miss']} miss" if c else "ccache: not recorded"


def table(result: dict) -> str:
    rows: list[tuple[str, str, str]] = []
    rec = result.get("recorded_builds", {})
    for name, (kind, _) in ARTEFACTS.items():
        cold = result.get("cold_builds", {}).get(name)
        if cold:
            rows.append((f"{name}: cold build (measured now)", _s(cold["seconds"]),
                         _cc(cold.get("ccache"), kind)))
        r = rec.get(kind)
        if r and r["slowest"]:
            rows.append((f"{name}: slowest build on record", _s(r["slowest"]["build_seconds"]),
                         _cc(r["slowest"].get("ccache"), kind)))
            if r["latest"] is not r["slowest"] and r["latest"] != r["slowest"]:
                rows.append((f"{name}: latest build", _s(r["latest"]["build_seconds"]),
                             _cc(r["latest"].get("ccache"), kind)))
        h = result.get("cache_hits", {}).get(name)
        if h:
            rows.append((f"{name}: {'built now' if h['built_now'] else 'cache hit'}",
                         _s(h["seconds"]), "status %d" % h["status"] if h["status"] else ""))
    lb = result.get("lab_boot")
    if lb:
        rows.append(("lab VM: boot to command", _s(lb["boot_to_command_seconds"]),
                     "lab kernel uptime when the command starts"))
        rows.append(("lab VM: boot, `true`, power off", _s(lb["boot_to_poweroff_seconds"]), ""))
    fr = result.get("first_report")
    if fr:
        rows.append(("guest boot (nested KVM, patched QEMU)", _s(fr["guest_boot_seconds"]),
                     "from results.json"))
        rows.append(("first verified report (hashlab run lab-vhost)", _s(fr["seconds"]),
                     f"{fr['matching']}/{fr['frames']} frames right, {fr['mismatches']} "
                     f"mismatches" if fr["frames"] else f"status {fr['status']}"))
    d = result.get("demo")
    if d:
        rows.append(("scripts/demo, warm", _s(d["seconds"]),
                     f"goal < {_s(d['goal_seconds'])}: {'met' if d['goal_met'] else 'NOT met'}"
                     f"; {d['phases'] or ''}"))
    w0 = max(len(r[0]) for r in rows) if rows else 10
    w1 = max(len(r[1]) for r in rows) if rows else 5
    out = [f"{'step':<{w0}}  {'time':>{w1}}  note", f"{'-' * w0}  {'-' * w1}  ----"]
    out += [f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows]
    return "\n".join(out) + "\n"


def run(cold: bool, with_demo: bool, log=print) -> dict:
    result: dict = {"kind": KIND, "version": VERSION,
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count()}
    if cold:
        result["cold_builds"] = cold_builds(log)
    result["cache_hits"] = cache_hits(log)
    bad = [n for n, h in result["cache_hits"].items() if h["status"]]
    if bad:
        raise TurnaroundError(f"cannot build {', '.join(bad)}: "
                              + "; ".join(" ".join(result['cache_hits'][n].get('error', []))
                                          for n in bad))
    result["recorded_builds"] = recorded_builds(build_history())
    result["lab_boot"] = lab_boot(log)
    result["first_report"] = first_report(results_root() / "bench" / "turnaround-first-report",
                                          log)
    if with_demo:
        result["demo"] = demo(log)
    result["ok"] = result["first_report"]["status"] == 0 and \
        (not with_demo or result["demo"]["status"] == 0)
    return result
