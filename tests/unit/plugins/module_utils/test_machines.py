# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Machine types in the facts and the fleet's common machine type, on what libvirt 7.0, 9.0, 11.3 and
12.8 printed on the testbed hosts (tests/unit/fixtures/versions, make testbed-fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts import machine_types, parse_capabilities
from ansible_collections.hostcpu.libvirt.plugins.module_utils._machines import (
    MachineError,
    fleet_machine,
    offers_machine,
    resolve_machine,
    versioned,
)

VERSIONS = Path(__file__).resolve().parents[2] / "fixtures" / "versions"
LIBVIRTS = ("7.0.0", "9.0.0", "11.3.0", "12.8.0")


def facts(version: str):
    return json.loads((VERSIONS / version / "cpu_facts.json").read_text())


def entries(virt_type: str = "kvm"):
    return [(version, facts(version)["virt_types"][virt_type]) for version in LIBVIRTS]


@pytest.mark.parametrize("version", LIBVIRTS)
def test_the_facts_list_what_capabilities_list(version):
    entry = facts(version)["virt_types"]["qemu"]
    caps = parse_capabilities((VERSIONS / version / "capabilities.xml").read_text())
    assert machine_types(caps, entry) == {key: entry[key] for key in ("machines", "machine_aliases", "deprecated_machines")}
    assert entry["machine"] in entry["machines"]
    assert "pc" not in entry["machines"] and resolve_machine(entry, "pc").startswith("pc-i440fx-")


def test_each_qemu_has_its_own_newest_types():
    newest = {version: resolve_machine(entry, "q35") for version, entry in entries()}
    assert newest == {"7.0.0": "pc-q35-5.2", "9.0.0": "pc-q35-7.2", "11.3.0": "pc-q35-10.0", "12.8.0": "pc-q35-11.1"}
    assert "pc-i440fx-5.2" in facts("12.8.0")["virt_types"]["kvm"]["deprecated_machines"]


def test_the_fleet_shares_the_oldest_qemus_newest_types():
    assert fleet_machine(entries()) == {"pc-i440fx": "pc-i440fx-5.2", "pc-q35": "pc-q35-5.2"}
    assert fleet_machine(entries("qemu"), "q35") == "pc-q35-5.2"
    assert fleet_machine(entries()[1:], "pc") == "pc-i440fx-7.2"
    assert fleet_machine(list(reversed(entries())), "i440fx") == "pc-i440fx-5.2"


def test_a_family_without_a_common_version_names_what_each_host_offers():
    hosts = [("old", {"machines": ["pc-q35-5.2", "pc-q35-6.0"]}), ("new", {"machines": ["pc-q35-8.0", "pc-q35-9.0"]})]
    with pytest.raises(MachineError, match=r"no pc-q35 machine type is offered by every host \(old: pc-q35-5.2 to pc-q35-6.0; "
                                           r"new: pc-q35-8.0 to pc-q35-9.0\)"):
        fleet_machine(hosts, "q35")
    assert fleet_machine(hosts) == {}


def test_unknown_family_and_facts_without_machines_are_refused_clearly():
    with pytest.raises(MachineError, match="unknown machine type family 'virt'; the hosts' QEMUs have .*pc-q35"):
        fleet_machine(entries(), "virt")
    with pytest.raises(MachineError, match="the facts of old carry no machine types; gather them again"):
        fleet_machine([("old", {"domain_type": "kvm"})])
    with pytest.raises(MachineError, match="empty"):
        fleet_machine([])


def test_offers_machine_resolves_aliases_like_the_host():
    entry = facts("9.0.0")["virt_types"]["kvm"]
    assert offers_machine(entry, "pc-i440fx-5.2") and offers_machine(entry, "q35")
    assert not offers_machine(entry, "pc-q35-10.0")
    assert versioned("pc-q35-10.0") == ("pc-q35", (10, 0)) and versioned("microvm") is None
