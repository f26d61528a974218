# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible reaches every testbed host the way it reaches a real hypervisor, and the collection's
cpu_facts runs there with the host's own Python, libvirt and QEMU."""

from __future__ import annotations

import pytest

from conftest import HOSTS, run_ansible


def version_text(number: int) -> str:
    """libvirt's encoded version (major * 1000000 + minor * 1000 + micro) as text."""
    return "%d.%d.%d" % (number // 1000000, number // 1000 % 1000, number % 1000)


def test_ping_reaches_every_host():
    results = run_ansible("testbed", "ansible.builtin.ping")
    assert sorted(results) == sorted(host.name for host in HOSTS)
    for name, result in results.items():
        assert result.get("ping") == "pong", (name, result)


def test_hosts_are_distinct_machines():
    """Each chroot host has its own hostname and python; the local host is this machine."""
    results = run_ansible("testbed_chroots", "ansible.builtin.setup",
                          {"gather_subset": ["!all", "min"]})
    names = {name: result["ansible_facts"]["ansible_hostname"] for name, result in results.items()}
    assert names == {name: name for name in results}, names
    pythons = {name: result["ansible_facts"]["ansible_python"]["executable"] for name, result in results.items()}
    assert set(pythons.values()) == {"/usr/bin/python3"}, pythons
    releases = {result["ansible_facts"]["ansible_distribution_release"] for result in results.values()}
    assert len(releases) == len(results), releases


@pytest.mark.parametrize("host", HOSTS, ids=str)
def test_cpu_facts_names_the_hosts_versions(host, cpu_facts_results, connect):
    result = cpu_facts_results[host.name]
    assert not result.get("failed"), result.get("msg")
    facts = result["ansible_facts"]["hostcpu"]
    conn = connect(host)
    assert facts["libvirt_version"] == version_text(conn.getLibVersion())
    assert facts["hypervisor_version"] == version_text(conn.getVersion())
    assert set(facts["virt_types"]) >= {"qemu"}, facts.get("unavailable_virt_types")
