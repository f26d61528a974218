# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Time per live_cpu prediction on this machine's real facts (no libvirt needed).

    PYTHONPATH=.collections .venv/bin/python bench/live_cpu_prediction.py [--repeat 20]

Every CPU of the accuracy matrix (tests/accuracy/matrix.py) on both virt types, through the filter
as a playbook calls it. "warm": the facts' prediction context is cached (a loop over guests with
one host's facts); "cold": the cache is emptied before every call (each call with new facts).
Refusals count like predictions (raising is part of the answer).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from ansible.errors import AnsibleFilterError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.accuracy.matrix import matrix  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.hostcpu.libvirt.plugins.filter.cpu import live_cpu  # noqa: E402
from ansible_collections.hostcpu.libvirt.plugins.module_utils import _expansion, _cpu_map, _expansion_data, _shape  # noqa: E402
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts import build_facts  # noqa: E402

UNIT = ROOT / "tests" / "unit" / "fixtures"


def real_facts() -> dict:
    real, data_dir = UNIT / "real", UNIT / "expansion"
    cpu_map = {path.name: path.read_text(encoding="utf-8") for path in (data_dir / "cpu_map").glob("*.xml")}
    capabilities = (real / "capabilities.xml").read_text(encoding="utf-8")
    domcaps = {vt: (real / ("domcapabilities-%s.xml" % vt)).read_text(encoding="utf-8") for vt in ("kvm", "qemu")}
    data = {vt: _expansion_data.expansion_data_from_xml(cpu_map, capabilities, domcaps[vt],
                                                        json.loads((data_dir / ("qemu-%s.json" % vt)).read_text(encoding="utf-8")))
            for vt in domcaps}
    facts = build_facts(capabilities, domcaps, {"libvirt_version": 9000000, "hypervisor_version": 7002022}, expansion_data=data)
    return json.loads(json.dumps(facts))


def one_round(facts: dict, cases: list, cold: bool) -> float:
    start = time.perf_counter()
    for virt_type, cpu in cases:
        if cold:
            _expansion._CONTEXTS.clear()  # pylint: disable=protected-access
            _cpu_map._CPU_MAPS.clear()  # pylint: disable=protected-access
            _cpu_map._MAPS_OF_DATA.clear()  # pylint: disable=protected-access
            _shape._CHECKED.clear()  # pylint: disable=protected-access
        try:
            live_cpu(cpu, facts, virt_type)
        except AnsibleFilterError:
            pass
    return (time.perf_counter() - start) / len(cases)


def measure(repeat: int) -> dict:
    """Milliseconds per prediction, warm and cold (median of *repeat* rounds over every CPU of the matrix)."""
    facts = real_facts()
    cases = [(vt, cpu) for vt in ("kvm", "qemu") for _label, cpu in matrix(vt)]
    result = {"cpus": len(cases), "rounds": repeat}
    for label, cold in (("warm", False), ("cold", True)):
        times = [one_round(facts, cases, cold) for _round in range(repeat)]
        result[label] = {"median_ms": statistics.median(times) * 1000, "best_ms": min(times) * 1000,
                         "per_second": 1 / statistics.median(times)}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    result = measure(args.repeat)
    for label in ("warm", "cold"):
        print("%s: %.3f ms per prediction (median of %d rounds over %d CPUs; best %.3f ms)"
              % (label, result[label]["median_ms"], args.repeat, result["cpus"], result[label]["best_ms"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
