"""Shared pytest wiring: tiers by marker.

``lab`` tests need the lab kernel and run only inside the lab VM (scripts/test sets
HASHLAB_IN_LAB=1 there); ``lab_kfunc`` (``lab_tunrss``) ones inside the lab VM booted with the kfunc (tunrss)
design's kernel (a test may carry both); everywhere else they are skipped with the reason.
"""

import os
from pathlib import Path

import pytest

import shard

IN_LAB = os.environ.get("HASHLAB_IN_LAB") == "1"


def pytest_addoption(parser):
    shard.addoption(parser)


def pytest_configure(config):
    config.pluginmanager.register(shard.Plugin(), "hashlab-shard")


@pytest.hookimpl(tryfirst=True)  # before -m selects by marker
def pytest_collection_modifyitems(config, items):
    skip_lab = pytest.mark.skip(reason="needs the lab VM (scripts/test lab)")
    for item in items:
        # The built eBPF object is the project's own build: tests that load it run after
        # the build (scripts/test's build tier), never skip for its absence.
        in_vm = any(m in item.keywords for m in ("lab", "lab_kfunc", "lab_tunrss"))
        if "rss_object" in getattr(item, "fixturenames", ()) and not in_vm:
            item.add_marker(pytest.mark.built)
        if in_vm and not IN_LAB:
            item.add_marker(skip_lab)


# ---- nothing left behind -------------------------------------------------------------
# Every tap hashlab creates is named hl*, every temp dir hashlab-*; QEMU and vng run as
# our children.  A leak after the whole session fails it, naming what was left.

def _net_devs() -> set[str]:
    try:
        return {d for d in os.listdir("/sys/class/net") if d.startswith("hl")}
    except FileNotFoundError:
        return set()


def _tmp_dirs() -> set[str]:
    import tempfile

    base = tempfile.gettempdir()
    return {d for d in os.listdir(base) if d.startswith("hashlab-")}


def _our_qemus() -> set[int]:
    """QEMU processes descended from this pytest process."""
    me, out = os.getpid(), set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"qemu-system" not in f.read().split(b"\0")[0]:
                    continue
            p = int(pid)
            while p > 1:
                with open(f"/proc/{p}/stat") as f:
                    p = int(f.read().rsplit(")", 1)[1].split()[1])
                if p == me:
                    out.add(int(pid))
                    break
        except (OSError, ValueError):
            continue
    return out


def pytest_sessionstart(session):
    # A SIGTERM (CI's timeout, `kill`) unwinds like Ctrl-C: fixtures stop their VMs.
    from hashlab.errors import raise_on_termination

    raise_on_termination()
    session.config._hashlab_before = (_net_devs(), _tmp_dirs())


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_hashlab_before", None)
    if before is None:
        return
    leaks = []
    if devs := _net_devs() - before[0]:
        leaks.append(f"tap devices {sorted(devs)}")
    if dirs := _tmp_dirs() - before[1]:
        leaks.append(f"temp dirs {sorted(dirs)}")
    if pids := _our_qemus():
        leaks.append(f"QEMU processes {sorted(pids)}")
    if leaks:
        print("\nhashlab: left behind after the tests: " + "; ".join(leaks))
        session.exitstatus = 1


# ---- retries made visible ------------------------------------------------------------
# hashlab.retries appends every VM retry to $HASHLAB_RETRY_LOG with the test it happened
# in; each test's count becomes a JUnit property, which scripts/test sums per tier and
# holds against its allowance.

@pytest.fixture(autouse=True)
def _count_retries(request):
    from hashlab import retries

    yield
    path = os.environ.get(retries.ENV)
    if not path:
        return
    mine = [r for r in retries.read(Path(path)) if r.get("test") == request.node.nodeid]
    request.node.user_properties.append(("hashlab_retries", len(mine)))
    for r in mine:
        request.node.user_properties.append(("hashlab_retry", f"{r['what']}: {r['detail']}"))


# ---- the built eBPF RSS object (differential and fuzz tests) ----------------------------

def _object_path() -> Path:
    env = os.environ.get("HASHLAB_RSS_BPF_O")
    if env:
        return Path(env)
    from hashlab.build.qemu import find_qemu_entry

    entry = find_qemu_entry()
    if entry is None:
        pytest.fail("the patched QEMU is not built (run `hashlab build qemu`) and "
                    "HASHLAB_RSS_BPF_O is unset")
    return entry / "bpf" / "rss.bpf.o"


@pytest.fixture(scope="module")
def rss_object() -> Path:
    if os.geteuid() != 0:
        pytest.skip("loading BPF programs needs root (not running as root)")
    path = _object_path()
    if not path.is_file():
        pytest.fail(f"{path} does not exist: the QEMU build is incomplete")
    return path
