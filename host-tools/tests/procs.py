"""Process queries the VM tests share (imported by test modules; tests/ is on sys.path)."""

from __future__ import annotations

from pathlib import Path


def qemu_pids(name: str = "") -> set[int]:
    """QEMU processes (only those started for VM NAME, when given: others may be running
    other people's tests on the same machine)."""
    pids = set()
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                argv = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"qemu-system" in argv[0] and (not name or name.encode() in argv):
                pids.add(int(p.name))
    return pids
