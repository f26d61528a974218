# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Will this host accept this CPU? Checks a CPU dict before anything is written.

Pure functions over the CPU dict, one ``virt_types`` entry of the facts
(``_facts.parse_domain_capabilities``) and libvirt's CPU map text. Each problem is one message
that names it and the fix; ``validate_for_host`` returns them all at once (errors refuse the
change, warnings are reported).

What libvirt 9.0 does at start, and so what is an error here (measured on libvirt 9.0 / QEMU 7.2):

* a mode the domain capabilities do not support: the start fails;
* a model QEMU does not know: the start fails ("Unknown CPU model"), whatever ``fallback`` says;
* with ``check='partial'`` (libvirt's default for host-model, and for custom under kvm) libvirt
  compares the CPU with its "full" host CPU before starting (qemuProcessUpdateGuestCPU) and
  refuses features the host lacks ("Host CPU does not provide required features: svm") or
  forbidden features it has. That full host CPU is, for kvm, the host's CPUID CPU
  (``compareCPU``'s host) plus every required feature of the expanded host-model CPU, and for
  qemu (TCG) the host-model CPU (``compareHypervisorCPU``'s). The module asks libvirt for that
  comparison; ``start_compare_error`` reads the answer. ``usable='no'`` in the domain
  capabilities does not predict it (Westmere and kvm64 are usable='no' here and start under
  kvm); ``fallback`` does not help either (it only replaces models the hypervisor does not
  know). With ``check='none'`` a usable='no' model starts with the missing features disabled:
  a warning;
* a feature name libvirt's CPU map does not know: define accepts it, the start fails.
"""

from __future__ import annotations

import difflib
from typing import Any, Dict, FrozenSet, List, NamedTuple, Optional, Sequence, Set

from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import (
    MIGRATABLE_MODES,
    TOPOLOGY_KEYS,
    CPUDict,
    cpu_from_xml,
    normalize_cpu,
    validate_cpu,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError, brief
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts import (
    KNOWN_FIXES,
    custom_model,
    host_model_cpu,
    mode_supported,
    usable_models,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._versions import parse_version, rules_for
from ansible_collections.hostcpu.libvirt.plugins.module_utils._xml import parse_xml

CPU_MAP_DIR = "/usr/share/libvirt/cpu_map"
# The file of libvirt's CPU map that lists an architecture's feature names.
FEATURE_FILES = {"x86_64": "x86_features.xml", "i686": "x86_features.xml", "aarch64": "arm_features.xml"}
REQUIRED_FEATURES_MARK = "does not provide required features:"
FORBIDDEN_FEATURES_MARKS = ("provides forbidden features:", "provides forbidden feature")
DISABLING_POLICIES = ("disable", "forbid")
MAX_LISTED = 30


class CPUValidationError(CPUError):
    """The CPU cannot be used for these domains on this host: every domain's reasons (*refused*),
    and a message that counts and names them all before it gives the reasons (which may be cut)."""

    def __init__(self, refused: Dict[str, List[str]], total: int, what: str = "cannot take this CPU") -> None:
        super().__init__(refused, total, what)
        self.refused = refused
        self.total = total
        self.what = what

    def __str__(self) -> str:
        reasons = brief(" | ".join("%s: %s" % (name, error) for name, errors in self.refused.items() for error in errors))
        if self.total == 1:
            return "nothing was changed: %s" % reasons
        return ("nothing was changed: %d of %d domains %s (%s; each domain's reasons are in domains[].error): %s"
                % (len(self.refused), self.total, self.what, ", ".join(self.refused), reasons))


class KnownFeatures(NamedTuple):
    """Feature names libvirt knows for an architecture, and QEMU's aliases for them."""
    names: FrozenSet[str]
    aliases: Dict[str, str]
    source: str


class Findings(NamedTuple):
    errors: List[str]
    warnings: List[str]


# ---------------------------------------------------------------------------------------------
# inputs


def feature_file(arch: Optional[str]) -> Optional[str]:
    """The CPU map file with the feature names of *arch*, or None when libvirt has none."""
    name = FEATURE_FILES.get(arch or "")
    return None if name is None else "%s/%s" % (CPU_MAP_DIR, name)


def known_features(cpu_map_xml: str, source: str = "libvirt's CPU map") -> KnownFeatures:
    """Feature names (and ``<alias source='qemu'>`` names) of a ``cpu_map/*_features.xml``."""
    root = parse_xml(cpu_map_xml, source)
    names = set()
    aliases = {}
    for feature_el in root.iter("feature"):
        name = feature_el.get("name")
        if not name:
            continue
        names.add(name)
        for alias_el in feature_el.findall("alias"):
            if alias_el.get("name"):
                aliases[alias_el.get("name")] = name
    return KnownFeatures(frozenset(names), aliases, source)


# ---------------------------------------------------------------------------------------------
# wording


def _quoted(names: Sequence[str]) -> str:
    shown = ["'%s'" % name for name in names[:MAX_LISTED]]
    if len(names) > MAX_LISTED:
        shown.append("... (%d more)" % (len(names) - MAX_LISTED))
    return ", ".join(shown)


def did_you_mean(name: str, candidates: Sequence[str]) -> str:
    """"; did you mean 'x'?" for the closest candidates, or ''."""
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    if not close:
        lowered = {candidate.lower(): candidate for candidate in candidates}
        close = [lowered[name.lower()]] if name.lower() in lowered else []
    if not close:
        return ""
    return "; did you mean %s?" % " or ".join("'%s'" % item for item in close)


def target_text(virt_type: str, entry: Dict[str, Any]) -> str:
    return "%s guests on this host (%s, machine %s)" % (virt_type, entry.get("emulator") or "QEMU", entry.get("machine") or "default")


def _features_mapping(names: Sequence[str], policy: str = "disable") -> str:
    return "{%s}" % ", ".join("%s: %s" % (name, policy) for name in names)


# ---------------------------------------------------------------------------------------------
# single checks


def check_definition(cpu: CPUDict) -> List[str]:
    """libvirt's grammar (``_cpu_model.validate_cpu``): match outside custom, vendor without model, ..."""
    try:
        validate_cpu(cpu)
    except CPUError as exc:
        return [str(exc)]
    return []


def check_mode(normalized: CPUDict, virt_type: str, entry: Dict[str, Any]) -> List[str]:
    mode = normalized["mode"]
    rules = rules_for(entry.get("libvirt_version"))
    if mode not in rules.modes:
        return ["libvirt %s does not know CPU mode '%s' (it refuses the definition: Invalid mode attribute); use one of "
                "its modes: %s" % (entry.get("libvirt_version"), mode, ", ".join(rules.modes))]
    if not mode_supported(entry, mode):
        supported = [name for name, value in entry["modes"].items() if value.get("supported")]
        return ["CPU mode '%s' is not supported for %s; use one of the supported modes: %s"
                % (mode, target_text(virt_type, entry), ", ".join(supported) or "none")]
    migratable = normalized.get("migratable")
    offered = entry["modes"][mode].get("migratable") or []
    if migratable is not None and offered and ("on" if migratable else "off") not in offered:
        return ["migratable: %s is not supported with mode %s for %s; libvirt offers migratable %s"
                % ("true" if migratable else "false", mode, target_text(virt_type, entry), " or ".join(offered))]
    return []


def _disabled_names(cpu: CPUDict) -> List[str]:
    return [f["name"] for f in cpu.get("features") or [] if (f.get("policy") or "require") in DISABLING_POLICIES]


def _usable_hint(entry: Dict[str, Any]) -> str:
    usable = usable_models(entry)
    return "models usable here: %s" % (", ".join(usable) if usable else "none (use host-model or check: none)")


def _unusable_model(name: str, normalized: CPUDict, virt_type: str, entry: Dict[str, Any]) -> Findings:
    """usable='no' alone does not predict a failed start (libvirt compares with its own host CPU,
    see ``start_compare_error``); with check none it means features are silently disabled."""
    if normalized["check"] != "none":
        return Findings([], [])
    return Findings([], ["CPU model '%s' is not fully usable for %s: with check 'none' the guest starts with the "
                         "features the host lacks disabled" % (name, target_text(virt_type, entry))])


def check_model(normalized: CPUDict, virt_type: str, entry: Dict[str, Any]) -> Findings:
    """A custom CPU's model must be known to QEMU; a usable='no' model with check none gets a warning."""
    if normalized["mode"] != "custom":
        return Findings([], [])
    name = normalized["model"]["name"]
    known = [model["name"] for model in entry["modes"]["custom"]["models"]]
    if not known:
        return Findings([], [])
    model = custom_model(entry, name)
    if model is None:
        return Findings(["CPU model '%s' is not known to QEMU for %s%s (%s)"
                         % (name, target_text(virt_type, entry), did_you_mean(name, known), _usable_hint(entry))], [])
    if model.get("usable") is False:
        return _unusable_model(name, normalized, virt_type, entry)
    return Findings([], [])


def _feature_suggestion(name: str, names: Set[str], known: KnownFeatures) -> str:
    """Close libvirt names first; else the libvirt names of close QEMU aliases."""
    suggestion = did_you_mean(name, sorted(names))
    if suggestion:
        return suggestion
    close_aliases = difflib.get_close_matches(name, sorted(known.aliases), n=3, cutoff=0.6)
    libvirt_names = list(dict.fromkeys(known.aliases[alias] for alias in close_aliases))
    return did_you_mean(name, libvirt_names) if not libvirt_names else "; did you mean %s?" % " or ".join(
        "'%s'" % item for item in libvirt_names)


def check_feature_names(cpu: CPUDict, known: Optional[KnownFeatures], entry: Optional[Dict[str, Any]] = None) -> List[str]:
    """Every feature name must be one libvirt knows (its CPU map, or this host's host-model CPU)."""
    if known is None:
        return []
    host_model = host_model_cpu(entry) if entry else None
    names = set(known.names) | {f["name"] for f in (host_model or {}).get("features") or []}
    errors = []
    for feature in cpu.get("features") or []:
        name = feature.get("name")
        if not isinstance(name, str) or name in names:
            continue
        if name in known.aliases:
            errors.append("CPU feature '%s' is QEMU's name; libvirt calls it '%s': use name: %s"
                          % (name, known.aliases[name], known.aliases[name]))
        else:
            errors.append("unknown CPU feature '%s' (not in %s)%s" % (name, known.source, _feature_suggestion(name, names, known)))
    return errors


TOPOLOGY_NEEDED = ("sockets", "cores", "threads")
X86_ARCHES = ("x86_64", "i686")


def check_topology(normalized: CPUDict, max_vcpus: Optional[int], libvirt_version: Optional[Sequence[int]] = None) -> List[str]:
    """libvirt refuses at define a topology that does not multiply out to the domain's maximum vCPU
    count (qemuValidateDomainCpuCount; clusters count from libvirt 10.1, which knows them)."""
    topology = normalized.get("topology")
    if not topology:
        return []
    if any(not topology.get(key) for key in TOPOLOGY_NEEDED):
        return []  # validate_cpu names the missing ones
    counted = [key for key in TOPOLOGY_KEYS if key in topology and (key != "clusters" or rules_for(libvirt_version).topology_clusters)]
    product = 1
    for key in counted:
        product *= topology[key]
    if max_vcpus is None or product == max_vcpus:
        return []
    shown = " ".join("%s=%d" % (key, topology[key]) for key in counted)
    return ["the CPU topology %s gives %d vCPUs but the domain's <vcpu> (its maximum) is %d; libvirt refuses that at "
            "define (\"CPU topology doesn't match maximum vcpu count\"): set a topology whose product is %d, e.g. "
            "topology: {sockets: 1, cores: %d, threads: 1}, or change the domain's <vcpu> to %d"
            % (shown, product, max_vcpus, max_vcpus, max_vcpus, product)]


def arch_features(arch: Optional[str], known: Optional[KnownFeatures]) -> Optional[KnownFeatures]:
    """The feature names to check a CPU of *arch* against: libvirt's CPU map on this host, or, for an
    architecture without one there (ppc64, s390x, arm...), none beyond the host-model CPU's, so that
    an x86 name is not written into such a domain."""
    if known is not None or arch in X86_ARCHES:
        return known
    return KnownFeatures(frozenset(), {}, "the features libvirt lists for %s guests on this host (it has no CPU map of "
                                          "%s features; only the host-model CPU's features are known)" % (arch, arch))


# ---------------------------------------------------------------------------------------------
# all checks


def validate_for_host(cpu: CPUDict, virt_type: str, entry: Optional[Dict[str, Any]] = None,
                      known: Optional[KnownFeatures] = None, libvirt_version: Optional[Sequence[int]] = None) -> Findings:
    """Every reason this host would refuse *cpu* for a domain of *virt_type*, and the warnings.

    *entry* is the domain capabilities entry for the domain's emulator, arch, machine and virt
    type (None: only the grammar and the feature names are checked).
    """
    errors = check_definition(cpu)
    if errors:
        return Findings(errors, [])
    errors = check_feature_names(cpu, known, entry)
    warnings: List[str] = []
    if entry is not None:
        normalized = normalize_cpu(cpu, virt_type, tuple(libvirt_version) if libvirt_version else None)
        errors += check_mode(normalized, virt_type, entry)
        if not errors:
            model_findings = check_model(normalized, virt_type, entry)
            errors += model_findings.errors
            warnings += model_findings.warnings
    return Findings(errors, warnings)


def host_problems(cpu: CPUDict, virt_type: str, entry: Dict[str, Any], partial: bool = False) -> List[str]:
    """The errors of ``validate_for_host`` for *cpu* on the host of one facts entry (``virt_types.<virt type>``):
    libvirt's grammar, a mode the host's libvirt or virt type does not support, a model QEMU does not
    know, and feature names the host's CPU map does not know (when the facts carry that map, i.e.
    expansion data; the module checks them on the host in any case).

    *partial*: *cpu* is a change that domain_cpu merges into a domain's CPU, so only the mode and
    the model it names are checked (the merged CPU is validated by domain_cpu itself).
    """
    if not cpu:
        return []
    version = parse_version(entry.get("libvirt_version"))
    if not partial:
        return validate_for_host(cpu, virt_type, entry, facts_features(entry), version).errors
    errors = check_definition({"mode": cpu["mode"]}) if cpu.get("mode") else []
    if cpu.get("mode") and not errors:
        errors += check_mode(normalize_cpu({"mode": cpu["mode"]}, virt_type, version), virt_type, entry)
    name = (cpu.get("model") or {}).get("name")
    if name and not errors:
        errors += check_model(normalize_cpu({"mode": "custom", "model": {"name": name}}, virt_type, version), virt_type, entry).errors
    return errors + check_feature_names(cpu, facts_features(entry), entry)


def facts_features(entry: Dict[str, Any]) -> Optional[KnownFeatures]:
    """The feature names of the host's own CPU map, as its facts carry them (expansion data), or None."""
    expansion = entry.get("expansion")
    names = expansion.get("features") if isinstance(expansion, dict) else None
    if not isinstance(names, list):
        return None
    return KnownFeatures(frozenset(name for name in names if isinstance(name, str)), {},
                         "the CPU map of libvirt %s on that host" % entry.get("libvirt_version"))


def raise_for(findings_by_domain: Dict[str, Findings], total: Optional[int] = None) -> None:
    """One CPUValidationError naming every domain with errors (of *total* domains), when there are any."""
    refused = {name: list(findings.errors) for name, findings in findings_by_domain.items() if findings.errors}
    if refused:
        raise CPUValidationError(refused, total if total is not None else len(findings_by_domain))


# ---------------------------------------------------------------------------------------------
# libvirt's pre-start comparison with the host CPU


def needs_start_compare(normalized: CPUDict) -> bool:
    """Whether libvirt compares this (normalised) CPU with the host CPU before a start."""
    return normalized["mode"] not in MIGRATABLE_MODES and normalized.get("check") == "partial"


def start_compare_error(message: Optional[str], provided_anyway: Sequence[str] = (),
                        where: str = "this host", usable: Sequence[str] = ()) -> Optional[str]:
    """The refusal libvirt will give at start, from a compareCPU/compareHypervisorCPU failure.

    *provided_anyway*: features the hypervisor gives although the compared host CPU lacks them
    (for kvm the required features of the expanded host-model CPU); required features among them
    are no reason to refuse. None when nothing is left (or *message* is not a CPU incompatibility).
    """
    if not message or "incompatible with host cpu" not in message.lower():
        return None
    provided = set(provided_anyway)
    usable_hint = "; models usable here: %s" % ", ".join(usable) if usable else ""
    if REQUIRED_FEATURES_MARK in message.lower():
        missing = [name for name in _listed_features(message, REQUIRED_FEATURES_MARK) if name not in provided]
        if not missing:
            return None
        return ("libvirt would refuse to start it on %s: the host does not provide required features %s. Disable them "
                "(features: %s), set check: none (they are then disabled at start), or pick another model%s"
                % (where, ", ".join(missing), _features_mapping(missing), usable_hint))
    reason = message.split(":", 1)[1].strip() if ":" in message else message
    hint = start_failure_hint(message)
    return "libvirt would refuse to start it on %s: %s%s" % (where, reason, (". Fix: %s" % hint) if hint else "")


def forbidden_but_provided(normalized: CPUDict, provided_anyway: Sequence[str]) -> List[str]:
    """Features the CPU forbids that the hypervisor gives anyway (libvirt refuses the start)."""
    provided = set(provided_anyway)
    return [f["name"] for f in normalized.get("features") or [] if f.get("policy") == "forbid" and f["name"] in provided]


# ---------------------------------------------------------------------------------------------
# after a failed start


def _listed_features(message: str, marker: str) -> List[str]:
    """The comma-separated names after *marker* (matched case-insensitively) in *message*."""
    tail = message[message.lower().index(marker) + len(marker):].split("\n", 1)[0]
    return [name.strip().strip("'.") for name in tail.split(",") if name.strip().strip("'.")]


def start_failure_hint(message: str) -> str:
    """What to change when libvirt or QEMU refused to start a guest with its new CPU ('' if unknown)."""
    lowered = message.lower()
    for fix in KNOWN_FIXES:
        if any(marker in lowered for marker in fix["markers"]):
            return ("QEMU cannot give the feature '%s' on this host (nested KVM refuses its MSR); disable it: "
                    "features: {%s: disable}" % (fix["feature"], fix["feature"]))
    if REQUIRED_FEATURES_MARK in lowered:
        missing = _listed_features(message, REQUIRED_FEATURES_MARK)
        return ("the host does not provide %s: disable them (features: %s), set check: none, or pick a model "
                "the host can run" % (", ".join(missing), _features_mapping(missing)))
    for marker in FORBIDDEN_FEATURES_MARKS:
        if marker in lowered:
            present = _listed_features(message, marker)
            return ("the host has %s, which the CPU forbids: use policy disable instead of forbid (features: %s)"
                    % (", ".join(present), _features_mapping(present)))
    return ""


def required_feature_names(cpu_xml: Optional[str]) -> List[str]:
    """Names of the features with policy require in a <cpu> XML (an expanded host-model CPU)."""
    if not cpu_xml:
        return []
    return [f["name"] for f in cpu_from_xml(cpu_xml).get("features") or [] if (f.get("policy") or "require") == "require"]
