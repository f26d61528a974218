#!/usr/bin/python
# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: cpu_baseline
short_description: Ask libvirt for the baseline of many CPUs and compare a CPU with this host
version_added: 0.1.0
description:
  - libvirt's own answers on one host, the oracle for P(hostcpu.libvirt.fleet_baseline#filter).
  - With O(cpus), calls C(virConnectBaselineHypervisorCPU) (C(virsh hypervisor-cpu-baseline)), the
    CPU libvirt computes that every given CPU can run, for this host's hypervisor (O(virt_type),
    O(emulator), O(arch), O(machine)).
  - With O(compare), calls C(virConnectCompareHypervisorCPU) (C(virsh hypervisor-cpu-compare)),
    whether the hypervisor on this host can give a guest that CPU, and libvirt's reason when not.
  - CPUs are given as C(<cpu>) XML (a guest CPU or the host C(<cpu>) of C(virsh capabilities)),
    as the collection's CPU dict, or as a host's P(hostcpu.libvirt.cpu_facts#module) facts, which
    stand for that host's host-model CPU (what the host gives a host-model guest).
  - Only reads from libvirt.
  - "Across libvirt versions, measured on the testbed (libvirt 7.0, 9.0, 11.3 and 12.8 side by side):
    libvirt's own baseline of the four hosts' CPUs worked only on the newest libvirt; the older ones
    failed on models and features they do not know (for example C(EPYC-Genoa), C(tsa-l1-no),
    C(cmpccxadd), C(pks)). Ask the newest libvirt of a mixed fleet, or use
    P(hostcpu.libvirt.fleet_baseline#filter), which reads each host's own CPU map and rules."
  - "libvirt's compare is no proof that a guest starts: it said C(identical)/C(superset) on every
    one of those hosts for a CPU that then started on none of them. Start a guest (paused is enough),
    or use P(hostcpu.libvirt.live_cpu_prediction#filter), which predicts the start itself."
author:
  - hostcpu.libvirt maintainers (@hostcpu)
extends_documentation_fragment:
  - hostcpu.libvirt.attributes
  - hostcpu.libvirt.attributes.INFO_MODULE
  - hostcpu.libvirt.connection
options:
  cpus:
    description:
      - The CPUs to compute the baseline of. Each item is C(<cpu>) XML text, a CPU dict, a host's
        C(ansible_facts.hostcpu) (its O(virt_type) entry is used) or one entry of its C(virt_types).
    type: list
    elements: raw
  compare:
    description:
      - A CPU to compare with the CPU the hypervisor on this host can give, in any form O(cpus) takes.
    type: raw
  virt_type:
    description:
      - The hypervisor (domain type) to ask about, and the entry taken from whole facts in O(cpus)
        and O(compare).
      - Default V(kvm) when libvirt offers it for O(arch), else V(qemu).
    type: str
    choices: [kvm, qemu]
  arch:
    description: The guest architecture. Default the host's.
    type: str
  emulator:
    description: The QEMU binary. Default libvirt's for O(arch) and O(virt_type).
    type: path
  machine:
    description: The machine type. Default libvirt's default for the emulator.
    type: str
  migratable:
    description:
      - Leave out features that block migration (C(VIR_CONNECT_BASELINE_CPU_MIGRATABLE)), such as C(invtsc).
    type: bool
    default: false
  expand_features:
    description:
      - List every feature of the baseline's model too (C(VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES)),
        not only those beyond the model.
    type: bool
    default: false
    aliases: [expand]
notes:
  - Supports check mode and runs the same in it; it never changes anything.
  - At least one of O(cpus) and O(compare) must be given.
attributes:
  check_mode:
    details:
      - This action only reads from libvirt; it runs the same in check mode.
seealso:
  - plugin: hostcpu.libvirt.fleet_baseline
    plugin_type: filter
  - plugin: hostcpu.libvirt.runs_on
    plugin_type: test
"""

EXAMPLES = r"""
- name: libvirt's baseline of the host-model CPUs of kvm and TCG on this host
  hostcpu.libvirt.cpu_baseline:
    cpus:
      - "{{ ansible_facts.hostcpu.virt_types.kvm }}"
      - "{{ ansible_facts.hostcpu.virt_types.qemu }}"
    migratable: true
  register: libvirt_baseline

- name: Does this host's KVM give a guest the fleet CPU?
  hostcpu.libvirt.cpu_baseline:
    compare: "{{ fleet_cpu }}"
    virt_type: kvm
  register: compared

- name: Fail when it does not
  ansible.builtin.assert:
    that: compared.compare.result != 'incompatible'
    fail_msg: "{{ compared.compare.reason }}"

- name: Baseline of host CPUs saved from 'virsh capabilities' of other hosts
  hostcpu.libvirt.cpu_baseline:
    cpus: "{{ saved_host_cpus }}"
    expand_features: true
"""

RETURN = r"""
baseline:
  description: libvirt's baseline CPU as the collection's CPU dict.
  returned: when O(cpus) is given
  type: dict
  sample:
    mode: custom
    match: exact
    model: {name: kvm64, fallback: forbid}
    vendor: AMD
    features: [{name: hypervisor, policy: require}, {name: pni, policy: disable}]
baseline_xml:
  description: The baseline as libvirt printed it.
  returned: when O(cpus) is given
  type: str
compare:
  description: The comparison of O(compare) with the CPU the hypervisor can give.
  returned: when O(compare) is given
  type: dict
  contains:
    result:
      description:
        - V(identical), V(superset) (the hypervisor gives more than the CPU needs; it runs) or
          V(incompatible) (it does not run here).
      type: str
      sample: superset
    reason:
      description: libvirt's reason when V(incompatible), for example the features the host lacks.
      type: str
      sample: "the CPU is incompatible with host CPU: Host CPU does not provide required features: svm"
virt_type:
  description: The hypervisor that was asked.
  returned: always
  type: str
  sample: kvm
arch:
  description: The guest architecture asked about.
  returned: always
  type: str
  sample: x86_64
"""

from typing import Any, Dict, List, Optional

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hostcpu.libvirt.plugins.module_utils._baseline import libvirt_cpu_xml
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
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import cpu_from_xml, ordered
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts import VIRT_TYPES, candidate_virt_types, parse_capabilities

COMPARE_RESULTS = {0: "incompatible", 1: "identical", 2: "superset"}


def argument_spec() -> Dict[str, Any]:
    spec = connection_argument_spec()
    spec.update(
        cpus={"type": "list", "elements": "raw"},
        compare={"type": "raw"},
        virt_type={"type": "str", "choices": list(VIRT_TYPES)},
        arch={"type": "str"},
        emulator={"type": "path"},
        machine={"type": "str"},
        migratable={"type": "bool", "default": False},
        expand_features={"type": "bool", "default": False, "aliases": ["expand"]},
    )
    return spec


def target(conn, params: Dict[str, Any]) -> Dict[str, Any]:
    """The hypervisor to ask: arch and virt type (defaults from the capabilities), emulator, machine."""
    arch, virt_type = params["arch"], params["virt_type"]
    if arch is None or virt_type is None:
        caps = parse_capabilities(call("reading the host capabilities (getCapabilities)", conn.getCapabilities))
        arch = arch or caps["host"]["arch"]
        if virt_type is None:
            offered = candidate_virt_types(caps, arch)
            if not offered:
                raise CPUError("libvirt offers no kvm or qemu domains for %s guests on this host; is QEMU installed?" % arch)
            virt_type = offered[0]
    return {"arch": arch, "virt_type": virt_type, "emulator": params["emulator"], "machine": params["machine"]}


def cpu_texts(params: Dict[str, Any], virt_type: str) -> List[str]:
    cpus = params["cpus"] or []
    if params["cpus"] is not None and not cpus:
        raise CPUError("cpus is empty: give at least one CPU (XML, a CPU dict or a host's hostcpu facts)")
    return [libvirt_cpu_xml(item, virt_type, "cpus[%d]" % index) for index, item in enumerate(cpus)]


def baseline(conn, where: Dict[str, Any], texts: List[str], params: Dict[str, Any]) -> Dict[str, Any]:
    flags = 0
    if params["migratable"]:
        flags |= libvirt.VIR_CONNECT_BASELINE_CPU_MIGRATABLE
    if params["expand_features"]:
        flags |= libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES
    xml = call("computing the baseline of %d CPUs for %s (baselineHypervisorCPU)" % (len(texts), where["virt_type"]),
               conn.baselineHypervisorCPU, where["emulator"], where["arch"], where["machine"], where["virt_type"], texts, flags)
    return {"baseline": ordered(cpu_from_xml(xml)), "baseline_xml": xml}


def compare(conn, where: Dict[str, Any], text: str) -> Dict[str, Optional[str]]:
    """compareHypervisorCPU with FAIL_INCOMPATIBLE, so that libvirt says why a CPU is incompatible."""
    flags = libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE
    try:
        result = conn.compareHypervisorCPU(where["emulator"], where["arch"], where["machine"], where["virt_type"], text, flags)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_CPU_INCOMPATIBLE:
            return {"result": "incompatible", "reason": libvirt_message(exc)}
        raise LibvirtCallError("comparing the CPU with the %s hypervisor CPU (compareHypervisorCPU) failed: %s"
                               % (where["virt_type"], libvirt_message(exc))) from None
    if result not in COMPARE_RESULTS:
        raise LibvirtCallError("compareHypervisorCPU answered %r, which this module does not know" % (result,))
    return {"result": COMPARE_RESULTS[result], "reason": None}


def run(params: Dict[str, Any]) -> Dict[str, Any]:
    if params["cpus"] is None and params["compare"] is None:
        raise CPUError("give cpus (for libvirt's baseline), compare (to compare a CPU with this host) or both")
    with connection(params["uri"]) as conn:
        where = target(conn, params)
        texts = cpu_texts(params, where["virt_type"])
        compare_text = None if params["compare"] is None else libvirt_cpu_xml(params["compare"], where["virt_type"], "compare")
        result: Dict[str, Any] = {"changed": False, "virt_type": where["virt_type"], "arch": where["arch"]}
        if texts:
            result.update(baseline(conn, where, texts, params))
        if compare_text is not None:
            result["compare"] = compare(conn, where, compare_text)
    return result


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    require_libraries(module)
    try:
        result = run(module.params)
    except CPUError as exc:
        module.fail_json(msg=str(exc))
    except LibvirtError as exc:
        module.fail_json(msg=connection_lost_message(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
