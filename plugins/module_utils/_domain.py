# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Edit the ``<cpu>`` of domain XML text and touch nothing else.

The domain XML is edited as text: the byte span of the top-level ``<cpu>`` element is replaced
(or inserted, or removed) and every other byte stays as it was, comments and quoting included.
Children of ``<cpu>`` the CPU dict does not own (``<numa>``, anything unknown) are carried over
verbatim. ``plan_cpu`` decides whether a wish changes a domain by comparing libvirt's normalised
forms; ``cpu_diff`` and ``outside_cpu_differences`` give the before/after views the module reports.
"""

from __future__ import annotations

import re
from typing import Any, Dict, FrozenSet, List, Mapping, NamedTuple, Optional, Tuple

from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import (
    CPUDict,
    DEFAULT_X86_MODEL,
    KEY_ORDER,
    MIGRATABLE_MODES,
    MODE_INDEPENDENT_KEYS,
    cpu_from_element,
    copied,
    cpu_to_xml,
    features_from_mapping,
    merge_cpu,
    normalize_cpu,
    ordered,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError
from ansible_collections.hostcpu.libvirt.plugins.module_utils._versions import rules_for
from ansible_collections.hostcpu.libvirt.plugins.module_utils._xml import etree, parse_xml

# Children of <cpu> that the CPU dict describes; every other child (numa, ...) is kept verbatim.
OWNED_CPU_CHILDREN = ("model", "vendor", "topology", "cache", "maxphysaddr", "feature")
# Top-level elements libvirt prints after <cpu> (virDomainDefFormatInternal); a new <cpu> goes
# before the first of them that the domain has.
ELEMENTS_AFTER_CPU = ("clock", "on_poweroff", "on_reboot", "on_crash", "on_lockfailure", "pm", "perf",
                      "devices", "seclabel", "keywrap", "launchSecurity")
# The single options of domain_cpu that map onto top-level keys of the CPU dict.
PLAIN_OPTION_KEYS = ("mode", "match", "check", "migratable", "vendor", "topology", "cache", "maxphysaddr")
MODEL_OPTION_KEYS = {"model": "name", "fallback": "fallback", "vendor_id": "vendor_id"}
FEATURES_MODES = ("merge", "replace")
# What libvirt (qemuDomainDefSetDefaultCPU) stores for an x86 domain without <cpu>: kvm and qemu alike.
NO_CPU: CPUDict = {}

_ELEMENT_TOKEN = re.compile(
    r"<!--.*?-->"                                   # comment
    r"|<!\[CDATA\[.*?\]\]>"                         # CDATA section
    r"|<\?.*?\?>"                                   # processing instruction / XML declaration
    r"|</(?P<close>[^\s>]+)\s*>"                    # end tag
    r"|<(?P<open>[^\s/>!?]+)"                       # start tag name
    r"(?:\s+[^\s=/>]+\s*=\s*(?:\"[^\"]*\"|'[^']*'))*"  # attributes (values may hold '>')
    r"\s*(?P<empty>/?)>",
    re.S,
)


class DomainXMLError(CPUError):
    """Domain XML that cannot be edited (not a <domain>, not well-formed, ...)."""


class DomainInfo(NamedTuple):
    """What a domain's XML says about where its CPU runs."""
    name: Optional[str]
    uuid: Optional[str]
    virt_type: str
    arch: Optional[str]
    machine: Optional[str]
    emulator: Optional[str]
    max_vcpus: Optional[int] = None  # <vcpu>: the maximum, which a CPU topology must multiply out to


class Span(NamedTuple):
    tag: str
    start: int
    end: int


class CPUPlan(NamedTuple):
    """The outcome of comparing a domain's CPU with a wish."""
    current: CPUDict            # the CPU as the XML says (ordered)
    desired: Optional[CPUDict]  # the CPU to write; None removes <cpu>
    changed: bool
    current_normalized: CPUDict
    desired_normalized: CPUDict


# ---------------------------------------------------------------------------------------------
# reading


def parse_domain(text: str):
    """The <domain> root of *text*, or DomainXMLError."""
    root = parse_xml(text, "domain XML")
    if root.tag != "domain":
        raise DomainXMLError("expected domain XML with a <domain> root element, got <%s>; "
                             "pass what 'virsh dumpxml --inactive' prints" % root.tag)
    return root


_INFO_CHILDREN = frozenset(("name", "uuid", "os", "devices", "vcpu"))


def _first_children(root, tags: FrozenSet[str]) -> Dict[str, Any]:
    """tag -> the root's first child of that tag, for each of *tags* it has (``root.find(tag)``, one pass)."""
    found: Dict[str, Any] = {}
    for child in root:
        if child.tag in tags and child.tag not in found:
            found[child.tag] = child
    return found


def _stripped_text(element) -> Optional[str]:
    return None if element is None else (element.text or "").strip() or None


def _info_of(root) -> DomainInfo:
    children = _first_children(root, _INFO_CHILDREN)
    os_el, devices = children.get("os"), children.get("devices")
    type_el = None if os_el is None else os_el.find("type")
    return DomainInfo(
        name=_stripped_text(children.get("name")),
        uuid=_stripped_text(children.get("uuid")),
        virt_type=root.get("type") or "kvm",
        arch=None if type_el is None else type_el.get("arch"),
        machine=None if type_el is None else type_el.get("machine"),
        emulator=None if devices is None else _stripped_text(devices.find("emulator")),
        max_vcpus=_max_vcpus(children.get("vcpu")),
    )


def _max_vcpus(vcpu) -> Optional[int]:
    text = _stripped_text(vcpu) or ""
    return int(text) if text.isdigit() else None


def _cpu_of(root) -> CPUDict:
    cpu_el = root.find("cpu")
    return {} if cpu_el is None else ordered(cpu_from_element(cpu_el))


def domain_info(text: str) -> DomainInfo:
    return _info_of(parse_domain(text))


def read_cpu(text: str) -> CPUDict:
    """The domain's CPU dict ({} when it has no <cpu>)."""
    return _cpu_of(parse_domain(text))


def read_domain(text: str) -> Tuple[DomainInfo, CPUDict]:
    """domain_info and read_cpu of *text*, parsed once."""
    root = parse_domain(text)
    return _info_of(root), _cpu_of(root)


# ---------------------------------------------------------------------------------------------
# locating elements as byte spans


def _element_spans(text: str, depth_wanted: int, inside: Optional[Tuple[int, int]] = None) -> List[Span]:
    """Spans of the elements at *depth_wanted* (1 = children of the root) within *inside*."""
    start, stop = inside or (0, len(text))
    spans: List[Span] = []
    stack: List[Tuple[str, int]] = []
    for match in _ELEMENT_TOKEN.finditer(text, start, stop):
        if match.group("open"):
            if match.group("empty"):
                if len(stack) == depth_wanted:
                    spans.append(Span(match.group("open"), match.start(), match.end()))
            else:
                stack.append((match.group("open"), match.start()))
        elif match.group("close"):
            tag, opened_at = stack.pop()
            if len(stack) == depth_wanted:
                spans.append(Span(tag, opened_at, match.end()))
    return spans


def cpu_span(text: str) -> Optional[Span]:
    """The byte span of the domain's top-level <cpu>, or None."""
    for span in _element_spans(text, 1):
        if span.tag == "cpu":
            return span
    return None


def _line_indent(text: str, offset: int) -> str:
    line_start = text.rfind("\n", 0, offset) + 1
    prefix = text[line_start:offset]
    return prefix if not prefix.strip() else ""


def _indent_unit(text: str) -> int:
    """Spaces per nesting level, read from the first child of the root (libvirt: 2)."""
    children = _element_spans(text, 1)
    if children:
        width = len(_line_indent(text, children[0].start))
        if width:
            return width
    return 2


def kept_cpu_children(text: str) -> List[str]:
    """Verbatim text of the <cpu> children the CPU dict does not own (e.g. <numa>)."""
    span = cpu_span(text)
    if span is None:
        return []
    inner = _element_spans(text, 1, (span.start, span.end))
    return [text[child.start:child.end] for child in inner if child.tag not in OWNED_CPU_CHILDREN]


# ---------------------------------------------------------------------------------------------
# writing


def _render_cpu(cpu: CPUDict, kept: List[str], unit: int) -> str:
    return cpu_to_xml(cpu, indent=unit, level=1, extra_children=kept).lstrip(" ")


def _insertion_point(text: str) -> Tuple[int, str]:
    """Where a new <cpu> goes (libvirt's order) and the indentation of that line."""
    children = _element_spans(text, 1)
    for span in children:
        if span.tag in ELEMENTS_AFTER_CPU:
            return span.start, _line_indent(text, span.start)
    root_close = text.rstrip().rfind("</")
    if children:
        last = children[-1]
        return last.end, "\n" + _line_indent(text, last.start)
    return root_close, ""


def _cut(text: str, span: Span) -> str:
    """*text* without *span*, and without the line break and indentation before it when it had a line."""
    indent = _line_indent(text, span.start)
    start = span.start - len(indent)
    if start > 0 and text[start - 1] == "\n":
        start -= 1
    return text[:start] + text[span.end:]


def replace_cpu(text: str, cpu: Optional[CPUDict]) -> str:
    """*text* with its <cpu> replaced by *cpu* (None: removed); nothing else changes.

    Children the dict does not own (``<numa>``) are kept, so removing a CPU that has NUMA cells
    leaves ``<cpu>`` with just those cells.
    """
    parse_domain(text)
    span = cpu_span(text)
    kept = kept_cpu_children(text)
    unit = _indent_unit(text)
    if cpu is None and not kept:
        return text if span is None else _cut(text, span)
    rendered = _render_cpu(cpu or {}, kept, unit)
    if span is not None:
        return text[:span.start] + rendered + text[span.end:]
    offset, indent = _insertion_point(text)
    if indent.startswith("\n"):
        return text[:offset] + indent + rendered + text[offset:]
    if indent:
        return text[:offset] + rendered + "\n" + indent + text[offset:]
    return text[:offset] + rendered + text[offset:]


# ---------------------------------------------------------------------------------------------
# the wish: options -> CPU dict


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _drop_none(item) for key, item in value.items() if item is not None}
    return value


def cpu_from_options(options: Mapping[str, Any]) -> CPUDict:
    """The CPU dict of domain_cpu's single options (mode, model, fallback, features, ...)."""
    cpu: CPUDict = {}
    for key in PLAIN_OPTION_KEYS:
        if options.get(key) is not None:
            cpu[key] = _drop_none(options[key])
    model = {field: options[option] for option, field in MODEL_OPTION_KEYS.items() if options.get(option) is not None}
    if model:
        cpu["model"] = model
    if options.get("features") is not None:
        cpu["features"] = features_from_mapping(options["features"])
    return cpu


def cpu_from_whole(cpu: Any) -> CPUDict:
    """The ``cpu`` option: a whole CPU dict (features may be a {name: policy} mapping)."""
    if not isinstance(cpu, dict):
        raise DomainXMLError("the option cpu must be a CPU mapping like {mode: host-model}, got %s" % type(cpu).__name__)
    unknown = sorted(str(key) for key in set(cpu) - set(KEY_ORDER))
    if unknown:
        # checked here, not only when the CPU changes: a key that is ignored would pass silently
        raise DomainXMLError("the option cpu has unknown CPU keys %s; allowed: %s" % (", ".join(unknown), ", ".join(KEY_ORDER)))
    for key in ("model", "topology", "cache", "maxphysaddr"):
        if cpu.get(key) is not None and not isinstance(cpu[key], dict):
            raise DomainXMLError("cpu.%s must be a mapping (like model: {name: EPYC}), got %s" % (key, type(cpu[key]).__name__))
    result = _drop_none(copied(cpu))
    if result.get("features") is not None:
        result["features"] = features_from_mapping(result["features"])
    return result


def effective_features_mode(features_mode: Optional[str], whole_cpu_given: bool) -> str:
    """merge for single options, replace for a whole ``cpu``, unless the task says otherwise."""
    if features_mode is None:
        return "replace" if whole_cpu_given else "merge"
    if features_mode not in FEATURES_MODES:
        raise DomainXMLError("features_mode '%s' is not valid; use merge or replace" % features_mode)
    return features_mode


# ---------------------------------------------------------------------------------------------
# planning


def is_libvirt_default(cpu: CPUDict, virt_type: str, libvirt_version: Optional[Tuple[int, ...]] = None,
                       default_model: Optional[str] = DEFAULT_X86_MODEL) -> bool:
    """True when *cpu* (without topology, cache, maxphysaddr) is what libvirt stores for no <cpu>."""
    if cpu.get("mode", "custom") != "custom":
        return False  # normalising keeps the mode, and no <cpu> is stored as a custom CPU
    core = {key: value for key, value in cpu.items() if key not in MODE_INDEPENDENT_KEYS}
    return (normalize_cpu(core, virt_type, libvirt_version, default_model)
            == normalize_cpu(NO_CPU, virt_type, libvirt_version, default_model))


def _adds_features_only(wanted: CPUDict) -> bool:
    """The wish sets features (or topology and the like) and no mode or model of its own."""
    return bool(wanted.get("features")) and wanted.get("mode") in (None, "custom") and not (wanted.get("model") or {}).get("name")


def merge_base(current: CPUDict, virt_type: str, libvirt_version: Optional[Tuple[int, ...]] = None,
               default_model: Optional[str] = DEFAULT_X86_MODEL, wanted: Optional[CPUDict] = None) -> CPUDict:
    """The CPU a wish is merged onto.

    libvirt stores a domain without <cpu> as a custom CPU with its emulator's default model
    (``qemu64`` or ``qemu32`` on x86, ``fallback=forbid check=none``); those values are libvirt's
    defaults, not the operator's choices, so a wish is merged onto the mode-independent parts
    (topology, cache, maxphysaddr) only. Setting ``model: EPYC`` on such a domain therefore gives
    what defining ``<cpu><model>EPYC</model></cpu>`` gives. A wish of features alone keeps the
    default model: features need one, and it is the CPU the guest has.
    """
    if current and is_libvirt_default(current, virt_type, libvirt_version, default_model):
        base = {key: copied(current[key]) for key in MODE_INDEPENDENT_KEYS if key in current}
        if wanted is not None and _adds_features_only(wanted) and (current.get("model") or {}).get("name"):
            base.update(mode="custom", model=copied(current["model"]))
        return base
    return copied(current)


def _drop_carried_passthrough_cache(desired: CPUDict, wanted: CPUDict) -> CPUDict:
    """A ``cache mode='passthrough'`` carried over from host-passthrough/maximum into another mode
    is dropped: libvirt refuses it there ("can only be used with 'host-passthrough' / 'maximum'")
    and the task did not ask for it."""
    cache = desired.get("cache") or {}
    if "cache" not in wanted and cache.get("mode") == "passthrough" and desired.get("mode") not in MIGRATABLE_MODES:
        desired = {key: value for key, value in desired.items() if key != "cache"}
    return desired


def needs_default_model(current: CPUDict, wanted: CPUDict, state: str) -> bool:
    """Whether planning depends on the emulator's default CPU model: removing <cpu>, a CPU that may
    be libvirt's default (custom, no model or fallback forbid), or a custom wish without a model."""
    if state == "absent":
        return True
    model = current.get("model") or {}
    if current.get("mode", "custom") == "custom" and (not model.get("name") or model.get("fallback") == "forbid"):
        return True
    return wanted.get("mode") == "custom" and not (wanted.get("model") or {}).get("name")


def plan_cpu(current: CPUDict, wanted: CPUDict, state: str = "present", features_mode: str = "merge",
             virt_type: str = "kvm", libvirt_version: Optional[Tuple[int, ...]] = None,
             default_model: Optional[str] = DEFAULT_X86_MODEL) -> CPUPlan:
    """Decide the CPU to write and whether that changes what libvirt stores (*default_model*: what
    libvirt fills into a custom CPU without a model for this domain, see needs_default_model)."""
    current_normalized = normalize_cpu(current, virt_type, libvirt_version, default_model)
    if state == "absent":
        desired: Optional[CPUDict] = None
        desired_normalized = normalize_cpu(NO_CPU, virt_type, libvirt_version, default_model)
    else:
        base = merge_base(current, virt_type, libvirt_version, default_model, wanted)
        desired = _drop_carried_passthrough_cache(merge_cpu(base, wanted, features_mode), wanted)
        desired_normalized = (current_normalized if desired == current
                              else normalize_cpu(desired, virt_type, libvirt_version, default_model))
    return CPUPlan(current=ordered(current), desired=desired, changed=current_normalized != desired_normalized,
                   current_normalized=current_normalized, desired_normalized=desired_normalized)


def apply_plan(text: str, plan: CPUPlan) -> str:
    """The domain XML with the planned <cpu>; unchanged text when the plan changes nothing."""
    if not plan.changed:
        return text
    return replace_cpu(text, plan.desired)


# ---------------------------------------------------------------------------------------------
# reporting


def cpu_element_text(text: str) -> str:
    """The <cpu> element of *text* as it stands there, dedented ('' when there is none)."""
    span = cpu_span(text)
    if span is None:
        return ""
    indent = _line_indent(text, span.start)
    lines = text[span.start:span.end].split("\n")
    return "\n".join([lines[0]] + [line[len(indent):] if line.startswith(indent) else line for line in lines[1:]]) + "\n"


def predicted_cpu_text(text: str, plan: CPUPlan) -> str:
    """The <cpu> libvirt is expected to store for *plan* (its normalised form), dedented."""
    if not plan.changed:
        return cpu_element_text(text)
    return cpu_element_text(replace_cpu(text, plan.desired_normalized))


def cpu_diff(name: str, before_text: str, after_text: str) -> Dict[str, str]:
    """One Ansible diff entry: the <cpu> before and after, with headers naming the domain."""
    return {
        "before_header": "%s: <cpu> before" % name,
        "after_header": "%s: <cpu> after" % name,
        "before": before_text,
        "after": after_text,
    }


def _strip_whitespace(element) -> None:
    for node in element.iter():
        if node.text is not None and not node.text.strip():
            node.text = None
        if node.tail is not None and not node.tail.strip():
            node.tail = None


def _sort_devices(root) -> None:
    """Devices in a fixed order: libvirt itself moves auto-added controllers on a redefine (its
    first redefine of a q35 domain moves the sata and virtio-serial controllers behind the PCI
    controllers), which changes nothing a guest sees (every device keeps its address)."""
    devices = root.find("devices")
    if devices is None:
        return
    children = list(devices)
    for child in children:
        devices.remove(child)
    for child in sorted(children, key=lambda el: etree.tostring(el, method="c14n")):
        devices.append(child)


def without_cpu(text: str) -> str:
    """A canonical, indented form of the domain without its top-level <cpu>, devices sorted (for comparison)."""
    root = parse_domain(text)
    for cpu_el in root.findall("cpu"):
        root.remove(cpu_el)
    _strip_whitespace(root)
    _sort_devices(root)
    canonical = etree.tostring(root, method="c14n")
    return etree.tostring(etree.fromstring(canonical), pretty_print=True, encoding="unicode")


def numa_of(text: str) -> Optional[str]:
    """The canonical <cpu><numa> of *text*, or None."""
    cpu_el = parse_domain(text).find("cpu")
    numa = None if cpu_el is None else cpu_el.find("numa")
    if numa is None:
        return None
    _strip_whitespace(numa)
    numa.tail = None
    return etree.tostring(numa, method="c14n").decode("utf-8")


def outside_cpu_differences(before: str, after: str, limit: int = 40) -> List[str]:
    """Unified-diff lines of everything but <cpu> (and <cpu><numa> when it changed); [] when equal."""
    # Imported here: only a write needs it, and a run that changes nothing does without it.
    import difflib  # pylint: disable=import-outside-toplevel
    lines = list(difflib.unified_diff(without_cpu(before).splitlines(), without_cpu(after).splitlines(),
                                      "before", "after", lineterm="", n=1))
    if numa_of(before) != numa_of(after):
        lines += ["<cpu><numa> before: %s" % numa_of(before), "<cpu><numa> after: %s" % numa_of(after)]
    return lines[:limit]


# ---------------------------------------------------------------------------------------------
# running guests


def _feature_matches_live(name: str, policy: str, live_policy: Optional[str],
                          libvirt_version: Optional[Tuple[int, ...]]) -> bool:
    if live_policy is None and name in rules_for(libvirt_version).ignored_features:
        return True  # libvirt never passes these to QEMU and drops them from the live CPU
    if policy in ("disable", "forbid"):
        return live_policy in (None, "disable", "forbid")
    if policy in ("require", "force"):
        # a feature the hypervisor cannot give comes up disabled (host-model); that is not pending
        return live_policy in ("require", "force", "disable")
    return True


def _expected_live_model(wanted: CPUDict, host_model: Optional[CPUDict]) -> Tuple[Optional[str], Optional[str]]:
    """(model name, vendor) a guest started from *wanted* runs with; None where unknown."""
    host_model = host_model or {}
    if wanted["mode"] == "host-model":
        return (host_model.get("model") or {}).get("name"), host_model.get("vendor")
    if wanted["mode"] == "custom" and wanted.get("match") == "minimum":
        # the host-model's model replaces it; libvirt 9.0 printed no vendor for these guests
        return (host_model.get("model") or {}).get("name"), None
    if wanted["mode"] == "custom":
        return wanted["model"].get("name"), wanted.get("vendor")
    return None, None


def _host_model_features_pending(wanted: CPUDict, running: CPUDict, host_model: Optional[CPUDict],
                                 dependencies: Optional[Mapping[str, List[str]]]) -> bool:
    """A host-model guest runs with a feature disabled that the host offers and the definition no longer disables.

    The live CPU of a host-model guest has every feature of the host-model CPU; one the host offers
    (``require`` in the host-model CPU) that is disabled live must be disabled by the definition,
    or hang on a feature the definition disables (*dependencies*: parent -> children, e.g.
    arch-capabilities -> the MSR 0x10a features). Anything else comes from an older definition.
    """
    if host_model is None or dependencies is None:
        return False
    offered = {f["name"] for f in host_model.get("features") or [] if (f.get("policy") or "require") == "require"}
    disabled_by_definition = {f["name"] for f in wanted.get("features") or [] if f["policy"] in ("disable", "forbid")}
    explained = set(disabled_by_definition)
    for parent in disabled_by_definition:
        explained.update(dependencies.get(parent, ()))
    disabled_live = {f["name"] for f in running.get("features") or [] if f["policy"] == "disable"}
    return bool((disabled_live & offered) - explained)


def live_matches_definition(definition: CPUDict, live: CPUDict, virt_type: str = "kvm",
                            libvirt_version: Optional[Tuple[int, ...]] = None,
                            host_model: Optional[CPUDict] = None,
                            dependencies: Optional[Mapping[str, List[str]]] = None) -> bool:
    """Whether a running guest's live CPU comes from *definition* (False: a restart is pending).

    Compares what a start keeps from the definition: the mode family, the model and vendor (a
    custom model's own; for host-model and match minimum those of *host_model*, this host's
    host-model CPU, when known), topology, cache and maxphysaddr, every feature the definition
    names (a required feature the hypervisor cannot give comes up disabled) and, for host-model
    guests, no host-model feature disabled that the definition does not disable (needs
    *dependencies*, the features that hang on others).
    """
    wanted = normalize_cpu(definition, virt_type, libvirt_version)
    running = normalize_cpu(live, virt_type, libvirt_version)
    mode = wanted["mode"]
    if mode in MIGRATABLE_MODES:
        if running["mode"] != mode or running.get("migratable") != wanted.get("migratable"):
            return False
    elif running["mode"] not in ("custom", "host-model"):
        return False
    if running["mode"] == "custom":
        name, vendor = _expected_live_model(wanted, host_model)
        if name is not None and running["model"].get("name") != name:
            return False
        if vendor is not None and running.get("vendor") != vendor:
            return False
    for key in MODE_INDEPENDENT_KEYS:
        if wanted.get(key) != running.get(key):
            return False
    live_policies = {f["name"]: f["policy"] for f in running.get("features") or []}
    if not all(_feature_matches_live(f["name"], f["policy"], live_policies.get(f["name"]), libvirt_version) for f in wanted.get("features") or []):
        return False
    return not (mode == "host-model" and _host_model_features_pending(wanted, running, host_model, dependencies))


GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"


def graceful_shutdown_possible(live_xml: str) -> bool:
    """Whether a running guest can be asked to shut down: ACPI, or a connected guest agent."""
    root = parse_domain(live_xml)
    if root.find("features/acpi") is not None:
        return True
    return any(target.get("name") == GUEST_AGENT_CHANNEL and target.get("state") == "connected"
               for target in root.iterfind("devices/channel/target"))
