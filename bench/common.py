# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared pieces of the benchmarks: ansible-playbook runs, bench domains, statistics, the machine.

Every Ansible measurement runs ``ansible-playbook`` on localhost (connection local, the venv's
Python, the ansible.posix.json callback) and reads each task's own duration from the callback, so
that methods measured in one playbook are compared under the same load. Bench domains are named
``hostcpu-bench-<random>-...`` and removed by :class:`BenchDomains` whatever happens.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
COLLECTIONS = ROOT / ".collections"
URI = "qemu:///system"
EMULATOR = "/usr/bin/qemu-system-x86_64"
BENCH_PREFIX = "hostcpu-bench-"
GUEST_LOG_DIR = Path("/var/log/libvirt/qemu")
CALLBACK_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"


class BenchError(Exception):
    """A benchmark could not run or a method did not do its job; the message says which."""


# ---------------------------------------------------------------------------------------------
# statistics


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(value: float, reference: float) -> float:
    return value / reference if reference else float("nan")


def seconds_text(value: float) -> str:
    """0.0123 -> '12.3 ms', 1.5 -> '1.50 s'."""
    if math.isnan(value):
        return "n/a"
    if value < 1:
        return "%.1f ms" % (value * 1000)
    return "%.2f s" % value


# ---------------------------------------------------------------------------------------------
# ansible-playbook


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
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "PYTHONPATH": str(COLLECTIONS),
    })
    return env


def callback_seconds(duration: Dict[str, str]) -> float:
    start = datetime.strptime(duration["start"], CALLBACK_TIME)
    end = datetime.strptime(duration["end"], CALLBACK_TIME)
    return (end - start).total_seconds()


class PlaybookRun:
    """One ansible-playbook run: its wall time and, per task name, (seconds, result)."""

    def __init__(self, wall: float, tasks: List[Dict[str, Any]]) -> None:
        self.wall = wall
        self.tasks = {task["task"]["name"]: (callback_seconds(task["task"]["duration"]), task["hosts"].get("localhost", {}))
                      for task in tasks}

    def seconds(self, *names: str) -> float:
        """The summed duration of the named tasks."""
        return sum(self.tasks[name][0] for name in names)

    def result(self, name: str) -> Dict[str, Any]:
        return self.tasks[name][1]

    def overhead(self) -> float:
        """ansible-playbook's own start and finish: wall time minus every task."""
        return self.wall - sum(seconds for seconds, _result in self.tasks.values())


def run_playbook(tasks: List[Dict[str, Any]], variables: Optional[Dict[str, Any]] = None, timeout: int = 1800,
                 extra_env: Optional[Dict[str, str]] = None) -> PlaybookRun:
    """Run *tasks* in one play on localhost; fail with Ansible's message when a task failed."""
    play = {"hosts": "localhost", "gather_facts": False, "connection": "local", "vars": variables or {}, "tasks": tasks}
    with tempfile.TemporaryDirectory(prefix="hostcpu-bench-") as tmp:
        path = Path(tmp) / "play.json"
        path.write_text(json.dumps([play]), encoding="utf-8")
        command = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", str(path)]
        start = time.perf_counter()
        proc = run_in_own_group(command, dict(ansible_env(), **(extra_env or {})), tmp, timeout)
        wall = time.perf_counter() - start
    try:
        output = json.loads(proc.stdout)
    except ValueError:
        raise BenchError("ansible-playbook printed no JSON (rc %d):\n%s\n%s" % (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])) from None
    run = PlaybookRun(wall, output["plays"][0]["tasks"])
    for name, (_seconds, result) in run.tasks.items():
        if result.get("failed"):
            raise BenchError("task '%s' failed: %s" % (name, failure_message(result)))
    if proc.returncode != 0:
        raise BenchError("ansible-playbook exited with %d:\n%s" % (proc.returncode, proc.stderr[-3000:]))
    return run


def run_in_own_group(command: List[str], env: Dict[str, str], cwd: str, timeout: int) -> subprocess.CompletedProcess:
    """Run *command* in its own process group; on Ctrl-C, SIGTERM or a timeout the whole group (ansible-playbook,
    its workers and their modules) is stopped before the caller cleans up, so nothing defines a domain afterwards."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                          start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except BaseException:
            stop_group(proc)
            raise
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def stop_group(proc: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def failure_message(result: Dict[str, Any]) -> str:
    if result.get("msg") and not result.get("results"):
        return str(result["msg"])
    failed = [item for item in result.get("results", []) if item.get("failed")]
    if failed:
        return "%d item(s) failed, first: %s" % (len(failed), failed[0].get("msg") or failed[0].get("stderr"))
    return str(result.get("msg") or result)


def floor_task(name: str) -> Dict[str, Any]:
    """The bare task: a module that does nothing (ansible.builtin.ping), run the same way as the others."""
    return {"name": name, "ansible.builtin.ping": {}}


# ---------------------------------------------------------------------------------------------
# bench domains


def domain_xml(name: str, virt_type: str, cpu_xml: str) -> str:
    """A tiny disk-less, device-less shut-off definition."""
    # A fixed UUID per name: redefining the starting XML then resets the domain instead of clashing.
    return ("<domain type='%s'><name>%s</name><uuid>%s</uuid><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os>%s<on_crash>destroy</on_crash>"
            "<devices><emulator>%s</emulator><memballoon model='none'/></devices></domain>"
            % (virt_type, name, uuid.uuid5(uuid.NAMESPACE_DNS, name), cpu_xml, EMULATOR))


def silence_libvirt() -> None:
    import libvirt  # pylint: disable=import-outside-toplevel
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def usable_kvm(conn) -> bool:
    return "<domain type='kvm'" in conn.getCapabilities() and os.access("/dev/kvm", os.R_OK | os.W_OK)


class BenchDomains:
    """Defines ``hostcpu-bench-<token>-<label>-NNN`` domains and removes every one of them on close."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.prefix = "%s%s-" % (BENCH_PREFIX, secrets.token_hex(3))

    def names(self, label: str, count: int) -> List[str]:
        return ["%s%s-%03d" % (self.prefix, label, index) for index in range(count)]

    def define(self, names: Iterable[str], xml_of: Callable[[str], str]) -> None:
        """Define (or redefine, which resets) every name with the XML *xml_of* gives it."""
        for name in names:
            self._own(name)
            self.conn.defineXML(xml_of(name))

    def inactive_xml(self, name: str) -> str:
        import libvirt  # pylint: disable=import-outside-toplevel
        return self.conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)

    def remove(self, names: Iterable[str]) -> None:
        """Undefine *names* now."""
        import libvirt  # pylint: disable=import-outside-toplevel
        for name in names:
            self._own(name)
            try:
                domain = self.conn.lookupByName(name)
            except libvirt.libvirtError:
                continue
            remove_domain(domain)

    def close(self) -> int:
        """Remove every domain of this run (also ones a half-finished method left running); return how many."""
        mine = [dom for dom in self.conn.listAllDomains(0) if dom.name().startswith(self.prefix)]
        for domain in mine:
            remove_domain(domain)
        return len(mine)

    def _own(self, name: str) -> None:
        if not name.startswith(self.prefix):
            raise BenchError("refusing to touch domain '%s': not one of this bench run (%s...)" % (name, self.prefix))


def remove_domain(domain) -> None:
    """Destroy (if running) and undefine one bench domain, and remove its QEMU log."""
    import libvirt  # pylint: disable=import-outside-toplevel
    name = domain.name()
    try:
        if domain.isActive():
            domain.destroy()
        if domain.isPersistent():
            domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
    except libvirt.libvirtError:
        pass
    try:
        (GUEST_LOG_DIR / (name + ".log")).unlink()
    except OSError:
        pass


def leftover_bench_domains(conn) -> List[str]:
    return sorted(dom.name() for dom in conn.listAllDomains(0) if dom.name().startswith(BENCH_PREFIX))


def terminate_as_interrupt() -> None:
    """SIGTERM (and SIGHUP) raise KeyboardInterrupt, so that every ``finally`` cleans up as on Ctrl-C."""
    def handler(_signum, _frame):
        raise KeyboardInterrupt
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------
# the machine


def load_average() -> List[float]:
    return [round(value, 2) for value in os.getloadavg()]


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.processor() or "unknown"
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return found.group(1).strip() if found else "unknown"


def under_hypervisor() -> bool:
    try:
        return bool(re.search(r"^flags\s*:.*\bhypervisor\b", Path("/proc/cpuinfo").read_text(encoding="utf-8"), re.MULTILINE))
    except OSError:
        return False


def command_output(command: List[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False, timeout=60).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def os_name() -> str:
    try:
        text = Path("/etc/os-release").read_text(encoding="utf-8")
    except OSError:
        return platform.platform()
    found = re.search(r'^PRETTY_NAME="?([^"\n]+)"?$', text, re.MULTILINE)
    return found.group(1) if found else platform.platform()


def package_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine(conn) -> Dict[str, Any]:
    """What the figures were measured on."""
    def version(number: int) -> str:
        return "%d.%d.%d" % (number // 1000000, number // 1000 % 1000, number % 1000)

    meminfo = Path("/proc/meminfo").read_text(encoding="utf-8") if Path("/proc/meminfo").exists() else ""
    memory = re.search(r"^MemTotal:\s*(\d+)", meminfo, re.MULTILINE)
    virt_xml = command_output(["virt-xml", "--version"])
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(int(memory.group(1)) / 1024 / 1024, 1) if memory else None,
        "os": os_name(),
        "kernel": platform.release(),
        "virtualized": under_hypervisor(),
        "kvm": usable_kvm(conn),
        "nested_kvm": under_hypervisor() and usable_kvm(conn),
        "libvirt": version(conn.getLibVersion()),
        "qemu": version(conn.getVersion()),
        "libvirt_python": package_version("libvirt-python"),
        "python": platform.python_version(),
        "ansible": package_version("ansible"),
        "ansible_core": package_version("ansible-core"),
        "virt_xml": virt_xml or None,
    }


def machine_text(described: Dict[str, Any]) -> str:
    kvm = "nested KVM (this machine is itself a guest)" if described["nested_kvm"] else ("KVM" if described["kvm"] else "no KVM (TCG only)")
    return ("%s, %s cores, %s GiB, %s (kernel %s), %s; libvirt %s, QEMU %s, libvirt-python %s, Python %s, "
            "ansible %s (ansible-core %s), virt-xml %s"
            % (described["cpu_model"], described["cores"], described["memory_gib"], described["os"], described["kernel"], kvm,
               described["libvirt"], described["qemu"], described["libvirt_python"], described["python"],
               described["ansible"], described["ansible_core"], described["virt_xml"] or "missing"))


OTHER_WORK = re.compile(r"\b(pytest|py\.test|molecule|ansible-test|ansible-lint)\b")


def other_work() -> int:
    """Test suites running on this machine beside the bench (pytest, molecule, ansible-test, ansible-lint)."""
    found = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        found += bool(OTHER_WORK.search(command))
    return found


def reference_loop_ms(rounds: int = 3) -> float:
    """A fixed pure-Python loop (best of *rounds*): how fast this machine's CPU is right now. On a shared
    (virtual) machine it changes over time; runs are comparable when it is about the same."""
    best = float("inf")
    for _round in range(rounds):
        start = time.perf_counter()
        total = 0
        for number in range(3000000):
            total += number
        best = min(best, time.perf_counter() - start)
    return round(best * 1000, 1)


class LoadSampler:
    """The 1-minute load average at each mark (the bench itself keeps about one core busy), and whether
    other test suites ran meanwhile, to say how busy the machine was."""

    def __init__(self) -> None:
        self.samples: List[float] = []
        self.others: List[int] = []

    def mark(self) -> None:
        self.samples.append(round(os.getloadavg()[0], 2))
        self.others.append(other_work())

    def summary(self) -> Dict[str, float]:
        if not self.samples:
            return {}
        return {"min": min(self.samples), "median": round(median(self.samples), 2), "max": max(self.samples),
                "samples": len(self.samples), "with_other_suites": sum(1 for count in self.others if count)}
