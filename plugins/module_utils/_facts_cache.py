# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reusing cpu_facts' expansion data when nothing it depends on changed.

The expansion data of a virt type (``_probe_qemu.expansion_data_from_libvirt``, ~4.5 s of probe
guests) is a function of a few things that can be read in milliseconds before any guest starts:
the libvirt and QEMU versions, the host CPU of the capabilities, that virt type's domain
capabilities (they change with the QEMU binary, its machine types and KVM's CPUID), the QEMU
binary and the kernel (local URIs), libvirt's CPU map files, the data format and the probe's own
logic (``PROBE_VERSION``). ``inputs_fingerprint`` hashes them; data carrying the same fingerprint
(``expansion.inputs``) in the host's previous facts or in the cache file on the managed host is
reused instead of measured again.

* ``collect_inputs`` (the I/O: stat, uname) -> per virt type the raw inputs;
* ``compact_inputs`` / ``inputs_fingerprint`` (pure) -> ``expansion.inputs_detail`` / ``expansion.inputs``;
* ``decide`` (pure) -> which source wins for one virt type;
* ``read_cache`` / ``write_cache`` -> the cache file (never a failure: problems are warnings);
* ``ExpansionReuse`` -> what cpu_facts uses: lookups during the probe, the cache write after it
  (with the whole facts of a reusable run, see ``_facts_key``).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts import EXPANSION_DATA_FORMAT, expansion_data_fingerprint
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts_key import (
    CACHE_FORMAT,
    CPU_MAP_DIR,
    cache_key,
    cached_facts,
    canonical,
    cpu_map_identity,
    file_identity,
    is_local_uri,
    kernel_identity,
    previous_expansions,
    read_cache_file,
    sha256_text,
)

# Bump whenever the probe's logic (_probe_qemu, _expansion_data, the CPU map reading) changes what it
# measures or how, so that data measured by the older logic is measured again.
PROBE_VERSION = 1
# URIs kept in the cache, the most recently written ones (a URI naming a socket in a temporary
# directory is new on every run of its daemon; its entries must not pile up).
MAX_CACHE_URIS = 16
# The raw inputs of one virt type, all of them (collect_inputs returns exactly these keys).
INPUT_KEYS = ("virt_type", "libvirt_version", "hypervisor_version", "host_cpu", "domcapabilities", "emulator",
              "kernel", "cpu_map", "data_format", "probe_version")
# The host CPU as _facts.parse_capabilities reads it, without the TSC frequency: libvirt reports the
# frequency the kernel calibrated at boot, which may differ by a few kHz from one boot to the next,
# and the expansion data does not depend on it.
HOST_CPU_KEYS = ("arch", "vendor", "model", "signature", "microcode", "topology", "maxphysaddr", "features")
SOURCES = ("probed", "previous", "cache")
FIX = "set cache_path to a writable file or cache: false"


# ---------------------------------------------------------------------------------------------
# the inputs and their fingerprint


def host_cpu_inputs(host: Mapping[str, Any]) -> Dict[str, Any]:
    """The part of ``parse_capabilities(xml)["host"]`` the expansion data depends on."""
    return {key: host.get(key) for key in HOST_CPU_KEYS}


def collect_inputs(uri: Optional[str], versions: Mapping[str, Any], host: Mapping[str, Any], domcaps: Mapping[str, str],
                   emulators: Mapping[str, Optional[str]], cpu_map_dir: str = CPU_MAP_DIR) -> Dict[str, Dict[str, Any]]:
    """Per virt type of *domcaps*, the raw inputs of its expansion data (the keys of INPUT_KEYS).

    *uri* is the connection's own URI (``conn.getURI()``), *versions* the integers of
    getLibVersion / getVersion, *host* the parsed host CPU of the capabilities, *emulators* the
    QEMU binary of each virt type (the domain capabilities' ``<path>``). The QEMU binary and the
    kernel are read only when *uri* is local; libvirt's CPU map always, since the module builds the
    data from this host's copy of it whatever the URI.
    """
    local = is_local_uri(uri)
    kernel = kernel_identity() if local else None
    cpu_map = cpu_map_identity(cpu_map_dir)
    host_cpu = host_cpu_inputs(host)
    return {virt_type: {
        "virt_type": virt_type,
        "libvirt_version": versions.get("libvirt_version"),
        "hypervisor_version": versions.get("hypervisor_version"),
        "host_cpu": host_cpu,
        "domcapabilities": xml,
        "emulator": file_identity(emulators.get(virt_type)) if local else None,
        "kernel": kernel,
        "cpu_map": cpu_map,
        "data_format": EXPANSION_DATA_FORMAT,
        "probe_version": PROBE_VERSION,
    } for virt_type, xml in domcaps.items()}


def compact_inputs(inputs: Mapping[str, Any]) -> Dict[str, Any]:
    """*inputs* with the bulky ones (host CPU, domain capabilities XML, CPU map) as their sha256:
    ``expansion.inputs_detail``, about 600 bytes, enough to tell which input changed."""
    compact = dict(inputs)
    for key in ("host_cpu", "domcapabilities", "cpu_map"):
        if key in compact:
            value = compact[key]
            compact[key] = sha256_text(value if isinstance(value, str) else canonical(value))
    return compact


def inputs_fingerprint(inputs: Mapping[str, Any]) -> str:
    """sha256 (hex) over every input of one virt type's expansion data; pure."""
    return sha256_text(canonical(compact_inputs(inputs)))


# ---------------------------------------------------------------------------------------------
# which data wins


MISMATCH = "mismatch"


def reuse_problem(data: Any, virt_type: str, fingerprint: str) -> Optional[str]:
    """None when *data* is expansion data of *virt_type* measured from inputs *fingerprint* and intact;
    MISMATCH when it was measured from other inputs (or is absent); else what is wrong with it."""
    if not isinstance(data, Mapping) or data.get("inputs") != fingerprint:
        return MISMATCH
    if data.get("format") != EXPANSION_DATA_FORMAT:
        return "its format is %r, not %d" % (data.get("format"), EXPANSION_DATA_FORMAT)
    if data.get("virt_type") != virt_type:
        return "it is the data of virt type %r" % (data.get("virt_type"),)
    try:
        intact = data.get("fingerprint") == expansion_data_fingerprint(
            {key: value for key, value in data.items() if key not in ("inputs", "inputs_detail")})
    except (TypeError, ValueError):
        intact = False
    return None if intact else "its content does not match its fingerprint (damaged or edited)"


def decide(virt_type: str, fingerprint: str, previous: Any = None, cached: Any = None) -> Tuple[Optional[Dict[str, Any]], str, List[str]]:
    """``(data, source, warnings)`` for one virt type whose inputs have *fingerprint*.

    *previous*: the expansion data of the previous facts (or None); *cached*: the cache file's entry
    (or None). The previous facts win, then the cache; otherwise ``(None, "probed", ...)``: measure.
    Data that carries the fingerprint but is damaged is not used, with a warning.
    """
    warnings = []
    for source, data in (("previous", previous), ("cache", cached)):
        problem = reuse_problem(data, virt_type, fingerprint)
        if problem is None:
            return dict(data), source, warnings
        if problem != MISMATCH:
            warnings.append("the expansion data of virt type %s in the %s is not reused, %s; it is measured again"
                            % (virt_type, "previous facts" if source == "previous" else "cache", problem))
    return None, "probed", warnings


# ---------------------------------------------------------------------------------------------
# the cache file: {"format": 1, "entries": {uri: {virt type: expansion data}}, "facts": {uri: whole facts}}
# (_facts_key reads it; "facts" is what cpu_facts_cached returns on a hit)


def read_cache(path: str) -> Tuple[Dict[str, Any], List[str]]:
    """``({uri: {virt type: data}}, warnings)``; a missing file is empty, a damaged one is ignored with a warning."""
    content, warnings = read_cache_file(path)
    return content["entries"], warnings


def write_cache(path: str, uri: Optional[str], updates: Mapping[str, Mapping[str, Any]],
                whole: Optional[Mapping[str, Any]] = None) -> List[str]:
    """Store *updates* (virt type -> data) and *whole* (``_facts_key.stored_facts``, the whole facts) under
    *uri*, keeping the other entries of the MAX_CACHE_URIS most recently written URIs; atomic (a temporary
    file in the same directory, then os.replace), mode 0600, the directory created 0700 when missing.
    Updated expansion data without *whole* drops the URI's whole facts (they were built from the old data).
    Returns warnings (nothing here fails the module)."""
    if not updates and whole is None:
        return []
    directory = os.path.dirname(os.path.abspath(path))
    content, _ignored = read_cache_file(path)  # again: another run may have written since
    entries, facts = content["entries"], content["facts"]
    key = cache_key(uri)
    own = entries.pop(key, {})
    own.update(updates)
    entries[key] = own  # the most recently written URI comes last
    for old in list(entries)[:-MAX_CACHE_URIS]:
        del entries[old]
    if whole is not None:
        facts[key] = whole
    elif updates:
        facts.pop(key, None)
    facts = {uri_key: entry for uri_key, entry in facts.items() if uri_key in entries}
    text = json.dumps({"format": CACHE_FORMAT, "entries": entries, "facts": facts}, separators=(",", ":"))
    temporary = None
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), suffix=".tmp", dir=directory)
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
        temporary = None
    except OSError as exc:
        return ["the cpu_facts cache %s cannot be written (%s); %s" % (path, exc.strerror or exc, FIX)]
    finally:
        if temporary is not None:
            try:
                os.unlink(temporary)
            except OSError:
                pass
    return []


class ExpansionReuse:
    """cpu_facts' reuse of expansion data for one connection.

    ``lookup(virt_type, fingerprint)`` (called by ``_probe.probe`` per virt type, before any guest
    starts) returns the data to reuse or None (measure it), and records the source; ``store(data)``
    writes what the cache lacks after the probe. *cache_path* None turns the cache off (neither read
    nor written); ``warnings`` collects what the module should warn about.
    """

    def __init__(self, uri: Optional[str], previous: Any = None, cache_path: Optional[str] = None) -> None:
        self.uri = uri
        self.previous = previous_expansions(previous)
        self.cache_path = cache_path
        self.sources: Dict[str, str] = {}
        self.warnings: List[str] = []
        self._content: Optional[Dict[str, Any]] = None

    def content(self) -> Dict[str, Any]:
        """The cache file's content (``_facts_key.read_cache_file``), read once, on first need."""
        if self._content is None:
            self._content = {"entries": {}, "facts": {}}
            if self.cache_path:
                self._content, warnings = read_cache_file(self.cache_path)
                self.warnings += warnings
        return self._content

    def cached(self) -> Dict[str, Any]:
        """This URI's cache entries."""
        return self.content()["entries"].get(cache_key(self.uri)) or {}

    def lookup(self, virt_type: str, fingerprint: str) -> Optional[Dict[str, Any]]:
        data, source, warnings = decide(virt_type, fingerprint, previous=self.previous.get(virt_type))
        if data is None:  # only then is the cache read
            data, source, cache_warnings = decide(virt_type, fingerprint, cached=self.cached().get(virt_type))
            warnings += cache_warnings
        self.sources[virt_type] = source
        self.warnings += warnings
        return data

    def updates(self, expansion_data: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
        """The data the cache does not hold yet (probed, or reused from the previous facts)."""
        if not self.cache_path:
            return {}
        result = {}
        for virt_type, data in (expansion_data or {}).items():
            if data is None or self.sources.get(virt_type) == "cache":
                continue
            if reuse_problem(self.cached().get(virt_type), virt_type, data.get("inputs")) is not None:
                result[virt_type] = data
        return result

    def whole_update(self, whole: Optional[Mapping[str, Any]]) -> Optional[Mapping[str, Any]]:
        """*whole* (``_facts_key.stored_facts``) unless the cache holds these facts already, intact."""
        if not self.cache_path or whole is None:
            return None
        stored, _why = cached_facts(self.content(), self.uri, whole["key"])
        return None if stored is not None and stored["reuse"]["content"] == whole["content"] else whole

    def store(self, expansion_data: Optional[Mapping[str, Any]], whole: Optional[Mapping[str, Any]] = None) -> bool:
        """Write what the cache lacks (expansion data, and *whole*, the whole facts); True when the file was written."""
        updates = self.updates(expansion_data)
        whole = whole if updates and self.cache_path else self.whole_update(whole)
        warnings = write_cache(self.cache_path, self.uri, updates, whole) if updates or whole is not None else []
        self.warnings += warnings
        return (bool(updates) or whole is not None) and not warnings
