#!/usr/bin/python
# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: cpu_facts_cached
short_description: The facts of P(hostcpu.libvirt.cpu_facts#module) on an unchanged host, from its cache
version_added: 0.1.0
description:
  - The fast path of P(hostcpu.libvirt.cpu_facts#module), which runs it first when the task can reuse facts
    (O(hostcpu.libvirt.cpu_facts#module:expansion=true), O(hostcpu.libvirt.cpu_facts#module:verify_modes=false),
    no XML inputs, and O(hostcpu.libvirt.cpu_facts#module:cache) or O(hostcpu.libvirt.cpu_facts#module:previous));
    there is usually no need to use this module directly.
  - Reads in a few milliseconds everything the facts depend on (the libvirt and QEMU versions, the connection's URI,
    the capabilities, per virt type the domain capabilities or the error of that call, the QEMU binaries, the kernel
    and libvirt's CPU map files), and hashes it with the options that change the facts and the fingerprint of the
    collection's code that builds them, into the key RV(key).
  - When the cache file (O(cache_path)) holds the whole facts of a P(hostcpu.libvirt.cpu_facts#module) run of
    that key, intact, it returns them as JSON text (RV(hit=true), RV(source=cache), RV(facts_json)), exactly as
    P(hostcpu.libvirt.cpu_facts#module) would return them; otherwise RV(hit=false) and RV(reason).
  - Loads only libvirt-python and a small part of the collection, so that it is much faster than
    P(hostcpu.libvirt.cpu_facts#module) when nothing changed.
  - The fingerprint of the collection's code is given by the P(hostcpu.libvirt.cpu_facts#module) task, which
    computes it on the controller. Run alone, without it, this module always reports a miss.
author:
  - hostcpu.libvirt maintainers (@hostcpu)
extends_documentation_fragment:
  - hostcpu.libvirt.attributes
  - hostcpu.libvirt.attributes.INFO_MODULE
  - hostcpu.libvirt.attributes.FACTS
  - hostcpu.libvirt.connection
options:
  virt_types:
    description:
      - As O(hostcpu.libvirt.cpu_facts#module:virt_types); facts probed for other virt types do not match.
    type: list
    elements: str
    choices: [kvm, qemu]
  cache:
    description:
      - Look in the cache file. With V(false) the result is always a miss (except for the P(hostcpu.libvirt.cpu_facts#module)
        task's O(hostcpu.libvirt.cpu_facts#module:previous), which it checks itself).
    type: bool
    default: true
  cache_path:
    description:
      - The cache file P(hostcpu.libvirt.cpu_facts#module) writes (O(hostcpu.libvirt.cpu_facts#module:cache_path)).
        Only read, never written.
    type: path
    default: /var/cache/hostcpu-libvirt/cpu_facts.json
  _code:
    description:
      - Set by the P(hostcpu.libvirt.cpu_facts#module) action plugin (the fingerprint of the collection's code that
        builds the facts). Without it the result is always a miss.
    type: str
  _previous:
    description:
      - Set by the P(hostcpu.libvirt.cpu_facts#module) action plugin from its O(hostcpu.libvirt.cpu_facts#module:previous),
        their C(key) and C(content) when they are intact and, per virt type, the C(inputs) of their expansion data.
    type: dict
notes:
  - Never fails for libvirt or the cache file (a missing libvirt-python, a connection that cannot be opened within
    10 seconds, a damaged cache); those are a miss with the RV(reason), and P(hostcpu.libvirt.cpu_facts#module) then
    reports them properly.
  - Only facts of a P(hostcpu.libvirt.cpu_facts#module) run without any warning are stored, so a hit returns exactly
    what that module would, warnings included.
attributes:
  check_mode:
    details:
      - Only reads, in check mode too.
"""

EXAMPLES = r"""
# Usually not needed: hostcpu.libvirt.cpu_facts runs this module first by itself.
- name: Probe the host CPU (the cached facts are used when nothing changed)
  hostcpu.libvirt.cpu_facts:

- name: Tell whether the cache would answer, and why not
  hostcpu.libvirt.cpu_facts_cached:
  register: cached

- name: Show it
  ansible.builtin.debug:
    msg: "{{ cached.hit }} {{ cached.reason }} {{ (cached.facts_json | from_json).model if cached.hit else '' }}"
"""

RETURN = r"""
hit:
  description: Whether the facts were found (then they are in C(ansible_facts.hostcpu)).
  returned: always
  type: bool
  sample: false
source:
  description: Where the facts of a hit come from; V(null) on a miss.
  returned: always
  type: str
  choices: [cache, previous]
  sample: cache
reason:
  description: Why there was no hit; empty on a hit.
  returned: always
  type: str
  sample: the cache holds no facts of this key
key:
  description:
    - The key of everything the facts depend on (sha256, hex); the facts carry theirs in
      C(ansible_facts.hostcpu.reuse.key). V(null) without the fingerprint of the collection's code.
  returned: always
  type: str
facts_json:
  description:
    - Only on a hit from the cache. C(ansible_facts.hostcpu) as P(hostcpu.libvirt.cpu_facts#module) returns it (see there),
      every virt type's C(expansion_source) V(cache), as JSON text; the P(hostcpu.libvirt.cpu_facts#module) task
      returns it parsed, as its facts.
    - Text, not facts of this module, because Ansible checks and copies every value of a module's result on both
      sides (about 30 ms for these 65 kB of facts), and the P(hostcpu.libvirt.cpu_facts#module) task parses them once.
  returned: when hit and source is cache
  type: str
"""

import json
from typing import Optional, Tuple

try:
    import libvirt
    LIBVIRT_IMPORT_ERROR = None
except ImportError as _exc:
    libvirt = None
    LIBVIRT_IMPORT_ERROR = _exc

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts_key import (
    DEFAULT_CACHE_PATH,
    VIRT_TYPES,
    Decision,
    decide,
    facts_key,
    key_options,
    read_cache_file,
    read_key_inputs,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._libvirt_host import open_within, resolve_uri

# Shorter than cpu_facts' 30 s: a miss costs only the full module's run.
OPEN_TIMEOUT_SECONDS = 10


def argument_spec() -> dict:
    return {
        "uri": {"type": "str"},
        "virt_types": {"type": "list", "elements": "str", "choices": list(VIRT_TYPES)},
        "cache": {"type": "bool", "default": True},
        "cache_path": {"type": "path", "default": DEFAULT_CACHE_PATH},
        "_code": {"type": "str"},
        "_previous": {"type": "dict"},
    }


def current_key(params: dict) -> Optional[str]:
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = open_within(libvirt.open, resolve_uri(params["uri"]), OPEN_TIMEOUT_SECONDS)
    try:
        inputs = read_key_inputs(conn, params["virt_types"], libvirt.libvirtError)
    finally:
        conn.close()
    return facts_key(inputs, key_options(params["virt_types"], True), params["_code"])


def look_up(params: dict) -> Tuple[Optional[str], Decision]:
    """``(key, Decision)``; libvirt and the file system are asked only with a code fingerprint."""
    if libvirt is None:
        return None, Decision(None, "libvirt-python is missing (%s)" % LIBVIRT_IMPORT_ERROR)
    if not params["_code"]:
        return None, decide(None, params["uri"], None, [], None)
    try:
        key = current_key(params)
    except (libvirt.libvirtError, TimeoutError) as exc:
        return None, Decision(None, "libvirt cannot be asked: %s" % exc)
    cache, warnings = read_cache_file(params["cache_path"]) if params["cache"] else (None, [])
    return key, decide(key, params["uri"], cache, warnings, params["_previous"])


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    key, decision = look_up(module.params)
    result = {"changed": False, "hit": decision.source is not None, "source": decision.source, "reason": decision.reason, "key": key}
    if decision.facts is not None:
        result["facts_json"] = json.dumps(decision.facts, separators=(",", ":"))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
