"""One scenario run, end to end: a sequence of named steps (hashlab.run.steps).

boot (tap + QEMU + guest image) -> configure the guest -> read its key/table/hash types
back -> check negotiation (guest's feature bits and QEMU's ``x-query-virtio-status``)
and, with ``vhost=on``, that vhost_net really moves the packets (QMP ``vhost-started``
and ``vhost-dev``, QEMU's ``/dev/vhost-net`` fds) -> start the tracepoint -> send the
corpus frames -> collect the guest's records -> compare with the oracle configured from
what the guest read back -> [reconfigure the guest, with filler traffic flowing, and send
the next batch] -> write ``results.json`` and ``junit.xml``.

The run keeps what the guest saw (``RunResult.batches``), so that the same observations
can be judged against another model as well (hashlab.run.compare judges every row against
the spec).  What it found is typed (hashlab.run.result).

Every resource is released on every path: each step registers the undo of what it made
(tap, VM, filler traffic) on one exit stack, unwound in reverse order, Ctrl-C included.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from .. import retries
from ..errors import HashlabError
from ..host import datapath
from ..host.machine import MachineError
from ..paths import results_root
from . import steps
from .result import Retry, RunResult
from .scenario import Scenario


async def run_scenario(sc: Scenario, out_dir: Path | None = None, kernel: str | None = None,
                       echo=print, attempts: int | None = None) -> RunResult:
    """Run SC; results go to OUT_DIR (default results/<name>) even when the run fails.

    A run that dies of a VM failure (QEMU gone, guest hung or panicked: MachineError) is
    run again up to ATTEMPTS times in all (default: 2 in the lab VM, where nested KVM
    under TCG loses a guest now and then, else 1).  Wrong hashes are never retried.  Each
    retry is listed in ``RunResult.retried_after`` and printed in the summary; the failed
    attempt's VM log is kept as qemu.runN.log.
    """
    if attempts is None:
        attempts = 2 if datapath.in_lab() else 1
    failures: list[Retry] = []
    for attempt in range(1, attempts + 1):
        try:
            res = await _run_once(sc, out_dir, kernel, echo, failures)
        except MachineError as e:
            if attempt == attempts:
                raise
            out = Path(out_dir) if out_dir else results_root() / sc.name
            kept = out / f"qemu.run{attempt}.log"
            with contextlib.suppress(OSError):
                (out / "qemu.log").rename(kept)
            first = str(e).splitlines()[0]
            failures.append(Retry(attempt=attempt, error=f"{type(e).__name__}: {first}",
                                  log=str(kept)))
            # The error's own log path is qemu.log, now renamed: name the kept copy.
            what = f"VM {e.what}: {e.detail}" if e.what else e.detail
            echo(f"hashlab: {sc.name}: run {attempt} failed ({what[:160]}); its VM log: "
                 f"{kept}; running it again")
            retries.record("run", f"{sc.name}: {type(e).__name__}: {first}")
            continue
        return res
    raise AssertionError("unreachable")


async def _run_once(sc: Scenario, out_dir: Path | None, kernel: str | None, echo,
                    failures: list[Retry]) -> RunResult:
    t0 = time.monotonic()
    out = Path(out_dir) if out_dir else results_root() / sc.name
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("results.json", "junit.xml"):
        (out / stale).unlink(missing_ok=True)
    res = RunResult(sc.name, out, scenario_file=str(sc.path) if sc.path else None,
                    retried_after=failures)
    try:
        async with contextlib.AsyncExitStack() as undo:
            env = steps.RunEnv(sc, out, echo, t0, undo, res, kernel=kernel)
            await _run(env)
    except (HashlabError, OSError) as e:
        # What the run found up to the failure is written, then the failure goes on up.
        res.seconds = time.monotonic() - t0
        res.checks.append(("run", f"{type(e).__name__}: {e}"))
        steps.write_results(res, res.error_json(e), None)
        raise
    steps.conclude(env)
    steps.write_results(res, res.to_json(), res.comparison)
    return res


async def _run(env: steps.RunEnv) -> None:
    """The steps of a run, in order; the undos run when ENV.undo is closed."""
    steps.check_datapath(env)
    steps.prepare_guest(env)
    steps.create_tap(env)
    await steps.boot(env)
    await steps.configure_guest(env)
    await steps.query_device(env)
    steps.check_negotiation(env)
    steps.check_vhost(env)
    steps.check_guest_config(env)
    steps.choose_oracle(env)
    await steps.check_device_hash(env, "configured")
    await steps.start_trace(env)
    for batch in range(len(env.sc.reconfigure.steps) + 1):
        if batch > 0:
            await steps.reconfigure(env, batch)
        await steps.send_batch(env, batch)
    await steps.count_delivery(env)
    if env.sc.load.frames:
        await steps.load(env)
    steps.judge(env)
