"""Shared pytest wiring: tiers by marker.

``lab`` tests need the lab kernel and run only inside the lab VM (scripts/test sets
HASHLAB_IN_LAB=1 there); everywhere else they are skipped with the reason.
"""

import os

import pytest

IN_LAB = os.environ.get("HASHLAB_IN_LAB") == "1"


def pytest_collection_modifyitems(config, items):
    skip_lab = pytest.mark.skip(reason="needs the lab VM (scripts/test lab)")
    for item in items:
        if "lab" in item.keywords and not IN_LAB:
            item.add_marker(skip_lab)
