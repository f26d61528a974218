# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  uri:
    description:
      - The libvirt connection URI on the managed host.
      - When not set, the environment variable E(LIBVIRT_DEFAULT_URI) is used, then V(qemu:///system).
    type: str
requirements:
  - libvirt-python (python3-libvirt) on the managed host
  - lxml (python3-lxml) on the managed host
"""
