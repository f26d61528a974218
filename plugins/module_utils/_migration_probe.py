# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure parts of hostcpu.libvirt.migration_probe: a real live migration as the proof of a prediction.

The probe guest is a transient, paused, disk-less guest (no memory balloon, destroyed on a crash)
with the CPU under test. What a direction of the probe measured is classified the way the
prediction (``_migration.migration_verdict``) classifies it:

* ``refused``: libvirt refused the migration (its text is kept);
* ``changed``: it migrated, but the guest's live ``<cpu>`` (compared as libvirt stores it,
  ``normalize_cpu``, features in any order) or the CPUID the guest sees (QEMU's ``feature-words``
  of the first vCPU) differ on the destination;
* ``kept``: it migrated with the same live CPU and the same CPUID.

Nothing here talks to libvirt; the module feeds it what libvirt and QEMU answered.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import (
    CPUDict,
    cpu_from_element,
    cpu_to_xml,
    normalize_cpu,
    ordered,
    validate_cpu,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError
from ansible_collections.hostcpu.libvirt.plugins.module_utils._shape import cpu_input
from ansible_collections.hostcpu.libvirt.plugins.module_utils._xml import parse_xml

OUTCOMES = ("kept", "changed", "refused")
VIRT_TYPES = ("kvm", "qemu")
DEFAULT_PREFIX = "hostcpu-probe-"
DEFAULT_PORT = 49152
MAX_MEMORY_MIB = 65536
MAX_VCPUS = 64
MAX_TIMEOUT = 3600
DESCRIPTION = "hostcpu.libvirt.migration_probe: a transient probe guest, destroyed at the end of the task"

PREFIX_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,47}")
MACHINE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
ARCH_PATTERN = re.compile(r"[a-z0-9_]{1,32}")
EMULATOR_PATTERN = re.compile(r"/[^\x00-\x1f'\"<>&]{1,4095}")
# A host name, an IPv4 address, or an IPv6 address with or without brackets.
ADDRESS_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,253}|\[?[0-9A-Fa-f:.]{2,45}(%[A-Za-z0-9_.-]{1,32})?\]?")
# The errors of a start that are tried once more: QEMU died before libvirt reached its monitor
# (seen on loaded hosts), which hides QEMU's own reason.
RETRIED_START_ERRORS = ("failed to connect to monitor socket",)

Words = Dict[Tuple[int, int, str], int]


class ProbeInputError(CPUError):
    """An option of the probe that cannot work; the message names the option and the fix."""


class ProbeDataError(CPUError):
    """libvirt or QEMU answered something the probe cannot read."""


# ---------------------------------------------------------------------------------------------
# options


def _check_int(params: Mapping[str, Any], key: str, low: int, high: int) -> None:
    value = params.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProbeInputError("%s must be a whole number from %d to %d, got %r" % (key, low, high, value))


def _check_pattern(params: Mapping[str, Any], key: str, pattern: "re.Pattern[str]", what: str) -> None:
    value = params.get(key)
    if value is None:
        return
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ProbeInputError("%s %r is not %s" % (key, value, what))


def check_options(params: Mapping[str, Any]) -> None:
    """Refuse options the probe cannot work with, before any connection is opened."""
    for key in ("source_uri", "dest_uri"):
        value = params.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ProbeInputError("%s must be a libvirt URI such as qemu+ssh://root@hv1/system, got %r" % (key, value))
    if params["source_uri"].strip() == params["dest_uri"].strip():
        raise ProbeInputError("source_uri and dest_uri are both '%s': a migration needs two hosts; give the URI of the "
                              "destination host as dest_uri" % params["source_uri"])
    if params.get("virt_type") not in VIRT_TYPES:
        raise ProbeInputError("virt_type must be one of %s, got %r" % (", ".join(VIRT_TYPES), params.get("virt_type")))
    _check_pattern(params, "machine", MACHINE_PATTERN,
                   "a machine type (letters, digits, '-', '_' and '.', as 'virsh capabilities' lists them, e.g. pc-i440fx-7.2)")
    if not params.get("machine"):
        raise ProbeInputError("machine must name the machine type of the probe guest (e.g. pc-i440fx-7.2), one that "
                              "both hosts' QEMU offer")
    _check_pattern(params, "arch", ARCH_PATTERN, "an architecture name such as x86_64")
    _check_pattern(params, "emulator", EMULATOR_PATTERN, "an absolute path of the QEMU binary (e.g. /usr/bin/qemu-system-x86_64)")
    _check_pattern(params, "name_prefix", PREFIX_PATTERN,
                   "a domain name prefix: 1 to 48 letters, digits, '_', '.', '+' or '-', starting with a letter or digit")
    for key in ("source_address", "dest_address"):
        _check_pattern(params, key, ADDRESS_PATTERN, "a host name or an IP address")
    _check_int(params, "memory_mib", 1, MAX_MEMORY_MIB)
    _check_int(params, "vcpus", 1, MAX_VCPUS)
    _check_int(params, "port", 1, 65535)
    _check_int(params, "source_port", 1, 65535)
    _check_int(params, "timeout", 1, MAX_TIMEOUT)


def probe_cpu(cpu: Any) -> CPUDict:
    """The guest CPU option as a validated CPU dict (``{}``: no ``<cpu>``, QEMU's default CPU)."""
    try:
        return validate_cpu(cpu_input(cpu, "cpu"))
    except CPUError as exc:  # CPUDefinitionError, XMLInputError (hostile or broken XML)
        raise ProbeInputError("cpu: %s" % exc) from None


# ---------------------------------------------------------------------------------------------
# the probe guest


def _text(value: Any) -> str:
    return (str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("'", "&apos;").replace('"', "&quot;"))


def probe_name(prefix: str, token: str) -> str:
    return "%s%s" % (prefix, token)


def probe_domain_xml(name: str, cpu: CPUDict, virt_type: str, machine: str, emulator: str, arch: str = "x86_64",
                     memory_mib: int = 32, vcpus: int = 1) -> str:
    """The transient probe guest: no disk, no network, no balloon; destroyed when it crashes."""
    cpu_xml = cpu_to_xml(cpu, indent=2, level=1) + "\n" if cpu else ""
    return ("<domain type='%s'>\n"
            "  <name>%s</name>\n"
            "  <description>%s</description>\n"
            "  <memory unit='MiB'>%d</memory>\n"
            "  <vcpu>%d</vcpu>\n"
            "  <os>\n"
            "    <type arch='%s' machine='%s'>hvm</type>\n"
            "  </os>\n"
            "%s"
            "  <on_crash>destroy</on_crash>\n"
            "  <devices>\n"
            "    <emulator>%s</emulator>\n"
            "    <memballoon model='none'/>\n"
            "  </devices>\n"
            "</domain>\n"
            % (_text(virt_type), _text(name), _text(DESCRIPTION), memory_mib, vcpus, _text(arch), _text(machine), cpu_xml,
               _text(emulator)))


def live_cpu(domain_xml: str) -> CPUDict:
    """The ``<cpu>`` of a running guest's live XML (``{}`` when it has none)."""
    root = parse_xml(domain_xml, "the probe guest's live XML")
    cpu_el = root.find("cpu")
    return {} if cpu_el is None else ordered(cpu_from_element(cpu_el))


def host_uuid(capabilities_xml: str) -> Optional[str]:
    """The host UUID of 'virsh capabilities' (libvirt refuses a migration between two hosts with the same one)."""
    root = parse_xml(capabilities_xml, "the host capabilities")
    text = root.findtext("host/uuid")
    return text.strip() if text else None


def stream_params(address: Optional[str], port: int) -> Dict[str, str]:
    """The migration stream's URI and the address the receiving QEMU listens on (libvirt's
    VIR_MIGRATE_PARAM_URI and VIR_MIGRATE_PARAM_LISTEN_ADDRESS, by their names); without an
    address, nothing: libvirt then picks the destination's host name and a port of its own range."""
    if not address:
        return {}
    bare = address.strip("[]")
    host = "[%s]" % bare if ":" in bare else bare
    return {"migrate_uri": "tcp://%s:%d" % (host, port), "listen_address": bare}


def is_retried_start_error(message: str) -> bool:
    return any(text in message for text in RETRIED_START_ERRORS)


# ---------------------------------------------------------------------------------------------
# the CPUID the guest sees (QMP qom-get feature-words of its first vCPU)


def first_vcpu_path(reply: Any) -> str:
    """The QOM path of the first vCPU from a ``query-cpus-fast`` reply."""
    result = _qmp_return(reply, "query-cpus-fast")
    if not isinstance(result, list) or not result or not isinstance(result[0], Mapping) or not result[0].get("qom-path"):
        raise ProbeDataError("QEMU's query-cpus-fast listed no vCPU with a qom-path: %r" % (result,))
    return str(result[0]["qom-path"])


def feature_words(reply: Any) -> Words:
    """(leaf, subleaf, register) -> the feature bits, from a ``qom-get feature-words`` reply."""
    result = _qmp_return(reply, "qom-get feature-words")
    if not isinstance(result, list):
        raise ProbeDataError("QEMU's feature-words is not a list: %r" % (result,))
    words: Words = {}
    for word in result:
        try:
            key = (int(word["cpuid-input-eax"]), int(word.get("cpuid-input-ecx", 0)), str(word["cpuid-register"]))
            bits = int(word["features"])
        except (KeyError, TypeError, ValueError):
            raise ProbeDataError("QEMU's feature-words has an entry the probe cannot read: %r" % (word,)) from None
        words[key] = words.get(key, 0) | bits
    return words


def _qmp_return(reply: Any, what: str) -> Any:
    if not isinstance(reply, Mapping):
        raise ProbeDataError("QEMU's answer to %s is not a QMP reply: %r" % (what, reply))
    if "error" in reply:
        error = reply["error"]
        desc = error.get("desc") if isinstance(error, Mapping) else error
        raise ProbeDataError("QEMU refused %s: %s" % (what, desc))
    if "return" not in reply:
        raise ProbeDataError("QEMU's answer to %s has no return: %r" % (what, reply))
    return reply["return"]


def words_changes(before: Words, after: Words) -> List[str]:
    """The CPUID bits the guest lost (-) and gained (+), as -0x7.0.EBX[3] (leaf.subleaf.register[bit])."""
    changes = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key, 0), after.get(key, 0)
        for bit in range(32):
            if (old ^ new) >> bit & 1:
                leaf, subleaf, register = key
                changes.append("%s0x%x.%d.%s[%d]" % ("+" if new >> bit & 1 else "-", leaf, subleaf, register, bit))
    return changes


# ---------------------------------------------------------------------------------------------
# outcome of one direction


def _policies(cpu: CPUDict) -> Dict[str, str]:
    return {feature["name"]: feature.get("policy") or "require" for feature in cpu.get("features") or ()}


def _sorted_features(cpu: CPUDict) -> CPUDict:
    result = dict(cpu)
    if result.get("features"):
        result["features"] = sorted(result["features"], key=lambda feature: feature["name"])
    return result


def cpu_changes(before: CPUDict, after: CPUDict, virt_type: str) -> List[str]:
    """What differs between two live CPUs as libvirt stores them (feature order aside)."""
    old, new = _sorted_features(normalize_cpu(before, virt_type)), _sorted_features(normalize_cpu(after, virt_type))
    if old == new:
        return []
    changes = ["%s %s -> %s" % (key, _show(old.get(key)), _show(new.get(key)))
               for key in sorted((set(old) | set(new)) - {"features"}) if old.get(key) != new.get(key)]
    old_policies, new_policies = _policies(old), _policies(new)
    for name in sorted(set(old_policies) | set(new_policies)):
        if old_policies.get(name) != new_policies.get(name):
            changes.append("feature %s: %s -> %s" % (name, old_policies.get(name, "-"), new_policies.get(name, "-")))
    return changes


def _show(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{%s}" % ", ".join("%s: %s" % (key, value[key]) for key in value)
    return "-" if value is None else str(value)


def direction(migrated: bool, error: Optional[str] = None, cpu_before: Optional[CPUDict] = None,
              cpu_after: Optional[CPUDict] = None, words_before: Optional[Words] = None,
              words_after: Optional[Words] = None, virt_type: str = "kvm", fresh: bool = False,
              notes: Sequence[str] = ()) -> Dict[str, Any]:
    """The result of one direction: the outcome from what was read before and after.

    A direction that migrated without its CPUID read on both sides (QMP failed) is judged by the
    live ``<cpu>`` alone; ``cpuid_kept`` is then null and ``notes`` says why.
    """
    result: Dict[str, Any] = {"migrated": bool(migrated), "error": error, "cpu_before": cpu_before,
                              "cpu_after": cpu_after, "cpuid_kept": None, "changes": [], "fresh": fresh,
                              "notes": list(notes)}
    if not migrated:
        result["outcome"] = "refused" if error is not None else None
        return result
    changes = cpu_changes(cpu_before or {}, cpu_after or {}, virt_type)
    if words_before is not None and words_after is not None:
        cpuid = words_changes(words_before, words_after)
        result["cpuid_kept"] = not cpuid
        if cpuid:
            changes.append("CPUID %s" % " ".join(cpuid))
    result["changes"] = changes
    result["outcome"] = "changed" if changes else "kept"
    return result


def not_tried(reason: str) -> Dict[str, Any]:
    """A direction that could not be tried (its probe guest did not start): no outcome."""
    return {"migrated": False, "error": reason, "outcome": None, "cpu_before": None, "cpu_after": None,
            "cpuid_kept": None, "changes": [], "fresh": True, "notes": []}
