# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which libvirt a module talks to (its URI, the QEMU driver's domain types), and opening it without
hanging on a daemon that never answers.

Shared by ``_connection`` (every module that works with libvirt) and ``_facts_key`` (the small
``cpu_facts_cached`` module): stdlib only, so that neither ships or compiles the other.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Dict, Optional

DEFAULT_URI = "qemu:///system"
# How long opening a connection may take; libvirt's own keepalive gives up on a silent peer
# after about 30 seconds (5 s interval, 5 probes) once a connection is open.
OPEN_TIMEOUT_SECONDS = 30
# Domain types of libvirt's QEMU driver; kvm needs /dev/kvm, qemu is TCG (always there).
VIRT_TYPES = ("kvm", "qemu")


def resolve_uri(uri: Optional[str]) -> str:
    """The uri option, else LIBVIRT_DEFAULT_URI, else qemu:///system."""
    return uri or os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI


def open_within(opener: Callable[[str], Any], target: str, seconds: float) -> Any:
    """opener(target), or TimeoutError when it has not answered after *seconds*.

    libvirt's remote driver waits for the daemon's first answer without a time limit (its
    keepalive only starts once the connection is open), so a daemon that accepts the connection
    and never answers (frozen, or not libvirt at all) would hang the task forever. The open runs
    in a daemon thread; one that never returns is left behind when the module exits.
    """
    outcome: Dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["conn"] = opener(target)
        except Exception as exc:  # pylint: disable=broad-exception-caught  # re-raised in the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="libvirt-open", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeoutError("libvirt at '%s' did not answer within %d seconds" % (target, seconds))
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("conn")
