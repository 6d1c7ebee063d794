"""``--shard K/N``: run the K-th of N parts of the selected tests (a pytest plugin).

scripts/test's ``-n N`` boots N lab VMs, each running one shard; a CI matrix can give
each machine one.  Every shard collects the same tests and splits them the same way, so
the N shards together run each selected test exactly once.

A module's tests stay in one shard: its module-scoped fixtures (guests, rigs) boot once.
Modules go to the least loaded shard, the heaviest first; a module weighs its tests'
seconds in the previous run's JUnit files (``--shard-times``), or its test count when no
time is known, so the split is deterministic for a given collection and times file.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import defaultdict

import pytest


def parse(spec: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", spec.strip())
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise pytest.UsageError(f"--shard {spec!r}: expected K/N with 1 <= K <= N")
    return int(m.group(1)), int(m.group(2))


def module_times(paths: list[str]) -> dict[str, float]:
    """Seconds per test module file in JUnit files (classname ``tests.test_x.Class``)."""
    times: dict[str, float] = defaultdict(float)
    for p in paths:
        try:
            root = ET.parse(p).getroot()
        except (OSError, ET.ParseError):
            continue  # no previous run: weigh by count
        for tc in root.iter("testcase"):
            cls = tc.get("classname") or ""
            mod = next((part for part in cls.split(".") if part.startswith("test_")), None)
            if mod:
                times[mod + ".py"] += float(tc.get("time") or 0)
    return dict(times)


def split(modules: dict[str, int], n: int, times: dict[str, float]) -> list[list[str]]:
    """MODULES (file name -> selected test count) in N shards, balanced by weight."""
    def weight(m: str) -> float:
        return times.get(m, float(modules[m]))

    shards: list[list[str]] = [[] for _ in range(n)]
    load = [0.0] * n
    for m in sorted(modules, key=lambda m: (-weight(m), m)):
        i = min(range(n), key=lambda i: (load[i], i))
        shards[i].append(m)
        load[i] += weight(m)
    return shards


def addoption(parser) -> None:
    g = parser.getgroup("hashlab")
    g.addoption("--shard", metavar="K/N", help="run only the K-th of N shards of the tests")
    g.addoption("--shard-times", metavar="JUNIT", action="append", default=[],
                help="JUnit files of a previous run: their times balance the shards")


class Plugin:
    """Registered by conftest (pytest_configure)."""

    @pytest.hookimpl(trylast=True)  # after -m and -k have deselected
    def pytest_collection_modifyitems(self, config, items):
        spec = config.getoption("--shard")
        if not spec:
            return
        k, n = parse(spec)
        counts: dict[str, int] = defaultdict(int)
        for it in items:
            counts[it.path.name] += 1
        times = module_times(config.getoption("shard_times"))
        mine = set(split(dict(counts), n, times)[k - 1])
        keep = [it for it in items if it.path.name in mine]
        drop = [it for it in items if it.path.name not in mine]
        if drop:
            config.hook.pytest_deselected(items=drop)
        items[:] = keep
        config._hashlab_shard = (k, n, len(keep), len(keep) + len(drop))

    def pytest_report_collectionfinish(self, config, items):
        if not hasattr(config, "_hashlab_shard"):
            return None
        k, n, mine, of = config._hashlab_shard
        return f"hashlab: shard {k}/{n}: {mine} of the {of} selected tests"
