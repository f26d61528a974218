# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The exceptions of the collection's pure logic: CPUError, and the prediction's two kinds of it."""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence

# A message quotes what it refuses; a huge value (a 20 MB string given as a mode, say) is shown
# by its start and length instead, so that the message stays readable.
LONG_WORD = re.compile(r"\S{1001,}")
WORD_KEPT = 100
MAX_MESSAGE = 8000


def brief(text: str) -> str:
    """*text* with every run of more than 1000 non-blank characters cut to its first 100, at most 8000 characters."""
    text = LONG_WORD.sub(lambda match: "%s...[%d more characters]" % (match.group(0)[:WORD_KEPT], len(match.group(0)) - WORD_KEPT),
                         text)
    if len(text) > MAX_MESSAGE:
        text = "%s ...[%d characters left out]... %s" % (text[:MAX_MESSAGE - 2000], len(text) - MAX_MESSAGE + 1000, text[-1000:])
    return text


class CPUError(Exception):
    """A user-facing problem: the message names what is wrong and how to fix it."""

    def __str__(self) -> str:
        return brief(super().__str__())


class ExpansionDataError(CPUError):
    """The facts do not carry (usable) expansion data for this prediction."""


class GuestWouldNotStart(CPUError):
    """libvirt or QEMU would refuse to start a guest with this CPU on this host.

    ``reason`` is libvirt's own error text (as ``virsh start`` prints it), ``missing_features``
    the features named as missing, ``fix`` a list of ``{name, policy: disable}`` that makes the
    guest start when one is known.
    """

    def __init__(self, reason: str, missing_features: Sequence[str] = (), extra_features: Sequence[str] = (),
                 forbidden_features: Sequence[str] = (), fix: Optional[List[Dict[str, str]]] = None,
                 hint: Optional[str] = None):
        self.reason = reason
        self.missing_features = list(missing_features)
        self.extra_features = list(extra_features)
        self.forbidden_features = list(forbidden_features)
        self.fix = fix
        message = "libvirt would not start this guest: %s" % reason
        if hint:
            message += "; " + hint
        super().__init__(message)
