"""The same hash=on guest on each design's kernel: what QEMU says does the hashing.

    python examples/mechanism_per_design.py [--designs progtype,kfunc,tunrss]

For each design whose lab kernel is built, this starts
``hashlab session scenarios/lab-vhost.yaml --design D -- python THIS_FILE`` (one lab VM
boot each); inside the session it asks x-query-virtio-net-hash and prints one JSON line.
The table shows the mechanism field change with the kernel under one and the same QEMU
binary; each must be the one the design registry names.  Exits 1 when one is not.
"""

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path

from hashlab import designs
from hashlab.host import datapath
from hashlab.scripting import Session, in_session

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "lab-vhost.yaml"
MARK = "mechanism-per-design: "


async def inside() -> None:
    async with Session.attach() as s:
        dev = await s.query_hash()
        print(MARK + json.dumps({"design": s.info["design"], "mechanism": dev.label,
                                 "program": dev.ebpf_program, "vhost": s.info["vhost"],
                                 "hash_reports": dev.hash_report_enabled}), flush=True)


def outside(names: list[str]) -> int:
    rows, bad = [], 0
    for name in names:
        d = designs.get(name)
        if datapath.lab_kernel_path(d.name) is None:
            print(f"{name}: kernel not built (hashlab build kernel --design {name}); skipped")
            continue
        cmd = [sys.executable, "-m", "hashlab", "session", str(SCENARIO), "--design", name,
               "--", sys.executable, str(Path(__file__).resolve())]
        print(f"{name}: {' '.join(cmd[2:5])} ...", flush=True)
        r = subprocess.run(cmd, capture_output=True, text=True)
        got = [json.loads(ln[len(MARK):]) for ln in r.stdout.splitlines()
               if ln.startswith(MARK)]
        if r.returncode or not got:
            print(f"{name}: session failed (status {r.returncode}):\n{r.stderr[-2000:]}")
            bad += 1
            continue
        ok = got[0]["mechanism"] == d.mechanism
        bad += not ok
        rows.append((name, got[0]["mechanism"], d.mechanism, "yes" if ok else "NO"))
    print(f"\n{'design':10} {'QEMU says':24} {'expected':24} ok")
    for r in rows:
        print(f"{r[0]:10} {r[1]:24} {r[2]:24} {r[3]}")
    return 1 if bad or not rows else 0


if in_session():
    asyncio.run(inside())
else:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--designs", default=",".join(d.name for d in designs.with_series()))
    sys.exit(outside([n for n in p.parse_args().designs.split(",") if n]))
