# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The CPU a guest really runs with: libvirt 9.0's start-up path for x86, replayed on facts.

``predict_live_cpu(cpu, entry)`` returns the ``<cpu>`` libvirt's live XML shows once a guest with
*cpu* started on the host *entry* describes (one ``virt_types`` entry of the ``hostcpu`` facts),
or raises ``GuestWouldNotStart`` with the error libvirt (or QEMU) would give. It follows, step by
step, what libvirt 9.0 does when it starts a QEMU guest (src/qemu/qemu_process.c and
src/cpu/cpu_x86.c):

1. ``virCPUValidateFeatures``: every feature must be in libvirt's CPU map.
2. ``qemuProcessUpdateGuestCPU``: the mode must be supported; with ``check`` other than none a
   ``forbid`` feature the "full" host CPU lists fails; with ``check='partial'`` the CPU is compared
   with that host CPU (``x86Compute``); ``virCPUx86Update`` turns ``optional`` into require/disable
   by the migratable host-model CPU and, for host-model and ``match='minimum'``, copies that CPU
   (model, vendor, features in its order; the domain's features replace the policy in place or are
   appended); removed features of the model are appended as disable; a model QEMU does not know is
   translated (``fallback='allow'``) or refused; ``fallback`` becomes forbid; the features libvirt
   never passes to QEMU (cmt, mbm_total, mbm_local, osxsave, ospke) are dropped, and so are
   disabled features QEMU does not know.
3. QEMU builds the CPU: its own definition of the model with the accelerator's defaults, the
   ``feature=on/off`` of the command line, features that hang on a disabled one cleared (e.g. the
   MSR 0x10a features on arch-capabilities), features the accelerator cannot give filtered out.
   Values QEMU cannot write to an MSR on this host (nested KVM refusing MSR 0x10a) kill it, and
   so do, on kernels that refuse them, values of an MSR the guest's CPUID does not announce (MSR
   0x10a on a model whose CPUID level, raised by some requested features, stops below leaf 7).
4. ``qemuProcessUpdateAndVerifyCPU``: invtsc must have been enabled when required;
   ``virCPUx86UpdateLive`` marks features QEMU enabled beyond the definition ``require`` and
   features it filtered or did not enable ``disable`` (walking the CPU map in order), or fails
   the start when ``check='full'``; then ``check`` becomes full.

Everything QEMU-specific comes from data the ``cpu_facts`` probe measured on the host (see
``expansion_data_from_libvirt``): QEMU's definition of every model under the accelerator, what the
accelerator can give (including the features 'max' never auto-enables), the features QEMU does not
know, which MSR writes KVM refuses (and QEMU's CPUID levels when that depends on them). The static parts are libvirt's CPU map (models, feature
order, MSR bits) and QEMU's feature dependencies (DEPENDENCY_GROUPS / DEPENDENCY_PAIRS, expressed
in CPU map terms; the probe's measurements are checked against them in the unit tests). Everything
is stored compactly: feature sets are hex bit masks over the CPU map's feature list.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import (
    CPUDict,
    normalize_cpu,
    ordered,
    validate_cpu,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError
from ansible_collections.hostcpu.libvirt.plugins.module_utils._versions import LibvirtRules, parse_version, rules_for
from ansible_collections.hostcpu.libvirt.plugins.module_utils._xml import parse_xml

DATA_FORMAT = 1
CPU_MAP_DIR = "/usr/share/libvirt/cpu_map"
# virQEMUCapsCPUFeaturesX86: libvirt name -> QEMU property name.
QEMU_FEATURE_NAMES = {
    "cmp_legacy": "cmp-legacy", "ds_cpl": "ds-cpl", "fxsr_opt": "fxsr-opt", "kvm_pv_eoi": "kvm-pv-eoi",
    "kvm_pv_unhalt": "kvm-pv-unhalt", "lahf_lm": "lahf-lm", "nodeid_msr": "nodeid-msr",
    "pclmuldq": "pclmulqdq", "perfctr_core": "perfctr-core", "perfctr_nb": "perfctr-nb",
    "tsc_adjust": "tsc-adjust", "vmx-invvpid-single-context-noglobals": "vmx-invept-single-context-noglobals",
}
LIBVIRT_FEATURE_NAMES = {qemu: name for name, qemu in QEMU_FEATURE_NAMES.items()}
PASSTHROUGH_MODES = ("host-passthrough", "maximum")
ENABLING = ("force", "require")
DISABLING = ("disable", "forbid")
# QEMU's message when KVM refuses an MSR value; the fix names the feature announcing the MSR.
MSR_FAILURE = re.compile(r"failed to set MSR (0x[0-9a-fA-F]+) to (0x[0-9a-fA-F]+)")
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
PROBE_NAME_PREFIX = "hostcpu-probe-"
PROBE_MEMORY_MIB = 32
SYSTEM_GUEST_LOG_DIR = "/var/log/libvirt/qemu"
# A fleet baseline predicts on every distinct host twice (its host-model CPU, then the proof):
# the contexts of a 1000-host fleet must stay cached between the two passes.
CONTEXT_CACHE_SIZE = 1024
CPU_MAP_CACHE_SIZE = 16

Mask = int


class ExpansionDataError(CPUError):
    """The facts do not carry (usable) expansion data for this prediction."""


class GuestWouldNotStart(CPUError):
    """libvirt or QEMU would refuse to start a guest with this CPU on this host.

    ``reason`` is libvirt's own error text (as ``virsh start`` prints it), ``missing_features``
    the features named as missing, ``fix`` a list of ``{name, policy: disable}`` that makes the
    guest start when one is known.
    """

    def __init__(self, reason: str, missing_features: Sequence[str] = (), extra_features: Sequence[str] = (),
                 forbidden_features: Sequence[str] = (), fix: Optional[List[Dict[str, str]]] = None,
                 hint: Optional[str] = None):
        self.reason = reason
        self.missing_features = list(missing_features)
        self.extra_features = list(extra_features)
        self.forbidden_features = list(forbidden_features)
        self.fix = fix
        message = "libvirt would not start this guest: %s" % reason
        if hint:
            message += "; " + hint
        super().__init__(message)


# ---------------------------------------------------------------------------------------------
# masks


def names_of(mask: Mask, names: Sequence[str]) -> List[str]:
    """The feature names of *mask*, in CPU map order."""
    result = []
    index = 0
    while mask:
        if mask & 1:
            result.append(names[index])
        mask >>= 1
        index += 1
    return result


def to_hex(mask: Mask) -> str:
    return format(mask, "x")


def from_hex(text: Any, what: str) -> Mask:
    if not isinstance(text, str):
        raise ExpansionDataError("expansion data: %s must be a hex string, got %s" % (what, type(text).__name__))
    try:
        return int(text, 16) if text else 0
    except ValueError:
        raise ExpansionDataError("expansion data: %s is not a hex bit mask: %r" % (what, text[:40])) from None


# ---------------------------------------------------------------------------------------------
# libvirt's CPU map (src/cpu_map, installed as /usr/share/libvirt/cpu_map)


def _int0(value: Optional[str]) -> int:
    return int(value, 0) if value else 0


def _feature_bit(feature_el) -> Tuple[Any, ...]:
    """``("cpuid", eax_in, ecx_in, register, bit)`` or ``("msr", index, bit)`` of one feature."""
    for child in feature_el:
        if child.tag == "cpuid":
            for register in ("eax", "ebx", "ecx", "edx"):
                value = _int0(child.get(register))
                if value:
                    return ("cpuid", _int0(child.get("eax_in")), _int0(child.get("ecx_in")), register,
                            value.bit_length() - 1)
        if child.tag == "msr":
            value = (_int0(child.get("edx")) << 32) | _int0(child.get("eax"))
            return ("msr", _int0(child.get("index")), value.bit_length() - 1)
    raise ExpansionDataError("CPU map feature '%s' has no cpuid or msr bit" % feature_el.get("name"))


def _steppings(text: Optional[str]) -> Optional[List[int]]:
    if not text:
        return None
    result = []
    for part in text.split(","):
        low, _sep, high = part.partition("-")
        result.extend(range(int(low), int(high or low) + 1))
    return result


def _model_entry(model_el, models: Dict[str, Dict[str, Any]], index: Dict[str, int], rules: LibvirtRules) -> Dict[str, Any]:
    """x86ModelParse: the model's data (its ancestor's plus its features), vendor, signatures, decode
    flags, removed and added features (neither is inherited) and whether check='partial' compares
    the whole model (``<check partial='compat'/>``)."""
    base_el = model_el.find("model")
    base = models.get(base_el.get("name")) if base_el is not None else None
    if base_el is not None and base is None:
        raise ExpansionDataError("CPU map model '%s' is based on unknown model '%s'"
                                 % (model_el.get("name"), base_el.get("name")))
    entry = {"vendor": base["vendor"] if base else None, "mask": base["mask"] if base else 0,
             "removed": [], "added": [], "signatures": list(base["signatures"]) if base else [],
             "compat_check": (model_el.find("check") is not None and model_el.find("check").get("partial") == "compat")}
    signatures = [[_int0(el.get("family")), _int0(el.get("model")), _steppings(el.get("stepping"))]
                  for el in model_el.findall("signature")]
    if signatures:
        entry["signatures"] = signatures
    vendor_el = model_el.find("vendor")
    if vendor_el is not None:
        entry["vendor"] = vendor_el.get("name")
    decode_el = model_el.find("decode")
    entry["decode"] = [decode_el is None or decode_el.get("host") == "on",
                       decode_el is None or decode_el.get("guest") == "on"]
    for feature_el in model_el.findall("feature"):
        name = feature_el.get("name")
        if name not in index:
            raise ExpansionDataError("CPU map model '%s' uses unknown feature '%s'" % (model_el.get("name"), name))
        if feature_el.get("removed") == "yes":
            entry["removed"].append(name)
        elif feature_el.get("added") == "yes" and rules.added_model_features:
            entry["added"].append(name)
        else:
            entry["mask"] |= 1 << index[name]
    return entry


def _include_names(arch_el, rules: LibvirtRules) -> List[str]:
    """The files index.xml includes for one arch, in document order (loadIncludes' XPath: an
    ``include`` child, or with the grouped layout also a ``group/include`` grandchild)."""
    names = []
    for child in arch_el:
        if child.tag == "include" and "include" in rules.cpu_map_includes:
            names.append(child.get("filename"))
        elif child.tag == "group" and child.get("name") and "group[@name]/include" in rules.cpu_map_includes:
            names.extend(el.get("filename") for el in child if el.tag == "include")
    return names


def cpu_map_from_xml(files: Mapping[str, Union[str, bytes]], arch: str = "x86",
                     rules: Optional[LibvirtRules] = None) -> Dict[str, Any]:
    """libvirt's CPU map for *arch* from ``{file name: XML text}`` (index.xml and what it includes),
    read as the libvirt of *rules* reads it (default: the newest rules, which read every layout).

    Returns ``{"features": [names in map order], "bits": {name: bit}, "non_migratable": [...],
    "models": {name: {vendor, mask, removed, added, compat_check, signatures, decode}},
    "vendors": {name: string}}``.
    """
    rules = rules or rules_for(None)
    if "index.xml" not in files:
        raise ExpansionDataError("libvirt's CPU map needs index.xml; pass the files of %s" % CPU_MAP_DIR)
    index_root = parse_xml(files["index.xml"], "CPU map index.xml")
    arch_el = index_root.find("arch[@name='%s']" % arch)
    if arch_el is None:
        raise ExpansionDataError("libvirt's CPU map has no arch '%s'" % arch)
    result: Dict[str, Any] = {"features": [], "bits": {}, "non_migratable": [], "models": {}, "vendors": {}}
    index: Dict[str, int] = {}
    for name in _include_names(arch_el, rules):
        if name not in files:
            raise ExpansionDataError("libvirt's CPU map file %s (included by index.xml) is missing" % name)
        root = parse_xml(files[name], "CPU map %s" % name)
        for element in root:
            if element.tag == "vendor":
                result["vendors"][element.get("name")] = element.get("string")
            elif element.tag == "feature":
                feature = element.get("name")
                index[feature] = len(result["features"])
                result["features"].append(feature)
                result["bits"][feature] = _feature_bit(element)
                if element.get("migratable") == "no":
                    result["non_migratable"].append(feature)
            elif element.tag == "model":
                result["models"][element.get("name")] = _model_entry(element, result["models"], index, rules)
    return result


def read_cpu_map_files(directory: str = CPU_MAP_DIR, arch: str = "x86", rules: Optional[LibvirtRules] = None) -> Dict[str, str]:
    """The CPU map files of *arch* from libvirt's data directory on this host (every layout by default)."""
    rules = rules or rules_for(None)
    files: Dict[str, str] = {}
    try:
        with open(os.path.join(directory, "index.xml"), encoding="utf-8") as handle:
            files["index.xml"] = handle.read()
        index_root = parse_xml(files["index.xml"], "CPU map index.xml")
        arch_el = index_root.find("arch[@name='%s']" % arch)
        for name in [] if arch_el is None else _include_names(arch_el, rules):
            if os.path.basename(name) != name:
                raise ExpansionDataError("CPU map index.xml includes '%s', which is not a plain file name" % name)
            with open(os.path.join(directory, name), encoding="utf-8") as handle:
                files[name] = handle.read()
    except OSError as exc:
        raise ExpansionDataError("cannot read libvirt's CPU map in %s: %s; is libvirt installed on this host?"
                                 % (directory, exc.strerror or exc)) from None
    return files


# ---------------------------------------------------------------------------------------------
# decoding CPU data into a model + features (x86Decode, x86DataToCPU, x86DecodeUseCandidate)


class Decoded(NamedTuple):
    model: str
    vendor: Optional[str]
    features: List[Tuple[str, str]]


def _signature_matches(signatures: Sequence[Sequence[Any]], signature: Optional[Tuple[int, int, int]]) -> bool:
    if not signature:
        return False
    family, model, stepping = signature
    return any(sig[0] == family and sig[1] == model and (not sig[2] or stepping in sig[2]) for sig in signatures)


def _candidate_score(features: Sequence[Tuple[str, str]], guest: bool, penalize_disabled: bool = True) -> Tuple[int, int]:
    """virCPUx86CompareCandidateFeatureList's (count, disabled) including its shrinking loop bound;
    without *penalize_disabled* (libvirt before 8.3) the plain length of the list."""
    total = len(features)
    if not guest or not penalize_disabled:
        return total, 0
    enabled = total
    disabled = 0
    penalty = 2
    position = 0
    while position < enabled:
        if features[position][1] == "disable":
            enabled -= 1
            disabled += penalty
            penalty += 1
        position += 1
    return enabled + disabled, disabled


def _data_to_cpu(cpu_map: "CPUMap", data: Mask, model: str, blockers: Mask, guest: bool) -> List[Tuple[str, str]]:
    model_mask = cpu_map.models[model].mask
    extra = data & ~model_mask
    missing = (model_mask & ~data) | (blockers & ~extra)
    features = [(name, "require") for name in names_of(extra, cpu_map.names)]
    features += [(name, "disable") for name in names_of(missing, cpu_map.names)]
    if guest:
        listed = {name for name, _policy in features}
        features += [(name, "disable") for name in cpu_map.models[model].removed if name not in listed]
    return features


def _tsx_filtered(cpu_map: "CPUMap", data: Mask, vendor: Optional[str], signature: Optional[Tuple[int, int, int]]) -> Mask:
    if vendor != "Intel" or not signature:
        return data
    family, model, stepping = signature
    if family == 6 and ((model == 63 and stepping < 4) or model in (60, 69, 70)):
        for name in ("hle", "rtm"):
            if name in cpu_map.index:
                data &= ~(1 << cpu_map.index[name])
    return data


def decode(cpu_map: "CPUMap", data: Mask, vendor: Optional[str], signature: Optional[Tuple[int, int, int]],
           guest: bool = True, allowed: Optional[Mapping[str, Mask]] = None,
           rules: Optional[LibvirtRules] = None) -> Decoded:
    """libvirt's x86Decode: the model (newest first) that describes *data* with the fewest changes.

    *allowed* maps the model names the hypervisor accepts to their blocker masks (None: all);
    *rules*: those of the libvirt that decodes (default: the newest).
    """
    penalize = (rules or rules_for(None)).decode_penalizes_disabled
    data = _tsx_filtered(cpu_map, data, vendor, signature)
    best: Optional[Tuple[str, List[Tuple[str, str]]]] = None
    for name in reversed(cpu_map.model_order):
        model = cpu_map.models[name]
        if allowed is not None and name not in allowed:
            continue
        if vendor and model.vendor and vendor != model.vendor:
            continue
        if not (model.decode_guest if guest else model.decode_host):
            continue
        features = _data_to_cpu(cpu_map, data, name, (allowed or {}).get(name, 0), guest)
        if not guest and any(policy == "disable" for _name, policy in features):
            continue
        if best is None or _better_candidate(cpu_map, best, (name, features), signature, guest, penalize):
            best = (name, features)
    if best is None:
        raise GuestWouldNotStart("internal error: Cannot find suitable CPU model for given data")
    return Decoded(best[0], vendor, best[1])


def _better_candidate(cpu_map: "CPUMap", current: Tuple[str, List[Tuple[str, str]]],
                      candidate: Tuple[str, List[Tuple[str, str]]], signature: Optional[Tuple[int, int, int]],
                      guest: bool, penalize_disabled: bool = True) -> bool:
    if signature:
        current_matches = _signature_matches(cpu_map.models[current[0]].signatures, signature)
        candidate_matches = _signature_matches(cpu_map.models[candidate[0]].signatures, signature)
        if current_matches and not candidate_matches:
            return False
        if candidate_matches and not current_matches:
            return True
    current_count, current_disabled = _candidate_score(current[1], guest, penalize_disabled)
    count, disabled = _candidate_score(candidate[1], guest, penalize_disabled)
    return count < current_count or (count == current_count and disabled < current_disabled)


# ---------------------------------------------------------------------------------------------
# the data cpu_facts stores (virt_types.<vt>.expansion)


def _bits_for_facts(cpu_map: Dict[str, Any]) -> Dict[str, List[int]]:
    """MSR features only (index, bit): the CPUID bits are not needed after the probe."""
    return {name: [bit[1], bit[2]] for name, bit in cpu_map["bits"].items() if bit[0] == "msr"}


def _mask_of(names: Iterable[str], index: Mapping[str, int]) -> Mask:
    mask = 0
    for name in names:
        if name in index:
            mask |= 1 << index[name]
    return mask


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
            mask &= ~_mask_of([feature_el.get("name")], index)
        else:
            mask |= _mask_of([feature_el.get("name")], index)
    sig_el = cpu_el.find("signature")
    signature = None
    if sig_el is not None:
        signature = (_int0(sig_el.get("family")), _int0(sig_el.get("model")), _int0(sig_el.get("stepping")))
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
    mask = cpu_map["models"][model]["mask"] if model in cpu_map["models"] else 0
    for name, policy in features:
        if policy in ENABLING:
            mask |= _mask_of([name], index)
        elif policy in DISABLING:
            mask &= ~_mask_of([name], index)
    return mask


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
        return {"vendor": host_model["vendor"], "features": to_hex(reported), "listed": to_hex(_mask_of(listed, index))}
    decoded = decode(CPUMap.from_map(cpu_map), caps_mask, caps_vendor, signature, guest=True, rules=rules)
    policies = OrderedDict(decoded.features)
    for name in names_of(reported, cpu_map["features"]):
        policies[name] = "require"
    listed = [name for name, policy in policies.items() if policy not in DISABLING]
    data = _cpu_data(decoded.model, policies.items(), cpu_map, index)
    return {"vendor": caps_vendor, "features": to_hex(data), "listed": to_hex(_mask_of(listed, index))}


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
        "models": {name: to_hex(_mask_of(features, index)) for name, features in sorted(qemu["models"].items())},
        "supported": to_hex(_mask_of(qemu["max"], index)),
        "migratable": to_hex(_mask_of(qemu["max_migratable"], index)),
        "unknown": [name for name in index if known and name not in known],
        "dependencies": dependencies_from_map(cpu_map, known),
        "msr_failures": [dict(failure) for failure in qemu.get("msr_failures") or []],
    }
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
        "level_raisers": [[int(level), to_hex(_mask_of(names, index))]
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


def _data_fingerprint(data: Mapping[str, Any]) -> str:
    text = json.dumps({key: value for key, value in data.items() if key != "fingerprint"},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


# ---------------------------------------------------------------------------------------------
# measuring QEMU through a paused probe guest (the only part that talks to libvirt)


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


def _probe_cpu_xml(label: str, disabled: Sequence[str] = (), largest_mode: str = "maximum") -> str:
    features = "".join("<feature policy='force' name='%s'/>" % name for name in NO_AUTOENABLE)
    features += "".join("<feature policy='disable' name='%s'/>" % name for name in disabled)
    if label == "max":
        return "<cpu mode='%s' migratable='off'>%s</cpu>" % (largest_mode, features)
    if label == "detect":
        return "<cpu mode='custom' match='exact' check='none'><model fallback='forbid'>qemu64</model>%s</cpu>" % features
    return ""


def _create_probe_guest(conn, entry: Mapping[str, Any], token: str, label: str, disabled: Sequence[str] = (),
                        cpu_xml: Optional[str] = None):
    """``(domain, name, None)`` or ``(None, name, libvirt's error)``; *cpu_xml* replaces the label's CPU."""
    import libvirt  # pylint: disable=import-outside-toplevel
    name = "%s%s-%s-%s" % (PROBE_NAME_PREFIX, token, entry["domain_type"], label)
    if cpu_xml is None:
        cpu_xml = _probe_cpu_xml(label, disabled, largest_cpu_mode(entry) or "maximum")
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


def _start_probe_guest(conn, entry: Mapping[str, Any], token: str) -> ProbeGuest:
    """A paused transient guest to ask QEMU through, and what starting it taught.

    The first try is the largest CPU (maximum, migratable off) with the NO_AUTOENABLE features
    forced on: its unavailable-features tell which of those the accelerator lacks. When QEMU dies
    writing an MSR, that is recorded as an MSR failure and the start is retried with the feature
    announcing the MSR disabled (the -cpu option becomes a global property of 'max', which the
    expansions override). Without maximum, a qemu64 guest answers the NO_AUTOENABLE question and a
    guest without -cpu option (nothing colours the expansions) serves QMP.
    """
    failures: List[Dict[str, Any]] = []
    errors: List[str] = []
    disabled: List[str] = []
    if largest_cpu_mode(entry):
        for _attempt in range(3):
            domain, name, error = _create_probe_guest(conn, entry, token, "max", disabled)
            if domain is not None:
                return _probe_from(conn, domain, name, failures, {parent: True for parent in disabled})
            errors.append(error or "")
            failure = _msr_failure(error)
            parent = MSR_PARENTS.get(failure["index"]) if failure else None
            if failure is None or parent is None or parent in disabled:
                break
            failures.append(failure)
            disabled.append(parent)
    domain, name, error = _create_probe_guest(conn, entry, token, "detect")
    unavailable = list(NO_AUTOENABLE)
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
               measure_dependencies: bool = False) -> Dict[str, Any]:
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
    quiet = {QEMU_FEATURE_NAMES.get(name, name): False for name in NO_AUTOENABLE if name in known}
    quiet.update({QEMU_FEATURE_NAMES.get(name, name): value for name, value in (max_overrides or {}).items()})
    max_all = _expansion(domain, "max", dict(quiet, migratable=False))
    supported = _enabled(max_all, known)
    max_migratable = _enabled(_expansion(domain, "max", dict(quiet, migratable=True)), known)
    non_migratable = sorted(set(supported) - set(max_migratable))
    supported = sorted(set(supported) | {name for name in NO_AUTOENABLE if name in known and name not in set(unavailable)})
    parents = [name for name in dependency_parents() if name in known]
    parents_on = {QEMU_FEATURE_NAMES.get(name, name): True for name in parents}
    models = {}
    levels = {"max": max_all.get("level")}
    for name in model_names:
        if name not in qemu_models:
            continue
        plain_props = _expansion(domain, name)
        levels[name] = plain_props.get("level")
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
    guest = _start_probe_guest(conn, entry, token)
    try:
        qemu = probe_qemu(guest.domain, cpu_map["features"], cpu_map["models"], guest.unavailable, guest.max_overrides)
        unannounced = _start_unannounced_msr_probes(conn, entry, token, guest, cpu_map, qemu)
    finally:
        _destroy_probe_guest(conn, guest.domain, guest.name)
    _add_unannounced_results(qemu, unannounced)
    qemu["msr_failures"] = guest.msr_failures
    return expansion_data_from_xml(cpu_map_files, capabilities_xml, domcaps_xml, qemu, rules)


# ---------------------------------------------------------------------------------------------
# the prediction context: facts -> integers, built once per facts entry


class ModelInfo(NamedTuple):
    vendor: Optional[str]
    mask: Mask
    removed: Tuple[str, ...]
    signatures: Tuple[Tuple[int, int, Optional[Tuple[int, ...]]], ...]
    decode_host: bool
    decode_guest: bool
    added: Mask = 0              # features added to the model later (added='yes'): not in its data
    compat_check: bool = False   # check='partial' compares the whole model (<check partial='compat'/>)


class CPUMap:
    """Feature names in map order, their positions, and the models as masks."""

    def __init__(self, names: Sequence[str], models: "OrderedDict[str, ModelInfo]"):
        self.names = list(names)
        self.index = {name: position for position, name in enumerate(self.names)}
        self.models = models
        self.model_order = list(models)

    @classmethod
    def from_map(cls, cpu_map: Mapping[str, Any]) -> "CPUMap":
        index = {name: position for position, name in enumerate(cpu_map["features"])}
        models = OrderedDict()
        for name, model in cpu_map["models"].items():
            models[name] = ModelInfo(model["vendor"], model["mask"], tuple(model["removed"]),
                                     tuple(_signature_tuple(sig) for sig in model["signatures"]),
                                     model["decode"][0], model["decode"][1],
                                     _mask_of(model.get("added") or (), index),
                                     bool(model.get("compat_check")))
        return cls(cpu_map["features"], models)

    @classmethod
    def from_facts(cls, data: Mapping[str, Any]) -> "CPUMap":
        models = OrderedDict()
        for name, model in _mapping(data.get("models"), "models").items():
            model = _mapping(model, "models.%s" % name)
            decode_flags = model.get("decode") or [True, True]
            models[name] = ModelInfo(model.get("vendor"), from_hex(model.get("features"), "models.%s.features" % name),
                                     _names(model.get("removed"), "models.%s.removed" % name),
                                     tuple(_signature_tuple(sig) for sig in model.get("signatures") or ()),
                                     bool(decode_flags[0]), bool(decode_flags[1]),
                                     _names(model.get("added"), "models.%s.added" % name),
                                     bool(model.get("compat_check")))
        names = data.get("features")
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ExpansionDataError("expansion data: 'features' must be the list of libvirt's feature names")
        index = {name: position for position, name in enumerate(names)}
        models = OrderedDict((name, info._replace(added=_mask_of(info.added, index))) for name, info in models.items())
        return cls(names, models)

    def mask(self, names: Iterable[str]) -> Mask:
        return _mask_of(names, self.index)

    def bit(self, name: str) -> Mask:
        position = self.index.get(name)
        return 0 if position is None else 1 << position

    def names_of(self, mask: Mask) -> List[str]:
        return names_of(mask, self.names)


_CPU_MAPS: "OrderedDict[Tuple[Any, ...], CPUMap]" = OrderedDict()


def cpu_map_of(data: Mapping[str, Any]) -> CPUMap:
    """``CPUMap.from_facts(data)``, shared by all facts that carry the same CPU map.

    Every host with one libvirt version carries the same map, while the rest of their expansion
    data differs: decoding it once instead of once per host halves a cold prediction context.
    The key is the map's own content, not the data's fingerprint.
    """
    features, models = data.get("features"), data.get("models")
    if not isinstance(features, list) or not isinstance(models, Mapping):
        return CPUMap.from_facts(data)
    key = (tuple(features), repr(models))
    cpu_map = _CPU_MAPS.get(key)
    if cpu_map is None:
        cpu_map = CPUMap.from_facts(data)
        _CPU_MAPS[key] = cpu_map
        while len(_CPU_MAPS) > CPU_MAP_CACHE_SIZE:
            _CPU_MAPS.popitem(last=False)
    return cpu_map


def _names(value: Any, what: str) -> Tuple[str, ...]:
    if value is not None and (not isinstance(value, (list, tuple)) or not all(isinstance(name, str) for name in value)):
        raise ExpansionDataError("expansion data: '%s' must be a list of feature names" % what)
    return tuple(value or ())


def _signature_tuple(sig: Sequence[Any]) -> Tuple[int, int, Optional[Tuple[int, ...]]]:
    return (int(sig[0]), int(sig[1]), tuple(sig[2]) if len(sig) > 2 and sig[2] else None)


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ExpansionDataError("expansion data: '%s' must be a mapping, got %s" % (what, type(value).__name__))
    return value


class Context:
    """Everything one prediction needs about one host and virt type, as integers and tuples."""

    def __init__(self, entry: Mapping[str, Any]):
        data = _mapping(entry.get("expansion"), "expansion")
        if data.get("format") != DATA_FORMAT:
            raise ExpansionDataError("expansion data has format %r, this collection reads format %d; gather the facts "
                                     "again with hostcpu.libvirt.cpu_facts" % (data.get("format"), DATA_FORMAT))
        self.virt_type = entry.get("domain_type") or data.get("virt_type")
        self.arch = entry.get("arch") or "x86_64"
        self.libvirt_version = parse_version(entry.get("libvirt_version"))
        self.rules = rules_for(self.libvirt_version)
        self.map = cpu_map_of(data)
        self.msr = {name: (int(value[0]), int(value[1])) for name, value in _mapping(data.get("msr") or {}, "msr").items()}
        qemu = _mapping(data.get("qemu"), "qemu")
        self.qemu_models = {name: from_hex(mask, "qemu.models.%s" % name)
                            for name, mask in _mapping(qemu.get("models"), "qemu.models").items()}
        self.supported = from_hex(qemu.get("supported"), "qemu.supported")
        self.migratable = from_hex(qemu.get("migratable"), "qemu.migratable")
        self.unknown = self.map.mask(qemu.get("unknown") or ())
        self.dependencies = [(self.map.bit(parent), self.map.mask(children))
                             for parent, children in _mapping(qemu.get("dependencies") or {}, "qemu.dependencies").items()]
        self.msr_failures = [(int(failure["index"]), int(str(failure["value"]), 16)) for failure in qemu.get("msr_failures") or ()]
        self.unannounced_msrs = [(int(failure["index"]), int(failure["leaf"])) for failure in qemu.get("msr_unannounced_failures") or ()]
        self.levels = {name: int(level) for name, level in _mapping(qemu.get("levels") or {}, "qemu.levels").items()}
        self.level_raisers = [(int(level), from_hex(mask, "qemu.level_raisers")) for level, mask in qemu.get("level_raisers") or ()]
        self.host_model = self._host_model(data.get("host_model"))
        host = data.get("host")
        self.host = None if host is None else (host.get("vendor"), from_hex(host.get("features"), "host.features"),
                                               from_hex(host.get("listed"), "host.listed"))
        modes = entry.get("modes") or {}
        self.modes = {name: bool((mode or {}).get("supported")) for name, mode in modes.items()}
        custom_models = (modes.get("custom") or {}).get("models") or ()
        names = [model.get("name") for model in custom_models]
        if not names:
            names = list(self.qemu_models)
        self.allowed = {name: self.qemu_models.get(name, 0) & ~self.supported for name in names}
        # domcapabilities' usable= and <blockers> of each model, for the blockers-based partial check
        self.usable = {model.get("name"): model.get("usable") for model in custom_models}
        self.blockers = {model.get("name"): tuple(model.get("blockers") or ()) for model in custom_models
                         if model.get("blockers") is not None}
        self.reported = self._reported_host_model((modes.get("host-model") or {}).get("cpu"))

    def _reported_host_model(self, cpu: Any) -> Optional[Mask]:
        """virCPUExpandFeatures of the host-model CPU domcapabilities reports, when QEMU gave it
        (fallback forbid): what the blockers-based partial check requires features from."""
        if not _is_mapping(cpu) or not _is_mapping(cpu.get("model")) or cpu["model"].get("fallback") != "forbid":
            return None
        model = self.map.models.get(cpu["model"].get("name"))
        if model is None:
            return None
        mask = model.mask
        for feature in cpu.get("features") or ():
            if (feature.get("policy") or "require") in ENABLING:
                mask |= self.map.bit(feature["name"])
            elif feature.get("policy") in DISABLING:
                mask &= ~self.map.bit(feature["name"])
        return mask

    @staticmethod
    def _host_model(value: Any) -> Optional[Tuple[str, Optional[str], Tuple[Tuple[str, str], ...]]]:
        if value is None:
            return None
        value = _mapping(value, "host_model")
        return value["model"], value.get("vendor"), tuple((name, policy) for name, policy in value["features"])

    def model_mask(self, name: str) -> Mask:
        model = self.map.models.get(name)
        if model is None:
            raise GuestWouldNotStart("internal error: Unknown CPU model %s" % name,
                                     hint="use one of the models libvirt knows (the facts' modes.custom.models)")
        return model.mask


_CONTEXTS: "OrderedDict[Tuple[Any, ...], Context]" = OrderedDict()


def _is_mapping(value: Any) -> bool:
    # Facts are JSON: the exact-type test first; the ABC test (slow) only for other mappings.
    return type(value) is dict or isinstance(value, Mapping)  # pylint: disable=unidiomatic-typecheck


def _context_key(entry: Mapping[str, Any]) -> Tuple[Any, ...]:
    """What a Context is built from: the expansion data (by its fingerprint) and the entry's modes."""
    data = entry.get("expansion")
    fingerprint = data.get("fingerprint") if _is_mapping(data) else None
    modes = entry.get("modes") if _is_mapping(entry.get("modes")) else {}
    supported = tuple(sorted((str(name), bool((mode or {}).get("supported")) if _is_mapping(mode) else None)
                             for name, mode in modes.items()))
    custom = modes.get("custom") if _is_mapping(modes.get("custom")) else {}
    return (fingerprint, entry.get("domain_type"), entry.get("arch"), entry.get("libvirt_version"), supported,
            _model_names(custom.get("models") or ()))


def _model_names(models: Any) -> Tuple[Any, ...]:
    try:
        return tuple([model["name"] for model in models])
    except (TypeError, KeyError, IndexError):
        return tuple(model.get("name") if _is_mapping(model) else None for model in models)


def _decoded_context(entry: Mapping[str, Any]) -> Context:
    """Context(entry); expansion data damaged in a way the decoders do not name fails with one message."""
    try:
        return Context(entry)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise ExpansionDataError("the expansion data of virt type %s is damaged (%s: %s); gather the facts again with "
                                 "hostcpu.libvirt.cpu_facts" % (entry.get("domain_type"), type(exc).__name__, exc)) from None


def context_for(entry: Mapping[str, Any]) -> Context:
    """The Context of *entry*, cached by the fingerprints of its expansion data and domcapabilities."""
    if not isinstance(entry, Mapping):
        raise ExpansionDataError("host facts must be a mapping (ansible_facts.hostcpu or one of its virt_types)")
    key = _context_key(entry)
    if key[0] is None:
        return _decoded_context(entry)
    context = _CONTEXTS.get(key)
    if context is None:
        context = _decoded_context(entry)
        _CONTEXTS[key] = context
        while len(_CONTEXTS) > CONTEXT_CACHE_SIZE:
            _CONTEXTS.popitem(last=False)
    return context


# ---------------------------------------------------------------------------------------------
# the guest CPU while libvirt works on it (a virCPUDef)


class GuestCPU:
    """Mutable CPU definition; ``features`` keeps libvirt's order (update in place or append)."""

    def __init__(self, cpu: CPUDict):
        self.rest = {key: cpu[key] for key in ("migratable", "topology", "cache", "maxphysaddr") if key in cpu}
        self.mode = cpu.get("mode", "custom")
        self.match = cpu.get("match")
        self.check = cpu.get("check")
        model = cpu.get("model") or {}
        self.model = model.get("name")
        # virCPUDef's default: a host-model CPU without <model> still has fallback allow inside libvirt
        self.fallback = model.get("fallback") or "allow"
        self.vendor_id = model.get("vendor_id")
        self.vendor = cpu.get("vendor")
        self.features: "OrderedDict[str, str]" = OrderedDict(
            (f["name"], f.get("policy") or "require") for f in cpu.get("features") or ())

    def update_feature(self, name: str, policy: str) -> None:
        self.features[name] = policy

    def add_if_missing(self, name: str, policy: str) -> None:
        if name not in self.features:
            self.features[name] = policy

    def with_policy(self, ctx: Context, *policies: str) -> Mask:
        return ctx.map.mask(name for name, policy in self.features.items() if policy in policies)

    def data(self, ctx: Context) -> Mask:
        """x86ModelFromCPU(cpu, -1): model features + force/require - disable/forbid."""
        mask = ctx.model_mask(self.model) if self.model else 0
        for name, policy in self.features.items():
            if policy in ENABLING:
                mask |= ctx.map.bit(name)
            elif policy in DISABLING:
                mask &= ~ctx.map.bit(name)
        return mask

    def as_dict(self) -> CPUDict:
        cpu: CPUDict = {"mode": self.mode}
        if self.mode == "custom":
            cpu["match"] = self.match
        cpu["check"] = self.check
        cpu.update(self.rest)
        parts = (("name", self.model if self.mode == "custom" else None),
                 ("fallback", self.fallback if self.mode in ("custom", "host-model") else None),
                 ("vendor_id", self.vendor_id))
        model = {key: value for key, value in parts if value is not None}
        if model:
            cpu["model"] = model
        if self.vendor and self.mode == "custom":
            cpu["vendor"] = self.vendor
        cpu["features"] = [{"name": name, "policy": policy} for name, policy in self.features.items()]
        return ordered(cpu)


# ---------------------------------------------------------------------------------------------
# the steps of a start


def _incompatible(message: str, **kwargs: Any) -> GuestWouldNotStart:
    return GuestWouldNotStart("the CPU is incompatible with host CPU: %s" % message, **kwargs)


def _fix(names: Iterable[str]) -> List[Dict[str, str]]:
    return [{"name": name, "policy": "disable"} for name in names]


def check_features_known(ctx: Context, cpu: GuestCPU) -> None:
    for name in cpu.features:
        if name not in ctx.map.index:
            raise GuestWouldNotStart("unsupported configuration: unknown CPU feature: %s" % name,
                                     hint="remove it or use a name from libvirt's CPU map (the facts' expansion.features)")


def check_mode_supported(ctx: Context, cpu: GuestCPU) -> None:
    if not ctx.modes.get(cpu.mode):
        supported = [mode for mode, ok in ctx.modes.items() if ok]
        raise GuestWouldNotStart("unsupported configuration: CPU mode '%s' for %s %s domain on %s host is not supported "
                                 "by hypervisor" % (cpu.mode, ctx.arch, ctx.virt_type, ctx.arch),
                                 hint="use one of the supported modes: %s" % ", ".join(supported))


def check_forbidden(ctx: Context, cpu: GuestCPU) -> None:
    """virCPUCheckForbiddenFeatures: a forbid feature the full host CPU lists by name."""
    if ctx.host is None:
        return
    for name, policy in cpu.features.items():
        if policy == "forbid" and ctx.map.bit(name) & ctx.host[2]:
            raise _incompatible("Host CPU provides forbidden feature '%s'" % name, forbidden_features=[name],
                                hint="the host has '%s'; use policy disable instead of forbid" % name)


def _usable_as_is(ctx: Context, cpu: GuestCPU) -> bool:
    """virQEMUCapsIsCPUUsable: a usable model that enables no feature needs no check."""
    return (bool(cpu.model) and ctx.usable.get(cpu.model) is True
            and all(policy == "disable" for policy in cpu.features.values()))


def _compat_check(ctx: Context, cpu: GuestCPU) -> bool:
    """qemuDomainCheckCPU: whether the old whole-model comparison applies (else the blockers one)."""
    if not cpu.model or ctx.reported is None or cpu.model not in ctx.blockers:
        return True
    model = ctx.map.models.get(cpu.model)
    return model is None or model.compat_check


def _compare_unusable(ctx: Context, cpu: GuestCPU) -> None:
    """virCPUCompareUnusable: QEMU's blockers of the model not disabled by the CPU, then the features
    it requires that the reported host-model CPU does not."""
    missing = [name for name in ctx.blockers[cpu.model] if cpu.features.get(name) != "disable"]
    missing += [name for name, policy in cpu.features.items()
                if policy == "require" and not ctx.map.bit(name) & ctx.reported and name not in missing]
    if missing:
        raise _incompatible("Host CPU does not provide required features: %s" % ", ".join(missing),
                            missing_features=missing, fix=_fix(missing),
                            hint="disable %s (or choose a model the host can run, or check: none)" % ", ".join(missing))


def compare_with_host(ctx: Context, cpu: GuestCPU) -> None:
    """What check='partial' refuses, by the partial-check rule of the host's libvirt."""
    if ctx.rules.partial_check == "blockers":
        if _usable_as_is(ctx, cpu):
            return
        if not _compat_check(ctx, cpu):
            _compare_unusable(ctx, cpu)
            return
    compare_whole_model(ctx, cpu)


def compare_whole_model(ctx: Context, cpu: GuestCPU) -> None:
    """x86Compute(full host CPU, cpu) with failIncompatible: the whole model against the host."""
    if ctx.host is None:
        raise _incompatible("unknown host CPU")
    host_vendor, host, _listed = ctx.host
    if cpu.vendor and (not host_vendor or cpu.vendor != host_vendor):
        raise _incompatible("host CPU vendor does not match required CPU vendor %s" % cpu.vendor,
                            hint="remove the vendor or use the host's vendor %s" % host_vendor)
    force = cpu.with_policy(ctx, "force")
    require = (ctx.model_mask(cpu.model) if cpu.model else 0) | cpu.with_policy(ctx, "require")
    optional = cpu.with_policy(ctx, "optional")
    disable = cpu.with_policy(ctx, "disable")
    forbidden = cpu.with_policy(ctx, "forbid") & host
    if forbidden:
        names = ctx.map.names_of(forbidden)
        raise _incompatible("Host CPU provides forbidden features: %s" % ", ".join(names), forbidden_features=names,
                            hint="use policy disable instead of forbid for %s" % ", ".join(names))
    require &= ~(force | optional | disable)
    missing = require & ~host
    if missing:
        names = ctx.map.names_of(missing)
        raise _incompatible("Host CPU does not provide required features: %s" % ", ".join(names),
                            missing_features=names, fix=_fix(names),
                            hint="disable %s (or choose a model the host can run, or check: none)" % ", ".join(names))
    extra = host & ~(optional | require | disable | force)
    if extra and cpu.match == "strict":
        names = ctx.map.names_of(extra)
        raise _incompatible("Host CPU does not strictly match guest CPU: Extra features: %s" % ", ".join(names),
                            extra_features=names, hint="use match: exact")


def _host_model_data(ctx: Context) -> Mask:
    model, _vendor, features = ctx.host_model
    mask = ctx.model_mask(model)
    for name, policy in features:
        if policy in ENABLING:
            mask |= ctx.map.bit(name)
        elif policy in DISABLING:
            mask &= ~ctx.map.bit(name)
    return mask


def _copy_host_model(ctx: Context, cpu: GuestCPU) -> None:
    """x86UpdateHostModel: the migratable host-model CPU with the domain's features merged in."""
    model, vendor, features = ctx.host_model
    merged: "OrderedDict[str, str]" = OrderedDict(features)
    for name, policy in cpu.features.items():
        merged[name] = policy
    keep_vendor = cpu.mode == "custom"
    cpu.model = model
    cpu.features = merged
    if not keep_vendor:
        cpu.vendor = vendor
    cpu.mode = "custom"
    cpu.match = "exact"


def _disable_removed(ctx: Context, cpu: GuestCPU) -> None:
    info = ctx.map.models.get(cpu.model)
    for name in info.removed if info else ():
        cpu.add_if_missing(name, "disable")


def update_guest(ctx: Context, cpu: GuestCPU) -> None:
    """virCPUUpdate / virCPUx86Update with the migratable host-model CPU."""
    relative = (cpu.mode == "host-model" or cpu.match == "minimum"
                or any(policy == "optional" for policy in cpu.features.values()))
    if relative:
        if ctx.host_model is None:
            raise GuestWouldNotStart("unsupported configuration: unknown host CPU model",
                                     hint="this virt type reports no host-model CPU; use a custom model")
        host_data = _host_model_data(ctx)
        for name, policy in list(cpu.features.items()):
            if policy == "optional":
                cpu.features[name] = "require" if ctx.map.bit(name) & host_data else "disable"
        if cpu.mode == "host-model" or cpu.match == "minimum":
            _copy_host_model(ctx, cpu)
    ctx.model_mask(cpu.model)
    _disable_removed(ctx, cpu)


def translate_model(ctx: Context, cpu: GuestCPU) -> None:
    """virCPUTranslate: a model the hypervisor does not know is replaced (fallback allow) or refused."""
    if cpu.model in ctx.allowed:
        return
    if cpu.fallback != "allow":
        raise GuestWouldNotStart("unsupported configuration: CPU model %s is not supported by hypervisor" % cpu.model,
                                 hint="use a model QEMU knows (the facts' modes.custom.models) or fallback: allow")
    info = ctx.map.models[cpu.model]
    data = cpu.data(ctx)
    signature = None
    if info.signatures:
        family, model, steppings = info.signatures[0]
        signature = (family, model, steppings[0] if steppings else 0)
    translated = decode(ctx.map, data, info.vendor, signature, guest=True, allowed=ctx.allowed, rules=ctx.rules)
    features: "OrderedDict[str, str]" = OrderedDict(translated.features)
    for name, policy in cpu.features.items():
        features[name] = policy
    cpu.model = translated.model
    cpu.features = features


def filter_for_qemu(ctx: Context, cpu: GuestCPU) -> None:
    """Drop what libvirt never gives QEMU: ignored features, and (before 10.5) disabled features QEMU
    does not know; later versions keep those in the definition and leave them off QEMU's -cpu."""
    drop_unknown = not ctx.rules.keeps_unknown_disabled_features
    for name, policy in list(cpu.features.items()):
        unknown_disabled = policy in DISABLING and ctx.map.bit(name) & ctx.unknown
        if name in ctx.rules.ignored_features or (unknown_disabled and drop_unknown):
            del cpu.features[name]


def _qemu_base(ctx: Context, cpu: GuestCPU) -> Mask:
    if cpu.mode in PASSTHROUGH_MODES:
        return ctx.migratable if cpu.rest.get("migratable", True) else ctx.supported
    if cpu.model not in ctx.qemu_models:
        raise ExpansionDataError("the expansion data has no QEMU expansion of model '%s'; gather the facts again"
                                 % cpu.model)
    return ctx.qemu_models[cpu.model]


def _msr_value(ctx: Context, enabled: Mask, index: int) -> Tuple[int, List[str]]:
    value = 0
    names = []
    for name, (msr_index, bit) in ctx.msr.items():
        if msr_index == index and enabled & ctx.map.bit(name):
            value |= 1 << bit
            names.append(name)
    return value, names


def _check_msr_failures(ctx: Context, cpu: GuestCPU, enabled: Mask) -> None:
    """QEMU dies when KVM refuses the value of an MSR (nested KVM and MSR 0x10a, arch-capabilities)."""
    for index, failed_value in ctx.msr_failures:
        parent = MSR_PARENTS.get(index)
        if parent and not enabled & ctx.map.bit(parent):
            continue
        value, names = _msr_value(ctx, enabled, index)
        named_bits = 0
        for msr_index, bit in ctx.msr.values():
            if msr_index == index:
                named_bits |= 1 << bit
        if cpu.mode in PASSTHROUGH_MODES and cpu.rest.get("migratable") is False:
            value |= failed_value & ~named_bits
        if value:
            fix_names = [parent] if parent else names
            raise _msr_write_refused(index, value, names, fix_names, "KVM on this host refuses MSR 0x%x (%s); disable %s to start the "
                                     "guest" % (index, ", ".join(names) or "unnamed bits", " or ".join(fix_names)))


def _msr_write_refused(index: int, value: int, names: List[str], fix_names: List[str], hint: str) -> GuestWouldNotStart:
    """QEMU's death on an MSR value KVM refuses, as libvirt reports it."""
    return GuestWouldNotStart("internal error: qemu unexpectedly closed the monitor: qemu-system-x86_64: error: failed to set MSR "
                              "0x%x to 0x%x" % (index, value), missing_features=names, fix=_fix(fix_names), hint=hint)


def cpuid_level(ctx: Context, cpu: GuestCPU, requested: Mask) -> Optional[int]:
    """QEMU's CPUID level of the guest: its model's, raised by the features asked for (None: not measured)."""
    level = ctx.levels.get("max" if cpu.mode in PASSTHROUGH_MODES else cpu.model or "")
    if level is None:
        return None
    for raised, mask in ctx.level_raisers:
        if requested & mask and raised > level:
            level = raised
    return level


def _check_unannounced_msrs(ctx: Context, cpu: GuestCPU, requested: Mask, enabled: Mask) -> None:
    """QEMU dies when KVM refuses an MSR value because the guest's CPUID stops below the leaf announcing the MSR."""
    for index, leaf in ctx.unannounced_msrs:
        parent = MSR_PARENTS.get(index)
        value, names = _msr_value(ctx, enabled, index)
        if not value or (parent and not enabled & ctx.map.bit(parent)):
            continue
        level = cpuid_level(ctx, cpu, requested)
        if level is None or level >= leaf:
            continue
        fix_names = [parent] if parent else names
        raise _msr_write_refused(index, value, names, fix_names,
                                 "KVM on this host refuses MSR 0x%x (%s) unless the guest's CPUID announces %s at leaf %d, and "
                                 "this CPU's CPUID level is %d (model %s); disable %s, or use a CPU model of CPUID level %d or "
                                 "more" % (index, ", ".join(names), parent or "it", leaf, level, cpu.model or cpu.mode,
                                           " or ".join(fix_names), leaf))


def qemu_features(ctx: Context, cpu: GuestCPU) -> Tuple[Mask, Mask]:
    """The features QEMU enables and the ones it reports unavailable, for the -cpu libvirt builds."""
    plus = cpu.with_policy(ctx, *ENABLING)
    minus = cpu.with_policy(ctx, *DISABLING)
    unknown = [name for name, policy in cpu.features.items() if policy in ENABLING and ctx.map.bit(name) & ctx.unknown]
    if unknown:
        cpu_type = "%s-%s-cpu" % ({"host-passthrough": "host", "maximum": "max"}.get(cpu.mode, cpu.model), ctx.arch)
        raise GuestWouldNotStart("internal error: qemu unexpectedly closed the monitor: qemu-system-%s: can't apply global "
                                 "%s.%s=on: Property '%s.%s' not found"
                                 % (ctx.arch, cpu_type, QEMU_FEATURE_NAMES.get(unknown[0], unknown[0]), cpu_type,
                                    QEMU_FEATURE_NAMES.get(unknown[0], unknown[0])),
                                 missing_features=unknown,
                                 hint="QEMU does not know %s: remove %s from the CPU" % (", ".join(unknown), "it" if len(unknown) == 1 else "them"))
    requested = (_qemu_base(ctx, cpu) | plus) & ~minus
    cleared_by_user = 0
    for parent, children in ctx.dependencies:
        if not requested & parent:
            cleared_by_user |= requested & children & plus
            requested &= ~children
    enabled = requested & ctx.supported
    disabled = (requested & ~ctx.supported) | cleared_by_user
    _check_msr_failures(ctx, cpu, enabled)
    _check_unannounced_msrs(ctx, cpu, requested, enabled)
    return enabled, disabled


def verify_invtsc(ctx: Context, cpu: GuestCPU, enabled: Mask) -> None:
    """qemuProcessVerifyCPUFeatures."""
    invtsc = ctx.map.bit("invtsc")
    if cpu.mode == "custom" and not cpu.model:
        return
    if cpu.data(ctx) & invtsc and not enabled & invtsc:
        raise GuestWouldNotStart("unsupported configuration: host doesn't support invariant TSC",
                                 missing_features=["invtsc"], fix=_fix(["invtsc"]), hint="remove the invtsc feature")


def update_live(ctx: Context, cpu: GuestCPU, enabled: Mask, disabled: Mask) -> None:
    """virCPUx86UpdateLive: reconcile the definition with what QEMU really did."""
    data = cpu.data(ctx)
    # Expected "disable": every feature outside the definition's data, or for host-passthrough and
    # maximum only the ones the definition disables.
    known = (1 << len(ctx.map.names)) - 1
    if cpu.mode in PASSTHROUGH_MODES:
        expected_disabled = cpu.with_policy(ctx, "disable") & ~data
    else:
        expected_disabled = known & ~data
    added_mask = expected_disabled & enabled & known
    removed_mask = (disabled | (data & ~enabled)) & known
    added: List[str] = []
    removed: List[str] = []
    model = ctx.map.models.get(cpu.model) if cpu.model else None
    # added='yes' features the definition does not name: check='full' lets the hypervisor decide
    ignored = (model.added if model else 0) & ~(data | cpu.with_policy(ctx, "disable"))
    full = cpu.check == "full"
    changed = added_mask | removed_mask
    while changed:
        lowest = changed & -changed
        changed ^= lowest
        name = ctx.map.names[lowest.bit_length() - 1]
        if added_mask & lowest:
            if full and not ignored & lowest:
                added.append(name)
            else:
                cpu.update_feature(name, "require")
        if removed_mask & lowest:
            if full and not ignored & lowest:
                removed.append(name)
            else:
                cpu.update_feature(name, "disable")
    if cpu.model:
        _disable_removed(ctx, cpu)
    if added or removed:
        parts = []
        if added:
            parts.append("extra features: %s" % ",".join(added))
        if removed:
            parts.append("missing features: %s" % ",".join(removed))
        raise GuestWouldNotStart("operation failed: guest CPU doesn't match specification: %s" % ", ".join(parts),
                                 missing_features=removed, extra_features=added, fix=_fix(removed) or None,
                                 hint="use check: partial (or none) to let libvirt adjust the CPU, or disable %s"
                                      % ", ".join(removed) if removed else "use check: partial (or none)")


def guest_cpu(cpu: Optional[CPUDict], ctx: Context) -> GuestCPU:
    """The domain's CPU as libvirt holds it after define (refused as libvirt refuses it).

    A host-model ``<model fallback='...'/>`` is not written back to the XML, but the running
    daemon keeps it in the definition it starts the guest from, so it counts here.
    """
    validate_cpu(cpu or {})
    guest = GuestCPU(normalize_cpu(cpu or {}, ctx.virt_type, ctx.libvirt_version))
    given_fallback = ((cpu or {}).get("model") or {}).get("fallback")
    if guest.mode == "host-model" and given_fallback:
        guest.fallback = given_fallback
    return guest


def prepare_for_qemu(ctx: Context, guest: GuestCPU) -> GuestCPU:
    """qemuProcessStartValidate + qemuProcessUpdateGuestCPU: the CPU libvirt gives QEMU."""
    check_features_known(ctx, guest)
    check_mode_supported(ctx, guest)
    if guest.check != "none":
        check_forbidden(ctx, guest)
    if guest.mode not in PASSTHROUGH_MODES:
        if guest.check == "partial":
            compare_with_host(ctx, guest)
        update_guest(ctx, guest)
        translate_model(ctx, guest)
        guest.fallback = "forbid"
    filter_for_qemu(ctx, guest)
    return guest


def qemu_cpu_option(guest: GuestCPU, ctx: Optional[Context] = None) -> str:
    """The value of QEMU's -cpu option for the prepared CPU (qemuBuildCpuModelArgStr + cache and
    maxphysaddr; a domain's clock timers, Hyper-V and KVM features would sit before the cache ones).
    With *ctx*, disabled features its QEMU does not know are left off (they are implicitly off)."""
    unknown = ctx.unknown if ctx is not None else 0
    head = {"host-passthrough": "host", "maximum": "max"}.get(guest.mode, guest.model or "")
    parts = [head]
    if guest.mode in PASSTHROUGH_MODES and guest.rest.get("migratable") is not None:
        parts.append("migratable=%s" % ("on" if guest.rest["migratable"] else "off"))
    if guest.vendor_id:
        parts.append("vendor=%s" % guest.vendor_id)
    for name, policy in guest.features.items():
        if policy in DISABLING and ctx is not None and ctx.map.bit(name) & unknown:
            continue
        if policy in ENABLING + DISABLING:
            parts.append("%s=%s" % (QEMU_FEATURE_NAMES.get(name, name), "on" if policy in ENABLING else "off"))
    return ",".join(parts + _cache_and_address_options(guest))


def _cache_and_address_options(guest: GuestCPU) -> List[str]:
    """qemuBuildCpuCommandLine's cache and maxphysaddr options (after any timer/Hyper-V/KVM ones)."""
    options = []
    cache = guest.rest.get("cache") or {}
    passthrough = guest.mode in PASSTHROUGH_MODES
    if cache.get("mode") == "emulate":
        options += ["l3-cache=on"] + (["host-cache-info=off"] if passthrough else [])
    elif cache.get("mode") == "passthrough":
        options += ["host-cache-info=on", "l3-cache=off"]
    elif cache.get("mode") == "disable":
        options += (["host-cache-info=off"] if passthrough else []) + ["l3-cache=off"]
    address = guest.rest.get("maxphysaddr") or {}
    if address.get("mode") == "passthrough":
        options.append("host-phys-bits=on")
        if address.get("limit"):
            options.append("host-phys-bits-limit=%d" % address["limit"])
    elif address.get("mode") == "emulate":
        options.append("phys-bits=%d" % address["bits"] if address.get("bits") else "host-phys-bits=off")
    return options


def finish_live(ctx: Context, guest: GuestCPU, enabled: Mask, disabled: Mask) -> GuestCPU:
    """qemuProcessUpdateAndVerifyCPU: the live CPU once QEMU enabled *enabled* and filtered *disabled*."""
    verify_invtsc(ctx, guest, enabled)
    if guest.mode == "custom" or guest.check == "full":
        update_live(ctx, guest, enabled, disabled)
        guest.check = "full"
    return guest


def predict_live_cpu(cpu: Optional[CPUDict], entry: Mapping[str, Any]) -> CPUDict:
    """The CPU libvirt's live XML shows after a guest with *cpu* starts on *entry*'s host and virt type.

    *cpu* is the domain's CPU dict (``{}`` or None: no ``<cpu>``, libvirt's default qemu64).
    Raises ``GuestWouldNotStart`` when libvirt or QEMU would refuse to start it, ``CPUDefinitionError``
    when libvirt would refuse to define it, ``ExpansionDataError`` when the facts cannot tell.
    """
    ctx = context_for(entry)
    guest = prepare_for_qemu(ctx, guest_cpu(cpu, ctx))
    enabled, disabled = qemu_features(ctx, guest)
    return finish_live(ctx, guest, enabled, disabled).as_dict()


def live_cpu_or_refusal(cpu: Optional[CPUDict], entry: Mapping[str, Any]) -> Dict[str, Any]:
    """``predict_live_cpu`` without raising for a refusal: ``{cpu, error, fix}``.

    ``cpu`` is the predicted live CPU (None when libvirt or QEMU would refuse the start), ``error``
    the refusal as ``GuestWouldNotStart`` words it and ``fix`` its features to disable (when known).
    Invalid CPUs and facts that cannot tell still raise CPUError.
    """
    try:
        return {"cpu": predict_live_cpu(cpu, entry), "error": None, "fix": None}
    except GuestWouldNotStart as exc:
        return {"cpu": None, "error": str(exc), "fix": exc.fix}
