"""Write a Sphinx (intersphinx) inventory of the Ansible docsite labels that antsibull-docs'
generated pages reference, so the docs build resolves them without downloading the docsite's
objects.inv. Usage: python scripts/docs_inventory.py OUTPUT."""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

# label -> (page and anchor below the docsite root, title)
LABELS = {
    # antsibull-docs notes on a module with an action plugin (cpu_facts) that it has one
    "action_plugins": ("plugins/action.html#action-plugins", "Action plugins"),
    "common_return_values": ("reference_appendices/common_return_values.html#common-return-values", "Return Values"),
    "ansible_configuration_settings": ("reference_appendices/config.html#ansible-configuration-settings",
                                       "Ansible Configuration Settings"),
}


def inventory() -> bytes:
    header = "# Sphinx inventory version 2\n# Project: Ansible\n# Version: devel\n"
    header += "# The remainder of this file is compressed using zlib.\n"
    entries = "".join(f"{label} std:label -1 {uri} {title}\n" for label, (uri, title) in sorted(LABELS.items()))
    return header.encode("utf-8") + zlib.compress(entries.encode("utf-8"))


def main(output: str) -> None:
    Path(output).write_bytes(inventory())


if __name__ == "__main__":
    main(*sys.argv[1:])
