"""What QEMU says it hashes with, against what the oracle expects, then real frames.

    hashlab session scenarios/lab-vhost.yaml -- python examples/query_vs_oracle.py

The oracle is set up from the guest's own view (ethtool -x and the driver model),
never from QEMU; x-query-virtio-net-hash must hold the same key, types and table, and
every corpus frame the guest receives must carry the hash, type and queue the oracle
computes.  Exits 1 on any difference.
"""

import asyncio
import sys

from hashlab.oracle import rss
from hashlab.scripting import Session


async def main() -> int:
    async with Session.attach() as s:
        dev = await s.query_hash()
        oracle = await s.oracle()
        print(f"QEMU: {dev.label}; RSS {'on' if dev.rss_enabled else 'off'}, hash reports "
              f"{'on' if dev.hash_report_enabled else 'off'}")
        rows = [("hash types", rss.hash_type_names(dev.hash_types),
                 rss.hash_type_names(oracle.hash_types)),
                ("key", (dev.key or "")[:20] + "...", oracle.key.hex()[:20] + "..."),
                ("table", f"{len(dev.table)} entries {dev.table[:6]}",
                 f"{len(oracle.table)} entries {list(oracle.table)[:6]}")]
        print(f"{'':12} {'QEMU says':34} {'oracle expects':34}")
        for name, q, o in rows:
            print(f"{name:12} {q:34} {o:34}")
        diffs = dev.differences(oracle)
        res = await s.send(["ipv4-tcp", "ipv4-udp", "ipv6-tcp", "ipv6-udp", "non-ip"])
        c = res["counts"]
        print(f"frames: {res['sent']} sent, {res['received']} seen, {c['match']} as the "
              f"oracle says, {c['mismatch']} not, {c['missing']} missing")
        for m in res["mismatches"][:5]:
            print(f"  frame {m['id']} ({m['desc']}): {m['fields']}")
        for d in diffs:
            print(f"DIFFERENCE: {d}")
        return 0 if res["ok"] and not diffs else 1


sys.exit(asyncio.run(main()))
