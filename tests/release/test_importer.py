"""Galaxy's importer (galaxy-importer from PyPI, offline: tests/release/galaxy-importer.cfg) on the
built tarball: no error and no warning, every plugin's documentation and every role's README loaded."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .helpers import ROOT, isolated_env, run

# galaxy-importer logs "<LEVEL>: <message>" for what it and its ansible-lint run find.
COMPLAINT = re.compile(r"^(WARNING|ERROR|CRITICAL)\b.*$", re.MULTILINE)


@pytest.fixture(scope="module")
def imported(tools: Path, tarball: Path, dependencies_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    """galaxy-importer's log and importer_result.json. The dependencies are on PYTHONPATH, where
    ansible-lint inside the importer finds them (the importer sets ANSIBLE_COLLECTIONS_PATH itself)."""
    work = tmp_path_factory.mktemp("importer")
    env = isolated_env(tools, {
        "GALAXY_IMPORTER_CONFIG": str(ROOT / "tests/release/galaxy-importer.cfg"),
        "PYTHONPATH": str(dependencies_path),
        "ANSIBLE_LOCAL_TEMP": str(work / "tmp"),
    })
    result = run([tools / "python", "-m", "galaxy_importer.main", tarball], env, cwd=work)
    return result.stdout + result.stderr, json.loads((work / "importer_result.json").read_text(encoding="utf-8"))


def test_importer_complains_of_nothing(imported: tuple[str, dict]) -> None:
    log = imported[0]
    assert "Importer processing completed successfully" in log
    assert COMPLAINT.findall(log) == [], "\n".join(match.group(0) for match in COMPLAINT.finditer(log))


def test_importer_loads_every_plugin_doc_and_role_readme(imported: tuple[str, dict]) -> None:
    result = imported[1]
    contents = {(entry["content_type"], entry["content_name"]): entry for entry in result["docs_blob"]["contents"]}
    documented = {("module", path.stem) for path in (ROOT / "plugins/modules").glob("*.py")}
    documented |= {(kind, path.stem) for kind in ("filter", "test") for path in (ROOT / "plugins" / kind).glob("*.yml")}
    assert len(documented) >= 10
    assert not [key for key in documented if not (contents.get(key, {}).get("doc_strings") or {}).get("doc")]
    roles = {key[1]: entry for key, entry in contents.items() if key[0] == "role"}
    assert sorted(roles) == sorted(path.name for path in (ROOT / "roles").iterdir())
    assert not [name for name, entry in roles.items() if entry.get("readme_file") != "README.md"]
    assert result["requires_ansible"] == ">=2.17.0"
