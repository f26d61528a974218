# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_baseline on this machine's facts (kvm and qemu as a two-host fleet), libvirt's own baseline of
them, libvirt 9.0's baseline test data (tests/cputestdata) and synthetic fleets derived from the
real facts.

The oracle is libvirt: its baseline of the same CPUs (fixtures/fleet, captured with
baselineHypervisorCPU), the results in its test data, and what starting guests showed
(fixtures/real/outcomes.json). Feature sets are compared through libvirt's CPU map.
"""

from __future__ import annotations

import json
from pathlib import Path
import random
from typing import Any, Dict, List

import pytest
from lxml import etree

from fleet_facts import (
    CPUTESTDATA,
    FLEET,
    LIBVIRT_SRC,
    REAL,
    cputest_entry,
    read,
    real_facts,
    variant,
    without_expansion,
)

from ansible_collections.hostcpu.libvirt.plugins.module_utils import _baseline
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError
from ansible_collections.hostcpu.libvirt.plugins.module_utils._shape import FactsShapeError
from ansible_collections.hostcpu.libvirt.plugins.module_utils._migration import migration_verdict
from ansible_collections.hostcpu.libvirt.plugins.module_utils._baseline import (
    FleetError,
    HostRecord,
    compatibility,
    cpu_verdict,
    enabled_features,
    fleet_baseline,
    group_hosts,
    host_records,
    libvirt_cpu_xml,
    runs_on,
    select_entry,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import (
    CPUDefinitionError,
    cpu_from_element,
    cpu_from_xml,
    validate_cpu,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_map import CPUMap, cpu_map_from_xml, read_cpu_map_files
from ansible_collections.hostcpu.libvirt.plugins.module_utils._expansion import predict_live_cpu
from ansible_collections.hostcpu.libvirt.plugins.module_utils._xml import parse_xml

MISSING_TESTDATA = ("libvirt's test data is missing at %s: run `make testdata` (or set HOSTCPU_LIBVIRT_SRC to an "
                    "unpacked libvirt source tree)" % CPUTESTDATA)


@pytest.fixture(scope="module")
def facts() -> Dict[str, Any]:
    return real_facts()


@pytest.fixture(scope="module")
def fleet(facts) -> List[HostRecord]:
    return host_records([{"name": "kvm-host", "facts": facts, "virt_type": "kvm"},
                         {"name": "qemu-host", "facts": facts, "virt_type": "qemu"}])


@pytest.fixture(scope="module")
def cpu_map(facts) -> CPUMap:
    return CPUMap.from_facts(facts["virt_types"]["kvm"]["expansion"])


@pytest.fixture(scope="module")
def baseline(fleet):
    return fleet_baseline(fleet)


def _libvirt_baseline(name: str = "libvirt-baseline-kvm.xml") -> Dict[str, Any]:
    return cpu_from_xml(read(FLEET / name))


# --- the real two-virt-type fleet -------------------------------------------------------------


def test_baseline_cpu_shape(baseline):
    cpu = baseline.cpu
    assert cpu["mode"] == "custom"
    assert cpu["match"] == "exact"
    assert cpu["check"] == "full"
    assert cpu["model"] == {"name": "pentium3", "fallback": "forbid"}
    assert cpu["vendor"] == "AMD"
    assert baseline.proved is True
    assert baseline.hosts == ["kvm-host", "qemu-host"]


def test_baseline_model_is_usable_everywhere_and_best(facts, baseline, cpu_map):
    usable = [set(m["name"] for m in facts["virt_types"][vt]["modes"]["custom"]["models"] if m["usable"])
              for vt in ("kvm", "qemu")]
    everywhere = usable[0] & usable[1]
    assert set(baseline.model_candidates) == everywhere
    sizes = {name: len(cpu_map.names_of(cpu_map.models[name].mask)) for name in everywhere}
    assert sizes[baseline.cpu["model"]["name"]] == max(sizes.values())


def test_baseline_features_equal_libvirts_baseline(baseline, cpu_map):
    """The same feature set as virConnectBaselineHypervisorCPU of the two host-model CPUs (kvm64 - pni + 8)."""
    ours = enabled_features(baseline.cpu, cpu_map)
    for name in ("libvirt-baseline-kvm.xml", "libvirt-baseline-qemu-migratable.xml"):
        theirs = enabled_features(_libvirt_baseline(name), cpu_map)
        assert ours == theirs, (sorted(ours ^ theirs), name)
    assert len(ours) == 33
    assert set(baseline.common_features) == ours


def test_libvirts_expanded_baseline_lists_the_same_set(baseline, cpu_map):
    expanded = _libvirt_baseline("libvirt-baseline-kvm-expand.xml")
    listed = {f["name"] for f in expanded["features"] if f["policy"] == "require"}
    assert listed == enabled_features(baseline.cpu, cpu_map)


def test_baseline_disables_what_kvm_would_add(baseline):
    """QEMU adds x2apic under kvm; vme is in pentium3 but TCG's host-model lacks it."""
    disabled = [f["name"] for f in baseline.cpu["features"] if f["policy"] == "disable"]
    assert disabled == ["vme", "x2apic"]
    assert "kvm-host" in baseline.dropped["x2apic"] and "adds it" in baseline.dropped["x2apic"]
    assert baseline.dropped["vme"] == "not on qemu-host"
    assert baseline.dropped["svm"] == "not on kvm-host"


def test_baseline_runs_identically_on_both(fleet, baseline, cpu_map):
    lives = [predict_live_cpu(baseline.cpu, record.entry) for record in fleet]
    assert lives[0] == lives[1]
    assert enabled_features(lives[0], cpu_map) == set(baseline.common_features)


def test_libvirts_baseline_with_check_full_fails_under_kvm(fleet):
    """Why the baseline is not libvirt's as is: with check=full, kvm adds vme and x2apic to kvm64."""
    theirs = dict(_libvirt_baseline(), check="full")
    verdict = cpu_verdict(theirs, fleet[0].entry)
    assert verdict["runs"] is False
    assert verdict["extra_features"] == ["vme", "x2apic"]
    assert cpu_verdict(theirs, fleet[1].entry)["runs"] is True


def test_libvirts_baseline_with_check_partial_runs_differently(fleet, cpu_map):
    theirs = dict(_libvirt_baseline(), check="partial")
    lives = [enabled_features(predict_live_cpu(theirs, record.entry), cpu_map) for record in fleet]
    assert lives[0] - lives[1] == {"vme", "x2apic"}


def test_single_virt_type_baselines_leave_out_what_nested_kvm_refuses(facts, cpu_map):
    """kvm alone: the host-model CPU needs arch-capabilities disabled here; so does the baseline."""
    kvm = fleet_baseline(host_records([facts], "kvm"))
    names = {f["name"]: f["policy"] for f in kvm.cpu.get("features") or ()}
    for feature in ("arch-capabilities", "rdctl-no", "skip-l1dfl-vmentry", "mds-no", "pschange-mc-no", "invtsc"):
        assert names.get(feature) != "require", feature
    libvirts = enabled_features(cpu_from_xml(read(REAL / "baseline-kvm.xml")), cpu_map)
    ours = enabled_features(kvm.cpu, cpu_map)
    assert ours < libvirts
    assert libvirts - ours == {"arch-capabilities", "rdctl-no", "skip-l1dfl-vmentry", "mds-no", "pschange-mc-no", "invtsc"}
    assert "does not start a host-model guest with it" in kvm.dropped["arch-capabilities"]
    assert runs_on(kvm.cpu, facts["virt_types"]["kvm"])
    assert not runs_on(cpu_from_xml(read(REAL / "baseline-kvm.xml")), facts["virt_types"]["kvm"])


def test_qemu_alone_drops_what_tcg_does_not_give_the_model(facts, cpu_map):
    qemu = fleet_baseline(host_records([facts], "qemu"))
    assert runs_on(qemu.cpu, facts["virt_types"]["qemu"])
    assert enabled_features(predict_live_cpu(qemu.cpu, facts["virt_types"]["qemu"]), cpu_map) == set(qemu.common_features)
    assert "rdtscp" in qemu.dropped and "refuses it" in qemu.dropped["rdtscp"]


def test_check_partial_baseline_has_the_same_features(fleet, baseline, cpu_map):
    partial = fleet_baseline(fleet, check="partial")
    assert partial.cpu["check"] == "partial"
    assert enabled_features(partial.cpu, cpu_map) == enabled_features(baseline.cpu, cpu_map)


def test_chosen_model(fleet, cpu_map, baseline):
    cpu = fleet_baseline(fleet, model="kvm64").cpu
    assert cpu["model"]["name"] == "kvm64"
    assert {"name": "pni", "policy": "disable"} in cpu["features"]
    assert enabled_features(cpu, cpu_map) == enabled_features(baseline.cpu, cpu_map)
    assert all(runs_on(cpu, record.entry) for record in fleet)


def test_baseline_refuses_facts_it_cannot_prove_on_and_names_their_hosts(facts, cpu_map):
    """Facts without expansion data gave a CPU no host started (measured on the testbed): refused now."""
    records = [HostRecord("kvm-host", facts["virt_types"]["kvm"]),
               HostRecord("saved-xml-host", without_expansion(facts["virt_types"]["qemu"]))]
    with pytest.raises(FleetError) as refused:
        fleet_baseline(records, cpu_map=cpu_map)
    message = str(refused.value)
    assert message.startswith("saved-xml-host: the facts carry no expansion data") and "kvm-host" not in message
    assert "hostcpu.libvirt.cpu_facts" in message


def test_baseline_of_one_host_is_stable_under_order(facts):
    records = host_records([{"name": "a", "facts": facts, "virt_type": "qemu"},
                            {"name": "b", "facts": facts, "virt_type": "kvm"}])
    assert fleet_baseline(records).cpu == fleet_baseline(list(reversed(records))).cpu


# --- synthetic fleets derived from the real facts ------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(facts) -> List[HostRecord]:
    rng = random.Random(5)
    records = []
    for index in range(40):
        virt_type = "kvm" if index % 2 else "qemu"
        entry = variant(facts["virt_types"][virt_type], rng, rng.randint(0, 4))
        records.append(HostRecord("host%02d" % index, entry))
    return records


def test_synthetic_fleet_baseline_runs_identically_everywhere(synthetic, cpu_map):
    result = fleet_baseline(synthetic)
    assert result.proved
    lives = {json.dumps(predict_live_cpu(result.cpu, record.entry), sort_keys=True) for record in synthetic}
    assert len(lives) == 1
    expected = set(result.common_features)
    assert enabled_features(json.loads(lives.pop()), cpu_map) == expected
    for record in synthetic:
        assert expected <= _baseline.host_view(record.entry).features


def test_synthetic_fleet_groups(synthetic):
    groups = group_hosts(synthetic)
    assert sum(len(group["hosts"]) for group in groups) == len(synthetic)
    assert len({group["key"] for group in groups}) == len(groups)
    assert len(groups) > 20


def test_dropped_features_name_the_hosts_without_them(synthetic, facts):
    result = fleet_baseline(synthetic)
    full_kvm = _baseline.host_view(facts["virt_types"]["kvm"]).features
    full_qemu = _baseline.host_view(facts["virt_types"]["qemu"]).features
    both = full_kvm & full_qemu
    lost = both - set(result.common_features)
    assert lost, "the variants drop some common features"
    for name in lost:
        assert name in result.dropped


# --- whole facts, entries, records ----------------------------------------------------------


def test_select_entry_forms(facts):
    kvm = facts["virt_types"]["kvm"]
    assert select_entry(facts) is kvm
    assert select_entry({"hostcpu": facts}, "qemu") is facts["virt_types"]["qemu"]
    assert select_entry(kvm) is kvm
    assert select_entry(kvm, "kvm") is kvm


@pytest.mark.parametrize("value, virt_type, message", [
    ("facts", None, "must be ansible_facts.hostcpu"),
    ("foo", None, "have neither 'virt_types' nor 'modes'"),
    ("kvm-entry", "qemu", "are those of virt type 'kvm', not 'qemu'"),
    ("no-qemu", "qemu", "have no virt type 'qemu' (they have: kvm)"),
    ("facts-dict", "xen", "unknown virt type 'xen'"),
])
def test_select_entry_refuses(facts, value, virt_type, message):
    values = {"kvm-entry": facts["virt_types"]["kvm"], "facts-dict": facts, "foo": {"foo": 1},
              "no-qemu": {"virt_types": {"kvm": facts["virt_types"]["kvm"]}}}
    with pytest.raises(FactsShapeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        select_entry(values.get(value, value), virt_type)


def test_host_records_forms(facts):
    by_name = host_records({"a": facts, "b": facts["virt_types"]["qemu"]}, "kvm")
    assert [(r.name, r.entry["domain_type"]) for r in by_name] == [("a", "kvm"), ("b", "qemu")]
    listed = host_records([facts, {"name": "x", "facts": facts, "virt_type": "qemu"}])
    assert [(r.name, r.entry["domain_type"]) for r in listed] == [("host 1", "kvm"), ("x", "qemu")]
    with pytest.raises(FleetError, match="must be a list of host facts"):
        host_records("kvm")
    with pytest.raises(FactsShapeError, match="the facts of host 2 have neither"):
        host_records([facts, {"x": 1}])


# --- refusals ---------------------------------------------------------------------------------


def test_empty_fleet():
    with pytest.raises(FleetError, match="the list of hosts is empty"):
        fleet_baseline([])


def test_mixed_architectures(facts):
    other = json.loads(json.dumps(facts["virt_types"]["qemu"]))
    other["arch"] = "aarch64"
    other["fingerprint"] = "other"
    with pytest.raises(FleetError, match=r"different architectures \(x86_64: a; aarch64: b\).*one baseline per architecture"):
        fleet_baseline([HostRecord("a", facts["virt_types"]["kvm"]), HostRecord("b", other)])


def _other_vendor(entry, vendor="Intel"):
    other = json.loads(json.dumps(entry))
    other["modes"]["host-model"]["cpu"]["vendor"] = vendor
    other["fingerprint"] = vendor.lower()
    return other


def test_mixed_vendors(facts):
    other = _other_vendor(facts["virt_types"]["kvm"])
    with pytest.raises(FleetError, match=r"different vendors \(AMD: a; Intel: b\).*one baseline per vendor"):
        fleet_baseline([HostRecord("a", facts["virt_types"]["kvm"]), HostRecord("b", other)])


def test_a_tcg_host_has_no_hardware_vendor(facts):
    """TCG's host-model vendor is that of QEMU's 'max' model (AMD on QEMU 7.2 on any machine): an
    Intel kvm host and a TCG host have a fleet CPU, of a model that fits the hardware, without <vendor>."""
    kvm = facts["virt_types"]["kvm"]
    tcg = _other_vendor(facts["virt_types"]["qemu"])
    baseline = fleet_baseline([HostRecord("a", kvm), HostRecord("b", tcg)])
    assert "vendor" not in baseline.cpu
    fitting = {m["name"] for m in kvm["modes"]["custom"]["models"] if m["vendor"] in ("AMD", "unknown", None)}
    assert baseline.cpu["model"]["name"] in fitting
    assert fleet_baseline([HostRecord("a", kvm), HostRecord("b", facts["virt_types"]["qemu"])]).cpu["vendor"] == "AMD"


@pytest.mark.parametrize("check, message", [("none", "silently drop"), ("exact", "must be one of full, partial")])
def test_bad_check(fleet, check, message):
    with pytest.raises(FleetError, match=message):
        fleet_baseline(fleet, check=check)


def test_unknown_model(fleet):
    with pytest.raises(FleetError, match="model 'Zen9' is not in libvirt's CPU map of every host; use one of: 486, pentium"):
        fleet_baseline(fleet, model="Zen9")


def test_no_usable_model(facts):
    entry = json.loads(json.dumps(facts["virt_types"]["kvm"]))
    for model in entry["modes"]["custom"]["models"]:
        model["usable"] = False
    entry["fingerprint"] = "none-usable"
    with pytest.raises(FleetError, match="no CPU model is usable .* on every host of vendor AMD; pass model="):
        fleet_baseline([HostRecord("a", entry)])


def test_facts_without_any_expansion(facts):
    entry = without_expansion(facts["virt_types"]["kvm"])
    entry.pop("host_model_migratable")
    entry["fingerprint"] = "bare"
    with pytest.raises(FleetError, match="a: the facts of virt type kvm carry neither expansion data nor the expanded"):
        fleet_baseline([HostRecord("a", entry)])


# --- runs_on and why not ----------------------------------------------------------------------


def test_epyc_under_kvm_is_refused_with_the_missing_features(facts):
    error = read(REAL / "define" / "kvm-c-EPYC.error.txt") if (REAL / "define" / "kvm-c-EPYC.error.txt").exists() else None
    verdict = cpu_verdict({"mode": "custom", "model": {"name": "EPYC"}}, facts["virt_types"]["kvm"])
    assert verdict["runs"] is False
    assert "svm" in verdict["missing_features"]
    assert verdict["unusable_model"] == "EPYC"
    assert {"name": "svm", "policy": "disable"} in verdict["fix"]
    assert verdict["live_cpu"] is None
    if error is not None:
        assert "svm" in error


def test_host_model_under_nested_kvm_needs_arch_capabilities_disabled(facts):
    kvm = facts["virt_types"]["kvm"]
    verdict = cpu_verdict({"mode": "host-model"}, kvm)
    assert verdict["runs"] is False
    assert verdict["fix"] == [{"name": "arch-capabilities", "policy": "disable"}]
    assert "MSR 0x10a" in verdict["reason"]
    fixed = {"mode": "host-model", "features": verdict["fix"]}
    assert runs_on(fixed, kvm)
    assert cpu_verdict(fixed, kvm)["live_cpu"]["mode"] == "custom"


OUTCOMES = REAL / "outcomes.json"


def test_real_start_outcomes_are_there():
    assert OUTCOMES.exists(), "fixtures/real/outcomes.json (what starting guests showed on this machine) is missing"
    assert len(_outcome_cases()) >= 20


def _outcome_cases():
    if not OUTCOMES.exists():
        return []
    outcomes = json.loads(read(OUTCOMES))
    cases = []
    for virt_type, by_case in outcomes.items():
        for case, outcome in sorted(by_case.items()):
            given = REAL / "define" / ("%s-%s.given.xml" % (virt_type, case))
            if outcome.get("defined") and given.exists() and outcome.get("error_stage") in (None, "start"):
                cases.append(pytest.param(virt_type, case, bool(outcome.get("started")), id="%s-%s" % (virt_type, case)))
    return cases


@pytest.mark.parametrize("virt_type, case, started", _outcome_cases())
def test_runs_on_agrees_with_real_starts(facts, virt_type, case, started):
    """runs_on says what starting the guest on this machine showed (fixtures/real/outcomes.json).

    CPUs libvirt accepts but silently changes (a host-model with a match or a model name, ...) are
    refused by the collection's validation instead, with the fix.
    """
    cpu = cpu_from_xml(read(REAL / "define" / ("%s-%s.given.xml" % (virt_type, case))))
    try:
        validate_cpu(cpu)
    except CPUDefinitionError:
        with pytest.raises(CPUDefinitionError, match="remove"):
            runs_on(cpu, facts["virt_types"][virt_type])
        return
    assert runs_on(cpu, facts["virt_types"][virt_type]) is started


def test_cpu_verdict_needs_expansion_data(facts):
    with pytest.raises(FleetError, match="carry no expansion data"):
        cpu_verdict({"mode": "host-model"}, without_expansion(facts["virt_types"]["qemu"]))


def test_cpu_verdict_refuses_invalid_cpus(facts):
    with pytest.raises(CPUDefinitionError, match="migratable is only supported"):
        cpu_verdict({"mode": "custom", "migratable": True}, facts["virt_types"]["qemu"])


def test_migration_keeps_the_virt_type(fleet, baseline):
    kvm, qemu = fleet[0].entry, fleet[1].entry
    live_kvm = predict_live_cpu(baseline.cpu, kvm)
    assert migration_verdict(live_kvm, kvm, kvm)["outcome"] == "kept"
    verdict = migration_verdict(live_kvm, qemu, kvm)
    assert verdict["outcome"] == "refused"
    assert verdict["refusal"] == "the guest runs under kvm, the destination's facts are those of its qemu guests"


# --- the report data --------------------------------------------------------------------------


def test_compatibility(fleet):
    guests = [
        {"name": "web", "cpu": {"mode": "host-model"}, "host": "qemu-host"},
        {"name": "db", "cpu": "<cpu mode='custom'><model>EPYC</model></cpu>"},
        {"name": "app"},
    ]
    report = compatibility(fleet, guests)
    assert [g["id"] for g in report["groups"]] == ["G1", "G2"]
    assert [g["hosts"] for g in report["groups"]] == [["kvm-host"], ["qemu-host"]]
    assert report["groups"][0]["baseline"]["cpu"]["model"]["name"] == "pentium3"
    assert report["baseline"]["groups"] == ["G1", "G2"]
    rows = {g["name"]: g for g in report["guests"]}
    assert list(rows) == ["fleet CPU", "web", "db", "app"]
    assert rows["fleet CPU"]["runs_on"] == ["G1", "G2"]
    assert rows["fleet CPU"]["migrates_to"] == []
    assert "the guest runs under kvm" in rows["fleet CPU"]["migration"]["G2"]["refusal"]
    assert rows["app"]["cpu"] == report["baseline"]["cpu"]
    assert rows["web"]["source_group"] == "G2"
    assert rows["web"]["runs_on"] == ["G2"]
    assert "MSR 0x10a" in rows["web"]["groups"]["G1"]["reason"]
    assert rows["web"]["migrates_to"] == []
    assert rows["web"]["migration"]["G1"]["outcome"] == "refused"
    assert [(path["from"], path["to"]) for path in rows["web"]["paths"]] == [("G2", "G1")]
    assert rows["db"]["runs_on"] == ["G2"]
    assert "svm" in rows["db"]["groups"]["G1"]["missing_features"]
    json.dumps(report)


def test_compatibility_of_four_libvirt_versions():
    versions = Path(__file__).resolve().parents[2] / "fixtures" / "versions"
    records = [HostRecord(v, json.loads((versions / v / "cpu_facts.json").read_text())["virt_types"]["qemu"])
               for v in ("7.0.0", "9.0.0", "11.3.0", "12.8.0")]
    report = compatibility(records, [{"name": "hm", "cpu": {"mode": "host-model"}, "host": "9.0.0"},
                                     {"name": "q35", "machine": "pc-q35-10.0", "host": "11.3.0"}])
    assert report["machine"] == {"families": {"pc-i440fx": "pc-i440fx-5.2", "pc-q35": "pc-q35-5.2"}, "family": "pc-i440fx",
                                 "guest_machine": "pc-i440fx-5.2", "error": None}
    rows = {g["name"]: g for g in report["guests"]}
    fleet = rows["fleet CPU"]
    assert fleet["machine"] == "pc-i440fx-5.2" and len(fleet["paths"]) == 12
    assert all(path["outcome"] == "kept" for path in fleet["paths"])
    assert rows["hm"]["source_group"] == "G2" and rows["hm"]["migrates_to"] == []
    assert rows["hm"]["migration"]["G3"]["refusal"].endswith("missing features: pcommit")
    assert rows["hm"]["migration"]["G1"]["refusal"].endswith("unknown CPU feature: pks")
    assert rows["q35"]["migrates_to"] == ["G4"]
    assert "does not support machine type 'pc-q35-10.0'" in rows["q35"]["migration"]["G1"]["refusal"]


def test_compatibility_refusals(fleet):
    with pytest.raises(FleetError, match="guest x: host 'nowhere' is not one of the fleet's hosts"):
        compatibility(fleet, [{"name": "x", "host": "nowhere"}])
    with pytest.raises(FleetError, match="baseline hosts nowhere are not among the fleet's hosts"):
        compatibility(fleet, [], ["nowhere"])
    with pytest.raises(FleetError, match="each guest must be a mapping with a name"):
        compatibility(fleet, [{"cpu": {}}])
    with pytest.raises(CPUError, match="the CPU of guest x must be a CPU dict"):
        compatibility(fleet, [{"name": "x", "cpu": 3}])


def test_compatibility_reports_a_missing_baseline(facts):
    other = _other_vendor(facts["virt_types"]["kvm"])
    report = compatibility([HostRecord("a", facts["virt_types"]["kvm"]), HostRecord("b", other)], [])
    assert report["baseline"]["cpu"] is None
    assert "different vendors" in report["baseline"]["error"]
    assert [g["name"] for g in report["guests"]] == []


# --- libvirt's own CPU input conversion (cpu_baseline) -------------------------------------


def test_libvirt_cpu_xml(facts):
    text = libvirt_cpu_xml(facts, "qemu", "cpus[0]")
    assert cpu_from_xml(text)["model"]["name"] == "EPYC"
    # An entry is taken as it is; the virt type picks the entry of whole facts only.
    assert libvirt_cpu_xml(facts["virt_types"]["qemu"], "kvm", "cpus[1]") == text
    assert cpu_from_xml(libvirt_cpu_xml(facts, "kvm", "cpus[2]"))["model"]["name"] == "kvm64"
    assert parse_xml(text, "x").get("mode") == "custom"
    assert libvirt_cpu_xml("<cpu><model>EPYC</model></cpu>", None, "x") == "<cpu><model>EPYC</model></cpu>"
    assert cpu_from_xml(libvirt_cpu_xml({"model": {"name": "486"}}, None, "x")) == {"model": {"name": "486"}}
    with pytest.raises(FleetError, match="cpus\\[1\\] is <domain> XML"):
        libvirt_cpu_xml("<domain/>", None, "cpus[1]")
    with pytest.raises(FleetError, match="must be <cpu> XML text, a CPU dict or a host's hostcpu facts, got int"):
        libvirt_cpu_xml(3, None, "x")
    with pytest.raises(CPUDefinitionError):
        libvirt_cpu_xml({"mode": "bogus"}, None, "x")


# --- libvirt 9.0's baseline test data (make testdata) ------------------------------------------


def _cputest_cases():
    if not CPUTESTDATA.is_dir():
        return []
    cases = []
    for path in sorted(CPUTESTDATA.glob("x86_64-baseline-*.xml")):
        name = path.name[len("x86_64-baseline-"):-len(".xml")]
        if name.endswith(("-result", "-expanded", "-migratable")):
            continue
        results = [CPUTESTDATA / ("x86_64-baseline-%s-%s.xml" % (name, kind)) for kind in ("result", "expanded", "migratable")]
        results = [result for result in results if result.exists()]
        cases.append(pytest.param([path], results, id=name))
    for path in sorted(CPUTESTDATA.glob("x86_64-cpuid-baseline-*.xml")):
        cases.append(pytest.param(path, [path], id="cpuid-" + path.name[len("x86_64-cpuid-baseline-"):-len(".xml")]))
    return cases


CPUID_BASELINE_INPUTS = {
    "Ryzen+Rome": ("Ryzen-7-1800X-Eight-Core", "Ryzen-9-3900X-12-Core"),
    "EPYC+Rome": ("EPYC-7601-32-Core", "EPYC-7502-32-Core"),
    "Haswell-noTSX-IBRS+Skylake": ("Xeon-E5-2609-v3", "Xeon-Gold-6148"),
    "Haswell-noTSX-IBRS+Skylake-IBRS": ("Xeon-E5-2609-v3", "Xeon-Gold-6130"),
    "Broadwell-IBRS+Cascadelake": ("Xeon-E5-2623-v4", "Xeon-Platinum-8268"),
    "Cascadelake+Skylake-IBRS": ("Xeon-Platinum-8268", "Xeon-Gold-6130"),
    "Cascadelake+Skylake": ("Xeon-Platinum-9242", "Xeon-Gold-6148"),
    "Cascadelake+Icelake": ("Xeon-Platinum-9242", "Ice-Lake-Server"),
    "Cooperlake+Icelake": ("Cooperlake", "Ice-Lake-Server"),
    "Cooperlake+Cascadelake": ("Cooperlake", "Xeon-Platinum-9242"),
    "Skylake-Client+Server": ("Core-i5-6600", "Xeon-Gold-6148"),
    "Haswell-noTSX-IBRS+Broadwell": ("Xeon-E5-2609-v3", "Xeon-E5-2650-v4"),
    "Haswell+Skylake": ("Xeon-E7-8890-v3", "Xeon-Gold-5115"),
}


@pytest.fixture(scope="module")
def libvirt_map():
    assert CPUTESTDATA.is_dir(), MISSING_TESTDATA
    files = read_cpu_map_files(str(LIBVIRT_SRC / "src" / "cpu_map"))
    raw = cpu_map_from_xml(files)
    return CPUMap.from_map(raw), raw["non_migratable"]


def _input_cpus(source) -> List[Dict[str, Any]]:
    if isinstance(source, list):
        root = etree.fromstring(source[0].read_bytes())
        return [cpu_from_element(el) for el in root.iter("cpu")]
    label = source.name[len("x86_64-cpuid-baseline-"):-len(".xml")]
    return [cpu_from_xml(read(CPUTESTDATA / ("x86_64-cpuid-%s-json.xml" % name))) for name in CPUID_BASELINE_INPUTS[label]]


def test_libvirt_cputestdata_is_there():
    assert CPUTESTDATA.is_dir(), MISSING_TESTDATA
    assert len(_cputest_cases()) >= 19


@pytest.mark.parametrize("source, results", _cputest_cases())
def test_libvirt_baseline_testdata(libvirt_map, source, results):
    """Our baseline equals libvirt's, or is a stricter subset that every input CPU still runs."""
    cpu_map, non_migratable = libvirt_map
    cpus = _input_cpus(source)
    records = [HostRecord("cpu%d" % index, cputest_entry(cpu, cpu_map, non_migratable, "cpu%d" % index))
               for index, cpu in enumerate(cpus)]
    if not results:
        with pytest.raises(FleetError, match="different vendors"):
            fleet_baseline(records, cpu_map=cpu_map, unproved=True)
        return
    ours = fleet_baseline(records, cpu_map=cpu_map, unproved=True)
    our_set = enabled_features(ours.cpu, cpu_map)
    hosts = [frozenset(f["name"] for f in record.entry["host_model_migratable"]["features"]) for record in records]
    assert all(our_set <= host for host in hosts)
    for result in results:
        theirs = enabled_features(cpu_from_xml(read(result)), cpu_map)
        assert our_set <= theirs, (result.name, sorted(our_set - theirs))
        assert theirs - our_set <= set(non_migratable), (result.name, sorted(theirs - our_set))
    vendors = {cpu.get("vendor") for cpu in cpus}
    assert ours.cpu.get("vendor") == (vendors.pop() if len(vendors) == 1 else None)


def test_guests_of_one_cpu_and_machine_share_their_paths_and_each_path_is_found_by_its_index():
    versions = Path(__file__).resolve().parents[2] / "fixtures" / "versions"
    records = [HostRecord(v, json.loads((versions / v / "cpu_facts.json").read_text())["virt_types"]["qemu"])
               for v in ("7.0.0", "9.0.0", "11.3.0", "12.8.0")]
    guests = [{"name": "a", "cpu": "fleet", "host": "7.0.0"}, {"name": "b", "cpu": "fleet", "host": "12.8.0"},
              {"name": "c", "cpu": "fleet", "host": "9.0.0", "machine": "pc-q35-5.2"},
              {"name": "d", "cpu": {"mode": "host-model"}, "host": "9.0.0"}]
    rows = {g["name"]: g for g in compatibility(records, guests)["guests"]}
    # judged once for a and b (same CPU and machine), apart for another machine or another CPU
    assert rows["a"]["paths"] is rows["b"]["paths"] and rows["a"]["source_group"] != rows["b"]["source_group"]
    assert rows["c"]["paths"] is not rows["a"]["paths"] and rows["d"]["paths"] is not rows["a"]["paths"]
    assert rows["a"]["paths"] == rows["fleet CPU"]["paths"]
    for row in rows.values():
        pairs = [(path["from"], path["to"]) for path in row["paths"]]
        assert sorted((origin, target) for origin, targets in row["path_index"].items() for target in targets) == sorted(pairs)
        for origin, targets in row["path_index"].items():
            for target, index in targets.items():
                assert (row["paths"][index]["from"], row["paths"][index]["to"]) == (origin, target)
    assert rows["d"]["path_index"] and set(rows["d"]["path_index"]) == set(rows["d"]["runs_on"])
