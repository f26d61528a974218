# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The libvirt calls of cpu_facts: raw XML and version numbers, nothing interpreted here.

Round trips of one probe: getLibVersion, getVersion, getCapabilities, then per virt type one
getDomainCapabilities and two baselineHypervisorCPU (expanded, expanded + migratable); a run whose
facts get a reuse key reads the first ones once, with the key's inputs (``_facts_key``).
verify_modes adds per verified mode createXML + XMLDesc + destroy (and the same again for the
retry with a known fix). The expansion data adds getURI, then for each virt type whose data is not
reused (``_facts_cache``) its probe guests (``_probe_qemu``).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.hostcpu.libvirt.plugins.module_utils._connection import (
    LibvirtCallError,
    call,
    libvirt,
    libvirt_message,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts_cache import collect_inputs, compact_inputs, inputs_fingerprint
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts import (
    VERIFIABLE_MODES,
    VIRT_TYPES,
    Entry,
    candidate_virt_types,
    fix_candidates,
    host_model_as_custom_xml,
    mode_supported,
    parse_capabilities,
    parse_domain_capabilities,
    verified_result,
    verify_domain_xml,
    verify_guest_name,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._versions import LibvirtRules, rules_for

# Where libvirtd (qemu:///system) writes each guest's QEMU log; verify guests' logs are removed.
SYSTEM_GUEST_LOG_DIR = "/var/log/libvirt/qemu"
# verify_modes guests alive at once (each is a paused 32 MiB QEMU).
MAX_PARALLEL_GUESTS = 6


def read_versions(conn) -> Dict[str, int]:
    return {
        "libvirt_version": call("reading the libvirt version (getLibVersion)", conn.getLibVersion),
        "hypervisor_version": call("reading the hypervisor version (getVersion)", conn.getVersion),
    }


def read_capabilities(conn) -> str:
    return call("reading the host capabilities (getCapabilities)", conn.getCapabilities)


def domain_capabilities_call(virt_type: str) -> str:
    return "reading the domain capabilities of virt type '%s' (getDomainCapabilities)" % virt_type


def read_domain_capabilities(conn, arch: str, virt_type: str) -> str:
    """domcapabilities for the default emulator and machine of *arch* and *virt_type*."""
    return call(domain_capabilities_call(virt_type), conn.getDomainCapabilities, None, arch, None, virt_type, 0)


def recorded_domain_capabilities(read: Mapping[str, Any], virt_type: str) -> str:
    """read_domain_capabilities' answer as ``_facts_key.read_key_inputs`` recorded it (the same call)."""
    found = read["domcaps"][virt_type]
    if "error" in found:
        raise LibvirtCallError("%s failed: %s" % (domain_capabilities_call(virt_type), " ".join(found["error"].split())))
    return found["xml"]


def _baseline(conn, entry: Entry, cpu_xml: str, flags: int, what: str) -> str:
    return call("expanding the %s host-model CPU of '%s' (baselineHypervisorCPU, %s)" % (entry["domain_type"], entry["domain_type"], what),
                conn.baselineHypervisorCPU, entry["emulator"], entry["arch"], entry["machine"],
                entry["domain_type"], [cpu_xml], flags)


def expand_host_model(conn, entry: Entry) -> Optional[Dict[str, str]]:
    """The host-model CPU with every feature of its model, plain and MIGRATABLE; None without host-model."""
    cpu_xml = host_model_as_custom_xml(entry) if mode_supported(entry, "host-model") else None
    if cpu_xml is None:
        return None
    expand = libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES
    migratable = libvirt.VIR_CONNECT_BASELINE_CPU_MIGRATABLE
    return {
        "host_model_expanded": _baseline(conn, entry, cpu_xml, expand, "EXPAND_FEATURES"),
        "host_model_migratable": _baseline(conn, entry, cpu_xml, expand | migratable, "EXPAND_FEATURES|MIGRATABLE"),
    }


# ---------------------------------------------------------------------------------------------
# verify_modes


def guest_log_dir(conn) -> Optional[str]:
    """Where libvirtd writes the QEMU log of each guest, when it is this host's system daemon."""
    try:
        return SYSTEM_GUEST_LOG_DIR if conn.getURI() == "qemu:///system" else None
    except libvirt.libvirtError:
        return None


def _remove_guest_log(log_dir: Optional[str], name: str) -> None:
    """libvirtd keeps <name>.log of every transient guest; drop the verify guest's own log."""
    path = os.path.join(log_dir, name + ".log") if log_dir else None
    if path and os.path.isfile(path):
        try:
            os.unlink(path)
        except OSError:
            pass


def _destroy(domain, name: str) -> None:
    try:
        domain.destroy()
    except libvirt.libvirtError as exc:
        try:
            still_running = domain.isActive()
        except libvirt.libvirtError:
            still_running = False
        if still_running:
            raise LibvirtCallError("destroying the verify guest '%s' failed: %s; remove it with 'virsh destroy %s'"
                                   % (name, libvirt_message(exc), name)) from None


def start_paused_guest(conn, domain_xml: str, name: str, log_dir: Optional[str] = None) -> Tuple[Optional[str], Optional[str]]:
    """Start a transient paused guest, read its live XML, destroy it: ``(live_xml, None)`` or ``(None, error)``."""
    try:
        domain = conn.createXML(domain_xml, libvirt.VIR_DOMAIN_START_PAUSED)
    except libvirt.libvirtError as exc:
        _remove_guest_log(log_dir, name)
        return None, libvirt_message(exc)
    try:
        return call("reading the live XML of the verify guest '%s'" % name, domain.XMLDesc, 0), None
    finally:
        _destroy(domain, name)
        _remove_guest_log(log_dir, name)


def verify_mode(conn, entry: Entry, mode: str, token: str, log_dir: Optional[str] = None) -> Dict[str, Any]:
    """Start a guest with ``<cpu mode>``; when it fails and a known fix applies, retry once with it."""
    name = verify_guest_name(token, entry["domain_type"], mode)
    first = start_paused_guest(conn, verify_domain_xml(entry, mode, name), name, log_dir)
    retry = None
    features = fix_candidates(entry, first[1]) if first[0] is None else None
    if features:
        retry_name = name + "-fix"
        retry = (features,) + start_paused_guest(conn, verify_domain_xml(entry, mode, retry_name, features), retry_name, log_dir)
    return verified_result(first, retry)


def verify_entries(conn, entries: Dict[str, Entry], token: Optional[str] = None) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """verify_mode for every supported verifiable mode of every entry, the guests side by side.

    Starting and destroying a guest is mostly waiting for QEMU (destroy alone takes ~1.5 s), so
    the guests run in parallel threads on the one (thread-safe) connection; each thread removes
    its own guest.
    """
    # Imported only for verify_modes, like _probe_qemu below only for measuring.
    import secrets  # pylint: disable=import-outside-toplevel
    from concurrent.futures import ThreadPoolExecutor  # pylint: disable=import-outside-toplevel

    token = token or secrets.token_hex(4)
    jobs = [(virt_type, mode) for virt_type, entry in entries.items()
            for mode in VERIFIABLE_MODES if mode_supported(entry, mode)]
    results: Dict[str, Dict[str, Dict[str, Any]]] = {virt_type: {} for virt_type in entries}
    if not jobs:
        return results
    log_dir = guest_log_dir(conn)
    with ThreadPoolExecutor(max_workers=min(len(jobs), MAX_PARALLEL_GUESTS)) as pool:
        futures = {job: pool.submit(verify_mode, conn, entries[job[0]], job[1], token, log_dir) for job in jobs}
    for (virt_type, mode), future in futures.items():
        results[virt_type][mode] = future.result()
    return results


# ---------------------------------------------------------------------------------------------
# expansion data (what live_cpu needs: QEMU's behaviour measured by _expansion's probe guest)


def gather_expansion_data(conn, entries: Dict[str, Entry], capabilities_xml: str, domcaps: Dict[str, str],
                          rules: Optional[LibvirtRules] = None) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, str]]:
    """``expansion_data_from_libvirt`` for every entry, the virt types side by side, with the
    rules of the host's libvirt.

    Returns the data per virt type and, per virt type that failed, why.
    """
    if not entries:
        return {}, {}
    # Imported only when QEMU is measured: an unchanged host reusing its data does not load them.
    from concurrent.futures import ThreadPoolExecutor  # pylint: disable=import-outside-toplevel

    from ansible_collections.hostcpu.libvirt.plugins.module_utils._probe_qemu import (  # pylint: disable=import-outside-toplevel
        expansion_data_from_libvirt,
    )
    with ThreadPoolExecutor(max_workers=len(entries)) as pool:
        futures = {virt_type: pool.submit(expansion_data_from_libvirt, conn, entry, capabilities_xml, domcaps[virt_type],
                                          rules=rules)
                   for virt_type, entry in entries.items()}
    data: Dict[str, Dict[str, Any]] = {}
    errors: Dict[str, str] = {}
    for virt_type, future in futures.items():
        try:
            data[virt_type] = future.result()
        except (CPUError, libvirt.libvirtError) as exc:
            errors[virt_type] = libvirt_message(exc) if isinstance(exc, libvirt.libvirtError) else str(exc)
    return data, errors


# ---------------------------------------------------------------------------------------------
# the whole probe


def not_offered_reason(virt_type: str, arch: str) -> str:
    hint = ("is /dev/kvm there and usable by libvirt (group kvm)?" if virt_type == "kvm"
            else "is QEMU for %s (qemu-system-x86 or similar) installed?" % arch)
    return "libvirt's capabilities offer no '%s' domain for %s guests; %s" % (virt_type, arch, hint)


def expansion_inputs(conn, versions: Dict[str, int], host: Dict[str, Any], domcaps: Dict[str, str],
                     entries: Dict[str, Entry], uri: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
    """Per virt type ``{"inputs": fingerprint, "inputs_detail": compact inputs}`` of its expansion data
    (``_facts_cache``): what was read already (*uri*: the connection's, when known), plus a stat of the
    QEMU binary, the kernel and the CPU map."""
    if uri is None:
        uri = call("reading the connection's URI (getURI)", conn.getURI)
    emulators = {virt_type: entry["emulator"] for virt_type, entry in entries.items()}
    found = collect_inputs(uri, versions, host, {virt_type: domcaps[virt_type] for virt_type in entries}, emulators)
    return {virt_type: {"inputs": inputs_fingerprint(inputs), "inputs_detail": compact_inputs(inputs)}
            for virt_type, inputs in found.items()}


def reuse_or_gather(conn, entries: Dict[str, Entry], capabilities_xml: str, domcaps: Dict[str, str], versions: Dict[str, int],
                    host: Dict[str, Any], reuse: Optional[Callable[[str, str], Optional[Dict[str, Any]]]] = None,
                    rules: Optional[LibvirtRules] = None, uri: Optional[str] = None) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, str]]:
    """The expansion data of every entry: what *reuse* (virt type, inputs fingerprint) returns, the rest
    measured by ``gather_expansion_data``; each with ``inputs`` and ``inputs_detail``."""
    inputs = expansion_inputs(conn, versions, host, domcaps, entries, uri)
    reused = {}
    for virt_type in entries:
        found = reuse(virt_type, inputs[virt_type]["inputs"]) if reuse is not None else None
        if found is not None:
            reused[virt_type] = found
    data, errors = gather_expansion_data(conn, {virt_type: entry for virt_type, entry in entries.items() if virt_type not in reused},
                                         capabilities_xml, domcaps, rules)
    data.update(reused)
    for virt_type, item in data.items():
        item.update(inputs[virt_type])
    return {virt_type: data[virt_type] for virt_type in entries if virt_type in data}, errors


def probe(conn, virt_types: Optional[Sequence[str]] = None, verify: bool = False, expansion: bool = False,
          reuse: Optional[Callable[[str, str], Optional[Dict[str, Any]]]] = None, read: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Everything build_facts needs, read from *conn*.

    Returns ``capabilities_xml``, ``domcaps`` (virt type -> XML), both also parsed (``capabilities``,
    ``entries``: for ``_facts.facts_from_parsed``), ``versions``, ``expansions``,
    ``verified`` (None unless *verify*) and ``unavailable`` (virt type -> why it is missing; without
    *virt_types* every virt type of the QEMU driver is tried, so this says why kvm is absent).
    With *expansion*, also ``expansion_data`` (virt type -> live_cpu's data, with the fingerprint of
    its inputs) and ``expansion_errors``; *reuse* (``_facts_cache.ExpansionReuse.lookup``) is asked
    per virt type, with the fingerprint of the data's inputs, for data it need not measure.
    *read*: what ``_facts_key.read_key_inputs`` read from *conn* for the same *virt_types*; its
    versions, capabilities, domain capabilities and URI are used instead of asking libvirt again, so
    that the facts are built from exactly what their reuse key covers.
    """
    versions = read_versions(conn) if read is None else {key: read[key] for key in ("libvirt_version", "hypervisor_version")}
    capabilities_xml = read_capabilities(conn) if read is None else read["capabilities"]
    capabilities = parse_capabilities(capabilities_xml)
    arch = capabilities["host"]["arch"]
    offered = candidate_virt_types(capabilities)
    wanted: List[str] = list(virt_types) if virt_types else list(VIRT_TYPES)
    entries: Dict[str, Entry] = {}
    result: Dict[str, Any] = {"capabilities_xml": capabilities_xml, "domcaps": {}, "capabilities": capabilities, "entries": entries,
                              "versions": versions, "expansions": {}, "verified": {} if verify else None, "unavailable": {}}
    for virt_type in wanted:
        if virt_type not in offered:
            result["unavailable"][virt_type] = not_offered_reason(virt_type, arch)
            continue
        try:
            domcaps_xml = read_domain_capabilities(conn, arch, virt_type) if read is None else recorded_domain_capabilities(read, virt_type)
        except LibvirtCallError as exc:
            result["unavailable"][virt_type] = str(exc)
            continue
        entries[virt_type] = parse_domain_capabilities(domcaps_xml)
        result["domcaps"][virt_type] = domcaps_xml
        result["expansions"][virt_type] = expand_host_model(conn, entries[virt_type])
    if verify:
        result["verified"] = verify_entries(conn, entries)
    result["expansion_data"], result["expansion_errors"] = (
        reuse_or_gather(conn, entries, capabilities_xml, result["domcaps"], versions, capabilities["host"], reuse,
                        rules_for(versions["libvirt_version"]), None if read is None else read["uri"])
        if expansion else (None, {}))
    return result
