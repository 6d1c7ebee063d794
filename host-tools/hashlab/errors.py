"""Errors hashlab reports to its user: one clear line each, and an exit status.

``EXIT_STATUSES`` is the one table of what hashlab's exit statuses mean; every error
class takes its status from it, and the README's table is checked against it."""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    MISSING = 3
    VM_DIED = 4
    PANIC = 5
    HANG = 6
    KERNEL_WARNING = 7
    NETDEV = 8
    ERROR = 9
    BUILD = 10
    NOT_RUN = 11


EXIT_STATUSES: dict[Exit, str] = {
    Exit.OK: "success",
    Exit.FAILED: "a check failed: a hash, class or queue differs from the model, a test failed",
    Exit.USAGE: "bad input: an option, a scenario field, a key, a file",
    Exit.MISSING: "a tool or a build hashlab needs is missing (the message says how to get it)",
    Exit.VM_DIED: "a VM (lab VM, guest or qtest QEMU) ended without a result",
    Exit.PANIC: "a kernel panicked (lab kernel or guest)",
    Exit.HANG: "a VM hung (no progress within its load-scaled timeout)",
    Exit.KERNEL_WARNING: "the lab kernel printed a warning, BUG or oops (`--fail-on-warning`)",
    Exit.NETDEV: "a tap device or network namespace could not be set up",
    Exit.ERROR: "another operation failed (the message says which)",
    Exit.BUILD: "a build step failed (the message names the step and its log)",
    Exit.NOT_RUN: "something asked for did not run (`compare --require-all`: a row not built "
                  "or not supported here)",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: unwound like Ctrl-C, so every VM, tap and temp dir is
    undone on the way out (Python's default for SIGTERM is to die on the spot)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"signal {signum}")


def raise_on_termination() -> None:
    """Turn SIGTERM and SIGHUP into ``Terminated`` in this (main) thread."""
    import signal

    def handler(signum, frame):
        raise Terminated(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


class HashlabError(Exception):
    """An error the CLI prints as one line (``hashlab: error: ...``)."""

    exit_status = Exit.ERROR


class UsageError(HashlabError):
    """Bad input from the user: a key, a hash type, a file, a scenario field."""

    exit_status = Exit.USAGE


class MissingToolError(HashlabError):
    """A program or file hashlab needs is not there; the message says how to get it."""

    exit_status = Exit.MISSING


class BuildError(HashlabError):
    """A build step failed; the message names the step and its log."""

    exit_status = Exit.BUILD
