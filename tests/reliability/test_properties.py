# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Properties of the CPU model (_cpu_model) over generated CPU dicts (hypothesis).

* dict -> XML -> dict is lossless (exactly, for CPUs in the form libvirt prints; after
  normalising, for every CPU validate_cpu accepts);
* normalising twice equals normalising once, and a CPU means what its normalised form means;
* comparing is symmetric;
* what the cpu_xml filter prints is accepted by libvirt's own schema: every example through the
  RelaxNG grammar libvirt installs (/usr/share/libvirt/schemas/domain.rng, in-process with lxml),
  and a sample through ``virt-xml-validate`` (libvirt-clients), which must agree;
* what validate_cpu refuses, libvirt's schema or parser refuses too (the same samples).

The hypothesis profile (conftest.py) is derandomized with no example database and no deadline, so
CI sees the same examples every run. libvirt 9.0's schema predates topology ``clusters`` (10.1)
and maxphysaddr ``limit`` (9.3); the schema property leaves those out (cpu_xml prints what it is
given, for whichever libvirt the CPU is meant).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from lxml import etree

from ansible_collections.hostcpu.libvirt.plugins.filter.cpu import cpu_xml as cpu_xml_filter
from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import (
    CPUDefinitionError,
    cpu_from_xml,
    cpu_to_xml,
    cpus_equal,
    normalize_cpu,
    ordered,
    validate_cpu,
)

SCHEMA = Path("/usr/share/libvirt/schemas/domain.rng")
VERSIONS = [None, (9, 0, 0), (10, 1, 0)]
NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."
UINT_MAX = 4294967295

names = st.text(NAME_CHARS, min_size=1, max_size=16)
feature_names = st.sampled_from(["svm", "pcid", "x2apic", "arch-capabilities", "avx2", "ssbd", "vmx", "pni"]) | names
policies = st.sampled_from(["force", "require", "optional", "disable", "forbid"])
counts = st.integers(min_value=1, max_value=UINT_MAX)


def _features(with_policy: bool = False):
    feature = st.fixed_dictionaries({"name": feature_names},
                                    optional={} if with_policy else {"policy": policies})
    if with_policy:
        feature = st.fixed_dictionaries({"name": feature_names, "policy": policies})
    return st.lists(feature, max_size=6, unique_by=lambda f: f["name"])


def _topology(newer: bool):
    optional = {"dies": counts}
    if newer:
        optional["clusters"] = counts
    return st.fixed_dictionaries({"sockets": counts, "cores": counts, "threads": counts}, optional=optional)


def _cache(mode: str):
    choices = [st.just({"mode": "disable"}),
               st.fixed_dictionaries({"mode": st.just("emulate")}, optional={"level": st.integers(1, 3)})]
    if mode in ("host-passthrough", "maximum"):
        choices.append(st.just({"mode": "passthrough"}))
    return st.one_of(choices)


def _maxphysaddr(newer: bool):
    passthrough = {"limit": st.integers(1, 64)} if newer else {}
    return st.one_of(st.fixed_dictionaries({"mode": st.just("emulate"), "bits": st.integers(1, 64)}),
                     st.fixed_dictionaries({"mode": st.just("passthrough")}, optional=passthrough))


vendor_ids = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 ", min_size=12, max_size=12)


@st.composite
def cpus(draw, printed: bool = False, newer: bool = True, policy_always: bool = False) -> Dict[str, Any]:
    """A CPU dict validate_cpu accepts. *printed*: only what libvirt prints back the same way
    (a model fallback only with a model name); *newer*: with what libvirt 9.0 does not know."""
    mode = draw(st.sampled_from(["custom", "host-model", "host-passthrough", "maximum", None]))
    effective = mode or "custom"
    cpu: Dict[str, Any] = {}
    if mode is not None:
        cpu["mode"] = mode
    if effective == "custom" and draw(st.booleans()):
        cpu["match"] = draw(st.sampled_from(["exact", "minimum", "strict"]))
    if draw(st.booleans()):
        cpu["check"] = draw(st.sampled_from(["none", "partial", "full"]))
    if effective in ("host-passthrough", "maximum") and draw(st.booleans()):
        cpu["migratable"] = draw(st.booleans())
    model: Dict[str, Any] = {}
    if effective == "custom" and draw(st.booleans()):
        model["name"] = draw(names)
    if effective in ("custom", "host-model"):
        if draw(st.booleans()) and (model.get("name") or not printed):
            model["fallback"] = draw(st.sampled_from(["allow", "forbid"]))
        if draw(st.booleans()):
            model["vendor_id"] = draw(vendor_ids)
    if model:
        cpu["model"] = model
    if model.get("name") and draw(st.booleans()):
        cpu["vendor"] = draw(st.sampled_from(["AMD", "Intel"]))
    if draw(st.booleans()):
        cpu["topology"] = draw(_topology(newer))
    if draw(st.booleans()):
        cpu["cache"] = draw(_cache(effective))
    if draw(st.booleans()):
        cpu["maxphysaddr"] = draw(_maxphysaddr(newer))
    if (effective != "custom" or model.get("name")) and draw(st.booleans()):
        cpu["features"] = draw(_features(policy_always))
        if not cpu["features"]:
            del cpu["features"]
    validate_cpu(cpu)
    return cpu


# ---------------------------------------------------------------------------------------------
# round trip, normalisation, comparison


@given(cpus(printed=True))
@settings(max_examples=300)
def test_dict_xml_dict_is_lossless(cpu):
    assert cpu_from_xml(cpu_to_xml(cpu)) == ordered(cpu)


@given(cpus(), st.sampled_from(["kvm", "qemu"]), st.sampled_from(VERSIONS))
@settings(max_examples=300)
def test_round_trip_keeps_the_meaning(cpu, virt_type, version):
    again = cpu_from_xml(cpu_to_xml(cpu))
    assert normalize_cpu(again, virt_type, version) == normalize_cpu(cpu, virt_type, version)


@given(cpus(), st.sampled_from(["kvm", "qemu"]), st.sampled_from(VERSIONS))
@settings(max_examples=300)
def test_normalising_twice_is_normalising_once(cpu, virt_type, version):
    once = normalize_cpu(cpu, virt_type, version)
    assert normalize_cpu(once, virt_type, version) == once
    assert cpus_equal(cpu, once, virt_type, version), "normalising changes what the CPU means"
    validate_cpu(once)


@st.composite
def cpu_pairs(draw):
    """Two CPUs that are often equal in libvirt's eyes (one the other's normalised or re-read form)."""
    first = draw(cpus())
    how = draw(st.sampled_from(["independent", "normalized", "reread", "same"]))
    if how == "independent":
        second = draw(cpus())
    elif how == "normalized":
        second = normalize_cpu(first, draw(st.sampled_from(["kvm", "qemu"])))
    elif how == "reread":
        second = cpu_from_xml(cpu_to_xml(first))
    else:
        second = dict(first)
    return first, second


@given(cpu_pairs(), st.sampled_from(["kvm", "qemu"]), st.sampled_from(VERSIONS))
@settings(max_examples=400)
def test_comparing_is_symmetric(pair, virt_type, version):
    first, second = pair
    assert cpus_equal(first, second, virt_type, version) == cpus_equal(second, first, virt_type, version)
    assert cpus_equal(first, first, virt_type, version)


# ---------------------------------------------------------------------------------------------
# libvirt's own schema


def _domain(cpu_text: str) -> str:
    return ("<domain type='kvm'>\n  <name>hostcpu-schema</name>\n  <memory unit='KiB'>65536</memory>\n"
            "  <os>\n    <type arch='x86_64'>hvm</type>\n  </os>\n  %s\n</domain>\n" % cpu_text.replace("\n", "\n  "))


@pytest.fixture(scope="module")
def relaxng():
    if not SCHEMA.exists():
        pytest.skip("libvirt's schemas are not installed (%s); run 'make system'" % SCHEMA)
    return etree.RelaxNG(etree.parse(str(SCHEMA)))


VALIDATED: List[str] = []


@given(cpu=cpus(newer=False))
@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_cpu_xml_output_is_valid_for_libvirts_schema(relaxng, cpu):
    document = _domain(cpu_xml_filter(cpu))
    valid = relaxng.validate(etree.fromstring(document))
    assert valid, "%s\n%s" % (document, relaxng.error_log.last_error)
    VALIDATED.append(document)


any_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=14) | st.sampled_from(
    [" EPYC", "EPYC ", "EP YC", "a\tb", "x\x01", "é", "<x>", "a&b", "'", '"', "EPYC\n"])


@st.composite
def cpus_with_any_names(draw) -> Dict[str, Any]:
    """A valid CPU whose model, vendor, vendor_id or feature names are replaced by arbitrary text."""
    cpu = draw(cpus(printed=True, newer=False))
    model = dict(cpu.get("model") or {})
    if cpu.get("mode", "custom") == "custom" and draw(st.booleans()):
        model["name"] = draw(any_text)
    if model.get("vendor_id") is not None or draw(st.booleans()) and cpu.get("mode", "custom") in ("custom", "host-model"):
        model["vendor_id"] = draw(st.text(st.characters(codec="utf-8"), min_size=12, max_size=12))
    if model:
        cpu["model"] = model
    if model.get("name") and draw(st.booleans()):
        cpu["vendor"] = draw(any_text)
    if cpu.get("features"):
        cpu["features"] = [dict(f, name=draw(any_text)) if draw(st.booleans()) else f for f in cpu["features"]]
    return cpu


@given(cpu=cpus_with_any_names())
@settings(max_examples=500, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
def test_whatever_validate_cpu_accepts_round_trips_and_is_schema_valid(relaxng, cpu):
    """Names of any text: validate_cpu refuses them, or they survive the round trip and the schema."""
    try:
        validate_cpu(cpu)
    except CPUDefinitionError:
        assume(False)
    text = cpu_xml_filter(cpu)
    assert cpu_from_xml(text) == cpu_from_xml(cpu_to_xml(cpu)) == ordered(cpu) or _only_policies_added(cpu, text)
    assert relaxng.validate(etree.fromstring(_domain(text))), "%s\n%s" % (text, relaxng.error_log.last_error)


def _only_policies_added(cpu: Dict[str, Any], text: str) -> bool:
    """cpu_xml prints policy='require' for features given without one (libvirt's default)."""
    expected = dict(ordered(cpu))
    if expected.get("features"):
        expected["features"] = [dict(f, policy=f.get("policy") or "require") for f in expected["features"]]
    return cpu_from_xml(text) == expected


# CPUs validate_cpu refuses; each is refused by libvirt's schema too.
REFUSED = [
    {"mode": "custom", "model": {"name": "EPYC"}, "features": [{"name": "has space", "policy": "require"}]},
    {"mode": "custom", "model": {"name": "EPYC"}, "features": [{"name": "svm", "policy": "maybe"}]},
    {"mode": "host-model", "cache": {"mode": "emulate", "level": 4}},
    {"mode": "custom", "model": {"name": "EPYC", "vendor_id": "Authentic,MD"}},
    {"mode": "maximum", "maxphysaddr": {"mode": "emulate", "bits": UINT_MAX + 1}},
    {"mode": "bogus"},
]


@pytest.mark.parametrize("cpu", REFUSED, ids=range(len(REFUSED)))
def test_what_validate_cpu_refuses_the_schema_refuses(cpu, relaxng):
    with pytest.raises(CPUDefinitionError):
        validate_cpu(cpu)
    document = _domain(cpu_to_xml(cpu))
    assert not relaxng.validate(etree.fromstring(document)), document


def test_virt_xml_validate_agrees_on_a_sample(tmp_path, relaxng):
    """libvirt's own tool on a sample of the documents the property validated, and on refused ones."""
    if shutil.which("virt-xml-validate") is None or shutil.which("xmllint") is None:
        pytest.skip("virt-xml-validate (libvirt-clients) with xmllint (libxml2-utils) is not installed; run 'make system'")
    assert VALIDATED, "run with the schema property (it collects the documents)"
    sample = VALIDATED[::max(1, len(VALIDATED) // 40)]
    refused = [_domain(cpu_to_xml(cpu)) for cpu in REFUSED if cpu.get("mode") != "bogus"]
    verdicts = {}
    for index, document in enumerate(sample + refused):
        path = tmp_path / ("cpu-%03d.xml" % index)
        path.write_text(document)
        proc = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True, check=False)
        verdicts[index] = proc.returncode == 0
        in_process = relaxng.validate(etree.fromstring(document))
        assert verdicts[index] == in_process, "virt-xml-validate and lxml disagree on:\n%s\n%s" % (document, proc.stderr)
    assert all(verdicts[index] for index in range(len(sample)))
    assert not any(verdicts[index] for index in range(len(sample), len(sample) + len(refused)))
    print("\nvirt-xml-validate: %d valid and %d refused documents, the same verdicts as lxml" % (len(sample), len(refused)))
