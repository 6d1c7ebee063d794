"""Content-keyed build cache.

An entry is a directory ``<cache>/<kind>/<key>`` where the key is a hash of every input
that decides the output (source version, patch files, config, tool versions).  An entry
is complete only once its ``.done`` stamp exists, so an interrupted build is never
mistaken for a finished one; it is rebuilt into a fresh temp directory and renamed into
place atomically.

Builders may run at once on one entry (scripts/test -n N: lab VMs sharing the cache over
9p, where flock() is local to each VM and locks nothing): each fills its own temp
directory and the first to finish wins; the others drop theirs.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from .paths import cache_root


class InputKey:
    """Accumulates named inputs and digests them; ``describe()`` says what went in."""

    def __init__(self, kind: str):
        self.kind = kind
        self._h = hashlib.sha256()
        self._parts: list[tuple[str, str]] = []

    def add_text(self, name: str, text: str) -> "InputKey":
        digest = hashlib.sha256(text.encode()).hexdigest()
        self._h.update(f"{name}\0{digest}\0".encode())
        self._parts.append((name, digest[:16]))
        return self

    def add_file(self, path: Path, name: str | None = None) -> "InputKey":
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        name = name or Path(path).name
        self._h.update(f"{name}\0{digest}\0".encode())
        self._parts.append((name, digest[:16]))
        return self

    def add_files(self, paths: Iterable[Path], prefix: str = "") -> "InputKey":
        for p in sorted(paths):
            self.add_file(p, prefix + Path(p).name)
        return self

    @property
    def key(self) -> str:
        return self._h.hexdigest()[:20]

    def describe(self) -> list[tuple[str, str]]:
        return list(self._parts)


HISTORY = "history.jsonl"


def record_build(meta: dict, root: Path | None = None) -> None:
    """Append a finished build's stamp to ``<cache>/history.jsonl``: the entries keep only
    their last build, ``hashlab bench turnaround`` wants the cold ones too."""
    try:
        with open((root or cache_root()) / HISTORY, "a") as f:
            f.write(json.dumps(meta) + "\n")
    except OSError:
        pass  # the history is informative only


def build_history(root: Path | None = None) -> list[dict]:
    try:
        lines = ((root or cache_root()) / HISTORY).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


class CacheEntry:
    def __init__(self, ikey: InputKey, root: Path | None = None):
        self.ikey = ikey
        self.root = root or cache_root()
        self.path = self.root / ikey.kind / ikey.key
        self.extra: dict = {}  # builders add to the stamp (e.g. ccache hits and misses)

    @property
    def done(self) -> bool:
        return (self.path / ".done").exists()

    def meta(self) -> dict:
        return json.loads((self.path / ".done").read_text())

    @contextmanager
    def fill(self) -> Iterator[Path]:
        """Yield a temp dir to build into; on success it becomes the entry (unless another
        builder finished it first: then the temp dir goes and its entry stays)."""
        self._drop_stale()
        tmp = self.path.with_name(f"{self.path.name}.tmp.{os.getpid()}.{secrets.token_hex(4)}")
        tmp.mkdir(parents=True)
        t0 = time.monotonic()
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        meta = {
            "kind": self.ikey.kind,
            "key": self.ikey.key,
            "inputs": self.ikey.describe(),
            "build_seconds": round(time.monotonic() - t0, 1),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **self.extra,
        }
        (tmp / ".done").write_text(json.dumps(meta, indent=1) + "\n")
        if self.done:  # another builder was quicker: same inputs, same entry
            shutil.rmtree(tmp, ignore_errors=True)
            return
        record_build(meta, self.root)
        if self.path.exists() and not self.done:  # left by an older hashlab
            shutil.rmtree(self.path, ignore_errors=True)
        try:
            tmp.rename(self.path)
        except OSError:  # renamed onto a directory another builder just put there
            shutil.rmtree(tmp, ignore_errors=True)
            if not self.done:
                raise

    def _drop_stale(self, age: float = 6 * 3600) -> None:
        """Temp dirs of builds killed hard (SIGKILL, power off): none lives for hours."""
        for d in self.path.parent.glob(f"{self.path.name}.tmp*"):
            try:
                if time.time() - d.stat().st_mtime > age:
                    shutil.rmtree(d, ignore_errors=True)
            except OSError:
                pass
