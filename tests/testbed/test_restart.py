# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A chroot host's libvirtd stops and starts again (scripts/testbed/start.sh) and finds its
running guest again: the same QEMU process, still running. The machine's own libvirtd is never
restarted (other suites use it), so only the chroot hosts are tried."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import libvirt
import pytest

from conftest import HOSTS, ROOT, guest_name, guest_xml

CHROOT_HOSTS = [host for host in HOSTS if not host.local]
# libvirtd 11.3, after a session of probes and migrations, once needed its full 30 s shutdown
# timeout ("Make forcefull daemon shutdown"); the others stop in about a second.
STOP_SECONDS = 60


def daemon_pid(tree: str, name: str) -> int:
    return int(Path(tree, "run", name + ".pid").read_text().strip())


def qemu_pid(tree: str, name: str) -> int:
    return int(Path(tree, "run/libvirt/qemu", name + ".pid").read_text().strip())


def wait_gone(pid: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while os.path.exists("/proc/%d" % pid):
        assert time.monotonic() < deadline, "process %d still there after %ss" % (pid, seconds)
        time.sleep(0.2)


def start_host(suite: str) -> None:
    subprocess.run(["bash", str(ROOT / "scripts/testbed/start.sh"), suite], check=True,
                   capture_output=True, timeout=180)


@pytest.mark.parametrize("host", CHROOT_HOSTS, ids=str)
def test_guest_survives_a_libvirtd_restart(host, connect):
    name = guest_name("restart-%s" % host.suite)
    dom = connect(host).createXML(guest_xml(name, "qemu", "pc"), 0)
    uuid, qemu = dom.UUIDString(), qemu_pid(host.tree, name)
    libvirtd = daemon_pid(host.tree, "libvirtd")
    try:
        os.kill(libvirtd, 15)
        wait_gone(libvirtd, STOP_SECONDS)
        assert os.path.exists("/proc/%d" % qemu), "QEMU ended with libvirtd"
    finally:
        start_host(host.suite)
        conn = connect(host, fresh=True)
    again = conn.lookupByName(name)
    try:
        assert daemon_pid(host.tree, "libvirtd") != libvirtd
        assert again.UUIDString() == uuid
        assert again.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert qemu_pid(host.tree, name) == qemu
    finally:
        again.destroy()
