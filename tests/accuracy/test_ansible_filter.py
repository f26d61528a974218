# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The whole path through real Ansible: cpu_facts on this host, the facts carried as JSON to the
controller, live_cpu and cpu_xml in Jinja, a refusal failing the task with libvirt's reason.

The refused CPU is one every host refuses: TCG gives no pcid, so a qemu host-model guest that
requires it fails libvirt's check='partial' comparison; the test starts it for real to prove it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ansible_collections.hostcpu.libvirt.plugins.filter.cpu import cpu_xml, live_cpu

from . import harness

ROOT = Path(__file__).resolve().parents[2]
NOARCH = {"name": "arch-capabilities", "policy": "disable"}
REFUSED_CPU = {"mode": "host-model", "features": [{"name": "pcid", "policy": "require"}]}
REFUSED_REASON = "Host CPU does not provide required features: pcid"
TASKS = [
    {"name": "facts", "hostcpu.libvirt.cpu_facts": {}},
    {"name": "kvm host-model", "ansible.builtin.debug": {
        "msg": "{{ {'mode': 'host-model', 'features': [{'name': 'arch-capabilities', 'policy': 'disable'}]}"
               " | hostcpu.libvirt.live_cpu(ansible_facts.hostcpu) }}"}},
    {"name": "qemu host-model as XML", "ansible.builtin.debug": {
        "msg": "{{ \"<cpu mode='host-model'/>\" | hostcpu.libvirt.live_cpu(ansible_facts.hostcpu.virt_types.qemu)"
               " | hostcpu.libvirt.cpu_xml }}"}},
    {"name": "refused", "ansible.builtin.debug": {
        "msg": "{{ %r | hostcpu.libvirt.live_cpu(ansible_facts.hostcpu, 'qemu') }}" % REFUSED_CPU}},
]


def _run_playbook(tmp_path: Path):
    playbook = tmp_path / "live_cpu.json"
    playbook.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "connection": "local",
                                     "tasks": [dict(task, ignore_errors=True) for task in TASKS]}]))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".collections"), ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_LOCALHOST_WARNING="0",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="0", ANSIBLE_NOCOLOR="1")
    command = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", str(playbook)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600, check=False)
    assert proc.stdout.strip(), proc.stderr
    output = json.loads(proc.stdout[proc.stdout.index("{"):])
    return [task["hosts"]["localhost"] for task in output["plays"][0]["tasks"]]


def _started_for_real(conn, entry) -> harness.Outcome:
    reaper = harness.Reaper(conn, harness.guest_log_dir(), alive=1)
    try:
        return harness.run_real(conn, reaper, entry, "%s%s-qemu-refused" % (harness.PREFIX, harness.run_token()), REFUSED_CPU)
    finally:
        reaper.close()


def test_live_cpu_through_ansible_equals_the_prediction_on_this_hosts_facts(tmp_path, conn, facts):
    facts_result, kvm, qemu, refused = _run_playbook(tmp_path)
    assert not facts_result.get("failed"), facts_result.get("msg")
    assert kvm["msg"] == live_cpu({"mode": "host-model", "features": [NOARCH]}, facts)
    assert kvm["msg"]["features"][0] == {"name": "vme", "policy": "require"}
    assert qemu["msg"] == cpu_xml(live_cpu({"mode": "host-model"}, facts, "qemu"))
    assert qemu["msg"].startswith("<cpu mode='custom' match='exact' check='full'>")
    assert refused.get("failed") is True
    assert REFUSED_REASON in refused["msg"] and "disable pcid" in refused["msg"]
    real = _started_for_real(conn, facts["virt_types"]["qemu"])
    assert real.kind == "start-error" and REFUSED_REASON in real.error, real
