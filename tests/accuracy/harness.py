# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Start a guest per case, compare its live CPU (or libvirt's refusal) with live_cpu's prediction.

One harness for every libvirt host: this machine's (``make accuracy``, tests/accuracy) and each
host of the testbed (``make testbed-test``, tests/testbed/test_accuracy.py). A :class:`Target`
names the host and virt type; :func:`run_matrix` runs every case of tests/accuracy/matrix.py
there, from that host's facts and on that host's own libvirtd.

Each case is defined persistently as ``<name prefix><n>``, started paused, its live ``<cpu>``
read, then destroyed and undefined (in a background thread: destroy waits ~1.5 s for QEMU)
together with its QEMU log. At most ``alive`` case guests exist on the host at once. Nothing
else on the host is touched.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import libvirt
import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.hostcpu.libvirt.plugins.filter.cpu import live_cpu_prediction
from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import cpu_from_xml, cpu_to_xml, ordered

from .matrix import Case, matrix

PREFIX = "hostcpu-acc-"
# Where libvirtd writes each guest's QEMU log, below the host's root ("/" for this machine).
GUEST_LOG_DIR = "var/log/libvirt/qemu"
MEMORY_MIB = 32
# Two guests start side by side (2 cores); the slow destroys run in the reaper's threads.
WORKERS = 2
# libvirt's report of QEMU dying: "internal error: qemu unexpectedly closed the monitor" or "process
# exited while connecting to monitor" (a race), timestamps, QEMU's warnings, then its first other message.
QEMU_MESSAGE = re.compile(r"qemu-system-[^:\s]+: (?!warning: )(.*?)(?= \S*\d\dT\d\d:\S* qemu-system-| qemu-system-|$)")
MONITOR_RACES = ("process exited while connecting to monitor", "failed to connect to monitor socket",
                 "unexpectedly closed the monitor")
COMPARED_KEYS = ("mode", "match", "check", "migratable", "model", "vendor", "topology", "cache", "maxphysaddr")

LIVE, DEFINE_ERROR, START_ERROR, UNPREDICTABLE = "live", "define-error", "start-error", "unpredictable"


@dataclass(frozen=True)
class Target:
    """Where cases run: a libvirt host (as named in reports), its versions and one of its virt types."""
    host: str
    libvirt_version: str
    hypervisor_version: str
    virt_type: str

    @classmethod
    def of(cls, host: str, facts: Dict[str, Any], virt_type: str) -> "Target":
        return cls(host, str(facts.get("libvirt_version")), str(facts.get("hypervisor_version")), virt_type)


@dataclass
class Outcome:
    """A live CPU, a refusal at define or at start with libvirt's (or the filter's) message, or no prediction."""
    kind: str                      # live | define-error | start-error | unpredictable
    cpu: Optional[Dict[str, Any]] = None
    error: Optional[str] = None

    @property
    def refused(self) -> bool:
        return self.kind in (DEFINE_ERROR, START_ERROR)


@dataclass
class Result:
    target: Target
    label: str
    cpu: Any
    predicted: Outcome
    actual: Outcome
    differences: List[str] = field(default_factory=list)
    order_only: bool = False

    @property
    def matches(self) -> bool:
        return not self.differences

    @property
    def virt_type(self) -> str:
        return self.target.virt_type


def run_token() -> str:
    return secrets.token_hex(3)


def guest_log_dir(root: str = "/") -> str:
    """The QEMU log directory of the libvirtd whose root directory is *root*, seen from this machine."""
    return os.path.join(root, GUEST_LOG_DIR)


def domain_xml(name: str, entry: Dict[str, Any], cpu: Dict[str, Any]) -> str:
    topology = cpu.get("topology") or {}
    vcpus = 1
    for key in ("sockets", "dies", "cores", "threads"):
        vcpus *= int(topology.get(key, 1))
    cpu_xml = cpu_to_xml(cpu, indent=2, level=1) if cpu else ""
    return "\n".join((
        "<domain type='%s'>" % entry["domain_type"],
        "  <name>%s</name>" % name,
        "  <memory unit='MiB'>%d</memory>" % MEMORY_MIB,
        "  <vcpu>%d</vcpu>" % vcpus,
        "  <os><type arch='%s' machine='%s'>hvm</type></os>" % (entry["arch"], entry["machine"]),
        cpu_xml,
        "  <on_crash>destroy</on_crash>",
        "  <devices><emulator>%s</emulator><memballoon model='none'/></devices>" % entry["emulator"],
        "</domain>",
    ))


def _message(exc: libvirt.libvirtError) -> str:
    return " ".join((exc.get_error_message() or str(exc)).split())


# --- the real guests ---------------------------------------------------------------------------

class Reaper:
    """Admits at most *alive* case guests at once; destroys and undefines them in the background.

    ``admit`` before defining a guest, ``remove`` (or ``release`` when nothing was defined) after;
    ``close`` waits for every removal.
    """

    def __init__(self, conn, log_dir: Optional[str], alive: int = 4):
        self.conn = conn
        self.log_dir = log_dir
        self.slots = threading.BoundedSemaphore(alive)
        self.pool = ThreadPoolExecutor(max_workers=alive)
        self.futures: List[Any] = []

    def admit(self) -> None:
        self.slots.acquire()  # pylint: disable=consider-using-with

    def release(self) -> None:
        self.slots.release()

    def remove(self, domain, name: str) -> None:
        self.futures.append(self.pool.submit(self._remove_and_release, domain, name))

    def _remove_and_release(self, domain, name: str) -> None:
        try:
            remove_domain(domain, name, self.log_dir)
        finally:
            self.release()

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for future in self.futures:
            future.result()


def remove_domain(domain, name: str, log_dir: Optional[str]) -> None:
    try:
        if domain.isActive():
            domain.destroy()
    except libvirt.libvirtError:
        pass
    try:
        domain.undefine()
    except libvirt.libvirtError:
        pass
    path = os.path.join(log_dir, name + ".log") if log_dir else None
    if path and os.path.isfile(path):
        os.unlink(path)


def run_real(conn, reaper: Reaper, entry: Dict[str, Any], name: str, cpu: Dict[str, Any]) -> Outcome:
    """Define, start paused, read the live CPU; the domain goes to the reaper whatever happens."""
    reaper.admit()
    try:
        domain = conn.defineXML(domain_xml(name, entry, cpu))
    except libvirt.libvirtError as exc:
        reaper.release()
        return Outcome(DEFINE_ERROR, error=_message(exc))
    try:
        for attempt in range(2):
            try:
                domain.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
            except libvirt.libvirtError as exc:
                if attempt == 0 and _vanished_without_error(_message(exc)):
                    continue
                return Outcome(START_ERROR, error=_message(exc))
            break
        return Outcome(LIVE, cpu=ordered(cpu_from_xml(domain.XMLDesc(0))))
    finally:
        reaper.remove(domain, name)


def _vanished_without_error(message: str) -> bool:
    """QEMU went away while libvirt talked to its monitor and libvirt's error quotes no error of QEMU's
    own (only warnings, or nothing: "failed to connect to monitor socket", libvirt 11's "QEMU
    unexpectedly closed the monitor (vm='...')"): a race seen a few times in ~1000 starts on the
    loaded 2-core testbed, which hides QEMU's reason; such a start is tried once more."""
    about_the_monitor = any(words in message.lower() for words in MONITOR_RACES)
    return about_the_monitor and QEMU_MESSAGE.search(message) is None


def leftover_guests(conn, name_prefix: str) -> List[str]:
    names = conn.listDefinedDomains() + [domain.name() for domain in conn.listAllDomains()]
    return sorted({name for name in names if name.startswith(name_prefix)})


# --- the prediction ----------------------------------------------------------------------------

def run_prediction(facts: Dict[str, Any], virt_type: str, cpu: Dict[str, Any]) -> Outcome:
    """live_cpu_prediction, the filter: a live CPU, libvirt's refusal at start, or why it cannot tell.

    The filter fails only where libvirt would refuse to define the CPU (invalid definitions).
    """
    try:
        prediction = live_cpu_prediction(cpu, facts, virt_type)
    except AnsibleFilterError as exc:
        return Outcome(DEFINE_ERROR, error=str(exc))
    if prediction["unpredictable"]:
        return Outcome(UNPREDICTABLE, error=prediction["unpredictable"])
    if prediction["error"]:
        return Outcome(START_ERROR, error=prediction["error"])
    return Outcome(LIVE, cpu=prediction["cpu"])


# --- comparison --------------------------------------------------------------------------------

def _features(cpu: Dict[str, Any]) -> List[Tuple[str, str]]:
    return [(f["name"], f.get("policy") or "require") for f in cpu.get("features") or []]


def compare_live(predicted: Dict[str, Any], actual: Dict[str, Any]) -> Tuple[List[str], bool]:
    """Differences (mode, match, check, model, vendor, topology, ..., feature -> policy) and whether the order differs."""
    differences = []
    for key in COMPARED_KEYS:
        if predicted.get(key) != actual.get(key):
            differences.append("%s: predicted %r, libvirt %r" % (key, predicted.get(key), actual.get(key)))
    want, got = dict(_features(actual)), dict(_features(predicted))
    for name in sorted(set(want) | set(got)):
        if want.get(name) != got.get(name):
            differences.append("feature %s: predicted %s, libvirt %s" % (name, got.get(name, "absent"), want.get(name, "absent")))
    order_differs = not differences and _features(predicted) != _features(actual)
    return differences, order_differs


def qemu_or_libvirt_reason(error: Optional[str]) -> str:
    """QEMU's own message when libvirt's error quotes one, else libvirt's whole message."""
    qemu = QEMU_MESSAGE.search(error or "")
    return qemu.group(1) if qemu else (error or "")


def compare_refusal(predicted: Outcome, actual: Outcome) -> List[str]:
    """Both refused: at the same stage, and at start with libvirt's own reason."""
    if predicted.kind != actual.kind:
        return ["libvirt refused at %s (%s), the prediction at %s (%s)"
                % (actual.kind, actual.error, predicted.kind, predicted.error)]
    if actual.kind == DEFINE_ERROR:
        return []
    if qemu_or_libvirt_reason(actual.error) not in (predicted.error or ""):
        return ["both refused, for another reason: libvirt '%s', predicted '%s'" % (actual.error, predicted.error)]
    return []


def _unmatched(predicted: Outcome, actual: Outcome) -> List[str]:
    if predicted.kind == UNPREDICTABLE:
        libvirt_did = "started it" if actual.kind == LIVE else "refused (%s: %s)" % (actual.kind, actual.error)
        return ["no prediction (%s); libvirt %s" % (predicted.error, libvirt_did)]
    if actual.kind == LIVE:
        return ["libvirt started it, the prediction refused: %s" % predicted.error]
    return ["libvirt refused (%s: %s), the prediction started it" % (actual.kind, actual.error)]


def compare(target: Target, label: str, cpu: Any, predicted: Outcome, actual: Outcome) -> Result:
    result = Result(target, label, cpu, predicted, actual)
    if predicted.kind == LIVE and actual.kind == LIVE:
        result.differences, result.order_only = compare_live(predicted.cpu, actual.cpu)
    elif predicted.refused and actual.refused:
        result.differences = compare_refusal(predicted, actual)
    else:
        result.differences = _unmatched(predicted, actual)
    return result


# --- one whole run -----------------------------------------------------------------------------

def run_matrix(conn, facts: Dict[str, Any], target: Target, name_prefix: str, log_dir: Optional[str],
               alive: int = 4) -> List[Result]:
    """Every case of the matrix for *target*: started for real through *conn*, predicted from *facts*.

    Guests are named ``<name_prefix><n>``; *log_dir* is where their QEMU logs are removed from
    (None: they are not). Fails the test when a case guest is left behind.
    """
    entry = facts["virt_types"][target.virt_type]
    reaper = Reaper(conn, log_dir, alive)

    def one(numbered: Tuple[int, Case]) -> Result:
        number, (label, cpu) = numbered
        actual = run_real(conn, reaper, entry, "%s%02d" % (name_prefix, number), cpu)
        predicted = run_prediction(facts, target.virt_type, cpu)
        return compare(target, label, cpu, predicted, actual)

    try:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            results = list(pool.map(one, enumerate(matrix(target.virt_type))))
    finally:
        reaper.close()
    leftovers = leftover_guests(conn, name_prefix)
    if leftovers:
        pytest.fail("case domains left behind on %s: %s" % (target.host, leftovers), pytrace=False)
    return results


def fail_on_differences(results: List[Result]) -> None:
    """Fails the test, naming every case whose prediction is not what libvirt did."""
    failed = [result for result in results if not result.matches]
    if failed:
        pytest.fail("%d of %d cases differ from the real guests:\n%s" % (len(failed), len(results), report(failed)),
                    pytrace=False)


# --- the report --------------------------------------------------------------------------------

def _targets(results: List[Result]) -> List[Target]:
    seen: Dict[Target, None] = {}
    for result in results:
        seen.setdefault(result.target, None)
    return list(seen)


def _figures(target: Target, results: List[Result]) -> Tuple[str, ...]:
    mine = [r for r in results if r.target == target]
    exact = sum(r.matches for r in mine)
    refused = sum(r.actual.refused for r in mine)
    return (target.host, target.libvirt_version, target.hypervisor_version, target.virt_type, str(len(mine)),
            "%d (%.1f%%)" % (exact, 100.0 * exact / max(len(mine), 1)), str(refused),
            str(sum(r.matches and r.actual.refused for r in mine)), str(sum(r.predicted.kind == UNPREDICTABLE for r in mine)))


FIGURE_COLUMNS = ("host", "libvirt", "QEMU", "virt", "cases", "exact", "refused by libvirt", "refusals predicted",
                  "no prediction")


def figures_table(results: List[Result]) -> str:
    """Per host and virt type: cases, exact matches, libvirt's refusals and how many of them were predicted."""
    rows = [FIGURE_COLUMNS] + [_figures(target, results) for target in _targets(results)]
    exact = sum(r.matches for r in results)
    rows.append(("all", "", "", "", str(len(results)), "%d (%.1f%%)" % (exact, 100.0 * exact / max(len(results), 1)),
                 str(sum(r.actual.refused for r in results)), str(sum(r.matches and r.actual.refused for r in results)),
                 str(sum(r.predicted.kind == UNPREDICTABLE for r in results))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(FIGURE_COLUMNS))]
    return "\n".join("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def report(results: List[Result], title: str = "live_cpu accuracy: predictions vs. guests started",
           notes: Sequence[str] = ()) -> str:
    """The figures table, *notes* (e.g. what cpu_facts warned of), every difference, order-only differences."""
    lines = [title, figures_table(results)] + ["  NOTE " + note for note in notes]
    for result in results:
        if result.differences:
            lines.append("  DIFFERENCE %s/%s/%s cpu=%r" % (result.target.host, result.virt_type, result.label, result.cpu))
            lines.extend("      " + text for text in result.differences)
    order = [r for r in results if r.order_only]
    lines.append("  feature order differs (policies equal) in %d case(s)%s"
                 % (len(order), ": " + ", ".join("%s/%s/%s" % (r.target.host, r.virt_type, r.label) for r in order) if order else ""))
    return "\n".join(lines)


def results_json(results: List[Result]) -> str:
    """Every case as data (target, label, cpu, predicted and real outcome, differences), for diagnosis."""
    return json.dumps([dict(asdict(result), matches=result.matches) for result in results], indent=1, sort_keys=True)


def write_report(terminalreporter, results: List[Result], path, title: str, notes: Sequence[str] = ()) -> None:
    """The report in the pytest terminal summary and in *path* (a pathlib.Path), every case in *path*.json."""
    if not results:
        return
    text = report(results, title, notes)
    terminalreporter.write_sep("=", title)
    terminalreporter.write_line(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")
    path.with_suffix(".json").write_text(results_json(results) + "\n", encoding="utf-8")
    terminalreporter.write_line("(also written to %s, every case in %s)"
                                % (os.path.relpath(path), os.path.relpath(path.with_suffix(".json"))))
