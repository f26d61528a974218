#!/usr/bin/python
# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: cpu_facts
short_description: Probe the CPU a libvirt host gives its guests
version_added: 0.1.0
description:
  - Reads the host CPU from libvirt's capabilities and, per virt type (V(kvm) when KVM is usable,
    V(qemu) (TCG) whenever QEMU is installed), the domain capabilities, that is which CPU modes are
    supported, the host-model CPU, the named models and whether each is usable.
  - Asks libvirt to expand the host-model CPU with every feature of its model (plain and
    migratable), so the CPU a C(host-model) guest will really run with can be computed without
    starting one (see the P(hostcpu.libvirt.live_cpu#filter) filter).
  - Optionally (O(verify_modes)) starts a tiny transient paused guest per supported mode and
    reports whether it really starts, libvirt's error when not, and a fix that makes it start.
  - Instead of a connection, the XML of C(virsh capabilities) and C(virsh domcapabilities) can
    be given (O(capabilities_xml), O(domain_capabilities_xml)); then libvirt-python is not needed.
  - Sets the fact C(hostcpu).
author:
  - hostcpu.libvirt maintainers (@hostcpu)
extends_documentation_fragment:
  - hostcpu.libvirt.attributes
  - hostcpu.libvirt.attributes.INFO_MODULE
  - hostcpu.libvirt.attributes.FACTS
  - hostcpu.libvirt.connection
options:
  virt_types:
    description:
      - The virt types to probe. Default is every virt type libvirt offers for the host's
        architecture.
      - A virt type the host does not offer is reported in RV(ansible_facts.hostcpu.unavailable_virt_types)
        with the reason, and with a warning when it was listed here.
    type: list
    elements: str
    choices: [kvm, qemu]
  verify_modes:
    description:
      - Start one transient guest per supported mode (C(host-passthrough), C(maximum), C(host-model))
        and virt type, paused (it never runs a guest instruction), 32 MiB, no disk, named
        C(hostcpu-verify-<random>-<virt type>-<mode>), read its live CPU and destroy it at once.
      - When a start fails and a known fix applies (today C(arch-capabilities), which nested KVM
        often refuses), the start is retried once with that feature disabled and the fix is
        reported when the retry starts.
      - Transient guests leave no definition behind; the QEMU log libvirt writes for each is removed
        for O(uri=qemu:///system). This also runs in check mode, since nothing persistent is written.
      - Each verified mode costs about 0.4 s, a failing one about 2 s more.
    type: bool
    default: false
  expansion:
    description:
      - Measure how QEMU builds guest CPUs on this host, per virt type, so that the
        P(hostcpu.libvirt.live_cpu#filter) filter can compute the exact live CPU of any guest CPU
        from the facts alone (C(ansible_facts.hostcpu.virt_types.<type>.expansion)).
      - Starts one tiny transient paused guest per virt type, named C(hostcpu-probe-<random>-<virt type>-...),
        asks its QEMU (QMP) how it expands every CPU model and what the accelerator gives, and destroys it.
        When the largest CPU fails to start because KVM refuses an MSR (nested KVM and MSR 0x10a),
        that is recorded and the guest is started again with the feature announcing the MSR disabled.
        When it starts under kvm, a second paused guest (C(hostcpu-probe-<random>-kvm-msr-10a), a model of
        CPUID level below 7 with C(arch-capabilities) and one MSR 0x10a bit) tells whether KVM refuses an MSR
        the guest's CPUID does not announce (Linux 6.12 and later); if so, QEMU's CPUID level of every model
        and the features raising it are measured too.
      - Reads libvirt's CPU map (C(/usr/share/libvirt/cpu_map)) on the managed host.
      - Costs about 3 to 5 seconds; the virt types are probed side by side. Skipped for the XML inputs.
      - Data that cannot have changed is reused instead of measured again, from O(previous) or the cache
        (O(cache), O(cache_path)), see RV(ansible_facts.hostcpu.virt_types.expansion_source). Whether it can have
        changed is told by a fingerprint of everything it depends on, read in milliseconds before any guest
        starts (C(inputs) of RV(ansible_facts.hostcpu.virt_types.expansion)).
    type: bool
    default: true
  previous:
    description:
      - The host's earlier C(ansible_facts.hostcpu) (or C(ansible_facts) holding it), for example from Ansible's fact
        cache. Per virt type, its expansion data is reused when it was measured from the same inputs as now
        (the same C(expansion.inputs) fingerprint) and is intact; otherwise it is ignored.
      - Facts of another host never match unless that host has the very same libvirt, QEMU, host CPU, microcode,
        kernel, QEMU binary and CPU map, in which case its data is the same.
      - Wins over the cache. Only the expansion data is taken from it; everything else is read from libvirt again.
      - When nothing the facts depend on changed (their RV(ansible_facts.hostcpu.reuse.key) is the current key, see
        O(cache)) and their content is intact, they are returned as they are, without reading and building the
        facts again (RV(facts_source=previous)); with O(cache) on, only when the cache holds the same facts too.
    type: dict
  cache:
    description:
      - Keep the expansion data in a file on the managed host (O(cache_path)) and reuse an entry whose inputs
        fingerprint equals the current one, so that on an unchanged host the task takes about as long as with
        O(expansion=false) instead of several seconds.
      - With V(false) the file is neither read nor written.
      - A cache file that cannot be read or is damaged is ignored with a warning and written again; one that cannot
        be written gives a warning. Neither fails the task. The file is not written in check mode.
      - It also keeps the whole facts of the last run without any warning (O(expansion=true), O(verify_modes=false))
        with their key RV(ansible_facts.hostcpu.reuse.key), a sha256 of everything they depend on (these options,
        the libvirt and QEMU versions, the connection's URI, the capabilities, the domain capabilities of each virt
        type, the QEMU binaries, the kernel, libvirt's CPU map files and the collection's code). The task first runs
        the small module P(hostcpu.libvirt.cpu_facts_cached#module), which reads only those (a few milliseconds) and
        returns the kept facts when the key is the same and they are intact (RV(facts_source=cache)); otherwise this
        module runs as described. A hit returns exactly what this module would return.
    type: bool
    default: true
  cache_path:
    description:
      - The cache file on the managed host, JSON, written atomically (a temporary file beside it, then renamed)
        with mode C(0600); its directory is created with mode C(0700) when missing.
      - Entries are kept per libvirt URI (O(uri) as given; no O(uri) is one entry of its own) and virt type; each
        run replaces those of its URI whose inputs changed. The entries of the 16 most recently written URIs are kept.
      - Must be an absolute path.
    type: path
    default: /var/cache/hostcpu-libvirt/cpu_facts.json
  _code:
    description:
      - Set by the task's action plugin (the fingerprint of the collection's code that builds the facts, for
        RV(ansible_facts.hostcpu.reuse)); do not set it. Without it the facts are not reusable.
    type: str
  capabilities_xml:
    description:
      - The output of C(virsh capabilities) (C(virConnectGetCapabilities)) to read instead of
        asking libvirt. Needs no libvirt connection.
      - Cannot be combined with O(uri) or O(verify_modes).
    type: str
  domain_capabilities_xml:
    description:
      - Per virt type, the output of C(virsh domcapabilities --virttype <type>) to read instead of
        asking libvirt. Needs no libvirt connection.
      - Each key must be the virt type named by the XML's C(<domain>) element.
      - The expansions (C(host_model_expanded), C(host_model_migratable), C(non_migratable_features))
        need libvirt and are V(null) then, as are the versions.
      - Cannot be combined with O(uri) or O(verify_modes).
    type: dict
notes:
  - Only reads from libvirt, except for the transient guests of O(verify_modes) and O(expansion).
  - Supports check mode and runs the same in it, except that the cache file is not written.
  - Has an action plugin (it computes the fingerprint of the collection's code on the controller and runs
    P(hostcpu.libvirt.cpu_facts_cached#module) first when the facts may be reusable); asynchronous tasks always run
    this module.
  - "The fingerprint of the expansion inputs covers: the libvirt and QEMU versions; the host CPU of libvirt's
    capabilities (model, vendor, signature, microcode, features, topology, physical address bits); the virt type's
    domain capabilities XML (it changes with the QEMU binary, its machine types and the CPUID KVM offers); libvirt's
    CPU map files on the managed host (name, size, mtime, inode); the data format and the version of the probe's logic.
    For a local O(uri) (no host part) also the QEMU binary (path, size, mtime, inode) and the running kernel (release
    and version); for a remote one these two are not seen, and a rebuilt QEMU or kernel of the same version that
    changes neither the domain capabilities nor the versions is not noticed: use O(cache=false) there after such an
    update."
attributes:
  check_mode:
    details:
      - Runs exactly as without check mode and returns the facts; O(verify_modes) and O(expansion)
        still start their transient paused guests, which leave nothing behind. The cache is read but not written.
"""

EXAMPLES = r"""
- name: Probe the host CPU and the CPU modes of kvm and qemu
  hostcpu.libvirt.cpu_facts:

- name: Show the host-model CPU under KVM
  ansible.builtin.debug:
    var: ansible_facts.hostcpu.virt_types.kvm.modes['host-model'].cpu

- name: Probe only KVM and check that each mode really starts a guest
  hostcpu.libvirt.cpu_facts:
    virt_types: [kvm]
    verify_modes: true

- name: Group hosts by the CPU their KVM guests see
  ansible.builtin.group_by:
    key: "cpu_{{ ansible_facts.hostcpu.virt_types.kvm.fingerprint[:12] }}"

- name: Probe, reusing the expansion data of the last run when nothing it depends on changed
  hostcpu.libvirt.cpu_facts:
    previous: "{{ ansible_facts.hostcpu | default(omit) }}"

- name: Always measure QEMU again, and keep no cache file
  hostcpu.libvirt.cpu_facts:
    cache: false

- name: Keep the cache somewhere else (a user's session daemon)
  hostcpu.libvirt.cpu_facts:
    uri: qemu:///session
    cache_path: "{{ ansible_env.HOME }}/.cache/hostcpu-libvirt/cpu_facts.json"

- name: Read XML saved earlier, without libvirt
  hostcpu.libvirt.cpu_facts:
    capabilities_xml: "{{ lookup('ansible.builtin.file', 'capabilities.xml') }}"
    domain_capabilities_xml:
      kvm: "{{ lookup('ansible.builtin.file', 'domcapabilities-kvm.xml') }}"
"""

RETURN = r"""
facts_source:
  description:
    - Where the facts come from. V(probed) read from libvirt by this module; V(cache) the whole facts kept in the
      cache file (O(cache)), V(previous) the facts of O(previous), both on an unchanged host, without running this
      module (its action plugin returns them).
  returned: always
  type: str
  choices: [probed, cache, previous]
  sample: cache
ansible_facts:
  description: Facts to add to C(ansible_facts).
  returned: always
  type: complex
  contains:
    hostcpu:
      description: The host CPU and, per virt type, what guests can get.
      returned: always
      type: complex
      contains:
        arch:
          description: Host architecture.
          type: str
          sample: x86_64
        vendor:
          description: Host CPU vendor as libvirt names it.
          type: str
          sample: AMD
        model:
          description: The libvirt model closest to the host CPU (host capabilities).
          type: str
          sample: kvm64
        signature:
          description: CPUID family, model and stepping.
          type: dict
          sample: {family: 25, model: 17, stepping: 1}
        microcode:
          description: Microcode version, as libvirt prints it.
          type: str
          sample: "16777317"
        topology:
          description: Host CPU topology.
          type: dict
          sample: {sockets: 1, dies: 1, cores: 2, threads: 1}
        maxphysaddr:
          description: Host physical address bits, when libvirt reports them.
          type: dict
          sample: {mode: emulate, bits: 48}
        tsc:
          description: TSC frequency (Hz) and whether it scales, when libvirt reports it.
          type: dict
          sample: {frequency: 2596130000, scaling: false}
        features:
          description: Host CPU features beyond the model (host capabilities).
          type: list
          elements: str
          sample: [vme, ht, pclmuldq]
        libvirt_version:
          description: libvirt version; V(null) for offline input.
          type: str
          sample: 9.0.0
        hypervisor_version:
          description: QEMU version; V(null) for offline input.
          type: str
          sample: 7.2.22
        reuse:
          description:
            - What tells whether these facts can be reused as they are (see O(cache) and O(previous)); V(null) when
              they cannot (the run had a warning, O(verify_modes=true), O(expansion=false), or the module ran without
              its action plugin). Absent for the XML inputs.
          type: dict
          contains:
            key:
              description: The sha256 of everything the facts depend on (see O(cache)).
              type: str
              sample: 35ddf54ac91b6454749bdea97d2c33e47ff3d749bc1f9590a7e8fcfedc93884a
            content:
              description:
                - The sha256 of the facts without C(reuse) and the C(expansion_source) of the virt types, so that
                  damaged or edited facts are not reused.
              type: str
              sample: 8a9a8631b0abf571d0f19d055a26cb1c492d37673a7dabad00295df8d3644dc1
        unavailable_virt_types:
          description: Virt types (asked for, or all of V(kvm) and V(qemu) by default) that could not be probed, with the reason.
          type: dict
          sample: {kvm: "libvirt's capabilities offer no 'kvm' domain for x86_64 guests (is /dev/kvm there and usable by libvirt?)"}
        verify_modes:
          description:
            - Only with O(verify_modes=true). Per virt type and verified mode V(starts), V(starts_with_fix)
              or V(fails); details are in C(virt_types.<type>.modes.<mode>.verified).
          type: dict
          sample: {kvm: {host-passthrough: starts_with_fix, maximum: starts_with_fix, host-model: starts_with_fix}}
        virt_types:
          description: Per virt type (V(kvm), V(qemu)) what libvirt's domain capabilities say.
          type: dict
          contains:
            domain_type:
              description: The virt type.
              type: str
              sample: kvm
            arch:
              description: Guest architecture.
              type: str
              sample: x86_64
            emulator:
              description: QEMU binary the capabilities are for.
              type: str
              sample: /usr/bin/qemu-system-x86_64
            machine:
              description: Machine type the capabilities are for.
              type: str
              sample: pc-i440fx-7.2
            machines:
              description:
                - The machine types this emulator offers guests of this virt type (concrete names, no
                  aliases), from libvirt's capabilities. Absent when the capabilities were not read.
                - P(hostcpu.libvirt.fleet_machine#filter) picks the newest one every host has;
                  P(hostcpu.libvirt.migration_blockers#filter) refuses a destination without the guest's.
              type: list
              elements: str
              sample: [pc-i440fx-5.2, pc-i440fx-7.2, pc-q35-7.2]
            machine_aliases:
              description: QEMU's aliases of machine types and what they stand for here.
              type: dict
              sample: {pc: pc-i440fx-7.2, q35: pc-q35-7.2}
            deprecated_machines:
              description: The machine types QEMU marks deprecated (they still start).
              type: list
              elements: str
              sample: [pc-i440fx-5.2]
            max_vcpus:
              description: Most vCPUs a guest may have.
              type: int
              sample: 255
            libvirt_version:
              description: The libvirt version again, so that one entry carries what the live-CPU computation needs.
              type: str
              sample: 9.0.0
            fingerprint:
              description:
                - sha256 over arch, the host-model CPU, the usable named models and the modes.
                  Equal fingerprints mean guests of this virt type get the same CPU choices.
              type: str
            modes:
              description:
                - C(host-passthrough) and C(maximum) have C(supported) and C(migratable) (the accepted values).
                - C(host-model) has C(supported) and C(cpu), the CPU dict of the host-model CPU (model with fallback, vendor, features with policies).
                - C(custom) has C(supported) and C(models), each with C(name), C(usable) (V(true), V(false), V(null) for unknown),
                  C(vendor), C(deprecated) and C(blockers) (the features that make it unusable; V(null) when libvirt does not
                  report them, which libvirt 9.0 does not).
                - With O(verify_modes=true), each verified mode has C(verified) with C(starts), C(error) (libvirt's message),
                  C(live_cpu) (the CPU dict of the started guest), C(fix) (C(features) that made it start and the C(live_cpu)
                  it started with) and C(fix_error) (why the retry with the fix failed).
              type: dict
            host_model_expanded:
              description: The host-model CPU with every feature of its model (baselineHypervisorCPU with EXPAND_FEATURES).
              type: dict
            host_model_migratable:
              description: The same, with only migratable features (EXPAND_FEATURES and MIGRATABLE). This is what a host-model guest runs with.
              type: dict
            non_migratable_features:
              description: Features of the host-model CPU that the migratable expansion drops.
              type: list
              elements: str
              sample: [invtsc]
            expansion:
              description:
                - Only with O(expansion=true) (the default) and a libvirt connection; V(null) when it could not be measured
                  (the reason is a warning).
                - The data P(hostcpu.libvirt.live_cpu#filter) computes with, compact (feature sets are hex bit masks over
                  C(features)), about 15 kB per virt type; treat it as opaque.
                - C(features) (libvirt's CPU map feature names in map order), C(machine) (the machine type QEMU was asked with),
                  C(models) (libvirt's definition of every model),
                  C(msr) (MSR features, index and bit), C(host) (libvirt's full host CPU that C(check=partial) compares with),
                  C(host_model) (the migratable host-model CPU libvirt copies into host-model guests), C(qemu) (QEMU's
                  definition of every model for this accelerator, what the accelerator can give, features QEMU does not know,
                  feature dependencies, MSR writes KVM refused, and where KVM refuses MSRs the guest's CPUID does not
                  announce, those and QEMU's CPUID levels), C(format) and C(fingerprint).
                - C(inputs) is the sha256 of everything the data depends on (see the notes); equal C(inputs) mean the
                  data would be measured the same, which is how O(previous) and O(cache) decide to reuse it.
                  C(inputs_detail) holds those inputs compactly (the bulky ones as their sha256), so that two facts
                  can be compared to see which input changed.
              type: dict
            expansion_source:
              description:
                - Only with O(expansion=true) and a libvirt connection. Where the expansion data comes from
                  V(probed) (measured by this run's probe guests), V(previous) (from O(previous)) or V(cache)
                  (from O(cache_path)); V(null) when it could not be measured.
              type: str
              choices: [probed, previous, cache]
              sample: cache
"""

from typing import List, Optional, Tuple

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hostcpu.libvirt.plugins.module_utils._connection import (
    LibvirtError,
    connection,
    connection_argument_spec,
    connection_lost_message,
    require_libraries,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts import VIRT_TYPES, build_facts, check_virt_types, facts_from_parsed
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts_cache import ExpansionReuse
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts_key import (
    DEFAULT_CACHE_PATH,
    OFFLINE_OPTIONS,
    facts_key,
    invocation,
    key_options,
    read_key_inputs,
    reuse_fact,
    stored_facts,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._probe import probe
from ansible_collections.hostcpu.libvirt.plugins.module_utils._versions import rules_for, version_warning


def argument_spec() -> dict:
    spec = connection_argument_spec()
    spec.update(
        virt_types={"type": "list", "elements": "str", "choices": list(VIRT_TYPES)},
        verify_modes={"type": "bool", "default": False},
        expansion={"type": "bool", "default": True},
        capabilities_xml={"type": "str"},
        domain_capabilities_xml={"type": "dict"},
        previous={"type": "dict"},
        cache={"type": "bool", "default": True},
        cache_path={"type": "path", "default": DEFAULT_CACHE_PATH},
        _code={"type": "str"},
    )
    return spec


def offline_inputs(params: dict) -> dict:
    """domain_capabilities_xml limited to virt_types; refuses what cannot be read."""
    given = params["domain_capabilities_xml"] or {}
    check_virt_types(given, "domain_capabilities_xml")
    for virt_type, text in given.items():
        if not isinstance(text, str):
            raise CPUError("domain_capabilities_xml.%s must be the XML text of 'virsh domcapabilities', got %s"
                           % (virt_type, type(text).__name__))
    wanted = params["virt_types"]
    return {virt_type: text for virt_type, text in given.items() if not wanted or virt_type in wanted}


def check_option_combination(params: dict) -> None:
    if params["cache"] and not (params["cache_path"] or "").startswith("/"):
        raise CPUError("cache_path must be an absolute path on the managed host, got '%s'; or set cache: false"
                       % params["cache_path"])
    offline = [name for name in OFFLINE_OPTIONS if params[name] is not None]
    if not offline:
        return
    if params["uri"]:
        raise CPUError("uri cannot be combined with %s: the XML is read instead of asking libvirt; drop one of them"
                       % " and ".join(offline))
    if params["verify_modes"]:
        raise CPUError("verify_modes needs a libvirt connection to start guests, but %s was given; drop verify_modes or the XML"
                       % " and ".join(offline))


def facts_offline(params: dict) -> dict:
    facts = build_facts(params["capabilities_xml"], offline_inputs(params), None)
    facts["unavailable_virt_types"] = {}
    return facts


def facts_from_libvirt(params: dict, check_mode: bool) -> Tuple[dict, List[str]]:
    """The facts and the warnings; a warning-free run gets the whole-facts reuse key (``_facts_key``)."""
    reuse = ExpansionReuse(params["uri"], params["previous"], params["cache_path"] if params["cache"] else None)
    reusable = params["expansion"] and not params["verify_modes"] and bool(params["_code"])
    with connection(params["uri"]) as conn:
        key_inputs = read_key_inputs(conn, params["virt_types"], LibvirtError) if reusable else None
        found = probe(conn, params["virt_types"], params["verify_modes"], params["expansion"], reuse.lookup, key_inputs)
    if params["expansion"] and not check_mode:
        reuse.content()  # read by the store below anyway: its warnings decide whether the facts are reusable
    warnings = list(reuse.warnings)
    libvirt_version = found["versions"]["libvirt_version"]
    rules_for(libvirt_version)
    if version_warning(libvirt_version):
        warnings.append(version_warning(libvirt_version))
    facts = facts_from_parsed(found["capabilities"], found["entries"], found["versions"], found["expansions"], found["verified"],
                              found["expansion_data"])
    for virt_type, reason in found["expansion_errors"].items():
        warnings.append("the live-CPU expansion data of virt type %s could not be measured (live_cpu cannot predict for it): %s"
                        % (virt_type, reason))
    for virt_type, entry in facts["virt_types"].items() if params["expansion"] else ():
        entry["expansion_source"] = reuse.sources.get(virt_type) if entry.get("expansion") is not None else None
    facts["unavailable_virt_types"] = found["unavailable"]
    if params["virt_types"] or not facts["virt_types"]:
        for virt_type, reason in found["unavailable"].items():
            warnings.append("virt type %s is not available: %s" % (virt_type, reason))
    facts["reuse"] = reuse_fact(reuse_key(params, key_inputs) if not warnings else None, facts)
    if params["expansion"] and not check_mode:
        write_warnings = store(reuse, found, facts)
        if write_warnings:
            facts["reuse"] = None
            warnings += write_warnings
    return facts, warnings


def reuse_key(params: dict, key_inputs: Optional[dict]) -> Optional[str]:
    """The whole-facts key of a reusable run (the probe built the facts from *key_inputs*)."""
    if key_inputs is None:
        return None
    return facts_key(key_inputs, key_options(params["virt_types"], params["expansion"]), params["_code"])


def store(reuse: ExpansionReuse, found: dict, facts: dict) -> List[str]:
    """Write what the cache lacks (the whole facts too when reusable); the warnings of the write."""
    before = len(reuse.warnings)
    reuse.store(found["expansion_data"], stored_facts(facts["reuse"]["key"], facts) if facts["reuse"] else None)
    return reuse.warnings[before:]


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    params = module.params
    offline = any(params[name] is not None for name in OFFLINE_OPTIONS)
    require_libraries(module, need_libvirt=not offline)
    warnings: List[str] = []
    try:
        check_option_combination(params)
        facts, warnings = (facts_offline(params), []) if offline else facts_from_libvirt(params, module.check_mode)
    except CPUError as exc:
        module.fail_json(msg=str(exc))
    except LibvirtError as exc:
        module.fail_json(msg=connection_lost_message(exc))
    for warning in warnings:
        module.warn(warning)
    module.exit_json(changed=False, ansible_facts={"hostcpu": facts}, facts_source="probed", invocation=invocation(params))


if __name__ == "__main__":
    main()
