"""The test run's summary, tier by tier, from the JUnit files scripts/test wrote.

    python host-tools/tests/summary.py RESULTS_DIR TIER...

Prints per tier: tests, passed, failed, skipped (grouped by reason), and VM retries (from
the ``hashlab_retries`` JUnit properties, see conftest); then one closing line over all
tiers.  Exits 1 when a tier that must not skip skipped, when a test needed more retries
than allowed, or when a tier that was run wrote no JUnit file.  The ids of the tests that
ran are written to RESULTS_DIR/tests-TIER.txt and compared with the previous run's (kept
in the build cache), so a cold run and a warm one can be seen to run the same tests.
"""

from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

# Skips allowed per tier: the host tier may skip for reasons outside the project (no
# root, no /dev/net/tun); the build and lab tiers run where everything is built.
ALLOWED_SKIPS = {"host": None, "built": 0, "lab": 0, "lab-kfunc": 0, "lab-tunrss": 0,
                 "tree": 0}
MAX_RETRIES_PER_TEST = 2


def read_tier(path: Path) -> list[dict]:
    cases = []
    for tc in ET.parse(path).getroot().iter("testcase"):
        props = {p.get("name"): p.get("value") for p in tc.iter("property")}
        retry_notes = [p.get("value") for p in tc.iter("property")
                       if p.get("name") == "hashlab_retry"]
        outcome = "passed"
        reason = ""
        for tag in ("failure", "error", "skipped"):
            el = tc.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "failed"}.get(tag, tag)
                reason = (el.get("message") or "").strip()
                break
        cases.append({"id": f"{tc.get('classname')}::{tc.get('name')}", "outcome": outcome,
                      "reason": reason, "retries": int(props.get("hashlab_retries") or 0),
                      "retry_notes": retry_notes})
    return cases


def tier_files(results: Path, tier: str) -> tuple[list[Path], list[Path]]:
    """TIER's JUnit files (one, or one per shard: junit-TIER.shard-K-of-N.xml, from
    scripts/test -n N) and those that should be there but are not."""
    one = results / f"junit-{tier}.xml"
    shards = sorted(results.glob(f"junit-{tier}.shard-*-of-*.xml"))
    if one.is_file() or not shards:
        return ([one], []) if one.is_file() else ([], [one])
    n = int(shards[0].name.rsplit("-of-", 1)[1].split(".")[0])
    want = [results / f"junit-{tier}.shard-{k}-of-{n}.xml" for k in range(1, n + 1)]
    return [p for p in want if p.is_file()], [p for p in want if not p.is_file()]


def compare_ids(tier: str, ids: list[str], results: Path) -> str:
    (results / f"tests-{tier}.txt").write_text("".join(f"{i}\n" for i in sorted(ids)))
    cache = Path(os.environ.get("HASHLAB_CACHE", "/var/cache/hashlab")) / "test-ids"
    prev_path = cache / f"{tier}.txt"
    try:
        prev = set(prev_path.read_text().splitlines())  # ids may hold spaces
    except OSError:
        prev = None
    try:
        cache.mkdir(parents=True, exist_ok=True)
        prev_path.write_text("".join(f"{i}\n" for i in sorted(ids)))
    except OSError:
        pass
    if prev is None:
        return "no previous run to compare with"
    now = set(ids)
    if now == prev:
        return f"the same {len(now)} tests as the previous run"
    return (f"{len(now)} tests; the previous run had {len(prev)} "
            f"(+{len(now - prev)} new, -{len(prev - now)} gone)")


def main(argv: list[str]) -> int:
    results = Path(argv[0])
    tiers = argv[1:]
    bad: list[str] = []
    total = Counter()
    for tier in tiers:
        paths, missing = tier_files(results, tier)
        if missing:
            print(f"{tier} tier: no results ({', '.join(map(str, missing))} missing): "
                  "it did not run to the end")
            bad.append(f"{tier}: no results")
            continue
        cases = [c for p in paths for c in read_tier(p)]
        n = Counter(c["outcome"] for c in cases)
        retried = [c for c in cases if c["retries"]]
        n_retries = sum(c["retries"] for c in cases)
        total.update(n)
        total["retries"] += n_retries
        spread = f" (in {len(paths)} shards)" if len(paths) > 1 else ""
        print(f"{tier} tier{spread}: {len(cases)} tests, {n['passed']} passed, {n['failed']} failed, "
              f"{n['skipped']} skipped, {n_retries} VM retries in {len(retried)} tests; "
              + compare_ids(tier, [c["id"] for c in cases if c["outcome"] != "skipped"],
                            results))
        for reason, k in Counter(c["reason"] for c in cases
                                 if c["outcome"] == "skipped").most_common():
            print(f"  skipped {k}: {reason}")
        for c in retried:
            print(f"  retried {c['retries']}x: {c['id']}")
            for note in c["retry_notes"][:3]:
                print(f"    {note[:200]}")
        allowed = ALLOWED_SKIPS.get(tier)
        if allowed is not None and n["skipped"] > allowed:
            bad.append(f"{tier}: {n['skipped']} skipped (allowed: {allowed})")
        over = [c["id"] for c in cases if c["retries"] > MAX_RETRIES_PER_TEST]
        if over:
            bad.append(f"{tier}: more than {MAX_RETRIES_PER_TEST} VM retries in "
                       + ", ".join(over))
    for b in bad:
        print(f"hashlab: FAILED: {b}")
    print(f"hashlab: {total['passed']} passed, {total['failed']} failed, "
          f"{total['skipped']} skipped")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
