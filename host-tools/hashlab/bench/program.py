"""``hashlab bench program``: ns per packet of the RSS steering programs.

Every subject runs through ``BPF_PROG_TEST_RUN`` with a large ``repeat`` (the kernel
times the loop and returns the mean ns per run; the skb is set up once, outside it),
per packet class (:data:`CLASSES`), with QEMU's maps filled for RSS with every hash
type (Microsoft key, 128-entry table over 4 queues):

* ``upstream``: QEMU 10.0's own program, built from the pristine
  ``tools/ebpf/rss.bpf.c`` of the source package's orig tarball with clang-19 into the
  bench cache (a socket filter: it selects a queue and reports nothing);
* ``ours``: hashlab's ``rss.bpf.o`` from the patched QEMU entry: the socket-filter
  form on the host (it computes hash and report too, then returns the queue), the
  ``BPF_PROG_TYPE_VNET_HASH`` form in the lab VM (``ours-socket`` there is the other);
  on the ``kfunc`` design's kernel only ``ours-socket`` loads, and there it is the kfunc
  form: it hands hash and report to ``bpf_skb_set_vnet_hash()`` (which, with no tun
  under ``BPF_PROG_TEST_RUN``, records nothing and returns ``-EOPNOTSUPP``);
* ``proto-table`` / ``proto-nibble`` / ``proto-bitwise``: the optimisation's prototype
  (``proto_rss.bpf.c``, the same parse, Toeplitz by per-byte tables / per-nibble
  tables / bit by bit), checked against the oracle before it is timed;
* ``empty``: a two-instruction socket filter: what ``BPF_PROG_TEST_RUN`` itself costs
  per run (included in every other number);
* ``floor-bitwise`` / ``floor-table``: a plain C Toeplitz over the same bytes the
  programs hash, timed with clock_gettime (``floor.c``);
* ``tun-c``: the ``tunrss`` design's own hash function (``drivers/net/tun_vnet_hash.h``
  from its patch) built for the host (``tun_hash.c``): what tun spends per packet on
  hashing, next to what the programs spend; its hash and report are checked too;
* ``floor-parse``: the whole job in plain C (``floor.c --parse``): parse the frame as
  the spec's rules read it, pick the type, hash by the tables; its hash and report are
  checked against the oracle.  The true floor of a steering program, net of the
  harness (``report.PARSE_GOAL``).

Samples are interleaved (every subject once, then again) so that the machine's other
load hits them alike; the best sample stands for a subject (the median is kept too).
The lab VM part (TCG: compare it only with itself) runs ``--lab-part`` inside
``hashlab lab`` and is merged into the host's result; with several designs
(``--design progtype,kfunc``) one lab VM per design, each its own ``where`` (``lab``
for the default design, ``lab-<design>`` for the others), and :func:`report.designs`
sets their forms side by side, each as a ratio to upstream's program on its own kernel.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .. import designs
from ..host import bpf
from ..oracle import rss
from ..cache import CacheEntry, InputKey
from ..errors import HashlabError, MissingToolError
from ..frames.hostile import (
    DST, HBH, RT, TCP, V4_DST, V4_SRC, V6_RH2, eth, hao, ipv4, ipv6, opt_pad, opts_header,
    routing, tcp, udp,
)
from ..paths import cache_root, results_root
from . import report, tables, testrun, tools
from .differential import Config

HERE = Path(__file__).resolve().parent
UPSTREAM_PROG = "tun_rss_steering_prog"
PROTO_PROGS = {"socket": "proto_rss_socket", "vnet_hash": "proto_rss_vnet_hash"}
PROTO_VARIANTS = {"proto-table": (1, "byte"), "proto-nibble": (2, "nibble"), "proto-bitwise": (0, None)}

BENCH_CONFIG = Config("bench", rss.MS_KEY, rss.ALL_TYPES, tuple(i % 4 for i in range(128)), 0)


class BenchError(HashlabError):
    exit_status = 1


# --------------------------------------------------------------------------- classes


def _payload(n: int) -> bytes:
    return bytes((i * 7 + 3) & 0xFF for i in range(n))


def _classes() -> list[tuple[str, str, bytes]]:
    v6_src = bytes.fromhex("20010db8000000000000000000000001")
    v6_dst = bytes.fromhex("20010db8000100000000000000000002")
    pl = _payload(64)
    ext = (opts_header(RT, opt_pad(6))  # hop-by-hop, then
           + routing(DST, 2, 1, [V6_RH2])  # a Type 2 Routing Header, then
           + opts_header(TCP, opt_pad(4) + hao())  # destination options with a HAO
           + tcp() + pl)
    arp = (bytes.fromhex("ffffffffffff02686c616201") + b"\x08\x06"
           + bytes.fromhex("0001080006040001") + bytes.fromhex("02686c616201") + V4_SRC
           + bytes(6) + V4_DST)
    return [
        ("ipv4-tcp", "IPv4 TCP, 64-byte payload", eth(0x0800) + ipv4(TCP, tcp() + pl)),
        ("ipv4-udp", "IPv4 UDP, 64-byte payload", eth(0x0800) + ipv4(17, udp(64) + pl)),
        ("ipv6-tcp", "IPv6 TCP, 64-byte payload",
         eth(0x86DD) + ipv6(TCP, tcp() + pl, src=v6_src, dst=v6_dst)),
        ("ipv6-ext", "IPv6 hop-by-hop + RH2 + dest opts (HAO) + TCP (TCPv6_EX)",
         eth(0x86DD) + ipv6(HBH, ext, src=v6_src, dst=v6_dst)),
        ("non-ip", "ARP request, padded to 60 bytes", arp + bytes(60 - len(arp))),
    ]


CLASSES = _classes()


def class_info(name: str, desc: str, frame: bytes) -> dict:
    info = rss.parse_frame(frame, "hashlab-ebpf")
    h, r = rss.hash_info(info, BENCH_CONFIG.key, BENCH_CONFIG.types, "hashlab-ebpf")
    data = rss.hash_input(info, r) if r else b""
    return {"name": name, "desc": desc, "frame_len": len(frame), "report": rss.Report(r).name,
            "hash_input_len": len(data), "hash": h}


# --------------------------------------------------------------------------- subjects


@dataclass
class Subject:
    name: str
    desc: str
    kind: str  # "bpf" or "c"
    reports_hash: bool


SUBJECTS = [
    Subject("empty", "a socket filter returning 0: BPF_PROG_TEST_RUN's own cost per run", "bpf", False),
    Subject("upstream", "QEMU 10.0's rss.bpf.c (pristine): queue only, bit-by-bit Toeplitz", "bpf", False),
    Subject("ours", "hashlab's rss.bpf.c (qemu/patches): hash + report + queue, Toeplitz by "
            "36x256 u32 tables in the key map (qemu 0005) (host: socket form; lab: VNET_HASH form)",
            "bpf", True),
    Subject("ours-socket", "hashlab's rss.bpf.c, socket-filter form (lab only; on the kfunc "
            "kernel it calls bpf_skb_set_vnet_hash())", "bpf", True),
    Subject("proto-table", "prototype: hashlab's rules, Toeplitz by 36x256 u32 tables (36 KiB)", "bpf", True),
    Subject("proto-nibble", "prototype: Toeplitz by 72x16 u32 tables (4.5 KiB)", "bpf", True),
    Subject("proto-bitwise", "prototype: Toeplitz bit by bit (the same parse as proto-table)", "bpf", True),
    Subject("floor-bitwise", "plain C, bit by bit over the hashed bytes only", "c", False),
    Subject("floor-table", "plain C, one table lookup per hashed byte", "c", False),
    Subject("floor-parse", "plain C, the whole job: parse the frame, pick the type, hash "
            "by the tables", "c", True),
    Subject("tun-c", "the tunrss series' tun_vnet_hash_compute() built for the host: parse, "
            "type, Toeplitz by per-byte tables (not: RCU, skb extension, queue lookup)", "c", True),
]


# --------------------------------------------------------------------------- building


def pristine_rss_source() -> Path:
    """QEMU 10.0's ``tools/ebpf/rss.bpf.c`` from the source package's orig tarball
    (Debian's patches leave tools/ebpf alone), cached in ``<cache>/bench/upstream-src``."""
    override = os.environ.get("HASHLAB_UPSTREAM_RSS_BPF_C")
    if override:
        return Path(override)
    from ..build import qemu as qb

    dsc = qb.source_package(download=False)
    tarballs = [dsc.parent / f for f in qb._dsc_files(dsc) if ".orig.tar" in f]
    if not tarballs:
        raise MissingToolError(f"no orig tarball listed in {dsc}")
    key = InputKey("bench/upstream-src")
    key.add_file(dsc, "source.dsc")  # lists the tarball's checksums
    e = CacheEntry(key)
    target = e.path / "rss.bpf.c"
    if e.done and target.is_file():
        return target
    with e.fill() as tmp:
        r = subprocess.run(["tar", "-xaf", str(tarballs[0]), "-O", "--wildcards",
                            "*/tools/ebpf/rss.bpf.c"], capture_output=True)
        if r.returncode != 0 or b"tun_rss_steering_prog" not in r.stdout:
            raise BenchError(f"cannot extract tools/ebpf/rss.bpf.c from {tarballs[0]}: "
                             f"{r.stderr.decode(errors='replace').strip()}")
        (tmp / "rss.bpf.c").write_bytes(r.stdout)
    return target


def upstream_object() -> Path:
    return tools.bpf_object("upstream-rss", pristine_rss_source(), "rss.bpf.o")


def proto_object(variant: int) -> Path:
    return tools.bpf_object("proto-rss", HERE / "proto_rss.bpf.c", f"proto{variant}.bpf.o",
                            defines={"PROTO_HASH": str(variant)})


def ours_object() -> Path | None:
    env = os.environ.get("HASHLAB_RSS_BPF_O")
    if env:
        return Path(env)
    from ..build.qemu import find_qemu_entry

    entry = find_qemu_entry()
    return entry / "bpf" / "rss.bpf.o" if entry else None


def prebuild() -> dict[str, str]:
    """Build everything the bench needs (on the host, before the lab VM reuses it)."""
    out = {"testrun": str(tools.testrun_helper()), "floor": str(tools.floor_binary()),
           "upstream": str(upstream_object())}
    for v in (0, 1, 2):
        out[f"proto{v}"] = str(proto_object(v))
    return out


# --------------------------------------------------------------------------- environment


def jit_state(enable: bool = True) -> dict:
    """``net.core.bpf_jit_enable`` (set to 1 if it is not and we may), and hardening."""
    out: dict = {}
    p = Path("/proc/sys/net/core/bpf_jit_enable")
    try:
        was = int(p.read_text())
    except OSError:
        return {"bpf_jit_enable": None, "note": "no /proc/sys/net/core/bpf_jit_enable"}
    out["bpf_jit_enable_was"] = was
    if was != 1 and enable:
        try:
            p.write_text("1\n")
        except OSError as e:
            out["jit_error"] = str(e)
    out["bpf_jit_enable"] = int(p.read_text())
    try:
        out["bpf_jit_harden"] = int(Path("/proc/sys/net/core/bpf_jit_harden").read_text())
    except OSError:
        pass
    return out


def environment(where: str) -> dict:
    env = {"where": where, "kernel": platform.release(), "cpus": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                env["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        env["loadavg_start"] = os.getloadavg()[0]
    except OSError:
        pass
    env.update(jit_state())
    if where.startswith("lab"):
        env["emulated"] = True
        from ..host.datapath import running_design

        env["design"] = running_design()
        env["note"] = "lab VM under TCG: compare only within this block"
    return env


# --------------------------------------------------------------------------- running


@dataclass
class Loaded:
    subject: str
    form: str
    obj: object | None
    fd: int
    check: str  # "ok", "-" or what went wrong


def _empty_prog() -> int:
    from ..uapi import linux

    return linux.prog_load(linux.BPF_PROG_TYPE_SOCKET_FILTER, linux.Asm().mov64(0, 0).exit().code(),
                           "hashlab_empty")


def _check(subject: str, form: str, fd: int) -> str:
    """One run per class against the oracle: hash/report/queue (VNET_HASH form) or the
    queue (socket form); upstream against its own model (qemu-ebpf, test_run)."""
    bad = []
    frames = [f for _, _, f in CLASSES]
    for (name, _, frame), res in zip(CLASSES, testrun.run(fd, frames)):
        if res.err:
            bad.append(f"{name}: errno {res.err}")
            continue
        if subject == "upstream":
            h, r = rss.hash_packet(frame, BENCH_CONFIG.key, BENCH_CONFIG.types, "qemu-ebpf",
                                   ebpf_context="test_run")
        else:
            h, r = rss.hash_packet(frame, BENCH_CONFIG.key, BENCH_CONFIG.types, "hashlab-ebpf")
        want = BENCH_CONFIG.expect(h, r)
        got = (res.hash, res.report, res.queue) if form == "vnet_hash" else (None, None, res.retval)
        if (got != want) if form == "vnet_hash" else (got[2] != want[2]):
            bad.append(f"{name}: got {got}, oracle {want}")
    return "ok" if not bad else "; ".join(bad)


def load_subjects(where: str, log=print) -> list[Loaded]:
    """Load and configure every BPF subject that can run here."""
    loaded: list[Loaded] = [Loaded("empty", "socket", None, _empty_prog(), "-")]

    def configure(obj, fill=None):
        BENCH_CONFIG.apply(obj)
        if fill:
            obj.map("tap_rss_map_toeplitz_tables").update(0, tables.map_value(BENCH_CONFIG.key, fill))

    obj = bpf.BpfObject.open(upstream_object(), types={UPSTREAM_PROG: bpf.PROG_TYPE_SOCKET_FILTER})
    obj.load()
    configure(obj)
    fd = obj.program(UPSTREAM_PROG).fd
    loaded.append(Loaded("upstream", "socket", obj, fd, _check("upstream", "socket", fd)))

    ours = ours_object()
    forms = ["vnet_hash", "socket"] if where.startswith("lab") else ["socket"]
    if ours is None or not ours.is_file():
        log("bench: no patched QEMU entry (hashlab build qemu): skipping 'ours'")
    else:
        for form in forms:
            if form == "vnet_hash":
                ok, why = bpf.kernel_has_vnet_hash(ours)
                if not ok:
                    log(f"bench: this kernel cannot load the VNET_HASH form: {why}")
                    continue
            o = bpf.open_rss_object(ours, form)
            o.load()
            configure(o)
            prog = bpf.RSS_PROG_VNET_HASH if form == "vnet_hash" else bpf.RSS_PROG_SOCKET
            fd = o.program(prog).fd
            name = "ours" if form == forms[0] else "ours-socket"
            loaded.append(Loaded(name, form, o, fd, _check(name, form, fd)))

    for name, (variant, layout) in PROTO_VARIANTS.items():
        form = forms[0]
        if form == "vnet_hash" and not any(x.form == "vnet_hash" for x in loaded):
            form = "socket"
        prog = PROTO_PROGS[form]
        other = PROTO_PROGS["socket" if form == "vnet_hash" else "vnet_hash"]
        ptype = bpf.PROG_TYPE_VNET_HASH if form == "vnet_hash" else bpf.PROG_TYPE_SOCKET_FILTER
        o = bpf.BpfObject.open(proto_object(variant), types={prog: ptype}, autoload={other: False})
        o.load()
        configure(o, layout)
        fd = o.program(prog).fd
        loaded.append(Loaded(name, form, o, fd, _check(name, form, fd)))
    return loaded


def _calibrate(fd: int, frame: bytes, target_ns: float, lo: int, hi: int, start: int) -> int:
    (res,) = testrun.run(fd, [frame], repeat=start)
    per = max(res.duration, 1)
    return max(lo, min(hi, int(target_ns / per)))


def measure_bpf(loaded: list[Loaded], where: str, samples: int, target_ms: float,
                log=print) -> list[dict]:
    lo, hi, start = (1_000, 5_000_000, 20_000) if where == "host" else (100, 200_000, 500)
    out = []
    for cname, _, frame in CLASSES:
        reps = {x.subject: _calibrate(x.fd, frame, target_ms * 1e6, lo, hi, start) for x in loaded}
        per: dict[str, list[float]] = {x.subject: [] for x in loaded}
        for _ in range(samples):
            for x in loaded:
                (res,) = testrun.run(x.fd, [frame], repeat=reps[x.subject])
                if res.err:
                    raise BenchError(f"{x.subject} on {cname}: BPF_PROG_TEST_RUN errno {res.err}")
                per[x.subject].append(res.duration)
        for x in loaded:
            m = report.measurement(x.subject, where, cname, per[x.subject], reps[x.subject], x.form)
            out.append(m)
        log(f"bench: {where} {cname}: " + ", ".join(
            f"{x.subject} {min(per[x.subject]):.0f}" for x in loaded) + " ns")
    return out


def measure_floor(where: str, samples: int, target_ms: float, log=print) -> list[dict]:
    exe = tools.floor_binary()
    out = []
    for cname, _, frame in CLASSES:
        info = rss.parse_frame(frame, "hashlab-ebpf")
        h, r = rss.hash_info(info, BENCH_CONFIG.key, BENCH_CONFIG.types, "hashlab-ebpf")
        if not r:
            continue  # nothing to hash: no floor
        data = rss.hash_input(info, r)
        iters = max(1000, int(target_ms * 1e6 / (10 * len(data))))
        res = subprocess.run([str(exe), BENCH_CONFIG.key.hex(), data.hex(), str(iters), str(samples)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise BenchError(f"hashlab-floor failed: {res.stderr.strip()}")
        for line in res.stdout.splitlines():
            variant, best, median, hx = line.split()
            if int(hx, 16) != h:
                raise BenchError(f"hashlab-floor {variant} hashed {hx} for {cname}, oracle {h:08x}")
            m = report.measurement(f"floor-{variant}", where, cname, [float(best)], iters, "c")
            m["ns_median"] = float(median)
            m["samples"] = [float(best), float(median)]
            out.append(m)
    for cname, _, frame in CLASSES:  # the whole job, every class (non-ip: parse only)
        h, r = rss.hash_packet(frame, BENCH_CONFIG.key, BENCH_CONFIG.types, "hashlab-ebpf")
        iters = max(1000, int(target_ms * 1e6 / 50))
        res = subprocess.run([str(exe), "--parse", BENCH_CONFIG.key.hex(), frame.hex(),
                              str(BENCH_CONFIG.types), str(iters), str(samples)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise BenchError(f"hashlab-floor --parse failed on {cname}: {res.stderr.strip()}")
        _, best, median, hx, rep_ = res.stdout.split()
        if (int(hx, 16), int(rep_)) != (h, r):
            raise BenchError(f"hashlab-floor --parse gave {hx}/{rep_} for {cname}, "
                             f"oracle {h:08x}/{r}")
        m = report.measurement("floor-parse", where, cname, [float(best)], iters, "c")
        m["ns_median"] = float(median)
        m["samples"] = [float(best), float(median)]
        out.append(m)
    out += measure_tun_hash(where, samples, target_ms)
    log(f"bench: {where} floor: " + ", ".join(f"{m['class']} {m['subject']} {m['ns_best']:.0f}"
                                             for m in out) + " ns")
    return out


def measure_tun_hash(where: str, samples: int, target_ms: float) -> list[dict]:
    """The tunrss design's in-kernel hash function, compiled for the host from its patch
    (``tools.tun_hash_binary``), on every class; checked against the oracle first."""
    exe = tools.tun_hash_binary(designs.get("tunrss").series_dir)
    out = []
    for cname, _, frame in CLASSES:
        h, r = rss.hash_packet(frame, BENCH_CONFIG.key, BENCH_CONFIG.types, "hashlab-ebpf")
        iters = max(1000, int(target_ms * 1e6 / 200))
        res = subprocess.run([str(exe), BENCH_CONFIG.key.hex(), frame.hex(),
                              str(BENCH_CONFIG.types), str(iters), str(samples)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise BenchError(f"hashlab-tunhash failed on {cname}: {res.stderr.strip()}")
        _, best, median, hx, rep_ = res.stdout.split()
        if (int(hx, 16), int(rep_)) != (h, r):
            raise BenchError(f"hashlab-tunhash gave {hx}/{rep_} for {cname}, oracle {h:08x}/{r}")
        m = report.measurement("tun-c", where, cname, [float(best)], iters, "c")
        m["ns_median"] = float(median)
        m["samples"] = [float(best), float(median)]
        out.append(m)
    return out


def run_part(where: str, samples: int = 7, target_ms: float = 50.0, log=print) -> dict:
    """Measure everything that runs here; a partial result (no ratios)."""
    if os.geteuid() != 0:
        raise BenchError("loading BPF programs needs root")
    env = environment(where)
    if env.get("bpf_jit_enable") != 1:
        log(f"bench: warning: net.core.bpf_jit_enable is {env.get('bpf_jit_enable')}, not 1")
    loaded = load_subjects(where, log)
    checks = {x.subject: x.check for x in loaded}
    for name, c in checks.items():
        if c not in ("ok", "-"):
            log(f"bench: warning: {name} disagrees with the oracle: {c}")
    t0 = time.monotonic()
    ms = measure_bpf(loaded, where, samples, target_ms, log)
    ms += measure_floor(where, samples, target_ms, log)
    try:
        env["loadavg_end"] = os.getloadavg()[0]
    except OSError:
        pass
    env["seconds"] = round(time.monotonic() - t0, 1)
    env["checks"] = checks
    env["forms"] = {x.subject: x.form for x in loaded}
    # What a device's configuration takes in the kernel: the program's maps, tun's own
    # configuration (the harness knows its size).
    env["memory_bytes"] = {x.subject: sum(x.obj.map_bytes().values())
                           for x in loaded if x.obj is not None}
    env["memory_maps"] = {x.subject: x.obj.map_bytes() for x in loaded
                          if x.obj is not None and x.subject in ("upstream", "ours")}
    tun_cfg = tools.tun_hash_cfg_bytes(designs.get("tunrss").series_dir)
    if tun_cfg is not None:
        env["memory_bytes"]["tun-c"] = tun_cfg
    for x in loaded:
        if x.obj is not None:
            x.obj.close()
        else:
            os.close(x.fd)
    return {
        "environments": {where: env},
        "config": {"key": "microsoft", "hash_types": rss.hash_type_names(BENCH_CONFIG.types),
                   "table": "128 entries over 4 queues", "samples": samples, "target_ms": target_ms},
        "classes": [class_info(n, d, f) for n, d, f in CLASSES],
        "subjects": [{"name": s.name, "desc": s.desc, "kind": s.kind, "reports_hash": s.reports_hash}
                     for s in SUBJECTS],
        "measurements": ms,
    }


def run_lab_part(samples: int, target_ms: float, timeout: float = 1800, log=print,
                 design: str = designs.DEFAULT) -> dict | None:
    """Run ``--lab-part`` inside the lab VM (DESIGN's kernel) and return its result
    (None: no lab)."""
    from ..host import datapath

    try:
        from ..build import kernel as kb

        if not kb.entry(design).done:
            log(f"bench: {datapath.kernel_not_built(design)}: no lab part")
            return None
    except Exception as e:  # the lab is optional for this command
        log(f"bench: no lab VM ({e}): no lab part")
        return None
    out_dir = cache_root() / "bench" / "runs"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"lab-part-{os.getpid()}.json"
    cmd = datapath.hashlab_argv("bench", "program", "--lab-part", str(out),
                                "--samples", str(samples), "--target-ms", str(target_ms))
    log(f"bench: running the lab part in a lab VM of the {design} design (TCG: a few minutes)")
    res = datapath.run_in_lab(cmd, {}, timeout, log, design=design)
    if res.status != 0 or not out.is_file():
        raise BenchError(f"the lab part failed (status {res.status}); console log: {res.log}")
    data = json.loads(out.read_text())
    out.unlink()
    return data


def lab_where(design: str) -> str:
    """The ``where`` of a lab part: ``lab`` on the default design, else ``lab-<design>``."""
    return "lab" if design == designs.DEFAULT else f"lab-{design}"


def default_output() -> Path:
    return results_root() / "bench" / "program.json"

