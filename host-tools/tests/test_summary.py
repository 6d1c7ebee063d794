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
