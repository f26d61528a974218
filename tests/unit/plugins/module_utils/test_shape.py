# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_shape's checks of host facts take a fast path for plain dicts and lists (facts read from JSON);
other mappings and sequences (read-only views, tuples) must get exactly the same answers."""

from __future__ import annotations

import copy
from types import MappingProxyType
from typing import Any, Callable

import pytest

from fleet_facts import real_facts

from ansible_collections.hostcpu.libvirt.plugins.module_utils._shape import FactsShapeError, check_entry, entry_problems


class Text(str):
    """A str subclass, as Ansible's unsafe text is."""


def frozen(value: Any) -> Any:
    """The same data as read-only mappings and tuples: no plain dict or list anywhere."""
    if isinstance(value, dict):
        return MappingProxyType({key: frozen(item) for key, item in value.items()})
    if isinstance(value, list):
        return tuple(frozen(item) for item in value)
    return value


def entries():
    return list(real_facts()["virt_types"].values())


def test_real_entries_are_fine_as_plain_data_and_as_other_mappings():
    for entry in entries():
        assert entry_problems(entry) == []
        assert entry_problems(frozen(entry)) == []


def _feature_name_int(entry):
    entry["host_model_expanded"]["features"][3]["name"] = 7


def _feature_policy_list(entry):
    entry["host_model_migratable"]["features"][0]["policy"] = ["require"]


def _feature_not_mapping(entry):
    entry["modes"]["host-model"]["cpu"]["features"][1] = "avx"


def _model_usable_int(entry):
    entry["modes"]["custom"]["models"][2]["usable"] = 1


def _model_vendor_int(entry):
    entry["modes"]["custom"]["models"][0]["vendor"] = 5


def _model_not_mapping(entry):
    entry["modes"]["custom"]["models"][4] = ["qemu64"]


def _model_blockers_int(entry):
    entry["modes"]["custom"]["models"][1]["blockers"] = 1


def _model_blockers_names_int(entry):
    entry["modes"]["custom"]["models"][3]["blockers"] = ["avx", 2]


def _model_blockers_text(entry):
    entry["modes"]["custom"]["models"][5]["blockers"] = "avx"


def _pair_of_three(entry):
    entry["expansion"]["host_model"]["features"][0] = ["avx", "require", "extra"]


def _pair_with_int(entry):
    entry["expansion"]["host_model"]["features"][1] = ["avx", 1]


@pytest.mark.parametrize("damage, message", [
    (_feature_name_int, "host_model_expanded.features must be a list of {name, policy}"),
    (_feature_policy_list, "host_model_migratable.features must be a list of {name, policy}"),
    (_feature_not_mapping, "modes.host-model.cpu.features must be a list of {name, policy}"),
    (_model_usable_int, "modes.custom.models[2] "),
    (_model_vendor_int, "modes.custom.models[0] "),
    (_model_not_mapping, "modes.custom.models[4] must be a mapping with a name"),
    (_model_blockers_int, "modes.custom.models[1] "),
    (_model_blockers_names_int, "modes.custom.models[3] "),
    (_model_blockers_text, "modes.custom.models[5] "),
    (_pair_of_three, "expansion.host_model.features must be a list of [name, policy] pairs"),
    (_pair_with_int, "expansion.host_model.features must be a list of [name, policy] pairs"),
])
def test_damage_is_named_the_same_through_plain_and_other_containers(damage: Callable[[dict], None], message: str):
    entry = copy.deepcopy(entries()[0])
    damage(entry)
    plain = entry_problems(entry)
    assert any(problem.startswith(message) for problem in plain), plain
    assert entry_problems(frozen(entry)) == plain
    with pytest.raises(FactsShapeError, match="are damaged: .*gather them again with hostcpu.libvirt.cpu_facts"):
        check_entry(entry)


def test_str_subclasses_are_strings():
    entry = copy.deepcopy(entries()[1])
    for feature in entry["host_model_expanded"]["features"]:
        feature["name"] = Text(feature["name"])
    for model in entry["modes"]["custom"]["models"]:
        model["vendor"] = Text(model["vendor"]) if model["vendor"] is not None else None
    assert entry_problems(entry) == []


@pytest.mark.parametrize("damage", [_model_blockers_int, _model_blockers_names_int, _model_blockers_text])
def test_damaged_blockers_are_named_with_the_fix(damage: Callable[[dict], None]):
    entry = copy.deepcopy(entries()[0])
    damage(entry)
    with pytest.raises(FactsShapeError, match=r"blockers as a list of feature names or null, got (int|a list of other items|str); "
                                              r"gather them again with hostcpu.libvirt.cpu_facts"):
        check_entry(entry)


def test_blockers_libvirt_prints_are_fine():
    entry = copy.deepcopy(entries()[0])
    models = entry["modes"]["custom"]["models"]
    models[0]["blockers"], models[1]["blockers"], models[2]["blockers"] = ["svm", Text("avx")], [], None
    assert entry_problems(entry) == []
    assert entry_problems(frozen(entry)) == []
