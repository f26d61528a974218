# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_validation against the domain capabilities, CPU map and start outcomes libvirt 9.0 printed.

Fixtures: tests/unit/fixtures/real (domcapabilities-<vt>.xml, define/<vt>-<case>.given.xml,
outcomes.json: whether libvirt defined and started each case and its error), and libvirt's CPU
map (installed with libvirt, or the libvirt source of ``make testdata``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import cpu_from_xml, normalize_cpu
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts import parse_domain_capabilities
from ansible_collections.hostcpu.libvirt.plugins.module_utils._validation import (
    CPUValidationError,
    Findings,
    arch_features,
    check_feature_names,
    check_mode,
    check_model,
    check_topology,
    did_you_mean,
    feature_file,
    forbidden_but_provided,
    known_features,
    needs_start_compare,
    raise_for,
    required_feature_names,
    start_compare_error,
    start_failure_hint,
    validate_for_host,
)

ROOT = Path(__file__).resolve().parents[4]
REAL = ROOT / "tests" / "unit" / "fixtures" / "real"
DEFINE = REAL / "define"
OUTCOMES = json.loads((REAL / "outcomes.json").read_text())
VERSION = (9, 0, 0)
CPU_MAP_CANDIDATES = (Path("/usr/share/libvirt/cpu_map/x86_features.xml"),
                      ROOT / ".cache" / "libvirt-src" / "current" / "src" / "cpu_map" / "x86_features.xml")


def entry(virt_type: str) -> dict:
    return parse_domain_capabilities((REAL / ("domcapabilities-%s.xml" % virt_type)).read_text())


@pytest.fixture(scope="module")
def known():
    for path in CPU_MAP_CANDIDATES:
        if path.exists():
            return known_features(path.read_text(), str(path))
    pytest.skip("libvirt's CPU map is not installed (make setup) nor unpacked (make testdata)")
    return None


# ---------------------------------------------------------------------------------------------
# feature names


def test_cpu_map_names_and_qemu_aliases(known):
    assert {"pni", "svm", "arch-capabilities", "avx512f", "rdctl-no"} <= known.names
    assert known.aliases["sse3"] == "pni" and "sse3" not in known.names
    assert feature_file("x86_64").endswith("/x86_features.xml") and feature_file("s390x") is None


def test_a_typo_gets_did_you_mean(known):
    errors = check_feature_names({"features": [{"name": "arch-capabilitis", "policy": "disable"}]}, known)
    assert len(errors) == 1
    assert "unknown CPU feature 'arch-capabilitis'" in errors[0] and "did you mean 'arch-capabilities'" in errors[0]


def test_qemus_name_is_refused_with_libvirts_name(known):
    errors = check_feature_names({"features": [{"name": "sse3"}, {"name": "pclmulqdq"}]}, known)
    assert errors == ["CPU feature 'sse3' is QEMU's name; libvirt calls it 'pni': use name: pni",
                      "CPU feature 'pclmulqdq' is QEMU's name; libvirt calls it 'pclmuldq': use name: pclmuldq"]


def test_nonsense_gets_no_suggestion_and_known_names_pass(known):
    assert check_feature_names({"features": [{"name": "svm"}, {"name": "x2apic", "policy": "require"}]}, known) == []
    [error] = check_feature_names({"features": [{"name": "qqqqqqqq"}]}, known)
    assert "did you mean" not in error


def test_feature_names_are_not_checked_without_a_cpu_map():
    assert check_feature_names({"features": [{"name": "no-such-feature"}]}, None, entry("kvm")) == []


def test_did_you_mean_prefers_close_names_and_case():
    assert did_you_mean("EPYC-rome", ["EPYC", "EPYC-Rome", "EPYC-Milan"]).startswith("; did you mean 'EPYC-Rome'")
    assert did_you_mean("epyc", ["EPYC"]) == "; did you mean 'EPYC'?"
    assert did_you_mean("zzz", ["EPYC"]) == ""


# ---------------------------------------------------------------------------------------------
# mode and model against the domain capabilities


def test_an_unsupported_mode_names_the_supported_ones():
    caps = entry("kvm")
    caps["modes"]["maximum"]["supported"] = False
    [error] = check_mode(normalize_cpu({"mode": "maximum"}, "kvm", VERSION), "kvm", caps)
    assert "CPU mode 'maximum' is not supported for kvm guests" in error
    assert "host-passthrough, host-model, custom" in error
    assert check_mode(normalize_cpu({"mode": "maximum"}, "kvm", VERSION), "kvm", entry("kvm")) == []


def test_a_migratable_value_the_host_does_not_offer_is_refused():
    caps = entry("qemu")
    caps["modes"]["maximum"]["migratable"] = ["on"]
    [error] = check_mode(normalize_cpu({"mode": "maximum", "migratable": False}, "qemu", VERSION), "qemu", caps)
    assert "migratable: false is not supported with mode maximum" in error


def test_an_unknown_model_gets_did_you_mean_and_the_usable_models():
    findings = check_model(normalize_cpu({"model": {"name": "EPYCC"}}, "kvm", VERSION), "kvm", entry("kvm"))
    [error] = findings.errors
    assert "CPU model 'EPYCC' is not known to QEMU for kvm guests" in error
    assert "did you mean 'EPYC'" in error and "models usable here: pentium3, pentium2, pentium, 486" in error


def test_an_unusable_model_with_check_none_is_a_warning():
    cpu = normalize_cpu({"model": {"name": "EPYC"}}, "qemu", VERSION)
    assert cpu["check"] == "none"
    findings = check_model(cpu, "qemu", entry("qemu"))
    assert findings.errors == [] and "not fully usable" in findings.warnings[0]


def test_an_unusable_model_with_check_partial_is_left_to_libvirts_comparison():
    # Westmere is usable='no' under kvm here and still starts (outcomes.json): usable='no' alone proves nothing.
    assert OUTCOMES["kvm"]["c-Westmere"]["started"]
    assert check_model(normalize_cpu({"model": {"name": "Westmere"}}, "kvm", VERSION), "kvm", entry("kvm")) == Findings([], [])


# ---------------------------------------------------------------------------------------------
# combinations libvirt refuses


@pytest.mark.parametrize("cpu,words", [
    ({"mode": "custom", "model": {"name": "EPYC"}, "migratable": True}, "migratable is only supported with host-passthrough or maximum"),
    ({"mode": "custom", "vendor": "AMD"}, "CPU vendor specified without CPU model"),
    ({"mode": "host-model", "match": "exact"}, "match applies to mode custom only"),
    ({"mode": "custom", "model": {"name": "EPYC", "vendor_id": "AuthenticAM"}}, "vendor_id must be exactly 12 characters"),
    ({"mode": "custom", "model": {"name": "EPYC"}, "features": [{"name": "svm", "policy": "maybe"}]}, "feature 'svm' policy 'maybe' is not valid"),
])
def test_combinations_libvirt_refuses_get_one_clear_message(cpu, words, known):
    findings = validate_for_host(cpu, "kvm", entry("kvm"), known, VERSION)
    assert len(findings.errors) == 1 and words in findings.errors[0]


def test_errors_of_every_domain_come_in_one_message_and_nothing_is_changed():
    with pytest.raises(CPUValidationError) as caught:
        raise_for({"web1": Findings(["a problem"], []), "web2": Findings([], ["a warning"]), "web3": Findings(["b", "c"], [])})
    assert str(caught.value) == ("nothing was changed: 2 of 3 domains cannot take this CPU (web1, web3; each domain's "
                                 "reasons are in domains[].error): web1: a problem | web3: b | web3: c")
    assert caught.value.refused == {"web1": ["a problem"], "web3": ["b", "c"]}
    raise_for({"web2": Findings([], ["a warning"])})
    with pytest.raises(CPUValidationError, match="^nothing was changed: web1: a problem$"):
        raise_for({"web1": Findings(["a problem"], [])})


def test_a_refusal_names_every_domain_even_when_the_reasons_are_cut():
    refused = {"guest-%04d" % index: Findings(["the CPU topology sockets=1 cores=%d threads=1 does not fit" % index], [])
               for index in range(1000)}
    with pytest.raises(CPUValidationError) as caught:
        raise_for(refused, 1200)
    message = str(caught.value)
    assert message.startswith("nothing was changed: 1000 of 1200 domains cannot take this CPU (guest-0000, guest-0001")
    assert all(name in message.split("):", maxsplit=1)[0] for name in refused)
    assert "characters left out" in message  # the reasons are cut; domains[].error has them all


# ---------------------------------------------------------------------------------------------
# conformance with what libvirt did


ACCEPTED = [(vt, case) for vt in ("kvm", "qemu") for case, outcome in sorted(OUTCOMES[vt].items())
            if outcome.get("defined") and outcome.get("given")]


@pytest.mark.parametrize("virt_type,case", ACCEPTED, ids=["%s-%s" % pair for pair in ACCEPTED])
def test_no_refusal_of_a_cpu_libvirt_started(virt_type, case, known):
    """Whatever validate_for_host refuses (besides the grammar _cpu_model is stricter on), libvirt failed to start."""
    given = cpu_from_xml((DEFINE / ("%s-%s.given.xml" % (virt_type, case))).read_text())
    findings = validate_for_host(given, virt_type, entry(virt_type), known, VERSION)
    grammar_only = all("only meaningful with mode custom" in e or "match applies to mode custom only" in e for e in findings.errors)
    if findings.errors and not grammar_only:
        assert not OUTCOMES[virt_type][case]["started"], findings.errors


@pytest.mark.parametrize("virt_type,case,words", [
    ("kvm", "c-unknown-model", "is not known to QEMU"),
    ("qemu", "c-unknown-model", "is not known to QEMU"),
    ("kvm", "hm-noarch-unknown-feature", "unknown CPU feature 'no-such-feature'"),
    ("qemu", "hm-noarch-unknown-feature", "unknown CPU feature 'no-such-feature'"),
    ("qemu", "hp", "CPU mode 'host-passthrough' is not supported for qemu guests"),
    ("qemu", "hp-noarch-migratable-off", "CPU mode 'host-passthrough' is not supported for qemu guests"),
])
def test_failures_the_pure_checks_catch(virt_type, case, words, known):
    assert not OUTCOMES[virt_type][case]["started"]
    given = cpu_from_xml((DEFINE / ("%s-%s.given.xml" % (virt_type, case))).read_text())
    [error] = validate_for_host(given, virt_type, entry(virt_type), known, VERSION).errors
    assert words in error


# ---------------------------------------------------------------------------------------------
# libvirt's pre-start comparison


def test_which_cpus_libvirt_compares_before_a_start():
    assert needs_start_compare(normalize_cpu({"model": {"name": "EPYC"}}, "kvm", VERSION))
    assert not needs_start_compare(normalize_cpu({"model": {"name": "EPYC"}}, "qemu", VERSION))   # check none
    assert needs_start_compare(normalize_cpu({"mode": "host-model"}, "qemu", VERSION))
    assert not needs_start_compare(normalize_cpu({"mode": "host-passthrough", "check": "partial"}, "kvm", VERSION))
    assert not needs_start_compare(normalize_cpu({"model": {"name": "EPYC"}, "check": "full"}, "kvm", VERSION))


START_REFUSALS = sorted({outcome["error"] for vt in OUTCOMES for outcome in OUTCOMES[vt].values()
                         if "incompatible with host CPU" in outcome.get("error", "")})


@pytest.mark.parametrize("message", START_REFUSALS)
def test_every_real_refusal_becomes_one_message_with_a_fix(message):
    refusal = start_compare_error(message, (), "kvm guests on this host", ["pentium3"])
    assert refusal.startswith("libvirt would refuse to start it on kvm guests on this host")
    if "does not provide required features" in message:
        missing = message.split("features: ", 1)[1]
        assert ("required features %s." % missing) in refusal
        assert "features: {%s}" % ", ".join("%s: disable" % name for name in missing.split(", ")) in refusal
        assert refusal.endswith("models usable here: pentium3")


def test_features_the_hypervisor_gives_anyway_are_no_reason_to_refuse():
    message = "the CPU is incompatible with host CPU: Host CPU does not provide required features: x2apic, svm"
    assert "required features svm." in start_compare_error(message, ["x2apic"])
    assert start_compare_error(message, ["x2apic", "svm"]) is None
    assert start_compare_error(None) is None
    assert start_compare_error("internal error: something else") is None


def test_forbidding_a_feature_the_hypervisor_gives_is_caught():
    cpu = {"mode": "host-model", "features": [{"name": "clwb", "policy": "forbid"}, {"name": "svm", "policy": "forbid"}]}
    assert forbidden_but_provided(cpu, ["clwb", "x2apic"]) == ["clwb"]


def test_required_features_of_an_expanded_host_model():
    names = required_feature_names((REAL / "baseline-expand-kvm.xml").read_text())
    assert "x2apic" in names and "arch-capabilities" in names and "pni" not in names
    assert required_feature_names(None) == []


# ---------------------------------------------------------------------------------------------
# after a failed start


START_FAILURES = sorted({(vt, outcome["error"]) for vt in OUTCOMES for outcome in OUTCOMES[vt].values()
                         if outcome.get("error_stage") == "start"})


@pytest.mark.parametrize("virt_type,message", START_FAILURES)
def test_hints_for_real_start_failures(virt_type, message):
    hint = start_failure_hint(message)
    if "MSR 0x10a" in message:
        assert hint.endswith("features: {arch-capabilities: disable}")
    elif "does not provide required features" in message:
        assert hint.startswith("the host does not provide") and ": disable}" in hint
    elif "forbidden feature" in message:
        assert "use policy disable instead of forbid" in hint
    else:
        assert hint == "" or "disable" in hint


# ---------------------------------------------------------------------------------------------
# topology and per-architecture feature names


@pytest.mark.parametrize("topology, max_vcpus, version, found", [
    ({"sockets": 1, "dies": 1, "cores": 2, "threads": 2}, 4, (9, 0, 0), None),
    ({"sockets": 1, "dies": 1, "cores": 4, "threads": 1}, 2, (9, 0, 0), "gives 4 vCPUs but the domain's <vcpu> (its maximum) is 2"),
    ({"sockets": 2, "dies": 1, "clusters": 2, "cores": 1, "threads": 1}, 4, (10, 1, 0), None),
    ({"sockets": 2, "dies": 1, "clusters": 2, "cores": 1, "threads": 1}, 2, (9, 0, 0), None),  # 9.0 knows no clusters
    ({"sockets": 1, "dies": 1, "cores": 3, "threads": 1}, None, (9, 0, 0), None),  # no <vcpu>: libvirt's default 1 is not guessed
])
def test_a_topology_must_multiply_out_to_the_maximum_vcpus(topology, max_vcpus, version, found):
    errors = check_topology({"mode": "custom", "topology": topology}, max_vcpus, version)
    if found is None:
        assert errors == []
    else:
        assert len(errors) == 1 and found in errors[0] and "topology: {sockets: 1, cores: %d, threads: 1}" % max_vcpus in errors[0]


def test_an_x86_feature_is_refused_for_an_architecture_without_a_cpu_map():
    known = arch_features("s390x", None)
    errors = check_feature_names({"mode": "custom", "model": {"name": "z14"}, "features": [{"name": "arch-capabilities", "policy": "disable"}]}, known)
    assert errors and "unknown CPU feature 'arch-capabilities'" in errors[0] and "s390x" in errors[0]
    assert arch_features("x86_64", None) is None  # x86 without libvirt's map installed: not checked here (XML mode)
