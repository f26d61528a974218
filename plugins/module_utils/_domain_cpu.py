# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What domain_cpu does, behind its argument spec: read and plan every domain, validate the plans
against the host, write them all or none, restart when asked, and report per domain.

The module (plugins/modules/domain_cpu.py) keeps its documentation, argument spec and a short
main(); a :class:`Runner` takes the module for its parameters, check and diff mode and warnings.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, NamedTuple, Optional, Tuple, Union

from ansible_collections.hostcpu.libvirt.plugins.module_utils._connection import (
    LibvirtCallError,
    call,
    libvirt,
    libvirt_message,
    resolve_uri,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import DEFAULT_X86_MODEL, KNOWN_DEFAULT_MODELS, cpu_to_xml, ordered
from ansible_collections.hostcpu.libvirt.plugins.module_utils._domain import (
    CPUPlan,
    DomainInfo,
    apply_plan,
    cpu_diff,
    cpu_element_text,
    cpu_from_options,
    cpu_from_whole,
    domain_info,
    effective_features_mode,
    graceful_shutdown_possible,
    live_matches_definition,
    needs_default_model,
    outside_cpu_differences,
    plan_cpu,
    predicted_cpu_text,
    read_cpu,
    read_domain,
    replace_cpu,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError
from ansible_collections.hostcpu.libvirt.plugins.module_utils._versions import parse_version

# _facts, _validation, _throwaway and _watch are imported where they are used: a run that changes
# nothing needs none of them, and the payload compiles every module_util it imports on each run.
if TYPE_CHECKING:
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._throwaway import DefaultModels
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._validation import Findings, KnownFeatures
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._watch import DefinitionWatch

SINGLE_CPU_OPTIONS = ("mode", "match", "check", "migratable", "model", "fallback", "vendor_id", "vendor",
                      "topology", "cache", "maxphysaddr", "features")
STATE_NAMES = {1: "running", 2: "blocked", 3: "paused", 4: "shutdown", 5: "shutoff", 6: "crashed", 7: "pmsuspended"}
DESTROY_AT_ONCE_STATES = ("paused", "pmsuspended", "crashed")
POLL_SECONDS = 0.2
# A task naming this many domains or more lists every domain of the host once instead of looking each up.
# Measured on libvirt 9.0: a lookup costs ~65 us, a listing ~3.5 us per domain of the host (2000: 7 ms).
LIST_ALL_FROM = 8
# Threads reading the definitions of that many domains (1000 domains: 130 ms in one thread, 55-85 ms in 8).
READ_THREADS = 8
# Virt types whose full host CPU is the CPUID host CPU (virQEMUCapsTypeIsAccelerated).
ACCELERATED = ("kvm",)


class CPUJob(NamedTuple):
    """One domain: what was read and what is planned."""
    name: str
    domain: Any
    inactive_xml: str
    info: DomainInfo
    plan: CPUPlan
    state: str
    live_xml: Optional[str]
    # the definition with the planned CPU (validated on a throwaway copy, then written); None when unchanged
    new_xml: Optional[str] = None


class RestartError(CPUError):
    """A restart with the new CPU failed; the message says what was restored."""


# ---------------------------------------------------------------------------------------------
# the wish


def wanted_cpu(params: Dict[str, Any]) -> Tuple[Dict[str, Any], str]:
    """The CPU dict the task asks for and the features mode to apply it with."""
    given = [option for option in SINGLE_CPU_OPTIONS if params.get(option) is not None]
    if params["state"] == "absent" and (given or params.get("cpu") is not None):
        raise CPUError("state absent removes <cpu>; do not combine it with CPU options (%s)"
                       % ", ".join(given or ["cpu"]))
    if params.get("cpu") is not None:
        return cpu_from_whole(params["cpu"]), effective_features_mode(params["features_mode"], True)
    return cpu_from_options(params), effective_features_mode(params["features_mode"], False)


def read_known_features(arch: Optional[str], cache: Dict[str, Optional[KnownFeatures]]) -> Optional[KnownFeatures]:
    """libvirt's feature names for *arch* from the CPU map on this host (None when not installed)."""
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._validation import feature_file, known_features  # pylint: disable=import-outside-toplevel
    path = feature_file(arch)
    if path is None:
        return None
    if path not in cache:
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                cache[path] = known_features(handle.read(), path)
        else:
            cache[path] = None
    return cache[path]


# ---------------------------------------------------------------------------------------------
# xml mode


def xml_mode_result(params: Dict[str, Any], wanted: Dict[str, Any], features_mode: str, warn: Callable[[str], None],
                    diff: bool) -> Dict[str, Any]:
    """The result of O(xml): the domain XML text with the planned <cpu> (nothing written anywhere)."""
    text = params["xml"]
    info = domain_info(text)
    plan = plan_cpu(read_cpu(text), wanted, params["state"], features_mode, info.virt_type,
                    default_model=KNOWN_DEFAULT_MODELS.get(info.arch or "x86_64"))
    if plan.changed and plan.desired is not None:
        from ansible_collections.hostcpu.libvirt.plugins.module_utils._validation import raise_for, validate_for_host  # pylint: disable=import-outside-toplevel
        findings = validate_for_host(plan.desired, info.virt_type, None, read_known_features(info.arch, {}))
        raise_for({info.name or "xml": findings})
        for warning in findings.warnings:
            warn(warning)
    new_text = apply_plan(text, plan)
    result: Dict[str, Any] = {"changed": plan.changed, "xml": new_text, "cpu": read_cpu(new_text)}
    if diff and plan.changed:
        result["diff"] = cpu_diff(info.name or "xml", cpu_element_text(text), cpu_element_text(new_text))
    return result


# ---------------------------------------------------------------------------------------------
# reading and planning


def inactive_xml(domain) -> str:
    return call("reading the persistent definition of '%s'" % domain.name(), domain.XMLDesc,
                libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)


def state_name(domain) -> str:
    code = call("reading the state of '%s'" % domain.name(), domain.state)[0]
    return STATE_NAMES.get(code, "unknown")


def lookup(conn, name: str, uri: str):
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise CPUError("no domain named '%s' on %s; nothing was changed" % (name, uri)) from None
        raise LibvirtCallError("looking up domain '%s' failed: %s" % (name, libvirt_message(exc))) from None


def listed_domains(conn, names: List[str]) -> Dict[str, Any]:
    """name -> domain of every domain of the host when *names* are many (one round trip instead of one
    lookup each), else nothing (each is looked up)."""
    if len(names) < LIST_ALL_FROM:
        return {}
    return {domain.name(): domain for domain in call("listing the domains", conn.listAllDomains, 0)}


Definition = Union[str, CPUError]


def read_side_by_side(listed: Dict[str, Any], names: List[str]) -> Dict[str, Definition]:
    """name -> persistent definition of each of *names* that *listed* holds, or the error of its read
    (read_job raises it), read by READ_THREADS threads (libvirtd answers several calls of one connection at once)."""
    from concurrent.futures import ThreadPoolExecutor  # pylint: disable=import-outside-toplevel

    def read(name: str) -> Tuple[str, Definition]:
        try:
            return name, inactive_xml(listed[name])
        except CPUError as exc:
            return name, exc

    with ThreadPoolExecutor(READ_THREADS) as pool:
        return dict(pool.map(read, [name for name in names if name in listed]))


def is_running(domain) -> bool:
    """Whether *domain* was running when it was looked up or listed; read from its ID, no round trip
    (libvirt gives a domain that is not running the ID -1)."""
    return domain.ID() != -1


def read_job(conn, name: str, uri: str, wanted: Dict[str, Any], params: Dict[str, Any],
             features_mode: str, version: Tuple[int, int, int], defaults: "DefaultModels | LazyDefaultModels", domain: Any = None,
             definition: Optional[Definition] = None) -> CPUJob:
    """One domain read and planned (*domain*, *definition*: found and read already, or the error of that read;
    else looked up and read here)."""
    domain = domain or lookup(conn, name, uri)
    active = is_running(domain)
    # Only a running domain can be transient (libvirt forgets a transient one when it stops):
    # one round trip less per shut-off domain.
    if active and not call("reading '%s'" % name, domain.isPersistent):
        raise CPUError("domain '%s' is transient (it has no persistent definition); domain_cpu changes persistent "
                       "definitions: define it first (virsh dumpxml %s > %s.xml; virsh define %s.xml)" % (name, name, name, name))
    if isinstance(definition, CPUError):
        raise definition
    text = definition or inactive_xml(domain)
    info, current = read_domain(text)
    default_model = defaults.model(info, text) if needs_default_model(current, wanted, params["state"]) else DEFAULT_X86_MODEL
    plan = plan_cpu(current, wanted, params["state"], features_mode, info.virt_type, version, default_model)
    live = call("reading the live XML of '%s'" % name, domain.XMLDesc, 0) if active else None
    # An inactive domain is shut off (libvirt sets SHUTOFF when it stops one): one round trip less per domain.
    return CPUJob(name, domain, text, info, plan, state_name(domain) if active else "shutoff", live,
                  apply_plan(text, plan) if plan.changed else None)


class LazyDefaultModels:
    """_throwaway.DefaultModels, made on first use: most runs plan without the emulator's default model."""

    def __init__(self, conn, warn: Callable[[str], None]) -> None:
        self.conn = conn
        self.warn = warn
        self.models: Optional["DefaultModels"] = None

    def model(self, info: DomainInfo, domain_xml: str) -> Optional[str]:
        if self.models is None:
            from ansible_collections.hostcpu.libvirt.plugins.module_utils._throwaway import DefaultModels  # pylint: disable=import-outside-toplevel
            self.models = DefaultModels(self.conn, self.warn)
        return self.models.model(info, domain_xml)


class HostChecks:
    """The libvirt answers validation needs, each asked once per emulator/arch/machine/virt type."""

    def __init__(self, conn, version: Tuple[int, int, int]) -> None:
        self.conn = conn
        self.version = version
        self.entries: Dict[Tuple, Any] = {}
        self.measured: Dict[Tuple, Any] = {}
        self.provided: Dict[Tuple, List[str]] = {}
        self.compared: Dict[Tuple, Optional[str]] = {}
        self.features: Dict[str, Optional[KnownFeatures]] = {}
        self.feature_dependencies: Optional[Dict[str, List[str]]] = None

    @staticmethod
    def key(info: DomainInfo) -> Tuple:
        return (info.emulator, info.arch, info.machine, info.virt_type)

    def entry(self, info: DomainInfo) -> Dict[str, Any]:
        key = self.key(info)
        if key not in self.entries:
            from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts import version_text, virt_type_entry  # pylint: disable=import-outside-toplevel
            xml = call("reading the domain capabilities for %s guests (emulator %s, arch %s, machine %s)"
                       % (info.virt_type, info.emulator, info.arch, info.machine),
                       self.conn.getDomainCapabilities, info.emulator, info.arch, info.machine, info.virt_type, 0)
            self.entries[key] = virt_type_entry(info.virt_type, xml, version_text(".".join(map(str, self.version))))
        return self.entries[key]

    def dependencies(self) -> Optional[Dict[str, List[str]]]:
        """Which features hang on which (libvirt's CPU map on this host); None when it cannot be read."""
        if self.feature_dependencies is None:
            # _expansion (the largest module_utils, compiled on every run) only when it is needed (bench/README.md)
            from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_map import (  # pylint: disable=import-outside-toplevel
                cpu_map_from_xml, read_cpu_map_files)
            from ansible_collections.hostcpu.libvirt.plugins.module_utils._expansion_data import (  # pylint: disable=import-outside-toplevel
                dependencies_from_map)
            try:
                self.feature_dependencies = dependencies_from_map(cpu_map_from_xml(read_cpu_map_files()))
            except CPUError:
                return None
        return self.feature_dependencies

    def measured_entry(self, info: DomainInfo) -> Dict[str, Any]:
        """The entry with the expansion data the live-CPU prediction needs (one probe guest per target)."""
        key = self.key(info)
        if key not in self.measured:
            from ansible_collections.hostcpu.libvirt.plugins.module_utils._probe_qemu import (  # pylint: disable=import-outside-toplevel
                expansion_data_from_libvirt)
            entry = dict(self.entry(info))
            try:
                entry["expansion"] = expansion_data_from_libvirt(self.conn, entry)
            except libvirt.libvirtError as exc:
                raise LibvirtCallError("measuring QEMU's CPU expansion for the prediction failed: %s" % libvirt_message(exc)) from None
            self.measured[key] = entry
        return self.measured[key]

    def provided_anyway(self, info: DomainInfo) -> List[str]:
        """kvm: the required features of the expanded host-model CPU (part of libvirt's full host CPU)."""
        key = self.key(info)
        if key not in self.provided:
            from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts import host_model_as_custom_xml  # pylint: disable=import-outside-toplevel
            from ansible_collections.hostcpu.libvirt.plugins.module_utils._validation import required_feature_names  # pylint: disable=import-outside-toplevel
            custom_xml = host_model_as_custom_xml(self.entry(info)) if info.virt_type in ACCELERATED else None
            expanded = None
            if custom_xml:
                expanded = call("expanding the host-model CPU of %s guests" % info.virt_type, self.conn.baselineHypervisorCPU,
                                info.emulator, info.arch, info.machine, info.virt_type, [custom_xml],
                                libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES)
            self.provided[key] = required_feature_names(expanded)
        return self.provided[key]

    def compare(self, info: DomainInfo, normalized: Dict[str, Any]) -> Optional[str]:
        """libvirt's pre-start comparison of *normalized* with its full host CPU: the refusal or None."""
        from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts import usable_models  # pylint: disable=import-outside-toplevel
        from ansible_collections.hostcpu.libvirt.plugins.module_utils._validation import (  # pylint: disable=import-outside-toplevel
            forbidden_but_provided, needs_start_compare, start_compare_error, target_text)
        if not needs_start_compare(normalized):
            return None
        cpu_xml = cpu_to_xml(normalized)
        key = self.key(info) + (cpu_xml,)
        if key not in self.compared:
            provided = self.provided_anyway(info)
            try:
                if info.virt_type in ACCELERATED:
                    self.conn.compareCPU(cpu_xml, libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE)
                else:
                    self.conn.compareHypervisorCPU(info.emulator, info.arch, info.machine, info.virt_type, cpu_xml,
                                                   libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE)
                message = None
            except libvirt.libvirtError as exc:
                message = libvirt_message(exc)
            entry = self.entry(info)
            refusal = start_compare_error(message, provided, target_text(info.virt_type, entry), usable_models(entry))
            forbidden = forbidden_but_provided(normalized, provided)
            if refusal is None and forbidden:
                refusal = ("libvirt would refuse to start it on %s: the hypervisor provides the forbidden features %s; "
                           "use policy disable instead (features: {%s})"
                           % (target_text(info.virt_type, entry), ", ".join(forbidden), ", ".join("%s: disable" % f for f in forbidden)))
            self.compared[key] = refusal
        return self.compared[key]

    def validate(self, job: CPUJob, version: Tuple[int, int, int]) -> Findings:
        from ansible_collections.hostcpu.libvirt.plugins.module_utils._validation import (  # pylint: disable=import-outside-toplevel
            Findings, arch_features, check_topology, validate_for_host)
        try:
            entry = self.entry(job.info)
        except CPUError as exc:
            return Findings([str(exc)], [])
        known = arch_features(job.info.arch, read_known_features(job.info.arch, self.features))
        findings = validate_for_host(job.plan.desired, job.info.virt_type, entry, known, version)
        if not findings.errors:
            findings = Findings(check_topology(job.plan.desired_normalized, job.info.max_vcpus, version), findings.warnings)
        if findings.errors:
            return findings
        refusal = self.compare(job.info, job.plan.desired_normalized)
        return Findings([refusal] if refusal else [], findings.warnings)


def validate_jobs(checks: HostChecks, jobs: List[CPUJob], version: Tuple[int, int, int]) -> List[str]:
    """Check every planned CPU; raise (nothing written) naming every domain that fails; return the warnings."""
    if not any(job.plan.changed for job in jobs):
        return []
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._throwaway import libvirt_refusal  # pylint: disable=import-outside-toplevel
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._validation import Findings  # pylint: disable=import-outside-toplevel
    findings: Dict[str, Findings] = {}
    for job in jobs:
        if not job.plan.changed:
            continue
        found = checks.validate(job, version) if job.plan.desired is not None else Findings([], [])
        if not found.errors:
            refusal = libvirt_refusal(checks.conn, job.new_xml)
            if refusal is not None:
                found = Findings(["libvirt refuses the new definition (tried on a throwaway copy; nothing written): %s"
                                  % refusal], found.warnings)
        findings[job.name] = found
    if not findings:
        return []
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._validation import raise_for  # pylint: disable=import-outside-toplevel
    raise_for(findings, len(jobs))
    return ["%s: %s" % (name, warning) for name, found in findings.items() for warning in found.warnings]


# ---------------------------------------------------------------------------------------------
# writing


def define(conn, name: str, text: str) -> None:
    call("defining '%s'" % name, conn.defineXML, text)


def write_job(conn, job: CPUJob, watch: Optional[DefinitionWatch] = None) -> Tuple[str, List[str]]:
    """Define the planned CPU; return the new persistent XML and warnings.

    The new definition is computed before the last read, so that nothing but the comparison lies
    between that read and the write; a change someone else makes in that window (while libvirtd
    parses the new definition) is reported through *watch*.
    """
    new_xml = job.new_xml
    uuid = job.info.uuid or job.domain.UUIDString()
    since = watch.mark(uuid) if watch is not None else 0
    current = inactive_xml(job.domain)
    if current != job.inactive_xml:
        raise CPUError("domain '%s' was changed by someone else while this task ran (its definition differs from "
                       "the one read at the start); it was not written: run the task again" % job.name)
    define(conn, job.name, new_xml)
    if watch is not None:
        check_write_window(job, watch.before_own_definition(uuid, since))
    after = inactive_xml(job.domain)
    warnings = []
    others = outside_cpu_differences(job.inactive_xml, after)
    if others:
        warnings.append("%s: libvirt changed more than <cpu> on define:\n%s" % (job.name, "\n".join(others)))
    return after, warnings


def check_write_window(job: CPUJob, others: List[str]) -> None:
    """Report changes another client made between this task's last read and its write (*others*, in order)."""
    if not others:
        return
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._watch import UNDEFINED, ConcurrentChangeError  # pylint: disable=import-outside-toplevel
    repair = ""
    if UNDEFINED in others:
        try:
            job.domain.undefine()
            repair = " It was removed again, as the other client had left it."
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                repair = " It is removed, as the other client left it."
            else:
                repair = " Removing it again failed (%s): remove it if it should be gone." % libvirt_message(exc)
    raise ConcurrentChangeError(
        "domain '%s' was changed by someone else (%s) after this task's last read of it and before its new definition "
        "took effect; libvirt cannot make a definition conditional, so the new definition replaced that change.%s "
        "Check the domain and redo the other change if it is still wanted" % (job.name, ", ".join(dict.fromkeys(others)), repair))


# ---------------------------------------------------------------------------------------------
# restarting


def wait_until_off(domain, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not domain.isActive():
            return True
        time.sleep(POLL_SECONDS)
    return not domain.isActive()


def stop(domain, state: str, live_xml: Optional[str], timeout: int) -> None:
    """Shut the guest down gracefully when it can react, else (or after *timeout*) destroy it."""
    graceful = state not in DESTROY_AT_ONCE_STATES and timeout > 0 and live_xml and graceful_shutdown_possible(live_xml)
    if graceful:
        try:
            domain.shutdown()
            if wait_until_off(domain, timeout):
                return
        except libvirt.libvirtError:
            pass
    if domain.isActive():
        call("destroying '%s'" % domain.name(), domain.destroy)


def start(domain, paused: bool) -> None:
    domain.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED if paused else 0)


def rollback_xml(job: CPUJob) -> str:
    """The definition that restarts the guest with the CPU it had (the old one, else its live CPU)."""
    if job.plan.changed or job.live_xml is None:
        return job.inactive_xml
    return replace_cpu(job.inactive_xml, read_cpu(job.live_xml))


def roll_back(conn, job: CPUJob, paused: bool) -> str:
    """Restore the previous definition and start the guest as it was; say what happened.

    When this task changed the definition, the previous one is defined and started. When it did
    not (a restart of a change made earlier), the guest is started with the CPU it ran with (its
    live CPU) and its definition is then put back as it was.
    """
    start_xml = rollback_xml(job)
    how = " paused" if paused else ""
    try:
        define(conn, job.name, start_xml)
        start(job.domain, paused)
        if start_xml != job.inactive_xml:
            define(conn, job.name, job.inactive_xml)
    except (libvirt.libvirtError, CPUError) as exc:
        return ("restoring it failed too (%s): the domain is shut off with its previous definition"
                % (libvirt_message(exc) if isinstance(exc, libvirt.libvirtError) else exc))
    if start_xml != job.inactive_xml:
        return "it was started again%s with the CPU it ran with; its definition is unchanged" % how
    return "its previous CPU definition was restored and it was started again%s with its previous CPU" % how


def restart(conn, job: CPUJob, timeout: int) -> None:
    paused = job.state in ("paused", "pmsuspended")
    stop(job.domain, job.state, job.live_xml, timeout)
    try:
        start(job.domain, paused)
        return
    except libvirt.libvirtError as exc:
        reason = libvirt_message(exc)
    outcome = roll_back(conn, job, paused)
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._validation import start_failure_hint  # pylint: disable=import-outside-toplevel
    hint = start_failure_hint(reason)
    raise RestartError("domain '%s' did not start with its new CPU: %s.%s %s."
                       % (job.name, reason.rstrip("."), (" Fix: %s." % hint) if hint else "", outcome[:1].upper() + outcome[1:]))


# ---------------------------------------------------------------------------------------------
# results


def host_model(checks: HostChecks, job: CPUJob) -> Optional[Dict[str, Any]]:
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts import host_model_cpu  # pylint: disable=import-outside-toplevel
    try:
        return host_model_cpu(checks.entry(job.info))
    except CPUError:
        return None


class Runner:
    """One task over a list of domains on one connection."""

    def __init__(self, module: Any, conn, wanted: Dict[str, Any], features_mode: str) -> None:
        self.module = module
        self.conn = conn
        self.params = module.params
        self.uri = resolve_uri(self.params["uri"])
        self.version = parse_version(call("reading the libvirt version", conn.getLibVersion))
        self.wanted = wanted
        self.features_mode = features_mode
        self.checks = HostChecks(conn, self.version)
        self.defaults = LazyDefaultModels(conn, module.warn)
        self.results: List[Dict[str, Any]] = []
        self.diffs: List[Dict[str, str]] = []
        self.watch: Optional[DefinitionWatch] = None
        self.written: List[Tuple[str, str, int]] = []

    def read_all(self) -> List[CPUJob]:
        """Every domain read and planned; CPUValidationError naming each one that cannot be (nothing written)."""
        names = list(dict.fromkeys(self.params["name"]))
        listed = listed_domains(self.conn, names)
        definitions = read_side_by_side(listed, names) if listed else {}
        jobs, refused = [], {}
        for name in names:
            try:
                jobs.append(read_job(self.conn, name, self.uri, self.wanted, self.params, self.features_mode, self.version,
                                     self.defaults, listed.get(name), definitions.get(name)))
            except LibvirtCallError:
                raise
            except CPUError as exc:
                refused[name] = [str(exc)]
        if refused:
            from ansible_collections.hostcpu.libvirt.plugins.module_utils._validation import CPUValidationError  # pylint: disable=import-outside-toplevel
            self.results = [{"name": name, "changed": False, "error": "; ".join(refused[name]) if name in refused else None}
                            for name in names]
            raise CPUValidationError(refused, len(names), "cannot be read or planned")
        return jobs

    def needs_restart(self, job: CPUJob, cpu_after: Dict[str, Any]) -> bool:
        if job.live_xml is None:
            return False
        if job.plan.changed:
            return True
        dependencies = self.checks.dependencies() if cpu_after.get("mode") == "host-model" else None
        return not live_matches_definition(cpu_after, read_cpu(job.live_xml), job.info.virt_type, self.version,
                                           host_model(self.checks, job), dependencies)

    def cpu_after(self, job: CPUJob, after_xml: str) -> Dict[str, Any]:
        """The CPU the definition has after this task (in check mode: will have)."""
        if not job.plan.changed:
            return job.plan.current  # read from job.inactive_xml, which is still the definition
        if self.module.check_mode:
            return job.plan.desired_normalized
        return read_cpu(after_xml)

    def write_all(self, jobs: List[CPUJob]) -> Dict[str, str]:
        """Define every changed domain's new CPU; the new persistent XML by name. All or nothing: when
        one define fails, the domains written before it get their previous definition back."""
        written: Dict[str, str] = {}
        for job in jobs:
            if not job.plan.changed or self.module.check_mode:
                continue
            uuid = job.info.uuid or job.domain.UUIDString()
            if self.watch is not None:
                self.written.append((job.name, uuid, self.watch.mark(uuid)))
            try:
                written[job.name], warnings = write_job(self.conn, job, self.watch)
            except CPUError as exc:
                raise self.undo_writes(jobs, written, job, exc) from None
            for warning in warnings:
                self.module.warn(warning)
        return written

    def undo_writes(self, jobs: List[CPUJob], written: Dict[str, str], failed: CPUJob, exc: CPUError) -> CPUError:
        """Put the previous definitions of *written* back; the error to raise, saying what was restored."""
        restored, kept = [], {}
        for job in jobs:
            if job.name not in written:
                continue
            self.written = [item for item in self.written if item[0] != job.name]
            problem = self.restore(job, written[job.name])
            if problem is None:
                restored.append(job.name)
            else:
                kept[job.name] = problem
        self.results = [self.not_written(job, str(exc) if job is failed else None, job.name in restored) for job in jobs]
        for result in self.results:
            if result["name"] in kept:
                result.update(changed=True, cpu=read_cpu(written[result["name"]]), error=kept[result["name"]])
        if not written:
            return exc
        how = "the domains written before it got their previous definitions back, byte for byte: %s" % ", ".join(restored)
        if kept:
            how += "; NOT restored, check them: %s" % ", ".join("%s (%s)" % item for item in kept.items())
        return type(exc)("%s; %s" % (exc, how))

    def restore(self, job: CPUJob, written_xml: str) -> Optional[str]:
        """Define *job*'s previous definition again, unless someone changed the domain since this task
        wrote it (that change would be lost); None when it is back byte for byte, else why not."""
        try:
            if inactive_xml(job.domain) != written_xml:
                return "changed by someone else since this task wrote it; left as it is"
            define(self.conn, job.name, job.inactive_xml)
            if inactive_xml(job.domain) != job.inactive_xml:
                return "libvirt stores the previous definition differently now"
        except CPUError as undo_error:
            return str(undo_error)
        return None

    def not_written(self, job: CPUJob, error: Optional[str], restored: bool) -> Dict[str, Any]:
        """The result of a domain this task leaves as it was (*restored*: its previous definition was put back)."""
        result: Dict[str, Any] = {"name": job.name, "virt_type": job.info.virt_type, "changed": False,
                                  "cpu": job.plan.current, "cpu_before": job.plan.current, "error": error}
        if restored:
            result["rolled_back"] = True
        return result

    def report(self, job: CPUJob, after_xml: str) -> None:
        """The result of one domain after the writes: restart it when asked, predict when asked."""
        check_mode = self.module.check_mode
        cpu_after = self.cpu_after(job, after_xml)
        pending = self.needs_restart(job, cpu_after)
        restarted = pending and self.params["restart"]
        result = {"name": job.name, "virt_type": job.info.virt_type, "changed": job.plan.changed or restarted, "cpu": ordered(cpu_after),
                  "cpu_before": job.plan.current, "restart_required": pending and not restarted,
                  "restarted": restarted, "state": job.state, "error": None}
        if job.plan.changed:
            after_text = predicted_cpu_text(job.inactive_xml, job.plan) if check_mode else cpu_element_text(after_xml)
            self.diffs.append(cpu_diff(job.name, cpu_element_text(job.inactive_xml), after_text))
        self.results.append(result)
        if restarted and not check_mode:
            try:
                restart(self.conn, job, self.params["shutdown_timeout"])
            except RestartError as exc:
                self.record_rollback(job, result)
                result["error"] = str(exc)
                raise
            job = job._replace(live_xml=call("reading the live XML of '%s'" % job.name, job.domain.XMLDesc, 0))
            result["state"] = state_name(job.domain)
        if job.live_xml is not None:
            result["live_cpu"] = read_cpu(job.live_xml)
        if self.params["predict"] and (job.plan.changed or pending):
            result.update(self.prediction(job, cpu_after))

    def prediction(self, job: CPUJob, cpu_after: Dict[str, Any]) -> Dict[str, Any]:
        """What a start of the new definition will give (or libvirt's refusal), from the host's measured data."""
        from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import (  # pylint: disable=import-outside-toplevel
            GuestWouldNotStart)
        from ansible_collections.hostcpu.libvirt.plugins.module_utils._expansion import (  # pylint: disable=import-outside-toplevel
            predict_live_cpu)
        try:
            return {"predicted_live_cpu": predict_live_cpu(cpu_after, self.checks.measured_entry(job.info))}
        except GuestWouldNotStart as exc:
            return {"predicted_start_error": exc.reason, "predicted_fix": exc.fix}
        except CPUError as exc:
            self.module.warn("%s: no live CPU prediction: %s" % (job.name, exc))
            return {}

    def record_rollback(self, job: CPUJob, result: Dict[str, Any]) -> None:
        """The result of a domain whose restart failed: back on its previous definition."""
        result.update(cpu=read_cpu(inactive_xml(job.domain)), restarted=False, restart_required=False,
                      rolled_back=True, state=state_name(job.domain))
        if job.domain.isActive():
            result["live_cpu"] = read_cpu(job.domain.XMLDesc(0))

    def run(self) -> None:
        jobs = self.read_all()
        try:
            warnings = validate_jobs(self.checks, jobs, self.version)
        except CPUError as exc:
            refused: Dict[str, List[str]] = getattr(exc, "refused", {})
            self.results = [self.not_written(job, "; ".join(refused[job.name]) if job.name in refused else None, False)
                            for job in jobs]
            raise
        for warning in warnings:
            self.module.warn(warning)
        if not self.module.check_mode and any(job.plan.changed for job in jobs):
            self.open_watch()
        try:
            written = self.write_all(jobs)
            failed_restarts = []
            for job in jobs:
                try:
                    self.report(job, written.get(job.name, job.inactive_xml))
                except RestartError as exc:
                    failed_restarts.append(str(exc))
            self.check_other_definitions()
        finally:
            if self.watch is not None:
                self.watch.close()
        if failed_restarts:
            raise RestartError(" | ".join(failed_restarts) if len(failed_restarts) == 1 else "%d of %d domains did not start "
                               "with their new CPU (each domain's result says what was restored): %s"
                               % (len(failed_restarts), len(jobs), " | ".join(failed_restarts)))

    def open_watch(self) -> None:
        """libvirt's events, to see changes someone else makes while a domain is written."""
        from ansible_collections.hostcpu.libvirt.plugins.module_utils._watch import open_watch  # pylint: disable=import-outside-toplevel
        try:
            self.watch = open_watch(self.uri)
        except CPUError as exc:
            self.module.warn("a change someone else makes to a domain while this task writes it cannot be detected: %s" % exc)

    def check_other_definitions(self) -> None:
        """Warn about domains someone else defined at about the time this task wrote them (before or after: unknown)."""
        if self.watch is None or not self.written:
            return
        self.watch.settle()
        for name, uuid, since in self.written:
            if self.watch.definitions_since(uuid, since) > 1:
                self.module.warn("%s was defined by someone else at about the time this task wrote its <cpu>; if that "
                                 "happened just before this task's write, this task's definition replaced it: check the "
                                 "domain" % name)

    def outcome(self) -> Dict[str, Any]:
        result: Dict[str, Any] = {"changed": any(item["changed"] for item in self.results), "domains": self.results}
        if self.module._diff:
            result["diff"] = self.diffs
        return result
