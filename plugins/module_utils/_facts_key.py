# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reusing cpu_facts' whole facts on an unchanged host: the key, the cache file, the decision.

The facts cpu_facts returns (expansion on, verify_modes off, no warning) are a function of a few
things read in milliseconds: the options that change them, the libvirt and QEMU versions, the
connection's URI, the capabilities XML, per wanted virt type the domain capabilities XML (or the
error of that call), the QEMU binaries, the kernel, libvirt's CPU map files and the collection's
own code. ``facts_key`` hashes them (``read_key_inputs`` reads them); facts stored with that key
in the cache file, or given back as ``previous``, are returned instead of building them again.

This module is imported by the small ``cpu_facts_cached`` module (whose whole point is to load
little: stdlib only here, nothing of lxml or the facts code), by ``cpu_facts`` and ``_facts_cache``,
and on the controller by the action plugin (``plugin_utils/_cpu_facts_action``).

* identities of files (``file_identity``, ``cpu_map_identity``, ``kernel_identity``);
* ``read_key_inputs`` (libvirt calls, stat) -> ``facts_key`` (pure);
* ``content_fingerprint``: the fingerprint of the facts' content, stored with them;
* ``read_cache_file`` / ``cached_facts`` / ``stored_facts``: the whole-facts part of the cache file;
* ``decide``: hit from the previous facts, from the cache, or why not.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from ansible_collections.hostcpu.libvirt.plugins.module_utils._libvirt_host import VIRT_TYPES

# Bump when what the key covers changes.
KEY_FORMAT = 1
CACHE_FORMAT = 1
DEFAULT_CACHE_PATH = "/var/cache/hostcpu-libvirt/cpu_facts.json"
# libvirt's CPU map on the managed host (_cpu_map.CPU_MAP_DIR; a unit test holds them equal).
CPU_MAP_DIR = "/usr/share/libvirt/cpu_map"
# A cache file larger than this is not read (it holds a few entries of ~20-120 kB each).
MAX_CACHE_BYTES = 32 * 1024 * 1024
OFFLINE_OPTIONS = ("capabilities_xml", "domain_capabilities_xml")
# libvirt prints the host's <arch> first inside <host><cpu>; guests' <arch> carry a name attribute.
HOST_ARCH = re.compile(r"<host>.*?<cpu>\s*<arch>\s*([^<\s]+)\s*</arch>", re.S)
EMULATOR_PATH = re.compile(r"<path>\s*([^<]+?)\s*</path>")


# ---------------------------------------------------------------------------------------------
# identities of what the facts depend on beyond libvirt's answers


def is_local_uri(uri: Optional[str]) -> bool:
    """A libvirt URI without a host part (``qemu:///system``): the daemon runs where the module runs."""
    try:
        return not urlsplit(uri or "").netloc
    except ValueError:
        return False


def file_identity(path: Optional[str]) -> Optional[Dict[str, Any]]:
    """``{path, size, mtime_ns, inode}`` of *path*, or ``{path, error}`` when it cannot be read."""
    if not path:
        return None
    try:
        found = os.stat(path)
    except OSError as exc:
        return {"path": path, "error": exc.strerror or str(exc)}
    return {"path": path, "size": found.st_size, "mtime_ns": found.st_mtime_ns, "inode": found.st_ino}


def cpu_map_identity(directory: str = CPU_MAP_DIR) -> Any:
    """``[[name, size, mtime_ns, inode], ...]`` of every file of libvirt's CPU map, or ``{error}``."""
    try:
        names = sorted(os.listdir(directory))
        identity = []
        for name in names:
            found = os.stat(os.path.join(directory, name))
            identity.append([name, found.st_size, found.st_mtime_ns, found.st_ino])
        return identity
    except OSError as exc:
        return {"directory": directory, "error": exc.strerror or str(exc)}


def kernel_identity() -> Dict[str, str]:
    uname = os.uname()
    return {"release": uname.release, "version": uname.version}


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# the key


def host_arch(capabilities_xml: str) -> Optional[str]:
    found = HOST_ARCH.search(capabilities_xml or "")
    return found.group(1) if found else None


def emulator_path(domcapabilities_xml: str) -> Optional[str]:
    found = EMULATOR_PATH.search(domcapabilities_xml or "")
    return found.group(1) if found else None


def wanted_virt_types(virt_types: Optional[Sequence[str]]) -> List[str]:
    return list(virt_types) if virt_types else list(VIRT_TYPES)


def read_domain_capabilities(conn, arch: Optional[str], virt_type: str, libvirt_error: type) -> Dict[str, str]:
    """``{"xml": ...}`` or ``{"error": libvirt's message}`` of domcapabilities for the default emulator and machine."""
    try:
        return {"xml": conn.getDomainCapabilities(None, arch, None, virt_type, 0)}
    except libvirt_error as exc:
        return {"error": str(exc)}


def read_key_inputs(conn, virt_types: Optional[Sequence[str]], libvirt_error: type) -> Dict[str, Any]:
    """Everything the facts depend on, read from *conn* and this host (*libvirt_error*: libvirt.libvirtError).

    Both modules call this very function, so that they ask libvirt exactly the same way.
    """
    uri = conn.getURI()
    capabilities = conn.getCapabilities()
    arch = host_arch(capabilities)
    domcaps = {virt_type: read_domain_capabilities(conn, arch, virt_type, libvirt_error)
               for virt_type in wanted_virt_types(virt_types)}
    local = is_local_uri(uri)
    return {
        "libvirt_version": conn.getLibVersion(),
        "hypervisor_version": conn.getVersion(),
        "uri": uri,
        "capabilities": capabilities,
        "arch": arch,
        "domcaps": domcaps,
        "emulators": {virt_type: file_identity(emulator_path(found.get("xml", ""))) if local else None
                      for virt_type, found in domcaps.items()},
        "kernel": kernel_identity() if local else None,
        "cpu_map": cpu_map_identity(),
    }


def key_options(virt_types: Optional[Sequence[str]], expansion: bool) -> Dict[str, Any]:
    """The options that change the facts of a reusable run (verify_modes is off, no offline XML)."""
    return {"virt_types": list(virt_types) if virt_types else None, "expansion": bool(expansion)}


def facts_key(inputs: Mapping[str, Any], options: Mapping[str, Any], code: Optional[str]) -> Optional[str]:
    """sha256 over *inputs*, *options* and the *code* fingerprint; None without *code* (never matches)."""
    if not code:
        return None
    return sha256_text(canonical({"format": KEY_FORMAT, "code": code, "options": options, "inputs": inputs}))


# ---------------------------------------------------------------------------------------------
# the facts' content


def content_fingerprint(facts: Mapping[str, Any]) -> str:
    """sha256 over *facts* without ``reuse`` and the virt types' ``expansion_source`` (where the data came from)."""
    content = {key: value for key, value in facts.items() if key != "reuse"}
    virt_types = content.get("virt_types")
    if isinstance(virt_types, Mapping):
        content["virt_types"] = {virt_type: {key: value for key, value in entry.items() if key != "expansion_source"}
                                 if isinstance(entry, Mapping) else entry for virt_type, entry in virt_types.items()}
    return sha256_text(canonical(content))


def reuse_fact(key: Optional[str], facts: Mapping[str, Any]) -> Optional[Dict[str, str]]:
    """``ansible_facts.hostcpu.reuse`` of *facts* built for *key*; None when they cannot be reused."""
    return {"key": key, "content": content_fingerprint(facts)} if key else None


def intact(facts: Any) -> bool:
    """Whether *facts* carry a reuse key and their content still matches its fingerprint."""
    reuse = facts.get("reuse") if isinstance(facts, Mapping) else None
    if not (isinstance(reuse, Mapping) and reuse.get("key") and reuse.get("content")):
        return False
    try:
        return content_fingerprint(facts) == reuse["content"]
    except (TypeError, ValueError):
        return False


def previous_hostcpu(previous: Any) -> Optional[Mapping[str, Any]]:
    """``ansible_facts.hostcpu`` from the previous option (those facts, or ``ansible_facts`` holding them)."""
    if not isinstance(previous, Mapping):
        return None
    if "virt_types" not in previous and isinstance(previous.get("hostcpu"), Mapping):
        previous = previous["hostcpu"]
    return previous


def previous_expansions(previous: Any) -> Dict[str, Any]:
    """Per virt type, the expansion data of the previous option; anything else gives nothing."""
    virt_types = (previous_hostcpu(previous) or {}).get("virt_types")
    if not isinstance(virt_types, Mapping):
        return {}
    return {str(virt_type): entry.get("expansion") for virt_type, entry in virt_types.items() if isinstance(entry, Mapping)}


# ---------------------------------------------------------------------------------------------
# the cache file: {"format": 1, "entries": {uri: {virt type: expansion data}},
#                  "facts": {uri: {"key", "content", "facts": the facts without expansion data}}}


def invocation(params: Mapping[str, Any]) -> Dict[str, Any]:
    """The module_args Ansible echoes in the result, with the previous facts (~70 kB) summarised."""
    previous = params.get("previous")
    if previous is None:
        return {"module_args": dict(params)}
    return {"module_args": dict(params, previous="(facts of %d keys, not repeated here)" % len(previous))}


def cache_key(uri: Optional[str]) -> str:
    """The cache entries' key of a connection: the uri option as given; none or empty (the default) is ``""``."""
    return uri or ""


def cache_problem(content: Any) -> Optional[str]:
    if (isinstance(content, dict) and content.get("format") == CACHE_FORMAT and isinstance(content.get("entries"), dict)
            and all(isinstance(entries, dict) for entries in content["entries"].values())):
        return None
    return "it is not a cache of format %d" % CACHE_FORMAT


def read_cache_file(path: str) -> Tuple[Dict[str, Any], List[str]]:
    """``({"entries": {...}, "facts": {...}}, warnings)``; a missing file is empty, a damaged one is
    ignored with a warning. A ``facts`` part that is not a dict of dicts is left out (written again)."""
    empty: Dict[str, Any] = {"entries": {}, "facts": {}}
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CACHE_BYTES + 1)
    except FileNotFoundError:
        return empty, []
    except OSError as exc:
        return empty, ["the cpu_facts cache %s cannot be read (%s); it is ignored" % (path, exc.strerror or exc)]
    problem = None
    content: Any = None
    if len(raw) > MAX_CACHE_BYTES:
        problem = "it is larger than %d MiB" % (MAX_CACHE_BYTES >> 20)
    else:
        try:
            content = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            problem = "it is not JSON (%s)" % exc
    problem = problem or cache_problem(content)
    if problem is not None:
        return empty, ["the cpu_facts cache %s is ignored: %s; it is written again" % (path, problem)]
    whole = content.get("facts")
    if not (isinstance(whole, dict) and all(isinstance(entry, dict) for entry in whole.values())):
        whole = {}
    return {"entries": content["entries"], "facts": whole}, []


def stored_facts(key: str, facts: Mapping[str, Any]) -> Dict[str, Any]:
    """The cache's whole-facts entry of *facts*: their expansion data is not repeated (the cache's
    ``entries`` hold it) and no ``expansion_source`` (a hit says ``cache``)."""
    slim = dict(facts)
    slim["virt_types"] = {virt_type: {name: value for name, value in entry.items() if name not in ("expansion", "expansion_source")}
                          for virt_type, entry in facts["virt_types"].items()}
    return {"key": key, "content": facts["reuse"]["content"], "facts": slim}


def cached_facts(cache: Mapping[str, Any], uri: Optional[str], key: str) -> Tuple[Optional[Dict[str, Any]], str]:
    """``(facts, "")`` of this URI's whole-facts entry of *cache* (read_cache_file) when it has *key* and
    is intact, its expansion data taken from the cache's entries (source ``cache``); else ``(None, why)``."""
    entry = cache["facts"].get(cache_key(uri))
    if not entry or entry.get("key") != key:
        return None, "the cache holds no facts of this key"
    facts = entry.get("facts")
    expansions = cache["entries"].get(cache_key(uri), {})
    if not (isinstance(facts, dict) and isinstance(facts.get("virt_types"), dict)
            and all(isinstance(item, dict) for item in facts["virt_types"].values())):
        return None, "the cached facts are damaged"
    rebuilt = dict(facts, virt_types={virt_type: dict(item, expansion=expansions.get(virt_type), expansion_source="cache")
                                      for virt_type, item in facts["virt_types"].items()})
    if not intact(rebuilt) or rebuilt["reuse"] != {"key": key, "content": entry.get("content")}:
        return None, "the cached facts do not match their fingerprint (damaged or edited)"
    return rebuilt, ""


# ---------------------------------------------------------------------------------------------
# the decision


class Decision(NamedTuple):
    source: Optional[str]  # "cache", "previous", or None: run cpu_facts
    reason: str  # why not, on a miss
    facts: Optional[Dict[str, Any]] = None  # the facts of a cache hit


def decide(key: Optional[str], uri: Optional[str], cache: Optional[Mapping[str, Any]], cache_warnings: Sequence[str],
           previous: Optional[Mapping[str, Any]]) -> Decision:
    """Whether cpu_facts would return exactly the cached or the previous facts, warnings included.

    *cache*: read_cache_file's content, None with cache off; *previous*: previous_summary (None when
    not given). A hit must be what a full run gives: the previous facts win when their key is this
    key (with cache on, only when the cache holds them too, so that a full run would write nothing);
    cached facts only when no previous expansion data of the same inputs would win over them.
    """
    if not key:
        return Decision(None, "no code fingerprint (_code): the key is only computed through the cpu_facts action")
    if cache_warnings:
        return Decision(None, "the cache file cannot be used (%s)" % "; ".join(cache_warnings))
    found, why = cached_facts(cache, uri, key) if cache is not None else (None, "cache is off")
    previous = previous or {}
    if previous.get("key") == key:
        if cache is None or (found is not None and found["reuse"]["content"] == previous.get("content")):
            return Decision("previous", "")
        return Decision(None, "the previous facts match but the cache does not hold them (%s)" % (why or "it holds other facts"))
    if found is None:
        return Decision(None, why)
    previous_inputs = previous.get("inputs") or {}
    if any(previous_inputs.get(virt_type) is not None and previous_inputs[virt_type] == (entry.get("expansion") or {}).get("inputs")
           for virt_type, entry in found["virt_types"].items()):
        return Decision(None, "the previous facts hold expansion data of the same inputs, which cpu_facts would prefer")
    return Decision("cache", "", found)
