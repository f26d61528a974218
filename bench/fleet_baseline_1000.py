# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Time fleet_baseline over 1000 synthetic hosts derived from this machine's real facts.

    PYTHONPATH=.collections .venv/bin/python bench/fleet_baseline_1000.py [--hosts 1000] [--kinds 20] [--repeat 3]

The hosts are variants of the real kvm and qemu facts (tests/unit/fixtures): each lacks 1-6 random
features of its host-model CPU (QEMU cannot give them, libvirt's host-model CPU and expansions do
not list them, models that need them are unusable), so their baseline has to be worked out again.
Two fleets are timed, through the filter itself (as a playbook calls it, with the Python of the
controller):

* "kinds": HOSTS hosts of KINDS distinct kinds (a real fleet has a few CPU generations),
* "distinct": HOSTS hosts, every one different (the worst case: nothing is shared).

Each is timed cold (every cache emptied: host views, CPU maps, prediction contexts, facts already
checked; as in the fresh Ansible worker process that runs a task) and warm
(the same facts again, as a second filter call in the same play would see them). Prints one line
per measurement and checks that the CPU starts identically on every host (by prediction).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "unit" / "plugins" / "module_utils"))
from fleet_facts import real_facts, variant  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.hostcpu.libvirt.plugins.filter.fleet import fleet_baseline  # noqa: E402
from ansible_collections.hostcpu.libvirt.plugins.module_utils import _baseline, _cpu_map, _expansion, _shape  # noqa: E402


def fleet(hosts: int, kinds: int, seed: int) -> list:
    """*hosts* records ``{name, facts}`` drawn from *kinds* variants (kinds=hosts: all distinct)."""
    facts = real_facts()
    rng = random.Random(seed)
    variants = []
    for index in range(kinds):
        virt_type = ("kvm", "qemu")[index % 2]
        variants.append(variant(facts["virt_types"][virt_type], rng, rng.randint(1, 6)))
    # Every host gets its own copy, as hostvars would hold it.
    return [{"name": "host%04d" % index, "facts": json.loads(json.dumps(variants[index % kinds]))}
            for index in range(hosts)]


def clear_caches() -> None:
    """Every cache of the collection's code, as in the fresh Ansible worker that runs the task (plugins are imported already)."""
    _baseline._VIEWS.clear()  # pylint: disable=protected-access
    _baseline._CONTROLLER_MAP.clear()  # pylint: disable=protected-access
    _expansion._CONTEXTS.clear()  # pylint: disable=protected-access
    _cpu_map._CPU_MAPS.clear()  # pylint: disable=protected-access
    _shape._CHECKED.clear()  # pylint: disable=protected-access


def timed(hosts: list, cold: bool) -> tuple:
    if cold:
        clear_caches()
    start = time.perf_counter()
    cpu = fleet_baseline(hosts)
    return time.perf_counter() - start, cpu


def check(hosts: list, cpu: dict) -> int:
    """Predict the CPU on every distinct host: all live CPUs must be the same. Returns the number of kinds."""
    lives = set()
    for record in _baseline.distinct_hosts(_baseline.host_records(hosts)):
        lives.add(json.dumps(_expansion.predict_live_cpu(cpu, record.entry), sort_keys=True))
    if len(lives) != 1:
        raise SystemExit("the baseline runs as %d different CPUs" % len(lives))
    return len(_baseline.distinct_hosts(_baseline.host_records(hosts)))


def profile_cold(hosts: list, top: int = 8) -> list:
    """Where one cold fleet_baseline call spends its time: the collection's functions with the most cumulative time."""
    clear_caches()
    profile = cProfile.Profile()
    profile.enable()
    fleet_baseline(hosts)
    profile.disable()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    ours = [("%s.%s" % (Path(key[0]).stem, key[2]), entry[3]) for key, entry in stats.items()
            if "hostcpu/libvirt/plugins/module_utils" in key[0] and not key[2].startswith("<")]
    return [{"function": name, "seconds": seconds} for name, seconds in sorted(ours, key=lambda item: -item[1])[:top]]


def measure(hosts_count: int, kinds: int, repeat: int, seed: int = 1) -> dict:
    """Cold and warm seconds (medians of *repeat*) for a fleet of *kinds* kinds and one of all-distinct hosts."""
    result = {"hosts": hosts_count, "rounds": repeat}
    for label, kind_count in (("kinds", kinds), ("distinct", hosts_count)):
        hosts = fleet(hosts_count, kind_count, seed)
        colds, warms = [], []
        cpu = None
        for _round in range(repeat):
            seconds, cpu = timed(hosts, cold=True)
            colds.append(seconds)
            seconds, _cpu = timed(hosts, cold=False)
            warms.append(seconds)
        features = cpu.get("features") or []
        result[label] = {
            "profile": profile_cold(hosts),
            "distinct": check(hosts, cpu),
            "cold": statistics.median(colds),
            "warm": statistics.median(warms),
            "cold_samples": colds,
            "warm_samples": warms,
            "model": cpu["model"]["name"],
            "required": sum(f["policy"] == "require" for f in features),
            "disabled": sum(f["policy"] == "disable" for f in features),
        }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--kinds", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    result = measure(args.hosts, args.kinds, args.repeat, args.seed)
    for label in ("kinds", "distinct"):
        entry = result[label]
        print("%-8s %5d hosts, %4d distinct: cold %.3f s (median of %d), warm %.3f s; model %s, %d required, %d disabled"
              % (label, args.hosts, entry["distinct"], entry["cold"], args.repeat, entry["warm"],
                 entry["model"], entry["required"], entry["disabled"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
