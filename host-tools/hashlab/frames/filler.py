"""Filler frames: background traffic while a guest reconfigures, told apart from the
corpus by their lengths."""

from __future__ import annotations

import random
import struct
from typing import Iterable

from .hostile import ip_checksum


def filler_frames(lengths: Iterable[int], dst_mac: str, src_mac: str = "02:68:6c:61:62:02",
                  seed: int = 1) -> list[bytes]:
    """IPv4/UDP frames of the given lengths, one flow each (varying ports), for
    background traffic; frames are told apart from the corpus by their length."""
    rng = random.Random(seed)
    dst = bytes.fromhex(dst_mac.replace(":", ""))
    src = bytes.fromhex(src_mac.replace(":", ""))
    out = []
    for n in lengths:
        if n < 14 + 20 + 8:
            continue
        payload = b"HLFILL".ljust(n - 42, b"\x5a")
        udp = struct.pack("!HHHH", rng.randrange(1024, 65535), rng.randrange(1024, 65535),
                          8 + len(payload), 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), rng.randrange(65536), 0, 64,
                         17, 0, bytes([10, 99, rng.randrange(256), rng.randrange(1, 255)]),
                         bytes([10, 98, 0, 1]))
        ip = ip[:10] + struct.pack("!H", ip_checksum(ip)) + ip[12:]
        out.append(dst + src + b"\x08\x00" + ip + udp)
    return out
