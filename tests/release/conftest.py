"""Fixtures of the release checks (make galaxy, release-check, ee): the tool venvs the Makefile
made and the collection tarball built from the checkout as it is (caches and all)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import ROOT, build, copy_dependencies, install, venv_bin


@pytest.fixture(scope="session")
def tools() -> Path:
    """galaxy-importer, ansible-builder, antsibull-docs, antsibull-changelog and their ansible-core."""
    return venv_bin("HOSTCPU_RELEASE_TOOLS")


@pytest.fixture(scope="session")
def tarball(tools: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The collection built from the checkout as it is, with whatever caches it holds."""
    return build(tools, ROOT, tmp_path_factory.mktemp("build"))


@pytest.fixture(scope="session")
def installed(tools: Path, tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A collections directory holding only the built tarball, installed (without dependencies)."""
    collections = tmp_path_factory.mktemp("collections")
    install(tools, [tarball], collections, "--no-deps")
    return collections


@pytest.fixture(scope="session")
def dependencies_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A collections directory holding only the collections galaxy.yml depends on."""
    collections = tmp_path_factory.mktemp("dependencies")
    copy_dependencies(collections)
    return collections
