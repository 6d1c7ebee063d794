"""Reconfigure RSS from inside the guest and watch QEMU follow.

    hashlab session scenarios/lab-vhost.yaml -- python examples/reconfigure_and_watch.py

The guest's driver is told a new key and indirection table with ethtool; QEMU sends
VIRTIO_NET_HASH_CHANGED, and x-query-virtio-net-hash then holds what ethtool asked for.
Exits 1 when it does not.
"""

import asyncio
import sys

from hashlab.scripting import Session

NEW_KEY = "random:7"  # a scenario key: 40 bytes from seed 7


async def main() -> int:
    async with Session.attach() as s:
        before = await s.query_hash()  # also re-arms the event
        print(f"before: {before.label}, key {before.key[:16]}..., table {before.table[:8]}...")
        step = await s.reconfigure(key=NEW_KEY, table=[1, 3])  # ethtool -X in the guest
        for c in step["commands"]:
            print(f"guest: {c['cmd']} -> status {c['rc']}")
        event = await s.wait_event()
        print(f"event: VIRTIO_NET_HASH_CHANGED {event}")
        after = await s.query_hash()
        oracle = await s.oracle()
        print(f"after:  {after.label}, key {after.key[:16]}..., table {after.table[:8]}...")
        problems = step["failures"] + after.differences(oracle)
        if after.key == before.key:
            problems.append("the key did not change")
        if event["path"] != s.nic + "/virtio-backend":
            problems.append(f"event for {event['path']}, not the NIC")
        for p in problems:
            print(f"PROBLEM: {p}")
        print("ok" if not problems else f"{len(problems)} problem(s)")
        return 1 if problems else 0


sys.exit(asyncio.run(main()))
