"""The built collection: only source files, no caches, and versions that agree with the changelog."""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import yaml

from .helpers import ROOT, build, galaxy, isolated_env, run, source_files, tarball_files

# What tools and test runs leave in a checkout, at the root and below it.
CACHES = (
    ".ansible/collections/ansible_collections/x/y/MANIFEST.json",
    ".molecule/default/state.yml",
    ".mypy_cache/3.11/cache.json",
    ".ruff_cache/content",
    ".cache/libvirt-src/README",
    ".pytest_cache/v/cache/lastfailed",
    ".hypothesis/examples/x",
    ".venv/bin/python",
    ".collections/ansible_collections/hostcpu/libvirt/README.md",
    "changelogs/.plugin-cache.yaml",
    "tests/output/sanity/result.json",
    "tests/output/.tmp/x.txt",
    "hostcpu-libvirt-0.0.9.tar.gz",
    "roles/guest/.ansible/roles/x.yml",
    "extensions/molecule/default/.ansible/tmp/x",
    "extensions/molecule/fleet/.molecule/state.yml",
    "tests/unit/.pytest_cache/v/cache/nodeids",
    "plugins/module_utils/__pycache__/_xml.cpython-311.pyc",
)
# What every installed collection of ours must carry.
REQUIRED = (
    "README.md", "LICENSE", "CHANGELOG.rst", "changelogs/changelog.yaml", "meta/runtime.yml",
    "meta/execution-environment.yml", "meta/ee-requirements.txt", "bindep.txt",
    "roles/host/README.md", "roles/guest/README.md", "roles/fleet/README.md",
)
METADATA = {"MANIFEST.json", "FILES.json"}


def planted_copy(destination: Path) -> set[str]:
    """Copy the checkout's source files to destination, add every cache; the source files."""
    sources = source_files(ROOT)
    for name in sources:
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    for name in CACHES:
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("cache\n", encoding="utf-8")
    return sources


def not_sources(packed: set[str], sources: set[str]) -> list[str]:
    """Packed files that are not source files."""
    return sorted(packed - sources - METADATA)


def test_dirty_tree_packs_no_cache(tools: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    sources = planted_copy(tree)
    packed = tarball_files(build(tools, tree, tmp_path / "out"))
    assert not not_sources(packed, sources), "packed caches or other non-source files"
    assert not [name for name in CACHES if name in packed]
    assert not [name for name in REQUIRED if name not in packed]


def test_checkout_build_packs_only_sources(tarball: Path) -> None:
    packed = tarball_files(tarball)
    assert not not_sources(packed, source_files(ROOT)), "packed files git ignores (caches, build output)"
    assert not [name for name in REQUIRED if name not in packed]


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def released_versions() -> dict[str, dict]:
    changelog = yaml.safe_load((ROOT / "changelogs/changelog.yaml").read_text(encoding="utf-8"))
    return changelog["releases"]


def test_version_is_released(tarball: Path) -> None:
    version = galaxy()["version"]
    with tarfile.open(tarball) as archive:
        manifest = json.load(archive.extractfile("MANIFEST.json"))  # type: ignore[arg-type]
    assert manifest["collection_info"]["version"] == version
    releases = released_versions()
    assert version in releases, f"galaxy.yml says {version}, changelogs/changelog.yaml has {sorted(releases)}"
    assert max(releases, key=version_key) == version, "galaxy.yml's version is not the newest release"
    assert f"\nv{version}\n" in (ROOT / "CHANGELOG.rst").read_text(encoding="utf-8")
    fragments = sorted(path.name for path in (ROOT / "changelogs/fragments").glob("*.y*ml"))
    assert not fragments, f"changelog fragments not in a release: {fragments}; run make changelog"


def version_fields(node: object, where: str) -> Iterator[tuple[str, str]]:
    """Every version_added below node (options, suboptions, return values, attributes) with its place."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "version_added":
                yield where, str(value)
            else:
                yield from version_fields(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from version_fields(value, f"{where}[{index}]")


def new_in_release(release: dict) -> dict[str, str]:
    """plugin type/name -> for each plugin and module a release lists as new."""
    found = {f"module/{entry['name']}": "module" for entry in release.get("modules", [])}
    for plugin_type, entries in release.get("plugins", {}).items():
        found.update({f"{plugin_type}/{entry['name']}": plugin_type for entry in entries})
    return found


def test_version_added_matches_changelog(tools: Path, installed: Path) -> None:
    dump = run([tools / "ansible-doc", "--metadata-dump", "--no-fail-on-errors", "hostcpu.libvirt"],
               isolated_env(tools, {"ANSIBLE_COLLECTIONS_PATH": str(installed)}))
    plugins = json.loads(dump.stdout)["all"]
    releases = released_versions()
    first_seen = {name: version for version, release in sorted(releases.items(), key=lambda item: version_key(item[0]), reverse=True)
                  for name in new_in_release(release)}
    wrong = []
    documented = set()
    for plugin_type, entries in plugins.items():
        for fqcn, entry in entries.items():
            name = f"{plugin_type}/{fqcn.removeprefix('hostcpu.libvirt.')}"
            if plugin_type in ("role", "doc_fragments", "module_utils") or not entry.get("doc"):
                continue
            documented.add(name)
            if entry["doc"].get("version_added") != first_seen.get(name):
                wrong.append(f"{name}: version_added {entry['doc'].get('version_added')}, new in {first_seen.get(name)}")
            wrong.extend(f"{name}{where}: {version} is no release" for where, version in
                         version_fields({key: entry.get(key) for key in ("doc", "return")}, "") if version not in releases)
    assert documented == set(first_seen), "plugins and the changelog's new plugins differ"
    assert not wrong
