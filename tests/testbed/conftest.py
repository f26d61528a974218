# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of the testbed suite (`make testbed-test`): the hosts of the testbed inventory.

* ``hosts``: every host of $TESTBED_INVENTORY (written by scripts/testbed/inventory.sh), this
  machine first, as :class:`Host` (name, suite, libvirt URI seen from this machine, tree).
* ``connect(host, fresh=False)``: a libvirt connection to that host's own libvirtd, closed at the end.
* ``run_ansible(args)``: ``ansible`` ad hoc against the inventory, its JSON result per host.
* ``machine_before``: this machine's /dev/ptmx, mount table and system libvirtd as they were
  when the suite started; test_zz_machine.py compares them with the end of the suite.
* ``accuracy``: what test_accuracy.py measured (tests/accuracy's harness), reported at the end
  of the session in the terminal summary and in tests/output/accuracy-testbed.txt.

Guests are named ``hostcpu-testbed-<random>-...`` (``SESSION_PREFIX``); every host is cleared of
this session's guests at the end, whatever happened. Guests of another session (a run beside this
one) are left alone.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

import libvirt

from ansible_collections.hostcpu.libvirt.tests.accuracy import harness

ROOT = Path(__file__).resolve().parents[2]
COLLECTIONS = ROOT / ".collections"
INVENTORY = Path(os.environ.get("TESTBED_INVENTORY",
                                os.path.join(os.environ.get("HOSTCPU_CACHE", "/var/cache/hostcpu-libvirt"),
                                             "testbed", "inventory.ini")))
PREFIX = "hostcpu-testbed-"
RUN_TOKEN = secrets.token_hex(3)
SESSION_PREFIX = "%s%s-" % (PREFIX, RUN_TOKEN)
LOCAL_URI = "qemu:///system"


def _silence(_ctx: Any, _err: Any) -> None:
    return None


libvirt.registerErrorHandler(_silence, None)


@dataclass(frozen=True)
class Host:
    name: str
    suite: str
    uri: str
    tree: str
    local: bool

    def __str__(self) -> str:
        return self.name


_HOST_LINE = re.compile(r'^(\S+)\s+(.*)$')
_VAR = re.compile(r'(\w+)=("[^"]*"|\'[^\']*\'|\S+)')


def read_inventory(path: Path) -> List[Host]:
    """The hosts of the testbed inventory, the local one first."""
    if not path.is_file():
        raise pytest.UsageError("no testbed inventory at %s: run 'make testbed' first" % path)
    found: List[Host] = []
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section not in ("testbed_chroots", "testbed_local"):
            continue
        match = _HOST_LINE.match(line)
        if not match:
            continue
        values = {key: value.strip("\"'") for key, value in _VAR.findall(match.group(2))}
        found.append(Host(match.group(1), values["testbed_suite"], values["testbed_libvirt_uri"],
                          values["testbed_tree"], section == "testbed_local"))
    found.sort(key=lambda host: not host.local)
    return found


HOSTS = read_inventory(INVENTORY)


def guest_name(label: str) -> str:
    return SESSION_PREFIX + label


def guest_xml(name: str, virt_type: str, machine: str, memory_mib: int = 64) -> str:
    """A disk-less guest without <cpu>: QEMU's default CPU of that machine type."""
    return """<domain type='%s'>
  <name>%s</name>
  <memory unit='MiB'>%d</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='%s'>hvm</type></os>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <memballoon model='none'/>
  </devices>
</domain>""" % (virt_type, name, memory_mib, machine)


def remove_guests(conn: Any) -> None:
    """Destroy and undefine every guest of this session on *conn*; nothing else."""
    for dom in conn.listAllDomains():
        if not dom.name().startswith(SESSION_PREFIX):
            continue
        try:
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError:
            pass
        try:
            if dom.isPersistent():
                dom.undefine()
        except libvirt.libvirtError:
            pass


def offered_virt_types(conn: Any) -> List[str]:
    """The virt types the host's capabilities offer for x86_64 guests (kvm, qemu)."""
    caps = conn.getCapabilities()
    pattern = r"<arch name='x86_64'>(?:(?!</arch>).)*<domain type='%s'"
    return [vt for vt in ("kvm", "qemu") if re.search(pattern % vt, caps, re.S)]


@pytest.fixture(scope="session")
def hosts() -> List[Host]:
    return HOSTS


@pytest.fixture(scope="session")
def connections() -> Iterator[Dict[str, Any]]:
    opened: Dict[str, Any] = {}
    yield opened
    for conn in opened.values():
        try:
            conn.close()
        except libvirt.libvirtError:
            pass


@pytest.fixture(scope="session")
def connect(connections):
    def _connect(host: Host, fresh: bool = False) -> Any:
        """The session's connection to *host*; *fresh*: a new one (after its libvirtd restarted)."""
        conn = connections.get(host.name)
        if fresh or conn is None:
            conn = connections[host.name] = libvirt.open(host.uri)
        return conn
    return _connect


@pytest.fixture(scope="session", autouse=True)
def clean_hosts(connect) -> Iterator[None]:
    yield
    for host in HOSTS:
        try:
            remove_guests(connect(host))
        except libvirt.libvirtError:
            pass


def ansible_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_DEPRECATION_WARNINGS": "0",
        "ANSIBLE_HOST_KEY_CHECKING": "1",
        "PYTHONPATH": str(COLLECTIONS),
    })
    return env


def run_ansible(pattern: str, module: str, args: Dict[str, Any] | None = None, timeout: int = 600) -> Dict[str, Dict[str, Any]]:
    """`ansible PATTERN -m MODULE -a ARGS` against the testbed inventory: the result per host."""
    command = [str(Path(sys.executable).parent / "ansible"), pattern, "-i", str(INVENTORY), "-m", module]
    if args:
        command += ["-a", json.dumps(args)]
    proc = subprocess.run(command, capture_output=True, text=True, env=ansible_env(), cwd=str(ROOT),
                          timeout=timeout, check=False)
    try:
        output = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError("ansible printed no JSON (rc %d):\n%s\n%s" % (proc.returncode, proc.stdout, proc.stderr))
    return output["plays"][0]["tasks"][0]["hosts"]


@pytest.fixture(scope="session")
def cpu_facts_results() -> Dict[str, Dict[str, Any]]:
    """hostcpu.libvirt.cpu_facts on every host of the testbed, once per session."""
    return run_ansible("testbed", "hostcpu.libvirt.cpu_facts")


# --- this machine, before and after --------------------------------------------------------

def machine_state() -> Dict[str, Any]:
    """What the testbed must never change on this machine."""
    ptmx = os.lstat("/dev/ptmx")
    conn = libvirt.open(LOCAL_URI)
    try:
        domains = sorted((dom.UUIDString(), dom.name()) for dom in conn.listAllDomains()
                         if not dom.name().startswith("hostcpu-"))
    finally:
        conn.close()
    return {
        "ptmx": (oct(ptmx.st_mode), os.major(ptmx.st_rdev), os.minor(ptmx.st_rdev), ptmx.st_uid, ptmx.st_gid),
        "mounts": Path("/proc/1/mounts").read_text().splitlines(),
        "libvirtd_pid": Path("/run/libvirtd.pid").read_text().strip() if os.path.exists("/run/libvirtd.pid") else None,
        "domains": domains,
    }


@pytest.fixture(scope="session", autouse=True)
def machine_before() -> Dict[str, Any]:
    return machine_state()


# --- the accuracy matrix on every host (test_accuracy.py) ---------------------------------------

ACCURACY_REPORT = ROOT / "tests" / "output" / "accuracy-testbed.txt"
ACCURACY_TITLE = "live_cpu accuracy on the testbed: predictions from each host's cpu_facts vs. guests started there"


@dataclass
class AccuracyRun:
    """The results of every host and virt type, and what cpu_facts warned of on each host."""
    results: List[harness.Result] = field(default_factory=list)
    notes: Dict[str, List[str]] = field(default_factory=dict)


ACCURACY = AccuracyRun()


@pytest.fixture(scope="session")
def accuracy() -> AccuracyRun:
    return ACCURACY


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # pylint: disable=unused-argument
    notes = ["%s: %s" % (host, note) for host, host_notes in ACCURACY.notes.items() for note in host_notes]
    harness.write_report(terminalreporter, ACCURACY.results, ACCURACY_REPORT, ACCURACY_TITLE, notes)
