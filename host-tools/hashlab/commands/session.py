"""`hashlab session SCENARIO [-- CMD...]`: a scenario's guest, left running for QMP.

The guest boots and is configured as the scenario says (in the lab VM when the scenario
says ``where: lab``), then the user gets it: without CMD an interactive ``qmp-shell`` on
its QEMU (for a lab scenario, on this machine's terminal through a relay in the lab VM,
hashlab.host.qmp_relay); with CMD, CMD runs with the session's sockets in its environment
(hashlab.run.session) and its exit status is the session's.  When CMD or the shell ends,
or on Ctrl-C, the guest, its tap and the session directory are removed.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from .. import designs
from . import qemu_option


def register(sub):
    p = sub.add_parser(
        "session",
        help="boot a scenario's guest and leave it running: qmp-shell, or run a script",
        description="Boot the scenario's guest (in the lab VM for where: lab), configure "
        "it as the scenario says, check it as a run does (negotiation, vhost, QEMU's "
        "x-query-virtio-net-hash), then hand it over: without CMD, qmp-shell on its "
        "QEMU (for where: lab, here, relayed through the lab VM); with CMD, run CMD with "
        "HASHLAB_SESSION (session.json), HASHLAB_QMP_SOCKET and HASHLAB_SESSION_SOCKET "
        "set (hashlab.scripting reads them).  Exits with CMD's status; 1 when a check "
        "failed (unless --ignore-checks); everything is torn down at the end.",
    )
    p.add_argument("scenario", help="scenario YAML file (see scenarios/)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD",
                   help="command to run against the guest")
    p.add_argument("--design", choices=designs.NAMES, metavar="NAME",
                   help="for where: lab: boot this design's kernel instead of the "
                   f"scenario's ({', '.join(designs.NAMES)})")
    p.add_argument("--kernel", help="guest kernel (overrides the scenario's guest.kernel)")
    p.add_argument("--here", action="store_true",
                   help="run here, even when the scenario is meant for the lab VM")
    p.add_argument("--ignore-checks", action="store_true",
                   help="hand the guest over even when a check failed")
    p.add_argument("--lab-timeout", type=float, default=1800,
                   help="seconds for the lab VM at idle (scaled by load; default 1800)")
    p.add_argument("--out", help="results directory (VM log, session results; default "
                   "results/<scenario>/session)")
    qemu_option.add(p)
    p.set_defaults(func=_run, parser=p)


def _echo(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _run(args) -> int:
    from ..errors import UsageError
    from ..host import datapath
    from ..run.scenario import load_scenario

    cmd = _split_command(args)
    sc = load_scenario(args.scenario)
    if args.design:
        if sc.where != "lab":
            raise UsageError(f"--design: {sc.name} does not run in the lab VM (where: host)")
        sc.datapath.design = args.design
    if sc.where == "lab" and not (args.here or datapath.in_lab()):
        design, why = datapath.host_lab()  # this machine may be the lab itself
        if design != sc.datapath.design:
            return _in_lab(args, sc, cmd)
        print(f"hashlab session: {why}: the guest runs here", file=sys.stderr)
        datapath.become_lab(design)
    return asyncio.run(_here(args, sc, cmd))


def _split_command(args) -> list[str]:
    """CMD from what follows the scenario: options given after it (``SCENARIO --design
    kfunc -- CMD``, or ``SCENARIO --design kfunc`` for the shell) are parsed as options;
    the command is what follows ``--``."""
    rest = list(args.cmd)
    if "--" not in rest:
        if rest and rest[0].startswith("-"):  # options only: the shell
            args.parser.parse_args([*rest, args.scenario], namespace=args)
            return []
        return rest
    i = rest.index("--")
    if i:
        args.parser.parse_args([*rest[:i], args.scenario], namespace=args)
    return rest[i + 1:]


def _in_lab(args, sc, cmd: list[str]) -> int:
    from ..host import datapath, qmp_relay
    from ..paths import results_root

    out = Path(args.out).resolve() if args.out else (results_root() / sc.name / "session")
    out.mkdir(parents=True, exist_ok=True)
    _, env = datapath.prepare_lab({args.kernel or sc.guest.kernel}, {sc.corpus.seed}, out,
                                  {sc.datapath.qemu})
    shell = None
    if not cmd:  # qmp-shell here, the guest's QEMU there: a relay over a virtio-serial port
        shell = _RelayedShell(out)
        cmd = [sys.executable, "-m", "hashlab.host.qmp_relay",
               "--port", str(qmp_relay.PORT), "--ready", str(shell.ready)]
    # The lab VM runs CMD from the checkout: paths that exist here are made absolute.
    cmd = [str(Path(c).resolve()) if not Path(c).is_absolute() and Path(c).exists() else c
           for c in cmd]
    argv = datapath.hashlab_argv("session", "--here", "--out", str(out),
                                 str(Path(args.scenario).resolve()))
    if args.kernel:
        argv += ["--kernel", str(Path(args.kernel).resolve()) if Path(args.kernel).exists()
                 else args.kernel]
    if args.ignore_checks:
        argv.append("--ignore-checks")
    argv += ["--", *cmd]
    _echo(f"hashlab session: booting the lab VM ({sc.datapath.design} kernel) for {sc.name}")
    try:
        if shell:
            shell.start()
        res = datapath.run_in_lab(argv, env, args.lab_timeout, _echo, design=sc.datapath.design,
                                  writes=[out, Path.cwd()],
                                  reads=[Path(args.scenario).resolve().parent],
                                  qemu_opts=qmp_relay.qemu_opts(shell.socket) if shell else ())
    finally:
        if shell:
            shell.stop()
    _echo(f"hashlab session: lab VM done in {res.seconds:.0f}s, status {res.status}; "
          f"console log: {res.log}")
    if shell and shell.status not in (None, 0):
        _echo(f"hashlab session: qmp-shell exited with status {shell.status}")
        return shell.status
    return res.status


class _RelayedShell:
    """qmp-shell on the host end of the lab VM's relay port, started once the relay in the
    lab VM has both ends open (its ready file); the lab VM runs in the main thread, so
    Ctrl-C stops it as it stops any lab run, and this shell with it."""

    def __init__(self, out: Path):
        self.dir = Path(tempfile.mkdtemp(prefix="hashlab-qmp-"))
        self.socket = self.dir / "qmp.sock"
        self.ready = out / "qmp-relay.ready"
        self.ready.unlink(missing_ok=True)
        self.status: int | None = None
        self._proc = None
        self._stop = None
        self._thread = None

    def start(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from ..run import session as S

        while not self.ready.exists():
            if self._stop.wait(0.5):
                return
        _echo(f"hashlab session: qmp-shell on the guest's QEMU, through the lab VM ({self.socket}"
              "); end it (Ctrl-D) to end the session")
        self._proc = subprocess.Popen([*S.qmp_shell(), str(self.socket)])
        self.status = self._proc.wait()

    def stop(self) -> None:
        self._stop.set()
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._thread.join(10)
        self.ready.unlink(missing_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)


async def _here(args, sc, cmd: list[str]) -> int:
    from ..run import session as S

    out = Path(args.out) if args.out else None
    async with S.live(sc, out, kernel=args.kernel, echo=_echo) as s:
        res = s.env.result
        failed = [(n, f) for n, f in res.checks if f is not None]
        dh = res.device_hash[0].label if res.device_hash else "no x-query-virtio-net-hash"
        _echo(f"hashlab session: {sc.name} is up ({dh}); QMP {s.qmp_socket}, session "
              f"{s.socket}, tap {s.env.tap.name}; VM log {s.env.out / 'qemu.log'}")
        for n, f in failed:
            _echo(f"hashlab session: check {n} FAILED: {f}")
        if failed and not args.ignore_checks:
            _echo("hashlab session: not handing over a guest that failed its checks "
                  "(--ignore-checks to get it anyway)")
            return 1
        argv = cmd or [*S.qmp_shell(), str(s.qmp_socket)]
        rc = await S.run_command(s, argv)
        _echo(f"hashlab session: {' '.join(argv[:3])}... exited with status {rc}; "
              "tearing down")
        return rc
