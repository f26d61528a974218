# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The filters live_cpu, cpu_xml and cpu_from_xml: thin wrappers with one clear error per bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.hostcpu.libvirt.plugins.filter.cpu import (
    FilterModule,
    cpu_from_xml,
    cpu_problems,
    cpu_xml,
    live_cpu,
    live_cpu_prediction,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._expansion_data import expansion_data_from_xml
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts import build_facts

UNIT = Path(__file__).resolve().parents[2]
REAL = UNIT / "fixtures" / "real"
DEFINE = REAL / "define"
EXPANSION = UNIT / "fixtures" / "expansion"
NOARCH = {"name": "arch-capabilities", "policy": "disable"}


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def facts():
    """ansible_facts.hostcpu as cpu_facts builds it, through JSON like Ansible carries it."""
    cpu_map = {path.name: _text(path) for path in (EXPANSION / "cpu_map").glob("*.xml")}
    capabilities = _text(REAL / "capabilities.xml")
    domcaps = {virt_type: _text(REAL / ("domcapabilities-%s.xml" % virt_type)) for virt_type in ("kvm", "qemu")}
    data = {virt_type: expansion_data_from_xml(cpu_map, capabilities, domcaps[virt_type],
                                               json.loads(_text(EXPANSION / ("qemu-%s.json" % virt_type))))
            for virt_type in domcaps}
    built = build_facts(capabilities, domcaps, {"libvirt_version": 9000000, "hypervisor_version": 7002022},
                        expansion_data=data)
    return json.loads(json.dumps(built))


def test_the_collection_has_the_three_filters():
    assert set(FilterModule().filters()) >= {"live_cpu", "live_cpu_prediction", "cpu_problems", "cpu_xml", "cpu_from_xml"}


# ---------------------------------------------------------------------------------------------
# live_cpu


def test_live_cpu_takes_the_whole_facts_and_a_virt_type(facts):
    expected = cpu_from_xml(_text(DEFINE / "qemu-hm.live.xml"))
    assert live_cpu({"mode": "host-model"}, facts, "qemu") == expected
    assert live_cpu({"mode": "host-model"}, {"hostcpu": facts}, "qemu") == expected, "ansible_facts works too"


def test_live_cpu_takes_one_virt_types_entry_without_virt_type(facts):
    expected = cpu_from_xml(_text(DEFINE / "kvm-hm-noarch.live.xml"))
    cpu = {"mode": "host-model", "features": [NOARCH]}
    assert live_cpu(cpu, facts["virt_types"]["kvm"]) == expected
    assert live_cpu(cpu, facts) == expected, "kvm is the default virt type"


def test_live_cpu_takes_cpu_and_domain_xml(facts):
    given = _text(DEFINE / "qemu-c-EPYC.given.xml")
    expected = cpu_from_xml(_text(DEFINE / "qemu-c-EPYC.live.xml"))
    assert live_cpu(given, facts, "qemu") == expected
    domain = "<domain type='qemu'><name>x</name>%s</domain>" % given
    assert live_cpu(domain, facts, "qemu") == expected
    assert live_cpu("", facts, "qemu") == live_cpu(None, facts, "qemu") == cpu_from_xml(_text(DEFINE / "qemu-no-cpu.live.xml"))


def test_live_cpu_does_not_change_the_facts(facts):
    before = copy.deepcopy(facts)
    live_cpu({"mode": "host-model", "features": [NOARCH]}, facts)
    assert facts == before


def test_live_cpu_refusal_names_libvirts_reason_and_the_fix(facts):
    with pytest.raises(AnsibleFilterError) as refused:
        live_cpu({"mode": "host-model"}, facts, "kvm")
    message = str(refused.value)
    assert message.startswith("live_cpu: libvirt would not start this guest: ")
    assert "failed to set MSR 0x10a to 0x69" in message and "disable arch-capabilities" in message
    with pytest.raises(AnsibleFilterError, match="Host CPU does not provide required features: avx512-fp16"):
        live_cpu({"mode": "host-model", "features": [{"name": "avx512-fp16", "policy": "require"}]}, facts, "qemu")


@pytest.mark.parametrize("cpu, message", [
    (42, "the CPU must be a CPU dict (like {mode: host-model}) or <cpu> XML text, got int"),
    ([{"mode": "host-model"}], "got list"),
    ({"mode": "sideways"}, "mode 'sideways' is not valid"),
    ({"mode": "host-model", "colour": "blue"}, "unknown CPU keys colour"),
    ("<cpu mode='host-model'", "is not well-formed XML"),
    ("<memory>1</memory>", "expected <cpu> XML, got <memory>"),
    ("<!DOCTYPE cpu [<!ENTITY x SYSTEM 'file:///etc/passwd'>]><cpu mode='custom'><model>&x;</model></cpu>",
     "contains a DOCTYPE or ENTITY declaration"),
])
def test_live_cpu_refuses_what_is_not_a_cpu(facts, cpu, message):
    with pytest.raises(AnsibleFilterError) as refused:
        live_cpu(cpu, facts, "qemu")
    assert message in str(refused.value)
    assert str(refused.value).startswith("live_cpu: ")


@pytest.mark.parametrize("host_facts, virt_type, message", [
    (None, "kvm", "host_facts must be ansible_facts.hostcpu from hostcpu.libvirt.cpu_facts"),
    (["kvm"], "kvm", "got list"),
    ({"arch": "x86_64"}, "kvm", "host_facts have neither 'virt_types' nor 'modes'"),
    ({"virt_types": {"kvm": "yes"}}, "kvm", "host_facts: virt_types.kvm is not a virt type entry"),
])
def test_live_cpu_refuses_facts_of_the_wrong_shape(host_facts, virt_type, message):
    with pytest.raises(AnsibleFilterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        live_cpu({"mode": "host-model"}, host_facts, virt_type)


def test_live_cpu_refuses_an_unknown_or_absent_virt_type(facts):
    with pytest.raises(AnsibleFilterError, match="unknown virt type 'xen'; valid virt types are: kvm, qemu"):
        live_cpu({"mode": "host-model"}, facts, "xen")
    only_qemu = dict(facts, virt_types={"qemu": facts["virt_types"]["qemu"]})
    with pytest.raises(AnsibleFilterError, match=r"no virt type 'kvm' \(they have: qemu\); pass virt_type='qemu'"):
        live_cpu({"mode": "host-model"}, only_qemu)
    with pytest.raises(AnsibleFilterError, match="those of virt type 'qemu', not 'kvm'"):
        live_cpu({"mode": "host-model"}, facts["virt_types"]["qemu"], "kvm")


def test_live_cpu_refuses_facts_without_expansion_data(facts):
    entry = dict(facts["virt_types"]["qemu"])
    entry.pop("expansion")
    with pytest.raises(AnsibleFilterError, match="carry no expansion data; gather them with hostcpu.libvirt.cpu_facts"):
        live_cpu({"mode": "host-model"}, entry)
    entry["expansion"] = {"format": 1, "fingerprint": "broken"}
    with pytest.raises(AnsibleFilterError, match="expansion data: 'models' must be a mapping"):
        live_cpu({"mode": "host-model"}, entry)


# ---------------------------------------------------------------------------------------------
# cpu_xml and cpu_from_xml


def _live_files():
    return sorted(DEFINE.glob("*.live.xml"))


@pytest.mark.parametrize("path", _live_files(), ids=lambda path: path.name)
def test_cpu_xml_prints_what_libvirt_printed(path):
    text = _text(path).strip()
    assert cpu_xml(cpu_from_xml(text)) == text


def test_cpu_from_xml_reads_a_domain_and_one_without_cpu():
    assert cpu_from_xml("<domain type='kvm'><name>x</name><cpu mode='host-model' check='partial'/></domain>") == {
        "mode": "host-model", "check": "partial"}
    assert cpu_from_xml("<domain type='kvm'><name>x</name></domain>") == {}


@pytest.mark.parametrize("value, message", [
    ({"mode": "host-model"}, "cpu_from_xml: expected <cpu> XML text, got dict"),
    ("<cpu mode='custom'><topology sockets='x' cores='1' threads='1'/></cpu>", "is not a whole number"),
    ("<!DOCTYPE lol [<!ENTITY lol 'lol'>]><cpu/>", "contains a DOCTYPE or ENTITY declaration"),
])
def test_cpu_from_xml_refuses_bad_input(value, message):
    with pytest.raises(AnsibleFilterError, match=message):
        cpu_from_xml(value)


@pytest.mark.parametrize("cpu, indent, message", [
    ("<cpu/>", 2, "cpu_xml: the CPU must be a CPU dict like {mode: host-model}, got str"),
    ({"mode": "host-model", "migratable": True}, 2, "migratable is only supported with host-passthrough or maximum"),
    ({"mode": "custom"}, -1, "indent must be a whole number >= 0"),
])
def test_cpu_xml_refuses_bad_input(cpu, indent, message):
    with pytest.raises(AnsibleFilterError, match=message.replace("{", r"\{").replace("}", r"\}")):
        cpu_xml(cpu, indent)


def test_cpu_xml_indent():
    assert cpu_xml({"mode": "custom", "model": {"name": "EPYC"}}, 4) == "<cpu mode='custom'>\n    <model>EPYC</model>\n</cpu>"


# ---------------------------------------------------------------------------------------------
# live_cpu_prediction: live_cpu with the refusal as an answer


def test_live_cpu_prediction_is_live_cpus_answer_when_the_guest_starts(facts):
    live = cpu_from_xml(_text(DEFINE / "qemu-hm.live.xml"))
    prediction = live_cpu_prediction({"mode": "host-model"}, facts, "qemu")
    assert prediction == {"cpu": live_cpu({"mode": "host-model"}, facts, "qemu"), "error": None, "fix": None, "match": None,
                          "unpredictable": None, "warning": None}
    assert prediction["cpu"] == live


def test_live_cpu_prediction_warns_for_a_libvirt_newer_than_the_newest_known(facts):
    entry = dict(facts["virt_types"]["qemu"], libvirt_version="13.2.0")
    prediction = live_cpu_prediction({"mode": "host-model"}, entry)
    assert prediction["cpu"] == live_cpu({"mode": "host-model"}, facts, "qemu"), "the newest rules (9.0's hold there)"
    assert prediction["warning"].startswith("libvirt 13.2.0 is newer than 12.8.0")


def test_live_cpu_refuses_facts_of_a_libvirt_older_than_7_0(facts):
    entry = dict(facts["virt_types"]["qemu"], libvirt_version="6.10.0")
    with pytest.raises(AnsibleFilterError, match=r"libvirt 6\.10\.0 is older than 7\.0\.0"):
        live_cpu({"mode": "host-model"}, entry)


def test_live_cpu_prediction_returns_the_refusal_and_its_fix(facts):
    prediction = live_cpu_prediction({"mode": "host-model"}, facts, "kvm")
    assert prediction["cpu"] is None and prediction["match"] is None
    assert prediction["error"].startswith("libvirt would not start this guest: ")
    assert "failed to set MSR 0x10a to 0x69" in prediction["error"]
    assert {"name": "arch-capabilities", "policy": "disable"} in prediction["fix"]
    with pytest.raises(AnsibleFilterError) as refused:
        live_cpu({"mode": "host-model"}, facts, "kvm")
    assert str(refused.value) == "live_cpu: " + prediction["error"], "the same words as live_cpu's failure"


def test_live_cpu_prediction_compares_with_the_live_cpu_libvirt_printed(facts):
    given = _text(DEFINE / "qemu-c-EPYC.given.xml")
    live_xml = _text(DEFINE / "qemu-c-EPYC.live.xml")
    assert live_cpu_prediction(given, facts, "qemu", live=live_xml)["match"] is True
    assert live_cpu_prediction(given, facts, "qemu", live=cpu_from_xml(live_xml))["match"] is True
    other = cpu_from_xml(_text(DEFINE / "qemu-hm.live.xml"))
    assert live_cpu_prediction(given, facts, "qemu", live=other)["match"] is False
    assert live_cpu_prediction({"mode": "host-model"}, facts, "kvm", live=other)["match"] is None, "no prediction, no match"


@pytest.mark.parametrize("cpu, live, message", [
    ({"mode": "sideways"}, None, "mode 'sideways' is not valid"),
    ({"mode": "host-model"}, 42, "live must be a CPU dict"),
])
def test_live_cpu_prediction_still_fails_for_what_is_not_a_cpu(facts, cpu, live, message):
    with pytest.raises(AnsibleFilterError) as refused:
        live_cpu_prediction(cpu, facts, "qemu", live=live)
    assert str(refused.value).startswith("live_cpu_prediction: ") and message in str(refused.value)


def test_live_cpu_prediction_says_why_facts_without_expansion_data_give_none(facts):
    entry = dict(facts["virt_types"]["qemu"])
    entry.pop("expansion")
    prediction = live_cpu_prediction({"mode": "host-model"}, entry)
    assert prediction["cpu"] is prediction["error"] is prediction["fix"] is prediction["match"] is None
    assert prediction["unpredictable"].startswith("live_cpu_prediction: the host facts of virt type 'qemu' carry no expansion data")
    with pytest.raises(AnsibleFilterError, match="mode 'sideways' is not valid"):
        live_cpu_prediction({"mode": "sideways"}, entry)


# ---------------------------------------------------------------------------------------------
# cpu_problems: domain_cpu's checks before anything is defined


def test_cpu_problems_finds_none_in_cpus_the_host_starts(facts):
    assert cpu_problems({"mode": "host-model"}, facts, "qemu") == []
    assert cpu_problems({"mode": "custom", "model": {"name": "qemu64"}}, facts, "qemu") == []
    assert cpu_problems(_text(DEFINE / "qemu-c-EPYC.given.xml"), facts, "qemu") == []
    assert cpu_problems(None, facts, "qemu") == cpu_problems({}, facts) == [], "no <cpu>: libvirt's default"


def test_cpu_problems_names_a_mode_the_virt_type_does_not_support(facts):
    problems = cpu_problems({"mode": "host-passthrough"}, facts, "qemu")
    assert len(problems) == 1
    assert problems[0].startswith("CPU mode 'host-passthrough' is not supported for qemu guests on this host")
    assert "use one of the supported modes: maximum, host-model, custom" in problems[0]
    assert cpu_problems({"mode": "host-passthrough"}, facts, "kvm") == []


def test_cpu_problems_names_an_unknown_model_and_the_close_ones(facts):
    problems = cpu_problems({"model": {"name": "EPYC-Romee"}}, facts["virt_types"]["qemu"])
    assert len(problems) == 1
    assert problems[0].startswith("CPU model 'EPYC-Romee' is not known to QEMU for qemu guests on this host")
    assert "did you mean 'EPYC-Rome'" in problems[0]


def test_cpu_problems_applies_libvirts_grammar(facts):
    refused = ["mode 'sideways' is not valid; use one of: custom, host-model, host-passthrough, maximum"]
    assert cpu_problems({"mode": "sideways"}, facts, "qemu") == refused
    assert cpu_problems(42, facts, "qemu") == ["the CPU must be a CPU dict (like {mode: host-model}) or <cpu> XML text, got int"]


def test_cpu_problems_checks_each_guest_under_its_virt_type(facts):
    guests = [
        {"name": "a", "virt_type": "qemu", "cpu": {"mode": "host-passthrough"}},
        {"name": "b", "virt_type": "kvm", "cpu": {"mode": "host-passthrough"}},
        {"name": "c", "virt_type": "qemu", "cpu": None},
        {"name": "d", "cpu": {"model": {"name": "NoSuchModel"}}},
        {"name": "e", "virt_type": "qemu", "cpu": {"mode": "maximum", "match": "exact"}},
    ]
    problems = cpu_problems(guests, facts)
    assert [problem.split(":", 1)[0] for problem in problems] == ["a", "d", "e"]
    assert "CPU mode 'host-passthrough' is not supported for qemu guests" in problems[0]
    assert "CPU model 'NoSuchModel' is not known to QEMU for kvm guests" in problems[1], "kvm is the default virt type"
    assert "match" in problems[2]


def test_cpu_problems_reports_a_virt_type_the_facts_lack(facts):
    only_qemu = dict(facts, virt_types={"qemu": facts["virt_types"]["qemu"]})
    problems = cpu_problems([{"name": "a", "virt_type": "kvm", "cpu": {"mode": "host-model"}}], only_qemu)
    assert problems == ["a: host_facts have no virt type 'kvm' (they have: qemu); pass virt_type='qemu' or probe that "
                        "virt type with hostcpu.libvirt.cpu_facts"]


@pytest.mark.parametrize("cpus, host_facts, message", [
    ([{"cpu": {"mode": "host-model"}}], None, "each guest must be a mapping {name, cpu, virt_type}"),
    (["web1"], None, "each guest must be a mapping {name, cpu, virt_type}, got 'web1'"),
    ({"mode": "host-model"}, {"arch": "x86_64"}, "host_facts have neither 'virt_types' nor 'modes'"),
])
def test_cpu_problems_fails_for_input_of_the_wrong_shape(facts, cpus, host_facts, message):
    with pytest.raises(AnsibleFilterError) as refused:
        cpu_problems(cpus, facts if host_facts is None else host_facts, "qemu")
    assert str(refused.value).startswith("cpu_problems: ") and message in str(refused.value)


def test_cpu_problems_reads_a_cpu_as_domain_cpus_cpu_option_does(facts):
    assert cpu_problems({"mode": "host-model", "features": {"arch-capabilities": "disable"}}, facts, "qemu") == []
    assert cpu_problems({"mode": None, "model": {"name": "qemu64"}}, facts, "qemu") == [], "null means not set"
    assert cpu_problems({"mode": "host-model", "colour": "blue"}, facts, "qemu") == [
        "the option cpu has unknown CPU keys colour; allowed: mode, match, check, migratable, model, vendor, topology, "
        "cache, maxphysaddr, features"]


def test_cpu_problems_of_a_partial_cpu_checks_only_the_mode_and_model_it_names(facts):
    merged_later = [{"features": [{"name": "svm", "policy": "disable"}]}, {"vendor": "AMD"}, {"migratable": True}]
    for cpu in merged_later:
        assert cpu_problems(cpu, facts, "qemu"), "a whole CPU like this is refused"
        assert cpu_problems(cpu, facts, "qemu", partial=True) == [], "merged into the domain's CPU by domain_cpu"
    assert cpu_problems({"mode": "host-passthrough"}, facts, "qemu", partial=True) == cpu_problems(
        {"mode": "host-passthrough"}, facts, "qemu")
    assert cpu_problems({"model": {"name": "NoSuchModel"}}, facts, "qemu", partial=True)[0].startswith(
        "CPU model 'NoSuchModel' is not known to QEMU for qemu guests on this host")
    assert cpu_problems({"mode": "bogus"}, facts, "qemu", partial=True) == [
        "mode 'bogus' is not valid; use one of: custom, host-model, host-passthrough, maximum"]
    assert cpu_problems([{"name": "a", "virt_type": "qemu", "cpu": {"vendor": "AMD", "mode": "host-passthrough"}}],
                        facts, partial=True)[0].startswith("a: CPU mode 'host-passthrough' is not supported")
    with pytest.raises(AnsibleFilterError, match="partial must be true or false, got 'yes'"):
        cpu_problems({"mode": "host-model"}, facts, "qemu", partial="yes")
