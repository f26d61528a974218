# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one exception type of the collection's pure logic."""

from __future__ import annotations

import re

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
