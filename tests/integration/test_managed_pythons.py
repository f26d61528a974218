# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The modules on every managed-host Python the collection supports (3.9 to 3.13, from pyenv).

For each Python a small venv with only lxml and libvirt-python (the modules' own requirements) is
built once under $HOSTCPU_CACHE/managed-python/ and reused while the requirements file and the
Python stay the same. Ansible then runs the modules with that venv's python as
ansible_python_interpreter against the real libvirtd: cpu_facts, and domain_cpu in check mode on
a test domain. Pythons older than the floor get the modules' own message, not a traceback.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List

import pytest

from conftest import module_task, run_playbook

PYENV = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"
SUPPORTED = ["3.9", "3.10", "3.11", "3.12", "3.13"]
TOO_OLD = "3.8"
REQUIREMENTS = Path(__file__).with_name("managed-python-requirements.txt")
CACHE = Path(os.environ.get("HOSTCPU_CACHE", "/var/cache/hostcpu-libvirt")) / "managed-python"
BUILT_STAMP = ".built"
BUILD_TIMEOUT = 1200


def pyenv_python(minor: str) -> Path:
    """The newest pyenv Python of *minor* (3.9 -> .../3.9.18/bin/python3); the test fails when none is there."""
    found = sorted((path for path in PYENV.glob(minor + ".*") if (path / "bin" / "python3").exists()),
                   key=lambda path: [int(part) for part in path.name.split(".") if part.isdigit()])
    assert found, "no Python %s under %s: the managed-host Pythons come from pyenv on the test machines" % (minor, PYENV)
    return found[-1] / "bin" / "python3"


def venv_key(python: Path) -> str:
    """Python version + requirements file content: a change of either builds a new venv."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes() + python.resolve().parent.parent.name.encode()).hexdigest()
    return "%s-%s" % (python.resolve().parent.parent.name, digest[:12])


def managed_venv(minor: str, with_requirements: bool = True) -> Path:
    """The python of a cached venv of pyenv's Python *minor* (with the requirements installed), built when missing."""
    base = pyenv_python(minor)
    key = venv_key(base) if with_requirements else "%s-bare" % base.resolve().parent.parent.name
    target = CACHE / key
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / (".%s.lock" % minor), "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / BUILT_STAMP).exists():
            _build(base, target, with_requirements)
            for stale in CACHE.glob("%s-*" % base.resolve().parent.parent.name):
                if stale != target and stale.name.endswith("-bare") == target.name.endswith("-bare"):
                    shutil.rmtree(stale, ignore_errors=True)
    return target / "bin" / "python"


def _build(base: Path, target: Path, with_requirements: bool) -> None:
    shutil.rmtree(target, ignore_errors=True)
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONPATH", None)
    subprocess.run([str(base), "-m", "venv", str(target)], check=True, timeout=BUILD_TIMEOUT, env=env)
    if with_requirements:
        proc = subprocess.run([str(target / "bin" / "python"), "-m", "pip", "install", "--quiet", "--requirement",
                               str(REQUIREMENTS)], capture_output=True, text=True, timeout=BUILD_TIMEOUT, env=env, check=False)
        assert proc.returncode == 0, "installing %s into %s failed:\n%s" % (REQUIREMENTS.name, target, proc.stderr[-3000:])
    (target / BUILT_STAMP).write_text(REQUIREMENTS.read_text(encoding="utf-8"), encoding="utf-8")


def run_with(python: Path, tasks: List[Dict[str, Any]], tmp_path: Path) -> List[Dict[str, Any]]:
    return run_playbook(tasks, tmp_path, ["-e", "ansible_python_interpreter=%s" % python])


@pytest.mark.parametrize("minor", SUPPORTED)
def test_modules_run_on_the_managed_python(minor, domains, tmp_path):
    python = managed_venv(minor)
    dom = domains.define("py" + minor.replace(".", ""), virt_type="qemu")
    before = dom.XMLDesc(0)
    results = run_with(python, [
        {"name": "the managed host's Python", "ansible.builtin.setup": {"gather_subset": ["!all"]}},
        module_task("cpu_facts", {"virt_types": ["qemu"], "expansion": False}),
        module_task("domain_cpu", {"name": dom.name(), "cpu": {"mode": "maximum"}}, check_mode=True, diff=True),
    ], tmp_path)
    python_facts, facts, planned = results[0], results[1], results[2]
    assert python_facts["ansible_facts"]["ansible_python"]["executable"] == str(python)
    assert "%d.%d" % tuple(python_facts["ansible_facts"]["ansible_python"]["version_info"][:2]) == minor
    assert not facts.get("failed"), facts.get("msg")
    assert facts["ansible_facts"]["hostcpu"]["virt_types"]["qemu"]["modes"]["maximum"]["supported"] is True
    assert not planned.get("failed"), planned.get("msg")
    assert planned["changed"] is True and planned["domains"][0]["cpu"]["mode"] == "maximum"
    assert planned["domains"][0]["virt_type"] == "qemu"
    assert "<cpu mode='maximum'" in planned["diff"][0]["after"]
    assert dom.XMLDesc(0) == before, "check mode wrote nothing"


def test_an_older_python_gets_a_message_not_a_traceback(tmp_path):
    python = managed_venv(TOO_OLD, with_requirements=False)
    result = run_with(python, [module_task("cpu_facts", {"expansion": False})], tmp_path)[0]
    assert result.get("failed") is True
    assert result["msg"].startswith("hostcpu.libvirt modules need Python 3.9 or newer on the managed host; ")
    assert "is Python %s." % TOO_OLD in result["msg"] and "Set ansible_python_interpreter" in result["msg"]
    assert "Traceback" not in (result.get("module_stderr") or "")
