"""What the kernel and QEMU builds share: a logged, optionally niced build step with a
progress reporter, and a lock so two builds of one cache entry never run at once."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

# progress(logfile, label, stop, t0): prints a line now and then until ``stop`` is set.
Progress = Callable[[Path, str, threading.Event, float], None]


def run_step(cmd: list[str], logfile: Path, label: str, *, error: type[Exception],
             log: Callable[[str], None], cwd: Path | None = None,
             env: dict[str, str] | None = None, nice: int = 0,
             progress: Progress | None = None) -> None:
    """Run cmd with its output appended to logfile; on failure print the log's tail and
    raise ``error`` naming the step and the log."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["LC_ALL"] = "C"
    argv = (["nice", "-n", str(nice)] if nice else []) + cmd
    t0 = time.monotonic()
    with open(logfile, "ab") as out:
        out.write(f"\n### {label}: {' '.join(cmd)}\n".encode())
        out.flush()
        stop = threading.Event()
        thread = None
        if progress:
            thread = threading.Thread(target=progress, args=(logfile, label, stop, t0),
                                      daemon=True)
            thread.start()
        try:
            rc = subprocess.run(argv, cwd=cwd, env=full_env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
        finally:
            stop.set()
            if thread:
                thread.join()
    if rc != 0:
        for line in logfile.read_text(errors="replace").splitlines()[-25:]:
            print(f"    {line}", file=sys.stderr)
        raise error(f"{label} failed (exit {rc}); full log: {logfile}")
    if progress or time.monotonic() - t0 > 5:
        log(f"{label}: done in {time.monotonic() - t0:.0f}s")


@contextmanager
def locked(path: Path, log: Callable[[str], None]) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another build holding {path}")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield
