# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A running TCG guest without <cpu> migrates live from each host to the next and back.

pc-i440fx-5.2 is the one i440fx machine type QEMU 5.2, 7.2, 10.0 and 11.1 all have. Traffic
stays on 127.0.0.1: the destination QEMU listens there on a port of this test's own.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt
import pytest

from conftest import HOSTS, guest_name, guest_xml

MACHINE = "pc-i440fx-5.2"
FIRST_PORT = 49352
NEIGHBOURS = [(HOSTS[i], HOSTS[(i + 1) % len(HOSTS)]) for i in range(len(HOSTS))]


def live_cpu(dom) -> str:
    cpu = ET.fromstring(dom.XMLDesc(0)).find("cpu")
    return "" if cpu is None else ET.tostring(cpu, encoding="unicode").strip()


def migrate(dom, dest_conn, port: int):
    params = {
        libvirt.VIR_MIGRATE_PARAM_URI: "tcp://127.0.0.1:%d" % port,
        libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: "127.0.0.1",
    }
    return dom.migrate3(dest_conn, params, libvirt.VIR_MIGRATE_LIVE)


@pytest.mark.parametrize("source,dest", NEIGHBOURS, ids=lambda host: host.suite)
def test_live_migration_there_and_back(source, dest, connect):
    port = FIRST_PORT + 2 * HOSTS.index(source)
    src_conn, dest_conn = connect(source), connect(dest)
    name = guest_name("migrate-%s-%s" % (source.suite, dest.suite))
    dom = src_conn.createXML(guest_xml(name, "qemu", MACHINE), 0)
    try:
        uuid, cpu_before = dom.UUIDString(), live_cpu(dom)
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING

        there = migrate(dom, dest_conn, port)
        assert there.UUIDString() == uuid
        assert there.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert name not in [d.name() for d in src_conn.listAllDomains()]

        back = migrate(there, src_conn, port + 1)
        assert back.UUIDString() == uuid
        assert back.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert name not in [d.name() for d in dest_conn.listAllDomains()]
        assert live_cpu(back) == cpu_before
    finally:
        for conn in (src_conn, dest_conn):
            try:
                conn.lookupByName(name).destroy()
            except libvirt.libvirtError:
                pass
