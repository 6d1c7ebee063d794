"""`hashlab session`: a scenario's guest left running for a script, and torn down after.

The host tier drives sessions with stock QEMU (the guest agent, frames and the oracle
through the session socket; a failing script's status; Ctrl-C); the lab tiers run the
QMP examples inside each design's lab VM, and the build tier runs the example that
flips one QEMU between the designs' kernels, one lab VM boot each.  Nothing may be left
behind: no QEMU, no tap, no session directory.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from hashlab.host.tap import SYS_NET
from hashlab.paths import REPO, SCENARIOS_DIR
from procs import qemu_pids

EXAMPLES = REPO / "examples"
HOST_SCENARIO = SCENARIOS_DIR / "software-rss-1q.yaml"
HASHLAB = [sys.executable, "-m", "hashlab"]

# A script against the session, stock QEMU: agent, frames, oracle.
SCRIPT = """
import asyncio, json, os, sys
from hashlab.scripting import Session

async def main():
    async with Session.attach() as s:
        assert os.path.exists(os.environ["HASHLAB_QMP_SOCKET"])
        status = await s.qmp.execute("query-status")
        assert (await s.agent("ping"))["rc"] == 0
        out = await s.sh("cat /sys/class/net/eth0/address")
        res = await s.send(["ipv4-tcp", "ipv6-udp"])
        print(json.dumps({"status": status["status"], "mac": out.strip(),
                          "sent": res["sent"], "ok": res["ok"], "counts": res["counts"],
                          "tap": s.tap, "dir": s.info["dir"]}))

asyncio.run(main())
"""


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setenv("TMPDIR", str(d))
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def session(scenario: Path, *cmd: str, out: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([*HASHLAB, "session", str(scenario), "--out", str(out), "--", *cmd],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def assert_nothing_left(tmp: Path, tap: str | None = None) -> None:
    assert not list(tmp.iterdir()), f"left in TMPDIR: {list(tmp.iterdir())}"
    if tap:
        assert not (SYS_NET / tap).exists(), f"tap {tap} left behind"
    assert not qemu_pids("hashlab-software-rss-1q"), "QEMU left running"


@pytest.mark.vm
@pytest.mark.timeout(900)
def test_a_script_drives_the_guest_through_the_session(private_tmp, tmp_path):
    r = session(HOST_SCENARIO, sys.executable, "-c", SCRIPT, out=tmp_path / "out")
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["status"] == "running"
    assert got["mac"] == "52:54:00:12:34:56"
    assert got["ok"] and got["counts"]["mismatch"] == 0 and got["counts"]["missing"] == 0
    assert got["sent"] == got["counts"]["match"] + got["counts"]["known_divergence"] > 0
    assert not Path(got["dir"]).exists(), "session directory left behind"
    assert_nothing_left(private_tmp, got["tap"])


@pytest.mark.vm
@pytest.mark.timeout(900)
def test_a_failing_script_fails_the_session(private_tmp, tmp_path):
    r = session(HOST_SCENARIO, "sh", "-c", "test -S \"$HASHLAB_QMP_SOCKET\" && exit 3",
                out=tmp_path / "out")
    assert r.returncode == 3, r.stderr[-3000:]
    assert "exited with status 3; tearing down" in r.stderr
    assert_nothing_left(private_tmp)


@pytest.mark.vm
@pytest.mark.timeout(900)
def test_ctrl_c_tears_the_session_down(private_tmp, tmp_path):
    # A terminal's Ctrl-C reaches a session whose SIGINT is at its default; a test run
    # started in the background (`cmd &` without job control) inherits SIGINT ignored.
    proc = subprocess.Popen([*HASHLAB, "session", str(HOST_SCENARIO), "--out",
                             str(tmp_path / "out"), "--", "sleep", "600"],
                            stderr=subprocess.PIPE, text=True, cwd=REPO,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    deadline = time.monotonic() + 600
    for line in proc.stderr:
        lines.append(line)
        if " is up " in line or time.monotonic() > deadline:
            break
    assert any(" is up " in ln for ln in lines), "".join(lines)[-3000:]
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(120) == 130, rest[-3000:]
    assert "interrupted" in rest
    assert_nothing_left(private_tmp)


@pytest.mark.lab
@pytest.mark.lab_kfunc
@pytest.mark.lab_tunrss
@pytest.mark.timeout(900)
@pytest.mark.parametrize("example", ["reconfigure_and_watch.py", "query_vs_oracle.py"])
def test_qmp_examples_in_a_lab_session(example, private_tmp, tmp_path):
    """The documented examples, as the docs run them, in this design's lab VM."""
    scenario = SCENARIOS_DIR / "lab-vhost.yaml"
    r = session(scenario, sys.executable, str(EXAMPLES / example), out=tmp_path / "out")
    print(r.stdout)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert_nothing_left(private_tmp)


@pytest.mark.labvm
@pytest.mark.timeout(1800)
def test_one_qemu_names_each_designs_mechanism(private_tmp):
    """examples/mechanism_per_design.py from the host: a session in each series design's
    lab VM, one QEMU binary, the mechanism the design registry names."""
    from hashlab import designs

    r = subprocess.run([sys.executable, str(EXAMPLES / "mechanism_per_design.py")],
                       capture_output=True, text=True, timeout=1700, cwd=REPO)
    print(r.stdout)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-2000:]}"
    for d in designs.with_series():
        assert f"{d.name:10} {d.mechanism:24} {d.mechanism:24} yes" in r.stdout


@pytest.mark.labvm
@pytest.mark.timeout(1200)
def test_qmp_shell_here_on_a_lab_guest(private_tmp, tmp_path):
    """A lab scenario without a command: qmp-shell on this machine's stdin, the guest's
    QEMU in the lab VM, QMP relayed over a virtio-serial port.  The end of the shell's
    input ends the session; the relay's socket directory and ready file go with it."""
    from hashlab import designs
    from hashlab.host import hashquery

    out = tmp_path / "out"
    r = subprocess.run(
        [*HASHLAB, "session", str(SCENARIOS_DIR / "lab-vhost.yaml"), "--out", str(out)],
        input="query-status\nx-query-virtio-net-hash path=/machine/peripheral/nic0\n",
        capture_output=True, text=True, timeout=1100, cwd=REPO)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "qmp-shell on the guest's QEMU, through the lab VM" in r.stderr
    answers = [json.loads(ln[ln.index("{"):]) for ln in r.stdout.splitlines()
               if '{"return"' in ln]
    assert len(answers) == 2, r.stdout[-3000:]
    assert answers[0]["return"]["status"] == "running"
    dev = answers[1]["return"]
    assert hashquery.label(dev["mechanism"], dev.get("ebpf-program")) == \
        designs.get(designs.DEFAULT).mechanism, dev
    assert "qmp-relay: the shell on the host closed the connection" in r.stdout + r.stderr
    assert not (out / "qmp-relay.ready").exists()
    assert_nothing_left(private_tmp)
    assert not [p for p in qemu_pids("virtme-ng") if str(private_tmp) in _cmdline(p)], \
        "the lab VM was left running"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
