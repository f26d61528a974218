# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet CPU against the real libvirtd: this machine's kvm and qemu virt types as a two-host fleet.

On an AMD host both host-model CPUs are AMD; on an Intel host kvm's is Intel and TCG's is AMD
(QEMU's 'max'), where libvirt's own baseline of the two refuses "CPU vendors do not match" and the
comparisons with it use libvirt's baseline of the kvm host alone.

* hostcpu.libvirt.cpu_baseline through real Ansible answers what libvirt-python answers;
* fleet_baseline (through real Ansible) has the features of libvirt's own baseline, or fewer;
* guests with the fleet CPU start under kvm and under qemu, with the same live CPU, and libvirt's
  compareHypervisorCPU accepts the fleet CPU on both;
* runs_on / cpu_blockers say what really starting a guest shows.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from conftest import libvirt, module_task, run_playbook

from ansible_collections.hostcpu.libvirt.plugins.module_utils._baseline import (
    cpu_map_for,
    cpu_verdict,
    enabled_features,
    fleet_baseline,
    host_records,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import cpu_from_xml, cpu_to_xml, ordered

ARCH = "x86_64"
COMPARE = {0: "incompatible", 1: "identical", 2: "superset"}


def _ok(result: Dict[str, Any]) -> Dict[str, Any]:
    assert not result.get("failed"), result.get("msg")
    return result


@pytest.fixture(scope="module")
def facts(tmp_path_factory) -> Dict[str, Any]:
    result = _ok(run_playbook([module_task("cpu_facts", {})], tmp_path_factory.mktemp("facts"))[0])
    return result["ansible_facts"]["hostcpu"]


@pytest.fixture(scope="module")
def both(facts) -> List[str]:
    missing = [vt for vt in ("kvm", "qemu") if vt not in facts["virt_types"]]
    if missing:
        pytest.skip("the two-virt-type fleet needs kvm and qemu; this machine lacks %s (%s)"
                    % (", ".join(missing), facts.get("unavailable_virt_types")))
    for vt in ("kvm", "qemu"):
        assert facts["virt_types"][vt].get("expansion"), "cpu_facts gathered no expansion data for %s" % vt
    return ["kvm", "qemu"]


@pytest.fixture(scope="module")
def fleet(facts, both):
    return host_records([{"name": vt + "-host", "facts": facts, "virt_type": vt} for vt in both])


@pytest.fixture(scope="module")
def baseline(fleet):
    return fleet_baseline(fleet)


def _task_results(tmp_path: Path, tasks: List[Dict[str, Any]], variables: Optional[Dict[str, Any]] = None):
    extra = None
    if variables is not None:
        path = tmp_path / "vars.json"
        path.write_text(json.dumps(variables))
        extra = ["-e", "@%s" % path]
    return run_playbook(tasks, tmp_path, extra)


def _start(domains, suffix: str, virt_type: str, cpu: Dict[str, Any]):
    """Start a paused guest with *cpu*: (live CPU dict, None) or (None, libvirt's error)."""
    try:
        dom = domains.define(suffix, virt_type, cpu_to_xml(cpu, level=1), start=True)
    except libvirt.libvirtError as exc:
        return None, exc.get_error_message()
    return ordered(cpu_from_xml(dom.XMLDesc(0))), None


def _libvirt_baseline(conn, virt_type: str, cpus: List[str], flags: int = 0) -> Dict[str, Any]:
    return ordered(cpu_from_xml(conn.baselineHypervisorCPU(None, ARCH, None, virt_type, cpus, flags)))


def _host_model_xml(entry: Dict[str, Any]) -> str:
    return cpu_to_xml({"mode": "custom", "match": "exact", **entry["modes"]["host-model"]["cpu"]}, indent=0)


def _same_vendor(facts: Dict[str, Any], virt_types: List[str]) -> bool:
    return len({facts["virt_types"][vt]["modes"]["host-model"]["cpu"].get("vendor") for vt in virt_types}) == 1


def _libvirt_baseline_xmls(facts: Dict[str, Any], virt_types: List[str]) -> List[str]:
    """The host CPUs libvirt's own baseline can take: both, or kvm's alone across vendors."""
    chosen = virt_types if _same_vendor(facts, virt_types) else virt_types[:1]
    return [_host_model_xml(facts["virt_types"][vt]) for vt in chosen]


def _libvirt_answer(call, *args):
    """(result, None) or (None, libvirt's message)."""
    try:
        return call(*args), None
    except libvirt.libvirtError as exc:
        return None, exc.get_error_message()


# --- cpu_baseline is libvirt's answer ---------------------------------------------------------


def test_cpu_baseline_module_is_libvirts_answer(conn, facts, both, tmp_path):
    entries = [facts["virt_types"][vt] for vt in both]
    xmls = [_host_model_xml(entry) for entry in entries]
    tasks = [module_task("cpu_baseline", {"cpus": entries, "virt_type": vt, "migratable": migratable, "expand": expand})
             for vt in both for migratable in (False, True) for expand in (False, True)]
    results = _task_results(tmp_path, tasks)
    index = 0
    for vt in both:
        for migratable in (False, True):
            for expand in (False, True):
                flags = ((libvirt.VIR_CONNECT_BASELINE_CPU_MIGRATABLE if migratable else 0)
                         | (libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES if expand else 0))
                result = results[index]
                index += 1
                assert result["changed"] is False
                theirs, error = _libvirt_answer(_libvirt_baseline, conn, vt, xmls, flags)
                if error is not None:
                    assert result.get("failed") and error in result["msg"], (error, result.get("msg"))
                    continue
                _ok(result)
                assert result["virt_type"] == vt and result["arch"] == ARCH
                assert result["baseline"] == theirs
                assert cpu_from_xml(result["baseline_xml"]) == result["baseline"]
    if not _same_vendor(facts, both):
        assert all(result.get("failed") for result in results), "libvirt refuses a baseline across vendors"


def test_cpu_baseline_compare_is_libvirts_answer(conn, facts, both, baseline, tmp_path):
    epyc = {"mode": "custom", "model": {"name": "EPYC"}}
    cases = [(baseline.cpu, vt) for vt in both] + [(epyc, vt) for vt in both]
    results = _task_results(tmp_path, [module_task("cpu_baseline", {"compare": cpu, "virt_type": vt}, check_mode=True)
                                       for cpu, vt in cases])
    for (cpu, vt), result in zip(cases, results):
        answer = conn.compareHypervisorCPU(None, ARCH, None, vt, cpu_to_xml(cpu), 0)
        assert _ok(result)["compare"]["result"] == COMPARE[answer]
        assert (result["compare"]["reason"] is None) == (answer != 0)
    assert [r["compare"]["result"] for r in results[:len(both)]] == ["superset"] * len(both)
    kvm_epyc = results[len(both)]
    assert kvm_epyc["compare"]["result"] == "incompatible"
    assert "does not provide required features" in kvm_epyc["compare"]["reason"] and "svm" in kvm_epyc["compare"]["reason"]


@pytest.mark.parametrize("args, message", [
    ({}, r"give cpus \(for libvirt's baseline\), compare \(to compare a CPU with this host\) or both"),
    ({"cpus": []}, "cpus is empty: give at least one CPU"),
    ({"cpus": ["<domain/>"]}, r"cpus\[0\] is <domain> XML; pass a <cpu> element"),
    ({"cpus": ["<cpu"]}, "cpus\\[0\\]"),
    ({"cpus": [3]}, r"cpus\[0\] must be <cpu> XML text, a CPU dict or a host's hostcpu facts, got int"),
    ({"cpus": [{"mode": "custom", "migratable": True}]}, "migratable is only supported with host-passthrough or maximum"),
    ({"compare": {"model": {"name": "NoSuchModel"}}, "virt_type": "qemu"}, "comparing the CPU .* failed: .*NoSuchModel"),
    ({"cpus": ["<cpu mode='custom'><model>486</model><vendor>AMD</vendor></cpu>",
               "<cpu mode='custom'><model>486</model><vendor>Intel</vendor></cpu>"], "virt_type": "qemu"},
     "computing the baseline of 2 CPUs for qemu \\(baselineHypervisorCPU\\) failed: .*vendor"),
])
def test_cpu_baseline_refuses_bad_input(args, message, tmp_path):
    result = _task_results(tmp_path, [module_task("cpu_baseline", args)])[0]
    assert result.get("failed") is True
    assert "Traceback" not in result["msg"]
    assert result.get("changed") is False
    assert re.search(message, result["msg"]), result["msg"]


# --- the filter's baseline and libvirt's ---------------------------------------------------------


def test_fleet_baseline_has_libvirts_features_or_fewer(conn, facts, both, baseline, fleet):
    """On the real fleet: our features equal libvirt's baseline (asked of either hypervisor, plain and MIGRATABLE)."""
    cpu_map = cpu_map_for(fleet)
    ours = enabled_features(baseline.cpu, cpu_map)
    xmls = _libvirt_baseline_xmls(facts, both)
    for vt in both:
        for flags in (0, libvirt.VIR_CONNECT_BASELINE_CPU_MIGRATABLE):
            theirs = enabled_features(_libvirt_baseline(conn, vt, xmls, flags), cpu_map)
            assert ours <= theirs, sorted(ours - theirs)
            print("fleet baseline vs libvirt's (%s, flags %d): ours %d features, libvirt's %d, equal: %s"
                  % (vt, flags, len(ours), len(theirs), ours == theirs))


def test_fleet_baseline_filter_in_ansible(facts, both, baseline, tmp_path):
    expression = ("{{ [facts.virt_types.kvm, facts.virt_types.qemu] | hostcpu.libvirt.fleet_baseline }}")
    tasks = [
        {"name": "filter", "ansible.builtin.debug": {"msg": expression}},
        {"name": "runs_on", "ansible.builtin.debug": {
            "msg": "{{ [cpu is hostcpu.libvirt.runs_on(facts, 'kvm'), cpu is hostcpu.libvirt.runs_on(facts, 'qemu'), "
                   "epyc is hostcpu.libvirt.runs_on(facts), epyc is hostcpu.libvirt.runs_on(facts.virt_types.qemu)] }}"}},
        {"name": "why not", "ansible.builtin.debug": {"msg": "{{ epyc | hostcpu.libvirt.cpu_blockers(facts, 'kvm') }}"}},
        {"name": "bad", "ansible.builtin.debug": {"msg": "{{ [] | hostcpu.libvirt.fleet_baseline }}"}},
    ]
    variables = {"facts": facts, "cpu": baseline.cpu, "epyc": {"mode": "custom", "model": {"name": "EPYC"}}}
    results = _task_results(tmp_path, tasks, variables)
    assert _ok(results[0])["msg"] == baseline.cpu
    assert _ok(results[1])["msg"] == [True, True, False, True]
    verdict = _ok(results[2])["msg"]
    assert verdict["runs"] is False and "svm" in verdict["missing_features"]
    assert results[3]["failed"] is True
    assert "fleet_baseline: the list of hosts is empty" in results[3]["msg"]


# --- guests with the fleet CPU, started for real ---------------------------------------------------


def test_fleet_cpu_starts_identically_under_kvm_and_qemu(conn, facts, both, baseline, domains):
    lives = {}
    for vt in both:
        live, error = _start(domains, "fleet-" + vt, vt, baseline.cpu)
        assert error is None, "the fleet CPU does not start under %s: %s" % (vt, error)
        lives[vt] = live
        predicted = cpu_verdict(baseline.cpu, facts["virt_types"][vt])["live_cpu"]
        assert live == predicted
        answer = conn.compareHypervisorCPU(None, ARCH, None, vt, cpu_to_xml(baseline.cpu), 0)
        assert COMPARE[answer] in ("identical", "superset")
    assert lives["kvm"] == lives["qemu"], "a guest moving between kvm and qemu would see its CPU change"


def test_libvirts_own_baseline_as_a_fleet_cpu(conn, facts, both, domains, fleet):
    """libvirt's baseline with check='full' and 'partial', started for real: the prediction says the outcome.

    On the test machine it is why the fleet CPU is not libvirt's as it is: under kvm QEMU adds
    features to the model (vme, x2apic), so check='full' refuses the start and check='partial'
    gives kvm guests a different CPU than qemu guests.
    """
    xmls = _libvirt_baseline_xmls(facts, both)
    theirs = _libvirt_baseline(conn, "kvm", xmls, libvirt.VIR_CONNECT_BASELINE_CPU_MIGRATABLE)
    lives = {}
    for check in ("full", "partial"):
        cpu = dict(theirs, check=check)
        for vt in both:
            verdict = cpu_verdict(cpu, facts["virt_types"][vt])
            live, error = _start(domains, "%s-%s" % (check, vt), vt, cpu)
            assert (error is None) is verdict["runs"], (check, vt, error, verdict["reason"])
            if error is not None:
                for name in verdict["extra_features"] + verdict["missing_features"]:
                    assert name in error
            if check == "partial":
                lives[vt] = live
    cpu_map = cpu_map_for(fleet)
    differs = enabled_features(lives["kvm"], cpu_map) != enabled_features(lives["qemu"], cpu_map)
    predicted_differs = (enabled_features(cpu_verdict(dict(theirs, check="partial"), facts["virt_types"]["kvm"])["live_cpu"], cpu_map)
                         != enabled_features(cpu_verdict(dict(theirs, check="partial"), facts["virt_types"]["qemu"])["live_cpu"], cpu_map))
    assert differs is predicted_differs


@pytest.mark.parametrize("cpu", [
    {"mode": "host-model"},
    {"mode": "host-model", "features": [{"name": "arch-capabilities", "policy": "disable"}]},
    {"mode": "custom", "model": {"name": "EPYC"}},
    {"mode": "custom", "model": {"name": "pentium3"}, "check": "full"},
    {"mode": "custom", "model": {"name": "kvm64"}},
], ids=["host-model", "host-model-noarch", "EPYC", "pentium3-full", "kvm64"])
def test_runs_on_says_what_a_start_shows(facts, both, domains, cpu):
    for vt in both:
        verdict = cpu_verdict(cpu, facts["virt_types"][vt])
        _live, error = _start(domains, vt, vt, cpu)
        assert (error is None) is verdict["runs"], (vt, error, verdict["reason"])
