#!/usr/bin/python
# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: migration_probe
short_description: Live-migrate a small probe guest between two libvirt hosts and report what really happened
version_added: 0.1.0
description:
  - The proof of a migration prediction (P(hostcpu.libvirt.migration_blockers#filter),
    P(hostcpu.libvirt.fleet_compatibility#filter)); the P(hostcpu.libvirt.fleet#role) role runs
    it with C(hostcpu_fleet_verify_migration).
  - Opens both hosts' libvirt (O(source_uri), O(dest_uri)) from where the module runs, usually the
    controller (C(delegate_to) V(localhost)). The two QEMUs send the guest's state to each other
    directly; only the control goes through the machine running the module.
  - Starts a transient, paused probe guest on the source host (no disk, no network, no memory
    balloon, O(memory_mib) of memory, destroyed when it crashes) with the CPU O(cpu), the
    machine type O(machine) and the virt type O(virt_type). It is named O(name_prefix) and a random
    token.
  - Reads the guest's live C(<cpu>) and the CPUID its first vCPU sees (QEMU's C(feature-words),
    through QMP), migrates it live to the destination (C(virDomainMigrate3), C(VIR_MIGRATE_LIVE)),
    reads both again there and, with O(back=true), migrates it back to the source and reads them
    once more.
  - Each direction's outcome is V(kept) (it migrated with the same live CPU, compared as libvirt
    stores it, and the same CPUID), V(changed) (it migrated, but the CPU the guest has differs) or
    V(refused) (libvirt refused; its message is in RV(there.error)). A refusal is a result, not a
    failure of the task.
  - When the guest did not get to the destination, the way back is measured with a new probe
    guest started on the destination (C(fresh) of RV(back)).
  - The probe guest is destroyed wherever it is at the end of the task, whatever happened. It is
    transient, so nothing of it is left on either host; the module reports C(changed=false).
  - The task fails (with libvirt's message) when the probe guest does not start on the source, for
    example because the source cannot run O(cpu) or does not offer O(machine); and when a connection
    cannot be opened.
author:
  - hostcpu.libvirt maintainers (@hostcpu)
extends_documentation_fragment:
  - hostcpu.libvirt.attributes
options:
  source_uri:
    description:
      - The libvirt URI of the source host, as the machine running the module reaches it (for example
        V(qemu+ssh://root@hv1/system); with SSH keys, as C(virsh -c) would use it).
    type: str
    required: true
  dest_uri:
    description: The libvirt URI of the destination host, as the machine running the module reaches it.
    type: str
    required: true
  cpu:
    description:
      - The probe guest's CPU, a CPU dict (for example the fleet CPU, C(hostcpu_fleet_cpu)) or C(<cpu>) XML.
      - Empty means no C(<cpu>) (QEMU's default CPU of the machine type).
    type: raw
  virt_type:
    description: The probe guest's virt type (domain type). Both hosts must offer it.
    type: str
    choices: [kvm, qemu]
    default: kvm
  machine:
    description:
      - The probe guest's machine type, one that both hosts' QEMU offer (for example the C(guest_machine)
        of P(hostcpu.libvirt.fleet_machine#filter)).
    type: str
    required: true
  emulator:
    description: The QEMU binary on the source host (the destination uses its own for the same machine type).
    type: str
    default: /usr/bin/qemu-system-x86_64
  arch:
    description: The probe guest's architecture.
    type: str
    default: x86_64
  memory_mib:
    description: The probe guest's memory in MiB (at most 65536). The guest is paused and has no OS, so little is needed.
    type: int
    default: 32
  vcpus:
    description: The probe guest's vCPUs (at most 64).
    type: int
    default: 1
  dest_address:
    description:
      - The address (host name or IP) the destination's QEMU listens on for the incoming migration
        stream, and the source's QEMU connects to (libvirt's C(migrate_uri) V(tcp://<dest_address>:<port>)
        and C(listen_address)).
      - Without it, libvirt chooses (the destination's host name and a port of its C(migration_port_min)
        to C(migration_port_max) range).
    type: str
  source_address:
    description: The same for the way back (O(back=true)), where the source's QEMU receives the guest.
    type: str
  port:
    description:
      - The TCP port the destination's QEMU listens on for the stream, with O(dest_address).
      - Also the port of the way back unless O(source_port) is set.
      - Firewalls between the hosts must let the QEMUs reach each other on it.
    type: int
    default: 49152
  source_port:
    description: The TCP port the source's QEMU listens on for the way back, with O(source_address). Default O(port).
    type: int
  back:
    description: Migrate the guest back to the source afterwards, so that both directions are measured.
    type: bool
    default: true
  name_prefix:
    description: The start of the probe guest's name; a random token follows.
    type: str
    default: hostcpu-probe-
  timeout:
    description:
      - Seconds one migration may take; a migration still running then is aborted (C(virDomainAbortJob))
        and reported as V(refused) with a message saying so.
      - Opening a connection has its own limit of 30 seconds.
    type: int
    default: 120
notes:
  - Needs libvirt-python and lxml where the module runs (the controller when delegated to V(localhost)),
    not on the hosts.
  - The two hosts must have different host UUIDs (libvirt refuses a migration to the same host); the
    module checks this first and fails naming both URIs.
  - The probe guest is paused for its whole life; it never runs guest code.
requirements:
  - libvirt-python (python3-libvirt) where the module runs
  - lxml (python3-lxml) where the module runs
attributes:
  check_mode:
    support: full
    details:
      - In check mode nothing is started or migrated; the result says so (RV(skipped), RV(msg)).
  diff_mode:
    support: N/A
    details:
      - Nothing persistent is changed.
  idempotent:
    support: full
    details:
      - The probe guest is transient and destroyed before the task ends; the task always reports no change.
seealso:
  - plugin: hostcpu.libvirt.migration_blockers
    plugin_type: filter
  - plugin: hostcpu.libvirt.fleet_compatibility
    plugin_type: filter
"""

EXAMPLES = r"""
- name: Does the fleet CPU live-migrate from hv1 to hv2 and back, keeping its CPU?
  hostcpu.libvirt.migration_probe:
    source_uri: qemu+ssh://root@hv1/system
    dest_uri: qemu+ssh://root@hv2/system
    cpu: "{{ hostcpu_fleet_cpu }}"
    machine: pc-i440fx-7.2
    dest_address: 10.0.0.2
    source_address: 10.0.0.1
    port: 49152
  delegate_to: localhost
  run_once: true
  register: probe

- name: Fail unless both directions kept the CPU
  ansible.builtin.assert:
    that:
      - probe.there.outcome == 'kept'
      - probe.back.outcome == 'kept'
    fail_msg: "there: {{ probe.there.outcome }} {{ probe.there.error or probe.there.changes }}; back: {{ probe.back.outcome }}"
  run_once: true

- name: A host-model guest under TCG, one way only
  hostcpu.libvirt.migration_probe:
    source_uri: qemu+ssh://root@old-hv/system
    dest_uri: qemu+ssh://root@new-hv/system
    cpu: {mode: host-model}
    virt_type: qemu
    machine: pc-i440fx-5.2
    back: false
  delegate_to: localhost
  register: host_model_probe
"""

RETURN = r"""
name:
  description: The probe guest's name (destroyed again).
  returned: unless in check mode
  type: str
  sample: hostcpu-probe-3f9a1c2b
there:
  description: The migration from the source to the destination.
  returned: unless in check mode
  type: dict
  contains:
    outcome:
      description:
        - V(kept), V(changed) or V(refused).
      type: str
      sample: kept
    migrated:
      description: Whether the guest got to the destination.
      type: bool
    error:
      description: libvirt's message when it refused the migration (or why it was aborted), else V(null).
      type: str
      sample: "operation failed: guest CPU doesn't match specification: missing features: pcommit"
    cpu_before:
      description: The guest's live CPU (CPU dict) on the host it left.
      type: dict
    cpu_after:
      description: The guest's live CPU on the host it arrived on, V(null) when it did not migrate.
      type: dict
    cpuid_kept:
      description:
        - Whether the CPUID the guest sees is the same after the migration; V(null) when it did not
          migrate or QEMU's answer could not be read (RV(there.notes) says why).
      type: bool
    changes:
      description:
        - What differs after the migration, V([]) when nothing. Live CPU keys and feature policies
          (C(feature cmp_legacy - require -> -)), and CPUID bits lost (-) and gained (+) as
          C(leaf.subleaf.register[bit]).
      type: list
      elements: str
    fresh:
      description: Whether a new probe guest was started for this direction (V(false) for RV(there)).
      type: bool
    notes:
      description: What could not be read (the CPUID through QMP), else V([]).
      type: list
      elements: str
back:
  description:
    - The migration from the destination back to the source, with the same keys as RV(there).
    - When the guest did not get to the destination, a new probe guest is started there and migrated
      to the source (its C(fresh) is V(true)); when that guest does not start, its C(outcome) is V(null)
      and its C(error) says why.
    - V(null) with O(back=false).
  returned: unless in check mode
  type: dict
seconds:
  description: How long the probe took, from the start of the probe guest to its removal.
  returned: unless in check mode
  type: float
  sample: 6.4
libvirt_versions:
  description: The libvirt versions of the source and the destination.
  returned: unless in check mode
  type: dict
  sample: {source: 9.0.0, dest: 11.3.0}
skipped:
  description: V(true) in check mode, where nothing is started.
  returned: in check mode
  type: bool
msg:
  description: What check mode did not do.
  returned: in check mode
  type: str
"""

import json
import secrets
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hostcpu.libvirt.plugins.module_utils._connection import (
    LibvirtCallError,
    LibvirtError,
    call,
    connection,
    connection_lost_message,
    libvirt,
    libvirt_message,
    require_libraries,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError
from ansible_collections.hostcpu.libvirt.plugins.module_utils._migration_probe import (
    DEFAULT_PORT,
    DEFAULT_PREFIX,
    ProbeDataError,
    Words,
    check_options,
    direction,
    feature_words,
    first_vcpu_path,
    host_uuid,
    is_retried_start_error,
    live_cpu,
    not_tried,
    probe_cpu,
    probe_domain_xml,
    probe_name,
    stream_params,
)

# How long an aborted migration may take to end before the module gives up waiting for it.
ABORT_GRACE_SECONDS = 30


def argument_spec() -> Dict[str, Any]:
    return {
        "source_uri": {"type": "str", "required": True},
        "dest_uri": {"type": "str", "required": True},
        "cpu": {"type": "raw"},
        "virt_type": {"type": "str", "choices": ["kvm", "qemu"], "default": "kvm"},
        "machine": {"type": "str", "required": True},
        "emulator": {"type": "str", "default": "/usr/bin/qemu-system-x86_64"},
        "arch": {"type": "str", "default": "x86_64"},
        "memory_mib": {"type": "int", "default": 32},
        "vcpus": {"type": "int", "default": 1},
        "dest_address": {"type": "str"},
        "source_address": {"type": "str"},
        "port": {"type": "int", "default": DEFAULT_PORT},
        "source_port": {"type": "int"},
        "back": {"type": "bool", "default": True},
        "name_prefix": {"type": "str", "default": DEFAULT_PREFIX},
        "timeout": {"type": "int", "default": 120},
    }


def _qmp(dom, command: str, arguments: Optional[Dict[str, Any]] = None) -> Any:
    import libvirt_qemu  # pylint: disable=import-outside-toplevel
    request: Dict[str, Any] = {"execute": command}
    if arguments:
        request["arguments"] = arguments
    try:
        return json.loads(libvirt_qemu.qemuMonitorCommand(dom, json.dumps(request), 0))
    except ValueError as exc:
        raise ProbeDataError("QEMU's answer to %s is not JSON: %s" % (command, exc)) from None


class Probe:
    """One probe guest between two open connections; destroy() removes it wherever it is."""

    def __init__(self, params: Dict[str, Any], source, dest) -> None:
        self.params = params
        self.source, self.dest = source, dest
        self.cpu = probe_cpu(params["cpu"])
        self.name = probe_name(params["name_prefix"], secrets.token_hex(4))

    def xml(self) -> str:
        p = self.params
        return probe_domain_xml(self.name, self.cpu, p["virt_type"], p["machine"], p["emulator"], p["arch"],
                                p["memory_mib"], p["vcpus"])

    def start(self, conn) -> Any:
        """createXML paused; a start that only lost QEMU's monitor is tried once more."""
        try:
            return conn.createXML(self.xml(), libvirt.VIR_DOMAIN_START_PAUSED)
        except libvirt.libvirtError as exc:
            if not is_retried_start_error(libvirt_message(exc)):
                raise
        return conn.createXML(self.xml(), libvirt.VIR_DOMAIN_START_PAUSED)

    def read(self, dom) -> Tuple[Dict[str, Any], Optional[Words], List[str]]:
        """The live CPU, the CPUID words (None when QMP could not tell) and why not."""
        cpu = live_cpu(call("reading the probe guest's live XML (XMLDesc)", dom.XMLDesc, 0))
        try:
            path = first_vcpu_path(_qmp(dom, "query-cpus-fast"))
            return cpu, feature_words(_qmp(dom, "qom-get", {"path": path, "property": "feature-words"})), []
        except (ProbeDataError, libvirt.libvirtError) as exc:
            return cpu, None, ["the CPUID could not be read through QMP: %s" % (libvirt_message(exc) if isinstance(
                exc, libvirt.libvirtError) else exc)]

    def migrate(self, dom, dest_conn, address: Optional[str], port: int) -> Tuple[Any, Optional[str]]:
        """migrate3 live, bounded by the timeout: (the domain on the destination, None) or (None, why not)."""
        # stream_params names them as libvirt does (VIR_MIGRATE_PARAM_URI, VIR_MIGRATE_PARAM_LISTEN_ADDRESS).
        params = stream_params(address, port)
        outcome: Dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["dom"] = dom.migrate3(dest_conn, params, libvirt.VIR_MIGRATE_LIVE)
            except libvirt.libvirtError as exc:
                outcome["error"] = libvirt_message(exc)

        worker = threading.Thread(target=run, name="migrate3", daemon=True)
        worker.start()
        worker.join(self.params["timeout"])
        if worker.is_alive():
            try:
                dom.abortJob()
            except libvirt.libvirtError:
                pass
            worker.join(ABORT_GRACE_SECONDS)
            return None, ("the migration did not finish within %d seconds and was aborted (timeout); check that the "
                          "hosts' QEMUs reach each other on the migration address and port (firewall)"
                          % self.params["timeout"])
        if "error" in outcome:
            return None, outcome["error"]
        return outcome.get("dom"), None

    def move(self, dom, to_conn, address: Optional[str], port: int, fresh: bool = False) -> Tuple[Dict[str, Any], Any]:
        """Migrate *dom* to *to_conn*: the direction's result and where the guest is now."""
        cpu_before, words_before, notes = self.read(dom)
        moved, error = self.migrate(dom, to_conn, address, port)
        if moved is None:
            return direction(False, error, cpu_before, fresh=fresh, virt_type=self.params["virt_type"], notes=notes), dom
        cpu_after, words_after, more = self.read(moved)
        return direction(True, None, cpu_before, cpu_after, words_before, words_after, self.params["virt_type"],
                         fresh=fresh, notes=notes + more), moved

    def destroy(self) -> None:
        for conn in (self.source, self.dest):
            try:
                conn.lookupByName(self.name).destroy()
            except libvirt.libvirtError:
                pass

    def run(self) -> Dict[str, Any]:
        p = self.params
        back_port = p["source_port"] or p["port"]
        try:
            dom = self.start(self.source)
        except libvirt.libvirtError as exc:
            raise LibvirtCallError("the probe guest does not start on the source (%s): %s. Nothing was migrated; give a "
                                   "CPU and a machine type the source runs (the fleet CPU and the fleet machine type), "
                                   "or fix what libvirt names" % (p["source_uri"], libvirt_message(exc))) from None
        try:
            there, dom = self.move(dom, self.dest, p["dest_address"], p["port"])
            back = None
            if p["back"] and there["migrated"]:
                back, dom = self.move(dom, self.source, p["source_address"], back_port)
            elif p["back"]:
                back = self.back_fresh(back_port)
        finally:
            self.destroy()
        return {"there": there, "back": back}

    def back_fresh(self, port: int) -> Dict[str, Any]:
        """The way back for a guest that never got to the destination: a new probe guest started there."""
        self.destroy()
        try:
            dom = self.start(self.dest)
        except libvirt.libvirtError as exc:
            return not_tried("the probe guest does not start on the destination (%s), so the way back could not be "
                             "tried: %s" % (self.params["dest_uri"], libvirt_message(exc)))
        result, _where = self.move(dom, self.source, self.params["source_address"], port, fresh=True)
        return result


def _version(conn) -> str:
    number = call("reading the libvirt version (getLibVersion)", conn.getLibVersion)
    return "%d.%d.%d" % (number // 1000000, number // 1000 % 1000, number % 1000)


def _same_host_check(params: Dict[str, Any], source, dest) -> None:
    source_uuid = host_uuid(call("reading the source's capabilities (getCapabilities)", source.getCapabilities))
    dest_uuid = host_uuid(call("reading the destination's capabilities (getCapabilities)", dest.getCapabilities))
    if source_uuid and source_uuid == dest_uuid:
        raise CPUError("source_uri '%s' and dest_uri '%s' reach hosts with the same host UUID %s: libvirt refuses to "
                       "migrate a guest to the host it runs on. Give the URI of another host (or, for hosts cloned "
                       "from one image, set host_uuid in libvirtd.conf on one of them)"
                       % (params["source_uri"], params["dest_uri"], source_uuid))


def run(params: Dict[str, Any], opener: Callable = connection) -> Dict[str, Any]:
    check_options(params)
    probe_cpu(params["cpu"])  # refuse a bad CPU before any connection is opened
    with opener(params["source_uri"]) as source, opener(params["dest_uri"]) as dest:
        _same_host_check(params, source, dest)
        probe = Probe(params, source, dest)
        started = time.monotonic()
        result = probe.run()
        result.update(changed=False, name=probe.name, seconds=round(time.monotonic() - started, 1),
                      libvirt_versions={"source": _version(source), "dest": _version(dest)})
    return result


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    require_libraries(module)
    if module.check_mode:
        try:
            check_options(module.params)
            probe_cpu(module.params["cpu"])
        except CPUError as exc:
            module.fail_json(msg=str(exc))
        module.exit_json(changed=False, skipped=True,
                         msg="check mode: no probe guest was started and nothing was migrated")
    try:
        result = run(module.params)
    except CPUError as exc:
        module.fail_json(msg=str(exc))
    except LibvirtError as exc:
        module.fail_json(msg=connection_lost_message(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
