# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs last (file order): the testbed left this machine as it found it.

/dev/ptmx is still the machine's char device 5:2 crw-rw-rw-, no mount appeared or vanished in
the machine's mount table (no tree, /dev or devpts of a host leaked out of its namespace), and
the machine's libvirtd is the same process with the same long-lived domains. Domains named
``hostcpu-*`` are left out of that comparison: other suites create and remove theirs meanwhile.
"""

from __future__ import annotations

import stat

from conftest import HOSTS, LOCAL_URI, SESSION_PREFIX, machine_state

import libvirt


def test_ptmx_is_the_machines_char_device():
    now = machine_state()["ptmx"]
    assert now[1:3] == (5, 2)
    assert int(now[0], 8) == stat.S_IFCHR | 0o666


def test_machine_unchanged_after_the_suite(machine_before):
    now = machine_state()
    assert now["ptmx"] == machine_before["ptmx"]
    assert now["mounts"] == machine_before["mounts"]
    assert now["libvirtd_pid"] == machine_before["libvirtd_pid"]
    assert now["domains"] == machine_before["domains"]


def test_no_mount_of_a_host_in_the_machines_table():
    trees = [host.tree for host in HOSTS if not host.local]
    mounts = machine_state()["mounts"]
    leaked = [line for line in mounts for tree in trees if " %s" % tree in line]
    assert leaked == []


def test_no_guest_of_the_suite_left_on_this_machine():
    conn = libvirt.open(LOCAL_URI)
    try:
        assert [dom.name() for dom in conn.listAllDomains() if dom.name().startswith(SESSION_PREFIX)] == []
    finally:
        conn.close()
