# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet filters are thin wrappers: same answers as _baseline, errors as AnsibleFilterError."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "module_utils"))
from fleet_facts import real_facts  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.hostcpu.libvirt.plugins.filter.fleet import FilterModule  # noqa: E402
from ansible_collections.hostcpu.libvirt.plugins.module_utils._baseline import (  # noqa: E402
    cpu_verdict,
    fleet_baseline as baseline_of,
    host_records,
)

FILTERS = FilterModule().filters()


@pytest.fixture(scope="module")
def facts():
    return real_facts()


def test_filters_are_registered():
    assert set(FILTERS) == {"fleet_baseline", "cpu_blockers", "fleet_compatibility", "migration_blockers", "fleet_machine"}


def test_fleet_baseline_is_the_module_utils_answer(facts):
    hosts = [facts["virt_types"]["kvm"], facts["virt_types"]["qemu"]]
    assert FILTERS["fleet_baseline"](hosts) == baseline_of(host_records(hosts)).cpu
    assert FILTERS["fleet_baseline"]({"a": facts}, "qemu")["model"]["name"] == baseline_of(host_records([facts], "qemu")).cpu["model"]["name"]
    assert FILTERS["fleet_baseline"](hosts, check="partial")["check"] == "partial"
    assert FILTERS["fleet_baseline"](hosts, model="kvm64")["model"]["name"] == "kvm64"


@pytest.mark.parametrize("hosts, kwargs, message", [
    ([], {}, "fleet_baseline: the list of hosts is empty"),
    ("kvm", {}, "fleet_baseline: the hosts must be a list"),
    ([{"a": 1}], {}, "fleet_baseline: the facts of host 1 have neither"),
    (["facts"], {"check": "none"}, "fleet_baseline: check must be one of full, partial"),
    (["facts"], {"virt_type": "xen"}, "fleet_baseline: the facts of host 1: unknown virt type 'xen'"),
])
def test_fleet_baseline_errors(facts, hosts, kwargs, message):
    hosts = [facts if item == "facts" else item for item in hosts] if isinstance(hosts, list) else hosts
    with pytest.raises(AnsibleFilterError, match=message):
        FILTERS["fleet_baseline"](hosts, **kwargs)


def test_cpu_blockers(facts):
    verdict = FILTERS["cpu_blockers"]("<cpu mode='custom'><model>EPYC</model></cpu>", facts)
    assert verdict == cpu_verdict({"mode": "custom", "model": {"name": "EPYC"}}, facts["virt_types"]["kvm"])
    assert verdict["runs"] is False and "svm" in verdict["missing_features"]
    assert FILTERS["cpu_blockers"]({"mode": "host-model"}, facts, "qemu")["runs"] is True
    assert FILTERS["cpu_blockers"]({"mode": "host-model"}, facts["virt_types"]["qemu"])["live_cpu"]["model"]["name"] == "EPYC"


@pytest.mark.parametrize("cpu, virt_type, message", [
    (3, None, "cpu_blockers: the CPU must be a CPU dict"),
    ("<domain><cpu mode='bogus'/></domain>", None, "cpu_blockers: mode 'bogus' is not valid"),
    ({"mode": "host-model"}, "xen", "cpu_blockers: host facts: unknown virt type 'xen'"),
])
def test_cpu_blockers_errors(facts, cpu, virt_type, message):
    with pytest.raises(AnsibleFilterError, match=message):
        FILTERS["cpu_blockers"](cpu, facts, virt_type)


def test_fleet_compatibility(facts):
    hosts = [{"name": "k", "facts": facts, "virt_type": "kvm"}, {"name": "q", "facts": facts, "virt_type": "qemu"}]
    report = FILTERS["fleet_compatibility"](hosts, [{"name": "web", "cpu": {"mode": "host-model"}, "host": "q"}], ["k", "q"])
    assert [g["hosts"] for g in report["groups"]] == [["k"], ["q"]]
    assert [g["name"] for g in report["guests"]] == ["fleet CPU", "web"]
    assert report["guests"][1]["runs_on"] == ["G2"]
    with pytest.raises(AnsibleFilterError, match="fleet_compatibility: guests must be a list"):
        FILTERS["fleet_compatibility"](hosts, {"name": "web"})
    with pytest.raises(AnsibleFilterError, match="fleet_compatibility: baseline_hosts must be a list"):
        FILTERS["fleet_compatibility"](hosts, [], "k")
    with pytest.raises(AnsibleFilterError, match="fleet_compatibility: baseline hosts x are not among"):
        FILTERS["fleet_compatibility"](hosts, [], ["x"])
