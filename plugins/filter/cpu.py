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
from ansible_collections.hostcpu.libvirt.plugins.module_utils._shape import cpu_input, plain, select_entry


def _virt_type_entry(host_facts: Any, virt_type: Optional[str]) -> Mapping:
    """One ``virt_types`` entry from the whole ``hostcpu`` facts (or ansible_facts), or the entry itself."""
    try:
        return select_entry(host_facts, virt_type, "host_facts")
    except CPUError as exc:
        raise AnsibleFilterError(brief("live_cpu: %s" % exc)) from None


def live_cpu(cpu: Any, host_facts: Any, virt_type: Optional[str] = None) -> Dict[str, Any]:
    """The CPU dict libvirt's live XML shows once a guest with *cpu* runs on that host and virt type."""
    entry = _virt_type_entry(host_facts, virt_type)
    if entry.get("expansion") is None:
        raise AnsibleFilterError("live_cpu: the host facts of virt type '%s' carry no expansion data; gather them with "
                                 "hostcpu.libvirt.cpu_facts (with its default expansion: true) from this collection's version"
                                 % entry.get("domain_type"))
    try:
        return predict_live_cpu(cpu_input(cpu), entry)
    except CPUError as exc:
        raise AnsibleFilterError("live_cpu: %s" % exc) from None


def cpu_xml(cpu: Any, indent: int = 2) -> str:
    """The CPU dict as libvirt prints ``<cpu>``."""
    if not isinstance(cpu, Mapping):
        raise AnsibleFilterError("cpu_xml: the CPU must be a CPU dict like {mode: host-model}, got %s" % type(cpu).__name__)
    if isinstance(indent, bool) or not isinstance(indent, int) or indent < 0:
        raise AnsibleFilterError(brief("cpu_xml: indent must be a whole number >= 0, got %r" % (indent,)))
    try:
        return cpu_to_xml(_with_policies(validate_cpu(plain(cpu))), indent=indent)
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
