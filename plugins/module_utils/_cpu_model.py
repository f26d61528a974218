# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The CPU dict of design.md and libvirt's ``<cpu>`` element, one to one.

``cpu_from_xml`` reads what libvirt prints, ``cpu_to_xml`` prints what libvirt would print
(attribute and child order, single quotes), ``validate_cpu`` refuses what libvirt refuses,
``normalize_cpu`` fills in the defaults libvirt stores on define, so two CPUs compare equal
exactly when libvirt would store the same definition.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError
from ansible_collections.hostcpu.libvirt.plugins.module_utils._versions import rules_for
from ansible_collections.hostcpu.libvirt.plugins.module_utils._xml import parse_xml

CPUDict = Dict[str, Any]

MODES = ("custom", "host-model", "host-passthrough", "maximum")
MATCHES = ("exact", "minimum", "strict")
CHECKS = ("none", "partial", "full")
FALLBACKS = ("allow", "forbid")
POLICIES = ("force", "require", "optional", "disable", "forbid")
CACHE_MODES = ("emulate", "passthrough", "disable")
MAXPHYSADDR_MODES = ("emulate", "passthrough")
TOPOLOGY_KEYS = ("sockets", "dies", "clusters", "cores", "threads")
REQUIRED_TOPOLOGY_KEYS = ("sockets", "cores", "threads")
MIGRATABLE_MODES = ("host-passthrough", "maximum")
MODEL_NAME_MODES = ("custom",)
FALLBACK_MODES = ("custom", "host-model")
KEY_ORDER = ("mode", "match", "check", "migratable", "model", "vendor", "topology", "cache",
             "maxphysaddr", "features")
# What libvirt stores for a domain of an architecture without <cpu> when it cannot be asked (XML mode,
# a read-only connection): QEMU's default CPU type of its pc machines. On a host the module asks libvirt.
KNOWN_DEFAULT_MODELS = {"x86_64": "qemu64", "i686": "qemu32"}
# The default of normalize_cpu and plan_cpu when no default model is given (x86_64 guests).
DEFAULT_X86_MODEL = KNOWN_DEFAULT_MODELS["x86_64"]
EMPTY_CUSTOM_KEYS = {"mode", "match", "check"}
# libvirt's schema (cputypes.rng featureName) for feature names; CPU model and vendor names follow it too.
NAME_PATTERN = re.compile(r"[a-zA-Z0-9\-_.]+")
# cpu_conf.c: vendor_id is 12 bytes, no ',' (it goes on QEMU's command line).
VENDOR_ID_PATTERN = re.compile(r"[ -+\--~]{12}")
# libvirt reads topology counts and cache levels as unsigned int, maxphysaddr bits as int.
UINT_MAX = 4294967295
INT_MAX = 2147483647


class CPUDefinitionError(CPUError):
    """A CPU definition that libvirt would refuse; ``reason`` is libvirt's own words when they differ from the message."""

    def __init__(self, message: str, reason: Optional[str] = None):
        super().__init__(message)
        self.reason = reason or message


# ---------------------------------------------------------------------------------------------
# XML -> dict


def _int_attr(element, name: str, where: str) -> Optional[int]:
    value = element.get(name)
    if value is None:
        return None
    try:
        return int(value, 0)
    except ValueError:
        raise CPUDefinitionError("<%s %s='%s'> is not a whole number" % (where, name, value)) from None


def _read_model(cpu_el) -> Optional[Dict[str, Any]]:
    model_el = cpu_el.find("model")
    if model_el is None:
        return None
    model: Dict[str, Any] = {}
    name = (model_el.text or "").strip()
    if name:
        model["name"] = name
    for attr in ("fallback", "vendor_id"):
        if model_el.get(attr) is not None:
            model[attr] = model_el.get(attr)
    return model or None


def _read_topology(cpu_el) -> Optional[Dict[str, int]]:
    topo_el = cpu_el.find("topology")
    if topo_el is None:
        return None
    return {key: _int_attr(topo_el, key, "topology") for key in TOPOLOGY_KEYS if topo_el.get(key) is not None}


def _read_cache(cpu_el) -> Optional[Dict[str, Any]]:
    cache_el = cpu_el.find("cache")
    if cache_el is None:
        return None
    cache: Dict[str, Any] = {}
    if cache_el.get("mode") is not None:
        cache["mode"] = cache_el.get("mode")
    if cache_el.get("level") is not None:
        cache["level"] = _int_attr(cache_el, "level", "cache")
    return cache


def _read_maxphysaddr(cpu_el) -> Optional[Dict[str, Any]]:
    el = cpu_el.find("maxphysaddr")
    if el is None:
        return None
    result: Dict[str, Any] = {}
    if el.get("mode") is not None:
        result["mode"] = el.get("mode")
    for key in ("bits", "limit"):
        if el.get(key) is not None:
            result[key] = _int_attr(el, key, "maxphysaddr")
    return result


def _read_features(cpu_el) -> Optional[List[Dict[str, str]]]:
    features = []
    for feature_el in cpu_el.findall("feature"):
        feature = {"name": feature_el.get("name")}
        if feature_el.get("policy") is not None:
            feature["policy"] = feature_el.get("policy")
        features.append(feature)
    return features or None


def _read_migratable(cpu_el) -> Optional[bool]:
    value = cpu_el.get("migratable")
    if value is None:
        return None
    if value not in ("on", "off"):
        raise CPUDefinitionError("migratable='%s' is invalid: use 'on' or 'off'" % value)
    return value == "on"


def cpu_from_element(cpu_el) -> CPUDict:
    """Read a ``<cpu>`` element (guest, host-model or host CPU) into the CPU dict."""
    if cpu_el.tag not in ("cpu", "mode"):
        raise CPUDefinitionError("expected a <cpu> element, got <%s>" % cpu_el.tag)
    cpu: CPUDict = {}
    for attr in ("mode", "match", "check"):
        if cpu_el.get(attr) is not None:
            cpu[attr] = cpu_el.get(attr)
    readers = (
        ("migratable", _read_migratable),
        ("model", _read_model),
        ("vendor", lambda el: (el.findtext("vendor") or "").strip() or None),
        ("topology", _read_topology),
        ("cache", _read_cache),
        ("maxphysaddr", _read_maxphysaddr),
        ("features", _read_features),
    )
    for key, reader in readers:
        value = reader(cpu_el)
        if value is not None:
            cpu[key] = value
    return cpu


def cpu_from_xml(text: Union[str, bytes]) -> CPUDict:
    """Read ``<cpu>`` XML text, or a document whose first ``<cpu>`` is the guest CPU."""
    root = parse_xml(text, "CPU XML")
    if root.tag == "domain":
        cpu_el = root.find("cpu")
        if cpu_el is None:
            return {}
        return cpu_from_element(cpu_el)
    if root.tag != "cpu":
        raise CPUDefinitionError("expected <cpu> XML, got <%s>; pass the <cpu> element or a whole <domain>" % root.tag)
    return cpu_from_element(root)


# ---------------------------------------------------------------------------------------------
# dict -> XML (libvirt's virCPUDefFormatBuf order and quoting)


def _escape(value: Any) -> str:
    return (str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("'", "&apos;").replace('"', "&quot;"))


def _attrs(pairs: Iterable[Tuple[str, Any]]) -> str:
    return "".join(" %s='%s'" % (name, _escape(value)) for name, value in pairs if value is not None)


def _format_model(cpu: CPUDict) -> Optional[str]:
    model = cpu.get("model") or {}
    mode = cpu.get("mode", "custom")
    if mode not in FALLBACK_MODES:
        return None
    name = model.get("name")
    # virCPUDefFormatBuf: <model> only with a name or vendor_id, fallback only with a name.
    fallback = model.get("fallback") if name else None
    vendor_id = model.get("vendor_id")
    if not (name or vendor_id):
        return None
    opening = "<model%s" % _attrs((("fallback", fallback), ("vendor_id", vendor_id)))
    if name:
        return "%s>%s</model>" % (opening, _escape(name))
    return opening + "/>"


def _format_children(cpu: CPUDict) -> List[str]:
    children = []
    model_line = _format_model(cpu)
    if model_line:
        children.append(model_line)
    if cpu.get("vendor") and cpu.get("mode", "custom") in FALLBACK_MODES:
        children.append("<vendor>%s</vendor>" % _escape(cpu["vendor"]))
    if cpu.get("topology"):
        topo = cpu["topology"]
        children.append("<topology%s/>" % _attrs((key, topo.get(key)) for key in TOPOLOGY_KEYS))
    if cpu.get("cache"):
        cache = cpu["cache"]
        children.append("<cache%s/>" % _attrs((("level", cache.get("level")), ("mode", cache.get("mode")))))
    if cpu.get("maxphysaddr"):
        addr = cpu["maxphysaddr"]
        children.append("<maxphysaddr%s/>" % _attrs((key, addr.get(key)) for key in ("mode", "bits", "limit")))
    for feature in cpu.get("features") or []:
        children.append("<feature%s/>" % _attrs((("policy", feature.get("policy")), ("name", feature.get("name")))))
    return children


def cpu_to_xml(cpu: CPUDict, indent: int = 2, level: int = 0, extra_children: Iterable[str] = ()) -> str:
    """Render the CPU dict as libvirt prints ``<cpu>``; *extra_children* are appended verbatim (numa)."""
    migratable = cpu.get("migratable")
    attributes = _attrs((
        ("mode", cpu.get("mode")),
        ("match", cpu.get("match")),
        ("check", cpu.get("check")),
        ("migratable", None if migratable is None else ("on" if migratable else "off")),
    ))
    children = _format_children(cpu) + list(extra_children)
    pad = " " * (indent * level)
    if not children:
        return "%s<cpu%s/>" % (pad, attributes)
    inner = "\n".join(" " * (indent * (level + 1)) + child for child in children)
    return "%s<cpu%s>\n%s\n%s</cpu>" % (pad, attributes, inner, pad)


# ---------------------------------------------------------------------------------------------
# validation


def _check_choice(value: Any, choices: Tuple[str, ...], what: str) -> None:
    if value is not None and value not in choices:
        raise CPUDefinitionError("%s '%s' is not valid; use one of: %s" % (what, value, ", ".join(choices)))


def _check_mapping(cpu: CPUDict, key: str, allowed: Tuple[str, ...]) -> None:
    value = cpu.get(key)
    if value is None:
        return
    if not isinstance(value, dict):
        raise CPUDefinitionError("'%s' must be a mapping with keys %s, got %r" % (key, ", ".join(allowed), value))
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise CPUDefinitionError("'%s' has unknown keys %s; allowed: %s" % (key, ", ".join(unknown), ", ".join(allowed)))


def _check_positive_ints(mapping: Dict[str, Any], keys: Iterable[str], where: str, minimum: int = 1,
                         maximum: int = UINT_MAX) -> None:
    for key in keys:
        value = mapping.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise CPUDefinitionError("%s.%s must be a whole number >= %d, got %r" % (where, key, minimum, value))
        if value > maximum:
            raise CPUDefinitionError("%s.%s must be at most %d (libvirt reads it as a C integer), got %d" % (where, key, maximum, value))


def _validate_model(cpu: CPUDict, mode: str) -> None:
    model = cpu.get("model") or {}
    _check_choice(model.get("fallback"), FALLBACKS, "model fallback")
    if model.get("name") is not None and (not isinstance(model["name"], str) or not model["name"].strip()):
        raise CPUDefinitionError("model name must be a non-empty string, got %r" % model["name"])
    if model.get("name") is not None and not NAME_PATTERN.fullmatch(model["name"]):
        raise CPUDefinitionError("model name %r is not a CPU model name: use letters, digits, '-', '_' and '.' "
                                 "(as 'virsh domcapabilities' lists them)" % model["name"])
    if model.get("name") and mode not in MODEL_NAME_MODES:
        effect = ("keeps it and checks the host against that model at start, which can refuse the start"
                  if mode == "host-model" else "drops it")
        raise CPUDefinitionError("a model name ('%s') is only meaningful with mode custom; for %s libvirt %s: "
                                 "remove the model or use mode: custom" % (model["name"], mode, effect))
    vendor_id = model.get("vendor_id")
    if vendor_id is not None and (not isinstance(vendor_id, str) or len(vendor_id) != 12):
        raise CPUDefinitionError("vendor_id must be exactly 12 characters (e.g. 'AuthenticAMD'), got %r" % vendor_id)
    if vendor_id is not None and not VENDOR_ID_PATTERN.fullmatch(vendor_id):
        raise CPUDefinitionError("vendor_id %r is not valid: libvirt takes 12 printable ASCII characters without ','" % vendor_id)
    if (model.get("fallback") or vendor_id) and mode not in FALLBACK_MODES:
        raise CPUDefinitionError("model fallback and vendor_id apply to custom and host-model only, not %s" % mode)
    if cpu.get("vendor") is not None:
        if mode != "custom" or not model.get("name"):
            raise CPUDefinitionError("CPU vendor specified without CPU model: 'vendor' needs mode custom and a model name")


def _validate_features(cpu: CPUDict, mode: str) -> None:
    features = cpu.get("features")
    if features is None:
        return
    if not isinstance(features, list):
        raise CPUDefinitionError("features must be a list of {name, policy}, got %r" % (features,))
    seen = set()
    for feature in features:
        if not isinstance(feature, dict) or not isinstance(feature.get("name"), str) or not feature["name"]:
            raise CPUDefinitionError("each feature needs a name, got %r" % (feature,))
        if not NAME_PATTERN.fullmatch(feature["name"]):
            raise CPUDefinitionError("feature name %r is not valid: libvirt's feature names are letters, digits, '-', '_' "
                                     "and '.' (like 'arch-capabilities')" % feature["name"])
        unknown = sorted(set(feature) - {"name", "policy"})
        if unknown:
            raise CPUDefinitionError("feature '%s' has unknown keys %s; allowed: name, policy" % (feature["name"], ", ".join(unknown)))
        _check_choice(feature.get("policy"), POLICIES, "feature '%s' policy" % feature["name"])
        if feature["name"] in seen:
            raise CPUDefinitionError("feature '%s' is listed twice; libvirt refuses duplicate features" % feature["name"])
        seen.add(feature["name"])
    if features and mode == "custom" and not (cpu.get("model") or {}).get("name"):
        raise CPUDefinitionError("features in mode custom need a model: name the model the features modify")


def validate_cpu(cpu: CPUDict) -> CPUDict:
    """Refuse what libvirt refuses (and what it silently drops); return the CPU unchanged."""
    if not isinstance(cpu, dict):
        raise CPUDefinitionError("a CPU must be a mapping like {mode: host-model}, got %s" % type(cpu).__name__)
    unknown = sorted(set(cpu) - set(KEY_ORDER))
    if unknown:
        raise CPUDefinitionError("unknown CPU keys %s; allowed: %s" % (", ".join(unknown), ", ".join(KEY_ORDER)))
    mode = cpu.get("mode", "custom")
    _check_choice(mode, MODES, "mode")
    _check_choice(cpu.get("match"), MATCHES, "match")
    _check_choice(cpu.get("check"), CHECKS, "check")
    if cpu.get("match") is not None and mode != "custom":
        raise CPUDefinitionError("match applies to mode custom only; libvirt drops it for %s: remove it" % mode)
    if cpu.get("migratable") is not None:
        if not isinstance(cpu["migratable"], bool):
            raise CPUDefinitionError("migratable must be true or false, got %r" % (cpu["migratable"],))
        if mode not in MIGRATABLE_MODES:
            raise CPUDefinitionError("migratable is only supported with host-passthrough or maximum, not %s" % mode)
    _check_mapping(cpu, "model", ("name", "fallback", "vendor_id"))
    _check_mapping(cpu, "topology", TOPOLOGY_KEYS)
    _check_mapping(cpu, "cache", ("mode", "level"))
    _check_mapping(cpu, "maxphysaddr", ("mode", "bits", "limit"))
    _validate_model(cpu, mode)
    if cpu.get("vendor") is not None and (not isinstance(cpu["vendor"], str) or not NAME_PATTERN.fullmatch(cpu["vendor"])):
        raise CPUDefinitionError("vendor must be a string like 'AMD' or 'Intel', got %r" % (cpu["vendor"],))
    topology = cpu.get("topology")
    if topology is not None:
        missing = [key for key in REQUIRED_TOPOLOGY_KEYS if key not in topology]
        if missing:
            raise CPUDefinitionError("topology needs sockets, cores and threads; missing: %s" % ", ".join(missing))
        _check_positive_ints(topology, TOPOLOGY_KEYS, "topology")
    cache = cpu.get("cache")
    if cache is not None:
        if "mode" not in cache:
            raise CPUDefinitionError("cache needs a mode: one of %s" % ", ".join(CACHE_MODES))
        _check_choice(cache.get("mode"), CACHE_MODES, "cache mode")
        _check_positive_ints(cache, ("level",), "cache", maximum=3)
        if cache.get("level") is not None and cache["mode"] != "emulate":
            raise CPUDefinitionError("cache level is only supported with cache mode emulate")
        if cache["mode"] == "passthrough" and mode not in MIGRATABLE_MODES:
            raise CPUDefinitionError("cache mode passthrough can only be used with host-passthrough or maximum, not %s" % mode)
    addr = cpu.get("maxphysaddr")
    if addr is not None:
        if "mode" not in addr:
            raise CPUDefinitionError("maxphysaddr needs a mode: emulate or passthrough")
        _check_choice(addr.get("mode"), MAXPHYSADDR_MODES, "maxphysaddr mode")
        _check_positive_ints(addr, ("bits",), "maxphysaddr", maximum=INT_MAX)
        _check_positive_ints(addr, ("limit",), "maxphysaddr")
        if addr["mode"] == "passthrough" and addr.get("bits") is not None:
            raise CPUDefinitionError("maxphysaddr bits cannot be used with mode passthrough: drop bits (or use limit) "
                                     "or use mode emulate")
        if addr["mode"] == "emulate" and addr.get("bits") is None:
            raise CPUDefinitionError("maxphysaddr mode emulate needs bits (the guest's physical address width, e.g. 42)")
    _validate_features(cpu, mode)
    return cpu


# ---------------------------------------------------------------------------------------------
# normalisation (what libvirt stores on define; qemuDomainDefCPUPostParse and friends)


def copied(value: Any) -> Any:
    """A deep copy of JSON-like data (mappings, lists, tuples and scalars, as CPU dicts and facts are) that
    compares equal to it, without copy.deepcopy's bookkeeping: a domain_cpu task copies a few CPU dicts
    per domain, thousands of domains per task. Mappings become dicts."""
    kind = type(value)
    if kind in _IMMUTABLE_JSON_TYPES:
        return value
    if kind is dict or isinstance(value, Mapping):
        return {key: copied(item) for key, item in value.items()}
    if isinstance(value, list):
        return [copied(item) for item in value]
    if isinstance(value, tuple):
        return tuple(copied(item) for item in value)
    return value


# The scalars of JSON, tested by exact type before the (slow) ABC test of Mapping.
_IMMUTABLE_JSON_TYPES = frozenset((str, int, bool, float, type(None)))


def ordered(cpu: CPUDict) -> CPUDict:
    """The same CPU with keys in the canonical order (for stable output and diffs)."""
    return {key: cpu[key] for key in KEY_ORDER if key in cpu and cpu[key] not in (None, {}, [])}


def _default_check(mode: str, virt_type: str, has_model: bool) -> str:
    if mode in MIGRATABLE_MODES:
        return "none"
    if mode == "host-model":
        return "partial"
    if not has_model or virt_type == "qemu":
        return "none"
    return "partial"


def _normalize_topology(topology: Dict[str, int], libvirt_version: Optional[Tuple[int, ...]]) -> Dict[str, int]:
    result = dict(topology)
    result.setdefault("dies", 1)
    if rules_for(libvirt_version).topology_clusters:
        result.setdefault("clusters", 1)
    else:
        result.pop("clusters", None)
    return {key: result[key] for key in TOPOLOGY_KEYS if key in result}


def _default_model(default_model: Optional[str], given: Dict[str, Any]) -> Dict[str, Any]:
    """The <model> libvirt fills into a custom CPU without one: QEMU's default CPU type for the
    domain's emulator, arch and machine (*default_model*), or none when QEMU names none."""
    kept = {key: value for key, value in given.items() if key == "vendor_id"}
    if not default_model:
        return kept
    return {"name": default_model, "fallback": "forbid", **kept}


def normalize_cpu(cpu: CPUDict, virt_type: str = "kvm",
                  libvirt_version: Optional[Tuple[int, ...]] = None,
                  default_model: Optional[str] = DEFAULT_X86_MODEL) -> CPUDict:
    """Return the CPU as libvirt stores it after define for a domain of *virt_type* whose
    emulator's default CPU model (for its arch and machine) is *default_model*."""
    if default_model is None and cpu.get("mode", "custom") == "custom" and set(cpu) <= EMPTY_CUSTOM_KEYS:
        return {}  # no model to fill in and nothing else: libvirt stores no <cpu> at all
    result = copied(cpu)
    mode = result.setdefault("mode", "custom")
    model = dict(result.get("model") or {})
    if mode != "custom":
        result.pop("match", None)
        result.pop("vendor", None)
    if mode == "host-model":
        # libvirt keeps a host-model <model> name (fallback defaults to allow); fallback alone is dropped.
        if model.get("name"):
            model.setdefault("fallback", "allow")
        else:
            model.pop("fallback", None)
    if mode in MIGRATABLE_MODES:
        model = {}
        if mode == "host-passthrough":
            result.setdefault("migratable", True)
    if mode == "custom":
        if not model.get("name"):
            model = _default_model(default_model, model)
        if model.get("name"):
            model.setdefault("fallback", "allow")
        result.setdefault("match", "exact")
    result["model"] = model
    result.setdefault("check", _default_check(mode, virt_type, bool((cpu.get("model") or {}).get("name"))))
    if result.get("topology"):
        result["topology"] = _normalize_topology(result["topology"], libvirt_version)
    if not rules_for(libvirt_version).maxphysaddr:
        result.pop("maxphysaddr", None)
    if result.get("features"):
        result["features"] = [{"name": f["name"], "policy": f.get("policy") or "require"} for f in result["features"]]
    return ordered(result)


def cpus_equal(first: CPUDict, second: CPUDict, virt_type: str = "kvm",
               libvirt_version: Optional[Tuple[int, ...]] = None) -> bool:
    return normalize_cpu(first, virt_type, libvirt_version) == normalize_cpu(second, virt_type, libvirt_version)


# ---------------------------------------------------------------------------------------------
# merging a partial wish onto an existing CPU


MODE_INDEPENDENT_KEYS = ("topology", "cache", "maxphysaddr")


def feature_policy_map(cpu: CPUDict) -> Dict[str, str]:
    return {f["name"]: f.get("policy") or "require" for f in cpu.get("features") or []}


def merge_features(current: List[Dict[str, str]], wanted: List[Dict[str, str]]) -> List[Dict[str, str]]:
    """Give the wanted features their policies in place; append the new ones in the given order."""
    wanted_by_name = {f["name"]: f for f in wanted}
    merged = [dict(wanted_by_name.pop(f["name"], f)) for f in current]
    merged.extend(dict(f) for f in wanted if f["name"] in wanted_by_name)
    return merged


def merge_cpu(current: CPUDict, wanted: CPUDict, features_mode: str = "merge") -> CPUDict:
    """Apply the keys of *wanted* to *current*.

    When the mode changes, only the mode-independent parts (topology, cache, maxphysaddr) are
    carried over: match, check, model, vendor and features belonged to the old mode.
    """
    current_mode = current.get("mode", "custom") if current else None
    mode = wanted.get("mode", current_mode or "custom")
    if current and mode == current_mode:
        result = copied(current)
    else:
        result = {key: copied(current[key]) for key in MODE_INDEPENDENT_KEYS if current and key in current}
    result["mode"] = mode
    for key, value in wanted.items():
        if key == "features":
            continue
        if key == "model" and isinstance(value, dict) and isinstance(result.get("model"), dict):
            result["model"] = {**result["model"], **value}
        else:
            result[key] = copied(value)
    if "features" in wanted:
        if features_mode == "replace":
            result["features"] = copied(wanted["features"] or [])
        else:
            result["features"] = merge_features(result.get("features") or [], wanted["features"] or [])
    elif features_mode == "replace":
        result["features"] = []
    return ordered(result)


def features_from_mapping(features: Union[List[Any], Dict[str, str], None]) -> Optional[List[Dict[str, str]]]:
    """Accept ``[{name, policy}]``, ``{name: policy}`` or a list of bare names (policy require)."""
    if features is None:
        return None
    if isinstance(features, dict):
        return [{"name": name, "policy": policy} for name, policy in features.items()]
    if not isinstance(features, list):
        raise CPUDefinitionError("features must be a list of {name, policy} or a {name: policy} mapping, got %r" % (features,))
    result = []
    for feature in features:
        if isinstance(feature, str):
            result.append({"name": feature, "policy": "require"})
        elif isinstance(feature, dict) and isinstance(feature.get("name"), str):
            result.append(feature)
        else:
            raise CPUDefinitionError("each feature needs a name: give {name, policy}, a {name: policy} mapping or bare "
                                     "names, got %r" % (feature,))
    return result
