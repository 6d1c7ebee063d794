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

import contextlib
import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import designs, retries
from ..errors import Exit, HashlabError, MissingToolError, UsageError
from ..paths import REPO, cache_root
from . import kvm
from .qemu_process import PANIC_RE, load_factor

# Panics, oopses and warnings as the kernel prints them on the console.
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

    exit_status = Exit.VM_DIED

    def __init__(self, what: str, log: Path, cmdline: list[str]):
        self.log = log
        self.cmdline = cmdline
        super().__init__(f"lab VM {what}; console log: {log}\n  command: {shlex.join(cmdline)}")


class LabPanic(LabError):
    exit_status = Exit.PANIC


class LabHang(LabError):
    exit_status = Exit.HANG


class LabOutputLost(LabError):
    """The command exited 0 but an output it was expected to write is not on the host."""

    exit_status = Exit.VM_DIED


@dataclass
class LabResult:
    status: int
    log: Path
    seconds: float
    oopses: list[str] = field(default_factory=list)


def vng_path() -> str:
    # virtme-ng calls its helpers through PATH, so the venv's bin must be on it too.
    vng = Path(sys.executable).parent / "vng"
    if not vng.exists():
        raise MissingToolError(f"virtme-ng not found at {vng}: run scripts/setup")
    return str(vng)


def default_kernel(design: str = designs.DEFAULT) -> Path:
    """DESIGN's lab kernel from the build cache (built on first use)."""
    out = subprocess.run(
        [sys.executable, "-m", "hashlab", "build", "kernel", "--design", design, "--print-path"],
        stdout=subprocess.PIPE,
        text=True,
    )
    if out.returncode != 0 or not out.stdout.strip():
        raise HashlabError(f"could not build or find the {design} lab kernel "
                           f"(hashlab build kernel --design {design})")
    return Path(out.stdout.strip().splitlines()[-1]) / "bzImage"


def log_dir() -> Path:
    d = cache_root() / "logs" / "lab"
    d.mkdir(parents=True, exist_ok=True)
    return d


def shared_dirs(writes: Sequence[Path] = (), reads: Sequence[Path] = (),
                cwd: Path | None = None) -> tuple[list[Path], list[Path]]:
    """The directories to pass to the lab VM read-write and read-only.

    The lab VM sees the host's root read-only over 9p, but with tmpfs over /tmp, /run,
    /var/cache and more, and anything written outside a shared directory is lost at power
    off.  WRITES are directories the command writes into (created here first), READS files
    or directories it reads; the checkout and the build cache are always shared read-write.
    The command's working directory is shared read-write too: a command run from there
    expects to write there."""
    always = [REPO, cache_root()]
    rw: list[Path] = []
    for d in (*writes, *([cwd] if cwd else [])):
        d = Path(d).resolve()
        if d == Path("/"):
            continue
        d.mkdir(parents=True, exist_ok=True)
        rw.append(d)
    ro = []
    for p in reads:
        p = Path(p).resolve()
        ro.append(p if p.is_dir() else p.parent)
    def outside(d: Path, others: list[Path]) -> bool:
        return not any(d == o or d.is_relative_to(o) for o in others)

    rw = _minimal([_vng_safe(d) for d in rw if outside(d, always)])
    ro = _minimal([_vng_safe(d) for d in ro if outside(d, always + rw) and d != Path("/")])
    if Path("/") in rw:
        raise UsageError("the lab VM cannot share a directory virtme-ng refuses (its path "
                         f"has other characters than {VNG_SAFE_PATH.pattern}) or any of its "
                         "parents but /")
    ro = [d for d in ro if d != Path("/")]
    return rw, ro


# What virtme-ng takes as a --rwdir/--rodir path (virtme.commands.run's pattern).
VNG_SAFE_PATH = re.compile(r"[a-zA-Z0-9_+ /.-]+")


def _vng_safe(d: Path) -> Path:
    """D, or its nearest ancestor virtme-ng can share (it refuses, say, '@' or ':' in a
    path: a wider share still brings the writes home)."""
    while not VNG_SAFE_PATH.fullmatch(str(d)):
        d = d.parent
    return d


def _minimal(dirs: list[Path]) -> list[Path]:
    """DIRS without duplicates and without those inside another one of them."""
    out: list[Path] = []
    for d in sorted(set(dirs), key=lambda p: len(p.parts)):
        if not any(d.is_relative_to(o) for o in out):
            out.append(d)
    return out


FORWARDED_ENV = ("HASHLAB_CACHE", "HASHLAB_RESULTS", retries.ENV, "PYTEST_CURRENT_TEST")


def forwarded_env() -> dict[str, str]:
    """Our environment variables that the lab side must agree on: where things are, and
    where retries are counted (and for which test)."""
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


ACCELS = ("auto", "kvm", "tcg")


def probe_cache_path() -> Path:
    """Where this host boot's KVM verdict is kept (/run: gone with the boot)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "unknown"
    return Path("/run/hashlab") / f"kvm-probe-{boot}.json"


def kvm_verdict(kernel: Path, refresh: bool = False) -> kvm.KvmProbe:
    """``kvm.probe`` booting KERNEL, asked once per host boot (it may take half a
    minute to say no)."""
    path = probe_cache_path()
    if not refresh:
        try:
            d = json.loads(path.read_text())
            return kvm.KvmProbe(d["usable"], d["reason"], d["nested"])
        except (OSError, ValueError, KeyError):
            pass
    res = kvm.probe(kernel=kernel)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dataclasses.asdict(res)) + "\n")
    return res


def choose_accel(requested: str, kernel: Path) -> tuple[str, str]:
    """(accel, why in one line) for the lab VM: TCG unless KVM runs guests here and
    allows nesting (the lab VM runs KVM guests of its own)."""
    if requested not in ACCELS:
        raise UsageError(f"--accel must be one of {', '.join(ACCELS)}, not {requested!r}")
    if requested == "tcg":
        return "tcg", "asked for TCG"
    v = kvm_verdict(kernel)
    nest = ", ".join(f"{m} nested={'1' if on else '0'}" for m, on in v.nested.items()) \
        or "no kvm_intel/kvm_amd nested parameter"
    if requested == "kvm":
        if not v.usable:
            raise HashlabError(f"--accel kvm: KVM cannot run guests here: {v.reason}")
        return "kvm", f"asked for KVM ({v.reason}; {nest}" + (
            "" if v.nesting else "; without nesting the lab's own guests cannot run") + ")"
    if not v.usable:
        return "tcg", f"KVM cannot run guests here: {v.reason}"
    if not v.nesting:
        return "tcg", f"KVM runs guests here but {nest}: the lab's own guests need nesting"
    return "kvm", f"KVM runs guests here and {nest}"


def run(
    command: list[str] | str,
    *,
    kernel: Path | None = None,
    design: str | None = None,
    timeout: float = 600,
    memory: str = "4G",
    cpus: int = 2,
    writes: Sequence[Path] = (),
    reads: Sequence[Path] = (),
    expect: Sequence[Path] = (),
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    verbose: bool = False,
    log: Path | None = None,
    append: list[str] = (),
    accel: str = "tcg",
    qemu_opts: Sequence[str] = (),
) -> LabResult:
    """Boot the lab VM, run ``command`` as root in it, return its exit status.

    The command's stdout and stderr (merged) go to our stdout; the kernel console goes
    to the log (and to our stderr with ``verbose``).  WRITES and READS are what the
    command writes and reads outside the checkout (see ``shared_dirs``); EXPECT are files
    it must leave on the host when it exits 0.  Raises LabPanic when the kernel panics,
    LabHang when nothing finishes within ``timeout`` x the load factor, LabOutputLost when
    an expected file is missing after status 0, and LabError when the VM ends without
    reporting a status.

    DESIGN (``hashlab.designs``) names what KERNEL is, for the command
    (``HASHLAB_LAB_DESIGN``); without a KERNEL, its cached kernel boots (default
    ``progtype``).  A KERNEL without a DESIGN is left for the command to probe.
    QEMU_OPTS go to the lab VM's QEMU as they are (e.g. ``qmp_relay.qemu_opts()``).
    """
    if design is not None:
        design = designs.get(design).name
    elif not kernel:
        design = designs.DEFAULT
    kernel = Path(kernel) if kernel else default_kernel(design)
    if not kernel.exists():
        raise MissingToolError(f"lab kernel {kernel} does not exist")
    if isinstance(command, str):
        script = command
    else:
        script = shlex.join(command)
    cwd = Path(cwd or os.getcwd())
    # Tests in the lab boot KVM guests on the same kernel.
    env = {"HASHLAB_LAB_KERNEL": str(kernel), **forwarded_env(), **(env or {})}
    if design:
        env["HASHLAB_LAB_DESIGN"] = design
    else:  # an outer lab's design says nothing about this kernel
        env.pop("HASHLAB_LAB_DESIGN", None)
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
    if accel not in ("kvm", "tcg"):
        accel = choose_accel(accel, kernel)[0]
    argv = [
        vng, "--run", str(kernel), *(["--disable-kvm"] if accel == "tcg" else []),
        "--force-9p", "--verbose",
        "--cpus", str(cpus), "--memory", memory, "--cwd", str(cwd),
        # The repo stays writable so results written in the lab reach the host; the
        # build cache must be passed explicitly, as virtme-ng puts a tmpfs on /var/cache.
        "--rwdir", str(REPO), "--rwdir", str(cache_root()),
    ]
    retry_log = os.environ.get(retries.ENV)
    rw, ro = shared_dirs((*writes, *([Path(retry_log).parent] if retry_log else [])),
                         (*reads, Path(sys.prefix)), cwd)
    for d in rw:
        argv += ["--rwdir", str(d)]
    for d in ro:
        argv += ["--rodir", str(d)]
    for a in (*LAB_KERNEL_ARGS, *append):
        argv += ["--append", a]
    for o in qemu_opts:
        argv.append(f"--qemu-opt={o}")  # "=": the values start with "-"
    # The command goes in a file next to the log (the cache is shared with the lab VM),
    # not on the command line: virtme-ng passes its script on the kernel command line,
    # which is cut at 2048 bytes (seen: a long environment made init a garbled path).
    script_file = log_dir() / (log.stem + ".sh")
    script_file.write_text(script + "\n")
    argv += ["--", f"sh {shlex.quote(str(script_file))}"]

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
    missing = [Path(p) for p in expect if not Path(p).exists()]
    if reported[-1] == 0 and missing:
        raise LabOutputLost(
            f"wrote {', '.join(map(str, missing))}, which did not reach the host "
            f"(command exited 0)", log, argv)
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
