# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_cpu_model against what libvirt 9.0 really stored and printed (tests/unit/fixtures/real/define).

For every case ``define/<vt>-<case>``:

* ``.given.xml`` + ``.inactive.xml``: libvirt accepted the given <cpu>; normalize_cpu(given)
  must be exactly what libvirt stored.
* ``.given.xml`` without ``.inactive.xml``: libvirt refused the definition (``.error.txt``);
  validate_cpu must refuse it too.
* every <cpu> libvirt printed (inactive, update-cpu, live, baselines): cpu_to_xml(cpu_from_xml(x))
  gives back libvirt's text byte for byte (the fixtures keep libvirt's indentation of <cpu>).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import (
    CPUDefinitionError,
    cpu_from_xml,
    cpu_to_xml,
    normalize_cpu,
    validate_cpu,
)

REAL = Path(__file__).resolve().parents[2] / "fixtures" / "real"
DEFINE = REAL / "define"
LIBVIRT_VERSION = (9, 0, 0)

# Cases libvirt 9.0 accepts but validate_cpu refuses on purpose, with a word of the reason.
STRICTER_THAN_LIBVIRT = {
    "hm-noarch-match-minimum": "match applies to mode custom only",
    "hm-noarch-match-strict": "match applies to mode custom only",
    "hm-noarch-model-name": "checks the host against that model at start",
    "hp-noarch-model": "drops it",
}


def _case_names(suffix: str):
    return sorted(path.name[:-len(suffix)] for path in DEFINE.glob("*" + suffix))


def _split(case: str):
    virt_type, rest = case.split("-", 1)
    return virt_type, rest


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _given(case: str) -> dict:
    path = DEFINE / (case + ".given.xml")
    return cpu_from_xml(_read(path)) if path.exists() else {}


ACCEPTED = _case_names(".inactive.xml")
REFUSED = [case for case in _case_names(".given.xml") if not (DEFINE / (case + ".inactive.xml")).exists()]
PRINTED = sorted(
    [path for pattern in ("*.inactive.xml", "*.update-cpu.xml", "*.live.xml") for path in DEFINE.glob(pattern)]
    + [path for path in REAL.glob("baseline-*.xml") if not path.name.startswith("baseline-input-")]
)


def test_fixtures_are_there():
    assert len(ACCEPTED) > 100, "tests/unit/fixtures/real/define is missing or incomplete"
    assert len(REFUSED) >= 5
    assert {_split(case)[0] for case in ACCEPTED} == {"kvm", "qemu"}


@pytest.mark.parametrize("case", ACCEPTED)
def test_normalize_gives_what_libvirt_stored(case):
    virt_type = _split(case)[0]
    stored = cpu_from_xml(_read(DEFINE / (case + ".inactive.xml")))
    assert normalize_cpu(_given(case), virt_type, LIBVIRT_VERSION) == stored


@pytest.mark.parametrize("case", ACCEPTED)
def test_normalize_is_idempotent_on_stored(case):
    virt_type = _split(case)[0]
    stored = cpu_from_xml(_read(DEFINE / (case + ".inactive.xml")))
    assert normalize_cpu(stored, virt_type, LIBVIRT_VERSION) == stored


@pytest.mark.parametrize("case", ACCEPTED)
def test_validate_accepts_what_libvirt_accepts(case):
    rest = _split(case)[1]
    given = _given(case)
    if rest in STRICTER_THAN_LIBVIRT:
        with pytest.raises(CPUDefinitionError, match=STRICTER_THAN_LIBVIRT[rest]):
            validate_cpu(given)
    else:
        assert validate_cpu(given) is given


@pytest.mark.parametrize("case", REFUSED)
def test_validate_refuses_what_libvirt_refuses(case):
    assert (DEFINE / (case + ".error.txt")).exists(), "a refused case must have libvirt's error"
    with pytest.raises(CPUDefinitionError):
        validate_cpu(_given(case))


@pytest.mark.parametrize("path", PRINTED, ids=lambda path: path.relative_to(REAL).as_posix())
def test_round_trip_is_byte_for_byte(path):
    text = _read(path).rstrip("\n")
    assert cpu_to_xml(cpu_from_xml(text)) == text


def test_whole_domain_xml_reads_its_cpu():
    domain = _read(DEFINE / "kvm-hm.domain.xml")
    assert cpu_from_xml(domain) == _given("kvm-hm") == {"mode": "host-model"}


# --- the rules fixed against these fixtures (each names the case that showed it) -------------


def test_host_model_keeps_a_model_name_with_fallback_allow():
    # kvm-hm-noarch-model-name: <model>EPYC</model> is stored as <model fallback='allow'>EPYC</model>
    cpu = normalize_cpu({"mode": "host-model", "model": {"name": "EPYC"}}, "kvm", LIBVIRT_VERSION)
    assert cpu["model"] == {"name": "EPYC", "fallback": "allow"}
    assert "<model fallback='allow'>EPYC</model>" in cpu_to_xml(cpu)


def test_host_model_drops_a_bare_fallback():
    # kvm-hm-noarch-fallback-allow: <model fallback='allow'/> is not stored
    cpu = normalize_cpu({"mode": "host-model", "model": {"fallback": "allow"}}, "kvm", LIBVIRT_VERSION)
    assert "model" not in cpu
    assert cpu_to_xml({"mode": "host-model", "model": {"fallback": "allow"}}) == "<cpu mode='host-model'/>"


def test_host_model_vendor_id_alone_has_no_fallback():
    # kvm-hm-noarch-vendor-id: <model vendor_id='HostCPUTest1'/>
    cpu = normalize_cpu({"mode": "host-model", "model": {"vendor_id": "HostCPUTest1"}}, "kvm", LIBVIRT_VERSION)
    assert cpu["model"] == {"vendor_id": "HostCPUTest1"}
    assert "<model vendor_id='HostCPUTest1'/>" in cpu_to_xml(cpu)


@pytest.mark.parametrize("mode", ["custom", "host-model"])
def test_cache_passthrough_needs_passthrough_or_maximum(mode):
    # kvm-hm-noarch-cache-passthrough: "CPU cache mode 'passthrough' can only be used with ..."
    cpu = {"mode": mode, "cache": {"mode": "passthrough"}}
    if mode == "custom":
        cpu["model"] = {"name": "qemu64"}
    with pytest.raises(CPUDefinitionError, match="cache mode passthrough can only be used with host-passthrough or maximum"):
        validate_cpu(cpu)


@pytest.mark.parametrize("mode", ["host-passthrough", "maximum"])
def test_cache_passthrough_is_fine_for_passthrough_modes(mode):
    cpu = {"mode": mode, "cache": {"mode": "passthrough"}}
    assert validate_cpu(cpu) is cpu


def test_maxphysaddr_passthrough_takes_no_bits():
    # kvm-hp-noarch-maxphys-passthrough-bits
    with pytest.raises(CPUDefinitionError, match="bits cannot be used with mode passthrough"):
        validate_cpu({"mode": "host-passthrough", "maxphysaddr": {"mode": "passthrough", "bits": 42}})
    assert validate_cpu({"mode": "host-passthrough", "maxphysaddr": {"mode": "emulate", "bits": 42}})


# --- validation messages name the problem ---------------------------------------------------


@pytest.mark.parametrize("cpu, message", [
    ({"mode": "fancy"}, "mode 'fancy' is not valid; use one of: custom, host-model, host-passthrough, maximum"),
    ({"mode": "custom", "features": [{"name": "svm"}]}, "features in mode custom need a model"),
    ({"mode": "custom", "model": {"name": "EPYC"}, "features": [{"name": "svm"}, {"name": "svm"}]}, "listed twice"),
    ({"mode": "custom", "model": {"name": "EPYC"}, "features": [{"name": "svm", "policy": "maybe"}]}, "policy 'maybe' is not valid"),
    ({"mode": "host-model", "migratable": True}, "only supported with host-passthrough or maximum"),
    ({"mode": "custom", "vendor": "AMD"}, "CPU vendor specified without CPU model"),
    ({"mode": "custom", "model": {"name": "EPYC", "vendor_id": "short"}}, "exactly 12 characters"),
    ({"mode": "custom", "model": {"name": "EPYC"}, "topology": {"sockets": 1, "cores": 2}}, "missing: threads"),
    ({"mode": "custom", "colour": "red"}, "unknown CPU keys colour"),
    ("host-model", "a CPU must be a mapping"),
])
def test_validation_messages(cpu, message):
    with pytest.raises(CPUDefinitionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_cpu(cpu)
