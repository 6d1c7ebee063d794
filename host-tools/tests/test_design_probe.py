"""The running kernel's design, probed (``datapath.running_design`` without being told):
the RFC's program type loads on progtype only, the kfunc is in kfunc's BTF only, tun
answers TUNGETVNETHASHCAP on tunrss only.  In each lab VM the probe must name the design
the VM was booted as; in a lab VM of a developer's tree (scripts/test tree), the design
read from that tree's build (its tree.json)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hashlab.host import datapath


def booted_as() -> str:
    told = os.environ.get(datapath.LAB_DESIGN_ENV)
    if told:
        return told
    tree = Path(os.environ["HASHLAB_LAB_KERNEL"]).with_name("tree.json")
    assert tree.is_file(), f"a lab VM booted without a design nor a tree entry: {tree}"
    return json.loads(tree.read_text())["design"]


@pytest.mark.lab
@pytest.mark.lab_kfunc
@pytest.mark.lab_tunrss
def test_the_probe_names_the_design_booted(monkeypatch):
    expected = booted_as()
    monkeypatch.delenv(datapath.LAB_DESIGN_ENV, raising=False)  # ask the kernel, not us
    assert datapath.running_design() == expected
    assert datapath.kernel_has_series()
