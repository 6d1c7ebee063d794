"""What a QEMU binary can do for virtio-net hashing, asked of the binary itself.

``--qemu PATH`` (``hashlab run``, ``compare``, ``bench datapath``) takes a user's own
QEMU, a binary or a build directory, as the patched QEMU.  Nothing is assumed from its
path or version: one QEMU process (``-machine none``, QMP on stdio) is asked for
virtio-net-pci's properties, its QMP commands and the eBPF RSS objects it would hand a
management application (``request-ebpf``), and the answer says which designs' hash
reports it can drive:

* ``progtype``: the ``rss-hash`` object (a BPF_PROG_TYPE_VNET_HASH program) and the
  ``vhost-hash-report`` property (qemu/patches 0002, 0003, 0007);
* ``kfunc``: the ``rss`` object calls ``bpf_skb_set_vnet_hash`` (0009);
* ``tunrss``: the ``hash-offload`` property (0011);

and whether it has the inner header hash (``hash-tunnel``, 0015) and
``x-query-virtio-net-hash`` (0013).  Upstream QEMU 10.0 has none of them: it offers eBPF
RSS (``ebpf-rss-fds``) and software hash reports only.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import MissingToolError, UsageError

BINARY = "qemu-system-x86_64"
# The virtio-net-pci properties that say something about hashing, upstream's and ours.
PROPS = ("rss", "hash", "ebpf-rss-fds", "vhost-hash-report", "hash-offload", "hash-tunnel")
KFUNC = b"bpf_skb_set_vnet_hash"


@dataclass
class QemuCaps:
    binary: str
    version: str
    props: list[str] = field(default_factory=list)  # of PROPS, those it has
    query: bool = False  # x-query-virtio-net-hash
    ebpf_objects: list[str] = field(default_factory=list)  # request-ebpf ids it answers
    kfunc_call: bool = False  # its rss object calls bpf_skb_set_vnet_hash
    error: str = ""

    @property
    def designs(self) -> list[str]:
        """The designs whose hash reports (through vhost_net) this QEMU can drive."""
        out = []
        vhost = "vhost-hash-report" in self.props
        if vhost and "rss-hash" in self.ebpf_objects:
            out.append("progtype")
        if vhost and self.kfunc_call:
            out.append("kfunc")
        if "hash-offload" in self.props:
            out.append("tunrss")
        return out

    def summary(self) -> str:
        """One line for the tables: version, path, what it can do."""
        if self.error:
            return f"{self.binary}: {self.error}"
        can = []
        if "ebpf-rss-fds" in self.props:
            can.append("eBPF RSS")
        if "hash" in self.props:
            can.append("hash reports")
        ds = self.designs
        can.append(f"through vhost_net on {', '.join(ds)}" if ds
                   else "none through vhost_net")
        if "hash-tunnel" in self.props:
            can.append("inner header hash")
        if self.query:
            can.append("x-query-virtio-net-hash")
        return f"QEMU {self.version} ({self.binary}): {'; '.join(can)}"

    def to_json(self) -> dict:
        return {**asdict(self), "designs": self.designs, "summary": self.summary()}


def resolve(path: str | Path) -> Path:
    """PATH as a qemu-system-x86_64: the binary itself, or a build directory holding
    one (QEMU's ``build/``, or a source tree with ``build/`` in it)."""
    p = Path(path).expanduser()
    if p.is_dir():
        for c in (p / BINARY, p / "build" / BINARY):
            if c.is_file():
                return c.resolve()
        raise UsageError(f"--qemu {path}: no {BINARY} in it (nor in {p / 'build'}): "
                         "configure and build QEMU there, or pass the binary")
    if not p.is_file():
        raise UsageError(f"--qemu {path}: no such file or directory")
    if not os.access(p, os.X_OK):
        raise UsageError(f"--qemu {path}: not executable")
    return p.resolve()


def _qmp(binary: str, commands: list[dict], timeout: float) -> list[dict]:
    """Run COMMANDS in one QEMU over QMP on stdio; their answers, in order."""
    lines = [{"execute": "qmp_capabilities"}, *commands, {"execute": "quit"}]
    text = "".join(json.dumps(c) + "\n" for c in lines)
    try:
        r = subprocess.run([binary, "-machine", "none", "-nodefaults", "-display", "none",
                            "-qmp", "stdio"], input=text, capture_output=True, text=True,
                           timeout=timeout)
    except FileNotFoundError:
        raise MissingToolError(f"{binary} not found") from None
    except subprocess.TimeoutExpired:
        raise MissingToolError(f"{binary} did not answer QMP within {timeout:.0f}s") from None
    answers, greeted = [], False
    for line in r.stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        greeted |= "QMP" in msg
        if "return" in msg or "error" in msg:
            answers.append(msg)
    why = r.stderr.strip()[-300:] or "no message"
    if not greeted:
        raise MissingToolError(f"{binary} does not speak QMP: not a qemu-system binary? "
                               f"(status {r.returncode}: {why})")
    if len(answers) < len(lines) - 1:  # quit may answer or not
        raise MissingToolError(f"{binary} ended its QMP session early (status "
                               f"{r.returncode}: {why})")
    return answers[1:len(lines) - 1]


@functools.lru_cache(maxsize=None)
def probe(binary: str | Path, timeout: float = 60.0) -> QemuCaps:
    """Ask BINARY (see the module's docstring); a QemuCaps with ``error`` set when it
    cannot be asked."""
    binary = str(binary)
    try:
        version, props, cmds, rss, rss_hash = _qmp(binary, [
            {"execute": "query-version"},
            {"execute": "device-list-properties", "arguments": {"typename": "virtio-net-pci"}},
            {"execute": "query-commands"},
            {"execute": "request-ebpf", "arguments": {"id": "rss"}},
            {"execute": "request-ebpf", "arguments": {"id": "rss-hash"}},
        ], timeout)
    except MissingToolError as e:
        return QemuCaps(binary, "?", error=str(e))
    v = version.get("return", {})
    pkg = (v.get("package") or "").strip()
    ver = f"{_ver(v)} ({pkg})" if pkg else _ver(v)
    have = {p["name"] for p in props.get("return", [])}
    names = {c["name"] for c in cmds.get("return", [])}
    objects = [i for i, a in (("rss", rss), ("rss-hash", rss_hash)) if "return" in a]
    kfunc = "return" in rss and KFUNC in base64.b64decode(rss["return"].get("object", ""))
    return QemuCaps(binary, ver, props=[p for p in PROPS if p in have],
                    query="x-query-virtio-net-hash" in names, ebpf_objects=objects,
                    kfunc_call=kfunc)


def _ver(v: dict) -> str:
    q = v.get("qemu", {})
    return f"{q.get('major', '?')}.{q.get('minor', '?')}.{q.get('micro', '?')}"


def use(path: str | Path, env_var: str) -> QemuCaps:
    """Make PATH the patched QEMU for this process and the lab VMs it boots (through
    ENV_VAR, which hashlab.host.datapath reads); its capabilities, probed."""
    binary = resolve(path)
    caps = probe(binary)
    if caps.error:
        raise MissingToolError(f"--qemu {path}: {caps.error}")
    os.environ[env_var] = str(binary)
    return caps
