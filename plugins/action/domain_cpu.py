# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The action of hostcpu.libvirt.domain_cpu: the module runs as without an action plugin, in a worker whose
garbage collections leave the controller's objects alone (``_worker.freeze_inherited_objects``)."""

from __future__ import annotations

from ansible_collections.hostcpu.libvirt.plugins.plugin_utils._worker import NormalActionWithFrozenHeap as ActionModule  # noqa: F401

__all__ = ["ActionModule"]
