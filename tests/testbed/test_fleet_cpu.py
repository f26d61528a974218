# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet CPU of the four testbed hosts (libvirt 7.0, 9.0, 11.3, 12.8) starts on every one of them
with one identical live CPU: kvm hosts only, TCG hosts only, and both together.

fleet_baseline computes it on the controller from each host's cpu_facts (gathered over SSH); each
guest is started paused on the host's own libvirtd and its live <cpu> read back.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Tuple

import libvirt
import pytest

from ansible_collections.hostcpu.libvirt.plugins.module_utils._baseline import fleet_baseline, host_records
from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import cpu_from_element, cpu_to_xml
from ansible_collections.hostcpu.libvirt.plugins.module_utils._expansion import predict_live_cpu
from ansible_collections.hostcpu.libvirt.plugins.module_utils._xml import parse_xml

from conftest import HOSTS, Host, guest_name

FLEETS = {"kvm": ("kvm",), "qemu": ("qemu",), "mixed": ("kvm", "qemu")}


def _facts_of(cpu_facts_results: Dict[str, Dict[str, Any]], host: Host) -> Dict[str, Any]:
    result = cpu_facts_results[host.name]
    assert not result.get("failed"), "%s: cpu_facts failed: %s" % (host, result.get("msg"))
    return result["ansible_facts"]["hostcpu"]


def _members(cpu_facts_results, virt_types: Tuple[str, ...]) -> List[Tuple[Host, str, Dict[str, Any]]]:
    members = []
    for host in HOSTS:
        facts = _facts_of(cpu_facts_results, host)
        members += [(host, virt_type, facts) for virt_type in virt_types if virt_type in facts["virt_types"]]
    return members


def _domain_xml(name: str, entry: Dict[str, Any], cpu: Dict[str, Any]) -> str:
    return ("<domain type='%s'><name>%s</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='%s'>hvm</type></os>%s<on_crash>destroy</on_crash>"
            "<devices><emulator>%s</emulator><memballoon model='none'/></devices></domain>"
            % (entry["domain_type"], name, entry["machine"], cpu_to_xml(cpu), entry["emulator"]))


def _live_cpu(conn: Any, name: str, entry: Dict[str, Any], cpu: Dict[str, Any]) -> Dict[str, Any]:
    """Start a transient paused guest with *cpu*, return its live CPU (or libvirt's refusal), destroy it."""
    try:
        domain = conn.createXML(_domain_xml(name, entry, cpu), libvirt.VIR_DOMAIN_START_PAUSED)
    except libvirt.libvirtError as exc:
        return {"refused": " ".join(str(exc).split())}
    try:
        return cpu_from_element(parse_xml(domain.XMLDesc(0)).find("cpu"))
    finally:
        domain.destroy()


@pytest.mark.parametrize("fleet", sorted(FLEETS))
def test_the_fleet_cpu_starts_on_every_testbed_host_with_one_live_cpu(fleet, cpu_facts_results, connect):
    members = _members(cpu_facts_results, FLEETS[fleet])
    assert len({host.name for host, _vt, _facts in members}) == len(HOSTS), "every host offers %s" % fleet
    records = host_records([{"name": "%s/%s" % (host, virt_type), "facts": facts, "virt_type": virt_type}
                            for host, virt_type, facts in members])
    baseline = fleet_baseline(records)
    assert fleet_baseline(list(reversed(records))).cpu == baseline.cpu, "the order of the hosts does not matter"
    live = {}
    for position, (host, virt_type, facts) in enumerate(members):
        entry = facts["virt_types"][virt_type]
        name = guest_name("fleet-%s-%d" % (fleet, position))
        live["%s/%s" % (host, virt_type)] = (_live_cpu(connect(host), name, entry, baseline.cpu),
                                             predict_live_cpu(baseline.cpu, entry))
    refused = {where: real["refused"] for where, (real, _predicted) in live.items() if "refused" in real}
    assert not refused, "the fleet CPU %s was refused: %s" % (json.dumps(baseline.cpu), refused)
    distinct = {json.dumps(real, sort_keys=True) for real, _predicted in live.values()}
    assert len(distinct) == 1, "one live CPU everywhere, got %d: %s" % (len(distinct), {w: r for w, (r, _p) in live.items()})
    wrong = {where: predicted for where, (real, predicted) in live.items() if predicted != real}
    assert not wrong, "live_cpu predicted another CPU than libvirt gave on %s" % sorted(wrong)
