# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""KVM refusing an MSR the guest's CPUID does not announce, on what an Intel host really did.

tests/unit/fixtures/real-intel (libvirt 9.0 / QEMU 7.2, nested KVM on an Intel Xeon, kernel 6.18)
holds the cases of scripts/capture_fixtures.py around it: a model whose CPUID level stops below
leaf 7 (486: level 1, pentium3: level 3) with arch-capabilities and an MSR 0x10a bit is refused
("failed to set MSR 0x10a to 0x20"), with a feature that makes QEMU raise the level (erms at leaf
7 EBX, xsaveopt at leaf 0xD) it starts, md-clear (leaf 7 EDX) raises nothing. The probe data of
the same host is tests/unit/fixtures/expansion/intel/qemu-kvm.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List

import pytest

from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import cpu_from_xml
from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_map import cpu_map_from_xml
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import GuestWouldNotStart
from ansible_collections.hostcpu.libvirt.plugins.module_utils._expansion import (
    context_for,
    guest_cpu,
    predict_live_cpu,
    prepare_for_qemu,
    qemu_cpu_option,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._expansion_data import expansion_data_from_xml
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts import parse_domain_capabilities

UNIT = Path(__file__).resolve().parents[2]
REAL = UNIT / "fixtures" / "real-intel"
DEFINE = REAL / "define"
EXPANSION = UNIT / "fixtures" / "expansion"
NOARCH = {"name": "arch-capabilities", "policy": "disable"}
NEW_KEYS = ("msr_unannounced_failures", "levels", "level_raisers")
QEMU_MESSAGE = re.compile(r"qemu-system-[^:\s]+: (?!warning: )(.*?)(?= \S*\d\dT\d\d:\S* qemu-system-| qemu-system-|$)")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _cpu_map_files() -> Dict[str, str]:
    return {path.name: _text(path) for path in (EXPANSION / "cpu_map").glob("*.xml")}


def _probe() -> Dict[str, Any]:
    return json.loads(_text(EXPANSION / "intel" / "qemu-kvm.json"))


def _entry(probe: Dict[str, Any]) -> Dict[str, Any]:
    domcaps = _text(REAL / "domcapabilities-kvm.xml")
    result = parse_domain_capabilities(domcaps)
    result["libvirt_version"] = "9.0.0"
    result["expansion"] = expansion_data_from_xml(_cpu_map_files(), _text(REAL / "capabilities.xml"), domcaps, probe)
    return result


@pytest.fixture(scope="module")
def entry() -> Dict[str, Any]:
    return _entry(_probe())


@pytest.fixture(scope="module")
def old_entry() -> Dict[str, Any]:
    """The same host's facts as a probe without the unannounced-MSR guest measured them."""
    probe = _probe()
    del probe["msr_unannounced_failures"]
    result = _entry(probe)
    assert not set(NEW_KEYS) & set(result["expansion"]["qemu"])
    return result


def _cases() -> List[str]:
    return sorted(path.name[:-len(".given.xml")] for path in DEFINE.glob("*.given.xml"))


def _given(case: str) -> Dict[str, Any]:
    return cpu_from_xml(_text(DEFINE / (case + ".given.xml")))


def test_the_real_cases_are_there():
    outcomes = json.loads(_text(REAL / "outcomes.json"))["kvm"]
    assert len(_cases()) == 7
    assert {case for case, outcome in outcomes.items() if not outcome["started"]} == {
        "c-486-arch-capabilities-mds-no", "c-486-arch-capabilities-mds-no-md-clear", "c-pentium3-arch-capabilities-rdctl-no"}


@pytest.mark.parametrize("case", _cases())
def test_prediction_equals_what_libvirt_did(entry, case):
    given = _given(case)
    live = DEFINE / (case + ".live.xml")
    if live.exists():
        assert predict_live_cpu(given, entry) == cpu_from_xml(_text(live))
        ctx = context_for(entry)
        assert qemu_cpu_option(prepare_for_qemu(ctx, guest_cpu(given, ctx))) == _text(DEFINE / (case + ".qemu-cpu.txt")).strip()
        return
    error = " ".join(_text(DEFINE / (case + ".error.txt")).split())
    with pytest.raises(GuestWouldNotStart) as refused:
        predict_live_cpu(given, entry)
    assert QEMU_MESSAGE.search(error).group(1) in refused.value.reason


def test_the_refusal_names_the_bits_the_level_and_the_fix(entry):
    given = _given("kvm-c-486-arch-capabilities-mds-no")
    with pytest.raises(GuestWouldNotStart) as refused:
        predict_live_cpu(given, entry)
    assert refused.value.reason.endswith("error: failed to set MSR 0x10a to 0x20")
    assert refused.value.missing_features == ["mds-no"]
    assert refused.value.fix == [NOARCH]
    assert "CPUID level is 1 (model 486)" in str(refused.value)
    assert "use a CPU model of CPUID level 7 or more" in str(refused.value)
    fixed = dict(given, features=[f for f in given["features"] if f["name"] != "arch-capabilities"] + refused.value.fix)
    live = predict_live_cpu(fixed, entry)
    assert {f["name"]: f["policy"] for f in live["features"]}["mds-no"] == "disable"
    with pytest.raises(GuestWouldNotStart, match="to 0x1"):
        predict_live_cpu(_given("kvm-c-pentium3-arch-capabilities-rdctl-no"), entry)


def test_facts_without_the_rule_predict_as_before(old_entry):
    """Facts gathered before the rule (or on a host where KVM accepts the write) predict a start."""
    live = predict_live_cpu(_given("kvm-c-486-arch-capabilities-mds-no"), old_entry)
    assert {f["name"]: f["policy"] for f in live["features"]}["mds-no"] == "require"


def test_a_model_of_level_7_or_more_is_not_refused(entry):
    cpu = {"check": "none", "model": {"name": "coreduo"},
           "features": [{"name": "arch-capabilities", "policy": "require"}, {"name": "mds-no", "policy": "require"}]}
    assert predict_live_cpu(cpu, entry)["model"]["name"] == "coreduo"


def test_the_measured_levels_are_qemus(entry):
    """QEMU 7.2's definitions and its x86_cpu_expand_features: which features raise the CPUID level."""
    qemu = entry["expansion"]["qemu"]
    assert qemu["msr_unannounced_failures"] == [{"index": 0x10a, "value": "0x1", "leaf": 7}]
    assert {name: qemu["levels"][name] for name in ("486", "pentium", "pentium2", "pentium3", "qemu32", "kvm32", "coreduo")} == {
        "486": 1, "pentium": 1, "pentium2": 2, "pentium3": 3, "qemu32": 4, "kvm32": 5, "coreduo": 10}
    assert qemu["levels"]["max"] >= 7
    cpu_map = cpu_map_from_xml(_cpu_map_files())
    probe = _probe()
    raisers = {name: int(level) for level, names in probe["level_raisers"].items() for name in names}
    assert raisers["erms"] == raisers["umip"] == raisers["fsgsbase"] == 7 and raisers["xsaveopt"] == 13
    leaf_7_edx = [name for name, bit in cpu_map["bits"].items() if bit[:4] == ("cpuid", 7, 0, "edx")]
    assert "arch-capabilities" in leaf_7_edx and "md-clear" in leaf_7_edx
    assert not set(leaf_7_edx) & set(raisers), "QEMU 7.2 does not raise the level for CPUID 7.0 EDX"


def test_level_raisers_measured_per_word_are_each_features_own_lower_bound():
    """One expansion per CPUID word (and one of its first feature) against every feature expanded alone."""
    probe = _probe()
    alone = probe["feature_levels"]
    raisers = {name: int(level) for level, names in probe["level_raisers"].items() for name in names}
    base = probe["levels"]["486"]
    assert {name for name, level in alone.items() if level > base} == set(raisers)
    assert all(raisers[name] <= alone[name] for name in raisers)
    assert {name for name, level in alone.items() if level >= 7} == {name for name, level in raisers.items() if level >= 7}
    assert alone["intel-pt"] == 20 and alone["sgx"] == 18 and raisers["intel-pt"] == raisers["sgx"] == 7
