# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt's CPU map (src/cpu_map, installed as /usr/share/libvirt/cpu_map) and its decoder.

The map's files are read the way the host's libvirt version reads them (``_versions`` rules: the
grouped index of 10.10+, ``added='yes'`` model features); feature sets are bit masks over the map's
feature list (``CPUMap``); ``decode`` is libvirt's x86Decode (the model that describes CPU data
with the fewest changes). Pure: files in, data out.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from functools import reduce
from itertools import compress, repeat
from operator import or_
from typing import Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import ExpansionDataError, GuestWouldNotStart
from ansible_collections.hostcpu.libvirt.plugins.module_utils._versions import LibvirtRules, rules_for
from ansible_collections.hostcpu.libvirt.plugins.module_utils._xml import parse_xml


CPU_MAP_DIR = "/usr/share/libvirt/cpu_map"
ENABLING = ("force", "require")
DISABLING = ("disable", "forbid")
CPU_MAP_CACHE_SIZE = 16
Mask = int


# bin()'s digits as the 0/1 selectors itertools.compress takes
_BIT_SELECTORS = bytes.maketrans(b"01", b"\x00\x01")


def names_of(mask: Mask, names: Sequence[str]) -> List[str]:
    """The feature names of *mask*, in CPU map order."""
    if 0 <= mask and mask.bit_length() <= len(names):
        return list(compress(names, bin(mask)[:1:-1].encode("ascii").translate(_BIT_SELECTORS)))
    return _names_bit_by_bit(mask, names)


def _names_bit_by_bit(mask: Mask, names: Sequence[str]) -> List[str]:
    """names_of for a mask with bits beyond *names*: fails on the first one (IndexError)."""
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


def int_or_zero(value: Optional[str]) -> int:
    return int(value, 0) if value else 0


def _feature_bit(feature_el) -> Tuple[Any, ...]:
    """``("cpuid", eax_in, ecx_in, register, bit)`` or ``("msr", index, bit)`` of one feature."""
    for child in feature_el:
        if child.tag == "cpuid":
            for register in ("eax", "ebx", "ecx", "edx"):
                value = int_or_zero(child.get(register))
                if value:
                    return ("cpuid", int_or_zero(child.get("eax_in")), int_or_zero(child.get("ecx_in")), register,
                            value.bit_length() - 1)
        if child.tag == "msr":
            value = (int_or_zero(child.get("edx")) << 32) | int_or_zero(child.get("eax"))
            return ("msr", int_or_zero(child.get("index")), value.bit_length() - 1)
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
    signatures = [[int_or_zero(el.get("family")), int_or_zero(el.get("model")), _steppings(el.get("stepping"))]
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


def apply_policies(mask: Mask, policies: Iterable[Tuple[str, str]], bit: Callable[[str], Mask]) -> Mask:
    """x86ModelFromCPU(cpu, -1): *mask* (a model's features) + force/require - disable/forbid features."""
    for name, policy in policies:
        if policy in ENABLING:
            mask |= bit(name)
        elif policy in DISABLING:
            mask &= ~bit(name)
    return mask


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


def mask_of(names: Iterable[str], index: Mapping[str, int]) -> Mask:
    mask = 0
    for name in names:
        if name in index:
            mask |= 1 << index[name]
    return mask


class ModelInfo(NamedTuple):
    vendor: Optional[str]
    mask: Mask
    removed: Tuple[str, ...]
    signatures: Tuple[Tuple[int, int, Optional[Tuple[int, ...]]], ...]
    decode_host: bool
    decode_guest: bool
    added: Mask = 0              # features added to the model later (added='yes'): not in its data
    compat_check: bool = False   # check='partial' compares the whole model (<check partial='compat'/>)


def _model_order(data: Mapping[str, Any], models: Mapping[str, Any]) -> List[str]:
    """The map's model order (the decoder walks it newest last): ``model_order`` when the data has it,
    since a JSON round trip through Ansible may sort the ``models`` keys; else their order."""
    order = data.get("model_order")
    if isinstance(order, list) and sorted(order) == sorted(models):
        return list(order)
    return list(models)


class CPUMap:
    """Feature names in map order, their positions, and the models as masks."""

    def __init__(self, names: Sequence[str], models: "OrderedDict[str, ModelInfo]"):
        self.names = list(names)
        self.index = {name: position for position, name in enumerate(self.names)}
        self.bits = {name: 1 << position for name, position in self.index.items()}
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
                                     mask_of(model.get("added") or (), index),
                                     bool(model.get("compat_check")))
        return cls(cpu_map["features"], models)

    @classmethod
    def from_facts(cls, data: Mapping[str, Any]) -> "CPUMap":
        models = OrderedDict()
        for name, model in required_mapping(data.get("models"), "models").items():
            model = required_mapping(model, "models.%s" % name)
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
        models = OrderedDict((name, models[name]._replace(added=mask_of(models[name].added, index)))
                             for name in _model_order(data, models))
        return cls(names, models)

    def mask(self, names: Iterable[str]) -> Mask:
        """The bits of *names*; names the map does not know have none."""
        return reduce(or_, map(self.bits.get, names, repeat(0)), 0)

    def bit(self, name: str) -> Mask:
        return self.bits.get(name, 0)

    def names_of(self, mask: Mask) -> List[str]:
        return names_of(mask, self.names)

    def with_policies(self, mask: Mask, features: Mapping[str, str]) -> Mask:
        """``apply_policies`` for features of distinct names (a mapping of name to policy), where
        their order cannot matter."""
        enabling = [name for name, policy in features.items() if policy in ENABLING]
        disabling = [name for name, policy in features.items() if policy in DISABLING]
        return (mask | self.mask(enabling)) & ~self.mask(disabling)


# The map of each expansion data object seen, by identity (the object is kept, so its id is not
# reused while it is here): the baseline reads one host's map several times.
_MAPS_OF_DATA: "OrderedDict[int, Tuple[Mapping[str, Any], CPUMap]]" = OrderedDict()
DATA_CACHE_SIZE = 4096
_CPU_MAPS: "OrderedDict[Tuple[int, int], List[Tuple[List[str], Any, Any, CPUMap]]]" = OrderedDict()


def cpu_map_of(data: Mapping[str, Any]) -> CPUMap:
    """``CPUMap.from_facts(data)``, shared by all facts that carry the same CPU map.

    Every host with one libvirt version carries the same map, while the rest of their expansion
    data differs: decoding it once instead of once per host halves a cold prediction context.
    The map's own content decides (compared with ``==``, in C), not the data's fingerprint.
    """
    seen = _MAPS_OF_DATA.get(id(data))
    if seen is not None and seen[0] is data:
        return seen[1]
    features, models = data.get("features"), data.get("models")
    if not isinstance(features, list) or not _is_mapping(models):
        return CPUMap.from_facts(data)
    cpu_map = _shared_map(features, models, data)
    _MAPS_OF_DATA[id(data)] = (data, cpu_map)
    while len(_MAPS_OF_DATA) > DATA_CACHE_SIZE:
        _MAPS_OF_DATA.popitem(last=False)
    return cpu_map


def _shared_map(features: List[str], models: Mapping[str, Any], data: Mapping[str, Any]) -> CPUMap:
    """The CPUMap decoded before from equal features, models and model order, else *data*'s own."""
    model_order = data.get("model_order")
    key = (len(features), len(models))
    maps = _CPU_MAPS.get(key)
    if maps is None:
        maps = _CPU_MAPS[key] = []
        while len(_CPU_MAPS) > CPU_MAP_CACHE_SIZE:
            _CPU_MAPS.popitem(last=False)
    for known_features, known_models, known_order, cpu_map in maps:
        if features == known_features and models == known_models and model_order == known_order:
            return cpu_map
    cpu_map = CPUMap.from_facts(data)
    maps.append((list(features), _plain(models), _plain(model_order), cpu_map))
    del maps[:-CPU_MAP_CACHE_SIZE]
    return cpu_map


def _plain(value: Any) -> Any:
    """A copy of JSON-like *value* as plain dicts and lists (``copy.deepcopy`` of Ansible's lazy
    template containers copies their templating context too: gigabytes for a fleet's hostvars)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _names(value: Any, what: str) -> Tuple[str, ...]:
    if value is not None and (not isinstance(value, (list, tuple)) or not all(isinstance(name, str) for name in value)):
        raise ExpansionDataError("expansion data: '%s' must be a list of feature names" % what)
    return tuple(value or ())


def _signature_tuple(sig: Sequence[Any]) -> Tuple[int, int, Optional[Tuple[int, ...]]]:
    return (int(sig[0]), int(sig[1]), tuple(sig[2]) if len(sig) > 2 and sig[2] else None)


def _is_mapping(value: Any) -> bool:
    # Facts are JSON: the exact-type test first; the ABC test (slow) only for other mappings.
    return type(value) is dict or isinstance(value, Mapping)  # pylint: disable=unidiomatic-typecheck


def required_mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not _is_mapping(value):
        raise ExpansionDataError("expansion data: '%s' must be a mapping, got %s" % (what, type(value).__name__))
    return value
