# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one exception type of the collection's pure logic."""

from __future__ import annotations


class CPUError(Exception):
    """A user-facing problem: the message names what is wrong and how to fix it."""
