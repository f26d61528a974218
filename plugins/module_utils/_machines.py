# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Machine types: which one every host of a fleet offers, and whether a host offers a guest's.

A guest migrates only to a QEMU that has its machine type (libvirt's destination fails with
QEMU's "unsupported machine type" otherwise). QEMU versions its machine types per family
(``pc-i440fx-7.2``, ``pc-q35-7.2``) and keeps old ones for years, so a fleet's guests use the
newest version of their family that the oldest QEMU has. Machine lists come from cpu_facts
(``machines``, ``machine_aliases``, ``deprecated_machines`` of each virt type, read from
libvirt's capabilities).
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError

Entry = Mapping[str, Any]

_VERSIONED = re.compile(r"^(?P<family>[a-z0-9-]+?)-(?P<major>\d+)\.(?P<minor>\d+)$")
# What operators call the two x86 families, and QEMU's aliases of their newest version.
FAMILY_NAMES = {"pc": "pc-i440fx", "i440fx": "pc-i440fx", "pc-i440fx": "pc-i440fx", "q35": "pc-q35", "pc-q35": "pc-q35"}


class MachineError(CPUError):
    """Facts without machine types, an unknown family, or a family no version of which every host has."""


def _family_name(family: str) -> str:
    return FAMILY_NAMES.get(family, family)


def versioned(name: str) -> Optional[Tuple[str, Tuple[int, int]]]:
    """``pc-q35-7.2`` -> ``("pc-q35", (7, 2))``; None for an unversioned type (``microvm``, ``isapc``)."""
    match = _VERSIONED.match(name)
    if match is None:
        return None
    return match.group("family"), (int(match.group("major")), int(match.group("minor")))


def host_machines(entry: Entry, label: str) -> List[str]:
    """The concrete machine types of *entry*; a clear error for facts gathered without them."""
    machines = entry.get("machines")
    if not isinstance(machines, list):
        raise MachineError("%s carry no machine types; gather them again with hostcpu.libvirt.cpu_facts of this "
                           "collection (it reads them from libvirt's capabilities)" % label)
    return [str(name) for name in machines]


def resolve_machine(entry: Entry, name: str) -> str:
    """*name* with an alias (``pc``, ``q35``) resolved the way *entry*'s QEMU resolves it."""
    return str((entry.get("machine_aliases") or {}).get(name, name))


def offers_machine(entry: Entry, name: str, label: str = "the host's facts") -> bool:
    """Whether *entry*'s QEMU has the machine type *name* (an alias counts as what it resolves to)."""
    return resolve_machine(entry, name) in host_machines(entry, label)


def _families(names: Sequence[str]) -> Dict[str, Dict[Tuple[int, int], str]]:
    families: Dict[str, Dict[Tuple[int, int], str]] = {}
    for name in names:
        parsed = versioned(name)
        if parsed is not None:
            families.setdefault(parsed[0], {})[parsed[1]] = name
    return families


def _common_versions(per_host: Sequence[Tuple[str, Dict[str, Dict[Tuple[int, int], str]]]], family: str) -> List[Tuple[int, int]]:
    common = None
    for _label, families in per_host:
        versions = set(families.get(family, {}))
        common = versions if common is None else common & versions
    return sorted(common or ())


def _span(versions: Mapping[Tuple[int, int], str]) -> str:
    if not versions:
        return "none"
    ordered = sorted(versions)
    return "%s to %s" % (versions[ordered[0]], versions[ordered[-1]])


def _no_common(family: str, per_host: Sequence[Tuple[str, Dict[str, Dict[Tuple[int, int], str]]]]) -> MachineError:
    offers = "; ".join("%s: %s" % (label, _span(families.get(family, {}))) for label, families in per_host)
    return MachineError("no %s machine type is offered by every host (%s); upgrade the QEMU of the hosts with the "
                        "oldest types or leave those hosts out of the fleet" % (family, offers))


def fleet_machine(hosts: Sequence[Tuple[str, Entry]], family: Optional[str] = None) -> Any:
    """The newest machine type of each family that every host in *hosts* (``(label, entry)``) offers.

    Returns ``{family: name}`` over the families every host has at least one common version of,
    or, with *family* (``pc``/``i440fx``/``pc-i440fx``, ``q35``/``pc-q35`` or another QEMU family),
    that family's name alone.
    """
    if not hosts:
        raise MachineError("the list of hosts is empty: pass the hostcpu facts of at least one host")
    per_host = [(label, _families(host_machines(entry, "the facts of %s" % label))) for label, entry in hosts]
    if family is not None:
        wanted = _family_name(str(family))
        if not any(wanted in families for _label, families in per_host):
            known = sorted({name for _label, families in per_host for name in families})
            raise MachineError("unknown machine type family '%s'; the hosts' QEMUs have %s" % (family, ", ".join(known)))
        common = _common_versions(per_host, wanted)
        if not common:
            raise _no_common(wanted, per_host)
        return per_host[0][1][wanted][common[-1]]
    result = {}
    for name in sorted(per_host[0][1]):
        common = _common_versions(per_host, name)
        if common:
            result[name] = per_host[0][1][name][common[-1]]
    return result
