# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The expansion data ``cpu_facts`` stores per virt type (``virt_types.<vt>.expansion``).

Built from what libvirt printed (CPU map, capabilities, domain capabilities) and from what the
probe measured of QEMU (``_probe_qemu``): the map's features and models as masks, the migratable
host-model CPU, libvirt's "full" host CPU, and QEMU's behaviour (its models, what the accelerator
gives, unknown features, feature dependencies, refused MSR writes). Pure: the prediction
(``_expansion``) reads this data and nothing else.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_map import (
    CPUMap,
    DISABLING,
    Mask,
    apply_policies,
    cpu_map_from_xml,
    decode,
    int_or_zero,
    mask_of,
    names_of,
    to_hex,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import ExpansionDataError
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts import (  # defined there for _facts_cache, see _facts
    EXPANSION_DATA_FORMAT as DATA_FORMAT,
    expansion_data_fingerprint as _data_fingerprint,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._versions import LibvirtRules
from ansible_collections.hostcpu.libvirt.plugins.module_utils._xml import parse_xml


# virQEMUCapsCPUFeaturesX86: libvirt name -> QEMU property name.
QEMU_FEATURE_NAMES = {
    "cmp_legacy": "cmp-legacy", "ds_cpl": "ds-cpl", "fxsr_opt": "fxsr-opt", "kvm_pv_eoi": "kvm-pv-eoi",
    "kvm_pv_unhalt": "kvm-pv-unhalt", "lahf_lm": "lahf-lm", "nodeid_msr": "nodeid-msr",
    "pclmuldq": "pclmulqdq", "perfctr_core": "perfctr-core", "perfctr_nb": "perfctr-nb",
    "tsc_adjust": "tsc-adjust", "vmx-invvpid-single-context-noglobals": "vmx-invept-single-context-noglobals",
}
LIBVIRT_FEATURE_NAMES = {qemu: name for name, qemu in QEMU_FEATURE_NAMES.items()}
# QEMU's feature_dependencies (target/i386/cpu.c, QEMU 7.2) in CPU map terms: when the parent is
# off, QEMU clears every feature at these CPUID leaves / MSRs (and marks the ones the command line
# asked for unavailable). Groups: (parent, kind, first index, last index).
DEPENDENCY_GROUPS = (
    ("arch-capabilities", "msr", 0x10A, 0x10A),
    ("core-capability", "msr", 0xCF, 0xCF),
    ("pdcm", "msr", 0x345, 0x345),
    ("vmx", "msr", 0x480, 0x491),
    ("svm", "cpuid", 0x8000000A, 0x8000000A),
    ("intel-pt", "cpuid", 0x14, 0x14),
)
# Single features that hang on another one (parent, child).
DEPENDENCY_PAIRS = (
    ("lm", "vmx-entry-ia32e-mode"), ("xsaves", "vmx-xsaves"), ("rdrand", "vmx-rdrand-exit"),
    ("invpcid", "vmx-invpcid-exit"), ("mpx", "vmx-exit-clear-bndcfgs"), ("mpx", "vmx-entry-load-bndcfgs"),
    ("rdseed", "vmx-rdseed-exit"), ("rdtscp", "vmx-rdtscp-exit"), ("sgx", "sgxlc"),
    ("waitpkg", "vmx-enable-user-wait-pause"),
)
# The feature announcing each MSR, for the fix of an MSR QEMU cannot write.
MSR_PARENTS = {first: parent for parent, kind, first, _last in DEPENDENCY_GROUPS if kind == "msr" and parent != "vmx"}
# Features 'max' never turns on by itself although the accelerator may give them
# (feature_word_info[].no_autoenable_flags); the probe guest asks for them to learn whether it can.
NO_AUTOENABLE = ("ht", "topoext")
# 'max' may leave arch-capabilities and its MSR 0x10a bits off although the accelerator gives them
# when asked (measured on the testbed: TCG of QEMU 10.0 and 11.1, KVM of QEMU 11.1); the probe asks.
LATENT_MSR_PARENT = "arch-capabilities"
PASSTHROUGH_MODES = ("host-passthrough", "maximum")


def latent_features(cpu_map: Mapping[str, Any], virt_type: str) -> List[str]:
    """The features the probe guest forces on to learn whether the accelerator gives them although
    'max' does not turn them on: NO_AUTOENABLE, and under TCG arch-capabilities and its MSR bits (under
    KVM 'max' turns those on where it can write them; where it does not, a guest of their own asks)."""
    names = list(NO_AUTOENABLE)
    if virt_type == "qemu" and LATENT_MSR_PARENT in cpu_map["bits"]:
        names.append(LATENT_MSR_PARENT)
        names += msr_features(cpu_map, msr_index_of(LATENT_MSR_PARENT))
    return names


def msr_index_of(parent: str) -> int:
    return next(first for name, kind, first, _last in DEPENDENCY_GROUPS if name == parent and kind == "msr")


def msr_features(cpu_map: Mapping[str, Any], index: int, value: Optional[int] = None) -> List[str]:
    """The map's features of MSR *index* (those whose bit is set in *value*, when given), in map order."""
    return [name for name in cpu_map["features"] if cpu_map["bits"][name][:2] == ("msr", index)
            and (value is None or value >> cpu_map["bits"][name][2] & 1)]


def _bits_for_facts(cpu_map: Dict[str, Any]) -> Dict[str, List[int]]:
    """MSR features only (index, bit): the CPUID bits are not needed after the probe."""
    return {name: [bit[1], bit[2]] for name, bit in cpu_map["bits"].items() if bit[0] == "msr"}


def _models_for_facts(cpu_map: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    result = {}
    for name, model in cpu_map["models"].items():
        entry: Dict[str, Any] = {"features": to_hex(model["mask"])}
        if model["vendor"]:
            entry["vendor"] = model["vendor"]
        if model["removed"]:
            entry["removed"] = list(model["removed"])
        if model.get("added"):
            entry["added"] = list(model["added"])
        if model.get("compat_check"):
            entry["compat_check"] = True
        if model["signatures"]:
            entry["signatures"] = [list(sig) for sig in model["signatures"]]
        if model["decode"] != [True, True]:
            entry["decode"] = list(model["decode"])
        result[name] = entry
    return result


def _host_cpu_data(caps_root, cpu_map: Dict[str, Any], index: Mapping[str, int]) -> Tuple[Mask, Optional[str], Optional[Tuple[int, int, int]]]:
    """The host CPU of the capabilities XML as (feature mask, vendor, signature)."""
    cpu_el = caps_root.find("host/cpu") if caps_root is not None else None
    if cpu_el is None or not (cpu_el.findtext("model") or "").strip():
        return 0, None, None
    model = cpu_el.findtext("model").strip()
    if model not in cpu_map["models"]:
        raise ExpansionDataError("the host CPU model '%s' of the capabilities is not in libvirt's CPU map" % model)
    mask = cpu_map["models"][model]["mask"]
    for feature_el in cpu_el.findall("feature"):
        if feature_el.get("policy") in DISABLING:
            mask &= ~mask_of([feature_el.get("name")], index)
        else:
            mask |= mask_of([feature_el.get("name")], index)
    sig_el = cpu_el.find("signature")
    signature = None
    if sig_el is not None:
        signature = (int_or_zero(sig_el.get("family")), int_or_zero(sig_el.get("model")), int_or_zero(sig_el.get("stepping")))
    vendor = (cpu_el.findtext("vendor") or "").strip() or None
    return mask, vendor, signature


def _host_model_of(domcaps_root) -> Optional[Dict[str, Any]]:
    mode_el = domcaps_root.find("cpu/mode[@name='host-model']")
    if mode_el is None or mode_el.get("supported") != "yes" or mode_el.find("model") is None:
        return None
    return {
        "model": (mode_el.findtext("model") or "").strip(),
        "vendor": (mode_el.findtext("vendor") or "").strip() or None,
        "features": [[el.get("name"), el.get("policy") or "require"] for el in mode_el.findall("feature")],
    }


def _cpu_data(model: str, features: Iterable[Sequence[str]], cpu_map: Dict[str, Any], index: Mapping[str, int]) -> Mask:
    """x86ModelFromCPU(cpu, -1): the model's features plus required minus disabled ones."""
    model_mask = cpu_map["models"][model]["mask"] if model in cpu_map["models"] else 0
    return apply_policies(model_mask, ((name, policy) for name, policy in features), lambda name: mask_of([name], index))


def _full_host(virt_type: str, host_model: Dict[str, Any], caps_root, cpu_map: Dict[str, Any],
               index: Mapping[str, int], accelerated: bool, rules: Optional[LibvirtRules] = None) -> Dict[str, Any]:
    """libvirt's "full" host CPU of *virt_type* (virQEMUCapsInitHostCPUModel), used by check='partial'.

    With an accelerator (kvm) it is the host CPU decoded from CPUID (as a guest CPU, any model)
    plus every feature the expanded host-model CPU requires; under TCG it is the host-model CPU.
    ``listed`` holds the names the CPU definition lists as enabled (virCPUCheckForbiddenFeatures
    looks names up, not bits).
    """
    reported = _cpu_data(host_model["model"], host_model["features"], cpu_map, index)
    caps_mask, caps_vendor, signature = _host_cpu_data(caps_root, cpu_map, index)
    if not accelerated or not caps_mask:
        listed = [name for name, policy in host_model["features"] if policy not in DISABLING]
        return {"vendor": host_model["vendor"], "features": to_hex(reported), "listed": to_hex(mask_of(listed, index))}
    decoded = decode(CPUMap.from_map(cpu_map), caps_mask, caps_vendor, signature, guest=True, rules=rules)
    policies = OrderedDict(decoded.features)
    for name in names_of(reported, cpu_map["features"]):
        policies[name] = "require"
    listed = [name for name, policy in policies.items() if policy not in DISABLING]
    data = _cpu_data(decoded.model, policies.items(), cpu_map, index)
    return {"vendor": caps_vendor, "features": to_hex(data), "listed": to_hex(mask_of(listed, index))}


def dependencies_from_map(cpu_map: Mapping[str, Any], known: Iterable[str] = ()) -> Dict[str, List[str]]:
    """DEPENDENCY_GROUPS and DEPENDENCY_PAIRS as ``{parent: [children in map order]}`` for this CPU map."""
    known = set(known) or set(cpu_map["features"])
    result: Dict[str, List[str]] = {}
    for parent, kind, first, last in DEPENDENCY_GROUPS:
        if parent not in known:
            continue
        children = [name for name in cpu_map["features"]
                    if cpu_map["bits"][name][0] == kind and first <= cpu_map["bits"][name][1] <= last and name != parent]
        if children:
            result.setdefault(parent, []).extend(children)
    for parent, child in DEPENDENCY_PAIRS:
        if parent in known and child in cpu_map["bits"]:
            result.setdefault(parent, []).append(child)
    return result


def _qemu_for_facts(qemu: Mapping[str, Any], index: Mapping[str, int], cpu_map: Mapping[str, Any]) -> Dict[str, Any]:
    """The measured QEMU behaviour (``probe_qemu``'s result) as masks."""
    known = set(qemu.get("known") or [])
    result = {
        "models": {name: to_hex(mask_of(features, index)) for name, features in sorted(qemu["models"].items())},
        "supported": to_hex(mask_of(qemu["max"], index)),
        "migratable": to_hex(mask_of(qemu["max_migratable"], index)),
        "unknown": [name for name in index if known and name not in known],
        "dependencies": dependencies_from_map(cpu_map, known),
        "msr_failures": [dict(failure) for failure in qemu.get("msr_failures") or []],
    }
    if qemu.get("vendors"):
        result["vendors"] = dict(sorted(qemu["vendors"].items()))
    if qemu.get("version"):
        result["version"] = str(qemu["version"])
    if qemu.get("latent"):
        result["latent"] = to_hex(mask_of(qemu["latent"], index))
    if qemu.get("msr_unannounced_failures"):
        result.update(_cpuid_level_data(qemu, index))
    return result


def _cpuid_level_data(qemu: Mapping[str, Any], index: Mapping[str, int]) -> Dict[str, Any]:
    """The unannounced-MSR failures and what the prediction needs to tell the guest's CPUID level:
    QEMU's level of each model ('max' for host-passthrough and maximum) and the features raising it."""
    models = set(qemu["models"]) | {"max"}
    return {
        "msr_unannounced_failures": [{"index": int(failure["index"]), "value": str(failure["value"]),
                                      "leaf": int(failure["leaf"])} for failure in qemu["msr_unannounced_failures"]],
        "levels": {name: int(level) for name, level in sorted((qemu.get("levels") or {}).items()) if name in models},
        "level_raisers": [[int(level), to_hex(mask_of(names, index))]
                          for level, names in sorted((qemu.get("level_raisers") or {}).items(), key=lambda item: int(item[0]))],
    }


def expansion_data_from_parts(cpu_map: Mapping[str, Any], virt_type: str, host_model: Optional[Mapping[str, Any]],
                              host: Optional[Mapping[str, Any]], qemu: Mapping[str, Any],
                              machine: Optional[str] = None) -> Dict[str, Any]:
    """The ``expansion`` data from its parts: *cpu_map* (``cpu_map_from_xml``), the migratable host-model
    CPU (``{model, vendor, features: [[name, policy]]}``), the full host CPU (``{vendor, features, listed}``,
    hex masks), the QEMU part (``_qemu_for_facts``; ``{}`` when QEMU was not asked) and the machine
    type QEMU was asked with (its model versions are the ones predicted)."""
    qemu_part = {"models": {}, "supported": "0", "migratable": "0", "unknown": [],
                 "dependencies": dependencies_from_map(cpu_map), "msr_failures": []}
    qemu_part.update(qemu)
    data: Dict[str, Any] = {
        "format": DATA_FORMAT,
        "virt_type": virt_type,
        "machine": machine,
        "features": list(cpu_map["features"]),
        "msr": _bits_for_facts(cpu_map),
        "models": _models_for_facts(cpu_map),
        "model_order": list(cpu_map["models"]),
        "qemu": qemu_part,
        "host_model": None if host_model is None else {
            "model": host_model["model"], "vendor": host_model.get("vendor"),
            "features": [[name, policy] for name, policy in host_model["features"]]},
        "host": None if host is None else dict(host),
    }
    data["fingerprint"] = _data_fingerprint(data)
    return data


def expansion_data_from_xml(cpu_map_files: Mapping[str, Union[str, bytes]], capabilities_xml: Union[str, bytes, None],
                            domcaps_xml: Union[str, bytes], qemu: Mapping[str, Any],
                            rules: Optional[LibvirtRules] = None) -> Dict[str, Any]:
    """The ``expansion`` facts of one virt type from XML libvirt printed and QEMU's measured behaviour.

    *qemu* is what ``probe_qemu`` read through QMP (libvirt feature names): ``models`` (model ->
    features QEMU enables for it), ``max`` / ``max_migratable`` (what the accelerator can give),
    ``non_migratable`` (what QEMU does not migrate: left out of host-model guests), ``known`` and
    ``msr_failures``. *rules*: those of the host's libvirt (default: the newest).
    """
    cpu_map = cpu_map_from_xml(cpu_map_files, rules=rules)
    index = {name: position for position, name in enumerate(cpu_map["features"])}
    domcaps_root = parse_xml(domcaps_xml, "domain capabilities XML")
    virt_type = (domcaps_root.findtext("domain") or "").strip()
    host_model = _host_model_of(domcaps_root)
    caps_root = parse_xml(capabilities_xml, "capabilities XML") if capabilities_xml is not None else None
    migratable_host_model = None
    host = None
    if host_model is not None:
        non_migratable = set(qemu["non_migratable"])
        migratable_host_model = {"model": host_model["model"], "vendor": host_model["vendor"],
                                 "features": [f for f in host_model["features"] if f[0] not in non_migratable]}
        host = _full_host(virt_type, host_model, caps_root, cpu_map, index, accelerated=virt_type != "qemu", rules=rules)
    return expansion_data_from_parts(cpu_map, virt_type, migratable_host_model, host, _qemu_for_facts(qemu, index, cpu_map),
                                     (domcaps_root.findtext("machine") or "").strip() or None)
