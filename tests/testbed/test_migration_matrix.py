# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Live migration across libvirt versions: what really happens, and what migration_verdict predicts.

The matrix: for each virt type (kvm, qemu), each guest CPU kind and each ordered pair of the four
testbed hosts (libvirt 7.0, 9.0, 11.3, 12.8; 12 directions), a transient paused guest is started on
the source (machine pc-i440fx-5.2, the one all four QEMUs have; no disks; 32 MiB), its live <cpu>
(XMLDesc) and its guest-visible CPUID (QMP qom-get ``feature-words`` of the vCPU) are read, the
predictor is asked, and the guest is migrated live for real (migrate3, VIR_MIGRATE_LIVE, a port of
its own on 127.0.0.1). On success the destination's live <cpu> and CPUID are read. The guest is
destroyed wherever it is at the end of each case.

Guest CPU kinds, each built from the hosts' cpu_facts:

* ``host-model``, ``host-passthrough`` (kvm only), ``maximum``: where the source's facts say the
  mode is supported; elsewhere the kind is "not startable" there (a row of the report, no case);
* ``fleet``: fleet_baseline of the four hosts' entries of the virt type; ``fleet-2cores``: the same
  with 1 socket x 2 cores and 2 vCPUs;
* ``libvirt-baseline``: libvirt's own baselineHypervisorCPU on testbed-sid over the four hosts'
  host-model CPUs (``host_model_migratable``), MIGRATABLE;
* the first three of NAMED_MODELS that are usable on all four hosts, as custom/exact models.

A guest the source refuses to start is a "source refused" row, not a migration case. The real
outcome of a case: ``refused`` (migrate3 raised; libvirt's text kept), ``changed`` (migrated, but
the live <cpu> or the CPUID differ from the source's) or ``kept``. CPUs are compared as dicts
(cpu_from_element) with their features sorted by name.

The whole matrix runs once per session (at most WORKERS threads, each with its own connections)
and fills the report tests/output/migration-testbed.txt; the tests then assert on it:
the ``fleet`` kinds keep their CPU in all 12 directions, and the predictor agrees with every case
(outcome; live CPU where the guest migrated; a refusal text that differs is reported, not failed).
"""

from __future__ import annotations

import copy
import json
import queue
import re
import threading
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import libvirt
import libvirt_qemu
import pytest

from ansible_collections.hostcpu.libvirt.plugins.module_utils._baseline import cpu_verdict, fleet_baseline, host_records
from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import cpu_from_element, cpu_to_xml
from ansible_collections.hostcpu.libvirt.plugins.module_utils._migration import migration_verdict
from ansible_collections.hostcpu.libvirt.plugins.module_utils._xml import parse_xml

from conftest import HOSTS, ROOT, Host, guest_name

MACHINE = "pc-i440fx-5.2"
VIRT_TYPES = ("kvm", "qemu")
WORKERS = 4
PORTS = range(49400, 49700)
MEMORY_MIB = 32
NAMED_MODELS = ("EPYC", "Nehalem", "Opteron_G2", "Westmere", "qemu64", "kvm64", "core2duo")
NAMED_COUNT = 3
FLEET_KINDS = ("fleet", "fleet-2cores")
# The fleet CPU as fleet_baseline gives it keeps its CPU everywhere. A multi-core guest cannot on
# this fleet: QEMU 10+ sets ht and cmp_legacy for it (libvirt 11.3's check='full' then refuses
# QEMU < 10's CPU), libvirt 12.8 ignores both; fleet-2cores is a prediction case only.
KEPT_KINDS = ("fleet",)
MIGRATED = ("kept", "changed")
BASELINE_HOST = "testbed-sid"
REPORT = ROOT / "tests" / "output" / "migration-testbed.txt"
RETRIED_START_ERRORS = ("failed to connect to monitor socket",)
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z ")
VM_NAME = re.compile(r" \(vm='[^']*'\)")

CPU = Dict[str, Any]
Entry = Dict[str, Any]
Words = Dict[Tuple[int, int, str], int]


# --- the cases ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Guest:
    """One guest CPU kind of one virt type: the <cpu> dict, vCPUs, and the mode a source must offer."""
    kind: str
    cpu: CPU
    vcpus: int = 1
    mode: Optional[str] = None


@dataclass
class Row:
    """One (virt type, kind, source, dest): a migration case, or why it is none."""
    virt_type: str
    kind: str
    source: str
    dest: str
    status: str = "case"            # case | not startable | source refused | harness error
    predicted: str = "-"            # kept | changed | refused | no prediction | predictor error: ...
    predicted_refusal: Optional[str] = None
    predicted_cpu: Optional[CPU] = None
    blockers: List[str] = field(default_factory=list)
    real: str = "-"                 # kept | changed | refused
    error: str = ""                 # libvirt's text (refusal, source refusal) or the harness error
    differed: List[str] = field(default_factory=list)
    cpu_diff: str = ""
    cpuid_diff: str = ""
    real_cpu: Optional[CPU] = None
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return "%s %s %s->%s" % (self.virt_type, self.kind, self.source, self.dest)

    @property
    def is_case(self) -> bool:
        return self.status == "case"

    @property
    def outcome_agrees(self) -> bool:
        return self.predicted == self.real

    @property
    def cpu_agrees(self) -> bool:
        """Where the guest migrated and the predictor said so: the same live CPU on the destination."""
        if self.real not in MIGRATED or self.predicted not in MIGRATED:
            return True
        return self.predicted_cpu is not None and canonical(self.predicted_cpu) == self.real_cpu

    @property
    def agrees(self) -> bool:
        return self.outcome_agrees and self.cpu_agrees

    @property
    def text_differs(self) -> bool:
        return (self.predicted == self.real == "refused"
                and collapse(self.predicted_refusal or "") not in self.error)


def collapse(text: str) -> str:
    return " ".join(str(text).split())


def canonical(cpu: Optional[CPU]) -> CPU:
    """The CPU dict with its features sorted by name (their order means nothing)."""
    result = copy.deepcopy(cpu or {})
    if result.get("features"):
        result["features"] = sorted(result["features"], key=lambda feature: feature["name"])
    return result


def _entry(facts: Dict[str, Any], host: Host, virt_type: str) -> Entry:
    return facts[host.name]["virt_types"][virt_type]


def hostcpu_facts(cpu_facts_results: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    facts = {}
    for host in HOSTS:
        result = cpu_facts_results[host.name]
        assert not result.get("failed"), "%s: cpu_facts failed: %s" % (host, result.get("msg"))
        facts[host.name] = result["ansible_facts"]["hostcpu"]
    return facts


def fleet_cpu(facts: Dict[str, Dict[str, Any]], virt_type: str) -> CPU:
    records = host_records([{"name": "%s/%s" % (host, virt_type), "facts": facts[host.name], "virt_type": virt_type}
                            for host in HOSTS])
    return fleet_baseline(records).cpu


def with_two_cores(cpu: CPU) -> CPU:
    result = copy.deepcopy(cpu)
    result["topology"] = {"sockets": 1, "dies": 1, "cores": 2, "threads": 1}
    return result


def _baseline_call(conn: Any, entry: Entry, virt_type: str, xmls: List[str], flags: int) -> CPU:
    text = conn.baselineHypervisorCPU(entry["emulator"], "x86_64", MACHINE, virt_type, xmls, flags)
    return cpu_from_element(parse_xml(text))


def libvirt_baseline(conn: Any, facts: Dict[str, Dict[str, Any]], virt_type: str, notes: List[str]) -> Optional[CPU]:
    """libvirt's baselineHypervisorCPU on BASELINE_HOST over the four host-model CPUs, MIGRATABLE.

    When that call fails: the same without MIGRATABLE, then BASELINE_HOST's own host-model CPU
    alone; each failure and the fallback used go to *notes*.
    """
    sid = next(host for host in HOSTS if host.name == BASELINE_HOST)
    entry = _entry(facts, sid, virt_type)
    every = [cpu_to_xml(_entry(facts, host, virt_type)["host_model_migratable"]) for host in HOSTS]
    attempts = [("the four hosts' host-model CPUs, MIGRATABLE", every, libvirt.VIR_CONNECT_BASELINE_CPU_MIGRATABLE),
                ("the four hosts' host-model CPUs, without MIGRATABLE", every, 0),
                ("%s's host-model CPU alone, MIGRATABLE" % sid, every[HOSTS.index(sid):HOSTS.index(sid) + 1],
                 libvirt.VIR_CONNECT_BASELINE_CPU_MIGRATABLE)]
    for position, (what, xmls, flags) in enumerate(attempts):
        try:
            cpu = _baseline_call(conn, entry, virt_type, xmls, flags)
        except libvirt.libvirtError as exc:
            notes.append("%s libvirt-baseline over %s failed: %s" % (virt_type, what, collapse(exc)))
            continue
        notes.append("%s libvirt-baseline: baselineHypervisorCPU on %s over %s" % (virt_type, sid, what))
        return cpu
    return None


def _unusable_on(facts: Dict[str, Dict[str, Any]], virt_type: str, name: str) -> List[str]:
    """The hosts whose libvirt does not report model *name* usable for *virt_type*."""
    where = []
    for host in HOSTS:
        models = _entry(facts, host, virt_type)["modes"]["custom"]["models"]
        if not any(model["name"] == name and model.get("usable") is True for model in models):
            where.append(host.suite)
    return where


def _named_cpu(name: str) -> CPU:
    return {"mode": "custom", "match": "exact", "model": {"name": name}}


def _fixed_named(facts: Dict[str, Dict[str, Any]], virt_type: str, name: str) -> Optional[CPU]:
    """Model *name* with the features disabled that keep it from starting on some host (the union of
    each host's fix, as cpu_blockers names it), when that makes it start on all four."""
    cpu = _named_cpu(name)
    disabled: List[str] = []
    for host in HOSTS:
        fix = cpu_verdict(cpu, _entry(facts, host, virt_type))["fix"] or []
        disabled += [item["name"] for item in fix if item["name"] not in disabled]
    cpu["features"] = [{"name": feature, "policy": "disable"} for feature in disabled]
    if disabled and all(cpu_verdict(cpu, _entry(facts, host, virt_type))["runs"] for host in HOSTS):
        return cpu
    return None


def named_guests(facts: Dict[str, Dict[str, Any]], virt_type: str, notes: List[str]) -> List[Guest]:
    """The first NAMED_COUNT of NAMED_MODELS usable on all four hosts as they are, then those that
    start everywhere with their blockers disabled (kind ``<model>-fixed``)."""
    unusable = {name: _unusable_on(facts, virt_type, name) for name in NAMED_MODELS}
    guests = [Guest(name, _named_cpu(name)) for name in NAMED_MODELS if not unusable[name]][:NAMED_COUNT]
    for name in NAMED_MODELS:
        if len(guests) >= NAMED_COUNT:
            break
        fixed = _fixed_named(facts, virt_type, name) if unusable[name] else None
        if fixed is not None:
            guests.append(Guest("%s-fixed" % name, fixed))
            notes.append("%s %s-fixed: %s not usable on %s; disabled %s" % (
                virt_type, name, name, ",".join(unusable[name]), ",".join(f["name"] for f in fixed["features"])))
    if len(guests) < NAMED_COUNT:
        notes.append("%s: only %d named models start on all four hosts" % (virt_type, len(guests)))
    return guests


def guests_of(facts: Dict[str, Dict[str, Any]], virt_type: str, baseline: Optional[CPU], notes: List[str]) -> List[Guest]:
    """The guest CPU kinds of *virt_type*, in report order."""
    guests = [Guest("host-model", {"mode": "host-model"}, mode="host-model")]
    if virt_type == "kvm":
        guests.append(Guest("host-passthrough", {"mode": "host-passthrough"}, mode="host-passthrough"))
    guests.append(Guest("maximum", {"mode": "maximum"}, mode="maximum"))
    if virt_type == "kvm":
        # Nested KVM refuses MSR 0x10a for these three unless arch-capabilities is off (cpu_facts' fix).
        guests += [Guest("%s-fixed" % mode, {"mode": mode, "features": [{"name": "arch-capabilities", "policy": "disable"}]},
                         mode=mode) for mode in ("host-model", "host-passthrough", "maximum")]
    fleet = fleet_cpu(facts, virt_type)
    guests += [Guest("fleet", fleet), Guest("fleet-2cores", with_two_cores(fleet), vcpus=2)]
    if baseline is not None:
        guests.append(Guest("libvirt-baseline", baseline))
    return guests + named_guests(facts, virt_type, notes)


@dataclass(frozen=True)
class Case:
    virt_type: str
    guest: Guest
    source: Host
    dest: Host

    def row(self, **values: Any) -> Row:
        return Row(self.virt_type, self.guest.kind, self.source.name, self.dest.name, **values)


def pairs() -> List[Tuple[Host, Host]]:
    return [(source, dest) for source in HOSTS for dest in HOSTS if source is not dest]


# --- one case ------------------------------------------------------------------------------------

def domain_xml(name: str, entry: Entry, guest: Guest) -> str:
    return ("<domain type='%s'><name>%s</name><memory unit='MiB'>%d</memory><vcpu>%d</vcpu>"
            "<os><type arch='x86_64' machine='%s'>hvm</type></os>%s<on_crash>destroy</on_crash>"
            "<devices><emulator>%s</emulator><memballoon model='none'/></devices></domain>"
            % (entry["domain_type"], name, MEMORY_MIB, guest.vcpus, MACHINE, cpu_to_xml(guest.cpu), entry["emulator"]))


def live_cpu(dom: Any) -> CPU:
    cpu_el = parse_xml(dom.XMLDesc(0)).find("cpu")
    return {} if cpu_el is None else cpu_from_element(cpu_el)


def qmp(dom: Any, command: str, arguments: Optional[Dict[str, Any]] = None) -> Any:
    request: Dict[str, Any] = {"execute": command}
    if arguments:
        request["arguments"] = arguments
    return json.loads(libvirt_qemu.qemuMonitorCommand(dom, json.dumps(request), 0))["return"]


XSAVE_LEAF = 0xD
XSAVE_BIT = (1, 0, "ECX", 1 << 26)


def feature_words(dom: Any) -> Words:
    """The CPUID feature words the guest sees on its first vCPU: (leaf, subleaf, register) -> bits.

    Leaf 0xD (XSAVE state components) counts only when CPUID.1:ECX.XSAVE is set: software must
    check that bit first (Intel SDM, "Enumeration of CPU Support for XSAVE"). QEMU leaves stale
    component bits in leaf 0xD when the accelerator filtered xsave out of a model (nested KVM and
    EPYC: 0x7 on the source, 0 once the explicit live CPU starts on the destination).
    """
    path = qmp(dom, "query-cpus-fast")[0]["qom-path"]
    words: Words = {}
    for word in qmp(dom, "qom-get", {"path": path, "property": "feature-words"}):
        key = (word["cpuid-input-eax"], word.get("cpuid-input-ecx", 0), word["cpuid-register"])
        words[key] = words.get(key, 0) | word["features"]
    leaf, subleaf, register, bit = XSAVE_BIT
    if not words.get((leaf, subleaf, register), 0) & bit:
        words = {key: value for key, value in words.items() if key[0] != XSAVE_LEAF}
    return words


def _cpuid_names() -> Dict[Tuple[int, int, str, int], str]:
    """libvirt's names of CPUID bits, from the newest host's cpu_map/x86_features.xml."""
    for host in reversed(HOSTS):
        path = Path(host.tree) / "usr/share/libvirt/cpu_map/x86_features.xml"
        if path.is_file():
            break
    else:
        return {}
    names = {}
    for feature in ET.parse(str(path)).getroot().iter("feature"):
        for cpuid in feature.findall("cpuid"):
            leaf, subleaf = int(cpuid.get("eax_in"), 16), int(cpuid.get("ecx_in", "0"), 16)
            for register in ("eax", "ebx", "ecx", "edx"):
                mask = int(cpuid.get(register, "0"), 16)
                for bit in range(32):
                    if mask >> bit & 1:
                        names.setdefault((leaf, subleaf, register.upper(), bit), feature.get("name"))
    return names


CPUID_NAMES = _cpuid_names()


def words_diff(before: Words, after: Words) -> str:
    """The CPUID bits the destination lost (-) and gained (+), by libvirt's names where it has one."""
    changes = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key, 0), after.get(key, 0)
        for bit in range(32):
            if (old ^ new) >> bit & 1:
                leaf, subleaf, register = key
                name = CPUID_NAMES.get((leaf, subleaf, register, bit),
                                       "0x%x.%d.%s[%d]" % (leaf, subleaf, register, bit))
                changes.append(("+" if new >> bit & 1 else "-") + name)
    return " ".join(changes)


def cpu_diff(before: CPU, after: CPU) -> str:
    parts = ["%s %s -> %s" % (key, json.dumps(before.get(key)), json.dumps(after.get(key)))
             for key in sorted((set(before) | set(after)) - {"features"}) if before.get(key) != after.get(key)]
    old = {f["name"]: f.get("policy", "require") for f in before.get("features") or []}
    new = {f["name"]: f.get("policy", "require") for f in after.get("features") or []}
    parts += ["%s: %s -> %s" % (name, old.get(name, "-"), new.get(name, "-"))
              for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]
    return "; ".join(parts)


def predict(row: Row, cpu: CPU, source: Entry, dest: Entry) -> None:
    try:
        verdict = migration_verdict(copy.deepcopy(cpu), dest, source=source, machine=MACHINE)
    except NotImplementedError:
        row.predicted = "no prediction"
        return
    except Exception as exc:  # pylint: disable=broad-except
        row.predicted = "predictor error: %s: %s" % (type(exc).__name__, collapse(exc))
        return
    row.predicted = verdict.get("outcome")
    row.predicted_refusal = verdict.get("refusal")
    row.predicted_cpu = verdict.get("live_cpu")
    row.blockers = list(verdict.get("blockers") or [])


def start_paused(conn: Any, xml: str) -> Any:
    """createXML paused; a start that only lost QEMU's monitor (QEMU died early, loaded host) is tried once more."""
    try:
        return conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED)
    except libvirt.libvirtError as exc:
        if not any(text in str(exc) for text in RETRIED_START_ERRORS):
            raise
        return conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED)


def migrate(dom: Any, dest_conn: Any, port: int) -> Any:
    params = {libvirt.VIR_MIGRATE_PARAM_URI: "tcp://127.0.0.1:%d" % port,
              libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: "127.0.0.1"}
    return dom.migrate3(dest_conn, params, libvirt.VIR_MIGRATE_LIVE)


def destroy_everywhere(name: str, conns: Sequence[Any]) -> None:
    for conn in conns:
        try:
            conn.lookupByName(name).destroy()
        except libvirt.libvirtError:
            pass


def record_migration(row: Row, migrated: Any, cpu_before: CPU, words_before: Words) -> None:
    row.real_cpu = canonical(live_cpu(migrated))
    row.cpu_diff = cpu_diff(cpu_before, row.real_cpu)
    row.cpuid_diff = words_diff(words_before, feature_words(migrated))
    row.differed = [what for what, diff in (("live <cpu>", row.cpu_diff), ("CPUID", row.cpuid_diff)) if diff]
    row.real = "changed" if row.differed else "kept"


def run_case(case: Case, facts: Dict[str, Dict[str, Any]], conns: "Connections", ports: "queue.Queue[int]") -> Row:
    """Start, predict, migrate, read back; the guest is destroyed on both hosts whatever happened."""
    row = case.row()
    source, dest = _entry(facts, case.source, case.virt_type), _entry(facts, case.dest, case.virt_type)
    name = guest_name("mm-%s-%s-%s-%s" % (case.virt_type, case.guest.kind, case.source.suite, case.dest.suite))
    started = time.monotonic()
    opened: List[Any] = []
    try:
        opened += [conns.of(case.source), conns.of(case.dest)]
        src_conn, dest_conn = opened
        try:
            dom = start_paused(src_conn, domain_xml(name, source, case.guest))
        except libvirt.libvirtError as exc:
            row.status, row.error = "source refused", collapse(exc)
            return row
        cpu_before, words_before = live_cpu(dom), feature_words(dom)
        predict(row, cpu_before, source, dest)
        port = ports.get()
        try:
            migrated = migrate(dom, dest_conn, port)
        except libvirt.libvirtError as exc:
            row.real, row.error = "refused", collapse(exc)
            return row
        finally:
            ports.put(port)
        record_migration(row, migrated, cpu_before, words_before)
    except Exception as exc:  # pylint: disable=broad-except
        row.status, row.error = "harness error", "%s: %s" % (type(exc).__name__, collapse(exc))
    finally:
        destroy_everywhere(name, opened)
        row.seconds = time.monotonic() - started
    return row


class Connections:
    """One libvirt connection per worker thread and host, all closed by close()."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: List[Any] = []

    def of(self, host: Host) -> Any:
        mine = self._local.__dict__.setdefault("conns", {})
        if host.name not in mine:
            mine[host.name] = libvirt.open(host.uri)
            with self._lock:
                self._opened.append(mine[host.name])
        return mine[host.name]

    def close(self) -> None:
        for conn in self._opened:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass


# --- the matrix ----------------------------------------------------------------------------------

@dataclass
class Matrix:
    rows: List[Row] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    seconds: float = 0.0

    def of(self, virt_type: str, kinds: Optional[Sequence[str]] = None) -> List[Row]:
        return [row for row in self.rows if row.virt_type == virt_type and (kinds is None or row.kind in kinds)]

    @property
    def cases(self) -> List[Row]:
        return [row for row in self.rows if row.is_case]


def plan(facts: Dict[str, Dict[str, Any]], guests: Dict[str, List[Guest]]) -> Tuple[List[Case], List[Row]]:
    """The migration cases, and the rows of kinds a source does not offer (not startable)."""
    cases, unstartable = [], []
    for virt_type in VIRT_TYPES:
        for guest in guests[virt_type]:
            for source, dest in pairs():
                case = Case(virt_type, guest, source, dest)
                modes = _entry(facts, source, virt_type)["modes"]
                if guest.mode and not (modes.get(guest.mode) or {}).get("supported"):
                    unstartable.append(case.row(status="not startable",
                                                error="%s does not offer mode %s" % (source, guest.mode)))
                else:
                    cases.append(case)
    return cases, unstartable


def run_matrix(facts: Dict[str, Dict[str, Any]], baseline_conn: Any) -> Matrix:
    matrix = Matrix()
    guests = {vt: guests_of(facts, vt, libvirt_baseline(baseline_conn, facts, vt, matrix.notes), matrix.notes)
              for vt in VIRT_TYPES}
    cases, unstartable = plan(facts, guests)
    ports: "queue.Queue[int]" = queue.Queue()
    for port in PORTS:
        ports.put(port)
    conns = Connections()
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            done = list(pool.map(lambda case: run_case(case, facts, conns, ports), cases))
    finally:
        conns.close()
    matrix.seconds = time.monotonic() - started
    kinds = {vt: [guest.kind for guest in guests[vt]] for vt in VIRT_TYPES}
    names = [host.name for host in HOSTS]
    matrix.rows = sorted(done + unstartable, key=lambda r: (VIRT_TYPES.index(r.virt_type), kinds[r.virt_type].index(r.kind),
                                                            names.index(r.source), names.index(r.dest)))
    for virt_type in VIRT_TYPES:
        matrix.notes.append("%s kinds: %s" % (virt_type, ", ".join(guest.kind for guest in guests[virt_type])))
        for guest in guests[virt_type]:
            if guest.mode is None:
                matrix.notes.append("%s %s cpu: %s" % (virt_type, guest.kind, json.dumps(guest.cpu, sort_keys=True)))
    return matrix


# --- the report ----------------------------------------------------------------------------------

def row_line(row: Row) -> str:
    if not row.is_case:
        return "%-4s %-16s %-16s -> %-16s %s: %s" % (row.virt_type, row.kind, row.source, row.dest, row.status, row.error)
    texts = []
    if row.error:
        texts.append("real: %s" % row.error)
    if row.predicted_refusal:
        texts.append("predicted: %s" % collapse(row.predicted_refusal))
    if row.differed:
        texts.append("differed: %s" % ", ".join(row.differed))
    if row.cpu_diff:
        texts.append("<cpu>: %s" % row.cpu_diff)
    if row.cpuid_diff:
        texts.append("CPUID: %s" % row.cpuid_diff)
    if row.real in MIGRATED and row.predicted in MIGRATED and not row.cpu_agrees:
        texts.append("predicted live_cpu differs: %s" % cpu_diff(canonical(row.predicted_cpu), row.real_cpu or {}))
    if row.blockers:
        texts.append("blockers: %s" % "; ".join(row.blockers))
    mark = "ok " if row.agrees else "BAD"
    if row.text_differs:
        mark = "txt"
    return "%s %-4s %-16s %-16s -> %-16s predicted=%-13s real=%-7s %5.1fs  %s" % (
        mark, row.virt_type, row.kind, row.source, row.dest, row.predicted, row.real, row.seconds, " | ".join(texts))


def summary(matrix: Matrix) -> List[str]:
    cases = matrix.cases
    lines = ["live migration matrix: %d rows, %d migration cases, %d agree with the predictor, %d text differs, "
             "%d not startable, %d source refused, %d harness errors; %.0f s with %d workers"
             % (len(matrix.rows), len(cases), sum(row.agrees for row in cases),
                sum(row.text_differs for row in cases),
                sum(row.status == "not startable" for row in matrix.rows),
                sum(row.status == "source refused" for row in matrix.rows),
                sum(row.status == "harness error" for row in matrix.rows), matrix.seconds, WORKERS)]
    for virt_type in VIRT_TYPES:
        kinds = list(dict.fromkeys(row.kind for row in matrix.of(virt_type)))
        for kind in kinds:
            rows = matrix.of(virt_type, [kind])
            counts = {what: sum(row.real == what for row in rows) for what in ("kept", "changed", "refused")}
            lines.append("  %-4s %-16s kept %2d  changed %2d  refused %2d  source refused %2d  not startable %2d"
                         % (virt_type, kind, counts["kept"], counts["changed"], counts["refused"],
                            sum(row.status == "source refused" for row in rows),
                            sum(row.status == "not startable" for row in rows)))
    return lines


def _generic(text: str) -> str:
    """libvirt's text without what differs from guest to guest (QEMU's timestamps, the guest's name)."""
    return collapse(VM_NAME.sub("", TIMESTAMP.sub("", text)))


def error_texts(matrix: Matrix) -> List[str]:
    seen: Dict[str, List[str]] = {}
    for row in matrix.rows:
        if row.status in ("case", "source refused", "harness error") and row.error:
            prefix = {"case": "migration", "source refused": "start"}.get(row.status, row.status)
            seen.setdefault("%s: %s" % (prefix, _generic(row.error)), []).append(row.label)
    return ["  [%d] %s  (e.g. %s)" % (len(where), text, where[0]) for text, where in sorted(seen.items())]


def write_report(matrix: Matrix) -> None:
    lines = ["Live migration on the testbed (%s): real outcome vs. migration_verdict" % ", ".join(h.name for h in HOSTS),
             "machine %s, %d MiB, paused transient guests, migrate3 VIR_MIGRATE_LIVE over 127.0.0.1" % (MACHINE, MEMORY_MIB),
             "marks: ok = predictor agrees, BAD = disagrees, txt = both refused, predicted text not in libvirt's",
             ""]
    lines += [row_line(row) for row in matrix.rows]
    lines += [""] + summary(matrix) + ["", "notes:"] + ["  " + note for note in matrix.notes]
    lines += ["", "libvirt error texts seen:"] + error_texts(matrix)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(lines) + "\n")


class SummaryPlugin:
    """Prints the matrix summary at the end of the session (registered when the matrix ran)."""

    def __init__(self, matrix: Matrix) -> None:
        self.matrix = matrix

    def pytest_terminal_summary(self, terminalreporter) -> None:
        terminalreporter.write_sep("=", "live migration matrix (%s)" % REPORT.relative_to(ROOT))
        for line in summary(self.matrix):
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def matrix(cpu_facts_results, connect, request) -> Matrix:
    sid = next(host for host in HOSTS if host.name == BASELINE_HOST)
    result = run_matrix(hostcpu_facts(cpu_facts_results), connect(sid))
    write_report(result)
    request.config.pluginmanager.register(SummaryPlugin(result), "hostcpu-migration-matrix")
    return result


# --- the tests -----------------------------------------------------------------------------------

def _listing(rows: Sequence[Row]) -> str:
    return "\n".join(row_line(row) for row in rows)


@pytest.mark.parametrize("virt_type", VIRT_TYPES)
def test_the_fleet_cpu_migrates_in_every_direction_and_keeps_its_cpu(virt_type, matrix):
    rows = matrix.of(virt_type, KEPT_KINDS)
    assert len(rows) == len(KEPT_KINDS) * len(pairs()), "the fleet CPU is a case in every direction"
    wrong = [row for row in rows if not (row.is_case and row.real == "kept")]
    assert not wrong, "%d of %d fleet migrations (%s) did not keep their CPU:\n%s" % (
        len(wrong), len(rows), virt_type, _listing(wrong))


@pytest.mark.parametrize("virt_type", VIRT_TYPES)
def test_migration_verdict_agrees_with_every_real_migration(virt_type, matrix):
    cases = [row for row in matrix.of(virt_type) if row.status in ("case", "harness error")]
    broken = [row for row in cases if not row.is_case]
    assert not broken, "the harness failed on:\n%s" % _listing(broken)
    wrong = [row for row in cases if not row.agrees]
    assert not wrong, "migration_verdict disagrees with %d of %d real %s migrations (see %s):\n%s" % (
        len(wrong), len(cases), virt_type, REPORT, _listing(wrong))
