"""What a run writes, pinned: results.json, junit.xml and the summary, over fake VMs.

The orchestrator runs over the fakes of ``fake_run`` (no QEMU, no tap), so its output
depends only on the scenario.  The expected files in ``data/orchestrator/`` were written
by the orchestrator before it was split into steps (one long ``_run``): the JSON of
``hashlab run --out`` must keep every key and value.  ``HASHLAB_WRITE_GOLDEN=1``
rewrites them (only for a deliberate change of the format).
"""

from __future__ import annotations

import json
import os

import pytest

import fake_run as F
from hashlab.run import compare
from hashlab.run.orchestrator import run_scenario

WRITE = os.environ.get("HASHLAB_WRITE_GOLDEN") == "1"


def check_golden(name: str, out, res=None):
    """OUT's results.json (and RES's summary and comparison row) against the kept copy
    NAME."""
    got = {"results": F.normalise(json.loads((out / "results.json").read_text()), out),
           "junit_lines": len((out / "junit.xml").read_text().splitlines())}
    if res is not None:
        got["summary"] = F.normalise_summary(res.summary(), out).splitlines()
        # the row of `hashlab compare`'s JSON that this run would give
        row = compare.row_result_from_run(compare.ROWS_BY_ID["host-stock"], res, 1.0)
        got["compare_row"] = F.normalise(row.to_json(), out)
    path = F.GOLDEN / f"{name}.json"
    if WRITE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(path.read_text())
    assert set(got["results"]) == set(want["results"])  # same keys first: a readable diff
    for key in want["results"]:
        assert got["results"][key] == want["results"][key], key
    assert got == want


def assert_cleaned_up():
    assert sorted(F.FakeTap.created) == sorted(F.FakeTap.deleted), "tap left behind"
    assert F.FakeMachine.closed, "no VM closed"


async def test_reconfigure_and_load_json(tmp_path, monkeypatch):
    F.install(monkeypatch, tmp_path)
    out = tmp_path / "out"
    res = await run_scenario(F.scenario("reconfigure"), out, echo=lambda m: None)
    check_golden("reconfigure", out, res)
    assert_cleaned_up()
    assert F.FakeMachine.closed == [True]


async def test_vhost_checks_json(tmp_path, monkeypatch):
    F.install(monkeypatch, tmp_path)
    out = tmp_path / "out"
    res = await run_scenario(F.scenario("vhost"), out, echo=lambda m: None)
    assert not res.ok
    check_golden("vhost", out, res)
    assert_cleaned_up()


async def test_boot_retry_json(tmp_path, monkeypatch):
    """A boot lost once: retried on a fresh tap, counted, shown, its log kept."""
    F.install(monkeypatch, tmp_path)
    F.FakeMachine.start_failures = [F.QemuExited]
    out = tmp_path / "out"
    msgs: list[str] = []
    res = await run_scenario(F.scenario("vhost"), out, echo=msgs.append)
    check_golden("boot-retry", out, res)
    assert (out / "qemu.attempt1.log").exists()
    assert len(F.FakeTap.created) == 2 and F.FakeMachine.closed == [False, True]
    assert any("boot attempt 1 failed" in m for m in msgs)
    assert_cleaned_up()


async def test_run_retry_json(tmp_path, monkeypatch):
    """A run whose boots are all lost is run again, counted and shown."""
    F.install(monkeypatch, tmp_path)
    F.FakeMachine.start_failures = [F.QemuExited, F.QemuExited]
    out = tmp_path / "out"
    msgs: list[str] = []
    res = await run_scenario(F.scenario("vhost"), out, echo=msgs.append, attempts=2)
    check_golden("run-retry", out, res)
    assert (out / "qemu.run1.log").exists() and (out / "qemu.attempt1.log").exists()
    said = next(m for m in msgs if "run 1 failed" in m)
    assert f"its VM log: {out / 'qemu.run1.log'};" in said  # the kept log, its whole path
    assert_cleaned_up()


async def test_failed_run_json(tmp_path, monkeypatch):
    """A run that cannot boot: the error document, the VM error raised, nothing left."""
    F.install(monkeypatch, tmp_path)
    F.FakeMachine.start_failures = [F.QemuStartError, F.QemuStartError]
    out = tmp_path / "out"
    with pytest.raises(F.QemuStartError):
        await run_scenario(F.scenario("vhost"), out, echo=lambda m: None)
    check_golden("failed", out)
    assert F.FakeMachine.closed == [False, False]
    assert_cleaned_up()
