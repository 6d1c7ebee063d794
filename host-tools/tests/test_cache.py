"""The build cache (hashlab.cache) with builders at once on one entry, as the lab VMs of
scripts/test -n N are (sharing the cache over 9p, where flock() locks nothing)."""

from hashlab.cache import CacheEntry, InputKey


def _entry(root):
    return CacheEntry(InputKey("thing").add_text("src", "v1"), root=root)


def test_first_builder_to_finish_wins_and_nothing_is_left(tmp_path):
    a, b = _entry(tmp_path), _entry(tmp_path)
    with a.fill() as ta:
        (ta / "out").write_text("a")
        with b.fill() as tb:
            assert tb != ta  # each builds in its own directory
            (tb / "out").write_text("b")
        assert b.done and (b.path / "out").read_text() == "b"
    # a finished second: b's entry stays whole, a's build is dropped
    assert (a.path / "out").read_text() == "b"
    assert sorted(p.name for p in a.path.parent.iterdir()) == [a.path.name]


def test_a_failed_build_leaves_no_entry_and_no_temp_dir(tmp_path):
    e = _entry(tmp_path)
    try:
        with e.fill() as t:
            (t / "half").write_text("x")
            raise RuntimeError("compiler died")
    except RuntimeError:
        pass
    assert not e.done
    assert list(e.path.parent.iterdir()) == []
