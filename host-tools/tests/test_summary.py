"""scripts/test's summary (host-tools/tests/summary.py): the run-to-run comparison of
the test ids, which must hold ids with spaces (parametrized ids) whole."""

from __future__ import annotations

import summary


def test_same_tests_twice_with_spaces_in_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("HASHLAB_CACHE", str(tmp_path / "cache"))
    ids = ["t::test_a", "t::test_b[x y]", "t::test_c[a b c]"]
    assert summary.compare_ids("host", ids, tmp_path) == "no previous run to compare with"
    assert summary.compare_ids("host", ids, tmp_path) == "the same 3 tests as the previous run"
    assert summary.compare_ids("host", ids[:2] + ["t::new"], tmp_path) == (
        "3 tests; the previous run had 3 (+1 new, -1 gone)")
    assert (tmp_path / "tests-host.txt").read_text().splitlines() == sorted(ids[:2] + ["t::new"])


def _junit(path, *cases):
    path.write_text("<testsuites><testsuite>" + "".join(
        f'<testcase classname="tests.{m}" name="{n}" time="1"/>' for m, n in cases)
        + "</testsuite></testsuites>")


def test_shards_of_a_tier_add_up_and_a_missing_one_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HASHLAB_CACHE", str(tmp_path / "cache"))
    _junit(tmp_path / "junit-lab.shard-1-of-2.xml", ("test_a", "x"), ("test_a", "y"))
    _junit(tmp_path / "junit-lab.shard-2-of-2.xml", ("test_b", "z"))
    assert summary.main([str(tmp_path), "lab"]) == 0
    out = capsys.readouterr().out
    assert "lab tier (in 2 shards): 3 tests, 3 passed, 0 failed" in out
    (tmp_path / "junit-lab.shard-2-of-2.xml").unlink()  # that lab VM died
    assert summary.main([str(tmp_path), "lab"]) == 1
    assert "junit-lab.shard-2-of-2.xml missing" in capsys.readouterr().out
