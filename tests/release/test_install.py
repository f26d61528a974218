"""The built tarball installed as a user installs it: a plain `ansible-galaxy collection install`
into a fresh collections directory, with ansible-core from a venv that holds no collection (the
one of tests/release/install-requirements.txt), nothing of the checkout on any path. Then the
smoke playbook (tests/smoke/playbook.yml, or HOSTCPU_SMOKE_PLAYBOOK) runs on this machine's
libvirtd with that venv's Python on the managed side."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from .helpers import ROOT, copy_dependencies, galaxy, install, isolated_env, run, venv_bin

RECAP = re.compile(r"^localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)


@pytest.fixture(scope="module")
def user_bin() -> Path:
    """The install venv: ansible-core, libvirt-python and lxml, and no collection of any kind."""
    path = venv_bin("HOSTCPU_RELEASE_INSTALL")
    bundled = list(path.parent.glob("lib/python*/site-packages/ansible_collections"))
    assert not bundled, f"{bundled}: the install venv must hold no collection"
    return path


@pytest.fixture(scope="module")
def user_collections(user_bin: Path, tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh collections directory with the dependencies already present (as for a user who has
    community.libvirt), then a plain install of the tarball, which checks them."""
    collections = tmp_path_factory.mktemp("user_collections")
    copy_dependencies(collections)
    install(user_bin, [tarball], collections)
    return collections


def user_env(user_bin: Path, collections: Path) -> dict[str, str]:
    return isolated_env(user_bin, {"ANSIBLE_COLLECTIONS_PATH": str(collections)})


def test_installed_collection_is_the_tarball(user_bin: Path, user_collections: Path) -> None:
    listing = run([user_bin / "ansible-galaxy", "collection", "list", "hostcpu.libvirt"],
                  user_env(user_bin, user_collections)).stdout
    assert re.search(rf"^hostcpu\.libvirt\s+{re.escape(galaxy()['version'])}\s*$", listing, re.MULTILINE), listing
    assert str(user_collections) in listing and str(ROOT) not in listing
    installed = user_collections / "ansible_collections/hostcpu/libvirt"
    assert installed.is_dir() and not installed.is_symlink()


def test_every_plugin_doc_renders(user_bin: Path, user_collections: Path) -> None:
    env = user_env(user_bin, user_collections)
    for plugin_type in ("module", "filter", "test", "role"):
        names = run([user_bin / "ansible-doc", "--type", plugin_type, "--list", "--json", "hostcpu.libvirt"], env).stdout
        assert "hostcpu.libvirt." in names, f"no {plugin_type} listed"
        for name in sorted(set(re.findall(r'"(hostcpu\.libvirt\.[a-z_]+)"', names))):
            text = run([user_bin / "ansible-doc", "--type", plugin_type, name], env).stdout
            assert str(ROOT) not in text and name.split(".")[-1] in text


def smoke_playbook() -> Path:
    playbook = Path(os.environ.get("HOSTCPU_SMOKE_PLAYBOOK") or ROOT / "tests/smoke/playbook.yml")
    if not playbook.is_file():
        pytest.fail(f"no smoke playbook {playbook}: it comes with branch matrix (tests/smoke/playbook.yml); "
                    "HOSTCPU_SMOKE_PLAYBOOK=path names another")
    return playbook


def test_smoke_playbook_on_the_installed_collection(user_bin: Path, user_collections: Path, tmp_path: Path) -> None:
    result = run([user_bin / "ansible-playbook", "-i", "localhost,", "-c", "local", smoke_playbook(),
                  "-e", f"hostcpu_smoke_python={user_bin / 'python'}", "-e", "hostcpu_smoke_uri=qemu:///system"],
                 user_env(user_bin, user_collections), cwd=tmp_path, timeout=2400)
    recap = RECAP.search(result.stdout)
    assert recap, result.stdout[-3000:]
    ok, changed, unreachable, failed = (int(value) for value in recap.groups())
    assert (unreachable, failed) == (0, 0)
    assert ok >= 10 and changed >= 1, f"ok={ok} changed={changed}: the smoke playbook did not run its steps"
    assert str(ROOT / ".collections") not in result.stdout
