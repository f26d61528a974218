# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt's capabilities and domain capabilities XML -> the ``hostcpu`` facts dict.

Pure functions over XML text that libvirt printed; no libvirt connection here (``_probe``
makes the calls). Each field group has one small reader so that a new field is one new
function plus one line in the function that assembles the group.

Public API:

* ``parse_capabilities(xml)`` -> ``{"host": {...}, "guests": [...]}``
* ``parse_domain_capabilities(xml)`` -> one ``virt_types`` entry (without fingerprint)
* ``fingerprint(entry)`` -> sha256 hex of the guest-visible part of an entry
* ``EXPANSION_DATA_FORMAT``, ``expansion_data_fingerprint(data)``: the format and the content
  fingerprint of an entry's expansion data
* ``build_facts(capabilities_xml, domcaps_by_virt_type, versions, expansions, verified)``, or
  ``facts_from_parsed`` for XML parsed already
* helpers for callers validating a CPU against an entry: ``mode_supported``,
  ``usable_models``, ``custom_model``
* helpers for the mode verification of ``_probe``: ``verify_domain_xml``, ``fix_candidates``,
  ``verified_result``
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import (
    cpu_from_element,
    cpu_from_xml,
    cpu_to_xml,
    ordered,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError
from ansible_collections.hostcpu.libvirt.plugins.module_utils._libvirt_host import VIRT_TYPES
from ansible_collections.hostcpu.libvirt.plugins.module_utils._versions import parse_version
from ansible_collections.hostcpu.libvirt.plugins.module_utils._xml import parse_xml

Entry = Dict[str, Any]
XMLText = Union[str, bytes]

# The format of the expansion data (virt_types.<vt>.expansion, built by _expansion_data).
EXPANSION_DATA_FORMAT = 1
# domcapabilities' <cpu> modes, in the order libvirt prints them.
MODES = ("host-passthrough", "maximum", "host-model", "custom")
# Modes verify_modes starts a guest for; custom has no single CPU that stands for it.
VERIFIABLE_MODES = ("host-passthrough", "maximum", "host-model")
# <enum name=...> inside a <mode>, renamed to the key the facts use.
MODE_ENUM_KEYS = {"hostPassthroughMigratable": "migratable", "maximumMigratable": "migratable"}
# QEMU prefixes its stderr lines with e.g. '2026-11-25T20:43:41.897796Z '.
QEMU_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z\s*")
USABLE_VALUES = {"yes": True, "no": False, "unknown": None}
VERIFY_MEMORY_MIB = 32
VERIFY_NAME_PREFIX = "hostcpu-verify-"
# arch-capabilities is CPUID 7.EDX[29]; it announces MSR 0x10a (IA32_ARCH_CAPABILITIES), which
# nested KVM may refuse to set ("failed to set MSR 0x10a"). Disabling the feature is the fix.
KNOWN_FIXES = (
    {"feature": "arch-capabilities", "markers": ("arch-capabilities", "msr 0x10a")},
)


class FactsError(CPUError):
    """Capabilities input that is not what libvirt prints, or an unknown virt type."""


# ---------------------------------------------------------------------------------------------
# small readers


def _root(text: XMLText, what: str, tag: str, hint: str):
    root = parse_xml(text, what)
    if root.tag != tag:
        raise FactsError("%s has the root element <%s>, expected <%s>: %s" % (what, root.tag, tag, hint))
    return root


def _text(element, path: str) -> Optional[str]:
    if element is None:
        return None
    value = element.findtext(path)
    return value.strip() if value is not None and value.strip() else None


def _int(value: Optional[str], what: str) -> Optional[int]:
    if value is None:
        return None
    try:
        return int(value, 0)
    except ValueError:
        raise FactsError("%s='%s' is not a whole number" % (what, value)) from None


def _yes(value: Optional[str]) -> bool:
    return value == "yes"


def version_text(value: Union[str, int, None]) -> Optional[str]:
    """libvirt's integer 9000000 or '9.0' -> '9.0.0'; None stays None."""
    parsed = parse_version(value)
    return None if parsed is None else "%d.%d.%d" % parsed


def check_virt_types(names: Iterable[str], what: str = "virt_types") -> List[str]:
    """Refuse names that are not domain types of libvirt's QEMU driver."""
    names = list(names)
    unknown = [name for name in names if name not in VIRT_TYPES]
    if unknown:
        raise FactsError("%s: unknown virt type %s; valid virt types are: %s"
                         % (what, ", ".join("'%s'" % name for name in unknown), ", ".join(VIRT_TYPES)))
    return names


# ---------------------------------------------------------------------------------------------
# capabilities: the host CPU


def _signature(cpu_el) -> Optional[Dict[str, int]]:
    el = cpu_el.find("signature")
    if el is None:
        return None
    return {key: _int(el.get(key), "signature %s" % key) for key in ("family", "model", "stepping")}


def _microcode(cpu_el) -> Optional[str]:
    el = cpu_el.find("microcode")
    return None if el is None else el.get("version")


def _host_topology(cpu_el) -> Optional[Dict[str, int]]:
    el = cpu_el.find("topology")
    if el is None:
        return None
    return {key: _int(el.get(key), "topology %s" % key)
            for key in ("sockets", "dies", "clusters", "cores", "threads") if el.get(key) is not None}


def _host_features(cpu_el) -> List[str]:
    return [el.get("name") for el in cpu_el.findall("feature")]


def _tsc(cpu_el) -> Optional[Dict[str, Any]]:
    el = cpu_el.find("counter[@name='tsc']")
    if el is None:
        return None
    return {"frequency": _int(el.get("frequency"), "counter frequency"),
            "scaling": None if el.get("scaling") is None else _yes(el.get("scaling"))}


def _host_cpu(cpu_el) -> Dict[str, Any]:
    cpu = cpu_from_element(cpu_el) if cpu_el is not None else {}
    return {
        "arch": _text(cpu_el, "arch"),
        "vendor": cpu.get("vendor"),
        "model": (cpu.get("model") or {}).get("name"),
        "signature": None if cpu_el is None else _signature(cpu_el),
        "microcode": None if cpu_el is None else _microcode(cpu_el),
        "topology": None if cpu_el is None else _host_topology(cpu_el),
        "maxphysaddr": cpu.get("maxphysaddr"),
        "tsc": None if cpu_el is None else _tsc(cpu_el),
        "features": [] if cpu_el is None else _host_features(cpu_el),
    }


# ---------------------------------------------------------------------------------------------
# capabilities: guests (emulators, machines, domain types)


def _machine(el) -> Dict[str, Any]:
    return {
        "name": (el.text or "").strip(),
        "canonical": el.get("canonical"),
        "max_cpus": _int(el.get("maxCpus"), "machine maxCpus"),
        "deprecated": _yes(el.get("deprecated")),
    }


def _domain_type(el, emulator: Optional[str], machines: List[Dict[str, Any]]) -> Dict[str, Any]:
    own_machines = [_machine(m) for m in el.findall("machine")]
    return {"emulator": _text(el, "emulator") or emulator, "machines": own_machines or machines}


def _guest(guest_el) -> Dict[str, Any]:
    arch_el = guest_el.find("arch")
    emulator = _text(arch_el, "emulator")
    machines = [_machine(m) for m in arch_el.findall("machine")] if arch_el is not None else []
    domain_types = {}
    for el in arch_el.findall("domain") if arch_el is not None else []:
        domain_types[el.get("type")] = _domain_type(el, emulator, machines)
    return {
        "os_type": _text(guest_el, "os_type"),
        "arch": None if arch_el is None else arch_el.get("name"),
        "wordsize": _int(_text(arch_el, "wordsize"), "wordsize"),
        "emulator": emulator,
        "machines": machines,
        "domain_types": domain_types,
    }


def parse_capabilities(xml: XMLText) -> Dict[str, Any]:
    """``virConnectGetCapabilities`` XML -> ``{"host": host CPU facts, "guests": [...]}``."""
    root = _root(xml, "capabilities_xml", "capabilities", "pass what 'virsh capabilities' prints")
    host_el = root.find("host")
    return {
        "host": _host_cpu(None if host_el is None else host_el.find("cpu")),
        "guests": [_guest(el) for el in root.findall("guest")],
    }


def machine_types(capabilities: Dict[str, Any], entry: Mapping[str, Any]) -> Dict[str, Any]:
    """The machine types *entry*'s emulator offers its arch and virt type, as capabilities list them.

    ``machines``: the concrete names (sorted); ``machine_aliases``: alias -> concrete name (``pc``,
    ``q35``); ``deprecated_machines``: the names QEMU marks deprecated.
    """
    machines: List[Dict[str, Any]] = []
    for guest in capabilities["guests"]:
        domain_type = guest["domain_types"].get(entry.get("domain_type"))
        if guest["arch"] == entry.get("arch") and domain_type is not None and (
                entry.get("emulator") in (None, domain_type["emulator"])):
            machines = domain_type["machines"]
            break
    return {
        "machines": sorted(m["name"] for m in machines if not m["canonical"]),
        "machine_aliases": {m["name"]: m["canonical"] for m in machines if m["canonical"]},
        "deprecated_machines": sorted(m["name"] for m in machines if m["deprecated"] and not m["canonical"]),
    }


def candidate_virt_types(capabilities: Dict[str, Any], arch: Optional[str] = None) -> List[str]:
    """The virt types capabilities offer for hvm guests of *arch* (default: the host's arch)."""
    arch = arch or capabilities["host"]["arch"]
    offered = set()
    for guest in capabilities["guests"]:
        if guest["os_type"] == "hvm" and guest["arch"] == arch:
            offered.update(guest["domain_types"])
    return [name for name in VIRT_TYPES if name in offered]


# ---------------------------------------------------------------------------------------------
# domain capabilities: one virt_types entry


def _mode_enums(mode_el) -> Dict[str, List[str]]:
    return {MODE_ENUM_KEYS.get(el.get("name"), el.get("name")): [v.text for v in el.findall("value")]
            for el in mode_el.findall("enum")}


def _passthrough_like_mode(mode_el) -> Dict[str, Any]:
    """host-passthrough and maximum: supported + the migratable values libvirt accepts."""
    result = {"supported": _yes(mode_el.get("supported")), "migratable": []}
    result.update(_mode_enums(mode_el))
    return result


def _host_model_mode(mode_el) -> Dict[str, Any]:
    supported = _yes(mode_el.get("supported"))
    cpu = ordered(cpu_from_element(mode_el)) if supported and mode_el.find("model") is not None else None
    return {"supported": supported, "cpu": cpu}


def _blockers(mode_el) -> Optional[Dict[str, List[str]]]:
    """``<blockers model='X'><feature name='f'/>`` (libvirt >= 10.x); None when libvirt prints none."""
    elements = mode_el.findall("blockers")
    if not elements:
        return None
    return {el.get("model"): [f.get("name") for f in el.findall("feature")] for el in elements}


def _custom_model(el, blockers: Optional[Dict[str, List[str]]]) -> Dict[str, Any]:
    name = (el.text or "").strip()
    return {
        "name": name,
        "usable": USABLE_VALUES.get(el.get("usable")),
        "vendor": el.get("vendor"),
        "deprecated": _yes(el.get("deprecated")),
        "blockers": None if blockers is None else blockers.get(name, []),
    }


def _custom_mode(mode_el) -> Dict[str, Any]:
    blockers = _blockers(mode_el)
    return {"supported": _yes(mode_el.get("supported")),
            "models": [_custom_model(el, blockers) for el in mode_el.findall("model")]}


MODE_READERS = {
    "host-passthrough": _passthrough_like_mode,
    "maximum": _passthrough_like_mode,
    "host-model": _host_model_mode,
    "custom": _custom_mode,
}


def _absent_mode(name: str) -> Dict[str, Any]:
    """A mode this libvirt does not print (e.g. maximum before 7.1.0): not supported."""
    empty = {"host-model": {"cpu": None}, "custom": {"models": []}}.get(name, {"migratable": []})
    return {"supported": False, **empty}


def _modes(cpu_el) -> Dict[str, Dict[str, Any]]:
    found = {el.get("name"): el for el in cpu_el.findall("mode")} if cpu_el is not None else {}
    return {name: MODE_READERS[name](found[name]) if name in found else _absent_mode(name) for name in MODES}


def parse_domain_capabilities(xml: XMLText) -> Entry:
    """``virConnectGetDomainCapabilities`` XML -> one ``virt_types`` entry (no fingerprint)."""
    root = _root(xml, "domain capabilities XML", "domainCapabilities", "pass what 'virsh domcapabilities' prints")
    domain_type = _text(root, "domain")
    if domain_type is None:
        raise FactsError("domain capabilities XML has no <domain> element naming the virt type; "
                         "pass the complete output of 'virsh domcapabilities'")
    vcpu_el = root.find("vcpu")
    return {
        "domain_type": domain_type,
        "arch": _text(root, "arch"),
        "emulator": _text(root, "path"),
        "machine": _text(root, "machine"),
        "max_vcpus": None if vcpu_el is None else _int(vcpu_el.get("max"), "vcpu max"),
        "modes": _modes(root.find("cpu")),
    }


# ---------------------------------------------------------------------------------------------
# questions callers ask an entry


def mode_supported(entry: Entry, mode: str) -> bool:
    return bool(entry["modes"].get(mode, {}).get("supported"))


def usable_models(entry: Entry) -> List[str]:
    """Names of the custom models libvirt reports usable='yes', in libvirt's order."""
    return [model["name"] for model in entry["modes"]["custom"]["models"] if model["usable"] is True]


def custom_model(entry: Entry, name: str) -> Optional[Dict[str, Any]]:
    """The custom model entry called *name*, or None when libvirt does not know it."""
    for model in entry["modes"]["custom"]["models"]:
        if model["name"] == name:
            return model
    return None


def host_model_cpu(entry: Entry) -> Optional[Dict[str, Any]]:
    return entry["modes"]["host-model"]["cpu"]


def host_model_as_custom_xml(entry: Entry) -> Optional[str]:
    """The host-model CPU as ``<cpu mode='custom' match='exact'>``, the input baselineHypervisorCPU takes."""
    cpu = host_model_cpu(entry)
    if not cpu:
        return None
    return cpu_to_xml({"mode": "custom", "match": "exact", **cpu}, indent=0)


# ---------------------------------------------------------------------------------------------
# fingerprint


def _canonical_cpu(cpu: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    if not cpu:
        return None
    canonical = {key: value for key, value in cpu.items() if key != "features"}
    canonical["features"] = sorted((f["name"], f.get("policy") or "require") for f in cpu.get("features") or [])
    return canonical


def _canonical_modes(entry: Entry) -> Dict[str, Any]:
    return {name: {"supported": mode["supported"], "migratable": sorted(mode.get("migratable") or [])}
            for name, mode in entry["modes"].items()}


def fingerprint(entry: Entry) -> str:
    """sha256 over arch, the host-model CPU, the usable model names and the modes.

    Two entries with the same fingerprint give guests the same CPU choices; the emulator path,
    machine type, versions, expansions and verification results are left out.
    """
    canonical = {
        "arch": entry.get("arch"),
        "host_model": _canonical_cpu(host_model_cpu(entry)),
        "usable_models": sorted(usable_models(entry)),
        "modes": _canonical_modes(entry),
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# the expansion data (virt_types.<vt>.expansion): its format and the fingerprint of its content
#
# _expansion_data builds the data, _expansion reads it, _facts_cache reuses it. Reuse checks both
# on every run of an unchanged host, which thus needs neither _expansion_data nor the CPU map code.


def expansion_data_fingerprint(data: Mapping[str, Any]) -> str:
    """sha256 (hex, the first 32 digits) over *data* without its own ``fingerprint``."""
    text = json.dumps({key: value for key, value in data.items() if key != "fingerprint"},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


# ---------------------------------------------------------------------------------------------
# expansions (baselineHypervisorCPU of the host-model CPU)


def _enabled_feature_names(cpu: Optional[Dict[str, Any]]) -> List[str]:
    return [f["name"] for f in (cpu or {}).get("features") or [] if (f.get("policy") or "require") != "disable"]


def non_migratable_features(expanded: Optional[Dict[str, Any]], migratable: Optional[Dict[str, Any]]) -> Optional[List[str]]:
    """Features the host-model has but the MIGRATABLE expansion drops (e.g. invtsc)."""
    if expanded is None or migratable is None:
        return None
    kept = set(_enabled_feature_names(migratable))
    return [name for name in _enabled_feature_names(expanded) if name not in kept]


def _expansion_fields(expansion: Optional[Mapping[str, Optional[str]]]) -> Dict[str, Any]:
    expansion = expansion or {}
    expanded = expansion.get("host_model_expanded")
    migratable = expansion.get("host_model_migratable")
    expanded_cpu = ordered(cpu_from_xml(expanded)) if expanded else None
    migratable_cpu = ordered(cpu_from_xml(migratable)) if migratable else None
    return {
        "host_model_expanded": expanded_cpu,
        "host_model_migratable": migratable_cpu,
        "non_migratable_features": non_migratable_features(expanded_cpu, migratable_cpu),
    }


# ---------------------------------------------------------------------------------------------
# verify_modes: the transient guest and its outcome


def _xml_escape(value: Any) -> str:
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;")


def verify_domain_xml(entry: Entry, mode: str, name: str, features: Optional[List[Dict[str, str]]] = None) -> str:
    """A diskless transient guest of *entry*'s virt type, emulator and machine with ``<cpu mode>``."""
    cpu = {"mode": mode}
    if features:
        cpu["features"] = features
    return "\n".join((
        "<domain type='%s'>" % _xml_escape(entry["domain_type"]),
        "  <name>%s</name>" % _xml_escape(name),
        "  <memory unit='MiB'>%d</memory>" % VERIFY_MEMORY_MIB,
        "  <vcpu>1</vcpu>",
        "  <os>",
        "    <type arch='%s' machine='%s'>hvm</type>" % (_xml_escape(entry["arch"]), _xml_escape(entry["machine"])),
        "  </os>",
        cpu_to_xml(cpu, indent=2, level=1),
        "  <on_crash>destroy</on_crash>",
        "  <devices>",
        "    <emulator>%s</emulator>" % _xml_escape(entry["emulator"]),
        "    <memballoon model='none'/>",
        "  </devices>",
        "</domain>",
    ))


def verify_guest_name(token: str, virt_type: str, mode: str) -> str:
    return "%s%s-%s-%s" % (VERIFY_NAME_PREFIX, token, virt_type, mode)


def fix_candidates(entry: Entry, error: Optional[str]) -> Optional[List[Dict[str, str]]]:
    """Features to disable for a retry when the failure is a known one, else None.

    A known fix applies when libvirt's error names the feature (or its MSR) or when this virt
    type's host-model CPU carries the feature, i.e. the hypervisor offers it to guests.
    """
    text = (error or "").lower()
    offered = set(_enabled_feature_names(host_model_cpu(entry)))
    features = [{"name": fix["feature"], "policy": "disable"} for fix in KNOWN_FIXES
                if any(marker in text for marker in fix["markers"]) or fix["feature"] in offered]
    return features or None


def one_line(message: Optional[str]) -> Optional[str]:
    """libvirt's message on one line, without QEMU's timestamps (so facts repeat run after run)."""
    if message is None:
        return None
    return " ".join(QEMU_TIMESTAMP.sub("", message).split())


def live_cpu_from_domain_xml(xml: Optional[str]) -> Optional[Dict[str, Any]]:
    return None if xml is None else ordered(cpu_from_xml(xml))


def verified_result(first: Tuple[Optional[str], Optional[str]],
                    retry: Optional[Tuple[List[Dict[str, str]], Optional[str], Optional[str]]] = None) -> Dict[str, Any]:
    """``verified`` of one mode from ``(live_xml, error)`` of the start and the optional retry.

    *retry* is ``(features, live_xml, error)`` of the second start with those features disabled.
    ``fix`` is set only when the retry started; ``fix_error`` says why a retry failed.
    """
    live_xml, error = first
    result = {"starts": live_xml is not None, "error": one_line(error),
              "live_cpu": live_cpu_from_domain_xml(live_xml), "fix": None, "fix_error": None}
    if retry is not None:
        features, fixed_xml, fixed_error = retry
        if fixed_xml is not None:
            result["fix"] = {"features": features, "live_cpu": live_cpu_from_domain_xml(fixed_xml)}
        else:
            result["fix_error"] = one_line(fixed_error)
    return result


def verify_outcome(verified: Dict[str, Any]) -> str:
    """'starts', 'starts_with_fix' or 'fails': the one-word summary of a verified mode."""
    if verified["starts"]:
        return "starts"
    return "starts_with_fix" if verified.get("fix") else "fails"


# ---------------------------------------------------------------------------------------------
# the facts


def _empty_host() -> Dict[str, Any]:
    return _host_cpu(None)


def _checked_entry(virt_type: str, xml: XMLText) -> Entry:
    check_virt_types([virt_type], "domain_capabilities_xml")
    try:
        entry = parse_domain_capabilities(xml)
    except CPUError as exc:
        raise FactsError("domain capabilities of '%s': %s" % (virt_type, exc)) from None
    _check_domain_type(virt_type, entry)
    return entry


def _check_domain_type(virt_type: str, entry: Entry) -> None:
    if entry["domain_type"] != virt_type:
        raise FactsError("the domain capabilities given for '%s' are those of '%s' (their <domain>); "
                         "put them under the key '%s'" % (virt_type, entry["domain_type"], entry["domain_type"]))


def _in_virt_type_order(names: Iterable[str]) -> List[str]:
    names = check_virt_types(names, "domain_capabilities_xml")
    return sorted(names, key=VIRT_TYPES.index)


def _attach_verified(entry: Entry, verified: Optional[Mapping[str, Dict[str, Any]]]) -> Dict[str, str]:
    summary = {}
    for mode, result in (verified or {}).items():
        entry["modes"][mode]["verified"] = result
        summary[mode] = verify_outcome(result)
    return summary


def virt_type_entry(virt_type: str, xml: XMLText, libvirt_version: Optional[str],
                    expansion: Optional[Mapping[str, Optional[str]]] = None) -> Entry:
    """One complete ``virt_types`` entry: parsed domcapabilities, version, fingerprint, expansions."""
    return _complete_entry(_checked_entry(virt_type, xml), libvirt_version, expansion)


def _complete_entry(entry: Entry, libvirt_version: Optional[str], expansion: Optional[Mapping[str, Optional[str]]]) -> Entry:
    entry["libvirt_version"] = libvirt_version
    entry["fingerprint"] = fingerprint(entry)
    entry.update(_expansion_fields(expansion))
    return entry


def build_facts(capabilities_xml: Optional[XMLText],
                domcaps_by_virt_type: Mapping[str, XMLText],
                versions: Optional[Mapping[str, Union[str, int, None]]] = None,
                expansions: Optional[Mapping[str, Mapping[str, Optional[str]]]] = None,
                verified: Optional[Mapping[str, Mapping[str, Dict[str, Any]]]] = None,
                expansion_data: Optional[Mapping[str, Dict[str, Any]]] = None) -> Dict[str, Any]:
    """The ``hostcpu`` facts.

    *versions*: ``{"libvirt_version", "hypervisor_version"}`` as text or libvirt's integers.
    *expansions*: per virt type ``{"host_model_expanded": xml, "host_model_migratable": xml}``.
    *verified*: per virt type and mode, the ``verified_result`` of a started guest.
    *expansion_data*: per virt type, ``_probe_qemu.expansion_data_from_libvirt``'s result; each entry
    then has it under ``expansion`` (None for a virt type without it).
    """
    capabilities = parse_capabilities(capabilities_xml) if capabilities_xml is not None else None
    entries = {virt_type: _checked_entry(virt_type, domcaps_by_virt_type[virt_type])
               for virt_type in _in_virt_type_order(domcaps_by_virt_type)}
    return facts_from_parsed(capabilities, entries, versions, expansions, verified, expansion_data)


def facts_from_parsed(capabilities: Optional[Dict[str, Any]],
                      entries: Mapping[str, Entry],
                      versions: Optional[Mapping[str, Union[str, int, None]]] = None,
                      expansions: Optional[Mapping[str, Mapping[str, Optional[str]]]] = None,
                      verified: Optional[Mapping[str, Mapping[str, Dict[str, Any]]]] = None,
                      expansion_data: Optional[Mapping[str, Dict[str, Any]]] = None) -> Dict[str, Any]:
    """``build_facts`` from the XML as ``parse_capabilities`` and ``parse_domain_capabilities`` read it
    (``_probe.probe`` returns both, so the XML is not parsed twice). *capabilities* and *entries* become
    part of the facts."""
    versions = versions or {}
    libvirt_version = version_text(versions.get("libvirt_version"))
    facts = capabilities["host"] if capabilities is not None else _empty_host()
    facts["libvirt_version"] = libvirt_version
    facts["hypervisor_version"] = version_text(versions.get("hypervisor_version"))
    virt_types = {}
    summary = {}
    for virt_type in _in_virt_type_order(entries):
        _check_domain_type(virt_type, entries[virt_type])
        entry = _complete_entry(entries[virt_type], libvirt_version, (expansions or {}).get(virt_type))
        if verified and virt_type in verified:
            summary[virt_type] = _attach_verified(entry, verified[virt_type])
        if expansion_data is not None:
            entry["expansion"] = expansion_data.get(virt_type)
        if capabilities is not None:
            entry.update(machine_types(capabilities, entry))
        virt_types[virt_type] = entry
    facts["virt_types"] = virt_types
    if facts["arch"] is None and virt_types:
        facts["arch"] = next(iter(virt_types.values()))["arch"]
    if verified is not None:
        facts["verify_modes"] = summary
    return facts
