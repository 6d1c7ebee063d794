"""What QEMU's socket filter hands the kfunc design's ``bpf_skb_set_vnet_hash()``.

On the ``kfunc`` kernel QEMU's ``rss.bpf.o`` reports a hash by calling the kfunc; under
``BPF_PROG_TEST_RUN`` there is no tun, so the kfunc records nothing (it returns
``-EOPNOTSUPP``), but the arguments of the call are the program's answer.  A kprobe on the
kfunc (``kfunc_capture.bpf.c``) records every call's (value, report) in an mmapable map;
:class:`KfuncCapture` reads them per batch of frames.  The differential fuzzer's ``kfunc``
form pairs them with the frames: one call per frame the kernel ran while the
configuration populates hashes, none otherwise, or the run is an error, never a guess.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from ..host import bpf
from . import tools

HERE = Path(__file__).resolve().parent
CAPTURE_MAX = 65536  # kfunc_calls' entries (kfunc_capture.bpf.c)
KFUNC = "bpf_skb_set_vnet_hash"


class CaptureError(bpf.BpfError):
    pass


def capture_object() -> Path:
    return tools.bpf_object("kfunc-capture", HERE / "kfunc_capture.bpf.c",
                            "kfunc_capture.bpf.o", defines={"__TARGET_ARCH_x86": "1"})


class KfuncCapture:
    """The kprobe, attached while the object lives (``with`` or ``close()``)."""

    def __init__(self, lib=None):
        self.obj = bpf.BpfObject.open(capture_object(), lib=lib)
        self.link = None
        self._maps: list[mmap.mmap] = []
        try:
            self.obj.load()
            self.link = self.obj.program("capture_vnet_hash").attach()
            self.calls_map = self._mmap("kfunc_calls", CAPTURE_MAX * 8)
            self.state_map = self._mmap("kfunc_state", 8)
        except BaseException:
            self.close()
            raise
        self.reset()

    def _mmap(self, name: str, size: int) -> mmap.mmap:
        size = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        m = mmap.mmap(self.obj.map(name).fd, size, mmap.MAP_SHARED,
                      mmap.PROT_READ | mmap.PROT_WRITE)
        self._maps.append(m)
        return m

    def reset(self) -> None:
        self.state_map[0:4] = b"\0\0\0\0"

    @property
    def count(self) -> int:
        return struct.unpack_from("<I", self.state_map, 0)[0]

    def take(self) -> list[tuple[int, int]]:
        """The (value, report) of every call since the last reset, in order; resets."""
        n = self.count
        if n > CAPTURE_MAX:
            raise CaptureError(f"{n} calls of {KFUNC} in one batch, {CAPTURE_MAX} recorded",
                               75)  # EOVERFLOW
        out = list(struct.iter_unpack("<II", self.calls_map[:n * 8]))
        self.reset()
        return out

    def close(self) -> None:
        for m in self._maps:
            m.close()
        self._maps = []
        if self.link is not None:
            self.link.destroy()
            self.link = None
        self.obj.close()

    def __enter__(self) -> "KfuncCapture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
