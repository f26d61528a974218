# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_facts on XML libvirt printed: this machine's capabilities/domcapabilities (both virt types),
the baselines libvirt computed from them, and libvirt 9.0's own tests/domaincapsdata.

Expected values are taken from the XML by a different route (lxml XPath) or from
cpu-models.json, which the capture script wrote with its own parser.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
from lxml import etree

from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts import (
    FactsError,
    build_facts,
    candidate_virt_types,
    check_virt_types,
    custom_model,
    facts_from_parsed,
    fingerprint,
    fix_candidates,
    host_model_as_custom_xml,
    live_cpu_from_domain_xml,
    mode_supported,
    one_line,
    parse_capabilities,
    parse_domain_capabilities,
    usable_models,
    verified_result,
    verify_domain_xml,
    verify_guest_name,
    verify_outcome,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._xml import XMLInputError

UNIT = Path(__file__).resolve().parents[2]
REAL = UNIT / "fixtures" / "real"
REPO = UNIT.parents[1]
LIBVIRT_SRC = Path(os.environ.get("HOSTCPU_LIBVIRT_SRC", REPO / ".cache" / "libvirt-src" / "current"))
DOMAINCAPSDATA = LIBVIRT_SRC / "tests" / "domaincapsdata"
VIRT_TYPES = ("kvm", "qemu")
VERSIONS = {"libvirt_version": 9000000, "hypervisor_version": 7002022}
TOP_LEVEL_KEYS = {"arch", "vendor", "model", "signature", "microcode", "topology", "maxphysaddr", "tsc", "features",
                  "libvirt_version", "hypervisor_version", "virt_types"}
ENTRY_KEYS = {"domain_type", "arch", "emulator", "machine", "max_vcpus", "modes", "libvirt_version", "fingerprint",
              "host_model_expanded", "host_model_migratable", "non_migratable_features"}


def _read(name: str) -> str:
    return (REAL / name).read_text(encoding="utf-8")


def _xpath(name: str, path: str):
    return etree.fromstring(_read(name).encode()).xpath(path)


def _domcaps(virt_type: str) -> str:
    return _read("domcapabilities-%s.xml" % virt_type)


def _expansion(virt_type: str) -> dict:
    return {"host_model_expanded": _read("baseline-expand-%s.xml" % virt_type),
            "host_model_migratable": _read("baseline-expand-migratable-%s.xml" % virt_type)}


@pytest.fixture(scope="module")
def facts():
    return build_facts(_read("capabilities.xml"), {vt: _domcaps(vt) for vt in VIRT_TYPES}, VERSIONS,
                       {vt: _expansion(vt) for vt in VIRT_TYPES})


@pytest.fixture(scope="module")
def entries():
    return {vt: parse_domain_capabilities(_domcaps(vt)) for vt in VIRT_TYPES}


# --- capabilities ----------------------------------------------------------------------------


def test_host_cpu_from_capabilities():
    host = parse_capabilities(_read("capabilities.xml"))["host"]
    assert host["arch"] == _xpath("capabilities.xml", "string(/capabilities/host/cpu/arch)") == "x86_64"
    assert host["vendor"] == _xpath("capabilities.xml", "string(/capabilities/host/cpu/vendor)") == "AMD"
    assert host["model"] == _xpath("capabilities.xml", "string(/capabilities/host/cpu/model)") == "kvm64"
    assert host["features"] == _xpath("capabilities.xml", "/capabilities/host/cpu/feature/@name")
    signature = _xpath("capabilities.xml", "/capabilities/host/cpu/signature")[0]
    assert host["signature"] == {key: int(signature.get(key)) for key in ("family", "model", "stepping")}
    assert host["microcode"] == _xpath("capabilities.xml", "string(/capabilities/host/cpu/microcode/@version)")
    assert host["topology"] == {"sockets": 1, "dies": 1, "cores": 2, "threads": 1}
    assert host["maxphysaddr"] == {"mode": "emulate", "bits": 48}
    assert host["tsc"] == {"frequency": int(_xpath("capabilities.xml", "string(//counter[@name='tsc']/@frequency)")),
                           "scaling": False}


def test_guests_from_capabilities():
    caps = parse_capabilities(_read("capabilities.xml"))
    assert [g["arch"] for g in caps["guests"]] == _xpath("capabilities.xml", "/capabilities/guest/arch/@name")
    x86_64 = next(g for g in caps["guests"] if g["arch"] == "x86_64")
    assert x86_64["os_type"] == "hvm" and x86_64["wordsize"] == 64
    assert x86_64["emulator"] == "/usr/bin/qemu-system-x86_64"
    names = _xpath("capabilities.xml", "/capabilities/guest/arch[@name='x86_64']/machine/text()")
    assert [m["name"] for m in x86_64["machines"]] == names
    pc = next(m for m in x86_64["machines"] if m["name"] == "pc")
    assert pc["canonical"] == "pc-i440fx-7.2" and pc["max_cpus"] == 255 and pc["deprecated"] is False
    deprecated = _xpath("capabilities.xml", "/capabilities/guest/arch[@name='x86_64']/machine[@deprecated='yes']/text()")
    assert sorted(m["name"] for m in x86_64["machines"] if m["deprecated"]) == sorted(deprecated)
    assert set(x86_64["domain_types"]) == {"qemu", "kvm"}
    assert x86_64["domain_types"]["kvm"]["emulator"] == x86_64["emulator"]
    assert candidate_virt_types(caps) == ["kvm", "qemu"]


def test_candidate_virt_types_without_kvm():
    text = _read("capabilities.xml").replace("<domain type='kvm'/>", "")
    assert candidate_virt_types(parse_capabilities(text)) == ["qemu"]


# --- domain capabilities ---------------------------------------------------------------------


@pytest.mark.parametrize("virt_type", VIRT_TYPES)
def test_entry_identity(entries, virt_type):
    entry = entries[virt_type]
    name = "domcapabilities-%s.xml" % virt_type
    assert entry["domain_type"] == virt_type
    assert entry["arch"] == "x86_64"
    assert entry["emulator"] == _xpath(name, "string(/domainCapabilities/path)")
    assert entry["machine"] == _xpath(name, "string(/domainCapabilities/machine)") == "pc-i440fx-7.2"
    assert entry["max_vcpus"] == int(_xpath(name, "string(/domainCapabilities/vcpu/@max)"))


@pytest.mark.parametrize("virt_type", VIRT_TYPES)
def test_mode_supported_flags(entries, virt_type):
    name = "domcapabilities-%s.xml" % virt_type
    for mode in ("host-passthrough", "maximum", "host-model", "custom"):
        expected = _xpath(name, "string(/domainCapabilities/cpu/mode[@name='%s']/@supported)" % mode) == "yes"
        assert mode_supported(entries[virt_type], mode) is expected, mode


def test_supported_modes_on_this_machine(entries):
    # TCG cannot pass the host CPU through; KVM can do all four.
    assert [m for m in entries["kvm"]["modes"] if mode_supported(entries["kvm"], m)] == \
        ["host-passthrough", "maximum", "host-model", "custom"]
    assert [m for m in entries["qemu"]["modes"] if mode_supported(entries["qemu"], m)] == ["maximum", "host-model", "custom"]


@pytest.mark.parametrize("virt_type, mode, enum", [
    ("kvm", "host-passthrough", "hostPassthroughMigratable"),
    ("kvm", "maximum", "maximumMigratable"),
    ("qemu", "maximum", "maximumMigratable"),
])
def test_migratable_enum_values(entries, virt_type, mode, enum):
    values = _xpath("domcapabilities-%s.xml" % virt_type,
                    "/domainCapabilities/cpu/mode[@name='%s']/enum[@name='%s']/value/text()" % (mode, enum))
    assert entries[virt_type]["modes"][mode]["migratable"] == values == ["on", "off"]


def test_unsupported_passthrough_has_no_migratable_values(entries):
    assert entries["qemu"]["modes"]["host-passthrough"] == {"supported": False, "migratable": []}


@pytest.mark.parametrize("virt_type, model", [("kvm", "kvm64"), ("qemu", "EPYC")])
def test_host_model_cpu(entries, virt_type, model):
    name = "domcapabilities-%s.xml" % virt_type
    cpu = entries[virt_type]["modes"]["host-model"]["cpu"]
    assert cpu["model"] == {"name": model, "fallback": "forbid"}
    assert cpu["vendor"] == "AMD"
    features = _xpath(name, "/domainCapabilities/cpu/mode[@name='host-model']/feature")
    assert cpu["features"] == [{"name": f.get("name"), "policy": f.get("policy")} for f in features]
    assert list(cpu) == ["model", "vendor", "features"]


def test_the_two_host_models_differ(entries):
    kvm = entries["kvm"]["modes"]["host-model"]["cpu"]
    qemu = entries["qemu"]["modes"]["host-model"]["cpu"]
    assert kvm["model"]["name"] != qemu["model"]["name"]
    assert {"name": "invtsc", "policy": "require"} in kvm["features"]
    assert "invtsc" not in {f["name"] for f in qemu["features"]}


@pytest.mark.parametrize("virt_type", VIRT_TYPES)
def test_custom_models_match_what_the_capture_saw(entries, virt_type):
    seen = json.loads(_read("cpu-models.json"))["domcapabilities"][virt_type]
    models = entries[virt_type]["modes"]["custom"]["models"]
    assert usable_models(entries[virt_type]) == seen["yes"]
    assert [m["name"] for m in models if m["usable"] is False] == seen["no"]
    assert len(models) == len(seen["yes"]) + len(seen["no"])


@pytest.mark.parametrize("virt_type", VIRT_TYPES)
def test_custom_model_vendor_and_flags(entries, virt_type):
    name = "domcapabilities-%s.xml" % virt_type
    elements = _xpath(name, "/domainCapabilities/cpu/mode[@name='custom']/model")
    models = entries[virt_type]["modes"]["custom"]["models"]
    assert [m["vendor"] for m in models] == [el.get("vendor") for el in elements]
    # libvirt 9.0 + QEMU 7.2 deprecate no x86 model and never print <blockers> (9.0 keeps them internal).
    assert not any(m["deprecated"] for m in models)
    assert all(m["blockers"] is None for m in models)
    assert "<blockers" not in _read(name)


def test_custom_model_lookup(entries):
    assert custom_model(entries["kvm"], "EPYC") == {"name": "EPYC", "usable": False, "vendor": "AMD",
                                                    "deprecated": False, "blockers": None}
    assert custom_model(entries["qemu"], "qemu64")["usable"] is True
    assert custom_model(entries["kvm"], "no-such-model") is None


def test_usable_unknown_and_deprecated_and_blockers_are_read(entries):
    # The attribute values libvirt's schema allows (domaincaps.rng) and the <blockers> newer libvirt prints.
    text = _domcaps("kvm").replace("<model usable='no' vendor='AMD'>EPYC</model>",
                                   "<model usable='unknown' deprecated='yes' vendor='AMD'>EPYC</model>"
                                   "<blockers model='EPYC'><feature name='svm'/></blockers>")
    entry = parse_domain_capabilities(text)
    assert custom_model(entry, "EPYC") == {"name": "EPYC", "usable": None, "vendor": "AMD", "deprecated": True,
                                           "blockers": ["svm"]}
    assert custom_model(entry, "pentium")["blockers"] == []


def test_mode_missing_from_older_libvirt_is_unsupported():
    text = _domcaps("kvm")
    start = text.index("<mode name='maximum'")
    end = text.index("</mode>", start) + len("</mode>")
    entry = parse_domain_capabilities(text[:start] + text[end:])
    assert entry["modes"]["maximum"] == {"supported": False, "migratable": []}
    assert mode_supported(entry, "host-passthrough")


def test_host_model_as_custom_xml_is_what_the_capture_gave_baseline(entries):
    for virt_type in VIRT_TYPES:
        given = _read("baseline-input-hostmodel-%s.xml" % virt_type).strip()
        assert host_model_as_custom_xml(entries[virt_type]).replace("\n", "") == given


# --- fingerprint -----------------------------------------------------------------------------


def test_fingerprint_is_stable_and_tells_the_virt_types_apart(entries):
    kvm, qemu = fingerprint(entries["kvm"]), fingerprint(entries["qemu"])
    assert kvm == fingerprint(parse_domain_capabilities(_domcaps("kvm")))
    assert kvm != qemu
    assert len(kvm) == 64 and int(kvm, 16) >= 0


def test_fingerprint_ignores_feature_order_emulator_and_machine(entries):
    entry = copy.deepcopy(entries["kvm"])
    entry["modes"]["host-model"]["cpu"]["features"].reverse()
    entry["emulator"] = "/opt/qemu/bin/qemu-system-x86_64"
    entry["machine"] = "pc-q35-7.2"
    entry["libvirt_version"] = "10.0.0"
    assert fingerprint(entry) == fingerprint(entries["kvm"])


@pytest.mark.parametrize("change", ["usable", "feature", "policy", "mode", "migratable"])
def test_fingerprint_follows_what_guests_see(entries, change):
    entry = copy.deepcopy(entries["kvm"])
    if change == "usable":
        custom_model(entry, "EPYC")["usable"] = True
    elif change == "feature":
        entry["modes"]["host-model"]["cpu"]["features"].pop()
    elif change == "policy":
        entry["modes"]["host-model"]["cpu"]["features"][0]["policy"] = "disable"
    elif change == "mode":
        entry["modes"]["maximum"]["supported"] = False
    else:
        entry["modes"]["host-passthrough"]["migratable"] = ["on"]
    assert fingerprint(entry) != fingerprint(entries["kvm"])


# --- build_facts -----------------------------------------------------------------------------


def test_facts_shape(facts):
    assert TOP_LEVEL_KEYS <= set(facts)
    assert "verify_modes" not in facts
    assert list(facts["virt_types"]) == ["kvm", "qemu"]
    for virt_type, entry in facts["virt_types"].items():
        assert ENTRY_KEYS <= set(entry), virt_type
        assert entry["libvirt_version"] == "9.0.0"
        assert entry["fingerprint"] == fingerprint(parse_domain_capabilities(_domcaps(virt_type)))
    assert facts["libvirt_version"] == "9.0.0"
    assert facts["hypervisor_version"] == "7.2.22"
    assert json.loads(json.dumps(facts)) == facts


def test_facts_host_part_equals_parse_capabilities(facts):
    host = parse_capabilities(_read("capabilities.xml"))["host"]
    assert {key: facts[key] for key in host} == host


@pytest.mark.parametrize("virt_type, model, count", [("kvm", "kvm64", 52), ("qemu", "EPYC", 85)])
def test_expansions(facts, virt_type, model, count):
    entry = facts["virt_types"][virt_type]
    expected = _xpath("baseline-expand-%s.xml" % virt_type, "/cpu/feature")
    expanded = entry["host_model_expanded"]
    assert expanded["mode"] == "custom" and expanded["model"]["name"] == model
    assert len(expanded["features"]) == len(expected) == count
    assert expanded["features"] == [{"name": f.get("name"), "policy": f.get("policy")} for f in expected]


def test_non_migratable_features(facts):
    # libvirt's MIGRATABLE expansion drops invtsc under kvm; TCG's host-model has nothing to drop.
    assert facts["virt_types"]["kvm"]["non_migratable_features"] == ["invtsc"]
    assert facts["virt_types"]["qemu"]["non_migratable_features"] == []
    kvm = facts["virt_types"]["kvm"]
    assert {f["name"] for f in kvm["host_model_expanded"]["features"]} - \
        {f["name"] for f in kvm["host_model_migratable"]["features"]} == {"invtsc"}


def test_facts_from_parsed_xml_are_those_of_the_xml():
    """cpu_facts builds its facts from the XML _probe parsed already; they are the same facts, in the same order."""
    expansion_data = {"qemu": {"format": 1}}
    verified = {"kvm": {"maximum": verified_result(("<domain><cpu mode='maximum'/></domain>", None))}}
    for virt_types in (VIRT_TYPES, VIRT_TYPES[::-1]):
        parsed = facts_from_parsed(parse_capabilities(_read("capabilities.xml")),
                                   {vt: parse_domain_capabilities(_domcaps(vt)) for vt in virt_types}, VERSIONS,
                                   {vt: _expansion(vt) for vt in VIRT_TYPES}, verified, expansion_data)
        built = build_facts(_read("capabilities.xml"), {vt: _domcaps(vt) for vt in virt_types}, VERSIONS,
                            {vt: _expansion(vt) for vt in VIRT_TYPES}, verified, expansion_data)
        assert json.dumps(parsed) == json.dumps(built)


def test_facts_from_parsed_refuse_an_entry_of_another_virt_type():
    with pytest.raises(FactsError, match="those of 'qemu'"):
        facts_from_parsed(None, {"kvm": parse_domain_capabilities(_domcaps("qemu"))})


def test_facts_without_expansions_or_capabilities():
    facts = build_facts(None, {"qemu": _domcaps("qemu")})
    assert facts["arch"] == "x86_64"
    assert facts["vendor"] is None and facts["features"] == []
    assert facts["libvirt_version"] is None
    entry = facts["virt_types"]["qemu"]
    assert entry["host_model_expanded"] is None and entry["non_migratable_features"] is None
    assert entry["modes"]["host-model"]["cpu"]["model"]["name"] == "EPYC"


def test_facts_with_capabilities_only():
    facts = build_facts(_read("capabilities.xml"), {})
    assert facts["virt_types"] == {} and facts["model"] == "kvm64"


# --- bad input -------------------------------------------------------------------------------


def test_unknown_virt_type_lists_the_valid_ones():
    with pytest.raises(FactsError, match=r"unknown virt type 'xen'; valid virt types are: kvm, qemu"):
        check_virt_types(["kvm", "xen"])
    with pytest.raises(FactsError, match="domain_capabilities_xml: unknown virt type 'lxc'"):
        build_facts(None, {"lxc": _domcaps("kvm")})


def test_domcaps_under_the_wrong_key():
    with pytest.raises(FactsError, match="given for 'kvm' are those of 'qemu'.*put them under the key 'qemu'"):
        build_facts(None, {"kvm": _domcaps("qemu")})


@pytest.mark.parametrize("text, message", [
    ("<domainCapabilities><path>", "not well-formed XML"),
    ("", "not well-formed XML|is empty"),
    ("<capabilities/>", "root element <capabilities>, expected <domainCapabilities>"),
    ("<domainCapabilities><arch>x86_64</arch></domainCapabilities>", "no <domain> element"),
    ("<?xml version='1.0'?><!DOCTYPE d [<!ENTITY e 'x'>]><domainCapabilities><domain>&e;</domain></domainCapabilities>",
     "DOCTYPE or ENTITY"),
    ("<!DOCTYPE d SYSTEM 'file:///etc/passwd'><domainCapabilities/>", "DOCTYPE or ENTITY"),
])
def test_bad_domcaps_text(text, message):
    with pytest.raises(CPUError, match=message) as info:
        build_facts(None, {"kvm": text})
    assert "domain capabilities of 'kvm'" in str(info.value)


@pytest.mark.parametrize("text, message", [
    ("<capabilities><host>", "capabilities_xml is not well-formed XML"),
    (_read("domcapabilities-kvm.xml"), "root element <domainCapabilities>, expected <capabilities>"),
    ("<!DOCTYPE c [<!ENTITY big 'xxxx'>]><capabilities/>", "DOCTYPE or ENTITY"),
])
def test_bad_capabilities_text(text, message):
    with pytest.raises(XMLInputError if "DOCTYPE" in message or "well-formed" in message else FactsError, match=message):
        build_facts(text, {})


def test_bad_number_in_capabilities():
    text = _read("capabilities.xml").replace("family='25'", "family='twenty-five'")
    with pytest.raises(FactsError, match="signature family='twenty-five' is not a whole number"):
        parse_capabilities(text)


# --- verify_modes helpers --------------------------------------------------------------------


def test_verify_domain_xml(entries):
    name = verify_guest_name("ab12cd34", "kvm", "host-model")
    assert name == "hostcpu-verify-ab12cd34-kvm-host-model"
    xml = verify_domain_xml(entries["kvm"], "host-model", name, [{"name": "arch-capabilities", "policy": "disable"}])
    root = etree.fromstring(xml.encode())
    assert root.get("type") == "kvm"
    assert root.findtext("name") == name
    assert root.find("memory").get("unit") == "MiB" and 16 <= int(root.findtext("memory")) <= 64
    assert root.find("os/type").get("machine") == "pc-i440fx-7.2"
    assert root.findtext("devices/emulator") == "/usr/bin/qemu-system-x86_64"
    assert root.find("devices/disk") is None
    assert etree.tostring(root.find("cpu")).decode().split() == \
        "<cpu mode=\"host-model\"> <feature policy=\"disable\" name=\"arch-capabilities\"/> </cpu>".split()


def test_fix_for_the_msr_0x10a_failure(entries):
    # The real error of kvm host-passthrough on this nested host (define/kvm-hp.error.txt).
    error = (REAL / "define" / "kvm-hp.error.txt").read_text()
    assert "MSR 0x10a" in error
    assert fix_candidates(entries["kvm"], error) == [{"name": "arch-capabilities", "policy": "disable"}]
    # TCG's host-model does not carry arch-capabilities: only the error text can point at it.
    assert fix_candidates(entries["qemu"], "some other failure") is None
    assert fix_candidates(entries["qemu"], error) == [{"name": "arch-capabilities", "policy": "disable"}]


def test_verified_result_with_a_working_fix():
    error = (REAL / "define" / "kvm-hp.error.txt").read_text()
    live = "<domain><cpu mode='host-passthrough' check='none' migratable='on'>" \
           "<feature policy='disable' name='arch-capabilities'/></cpu></domain>"
    fix = [{"name": "arch-capabilities", "policy": "disable"}]
    result = verified_result((None, error), (fix, live, None))
    assert result["starts"] is False and result["live_cpu"] is None
    assert "\n" not in result["error"] and "failed to set MSR 0x10a" in result["error"]
    assert "2026-" not in result["error"], "QEMU's timestamp is removed so facts repeat"
    assert result["fix"] == {"features": fix, "live_cpu": {"mode": "host-passthrough", "check": "none", "migratable": True,
                                                           "features": fix}}
    assert result["fix_error"] is None
    assert verify_outcome(result) == "starts_with_fix"


def test_verified_result_outcomes():
    live = (REAL / "define" / "qemu-hm-noarch.live.xml").read_text()
    started = verified_result((live, None))
    assert started["starts"] is True and started["error"] is None and started["fix"] is None
    assert started["live_cpu"] == live_cpu_from_domain_xml(live)
    assert started["live_cpu"]["model"]["name"] == "EPYC"
    assert verify_outcome(started) == "starts"
    failed = verified_result((None, "boom"), ([{"name": "arch-capabilities", "policy": "disable"}], None, "boom again"))
    assert failed["fix"] is None and failed["fix_error"] == "boom again"
    assert verify_outcome(failed) == "fails"


def test_one_line():
    assert one_line("a\n  b 2026-11-25T20:43:41.897796Z c") == "a b c"
    assert one_line(None) is None


def test_verified_results_land_in_the_modes():
    live = (REAL / "define" / "qemu-hm-noarch.live.xml").read_text()
    verified = {"qemu": {"host-model": verified_result((live, None)), "maximum": verified_result((None, "no"))}}
    facts = build_facts(None, {"qemu": _domcaps("qemu")}, None, None, verified)
    assert facts["verify_modes"] == {"qemu": {"host-model": "starts", "maximum": "fails"}}
    assert facts["virt_types"]["qemu"]["modes"]["host-model"]["verified"]["starts"] is True
    assert "verified" not in facts["virt_types"]["qemu"]["modes"]["custom"]


# --- libvirt 9.0's own test data (make testdata) ---------------------------------------------

MISSING_TESTDATA = ("libvirt's test data is missing at %s: run `make testdata` (or set HOSTCPU_LIBVIRT_SRC to an "
                    "unpacked libvirt source tree)" % DOMAINCAPSDATA)
DOMAINCAPS_FILES = sorted(DOMAINCAPSDATA.glob("qemu_*x86_64*.xml")) if DOMAINCAPSDATA.is_dir() else []


def test_libvirt_testdata_is_there():
    assert DOMAINCAPS_FILES, MISSING_TESTDATA
    assert len(DOMAINCAPS_FILES) >= 20


@pytest.mark.parametrize("path", DOMAINCAPS_FILES or [None], ids=lambda path: path.name if path else "missing")
def test_libvirt_domaincapsdata(path):
    assert path is not None, MISSING_TESTDATA
    text = path.read_text(encoding="utf-8")
    root = etree.fromstring(text.encode())
    entry = parse_domain_capabilities(text)
    assert entry["domain_type"] == root.findtext("domain")
    assert entry["arch"] == "x86_64"
    host_model = root.xpath("/domainCapabilities/cpu/mode[@name='host-model']")[0]
    cpu = entry["modes"]["host-model"]["cpu"]
    if host_model.get("supported") == "yes":
        assert cpu["model"]["name"] == host_model.findtext("model")
        assert len(cpu["features"]) == len(host_model.findall("feature"))
    else:
        assert cpu is None
    assert len(usable_models(entry)) == int(root.xpath("count(/domainCapabilities/cpu/mode[@name='custom']/model[@usable='yes'])"))
    assert len(entry["modes"]["custom"]["models"]) == int(root.xpath("count(//mode[@name='custom']/model)"))
    for mode in ("host-passthrough", "maximum", "host-model", "custom"):
        assert mode_supported(entry, mode) == bool(root.xpath("//cpu/mode[@name='%s' and @supported='yes']" % mode)), mode
    facts = build_facts(None, {entry["domain_type"]: text})
    assert len(facts["virt_types"][entry["domain_type"]]["fingerprint"]) == 64
