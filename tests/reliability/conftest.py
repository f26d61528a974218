# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared parts of the reliability suite (bad input, faults, concurrency, properties).

* ``private_daemon``: a libvirtd of our own (session mode, run as the QEMU user, every file under
  a temporary directory), so faults can be injected (killed, restarted, frozen) without touching
  the daemon other suites use, and "nothing changed" can be proven over *every* domain it has.
  Its QEMU guests are real (kvm and qemu/TCG), started paused.
* ``run_playbook(plays, ...)``: one ``ansible-playbook`` run with the JSON callback; returns the
  parsed output and the raw text (to look for tracebacks).
* ``snapshot(conn)``: every domain's inactive and live XML, for before/after comparison.
* ``FileWatch``: inotify on canary files; any open or read by any process is recorded.
* ``TCPRecorder``: a listener on 127.0.0.1 recording every connection made to it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import grp
import json
import os
import pwd
import re
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

try:
    from hypothesis import settings as _hypothesis_settings
except ImportError:  # pragma: no cover - hypothesis is in requirements.txt
    _hypothesis_settings = None

ROOT = Path(__file__).resolve().parents[2]
# HOSTCPU_COLLECTIONS: run Ansible on another copy of the collection (e.g. one without a fix, to see
# a test fail); PYTHONPATH decides what the in-process tests import.
COLLECTIONS = Path(os.environ.get("HOSTCPU_COLLECTIONS") or ROOT / ".collections")
UNIT = ROOT / "tests" / "unit"
EMULATOR = "/usr/bin/qemu-system-x86_64"
TEST_PREFIX = "hostcpu-test-"
RUN_TOKEN = secrets.token_hex(3)
# What nested KVM on the test machines needs for host-model/passthrough guests to start.
NOARCH = "<feature policy='disable' name='arch-capabilities'/>"

if _hypothesis_settings is not None:
    # Deterministic in CI: the same examples every run, no example database, no time limits.
    _hypothesis_settings.register_profile("reliability", deadline=None, derandomize=True, database=None,
                                          print_blob=False)
    _hypothesis_settings.load_profile("reliability")


def domain_name(label: str) -> str:
    """A domain name of this run: hostcpu-test-<run>-rel-<label>."""
    return "%s%s-rel-%s" % (TEST_PREFIX, RUN_TOKEN, label)


def domain_xml(name: str, virt_type: str = "qemu", cpu_xml: str = "", description: str = "",
               memory_mib: int = 64) -> str:
    """A small disk-less domain; *cpu_xml* goes where libvirt prints <cpu>."""
    return "\n".join(line for line in (
        "<domain type='%s'>" % virt_type,
        "  <name>%s</name>" % name,
        "  <description>%s</description>" % description if description else "",
        "  <memory unit='MiB'>%d</memory>" % memory_mib,
        "  <vcpu>1</vcpu>",
        "  <os>",
        "    <type arch='x86_64' machine='pc'>hvm</type>",
        "  </os>",
        "  <features>",
        "    <acpi/>",
        "  </features>",
        cpu_xml,
        "  <on_crash>destroy</on_crash>",
        "  <devices>",
        "    <emulator>%s</emulator>" % EMULATOR,
        "    <memballoon model='none'/>",
        "  </devices>",
        "</domain>",
    ) if line)


# ---------------------------------------------------------------------------------------------
# a private libvirtd


def _qemu_user() -> Optional[str]:
    """The user QEMU runs as on this system (qemu.conf's user, else the distribution's)."""
    try:
        text = Path("/etc/libvirt/qemu.conf").read_text(encoding="utf-8")
    except OSError:
        text = ""
    found = re.findall(r'^\s*user\s*=\s*"([^"]+)"', text, re.M)
    candidates = found[-1:] + ["libvirt-qemu", "qemu"]
    for candidate in candidates:
        if candidate in ("+0", "root"):
            continue
        try:
            pwd.getpwnam(candidate)
            return candidate
        except KeyError:
            continue
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped) counts as gone
    try:
        return Path("/proc/%d/stat" % pid).read_text().split()[2] != "Z"
    except OSError:
        return False


class PrivateDaemon:
    """libvirtd in session mode as the QEMU user, with its state under a temporary directory.

    Every process it runs (libvirtd, the virtlogd it spawns, the QEMU guests) belongs to this
    suite, so the fault tests may kill, freeze and restart it; the daemon other suites use is
    never touched. ``uri`` reaches it from root through its socket.
    """

    def __init__(self) -> None:
        if os.geteuid() != 0:
            pytest.skip("the private libvirtd needs root (it runs as the QEMU user)")
        user = _qemu_user()
        if user is None or shutil.which("libvirtd") is None and not Path("/usr/sbin/libvirtd").exists():
            pytest.skip("no QEMU user or no libvirtd binary: run 'make system'")
        entry = pwd.getpwnam(user)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        self.groups = sorted({g.gr_gid for g in grp.getgrall() if user in g.gr_mem} | {self.gid})
        # short: QEMU's monitor socket goes below it and UNIX socket paths have at most 107 bytes
        self.base = Path(tempfile.mkdtemp(prefix="hcr-", dir="/tmp"))
        os.chmod(self.base, 0o755)
        for sub in ("home", "run", "config", "cache"):
            path = self.base / sub
            path.mkdir(mode=0o700)
            os.chown(path, self.uid, self.gid)
        self.socket = self.base / "run" / "libvirt" / "libvirt-sock"
        self.uri = "qemu:///session?socket=%s" % self.socket
        self.log = self.base / "libvirtd.log"
        self.process: Optional[subprocess.Popen] = None
        self.starts = 0

    def env(self) -> Dict[str, str]:
        return {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.base / "home"),
            "XDG_RUNTIME_DIR": str(self.base / "run"),
            "XDG_CONFIG_HOME": str(self.base / "config"),
            "XDG_CACHE_HOME": str(self.base / "cache"),
        }

    def start(self, timeout: float = 30.0) -> float:
        """Start libvirtd and wait until it answers; return the seconds that took."""
        began = time.monotonic()
        binary = shutil.which("libvirtd") or "/usr/sbin/libvirtd"
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([binary, "--timeout=0"], env=self.env(), stdout=log, stderr=log,
                                            user=self.uid, group=self.gid, extra_groups=self.groups,
                                            cwd=str(self.base), start_new_session=True)
        self.starts += 1
        self.wait_ready(timeout)
        return time.monotonic() - began

    def wait_ready(self, timeout: float = 30.0) -> None:
        import libvirt  # pylint: disable=import-outside-toplevel
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = libvirt.open(self.uri)
                conn.getLibVersion()
                conn.close()
                return
            except libvirt.libvirtError:
                if time.monotonic() > deadline or (self.process and self.process.poll() is not None):
                    raise AssertionError("the private libvirtd did not answer:\n%s" % self.log.read_text()[-3000:])
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop our libvirtd hard (by its pid); its QEMU guests keep running."""
        assert self.process is not None and self.process.poll() is None, "the private libvirtd is not running"
        os.kill(self.process.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.process.wait(timeout=30)

    def restart(self) -> float:
        self.kill()
        return self.start()

    def open(self):
        import libvirt  # pylint: disable=import-outside-toplevel
        return libvirt.open(self.uri)

    def _helper_pids(self) -> List[int]:
        """virtlogd (and friends) our daemon spawned, from their pid files under our runtime dir."""
        pids = []
        for pid_file in (self.base / "run" / "libvirt").glob("*.pid"):
            try:
                pid = int(pid_file.read_text().strip())
            except (OSError, ValueError):
                continue
            if pid != (self.process.pid if self.process else None) and _pid_alive(pid):
                status = Path("/proc/%d/status" % pid).read_text()
                if re.search(r"^Uid:\s+%d\b" % self.uid, status, re.M):
                    pids.append(pid)
        return pids

    def stop(self) -> None:
        """Remove every domain, stop our processes (by pid), delete the directory."""
        import libvirt  # pylint: disable=import-outside-toplevel
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGCONT)
                conn = libvirt.open(self.uri)
                for dom in conn.listAllDomains():
                    try:
                        if dom.isActive():
                            dom.destroy()
                        if dom.isPersistent():
                            dom.undefine()
                    except libvirt.libvirtError:
                        pass
                conn.close()
            except libvirt.libvirtError:
                pass
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        for pid in self._helper_pids():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def private_daemon() -> Iterator[PrivateDaemon]:
    pytest.importorskip("libvirt")
    daemon = PrivateDaemon()
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def private_conn(private_daemon):
    """A connection to the private libvirtd for one test (the fault tests restart the daemon)."""
    import libvirt  # pylint: disable=import-outside-toplevel
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = private_daemon.open()
    yield conn
    try:
        conn.close()
    except libvirt.libvirtError:
        pass


@pytest.fixture(scope="session")
def kvm_usable(private_daemon) -> bool:
    conn = private_daemon.open()
    try:
        caps = conn.getCapabilities()
    finally:
        conn.close()
    return "<domain type='kvm'" in caps and os.access("/dev/kvm", os.R_OK | os.W_OK)


def define(conn, name: str, virt_type: str = "qemu", cpu_xml: str = "", start: bool = False, **kwargs: Any):
    import libvirt  # pylint: disable=import-outside-toplevel
    assert name.startswith(TEST_PREFIX), name
    dom = conn.defineXML(domain_xml(name, virt_type, cpu_xml, **kwargs))
    if start:
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
    return dom


def remove(conn, name: str) -> None:
    import libvirt  # pylint: disable=import-outside-toplevel
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
        dom.undefine()
    except libvirt.libvirtError:
        pass


def snapshot(conn) -> Dict[str, Tuple[Optional[str], Optional[str]]]:
    """Every domain: name -> (inactive XML with secrets, live XML or None)."""
    import libvirt  # pylint: disable=import-outside-toplevel
    flags = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
    result = {}
    for dom in conn.listAllDomains():
        inactive = dom.XMLDesc(flags) if dom.isPersistent() else None
        live = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE) if dom.isActive() else None
        result[dom.name()] = (inactive, live)
    return result


def cpu_of(text: str) -> Dict[str, Any]:
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._domain import read_cpu  # pylint: disable=import-outside-toplevel
    return read_cpu(text)


# ---------------------------------------------------------------------------------------------
# ansible-playbook with the JSON callback


def ansible_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
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
        "PYTHONFAULTHANDLER": "1",
    })
    env.update(extra or {})
    return env


class PlaybookRun:
    """The outcome of one ansible-playbook run."""

    def __init__(self, proc: subprocess.CompletedProcess, seconds: float) -> None:
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.seconds = seconds
        try:
            self.output = json.loads(proc.stdout)
        except ValueError:
            raise AssertionError("ansible-playbook printed no JSON (rc %d):\n%s\n%s"
                                 % (proc.returncode, proc.stdout[-5000:], proc.stderr[-5000:])) from None

    def tasks(self, play: int = 0) -> List[Dict[str, Any]]:
        return self.output["plays"][play]["tasks"]

    def results(self, play: int = 0, host: str = "localhost") -> List[Dict[str, Any]]:
        """The result of every task of *play* on *host*, in order (skipped hosts left out)."""
        return [task["hosts"][host] for task in self.tasks(play) if host in task["hosts"]]

    def by_name(self, play: int = 0, host: str = "localhost") -> Dict[str, Dict[str, Any]]:
        return {task["task"]["name"]: task["hosts"][host] for task in self.tasks(play) if host in task["hosts"]}

    @property
    def text(self) -> str:
        return self.stdout + self.stderr


def playbook_command(path: Path, inventory: str = "localhost,", extra: Optional[List[str]] = None) -> List[str]:
    return [str(Path(sys.executable).parent / "ansible-playbook"), "-i", inventory, str(path)] + (extra or [])


def write_playbook(plays: List[Dict[str, Any]], directory: Path) -> Path:
    path = directory / ("play-%s.json" % secrets.token_hex(4))
    path.write_text(json.dumps(plays))
    return path


def run_playbook(plays: List[Dict[str, Any]], directory: Path, env: Optional[Dict[str, str]] = None,
                 inventory: str = "localhost,", extra: Optional[List[str]] = None, timeout: int = 600) -> PlaybookRun:
    return finish_playbook(start_playbook(plays, directory, env, inventory, extra), timeout)


def start_playbook(plays: List[Dict[str, Any]], directory: Path, env: Optional[Dict[str, str]] = None,
                   inventory: str = "localhost,", extra: Optional[List[str]] = None) -> Tuple[subprocess.Popen, float]:
    """Start ansible-playbook in the background (its own process group); finish it with finish_playbook."""
    path = write_playbook(plays, directory)
    proc = subprocess.Popen(playbook_command(path, inventory, extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ansible_env(env), cwd=str(directory), start_new_session=True)
    return proc, time.monotonic()


def descendants(root: int) -> List[Tuple[int, str]]:
    """(pid, command line) of *root* and every process below it, parents first (Ansible's workers
    start their own sessions, so the process group does not hold them)."""
    parents: Dict[int, int] = {}
    commands: Dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop(0)
        found.append((pid, commands.get(pid, "?")))
        frontier.extend(child for child, parent in sorted(parents.items()) if parent == pid)
    return found


def signal_all(pids: List[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signum)


def end_hung_run(proc: subprocess.Popen) -> str:
    """What a hung run was doing: its processes, then the Python stacks of all their threads
    (PYTHONFAULTHANDLER prints them on SIGABRT: the modules' first, into the run's output, then
    the controller's), then the end of its output. Every process of the run is gone afterwards."""
    processes = descendants(proc.pid)
    below = [pid for pid, _command in reversed(processes) if pid != proc.pid]
    signal_all([pid for pid, command in processes if "AnsiballZ_" in command and not command.startswith("/bin/sh")],
               signal.SIGABRT)
    try:
        stdout, stderr = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        signal_all(below + [proc.pid], signal.SIGABRT)
        time.sleep(2)
        signal_all([pid for pid, _command in descendants(proc.pid)], signal.SIGKILL)
        stdout, stderr = proc.communicate()
    signal_all(below, signal.SIGKILL)
    listing = "\n".join("%d %s" % item for item in processes)
    return "processes:\n%s\nstdout (end):\n%s\nstderr (end):\n%s" % (listing, stdout[-20000:], stderr[-20000:])


def finish_playbook(started: Tuple[subprocess.Popen, float], timeout: int = 600) -> PlaybookRun:
    """Wait for the run; one that outlasts *timeout* is ended with its workers and modules (its process group)."""
    proc, began = started
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError("ansible-playbook did not finish within %d seconds (a task hangs)\n%s"
                             % (timeout, end_hung_run(proc))) from None
    return PlaybookRun(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), time.monotonic() - began)


def local_play(tasks: List[Dict[str, Any]], **keywords: Any) -> Dict[str, Any]:
    play = {"hosts": "localhost", "gather_facts": False, "connection": "local", "tasks": tasks}
    play.update(keywords)
    return play


def assert_no_crash(text: str) -> None:
    """No Python traceback and no module crash anywhere in what Ansible printed."""
    assert "Traceback (most recent call last)" not in text, text[text.find("Traceback"):][:3000]
    assert "MODULE FAILURE" not in text, text[text.find("MODULE FAILURE") - 2000:][:4000]
    assert "Unexpected templating type error" not in text
    assert "An unhandled exception occurred" not in text


# ---------------------------------------------------------------------------------------------
# proof of no file read and no network access

_IN_ACCESS, _IN_OPEN = 0x00000001, 0x00000020
_IN_NONBLOCK = 0o4000


class FileWatch:
    """inotify on files: records every open and read of them by any process while it runs."""

    def __init__(self, paths: List[Path]) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._libc = libc
        self.fd = libc.inotify_init1(_IN_NONBLOCK)
        assert self.fd >= 0, "inotify_init1 failed: errno %d" % ctypes.get_errno()
        self.paths: Dict[int, Path] = {}
        for path in paths:
            wd = libc.inotify_add_watch(self.fd, str(path).encode(), _IN_ACCESS | _IN_OPEN)
            assert wd >= 0, "inotify_add_watch(%s) failed: errno %d" % (path, ctypes.get_errno())
            self.paths[wd] = path
        self.events: List[Tuple[str, str]] = []

    def poll(self) -> List[Tuple[str, str]]:
        while select.select([self.fd], [], [], 0)[0]:
            data = os.read(self.fd, 65536)
            offset = 0
            while offset < len(data):
                wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                offset += 16 + length
                kind = "open" if mask & _IN_OPEN else "read" if mask & _IN_ACCESS else hex(mask)
                self.events.append((str(self.paths.get(wd)), kind))
        return self.events

    def close(self) -> None:
        self.poll()
        os.close(self.fd)


class TCPRecorder:
    """A listener on 127.0.0.1 that records every connection (and what was sent)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections: List[Tuple[str, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tcp-recorder", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(0.2)
            try:
                data = conn.recv(4096)
            except OSError:
                data = b""
            self.connections.append(("%s:%d" % peer, data))
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


class SilentListener:
    """Accepts TCP connections and never answers (a libvirt URI that does not answer)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted: List[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _peer = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        for conn in self.accepted:
            conn.close()
        self.sock.close()


def closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on (bound, then closed)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port
