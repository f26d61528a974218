# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fleet filters: fleet_baseline, cpu_blockers, fleet_compatibility, migration_blockers, fleet_machine
(documentation in the .yml beside this file)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from ansible.errors import AnsibleFilterError

from ansible_collections.hostcpu.libvirt.plugins.module_utils._baseline import (
    compatibility,
    cpu_input,
    cpu_verdict,
    fleet_baseline as _fleet_baseline,
    host_records,
    select_entry,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError
from ansible_collections.hostcpu.libvirt.plugins.module_utils._machines import fleet_machine as _fleet_machine
from ansible_collections.hostcpu.libvirt.plugins.module_utils._migration import verdict_from_facts


def fleet_baseline(hosts: Any, virt_type: Optional[str] = None, check: str = "full", model: Optional[str] = None) -> Dict[str, Any]:
    """A custom CPU every host of *hosts* starts with the same live CPU."""
    try:
        return _fleet_baseline(host_records(hosts, virt_type), check=check, model=model).cpu
    except CPUError as exc:
        raise AnsibleFilterError("fleet_baseline: %s" % exc) from None


def cpu_blockers(cpu: Any, host_facts: Any, virt_type: Optional[str] = None) -> Dict[str, Any]:
    """Whether *cpu* starts on the host of *host_facts*, and what blocks it when it does not."""
    try:
        return cpu_verdict(cpu_input(cpu), select_entry(host_facts, virt_type))
    except CPUError as exc:
        raise AnsibleFilterError("cpu_blockers: %s" % exc) from None


def fleet_compatibility(hosts: Any, guests: Optional[List[Any]] = None, baseline_hosts: Optional[List[str]] = None,
                        virt_type: Optional[str] = None, check: str = "full", model: Optional[str] = None,
                        machine_family: str = "pc-i440fx") -> Dict[str, Any]:
    """Host groups, the fleet CPU, and for every guest where it runs and migrates (the fleet role's report)."""
    if guests is not None and not isinstance(guests, list):
        raise AnsibleFilterError("fleet_compatibility: guests must be a list of {name, cpu, host}, got %s"
                                 % type(guests).__name__)
    if baseline_hosts is not None and not isinstance(baseline_hosts, list):
        raise AnsibleFilterError("fleet_compatibility: baseline_hosts must be a list of host names, got %s"
                                 % type(baseline_hosts).__name__)
    try:
        return compatibility(host_records(hosts, virt_type), guests or [],
                             None if baseline_hosts is None else [str(name) for name in baseline_hosts], check,
                             model or None, str(machine_family))
    except CPUError as exc:
        raise AnsibleFilterError("fleet_compatibility: %s" % exc) from None


def migration_blockers(live_cpu: Any, dest_facts: Any, virt_type: Optional[str] = None, source: Any = None,
                       machine: Optional[str] = None) -> List[str]:
    """Why a guest running *live_cpu* would not migrate live to that host keeping its CPU; [] when it would."""
    try:
        return list(verdict_from_facts(live_cpu, dest_facts, virt_type, source, machine)["blockers"])
    except CPUError as exc:
        raise AnsibleFilterError("migration_blockers: %s" % exc) from None


def fleet_machine(hosts: Any, family: Optional[str] = None, virt_type: Optional[str] = None) -> Any:
    """The newest machine type of each family (or of *family*) that every host's QEMU offers."""
    try:
        return _fleet_machine([(record.name, record.entry) for record in host_records(hosts, virt_type)], family)
    except CPUError as exc:
        raise AnsibleFilterError("fleet_machine: %s" % exc) from None


class FilterModule:
    """hostcpu.libvirt fleet filters."""

    def filters(self) -> Dict[str, Any]:
        return {
            "fleet_baseline": fleet_baseline,
            "cpu_blockers": cpu_blockers,
            "fleet_compatibility": fleet_compatibility,
            "migration_blockers": migration_blockers,
            "fleet_machine": fleet_machine,
        }
