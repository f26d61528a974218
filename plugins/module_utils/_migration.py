# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Will a running guest migrate live to another host, and keep its CPU there?

A live migration sends the guest's live definition; its ``<cpu>`` is what the guest runs with
(a host-model guest's expanded CPU, ``check='full'``). What happens to it, in order:

1. The source libvirt refuses to send a guest whose custom CPU has ``invtsc`` (QEMU cannot move
   the TSC state): "domain has CPU feature: invtsc".
2. The destination libvirt refuses a machine type its QEMU does not offer, a virt type it does
   not have, and a mode it does not know.
3. The destination starts QEMU with the CPU exactly as a fresh start of that definition would go
   (``_expansion.predict_guest`` with the destination's facts and version rules): unknown models or
   features, features the destination cannot give with ``check='full'`` ("missing features"),
   and the MSR writes its KVM refuses stop the migration there.
4. When it starts, the guest may still run another CPU: libvirt of the destination's version
   drops features it ignores from the live CPU, and host-passthrough and maximum guests see
   whatever the destination's QEMU and KVM give.

``migration_verdict`` replays that on the facts of both hosts. The outcome is ``kept`` (it
migrates with the same CPU), ``changed`` (it migrates, but the guest's CPU differs after the move)
or ``refused``; every reason names its fix.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import CPUDefinitionError, normalize_cpu
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError, GuestWouldNotStart
from ansible_collections.hostcpu.libvirt.plugins.module_utils._expansion import predict_guest
from ansible_collections.hostcpu.libvirt.plugins.module_utils._expansion_data import PASSTHROUGH_MODES
from ansible_collections.hostcpu.libvirt.plugins.module_utils._machines import offers_machine, resolve_machine
from ansible_collections.hostcpu.libvirt.plugins.module_utils._shape import cpu_input, select_entry

CPUDict = Dict[str, Any]
Entry = Mapping[str, Any]

OUTCOMES = ("kept", "changed", "refused")
FLEET_HINT = "give the guests a CPU every host can run, e.g. the fleet CPU (hostcpu.libvirt.fleet_baseline)"
ENABLING = ("require", "force")


class MigrationInputError(CPUError):
    """A live CPU or facts the migration prediction cannot work with."""


def _version(entry: Entry) -> str:
    return "libvirt %s" % (entry.get("libvirt_version") or "(version unknown)")


def _refused_by_source(cpu: CPUDict) -> Optional[str]:
    """qemuMigrationSrcIsAllowed: QEMU cannot migrate the invariant TSC of a custom CPU."""
    if (cpu.get("mode") or "custom") in PASSTHROUGH_MODES:
        return None
    policies = {feature["name"]: feature.get("policy") or "require" for feature in cpu.get("features") or ()}
    if policies.get("invtsc") in ENABLING:
        return "Requested operation is not valid: domain has 'invtsc' CPU feature but TSC frequency is not specified"
    return None


def _machine_refusal(dest: Entry, machine: Optional[str]) -> Optional[str]:
    if machine is None or offers_machine(dest, machine, "the destination's facts"):
        return None
    return ("unsupported configuration: Emulator '%s' does not support machine type '%s'"
            % (dest.get("emulator"), resolve_machine(dest, machine)))


def _is_live(cpu: CPUDict) -> bool:
    """A started guest's live CPU: host-passthrough or maximum, or custom with ``check='full'``."""
    mode = cpu.get("mode") or "custom"
    return mode in PASSTHROUGH_MODES or (mode == "custom" and cpu.get("check") == "full")


def _carried(cpu: CPUDict, source: Optional[Entry]) -> Tuple[CPUDict, bool]:
    """The CPU the migration carries and whether it is known: the live CPU as given; a definition
    (host-model, no ``<cpu>``, custom without the ``check='full'`` of a started CPU) started on
    *source*, or taken as it is without *source* (then what the source made of it is unknown)."""
    if _is_live(cpu):
        return cpu, True
    if source is None:
        if (cpu.get("mode") or "custom") == "host-model":
            raise MigrationInputError("a host-model CPU is filled in when the guest starts: give the guest's live CPU "
                                      "(domain_cpu's live_cpu, or the <cpu> of 'virsh dumpxml') or the source host's "
                                      "facts (source=) to predict it")
        return cpu, False
    try:
        return predict_guest(cpu, source)[0], True
    except GuestWouldNotStart as exc:
        raise MigrationInputError("the guest does not start on the source host, so it cannot migrate: %s" % exc) from None


def _guest_on(cpu: CPUDict, entry: Optional[Entry]) -> Optional[Tuple[CPUDict, List[str]]]:
    if entry is None:
        return None
    try:
        return predict_guest(cpu, entry)
    except GuestWouldNotStart:
        return None


def _feature_policies(cpu: CPUDict, virt_type: str) -> Dict[str, str]:
    return {feature["name"]: feature.get("policy") or "require"
            for feature in normalize_cpu(cpu, virt_type).get("features") or ()}


def _canonical(cpu: CPUDict, virt_type: str) -> Dict[str, Any]:
    """The CPU as both libvirts mean it: features as a set of policies, topology with libvirt's
    implied dies and clusters (10.1+ prints clusters='1', older versions do not know it)."""
    result = normalize_cpu(cpu, virt_type)
    result["features"] = _feature_policies(cpu, virt_type)
    if result.get("topology"):
        result["topology"] = dict({"dies": 1, "clusters": 1}, **result["topology"])
    return result


def _definition_changes(before: CPUDict, after: CPUDict, virt_type: str, dest: Entry) -> List[str]:
    """What differs between the live CPU on the source and the one the destination would show."""
    if _canonical(before, virt_type) == _canonical(after, virt_type):
        return []
    old, new = _feature_policies(before, virt_type), _feature_policies(after, virt_type)
    dropped = [name for name in old if name not in new]
    changed = ["%s (%s -> %s)" % (name, old[name], new[name]) for name in old if name in new and old[name] != new[name]]
    added = ["%s (%s)" % (name, new[name]) for name in new if name not in old]
    parts = []
    if dropped:
        parts.append("drops %s from the live CPU" % ", ".join(dropped))
    if changed:
        parts.append("changes %s" % ", ".join(changed))
    if added:
        parts.append("adds %s" % ", ".join(added))
    if not parts:
        parts.append("rewrites the live CPU (%s)" % ", ".join(
            key for key in sorted(set(before) | set(after)) if key != "features" and before.get(key) != after.get(key)))
    return ["%s on the destination %s: the guest keeps running, but with another CPU definition; %s"
            % (_version(dest), "; ".join(parts), FLEET_HINT)]


def _seen_changes(source: Entry, source_sees: List[str], dest: Entry, dest_sees: List[str], mode: str) -> List[str]:
    """Features the guest sees on one side only (the destination's QEMU/KVM gives another CPU).

    A feature one side's libvirt does not know counts as not given there: its QEMU is of the
    same age (measured: QEMU 10.0 does not give tsa-sq-no/tsa-l1-no, which only libvirt 12.8 knows
    and QEMU 11.1 gives a host-passthrough guest)."""
    lost = [name for name in source_sees if name not in set(dest_sees)]
    gained = [name for name in dest_sees if name not in set(source_sees)]
    if not lost and not gained:
        return []
    parts = []
    if lost:
        parts.append("loses %s" % ", ".join(lost))
    if gained:
        parts.append("gains %s" % ", ".join(gained))
    what = ("a %s guest sees the CPU the destination's QEMU and KVM give" % mode if mode in PASSTHROUGH_MODES
            else "the destination's QEMU builds this CPU differently")
    return ["the guest's CPU changes under it: it %s (%s); %s" % ("; ".join(parts), what, FLEET_HINT)]


def _verdict(outcome: str, blockers: List[str], refusal: Optional[str] = None,
             live: Optional[CPUDict] = None) -> Dict[str, Any]:
    return {"outcome": outcome, "migrates": outcome == "kept", "blockers": blockers, "refusal": refusal,
            "live_cpu": live}


def _refused(refusal: str, hint: str) -> Dict[str, Any]:
    return _verdict("refused", ["%s; %s" % (refusal, hint)], refusal)


def migration_verdict(live_cpu: Optional[CPUDict], dest: Entry, source: Optional[Entry] = None,
                      machine: Optional[str] = None) -> Dict[str, Any]:
    """Whether a guest running *live_cpu* migrates live to *dest*'s host (from *source*'s, when given).

    *live_cpu*: the guest's live CPU dict (None or ``{}``: no ``<cpu>``); a host-model definition
    needs *source* to be expanded. *dest*/*source*: ``virt_types`` entries of the facts, of the
    guest's virt type. *machine*: the guest's machine type.

    Returns ``outcome`` (kept | changed | refused), ``migrates`` (outcome is kept), ``blockers``
    (every reason, each naming its fix; ``[]`` when it migrates and keeps its CPU), ``refusal``
    (libvirt's error as it would be reported, None unless refused) and ``live_cpu`` (the live CPU
    on the destination; None when refused).
    """
    cpu, known = _carried(dict(live_cpu or {}), source)
    virt_type = str(dest.get("domain_type") or "kvm")
    refusal = _refused_by_source(cpu)
    if refusal:
        return _refused(refusal, "QEMU cannot migrate invariant TSC; disable invtsc or give the guest a fixed TSC "
                                 "frequency (<clock><timer name='tsc' frequency=.../>)")
    if source is not None and source.get("domain_type") != dest.get("domain_type"):
        return _refused("the guest runs under %s, the destination's facts are those of its %s guests"
                        % (source.get("domain_type"), dest.get("domain_type")),
                        "a guest keeps its virt type when it migrates; judge it with the destination's %s facts, or move "
                        "it between hosts whose guests run under %s" % (source.get("domain_type"), source.get("domain_type")))
    refusal = _machine_refusal(dest, machine)
    if refusal:
        return _refused(refusal, "define the guests with a machine type every host's QEMU offers "
                                 "(hostcpu.libvirt.fleet_machine)")
    try:
        dest_live, dest_sees = predict_guest(cpu, dest)
    except CPUDefinitionError as exc:
        detail = str(exc)[len(exc.reason):].strip(" ()") if str(exc).startswith(exc.reason) else ""
        return _refused(exc.reason, "%s; %s" % (detail or "the destination's %s cannot define this CPU" % _version(dest), FLEET_HINT))
    except GuestWouldNotStart as exc:
        return _refused(exc.reason, "%s (%s)" % (FLEET_HINT, _version(dest)) if not exc.fix else
                        "%s, or disable %s" % (FLEET_HINT, ", ".join(item["name"] for item in exc.fix)))
    changes = _definition_changes(cpu, dest_live, virt_type, dest) if known else []
    on_source = _guest_on(cpu, source)
    if on_source is not None:
        changes += _seen_changes(source, on_source[1], dest, dest_sees, cpu.get("mode") or "custom")
    elif source is None and (cpu.get("mode") or "custom") in PASSTHROUGH_MODES:
        changes.append("a %s guest sees the host's own CPU: without the source host's facts (source=) it cannot be told "
                       "whether the destination gives the same one; %s" % (cpu["mode"], FLEET_HINT))
    return _verdict("changed" if changes else "kept", changes, None, dest_live)


def migration_blockers(live_cpu: Optional[CPUDict], dest: Entry, source: Optional[Entry] = None,
                       machine: Optional[str] = None) -> List[str]:
    """``migration_verdict``'s blockers: ``[]`` when the guest migrates and keeps its CPU."""
    return list(migration_verdict(live_cpu, dest, source, machine)["blockers"])


def verdict_from_facts(live_cpu: Any, dest_facts: Any, virt_type: Optional[str] = None, source_facts: Any = None,
                       machine: Optional[str] = None) -> Dict[str, Any]:
    """``migration_verdict`` from what the filters take: a CPU dict or XML, whole facts or entries.

    The virt type defaults to the destination entry's (kvm for whole facts); the source's facts are
    read for the same virt type.
    """
    dest = select_entry(dest_facts, virt_type, "dest_facts")
    virt_type = virt_type or dest.get("domain_type")
    source = None if source_facts is None else select_entry(source_facts, virt_type, "source")
    if machine is not None and not isinstance(machine, str):
        raise MigrationInputError("machine must be a machine type name such as pc-q35-7.2, got %s" % type(machine).__name__)
    return migration_verdict(cpu_input(live_cpu, "the live CPU"), dest, source, machine)
