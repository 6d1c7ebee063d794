"""hashlab.host.qemu_process: the shutdown both QEMU process managers share, on a stand-in
"QEMU" (a Python process) that ignores what we ask of it; errors and the log."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from hashlab.host.qemu_process import QemuError, QemuProcess

# Stands in for a QEMU that does not answer QMP; with "term" it ignores SIGTERM too.
STUBBORN = """
import signal, sys, time
if "term" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("stand-in QEMU up", flush=True)
time.sleep(120)
"""


class StartFailed(QemuError):
    what = "did not start"


@pytest.fixture(autouse=True)
def idle(monkeypatch):
    monkeypatch.setattr("hashlab.host.qemu_process.load_factor", lambda: 0.1)  # 0.5 s a step


def spawn(tmp_path: Path, *args: str) -> QemuProcess:
    p = QemuProcess(tmp_path / "vm.log")
    p.open_log(truncate=True)
    p.spawn([sys.executable, "-c", STUBBORN, *args])
    deadline = time.monotonic() + 10
    while "stand-in QEMU up" not in p.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    return p


def steps(p: QemuProcess) -> list[str]:
    return [ln.split("shutdown: ", 1)[1] for ln in p.log_path.read_text().splitlines()
            if "] shutdown: " in ln]


def test_ignored_quit_gets_sigterm_and_the_log_is_kept(tmp_path):
    p = spawn(tmp_path)
    asked = []
    p.stop(quit=asked.append)  # "sent" quit; the stand-in never reacts
    assert asked and 0 < asked[0] < 1  # the quit step gets its own (scaled) timeout
    assert steps(p) == ["QMP quit", "SIGTERM"]
    assert p.proc.returncode == -signal.SIGTERM
    p.release()
    text = p.log_path.read_text()
    assert "stand-in QEMU up" in text and f"QEMU exit status {-signal.SIGTERM}" in text


def test_ignored_sigterm_gets_sigkill(tmp_path):
    p = spawn(tmp_path, "term")
    pid = p.proc.pid

    def quit_that_hangs(timeout: float) -> None:
        raise TimeoutError("no answer")  # what the QMP client raises; stop goes on

    p.stop(quit=quit_that_hangs)
    assert steps(p) == ["QMP quit", "SIGTERM", "SIGKILL"]
    assert p.proc.returncode == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    p.release()
    assert "stand-in QEMU up" in p.log_path.read_text()


def test_no_qmp_starts_at_sigterm_and_a_gone_qemu_is_left_alone(tmp_path):
    p = spawn(tmp_path)
    p.stop(quit=None)
    assert steps(p) == ["SIGTERM"]
    p.stop(quit=None)  # already gone: nothing more
    assert steps(p) == ["SIGTERM"]
    p.release()
    p.release()


async def test_stop_async_escalates_without_blocking_the_loop(tmp_path):
    p = spawn(tmp_path, "term")
    asked = []

    async def quit_never_answered() -> None:
        asked.append(1)
        await asyncio.sleep(60)

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.05)

    t = asyncio.create_task(ticker())
    await p.stop_async(quit_never_answered)
    t.cancel()
    assert asked == [1] and steps(p) == ["QMP quit", "SIGTERM", "SIGKILL"]
    assert p.proc.returncode == -signal.SIGKILL
    assert ticks > 10  # the loop ran through the waits
    p.release()


async def test_exited_waits_for_the_exit_status(tmp_path):
    p = spawn(tmp_path)
    os.kill(p.proc.pid, signal.SIGTERM)
    assert await p.exited() == -signal.SIGTERM
    assert await p.exited() == -signal.SIGTERM  # and again, once reaped
    p.release()


def test_cannot_execute_is_the_start_error_with_command_and_log(tmp_path):
    p = QemuProcess(tmp_path / "vm.log")
    p.start_error = StartFailed
    p.open_log()
    with pytest.raises(StartFailed) as ei:
        p.spawn([str(tmp_path / "no-qemu"), "-machine", "none"])
    msg = str(ei.value)
    assert msg.startswith("VM did not start: cannot run QEMU: cannot execute ")
    assert str(tmp_path / "vm.log") in msg and "-machine none" in msg
    assert "starting:" in msg  # the tail: our note of the command line
    assert p.failed and ei.value.log_path == tmp_path / "vm.log"
    p.release()


def test_error_without_a_process_is_just_the_detail():
    assert str(QemuError("the device refused FEATURES_OK")) == "the device refused FEATURES_OK"
