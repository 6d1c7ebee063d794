"""The kernel series' own kselftests, run in the lab VM; one JUnit case per KTAP test.

The kernel build compiles them into the cache entry (``selftests/``).  The test names
are read from the series itself, so a test the binary does not report fails as much as
one that reports "not ok"; in the lab nothing may skip.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from hashlab import designs
from hashlab.build.kernel import SELFTESTS

pytestmark = pytest.mark.lab

KTAP_RESULT = re.compile(r"^(ok|not ok) (\d+) (\S+)(?: # (SKIP|XFAIL)\b(.*))?$")


def series_tests(name: str, design: str | None = None) -> list[str]:
    """KTAP names of the kselftest NAME's tests, from the patches of DESIGN's series (default:
    the lab VM's) that write it: TEST(t) is ``global.t``, TEST_F(f, t) is ``f.t``, or
    ``f.v.t`` for each FIXTURE_VARIANT_ADD(f, v)."""
    rel = SELFTESTS[name]
    added: list[str] = []
    for p in sorted(designs.get(design).series_dir.glob("*.patch")):
        text = p.read_text(errors="replace")
        if f"+++ b/{rel}" in text:
            added += [ln for ln in text.split(f"+++ b/{rel}", 1)[1].split("\ndiff --git", 1)[0]
                      .splitlines() if ln.startswith("+")]
    body = "\n".join(added)
    variants: dict[str, list[str]] = {}
    for f, v in re.findall(r"^\+FIXTURE_VARIANT_ADD\((\w+), (\w+)\)", body, re.M):
        variants.setdefault(f, []).append(v)
    names = []
    for f, t in re.findall(r"^\+TEST(?:_F)?\((?:(\w+), )?(\w+)\)", body, re.M):
        if f and f in variants:
            names += [f"{f}.{v}.{t}" for v in variants[f]]
        else:
            names.append(f"{f or 'global'}.{t}")
    return names


def ktap(out: str) -> dict[str, tuple[str, str]]:
    """name -> (result, directive) from KTAP output ("ok"/"not ok", "SKIP ..." or "")."""
    res = {}
    for line in out.splitlines():
        m = KTAP_RESULT.match(line.strip())
        if m:
            res[m.group(3)] = (m.group(1), f"{m.group(4) or ''}{m.group(5) or ''}".strip())
    return res


@pytest.fixture(scope="module")
def tun_vnet_hash():
    kernel = os.environ.get("HASHLAB_LAB_KERNEL")
    assert kernel, "HASHLAB_LAB_KERNEL is unset: not run by hashlab lab"
    exe = Path(kernel).parent / "selftests" / "tun_vnet_hash"
    assert exe.is_file(), f"{exe} missing: the kernel build did not build the series' kselftest"
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    return r, ktap(r.stdout)


def test_series_has_kselftests():
    assert len(series_tests("tun_vnet_hash")) >= 5


def check_ktap(r: subprocess.CompletedProcess, expected: list[str]) -> None:
    """Every expected test reported ok, none skipped, nothing else reported."""
    results = ktap(r.stdout)
    bad = [f"{n}: {results[n][0]} {results[n][1]}".strip() if n in results else f"{n}: no result"
           for n in expected if n not in results or results[n][0] != "ok"
           or results[n][1].startswith("SKIP")]
    assert not bad, "\n".join(bad) + "\n" + r.stdout[-3000:]
    assert set(results) == set(expected), r.stdout[-2000:]


@pytest.mark.parametrize("name", series_tests("tun_vnet_hash"))
def test_tun_vnet_hash(tun_vnet_hash, name):
    r, results = tun_vnet_hash
    assert name in results, f"{name}: no KTAP result\n{r.stdout[-3000:]}"
    result, directive = results[name]
    detail = "\n".join(line for line in r.stdout.splitlines() if name.split(".")[-1] in line)
    assert result == "ok" and not directive.startswith("SKIP"), \
        f"{name}: {result} {directive}\n{detail}"


def test_tun_vnet_hash_reports_only_known_tests(tun_vnet_hash):
    r, results = tun_vnet_hash
    assert set(results) == set(series_tests("tun_vnet_hash")), r.stdout[-2000:]
    assert r.returncode == 0, r.stdout[-3000:]
