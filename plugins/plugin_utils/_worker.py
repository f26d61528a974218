# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Ansible worker process the collection's action plugins run in."""

from __future__ import annotations

import gc
from typing import Any, Dict, Optional

from ansible.plugins.action.normal import ActionModule as NormalAction


def freeze_inherited_objects() -> None:
    """Keep this task's garbage collections off the objects the worker inherited from the controller.

    Ansible forks a worker per task and host, which exits when the task is done. Building a module's
    payload (parsing its module_utils) and reading its result allocate enough to start full
    collections, and each walks every object of the forked ansible-playbook (measured: 60-130 ms a
    task; the more hosts and variables a play has, the more), writing into pages it shares with the
    parent. ``gc.freeze`` moves them to the permanent generation, as Python's documentation advises
    for forked children: those collections then walk the task's own objects only. Objects are still
    freed when their last reference goes; only cycles among the inherited ones (nothing this task
    makes) are left to the worker's exit.
    """
    gc.freeze()


class NormalActionWithFrozenHeap(NormalAction):
    """ansible.builtin's normal action (run the module, as for a module without an action plugin),
    after freeze_inherited_objects."""

    def run(self, tmp: Optional[str] = None, task_vars: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        freeze_inherited_objects()
        return super().run(tmp, task_vars)
