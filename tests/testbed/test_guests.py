# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every testbed host defines, starts (paused) and removes a guest of each virt type it offers."""

from __future__ import annotations

import os
import re

import libvirt
import pytest

from conftest import HOSTS, guest_name, guest_xml, offered_virt_types


@pytest.mark.parametrize("host", HOSTS, ids=str)
def test_offers_kvm_when_this_machine_has_it(host, connect):
    offered = offered_virt_types(connect(host))
    expected = ["kvm", "qemu"] if os.access("/dev/kvm", os.R_OK | os.W_OK) else ["qemu"]
    assert offered == expected


@pytest.mark.parametrize("host", HOSTS, ids=str)
def test_paused_guest_of_each_virt_type(host, connect):
    conn = connect(host)
    for virt_type in offered_virt_types(conn):
        name = guest_name("paused-%s-%s" % (host.suite, virt_type))
        dom = conn.defineXML(guest_xml(name, virt_type, "pc"))
        try:
            dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
            assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
            live = dom.XMLDesc(0)
            assert "<domain type='%s' id='%d'>" % (virt_type, dom.ID()) in live
            # libvirt fills the machine alias in and the guest CPU QEMU runs with.
            assert re.search(r"machine='pc-i440fx-[0-9.]+'", live), live
            assert "<cpu " in live or "<cpu>" in live, live
        finally:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        with pytest.raises(libvirt.libvirtError):
            conn.lookupByName(name)
