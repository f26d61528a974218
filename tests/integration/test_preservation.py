# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""domain_cpu changes <cpu> and nothing else, on realistic domains made by virt-install.

Each domain comes from Debian's ``virt-install --print-xml`` (disks on qcow2 images made with
qemu-img in a temp dir, NICs, VNC with a password, SPICE, channels, UEFI, sound, RNG, watchdog,
a 9p filesystem, libosinfo and custom metadata, a title and description, NUMA cells inside
<cpu>). Its CPU is changed through several modes, removed, and put back; after every step the
inactive XML (with secrets) must be byte for byte the same outside <cpu>, the <numa> cells must be
kept, and at the end the whole XML must be byte for byte what it was.
"""

from __future__ import annotations

import subprocess
from typing import Dict, List

import pytest

from conftest import libvirt, module_task

from ansible_collections.hostcpu.libvirt.plugins.module_utils._domain import cpu_span, numa_of, read_cpu, without_cpu

FLAGS = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
CUSTOM_METADATA = ('<app:deploy xmlns:app="http://example.com/app/1"><app:owner>ops</app:owner>'
                   '<app:tier>web</app:tier></app:deploy>')
COMMENT = "<!-- provisioned by the pipeline -->"

# name -> virt-install arguments ({disk} and {dir} are filled in)
VIRT_INSTALL = {
    "kvm-numa-vnc": ["--virt-type", "kvm", "--memory", "256", "--vcpus", "4,sockets=1,cores=2,threads=2",
                     "--cpu", "host-model,cell0.memory=131072,cell0.cpus=0-1,cell1.memory=131072,cell1.cpus=2-3",
                     "--disk", "path={disk},format=qcow2,bus=virtio", "--network", "none",
                     "--graphics", "vnc,password=s3cret,listen=127.0.0.1",
                     "--channel", "unix,target.type=virtio,target.name=org.qemu.guest_agent.0",
                     "--rng", "/dev/urandom", "--osinfo", "debian11",
                     "--metadata", "title=Web guest,description=a & b <c>"],
    "qemu-uefi-spice": ["--virt-type", "qemu", "--memory", "256", "--vcpus", "2", "--boot", "uefi",
                        "--cpu", "Opteron_G3,disable=svm", "--disk", "path={disk},format=qcow2,bus=virtio",
                        "--network", "user,model=virtio", "--graphics", "spice", "--channel", "spicevmc",
                        "--sound", "ich9", "--osinfo", "linux2022"],
    "kvm-passthrough-ethernet": ["--virt-type", "kvm", "--memory", "256", "--vcpus", "2",
                                 "--cpu", "host-passthrough,cache.mode=passthrough,migratable=off",
                                 "--disk", "path={disk},format=qcow2,bus=virtio", "--disk", "device=cdrom,bus=sata",
                                 "--network", "type=ethernet,model=virtio", "--serial", "pty", "--osinfo", "linux2022"],
    "qemu-no-cpu-devices": ["--virt-type", "qemu", "--memory", "256", "--vcpus", "2", "--disk", "none",
                            "--network", "none", "--graphics", "vnc", "--osinfo", "linux2022",
                            "--filesystem", "{dir},share0", "--watchdog", "i6300esb,action=poweroff",
                            "--iothreads", "2", "--events", "on_reboot=destroy",
                            "--controller", "type=scsi,model=virtio-scsi"],
}
# The CPU changes every domain goes through, one task over all of them per step.
STEPS = [
    {"mode": "custom", "model": "Westmere", "features": {"svm": "disable"}},
    {"mode": "host-model", "features": {"arch-capabilities": "disable"}},
    {"mode": "maximum"},
    {"state": "absent"},
]


def print_xml(case: str, name: str, disk: str, directory: str) -> str:
    args = [arg.format(disk=disk, dir=directory) for arg in VIRT_INSTALL[case]]
    proc = subprocess.run(["virt-install", "--print-xml", "--import", "--name", name] + args,
                          check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    if "</metadata>" in text:
        text = text.replace("  </metadata>", "    %s\n  </metadata>" % CUSTOM_METADATA, 1)
    return text.replace("<devices>", "%s\n    <devices>" % COMMENT, 1)


def new_disk(directory, case: str) -> str:
    """A qcow2 image for one domain (virt-install refuses an image another domain uses)."""
    path = directory / ("%s.qcow2" % case)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return str(path)


def define_realistic(conn, domains, directory, virt_types, cases=tuple(VIRT_INSTALL), suffix: str = "") -> Dict[str, object]:
    defined = {}
    for case in cases:
        if case.split("-", 1)[0] in virt_types:
            name = domains.name(case + suffix)
            defined[case] = conn.defineXML(print_xml(case, name, new_disk(directory, case + suffix), str(directory)))
    return defined


@pytest.fixture
def realistic(conn, domains, tmp_path, virt_types) -> Dict[str, object]:
    """The virt-install domains (kvm ones only where KVM is usable), defined, then defined once
    more from libvirt's own inactive XML: libvirt moves auto-added controllers on that first
    redefine (see test_libvirt_moves_controllers_on_its_first_redefine), later ones are stable."""
    defined = define_realistic(conn, domains, tmp_path, virt_types)
    for dom in defined.values():
        conn.defineXML(dom.XMLDesc(FLAGS))
    return defined


def outside_cpu(text: str) -> List[str]:
    """The text before and after <cpu> (or the whole text when there is none)."""
    span = cpu_span(text)
    return [text] if span is None else [text[:span.start], text[span.end:]]


def test_only_cpu_changes_on_realistic_domains(realistic, run_tasks):
    before = {case: dom.XMLDesc(FLAGS) for case, dom in realistic.items()}
    names = [dom.name() for dom in realistic.values()]
    for step in STEPS:
        [result] = run_tasks([module_task("domain_cpu", dict(step, name=names))])
        assert not result.get("failed"), result.get("msg")
        assert not result.get("warnings"), result["warnings"]
        for case, dom in realistic.items():
            after = dom.XMLDesc(FLAGS)
            assert outside_cpu(after) == outside_cpu(before[case]), (case, step)
            assert without_cpu(after) == without_cpu(before[case]), (case, step)
            assert numa_of(after) == numa_of(before[case]), (case, step)
    # and back: every domain gets its original CPU again, and then its XML is what it was
    restore = [module_task("domain_cpu", {"name": dom.name(), "cpu": read_cpu(before[case])})
               for case, dom in realistic.items()]
    for result in run_tasks(restore):
        assert not result.get("failed"), result.get("msg")
    for case, dom in realistic.items():
        assert dom.XMLDesc(FLAGS) == before[case], case


def test_what_libvirt_keeps_of_the_realistic_domains(realistic):
    """Facts the module relies on: secrets need VIR_DOMAIN_XML_SECURE, comments are dropped, numa sits in <cpu>."""
    dom = realistic["qemu-uefi-spice"]
    assert COMMENT not in dom.XMLDesc(FLAGS)
    assert "<app:owner>ops</app:owner>" in dom.XMLDesc(FLAGS)
    if "kvm-numa-vnc" in realistic:
        vnc = realistic["kvm-numa-vnc"]
        assert "passwd='s3cret'" in vnc.XMLDesc(FLAGS)
        assert "passwd=" not in vnc.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        assert numa_of(vnc.XMLDesc(FLAGS)).count("<cell ") == 2


def test_libvirt_moves_controllers_on_its_first_redefine(conn, domains, tmp_path, run_module):
    """Surprise: defining libvirt's own inactive XML again reorders the controllers of a fresh q35
    domain (later redefines are stable). The module's check that nothing but <cpu> changed compares
    devices in a fixed order, so this is not reported, and every device keeps its address."""
    case = "qemu-no-cpu-devices"
    alone = define_realistic(conn, domains, tmp_path, ["qemu"], [case], "-alone")[case]
    first = alone.XMLDesc(FLAGS)
    conn.defineXML(first)
    second = alone.XMLDesc(FLAGS)
    assert second != first and sorted(second.splitlines()) == sorted(first.splitlines())
    conn.defineXML(second)
    assert alone.XMLDesc(FLAGS) == second
    fresh = define_realistic(conn, domains, tmp_path, ["qemu"], [case], "-fresh")[case]
    before = fresh.XMLDesc(FLAGS)
    result = run_module("domain_cpu", {"name": fresh.name(), "mode": "maximum"})
    assert result["changed"] and not result.get("warnings")
    after = fresh.XMLDesc(FLAGS)
    assert outside_cpu(after) != outside_cpu(before) and without_cpu(after) == without_cpu(before)


def test_xml_mode_keeps_every_byte_of_virt_install_output(tmp_path, run_tasks):
    """The same domains as text: outside <cpu> nothing changes, comment included."""
    texts = {case: print_xml(case, "hostcpu-test-xml-%s" % case, new_disk(tmp_path, case), str(tmp_path))
             for case in VIRT_INSTALL}
    tasks = [module_task("domain_cpu", dict(STEPS[1], xml=text)) for text in texts.values()]
    for (case, text), result in zip(texts.items(), run_tasks(tasks)):
        assert result["changed"], case
        assert outside_cpu(result["xml"]) == outside_cpu(text) or cpu_span(text) is None, case
        assert without_cpu(result["xml"]) == without_cpu(text) and COMMENT in result["xml"], case
        assert numa_of(result["xml"]) == numa_of(text), case
