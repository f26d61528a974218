"""Execution environment: `ansible-builder create` on tests/release/execution-environment.yml with
the built tarball gives a complete build context. No container engine runs here, so the build's
offline steps are run from the context itself: its galaxy stage (the collection install from
_build/requirements.yml) and its introspection script, which must bring the collection's Python
and system requirements (meta/execution-environment.yml). bindep.txt's Debian names must exist."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

from .helpers import ROOT, isolated_env, run


def requirement_lines(path: Path) -> list[str]:
    """The lines of a requirements or bindep file without comments and blanks."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


@pytest.fixture(scope="module")
def context(tools: Path, tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("ee")
    shutil.copy2(tarball, work / tarball.name)
    definition = (ROOT / "tests/release/execution-environment.yml").read_text(encoding="utf-8")
    (work / "execution-environment.yml").write_text(definition.replace("TARBALL", tarball.name), encoding="utf-8")
    run([tools / "ansible-builder", "create", "--file", "execution-environment.yml", "--context", "context",
         "--output-filename", "Containerfile"], isolated_env(tools), cwd=work)
    return work / "context"


def test_context_has_the_tarball_and_the_build_steps(context: Path, tarball: Path) -> None:
    packed = context / "_build/collections" / tarball.name
    assert hashlib.sha256(packed.read_bytes()).digest() == hashlib.sha256(tarball.read_bytes()).digest()
    galaxy_requirements = yaml.safe_load((context / "_build/requirements.yml").read_text(encoding="utf-8"))
    assert galaxy_requirements["collections"] == [{"name": f"collections/{tarball.name}", "type": "file"}]
    containerfile = (context / "Containerfile").read_text(encoding="utf-8")
    for step in ("COPY _build /build", "ansible-galaxy collection install", "introspect.py introspect",
                 "/output/scripts/assemble", "/output/scripts/install-from-bindep"):
        assert step in containerfile, f"no {step!r} in the Containerfile"
    for script in ("assemble", "introspect.py", "install-from-bindep", "check_galaxy", "check_ansible"):
        assert (context / "_build/scripts" / script).is_file(), f"no script {script} in the context"


@pytest.fixture(scope="module")
def introspected(tools: Path, context: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[str]]:
    """The pip and bindep requirements the context's own introspection writes, after the context's
    galaxy stage installed the collection (as in the build: cwd _build, its requirements.yml)."""
    work = tmp_path_factory.mktemp("ee_build")
    collections = work / "collections"
    env = isolated_env(tools)
    run([tools / "ansible-galaxy", "collection", "install", "--no-deps", "-r", "requirements.yml",
         "--collections-path", collections], env, cwd=context / "_build")
    pip, bindep = work / "requirements.txt", work / "bindep.txt"
    run([tools / "python", context / "_build/scripts/introspect.py", "introspect", f"--write-pip={pip}",
         f"--write-bindep={bindep}", collections], env)
    return requirement_lines(pip), requirement_lines(bindep)


def test_build_installs_the_collections_python_requirements(introspected: tuple[list[str], list[str]]) -> None:
    pip = introspected[0]
    expected = requirement_lines(ROOT / "meta/ee-requirements.txt")
    assert {"libvirt-python", "lxml"} == {line.split(">")[0].split("=")[0] for line in expected}
    assert not [line for line in expected if line not in pip], pip


def test_build_installs_the_collections_system_packages(introspected: tuple[list[str], list[str]]) -> None:
    bindep = introspected[1]
    expected = requirement_lines(ROOT / "bindep.txt")
    assert not [line for line in expected if line not in bindep], bindep
    for platform in ("dpkg", "rpm"):
        names = {line.split()[0] for line in expected if f"platform:{platform}" in line}
        for library in ("libvirt", "libxml2", "libxslt"):
            assert [name for name in names if name.startswith(library)], f"no {library} package for {platform}"
            assert [name for name in names if name.startswith(library) and name.endswith(("-dev", "-devel"))]


def test_bindep_debian_names_exist(tools: Path) -> None:
    """bindep reads the file, and every package it wants on this Debian (also the compile profile)
    is one apt knows."""
    env = isolated_env(tools)
    wanted = []
    for profile in ([], ["compile"]):
        listing = run([tools / "bindep", "--file", ROOT / "bindep.txt", "--list_all", "newline", *profile], env,
                      cwd=ROOT)
        wanted += listing.stdout.split()
    assert {"libvirt-dev", "libxml2-dev", "libxslt1-dev"} <= set(wanted)
    shown = run(["apt-cache", "show", "--no-all-versions", *sorted(set(wanted))], env).stdout
    assert {line.split(": ", 1)[1] for line in shown.splitlines() if line.startswith("Package: ")} == set(wanted)
