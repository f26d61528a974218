# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_facts_key: the whole-facts key, the facts' content fingerprint, the cache's whole facts, the
decision between the cache, the previous facts and a full run, and the action plugin's logic.

Built from what libvirt 9.0 printed on the test machine (tests/unit/fixtures/versions/9.0.0) and
the facts cpu_facts returned there.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

from ansible_collections.hostcpu.libvirt.plugins.module_utils import _cpu_map, _facts, _facts_key
from ansible_collections.hostcpu.libvirt.plugins.module_utils._connection import LibvirtCallError
from ansible_collections.hostcpu.libvirt.plugins.plugin_utils._cpu_facts_action import previous_summary, with_source
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts_cache import ExpansionReuse, write_cache
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts_key import (
    Decision,
    cached_facts,
    content_fingerprint,
    decide,
    emulator_path,
    facts_key,
    host_arch,
    intact,
    key_options,
    read_cache_file,
    read_key_inputs,
    reuse_fact,
    stored_facts,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._probe import recorded_domain_capabilities

FIXTURES = Path(__file__).resolve().parents[3] / "unit" / "fixtures" / "versions" / "9.0.0"
CODE = "c0de" * 16
KEY = "k" * 64


class FakeError(Exception):
    """Stands for libvirt.libvirtError."""


class FakeConnection:
    """The calls read_key_inputs makes, answered from the fixtures; *missing* virt types fail like libvirt."""

    def __init__(self, uri: str = "qemu:///system", missing: tuple = ()) -> None:
        self.uri = uri
        self.missing = missing
        self.calls: list = []

    def getURI(self) -> str:  # noqa: N802 (libvirt's name)
        return self.uri

    def getCapabilities(self) -> str:  # noqa: N802
        return _read("capabilities.xml")

    def getLibVersion(self) -> int:  # noqa: N802
        return 9000000

    def getVersion(self) -> int:  # noqa: N802
        return 7002022

    def getDomainCapabilities(self, emulator, arch, machine, virt_type, flags) -> str:  # noqa: N802
        self.calls.append((emulator, arch, machine, virt_type, flags))
        if virt_type in self.missing:
            raise FakeError("unsupported configuration: virttype %s not supported" % virt_type)
        return _read("domcapabilities-%s.xml" % virt_type)


def _read(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def real_facts() -> Dict[str, Any]:
    return json.loads(_read("cpu_facts.json"))


@pytest.fixture
def facts(real_facts) -> Dict[str, Any]:
    """The real facts as a warning-free run of KEY returns them, expansion data from the probe."""
    result = copy.deepcopy(real_facts)
    for virt_type, entry in result["virt_types"].items():
        entry["expansion"]["inputs"] = virt_type[0] * 64
        entry["expansion_source"] = "probed"
    result["reuse"] = reuse_fact(KEY, result)
    return result


@pytest.fixture
def key_inputs() -> Dict[str, Any]:
    return read_key_inputs(FakeConnection(), None, FakeError)


# --- the key ----------------------------------------------------------------------------------


def test_the_arch_and_the_emulator_are_those_the_facts_parser_reads():
    capabilities = _read("capabilities.xml")
    assert host_arch(capabilities) == _facts.parse_capabilities(capabilities)["host"]["arch"] == "x86_64"
    for virt_type in ("kvm", "qemu"):
        xml = _read("domcapabilities-%s.xml" % virt_type)
        assert emulator_path(xml) == _facts.parse_domain_capabilities(xml)["emulator"]
    assert host_arch("") is None and emulator_path("") is None


def test_the_key_inputs_ask_every_virt_type_with_the_host_arch(key_inputs):
    conn = FakeConnection(missing=("kvm",))
    found = read_key_inputs(conn, None, FakeError)
    assert conn.calls == [(None, "x86_64", None, "kvm", 0), (None, "x86_64", None, "qemu", 0)]
    assert found["domcaps"]["kvm"] == {"error": "unsupported configuration: virttype kvm not supported"}
    assert found["domcaps"]["qemu"] == {"xml": _read("domcapabilities-qemu.xml")}
    assert found["emulators"]["kvm"] is None
    assert found["emulators"]["qemu"]["path"] == "/usr/bin/qemu-system-x86_64"
    assert found["kernel"]["release"] and found["cpu_map"]
    assert list(read_key_inputs(FakeConnection(), ["qemu"], FakeError)["domcaps"]) == ["qemu"]
    assert key_inputs["libvirt_version"] == 9000000 and key_inputs["hypervisor_version"] == 7002022


def test_a_remote_uri_reads_neither_the_emulators_nor_the_kernel():
    found = read_key_inputs(FakeConnection("qemu+ssh://root@host2.example/system"), None, FakeError)
    assert found["kernel"] is None and set(found["emulators"].values()) == {None}
    assert found["cpu_map"] == _facts_key.cpu_map_identity()


def test_without_the_code_fingerprint_there_is_no_key(key_inputs):
    assert facts_key(key_inputs, key_options(None, True), None) is None
    assert facts_key(key_inputs, key_options(None, True), "") is None


CHANGES = {
    "libvirt_version": lambda inputs: inputs.update(libvirt_version=9001000),
    "hypervisor_version": lambda inputs: inputs.update(hypervisor_version=8000000),
    "uri": lambda inputs: inputs.update(uri="qemu:///session"),
    "capabilities": lambda inputs: inputs.update(capabilities=inputs["capabilities"].replace("<microcode", "<microcode x='1'")),
    "domcaps": lambda inputs: inputs["domcaps"]["qemu"].update(xml=inputs["domcaps"]["qemu"]["xml"] + " "),
    "domcaps error": lambda inputs: inputs["domcaps"].update(kvm={"error": "no"}),
    "emulator": lambda inputs: inputs["emulators"].update(kvm=dict(inputs["emulators"]["kvm"], mtime_ns=1)),
    "kernel": lambda inputs: inputs.update(kernel={"release": "7.0", "version": "#1"}),
    "cpu_map": lambda inputs: inputs.update(cpu_map=inputs["cpu_map"][1:]),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_the_key_changes_with_each_input(key_inputs, change):
    options = key_options(None, True)
    before = facts_key(key_inputs, options, CODE)
    changed = copy.deepcopy(key_inputs)
    CHANGES[change](changed)
    assert facts_key(changed, options, CODE) != before
    assert facts_key(copy.deepcopy(key_inputs), options, CODE) == before


def test_the_key_changes_with_the_code_and_the_options(key_inputs):
    keys = {facts_key(key_inputs, key_options(None, True), CODE), facts_key(key_inputs, key_options(None, True), CODE + "1"),
            facts_key(key_inputs, key_options(["kvm"], True), CODE), facts_key(key_inputs, key_options(["qemu", "kvm"], True), CODE),
            facts_key(key_inputs, key_options(None, False), CODE)}
    assert len(keys) == 5
    assert key_options([], True) == key_options(None, True)


def test_the_probe_reads_the_recorded_domain_capabilities_as_it_would_read_them_itself():
    found = read_key_inputs(FakeConnection(missing=("kvm",)), None, FakeError)
    assert recorded_domain_capabilities(found, "qemu") == _read("domcapabilities-qemu.xml")
    with pytest.raises(LibvirtCallError) as refused:
        recorded_domain_capabilities(found, "kvm")
    assert str(refused.value) == ("reading the domain capabilities of virt type 'kvm' (getDomainCapabilities) failed: "
                                  "unsupported configuration: virttype kvm not supported")


# --- the content fingerprint ------------------------------------------------------------------


def test_the_content_fingerprint_ignores_reuse_and_the_expansion_source(facts):
    before = content_fingerprint(facts)
    assert content_fingerprint(with_source(facts, "cache")) == before
    assert content_fingerprint(dict(facts, reuse=None)) == before
    assert content_fingerprint(json.loads(json.dumps(facts))) == before  # what Ansible gives back as previous
    edited = copy.deepcopy(facts)
    edited["virt_types"]["kvm"]["expansion"]["features"][0] = "edited"
    assert content_fingerprint(edited) != before
    assert intact(facts) and not intact(edited) and not intact(dict(facts, reuse=None)) and not intact(None)


def test_no_key_no_reuse(facts):
    assert reuse_fact(None, facts) is None
    assert reuse_fact(KEY, facts) == {"key": KEY, "content": content_fingerprint(facts)}


# --- the cache's whole facts ------------------------------------------------------------------


def _write(path: Path, facts: Dict[str, Any], uri: Optional[str] = None, key: str = KEY) -> Dict[str, Any]:
    expansions = {vt: entry["expansion"] for vt, entry in facts["virt_types"].items()}
    assert write_cache(str(path), uri, expansions, stored_facts(key, facts)) == []
    content, warnings = read_cache_file(str(path))
    assert warnings == []
    return content


def test_the_stored_facts_come_back_as_the_full_module_returns_them(tmp_path, facts):
    content = _write(tmp_path / "cache.json", facts)
    stored = content["facts"][""]["facts"]
    assert all("expansion" not in entry and "expansion_source" not in entry for entry in stored["virt_types"].values())
    found, why = cached_facts(content, None, KEY)
    assert why == "" and found == with_source(facts, "cache")


def test_other_keys_uris_and_edits_do_not_come_back(tmp_path, facts):
    content = _write(tmp_path / "cache.json", facts)
    assert cached_facts(content, None, "other")[0] is None
    assert cached_facts(content, "qemu:///session", KEY)[0] is None
    edited = copy.deepcopy(content)
    edited["facts"][""]["facts"]["model"] = "edited"
    assert "damaged or edited" in cached_facts(edited, None, KEY)[1]
    edited = copy.deepcopy(content)
    edited["entries"][""]["qemu"]["inputs"] = "0" * 64  # the expansion entry the full module would not reuse
    assert "damaged or edited" in cached_facts(edited, None, KEY)[1]
    edited = copy.deepcopy(content)
    edited["facts"][""]["facts"]["virt_types"] = []
    assert cached_facts(edited, None, KEY) == (None, "the cached facts are damaged")


def test_an_old_cache_without_whole_facts_is_read(tmp_path):
    path = tmp_path / "cache.json"
    path.write_text(json.dumps({"format": 1, "entries": {"": {}}}))
    assert read_cache_file(str(path)) == ({"entries": {"": {}}, "facts": {}}, [])
    path.write_text(json.dumps({"format": 1, "entries": {"": {}}, "facts": {"": []}}))
    assert read_cache_file(str(path)) == ({"entries": {"": {}}, "facts": {}}, [])


def test_new_expansion_data_without_whole_facts_drops_the_old_whole_facts(tmp_path, facts):
    path = tmp_path / "cache.json"
    _write(path, facts)
    assert write_cache(str(path), None, {"kvm": dict(facts["virt_types"]["kvm"]["expansion"], inputs="1" * 64)}) == []
    assert read_cache_file(str(path))[0]["facts"] == {}


# --- the decision -----------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path, facts) -> Dict[str, Any]:
    return _write(tmp_path / "cache.json", facts)


def _previous(facts: Dict[str, Any]) -> Dict[str, Any]:
    return previous_summary(facts)


def test_a_cache_hit(cache, facts):
    decision = decide(KEY, None, cache, [], None)
    assert decision.source == "cache" and decision.facts == with_source(facts, "cache")


def test_no_key_or_a_damaged_cache_is_a_miss(cache):
    assert decide(None, None, cache, [], None).source is None
    decision = decide(KEY, None, cache, ["the cpu_facts cache x is ignored"], None)
    assert decision.source is None and "cannot be used" in decision.reason
    assert decide("other", None, cache, [], None).source is None
    assert decide(KEY, None, None, [], None) == Decision(None, "cache is off")


def test_previous_facts_of_this_key_hit_with_the_cache_off_or_holding_them(cache, facts):
    assert decide(KEY, None, None, [], _previous(facts)).source == "previous"
    assert decide(KEY, None, cache, [], _previous(facts)).source == "previous"
    empty = {"entries": {}, "facts": {}}
    decision = decide(KEY, None, empty, [], _previous(facts))
    assert decision.source is None and "cache does not hold them" in decision.reason


def test_previous_facts_of_another_key_leave_the_cache_unless_their_expansion_data_would_win(cache, facts):
    other = copy.deepcopy(facts)
    other["reuse"] = reuse_fact("other", other)
    assert decide(KEY, None, cache, [], _previous(other)).reason.startswith("the previous facts hold expansion data")
    for entry in other["virt_types"].values():
        entry["expansion"]["inputs"] = "2" * 64
    assert decide(KEY, None, cache, [], _previous(other)).source == "cache"
    assert decide(KEY, None, None, [], _previous(other)).source is None


def test_edited_previous_facts_are_not_reused(facts):
    edited = copy.deepcopy(facts)
    edited["model"] = "edited"
    summary = previous_summary(edited)
    assert summary["key"] is None and set(summary["inputs"]) == {"kvm", "qemu"}
    assert decide(KEY, None, None, [], summary).source is None
    assert previous_summary({"hostcpu": facts}) == previous_summary(facts)
    assert previous_summary("not facts") is None and previous_summary(None) is None


def test_one_definition_of_the_shared_constants():
    assert _facts.VIRT_TYPES is _facts_key.VIRT_TYPES
    assert _facts_key.CPU_MAP_DIR == _cpu_map.CPU_MAP_DIR


def test_the_full_module_writes_whole_facts_only_when_the_cache_lacks_them_intact(tmp_path, facts):
    path = tmp_path / "cache.json"
    expansions = {vt: entry["expansion"] for vt, entry in facts["virt_types"].items()}
    whole = stored_facts(KEY, facts)
    assert ExpansionReuse(None, None, str(path)).store(expansions, whole) is True
    assert ExpansionReuse(None, None, str(path)).store(expansions, whole) is False  # held already
    content = json.loads(path.read_text())
    content["facts"][""]["facts"]["model"] = "edited"
    path.write_text(json.dumps(content))
    assert ExpansionReuse(None, None, str(path)).store(expansions, whole) is True  # repaired
    assert read_cache_file(str(path))[0]["facts"][""] == json.loads(json.dumps(whole))
    assert ExpansionReuse(None, None, None).store(expansions, whole) is False  # cache off
