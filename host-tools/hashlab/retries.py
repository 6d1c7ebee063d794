"""Retries of lost VMs, recorded where the test suite can count them.

Nested guests under TCG's emulated SVM stall, hang or reset now and then, and the harness
boots them again.  A retry must be seen, not absorbed: each one is appended as a JSON
line to the file named by ``HASHLAB_RETRY_LOG`` (scripts/test sets it per tier; the lab
VM gets it through ``lab.forwarded_env``), with the test it happened in
(``PYTEST_CURRENT_TEST``, which pytest sets and child processes inherit).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ENV = "HASHLAB_RETRY_LOG"


def current_test() -> str:
    # pytest sets "path::name (phase)"
    return os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]


def record(what: str, detail: str) -> None:
    """Note one retry (WHAT: e.g. "boot", "run"; DETAIL: the failure's first line)."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"test": current_test(), "what": what, "detail": detail[:300],
                       "time": round(time.time(), 1)})
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError:
        pass  # counting retries must never fail a run


def read(path: Path) -> list[dict]:
    try:
        text = Path(path).read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
