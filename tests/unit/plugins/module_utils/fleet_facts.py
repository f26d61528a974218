# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Facts for the fleet tests and the fleet benchmark, all from XML libvirt printed on the test machine.

* ``real_facts()``: this machine's ``hostcpu`` facts (kvm and qemu) with the expansion data
  ``_expansion_data.expansion_data_from_xml`` builds from ``fixtures/expansion`` (what cpu_facts stores).
* ``facts_by_version()``: the facts of the four testbed hosts (libvirt 7.0, 9.0, 11.3, 12.8), as
  recorded by ``make testbed-fixtures``.
* ``variant(entry, rng, drop)``: a host "like this one" that lacks *drop* random features of its
  host-model CPU (not of the models usable there): QEMU cannot give them there (gone from what the accelerator supports), libvirt's
  host-model CPU and its expansions no longer list them, models that need them are not usable.
* ``cputest_entry(cpu, cpu_map)``: a host whose host-model CPU is one CPU of libvirt's
  tests/cputestdata, for comparing with libvirt's baseline test results.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import random
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

from ansible_collections.hostcpu.libvirt.plugins.module_utils import _cpu_map, _expansion_data
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts import build_facts, fingerprint

UNIT = Path(__file__).resolve().parents[2]
REAL = UNIT / "fixtures" / "real"
EXPANSION = UNIT / "fixtures" / "expansion"
FLEET = UNIT / "fixtures" / "fleet"
REPO = UNIT.parents[1]
LIBVIRT_SRC = Path(os.environ.get("HOSTCPU_LIBVIRT_SRC", REPO / ".cache" / "libvirt-src" / "current"))
CPUTESTDATA = LIBVIRT_SRC / "tests" / "cputestdata"
VIRT_TYPES = ("kvm", "qemu")
VERSIONS = {"libvirt_version": 9000000, "hypervisor_version": 7002022}


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def cpu_map_files(directory: str = str(EXPANSION / "cpu_map")) -> Dict[str, str]:
    return _cpu_map.read_cpu_map_files(directory)


@functools.lru_cache(maxsize=None)
def _real_facts_json() -> str:
    caps = read(REAL / "capabilities.xml")
    domcaps = {vt: read(REAL / ("domcapabilities-%s.xml" % vt)) for vt in VIRT_TYPES}
    expansions = {vt: {"host_model_expanded": read(REAL / ("baseline-expand-%s.xml" % vt)),
                       "host_model_migratable": read(REAL / ("baseline-expand-migratable-%s.xml" % vt))}
                  for vt in VIRT_TYPES}
    facts = build_facts(caps, domcaps, VERSIONS, expansions)
    for vt in VIRT_TYPES:
        qemu = json.loads(read(EXPANSION / ("qemu-%s.json" % vt)))
        facts["virt_types"][vt]["expansion"] = _expansion_data.expansion_data_from_xml(cpu_map_files(), caps, domcaps[vt], qemu)
    return json.dumps(facts)


def real_facts() -> Dict[str, Any]:
    """A fresh copy of this machine's facts, with expansion data for both virt types."""
    return json.loads(_real_facts_json())


TESTBED = UNIT / "fixtures" / "versions"


def facts_by_version() -> Dict[str, Dict[str, Any]]:
    """The facts cpu_facts gathered on the testbed hosts, by libvirt version (7.0.0, 9.0.0, 11.3.0, 12.8.0)."""
    return {path.parent.name: json.loads(read(path)) for path in sorted(TESTBED.glob("*/cpu_facts.json"))}


def without_expansion(entry: Mapping[str, Any]) -> Dict[str, Any]:
    """The entry as facts read without the expansion probe carry it."""
    result = copy.deepcopy(dict(entry))
    result.pop("expansion", None)
    return result


def _drop_from_cpu(cpu: Optional[Dict[str, Any]], names: Iterable[str]) -> None:
    if cpu:
        names = set(names)
        cpu["features"] = [f for f in cpu.get("features") or () if f["name"] not in names]


def variant(entry: Mapping[str, Any], rng: random.Random, drop: int) -> Dict[str, Any]:
    """A copy of *entry* whose host cannot give *drop* random features of its host-model CPU."""
    result = copy.deepcopy(dict(entry))
    data = result["expansion"]
    cpu_map = _cpu_map.CPUMap.from_facts(data)
    host_model = result["modes"]["host-model"]["cpu"]
    model_features = set(cpu_map.names_of(cpu_map.models[host_model["model"]["name"]].mask))
    # Hosts of one fleet differ in the features newer CPUs add, not in those of the models usable here.
    protected = set()
    for model in result["modes"]["custom"]["models"]:
        if model["usable"] is True and model["name"] in cpu_map.models:
            protected.update(cpu_map.names_of(cpu_map.models[model["name"]].mask))
    offered = sorted(({f["name"] for f in host_model.get("features") or () if f.get("policy", "require") == "require"}
                      | model_features) - protected)
    names = rng.sample(offered, min(drop, len(offered)))
    mask = cpu_map.mask(names)
    for cpu in (host_model, result.get("host_model_expanded"), result.get("host_model_migratable")):
        _drop_from_cpu(cpu, names)
    for cpu in (host_model,):
        cpu["features"] = list(cpu.get("features") or ()) + [{"name": n, "policy": "disable"} for n in names if n in model_features]
    data["host_model"]["features"] = [f for f in data["host_model"]["features"] if f[0] not in names]
    data["host_model"]["features"] += [[n, "disable"] for n in names if n in model_features]
    qemu = data["qemu"]
    for key in ("supported", "migratable"):
        qemu[key] = _cpu_map.to_hex(_cpu_map.from_hex(qemu[key], key) & ~mask)
    if data.get("host"):
        for key in ("features", "listed"):
            data["host"][key] = _cpu_map.to_hex(_cpu_map.from_hex(data["host"][key], key) & ~mask)
    for model in result["modes"]["custom"]["models"]:
        info = cpu_map.models.get(model["name"])
        if info is not None and info.mask & mask:
            model["usable"] = False
    result["fingerprint"] = fingerprint(result)
    data["fingerprint"] = _expansion_data._data_fingerprint(data)  # pylint: disable=protected-access
    return result


def cputest_entry(cpu: Mapping[str, Any], cpu_map: _cpu_map.CPUMap, non_migratable: Iterable[str],
                  label: str) -> Dict[str, Any]:
    """A kvm host whose host-model CPU is *cpu* (a CPU of libvirt's cputestdata), without expansion data.

    Usable models are those whose features the CPU has (what QEMU's usable means); the migratable
    expansion is every enabled feature but the non-migratable ones (what libvirt's MIGRATABLE gives).
    """
    names = set()
    model = (cpu.get("model") or {}).get("name")
    if model:
        names.update(cpu_map.names_of(cpu_map.models[model].mask))
    for feature in cpu.get("features") or ():
        if feature.get("policy", "require") in ("require", "force"):
            names.add(feature["name"])
        elif feature.get("policy") in ("disable", "forbid"):
            names.discard(feature["name"])
    have = cpu_map.mask(names)
    vendor = cpu.get("vendor")
    host_model = {"model": {"name": model, "fallback": "forbid"}, "features": list(cpu.get("features") or ())}
    if vendor:
        host_model["vendor"] = vendor
    migratable = sorted(names - set(non_migratable), key=cpu_map.index.__getitem__)
    entry = {
        "domain_type": "kvm",
        "arch": "x86_64",
        "modes": {
            "host-model": {"supported": True, "cpu": host_model},
            "custom": {"supported": True, "models": [
                {"name": name, "usable": info.mask & ~have == 0, "vendor": info.vendor or "unknown"}
                for name, info in cpu_map.models.items()]},
        },
        "host_model_migratable": {"mode": "custom", "match": "exact", "model": {"name": model},
                                  **({"vendor": vendor} if vendor else {}),
                                  "features": [{"name": name, "policy": "require"} for name in migratable]},
        "label": label,
    }
    entry["fingerprint"] = fingerprint(entry)
    return entry
