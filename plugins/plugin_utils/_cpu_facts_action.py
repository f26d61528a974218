# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cpu_facts action plugin's logic (controller side, pure but for reading the code files).

* ``code_fingerprint``: the sha256 of the collection's code that builds the facts (``_code``);
* ``reuse_plan``: whether a task may reuse whole facts, and cpu_facts_cached's arguments;
* ``hit_result``: cpu_facts' result from cpu_facts_cached's hit (the cached facts, sent as JSON text, or the previous ones).

The key, the decision and ``invocation`` (which cpu_facts uses too) are ``_facts_key``'s.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Mapping, Optional

from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts_key import (
    DEFAULT_CACHE_PATH,
    OFFLINE_OPTIONS,
    intact,
    invocation,
    previous_expansions,
    previous_hostcpu,
)

# cpu_facts' options (its argument_spec without _code; a unit test holds them equal): a task naming any
# other runs cpu_facts, which refuses it.
CPU_FACTS_OPTIONS = ("uri", "virt_types", "verify_modes", "expansion", "previous", "cache", "cache_path") + OFFLINE_OPTIONS


def with_source(facts: Mapping[str, Any], source: str) -> Dict[str, Any]:
    """A plain copy of *facts* (JSON, as a module returns them) whose virt types say their expansion data came from *source*.

    The previous facts reach the action templated: ansible-core 2.19 tags every value (origin, trust),
    and returning them tagged made every later step copy the tags (0.2 s more per task than a cache
    hit); JSON also drops a trust a module's facts never have."""
    result = json.loads(json.dumps(facts, default=str))
    for entry in result.get("virt_types", {}).values():
        entry["expansion_source"] = source
    return result


def code_files(plugins_dir: str) -> List[str]:
    """The collection's files that build cpu_facts' facts: every module_util and the module."""
    utils = os.path.join(plugins_dir, "module_utils")
    names = sorted(name for name in os.listdir(utils) if name.endswith(".py"))
    return [os.path.join(utils, name) for name in names] + [os.path.join(plugins_dir, "modules", "cpu_facts.py")]


def code_fingerprint(plugins_dir: str) -> str:
    """sha256 over the names and contents of code_files(*plugins_dir*)."""
    digest = hashlib.sha256()
    for path in code_files(plugins_dir):
        with open(path, "rb") as handle:
            content = handle.read()
        digest.update(os.path.relpath(path, plugins_dir).encode("utf-8") + b"\0" + content + b"\0")
    return digest.hexdigest()


def option_bool(value: Any, default: bool) -> Optional[bool]:
    """An Ansible boolean option's value; None when it is not one (cpu_facts then says why)."""
    if value is None:
        return default
    try:
        return boolean(value, strict=True)
    except TypeError:
        return None


def previous_summary(previous: Any) -> Optional[Dict[str, Any]]:
    """What cpu_facts_cached needs of the previous facts: their key when they are intact, and per virt type
    the inputs of their expansion data (a full run would reuse it); None when no previous facts were given."""
    facts = previous_hostcpu(previous)
    if facts is None:
        return None
    inputs = {virt_type: data.get("inputs") for virt_type, data in previous_expansions(facts).items()
              if isinstance(data, Mapping) and isinstance(data.get("inputs"), str)}
    reuse = facts["reuse"] if intact(facts) else {"key": None, "content": None}
    return {"key": reuse["key"], "content": reuse["content"], "inputs": inputs}


def reuse_plan(args: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The arguments of cpu_facts_cached for a cpu_facts task's *args*; None when the task cannot reuse
    whole facts (offline XML, verify_modes, expansion off, neither cache nor previous) or when cpu_facts
    would refuse them (an unknown option, a value that is not what it takes)."""
    if set(args) - set(CPU_FACTS_OPTIONS) or any(args.get(name) is not None for name in OFFLINE_OPTIONS):
        return None
    cache = option_bool(args.get("cache"), True)
    if option_bool(args.get("verify_modes"), False) is not False or option_bool(args.get("expansion"), True) is not True or cache is None:
        return None
    if not (args.get("previous") is None or isinstance(args["previous"], Mapping)):
        return None
    if cache and not str(DEFAULT_CACHE_PATH if args.get("cache_path") is None else args["cache_path"]).startswith("/"):
        return None
    previous = previous_summary(args.get("previous"))
    if not cache and previous is None:
        return None
    plan = {name: args[name] for name in ("uri", "virt_types", "cache_path") if args.get(name) is not None}
    plan["cache"] = cache
    if previous is not None:
        plan["_previous"] = previous
    return plan


def parsed_facts(text: Any) -> Optional[Dict[str, Any]]:
    """The facts cpu_facts_cached returned as JSON text; None when they are not a JSON object."""
    try:
        facts = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return facts if isinstance(facts, dict) else None


def hit_result(cached: Mapping[str, Any], args: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """cpu_facts' result from cpu_facts_cached's result *cached* on a hit; None on a miss or a failure."""
    source = cached.get("source") if cached.get("hit") is True and not cached.get("failed") else None
    if source == "cache":
        facts = parsed_facts(cached.get("facts_json"))
        if facts is None:
            return None
    elif source == "previous":
        facts = with_source(previous_hostcpu(args.get("previous")), "previous")
    else:
        return None
    return {"changed": False, "ansible_facts": {"hostcpu": facts}, "facts_source": source, "invocation": invocation(args)}
