# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The runs_on test plugin: the live-CPU prediction's yes or no, errors as AnsibleFilterError."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "module_utils"))
from fleet_facts import real_facts  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.hostcpu.libvirt.plugins.test.cpu import TestModule as RunsOnTests  # noqa: E402

runs_on = RunsOnTests().tests()["runs_on"]


@pytest.fixture(scope="module")
def facts():
    return real_facts()


def test_registered():
    assert list(RunsOnTests().tests()) == ["runs_on", "migrates_to"]


@pytest.mark.parametrize("cpu, virt_type, expected", [
    ({"mode": "host-model"}, "qemu", True),
    ({"mode": "host-model"}, "kvm", False),  # nested KVM refuses MSR 0x10a (arch-capabilities)
    ({"mode": "host-model", "features": [{"name": "arch-capabilities", "policy": "disable"}]}, "kvm", True),
    ("<cpu mode='custom'><model>EPYC</model></cpu>", "kvm", False),
    ("<cpu mode='custom'><model>EPYC</model></cpu>", "qemu", True),
    ({"mode": "custom", "model": {"name": "pentium3"}}, "kvm", True),
    (None, "qemu", True),
])
def test_runs_on(facts, cpu, virt_type, expected):
    assert runs_on(cpu, facts, virt_type) is expected
    assert runs_on(cpu, facts["virt_types"][virt_type]) is expected


def test_runs_on_errors(facts):
    with pytest.raises(AnsibleFilterError, match=r"runs_on: host facts have no virt type 'kvm' \(they have: none\)"):
        runs_on({"mode": "host-model"}, {"virt_types": {}}, "kvm")
    with pytest.raises(AnsibleFilterError, match="runs_on: .*carry no expansion data"):
        entry = dict(facts["virt_types"]["qemu"])
        entry.pop("expansion")
        runs_on({"mode": "host-model"}, entry)
    with pytest.raises(AnsibleFilterError, match="runs_on: feature 'svm' is listed twice"):
        runs_on({"model": {"name": "EPYC"}, "features": [{"name": "svm"}, {"name": "svm"}]}, facts)


def test_migrates_to_is_migration_verdicts_boolean():
    versions = Path(__file__).resolve().parents[2] / "fixtures" / "versions"
    old, new = (json.loads((versions / v / "cpu_facts.json").read_text()) for v in ("9.0.0", "11.3.0"))
    migrates_to = RunsOnTests().tests()["migrates_to"]
    assert migrates_to({"mode": "host-model"}, new, "qemu", source=old) is False
    assert migrates_to({}, new, "qemu", source=old, machine="pc-i440fx-7.2") is True
    assert migrates_to({}, old, "qemu", source=new, machine="pc-i440fx-10.0") is False
    with pytest.raises(AnsibleFilterError, match="migrates_to: a host-model CPU is filled in"):
        migrates_to({"mode": "host-model"}, new, "qemu")
