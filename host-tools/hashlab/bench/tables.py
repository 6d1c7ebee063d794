"""Per-position Toeplitz lookup tables: what the proposal has QEMU compute per key.

Toeplitz is linear over XOR: ``hash(input) = XOR over input bytes i of T[i][input[i]]``
with ``T[i][b]`` the XOR of the 32-bit key windows that start at key bits ``8i + k`` for
every bit ``k`` (most significant first) set in ``b``.  For the 36 bytes an IPv6 4-tuple
takes, the byte tables are 36 x 256 x 4 = 36,864 bytes; nibble tables (``T[2i][hi]``,
``T[2i+1][lo]``) 72 x 16 x 4 = 4,608 bytes.  The map value is the tables in host byte
order, position-major, as ``proto_rss.bpf.c``'s ``struct tables``.
"""

from __future__ import annotations

import struct

from ..oracle import rss

INPUT_MAX = 36
def window(key: bytes, bit: int) -> int:
    """The 32-bit window of ``key`` starting at key bit ``bit`` (MSB of byte 0 = 0)."""
    k = int.from_bytes(key, "big")
    n = len(key) * 8
    return (k >> (n - 32 - bit)) & 0xFFFFFFFF


def byte_tables(key: bytes) -> list[list[int]]:
    """``T[i][b]`` for i < 36 (needs a key of at least 40 bytes)."""
    if len(key) < INPUT_MAX + 4:
        raise ValueError(f"key of {len(key)} bytes: needs {INPUT_MAX + 4}")
    out = []
    for i in range(INPUT_MAX):
        w = [window(key, 8 * i + k) for k in range(8)]
        row = [0] * 256
        for b in range(1, 256):
            low = b & -b  # build each entry from a smaller one: one XOR per value
            k = 7 - (low.bit_length() - 1)
            row[b] = row[b ^ low] ^ w[k]
        out.append(row)
    return out


def nibble_tables(key: bytes) -> list[list[int]]:
    t = byte_tables(key)
    out = []
    for i in range(INPUT_MAX):
        out.append([t[i][n << 4] for n in range(16)])
        out.append([t[i][n] for n in range(16)])
    return out


def map_value(key: bytes, layout: str = "byte") -> bytes:
    """The ``tap_rss_map_toeplitz_tables`` value for ``key``."""
    rows = byte_tables(key) if layout == "byte" else nibble_tables(key)
    return b"".join(struct.pack(f"={len(r)}I", *r) for r in rows)


def hash_with_tables(rows: list[list[int]], data: bytes, layout: str = "byte") -> int:
    """The table-driven hash (for checking the tables against ``rss.toeplitz``)."""
    h = 0
    for i, b in enumerate(data):
        if layout == "byte":
            h ^= rows[i][b]
        else:
            h ^= rows[2 * i][b >> 4] ^ rows[2 * i + 1][b & 15]
    return h


def check(key: bytes, data: bytes) -> bool:
    return hash_with_tables(byte_tables(key), data) == rss.toeplitz(key, data) == \
        hash_with_tables(nibble_tables(key), data, "nibble")
