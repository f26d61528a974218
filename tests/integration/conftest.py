# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared fixtures of the integration tests: the real libvirtd, test domains, running modules.

* ``conn``: a read-write connection to qemu:///system (the suite is skipped when there is none).
* ``virt_types``: the virt types this machine really offers (kvm only with a usable /dev/kvm).
* ``domains``: a factory that defines ``hostcpu-test-<random>-<suffix>`` domains and removes
  them (destroy + undefine) after the test, whatever happened.
* ``run_module(module, args, check=False, diff=False)``: runs ``hostcpu.libvirt.<module>``
  through ansible-playbook on localhost and returns the task result (with ``failed`` and ``msg``
  when it failed).
* ``run_tasks([module_task(module, args, check_mode=..., diff=...), ...])``: several tasks in
  one ansible-playbook run (each ignore_errors), their results in order; saves the ~1.5 s an
  ansible-playbook start costs.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

libvirt = pytest.importorskip("libvirt")

ROOT = Path(__file__).resolve().parents[2]
COLLECTIONS = ROOT / ".collections"
URI = "qemu:///system"
EMULATOR = "/usr/bin/qemu-system-x86_64"
TEST_PREFIX = "hostcpu-test-"
GUEST_LOG_DIR = Path("/var/log/libvirt/qemu")
RUN_TOKEN = secrets.token_hex(3)


def _silence(_ctx: Any, _err: Any) -> None:
    return None


libvirt.registerErrorHandler(_silence, None)


@pytest.fixture(scope="session")
def conn():
    try:
        connection = libvirt.open(URI)
    except libvirt.libvirtError as exc:
        pytest.skip("no libvirt daemon at %s (%s); run 'make daemons'" % (URI, exc))
    yield connection
    connection.close()


@pytest.fixture(scope="session")
def virt_types(conn) -> List[str]:
    caps = conn.getCapabilities()
    found = ["qemu"]
    if "<domain type='kvm'" in caps and os.access("/dev/kvm", os.R_OK | os.W_OK):
        found.insert(0, "kvm")
    return found


def domain_xml(name: str, virt_type: str = "kvm", cpu_xml: str = "", vcpus: int = 1, memory_mib: int = 64,
               machine: str = "pc", devices: str = "", arch: str = "x86_64", emulator: str = EMULATOR) -> str:
    """A small disk-less domain; *cpu_xml* goes where libvirt prints <cpu>."""
    return "\n".join((
        "<domain type='%s'>" % virt_type,
        "  <name>%s</name>" % name,
        "  <memory unit='MiB'>%d</memory>" % memory_mib,
        "  <vcpu>%d</vcpu>" % vcpus,
        "  <os>",
        "    <type arch='%s' machine='%s'>hvm</type>" % (arch, machine),
        "  </os>",
        "  <features>",
        "    <acpi/>" if arch in ("x86_64", "i686") else "",
        "  </features>",
        cpu_xml,
        "  <on_crash>destroy</on_crash>",
        "  <devices>",
        "    <emulator>%s</emulator>" % emulator,
        "    <memballoon model='none'/>",
        devices,
        "  </devices>",
        "</domain>",
    ))


def remove_domain(conn, name: str) -> None:
    """Destroy and undefine *name* if it exists; only ever called for test domains."""
    assert name.startswith(TEST_PREFIX), name
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError:
        pass
    try:
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
    except libvirt.libvirtError:
        pass
    remove_guest_log(name)


def remove_guest_log(name: str) -> None:
    """libvirtd (qemu:///system) keeps /var/log/libvirt/qemu/<name>.log of every guest it started."""
    assert name.startswith(TEST_PREFIX), name
    try:
        (GUEST_LOG_DIR / (name + ".log")).unlink()
    except OSError:
        pass


class DomainFactory:
    """Defines test domains and remembers them for removal."""

    def __init__(self, conn, label: str) -> None:
        self.conn = conn
        self.label = label
        self.names: List[str] = []

    def name(self, suffix: str) -> str:
        name = "%s%s-%s-%s" % (TEST_PREFIX, RUN_TOKEN, self.label, suffix)
        self.names.append(name)
        return name

    def define(self, suffix: str, virt_type: str = "kvm", cpu_xml: str = "", start: bool = False,
               xml: Optional[str] = None, **kwargs: Any):
        """Define a domain (from *xml* whose <name> is replaced, or a small one) and start it paused."""
        name = self.name(suffix)
        if xml is not None:
            text = xml.replace("__NAME__", name)
        else:
            text = domain_xml(name, virt_type, cpu_xml, **kwargs)
        dom = self.conn.defineXML(text)
        if start:
            dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        return dom

    def cleanup(self) -> None:
        for name in self.names:
            remove_domain(self.conn, name)


@pytest.fixture
def domains(conn, request) -> Iterator[DomainFactory]:
    label = "".join(ch if ch.isalnum() else "-" for ch in request.node.name)[:40].strip("-")
    factory = DomainFactory(conn, label)
    try:
        yield factory
    finally:
        factory.cleanup()


def ansible_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
        "ANSIBLE_DEPRECATION_WARNINGS": "0",
        "PYTHONPATH": str(COLLECTIONS),
    })
    return env


def run_playbook(tasks: List[Dict[str, Any]], tmp_path: Path, extra_args: Optional[List[str]] = None,
                 env: Optional[Dict[str, str]] = None) -> List[Dict[str, Any]]:
    """Run *tasks* on localhost in one ansible-playbook (each with ignore_errors); their results in order.
    *env* overrides variables of ansible_env()."""
    playbook = tmp_path / ("play-%s.json" % secrets.token_hex(4))
    playbook.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "connection": "local",
                                     "tasks": [dict(task, ignore_errors=True) for task in tasks]}]))
    command = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", str(playbook)]
    proc = subprocess.run(command + (extra_args or []), capture_output=True, text=True, env=dict(ansible_env(), **(env or {})),
                          cwd=str(tmp_path), timeout=900, check=False)
    try:
        output = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError("ansible-playbook printed no JSON (rc %d):\n%s\n%s" % (proc.returncode, proc.stdout, proc.stderr))
    results = [task["hosts"]["localhost"] for task in output["plays"][0]["tasks"]]
    assert len(results) == len(tasks), proc.stdout
    return results


def module_task(module: str, args: Dict[str, Any], **options: Any) -> Dict[str, Any]:
    """A task running hostcpu.libvirt.<module>; *options* are task keywords (check_mode, diff)."""
    return dict({"name": "%s %s" % (module, secrets.token_hex(2)), "hostcpu.libvirt.%s" % module: args}, **options)


@pytest.fixture
def run_module(tmp_path) -> Callable[..., Dict[str, Any]]:
    """run_module(module, args, check=False, diff=False) -> the task's result."""
    def runner(module: str, args: Dict[str, Any], check: bool = False, diff: bool = False) -> Dict[str, Any]:
        return run_playbook([module_task(module, args, check_mode=check, diff=diff)], tmp_path)[0]
    return runner


@pytest.fixture
def run_tasks(tmp_path) -> Callable[..., List[Dict[str, Any]]]:
    """run_tasks([module_task(...), ...]) -> their results, from one ansible-playbook run."""
    def runner(tasks: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        return run_playbook(tasks, tmp_path)
    return runner
