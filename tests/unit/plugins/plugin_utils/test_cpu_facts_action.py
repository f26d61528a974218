# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_cpu_facts_action: the cpu_facts action plugin's logic (which tasks may reuse whole facts, the
arguments of cpu_facts_cached, the result of a hit, the fingerprint of the collection's code)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict

import pytest

from ansible_collections.hostcpu.libvirt.plugins.plugin_utils import _cpu_facts_action
from ansible_collections.hostcpu.libvirt.plugins.plugin_utils._cpu_facts_action import (
    code_files,
    code_fingerprint,
    hit_result,
    previous_summary,
    reuse_plan,
    with_source,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts_key import reuse_fact

FIXTURES = Path(__file__).resolve().parents[3] / "unit" / "fixtures" / "versions" / "9.0.0"
PLUGINS = Path(__file__).resolve().parents[4] / "plugins"
KEY = "k" * 64


@pytest.fixture
def facts() -> Dict[str, Any]:
    """The real facts as a warning-free run of KEY returns them."""
    result = json.loads((FIXTURES / "cpu_facts.json").read_text(encoding="utf-8"))
    for virt_type, entry in result["virt_types"].items():
        entry["expansion"]["inputs"] = virt_type[0] * 64
        entry["expansion_source"] = "probed"
    result["reuse"] = reuse_fact(KEY, result)
    return result


def test_with_source_is_a_deep_copy(facts):
    copied = with_source(facts, "previous")
    assert {entry["expansion_source"] for entry in copied["virt_types"].values()} == {"previous"}
    copied["virt_types"]["kvm"]["modes"]["host-model"]["supported"] = "changed"
    assert facts["virt_types"]["kvm"]["modes"]["host-model"]["supported"] is True
    assert {entry["expansion_source"] for entry in facts["virt_types"].values()} == {"probed"}


class TaggedStr(str):
    """What templating gives on ansible-core 2.19: str and dict subclasses carrying tags."""


class TaggedDict(dict):
    pass


def _tagged(value):
    if isinstance(value, dict):
        return TaggedDict((key, _tagged(item)) for key, item in value.items())
    if isinstance(value, list):
        return [_tagged(item) for item in value]
    return TaggedStr(value) if isinstance(value, str) else value


def _types(value):
    if isinstance(value, dict):
        return {type(value)}.union(*(_types(item) for item in value.values()))
    if isinstance(value, list):
        return {type(value)}.union(*(_types(item) for item in value))
    return {type(value)}


def test_with_source_gives_plain_json_types_for_templated_facts(facts):
    tagged = _tagged(facts)
    assert TaggedStr in _types(tagged) and TaggedDict in _types(tagged)
    copied = with_source(tagged, "previous")
    assert _types(copied) <= {dict, list, str, int, float, bool, type(None)}
    assert copied == with_source(facts, "previous")


def test_previous_summary_has_the_key_only_of_intact_facts(facts):
    assert previous_summary(facts) == {"key": KEY, "content": facts["reuse"]["content"], "inputs": {"kvm": "k" * 64, "qemu": "q" * 64}}
    assert previous_summary({"hostcpu": facts}) == previous_summary(facts)
    edited = copy.deepcopy(facts)
    edited["model"] = "edited"
    assert previous_summary(edited) == {"key": None, "content": None, "inputs": {"kvm": "k" * 64, "qemu": "q" * 64}}
    assert previous_summary("not facts") is None and previous_summary(None) is None


@pytest.mark.parametrize("args", [
    {"capabilities_xml": "<capabilities/>"},
    {"domain_capabilities_xml": {}},
    {"verify_modes": True},
    {"verify_modes": "yes"},
    {"expansion": False},
    {"cache": False},
    {"cache": "maybe"},
    {"virt_type": "kvm"},
    {"cache_path": "cache/cpu_facts.json"},
    {"cache_path": ""},
    {"previous": "not facts"},
])
def test_tasks_that_cannot_reuse_run_the_full_module(args):
    assert reuse_plan(args) is None


def test_the_plan_passes_what_the_small_module_needs(facts):
    assert reuse_plan({}) == {"cache": True}
    assert reuse_plan({"uri": "qemu:///session", "virt_types": ["kvm"], "cache_path": "/c.json", "cache": "yes",
                       "expansion": "true", "verify_modes": "no"}) == {
        "uri": "qemu:///session", "virt_types": ["kvm"], "cache_path": "/c.json", "cache": True}
    plan = reuse_plan({"cache": False, "previous": facts})
    assert plan == {"cache": False, "_previous": previous_summary(facts)}
    assert len(json.dumps(plan)) < 1000  # the key, not the facts


def test_hit_results_are_the_full_modules_result(facts):
    cached = with_source(facts, "cache")
    found = hit_result({"hit": True, "source": "cache", "facts_json": json.dumps(cached)}, {"cache_path": "/c.json"})
    assert found == {"changed": False, "ansible_facts": {"hostcpu": cached}, "facts_source": "cache",
                     "invocation": {"module_args": {"cache_path": "/c.json"}}}
    found = hit_result({"hit": True, "source": "previous"}, {"previous": {"hostcpu": facts}})
    assert found["ansible_facts"]["hostcpu"] == with_source(facts, "previous") and found["facts_source"] == "previous"
    assert found["ansible_facts"]["hostcpu"] is not facts
    assert isinstance(found["invocation"]["module_args"]["previous"], str)


@pytest.mark.parametrize("cached", [
    {"hit": False, "source": None, "reason": "x"},
    {"failed": True, "msg": "boom"},
    {"hit": True, "source": "cache", "failed": True},
    {"hit": True, "source": "cache"},
    {"hit": True, "source": "cache", "facts_json": "{not json"},
    {"hit": True, "source": "cache", "facts_json": "[1]"},
    {"hit": True, "source": "cache", "facts_json": {"model": "facts, not text"}},
    {},
])
def test_misses_and_failures_give_no_hit(cached):
    assert hit_result(cached, {}) is None


def test_the_code_fingerprint_covers_every_module_util_and_cpu_facts(tmp_path):
    names = [Path(path).relative_to(PLUGINS).as_posix() for path in code_files(str(PLUGINS))]
    assert "module_utils/_facts_key.py" in names and "module_utils/_probe_qemu.py" in names
    assert names[-1] == "modules/cpu_facts.py" and not any(name.startswith("filter/") for name in names)
    plugins = tmp_path / "plugins"
    (plugins / "module_utils").mkdir(parents=True)
    (plugins / "modules").mkdir()
    (plugins / "module_utils" / "_a.py").write_text("A = 1\n")
    (plugins / "modules" / "cpu_facts.py").write_text("main()\n")
    (plugins / "modules" / "domain_cpu.py").write_text("other()\n")
    before = code_fingerprint(str(plugins))
    (plugins / "modules" / "domain_cpu.py").write_text("changed()\n")
    assert code_fingerprint(str(plugins)) == before
    (plugins / "module_utils" / "_a.py").write_text("A = 2\n")
    assert code_fingerprint(str(plugins)) != before


def test_the_plan_knows_every_option_of_cpu_facts():
    from ansible_collections.hostcpu.libvirt.plugins.modules import cpu_facts  # pylint: disable=import-outside-toplevel
    assert set(_cpu_facts_action.CPU_FACTS_OPTIONS) == set(cpu_facts.argument_spec()) - {"_code"}
