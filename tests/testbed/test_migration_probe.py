# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""hostcpu.libvirt.migration_probe between testbed hosts, run through Ansible on this machine.

The module runs where the controller is (testbed-bookworm, a local connection with the venv's
python), opens two hosts' libvirt sockets and migrates its probe guest between them; the QEMUs
stream on 127.0.0.1 on ports of this test's own (49810-49819).

* The fleet CPU of the four hosts (kvm), with the machine type they all offer, migrates between
  neighbouring hosts there and back and keeps its CPU: outcome ``kept`` both ways, as
  fleet_compatibility predicts for those groups.
* A host-model guest under TCG from bookworm (libvirt 9.0) to trixie (11.3) is refused by libvirt
  ("missing features: pcommit"): a real refusal is the result ``refused`` with libvirt's text, not a
  failure of the task; the way back is measured with a guest started on trixie.
* A probe guest that does not start on the source fails the task with libvirt's message.

No probe guest is left on any host (they are transient; the session's clean-up removes any
``hostcpu-testbed-<token>-`` guest as well).
"""

from __future__ import annotations

from typing import Any, Dict

import libvirt
import pytest

from ansible_collections.hostcpu.libvirt.plugins.module_utils._baseline import compatibility, host_records

from conftest import HOSTS, SESSION_PREFIX, Host, run_ansible

CONTROLLER = "testbed-bookworm"
FIRST_PORT = 49810
PREFIX = SESSION_PREFIX + "probe-"
BY_SUITE = {host.suite: host for host in HOSTS}


def _facts(cpu_facts_results: Dict[str, Dict[str, Any]], host: Host) -> Dict[str, Any]:
    result = cpu_facts_results[host.name]
    assert not result.get("failed"), "%s: cpu_facts failed: %s" % (host, result.get("msg"))
    return result["ansible_facts"]["hostcpu"]


@pytest.fixture(scope="module")
def fleet(cpu_facts_results) -> Dict[str, Any]:
    """fleet_compatibility of the four hosts' kvm, as the fleet role computes it."""
    records = host_records([{"name": host.name, "facts": _facts(cpu_facts_results, host), "virt_type": "kvm"}
                            for host in HOSTS])
    data = compatibility(records)
    assert data["baseline"]["cpu"] is not None, data["baseline"]["error"]
    assert data["machine"]["guest_machine"], data["machine"]["error"]
    return data


def probe(source: Host, dest: Host, port: int, **args: Any) -> Dict[str, Any]:
    args = dict(source_uri=source.uri, dest_uri=dest.uri, dest_address="127.0.0.1", source_address="127.0.0.1",
                port=port, source_port=port + 1, name_prefix=PREFIX, **args)
    return run_ansible(CONTROLLER, "hostcpu.libvirt.migration_probe", args)[CONTROLLER]


def assert_no_probe_guest(name: str) -> None:
    for host in HOSTS:
        conn = libvirt.open(host.uri)
        try:
            left = [dom.name() for dom in conn.listAllDomains() if dom.name().startswith(PREFIX)]
        finally:
            conn.close()
        assert name not in left, "%s left the probe guest %s behind" % (host, name)


def _group_of(fleet: Dict[str, Any], host: Host) -> str:
    return next(item["group"] for item in fleet["hosts"] if item["name"] == host.name)


def _predicted(fleet: Dict[str, Any], source: Host, dest: Host) -> str:
    paths = next(guest for guest in fleet["guests"] if guest["name"] == "fleet CPU")["paths"]
    origin, target = _group_of(fleet, source), _group_of(fleet, dest)
    return next(path["outcome"] for path in paths if path["from"] == origin and path["to"] == target)


NEIGHBOURS = [(HOSTS[i], HOSTS[(i + 1) % len(HOSTS)]) for i in range(len(HOSTS))][:2]


@pytest.mark.parametrize("source,dest", NEIGHBOURS, ids=lambda host: host.suite)
def test_the_fleet_cpu_migrates_there_and_back_keeping_its_cpu(source, dest, fleet, cpu_facts_results):
    entry = _facts(cpu_facts_results, source)["virt_types"]["kvm"]
    result = probe(source, dest, FIRST_PORT + 2 * NEIGHBOURS.index((source, dest)), cpu=fleet["baseline"]["cpu"],
                   virt_type="kvm", machine=fleet["machine"]["guest_machine"], emulator=entry["emulator"])
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is False
    for way, origin, target in (("there", source, dest), ("back", dest, source)):
        got = result[way]
        assert got["migrated"] and got["error"] is None, "%s %s -> %s: %s" % (way, origin, target, got)
        assert got["outcome"] == "kept", "%s %s -> %s: %s" % (way, origin, target, got["changes"])
        assert got["cpuid_kept"] is True and got["fresh"] is False
        assert got["cpu_before"] == got["cpu_after"]
        assert got["outcome"] == _predicted(fleet, origin, target), "the prediction of %s -> %s" % (origin, target)
    assert result["libvirt_versions"]["source"] != result["libvirt_versions"]["dest"]
    assert_no_probe_guest(result["name"])


def test_a_refusal_is_a_result_with_libvirts_text():
    source, dest = BY_SUITE["bookworm"], BY_SUITE["trixie"]
    result = probe(source, dest, FIRST_PORT + 6, cpu={"mode": "host-model"}, virt_type="qemu", machine="pc-i440fx-5.2")
    assert not result.get("failed"), result.get("msg")
    there, back = result["there"], result["back"]
    assert there["outcome"] == "refused" and there["migrated"] is False, there
    assert "missing features: pcommit" in there["error"], there["error"]
    assert there["cpu_before"]["mode"] == "custom" and there["cpu_after"] is None
    # The guest never got to trixie: the way back is a guest started there (its own host-model CPU).
    assert back["fresh"] is True
    assert back["outcome"] in ("kept", "changed", "refused") and back["cpu_before"], back
    if back["outcome"] == "refused":
        assert back["error"], back
    assert_no_probe_guest(result["name"])


def test_a_probe_guest_that_does_not_start_fails_the_task():
    source, dest = BY_SUITE["bookworm"], BY_SUITE["bullseye"]
    result = probe(source, dest, FIRST_PORT + 8, virt_type="qemu", machine="pc-i440fx-0.1-nosuch")
    assert result.get("failed"), result
    message = result["msg"]
    assert "does not start on the source" in message and "pc-i440fx-0.1-nosuch" in message, message
    assert "Traceback" not in str(result)
