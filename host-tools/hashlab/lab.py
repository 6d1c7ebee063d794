"""The lab VM: our kernel booted under TCG (emulated SVM + NPT) with the host's root.

The development and CI machines cannot run vhost_net or ordinary KVM guests, so every
test that needs the patched kernel runs inside a *lab VM*: Debian's QEMU under TCG with
``-cpu max`` boots the lab kernel, which has KVM_AMD, VHOST_NET and TUN built in.
virtme-ng does the heavy lifting (9p root, script I/O over virtio-serial, exit status
through a dedicated port); this module adds what a test harness needs on top: a kept
console log, a timeout that scales with the machine's load, and telling a kernel panic,
a hang and a failing command apart.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import HashlabError, MissingToolError
from .paths import REPO, cache_root

# Panics, oopses and warnings as the kernel prints them on the console.
PANIC_RE = re.compile(r"Kernel panic - not syncing|---\[ end Kernel panic")
OOPS_RE = re.compile(r"\bOops:|BUG: |WARNING: CPU: \d+ PID: |general protection fault")
# Under TCG the lab kernel's early TSC calibration (against the emulated PIT) can be off
# by more than KVM's 250 ppm from the refined value; KVM then gives every guest a scaled
# TSC (the TSC ratio MSR of the emulated SVM), and such guests hang as soon as they wait
# for a timer (seen: `echo 8192 > buffer_size_kb` never returns, "kvm: user requested
# TSC rate below hardware speed" in the lab console).  A wider tolerance keeps the guests
# on the unscaled TSC; their kvmclock absorbs the difference.
LAB_KERNEL_ARGS = ("kvm.tsc_tolerance_ppm=10000",)
STATUS_MARK = "hashlab-lab-status="
STATUS_RE = re.compile(STATUS_MARK + r"(\d+)$")


class LabError(HashlabError):
    """The lab VM did not run the command to completion; carries the console log path."""

    exit_status = 4

    def __init__(self, what: str, log: Path, cmdline: list[str]):
        self.log = log
        self.cmdline = cmdline
        super().__init__(f"lab VM {what}; console log: {log}\n  command: {shlex.join(cmdline)}")


class LabPanic(LabError):
    exit_status = 5


class LabHang(LabError):
    exit_status = 6


@dataclass
class LabResult:
    status: int
    log: Path
    seconds: float
    oopses: list[str] = field(default_factory=list)


def load_factor() -> float:
    """How much slower than idle this machine is now (>= 1): boots scale with it."""
    try:
        return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    except OSError:
        return 1.0


def vng_path() -> str:
    # virtme-ng calls its helpers through PATH, so the venv's bin must be on it too.
    vng = Path(sys.executable).parent / "vng"
    if not vng.exists():
        raise MissingToolError(f"virtme-ng not found at {vng}: run scripts/setup")
    return str(vng)


def default_kernel() -> Path:
    """The lab kernel from the build cache (built on first use)."""
    out = subprocess.run(
        [sys.executable, "-m", "hashlab", "build", "kernel", "--print-path"],
        stdout=subprocess.PIPE,
        text=True,
    )
    if out.returncode != 0 or not out.stdout.strip():
        raise HashlabError("could not build or find the lab kernel (hashlab build kernel)")
    return Path(out.stdout.strip().splitlines()[-1]) / "bzImage"


def log_dir() -> Path:
    d = cache_root() / "logs" / "lab"
    d.mkdir(parents=True, exist_ok=True)
    return d


def run(
    command: list[str] | str,
    *,
    kernel: Path | None = None,
    timeout: float = 600,
    memory: str = "4G",
    cpus: int = 2,
    rwdirs: list[Path] = (),
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    verbose: bool = False,
    log: Path | None = None,
    append: list[str] = (),
) -> LabResult:
    """Boot the lab VM, run ``command`` as root in it, return its exit status.

    The command's stdout and stderr (merged) go to our stdout; the kernel console goes
    to the log (and to our stderr with ``verbose``).  Raises LabPanic when the kernel
    panics, LabHang when nothing finishes within ``timeout`` x the load factor, and
    LabError when the VM ends without reporting a status.
    """
    kernel = Path(kernel) if kernel else default_kernel()
    if not kernel.exists():
        raise MissingToolError(f"lab kernel {kernel} does not exist")
    if isinstance(command, str):
        script = command
    else:
        script = shlex.join(command)
    cwd = Path(cwd or os.getcwd())
    # Tests in the lab boot KVM guests on the same kernel.
    env = {"HASHLAB_LAB_KERNEL": str(kernel), **(env or {})}
    if env:
        script = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + script
    # The status marker tells "the command exited N" from "the VM died" (vng says 255
    # for both).  The command's stderr joins its stdout: vng's own stderr carries the
    # kernel console, which goes to the log.
    script = f"cd {shlex.quote(str(cwd))} && ( {script} ) 2>&1; echo {STATUS_MARK}$?"

    log = log or Path(
        tempfile.mkstemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), suffix=".log", dir=log_dir())[1]
    )
    vng = vng_path()
    argv = [
        vng, "--run", str(kernel), "--disable-kvm", "--force-9p", "--verbose",
        "--cpus", str(cpus), "--memory", memory, "--cwd", str(cwd),
        # The repo stays writable so results written in the lab reach the host; the
        # build cache must be passed explicitly, as virtme-ng puts a tmpfs on /var/cache.
        "--rwdir", str(REPO), "--rwdir", str(cache_root()),
    ]
    for d in rwdirs:
        argv += ["--rwdir", str(d)]
    for a in (*LAB_KERNEL_ARGS, *append):
        argv += ["--append", a]
    argv += ["--", script]

    envp = dict(os.environ)
    envp["PATH"] = f"{Path(vng).parent}:{envp.get('PATH', '/usr/bin:/bin')}"
    limit = timeout * load_factor()
    t0 = time.monotonic()
    with open(log, "w") as logf:
        logf.write(f"# {shlex.join(argv)}\n# timeout {limit:.0f}s\n")
        logf.flush()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=envp, start_new_session=True,
        )
        panicked = threading.Event()
        oopses: list[str] = []
        reported: list[int] = []

        def pump_console() -> None:
            for raw in proc.stderr:
                line = raw.decode(errors="replace")
                logf.write(line)
                logf.flush()
                if PANIC_RE.search(line):
                    panicked.set()
                if OOPS_RE.search(line):
                    oopses.append(line.strip())
                if verbose:
                    sys.stderr.write(line)

        def pump_output() -> None:
            for raw in proc.stdout:
                line = raw.decode(errors="replace")
                m = STATUS_RE.match(line)
                if m:
                    reported.append(int(m.group(1)))
                    continue
                sys.stdout.write(line)
                sys.stdout.flush()

        readers = [threading.Thread(target=f, daemon=True) for f in (pump_console, pump_output)]
        for r in readers:
            r.start()
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            _kill(proc)
            for r in readers:
                r.join(5)
            if panicked.is_set():
                raise LabPanic("kernel panicked", log, argv)
            raise LabHang(f"did not finish within {limit:.0f}s", log, argv)
        except BaseException:
            _kill(proc)
            raise
        for r in readers:
            r.join(10)
    seconds = time.monotonic() - t0
    if panicked.is_set():
        raise LabPanic("kernel panicked", log, argv)
    if not reported:
        raise LabError(f"ended without the command's status (vng exit {proc.returncode})", log, argv)
    return LabResult(status=reported[-1], log=log, seconds=seconds, oopses=oopses)


def _kill(proc: subprocess.Popen) -> None:
    """Stop vng and its QEMU (they share a session) — TERM first, then KILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue
