"""What every QEMU (and lab VM) process manager here shares: the host's QEMU binary, how a
kernel panic looks on a console, and how much slower than idle the machine is now.

One home each, so that a guest (``machine``), the qtest driver (``qtest``) and the lab VM
(``lab``) agree on them.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal

HOST_QEMU = "/usr/bin/qemu-system-x86_64"  # Debian's stock build

# A panic as the kernel prints it on the console (text for the lab VM, bytes for guests).
PANIC_PATTERN = r"Kernel panic - not syncing|---\[ end Kernel panic"
PANIC_RE = re.compile(PANIC_PATTERN)
PANIC_BYTES_RE = re.compile(PANIC_PATTERN.encode())


def load_factor() -> float:
    """How much slower than idle the machine is now (>= 1); timeouts scale with it."""
    try:
        return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    except OSError:
        return 1.0


def die_with_parent() -> None:
    """In the child: SIGKILL it when the test process dies, however it dies (a halted
    TCG guest would otherwise outlive a SIGKILLed pytest)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
