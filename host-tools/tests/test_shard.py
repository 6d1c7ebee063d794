"""``--shard K/N`` (shard.py): the N shards of the lab tier run each of its tests once.

Collected for real (``pytest --collect-only``) over this suite's own lab tests, the tests
scripts/test -n N spreads over N lab VMs.
"""

import subprocess
import sys
from pathlib import Path

import pytest

import shard

TESTS = Path(__file__).parent


def collected(*args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-m", "lab", *args, str(TESTS)],
        capture_output=True, text=True, timeout=300, cwd=TESTS.parent.parent)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return [line for line in out.stdout.splitlines() if "::" in line]


@pytest.mark.parametrize("n", [2, 3])
def test_shards_partition_the_lab_tier(n):
    whole = collected()
    parts = [collected("--shard", f"{k}/{n}") for k in range(1, n + 1)]
    assert len(whole) > 20  # the lab tier, not an empty selection
    assert sorted(sum(parts, [])) == sorted(whole)  # each test once, none lost
    for p in parts:
        assert p, f"an empty shard of {n}"
    mods = [{t.split("::")[0] for t in p} for p in parts]
    for i in range(n):
        for j in range(i + 1, n):
            assert not mods[i] & mods[j], "a module split across shards"


def test_bad_shard_is_a_usage_error():
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                          "--shard", "3/2", str(TESTS / "test_shard.py")],
                         capture_output=True, text=True, timeout=120,
                         cwd=TESTS.parent.parent)
    assert out.returncode == 4, out.stdout + out.stderr  # pytest's usage error
    assert "1 <= K <= N" in out.stderr


def test_split_balances_by_time_then_count(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite>'
        '<testcase classname="tests.test_slow" name="a" time="100"/>'
        '<testcase classname="tests.test_mid.TestX" name="b" time="60"/>'
        '<testcase classname="tests.test_fast" name="c" time="1"/>'
        '</testsuite></testsuites>')
    times = shard.module_times([str(junit), str(tmp_path / "missing.xml")])
    assert times == {"test_slow.py": 100.0, "test_mid.py": 60.0, "test_fast.py": 1.0}
    mods = {"test_slow.py": 1, "test_mid.py": 5, "test_fast.py": 9, "test_new.py": 30}
    # heaviest first to the least loaded: 100 | 60, then test_new (no time: its 30
    # tests) and test_fast (1 s) join the 60
    assert shard.split(mods, 2, times) == [["test_slow.py"],
                                           ["test_mid.py", "test_new.py", "test_fast.py"]]


def test_scripts_test_gives_each_shard_the_whole_lab_command(tmp_path):
    """scripts/test -n 2's own lab_tier and lab_shards, run by bash with `hashlab` a script
    that prints its argv: each shard's argv parses with hashlab's real CLI as
    `hashlab lab ... -- env ... pytest ... --shard K/2 ...`.  (The lab command's own `--`
    once cut it short, and `-n 2` never reached pytest.)"""
    from hashlab.cli import build_parser

    script = (TESTS.parent.parent / "scripts" / "test").read_text()
    funcs = "\n".join(script[script.index(f"\n{f}() {{") :].split("\n}\n", 1)[0] + "\n}"
                      for f in ("lab_tier", "lab_shards"))
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    fake = tmp_path / ".venv" / "bin" / "hashlab"
    fake.write_text("#!/bin/sh\nprintf '%s\\n' \"$@\" > \"argv.$$\"\n")
    fake.chmod(0o755)
    (tmp_path / "results").mkdir()
    bash = (f"{funcs}\nworkers=2; rc=0; ran=(); top={tmp_path}; times_dir={tmp_path}/times\n"
            "retry_log() { :; }\nlab_tier lab-x tunrss lab_tunrss -k 'some or not some'\necho rc=$rc\n")
    r = subprocess.run(["bash", "-c", bash], cwd=tmp_path, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "rc=0" in r.stdout, r.stdout + r.stderr
    argvs = sorted(p.read_text().splitlines() for p in tmp_path.glob("argv.*"))
    assert len(argvs) == 2, r.stdout + r.stderr
    parts = []
    for argv in argvs:
        ns = build_parser().parse_args(argv)
        assert ns.design == "tunrss" and ns.fail_on_warning
        cmd = ns.cmd[1:] if ns.cmd[:1] == ["--"] else ns.cmd
        assert cmd[:2] == ["env", "HASHLAB_IN_LAB=1"] and cmd[2].endswith("pytest")
        spec = next(a.split("=", 1)[1] for a in cmd if a.startswith("--shard="))
        assert f"--junitxml=results/junit-lab-x.shard-{spec[0]}-of-2.xml" in cmd
        # pytest itself, from the checkout as the lab VM runs it (no test path given)
        args = [a for a in cmd[3:] if not a.startswith("--junitxml")]
        out = subprocess.run([sys.executable, "-m", "pytest", *args, "--collect-only", "-q"],
                             capture_output=True, text=True, timeout=300,
                             cwd=TESTS.parent.parent)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        parts.append({ln for ln in out.stdout.splitlines() if "::" in ln})
    assert parts[0] and parts[1] and not parts[0] & parts[1]
    assert parts[0] | parts[1] == set(collected_tier("lab_tunrss", "-k", "some or not some"))


def collected_tier(mark: str, *args: str) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p",
                          "no:cacheprovider", "-m", mark, *args],
                         capture_output=True, text=True, timeout=300, cwd=TESTS.parent.parent)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return [line for line in out.stdout.splitlines() if "::" in line]
