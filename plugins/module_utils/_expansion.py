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

from collections import OrderedDict
from contextlib import contextmanager
from operator import itemgetter
from typing import Any, Callable, ContextManager, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Tuple

from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_map import (
    DISABLING,
    ENABLING,
    Mask,
    cpu_map_of,
    decode,
    from_hex,
    apply_policies,
    required_mapping,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import (
    CPUDefinitionError,
    CPUDict,
    copied,
    normalize_cpu,
    ordered,
    validate_cpu,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import ExpansionDataError, GuestWouldNotStart
from ansible_collections.hostcpu.libvirt.plugins.module_utils._expansion_data import (
    DATA_FORMAT,
    MSR_PARENTS,
    PASSTHROUGH_MODES,
    QEMU_FEATURE_NAMES,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._versions import parse_version, qemu_rules_for, rules_for


# A fleet baseline predicts on every distinct host twice (its host-model CPU, then the proof):
# the contexts of a 1000-host fleet must stay cached between the two passes.
CONTEXT_CACHE_SIZE = 1024
# QEMU's IS_INTEL_CPU / IS_ZHAOXIN_CPU vendors: no cmp_legacy for multi-core packages.
INTEL_LIKE_VENDORS = ("GenuineIntel", "CentaurHauls", "  Shanghai  ")


class _BlockerMasks(Mapping):
    """The blocker mask of each model the hypervisor accepts, worked out when first read: a
    prediction reads one or two of some 60, and a fleet builds a Context per distinct host."""

    def __init__(self, names: Mapping[str, Any], blocker_mask: Callable[[str], Mask]):
        # the models are the keys of *names* (a shared decoding: read, never changed)
        self._names = names
        self._masks: Dict[str, Mask] = {}
        self._blocker_mask = blocker_mask

    def __getitem__(self, name: str) -> Mask:
        if name not in self._names:
            raise KeyError(name)
        if name not in self._masks:
            self._masks[name] = self._blocker_mask(name)
        return self._masks[name]

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class _SharedDecodings:
    """Parts of the facts decoded once for every host whose raw part is equal (``==``, in C): hosts of
    one QEMU and libvirt version carry the same model definitions, MSR bits, dependencies and
    domcapabilities model list, while their supported features and host-model CPUs differ.

    Each part is decoded by one function of the raw value (and of the CPU map, part of the key);
    an error is raised by that decoding and never kept. The raw value is kept as a plain copy, so
    facts changed later do not change what it is compared with. Mappings must also have their keys
    in the same order (``==`` ignores it; the decoded dicts keep it, e.g. the MSR bits named in a refusal).

    Within ``facts_unchanged()``, a part passed again as the very object passed last under its key
    (the view of a host, then its Context) is what it was decoded to then, without comparing.
    """

    def __init__(self, candidates: int, keys: int) -> None:
        self.candidates = candidates
        self.keys = keys
        self._known: Dict[Tuple[Any, ...], List[Tuple[Any, Optional[List[Any]], Any]]] = {}
        # within facts_unchanged(): the last raw object of each key and what it was decoded to
        self._same: Optional[Dict[Tuple[Any, ...], Tuple[Any, Any]]] = None

    @contextmanager
    def facts_unchanged(self) -> Iterator[None]:
        """While the facts do not change (one call working on them): the objects passed are kept, so
        their ids are not reused."""
        if self._same is not None:
            yield
            return
        self._same = {}
        try:
            yield
        finally:
            self._same = None

    def _recalled(self, key: Tuple[Any, ...], raw: Any) -> Tuple[bool, Any]:
        seen = self._same.get(key) if self._same is not None else None
        if seen is not None and seen[0] is raw:
            return True, seen[1]
        return False, None

    def _remember(self, key: Tuple[Any, ...], raw: Any, decoded: Any) -> Any:
        if self._same is not None:
            self._same[key] = (raw, decoded)
        return decoded

    def get(self, key: Tuple[Any, ...], raw: Any, decode: Callable[[Any], Any]) -> Any:
        recalled, decoded = self._recalled(key, raw)
        if recalled:
            return decoded
        return self._remember(key, raw, self._compared(key, raw, decode))

    def _compared(self, key: Tuple[Any, ...], raw: Any, decode: Callable[[Any], Any]) -> Any:
        known = self._known.get(key)
        if known is None:
            if len(self._known) >= self.keys:
                self._known.clear()
            known = self._known[key] = []
        for known_raw, known_order, decoded in known:
            if raw == known_raw and (known_order is None or list(raw) == known_order):
                return decoded
        decoded = decode(raw)
        if len(known) < self.candidates:
            known.append((copied(raw), list(raw) if isinstance(raw, Mapping) else None, decoded))
        return decoded

    def get_models(self, key: Tuple[Any, ...], models: Any, decode: Callable[[Any], Any]) -> Any:
        """``get`` for domcapabilities' custom models: usable= ``true`` and ``1`` are ``==`` but not
        alike (``is True``), so the types of the usable values are part of the key."""
        recalled, decoded = self._recalled(key, models)
        if recalled:
            return decoded
        try:
            usable_types = tuple([type(model.get("usable")) for model in models])
        except (AttributeError, TypeError):
            return decode(models)
        return self._remember(key, models, self.get(key + (usable_types,), models, decode))

    def clear(self) -> None:
        self._known.clear()


# Parts of up to this many QEMU and libvirt versions (and virt types) are kept per part, and parts
# of at most SHARED_DECODING_KEYS // 3 CPU maps (the keys of the parts that depend on the map).
SHARED_DECODING_CANDIDATES = 16
SHARED_DECODING_KEYS = 64
_SHARED = _SharedDecodings(SHARED_DECODING_CANDIDATES, SHARED_DECODING_KEYS)


def facts_unchanged() -> ContextManager[None]:
    """A block in which the facts passed do not change: the shared decodings take a part passed
    again as the same object without comparing it (see _SharedDecodings)."""
    return _SHARED.facts_unchanged()


def _decoded_msr(raw: Any) -> Dict[str, Tuple[int, int]]:
    return {name: (int(value[0]), int(value[1])) for name, value in required_mapping(raw, "msr").items()}


def _decoded_qemu_models(raw: Any) -> Dict[str, Mask]:
    return {name: from_hex(mask, "qemu.models.%s" % name) for name, mask in required_mapping(raw, "qemu.models").items()}


def _decoded_levels(raw: Any) -> Dict[str, int]:
    return {name: int(level) for name, level in required_mapping(raw, "qemu.levels").items()}


def _decoded_level_raisers(raw: Any) -> List[Tuple[int, Mask]]:
    return [(int(level), from_hex(mask, "qemu.level_raisers")) for level, mask in raw]


class CustomModels(NamedTuple):
    """What the Context reads of domcapabilities' custom models."""

    names: List[Any]
    usable: Dict[Any, Any]
    blockers: Dict[Any, Tuple[Any, ...]]
    # what other readers work out from alike models, by their own key (errors are not kept)
    derived: Dict[str, Any]


def _distinct_policies(features: Any) -> Optional[Dict[str, str]]:
    """A CPU's ``{name: policy or require}`` when its features have distinct string names (then
    their order cannot matter); else None (and the caller walks them in order, failing as it would)."""
    try:
        policies = {feature["name"]: feature.get("policy") or "require" for feature in features}
        distinct = len(policies) == len(features)
    except (KeyError, TypeError, AttributeError, IndexError):
        return None
    return policies if distinct and frozenset(map(type, policies)) <= _STR_TYPE else None


_STR_TYPE = frozenset((str,))


def _decoded_custom_models(custom_models: Any) -> CustomModels:
    return CustomModels([model.get("name") for model in custom_models],
                        {model.get("name"): model.get("usable") for model in custom_models},
                        {model.get("name"): tuple(model.get("blockers") or ()) for model in custom_models
                         if model.get("blockers") is not None}, {})


def custom_models_decoding(models: Any) -> CustomModels:
    """The decoding of domcapabilities' custom models, shared by every host whose models are alike
    (see _SharedDecodings): it must not be changed, but for what a reader adds to its ``derived``."""
    return _SHARED.get_models(("modes.custom.models",), models, _decoded_custom_models)


class Context:
    """Everything one prediction needs about one host and virt type, as integers and tuples."""

    def __init__(self, entry: Mapping[str, Any]):
        data = required_mapping(entry.get("expansion"), "expansion")
        if data.get("format") != DATA_FORMAT:
            raise ExpansionDataError("expansion data has format %r, this collection reads format %d; gather the facts "
                                     "again with hostcpu.libvirt.cpu_facts" % (data.get("format"), DATA_FORMAT))
        self.virt_type = entry.get("domain_type") or data.get("virt_type")
        self.arch = entry.get("arch") or "x86_64"
        self.libvirt_version = parse_version(entry.get("libvirt_version"))
        self.rules = rules_for(self.libvirt_version)
        self.map = cpu_map_of(data)
        self.unchecked = _SHARED.get(("unchecked", self.map), self.rules.unchecked_features, self._unchecked_mask)
        self.msr = _SHARED.get(("msr",), data.get("msr") or {}, _decoded_msr)
        qemu = required_mapping(data.get("qemu"), "qemu")
        self.qemu_models = _SHARED.get(("qemu.models",), qemu.get("models"), _decoded_qemu_models)
        self.supported = from_hex(qemu.get("supported"), "qemu.supported")
        self.migratable = from_hex(qemu.get("migratable"), "qemu.migratable")
        self.unknown = self.map.mask(qemu.get("unknown") or ())
        self.dependencies = _SHARED.get(("qemu.dependencies", self.map), qemu.get("dependencies") or {}, self._decoded_dependencies)
        self.msr_failures = [(int(failure["index"]), int(str(failure["value"]), 16)) for failure in qemu.get("msr_failures") or ()]
        self.unannounced_msrs = [(int(failure["index"]), int(failure["leaf"])) for failure in qemu.get("msr_unannounced_failures") or ()]
        self.levels = _SHARED.get(("qemu.levels",), qemu.get("levels") or {}, _decoded_levels)
        self.qemu_rules = qemu_rules_for(qemu.get("version"))
        self.latent = from_hex(qemu.get("latent") or "", "qemu.latent")
        self.qemu_vendors = dict(required_mapping(qemu.get("vendors") or {}, "qemu.vendors"))
        self.level_raisers = _SHARED.get(("qemu.level_raisers",), qemu.get("level_raisers") or (), _decoded_level_raisers)
        self.host_model = self._host_model(data.get("host_model"))
        self._host_model_mask: Optional[Mask] = None
        host = data.get("host")
        self.host = None if host is None else (host.get("vendor"), from_hex(host.get("features"), "host.features"),
                                               from_hex(host.get("listed"), "host.listed"))
        modes = entry.get("modes") or {}
        self.modes = {name: bool((mode or {}).get("supported")) for name, mode in modes.items()}
        custom_models = custom_models_decoding((modes.get("custom") or {}).get("models") or ())
        # domcapabilities' usable= and <blockers> of each model (the partial check and the translation use them)
        self.usable = custom_models.usable
        self.blockers = custom_models.blockers
        # the models QEMU accepts: those of domcapabilities (the keys of usable), else those of its expansions
        self.allowed: Mapping[str, Mask] = _BlockerMasks(self.usable if custom_models.names else self.qemu_models,
                                                         self._blocker_mask)
        self._reported, self._reported_policies = self._reported_host_model((modes.get("host-model") or {}).get("cpu"))

    def _unchecked_mask(self, names: Iterable[str]) -> Mask:
        return self.map.mask(name for name in names if name in self.map.index)

    def _decoded_dependencies(self, raw: Any) -> List[Tuple[Mask, Mask]]:
        return [(self.map.bit(parent), self.map.mask(children))
                for parent, children in required_mapping(raw, "qemu.dependencies").items()]

    def host_model_mask(self) -> Mask:
        """x86ModelFromCPU of the migratable host-model CPU (``host_model``), worked out once."""
        if self._host_model_mask is None:
            model, _vendor, features = self.host_model
            self._host_model_mask = apply_policies(self.model_mask(model), features, self.map.bit)
        return self._host_model_mask

    def _blocker_mask(self, name: str) -> Mask:
        """The features blocking QEMU's model *name* here (libvirt's hvModel->blockers): those
        domcapabilities lists (10.9+), none for a usable model, else the ones QEMU's definition has and
        the accelerator cannot give, after QEMU clears the features hanging on ones the model lacks."""
        if name in self.blockers:
            return self.map.mask(self.blockers[name])
        if self.usable.get(name) is True:
            return 0
        features = self.qemu_models.get(name, 0)
        for parent, children in self.dependencies:
            if not features & parent:
                features &= ~children
        return features & ~self.supported

    @property
    def reported(self) -> Optional[Mask]:
        """virCPUExpandFeatures of the host-model CPU domcapabilities reports, when QEMU gave it
        (fallback forbid): what the blockers-based partial check requires features from."""
        if self._reported_policies is not None:
            self._reported = self.map.with_policies(self._reported, self._reported_policies)
            self._reported_policies = None
        return self._reported

    def _reported_host_model(self, cpu: Any) -> Tuple[Optional[Mask], Optional[Dict[str, str]]]:
        """``reported``, or the model's mask and the CPU's features of distinct names (which cannot
        fail) to apply to it when ``reported`` is first read: few predictions read it."""
        if not _is_mapping(cpu) or not _is_mapping(cpu.get("model")) or cpu["model"].get("fallback") != "forbid":
            return None, None
        model = self.map.models.get(cpu["model"].get("name"))
        if model is None:
            return None, None
        features = cpu.get("features") or ()
        distinct = _distinct_policies(features)
        if distinct is not None:
            return model.mask, distinct
        policies = ((feature["name"], feature.get("policy") or "require") for feature in features)
        return apply_policies(model.mask, policies, self.map.bit), None

    @staticmethod
    def _host_model(value: Any) -> Optional[Tuple[str, Optional[str], Tuple[Tuple[str, str], ...]]]:
        if value is None:
            return None
        value = required_mapping(value, "host_model")
        return value["model"], value.get("vendor"), _pairs(value["features"])

    def model_mask(self, name: str) -> Mask:
        model = self.map.models.get(name)
        if model is None:
            raise GuestWouldNotStart("internal error: Unknown CPU model %s" % name,
                                     hint="use one of the models libvirt knows (the facts' modes.custom.models)")
        return model.mask


def _pairs(items: Any) -> Tuple[Tuple[Any, Any], ...]:
    """``(name, policy)`` of each ``[name, policy]``; a list of two-item lists as a whole, in C."""
    if type(items) is list and set(map(type, items)) <= _LIST_TYPE and set(map(len, items)) <= _PAIR_LENGTH:  # pylint: disable=unidiomatic-typecheck
        return tuple(map(tuple, items))
    return tuple((name, policy) for name, policy in items)


_LIST_TYPE = frozenset((list,))
_NAME_OF = itemgetter("name")
_PAIR_LENGTH = frozenset((2,))
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
        return tuple(map(_NAME_OF, models))
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
    if not _is_mapping(entry):
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

    def copy(self) -> "GuestCPU":
        """A copy to change on its own (the values of ``rest`` are shared, as with the CPU dict)."""
        twin = GuestCPU.__new__(GuestCPU)
        twin.__dict__.update(self.__dict__)
        twin.rest = dict(self.rest)
        twin.features = OrderedDict(self.features)
        return twin

    def update_feature(self, name: str, policy: str) -> None:
        self.features[name] = policy

    def add_if_missing(self, name: str, policy: str) -> None:
        if name not in self.features:
            self.features[name] = policy

    def policy_masks(self, ctx: Context) -> Dict[str, Mask]:
        """The features of each policy as masks, in one pass."""
        masks: Dict[str, Mask] = {}
        bits = ctx.map.bits
        for name, policy in self.features.items():
            try:
                masks[policy] = masks.get(policy, 0) | bits.get(name, 0)
            except TypeError:  # an unhashable policy (damaged facts) is none of the policies
                continue
        return masks

    def data(self, ctx: Context, masks: Optional[Dict[str, Mask]] = None) -> Mask:
        """x86ModelFromCPU(cpu, -1): model features + force/require - disable/forbid
        (*masks*: this CPU's ``policy_masks``, when worked out already)."""
        if masks is None:
            masks = self.policy_masks(ctx)
        model = ctx.model_mask(self.model) if self.model else 0
        return (model | policies_mask(masks, ENABLING)) & ~policies_mask(masks, DISABLING)

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


def policies_mask(masks: Mapping[str, Mask], policies: Iterable[str]) -> Mask:
    """The features of any of *policies*, from ``GuestCPU.policy_masks``."""
    mask = 0
    for policy in policies:
        mask |= masks.get(policy, 0)
    return mask


def _incompatible(message: str, **kwargs: Any) -> GuestWouldNotStart:
    return GuestWouldNotStart("the CPU is incompatible with host CPU: %s" % message, **kwargs)


def _fix(names: Iterable[str]) -> List[Dict[str, str]]:
    return [{"name": name, "policy": "disable"} for name in names]


def check_features_known(ctx: Context, cpu: GuestCPU) -> None:
    if cpu.features.keys() <= ctx.map.index.keys():
        return
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
    if ctx.host is None or "forbid" not in cpu.features.values():
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
    masks = cpu.policy_masks(ctx)
    force = masks.get("force", 0)
    require = (ctx.model_mask(cpu.model) if cpu.model else 0) | masks.get("require", 0)
    optional = masks.get("optional", 0)
    disable = masks.get("disable", 0)
    forbidden = masks.get("forbid", 0) & host
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
    return ctx.host_model_mask()


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
    optional = "optional" in cpu.features.values()
    if cpu.mode == "host-model" or cpu.match == "minimum" or optional:
        if ctx.host_model is None:
            raise GuestWouldNotStart("unsupported configuration: unknown host CPU model",
                                     hint="this virt type reports no host-model CPU; use a custom model")
        if optional:
            # (a host model the map lacks fails below all the same, in model_mask)
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
    drop_unknown = not ctx.rules.keeps_unknown_disabled_features and ctx.unknown
    ignored = ctx.rules.ignored_features
    if ignored.isdisjoint(cpu.features) and not (drop_unknown and ctx.map.mask(cpu.features) & ctx.unknown):
        return
    bits = ctx.map.bits
    dropped = [name for name, policy in cpu.features.items()
               if name in ignored or (drop_unknown and policy in DISABLING and bits.get(name, 0) & ctx.unknown)]
    for name in dropped:
        del cpu.features[name]


def _qemu_base(ctx: Context, cpu: GuestCPU) -> Mask:
    if cpu.mode in PASSTHROUGH_MODES:
        return (ctx.migratable if cpu.rest.get("migratable", True) else ctx.supported) & ~ctx.latent
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


def _logical_cpus_per_package(cpu: GuestCPU) -> int:
    topology = cpu.rest.get("topology") or {}
    count = 1
    for key in ("dies", "clusters", "cores", "threads"):
        count *= int(topology.get(key) or 1)
    return count


def _qemu_vendor(ctx: Context, cpu: GuestCPU) -> Optional[str]:
    """The CPUID vendor QEMU gives the guest: vendor_id, else that of QEMU's model ('max' for host-passthrough and maximum)."""
    if cpu.vendor_id:
        return cpu.vendor_id
    return ctx.qemu_vendors.get("max" if cpu.mode in PASSTHROUGH_MODES else cpu.model or "")


def _topology_features(ctx: Context, cpu: GuestCPU) -> Mask:
    """QEMU 10+: ht, and cmp_legacy for a vendor other than Intel (and Zhaoxin), when a package has several logical CPUs."""
    if not ctx.qemu_rules.topology_sets_ht or _logical_cpus_per_package(cpu) < 2:
        return 0
    vendor = _qemu_vendor(ctx, cpu)
    mask = ctx.map.bit("ht")
    if vendor is not None and vendor not in INTEL_LIKE_VENDORS:
        mask |= ctx.map.bit("cmp_legacy")
    return mask


def qemu_features(ctx: Context, cpu: GuestCPU, masks: Optional[Dict[str, Mask]] = None) -> Tuple[Mask, Mask]:
    """The features QEMU enables and the ones it reports unavailable, for the -cpu libvirt builds
    (*masks*: the CPU's ``policy_masks``, when worked out already)."""
    if masks is None:
        masks = cpu.policy_masks(ctx)
    plus = policies_mask(masks, ENABLING)
    minus = policies_mask(masks, DISABLING)
    unknown = []
    if plus & ctx.unknown:
        unknown = [name for name, policy in cpu.features.items() if policy in ENABLING and ctx.map.bit(name) & ctx.unknown]
    if unknown:
        cpu_type = "%s-%s-cpu" % ({"host-passthrough": "host", "maximum": "max"}.get(cpu.mode, cpu.model), ctx.arch)
        raise GuestWouldNotStart("internal error: qemu unexpectedly closed the monitor: qemu-system-%s: can't apply global "
                                 "%s.%s=on: Property '%s.%s' not found"
                                 % (ctx.arch, cpu_type, QEMU_FEATURE_NAMES.get(unknown[0], unknown[0]), cpu_type,
                                    QEMU_FEATURE_NAMES.get(unknown[0], unknown[0])),
                                 missing_features=unknown,
                                 hint="QEMU does not know %s: remove %s from the CPU" % (", ".join(unknown), "it" if len(unknown) == 1 else "them"))
    requested = ((_qemu_base(ctx, cpu) | plus) & ~minus) | _topology_features(ctx, cpu)
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


def verify_invtsc(ctx: Context, cpu: GuestCPU, enabled: Mask, masks: Optional[Dict[str, Mask]] = None) -> None:
    """qemuProcessVerifyCPUFeatures (*masks*: the CPU's ``policy_masks``, when worked out already)."""
    invtsc = ctx.map.bit("invtsc")
    if cpu.mode == "custom" and not cpu.model:
        return
    if not enabled & invtsc and cpu.data(ctx, masks) & invtsc:
        raise GuestWouldNotStart("unsupported configuration: host doesn't support invariant TSC",
                                 missing_features=["invtsc"], fix=_fix(["invtsc"]), hint="remove the invtsc feature")


def update_live(ctx: Context, cpu: GuestCPU, enabled: Mask, disabled: Mask, masks: Optional[Dict[str, Mask]] = None) -> None:
    """virCPUx86UpdateLive: reconcile the definition with what QEMU really did (*masks*: the CPU's
    ``policy_masks``, when worked out already)."""
    if masks is None:
        masks = cpu.policy_masks(ctx)
    data = cpu.data(ctx, masks)
    disabled_by_definition = masks.get("disable", 0)
    # Expected "disable": every feature outside the definition's data, or for host-passthrough and
    # maximum only the ones the definition disables.
    known = (1 << len(ctx.map.names)) - 1
    if cpu.mode in PASSTHROUGH_MODES:
        expected_disabled = disabled_by_definition & ~data
    else:
        expected_disabled = known & ~data
    added_mask = expected_disabled & enabled & known
    removed_mask = (disabled | (data & ~enabled)) & known
    added: List[str] = []
    removed: List[str] = []
    model = ctx.map.models.get(cpu.model) if cpu.model else None
    # added='yes' features the definition does not name: check='full' lets the hypervisor decide
    ignored = (model.added if model else 0) & ~(data | disabled_by_definition)
    full = cpu.check == "full"
    changed = (added_mask | removed_mask) & ~ctx.unchecked
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


class CPUDefinitions:
    """CPU dicts predicted on many hosts, validated once and normalised once per virt type and libvirt
    version (all that ``validate_cpu`` and ``normalize_cpu`` read), instead of once per prediction.

    The CPUs are known by identity and kept (so their ids are not reused): the caller must not
    change a CPU dict once it passed it, nor the parts of the live CPUs predicted with it that
    come from it (topology, cache, maxphysaddr).
    """

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._valid: Dict[int, CPUDict] = {}
        self._normalized: Dict[Tuple[int, Any, Any], Tuple[CPUDict, CPUDict]] = {}
        self._guests: Dict[Tuple[int, Any, Any], Tuple[CPUDict, GuestCPU]] = {}

    def validated(self, cpu: CPUDict) -> None:
        if self._valid.get(id(cpu)) is not cpu:
            validate_cpu(cpu)
            self._keep(self._valid, id(cpu), cpu)

    def normalized(self, cpu: CPUDict, virt_type: Any, libvirt_version: Any) -> CPUDict:
        key = (id(cpu), virt_type, libvirt_version)
        known = self._normalized.get(key)
        if known is None or known[0] is not cpu:
            known = (cpu, normalize_cpu(cpu, virt_type, libvirt_version))
            self._keep(self._normalized, key, known)
        return known[1]

    def guest(self, cpu: CPUDict, virt_type: Any, libvirt_version: Any) -> GuestCPU:
        """``GuestCPU(self.normalized(...))``, built once and copied."""
        key = (id(cpu), virt_type, libvirt_version)
        known = self._guests.get(key)
        if known is None or known[0] is not cpu:
            known = (cpu, GuestCPU(self.normalized(cpu, virt_type, libvirt_version)))
            self._keep(self._guests, key, known)
        return known[1].copy()

    def _keep(self, cache: Dict[Any, Any], key: Any, value: Any) -> None:
        if len(cache) >= self.size:
            cache.clear()
        cache[key] = value


def guest_cpu(cpu: Optional[CPUDict], ctx: Context, definitions: Optional[CPUDefinitions] = None) -> GuestCPU:
    """The domain's CPU as libvirt holds it after define (refused as libvirt refuses it).

    A host-model ``<model fallback='...'/>`` is not written back to the XML, but the running
    daemon keeps it in the definition it starts the guest from, so it counts here.
    """
    if definitions is None:
        validate_cpu(cpu or {})
    else:
        definitions.validated(cpu or {})
    mode = (cpu or {}).get("mode") or "custom"
    if mode not in ctx.rules.modes:
        refusal = "unsupported configuration: Invalid mode attribute '%s'" % mode
        known = "libvirt %s knows the modes %s" % (".".join(map(str, ctx.libvirt_version or ())), ", ".join(ctx.rules.modes))
        raise CPUDefinitionError("%s (%s)" % (refusal, known), refusal)
    if definitions is None:
        guest = GuestCPU(normalize_cpu(cpu or {}, ctx.virt_type, ctx.libvirt_version))
    else:
        guest = definitions.guest(cpu or {}, ctx.virt_type, ctx.libvirt_version)
    given_fallback = ((cpu or {}).get("model") or {}).get("fallback")
    if guest.mode == "host-model" and given_fallback:
        guest.fallback = given_fallback
    return guest


def prepare_for_qemu(ctx: Context, guest: GuestCPU) -> GuestCPU:
    """qemuProcessStartValidate + qemuProcessUpdateGuestCPU: the CPU libvirt gives QEMU."""
    check_features_known(ctx, guest)
    check_mode_supported(ctx, guest)
    if guest.check != "none" and ctx.rules.checks_forbidden_features:
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


def finish_live(ctx: Context, guest: GuestCPU, enabled: Mask, disabled: Mask,
                masks: Optional[Dict[str, Mask]] = None) -> GuestCPU:
    """qemuProcessUpdateAndVerifyCPU: the live CPU once QEMU enabled *enabled* and filtered *disabled*
    (*masks*: the CPU's ``policy_masks``, when worked out already)."""
    if masks is None:
        masks = guest.policy_masks(ctx)
    verify_invtsc(ctx, guest, enabled, masks)
    if guest.mode == "custom" or guest.check == "full":
        update_live(ctx, guest, enabled, disabled, masks)
        guest.check = "full"
    if not ctx.rules.ignored_features.isdisjoint(guest.features):
        for name in [name for name in guest.features if name in ctx.rules.ignored_features]:
            del guest.features[name]
    return guest


def predict_live_cpu(cpu: Optional[CPUDict], entry: Mapping[str, Any]) -> CPUDict:
    """The CPU libvirt's live XML shows after a guest with *cpu* starts on *entry*'s host and virt type.

    *cpu* is the domain's CPU dict (``{}`` or None: no ``<cpu>``, libvirt's default qemu64).
    Raises ``GuestWouldNotStart`` when libvirt or QEMU would refuse to start it, ``CPUDefinitionError``
    when libvirt would refuse to define it, ``ExpansionDataError`` when the facts cannot tell.
    """
    return predict_live_guest(cpu, entry)[1].as_dict()


def predict_guest(cpu: Optional[CPUDict], entry: Mapping[str, Any]) -> Tuple[CPUDict, List[str]]:
    """``predict_live_cpu`` and the features the guest sees (QEMU enabled them), in the CPU map's words."""
    ctx, live, enabled = predict_live_guest(cpu, entry)
    return live.as_dict(), ctx.map.names_of(enabled)


def predict_live_guest(cpu: Optional[CPUDict], entry: Mapping[str, Any], definitions: Optional[CPUDefinitions] = None,
                       ctx: Optional[Context] = None) -> Tuple[Context, GuestCPU, Mask]:
    """``predict_live_cpu`` before it becomes a dict: the host's Context, the live CPU and the
    features QEMU enabled. *definitions*: where a CPU predicted on many hosts is defined once;
    *ctx*: ``context_for(entry)``, when the caller has it."""
    if ctx is None:
        ctx = context_for(entry)
    guest = prepare_for_qemu(ctx, guest_cpu(cpu, ctx, definitions))
    masks = guest.policy_masks(ctx)
    enabled, disabled = qemu_features(ctx, guest, masks)
    return ctx, finish_live(ctx, guest, enabled, disabled, masks), enabled


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
