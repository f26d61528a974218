# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""migration_verdict on the facts libvirt 7.0, 9.0, 11.3 and 12.8 gave on the testbed hosts.

The expected answers are what real ``virsh migrate --live`` between those hosts did (measured
2026-12-01, ../shared/versions.md, and by tests/testbed/test_migration_matrix.py): host-model guests
under TCG refused with these texts, the one into 12.8 losing cmp_legacy, the fleet CPU moving
everywhere.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from ansible_collections.hostcpu.libvirt.plugins.module_utils._baseline import fleet_baseline, host_records
from ansible_collections.hostcpu.libvirt.plugins.module_utils._expansion import predict_live_cpu
from ansible_collections.hostcpu.libvirt.plugins.module_utils._migration import (
    MigrationInputError,
    _definition_changes,
    migration_blockers,
    migration_verdict,
    verdict_from_facts,
)

VERSIONS = Path(__file__).resolve().parents[2] / "fixtures" / "versions"
LIBVIRTS = ("7.0.0", "9.0.0", "11.3.0", "12.8.0")
FLEET_MACHINE = "pc-i440fx-5.2"


@pytest.fixture(scope="module")
def facts():
    return {version: json.loads((VERSIONS / version / "cpu_facts.json").read_text()) for version in LIBVIRTS}


def entry(facts, version, virt_type="qemu"):
    return facts[version]["virt_types"][virt_type]


def host_model_move(facts, source, dest):
    live = predict_live_cpu({"mode": "host-model"}, entry(facts, source))
    return migration_verdict(live, entry(facts, dest), entry(facts, source), FLEET_MACHINE)


@pytest.mark.parametrize("source,dest,refusal", [
    ("9.0.0", "11.3.0", "operation failed: guest CPU doesn't match specification: missing features: pcommit"),
    ("9.0.0", "12.8.0", "operation failed: guest CPU doesn't match specification: missing features: pcommit"),
    ("12.8.0", "11.3.0", "operation failed: guest CPU doesn't match specification: missing features: "
                         "no-nested-data-bp,null-sel-clr-base"),
    ("11.3.0", "9.0.0", "unsupported configuration: unknown CPU feature: cmpccxadd"),
    ("9.0.0", "7.0.0", "unsupported configuration: unknown CPU feature: pks"),
])
def test_host_model_guests_under_tcg_are_refused_as_libvirt_refused_them(facts, source, dest, refusal):
    verdict = host_model_move(facts, source, dest)
    assert verdict["outcome"] == "refused" and not verdict["migrates"] and verdict["live_cpu"] is None
    assert verdict["refusal"] == refusal
    assert verdict["blockers"][0].startswith(refusal + "; ") and "hostcpu.libvirt.fleet_baseline" in verdict["blockers"][0]


def test_into_libvirt_12_8_the_guest_loses_cmp_legacy(facts):
    verdict = host_model_move(facts, "11.3.0", "12.8.0")
    assert verdict["outcome"] == "changed" and verdict["refusal"] is None
    assert "libvirt 12.8.0 on the destination drops cmp_legacy from the live CPU" in verdict["blockers"][0]
    assert "cmp_legacy" not in [feature["name"] for feature in verdict["live_cpu"]["features"]]


@pytest.mark.parametrize("virt_type", ["kvm", "qemu"])
def test_the_fleet_cpu_migrates_in_every_direction_keeping_its_cpu(facts, virt_type):
    records = host_records([{"name": v, "facts": facts[v], "virt_type": virt_type} for v in LIBVIRTS])
    fleet = fleet_baseline(records).cpu
    for source, dest in itertools.permutations(LIBVIRTS, 2):
        live = predict_live_cpu(fleet, entry(facts, source, virt_type))
        verdict = migration_verdict(live, entry(facts, dest, virt_type), entry(facts, source, virt_type), FLEET_MACHINE)
        assert verdict == {"outcome": "kept", "migrates": True, "blockers": [], "refusal": None, "live_cpu": live}, (source, dest)


def test_a_guest_without_cpu_migrates_everywhere(facts):
    for source, dest in itertools.permutations(LIBVIRTS, 2):
        assert verdict_from_facts({}, facts[dest], "qemu", facts[source], FLEET_MACHINE)["migrates"], (source, dest)


def test_a_machine_type_the_destination_lacks_is_refused(facts):
    blockers = migration_blockers({}, entry(facts, "7.0.0"), entry(facts, "12.8.0"), "pc-q35-11.1")
    assert blockers == ["unsupported configuration: Emulator '/usr/bin/qemu-system-x86_64' does not support machine type "
                        "'pc-q35-11.1'; define the guests with a machine type every host's QEMU offers "
                        "(hostcpu.libvirt.fleet_machine)"]
    assert migration_blockers({}, entry(facts, "7.0.0"), None, "q35") == []


def test_invtsc_stops_the_migration_on_the_source(facts):
    live = {"mode": "custom", "check": "full", "model": {"name": "qemu64"},
            "features": [{"name": "invtsc", "policy": "require"}]}
    verdict = migration_verdict(live, entry(facts, "9.0.0", "kvm"))
    assert verdict["refusal"] == "Requested operation is not valid: domain has 'invtsc' CPU feature but TSC frequency is not specified"
    assert "frequency" in verdict["blockers"][0]


def test_maximum_cannot_go_to_libvirt_7_0(facts):
    verdict = host_model_move(facts, "9.0.0", "9.0.0")
    assert verdict["outcome"] == "kept"
    live = predict_live_cpu({"mode": "maximum"}, entry(facts, "11.3.0"))
    verdict = migration_verdict(live, entry(facts, "7.0.0"), entry(facts, "11.3.0"))
    assert verdict["outcome"] == "refused" and verdict["refusal"] == "unsupported configuration: Invalid mode attribute 'maximum'"
    assert "libvirt 7.0.0 knows the modes custom, host-model, host-passthrough" in verdict["blockers"][0]


def test_maximum_sees_another_cpu_on_another_qemu(facts):
    live = predict_live_cpu({"mode": "maximum"}, entry(facts, "11.3.0"))
    verdict = migration_verdict(live, entry(facts, "12.8.0"), entry(facts, "11.3.0"))
    assert verdict["outcome"] == "changed"
    assert "gains no-nested-data-bp, null-sel-clr-base" in verdict["blockers"][0]


def test_passthrough_without_the_source_cannot_be_promised(facts):
    verdict = migration_verdict({"mode": "host-passthrough"}, entry(facts, "12.8.0", "kvm"))
    assert verdict["outcome"] == "changed" and "source=" in verdict["blockers"][0]


def test_a_definition_needs_the_source_and_is_started_there(facts):
    with pytest.raises(MigrationInputError, match="a host-model CPU is filled in when the guest starts"):
        migration_verdict({"mode": "host-model"}, entry(facts, "9.0.0"))
    by_definition = verdict_from_facts({"mode": "host-model"}, facts["11.3.0"], "qemu", facts["9.0.0"])
    assert by_definition["refusal"] == host_model_move(facts, "9.0.0", "11.3.0")["refusal"]
    assert verdict_from_facts("<cpu mode='host-model'/>", facts["12.8.0"], "qemu", facts["11.3.0"])["outcome"] == "changed"


def test_bad_inputs_name_the_problem(facts):
    with pytest.raises(MigrationInputError, match="machine must be a machine type name"):
        verdict_from_facts({}, facts["9.0.0"], "qemu", None, 5)
    with pytest.raises(Exception, match="does not start on the source"):
        verdict_from_facts({"model": {"name": "Skylake-Server"}}, facts["9.0.0"], "kvm", facts["9.0.0"])


PASSTHROUGH_FIXED = {"mode": "host-passthrough", "features": [{"name": "arch-capabilities", "policy": "disable"}]}


@pytest.mark.parametrize("source,dest,outcome,words", [
    ("7.0.0", "9.0.0", "kept", None),
    ("9.0.0", "7.0.0", "kept", None),
    ("11.3.0", "12.8.0", "changed", "gains tsa-sq-no, tsa-l1-no"),
    ("12.8.0", "11.3.0", "changed", "loses tsa-sq-no, tsa-l1-no"),
    ("9.0.0", "11.3.0", "changed", "gains erms, fsrm"),
])
def test_host_passthrough_keeps_its_cpu_only_where_qemu_and_kvm_give_the_same(facts, source, dest, outcome, words):
    """As measured by the testbed's migration matrix (host-passthrough with arch-capabilities off, nested KVM):
    a feature only the newer libvirt knows is one the older QEMU does not give."""
    live = predict_live_cpu(PASSTHROUGH_FIXED, entry(facts, source, "kvm"))
    verdict = migration_verdict(live, entry(facts, dest, "kvm"), entry(facts, source, "kvm"), FLEET_MACHINE)
    assert verdict["outcome"] == outcome
    if words:
        assert words in verdict["blockers"][0] and "host-passthrough guest sees the CPU" in verdict["blockers"][0]


def test_feature_order_and_implied_topology_are_not_changes(facts):
    live = predict_live_cpu({"mode": "host-model"}, entry(facts, "9.0.0"))
    reordered = dict(live, features=list(reversed(live["features"])), topology={"sockets": 1, "cores": 1, "threads": 1})
    with_clusters = dict(live, topology={"sockets": 1, "dies": 1, "clusters": 1, "cores": 1, "threads": 1})
    assert _definition_changes(reordered, with_clusters, "qemu", entry(facts, "12.8.0")) == []
    dropped = dict(live, features=live["features"][1:])
    assert "drops %s" % live["features"][0]["name"] in _definition_changes(live, dropped, "qemu", entry(facts, "12.8.0"))[0]
