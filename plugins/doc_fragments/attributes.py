# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """The attributes every module documents; each module states its own C(support) levels."""

    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
  idempotent:
    description:
      - When run twice in a row outside check mode, with the same arguments, the second invocation
        indicates no change.
      - This assumes that the system controlled or queried by the module has not changed in a
        relevant way.
  action_group:
    description: Use C(group/hostcpu.libvirt.libvirt) in C(module_defaults) to set defaults for this module.
    support: full
    membership:
      - hostcpu.libvirt.libvirt
  platform:
    description: Target OS and families that can be operated against.
    support: full
    platforms: linux
    details: The managed host runs libvirt with QEMU/KVM on x86_64 and Python 3.9 or newer.
"""

    FACTS = r"""
options: {}
attributes:
  facts:
    description: Action returns an C(ansible_facts) dictionary that will update existing host facts.
    support: full
"""

    # For modules that only read from libvirt.
    INFO_MODULE = r"""
options: {}
attributes:
  check_mode:
    support: full
    details:
      - This action does not modify state.
  diff_mode:
    support: N/A
    details:
      - This action does not modify state.
  idempotent:
    support: full
    details:
      - This action does not modify state.
"""
