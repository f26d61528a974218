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
    for example "the host does not provide required features svm" with the fix, and a topology
    must multiply out to the domain's C(<vcpu>). Feature names are checked per architecture
    (libvirt's CPU map of that architecture, else only the host-model CPU's features). When one
    domain fails validation, no domain is changed, and the result has every domain, each with its
    RV(domains[].error).
  - Last, libvirt itself checks each new definition before anything is written. libvirt cannot
    parse a definition without storing it, so a throwaway copy (C(hostcpu-throwaway-<random>),
    new UUID) is defined and removed at once, also in check mode; what libvirt refuses there
    (anything it checks at define, also what no rule here knows) refuses the task.
  - A list is written all or nothing. When libvirt still refuses one define, the domains written
    before it in the same task get their previous definition back (the result says so with
    RV(domains[].rolled_back)) and the task fails naming the domain and libvirt's reason.
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
        then stores the default CPU of the domain's emulator, arch and machine (QEMU's default CPU
        type, C(mode=custom), C(fallback=forbid), C(check=none)), that is C(qemu64) for qemu-system-x86_64,
        C(qemu32) for qemu-system-i386, other models elsewhere. A domain that shows exactly that
        default is left as it is.
      - libvirt has no API that names that default, so the module asks libvirt by defining a
        throwaway copy of the domain (named C(hostcpu-throwaway-<random>) with a new UUID, no
        C(<cpu>) model) and removing it at once, once per emulator, arch, machine and virt type,
        also in check mode.
        It does so only when the plan depends on the default (O(state=absent), a domain whose CPU
        may be that default, a custom CPU without a model). When that define is refused (a read-only
        connection), QEMU's usual default for x86_64 and i686 is assumed with a warning; other
        architectures are then refused.
      - Options set onto a domain that has libvirt's default CPU replace that default, except
        O(features) alone, which keep its model (features need one).
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
    description:
      - The CPU cache the guest sees.
      - C(mode=passthrough) exists only for host-passthrough and maximum; a domain that leaves those
        modes drops it (libvirt refuses it elsewhere) unless the task sets O(cache) itself.
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
      description:
        - The guest did not start with the new CPU; its previous definition was restored and it was started again as it was (the task fails).
        - Or another domain of the list could not be defined, and this one, written before it, got its previous definition back
          (the task fails and changes nothing). A domain someone else changed after this task wrote it is left as it is
          (C(changed=true), the reason in RV(domains[].error)), so that their change is not lost.
      type: bool
      returned: when a restart failed, or a later define in the list
    error:
      description:
        - Why this domain was refused (nothing is changed then), could not be defined, or did not restart; null when it had no error.
        - When a task fails, every domain of O(name) has an entry, so that all refused domains are found in one run; the
          message names them all and gives the reasons (cut when very long).
      type: str
      returned: always
      sample: "the CPU topology sockets=1 dies=1 cores=4 threads=1 gives 4 vCPUs but the domain's <vcpu> (its maximum) is 2; ..."
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

from typing import Any, Dict

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hostcpu.libvirt.plugins.module_utils._connection import (
    LibvirtError,
    connection,
    connection_argument_spec,
    connection_lost_message,
    require_libraries,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._domain_cpu import SINGLE_CPU_OPTIONS, Runner, wanted_cpu, xml_mode_result
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError


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
            module.exit_json(**xml_mode_result(module.params, wanted, features_mode, module.warn, module._diff))
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
