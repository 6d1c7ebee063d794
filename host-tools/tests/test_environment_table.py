"""The README's table of environment variables names exactly the HASHLAB_* variables the
code reads (Python, the scripts, the guest's agent)."""

from __future__ import annotations

import re

from hashlab.paths import REPO

SOURCES = ["host-tools/hashlab/**/*.py", "host-tools/tests/*.py", "scripts/*", ".ci/run",
           "guest-tests/*"]
# A quoted name in Python ("HASHLAB_X"), an expansion in shell ($HASHLAB_X, ${HASHLAB_X}).
USE = re.compile(r'"(HASHLAB_[A-Z0-9_]+)"|\$\{?(HASHLAB_[A-Z0-9_]+)')


def used() -> set[str]:
    names: set[str] = set()
    for pattern in SOURCES:
        for path in REPO.glob(pattern):
            if path.is_file() and path.name != "test_environment_table.py":
                for m in USE.finditer(path.read_text(errors="replace")):
                    names.add(m[1] or m[2])
    return names


def documented() -> set[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    return {n for line in section.splitlines() if line.startswith("| `HASHLAB_")
            for n in re.findall(r"`(HASHLAB_[A-Z0-9_]+)`", line.split("|")[1])}


def test_every_variable_the_code_reads_is_in_the_readme():
    assert used() - documented() == set(), "add these to the README's table"


def test_the_readme_names_no_variable_the_code_does_not_read():
    assert documented() - used() == set(), "the code no longer reads these"
