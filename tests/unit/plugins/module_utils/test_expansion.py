# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_expansion on what libvirt 9.0 / QEMU 7.2 really did on the test machine.

The oracle is tests/unit/fixtures/real/define: for every domain CPU given there, libvirt's live
XML after a paused start (or its error), and the -cpu option QEMU got. The expansion data is built
from the same machine's capabilities, domcapabilities, CPU map and the QEMU probe data in
tests/unit/fixtures/expansion (see its README).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Dict

import pytest

from ansible_collections.hostcpu.libvirt.plugins.module_utils import _cpu_map
from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import CPUDefinitionError, cpu_from_xml
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError, ExpansionDataError, GuestWouldNotStart
from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_map import CPUMap, cpu_map_from_xml, decode, from_hex
from ansible_collections.hostcpu.libvirt.plugins.module_utils._expansion import (
    context_for,
    guest_cpu,
    predict_live_cpu,
    prepare_for_qemu,
    qemu_cpu_option,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._expansion_data import (
    dependencies_from_map,
    expansion_data_from_xml,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts import parse_domain_capabilities

UNIT = Path(__file__).resolve().parents[2]
REAL = UNIT / "fixtures" / "real"
DEFINE = REAL / "define"
EXPANSION = UNIT / "fixtures" / "expansion"
VIRT_TYPES = ("kvm", "qemu")
NOARCH = {"name": "arch-capabilities", "policy": "disable"}
# The collection's CPU validation refuses these on purpose (_cpu_model.validate_cpu); libvirt 9.0
# accepts them: match on host-model (kept internally until the daemon restarts) and a model name
# with host-passthrough (dropped).
REFUSED_BY_DESIGN = {"kvm-hm-noarch-match-minimum": "match applies to mode custom only",
                     "qemu-hm-noarch-match-minimum": "match applies to mode custom only",
                     "kvm-hm-noarch-match-strict": "match applies to mode custom only",
                     "qemu-hm-noarch-match-strict": "match applies to mode custom only",
                     "kvm-hp-noarch-model": "a model name ('EPYC') is only meaningful with mode custom",
                     "qemu-hp-noarch-model": "a model name ('EPYC') is only meaningful with mode custom",
                     "kvm-hm-noarch-model-name": "a model name ('EPYC') is only meaningful with mode custom",
                     "qemu-hm-noarch-model-name": "a model name ('EPYC') is only meaningful with mode custom"}
# QEMU's own first message inside libvirt's "qemu unexpectedly closed the monitor: <time> ..." error
QEMU_MESSAGE = re.compile(r"qemu-system-[^:\s]+: (?!warning: )(.*?)(?= \S*\d\dT\d\d:\S* qemu-system-| qemu-system-|$)")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def cpu_map_files() -> Dict[str, str]:
    return {path.name: _text(path) for path in (EXPANSION / "cpu_map").glob("*.xml")}


def qemu_probe(virt_type: str) -> Dict[str, Any]:
    return json.loads(_text(EXPANSION / ("qemu-%s.json" % virt_type)))


def build_entry(virt_type: str) -> Dict[str, Any]:
    domcaps = _text(REAL / ("domcapabilities-%s.xml" % virt_type))
    entry = parse_domain_capabilities(domcaps)
    entry["libvirt_version"] = "9.0.0"
    entry["expansion"] = expansion_data_from_xml(cpu_map_files(), _text(REAL / "capabilities.xml"), domcaps,
                                                 qemu_probe(virt_type))
    return entry


@pytest.fixture(scope="module")
def entries() -> Dict[str, Dict[str, Any]]:
    return {virt_type: build_entry(virt_type) for virt_type in VIRT_TYPES}


def features(cpu: Dict[str, Any]) -> Dict[str, str]:
    return {f["name"]: f["policy"] for f in cpu.get("features") or ()}


def names(cpu: Dict[str, Any]):
    return [f["name"] for f in cpu.get("features") or ()]


# ---------------------------------------------------------------------------------------------
# every real case: the live XML libvirt printed, or its refusal


def _cases():
    return sorted(path.name[:-len(".given.xml")] for path in DEFINE.glob("*.given.xml"))


def _libvirt_reason(case: str) -> str:
    text = " ".join(_text(DEFINE / (case + ".error.txt")).split())
    found = QEMU_MESSAGE.search(text)
    return found.group(1) if found else text


def test_the_real_cases_are_there():
    assert len(_cases()) >= 100, "tests/unit/fixtures/real/define has %d cases" % len(_cases())


@pytest.mark.parametrize("case", _cases())
def test_prediction_equals_what_libvirt_did(entries, case):
    entry = entries[case.split("-")[0]]
    given = cpu_from_xml(_text(DEFINE / (case + ".given.xml")))
    if case in REFUSED_BY_DESIGN:
        with pytest.raises(CPUDefinitionError, match=re.escape(REFUSED_BY_DESIGN[case])):
            predict_live_cpu(given, entry)
        return
    live = DEFINE / (case + ".live.xml")
    if live.exists():
        assert predict_live_cpu(given, entry) == cpu_from_xml(_text(live))
    elif (DEFINE / (case + ".inactive.xml")).exists():
        with pytest.raises(GuestWouldNotStart) as refused:
            predict_live_cpu(given, entry)
        assert _libvirt_reason(case) in refused.value.reason
    else:
        with pytest.raises(CPUError) as refused:
            predict_live_cpu(given, entry)
        assert not isinstance(refused.value, GuestWouldNotStart), "libvirt refused the definition itself"


@pytest.mark.parametrize("case", [c for c in _cases() if (DEFINE / (c + ".qemu-cpu.txt")).exists()
                                  and c not in REFUSED_BY_DESIGN])
def test_qemu_gets_the_cpu_option_libvirt_built(entries, case):
    ctx = context_for(entries[case.split("-")[0]])
    guest = prepare_for_qemu(ctx, guest_cpu(cpu_from_xml(_text(DEFINE / (case + ".given.xml"))), ctx))
    assert qemu_cpu_option(guest) == _text(DEFINE / (case + ".qemu-cpu.txt")).strip()


@pytest.mark.parametrize("case", [c for c in _cases() if (DEFINE / (c + ".live.xml")).exists()])
def test_a_live_cpu_starts_as_itself(entries, case):
    """Migration, save/restore and a copy of the live XML start the expanded CPU again: nothing moves."""
    live = cpu_from_xml(_text(DEFINE / (case + ".live.xml")))
    assert predict_live_cpu(live, entries[case.split("-")[0]]) == live


# ---------------------------------------------------------------------------------------------
# the rules, one by one


def test_host_model_becomes_the_migratable_host_model_cpu(entries):
    live = predict_live_cpu({"mode": "host-model", "features": [NOARCH]}, entries["kvm"])
    host_model = entries["kvm"]["modes"]["host-model"]["cpu"]
    assert (live["mode"], live["match"], live["check"]) == ("custom", "exact", "full")
    assert live["model"] == {"name": host_model["model"]["name"], "fallback": "forbid"}
    assert live["vendor"] == host_model["vendor"] == "AMD"
    offered = [f["name"] for f in host_model["features"]]
    assert "invtsc" in offered and "invtsc" not in names(live), "invtsc is not migratable"
    assert names(live) == [name for name in offered if name != "invtsc"]


def test_domain_features_replace_in_place_or_are_appended_in_domain_order(entries):
    cpu = {"mode": "host-model", "features": [{"name": "avx512-fp16", "policy": "force"}, {"name": "umip", "policy": "disable"},
                                              NOARCH, {"name": "sse4.2", "policy": "disable"}]}
    live = predict_live_cpu(cpu, entries["kvm"])
    order = names(live)
    assert order.index("umip") < order.index("arch-capabilities") < order.index("pni"), "umip and arch-capabilities stay in place"
    assert order[order.index("pni") + 1:] == ["avx512-fp16", "sse4.2"], "new features follow in the domain's order"
    assert features(live)["sse4.2"] == "disable"
    assert features(live)["avx512-fp16"] == "disable", "forced, but the hypervisor cannot give it"


def test_features_libvirt_never_passes_to_qemu_are_dropped(entries):
    cpu = {"mode": "host-model", "features": [NOARCH, {"name": "cmt", "policy": "disable"}, {"name": "osxsave", "policy": "disable"}]}
    live = predict_live_cpu(cpu, entries["kvm"])
    assert "cmt" not in names(live) and "osxsave" not in names(live)


def test_removed_features_of_the_model_are_disabled(entries):
    live = predict_live_cpu({"model": {"name": "EPYC"}}, entries["qemu"])
    assert names(live)[0] == "monitor" and features(live)["monitor"] == "disable"


def test_optional_features_follow_the_host(entries):
    cpu = {"model": {"name": "486"}, "features": [{"name": "clwb", "policy": "optional"}, {"name": "avx512-fp16", "policy": "optional"}]}
    live = predict_live_cpu(cpu, entries["kvm"])
    assert features(live)["clwb"] == "require" and features(live)["avx512-fp16"] == "disable"


def test_features_the_hypervisor_cannot_give_are_disabled(entries):
    live = predict_live_cpu({"mode": "host-model", "features": [NOARCH, {"name": "pcid", "policy": "require"}]}, entries["kvm"])
    assert features(live)["pcid"] == "disable"


def test_features_the_hypervisor_adds_are_required(entries):
    live = predict_live_cpu({"model": {"name": "486"}}, entries["kvm"])
    assert features(live) == {"x2apic": "require", "hypervisor": "require"}


def test_msr_features_follow_arch_capabilities(entries):
    live = predict_live_cpu({"mode": "host-model", "features": [NOARCH]}, entries["kvm"])
    for name in ("rdctl-no", "skip-l1dfl-vmentry", "mds-no", "pschange-mc-no"):
        assert features(live)[name] == "disable"


def test_svm_features_follow_svm_under_tcg(entries):
    off = predict_live_cpu({"check": "none", "model": {"name": "EPYC"}, "features": [{"name": "svm", "policy": "disable"}]},
                           entries["qemu"])
    assert "npt" not in features(off), "npt is cleared with svm, not enabled"
    on = predict_live_cpu({"model": {"name": "EPYC"}}, entries["qemu"])
    assert features(on)["npt"] == "require", "TCG's EPYC has npt beyond libvirt's EPYC"


def test_match_minimum_takes_the_host_model_but_keeps_the_domain_vendor(entries):
    live = predict_live_cpu({"match": "minimum", "model": {"name": "qemu64"}}, entries["qemu"])
    assert live["model"]["name"] == "EPYC" and "vendor" not in live and live["match"] == "exact"


def test_passthrough_and_maximum_come_back_as_libvirt_shows_them(entries):
    assert predict_live_cpu({"mode": "host-passthrough", "features": [NOARCH]}, entries["kvm"]) == {
        "mode": "host-passthrough", "check": "none", "migratable": True, "features": [NOARCH]}
    assert predict_live_cpu({"mode": "maximum"}, entries["qemu"]) == {"mode": "maximum", "check": "none"}


def test_check_full_refuses_a_cpu_qemu_changes(entries):
    with pytest.raises(GuestWouldNotStart) as refused:
        predict_live_cpu({"check": "full", "model": {"name": "qemu64"}}, entries["qemu"])
    assert refused.value.extra_features == ["hypervisor", "lahf_lm"]
    assert refused.value.reason == "operation failed: guest CPU doesn't match specification: extra features: hypervisor,lahf_lm"


def test_nested_kvm_refusing_msr_0x10a_is_predicted_with_the_fix(entries):
    with pytest.raises(GuestWouldNotStart) as refused:
        predict_live_cpu({"mode": "host-model"}, entries["kvm"])
    assert "failed to set MSR 0x10a to 0x69" in refused.value.reason
    assert refused.value.fix == [NOARCH]
    assert refused.value.missing_features == ["rdctl-no", "skip-l1dfl-vmentry", "mds-no", "pschange-mc-no"]
    assert "disable arch-capabilities" in str(refused.value)
    with pytest.raises(GuestWouldNotStart, match="0x400000000c000069"):
        predict_live_cpu({"mode": "host-passthrough", "migratable": False}, entries["kvm"])


def test_missing_features_are_named_as_libvirt_names_them(entries):
    with pytest.raises(GuestWouldNotStart) as refused:
        predict_live_cpu({"model": {"name": "EPYC-Rome"}}, entries["kvm"])
    assert refused.value.reason == ("the CPU is incompatible with host CPU: Host CPU does not provide required features: "
                                    "svm, perfctr_core, wbnoinvd, ibpb, amd-stibp, npt, nrip-save")
    assert refused.value.missing_features[0] == "svm"


def test_unsupported_mode_is_refused(entries):
    with pytest.raises(GuestWouldNotStart, match="CPU mode 'host-passthrough' for x86_64 qemu domain on x86_64 host is not "
                                                 "supported by hypervisor; use one of the supported modes: maximum, host-model, custom"):
        predict_live_cpu({"mode": "host-passthrough"}, entries["qemu"])


def test_model_qemu_does_not_know_is_refused_or_translated(entries):
    with pytest.raises(GuestWouldNotStart, match="CPU model Icelake-Client is not supported by hypervisor"):
        predict_live_cpu({"check": "none", "model": {"name": "Icelake-Client", "fallback": "forbid"}}, entries["qemu"])
    live = predict_live_cpu({"check": "none", "model": {"name": "Icelake-Client"}}, entries["qemu"])
    known = {model["name"] for model in entries["qemu"]["modes"]["custom"]["models"]}
    assert live["model"]["name"] in known and live["model"]["fallback"] == "forbid"


def test_unknown_feature_and_model_are_refused_as_libvirt_refuses_them(entries):
    with pytest.raises(GuestWouldNotStart, match="unknown CPU feature: no-such-feature"):
        predict_live_cpu({"mode": "host-model", "features": [{"name": "no-such-feature", "policy": "require"}]}, entries["qemu"])
    with pytest.raises(GuestWouldNotStart, match="Unknown CPU model NoSuchModel"):
        predict_live_cpu({"model": {"name": "NoSuchModel"}}, entries["qemu"])


def test_invalid_definitions_are_refused_before_anything_else(entries):
    with pytest.raises(CPUDefinitionError):
        predict_live_cpu({"mode": "host-model", "features": [{"name": "clwb"}, {"name": "clwb", "policy": "disable"}]}, entries["kvm"])
    with pytest.raises(CPUDefinitionError):
        predict_live_cpu({"mode": "sideways"}, entries["kvm"])


def test_no_cpu_element_is_libvirts_qemu64(entries):
    assert predict_live_cpu(None, entries["qemu"]) == predict_live_cpu({}, entries["qemu"]) == {
        "mode": "custom", "match": "exact", "check": "full", "model": {"name": "qemu64", "fallback": "forbid"},
        "features": [{"name": "hypervisor", "policy": "require"}, {"name": "lahf_lm", "policy": "require"}]}


def test_the_input_cpu_is_not_changed(entries):
    cpu = {"mode": "host-model", "features": [NOARCH, {"name": "clwb", "policy": "optional"}]}
    before = copy.deepcopy(cpu)
    predict_live_cpu(cpu, entries["kvm"])
    assert cpu == before


# ---------------------------------------------------------------------------------------------
# the data in the facts


def test_expansion_data_is_compact_json(entries):
    for entry in entries.values():
        data = entry["expansion"]
        text = json.dumps(data)
        assert json.loads(text) == data
        assert len(text) < 20000, "expansion data of %s is %d bytes" % (entry["domain_type"], len(text))
        assert data["format"] == 1 and len(data["fingerprint"]) == 32


def test_expansion_data_carries_what_was_measured(entries):
    kvm = entries["kvm"]["expansion"]
    data = CPUMap.from_facts(kvm)
    supported = set(data.names_of(from_hex(kvm["qemu"]["supported"], "supported")))
    assert supported == set(qemu_probe("kvm")["max"])
    assert "topoext" in supported and "ht" not in supported, "no-autoenable features measured on the probe guest"
    assert kvm["qemu"]["msr_failures"] == [{"index": 266, "value": "0x400000000c000069"}]
    assert [name for name, _policy in kvm["host_model"]["features"]].count("invtsc") == 0
    assert kvm["qemu"]["unknown"] == ["osxsave", "cmt", "ospke", "pconfig", "mbm_total", "mbm_local", "cvt16"]


def test_dependency_table_explains_every_measured_dependency():
    cpu_map = cpu_map_from_xml(cpu_map_files())
    table = dependencies_from_map(cpu_map)
    for virt_type in VIRT_TYPES:
        for parent, children in qemu_probe(virt_type)["measured_dependencies"].items():
            assert set(children) <= set(table.get(parent, ())), (virt_type, parent, children)
    assert table["arch-capabilities"][:4] == ["rdctl-no", "ibrs-all", "rsba", "skip-l1dfl-vmentry"]


def test_expansion_data_is_rebuilt_identically(entries):
    again = build_entry("kvm")
    assert again["expansion"] == entries["kvm"]["expansion"]


@pytest.mark.parametrize("damage, message", [
    (lambda data: data.pop("qemu"), "'qemu' must be a mapping"),
    (lambda data: data.update(format=99), "format 99"),
    (lambda data: data["qemu"].update(supported="zz"), "not a hex bit mask"),
    (lambda data: data.update(features="fpu"), "'features' must be the list"),
])
def test_damaged_expansion_data_is_refused_clearly(entries, damage, message):
    entry = copy.deepcopy(entries["qemu"])
    damage(entry["expansion"])
    entry["expansion"]["fingerprint"] = "damaged-%s" % message
    with pytest.raises(ExpansionDataError, match=re.escape(message)):
        predict_live_cpu({"mode": "host-model"}, entry)


def test_entry_without_expansion_data_is_refused(entries):
    entry = dict(entries["qemu"], expansion=None)
    with pytest.raises(ExpansionDataError, match="'expansion' must be a mapping"):
        predict_live_cpu({}, entry)


# ---------------------------------------------------------------------------------------------
# libvirt's CPU map and decoding


def test_cpu_map_models_inherit_and_remove():
    cpu_map = cpu_map_from_xml(cpu_map_files())
    models = cpu_map["models"]
    epyc, ibpb = models["EPYC"], models["EPYC-IBPB"]
    index = {name: position for position, name in enumerate(cpu_map["features"])}
    assert ibpb["mask"] == epyc["mask"] | (1 << index["ibpb"])
    assert epyc["removed"] == ["monitor"] and not epyc["mask"] & (1 << index["monitor"])
    assert models["Skylake-Server"]["signatures"][0] == [6, 85, [0, 1, 2, 3, 4]]
    assert cpu_map["bits"]["rdctl-no"] == ("msr", 0x10A, 0) and cpu_map["bits"]["pni"] == ("cpuid", 1, 0, "ecx", 0)
    assert cpu_map["non_migratable"] == ["xsaves", "invtsc"]


def test_broken_cpu_maps_are_refused():
    files = cpu_map_files()
    with pytest.raises(ExpansionDataError, match="needs index.xml"):
        cpu_map_from_xml({name: text for name, text in files.items() if name != "index.xml"})
    with pytest.raises(ExpansionDataError, match="x86_EPYC.xml .* is missing"):
        cpu_map_from_xml({name: text for name, text in files.items() if name != "x86_EPYC.xml"})
    broken = dict(files, **{"x86_486.xml": "<cpus><model name='486'><feature name='warp-drive'/></model></cpus>"})
    with pytest.raises(ExpansionDataError, match="unknown feature 'warp-drive'"):
        cpu_map_from_xml(broken)


def test_decode_finds_the_host_model_of_libvirts_capabilities():
    cpu_map = CPUMap.from_map(cpu_map_from_xml(cpu_map_files()))
    host = cpu_from_xml(_host_cpu_xml())
    data = cpu_map.models[host["model"]["name"]].mask | cpu_map.mask(f["name"] for f in host["features"])
    decoded = decode(cpu_map, data, "AMD", (25, 17, 1), guest=False)
    assert decoded.model == host["model"]["name"] == "kvm64"
    listed = {f["name"] for f in host["features"]}
    assert [name for name, _policy in decoded.features] == [name for name in cpu_map.names if name in listed]


def _host_cpu_xml() -> str:
    text = _text(REAL / "capabilities.xml")
    start = text.index("<cpu>")
    return text[start:text.index("</cpu>", start) + len("</cpu>")]


def test_decode_refuses_data_no_model_describes():
    cpu_map = CPUMap.from_map(cpu_map_from_xml(cpu_map_files()))
    with pytest.raises(GuestWouldNotStart, match="Cannot find suitable CPU model"):
        decode(cpu_map, 0, "AMD", None, guest=True, allowed={})


def test_candidate_score_counts_disabled_features_like_libvirt():
    # libvirt's loop bound shrinks while it counts disabled features, so trailing ones are missed
    score = _cpu_map._candidate_score([("a", "require"), ("b", "disable"), ("c", "disable")], guest=True)
    assert score == (2 + 2, 2), "c is not counted"
    assert _cpu_map._candidate_score([("a", "require"), ("b", "require"), ("c", "disable"), ("d", "disable")], True) == (3 + 2, 2)
