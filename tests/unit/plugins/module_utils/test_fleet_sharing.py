# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a fleet shares between its hosts: the decoded CPU map, the prediction contexts, the checks
of facts that claim (by their fingerprints) to be a host already checked. Counted, not timed."""

from __future__ import annotations

import copy
import json
import random
import re
from typing import Any, Dict, List

import pytest

from fleet_facts import real_facts, facts_by_version, variant

from ansible_collections.hostcpu.libvirt.plugins.module_utils import _baseline, _expansion, _shape
from ansible_collections.hostcpu.libvirt.plugins.module_utils import _cpu_map
from ansible_collections.hostcpu.libvirt.plugins.module_utils._shape import FactsShapeError, entry_identity, select_entries


@pytest.fixture(autouse=True)
def empty_caches():
    for cache in (_baseline._VIEWS, _expansion._CONTEXTS, _cpu_map._CPU_MAPS, _cpu_map._MAPS_OF_DATA, _shape._CHECKED,  # pylint: disable=protected-access
                  _expansion._SHARED, _baseline._HOST_MODEL_CPUS):  # pylint: disable=protected-access
        cache.clear()
    yield


def copies(entry: Dict[str, Any], count: int) -> List[Dict[str, Any]]:
    """Separate copies, as hostvars hold each host's facts."""
    return [json.loads(json.dumps(entry)) for _copy in range(count)]


def kinds(count: int, seed: int = 3) -> List[Dict[str, Any]]:
    rng = random.Random(seed)
    entry = real_facts()["virt_types"]["qemu"]
    return [variant(entry, rng, rng.randint(1, 4)) for _copy in range(count)]


def count_calls(monkeypatch, owner: Any, name: str) -> List[int]:
    calls = [0]
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)
    monkeypatch.setattr(owner, name, counted)
    return calls


def test_hosts_with_one_cpu_map_share_its_decoding(monkeypatch):
    hosts = kinds(6)
    decoded = count_calls(monkeypatch, _cpu_map.CPUMap, "from_facts")
    contexts = [_expansion.context_for(entry) for entry in hosts]
    assert len({id(context) for context in contexts}) == 6
    assert len({id(context.map) for context in contexts}) == 1
    assert decoded[0] == 1


def test_a_mixed_version_fleet_decodes_each_libvirts_map_once(monkeypatch):
    """kvm and qemu of one libvirt carry one map; each of the four versions its own."""
    entries = [entry for facts in facts_by_version().values() for virt_type in ("kvm", "qemu")
               for entry in copies(facts["virt_types"][virt_type], 3)]
    decoded = count_calls(monkeypatch, _cpu_map.CPUMap, "from_facts")
    maps = [_expansion.context_for(entry).map for entry in entries] + [_cpu_map.cpu_map_of(entry["expansion"]) for entry in entries]
    assert decoded[0] == len({id(cpu_map) for cpu_map in maps}) == 4
    assert [cpu_map.names for cpu_map in maps[:24:6]] == [_cpu_map.CPUMap.from_facts(facts["virt_types"]["kvm"]["expansion"]).names
                                                          for facts in facts_by_version().values()]


def test_a_different_cpu_map_is_decoded_on_its_own():
    first, second = copies(real_facts()["virt_types"]["qemu"], 2)
    models = second["expansion"]["models"]
    name = next(iter(models))
    models[name]["features"] = _cpu_map.to_hex(_cpu_map.from_hex(models[name]["features"], name) ^ 1)
    second["expansion"]["fingerprint"] = "changed-map"
    one, other = _expansion.context_for(first), _expansion.context_for(second)
    assert one.map is not other.map
    assert one.map.models[name].mask ^ 1 == other.map.models[name].mask


def test_fleet_baseline_decodes_each_distinct_host_once(monkeypatch):
    hosts = kinds(40)
    built = count_calls(monkeypatch, _expansion, "Context")
    records = [_baseline.HostRecord("h%d" % index, entry) for index, entry in enumerate(hosts)]
    distinct = len({_baseline.host_key(entry) for entry in hosts})
    _baseline.fleet_baseline(records)
    assert built[0] == distinct > 30


def test_copies_of_one_host_are_checked_once(monkeypatch):
    checked = count_calls(monkeypatch, _shape, "entry_problems")
    entries = copies(real_facts()["virt_types"]["kvm"], 50) + copies(real_facts()["virt_types"]["qemu"], 50)
    selected = select_entries([(entry, None, "the facts of h%d" % index, False) for index, entry in enumerate(entries)])
    assert [id(entry) for entry, _identity in selected] == [id(entry) for entry in entries]
    assert len({identity for _entry, identity in selected}) == 2
    assert checked[0] == 2


def test_a_damaged_copy_with_its_own_fingerprint_is_refused_naming_the_host():
    good, damaged = copies(real_facts()["virt_types"]["kvm"], 2)
    damaged["modes"]["custom"]["models"][2]["usable"] = "yes"
    damaged["expansion"]["fingerprint"] = "edited"
    with pytest.raises(FactsShapeError, match="the facts of h2 .*modes.custom.models"):
        select_entries([(good, None, "the facts of h1", False), (damaged, None, "the facts of h2", False)])


def test_a_copy_claiming_a_checked_hosts_fingerprints_is_that_host():
    """Its other keys are never read: the fleet works on the first entry of each identity."""
    good, claimed = copies(real_facts()["virt_types"]["kvm"], 2)
    claimed["modes"]["custom"]["models"][2]["usable"] = "yes"
    assert entry_identity(claimed) == entry_identity(good)
    records = [_baseline.HostRecord("h1", good), _baseline.HostRecord("h2", claimed)]
    selected = select_entries([(good, None, "h1", False), (claimed, None, "h2", False)])
    assert [entry for entry, _identity in selected] == [good, claimed]
    assert _baseline.fleet_baseline(records).cpu == _baseline.fleet_baseline(records[:1]).cpu
    with pytest.raises(FactsShapeError, match="modes.custom.models"):
        select_entries([(claimed, None, "h2", False)])


@pytest.mark.parametrize("damage", [
    lambda entry: entry.pop("fingerprint"),
    lambda entry: entry.update(fingerprint=""),
    lambda entry: entry["expansion"].update(fingerprint=7),
    lambda entry: entry.update(arch=["x86_64"]),
    lambda entry: entry.update(domain_type=None),
    lambda entry: entry["host_model_migratable"].update(features="avx"),
    lambda entry: entry["host_model_migratable"]["features"].append({"name": 5}),
    lambda entry: entry.update(host_model_migratable=[]),
])
def test_without_a_trustworthy_identity_every_entry_is_checked(damage):
    good = copy.deepcopy(real_facts()["virt_types"]["kvm"])
    entry = copy.deepcopy(good)
    damage(entry)
    assert entry_identity(entry) is None
    if _shape.entry_problems(entry):
        with pytest.raises(FactsShapeError, match="the facts of h2"):
            select_entries([(good, None, "the facts of h1", False), (entry, None, "the facts of h2", False)])


def _edited(entry: Dict[str, Any], edit) -> Dict[str, Any]:
    entry = copy.deepcopy(entry)
    edit(entry)
    return entry


def test_each_entry_gets_its_own_identity_whatever_came_before_with_the_same_fingerprints():
    """select_entries reuses the identity of an earlier entry with equal migratable features: never for
    entries that differ, and the same as entry_identity works out alone."""
    good = real_facts()["virt_types"]["kvm"]
    features = good["host_model_migratable"]["features"]
    entries = copies(good, 2) + [
        _edited(good, lambda entry: entry.update(host_model_migratable=None)),
        _edited(good, lambda entry: entry["host_model_migratable"]["features"][0].update(policy="disable")),
        _edited(good, lambda entry: entry["host_model_migratable"]["features"].reverse()),
        _edited(good, lambda entry: entry["host_model_migratable"]["features"].pop()),
        _edited(good, lambda entry: entry["host_model_migratable"].update(features=[dict(f, policy=f.get("policy")) for f in features])),
    ] + copies(good, 1)
    selected = select_entries([(entry, None, "host %d" % index, False) for index, entry in enumerate(entries)])
    identities = [identity for _entry, identity in selected]
    assert identities == [entry_identity(entry) for entry in entries]
    assert identities[0] == identities[1] == identities[-1]
    assert len(set(identities[:6])) == 5 and identities[2][-1] is None


def test_many_entries_claiming_one_host_with_other_features_each_get_their_own_identity():
    good = real_facts()["virt_types"]["kvm"]
    count = _shape.IDENTITY_CANDIDATES + 4
    entries = [_edited(good, lambda entry, drop=drop: entry["host_model_migratable"]["features"].pop(drop))
               for drop in range(count)]
    selected = select_entries([(entry, None, "host %d" % index, False) for index, entry in enumerate(entries + entries)])
    identities = [identity for _entry, identity in selected]
    assert len(set(identities)) == count
    assert identities == [entry_identity(entry) for entry in entries + entries]


def _with_new_fingerprint(entry: Dict[str, Any], label: str) -> Dict[str, Any]:
    entry["fingerprint"] = "edited-%s" % label
    entry["expansion"]["fingerprint"] = "edited-%s" % label
    return entry


def test_hosts_share_the_decoded_parts_of_their_facts_only_when_equal():
    """Model definitions, MSR bits and model lists are decoded once for equal hosts, and never
    shared by hosts whose parts differ in one value, in the type of a usable= (true is == 1) or
    in the order of a mapping (the MSR bits a refusal names keep the host's order)."""
    base = real_facts()["virt_types"]["kvm"]
    same, unusable, one, reordered = (_with_new_fingerprint(entry, str(index)) for index, entry in enumerate(copies(base, 4)))
    name = next(model["name"] for model in base["modes"]["custom"]["models"] if model["usable"] is True)
    next(model for model in unusable["modes"]["custom"]["models"] if model["name"] == name)["usable"] = False
    next(model for model in one["modes"]["custom"]["models"] if model["name"] == name)["usable"] = 1
    reordered["expansion"]["msr"] = dict(reversed(list(base["expansion"]["msr"].items())))
    first, *others = [_expansion.context_for(entry) for entry in (base, same, unusable, one, reordered)]
    assert len({id(context) for context in [first] + others}) == 5
    assert others[0].qemu_models is first.qemu_models and others[0].usable is first.usable and others[0].msr is first.msr
    assert others[1].usable[name] is False and first.usable[name] is True
    assert others[2].usable[name] == 1 and others[2].usable[name] is not True
    assert others[3].msr == first.msr and list(others[3].msr) == list(reversed(list(first.msr)))


def test_a_host_whose_usable_models_differ_in_one_model_gets_its_own_view():
    base = real_facts()["virt_types"]["kvm"]
    first, other = copies(base, 2)
    name = next(model["name"] for model in base["modes"]["custom"]["models"] if model["usable"] is True)
    next(model for model in other["modes"]["custom"]["models"] if model["name"] == name)["usable"] = False
    other["fingerprint"] = "one-model-unusable"
    views = [host.view for host in _baseline.distinct_hosts([_baseline.HostRecord("a", first), _baseline.HostRecord("b", other)])]
    assert len(views) == 2
    assert name in views[0].usable and views[1].usable == views[0].usable - {name}


def test_cpu_definitions_predict_as_each_prediction_alone():
    """A CPU predicted on many hosts is validated and normalised once per virt type and libvirt version."""
    entries = [facts["virt_types"][virt_type] for facts in facts_by_version().values() for virt_type in ("kvm", "qemu")]
    cpus = [{"mode": "host-model"}, {"mode": "custom", "model": {"name": "qemu64"}, "check": "full"},
            {"mode": "custom", "model": {"name": "qemu64"}, "features": [{"name": "nx", "policy": "disable"}]}]
    definitions = _expansion.CPUDefinitions()
    for cpu in cpus:
        for entry in entries:
            try:
                expected = _expansion.predict_live_cpu(cpu, entry)
            except _expansion.GuestWouldNotStart as exc:
                with pytest.raises(_expansion.GuestWouldNotStart, match=re.escape(str(exc))):
                    _expansion.predict_live_guest(cpu, entry, definitions)
                continue
            assert _expansion.predict_live_guest(cpu, entry, definitions)[1].as_dict() == expected
    versions = {(entry["domain_type"], entry["libvirt_version"]) for entry in entries}
    assert len(definitions._valid) == len(cpus)  # pylint: disable=protected-access
    assert len(definitions._normalized) == len(cpus) * len(versions)  # pylint: disable=protected-access


def test_models_changed_in_place_between_calls_are_compared_again():
    """Within one call a part passed again as the same object is not compared again; the next call compares it."""
    entry = copy.deepcopy(real_facts()["virt_types"]["kvm"])
    name = next(model["name"] for model in entry["modes"]["custom"]["models"] if model["usable"] is True)
    first = _baseline.distinct_hosts([_baseline.HostRecord("a", entry)])[0].view
    next(model for model in entry["modes"]["custom"]["models"] if model["name"] == name)["usable"] = False
    entry["fingerprint"] = "one-model-unusable"
    second = _baseline.distinct_hosts([_baseline.HostRecord("a", entry)])[0].view
    assert name in first.usable and second.usable == first.usable - {name}
    assert _expansion._SHARED._same is None  # pylint: disable=protected-access


def test_policy_masks_are_the_features_of_each_policy():
    entry = real_facts()["virt_types"]["kvm"]
    ctx = _expansion.context_for(entry)
    policies = ("force", "require", "optional", "disable", "forbid")
    names = ctx.map.names[:12] + ["no-such-feature"]
    cpu = _expansion.GuestCPU({"mode": "custom", "model": {"name": "qemu64"},
                               "features": [{"name": name, "policy": policies[index % 5]} for index, name in enumerate(names)]})
    masks = cpu.policy_masks(ctx)
    for policy in policies:
        assert masks.get(policy, 0) == ctx.map.mask([name for name, given in cpu.features.items() if given == policy])
    enabling = ctx.map.mask([name for name, given in cpu.features.items() if given in ("force", "require")])
    disabling = ctx.map.mask([name for name, given in cpu.features.items() if given in ("disable", "forbid")])
    assert cpu.data(ctx) == (ctx.model_mask("qemu64") | enabling) & ~disabling
