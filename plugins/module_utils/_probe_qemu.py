# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Measuring QEMU through paused probe guests: the I/O half of the expansion data.

``expansion_data_from_libvirt`` starts a transient paused guest per virt type, asks its QEMU over
QMP how it builds every model and what the accelerator gives (``probe_qemu``), learns which MSR
writes KVM refuses, destroys it, and hands the measurements to ``_expansion_data``. The only part
of facts -> prediction that talks to libvirt.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_map import (
    CPU_MAP_DIR,
    cpu_map_from_xml,
    read_cpu_map_files,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import ExpansionDataError
from ansible_collections.hostcpu.libvirt.plugins.module_utils._expansion_data import (
    DEPENDENCY_GROUPS,
    DEPENDENCY_PAIRS,
    LIBVIRT_FEATURE_NAMES,
    MSR_PARENTS,
    NO_AUTOENABLE,
    PASSTHROUGH_MODES,
    QEMU_FEATURE_NAMES,
    LATENT_MSR_PARENT,
    expansion_data_from_xml,
    latent_features,
    msr_features,
    msr_index_of,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._versions import LibvirtRules, parse_version


MSR_INDEX_OF_LATENT = msr_index_of(LATENT_MSR_PARENT)
# QEMU's message when KVM refuses an MSR value; the fix names the feature announcing the MSR.
MSR_FAILURE = re.compile(r"failed to set MSR (0x[0-9a-fA-F]+) to (0x[0-9a-fA-F]+)")
PROBE_NAME_PREFIX = "hostcpu-probe-"
PROBE_MEMORY_MIB = 32
SYSTEM_GUEST_LOG_DIR = "/var/log/libvirt/qemu"


def _probe_domain_xml(entry: Mapping[str, Any], name: str, cpu_xml: str) -> str:
    def esc(value: Any) -> str:
        return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;")
    return ("<domain type='%s'><name>%s</name><memory unit='MiB'>%d</memory><vcpu>1</vcpu>"
            "<os><type arch='%s' machine='%s'>hvm</type></os>%s<on_crash>destroy</on_crash>"
            "<devices><emulator>%s</emulator><memballoon model='none'/></devices></domain>"
            % (esc(entry["domain_type"]), esc(name), PROBE_MEMORY_MIB, esc(entry["arch"]), esc(entry["machine"]),
               cpu_xml, esc(entry["emulator"])))


def _remove_guest_log(conn, name: str) -> None:
    try:
        if conn.getURI() != "qemu:///system":
            return
        path = os.path.join(SYSTEM_GUEST_LOG_DIR, name + ".log")
        if os.path.isfile(path):
            os.unlink(path)
    except Exception:  # pylint: disable=broad-except
        pass


def _libvirt_message(exc: Exception) -> str:
    getter = getattr(exc, "get_error_message", None)
    return " ".join(((getter() if getter else None) or str(exc)).split())


def largest_cpu_mode(entry: Mapping[str, Any]) -> Optional[str]:
    """The mode of the largest CPU the virt type offers: maximum, else (libvirt 7.0, which has no
    maximum, under KVM) host-passthrough, which is QEMU's 'host' = 'max' under an accelerator."""
    modes = entry.get("modes") or {}
    for mode in PASSTHROUGH_MODES[::-1]:
        if (modes.get(mode) or {}).get("supported"):
            return mode
    return None


def _probe_cpu_xml(label: str, disabled: Sequence[str] = (), largest_mode: str = "maximum",
                   forced: Sequence[str] = NO_AUTOENABLE) -> str:
    features = "".join("<feature policy='force' name='%s'/>" % name for name in forced if name not in disabled)
    features += "".join("<feature policy='disable' name='%s'/>" % name for name in disabled)
    if label == "max":
        return "<cpu mode='%s' migratable='off'>%s</cpu>" % (largest_mode, features)
    if label == "detect":
        return "<cpu mode='custom' match='exact' check='none'><model fallback='forbid'>qemu64</model>%s</cpu>" % features
    return ""


def _create_probe_guest(conn, entry: Mapping[str, Any], token: str, label: str, disabled: Sequence[str] = (),
                        cpu_xml: Optional[str] = None, forced: Sequence[str] = NO_AUTOENABLE):
    """``(domain, name, None)`` or ``(None, name, libvirt's error)``; *cpu_xml* replaces the label's CPU."""
    import libvirt  # pylint: disable=import-outside-toplevel
    name = "%s%s-%s-%s" % (PROBE_NAME_PREFIX, token, entry["domain_type"], label)
    if cpu_xml is None:
        cpu_xml = _probe_cpu_xml(label, disabled, largest_cpu_mode(entry) or "maximum", forced)
    try:
        domain = conn.createXML(_probe_domain_xml(entry, name, cpu_xml), libvirt.VIR_DOMAIN_START_PAUSED)
        return domain, name, None
    except libvirt.libvirtError as exc:
        _remove_guest_log(conn, name)
        return None, name, _libvirt_message(exc)


def _destroy_probe_guest(conn, domain, name: str) -> None:
    try:
        domain.destroy()
    finally:
        _remove_guest_log(conn, name)


class ProbeGuest(NamedTuple):
    domain: Any
    name: str
    msr_failures: List[Dict[str, Any]]
    unavailable: List[str]
    max_overrides: Dict[str, bool]
    largest: bool = False          # the largest CPU (maximum) started


def _probe_from(conn, domain, name: str, failures: List[Dict[str, Any]], overrides: Dict[str, bool]) -> ProbeGuest:
    try:
        return ProbeGuest(domain, name, failures, _unavailable_features(domain), overrides, largest=True)
    except Exception:
        _destroy_probe_guest(conn, domain, name)
        raise


def _msr_failure(error: Optional[str]) -> Optional[Dict[str, Any]]:
    found = MSR_FAILURE.search(error or "")
    return {"index": int(found.group(1), 16), "value": found.group(2).lower()} if found else None


def _start_probe_guest(conn, entry: Mapping[str, Any], token: str, forced: Sequence[str] = NO_AUTOENABLE) -> ProbeGuest:
    """A paused transient guest to ask QEMU through, and what starting it taught.

    The first try is the largest CPU (maximum, migratable off) with the *forced* features
    (``latent_features``) on: its unavailable-features tell which of those the accelerator lacks. When QEMU dies
    writing an MSR, that is recorded as an MSR failure and the start is retried with the feature
    announcing the MSR disabled (the -cpu option becomes a global property of 'max', which the
    expansions override). A start that fails otherwise is tried once more (QEMU can vanish at start
    on a loaded host), then the data cannot be measured. Without a largest CPU (TCG of libvirt 7.0),
    a qemu64 guest answers the NO_AUTOENABLE question and a guest without -cpu option (nothing
    colours the expansions) serves QMP.
    """
    failures: List[Dict[str, Any]] = []
    errors: List[str] = []
    disabled: List[str] = []
    if largest_cpu_mode(entry):
        retried = False
        for _attempt in range(4):
            domain, name, error = _create_probe_guest(conn, entry, token, "max", disabled, forced=forced)
            if domain is not None:
                return _probe_from(conn, domain, name, failures, {parent: True for parent in disabled})
            errors.append(error or "")
            failure = _msr_failure(error)
            if failure is None and not retried:
                retried = True  # QEMU may vanish at start on a loaded host; once more before giving up
                continue
            parent = MSR_PARENTS.get(failure["index"]) if failure else None
            if failure is None or parent is None or parent in disabled:
                raise ExpansionDataError("the largest CPU (%s) of virt type '%s' does not start, so what QEMU can give "
                                         "cannot be measured: %s" % (largest_cpu_mode(entry), entry["domain_type"],
                                                                     error or "no error from libvirt"))
            failures.append(failure)
            disabled.append(parent)
    domain, name, error = _create_probe_guest(conn, entry, token, "detect", forced=forced)
    unavailable = list(forced)
    if domain is not None:
        try:
            unavailable = _unavailable_features(domain)
        finally:
            _destroy_probe_guest(conn, domain, name)
    else:
        errors.append(error or "")
    domain, name, error = _create_probe_guest(conn, entry, token, "plain")
    if domain is None:
        raise ExpansionDataError("cannot start the paused probe guest of virt type '%s' that asks QEMU how it builds "
                                 "CPUs: %s" % (entry["domain_type"], error or "; ".join(errors)))
    return ProbeGuest(domain, name, failures, unavailable, {})


def _qmp(domain, command: str, **arguments: Any) -> Any:
    import libvirt_qemu  # pylint: disable=import-outside-toplevel
    reply = json.loads(libvirt_qemu.qemuMonitorCommand(domain, json.dumps({"execute": command, "arguments": arguments}), 0))
    if "error" in reply:
        raise ExpansionDataError("QEMU refused %s: %s" % (command, reply["error"].get("desc")))
    return reply["return"]


def _enabled(props: Mapping[str, Any], known: Iterable[str]) -> List[str]:
    known = set(known)
    return sorted({LIBVIRT_FEATURE_NAMES.get(name, name) for name, value in props.items() if value is True} & known)


def _expansion(domain, model: str, props: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    spec: Dict[str, Any] = {"name": model}
    if props:
        spec["props"] = dict(props)
    return _qmp(domain, "query-cpu-model-expansion", type="full", model=spec)["model"]["props"]


def _unavailable_features(domain) -> List[str]:
    """The features the probe guest's own vCPU asked for but did not get."""
    cpus = _qmp(domain, "query-cpus-fast")
    path = cpus[0]["qom-path"] if cpus else "/machine/unattached/device[0]"
    return [LIBVIRT_FEATURE_NAMES.get(name, name) for name in _qmp(domain, "qom-get", path=path, property="unavailable-features")]


def dependency_parents() -> List[str]:
    """Every feature QEMU lets others hang on (in libvirt names)."""
    parents = [parent for parent, _kind, _first, _last in DEPENDENCY_GROUPS]
    parents += [parent for parent, _child in DEPENDENCY_PAIRS if parent not in parents]
    return parents


def probe_qemu(domain, feature_names: Sequence[str], model_names: Iterable[str],
               unavailable: Iterable[str] = (), max_overrides: Optional[Mapping[str, bool]] = None,
               measure_dependencies: bool = False, forced: Sequence[str] = NO_AUTOENABLE) -> Dict[str, Any]:
    """QEMU's own view, through QMP of a running (paused) guest, in libvirt feature names.

    ``models`` is each model as QEMU defines it for this accelerator *before* dependent features
    are cleared: the plain expansion plus the features that appear when every dependency parent
    is forced on (e.g. npt under svm, which kvm's default svm=off hides), minus those parents.
    With *measure_dependencies*, ``measured_dependencies`` are the features 'max' loses when one
    feature is turned off (a cross-check of DEPENDENCY_GROUPS / DEPENDENCY_PAIRS for the tests).
    """
    qemu_models = {item["name"] for item in _qmp(domain, "query-cpu-definitions")}
    max_all = _expansion(domain, "max", {"migratable": False})
    known = sorted({LIBVIRT_FEATURE_NAMES.get(name, name) for name in max_all} & set(feature_names))
    # The probe guest's own -cpu may have set global properties on 'max': override them.
    quiet = {QEMU_FEATURE_NAMES.get(name, name): False for name in forced if name in known}
    quiet.update({QEMU_FEATURE_NAMES.get(name, name): value for name, value in (max_overrides or {}).items()})
    max_all = _expansion(domain, "max", dict(quiet, migratable=False))
    supported = _enabled(max_all, known)
    max_migratable = _enabled(_expansion(domain, "max", dict(quiet, migratable=True)), known)
    non_migratable = sorted(set(supported) - set(max_migratable))
    supported = sorted(set(supported) | {name for name in forced if name in known and name not in set(unavailable)})
    parents = [name for name in dependency_parents() if name in known]
    parents_on = {QEMU_FEATURE_NAMES.get(name, name): True for name in parents}
    models = {}
    levels = {"max": max_all.get("level")}
    vendors = {"max": max_all.get("vendor")}
    for name in model_names:
        if name not in qemu_models:
            continue
        plain_props = _expansion(domain, name)
        levels[name] = plain_props.get("level")
        vendors[name] = plain_props.get("vendor")
        plain = set(_enabled(plain_props, known))
        latent = set(_enabled(_expansion(domain, name, parents_on), known)) - set(parents)
        models[name] = sorted(plain | latent)
    result: Dict[str, Any] = {
        "known": known,
        "max": supported,
        "max_migratable": max_migratable,
        "non_migratable": non_migratable,
        "models": models,
        "levels": {name: level for name, level in levels.items() if isinstance(level, int)},
        "vendors": {name: vendor for name, vendor in vendors.items() if isinstance(vendor, str)},
        "measured_dependencies": {},
    }
    for parent in supported if measure_dependencies else ():
        props = dict(quiet, migratable=False)
        props[QEMU_FEATURE_NAMES.get(parent, parent)] = False
        lost = set(_enabled(max_all, known)) - set(_enabled(_expansion(domain, "max", props), known))
        lost.discard(parent)
        if lost:
            result["measured_dependencies"][parent] = [name for name in feature_names if name in lost]
    return result


class UnannouncedMSRProbe(NamedTuple):
    """A guest whose CPUID stops below the leaf announcing an MSR, writing one supported bit of it."""
    index: int
    parent: str
    leaf: int
    model: str
    features: Tuple[str, ...]


def _announcing_leaf(cpu_map: Mapping[str, Any], feature: str) -> Optional[int]:
    """The basic CPUID leaf of *feature* (arch-capabilities: 7), None for MSR or extended-leaf features."""
    bit = cpu_map["bits"].get(feature)
    return bit[1] if bit and bit[0] == "cpuid" and bit[1] < 0x80000000 else None


def unannounced_msr_probes(cpu_map: Mapping[str, Any], qemu: Mapping[str, Any]) -> List[UnannouncedMSRProbe]:
    """What to start to learn whether KVM refuses an MSR write the guest's CPUID does not announce.

    Newer kernels (6.12 and later: "KVM: x86: Reject userspace attempts to access ARCH_CAPABILITIES
    w/o support") refuse a nonzero host write of MSR 0x10a unless the guest's CPUID has
    arch-capabilities, which lives at leaf 7: a model of CPUID level below 7 (486, pentium3,
    qemu32, ...) with arch-capabilities and an MSR bit kills QEMU, older kernels accept it.
    One guest per MSR whose announcing feature and one of its bits the accelerator gives (*qemu*:
    ``probe_qemu``'s result), on the first model of the CPU map whose CPUID level is below the leaf.
    """
    supported = set(qemu["max"])
    levels = qemu.get("levels") or {}
    probes = []
    for index, parent in MSR_PARENTS.items():
        leaf = _announcing_leaf(cpu_map, parent)
        bits = [name for name in cpu_map["features"] if name in supported
                and cpu_map["bits"][name][0] == "msr" and cpu_map["bits"][name][1] == index]
        models = [name for name in cpu_map["models"] if leaf is not None and levels.get(name, leaf) < leaf]
        if leaf is not None and parent in supported and bits and models:
            probes.append(UnannouncedMSRProbe(index, parent, leaf, models[0], (parent, bits[0])))
    return probes


def _unannounced_probe_cpu_xml(probe: UnannouncedMSRProbe) -> str:
    return ("<cpu mode='custom' match='exact' check='none'><model fallback='forbid'>%s</model>%s</cpu>"
            % (probe.model, "".join("<feature policy='require' name='%s'/>" % name for name in probe.features)))


def run_unannounced_msr_probe(conn, entry: Mapping[str, Any], token: str, probe: UnannouncedMSRProbe) -> Optional[Dict[str, Any]]:
    """Start the probe's guest: the MSR failure ``{index, value, leaf, model}`` when QEMU died writing it, else None."""
    label = "msr-%x" % probe.index
    domain, name, error = _create_probe_guest(conn, entry, token, label, cpu_xml=_unannounced_probe_cpu_xml(probe))
    if domain is not None:
        _destroy_probe_guest(conn, domain, name)
        return None
    failure = _msr_failure(error)
    if failure is None or failure["index"] != probe.index:
        return None
    return dict(failure, leaf=probe.leaf, model=probe.model)


def level_words(cpu_map: Mapping[str, Any], known: Iterable[str]) -> List[List[str]]:
    """The features QEMU knows at basic CPUID leaves, grouped by CPUID word (leaf, subleaf, register), in map order."""
    known = set(known)
    words: "OrderedDict[Tuple[int, int, str], List[str]]" = OrderedDict()
    for name in cpu_map["features"]:
        bit = cpu_map["bits"][name]
        if name in known and bit[0] == "cpuid" and bit[1] < 0x80000000:
            words.setdefault(bit[1:4], []).append(name)
    return list(words.values())


def cpuid_level_with(domain, model: str, names: Iterable[str]) -> int:
    """QEMU's CPUID level of *model* with the features *names* turned on."""
    return int(_expansion(domain, model, {QEMU_FEATURE_NAMES.get(name, name): True for name in names}).get("level", 0))


def measure_level_raisers(domain, cpu_map: Mapping[str, Any], known: Iterable[str], model: str) -> Dict[int, List[str]]:
    """The features that raise QEMU's CPUID level above *model*'s, as ``{level: [names]}``: each raises it to
    at least that level.

    QEMU raises the level per CPUID word (x86_cpu_expand_features, x86_cpu_adjust_feat_level: 7.0
    EBX always, 7.0 ECX, 7.1 EAX, 0xD, 6 ... with full-cpuid-auto-level; not 7.0 EDX, where
    arch-capabilities is), a few features further (intel-pt to 0x14, sgx to 0x12). So one expansion
    per word with all its features on tells whether the word raises it, and one with its first
    feature alone to which level (the unit tests check this against every feature measured alone).
    """
    base = cpuid_level_with(domain, model, ())
    raisers: Dict[int, List[str]] = {}
    for names in level_words(cpu_map, known):
        level = cpuid_level_with(domain, model, names)
        if level > base and len(names) > 1:
            level = cpuid_level_with(domain, model, names[:1])
        if level > base:
            raisers.setdefault(level, []).extend(names)
    return raisers


class UnannouncedMSRs(NamedTuple):
    """The unannounced-MSR guests under way and the level raisers measured for them."""
    futures: List[Future]
    raisers: Dict[int, List[str]]


def _start_unannounced_msr_probes(conn, entry: Mapping[str, Any], token: str, guest: ProbeGuest,
                                  cpu_map: Mapping[str, Any], qemu: Mapping[str, Any]) -> Optional[UnannouncedMSRs]:
    """Start the unannounced-MSR guests in threads (beside the probe guest's destroy, which mostly waits).

    Only when the largest CPU started without an MSR failure under an accelerator: where it failed,
    every nonzero write fails anyway (``msr_failures``), and TCG writes no MSR to KVM. The level
    raisers are measured first, while the probe guest answers QMP alone (a QEMU starting beside it
    slows every QMP answer down).
    """
    if entry.get("domain_type") == "qemu" or not guest.largest or guest.msr_failures:
        return None
    probes = unannounced_msr_probes(cpu_map, qemu)
    if not probes:
        return None
    raisers = measure_level_raisers(guest.domain, cpu_map, qemu["known"], probes[0].model)
    pool = ThreadPoolExecutor(max_workers=len(probes))
    futures = [pool.submit(run_unannounced_msr_probe, conn, entry, token, probe) for probe in probes]
    pool.shutdown(wait=False)
    return UnannouncedMSRs(futures, raisers)


def _add_unannounced_results(qemu: Dict[str, Any], unannounced: Optional[UnannouncedMSRs]) -> None:
    """The unannounced-MSR failures into *qemu*, with the level raisers when there is one."""
    failures = [failure for failure in (future.result() for future in unannounced.futures) if failure] if unannounced else []
    if failures:
        qemu["msr_unannounced_failures"] = failures
        qemu["level_raisers"] = unannounced.raisers


def _latent_probe_cpu_xml(names: Sequence[str]) -> str:
    return ("<cpu mode='custom' match='exact' check='none'><model fallback='forbid'>qemu64</model>%s</cpu>"
            % "".join("<feature policy='require' name='%s'/>" % name for name in names))


def _probe_latent_msr(conn, entry: Mapping[str, Any], token: str, cpu_map: Mapping[str, Any],
                      qemu: Mapping[str, Any]) -> Tuple[List[str], Optional[Dict[str, Any]]]:
    """Under an accelerator whose largest CPU leaves arch-capabilities off (QEMU 11.1's KVM), whether it
    gives it and its MSR bits anyway: a guest asks for all of them. Returns what it gives and, when KVM
    refused the MSR value, that failure (QEMU wrote exactly the bits it gives)."""
    known = set(qemu["known"])
    if entry.get("domain_type") == "qemu" or LATENT_MSR_PARENT not in known or LATENT_MSR_PARENT in qemu["max"]:
        return [], None
    family = [LATENT_MSR_PARENT] + [name for name in msr_features(cpu_map, MSR_INDEX_OF_LATENT) if name in known]
    domain, name, error = _create_probe_guest(conn, entry, token, "latent", cpu_xml=_latent_probe_cpu_xml(family))
    if domain is None:
        failure = _msr_failure(error)
        if failure is None or failure["index"] != MSR_INDEX_OF_LATENT:
            return [], None
        return [LATENT_MSR_PARENT] + msr_features(cpu_map, failure["index"], int(str(failure["value"]), 16)), failure
    try:
        unavailable = set(_unavailable_features(domain))
    finally:
        _destroy_probe_guest(conn, domain, name)
    return [feature for feature in family if feature not in unavailable], None


def _add_latent(qemu: Dict[str, Any], given: Sequence[str], failure: Optional[Dict[str, Any]]) -> None:
    """Features the accelerator gives that its largest CPU leaves off: supported, but not in what
    host-passthrough and maximum turn on (``latent``)."""
    qemu["latent"] = [name for name in given if name in set(qemu["known"])]
    qemu["max"] = sorted(set(qemu["max"]) | set(qemu["latent"]))
    if failure is not None:
        qemu["msr_failures"] = list(qemu["msr_failures"]) + [failure]


def expansion_data_from_libvirt(conn, entry: Mapping[str, Any], capabilities_xml: Optional[str] = None,
                                domcaps_xml: Optional[str] = None, cpu_map_dir: str = CPU_MAP_DIR,
                                rules: Optional[LibvirtRules] = None) -> Dict[str, Any]:
    """Measure and return the ``expansion`` facts of *entry*'s virt type on the host of *conn*.

    Starts one paused transient guest ``hostcpu-probe-<random>-<virt type>-...`` (two when the
    largest CPU fails to start, which is recorded as an MSR failure), asks its QEMU through QMP
    how it expands every model, what the accelerator gives and which features depend on which,
    then destroys it. Under an accelerator whose largest CPU started, a second guest (``-msr-10a``,
    started while the first is destroyed) learns whether KVM refuses an MSR the guest's CPUID does not
    announce (``msr_unannounced_failures``); when it does, QEMU's CPUID level of each model and of
    the features that raise it are measured too. Reads libvirt's CPU map from *cpu_map_dir* the way
    the libvirt of *rules* does.
    """
    cpu_map_files = read_cpu_map_files(cpu_map_dir, rules=rules)
    cpu_map = cpu_map_from_xml(cpu_map_files, rules=rules)
    if capabilities_xml is None:
        capabilities_xml = conn.getCapabilities()
    if domcaps_xml is None:
        domcaps_xml = conn.getDomainCapabilities(entry["emulator"], entry["arch"], entry["machine"], entry["domain_type"], 0)
    token = secrets.token_hex(4)
    forced = latent_features(cpu_map, entry["domain_type"])
    guest = _start_probe_guest(conn, entry, token, forced)
    try:
        qemu = probe_qemu(guest.domain, cpu_map["features"], cpu_map["models"], guest.unavailable, guest.max_overrides,
                          forced=forced)
        unannounced = _start_unannounced_msr_probes(conn, entry, token, guest, cpu_map, qemu)
    finally:
        _destroy_probe_guest(conn, guest.domain, guest.name)
    _add_unannounced_results(qemu, unannounced)
    qemu["msr_failures"] = guest.msr_failures
    if guest.largest and not guest.msr_failures:
        _add_latent(qemu, *_probe_latent_msr(conn, entry, token, cpu_map, qemu))
    qemu["version"] = ".".join(str(part) for part in parse_version(conn.getVersion()) or ())
    return expansion_data_from_xml(cpu_map_files, capabilities_xml, domcaps_xml, qemu, rules)
