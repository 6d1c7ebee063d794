"""A scenario's load phase: offered load, and what the guest received of it.

After the checked batches (scenario ``load:``), the corpus selection is written to the
tap unpaced, cycled to ``load.frames`` frames, ``load.rounds`` times.  Per round:

* offered: frames written and the sender's own rate (when the guest receives about as
  fast as the sender writes, the sender was the limit, not the datapath: ``sender_bound``);
* delivered: records the guest traced, and their rate over the guest's own trace clock
  (first to last record), so that host-side polling does not enter the figure;
* right: delivered records whose hash, class and queue are what the row's oracle says
  (every record judged: ``report.judge_records``), and their rate;
* where the rest went: the tap's ``tx_dropped`` (its queue was full: the datapath did not
  keep up), the guest's ``rx_dropped``, lost trace events;
* the host-side cost: CPU seconds of QEMU's threads by role (the vCPU threads, which
  include the guest's own time under KVM; vhost workers, which are threads of QEMU's
  process since Linux 6.4; the rest: QEMU's main loop, which reads the tap with
  vhost=off), and QEMU's peak resident memory.

Nested under TCG, absolute figures mean little; compare rows of one run (hashlab.bench).
"""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path

from . import guest as guestmod
from ..results import report
from ..host.machine import Machine
from ..host.tap import Tap

# Below this, a delivered rate within 10% of the sender's rate says the sender was the
# limit of the round (its rate is a lower bound of the datapath's).
SENDER_BOUND = 0.9


def thread_cpu(pid: int | None) -> dict[str, float]:
    """CPU seconds (user + system) of process PID's threads: vcpu, vhost, other."""
    out = {"vcpu": 0.0, "vhost": 0.0, "other": 0.0}
    if not pid:
        return out
    import os

    tick = os.sysconf("SC_CLK_TCK")
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            raw = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        secs = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        role = "vcpu" if comm.startswith("CPU ") else "vhost" if comm.startswith("vhost") \
            else "other"
        out[role] += secs
    return out


def peak_rss_kib(pid: int | None) -> int | None:
    """VmHWM of process PID in KiB (None when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _rate(n: int, seconds: float | None) -> float | None:
    return round(n / seconds, 1) if seconds and seconds > 0 else None


async def run_round(vm: Machine, tap: Tap, frames: list[bytes], count: int, rate: int,
                    sent: list[report.Sent], check_hash: bool, pid: int | None) -> dict:
    st0 = (await vm.agent("stats")).kind("stats")[0]
    t0 = tap.stats()
    cpu0 = thread_cpu(pid)
    n, send_s = await asyncio.to_thread(tap.blast, frames, count, rate or None)
    got = await guestmod.wait_rx(vm, st0["rx_packets"], n, 120)
    cpu1 = thread_cpu(pid)
    records, overrun = await guestmod.collect(vm)
    st1 = (await vm.agent("stats")).kind("stats")[0]
    t1 = tap.stats()
    j = report.judge_records(sent, records, check_hash)
    stamps = [o.ts for o in records if o.ts >= 0]
    span = (max(stamps) - min(stamps)) if len(stamps) > 1 else None
    delivered = _rate(len(records), span)
    offered = _rate(n, send_s)
    cpu = {k: round(cpu1[k] - cpu0[k], 3) for k in cpu0}
    return {
        "offered": n, "send_seconds": round(send_s, 4), "offered_fps": offered,
        "guest_rx_packets": got, "delivered": len(records),
        "rx_span_seconds": round(span, 6) if span is not None else None,
        "delivered_fps": delivered, "right": j["right"], "wrong": j["wrong"],
        "known": j["known"], "unknown": j["unknown"], "right_fps": _rate(j["right"], span),
        "wrong_fields": j["wrong_fields"], "first_wrong": j["first_wrong"],
        "tap_tx_dropped": t1["tx_dropped"] - t0["tx_dropped"],
        "guest_rx_dropped": st1["rx_dropped"] - st0["rx_dropped"],
        "trace_overrun": overrun or 0,
        "lost": max(n - len(records), 0),
        "sender_bound": bool(offered and delivered and delivered >= SENDER_BOUND * offered),
        "qemu_cpu_seconds": cpu,
        "qemu_cpu_us_per_frame": {k: round(v * 1e6 / len(records), 2) if records else None
                                  for k, v in cpu.items()},
    }


async def run(vm: Machine, tap: Tap, frames: list[bytes], count: int, rounds: int, rate: int,
              sent: list[report.Sent], check_hash: bool, pid: int | None, echo=print) -> dict:
    """ROUNDS rounds of COUNT frames offered at RATE fps (0: unpaced); per-round figures
    and their medians."""
    out = []
    for r in range(rounds):
        echo(f"hashlab: load round {r + 1}/{rounds}: {count} frames, "
             + (f"offered at {rate} fps" if rate else "unpaced"))
        res = await run_round(vm, tap, frames, count, rate, sent, check_hash, pid)
        echo(f"hashlab:   offered {res['offered_fps'] or 0:.0f} fps, delivered "
             f"{res['delivered']} ({res['delivered_fps'] or 0:.0f} fps), right {res['right']},"
             f" wrong {res['wrong']}, tap dropped {res['tap_tx_dropped']}")
        out.append(res)
    med = {}
    for k in ("offered_fps", "delivered_fps", "right_fps"):
        vals = [r[k] for r in out if r[k] is not None]
        med[k] = round(statistics.median(vals), 1) if vals else None
    for k in ("vcpu", "vhost", "other"):
        vals = [r["qemu_cpu_us_per_frame"][k] for r in out
                if r["qemu_cpu_us_per_frame"][k] is not None]
        med[f"cpu_us_per_frame_{k}"] = round(statistics.median(vals), 2) if vals else None
    totals = {k: sum(r[k] for r in out) for k in ("offered", "delivered", "right", "wrong",
                                                  "known", "unknown", "tap_tx_dropped",
                                                  "guest_rx_dropped", "trace_overrun", "lost")}
    return {"frames_per_round": count, "rate": rate, "rounds": out, "median": med, "totals": totals,
            "sender_bound_rounds": sum(r["sender_bound"] for r in out),
            "qemu_peak_rss_kib": peak_rss_kib(pid)}
