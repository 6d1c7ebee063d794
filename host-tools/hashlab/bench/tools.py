"""Build the bench's helpers at run time into the content-keyed cache.

Every artefact lives in ``<cache>/bench/<kind>/<key>/`` where the key covers the
source text, the compiler's version and the flags, so a changed source or compiler
gives a new entry and nothing is rebuilt otherwise.  The lab VM sees the same cache
(``/var/cache/hashlab`` is shared), so what the host built is reused there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ..cache import CacheEntry, InputKey
from ..errors import HashlabError, MissingToolError

HERE = Path(__file__).resolve().parent
CC = "gcc"
CLANG = "clang-19"


class BuildError(HashlabError):
    exit_status = 1


def tool_version(cmd: str) -> str:
    exe = shutil.which(cmd)
    if not exe:
        raise MissingToolError(f"{cmd} not found (apt-get install {cmd.split('-')[0]})")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    return (out.splitlines() or [""])[0]


def _run(cmd: list[str], what: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError(f"{what} failed:\n  {' '.join(cmd)}\n{r.stderr.strip()}")


def build(kind: str, sources: list[Path], out_name: str, cmd: list[str], compiler: str,
          extra_key: dict[str, str] | None = None) -> Path:
    """``cmd`` (with ``{out}`` and ``{src}`` placeholders) run once per key; the path of
    ``out_name`` in the entry.  ``sources[0]`` is ``{src}``."""
    key = InputKey(f"bench/{kind}")
    key.add_text("compiler", tool_version(compiler))
    key.add_text("cmd", " ".join(cmd))
    for s in sources:
        key.add_file(s, s.name)
    for k, v in sorted((extra_key or {}).items()):
        key.add_text(k, v)
    e = CacheEntry(key)
    target = e.path / out_name
    if e.done and target.exists():
        return target
    with e.fill() as tmp:
        argv = [a.replace("{out}", str(tmp / out_name)).replace("{src}", str(sources[0]))
                for a in cmd]
        _run(argv, f"building {out_name}")
    return target


def testrun_helper() -> Path:
    """The ``hashlab-testrun`` binary (bench/testrun.c)."""
    override = os.environ.get("HASHLAB_TESTRUN")
    if override:
        return Path(override)
    return build("testrun", [HERE / "testrun.c"], "hashlab-testrun",
                 [CC, "-O2", "-Wall", "-Werror", "-o", "{out}", "{src}"], CC)


def floor_binary() -> Path:
    """The C Toeplitz floor (bench/floor.c)."""
    return build("floor", [HERE / "floor.c"], "hashlab-floor",
                 [CC, "-O2", "-Wall", "-Werror", "-o", "{out}", "{src}"], CC)


# Stand-ins for the kernel-only headers drivers/net/tun_vnet_hash.h includes; bench/
# tun_hash.c defines what the function needs of them.
_TUN_HASH_STUBS = {
    "linux/skbuff.h": "", "linux/unaligned.h": "", "linux/if_vlan.h": "#define VLAN_HLEN 4\n",
    "net/ip.h": "#define IP_MF 0x2000\n#define IP_OFFSET 0x1FFF\n",
}


def tun_series_header(series_dir: Path) -> str:
    """drivers/net/tun_vnet_hash.h as the tunrss series adds it (a new file: its + lines)."""
    rel = "drivers/net/tun_vnet_hash.h"
    for p in sorted(series_dir.glob("*.patch")):
        text = p.read_text(errors="replace")
        if f"+++ b/{rel}" in text:
            body = text.split(f"+++ b/{rel}", 1)[1].split("\ndiff --git", 1)[0]
            body = body.split("\n-- \n", 1)[0]
            return "".join(ln[1:] + "\n" for ln in body.splitlines() if ln.startswith("+"))
    raise HashlabError(f"no patch in {series_dir} adds {rel}")


def tun_hash_binary(series_dir: Path) -> Path:
    """``hashlab-tunhash`` (bench/tun_hash.c): the tunrss series' hash function on the host."""
    header = tun_series_header(series_dir)
    key = InputKey("bench/tun-hash-src")
    key.add_text("header", header)
    src = CacheEntry(key)
    if not src.done:
        with src.fill() as tmp:
            (tmp / "tun_vnet_hash.h").write_text(header)
            for name, text in _TUN_HASH_STUBS.items():
                (tmp / "stubs" / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / "stubs" / name).write_text(text)
    return build("tun-hash", [HERE / "tun_hash.c"], "hashlab-tunhash",
                 [CC, "-O2", "-Wall", "-Werror", "-I", str(src.path / "stubs"), "-I",
                  str(src.path), "-o", "{out}", "{src}"], CC, {"header": header})


def tun_hash_cfg_bytes(series_dir: Path) -> int | None:
    """sizeof(struct tun_vnet_hash_cfg): what one device's configuration takes in tun
    (key, types, the per-byte Toeplitz tables, the indirection table)."""
    r = subprocess.run([str(tun_hash_binary(series_dir)), "--sizeof"], capture_output=True,
                       text=True)
    return int(r.stdout) if r.returncode == 0 and r.stdout.strip().isdigit() else None


def bpf_object(kind: str, source: Path, out_name: str, defines: dict[str, str] | None = None,
               includes: list[Path] | None = None) -> Path:
    """A BPF object compiled with clang-19 (``-O2 -g -target bpf``), BTF kept."""
    args = [CLANG, "-O2", "-g", "-Wall", "-target", "bpf"]
    for inc in includes or []:
        args += ["-I", str(inc)]
    args += ["-I", "/usr/include/x86_64-linux-gnu"]
    for k, v in sorted((defines or {}).items()):
        args.append(f"-D{k}={v}")
    args += ["-c", "{src}", "-o", "{out}"]
    extra = {}
    for inc in [*(includes or []), Path("/usr/include")]:
        # headers decide the object too: key on the files the source can include
        for h in ("linux/bpf.h", "bpf/bpf_helpers.h", "bpf/bpf_helper_defs.h"):
            p = Path(inc) / h
            if p.is_file() and f"inc:{h}" not in extra:
                extra[f"inc:{h}"] = p.read_text(errors="replace")
    return build(kind, [source], out_name, args, CLANG, extra)
