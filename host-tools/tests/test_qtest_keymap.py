"""QEMU's eBPF key map, read back from a running patched QEMU in the lab VM.

The eBPF designs only (``progtype``, ``kfunc``): on ``tunrss`` tun hashes itself and the
map is not what hashes.
"""

from __future__ import annotations

import pytest

from hashlab.oracle import rss
from test_qtest_lab import rig  # noqa: F401  (the module's QEMU with vhost off and on)

pytestmark = [pytest.mark.lab, pytest.mark.lab_kfunc, pytest.mark.timeout(1200)]


def _toeplitz_bitwise(key: bytes, data: bytes) -> int:
    """The Toeplitz hash by its definition, one input bit at a time (no tables)."""
    k, nbits, h = int.from_bytes(key, "big"), len(key) * 8, 0
    for j in range(len(data) * 8):
        if data[j // 8] >> (7 - j % 8) & 1:
            h ^= (k >> (nbits - 32 - j)) & 0xFFFFFFFF
    return h


@pytest.mark.parametrize("seed", [1, 2])
def test_qemu_fills_the_key_map_as_the_oracle_hashes(rig, seed):  # noqa: F811 (the fixture)
    """QEMU's C code (ebpf_rss.c, qemu/patches 0006) derives the program's per-byte
    Toeplitz tables from the key the guest sets.  Read the map back from the running
    QEMU and check it against the Toeplitz hash itself (bitwise, and the oracle's) on
    random inputs: not against a second copy of QEMU's recurrence."""
    import random
    import struct

    from hashlab.host import bpf
    from hashlab.vdrv.check import HashSetup

    rng = random.Random(seed)
    key = bytes(rng.randrange(256) for _ in range(40))
    setup = HashSetup(f"key-{seed}", rss.ALL_TYPES, key, "rss", tuple(i % 4 for i in range(8)), 0, 4)
    assert setup.apply(rig) == 0, "RSS_CONFIG refused"
    maps = [m for m in bpf.kernel_maps("tap_rss_map_toeplitz_key")
            if m.value_size == bpf.RSS_KEY_VALUE_SIZE]
    assert len(maps) == 1, f"expected QEMU's one key map, found {maps}"
    value = maps[0].lookup(0)
    assert struct.pack(">I", struct.unpack_from("=I", value)[0]) + value[4:40] == key
    table = struct.unpack_from(f"={bpf.RSS_INPUT_MAX * 256}I", value, 40)
    for n in range(200):
        data = bytes(rng.randrange(256) for _ in range(12 if n % 2 else 36))
        got = 0
        for i, b in enumerate(data):
            got ^= table[i * 256 + b]
        assert got == _toeplitz_bitwise(key, data) == rss.toeplitz(key, data), data.hex()
