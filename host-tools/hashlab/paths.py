"""Where things live: the checkout, and the cache outside it."""

from __future__ import annotations

import os
from pathlib import Path

# host-tools/hashlab/paths.py -> repository root
REPO = Path(__file__).resolve().parents[2]
KERNEL_DIR = REPO / "kernel"
QEMU_DIR = REPO / "qemu"
GUEST_TESTS_DIR = REPO / "guest-tests"
SCENARIOS_DIR = REPO / "scenarios"
VERSIONS_FILE = REPO / "versions.env"


def cache_root() -> Path:
    """Builds are cached outside the clone so that a fresh clone starts warm."""
    return Path(os.environ.get("HASHLAB_CACHE", "/var/cache/hashlab"))


def results_root() -> Path:
    return Path(os.environ.get("HASHLAB_RESULTS", REPO / "results"))


def versions() -> dict[str, str]:
    """The pinned source versions (versions.env, shell syntax KEY=VALUE)."""
    out: dict[str, str] = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip().strip('"')
    return out
