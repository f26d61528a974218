# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The per-version rules table, and each testbed version's own CPU map and XML read with its rules.

The fixtures under tests/unit/fixtures/versions/<libvirt>/ are what libvirt 7.0, 9.0, 11.3 and 12.8
printed on the testbed hosts (make testbed-fixtures).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ansible_collections.hostcpu.libvirt.plugins.module_utils._baseline import FleetError, fleet_baseline, host_records
from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_map import cpu_map_from_xml, read_cpu_map_files
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import GuestWouldNotStart
from ansible_collections.hostcpu.libvirt.plugins.module_utils._expansion import (
    compare_with_host,
    context_for,
    guest_cpu,
    predict_live_cpu,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._expansion_data import expansion_data_from_xml
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts import parse_domain_capabilities
from ansible_collections.hostcpu.libvirt.plugins.module_utils._validation import host_problems
from ansible_collections.hostcpu.libvirt.plugins.module_utils._versions import (
    NEWEST_KNOWN,
    RULES,
    UnsupportedLibvirtVersion,
    qemu_rules_for,
    rules_for,
    version_warning,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._xml import parse_xml

VERSIONS = Path(__file__).resolve().parents[2] / "fixtures" / "versions"
TESTBED_VERSIONS = ("7.0.0", "9.0.0", "11.3.0", "12.8.0")
# What a probe that asked QEMU nothing returns: enough for the map, host and host-model parts.
NO_QEMU = {"known": [], "models": {}, "max": [], "max_migratable": [], "non_migratable": []}


def _text(version: str, name: str) -> str:
    return (VERSIONS / version / name).read_text(encoding="utf-8")


def _cpu_map(version: str):
    rules = rules_for(version)
    return cpu_map_from_xml(read_cpu_map_files(str(VERSIONS / version / "cpu_map"), rules=rules), rules=rules)


def _entry(version: str, virt_type: str):
    domcaps = _text(version, "domcapabilities-%s.xml" % virt_type)
    entry = parse_domain_capabilities(domcaps)
    entry["libvirt_version"] = version
    rules = rules_for(version)
    files = read_cpu_map_files(str(VERSIONS / version / "cpu_map"), rules=rules)
    entry["expansion"] = expansion_data_from_xml(files, _text(version, "capabilities.xml"), domcaps, NO_QEMU, rules)
    return entry


# ---------------------------------------------------------------------------------------------
# the table


def test_rows_are_in_version_order_and_start_at_the_oldest_supported():
    assert [row.since for row in RULES] == sorted(row.since for row in RULES)
    assert RULES[0].since == (7, 0, 0)


@pytest.mark.parametrize("version, has_maximum", [("7.0.0", False), ("7.0.9", False), ("7.1.0", True), ("12.8.0", True)])
def test_maximum_mode_exists_from_7_1(version, has_maximum):
    assert ("maximum" in rules_for(version).modes) is has_maximum


@pytest.mark.parametrize("version", ["10.0.0", "10.1.0", "11.3.0"])
def test_rules_of_a_version_are_those_of_the_last_row_not_newer_than_it(version):
    assert rules_for(version).topology_clusters is (version != "10.0.0")


def test_libvirt_integer_versions_and_tuples_choose_the_same_rules():
    assert rules_for(11003000) == rules_for("11.3.0") == rules_for((11, 3, 0))


def test_older_than_the_oldest_is_refused_with_the_version_and_the_fix():
    with pytest.raises(UnsupportedLibvirtVersion, match=r"libvirt 6\.10\.0 is older than 7\.0\.0.*upgrade"):
        rules_for("6.10.0")


def test_newer_than_the_newest_known_gets_the_newest_rules_and_a_warning_naming_it():
    assert rules_for("13.2.0") == RULES[-1]
    warning = version_warning("13.2.0")
    assert "libvirt 13.2.0 is newer than %s" % ".".join(map(str, NEWEST_KNOWN)) in warning
    assert version_warning("12.8.0") is None and version_warning("12.8.5") is None and version_warning("9.0.0") is None


def test_ignored_features_grew_in_11():
    assert "vmx-ept-uc" not in rules_for("9.0.0").ignored_features
    assert {"cmt", "osxsave", "vmx-ept-uc", "vmx-invvpid-single-context"} <= rules_for("11.3.0").ignored_features
    assert "cmp_legacy" not in rules_for("11.3.0").ignored_features
    assert "cmp_legacy" in rules_for("12.8.0").ignored_features, "measured: 12.8 drops it from the CPU"


# ---------------------------------------------------------------------------------------------
# each version's CPU map, read as that version's libvirt reads it


@pytest.mark.parametrize("version", TESTBED_VERSIONS)
def test_every_model_libvirt_lists_is_in_its_own_map(version):
    listed = set(json.loads(_text(version, "cpu-models.json")))
    assert listed and listed <= set(_cpu_map(version)["models"])


@pytest.mark.parametrize("version", TESTBED_VERSIONS)
def test_the_host_cpu_model_of_the_capabilities_is_in_its_own_map(version):
    host_model = parse_xml(_text(version, "capabilities.xml")).findtext("host/cpu/model").strip()
    assert host_model in _cpu_map(version)["models"]


def test_a_grouped_index_read_with_the_9_0_layout_finds_no_model():
    """What the collection did on 11.3 and 12.8 before: why their facts carried no expansion data."""
    rules = rules_for("9.0.0")
    files = read_cpu_map_files(str(VERSIONS / "11.3.0" / "cpu_map"), rules=rules)
    assert cpu_map_from_xml(files, rules=rules)["models"] == {}


@pytest.mark.parametrize("version", ["11.3.0", "12.8.0"])
def test_added_features_are_kept_out_of_the_models_data(version):
    cpu_map = _cpu_map(version)
    index = {name: position for position, name in enumerate(cpu_map["features"])}
    with_added = {name: model for name, model in cpu_map["models"].items() if model["added"]}
    assert with_added
    for model in with_added.values():
        assert not any(model["mask"] >> index[name] & 1 for name in model["added"])


def test_added_features_count_as_model_features_for_a_libvirt_that_does_not_know_them():
    rules = rules_for("9.0.0")._replace(cpu_map_includes=rules_for("11.3.0").cpu_map_includes)
    files = read_cpu_map_files(str(VERSIONS / "11.3.0" / "cpu_map"), rules=rules)
    cpu_map = cpu_map_from_xml(files, rules=rules)
    assert not any(model["added"] for model in cpu_map["models"].values())


@pytest.mark.parametrize("version", TESTBED_VERSIONS)
@pytest.mark.parametrize("virt_type", ["kvm", "qemu"])
def test_expansion_data_of_every_version_has_the_host_model_and_full_host(version, virt_type):
    entry = _entry(version, virt_type)
    data = entry["expansion"]
    host_model = entry["modes"]["host-model"]["cpu"]
    assert data["host_model"]["model"] == host_model["model"]["name"]
    assert data["host"] is not None and int(data["host"]["features"], 16)
    assert context_for(entry).rules == rules_for(version)


# ---------------------------------------------------------------------------------------------
# check='partial' by each version's rule (qemuDomainCheckCPU in 11.x, virCPUCompare before)


def _blocked_model(entry, compat: bool):
    """A model of the entry that QEMU reports unusable with blockers, with or without the compat check."""
    ctx = context_for(entry)
    for model in entry["modes"]["custom"]["models"]:
        info = ctx.map.models.get(model["name"])
        if model.get("usable") is False and model.get("blockers") and info and info.compat_check is compat:
            return model
    return None


@pytest.mark.parametrize("version", ["11.3.0", "12.8.0"])
def test_a_model_without_compat_check_is_refused_by_qemus_blockers(version):
    entry = _entry(version, "kvm")
    model = _blocked_model(entry, compat=False)
    assert model is not None
    ctx = context_for(entry)
    with pytest.raises(GuestWouldNotStart) as refused:
        compare_with_host(ctx, guest_cpu({"mode": "custom", "check": "partial", "model": {"name": model["name"]}}, ctx))
    assert refused.value.reason == ("the CPU is incompatible with host CPU: Host CPU does not provide required features: %s"
                                    % ", ".join(model["blockers"]))


@pytest.mark.parametrize("version", ["11.3.0", "12.8.0"])
def test_disabling_every_blocker_passes_the_blockers_check(version):
    entry = _entry(version, "kvm")
    model = _blocked_model(entry, compat=False)
    ctx = context_for(entry)
    cpu = {"mode": "custom", "check": "partial", "model": {"name": model["name"]},
           "features": [{"name": name, "policy": "disable"} for name in model["blockers"]]}
    compare_with_host(ctx, guest_cpu(cpu, ctx))


def test_a_usable_model_with_only_disabled_features_is_not_compared_on_11():
    entry = _entry("11.3.0", "kvm")
    usable = next(model["name"] for model in entry["modes"]["custom"]["models"] if model.get("usable") is True)
    ctx = context_for(entry)
    compare_with_host(ctx, guest_cpu({"mode": "custom", "check": "partial", "model": {"name": usable},
                                      "features": [{"name": "vmx", "policy": "disable"}]}, ctx))


# ---------------------------------------------------------------------------------------------
# validation before any write (cpu_problems, domain_cpu) by each host's version and map


def test_maximum_is_refused_for_libvirt_7_0_naming_its_modes():
    problems = host_problems({"mode": "maximum"}, "kvm", _entry("7.0.0", "kvm"))
    assert problems == ["libvirt 7.0.0 does not know CPU mode 'maximum' (it refuses the definition: Invalid mode "
                        "attribute); use one of its modes: custom, host-model, host-passthrough"]
    assert host_problems({"mode": "maximum"}, "kvm", _entry("9.0.0", "kvm")) == []


def test_a_feature_only_a_newer_map_knows_is_refused_on_the_older_host_with_its_names():
    newer_only = sorted(set(_cpu_map("12.8.0")["features"]) - set(_cpu_map("9.0.0")["features"]))
    cpu = {"mode": "host-model", "features": [{"name": newer_only[0], "policy": "disable"}]}
    assert host_problems(cpu, "kvm", _entry("12.8.0", "kvm")) == []
    problems = host_problems(cpu, "kvm", _entry("9.0.0", "kvm"))
    assert len(problems) == 1
    assert problems[0].startswith("unknown CPU feature '%s' (not in the CPU map of libvirt 9.0.0 on that host)" % newer_only[0])
    assert host_problems(cpu, "kvm", _entry("9.0.0", "kvm"), partial=True) == problems, "a merged change too"


# ---------------------------------------------------------------------------------------------
# the fleet CPU over hosts of every version (their cpu_facts as recorded on the testbed)


def _facts(version: str):
    return json.loads(_text(version, "cpu_facts.json"))


@pytest.mark.parametrize("virt_types", [("kvm",), ("qemu",), ("kvm", "qemu")], ids=["kvm", "qemu", "mixed"])
def test_the_fleet_cpu_of_every_version_is_one_live_cpu_everywhere_whatever_the_order(virt_types):
    hosts = [{"name": "%s-%s" % (version, virt_type), "facts": _facts(version), "virt_type": virt_type}
             for version in TESTBED_VERSIONS for virt_type in virt_types]
    baseline = fleet_baseline(host_records(hosts))
    assert baseline.proved
    live = {json.dumps(predict_live_cpu(baseline.cpu, host["facts"]["virt_types"][host["virt_type"]]),
                       sort_keys=True) for host in hosts}
    assert len(live) == 1, "every host predicts the same live CPU"
    for shuffled in (list(reversed(hosts)), hosts[1:] + hosts[:1]):
        assert fleet_baseline(host_records(shuffled)).cpu == baseline.cpu
    oldest = set(_cpu_map("7.0.0")["features"])
    assert {feature["name"] for feature in baseline.cpu.get("features") or ()} <= oldest, "only names every libvirt knows"


def test_a_model_only_newer_maps_have_is_refused_for_a_mixed_fleet_naming_the_models_to_use():
    newer_only = sorted(set(_cpu_map("12.8.0")["models"]) - set(_cpu_map("7.0.0")["models"]))
    hosts = [{"name": version, "facts": _facts(version), "virt_type": "qemu"} for version in ("7.0.0", "12.8.0")]
    with pytest.raises(FleetError, match="model '%s' is not in libvirt's CPU map of every host; use one of: 486, "
                       % newer_only[0]):
        fleet_baseline(host_records(hosts), model=newer_only[0])


@pytest.mark.parametrize("version, penalizes, keeps", [("7.0.0", False, False), ("9.0.0", True, False),
                                                       ("10.5.0", True, True), ("11.3.0", True, True)])
def test_decode_and_unknown_disabled_feature_rules(version, penalizes, keeps):
    rules = rules_for(version)
    assert (rules.decode_penalizes_disabled, rules.keeps_unknown_disabled_features) == (penalizes, keeps)


def test_an_unnamed_group_of_the_index_is_not_read():
    """loadIncludes reads include | group[@name]/include."""
    files = read_cpu_map_files(str(VERSIONS / "11.3.0" / "cpu_map"))
    files["index.xml"] = files["index.xml"].replace("<group name='generic'>", "<group>", 1)
    assert "486" not in cpu_map_from_xml(files, rules=rules_for("11.3.0"))["models"]
    assert "pentium" in cpu_map_from_xml(files, rules=rules_for("11.3.0"))["models"]


@pytest.mark.parametrize("version, sets_ht", [("5.2.0", False), ("7.2.22", False), ("10.0.13", True), ("11.1.3", True)])
def test_qemu_10_sets_ht_for_multi_core_packages(version, sets_ht):
    assert qemu_rules_for(version).topology_sets_ht is sets_ht


def test_maxphysaddr_is_dropped_at_define_before_8_7():
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import normalize_cpu
    cpu = {"mode": "host-model", "maxphysaddr": {"mode": "emulate", "bits": 42}}
    assert "maxphysaddr" not in normalize_cpu(cpu, "kvm", (7, 0, 0))
    assert normalize_cpu(cpu, "kvm", (9, 0, 0))["maxphysaddr"] == {"mode": "emulate", "bits": 42}


def test_the_decoders_model_order_survives_facts_with_sorted_keys():
    """Ansible may hand facts back with sorted keys; the decoder walks libvirt's map order."""
    entry = _entry("11.3.0", "kvm")
    shuffled = json.loads(json.dumps(entry, sort_keys=True))
    assert list(shuffled["expansion"]["models"]) != shuffled["expansion"]["model_order"]
    assert context_for(shuffled).map.model_order == list(_cpu_map("11.3.0")["models"])


@pytest.mark.parametrize("version", ["11.3.0", "12.8.0"])
def test_translation_blockers_are_those_libvirt_reports(version):
    """hvModel->blockers: domcapabilities' list; QEMU clears features hanging on ones a model lacks."""
    facts = _facts(version)["virt_types"]["kvm"]
    reported = {model["name"]: model["blockers"] for model in facts["modes"]["custom"]["models"] if model.get("blockers")}
    assert reported
    unreported = json.loads(json.dumps(facts))
    for model in unreported["modes"]["custom"]["models"]:
        model.pop("blockers", None)
        model["usable"] = None
    ctx = context_for(unreported)
    computed = {name: set(ctx.map.names_of(ctx.allowed[name])) for name in reported}
    assert computed == {name: set(blockers) for name, blockers in reported.items()}, "as QEMU computes them"


@pytest.mark.parametrize("version, checks", [("7.0.0", False), ("7.1.0", False), ("7.2.0", True), ("9.0.0", True)])
def test_the_forbidden_feature_check_before_start_exists_from_7_2(version, checks):
    assert rules_for(version).checks_forbidden_features is checks
