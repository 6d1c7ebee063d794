"""What the kernel and QEMU builds share: a logged, optionally niced build step with a
progress reporter, and a lock so two builds of one cache entry never run at once."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

# progress(logfile, label, stop, t0): prints a line now and then until ``stop`` is set.
Progress = Callable[[Path, str, threading.Event, float], None]


def series_files(patch_dir: Path) -> list[Path]:
    """A `git format-patch` series in application order (file name order), without its
    cover letter (0000-cover-letter.patch, which carries no diff)."""
    return sorted(p for p in patch_dir.glob("*.patch")
                  if p.is_file() and not p.name.startswith("0000-"))


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


def ccache_counts(ccache_dir: Path) -> dict[str, int]:
    """ccache's cumulative hits and misses in CCACHE_DIR ({} without ccache): a build's
    delta tells a cold build (misses) from a warm one (hits)."""
    try:
        out = subprocess.run(["ccache", "--print-stats"], capture_output=True, text=True,
                             env={**os.environ, "CCACHE_DIR": str(ccache_dir)},
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    stats = dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)
    try:
        return {"hit": int(stats.get("direct_cache_hit", 0)) +
                int(stats.get("preprocessed_cache_hit", 0)),
                "miss": int(stats.get("cache_miss", 0))}
    except ValueError:
        return {}


def ccache_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def finish_bisect(e, doc: dict, logfile: Path, work: Path, t0: float,
                  log: Callable[[str], None]) -> Path:
    """Fill bisect entry E with ``bisect.json`` (DOC + the time taken) and the log, drop
    the work dir, say so."""
    seconds = round(time.monotonic() - t0, 1)
    with e.fill() as dest:
        (dest / "bisect.json").write_text(json.dumps({**doc, "seconds": seconds}, indent=1) + "\n")
        shutil.copy2(logfile, dest / "build.log")
    shutil.rmtree(work, ignore_errors=True)
    log(f"bisect: every prefix builds ({len(doc['results'])} builds, {seconds:.0f}s): {e.path}")
    return e.path
