"""``hashlab build kernel --tree PATH`` and ``hashlab lab --kernel-tree PATH``
(hashlab.build.kernel_tree): what keys a developer's tree, what is refused, and how a
built kernel's design is read.  The build and boot themselves: scripts/test tree."""

from __future__ import annotations

import subprocess

import pytest

from hashlab.build import kernel_tree as T
from hashlab.errors import UsageError


def git(tree, *args):
    subprocess.run(["git", "-C", str(tree), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@localhost",
                        "HOME": str(tree), "PATH": "/usr/bin:/bin"})


@pytest.fixture
def tree(tmp_path):
    t = tmp_path / "linux"
    (t / "arch" / "x86").mkdir(parents=True)
    (t / "Kbuild").write_text("obj-y += kernel/\n")
    (t / "kernel").mkdir()
    (t / "kernel" / "fork.c").write_text("int x;\n")
    git(t, "init", "-q")
    git(t, "add", "-A")
    git(t, "commit", "-q", "-m", "base")
    return t


def test_the_key_follows_the_tree_state(tree):
    top, d0, h0 = T.tree_state(tree / "kernel")  # any directory in it
    assert top == tree and not d0.endswith("-dirty")
    (tree / "kernel" / "fork.c").write_text("int y;\n")
    _, d1, h1 = T.tree_state(tree)
    assert d1 == d0 + "-dirty" and h1 != h0
    (tree / "kernel" / "new.c").write_text("int z;\n")  # untracked: part of the state
    _, _, h2 = T.tree_state(tree)
    assert h2 != h1
    (tree / "kernel" / "new.c").write_text("int w;\n")
    assert T.tree_state(tree)[2] != h2
    (tree / "kernel" / "new.c").unlink()
    (tree / "kernel" / "fork.c").write_text("int x;\n")
    assert T.tree_state(tree) == (top, d0, h0)  # back as it was: the same entry


def test_what_is_refused(tree, tmp_path):
    with pytest.raises(UsageError, match="not a git tree"):
        T.tree_state(tmp_path)
    (tmp_path / "repo").mkdir()
    git(tmp_path / "repo", "init", "-q")
    with pytest.raises(UsageError, match="is not a Linux source tree"):
        T.tree_state(tmp_path / "repo")
    (tree / ".config").write_text("CONFIG_X=y\n")  # an in-tree build: kbuild refuses O=
    with pytest.raises(UsageError, match="in-tree build"):
        T.ensure(tree)
    with pytest.raises(UsageError, match="--kernel-tree .*: neither .* nor a cached build"):
        T.bootable(tree)


@pytest.mark.parametrize("bpf_h, system_map, if_tun_h, design", [
    ("BPF_PROG_TYPE_VNET_HASH,", "", "", "progtype"),
    ("", "ffffffff81000000 T bpf_skb_set_vnet_hash\n", "", "kfunc"),
    ("", "", "#define TUNSETVNETHASH _IOW('T', 229, struct tun_vnet_hash)", "tunrss"),
    ("", "ffffffff81000000 T bpf_skb_set_vnet_hash_x\n", "", "stock"),
])
def test_the_design_is_read_from_the_build(tmp_path, bpf_h, system_map, if_tun_h, design):
    (tmp_path / "linux").mkdir()
    (tmp_path / "linux" / "bpf.h").write_text(f"enum bpf_prog_type {{ {bpf_h} }};\n")
    (tmp_path / "linux" / "if_tun.h").write_text(if_tun_h + "\n")
    (tmp_path / "System.map").write_text(system_map)
    assert T.design_of(tmp_path, tmp_path / "System.map") == design
