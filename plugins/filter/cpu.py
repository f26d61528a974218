# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters over the CPU dict: live_cpu, cpu_xml, cpu_from_xml (documentation in the .yml beside this file)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Dict, Optional

from ansible.errors import AnsibleFilterError

from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import (
    cpu_from_xml as _cpu_from_xml,
    cpu_to_xml,
    ordered,
    validate_cpu,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError, brief
from ansible_collections.hostcpu.libvirt.plugins.module_utils._expansion import predict_live_cpu
from ansible_collections.hostcpu.libvirt.plugins.module_utils._shape import check_entry

VIRT_TYPES = ("kvm", "qemu")
DEFAULT_VIRT_TYPE = "kvm"


def _plain(value: Any) -> Any:
    """Templar containers and unsafe strings -> plain dict/list/str (the module_utils compare types)."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, str):
        return str(value)
    return value


def _cpu_input(cpu: Any, what: str) -> Dict[str, Any]:
    """A CPU dict, ``<cpu>`` (or ``<domain>``) XML text, or nothing (no ``<cpu>``: libvirt's default)."""
    if cpu is None or (isinstance(cpu, str) and not cpu.strip()):
        return {}
    if isinstance(cpu, (str, bytes)):
        return _cpu_from_xml(cpu)
    if isinstance(cpu, Mapping):
        return _plain(cpu)
    raise AnsibleFilterError("%s: the CPU must be a CPU dict (like {mode: host-model}) or <cpu> XML text, got %s"
                             % (what, type(cpu).__name__))


def _looks_like_entry(value: Mapping) -> bool:
    return "modes" in value and "domain_type" in value


def _virt_type_entry(host_facts: Any, virt_type: Optional[str]) -> Mapping:
    """One ``virt_types`` entry from the whole ``hostcpu`` facts (or ansible_facts), or the entry itself.

    The entry is used as it is (only read, never copied: the prediction caches what it needs by the
    fingerprint of its expansion data)."""
    if virt_type is not None and virt_type not in VIRT_TYPES:
        raise AnsibleFilterError(brief("live_cpu: unknown virt type '%s'; valid virt types are: %s"
                                       % (virt_type, ", ".join(VIRT_TYPES))))
    if not isinstance(host_facts, Mapping):
        raise AnsibleFilterError("live_cpu: host_facts must be ansible_facts.hostcpu from hostcpu.libvirt.cpu_facts "
                                 "(or one of its virt_types entries), got %s" % type(host_facts).__name__)
    if "hostcpu" in host_facts and isinstance(host_facts["hostcpu"], Mapping):
        host_facts = host_facts["hostcpu"]
    if _looks_like_entry(host_facts):
        if virt_type is not None and host_facts.get("domain_type") != virt_type:
            raise AnsibleFilterError("live_cpu: the host facts given are those of virt type '%s', not '%s'; pass the "
                                     "whole hostcpu facts or drop virt_type" % (host_facts.get("domain_type"), virt_type))
        return _checked(host_facts)
    virt_types = host_facts.get("virt_types")
    if not isinstance(virt_types, Mapping):
        raise AnsibleFilterError("live_cpu: host_facts has neither 'virt_types' nor 'modes': pass ansible_facts.hostcpu "
                                 "as set by hostcpu.libvirt.cpu_facts, or one entry of its virt_types")
    wanted = virt_type or DEFAULT_VIRT_TYPE
    if wanted not in virt_types:
        offered = ", ".join(sorted(virt_types)) or "none"
        raise AnsibleFilterError("live_cpu: the host facts have no virt type '%s' (they have: %s); pass virt_type='%s' "
                                 "or probe that virt type with hostcpu.libvirt.cpu_facts"
                                 % (wanted, offered, sorted(virt_types)[0] if virt_types else "qemu"))
    entry = virt_types[wanted]
    if not isinstance(entry, Mapping) or not _looks_like_entry(entry):
        raise AnsibleFilterError("live_cpu: host_facts.virt_types.%s is not a virt type entry of hostcpu.libvirt.cpu_facts"
                                 % wanted)
    return _checked(entry, wanted)


def _checked(entry: Mapping, virt_type: Optional[str] = None) -> Mapping:
    try:
        return check_entry(entry, "the host facts", virt_type)
    except CPUError as exc:
        raise AnsibleFilterError("live_cpu: %s" % exc) from None


def live_cpu(cpu: Any, host_facts: Any, virt_type: Optional[str] = None) -> Dict[str, Any]:
    """The CPU dict libvirt's live XML shows once a guest with *cpu* runs on that host and virt type."""
    entry = _virt_type_entry(host_facts, virt_type)
    if entry.get("expansion") is None:
        raise AnsibleFilterError("live_cpu: the host facts of virt type '%s' carry no expansion data; gather them with "
                                 "hostcpu.libvirt.cpu_facts (with its default expansion: true) from this collection's version"
                                 % entry.get("domain_type"))
    try:
        return predict_live_cpu(_cpu_input(cpu, "live_cpu"), entry)
    except CPUError as exc:
        raise AnsibleFilterError("live_cpu: %s" % exc) from None


def cpu_xml(cpu: Any, indent: int = 2) -> str:
    """The CPU dict as libvirt prints ``<cpu>``."""
    if not isinstance(cpu, Mapping):
        raise AnsibleFilterError("cpu_xml: the CPU must be a CPU dict like {mode: host-model}, got %s" % type(cpu).__name__)
    if isinstance(indent, bool) or not isinstance(indent, int) or indent < 0:
        raise AnsibleFilterError(brief("cpu_xml: indent must be a whole number >= 0, got %r" % (indent,)))
    try:
        return cpu_to_xml(_with_policies(validate_cpu(_plain(cpu))), indent=indent)
    except CPUError as exc:
        raise AnsibleFilterError("cpu_xml: %s" % exc) from None


def _with_policies(cpu: Dict[str, Any]) -> Dict[str, Any]:
    """Features without a policy get libvirt's default, require: libvirt prints it, and its schema needs it."""
    if not cpu.get("features"):
        return cpu
    return dict(cpu, features=[dict(feature, policy=feature.get("policy") or "require") for feature in cpu["features"]])


def cpu_from_xml(text: Any) -> Dict[str, Any]:
    """``<cpu>`` (or a whole ``<domain>``) XML text -> the CPU dict."""
    if not isinstance(text, (str, bytes)):
        raise AnsibleFilterError("cpu_from_xml: expected <cpu> XML text, got %s" % type(text).__name__)
    try:
        return ordered(_cpu_from_xml(text))
    except CPUError as exc:
        raise AnsibleFilterError("cpu_from_xml: %s" % exc) from None


class FilterModule:
    """hostcpu.libvirt CPU filters."""

    def filters(self) -> Dict[str, Any]:
        return {
            "live_cpu": live_cpu,
            "cpu_xml": cpu_xml,
            "cpu_from_xml": cpu_from_xml,
        }
