"""hashlab's exit statuses: one table, distinct meanings, the README's copy in step."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from hashlab.errors import EXIT_STATUSES, Exit, HashlabError, MissingToolError, UsageError
from hashlab.paths import REPO


def test_readme_table_matches_the_code():
    text = (REPO / "README.md").read_text()
    section = text.split("## Exit statuses", 1)[1]
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \| (.+?) \|$", section, re.M)
    assert [(int(n), name, meaning) for n, name, meaning in rows] == \
        [(int(k), k.name, v) for k, v in EXIT_STATUSES.items()]


def test_error_classes_have_distinct_statuses():
    from hashlab.build.kernel import KernelBuildError
    from hashlab.host.lab import LabError, LabHang, LabOutputLost, LabPanic
    from hashlab.host.machine import GuestHang, GuestPanic, MachineError
    from hashlab.host.tap import TapError

    assert set(EXIT_STATUSES) == set(Exit)
    want = {HashlabError: Exit.ERROR, UsageError: Exit.USAGE, MissingToolError: Exit.MISSING,
            TapError: Exit.NETDEV, KernelBuildError: Exit.BUILD,
            LabError: Exit.VM_DIED, LabOutputLost: Exit.VM_DIED, MachineError: Exit.VM_DIED,
            LabPanic: Exit.PANIC, GuestPanic: Exit.PANIC, LabHang: Exit.HANG,
            GuestHang: Exit.HANG}
    assert {c: c.exit_status for c in want} == want


def _compare(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    return subprocess.run([sys.executable, "-m", "hashlab", "compare", "--no-report", *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_compare_require_all_fails_on_a_row_that_did_not_run(tmp_path):
    # A lab row with --no-lab does not run (not supported, or not built on a machine
    # without the builds); without --require-all that is only reported, in the table.
    r = _compare("--rows", "lab-patched-vhost", "--no-lab", "--out", str(tmp_path / "a"))
    assert r.returncode == Exit.OK, r.stderr
    assert re.search(r"\| (not supported: lab rows skipped \(--no-lab\)|not built: .+) \|",
                     r.stdout), r.stdout
    r = _compare("--rows", "lab-patched-vhost", "--no-lab", "--require-all",
                 "--out", str(tmp_path / "b"))
    assert r.returncode == Exit.NOT_RUN, r.stderr
    assert re.search(r"lab-patched-vhost did not run \((not supported|not built)\): ", r.stderr)
