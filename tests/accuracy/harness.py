# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Start a guest per case, compare its live CPU (or libvirt's refusal) with live_cpu's prediction.

Each case is defined persistently as ``hostcpu-acc-<run>-<virt type>-<n>``, started paused, its
live ``<cpu>`` read, then destroyed and undefined (in a background thread: destroy waits ~1.5 s for
QEMU) together with its QEMU log. Nothing else on the host is touched.
"""

from __future__ import annotations

import os
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import libvirt
from ansible.errors import AnsibleFilterError

from ansible_collections.hostcpu.libvirt.plugins.filter.cpu import live_cpu
from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import cpu_from_xml, cpu_to_xml, ordered
from ansible_collections.hostcpu.libvirt.plugins.module_utils._expansion import GuestWouldNotStart

PREFIX = "hostcpu-acc-"
GUEST_LOG_DIR = "/var/log/libvirt/qemu"
MEMORY_MIB = 32
# libvirt's report of QEMU dying: "internal error: qemu unexpectedly closed the monitor" or "process
# exited while connecting to monitor" (a race), timestamps, QEMU's warnings, then its first other message.
QEMU_MESSAGE = re.compile(r"qemu-system-[^:\s]+: (?!warning: )(.*?)(?= \S*\d\dT\d\d:\S* qemu-system-| qemu-system-|$)")
COMPARED_KEYS = ("mode", "match", "check", "migratable", "model", "vendor", "topology", "cache", "maxphysaddr")


@dataclass
class Outcome:
    """A live CPU, or a refusal at define or at start with libvirt's (or the filter's) message."""
    kind: str                      # live | define-error | start-error
    cpu: Optional[Dict[str, Any]] = None
    error: Optional[str] = None


@dataclass
class Result:
    virt_type: str
    label: str
    cpu: Any
    predicted: Outcome
    actual: Outcome
    differences: List[str] = field(default_factory=list)
    order_only: bool = False

    @property
    def matches(self) -> bool:
        return not self.differences


def run_token() -> str:
    return secrets.token_hex(3)


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


class Reaper:
    """Destroys and undefines the case domains in the background; ``close`` waits for all of them."""

    def __init__(self, conn, workers: int = 4):
        self.conn = conn
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.futures = []

    def remove(self, domain, name: str) -> None:
        self.futures.append(self.pool.submit(remove_domain, self.conn, domain, name))

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for future in self.futures:
            future.result()


def remove_domain(conn, domain, name: str) -> None:
    try:
        if domain.isActive():
            domain.destroy()
    except libvirt.libvirtError:
        pass
    try:
        domain.undefine()
    except libvirt.libvirtError:
        pass
    path = os.path.join(GUEST_LOG_DIR, name + ".log")
    if conn.getURI() == "qemu:///system" and os.path.isfile(path):
        os.unlink(path)


def run_real(conn, reaper: Reaper, entry: Dict[str, Any], name: str, cpu: Dict[str, Any]) -> Outcome:
    """Define, start paused, read the live CPU; the domain goes to the reaper whatever happens."""
    try:
        domain = conn.defineXML(domain_xml(name, entry, cpu))
    except libvirt.libvirtError as exc:
        return Outcome("define-error", error=_message(exc))
    try:
        try:
            domain.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        except libvirt.libvirtError as exc:
            return Outcome("start-error", error=_message(exc))
        return Outcome("live", cpu=ordered(cpu_from_xml(domain.XMLDesc(0))))
    finally:
        reaper.remove(domain, name)


def run_prediction(facts: Dict[str, Any], virt_type: str, cpu: Dict[str, Any]) -> Outcome:
    """live_cpu through the filter; a refusal is classified by the exception behind the filter error."""
    try:
        return Outcome("live", cpu=live_cpu(cpu, facts, virt_type))
    except AnsibleFilterError as exc:
        behind = exc.__context__
        kind = "start-error" if isinstance(behind, GuestWouldNotStart) else "define-error"
        reason = behind.reason if isinstance(behind, GuestWouldNotStart) else str(exc)
        return Outcome(kind, error=reason)


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


def compare_refusal(predicted: Outcome, actual: Outcome) -> List[str]:
    """Both refused: at the same stage, and at start with libvirt's own reason."""
    if predicted.kind != actual.kind:
        return ["libvirt refused at %s (%s), the prediction at %s (%s)"
                % (actual.kind, actual.error, predicted.kind, predicted.error)]
    if actual.kind == "define-error":
        return []
    qemu = QEMU_MESSAGE.search(actual.error or "")
    expected = qemu.group(1) if qemu else actual.error
    if expected not in (predicted.error or ""):
        return ["both refused, for another reason: libvirt '%s', predicted '%s'" % (actual.error, predicted.error)]
    return []


def compare(virt_type: str, label: str, cpu: Any, predicted: Outcome, actual: Outcome) -> Result:
    result = Result(virt_type, label, cpu, predicted, actual)
    if predicted.kind == "live" and actual.kind == "live":
        result.differences, result.order_only = compare_live(predicted.cpu, actual.cpu)
    elif predicted.kind != "live" and actual.kind != "live":
        result.differences = compare_refusal(predicted, actual)
    elif actual.kind == "live":
        result.differences = ["libvirt started it, the prediction refused: %s" % predicted.error]
    else:
        result.differences = ["libvirt refused (%s: %s), the prediction started it" % (actual.kind, actual.error)]
    return result


def report(results: List[Result]) -> str:
    """The exact-match rate per virt type and overall, every difference, order-only differences."""
    lines = ["live_cpu accuracy: predictions vs. guests started on this host"]
    for virt_type in sorted({r.virt_type for r in results}):
        mine = [r for r in results if r.virt_type == virt_type]
        good = sum(r.matches for r in mine)
        refusals = sum(r.actual.kind != "live" for r in mine)
        lines.append("  %-5s %3d/%3d exact (%.1f%%), of them %d refusals predicted"
                     % (virt_type, good, len(mine), 100.0 * good / len(mine), sum(r.matches and r.actual.kind != "live" for r in mine)))
        lines.append("        (%d cases started, %d refused by libvirt)" % (len(mine) - refusals, refusals))
    good = sum(r.matches for r in results)
    lines.append("  all   %3d/%3d exact (%.1f%%)" % (good, len(results), 100.0 * good / max(len(results), 1)))
    for result in results:
        if result.differences:
            lines.append("  DIFFERENCE %s/%s cpu=%r" % (result.virt_type, result.label, result.cpu))
            lines.extend("      " + text for text in result.differences)
    order = [r for r in results if r.order_only]
    lines.append("  feature order differs (policies equal) in %d case(s)%s"
                 % (len(order), ": " + ", ".join("%s/%s" % (r.virt_type, r.label) for r in order) if order else ""))
    return "\n".join(lines)
