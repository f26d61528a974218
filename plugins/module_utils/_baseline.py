# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet CPU: one custom CPU every host of a fleet runs identically, and which CPU runs where.

Pure functions over ``hostcpu`` facts (``_facts.build_facts``). Whether a CPU runs on a host is
always asked of the live-CPU prediction (``_expansion.predict_live_cpu``): a refusal there is "does
not run", with the features it names. Nothing here decides on its own what a CPU definition means.

Public API:

* ``host_records(hosts, virt_type)``: the accepted inputs (whole facts with a virt type, one
  ``virt_types`` entry, ``{name, facts, virt_type}`` records or a ``{name: facts}`` mapping) as
  labelled entries.
* ``fleet_baseline(records, check, model, cpu_map)`` -> ``Baseline``: the CPU and how it was made.
* ``cpu_verdict(cpu, entry)`` -> whether *cpu* starts on that host, why not, the live CPU.
* ``group_hosts(records)`` -> hosts grouped by the fingerprint of what their guests can get.
* ``compatibility(records, guests, baseline_hosts)``: the data of the fleet role's report.

How the baseline is made (and why):

1. What each host gives: the enabled features of the CPU a host-model guest really runs with
   there, predicted from the facts (with the prediction's fix applied when the host refuses the
   plain host-model CPU, e.g. ``arch-capabilities`` on nested KVM). Without expansion data in the
   facts: libvirt's MIGRATABLE expansion of the host-model CPU (``host_model_migratable``).
   Migratable, because the fleet CPU exists to migrate (``invtsc`` is never in it).
2. The common features: the intersection over all hosts.
3. The model: among the models libvirt reports ``usable='yes'`` on every host (the hypervisor runs
   them unmodified) and whose vendor fits, the one that carries most of the common features, then
   the one that needs the fewest of its own features disabled, then the newest in libvirt's CPU
   map order (the order libvirt's own decoder walks, newest last). ``model=`` overrides the choice.
4. The CPU: ``mode: custom``, ``match: exact``, ``fallback: forbid`` (a model the hypervisor lacks
   fails the start instead of being replaced), ``check: full`` by default (after QEMU started,
   libvirt fails the start on any feature QEMU added or could not give, instead of silently
   adjusting the live CPU as ``partial`` does: under kvm QEMU adds ``x2apic`` to most models, so a
   ``partial`` guest would run a different CPU under kvm than under TCG and fail to migrate),
   the vendor when every host has the same one (TCG hosts emulate any vendor: only hosts of
   other virt types, i.e. hardware, can have conflicting vendors), ``require`` for the common features the model
   lacks, ``disable`` for the model's features some host lacks.
5. Proof by prediction: the CPU is predicted on every distinct host, each with its own libvirt's
   CPU map and version rules; features a host's hypervisor would add are disabled, features a host
   cannot give (or that its refusal names) are dropped and disabled, until every host starts it
   with the same live CPU. Facts without expansion data cannot be proved on and are refused, with
   the host named.

Mixed libvirt versions: the CPU names only features every host's libvirt knows, in the order of
the oldest libvirt's map; a model must be in every host's map, and the features it has on some
hosts but not on others are listed explicitly. Hosts are taken in the order of their keys, so
the CPU does not depend on the order the hosts are given in.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from itertools import chain, islice
from operator import attrgetter
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple

from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import (
    CPUDict,
    cpu_to_xml,
    ordered,
    validate_cpu,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError, ExpansionDataError, GuestWouldNotStart
from ansible_collections.hostcpu.libvirt.plugins.module_utils._versions import parse_version
from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_map import (
    CPUMap,
    DISABLING,
    ENABLING,
    Mask,
    cpu_map_from_xml,
    cpu_map_of,
    read_cpu_map_files,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._expansion import (
    Context,
    CPUDefinitions,
    GuestCPU,
    context_for,
    custom_models_decoding,
    facts_unchanged,
    policies_mask,
    predict_live_cpu,
    predict_live_guest,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._machines import FAMILY_NAMES, MachineError, fleet_machine
from ansible_collections.hostcpu.libvirt.plugins.module_utils._migration import migration_verdict
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts import (
    fingerprint,
    host_model_as_custom_xml,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._shape import (
    cpu_input,
    is_entry as _is_entry,
    entry_identity,
    plain as _plain,
    select_entries,
    select_entry,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._xml import parse_xml

BASELINE_CHECKS = ("full", "partial")
# A refusal can name features to drop; each round drops at least one, so this bounds the rounds.
MAX_ROUNDS = 64
# How many models are tried when the best one cannot be made to start everywhere.
MAX_MODEL_TRIES = 8
SHORT_FINGERPRINT = 12
# The virt type whose guests run on QEMU's emulator (TCG), not on the host's hardware.
TCG = "qemu"

Entry = Mapping[str, Any]


class FleetError(CPUError):
    """Input the fleet functions cannot work with, or a fleet without a common CPU."""


class HostRecord(NamedTuple):
    """One host of the fleet: a label for messages and its ``virt_types`` entry."""

    name: str
    entry: Entry
    # entry_identity, when host_records worked it out already
    identity: Optional[Tuple[Any, ...]] = None


# ---------------------------------------------------------------------------------------------
# inputs: whole facts, virt_types entries, records


def _is_mapping(value: Any) -> bool:
    # Facts are JSON: the exact-type test first; the ABC test (slow) only for other mappings.
    return type(value) is dict or isinstance(value, Mapping)  # pylint: disable=unidiomatic-typecheck


def _source(item: Any, position: int, virt_type: Optional[str]) -> Tuple[str, Tuple[Any, Optional[str], str, bool]]:
    """The host's name and what ``select_entries`` needs: its facts, virt type, label and strictness
    (a record's own virt type must match its facts; the list's is for whole facts only)."""
    if _is_mapping(item) and "facts" in item and not _is_entry(item):
        name = str(item.get("name") or item.get("host") or "host %d" % (position + 1))
        if item.get("virt_type") is not None:
            return name, (item["facts"], item["virt_type"], "the facts of %s" % name, True)
        return name, (item["facts"], virt_type, "the facts of %s" % name, False)
    name = "host %d" % (position + 1)
    return name, (item, virt_type, "the facts of %s" % name, False)


def host_records(hosts: Any, virt_type: Optional[str] = None) -> List[HostRecord]:
    """Labelled entries from a list (facts, entries or ``{name, facts, virt_type}``) or ``{name: facts}``."""
    if isinstance(hosts, Mapping) and not _is_entry(hosts) and "virt_types" not in hosts and "hostcpu" not in hosts:
        sources = [(str(name), (facts, virt_type, "the facts of %s" % name, False)) for name, facts in hosts.items()]
    elif isinstance(hosts, (str, bytes)) or not isinstance(hosts, Sequence):
        raise FleetError("the hosts must be a list of host facts (ansible_facts.hostcpu, one of its virt_types entries, "
                         "or {name, facts, virt_type}) or a mapping of host name to facts, got %s" % type(hosts).__name__)
    else:
        sources = [_source(item, position, virt_type) for position, item in enumerate(hosts)]
    selected = select_entries([source for _name, source in sources])
    return [HostRecord(name, entry, identity) for (name, _unused), (entry, identity) in zip(sources, selected)]


# ---------------------------------------------------------------------------------------------
# CPU map knowledge: model order and model features


_CONTROLLER_MAP: Dict[str, CPUMap] = {}


def _facts_map(entry: Entry) -> Optional[CPUMap]:
    data = entry.get("expansion")
    if not _is_mapping(data) or "models" not in data or "features" not in data:
        return None
    return cpu_map_of(data)


def controller_cpu_map() -> CPUMap:
    """libvirt's CPU map installed on this machine (read once)."""
    if "x86" not in _CONTROLLER_MAP:
        _CONTROLLER_MAP["x86"] = CPUMap.from_map(cpu_map_from_xml(read_cpu_map_files()))
    return _CONTROLLER_MAP["x86"]


def cpu_map_for(records: Sequence[HostRecord]) -> CPUMap:
    """The CPU map the facts carry (expansion data), else the one of libvirt on this machine."""
    for record in records:
        cpu_map = _facts_map(record.entry)
        if cpu_map is not None:
            return cpu_map
    try:
        return controller_cpu_map()
    except ExpansionDataError as exc:
        raise FleetError("the facts carry no expansion data (libvirt's CPU map) and %s; gather the facts with "
                         "hostcpu.libvirt.cpu_facts of this collection (expansion data is on by default)" % exc) from None


def enabled_features(cpu: Optional[Mapping[str, Any]], cpu_map: Optional[CPUMap]) -> FrozenSet[str]:
    """x86ModelFromCPU(cpu, -1) as names: the model's features + force/require - disable/forbid."""
    if not cpu:
        return frozenset()
    names: Set[str] = set()
    model = (cpu.get("model") or {}).get("name")
    if model and cpu_map is not None and model in cpu_map.models:
        names.update(cpu_map.names_of(cpu_map.models[model].mask))
    for feature in cpu.get("features") or ():
        policy = feature.get("policy") or "require"
        if policy in ENABLING:
            names.add(feature["name"])
        elif policy in DISABLING:
            names.discard(feature["name"])
    return frozenset(names)


def _live_enabled(ctx: Context, live: GuestCPU) -> Tuple[Mask, List[str]]:
    """What ``enabled_features(live.as_dict(), ctx.map)`` counts, without building the dict: the
    enabled features in ctx.map as a mask, and the names of those the map lacks. The live CPU's
    features have distinct names, so their order cannot matter."""
    model = live.model if live.mode == "custom" else None
    mask = ctx.map.models[model].mask if model and model in ctx.map.models else 0
    if set(map(type, live.features.values())) <= _STR_TYPE and live.features.keys() <= ctx.map.index.keys():
        masks = live.policy_masks(ctx)
        enabling_mask = policies_mask(masks, ENABLING + ("",))
        return (mask | enabling_mask) & ~policies_mask(masks, DISABLING), []
    enabling = [name for name, policy in live.features.items() if (policy or "require") in ENABLING]
    disabling = [name for name, policy in live.features.items() if (policy or "require") in DISABLING]
    enabling_mask = ctx.map.mask(enabling)
    enabled = (mask | enabling_mask) & ~ctx.map.mask(disabling)
    if _bit_count(enabling_mask) == len(enabling):
        return enabled, []
    return enabled, [name for name in enabling if name not in ctx.map.index]


_STR_TYPE = frozenset((str,))


def _bit_count(mask: Mask) -> int:
    return bin(mask).count("1")


def _enabled_live_features(ctx: Context, live: GuestCPU) -> FrozenSet[str]:
    """``enabled_features(live.as_dict(), ctx.map)``."""
    enabled, unknown = _live_enabled(ctx, live)
    names = frozenset(ctx.map.names_of(enabled))
    return names.union(unknown) if unknown else names


# ---------------------------------------------------------------------------------------------
# one host as the baseline sees it


class HostView(NamedTuple):
    """What the baseline needs of one distinct host (hosts with equal keys share one view)."""

    key: str
    arch: Optional[str]
    virt_type: Optional[str]
    vendor: Optional[str]
    usable: FrozenSet[str]
    model_vendors: Mapping[str, Optional[str]]
    features: FrozenSet[str]
    source: str
    fix: Tuple[str, ...]
    predictable: bool


def _expansion_data(entry: Entry) -> Optional[Mapping[str, Any]]:
    data = entry.get("expansion")
    return data if _is_mapping(data) and "qemu" in data else None


def _identity(entry: Entry, known: Optional[Tuple[Any, ...]] = None) -> Tuple[Any, ...]:
    """What makes hosts equal for the baseline: the entry's fingerprint (domcapabilities), its expansion
    data's fingerprint (QEMU's measured behaviour), virt type, arch and migratable host-model CPU
    (``entry_identity``; for facts without their fingerprints, worked out from the facts)."""
    identity = known or entry_identity(entry)
    if identity is not None:
        return identity
    entry_fingerprint = entry.get("fingerprint") or fingerprint(entry)
    data = _expansion_data(entry)
    data_fingerprint = data.get("fingerprint") if data else None
    if data is not None and not data_fingerprint:
        data_fingerprint = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode("utf-8")).hexdigest()
    migratable = entry.get("host_model_migratable") or {}
    return (entry_fingerprint, data_fingerprint, entry.get("domain_type"), entry.get("arch"),
            tuple((f.get("name"), f.get("policy")) for f in migratable.get("features") or ()))


# json.dumps(identity, default=str) without building an encoder per call
_KEY_ENCODER = json.JSONEncoder(default=str)


def _key_of(identity: Tuple[Any, ...]) -> str:
    return hashlib.sha256(_KEY_ENCODER.encode(identity).encode("utf-8")).hexdigest()


def host_key(entry: Entry) -> str:
    """Fingerprint of the entry (domcapabilities) and of its expansion data (QEMU's measured behaviour)."""
    return _key_of(_identity(entry))


class _HostModelCPUs:
    """The host-model CPUs tried on every host (plain, then with the prediction's fixes disabled),
    each built and defined once (``CPUDefinitions``); nothing changes them once built."""

    def __init__(self) -> None:
        self.definitions = CPUDefinitions()
        self._cpus: Dict[Tuple[str, ...], CPUDict] = {}

    def cpu(self, fix: Tuple[str, ...]) -> CPUDict:
        cpu = self._cpus.get(fix)
        if cpu is None:
            cpu = {"mode": "host-model"}
            if fix:
                cpu["features"] = [{"name": name, "policy": "disable"} for name in fix]
            if len(self._cpus) >= self.definitions.size:
                self.clear()
            self._cpus[fix] = cpu
        return cpu

    def clear(self) -> None:
        self.definitions = CPUDefinitions()
        self._cpus.clear()


_HOST_MODEL_CPUS = _HostModelCPUs()


def _predicted_host_features(entry: Entry) -> Tuple[FrozenSet[str], Tuple[str, ...], Context]:
    """Enabled features of the predicted live host-model CPU, with the prediction's fix when refused,
    and the host's Context."""
    ctx = context_for(entry)
    fix: List[str] = []
    for _attempt in range(4):
        try:
            _ctx, live, _enabled = predict_live_guest(_HOST_MODEL_CPUS.cpu(tuple(fix)), entry, _HOST_MODEL_CPUS.definitions, ctx)
            return _enabled_live_features(ctx, live), tuple(fix), ctx
        except GuestWouldNotStart as exc:
            names = [f["name"] for f in exc.fix or () if f["name"] not in fix]
            if not names:
                raise FleetError("%s (virt type %s) does not start a host-model guest: %s"
                                 % ("the host", entry.get("domain_type"), exc)) from None
            fix.extend(names)
    raise FleetError("the host-model CPU of virt type %s cannot be made to start with the known fixes" % entry.get("domain_type"))


def _expanded_host_features(entry: Entry) -> FrozenSet[str]:
    migratable = entry.get("host_model_migratable")
    if not migratable:
        raise FleetError("the facts of virt type %s carry neither expansion data nor the expanded host-model CPU "
                         "(host_model_migratable); gather them with hostcpu.libvirt.cpu_facts through libvirt, not "
                         "from saved XML" % entry.get("domain_type"))
    # The expansion lists every feature of its model, so no model knowledge is needed.
    return enabled_features(migratable, None)


def _model_vendor(model: Mapping[str, Any]) -> Optional[str]:
    vendor = model.get("vendor")
    return None if vendor in (None, "", "unknown") else vendor


def _host_vendor(entry: Entry) -> Optional[str]:
    cpu = (entry.get("modes") or {}).get("host-model", {}).get("cpu") or entry.get("host_model_migratable") or {}
    return cpu.get("vendor")


def _usable_and_vendors(models: Sequence[Mapping[str, Any]]) -> Tuple[FrozenSet[str], Dict[str, Optional[str]]]:
    usable = frozenset(model["name"] for model in models if model.get("usable") is True)
    vendors = {model["name"]: _model_vendor(model) for model in models}
    return usable, vendors


_USABLE_AND_VENDORS = "baseline: usable models and vendors"


def _alike_usable_and_vendors(models: Any) -> Tuple[FrozenSet[str], Dict[str, Optional[str]]]:
    """``_usable_and_vendors(models)``, worked out once for the hosts of alike models (one CPU generation
    and QEMU), on the decoding their Contexts share (the shape check let only decodable models through)."""
    derived = custom_models_decoding(models).derived
    if _USABLE_AND_VENDORS not in derived:
        derived[_USABLE_AND_VENDORS] = _usable_and_vendors(models)
    return derived[_USABLE_AND_VENDORS]


def _build_view(key: str, entry: Entry) -> Tuple[HostView, Optional[Context]]:
    """The host's view, and its Context when the view was predicted (the proof predicts with it again)."""
    models = (entry.get("modes") or {}).get("custom", {}).get("models") or ()
    # hosts of one CPU generation and QEMU report the same models: worked out once for them
    usable, vendors = _alike_usable_and_vendors(models)
    data = _expansion_data(entry)
    predictable = data is not None and "models" in data and "features" in data
    ctx = None
    if predictable:
        features, fix, ctx = _predicted_host_features(entry)
        source = "predicted host-model"
    else:
        features, fix = _expanded_host_features(entry), ()
        source = "host_model_migratable"
    return HostView(key, entry.get("arch"), entry.get("domain_type"), _host_vendor(entry), usable, vendors,
                    features, source, fix, predictable), ctx


_VIEWS: "OrderedDict[Tuple[Any, ...], HostView]" = OrderedDict()
VIEW_CACHE_SIZE = 4096


def _cached_view(identity: Tuple[Any, ...], entry: Entry) -> Tuple[HostView, Optional[Context]]:
    """The view of *identity*, and the Context of *entry* when the view was built now (else None)."""
    view = _VIEWS.get(identity)
    if view is not None:
        return view, None
    view, ctx = _build_view(_key_of(identity), entry)
    _VIEWS[identity] = view
    while len(_VIEWS) > VIEW_CACHE_SIZE:
        _VIEWS.popitem(last=False)
    return view, ctx


def host_view(entry: Entry) -> HostView:
    """The HostView of *entry*, cached by what ``host_key`` hashes."""
    return _cached_view(_identity(entry), entry)[0]


class DistinctHost(NamedTuple):
    """One distinct host: its view, one entry to predict on, and the names of the hosts like it."""

    view: HostView
    entry: Entry
    names: List[str]
    # the Context of entry, when this call worked it out already (None: context_for finds it)
    context: Optional[Context] = None


def distinct_hosts(records: Sequence[HostRecord]) -> List[DistinctHost]:
    """Hosts with the same key, in order of first appearance; the error names the host that failed."""
    found: "OrderedDict[Tuple[Any, ...], DistinctHost]" = OrderedDict()
    with facts_unchanged():
        for record in records:
            identity = _identity(record.entry, record.identity)
            if identity in found:
                found[identity].names.append(record.name)
                continue
            try:
                view, ctx = _cached_view(identity, record.entry)
            except FleetError as exc:
                raise FleetError("%s: %s" % (record.name, exc)) from None
            found[identity] = DistinctHost(view, record.entry, [record.name], ctx)
    return list(found.values())


# ---------------------------------------------------------------------------------------------
# the baseline


class Baseline(NamedTuple):
    """The fleet CPU and how it was made (for the report)."""

    cpu: CPUDict
    model_candidates: List[str]
    common_features: List[str]
    dropped: Dict[str, str]
    proved: bool
    hosts: List[str]


NAMES_SHOWN = 8
_NAMES_OF = attrgetter("names")


def _names(hosts: Sequence[DistinctHost]) -> str:
    shown = list(islice(chain.from_iterable(host.names for host in hosts), NAMES_SHOWN))
    total = sum(map(len, map(_NAMES_OF, hosts)))
    return ", ".join(shown) + (" and %d more" % (total - NAMES_SHOWN) if total > NAMES_SHOWN else "")


def _check_arch(hosts: Sequence[DistinctHost]) -> None:
    by_arch: "OrderedDict[Any, List[DistinctHost]]" = OrderedDict()
    for host in hosts:
        by_arch.setdefault(host.view.arch, []).append(host)
    if len(by_arch) > 1:
        parts = ["%s: %s" % (arch, _names(group)) for arch, group in by_arch.items()]
        raise FleetError("the hosts have different architectures (%s); a guest cannot move between them, so compute "
                         "one baseline per architecture" % "; ".join(parts))


class FleetVendor(NamedTuple):
    """``models``: the vendor the model must fit; ``cpu``: the <vendor> the fleet CPU names."""

    models: Optional[str]
    cpu: Optional[str]


def _by_vendor(hosts: Iterable[DistinctHost]) -> "OrderedDict[Any, List[DistinctHost]]":
    by_vendor: "OrderedDict[Any, List[DistinctHost]]" = OrderedDict()
    for host in hosts:
        by_vendor.setdefault(host.view.vendor, []).append(host)
    return by_vendor


def _fleet_vendor(hosts: Sequence[DistinctHost]) -> FleetVendor:
    """The vendor of the hosts' hardware: only hosts whose guests run on it (kvm) can disagree.

    TCG (virt type qemu) emulates a CPU of any vendor: the vendor of its host-model CPU is that of
    QEMU's 'max' model, not of any hardware, so it never conflicts with the accelerated hosts'.
    """
    accelerated = [host for host in hosts if host.view.virt_type != TCG]
    by_vendor = _by_vendor(accelerated or hosts)
    known = [vendor for vendor in by_vendor if vendor is not None]
    if len(known) > 1:
        parts = ["%s: %s" % (vendor, _names(by_vendor[vendor])) for vendor in known]
        raise FleetError("the hosts have CPUs of different vendors (%s); libvirt refuses a baseline across vendors "
                         "(\"CPU vendors do not match\") and guests cannot migrate between them: compute one baseline "
                         "per vendor" % "; ".join(parts))
    everyone = list(_by_vendor(hosts))
    # As libvirt's baseline: <vendor> only when every host names the same one.
    return FleetVendor(known[0] if known else None, everyone[0] if len(everyone) == 1 else None)


class FleetMaps(NamedTuple):
    """The CPU maps of a fleet's libvirt versions: each host is predicted with its own map; the fleet
    CPU speaks the vocabulary they share, in the order of the oldest libvirt's map."""

    order: CPUMap
    maps: Tuple[CPUMap, ...]
    known: FrozenSet[str]

    def has_model(self, name: str) -> bool:
        return all(name in cpu_map.models for cpu_map in self.maps)

    def model_features(self, name: str) -> Tuple[FrozenSet[str], FrozenSet[str]]:
        """The model's features in every host's map, and in some host's map."""
        per_map = [frozenset(cpu_map.names_of(cpu_map.models[name].mask)) for cpu_map in self.maps]
        return frozenset.intersection(*per_map), frozenset.union(*per_map)


def _host_map(host: DistinctHost, default: Optional[CPUMap] = None) -> CPUMap:
    """The CPU map of the host's own libvirt (its facts'), else *default*, else this machine's."""
    return _facts_map(host.entry) or default or cpu_map_for([])


def fleet_maps(hosts: Sequence[DistinctHost], order: Optional[CPUMap] = None) -> FleetMaps:
    """Each distinct CPU map once; *order* (default: the map of the oldest libvirt) orders the CPU's features."""
    by_key: "OrderedDict[Tuple[Any, ...], CPUMap]" = OrderedDict()
    for host in sorted(hosts, key=_age):
        cpu_map = _host_map(host, order)
        by_key.setdefault((tuple(cpu_map.names), tuple(cpu_map.model_order)), cpu_map)
    maps = tuple(by_key.values())
    known = frozenset.intersection(*(frozenset(cpu_map.names) for cpu_map in maps))
    return FleetMaps(order or maps[0], maps, known)


def _age(host: DistinctHost) -> Tuple[Any, ...]:
    """Oldest libvirt first; hosts of one version in the order of their keys."""
    return (parse_version(host.entry.get("libvirt_version")) or (0, 0, 0), host.view.key)


def _model_candidates(hosts: Sequence[DistinctHost], vendor: Optional[str], maps: FleetMaps,
                      common: FrozenSet[str]) -> List[str]:
    """Models usable on every host whose vendor fits, best first (see the module docstring)."""
    cpu_map = maps.order
    usable = frozenset.intersection(*(host.view.usable for host in hosts))
    vendors = {}
    for host in hosts:
        vendors.update(host.view.model_vendors)
    position = {name: index for index, name in enumerate(cpu_map.model_order)}
    candidates = []
    for name in usable:
        if not maps.has_model(name):
            continue
        model_vendor = vendors.get(name) or cpu_map.models[name].vendor
        if vendor and model_vendor and model_vendor != vendor:
            continue
        features = frozenset(cpu_map.names_of(cpu_map.models[name].mask))
        candidates.append((-len(features & common), len(features - common), -position[name], name))
    return [item[-1] for item in sorted(candidates)]


class _Draft:
    """The CPU while it is refined: model, the features the guest must see, the ones to disable."""

    def __init__(self, model: str, vendor: Optional[str], check: str, common: FrozenSet[str], maps: FleetMaps):
        self.model = model
        self.vendor = vendor
        self.check = check
        self.map = maps.order
        self.known = maps.known
        # required: what the model lacks on some host; disabled: what it has on some host
        self.model_features, self.model_features_anywhere = maps.model_features(model)
        unknown = sorted(self.model_features_anywhere - self.known)
        if unknown:
            raise FleetError("model %s has features some hosts' libvirt does not know (%s), so it cannot be "
                             "disabled on every host" % (model, ", ".join(unknown)))
        self.common: Set[str] = {name for name in common if name in self.known}
        self.disabled: Set[str] = set()
        self.dropped: Dict[str, str] = {}
        # the CPU of the current state, predicted on every host: built and defined once per state
        self._cpu: Optional[CPUDict] = None
        self._target_masks: Dict[CPUMap, Optional[Mask]] = {}
        self.definitions = CPUDefinitions()

    def target(self) -> FrozenSet[str]:
        """The features the guest must see: the common ones."""
        return frozenset(self.common)

    def drop(self, names: Iterable[str], reason: str) -> bool:
        """Take *names* out of the common features and disable them; True when anything changed."""
        changed = False
        for name in names:
            if name not in self.known:
                continue
            if name in self.common:
                self.common.discard(name)
                changed = True
            if name not in self.disabled:
                self.disabled.add(name)
                changed = True
            self.dropped.setdefault(name, reason)
        if changed:
            self._state_changed()
        return changed

    def disable(self, names: Iterable[str], reason: str) -> bool:
        """Disable *names* that are not common features; True when anything changed."""
        changed = False
        for name in names:
            if name in self.known and name not in self.disabled and name not in self.common:
                self.disabled.add(name)
                self.dropped.setdefault(name, reason)
                changed = True
        if changed:
            self._state_changed()
        return changed

    def _state_changed(self) -> None:
        self._cpu = None
        self._target_masks.clear()

    def target_mask(self, cpu_map: CPUMap) -> Optional[Mask]:
        """``target()`` as a mask of *cpu_map*, None when the map lacks one of its features."""
        if cpu_map not in self._target_masks:
            mask = cpu_map.mask(self.common)
            self._target_masks[cpu_map] = mask if _bit_count(mask) == len(self.common) else None
        return self._target_masks[cpu_map]

    def cpu(self) -> CPUDict:
        """The CPU of the current state (the same dict until the state changes: do not change it)."""
        if self._cpu is None:
            self._cpu = self._built_cpu()
        return self._cpu

    def _built_cpu(self) -> CPUDict:
        order = self.map.index
        required = sorted(self.common - self.model_features, key=order.__getitem__)
        disabled = sorted((self.model_features_anywhere | self.disabled) - self.common, key=order.__getitem__)
        cpu: CPUDict = {"mode": "custom", "match": "exact", "check": self.check,
                        "model": {"name": self.model, "fallback": "forbid"}}
        if self.vendor:
            cpu["vendor"] = self.vendor
        features = [{"name": name, "policy": "require"} for name in required]
        features += [{"name": name, "policy": "disable"} for name in disabled]
        if features:
            cpu["features"] = features
        return ordered(cpu)


def _refine_on(host: DistinctHost, draft: _Draft) -> bool:
    """Predict the draft on *host* and adjust it to what the host really gives; True when it changed.

    A refusal drops the features it names (missing, forbidden, the fix) and disables the ones the
    hypervisor would add; a start drops the common features the live CPU lacks and disables the
    ones it has beyond them. A difference that cannot be adjusted away is an error.
    """
    try:
        ctx, live, _enabled = predict_live_guest(draft.cpu(), host.entry, draft.definitions, host.context)
    except GuestWouldNotStart as exc:
        label = _names([host])
        fix = [f["name"] for f in exc.fix or ()]
        changed = draft.drop(list(exc.missing_features) + fix + list(exc.forbidden_features),
                             "%s refuses it: %s" % (label, exc.reason))
        changed = draft.disable(exc.extra_features, "%s's hypervisor adds it" % label) or changed
        if not changed:
            raise FleetError("%s does not start the baseline CPU with model %s: %s" % (label, draft.model, exc)) from None
        return True
    except ExpansionDataError as exc:
        raise FleetError("%s: %s" % (_names([host]), exc)) from None
    enabled, unknown = _live_enabled(ctx, live)
    if not unknown and enabled == draft.target_mask(ctx.map):
        return False
    live_features = frozenset(ctx.map.names_of(enabled)).union(unknown)
    target = draft.target()
    if live_features == target:
        return False
    label = _names([host])
    changed = draft.drop(target - live_features, "%s cannot give it" % label)
    changed = draft.disable(live_features - target, "%s's hypervisor adds it" % label) or changed
    if not changed:
        raise FleetError("%s runs the baseline CPU with model %s as a different CPU (extra: %s; missing: %s)"
                         % (label, draft.model, ", ".join(sorted(live_features - target)) or "none",
                            ", ".join(sorted(target - live_features)) or "none"))
    return changed


def _prove(hosts: Sequence[DistinctHost], draft: _Draft) -> None:
    """Refine until every host starts the draft with exactly the common features.

    Each change of the draft bumps its version; a host is predicted again only when the draft
    changed since it last started it unchanged.
    """
    version = 0
    accepted = [-1] * len(hosts)
    for _round in range(MAX_ROUNDS):
        for position, host in enumerate(hosts):
            if accepted[position] == version:
                continue
            while _refine_on(host, draft):
                version += 1
            accepted[position] = version
        if all(seen == version for seen in accepted):
            return
    raise FleetError("the baseline CPU did not settle after %d rounds of prediction" % MAX_ROUNDS)


def _disable_everything_else(hosts: Sequence[DistinctHost], draft: _Draft) -> None:
    """Without predictions: disable every feature some host gives beyond the common set."""
    for host in hosts:
        extra = host.view.features - draft.target()
        draft.disable(extra, "not every host gives it (%s does)" % _names([host]))


def _check_provable(hosts: Sequence[DistinctHost]) -> None:
    """The fleet CPU is proved by predicting it on every host: facts without expansion data are refused."""
    unprovable = [host for host in hosts if not host.view.predictable]
    if unprovable:
        raise FleetError("%s: the facts carry no expansion data, so whether the fleet CPU starts there cannot be "
                         "proved; gather them with hostcpu.libvirt.cpu_facts through libvirt (expansion: true, the "
                         "default) and see its warnings for why the data is missing" % _names(unprovable))


def _missing_reasons(hosts: Sequence[DistinctHost], common: FrozenSet[str]) -> Dict[str, str]:
    """For each feature some host gives but not all: the hosts without it."""
    offered: Set[str] = set()
    for host in hosts:
        offered |= host.view.features
    lacking: Dict[str, List[DistinctHost]] = {name: [] for name in offered - common}
    for host in hosts:
        for name in lacking.keys() - host.view.features:
            lacking[name].append(host)
    reasons = {name: "not on %s" % _names(without) for name, without in lacking.items()}
    for host in hosts:
        for name in host.view.fix:
            if name not in reasons:
                reasons[name] = "%s does not start a host-model guest with it (the prediction's fix is to disable it)" % _names([host])
    return reasons


def _validated_check(check: str) -> str:
    if check not in BASELINE_CHECKS:
        hint = (" ('none' lets QEMU silently drop what a host cannot give, so the guest would run a different CPU "
                "on different hosts)" if check == "none" else "")
        raise FleetError("check must be one of %s, got %r%s" % (", ".join(BASELINE_CHECKS), check, hint))
    return check


def fleet_baseline(records: Sequence[HostRecord], check: str = "full", model: Optional[str] = None,
                   cpu_map: Optional[CPUMap] = None, unproved: bool = False) -> Baseline:
    """A custom CPU every host of *records* starts, with the same live CPU on each of them.

    *unproved*: accept facts without expansion data and, when any host has none, only disable every
    feature some host gives beyond the common ones (no prediction; the arithmetic compared with
    libvirt's own baseline test data). The filters never ask for it.
    """
    check = _validated_check(check)
    if not records:
        raise FleetError("the list of hosts is empty: pass the hostcpu facts of at least one host")
    given = distinct_hosts(records)
    _check_arch(given)
    if not unproved:
        _check_provable(given)
    vendor = _fleet_vendor(given)
    hosts = sorted(given, key=lambda host: host.view.key)
    maps = fleet_maps(hosts, cpu_map)
    cpu_map = maps.order
    common = frozenset.intersection(*(host.view.features for host in hosts))
    if model is not None:
        if not isinstance(model, str) or not maps.has_model(model):
            raise FleetError("model '%s' is not in libvirt's CPU map of every host; use one of: %s"
                             % (model, ", ".join(name for name in cpu_map.model_order if maps.has_model(name))))
        candidates = [model]
    else:
        candidates = _model_candidates(hosts, vendor.models, maps, common)
    if not candidates:
        raise FleetError("no CPU model is usable (libvirt's usable='yes') on every host%s; pass model= to choose one "
                         "whose missing features are disabled" % (" of vendor %s" % vendor.models if vendor.models else ""))
    proved = all(host.view.predictable for host in hosts)
    errors = []
    for name in candidates[:MAX_MODEL_TRIES]:
        try:
            draft = _Draft(name, vendor.cpu, check, common, maps)
            if proved:
                _prove(hosts, draft)
            else:
                _disable_everything_else(hosts, draft)
        except FleetError as exc:
            errors.append(str(exc))
            continue
        reasons = _missing_reasons(hosts, common)
        reasons.update(draft.dropped)
        order = {name: position for position, name in enumerate(cpu_map.names)}
        dropped = {name: reasons[name] for name in sorted(reasons, key=lambda name: (order.get(name, len(order)), name))}
        return Baseline(draft.cpu(), candidates, sorted(draft.target(), key=order.__getitem__), dropped, proved,
                        [record.name for record in records])
    raise FleetError("no baseline CPU starts on every host: %s" % "; ".join(errors))


# ---------------------------------------------------------------------------------------------
# does a CPU run on a host, and why not


def cpu_verdict(cpu: Optional[CPUDict], entry: Entry) -> Dict[str, Any]:
    """Whether a guest with *cpu* starts on *entry*'s host, as the live-CPU prediction says.

    Returns ``runs``, ``reason`` (libvirt's error and the hint), ``missing_features``,
    ``extra_features``, ``forbidden_features``, ``fix`` (features to disable that make it start),
    ``unusable_model`` (a custom model libvirt reports usable='no' here) and ``live_cpu``.
    Invalid CPUs and facts without expansion data raise CPUError.
    """
    cpu = cpu or {}
    validate_cpu(cpu)
    verdict: Dict[str, Any] = {"runs": True, "reason": None, "missing_features": [], "extra_features": [],
                               "forbidden_features": [], "fix": None, "unusable_model": _unusable_model(cpu, entry),
                               "live_cpu": None}
    if _expansion_data(entry) is None:
        raise FleetError("the facts of virt type %s carry no expansion data, so whether a CPU starts cannot be "
                         "predicted; gather them with hostcpu.libvirt.cpu_facts of this collection (expansion data is "
                         "on by default)" % entry.get("domain_type"))
    try:
        verdict["live_cpu"] = predict_live_cpu(cpu, entry)
    except GuestWouldNotStart as exc:
        verdict.update(runs=False, reason=str(exc).replace("libvirt would not start this guest: ", "", 1),
                       missing_features=list(exc.missing_features), extra_features=list(exc.extra_features),
                       forbidden_features=list(exc.forbidden_features), fix=exc.fix)
    return verdict


def _unusable_model(cpu: Mapping[str, Any], entry: Entry) -> Optional[str]:
    name = (cpu.get("model") or {}).get("name")
    if (cpu.get("mode") or "custom") != "custom" or not name:
        return None
    for model in (entry.get("modes") or {}).get("custom", {}).get("models") or ():
        if model.get("name") == name:
            return None if model.get("usable") is not False else name
    return name


def runs_on(cpu: Optional[CPUDict], entry: Entry) -> bool:
    """True when a guest with *cpu* starts on *entry*'s host (the live-CPU prediction does not refuse it)."""
    return bool(cpu_verdict(cpu, entry)["runs"])


# ---------------------------------------------------------------------------------------------
# groups and the compatibility report data


def group_hosts(records: Sequence[HostRecord]) -> List[Dict[str, Any]]:
    """Hosts grouped by what their guests can get: the facts' fingerprint and the expansion data's."""
    groups: "OrderedDict[str, Dict[str, Any]]" = OrderedDict()
    for record in records:
        key = host_key(record.entry)
        group = groups.get(key)
        if group is None:
            entry = record.entry
            host_model = (entry.get("modes") or {}).get("host-model", {}).get("cpu") or {}
            group = {"id": "G%d" % (len(groups) + 1), "key": key, "fingerprint": entry.get("fingerprint") or fingerprint(entry),
                     "virt_type": entry.get("domain_type"), "arch": entry.get("arch"), "vendor": host_model.get("vendor"),
                     "host_model": (host_model.get("model") or {}).get("name"),
                     "usable_models": sorted(m["name"] for m in (entry.get("modes") or {}).get("custom", {}).get("models") or ()
                                             if m.get("usable") is True),
                     "hosts": [], "entry": entry}
            groups[key] = group
        group["hosts"].append(record.name)
    return list(groups.values())


def _guest_cpu(guest: Any, fleet_cpu: Optional[CPUDict]) -> CPUDict:
    """The guest's CPU: its ``cpu`` (dict or XML), or the fleet CPU for ``cpu: fleet`` or no ``cpu``."""
    if not isinstance(guest, Mapping) or not guest.get("name"):
        raise FleetError("each guest must be a mapping with a name and a cpu (a CPU dict, <cpu> XML or 'fleet'), got %r"
                         % (guest,))
    cpu = guest.get("cpu", "fleet")
    if cpu == "fleet" or cpu is None:
        if fleet_cpu is None:
            raise FleetError("guest %s asks for the fleet CPU, but there is none (see the baseline's error)" % guest["name"])
        return fleet_cpu
    return cpu_input(cpu, "the CPU of guest %s" % guest["name"])


def _short(verdict: Mapping[str, Any]) -> Dict[str, Any]:
    return {key: verdict[key] for key in ("runs", "reason", "missing_features", "extra_features", "forbidden_features",
                                          "fix", "unusable_model")}


def _path(live: CPUDict, source: Entry, dest: Entry, machine: Optional[str]) -> Dict[str, Any]:
    verdict = migration_verdict(live, dest, source, machine)
    return {key: verdict[key] for key in ("outcome", "migrates", "blockers", "refusal")}


def _guest_machine(guest: Mapping[str, Any], machines: Mapping[str, Any]) -> Optional[str]:
    machine = guest.get("machine", machines.get("guest_machine"))
    if machine is not None and not isinstance(machine, str):
        raise FleetError("guest %s: machine must be a machine type name such as pc-q35-7.2, got %r" % (guest.get("name"), machine))
    return machine


class _Judged(NamedTuple):
    """Where a CPU starts and migrates with a machine type: the same for every guest of that CPU and machine."""
    verdicts: Dict[str, Dict[str, Any]]
    paths: List[Dict[str, Any]]
    path_index: Dict[str, Dict[str, int]]


def _judged(cpu: CPUDict, groups: Sequence[Dict[str, Any]], machine: Optional[str], memo: Dict[Tuple[str, Optional[str]], _Judged]) -> _Judged:
    """The verdict on every group and the migration paths between them, worked out once per CPU and machine
    (a fleet's guests mostly share a few CPUs: the fleet CPU above all)."""
    key = (json.dumps(cpu, sort_keys=True), machine)
    if key not in memo:
        verdicts = {group["id"]: cpu_verdict(cpu, group["entry"]) for group in groups}
        entries = {group["id"]: group["entry"] for group in groups}
        paths = [dict(_path(verdicts[origin]["live_cpu"], entries[origin], entries[target], machine), **{"from": origin, "to": target})
                 for origin in entries if verdicts[origin]["runs"] for target in entries if target != origin]
        path_index: Dict[str, Dict[str, int]] = {}
        for index, path in enumerate(paths):
            path_index.setdefault(path["from"], {})[path["to"]] = index
        memo[key] = _Judged(verdicts, paths, path_index)
    return memo[key]


def _guest_report(guest: Mapping[str, Any], cpu: CPUDict, groups: Sequence[Dict[str, Any]],
                  host_group: Mapping[str, str], machines: Mapping[str, Any],
                  memo: Dict[Tuple[str, Optional[str]], _Judged]) -> Dict[str, Any]:
    machine = _guest_machine(guest, machines)
    verdicts, paths, path_index = _judged(cpu, groups, machine, memo)
    source = host_group.get(str(guest.get("host"))) if guest.get("host") is not None else None
    if guest.get("host") is not None and source is None:
        raise FleetError("guest %s: host '%s' is not one of the fleet's hosts" % (guest.get("name"), guest.get("host")))
    if source is None:
        source = next((gid for gid, verdict in verdicts.items() if verdict["runs"]), None)
    migration = {path["to"]: {key: path[key] for key in ("outcome", "migrates", "blockers", "refusal")}
                 for path in paths if path["from"] == source}
    return {
        "name": str(guest.get("name")),
        "host": None if guest.get("host") is None else str(guest.get("host")),
        "cpu": ordered(cpu),
        "machine": machine,
        "source_group": source,
        "runs_on": [gid for gid, verdict in verdicts.items() if verdict["runs"]],
        "groups": {gid: _short(verdict) for gid, verdict in verdicts.items()},
        "migrates_to": [gid for gid, verdict in migration.items() if verdict["migrates"]],
        "migration": migration,
        "paths": paths,
        "path_index": path_index,
    }


def _machine_summary(records: Sequence[HostRecord], family: str) -> Dict[str, Any]:
    """The machine types every host offers, and the one the fleet's guests are judged with."""
    try:
        families = fleet_machine([(record.name, record.entry) for record in records])
    except MachineError as exc:
        return {"families": {}, "family": family, "guest_machine": None, "error": str(exc)}
    wanted = FAMILY_NAMES.get(family, family)
    guest_machine = families.get(wanted)
    error = None if guest_machine else "no %s machine type is offered by every host (common families: %s)" % (
        wanted, ", ".join(families) or "none")
    return {"families": families, "family": wanted, "guest_machine": guest_machine, "error": error}


def compatibility(records: Sequence[HostRecord], guests: Sequence[Mapping[str, Any]] = (),
                  baseline_hosts: Optional[Sequence[str]] = None, check: str = "full",
                  model: Optional[str] = None, machine_family: str = "pc-i440fx") -> Dict[str, Any]:
    """Groups with their own baselines, the fleet baseline, and for each guest where it runs and migrates.

    *baseline_hosts* names the hosts the fleet CPU is computed for (default: all). Each guest is
    ``{name, cpu (a CPU dict or 'fleet'), host (optional: where it runs now), machine (optional)}``;
    migrations are judged with the guest's machine type, else the newest of *machine_family* that
    every host offers (``machine`` of the result), and go from every group a guest runs on to
    every other group (``paths``).
    """
    if not records:
        raise FleetError("the list of hosts is empty: pass the hostcpu facts of at least one host")
    groups = group_hosts(records)
    host_group = {name: group["id"] for group in groups for name in group["hosts"]}
    chosen = list(records)
    if baseline_hosts is not None:
        unknown = [name for name in baseline_hosts if name not in host_group]
        if unknown:
            raise FleetError("baseline hosts %s are not among the fleet's hosts (%s)" % (", ".join(unknown), ", ".join(host_group)))
        wanted = set(baseline_hosts)
        chosen = [record for record in records if record.name in wanted]
    _validated_check(check)
    fleet = _baseline_summary(chosen, check, model)
    for group in groups:
        group["baseline"] = _baseline_summary([HostRecord(name, group["entry"]) for name in group["hosts"][:1]], check, model)
    guest_list = [{"name": "fleet CPU", "cpu": "fleet"}] if fleet["cpu"] is not None else []
    guest_list.extend(guests or ())
    machines = _machine_summary(records, machine_family)
    memo: Dict[Tuple[str, Optional[str]], _Judged] = {}
    reports = [_guest_report(guest, _guest_cpu(guest, fleet["cpu"]), groups, host_group, machines, memo) for guest in guest_list]
    return {
        "groups": [{key: value for key, value in group.items() if key not in ("entry", "key")} for group in groups],
        "hosts": [{"name": record.name, "group": host_group[record.name], "virt_type": record.entry.get("domain_type")}
                  for record in records],
        "baseline": dict(fleet, hosts=[record.name for record in chosen],
                         groups=sorted({host_group[record.name] for record in chosen}, key=lambda gid: int(gid[1:]))),
        "machine": machines,
        "guests": reports,
    }


def _baseline_summary(records: Sequence[HostRecord], check: str, model: Optional[str] = None) -> Dict[str, Any]:
    try:
        baseline = fleet_baseline(records, check, model)
    except FleetError as exc:
        return {"cpu": None, "error": str(exc), "model_candidates": [], "common_features": [], "dropped": {}, "proved": False}
    return {"cpu": baseline.cpu, "error": None, "model_candidates": baseline.model_candidates,
            "common_features": baseline.common_features, "dropped": baseline.dropped, "proved": baseline.proved}


# ---------------------------------------------------------------------------------------------
# inputs of libvirt's own baseline and compare (the cpu_baseline module)


def _is_facts(value: Mapping[str, Any]) -> bool:
    return _is_entry(value) or "virt_types" in value or isinstance(value.get("hostcpu"), Mapping)


def libvirt_cpu_xml(item: Any, virt_type: Optional[str], what: str) -> str:
    """``<cpu>`` XML for baselineHypervisorCPU / compareHypervisorCPU from XML, a CPU dict or host facts.

    Host facts stand for their host-model CPU as ``<cpu mode='custom' match='exact'>`` (libvirt's
    own input convention for baselines: what the host gives a host-model guest).
    """
    if isinstance(item, (str, bytes)):
        root = parse_xml(item, what)
        if root.tag != "cpu":
            raise FleetError("%s is <%s> XML; pass a <cpu> element (a guest CPU, or a host CPU of 'virsh capabilities')"
                             % (what, root.tag))
        return item.decode("utf-8") if isinstance(item, bytes) else item
    if isinstance(item, Mapping) and _is_facts(item):
        entry = select_entry(item, virt_type, what, strict=False)
        text = host_model_as_custom_xml(entry)
        if text is None:
            raise FleetError("%s: virt type %s has no host-model CPU to stand for the host; pass a CPU instead"
                             % (what, entry.get("domain_type")))
        return text
    if isinstance(item, Mapping):
        cpu = validate_cpu(_plain(item))
        return cpu_to_xml(cpu, indent=0)
    raise FleetError("%s must be <cpu> XML text, a CPU dict or a host's hostcpu facts, got %s" % (what, type(item).__name__))
