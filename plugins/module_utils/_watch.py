# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Changes other clients make to a domain while this task writes it, seen through libvirt's events.

libvirt has no compare-and-swap for a definition: ``defineXML`` replaces the whole persistent
definition. domain_cpu reads the definition again right before it writes and refuses to write
when it changed, but a change another client makes after that read, while libvirtd is still
parsing this task's new definition (a few milliseconds), is replaced by it. Such a change cannot
be prevented with libvirt's API; it can be seen. libvirtd sends the events of one domain in the
order the changes happened, so a metadata change, a removal or a definition that arrives before
the event of this task's own definition happened in that window.

A :class:`DefinitionWatch` is a second connection that receives those events (libvirt delivers
events only on connections opened after an event loop is registered, and only while it runs).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List, Optional

from ansible_collections.hostcpu.libvirt.plugins.module_utils._connection import libvirt, open_connection
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError

DEFINED = "a new definition"
UNDEFINED = "its removal"
METADATA = "a metadata change: description, title or <metadata>"
OWN_EVENT_SECONDS = 10.0
SETTLE_SECONDS = 0.05

_LOOP_LOCK = threading.Lock()
_LOOP_STARTED = False


class ConcurrentChangeError(CPUError):
    """Another client changed a domain's definition while this task wrote it."""


def _run_event_loop() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


def _start_event_loop() -> None:
    """libvirt's default event loop, run by a daemon thread (once per process)."""
    global _LOOP_STARTED  # pylint: disable=global-statement
    with _LOOP_LOCK:
        if not _LOOP_STARTED:
            libvirt.virEventRegisterDefaultImpl()
            threading.Thread(target=_run_event_loop, name="libvirt-events", daemon=True).start()
            _LOOP_STARTED = True


class DefinitionWatch:
    """Records, per domain UUID, the events that change a persistent definition, in libvirt's order."""

    def __init__(self, uri: Optional[str]) -> None:
        _start_event_loop()
        self.conn = open_connection(uri)
        self.events: Dict[str, List[str]] = {}
        self.changed = threading.Condition()
        self.callbacks = [
            self.conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None),
            self.conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, self._metadata, None),
        ]

    def _record(self, domain: Any, kind: str) -> None:
        with self.changed:
            self.events.setdefault(domain.UUIDString(), []).append(kind)
            self.changed.notify_all()

    def _lifecycle(self, _conn: Any, domain: Any, event: int, _detail: int, _opaque: Any) -> None:
        if event == libvirt.VIR_DOMAIN_EVENT_DEFINED:
            self._record(domain, DEFINED)
        elif event == libvirt.VIR_DOMAIN_EVENT_UNDEFINED:
            self._record(domain, UNDEFINED)

    def _metadata(self, _conn: Any, domain: Any, _kind: int, _namespace: Any, _opaque: Any) -> None:
        self._record(domain, METADATA)

    def mark(self, uuid: str) -> int:
        """The position in *uuid*'s events from which this task's write is watched."""
        with self.changed:
            return len(self.events.get(uuid, []))

    def before_own_definition(self, uuid: str, since: int) -> List[str]:
        """The events after *since* that came before the first definition event (this task's, or one in the window)."""
        deadline = time.monotonic() + OWN_EVENT_SECONDS
        with self.changed:
            while True:
                seen = self.events.get(uuid, [])[since:]
                if DEFINED in seen:
                    return seen[:seen.index(DEFINED)]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ConcurrentChangeError("libvirt sent no event for the new definition within %d seconds, so a "
                                                "change by someone else at the same time cannot be ruled out; check the "
                                                "domain" % OWN_EVENT_SECONDS)
                self.changed.wait(left)

    @staticmethod
    def settle() -> None:
        """Give events still in flight time to arrive."""
        time.sleep(SETTLE_SECONDS)

    def definitions_since(self, uuid: str, since: int) -> int:
        """How many definition events arrived after *since*."""
        with self.changed:
            return self.events.get(uuid, [])[since:].count(DEFINED)

    def close(self) -> None:
        for callback in self.callbacks:
            try:
                self.conn.domainEventDeregisterAny(callback)
            except libvirt.libvirtError:
                pass
        try:
            self.conn.close()
        except libvirt.libvirtError:
            pass


def open_watch(uri: Optional[str]) -> DefinitionWatch:
    """A DefinitionWatch on *uri*, or CPUError saying why there is none."""
    try:
        return DefinitionWatch(uri)
    except libvirt.libvirtError as exc:
        raise CPUError("libvirt's domain events are not available (%s)" % exc.get_error_message()) from None
