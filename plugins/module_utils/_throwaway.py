# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What libvirt makes of a definition, learned from a throwaway copy it defines and removes again.

libvirt has no API that parses a definition without storing it. Two answers domain_cpu needs come
only from a define, so a copy of the domain (a new name and UUID) is defined, read back and
removed at once:

- the CPU libvirt gives a domain that names no CPU model. libvirt fills QEMU's default CPU type
  of the domain's emulator, arch and machine into a custom CPU without a model when it parses a
  definition (qemuDomainDefSetDefaultCPU): ``qemu64`` for qemu-system-x86_64, ``qemu32`` for
  qemu-system-i386, other models elsewhere, or nothing. Asked once per emulator, arch, machine
  and virt type, with the copy's <cpu> cut down to its topology and NUMA cells.
- whether libvirt accepts a domain's new definition at all, before any domain of a task is
  written: everything it checks at define, including what no rule here knows (for example
  libvirt 9.0 printing a NUMA cell cache it cannot read back).
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any, Callable, Dict, Optional, Tuple

from ansible_collections.hostcpu.libvirt.plugins.module_utils._connection import libvirt, libvirt_message
from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import KNOWN_DEFAULT_MODELS, CPUDict
from ansible_collections.hostcpu.libvirt.plugins.module_utils._domain import DomainInfo, parse_domain, read_cpu
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError
from ansible_collections.hostcpu.libvirt.plugins.module_utils._xml import element_to_string

THROWAWAY_PREFIX = "hostcpu-throwaway-"
KEPT_CPU_CHILDREN = ("topology", "numa")


def renamed_copy(domain_xml: str, name: str, edit: Callable[[Any], None] = lambda _root: None) -> str:
    """*domain_xml* as a new domain *name* with a new UUID, also where the definition repeats the
    old one (an SMBIOS <sysinfo> entry must equal the domain's UUID); *edit* changes the parsed root first."""
    root = parse_domain(domain_xml)
    name_el = root.find("name")
    if name_el is None:
        name_el = root.makeelement("name", {})
        root.insert(0, name_el)
    name_el.text = name
    edit(root)
    old_uuid = (root.findtext("uuid") or "").strip()
    text = element_to_string(root)
    return text.replace(old_uuid, str(uuid.uuid4())) if old_uuid else text


def _without_cpu_model(root: Any) -> None:
    """Only the topology and NUMA cells of <cpu> stay, which other elements (memory nodes, numatune) may refer to."""
    cpu = root.find("cpu")
    if cpu is not None:
        cpu.attrib.clear()
        for child in list(cpu):
            if not isinstance(child.tag, str) or child.tag not in KEPT_CPU_CHILDREN:
                cpu.remove(child)


def throwaway_copy(domain_xml: str, name: str) -> str:
    """renamed_copy whose <cpu> names no model (``_without_cpu_model``)."""
    return renamed_copy(domain_xml, name, _without_cpu_model)


def throwaway_name() -> str:
    return THROWAWAY_PREFIX + secrets.token_hex(6)


def define_and_remove(conn, text: str, read: Callable[[Any], Any] = lambda _domain: None) -> Any:
    """Define *text* (a copy with its own name and UUID), *read* it, remove it again; libvirtError
    when libvirt refuses the definition."""
    domain = conn.defineXML(text)
    try:
        return read(domain)
    finally:
        _undefine(domain)


def libvirt_refusal(conn, domain_xml: str) -> Optional[str]:
    """libvirt's reason to refuse *domain_xml* as a definition, or None when it accepts it."""
    try:
        define_and_remove(conn, renamed_copy(domain_xml, throwaway_name()))
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_DENIED:
            return None  # a read-only connection: the write will say so
        return libvirt_message(exc)
    return None


def default_model_of(stored: CPUDict) -> Optional[str]:
    """The model libvirt filled in (None: it names none); CPUError for a default that is no named
    model (QEMU's ``host`` CPU type, which libvirt turns into host-passthrough)."""
    mode = stored.get("mode", "custom")
    if mode != "custom":
        raise CPUError("libvirt's default CPU here is mode %s, not a named model; domain_cpu supports removing <cpu> "
                       "and merging onto libvirt's default only where that is a named model: give the CPU explicitly "
                       "(mode and model)" % mode)
    return (stored.get("model") or {}).get("name")


def _undefine(domain) -> None:
    """Remove the throwaway definition and nothing else: its NVRAM path is the original domain's.
    KEEP_TPM is newer than some daemons (libvirt 8.9), so it is tried first and then left out."""
    keep_nvram = getattr(libvirt, "VIR_DOMAIN_UNDEFINE_KEEP_NVRAM", 0)
    keep_tpm = getattr(libvirt, "VIR_DOMAIN_UNDEFINE_KEEP_TPM", 0)
    for flags in dict.fromkeys((keep_nvram | keep_tpm, keep_nvram)):
        try:
            domain.undefineFlags(flags)
            return
        except libvirt.libvirtError:
            continue
    domain.undefine()  # refuses (never deletes) a domain with NVRAM


class DefaultModels:
    """libvirt's default CPU model per emulator, arch, machine and virt type, asked once each."""

    def __init__(self, conn, warn: Callable[[str], None]) -> None:
        self.conn = conn
        self.warn = warn
        self.models: Dict[Tuple, Optional[str]] = {}

    def model(self, info: DomainInfo, domain_xml: str) -> Optional[str]:
        key = (info.emulator, info.arch, info.machine, info.virt_type)
        if key not in self.models:
            self.models[key] = self._ask(info, domain_xml)
        return self.models[key]

    def _ask(self, info: DomainInfo, domain_xml: str) -> Optional[str]:
        try:
            stored = define_and_remove(self.conn, throwaway_copy(domain_xml, throwaway_name()),
                                       lambda domain: read_cpu(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
        except libvirt.libvirtError as exc:
            return self._known_default(info, libvirt_message(exc))
        return default_model_of(stored)

    def _known_default(self, info: DomainInfo, reason: str) -> Optional[str]:
        """QEMU's default for *info*'s arch when libvirt cannot be asked (a read-only connection)."""
        if info.arch in KNOWN_DEFAULT_MODELS:
            model = KNOWN_DEFAULT_MODELS[info.arch]
            self.warn("libvirt's default CPU for %s guests (machine %s) could not be asked (defining a throwaway copy "
                      "failed: %s); assuming QEMU's usual %s" % (info.arch, info.machine, reason, model))
            return model
        raise CPUError("libvirt's default CPU for %s guests (machine %s) could not be asked: defining a throwaway copy "
                       "of the domain failed (%s); give the CPU explicitly (mode and model), or run with a connection "
                       "that may define domains" % (info.arch, info.machine, reason))
