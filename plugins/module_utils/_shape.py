# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The shape of host facts as hostcpu.libvirt.cpu_facts sets them, checked before they are used.

Facts travel through fact caches, JSON files and hand-written variables. A damaged ``virt_types``
entry (a key missing or of the wrong type) fails here with one message naming the key, instead of
a Python error deep inside the live-CPU prediction or the fleet baseline. Only the parts those
read are checked; the expansion data's own encoding is checked where it is decoded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from itertools import chain
from operator import itemgetter
from typing import Any, Dict, List, Optional, Tuple
from typing import Mapping as TypingMapping

from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import CPUDefinitionError, CPUDict, cpu_from_xml
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts import VIRT_TYPES

FIX = "gather them again with hostcpu.libvirt.cpu_facts"
DEFAULT_VIRT_TYPE = "kvm"
# typing.Mapping: collections.abc.Mapping[...] fails on Python < 3.9, before the module could say why.
Entry = TypingMapping[str, Any]


class FactsShapeError(CPUError):
    """Host facts that do not have the shape cpu_facts gives them."""


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# Facts are plain dicts and lists (JSON): the exact-type test first, the slower ABC isinstance only
# for other mappings and sequences: the facts of a fleet of 1000 hosts are checked in half the time (bench).
def _is_mapping(value: Any) -> bool:
    return type(value) is dict or isinstance(value, Mapping)  # pylint: disable=unidiomatic-typecheck


def _is_list(value: Any) -> bool:
    if type(value) is list:  # pylint: disable=unidiomatic-typecheck
        return True
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


_NAME_OF = itemgetter("name")
_DICT_TYPE = frozenset((dict,))
_LIST_TYPE = frozenset((list,))
_PAIR_LENGTH = frozenset((2,))
_STR_TYPE = frozenset((str,))
# a string or null (policies, vendors); usable= true, false or null (bool has no subclasses)
_POLICY_TYPES = frozenset((str, type(None)))
_USABLE_TYPES = frozenset((bool, type(None)))
_BLOCKERS_TYPES = frozenset((list, type(None)))


def _optional(value: Any, kinds: Tuple[type, ...]) -> bool:
    return value is None or isinstance(value, kinds)


def _pair_ok(pair: Any) -> bool:
    """[name, policy], both strings."""
    return _is_list(pair) and len(pair) == 2 and isinstance(pair[0], str) and isinstance(pair[1], str)


def _string_pairs(pairs: Any) -> bool:
    """Whether *pairs* is a list of [name, policy] lists of strings (a quick test: False does not mean damaged)."""
    return (type(pairs) is list and set(map(type, pairs)) <= _LIST_TYPE  # pylint: disable=unidiomatic-typecheck
            and set(map(len, pairs)) <= _PAIR_LENGTH and _all_str(chain.from_iterable(pairs)))


def _feature_ok(feature: Any) -> bool:
    """{name: str, policy: str or null}."""
    if not _is_mapping(feature) or not isinstance(feature.get("name"), str):
        return False
    policy = feature.get("policy")
    return policy is None or isinstance(policy, str)


def _features_ok(features: Any) -> bool:
    """A list of {name, policy}; the common case (dicts in a list) without a call per feature."""
    if _dicts_with_names(features) and {type(f.get("policy")) for f in features} <= _POLICY_TYPES:
        return True
    return _is_list(features) and all(map(_feature_ok, features))


def _dicts_with_names(items: Any) -> bool:
    """Whether *items* is a list of dicts with a string name each (a quick test: False does not mean damaged)."""
    return type(items) is list and set(map(type, items)) <= _DICT_TYPE and _all_str(map(_NAME_OF, items))  # pylint: disable=unidiomatic-typecheck


def _all_str(values: Any) -> bool:
    """Whether every value is a string (str.join takes nothing else); False also when one is missing."""
    try:
        "".join(values)
    except (TypeError, KeyError):
        return False
    return True


def _cpu_problems(cpu: Any, where: str) -> List[str]:
    """What is wrong with a CPU dict of the facts (host-model CPU, expansions)."""
    if cpu is None:
        return []
    if not _is_mapping(cpu):
        return ["%s must be a CPU mapping, got %s" % (where, _type_name(cpu))]
    problems = []
    model = cpu.get("model")
    if not (model is None or _is_mapping(model)) or (model is not None and not _optional(model.get("name"), (str,))):
        problems.append("%s.model must be a mapping with a name" % where)
    if not _optional(cpu.get("vendor"), (str,)):
        problems.append("%s.vendor must be a string, got %s" % (where, _type_name(cpu.get("vendor"))))
    features = cpu.get("features")
    if features is not None and not _features_ok(features):
        problems.append("%s.features must be a list of {name, policy}" % where)
    return problems


def _models_problems(models: Any, where: str) -> List[str]:
    if models is None:
        return []
    if not _is_list(models):
        return ["%s must be a list, got %s" % (where, _type_name(models))]
    if _dicts_with_names(models) and _plain_models_ok(models):
        return []
    for index, model in enumerate(models):
        if not _is_mapping(model) or not isinstance(model.get("name"), str):
            return ["%s[%d] must be a mapping with a name" % (where, index)]
        usable, vendor = model.get("usable"), model.get("vendor")
        if not (usable is None or usable is True or usable is False) or not (vendor is None or isinstance(vendor, str)):
            return ["%s[%d] (%s) must have usable true/false/null and a vendor string" % (where, index, model["name"])]
        blockers = model.get("blockers")
        if not _blockers_ok(blockers):
            got = "a list of other items" if _is_list(blockers) else _type_name(blockers)
            return ["%s[%d] (%s) must have blockers as a list of feature names or null, got %s" % (where, index, model["name"], got)]
    return []


def _plain_models_ok(models: List[Dict[str, Any]]) -> bool:
    """Whether the usable, vendor and blockers of dicts with names are fine (a quick test: False does
    not mean damaged); the blockers' names are read only when a model has some (libvirt 10.9+)."""
    if not ({type(model.get("usable")) for model in models} <= _USABLE_TYPES
            and {type(model.get("vendor")) for model in models} <= _POLICY_TYPES):
        return False
    blockers = {type(model.get("blockers")) for model in models}
    if list not in blockers:
        return blockers <= _BLOCKERS_TYPES
    return blockers <= _BLOCKERS_TYPES and _all_str(chain.from_iterable(model["blockers"] for model in models if model.get("blockers")))


def _blockers_ok(blockers: Any) -> bool:
    """libvirt's <blockers> of a model: null (libvirt prints none) or a list of feature names."""
    return blockers is None or (_is_list(blockers) and all(isinstance(name, str) for name in blockers))


def _modes_problems(modes: Any) -> List[str]:
    if not _is_mapping(modes):
        return ["modes must be a mapping of CPU modes, got %s" % _type_name(modes)]
    problems = []
    for name, mode in modes.items():
        if not isinstance(name, str) or not _is_mapping(mode):
            problems.append("modes.%s must be a mapping, got %s" % (name, _type_name(mode)))
            continue
        if not _optional(mode.get("supported"), (bool,)):
            problems.append("modes.%s.supported must be true or false" % name)
    if problems:
        return problems
    problems += _models_problems((modes.get("custom") or {}).get("models"), "modes.custom.models")
    problems += _cpu_problems((modes.get("host-model") or {}).get("cpu"), "modes.host-model.cpu")
    return problems


def _host_model_data_problems(value: Any) -> List[str]:
    """expansion.host_model: {model: name, vendor, features: [[name, policy], ...]}."""
    if value is None:
        return []
    where = "expansion.host_model"
    if not _is_mapping(value) or not isinstance(value.get("model"), str) or not _optional(value.get("vendor"), (str,)):
        return ["%s must be a mapping with a model name and a vendor" % where]
    features = value.get("features")
    if not _string_pairs(features) and (not _is_list(features) or not all(map(_pair_ok, features))):
        return ["%s.features must be a list of [name, policy] pairs" % where]
    return []


def _expansion_problems(data: Any) -> List[str]:
    if data is None:
        return []
    if not _is_mapping(data):
        return ["expansion must be a mapping, got %s" % _type_name(data)]
    problems = _host_model_data_problems(data.get("host_model"))
    if not (data.get("host") is None or _is_mapping(data.get("host"))):
        problems.append("expansion.host must be a mapping, got %s" % _type_name(data.get("host")))
    if not _optional(data.get("fingerprint"), (str,)):
        problems.append("expansion.fingerprint must be a string")
    return problems


def entry_problems(entry: Mapping) -> List[str]:
    """Everything wrong with the shape of one ``virt_types`` entry ([] when it is fine)."""
    problems = []
    if not isinstance(entry.get("domain_type"), str):
        problems.append("domain_type must be kvm or qemu, got %s" % _type_name(entry.get("domain_type")))
    for key, kinds in (("arch", (str,)), ("fingerprint", (str,)), ("libvirt_version", (str, int))):
        if not _optional(entry.get(key), kinds) or isinstance(entry.get(key), bool):
            problems.append("%s must be a string, got %s" % (key, _type_name(entry.get(key))))
    problems += _modes_problems(entry.get("modes"))
    for key in ("host_model_expanded", "host_model_migratable"):
        problems += _cpu_problems(entry.get(key), key)
    problems += _expansion_problems(entry.get("expansion"))
    return problems


# Entries found fine, by identity: facts are read in place (not copied) for every prediction, so
# a playbook predicting many CPUs on one host's facts checks them once. The entry itself is kept
# in the cache, so its id cannot be reused by another object while it is there.
_CHECKED: "OrderedDict[int, Mapping]" = OrderedDict()
CHECKED_CACHE_SIZE = 4096


def check_entry(entry: Mapping, what: str = "the host facts", virt_type: Optional[str] = None) -> Mapping:
    """*entry* unchanged, or FactsShapeError naming the damaged keys."""
    if _CHECKED.get(id(entry)) is entry:
        return entry
    problems = entry_problems(entry)
    if problems:
        label = "%s (virt type %s)" % (what, virt_type) if virt_type else what
        raise FactsShapeError("%s are damaged: %s; %s" % (label, "; ".join(problems[:3]), FIX))
    _CHECKED[id(entry)] = entry
    while len(_CHECKED) > CHECKED_CACHE_SIZE:
        _CHECKED.popitem(last=False)
    return entry


# ---------------------------------------------------------------------------------------------
# what filters, tests and the fleet accept: whole facts or one entry, a CPU dict or XML


def is_entry(value: Any) -> bool:
    return _is_mapping(value) and "modes" in value and "domain_type" in value


def select_entry(facts: Any, virt_type: Optional[str] = None, what: str = "host facts", strict: bool = True) -> Entry:
    """The ``virt_types`` entry of *facts* for *virt_type*, or *facts* when it is an entry already.

    *facts* is ``ansible_facts.hostcpu`` (or ``ansible_facts`` holding it); its virt type defaults
    to kvm, as for the live_cpu filter. An entry of another virt type than *virt_type* is an error
    when *strict*, else taken as it is (in a list of hosts, *virt_type* is for whole facts).
    """
    entry, label = _selected(facts, virt_type, what, strict)
    return check_entry(entry, what, label)


def select_entries(items: Sequence[Tuple[Any, Optional[str], str, bool]]) -> List[Tuple[Entry, Optional[Tuple[Any, ...]]]]:
    """``select_entry(facts, virt_type, what, strict)`` for each of *items*, for a fleet, with each
    entry's identity (``entry_identity``).

    An entry whose identity equals that of an entry checked before in the same call is not checked
    again: it claims to be that host's facts, and the fleet functions read only the first entry of
    each identity beyond these keys. A fleet of 1000 hosts of a few kinds is checked in a fraction
    of the time.
    """
    checked = set()
    selected = []
    identities = _Identities()
    for facts, virt_type, what, strict in items:
        entry, label = _selected(facts, virt_type, what, strict)
        identity = identities.of(entry)
        if identity is None or identity not in checked:
            check_entry(entry, what, label)
            if identity is not None:
                checked.add(identity)
        selected.append((entry, identity))
    return selected


def _identity_prefix(entry: Entry) -> Optional[Tuple[Any, ...]]:
    """The fingerprints, virt type and arch of ``entry_identity``, or None when one is unusable."""
    entry_fingerprint, data = entry.get("fingerprint"), entry.get("expansion")
    if not isinstance(entry_fingerprint, str) or not entry_fingerprint:
        return None
    data_fingerprint = data.get("fingerprint") if _is_mapping(data) else None
    if data is not None and (not isinstance(data_fingerprint, str) or not data_fingerprint):
        return None
    domain_type, arch = entry.get("domain_type"), entry.get("arch")
    if not isinstance(domain_type, str) or not (arch is None or isinstance(arch, str)):
        return None
    return (entry_fingerprint, data_fingerprint, domain_type, arch)


_NO_MIGRATABLE, _NOT_A_MAPPING = object(), object()


def _migratable_features(entry: Entry) -> Any:
    """host_model_migratable's features, or a marker when there is no host_model_migratable or it is no mapping."""
    migratable = entry.get("host_model_migratable")
    if migratable is None:
        return _NO_MIGRATABLE
    return migratable.get("features") if _is_mapping(migratable) else _NOT_A_MAPPING


def entry_identity(entry: Entry) -> Optional[Tuple[Any, ...]]:
    """The facts' own fingerprints, virt type, arch and migratable host-model features, or None when
    one of them is missing or of the wrong type (then only a full check can tell)."""
    prefix = _identity_prefix(entry)
    if prefix is None:
        return None
    features = _migratable_features(entry)
    if features is _NO_MIGRATABLE:
        return prefix + (None,)
    if features is None or features is _NOT_A_MAPPING or isinstance(features, (str, bytes)) or _is_mapping(features):
        return None
    pairs = _feature_pairs(features)
    return None if pairs is None else prefix + (pairs,)


# Entries claiming one host's fingerprints with different migratable features (hand-edited facts)
# are compared with at most this many before their identity is worked out in full.
IDENTITY_CANDIDATES = 8


class _Identities:
    """``entry_identity`` over the entries of one fleet: an entry whose prefix and migratable features
    equal (``==``, in C) those of an entry seen before gets that entry's identity without working it out."""

    def __init__(self) -> None:
        self._seen: Dict[Tuple[Any, ...], List[Tuple[Any, Tuple[Any, ...]]]] = {}

    def of(self, entry: Entry) -> Optional[Tuple[Any, ...]]:
        prefix = _identity_prefix(entry)
        if prefix is None:
            return None
        features = _migratable_features(entry)
        candidates = self._seen.setdefault(prefix, [])
        for known, identity in candidates:
            if features == known:
                return identity
        identity = entry_identity(entry)
        if identity is not None and len(candidates) < IDENTITY_CANDIDATES:
            candidates.append((features, identity))
        return identity


def _feature_pairs(features: Any) -> Optional[Tuple[str, str]]:
    """The names and policies of a features list as two strings, or None when it is not a list of
    {name: str, policy: str or null}.

    Runs once per host of a fleet (10,000 of them) and its result is hashed at every lookup: the
    common case iterates in C, and strings keep their hash where a tuple of pairs computes it again.
    """
    try:
        names = "\x1f".join(map(_NAME_OF, features))
        policies = [feature.get("policy") for feature in features]
    except (TypeError, KeyError, AttributeError, IndexError):
        return None
    types = set(map(type, policies))
    if types <= _STR_TYPE:
        return names, "\x1f".join(policies)
    if not types <= _POLICY_TYPES and not all(policy is None or isinstance(policy, str) for policy in policies):
        return None
    return names, "\x1f".join(map(str, policies))


def _selected(facts: Any, virt_type: Optional[str], what: str, strict: bool) -> Tuple[Entry, Optional[str]]:
    """The entry select_entry picks (not checked yet) and the virt type to name in a check's error."""
    if virt_type is not None and virt_type not in VIRT_TYPES:
        raise FactsShapeError("%s: unknown virt type '%s'; valid virt types are: %s" % (what, virt_type, ", ".join(VIRT_TYPES)))
    if not _is_mapping(facts):
        raise FactsShapeError("%s must be ansible_facts.hostcpu from hostcpu.libvirt.cpu_facts (or one of its virt_types "
                              "entries), got %s" % (what, type(facts).__name__))
    hostcpu = facts.get("hostcpu")
    if hostcpu is not None and _is_mapping(hostcpu):
        facts = facts["hostcpu"]
    if is_entry(facts):
        if strict and virt_type is not None and facts.get("domain_type") != virt_type:
            raise FactsShapeError("%s are those of virt type '%s', not '%s': pass the whole hostcpu facts or drop virt_type"
                                  % (what, facts.get("domain_type"), virt_type))
        return facts, None
    virt_types = facts.get("virt_types")
    if not isinstance(virt_types, Mapping):
        raise FactsShapeError("%s have neither 'virt_types' nor 'modes': pass ansible_facts.hostcpu as set by "
                              "hostcpu.libvirt.cpu_facts, or one entry of its virt_types" % what)
    wanted = virt_type or DEFAULT_VIRT_TYPE
    entry = virt_types.get(wanted)
    if wanted in virt_types and not is_entry(entry):
        raise FactsShapeError("%s: virt_types.%s is not a virt type entry of hostcpu.libvirt.cpu_facts; %s" % (what, wanted, FIX))
    if not is_entry(entry):
        offered = ", ".join(sorted(virt_types)) or "none"
        suggestion = "virt_type='%s'" % sorted(virt_types)[0] if virt_types else "virt_type"
        raise FactsShapeError("%s have no virt type '%s' (they have: %s); pass %s or probe that virt type with "
                              "hostcpu.libvirt.cpu_facts" % (what, wanted, offered, suggestion))
    return entry, wanted


def cpu_input(cpu: Any, what: str = "the CPU") -> CPUDict:
    """A CPU dict, ``<cpu>`` (or ``<domain>``) XML text, or nothing (no ``<cpu>``: libvirt's default)."""
    if cpu is None or (isinstance(cpu, str) and not cpu.strip()):
        return {}
    if isinstance(cpu, (str, bytes)):
        return cpu_from_xml(cpu)
    if isinstance(cpu, Mapping):
        return plain(cpu)
    raise CPUDefinitionError("%s must be a CPU dict (like {mode: host-model}) or <cpu> XML text, got %s"
                             % (what, type(cpu).__name__))


def plain(value: Any) -> Any:
    """Templar containers and unsafe strings -> plain dict/list/str."""
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, str):
        return str(value)
    return value
