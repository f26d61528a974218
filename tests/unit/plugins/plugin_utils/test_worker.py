# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_worker: the action plugins' worker leaves the objects it inherited out of its garbage collections."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ansible.plugins.action.normal import ActionModule as NormalAction

from ansible_collections.hostcpu.libvirt.plugins.plugin_utils._worker import NormalActionWithFrozenHeap

ROOT = Path(__file__).resolve().parents[4]

# Run in a child, as Ansible's worker is one: freezing is for a process that ends with its task.
CHILD = """
import gc
from ansible_collections.hostcpu.libvirt.plugins.plugin_utils._worker import freeze_inherited_objects
inherited = [[index] for index in range(1000)]
before = gc.get_freeze_count()
freeze_inherited_objects()
print(before, gc.get_freeze_count())
"""


def test_the_objects_a_worker_has_when_its_action_starts_are_frozen():
    env = dict(os.environ, PYTHONPATH=str(ROOT / ".collections"))
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, check=True).stdout.split()
    before, after = map(int, out)
    assert before == 0 and after >= 1000


def test_the_modules_actions_run_them_as_the_normal_action_does():
    from ansible_collections.hostcpu.libvirt.plugins.action import cpu_baseline, domain_cpu, migration_probe  # pylint: disable=import-outside-toplevel
    for action in (domain_cpu, cpu_baseline, migration_probe):
        assert action.ActionModule is NormalActionWithFrozenHeap
    assert issubclass(NormalActionWithFrozenHeap, NormalAction)
    assert NormalActionWithFrozenHeap.run is not NormalAction.run
