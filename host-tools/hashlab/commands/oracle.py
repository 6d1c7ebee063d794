"""``hashlab corpus`` and ``hashlab expect``: the frame corpus and the spec oracle."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import UsageError
from ..oracle.rss import BEHAVIOURS

DEFAULT_TABLE_SIZE = 128
MAX_TABLE_SIZE = 1 << 16  # indirection_table_mask is a le16
MAX_QUEUES = 1 << 16


def register(sub) -> None:
    p = sub.add_parser(
        "corpus",
        help="write the test frame corpus to a pcap",
        description="Write the deterministic frame corpus (every hash report type and the "
        "parsing edges) to a pcap; prints one summary line per slice.",
    )
    p.add_argument("--out", required=True, metavar="FILE.pcap", help="pcap file to write")
    p.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    p.add_argument("--slices", metavar="A,B", help="only these slices (default: all)")
    p.set_defaults(func=cmd_corpus)

    p = sub.add_parser(
        "expect",
        help="what a virtio-net device should report for each frame of a pcap",
        description="Print one JSON line per frame of FILE.pcap: the hash, report type and "
        "RSS queue the spec (or a QEMU implementation) gives it.",
    )
    p.add_argument("pcap", metavar="FILE.pcap")
    p.add_argument("--key", required=True, metavar="HEX|ms",
                   help="hash key in hex (6d5a... or 6d:5a:...), or 'ms' for the Microsoft key")
    p.add_argument("--key-size", type=int, default=40, metavar="N",
                   help="required key length in bytes (default 40)")
    p.add_argument("--types", required=True, metavar="LIST",
                   help="enabled hash types: names (ipv4,tcpv4,...,udpv6_ex), all, linux, none, or a number")
    p.add_argument("--table", metavar="Q,Q,...", help="indirection table (length a power of two)")
    p.add_argument("--queues", type=int, metavar="N",
                   help=f"number of queues; alone it means an equal table of {DEFAULT_TABLE_SIZE} entries")
    p.add_argument("--unclassified", type=int, default=0, metavar="Q",
                   help="queue for unhashed frames (default 0)")
    p.add_argument("--behaviour", "--behavior", choices=BEHAVIOURS, default="spec",
                   help="whose selection rules to follow (default: spec)")
    p.add_argument("--seed", type=int, default=0,
                   help="corpus seed, to name the slice of each frame (default 0)")
    p.set_defaults(func=cmd_expect)


def _split_slices(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise UsageError("--slices: empty list")
    return names


def cmd_corpus(args: argparse.Namespace) -> int:
    from ..frames import packets

    slices = _split_slices(args.slices)
    try:
        frames = packets.corpus(args.seed).select(slices)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        n = packets.write_pcap(frames, args.out)
    except OSError as e:
        raise UsageError(f"cannot write {args.out}: {e.strerror or e}") from None
    for name in frames.slices():
        sel = [f for f in frames if f.slice == name]
        lengths = [len(f.data) for f in sel]
        print(f"{name:16} {len(sel):4} frames  ids {min(f.id for f in sel)}..{max(f.id for f in sel)}"
              f"  len {min(lengths)}..{max(lengths)}")
    print(f"{'total':16} {n:4} frames  seed {args.seed}  -> {args.out}")
    return 0


def _parse_table(args: argparse.Namespace) -> tuple[list[int], int]:
    """(table, number of queues) from --table/--queues."""
    if args.queues is not None and not 1 <= args.queues <= MAX_QUEUES:
        raise UsageError(f"--queues {args.queues}: must be 1..{MAX_QUEUES}")
    if args.table is not None:
        try:
            table = [int(x.strip(), 0) for x in args.table.split(",")]
        except ValueError:
            raise UsageError(f"--table {args.table!r}: expected comma-separated queue numbers") from None
        n = len(table)
        if n & (n - 1) or n > MAX_TABLE_SIZE:
            raise UsageError(f"--table has {n} entries: the length must be a power of two (1..{MAX_TABLE_SIZE})")
        if any(q < 0 for q in table):
            raise UsageError("--table: queue numbers must not be negative")
        queues = args.queues if args.queues is not None else max(table) + 1
        bad = [q for q in table if q >= queues]
        if bad:
            raise UsageError(f"--table: queue {bad[0]} out of range for {queues} queue(s)")
        return table, queues
    queues = args.queues if args.queues is not None else 1
    return [i % queues for i in range(DEFAULT_TABLE_SIZE)], queues


def cmd_expect(args: argparse.Namespace) -> int:
    from ..frames import packets
    from ..oracle import rss

    if not 1 <= args.key_size <= 255:
        raise UsageError(f"--key-size {args.key_size}: must be 1..255")
    if args.key.strip().lower() == "ms":
        key = rss.MS_KEY
    else:
        try:
            key = rss.parse_key(args.key)
        except ValueError as e:
            raise UsageError(f"--key: {e}") from None
    if len(key) != args.key_size:
        raise UsageError(
            f"--key is {len(key)} bytes, expected {args.key_size} (use --key-size to change that)"
        )
    try:
        types = rss.parse_hash_types(args.types)
    except ValueError as e:
        raise UsageError(f"--types: {e}") from None
    table, queues = _parse_table(args)
    if not 0 <= args.unclassified < queues:
        raise UsageError(f"--unclassified {args.unclassified}: out of range for {queues} queue(s)")
    try:
        frames = packets.read_pcap(args.pcap)
    except packets.PcapError as e:
        raise UsageError(str(e)) from None
    ref = packets.corpus(args.seed)
    config = rss.RssConfig(key=key, hash_types=types, table=table,
                           unclassified_queue=args.unclassified, behaviour=args.behaviour)
    out = sys.stdout
    for index, data in enumerate(frames):
        fid = packets.frame_id(data, index)
        try:
            e = config.expect(data)
        except ValueError as err:  # a key too short for this input
            raise UsageError(f"frame {index}: {err}") from None
        rec: dict = {"id": fid}
        known = ref.by_id.get(fid)
        if known is not None and len(known.data) == len(data):
            rec["slice"] = known.slice
            rec["desc"] = known.desc
        rec.update({
            "len": len(data),
            "hash": e.hash,
            "hash_hex": f"0x{e.hash:08x}",
            "report": e.report,
            "report_name": rss.Report(e.report).name,
            "queue": e.queue,
            "l4": e.l4,
        })
        try:
            out.write(json.dumps(rec) + "\n")
        except BrokenPipeError:  # e.g. piped into head: stop quietly
            _silence_stdout()
            return 0
    return 0


def _silence_stdout() -> None:
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
