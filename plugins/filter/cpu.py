# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters over the CPU dict: live_cpu, live_cpu_prediction, cpu_problems, cpu_xml, cpu_from_xml
(documentation in the .yml beside this file)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Dict, List, Optional

from ansible.errors import AnsibleFilterError

from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import (
    cpu_from_xml as _cpu_from_xml,
    cpu_to_xml,
    ordered,
    validate_cpu,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._domain import cpu_from_whole
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError, brief
from ansible_collections.hostcpu.libvirt.plugins.module_utils._expansion import live_cpu_or_refusal, predict_live_cpu
from ansible_collections.hostcpu.libvirt.plugins.module_utils._shape import cpu_input, plain, select_entry
from ansible_collections.hostcpu.libvirt.plugins.module_utils._validation import host_problems
from ansible_collections.hostcpu.libvirt.plugins.module_utils._versions import version_warning


NO_EXPANSION = ("%s: the host facts of virt type '%s' carry no expansion data; gather them with "
                "hostcpu.libvirt.cpu_facts (with its default expansion: true) from this collection's version")


def _virt_type_entry(host_facts: Any, virt_type: Optional[str], name: str) -> Mapping:
    """One ``virt_types`` entry from the whole ``hostcpu`` facts (or ansible_facts), or the entry itself."""
    try:
        return select_entry(host_facts, virt_type, "host_facts")
    except CPUError as exc:
        raise AnsibleFilterError(brief("%s: %s" % (name, exc))) from None


def _entry_with_expansion(host_facts: Any, virt_type: Optional[str], name: str) -> Mapping:
    entry = _virt_type_entry(host_facts, virt_type, name)
    if entry.get("expansion") is None:
        raise AnsibleFilterError(NO_EXPANSION % (name, entry.get("domain_type")))
    return entry


def live_cpu(cpu: Any, host_facts: Any, virt_type: Optional[str] = None) -> Dict[str, Any]:
    """The CPU dict libvirt's live XML shows once a guest with *cpu* runs on that host and virt type."""
    entry = _entry_with_expansion(host_facts, virt_type, "live_cpu")
    try:
        return predict_live_cpu(cpu_input(cpu), entry)
    except CPUError as exc:
        raise AnsibleFilterError("live_cpu: %s" % exc) from None


def live_cpu_prediction(cpu: Any, host_facts: Any, virt_type: Optional[str] = None, live: Any = None) -> Dict[str, Any]:
    """live_cpu that returns libvirt's refusal instead of failing: {cpu, error, fix, match, unpredictable}.

    *live*: the CPU the guest runs with now (domain_cpu's live_cpu); ``match`` says whether it is
    the predicted one (None when either is missing). ``unpredictable`` says why facts without
    expansion data give no prediction (None when they have it).
    """
    entry = _virt_type_entry(host_facts, virt_type, "live_cpu_prediction")
    try:
        running = None if live is None else cpu_input(live, "live")
        wanted = cpu_input(cpu)
        if entry.get("expansion") is None:
            validate_cpu(wanted)
            return {"cpu": None, "error": None, "fix": None, "match": None,
                    "unpredictable": NO_EXPANSION % ("live_cpu_prediction", entry.get("domain_type")), "warning": None}
        prediction = live_cpu_or_refusal(wanted, entry)
    except CPUError as exc:
        raise AnsibleFilterError(brief("live_cpu_prediction: %s" % exc)) from None
    prediction["match"] = None if running is None or prediction["cpu"] is None else prediction["cpu"] == running
    prediction["unpredictable"] = None
    prediction["warning"] = version_warning(entry.get("libvirt_version"))
    return prediction


def _cpu_option(cpu: Any) -> Dict[str, Any]:
    """A CPU as domain_cpu's cpu option takes it (null values dropped, features may be {name: policy}), or XML."""
    if isinstance(cpu, Mapping):
        return cpu_from_whole(plain(cpu))
    return cpu_input(cpu)


def _problems_of_cpu(cpu: Any, host_facts: Any, virt_type: Optional[str], partial: bool) -> List[str]:
    try:
        wanted = _cpu_option(cpu)
    except CPUError as exc:
        return [str(exc)]
    if not wanted:
        return []
    entry = select_entry(host_facts, virt_type, "host_facts")
    return host_problems(wanted, entry["domain_type"], dict(entry), partial)


def _problems_of_guest(guest: Any, host_facts: Any, virt_type: Optional[str], partial: bool) -> List[str]:
    if not isinstance(guest, Mapping) or not isinstance(guest.get("name"), str):
        raise AnsibleFilterError(brief("cpu_problems: each guest must be a mapping {name, cpu, virt_type}, got %r" % (guest,)))
    try:
        problems = _problems_of_cpu(guest.get("cpu"), host_facts, guest.get("virt_type") or virt_type, partial)
    except CPUError as exc:
        problems = [str(exc)]
    return ["%s: %s" % (guest["name"], problem) for problem in problems]


def cpu_problems(cpus: Any, host_facts: Any, virt_type: Optional[str] = None, partial: bool = False) -> List[str]:
    """Why the host of *host_facts* would refuse a CPU (or each guest's CPU) before anything is defined; [] when it would not."""
    if not isinstance(partial, bool):
        raise AnsibleFilterError(brief("cpu_problems: partial must be true or false, got %r" % (partial,)))
    if isinstance(cpus, list):
        return [problem for guest in cpus for problem in _problems_of_guest(guest, host_facts, virt_type, partial)]
    try:
        return _problems_of_cpu(cpus, host_facts, virt_type, partial)
    except CPUError as exc:
        raise AnsibleFilterError(brief("cpu_problems: %s" % exc)) from None


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
            "live_cpu_prediction": live_cpu_prediction,
            "cpu_problems": cpu_problems,
            "cpu_xml": cpu_xml,
            "cpu_from_xml": cpu_from_xml,
        }
