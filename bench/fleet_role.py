# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Time the hostcpu.libvirt.fleet role over many inventory hosts: the controller's time per host.

    PYTHONPATH=.collections .venv/bin/python bench/fleet_role.py [--hosts 50,100,200] [--forks 20] [--repeat 1]

Every host is an inventory host of its own (connection local, so nothing but the controller works)
whose ``hostcpu`` facts come from Ansible's jsonfile fact cache, as in a fleet whose cpu_facts ran
earlier (``hostcpu_fleet_probe: false``). The facts are variants of the four testbed hosts' recorded
cpu_facts (libvirt 7.0, 9.0, 11.3 and 12.8, kvm and qemu, tests/unit/fixtures/versions), each host
lacking 1-6 random features of its host-model CPU, in 20 kinds, with one guest per host to judge.
The role runs in full except for the migration proof and the apply step (both act on real
libvirt daemons): probe (the facts checked, the host's record), plan (fleet_compatibility over all
hosts, run once), report (the Markdown and HTML report). A callback of the bench (bench/callback)
records when each task started and in which task file; a phase's time is the time from its first
task's start to the next phase's. Also the controller's CPU time (ansible-playbook, its workers).

Each size prints the time per host of each phase; the growth check is the time per host at the
largest size over the smallest (1.0: linear; more: something grows faster than the hosts).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "unit" / "plugins" / "module_utils"))
# pylint: disable=wrong-import-position
from common import BenchError, ansible_env, run_in_own_group  # noqa: E402
from fleet_facts import facts_by_version, variant  # noqa: E402

PHASES = ("probe", "plan", "report")
KINDS = 20


def host_facts(count: int, seed: int = 1) -> Dict[str, Dict[str, Any]]:
    """inventory name -> hostcpu facts: *count* hosts of KINDS kinds, variants of the testbed hosts."""
    rng = random.Random(seed)
    kinds = []
    bases = [(facts, virt_type) for facts in facts_by_version().values() for virt_type in ("kvm", "qemu")]
    for index in range(KINDS):
        facts, virt_type = bases[index % len(bases)]
        kinds.append(dict(facts, virt_types={virt_type: variant(facts["virt_types"][virt_type], rng, rng.randint(1, 6))},
                          unavailable_virt_types={}))
    return {"host%03d" % index: kinds[index % KINDS] for index in range(count)}


def write_inputs(directory: Path, facts: Dict[str, Dict[str, Any]], forks: int) -> Path:
    """The inventory, each host's facts, the play that puts them into the fact cache and the timed playbook;
    returns the timed playbook."""
    saved = directory / "saved"
    saved.mkdir()
    for name, hostcpu in facts.items():
        (saved / ("%s.json" % name)).write_text(json.dumps(hostcpu), encoding="utf-8")
    # Ansible writes its fact cache itself (the file format differs between ansible-core versions).
    seed = {"hosts": "fleet", "gather_facts": False, "tasks": [{"ansible.builtin.set_fact": {
        "hostcpu": "{{ lookup('ansible.builtin.file', '%s/' ~ inventory_hostname ~ '.json') | from_json }}" % saved,
        "cacheable": True}}]}
    (directory / "seed.json").write_text(json.dumps([seed]), encoding="utf-8")
    inventory = {"fleet": {"hosts": {name: {} for name in facts},
                           "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}
    (directory / "inventory.json").write_text(json.dumps(inventory), encoding="utf-8")
    guests = [{"name": "guest-%s" % name, "host": name} for name in facts]
    play = {"hosts": "fleet", "gather_facts": False, "roles": [{
        "role": "hostcpu.libvirt.fleet", "hostcpu_fleet_probe": False, "hostcpu_fleet_guests": guests,
        "hostcpu_fleet_report_dir": str(directory / "report")}]}
    playbook = directory / "play.json"
    playbook.write_text(json.dumps([play]), encoding="utf-8")
    (directory / "ansible.cfg").write_text("[defaults]\nforks = %d\n" % forks, encoding="utf-8")
    return playbook


def phase_seconds(marks: List[List[Any]]) -> Dict[str, float]:
    """Seconds per phase (task file stem) from the callback's [[start, file], ..., [end, 'end']]."""
    seconds = {phase: 0.0 for phase in PHASES}
    for (start, where), (following, _next) in zip(marks, marks[1:]):
        phase = Path(where).stem
        if phase in seconds:
            seconds[phase] += following - start
    return seconds


def run_role(count: int, forks: int) -> Dict[str, Any]:
    """One ansible-playbook of the role over *count* hosts: wall, CPU and per-phase seconds."""
    with tempfile.TemporaryDirectory(prefix="hostcpu-bench-fleet-") as tmp:
        directory = Path(tmp)
        playbook = write_inputs(directory, host_facts(count), forks)
        env = dict(ansible_env(), ANSIBLE_CONFIG=str(directory / "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="default",
                   ANSIBLE_CALLBACK_PLUGINS=str(ROOT / "bench" / "callback"), ANSIBLE_CALLBACKS_ENABLED="phase_times",
                   ANSIBLE_CACHE_PLUGIN="jsonfile", ANSIBLE_CACHE_PLUGIN_CONNECTION=str(directory / "facts"),
                   ANSIBLE_CACHE_PLUGIN_TIMEOUT="0", HOSTCPU_BENCH_PHASES=str(directory / "phases.json"))
        command = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(directory / "inventory.json")]
        checked(run_in_own_group(command + [str(directory / "seed.json")], env, tmp, 1800), "putting the facts into the cache")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        proc = checked(run_in_own_group(command + [str(playbook)], env, tmp, 1800), "the fleet role over %d hosts" % count)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        check_output(proc.stdout, directory / "report" / "fleet-report.md", count)
        marks = json.loads((directory / "phases.json").read_text(encoding="utf-8"))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "phases": phase_seconds(marks)}


def checked(proc, what: str):
    if proc.returncode != 0:
        raise BenchError("%s failed (rc %d):\n%s\n%s" % (what, proc.returncode, proc.stdout[-3000:], proc.stderr[-2000:]))
    return proc


def check_output(stdout: str, report: Path, count: int) -> None:
    """cpu_facts did not run (the facts came from the cache) and the report names every host."""
    probed = re.search(r"TASK \[hostcpu.libvirt.fleet : Read the host's CPU facts\][^\n]*\n(.*?)\n\n", stdout, re.S)
    if probed is None or any(not line.startswith("skipping:") for line in probed.group(1).splitlines()):
        raise BenchError("cpu_facts ran instead of the facts coming from the fact cache:\n%s" % (probed.group(0) if probed else stdout[-2000:]))
    text = report.read_text(encoding="utf-8")
    missing = [name for name in ("host%03d" % index for index in range(count)) if name not in text]
    if missing:
        raise BenchError("the fleet report lacks %d of %d hosts, e.g. %s" % (len(missing), count, missing[0]))


def measure(sizes: List[int], forks: int = 20, repeat: int = 1) -> Dict[str, Any]:
    """Per size: medians of wall, CPU and phase seconds, and each per host; the growth from the smallest size to the largest."""
    results = []
    for count in sizes:
        runs = [run_role(count, forks) for _round in range(repeat)]
        entry = {"hosts": count, "runs": repeat, "wall": statistics.median(run["wall"] for run in runs),
                 "cpu": statistics.median(run["cpu"] for run in runs),
                 "phases": {phase: statistics.median(run["phases"][phase] for run in runs) for phase in PHASES}}
        entry["per_host_ms"] = dict({phase: entry["phases"][phase] / count * 1000 for phase in PHASES},
                                    wall=entry["wall"] / count * 1000, cpu=entry["cpu"] / count * 1000)
        results.append(entry)
    small, large = results[0], results[-1]
    growth = {key: large["per_host_ms"][key] / small["per_host_ms"][key] for key in small["per_host_ms"] if small["per_host_ms"][key]}
    return {"sizes": results, "forks": forks, "kinds": KINDS, "growth": growth}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--hosts", default="50,100,200", help="inventory sizes (default 50,100,200)")
    parser.add_argument("--forks", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    result = measure(sorted(int(size) for size in args.hosts.split(",")), args.forks, args.repeat)
    for entry in result["sizes"]:
        print("%d hosts: wall %.1f s, controller CPU %.1f s; per host: %s" % (
            entry["hosts"], entry["wall"], entry["cpu"],
            ", ".join("%s %.1f ms" % item for item in entry["per_host_ms"].items())))
    print("growth of the time per host, %d to %d hosts: %s" % (
        result["sizes"][0]["hosts"], result["sizes"][-1]["hosts"], ", ".join("%s %.2fx" % item for item in result["growth"].items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
