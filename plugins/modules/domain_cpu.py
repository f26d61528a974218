#!/usr/bin/python
# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: domain_cpu
short_description: Set the CPU of libvirt domains idempotently
version_added: 0.1.0
description:
  - Sets the C(<cpu>) element of one or many libvirt domains (or of domain XML text) and nothing
    else. Every other element, attribute and the C(<numa>) cells inside C(<cpu>) stay as they are.
  - Idempotent. The wish is merged onto the domain's CPU and compared with it the way libvirt
    stores CPUs (its defaults per mode, such as C(check), C(fallback) and C(migratable), filled in),
    so a second identical run reports no change, also in check mode.
  - Before anything is written, the new CPU of every listed domain is checked against the host's
    domain capabilities for that domain's virt type, emulator, architecture and machine. The mode
    is supported, a custom model is known to QEMU, feature names are known to libvirt (a typo
    gets "did you mean"), combinations libvirt refuses are refused, and the CPU passes the
    comparison with the host CPU that libvirt makes before it starts a guest (C(check=partial)),
    for example "the host does not provide required features svm" with the fix. When one
    domain fails validation, no domain is changed.
  - The persistent definition is edited (C(virsh dumpxml --inactive --security-info), only
    C(<cpu>) replaced, then defined again). Right before each write the definition is read again;
    a domain changed meanwhile by someone else is not overwritten. After the write, the module
    checks that nothing outside C(<cpu>) changed and warns when libvirt changed something else.
  - libvirt cannot make a definition conditional, so a change another client makes in the few
    milliseconds between that last read and the new definition taking effect is replaced by it. The
    module watches libvirt's domain events while it writes and fails naming such a change (a domain
    removed in that window is removed again), so that it can be redone.
  - A running (or paused) domain keeps running with its old CPU until it is restarted; the result
    says so (RV(domains[].restart_required)) and shows the CPU it runs with now. With O(restart=true)
    the module restarts it; when it does not start with the new CPU, the previous definition is
    restored, the guest is started again as it was and the task fails with libvirt's reason.
  - With O(xml), works on domain XML text instead (no libvirt connection), for templating
    pipelines, and returns the new XML.
author:
  - hostcpu.libvirt maintainers (@hostcpu)
extends_documentation_fragment:
  - hostcpu.libvirt.attributes
  - hostcpu.libvirt.connection
options:
  name:
    description:
      - The domain, or a list of domains. One task converges them all over one connection.
      - Every domain is read and validated before the first one is written.
      - A single string is split at commas, as Ansible does for list options.
      - Mutually exclusive with O(xml).
    type: list
    elements: str
    aliases: [domain, names]
  xml:
    description:
      - Domain XML text to work on instead of a defined domain. Nothing is written anywhere; the
        new XML is returned in RV(xml). No libvirt connection is needed.
      - Feature names are still checked against libvirt's CPU map on the host when it is installed;
        the domain capabilities are not consulted.
    type: str
  state:
    description:
      - V(present) sets the CPU options given.
      - V(absent) removes the CPU definition (the C(<numa>) cells inside C(<cpu>) are kept). libvirt
        then stores its default CPU for x86 (C(mode=custom), C(qemu64), C(fallback=forbid),
        C(check=none)), so a domain that shows exactly that default is left as it is.
    type: str
    choices: [present, absent]
    default: present
  cpu:
    description:
      - A whole CPU dict as the collection's filters and facts produce it (the output of
        P(hostcpu.libvirt.live_cpu#filter), P(hostcpu.libvirt.fleet_baseline#filter), or a
        host-model CPU from the facts), with the keys C(mode), C(match), C(check), C(migratable),
        C(model) (C(name), C(fallback), C(vendor_id)), C(vendor), C(topology), C(cache),
        C(maxphysaddr) and C(features).
      - Keys it does not set keep the domain's values (for example the guest's C(topology)).
        Its features replace the domain's unless O(features_mode=merge).
      - Mutually exclusive with the single CPU options.
    type: dict
  mode:
    description: The CPU mode.
    type: str
    choices: [custom, host-model, host-passthrough, maximum]
  match:
    description: How strictly a custom model is matched. Only for O(mode=custom).
    type: str
    choices: [exact, minimum, strict]
  check:
    description:
      - How libvirt checks the CPU against the host when the guest starts.
      - Default (libvirt's) C(partial) for host-model and for custom under kvm, C(none) otherwise.
    type: str
    choices: [none, partial, full]
  migratable:
    description: Only with O(mode=host-passthrough) or O(mode=maximum).
    type: bool
  model:
    description:
      - The CPU model name for O(mode=custom), as listed by C(virsh domcapabilities).
      - A model QEMU does not know is refused; the message lists the models usable here.
      - A model the domain capabilities mark C(usable='no') is refused only when libvirt's
        comparison with the host refuses it (it names the missing features); with O(check=none)
        it is accepted with a warning (QEMU disables the features the host lacks at start).
        O(fallback) does not change this in libvirt 9.0 (it only replaces models the hypervisor
        does not know at all).
    type: str
  fallback:
    description: Whether libvirt may replace a model the hypervisor does not know.
    type: str
    choices: [allow, forbid]
  vendor_id:
    description: A 12 character CPUID vendor string for the guest, like V(AuthenticAMD).
    type: str
  vendor:
    description: The vendor of a custom model, V(AMD) or V(Intel). Needs O(model).
    type: str
  topology:
    description: The guest CPU topology. O(topology.sockets), O(topology.cores) and O(topology.threads) are required.
    type: dict
    suboptions:
      sockets:
        description: Sockets.
        type: int
      dies:
        description: Dies per socket (libvirt's default 1).
        type: int
      clusters:
        description: Clusters per die (libvirt 10.1.0 and later; older libvirt ignores it).
        type: int
      cores:
        description: Cores per die.
        type: int
      threads:
        description: Threads per core.
        type: int
  cache:
    description: The CPU cache the guest sees.
    type: dict
    suboptions:
      mode:
        description: Cache mode.
        type: str
        choices: [emulate, passthrough, disable]
      level:
        description: Cache level, only with O(cache.mode=emulate).
        type: int
  maxphysaddr:
    description: The physical address bits the guest sees.
    type: dict
    suboptions:
      mode:
        description: Address bits mode.
        type: str
        choices: [emulate, passthrough]
      bits:
        description: Number of bits.
        type: int
      limit:
        description: Upper limit of bits with O(maxphysaddr.mode=passthrough).
        type: int
  features:
    description:
      - CPU features, as a list of C({name, policy}) (policy V(force), V(require), V(optional),
        V(disable) or V(forbid); default V(require)), or as a mapping of names to policies.
      - Names are libvirt's (for example C(pni), not QEMU's C(sse3)).
    type: raw
  features_mode:
    description:
      - V(merge) gives the named features these policies (in place) and keeps the domain's other
        features; V(replace) makes the features exactly the given ones (none when none are given).
      - Default V(merge) with the single options, V(replace) with O(cpu).
    type: str
    choices: [merge, replace]
  restart:
    description:
      - Restart running and paused domains whose definition now differs from the CPU they run
        with, so that they run with the new CPU.
      - A running guest is asked to shut down (ACPI or guest agent) and destroyed after
        O(shutdown_timeout) seconds; a paused, suspended or crashed guest, or one with neither
        ACPI nor a connected guest agent, is destroyed at once.
      - The guest is started again in the state it had; a paused guest is started paused.
      - When it does not start, its previous CPU definition is restored, it is started again as
        it was and the task fails with libvirt's reason and a hint (for example which feature to
        disable). Domains after it in O(name) are left untouched.
    type: bool
    default: false
  shutdown_timeout:
    description:
      - Seconds to wait for a graceful shutdown before the guest is destroyed. V(0) destroys at once.
    type: int
    default: 60
  predict:
    description:
      - Report, for each domain whose definition changes or whose guest runs an older CPU, the CPU a
        start of the new definition will give (RV(domains[].predicted_live_cpu)), or the error
        libvirt or QEMU would give (RV(domains[].predicted_start_error)), without starting it.
      - Measures QEMU once per emulator, machine and virt type with a paused transient probe guest
        (about a second), as P(hostcpu.libvirt.live_cpu#filter) does from the facts.
    type: bool
    default: false
notes:
  - Supports check mode (everything is computed and validated, nothing is written or restarted;
    RV(domains[].restarted) then says whether the domain would be restarted) and diff mode
    (the C(<cpu>) of each changed domain before and after).
  - Feature names are checked against C(/usr/share/libvirt/cpu_map) on the managed host.
seealso:
  - module: hostcpu.libvirt.cpu_facts
  - plugin: hostcpu.libvirt.live_cpu
    plugin_type: filter
attributes:
  check_mode:
    support: full
    details:
      - Computes and validates everything and writes nothing; a second identical run reports no change also in check mode.
  diff_mode:
    support: full
    details:
      - The diff shows each changed domain's C(<cpu>) element before and after.
  idempotent:
    support: full
    details:
      - The wish is compared with the domain's CPU the way libvirt normalises it, so a second identical run reports no change.
"""

EXAMPLES = r"""
- name: Run the web guests with the host-model CPU, without the feature nested KVM refuses
  hostcpu.libvirt.domain_cpu:
    name: [web1, web2, web3]
    mode: host-model
    features:
      arch-capabilities: disable

- name: Pin a guest to a named model and restart it now
  hostcpu.libvirt.domain_cpu:
    name: db1
    mode: custom
    model: EPYC-Rome
    features:
      - {name: x2apic, policy: require}
    restart: true
    shutdown_timeout: 120

- name: Give the guests the CPU every host of the fleet can run
  hostcpu.libvirt.domain_cpu:
    name: "{{ guest_names }}"
    cpu: "{{ groups['hypervisors'] | map('extract', hostvars, 'hostcpu') | hostcpu.libvirt.fleet_baseline }}"

- name: Remove the CPU definition (libvirt's default CPU applies)
  hostcpu.libvirt.domain_cpu:
    name: legacy1
    state: absent

- name: Set the CPU in templated domain XML, without libvirt
  hostcpu.libvirt.domain_cpu:
    xml: "{{ lookup('template', 'guest.xml.j2') }}"
    mode: host-passthrough
    migratable: false
  register: edited

- name: Define it
  community.libvirt.virt:
    command: define
    xml: "{{ edited.xml }}"
"""

RETURN = r"""
domains:
  description: One entry per domain of O(name), in that order.
  returned: when O(name) is given
  type: list
  elements: dict
  contains:
    name:
      description: The domain.
      type: str
      sample: web1
    virt_type:
      description:
        - The domain type of its definition (C(<domain type=...>)).
        - The O(hostcpu.libvirt.live_cpu#filter:virt_type) to pass to filters such as P(hostcpu.libvirt.live_cpu#filter).
      type: str
      sample: kvm
    changed:
      description: Whether this domain's definition changed (or it was restarted).
      type: bool
    cpu:
      description: The CPU of the persistent definition after the task, as libvirt stores it (in check mode, as it would).
      type: dict
      sample: {mode: host-model, check: partial, features: [{name: arch-capabilities, policy: disable}]}
    cpu_before:
      description: The CPU of the persistent definition before the task.
      type: dict
    live_cpu:
      description: The CPU the running (or paused) guest runs with now (after a restart, the new one). Absent for shut off domains.
      type: dict
      returned: when the domain is running or paused
    restart_required:
      description: The guest runs with a CPU other than its definition's; it gets the new CPU on its next start.
      type: bool
    restarted:
      description: Whether the task restarted the guest (in check mode, whether it would).
      type: bool
    state:
      description: The domain state after the task (C(running), C(paused), C(shutoff), ...).
      type: str
    rolled_back:
      description: The guest did not start with the new CPU; its previous definition was restored and it was started again as it was (the task fails).
      type: bool
      returned: when a restart failed
    predicted_live_cpu:
      description: The CPU a start of the new definition will give on this host (see O(predict)).
      type: dict
      returned: with O(predict=true), for changed or restart-pending domains that would start
    predicted_start_error:
      description: The error libvirt or QEMU would give when starting the new definition (see O(predict)).
      type: str
      returned: with O(predict=true), for changed or restart-pending domains that would not start
    predicted_fix:
      description: Features to disable that make it start, when known.
      type: list
      elements: dict
      returned: with RV(domains[].predicted_start_error)
xml:
  description: The domain XML with the new C(<cpu>) (unchanged text when nothing changed).
  returned: when O(xml) is given
  type: str
cpu:
  description: The CPU of RV(xml), as that XML says.
  returned: when O(xml) is given
  type: dict
"""

import os
import time
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Tuple

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hostcpu.libvirt.plugins.module_utils._connection import (
    LibvirtCallError,
    LibvirtError,
    call,
    connection,
    connection_argument_spec,
    connection_lost_message,
    libvirt,
    libvirt_message,
    require_libraries,
    resolve_uri,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import cpu_to_xml, ordered
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
    outside_cpu_differences,
    plan_cpu,
    predicted_cpu_text,
    read_cpu,
    read_domain,
    replace_cpu,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError
from ansible_collections.hostcpu.libvirt.plugins.module_utils._versions import parse_version

# _facts, _validation and _watch are imported where they are used: a run that changes nothing
# needs none of them, and the payload compiles every module_util it imports on each run.
if TYPE_CHECKING:
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._validation import Findings, KnownFeatures
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._watch import DefinitionWatch

SINGLE_CPU_OPTIONS = ("mode", "match", "check", "migratable", "model", "fallback", "vendor_id", "vendor",
                      "topology", "cache", "maxphysaddr", "features")
STATE_NAMES = {1: "running", 2: "blocked", 3: "paused", 4: "shutdown", 5: "shutoff", 6: "crashed", 7: "pmsuspended"}
DESTROY_AT_ONCE_STATES = ("paused", "pmsuspended", "crashed")
POLL_SECONDS = 0.2
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


class RestartError(CPUError):
    """A restart with the new CPU failed; the message says what was restored."""


def argument_spec() -> Dict[str, Any]:
    spec = connection_argument_spec()
    spec.update(
        name={"type": "list", "elements": "str", "aliases": ["domain", "names"]},
        xml={"type": "str"},
        state={"type": "str", "choices": ["present", "absent"], "default": "present"},
        cpu={"type": "dict"},
        mode={"type": "str", "choices": ["custom", "host-model", "host-passthrough", "maximum"]},
        match={"type": "str", "choices": ["exact", "minimum", "strict"]},
        check={"type": "str", "choices": ["none", "partial", "full"]},
        migratable={"type": "bool"},
        model={"type": "str"},
        fallback={"type": "str", "choices": ["allow", "forbid"]},
        vendor_id={"type": "str"},
        vendor={"type": "str"},
        topology={"type": "dict", "options": {key: {"type": "int"} for key in ("sockets", "dies", "clusters", "cores", "threads")}},
        cache={"type": "dict", "options": {"mode": {"type": "str", "choices": ["emulate", "passthrough", "disable"]},
                                           "level": {"type": "int"}}},
        maxphysaddr={"type": "dict", "options": {"mode": {"type": "str", "choices": ["emulate", "passthrough"]},
                                                 "bits": {"type": "int"}, "limit": {"type": "int"}}},
        features={"type": "raw"},
        features_mode={"type": "str", "choices": ["merge", "replace"]},
        restart={"type": "bool", "default": False},
        shutdown_timeout={"type": "int", "default": 60},
        predict={"type": "bool", "default": False},
    )
    return spec


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


def run_xml_mode(module: AnsibleModule, wanted: Dict[str, Any], features_mode: str) -> None:
    params = module.params
    text = params["xml"]
    info = domain_info(text)
    plan = plan_cpu(read_cpu(text), wanted, params["state"], features_mode, info.virt_type)
    if plan.changed and plan.desired is not None:
        from ansible_collections.hostcpu.libvirt.plugins.module_utils._validation import raise_for, validate_for_host  # pylint: disable=import-outside-toplevel
        findings = validate_for_host(plan.desired, info.virt_type, None, read_known_features(info.arch, {}))
        raise_for({info.name or "xml": findings})
        for warning in findings.warnings:
            module.warn(warning)
    new_text = apply_plan(text, plan)
    result: Dict[str, Any] = {"changed": plan.changed, "xml": new_text, "cpu": read_cpu(new_text)}
    if module._diff and plan.changed:
        result["diff"] = cpu_diff(info.name or "xml", cpu_element_text(text), cpu_element_text(new_text))
    module.exit_json(**result)


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


def read_job(conn, name: str, uri: str, wanted: Dict[str, Any], params: Dict[str, Any],
             features_mode: str, version: Tuple[int, int, int]) -> CPUJob:
    domain = lookup(conn, name, uri)
    active = call("reading the state of '%s'" % name, domain.isActive)
    # Only a running domain can be transient (libvirt forgets a transient one when it stops):
    # one round trip less per shut-off domain.
    if active and not call("reading '%s'" % name, domain.isPersistent):
        raise CPUError("domain '%s' is transient (it has no persistent definition); domain_cpu changes persistent "
                       "definitions: define it first (virsh dumpxml %s > %s.xml; virsh define %s.xml)" % (name, name, name, name))
    text = inactive_xml(domain)
    info, current = read_domain(text)
    plan = plan_cpu(current, wanted, params["state"], features_mode, info.virt_type, version)
    live = call("reading the live XML of '%s'" % name, domain.XMLDesc, 0) if active else None
    # An inactive domain is shut off (libvirt sets SHUTOFF when it stops one): one round trip less per domain.
    return CPUJob(name, domain, text, info, plan, state_name(domain) if active else "shutoff", live)


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
        from ansible_collections.hostcpu.libvirt.plugins.module_utils._validation import Findings, validate_for_host  # pylint: disable=import-outside-toplevel
        try:
            entry = self.entry(job.info)
        except CPUError as exc:
            return Findings([str(exc)], [])
        known = read_known_features(job.info.arch, self.features)
        findings = validate_for_host(job.plan.desired, job.info.virt_type, entry, known, version)
        if findings.errors:
            return findings
        refusal = self.compare(job.info, job.plan.desired_normalized)
        return Findings([refusal] if refusal else [], findings.warnings)


def validate_jobs(checks: HostChecks, jobs: List[CPUJob], version: Tuple[int, int, int]) -> List[str]:
    """Check every planned CPU; raise (nothing written) when any domain's fails; return the warnings."""
    findings: Dict[str, Findings] = {}
    for job in jobs:
        if job.plan.changed and job.plan.desired is not None:
            findings[job.name] = checks.validate(job, version)
    if not findings:
        return []
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._validation import raise_for  # pylint: disable=import-outside-toplevel
    raise_for(findings)
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
    new_xml = apply_plan(job.inactive_xml, job.plan)
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

    def __init__(self, module: AnsibleModule, conn, wanted: Dict[str, Any], features_mode: str) -> None:
        self.module = module
        self.conn = conn
        self.params = module.params
        self.uri = resolve_uri(self.params["uri"])
        self.version = parse_version(call("reading the libvirt version", conn.getLibVersion))
        self.wanted = wanted
        self.features_mode = features_mode
        self.checks = HostChecks(conn, self.version)
        self.results: List[Dict[str, Any]] = []
        self.diffs: List[Dict[str, str]] = []
        self.watch: Optional[DefinitionWatch] = None
        self.written: List[Tuple[str, str, int]] = []

    def read_all(self) -> List[CPUJob]:
        names = list(dict.fromkeys(self.params["name"]))
        return [read_job(self.conn, name, self.uri, self.wanted, self.params, self.features_mode, self.version)
                for name in names]

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

    def converge(self, job: CPUJob) -> None:
        check_mode = self.module.check_mode
        after_xml = job.inactive_xml
        if job.plan.changed and not check_mode:
            uuid = job.info.uuid or job.domain.UUIDString()
            if self.watch is not None:
                self.written.append((job.name, uuid, self.watch.mark(uuid)))
            after_xml, warnings = write_job(self.conn, job, self.watch)
            for warning in warnings:
                self.module.warn(warning)
        cpu_after = self.cpu_after(job, after_xml)
        pending = self.needs_restart(job, cpu_after)
        restarted = pending and self.params["restart"]
        result = {"name": job.name, "virt_type": job.info.virt_type, "changed": job.plan.changed or restarted, "cpu": ordered(cpu_after),
                  "cpu_before": job.plan.current, "restart_required": pending and not restarted,
                  "restarted": restarted, "state": job.state}
        if job.plan.changed:
            after_text = predicted_cpu_text(job.inactive_xml, job.plan) if check_mode else cpu_element_text(after_xml)
            self.diffs.append(cpu_diff(job.name, cpu_element_text(job.inactive_xml), after_text))
        self.results.append(result)
        if restarted and not check_mode:
            try:
                restart(self.conn, job, self.params["shutdown_timeout"])
            except RestartError:
                self.record_rollback(job, result)
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
        for warning in validate_jobs(self.checks, jobs, self.version):
            self.module.warn(warning)
        if not self.module.check_mode and any(job.plan.changed for job in jobs):
            self.open_watch()
        try:
            for job in jobs:
                self.converge(job)
            self.check_other_definitions()
        finally:
            if self.watch is not None:
                self.watch.close()

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


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(),
        mutually_exclusive=[("name", "xml"), ("xml", "uri")] + [("cpu", option) for option in SINGLE_CPU_OPTIONS],
        required_one_of=[("name", "xml")],
        supports_check_mode=True,
    )
    require_libraries(module, need_libvirt=module.params["xml"] is None)
    try:
        wanted, features_mode = wanted_cpu(module.params)
        if module.params["xml"] is not None:
            run_xml_mode(module, wanted, features_mode)
    except CPUError as exc:
        module.fail_json(msg=str(exc))
    runner = None
    try:
        with connection(module.params["uri"]) as conn:
            runner = Runner(module, conn, wanted, features_mode)
            runner.run()
    except CPUError as exc:
        partial = runner.outcome() if runner is not None else {"changed": False}
        module.fail_json(msg=str(exc), **partial)
    except LibvirtError as exc:
        partial = runner.outcome() if runner is not None else {"changed": False}
        module.fail_json(msg=connection_lost_message(exc), **partial)
    module.exit_json(**runner.outcome())


if __name__ == "__main__":
    main()
