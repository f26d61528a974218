# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Time one domain_cpu task converging 50 shut-off domains: first run, no-op rerun, check mode.

    PYTHONPATH=.collections .venv/bin/python bench/domain_cpu_50.py [--count 50] [--virt-xml]

Defines COUNT small shut-off domains ``hostcpu-test-bench-<random>-NN`` (half kvm when /dev/kvm is
usable, half qemu), runs ``hostcpu.libvirt.domain_cpu`` over all of them in one task through
ansible-playbook (wall clock of the whole ansible-playbook, and the module's own time measured
inside the task), then the same task again (no-op) and in check mode. With ``--virt-xml`` it also
times what people do today, a loop of ``virt-xml NAME --edit --cpu ...`` over the same domains.
Removes the domains at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import libvirt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from conftest import ansible_env, domain_xml, remove_domain  # noqa: E402  pylint: disable=wrong-import-position

WISH = {"mode": "host-model", "features": {"arch-capabilities": "disable"}}


def playbook_seconds(names, check: bool) -> tuple:
    """(wall seconds of ansible-playbook, the task's result)."""
    with tempfile.TemporaryDirectory() as tmp:
        play = Path(tmp) / "play.json"
        play.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "connection": "local",
                                     "tasks": [{"hostcpu.libvirt.domain_cpu": dict(WISH, name=names), "check_mode": check}]}]))
        start = time.monotonic()
        proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", str(play)],
                              capture_output=True, text=True, env=ansible_env(), check=False)
        seconds = time.monotonic() - start
    result = json.loads(proc.stdout)["plays"][0]["tasks"][0]
    return seconds, result["hosts"]["localhost"], result["task"]["duration"]


def task_seconds(duration: dict) -> float:
    from datetime import datetime
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
    return (datetime.strptime(duration["end"], fmt) - datetime.strptime(duration["start"], fmt)).total_seconds()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--virt-xml", action="store_true")
    args = parser.parse_args()
    libvirt.registerErrorHandler(lambda *_: None, None)
    conn = libvirt.open("qemu:///system")
    kvm = os.access("/dev/kvm", os.R_OK | os.W_OK)
    token = secrets.token_hex(3)
    names = ["hostcpu-test-bench-%s-%02d" % (token, index) for index in range(args.count)]
    try:
        for index, name in enumerate(names):
            conn.defineXML(domain_xml(name, "kvm" if kvm and index % 2 == 0 else "qemu"))
        rows = []
        for label, check in (("first run", False), ("no-op rerun", False), ("no-op rerun, check mode", True)):
            wall, result, duration = playbook_seconds(names, check)
            assert not result.get("failed"), result.get("msg")
            changed = sum(1 for item in result["domains"] if item["changed"])
            rows.append((label, wall, task_seconds(duration), changed))
        print("domain_cpu over %d shut-off domains (%s), one task:" % (args.count, "kvm+qemu" if kvm else "qemu"))
        for label, wall, task, changed in rows:
            print("  %-26s ansible-playbook %6.2f s   task %6.2f s   changed %d" % (label, wall, task, changed))
        if args.virt_xml:
            for label in ("virt-xml loop", "virt-xml loop again"):
                start = time.monotonic()
                for name in names:
                    subprocess.run(["virt-xml", name, "--edit", "--cpu", "host-model,disable=arch-capabilities"],
                                   capture_output=True, check=True)
                wall = time.monotonic() - start
                print("  %-26s %6.2f s (%.1fx the first domain_cpu run)" % (label, wall, wall / rows[0][1]))
    finally:
        for name in names:
            remove_domain(conn, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
