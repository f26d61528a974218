# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The action of hostcpu.libvirt.cpu_facts: on an unchanged host, the facts of the small
cpu_facts_cached module instead of a full run (``_cpu_facts_action`` and ``_facts_key`` decide;
this only runs the modules, in a worker whose garbage collections leave the controller's objects
alone: ``_worker.freeze_inherited_objects``)."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any, Dict, Optional

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.plugins.action import ActionBase
from ansible.utils.vars import merge_hash

from ansible_collections.hostcpu.libvirt.plugins.plugin_utils._cpu_facts_action import code_fingerprint, hit_result, reuse_plan
from ansible_collections.hostcpu.libvirt.plugins.plugin_utils._worker import freeze_inherited_objects

PLUGINS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL_MODULE = "hostcpu.libvirt.cpu_facts"
CACHED_MODULE = "hostcpu.libvirt.cpu_facts_cached"


@lru_cache(maxsize=1)
def collection_code() -> str:
    return code_fingerprint(PLUGINS_DIR)


class ActionModule(ActionBase):

    _supports_check_mode = True
    _supports_async = True

    def run(self, tmp: Optional[str] = None, task_vars: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        freeze_inherited_objects()
        result = super().run(tmp, task_vars)
        del tmp  # no longer has any effect
        args = dict(self._task.args)
        wrap_async = bool(self._task.async_val) and not self._connection.has_native_async
        try:
            plan = None if self._task.async_val else reuse_plan(args)
            hit = self._cached(plan, args, task_vars) if plan is not None else None
            if hit is not None:
                return merge_hash(result, hit)
            full = self._execute_module(FULL_MODULE, module_args=dict(args, _code=collection_code()), task_vars=task_vars,
                                        wrap_async=wrap_async)
            return merge_hash(result, full)
        finally:
            if not wrap_async:
                self._remove_tmp_path(self._connection._shell.tmpdir)

    def _cached(self, plan: Dict[str, Any], args: Dict[str, Any], task_vars: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        """cpu_facts' result from cpu_facts_cached on a hit; None on a miss or when it could not run."""
        try:
            found = self._execute_module(CACHED_MODULE, module_args=dict(plan, _code=collection_code()), task_vars=task_vars)
        except AnsibleConnectionFailure:
            raise
        except AnsibleError:
            return None
        return hit_result(found, args)
