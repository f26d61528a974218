# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Record what each testbed host's libvirt and QEMU print, one directory per libvirt version.

    make testbed-fixtures        (= .venv/bin/python scripts/testbed/capture_fixtures.py)

For every host of the testbed inventory it (re)writes tests/unit/fixtures/versions/<libvirt>/:

* ``capabilities.xml``             virConnectGetCapabilities
* ``domcapabilities-<vt>.xml``     virConnectGetDomainCapabilities(x86_64, vt) per offered virt type
* ``cpu-models.json``              virConnectGetCPUModelNames(x86_64)
* ``cpu_map/``                     the host's /usr/share/libvirt/cpu_map/index.xml and x86_*.xml
* ``cpu_facts.json``               ansible_facts.hostcpu of hostcpu.libvirt.cpu_facts run on the
                                   host (over SSH, with the host's python3), expansions included
                                   where the module stores them
* ``versions.json``                suite, libvirt, QEMU, python3 and package versions, and the
                                   warnings cpu_facts gave on that host

It reads only; the one guest cpu_facts starts is its own transient probe.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import libvirt

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "tests/unit/fixtures/versions"
DEFAULT_INVENTORY = Path(os.environ.get("HOSTCPU_CACHE", "/var/cache/hostcpu-libvirt"), "testbed", "inventory.ini")
PACKAGES = ("libvirt-daemon", "qemu-system-x86", "python3-libvirt", "python3-lxml", "python3")
_VAR = re.compile(r'(\w+)=("[^"]*"|\'[^\']*\'|\S+)')


def read_hosts(inventory: Path) -> List[Dict[str, str]]:
    """name, testbed_suite, testbed_tree, testbed_libvirt_uri of every testbed host."""
    hosts, section = [], ""
    for line in inventory.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif line and not line.startswith("#") and section in ("testbed_chroots", "testbed_local"):
            name, _separator, rest = line.partition(" ")
            host = {key: value.strip("\"'") for key, value in _VAR.findall(rest)}
            host["name"] = name
            hosts.append(host)
    return hosts


def version_text(number: int) -> str:
    return "%d.%d.%d" % (number // 1000000, number // 1000 % 1000, number % 1000)


def in_tree(tree: str, argv: List[str]) -> str:
    """Output of a read-only command run with the host's own files (chroot; / for this machine)."""
    command = argv if tree == "/" else ["chroot", tree] + argv
    return subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip()


def cpu_facts(inventory: Path) -> Dict[str, Dict[str, Any]]:
    """Per testbed host, cpu_facts' result: ansible_facts.hostcpu (or the failure) and its warnings."""
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible"), "testbed", "-i", str(inventory),
                           "-m", "hostcpu.libvirt.cpu_facts"], capture_output=True, text=True, env=env,
                          cwd=str(ROOT), check=False, timeout=900)
    results = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]
    return {name: {"facts": result.get("ansible_facts", {}).get("hostcpu", {"failed": True, "msg": result.get("msg")}),
                   "warnings": result.get("warnings", [])}
            for name, result in results.items()}


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")


def capture(host: Dict[str, str], result: Dict[str, Any], out_root: Path) -> Path:
    conn = libvirt.open(host["testbed_libvirt_uri"])
    try:
        out = out_root / version_text(conn.getLibVersion())
        caps = conn.getCapabilities()
        write(out / "capabilities.xml", caps)
        virt_types = [vt for vt in ("kvm", "qemu") if "<domain type='%s'" % vt in caps]
        for virt_type in virt_types:
            write(out / ("domcapabilities-%s.xml" % virt_type),
                  conn.getDomainCapabilities(None, "x86_64", None, virt_type, 0))
        write(out / "cpu-models.json", json.dumps(sorted(conn.getCPUModelNames("x86_64", 0)), indent=1))
        qemu_version = version_text(conn.getVersion())
    finally:
        conn.close()
    cpu_map = Path(host["testbed_tree"], "usr/share/libvirt/cpu_map")
    shutil.rmtree(out / "cpu_map", ignore_errors=True)
    (out / "cpu_map").mkdir()
    for source in sorted(cpu_map.glob("index.xml")) + sorted(cpu_map.glob("x86_*.xml")):
        shutil.copy(source, out / "cpu_map" / source.name)
    write(out / "cpu_facts.json", json.dumps(result["facts"], indent=1, sort_keys=True))
    tree = host["testbed_tree"]
    versions = {
        "suite": host["testbed_suite"],
        "libvirt": out.name,
        "qemu": qemu_version,
        "virt_types": virt_types,
        "cpu_facts_warnings": result["warnings"],
        "python3": in_tree(tree, ["/usr/bin/python3", "-c", "import platform; print(platform.python_version())"]),
        "packages": {name: in_tree(tree, ["dpkg-query", "-W", "-f", "${Version}", name]) or None for name in PACKAGES},
    }
    write(out / "versions.json", json.dumps(versions, indent=1, sort_keys=True))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inventory", type=Path, default=DEFAULT_INVENTORY)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if not args.inventory.is_file():
        parser.error("no testbed inventory at %s: run 'make testbed' first" % args.inventory)
    libvirt.registerErrorHandler(lambda *_: None, None)
    facts = cpu_facts(args.inventory)
    for host in read_hosts(args.inventory):
        out = capture(host, facts[host["name"]], args.out)
        print("%s: %s" % (host["name"], out.relative_to(ROOT) if out.is_relative_to(ROOT) else out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
