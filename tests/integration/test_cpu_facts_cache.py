# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cpu_facts reusing its expansion data and its whole facts (previous:, the cache file) against the real libvirtd.

Every run uses a cache file of its own under the test's temporary directory, never the default
/var/cache/hostcpu-libvirt/cpu_facts.json.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

libvirt = pytest.importorskip("libvirt")

from ansible_collections.hostcpu.libvirt.plugins.plugin_utils._cpu_facts_action import code_fingerprint
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts_key import content_fingerprint, read_key_inputs
from ansible_collections.hostcpu.libvirt.plugins.module_utils._probe import probe
from conftest import module_task, run_playbook

PREVIOUS = "{{ ansible_facts.hostcpu }}"


def facts_of(result: Dict[str, Any]) -> Dict[str, Any]:
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is False
    return result["ansible_facts"]["hostcpu"]


def sources(result: Dict[str, Any]) -> Dict[str, Any]:
    return {vt: entry.get("expansion_source") for vt, entry in facts_of(result)["virt_types"].items()}


def without_source(facts: Dict[str, Any]) -> Dict[str, Any]:
    """*facts* without where the data came from and whether they can be reused (not after a warning)."""
    facts = copy.deepcopy(facts)
    facts.pop("reuse")
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


# --- the whole facts (the cpu_facts action plugin and cpu_facts_cached) --------------------------

ROOT = Path(__file__).resolve().parents[2]


def code() -> str:
    """The fingerprint of the collection's code, as the action plugin computes it."""
    return code_fingerprint(str(ROOT / "plugins"))


def run_full_module(args: Dict[str, Any], tmp: Path) -> Dict[str, Any]:
    """cpu_facts itself (no action plugin, no cpu_facts_cached), given the code fingerprint like the action does."""
    path = tmp / ("args-%s.json" % secrets.token_hex(4))
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": dict(args, _code=code())}))
    proc = subprocess.run([sys.executable, "-m", "ansible_collections.hostcpu.libvirt.plugins.modules.cpu_facts", str(path)],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT / ".collections")),
                          cwd=str(tmp), timeout=600, check=False)
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def reuse_runs(tmp_path_factory) -> Dict[str, Any]:
    """One playbook: a full run, a cache hit, a previous hit, other options (a miss, then a hit), edited previous facts."""
    tmp = tmp_path_factory.mktemp("reuse")
    cache = tmp / "cpu_facts.json"
    edited = "{{ first.ansible_facts.hostcpu | combine({'model': 'edited'}) }}"
    tasks = [
        module_task("cpu_facts", {"cache_path": str(cache)}, register="first"),
        module_task("cpu_facts", {"cache_path": str(cache)}),
        module_task("cpu_facts", {"cache": False, "previous": "{{ first.ansible_facts.hostcpu }}"}),
        module_task("cpu_facts", {"cache": False, "previous": edited}),
        module_task("cpu_facts_cached", {"cache_path": str(cache), "_code": "0" * 64}),
        module_task("cpu_facts_cached", {"cache_path": str(cache)}),
        module_task("cpu_facts_cached", {"cache_path": str(cache), "_code": code()}),
    ]
    results = run_playbook(tasks, tmp)
    full_cache = run_full_module({"cache_path": str(cache)}, tmp)
    full_previous = run_full_module({"cache": False, "previous": facts_of(results[0])}, tmp)
    other = run_playbook([module_task("cpu_facts", {"cache_path": str(cache), "virt_types": ["qemu"]}),
                          module_task("cpu_facts", {"cache_path": str(cache), "virt_types": ["qemu"]})], tmp)
    return {"results": results, "full_cache": full_cache, "full_previous": full_previous, "other": other, "cache": cache, "tmp": tmp}


def test_a_warning_free_run_stores_its_whole_facts_with_their_key(reuse_runs, virt_types):
    first = reuse_runs["results"][0]
    assert first["facts_source"] == "probed" and not first.get("warnings")
    facts = facts_of(first)
    assert len(facts["reuse"]["key"]) == 64 and facts["reuse"]["content"] == content_fingerprint(facts)
    # One whole facts per URI: those of the last run (virt_types: [qemu]) replaced them.
    last = facts_of(reuse_runs["other"][0])
    whole = read(reuse_runs["cache"])["facts"][""]
    assert whole["key"] == last["reuse"]["key"] and list(whole["facts"]["virt_types"]) == ["qemu"]
    assert "expansion" not in whole["facts"]["virt_types"]["qemu"]


def test_the_second_run_returns_the_cached_facts_without_the_full_module(reuse_runs, virt_types):
    first, second = reuse_runs["results"][:2]
    assert second["facts_source"] == "cache" and not second.get("warnings")
    assert sources(second) == {vt: "cache" for vt in virt_types}
    assert facts_of(second)["reuse"] == facts_of(first)["reuse"]
    assert without_source(facts_of(second)) == without_source(facts_of(first))


def test_a_hit_is_what_the_full_module_returns(reuse_runs):
    second, third = reuse_runs["results"][1], reuse_runs["results"][2]
    full_cache, full_previous = reuse_runs["full_cache"], reuse_runs["full_previous"]
    assert full_cache["facts_source"] == full_previous["facts_source"] == "probed"
    assert not full_cache.get("warnings") and not full_previous.get("warnings")
    assert facts_of(second) == full_cache["ansible_facts"]["hostcpu"]
    assert facts_of(third) == full_previous["ansible_facts"]["hostcpu"]


def test_previous_facts_of_this_key_are_returned(reuse_runs, virt_types):
    third = reuse_runs["results"][2]
    assert third["facts_source"] == "previous" and sources(third) == {vt: "previous" for vt in virt_types}
    assert isinstance(third["invocation"]["module_args"]["previous"], str)


def test_edited_previous_facts_run_the_full_module(reuse_runs, virt_types):
    first, fourth = reuse_runs["results"][0], reuse_runs["results"][3]
    assert fourth["facts_source"] == "probed"
    assert facts_of(fourth)["model"] == facts_of(first)["model"] != "edited"
    assert without_source(facts_of(fourth)) == without_source(facts_of(first))
    assert facts_of(fourth)["reuse"] == facts_of(first)["reuse"]


def test_cpu_facts_cached_alone_or_with_another_code_misses(reuse_runs):
    other_code, alone = reuse_runs["results"][4], reuse_runs["results"][5]
    for result in (other_code, alone):
        assert result["hit"] is False and result["source"] is None and result["reason"] and "facts_json" not in result
    assert other_code["key"] != facts_of(reuse_runs["results"][0])["reuse"]["key"] and len(other_code["key"]) == 64
    assert alone["key"] is None and "code fingerprint" in alone["reason"]


def test_cpu_facts_cached_sends_the_facts_of_a_hit_as_json_text_and_sets_no_facts(reuse_runs):
    second, alone = reuse_runs["results"][1], reuse_runs["results"][6]
    assert alone["hit"] is True and alone["source"] == "cache" and "ansible_facts" not in alone
    assert json.loads(alone["facts_json"]) == facts_of(second)


def test_other_options_miss_then_hit(reuse_runs):
    miss, hit = reuse_runs["other"]
    assert miss["facts_source"] == "probed" and hit["facts_source"] == "cache"
    assert list(facts_of(miss)["virt_types"]) == ["qemu"] and facts_of(hit) == facts_of(miss)
    assert facts_of(miss)["reuse"]["key"] != facts_of(reuse_runs["results"][0])["reuse"]["key"]


@pytest.fixture(scope="module")
def edited_cache(reuse_runs) -> Dict[str, Any]:
    """A copy of the cache whose whole facts were edited: check mode, a real run, then a hit."""
    tmp = reuse_runs["tmp"]
    path = tmp / "edited" / "cpu_facts.json"
    path.parent.mkdir()
    content = read(reuse_runs["cache"])
    content["facts"][""]["facts"]["model"] = "edited"
    path.write_text(json.dumps(content))
    before = path.read_bytes()
    results = run_playbook([module_task("cpu_facts", {"cache_path": str(path), "virt_types": ["qemu"]}, check_mode=True)], tmp)
    after_check = path.read_bytes()
    results += run_playbook([module_task("cpu_facts", {"cache_path": str(path), "virt_types": ["qemu"]}),
                             module_task("cpu_facts", {"cache_path": str(path), "virt_types": ["qemu"]})], tmp)
    return {"path": path, "before": before, "after_check": after_check, "results": results}


def test_edited_cached_facts_run_the_full_module_and_are_repaired(edited_cache, reuse_runs):
    check, real, again = edited_cache["results"]
    expected = facts_of(reuse_runs["other"][0])
    for result in (check, real):
        assert result["facts_source"] == "probed" and facts_of(result) == expected and not result.get("warnings")
    assert again["facts_source"] == "cache" and facts_of(again) == expected
    assert read(edited_cache["path"])["facts"][""]["facts"]["model"] == expected["model"]


def test_check_mode_writes_no_whole_facts(edited_cache):
    assert edited_cache["after_check"] == edited_cache["before"]


def test_check_mode_creates_no_cache_with_whole_facts(tmp_path):
    path = tmp_path / "new" / "cpu_facts.json"
    result = run_playbook([module_task("cpu_facts", {"cache_path": str(path), "virt_types": ["qemu"]}, check_mode=True)], tmp_path)[0]
    assert result["facts_source"] == "probed" and facts_of(result)["reuse"]["key"]
    assert not path.parent.exists()


def test_another_code_fingerprint_runs_the_full_module(reuse_runs, tmp_path):
    """The same collection with one changed module_util (a comment): its action computes another fingerprint."""
    collection = tmp_path / "ansible_collections" / "hostcpu" / "libvirt"
    for name in ("plugins", "meta"):
        shutil.copytree(ROOT / name, collection / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "galaxy.yml", collection / "galaxy.yml")
    with open(collection / "plugins" / "module_utils" / "_errors.py", "a", encoding="utf-8") as handle:
        handle.write("# changed\n")
    env = {"ANSIBLE_COLLECTIONS_PATH": str(tmp_path), "PYTHONPATH": str(tmp_path)}
    results = run_playbook([module_task("cpu_facts", {"cache_path": str(reuse_runs["cache"]), "virt_types": ["qemu"]})] * 2,
                           tmp_path, env=env)
    expected = facts_of(reuse_runs["other"][0])
    assert results[0]["facts_source"] == "probed" and results[1]["facts_source"] == "cache"
    assert facts_of(results[0])["reuse"]["key"] != expected["reuse"]["key"]
    assert without_source(facts_of(results[0])) == without_source(expected)


class CountingConnection:
    """A libvirt connection that records the name of each call made through it."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.calls: List[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.conn, name)
        if not callable(attribute):
            return attribute

        def counted(*args: Any) -> Any:
            self.calls.append(name)
            return attribute(*args)
        return counted


def test_a_probe_given_the_key_inputs_builds_from_them_and_asks_libvirt_none_of_them_again(conn, virt_types):
    def reused(_virt_type: str, _inputs: str) -> Dict[str, Any]:
        return {"reused": True}  # no probe guests: the test is about the reads before them
    key_inputs = read_key_inputs(conn, virt_types, libvirt.libvirtError)
    counting = CountingConnection(conn)
    given = probe(counting, virt_types, False, True, reused, key_inputs)
    assert not set(counting.calls) & {"getLibVersion", "getVersion", "getCapabilities", "getDomainCapabilities", "getURI"}
    assert "baselineHypervisorCPU" in counting.calls
    itself = probe(conn, virt_types, False, True, reused)
    assert given["capabilities_xml"] == key_inputs["capabilities"] == itself["capabilities_xml"]
    assert given["domcaps"] == {vt: key_inputs["domcaps"][vt]["xml"] for vt in virt_types} == itself["domcaps"]
    assert given["versions"] == itself["versions"] and given["unavailable"] == itself["unavailable"]
    assert given["expansion_data"] == itself["expansion_data"]
