# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests runs_on and migrates_to (documentation in the .yml beside this file)."""

from __future__ import annotations

from typing import Any, Dict, Optional

from ansible.errors import AnsibleFilterError

from ansible_collections.hostcpu.libvirt.plugins.module_utils._baseline import cpu_input, runs_on as _runs_on, select_entry
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError
from ansible_collections.hostcpu.libvirt.plugins.module_utils._migration import verdict_from_facts


def runs_on(cpu: Any, host_facts: Any, virt_type: Optional[str] = None) -> bool:
    """True when a guest with *cpu* starts on the host of *host_facts* (the live-CPU prediction accepts it)."""
    try:
        return _runs_on(cpu_input(cpu), select_entry(host_facts, virt_type))
    except CPUError as exc:
        raise AnsibleFilterError("runs_on: %s" % exc) from None


def migrates_to(live_cpu: Any, dest_facts: Any, virt_type: Optional[str] = None, source: Any = None,
                machine: Optional[str] = None) -> bool:
    """True when a guest running *live_cpu* migrates live to that host and keeps its CPU."""
    try:
        return bool(verdict_from_facts(live_cpu, dest_facts, virt_type, source, machine)["migrates"])
    except CPUError as exc:
        raise AnsibleFilterError("migrates_to: %s" % exc) from None


class TestModule:
    """hostcpu.libvirt tests."""

    def tests(self) -> Dict[str, Any]:
        return {"runs_on": runs_on, "migrates_to": migrates_to}
