# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cpu_facts reusing its expansion data (previous:, the cache file) against the real libvirtd.

Every run uses a cache file of its own under the test's temporary directory, never the default
/var/cache/hostcpu-libvirt/cpu_facts.json.
"""

from __future__ import annotations

import copy
import json
import stat
from pathlib import Path
from typing import Any, Dict, List

import pytest

from conftest import module_task, run_playbook

PREVIOUS = "{{ ansible_facts.hostcpu }}"


def facts_of(result: Dict[str, Any]) -> Dict[str, Any]:
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is False
    return result["ansible_facts"]["hostcpu"]


def sources(result: Dict[str, Any]) -> Dict[str, Any]:
    return {vt: entry.get("expansion_source") for vt, entry in facts_of(result)["virt_types"].items()}


def without_source(facts: Dict[str, Any]) -> Dict[str, Any]:
    facts = copy.deepcopy(facts)
    for entry in facts["virt_types"].values():
        entry.pop("expansion_source")
    return facts


def cache_warnings(result: Dict[str, Any]) -> List[str]:
    return [warning for warning in result.get("warnings") or [] if "cache" in warning or "expansion data" in warning]


def read(path: Path) -> Dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Dict[str, Any]:
    """One playbook: probe (writes the cache), cache hit, previous: without the cache, previous: filling a new cache."""
    tmp = tmp_path_factory.mktemp("cache")
    cache = tmp / "new-dir" / "cpu_facts.json"
    warmed = tmp / "warmed" / "cpu_facts.json"
    unused = tmp / "unused.json"
    unused.write_text("{not json, and never read")
    tasks = [
        module_task("cpu_facts", {"cache_path": str(cache)}),
        module_task("cpu_facts", {"cache_path": str(cache)}),
        module_task("cpu_facts", {"cache": False, "cache_path": str(unused), "previous": PREVIOUS}),
        module_task("cpu_facts", {"cache_path": str(warmed), "previous": PREVIOUS}),
    ]
    results = run_playbook(tasks, tmp)
    return {"results": results, "cache": cache, "warmed": warmed, "unused": unused, "tmp": tmp}


def test_the_first_run_probes_and_writes_the_cache(runs, virt_types):
    first = runs["results"][0]
    assert sources(first) == {vt: "probed" for vt in virt_types}
    assert cache_warnings(first) == []
    cache = runs["cache"]
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.parent.stat().st_mode) == 0o700
    content = read(cache)
    assert content["format"] == 1 and list(content["entries"]) == [""]
    facts = facts_of(first)
    for vt in virt_types:
        data = facts["virt_types"][vt]["expansion"]
        assert len(data["inputs"]) == 64 and data["inputs_detail"]["virt_type"] == vt
        assert data["inputs_detail"]["emulator"]["path"] == facts["virt_types"][vt]["emulator"]
        assert content["entries"][""][vt] == data


def test_the_second_run_reuses_the_cache_and_gives_the_same_facts(runs, virt_types):
    first, second = runs["results"][:2]
    assert sources(second) == {vt: "cache" for vt in virt_types}
    assert cache_warnings(second) == []
    assert without_source(facts_of(second)) == without_source(facts_of(first))


def test_previous_facts_are_reused_without_the_cache(runs, virt_types):
    first, third = runs["results"][0], runs["results"][2]
    assert sources(third) == {vt: "previous" for vt in virt_types}
    assert cache_warnings(third) == []
    assert without_source(facts_of(third)) == without_source(facts_of(first))
    assert runs["unused"].read_text() == "{not json, and never read"
    # The ~70 kB of previous facts are not echoed back in the result.
    assert isinstance(third["invocation"]["module_args"]["previous"], str)


def test_previous_facts_fill_an_empty_cache(runs, virt_types):
    fourth = runs["results"][3]
    assert sources(fourth) == {vt: "previous" for vt in virt_types}
    assert read(runs["warmed"])["entries"][""] == {vt: facts_of(fourth)["virt_types"][vt]["expansion"] for vt in virt_types}


@pytest.fixture(scope="module")
def tampered(runs, virt_types) -> Dict[str, Any]:
    """A copy of the cache whose first virt type's inputs changed (as after an update) and whose other
    one's content was edited (its fingerprint still matching); run in check mode, then for real."""
    path = runs["tmp"] / "tampered" / "cpu_facts.json"
    path.parent.mkdir()
    content = read(runs["cache"])
    changed = virt_types[0]
    content["entries"][""][changed]["inputs"] = "0" * 64
    damaged = virt_types[-1] if len(virt_types) > 1 else None
    if damaged:
        content["entries"][""][damaged]["qemu"]["supported"] = "1"
    path.write_text(json.dumps(content))
    before = path.read_bytes()
    results = run_playbook([module_task("cpu_facts", {"cache_path": str(path)}, check_mode=True),
                            module_task("cpu_facts", {"cache_path": str(path)})], runs["tmp"])
    check, real = results[0], results[1]
    return {"path": path, "before": before, "check": check, "real": real, "changed": changed, "damaged": damaged}


def test_a_changed_input_probes_again(tampered, runs):
    first = facts_of(runs["results"][0])
    for result in (tampered["check"], tampered["real"]):
        assert sources(result)[tampered["changed"]] == "probed"
        assert without_source(facts_of(result)) == without_source(first)


def test_damaged_cache_content_probes_again_with_a_warning(tampered):
    if not tampered["damaged"]:
        pytest.skip("one virt type only on this machine")
    for result in (tampered["check"], tampered["real"]):
        assert sources(result)[tampered["damaged"]] == "probed"
        warnings = cache_warnings(result)
        assert len(warnings) == 1 and tampered["damaged"] in warnings[0] and "does not match its fingerprint" in warnings[0]


def test_check_mode_does_not_write_and_the_real_run_repairs_the_cache(tampered, runs):
    # The check-mode task ran first: had it written, the real run would have found a good cache.
    assert set(sources(tampered["check"]).values()) == {"probed"}
    content = read(tampered["path"])
    real = facts_of(tampered["real"])
    assert content["entries"][""] == {vt: entry["expansion"] for vt, entry in real["virt_types"].items()}
    assert tampered["path"].read_bytes() != tampered["before"]


def test_check_mode_creates_no_cache_and_cache_false_reads_and_writes_nothing(tmp_path, virt_types):
    checked = tmp_path / "checked" / "cpu_facts.json"
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{garbage")
    fresh = tmp_path / "off" / "cpu_facts.json"
    results = run_playbook([
        module_task("cpu_facts", {"cache_path": str(checked), "virt_types": ["qemu"]}, check_mode=True),
        module_task("cpu_facts", {"cache": False, "cache_path": str(garbage), "virt_types": ["qemu"]}),
        module_task("cpu_facts", {"cache": False, "cache_path": str(fresh), "virt_types": ["qemu"], "expansion": True}),
    ], tmp_path)
    check, off, off_fresh = results[0], results[1], results[2]
    assert sources(check) == {"qemu": "probed"} and not checked.parent.exists()
    assert sources(off) == {"qemu": "probed"} and cache_warnings(off) == []
    assert garbage.read_text() == "{garbage"
    assert sources(off_fresh) == {"qemu": "probed"} and not fresh.parent.exists()


def test_a_corrupt_cache_warns_and_is_written_again(tmp_path):
    path = tmp_path / "cpu_facts.json"
    path.write_text("[1, 2")
    result = run_playbook([module_task("cpu_facts", {"cache_path": str(path), "virt_types": ["qemu"]})], tmp_path)[0]
    assert sources(result) == {"qemu": "probed"}
    warnings = cache_warnings(result)
    assert len(warnings) == 1 and str(path) in warnings[0] and "not JSON" in warnings[0]
    assert read(path)["entries"][""]["qemu"] == facts_of(result)["virt_types"]["qemu"]["expansion"]


def test_expansion_false_reports_no_source(tmp_path):
    path = tmp_path / "cpu_facts.json"
    result = run_playbook([module_task("cpu_facts", {"cache_path": str(path), "expansion": False})], tmp_path)[0]
    for entry in facts_of(result)["virt_types"].values():
        assert "expansion" not in entry and "expansion_source" not in entry
    assert not path.exists()
