"""Helpers of the release checks: commands run with an environment that does not see the
checkout, building, listing and installing the collection tarball."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# Settings through which Ansible would find the checkout: never passed to the checked commands.
CHECKOUT_SETTINGS = ("PYTHONPATH", "ANSIBLE_COLLECTIONS_PATH", "ANSIBLE_COLLECTIONS_PATHS", "ANSIBLE_CONFIG")


def venv_bin(variable: str) -> Path:
    """The bin directory of a venv the Makefile made and named in an environment variable."""
    value = os.environ.get(variable)
    if not value:
        pytest.fail(f"{variable} is not set: run the release checks through make (make galaxy, release-check or ee)")
    path = Path(value) / "bin"
    if not (path / "python").exists():
        pytest.fail(f"{variable}={value} is not a venv: run make release-venv")
    return path


def isolated_env(path_first: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without the settings that lead to the checkout, path_first first in PATH."""
    env = {key: value for key, value in os.environ.items() if key not in CHECKOUT_SETTINGS}
    env["PATH"] = f"{path_first}{os.pathsep}{env.get('PATH', '')}"
    env["ANSIBLE_CONFIG"] = str(ROOT / "tests/release/ansible.cfg")
    env.update(extra or {})
    return env


def run(command: Sequence[str | Path], env: Mapping[str, str], cwd: Path | None = None,
        timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    """Run a command; fail the test with its output when it fails."""
    args = [str(part) for part in command]
    result = subprocess.run(args, env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
    return result


def galaxy() -> dict:
    """galaxy.yml."""
    return yaml.safe_load((ROOT / "galaxy.yml").read_text(encoding="utf-8"))


def build(tools_bin: Path, source: Path, output: Path) -> Path:
    """ansible-galaxy collection build of source into output; the tarball's path."""
    output.mkdir(parents=True, exist_ok=True)
    run([tools_bin / "ansible-galaxy", "collection", "build", "--output-path", output, source], isolated_env(tools_bin))
    meta = yaml.safe_load((source / "galaxy.yml").read_text(encoding="utf-8"))
    tarball = output / f"{meta['namespace']}-{meta['name']}-{meta['version']}.tar.gz"
    assert tarball.is_file(), f"ansible-galaxy collection build did not write {tarball}"
    return tarball


def tarball_files(tarball: Path) -> set[str]:
    """The regular files in a collection tarball."""
    with tarfile.open(tarball) as archive:
        return {member.name for member in archive.getmembers() if member.isfile()}


def source_files(tree: Path) -> set[str]:
    """Files git tracks or would track in tree (tracked plus untracked that no .gitignore covers)."""
    listing = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=tree, capture_output=True,
                             text=True, check=True)
    return {name for name in listing.stdout.split("\0") if name and (tree / name).is_file()}


def install(ansible_bin: Path, artifacts: Sequence[Path], collections: Path, *options: str) -> None:
    """A plain ansible-galaxy collection install of artifacts into collections."""
    run([ansible_bin / "ansible-galaxy", "collection", "install", "--collections-path", collections, *options,
         *artifacts], isolated_env(ansible_bin))


def bundled_collection(fqcn: str) -> Path:
    """Where the `ansible` package of the venv running the tests holds a collection."""
    spec = importlib.util.find_spec(f"ansible_collections.{fqcn}")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"{fqcn} is not installed in {sys.prefix}: run make venv (requirements.txt's ansible bundles it)")
    return Path(next(iter(spec.submodule_search_locations)))


def copy_dependencies(collections: Path) -> None:
    """Put the collections galaxy.yml depends on, as the `ansible` package of the venv running the
    tests holds them, into collections (a plain install finds them there and downloads nothing)."""
    for fqcn in galaxy()["dependencies"]:
        namespace, name = fqcn.split(".")
        shutil.copytree(bundled_collection(fqcn), collections / "ansible_collections" / namespace / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
