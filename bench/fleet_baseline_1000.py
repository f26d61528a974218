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
* "distinct": HOSTS hosts, every one different (the worst case: nothing is shared),
* "mixed": LARGE hosts (10,000) of LARGE_KINDS kinds (50), variants of the four testbed hosts' real
  facts (libvirt 7.0, 9.0, 11.3 and 12.8, kvm and qemu): a fleet of mixed versions, where each
  libvirt's CPU map must be decoded once, not once per host (the count is printed).

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
from fleet_facts import real_facts, facts_by_version, variant  # noqa: E402  pylint: disable=wrong-import-position

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


def mixed_fleet(hosts: int, kinds: int, seed: int) -> list:
    """*hosts* records of *kinds* variants of the testbed hosts' facts, every libvirt version and virt type."""
    bases = [facts["virt_types"][virt_type] for facts in facts_by_version().values() for virt_type in ("kvm", "qemu")]
    rng = random.Random(seed)
    variants = [variant(bases[index % len(bases)], rng, rng.randint(1, 6)) for index in range(kinds)]
    return [{"name": "host%05d" % index, "facts": json.loads(json.dumps(variants[index % kinds]))}
            for index in range(hosts)]


def clear_caches() -> None:
    """Every cache of the collection's code, as in the fresh Ansible worker that runs the task (plugins are imported already)."""
    _baseline._VIEWS.clear()  # pylint: disable=protected-access
    _baseline._CONTROLLER_MAP.clear()  # pylint: disable=protected-access
    _expansion._CONTEXTS.clear()  # pylint: disable=protected-access
    _cpu_map._CPU_MAPS.clear()  # pylint: disable=protected-access
    _cpu_map._MAPS_OF_DATA.clear()  # pylint: disable=protected-access
    _shape._CHECKED.clear()  # pylint: disable=protected-access
    _expansion._SHARED.clear()  # pylint: disable=protected-access
    _baseline._HOST_MODEL_CPUS.clear()  # pylint: disable=protected-access


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


class MapDecodes:
    """Counts CPUMap.from_facts calls (the decoding of a host's CPU map) while it is entered."""

    def __init__(self) -> None:
        self.count = 0
        self._original = _cpu_map.CPUMap.from_facts

    def __enter__(self) -> "MapDecodes":
        original = self._original

        def counted(data):
            self.count += 1
            return original.__func__(_cpu_map.CPUMap, data)
        _cpu_map.CPUMap.from_facts = counted
        return self

    def __exit__(self, *exc) -> None:
        _cpu_map.CPUMap.from_facts = self._original


def measure(hosts_count: int, kinds: int, repeat: int, seed: int = 1, large: int = 10000, large_kinds: int = 50) -> dict:
    """Cold and warm seconds (medians of *repeat*) for a fleet of *kinds* kinds, one of all-distinct
    hosts and a mixed-version fleet of *large* hosts of *large_kinds* kinds."""
    result = {"hosts": hosts_count, "rounds": repeat, "large": large, "large_kinds": large_kinds}
    fleets = (("kinds", lambda: fleet(hosts_count, kinds, seed)), ("distinct", lambda: fleet(hosts_count, hosts_count, seed)),
              ("mixed", lambda: mixed_fleet(large, large_kinds, seed)))
    for label, make in fleets:
        hosts = make()
        colds, warms = [], []
        cpu = None
        for _round in range(repeat):
            seconds, cpu = timed(hosts, cold=True)
            colds.append(seconds)
            seconds, _cpu = timed(hosts, cold=False)
            warms.append(seconds)
        clear_caches()
        with MapDecodes() as decodes:
            fleet_baseline(hosts)
        features = cpu.get("features") or []
        result[label] = {
            "hosts": len(hosts),
            "map_decodes": decodes.count,
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
    parser.add_argument("--large", type=int, default=10000, help="hosts of the mixed-version fleet")
    parser.add_argument("--large-kinds", type=int, default=50)
    args = parser.parse_args()
    result = measure(args.hosts, args.kinds, args.repeat, args.seed, args.large, args.large_kinds)
    for label in ("kinds", "distinct", "mixed"):
        entry = result[label]
        print("%-8s %5d hosts, %4d distinct: cold %.3f s (median of %d), warm %.3f s; %d CPU maps decoded; model %s, %d required, %d disabled"
              % (label, entry["hosts"], entry["distinct"], entry["cold"], args.repeat, entry["warm"], entry["map_decodes"],
                 entry["model"], entry["required"], entry["disabled"]))
        print("         profile of one cold call (cumulative): %s"
              % ", ".join("%s %.0f ms" % (item["function"], 1000 * item["seconds"]) for item in entry["profile"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
