"""``BPF_PROG_TEST_RUN`` over many frames: the ``hashlab-testrun`` helper.

``BPF_PROG_TEST_RUN`` of an skb program takes one frame per call (``repeat`` reruns
the same frame), so a fuzz run of 100,000 frames is 100,000 bpf(2) calls.  Made from
Python with ctypes that costs far more than the call itself, above all in the lab VM
under TCG; the helper (``testrun.c``) makes the calls in a loop, the program fd
inherited, frames in and results out through pipes.

``run(prog_fd, frames)`` -> list of :class:`Result`; ``err`` is the errno of a refused
frame (e.g. ``EINVAL``: shorter than the IP header its EtherType announces), else 0.
"""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import HashlabError
from ..uapi.linux import SKB_SIZE  # struct __sk_buff with the lab series' vnet_* fields
from . import tools

_REC = struct.Struct("<iIIIIHH")


@dataclass(frozen=True)
class Result:
    err: int
    retval: int
    duration: int  # ns per run, averaged by the kernel over ``repeat``
    ctx_size_out: int
    hash: int  # __sk_buff.vnet_hash_value (0 unless ctx_out has it)
    report: int
    queue: int


class TestRunError(HashlabError):
    exit_status = 1


def encode(frames: Sequence[bytes], repeat: int | Sequence[int] = 1, ctx_size: int = SKB_SIZE) -> bytes:
    n = len(frames)
    reps = [int(repeat)] * n if isinstance(repeat, int) else [int(r) for r in repeat]
    if len(reps) != n:
        raise ValueError("one repeat per frame")
    parts = [b"HLTR", struct.pack("<III", 1, ctx_size, n)]
    for f, r in zip(frames, reps):
        parts.append(struct.pack("<II", r, len(f)))
        parts.append(bytes(f))
    return b"".join(parts)


def decode(raw: bytes, n: int) -> list[Result]:
    if len(raw) != n * _REC.size:
        raise TestRunError(f"hashlab-testrun returned {len(raw)} bytes for {n} frames")
    return [Result(*t) for t in _REC.iter_unpack(raw)]


def run(prog_fd: int, frames: Sequence[bytes], repeat: int | Sequence[int] = 1,
        ctx_size: int = SKB_SIZE, helper: Path | None = None) -> list[Result]:
    """Run the loaded program ``prog_fd`` once per frame (``repeat`` times each)."""
    helper = helper or tools.testrun_helper()
    if not frames:
        return []
    r = subprocess.run([str(helper), str(prog_fd)], input=encode(frames, repeat, ctx_size),
                       capture_output=True, pass_fds=(prog_fd,))
    if r.returncode != 0:
        raise TestRunError(f"hashlab-testrun exited {r.returncode}: "
                           f"{r.stderr.decode(errors='replace').strip()}")
    return decode(r.stdout, len(frames))
