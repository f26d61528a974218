# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt 9.0's own test data (Debian's source package, unpacked by `make testdata`), read the way
libvirt's tests read it, and the conformance cases built from it.

Three families, each replaying a libvirt test on _expansion's code:

* ``xml2argv``: tests/qemuxml2argvdata/cpu-host-model*.xml started with the host-model of
  tests/domaincapsdata (real QEMU capabilities of each version) or with the fake host CPUs of
  tests/testutilshostcpus.h, against the ``-cpu`` option of the matching .args file (or the .err).
* ``update`` / ``guest``: tests/cputestdata host + guest pairs (cputest.c cpuTestUpdate and
  cpuTestGuestCPU: compare with the host, update, translate) against the -result files.
* ``updatelive``: tests/cputestdata x86_64-cpuid-<cpu>: the guest CPU, the features QEMU enabled
  and disabled, against the CPU libvirt computed (cputest.c cpuTestUpdateLive).
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import cpu_from_xml
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError
from ansible_collections.hostcpu.libvirt.plugins.module_utils._expansion import (
    Context,
    GuestCPU,
    GuestWouldNotStart,
    compare_with_host,
    cpu_map_from_xml,
    expansion_data_from_parts,
    guest_cpu,
    prepare_for_qemu,
    qemu_cpu_option,
    to_hex,
    translate_model,
    update_guest,
    update_live,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts import parse_domain_capabilities
from ansible_collections.hostcpu.libvirt.plugins.module_utils._xml import parse_xml

REPO = Path(__file__).resolve().parents[2]
SOURCE = Path(os.environ.get("HOSTCPU_LIBVIRT_SRC", REPO / ".cache" / "libvirt-src" / "current"))
TESTS = SOURCE / "tests"
ARGV = TESTS / "qemuxml2argvdata"
CPUTEST = TESTS / "cputestdata"
XML2ARGV_VERSIONS = ("4.2.0", "5.0.0", "5.1.0", "5.2.0", "6.0.0", "6.1.0", "latest")
# tests/qemuxml2argvtest.c testAddCPUModels
X86_MODELS = ("Opteron_G3", "Opteron_G2", "Opteron_G1", "Nehalem", "Penryn", "Conroe", "Haswell-noTSX", "Haswell")
X86_LEGACY_MODELS = ("n270", "athlon", "pentium3", "pentium2", "pentium", "486", "coreduo", "kvm32", "qemu32", "kvm64",
                     "core2duo", "phenom", "qemu64")
# tests/cputest.c model lists
CPUTEST_MODELS = {"model486": ("486",), "nomodel": ("nomodel",), "models": ("qemu64", "core2duo", "Nehalem"),
                  "haswell": ("SandyBridge", "Haswell")}
QEMU_NAMES = {"cmp-legacy": "cmp_legacy", "ds-cpl": "ds_cpl", "fxsr-opt": "fxsr_opt", "lahf-lm": "lahf_lm",
              "nodeid-msr": "nodeid_msr", "pclmulqdq": "pclmuldq", "perfctr-core": "perfctr_core",
              "perfctr-nb": "perfctr_nb", "tsc-adjust": "tsc_adjust", "kvm-pv-eoi": "kvm_pv_eoi",
              "kvm-pv-unhalt": "kvm_pv_unhalt"}


class Case(NamedTuple):
    family: str
    name: str
    expected: Any          # -cpu text, a CPU dict, or ("error", message)
    run: Any               # callable -> the same kind of value


def missing_reason() -> Optional[str]:
    if not (SOURCE / "src" / "cpu_map" / "index.xml").is_file() or not CPUTEST.is_dir() or not ARGV.is_dir():
        return ("libvirt's source and test data are not in %s; run `make testdata` (it downloads Debian's libvirt "
                "source package into .cache/libvirt-src)" % SOURCE)
    return None


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


_MAP: Dict[str, Any] = {}


def cpu_map() -> Dict[str, Any]:
    if not _MAP:
        directory = SOURCE / "src" / "cpu_map"
        files = {path.name: _text(path) for path in directory.glob("*.xml")}
        _MAP.update(cpu_map_from_xml(files))
    return _MAP


def mask(names: Iterable[str]) -> int:
    index = {name: position for position, name in enumerate(cpu_map()["features"])}
    value = 0
    for name in names:
        if name in index:
            value |= 1 << index[name]
    return value


def cpu_data(model: Optional[str], features: Sequence[Tuple[str, str]]) -> int:
    value = cpu_map()["models"][model]["mask"] if model else 0
    for name, policy in features:
        if policy in ("require", "force"):
            value |= mask([name])
        elif policy in ("disable", "forbid"):
            value &= ~mask([name])
    return value


def make_context(host_model: Optional[Dict[str, Any]], host: Optional[Dict[str, Any]], models: Optional[Iterable[str]],
                 unknown: Iterable[str] = (), virt_type: str = "kvm") -> Context:
    """A Context like one built from facts; *models* None means every model of the CPU map is allowed."""
    names = list(cpu_map()["models"]) if models is None else list(models)
    data = expansion_data_from_parts(cpu_map(), virt_type, host_model, host, {"unknown": list(unknown)})
    entry = {"domain_type": virt_type, "arch": "x86_64", "libvirt_version": "9.0.0", "expansion": data,
             "modes": {"host-passthrough": {"supported": True}, "maximum": {"supported": True},
                       "host-model": {"supported": host_model is not None},
                       "custom": {"supported": True, "models": [{"name": name} for name in names]}}}
    return Context(entry)


def host_cpu_from_xml(text: str) -> Dict[str, Any]:
    """A host CPU of the test data as the migratable-host-model shape (every listed feature required)."""
    cpu = cpu_from_xml(text)
    return {"model": (cpu.get("model") or {}).get("name"), "vendor": cpu.get("vendor"),
            "features": [[f["name"], f.get("policy") or "require"] for f in cpu.get("features") or ()]}


def full_host(host_model: Dict[str, Any]) -> Dict[str, Any]:
    listed = [name for name, policy in host_model["features"] if policy not in ("disable", "forbid")]
    return {"vendor": host_model["vendor"], "features": to_hex(cpu_data(host_model["model"], host_model["features"])),
            "listed": to_hex(mask(listed))}


def migratable(host_model: Dict[str, Any], non_migratable: Iterable[str]) -> Dict[str, Any]:
    dropped = set(non_migratable)
    return dict(host_model, features=[f for f in host_model["features"] if f[0] not in dropped])


def parsed_guest(text: str) -> GuestCPU:
    """A CPU of the test data as libvirt's parser leaves it (defaults, no define-time normalisation)."""
    cpu = cpu_from_xml(text)
    cpu.setdefault("mode", "custom")
    if cpu["mode"] == "custom":
        cpu.setdefault("match", "exact")
    if cpu.get("model") is not None and cpu["mode"] in ("custom", "host-model"):
        cpu["model"] = dict(cpu["model"])
        cpu["model"].setdefault("fallback", "allow")
    return GuestCPU(cpu)


def comparable(cpu: Dict[str, Any]) -> Dict[str, Any]:
    """The parts libvirt's tests print (no check), features in order with policies."""
    model = cpu.get("model") or {}
    return {"mode": cpu.get("mode"), "match": cpu.get("match"), "model": model.get("name"), "fallback": model.get("fallback"),
            "vendor_id": model.get("vendor_id"), "vendor": cpu.get("vendor"),
            "features": [(f["name"], f.get("policy") or "require") for f in cpu.get("features") or ()]}


def expected_cpu(path: Path) -> Dict[str, Any]:
    cpu = cpu_from_xml(_text(path))
    cpu.setdefault("mode", "custom")
    return comparable(cpu)


def outcome(function) -> Any:
    try:
        return function()
    except CPUError as exc:
        return ("error", exc.reason if isinstance(exc, GuestWouldNotStart) else str(exc))


# ---------------------------------------------------------------------------------------------
# qemuxml2argv: cpu-host-model*


def _cpu_option(args_path: Path) -> str:
    found = re.search(r"-cpu ('[^']*'|\S+)", _text(args_path))
    return found.group(1).strip("'")


def _caps_file(version: str) -> Path:
    if version != "latest":
        return TESTS / "qemucapabilitiesdata" / ("caps_%s.x86_64.xml" % version)
    files = sorted(TESTS.glob("qemucapabilitiesdata/caps_*.x86_64.xml"), key=_version_of)
    return files[-1]


def _version_of(caps: Path) -> Tuple[int, ...]:
    return tuple(int(part) for part in re.match(r"caps_(\d+)\.(\d+)\.(\d+)\.", caps.name).groups())


def _qemu_host_cpu_props(caps: Path) -> Tuple[List[str], List[str]]:
    """(every feature property QEMU reported for kvm, the ones it marked non-migratable), libvirt names."""
    root = parse_xml(_text(caps), caps.name)
    host = root.find("hostCPU[@type='kvm']")
    props = host.findall("property") if host is not None else []
    names = [QEMU_NAMES.get(p.get("name"), p.get("name")) for p in props if p.get("type") == "boolean"]
    non_migratable = [QEMU_NAMES.get(p.get("name"), p.get("name")) for p in props if p.get("migratable") == "no"]
    return names, non_migratable


def _domcaps_entry(version: str) -> Dict[str, Any]:
    caps = _caps_file(version)
    number = ".".join(str(part) for part in _version_of(caps))
    return parse_domain_capabilities(_text(TESTS / "domaincapsdata" / ("qemu_%s-q35.x86_64.xml" % number)))


def _real_caps_case(version: str) -> Case:
    entry = _domcaps_entry(version)
    known, non_migratable = _qemu_host_cpu_props(_caps_file(version))
    reported = entry["modes"]["host-model"]["cpu"]
    host_model = {"model": reported["model"]["name"], "vendor": reported.get("vendor"),
                  "features": [[f["name"], f.get("policy") or "require"] for f in reported.get("features") or ()]}
    unknown = [name for name in cpu_map()["features"] if name not in set(known)]
    ctx = make_context(migratable(host_model, non_migratable), full_host(host_model),
                       [model["name"] for model in entry["modes"]["custom"]["models"]], unknown)
    cpu = cpu_from_xml(_text(ARGV / "cpu-host-model.xml"))

    def run():
        return qemu_cpu_option(prepare_for_qemu(ctx, guest_cpu(cpu, ctx)))
    return Case("xml2argv", "cpu-host-model.x86_64-%s" % version, _cpu_option(ARGV / ("cpu-host-model.x86_64-%s.args" % version)), run)


def _c_features(header: str, array: str) -> List[str]:
    body = re.search(r"%s\[\] = \{(.*?)\};" % re.escape(array), header, re.S).group(1)
    return re.findall(r'"([^"]+)"', body)


def _c_host(header: str, name: str, array: str) -> Dict[str, Any]:
    body = re.search(r"static virCPUDef %s = \{(.*?)\};" % re.escape(name), header, re.S).group(1)
    model = re.search(r'\.model = \(char \*\) "([^"]+)"', body).group(1)
    vendor = re.search(r'\.vendor = \(char \*\) "([^"]+)"', body)
    return {"model": model, "vendor": vendor.group(1) if vendor else None,
            "features": [[feature, "require"] for feature in _c_features(header, array)]}


def _fake_caps_case(test: str, host: str, skip_legacy: bool) -> Case:
    """DO_TEST/DO_TEST_NOCAPS/DO_TEST_FULL of a host-model test: the host-model is the fake host CPU
    (virQEMUCapsInitHostCPUModel without QEMU data: copied without cmt, mbm_*, osxsave, ospke;
    migratable without the CPU map's non-migratable features)."""
    header = _text(TESTS / "testutilshostcpus.h")
    arrays = {"cpuDefaultData": "cpuDefaultFeatures", "cpuHaswellData": "cpuHaswellFeatures"}
    host_cpu = _c_host(header, host, arrays[host])
    ignored = {"cmt", "mbm_total", "mbm_local", "osxsave", "ospke"}
    host_cpu["features"] = [f for f in host_cpu["features"] if f[0] not in ignored]
    models = X86_MODELS + (() if skip_legacy else X86_LEGACY_MODELS)
    ctx = make_context(migratable(host_cpu, cpu_map()["non_migratable"]), full_host(host_cpu), models)
    cpu = cpu_from_xml(_text(ARGV / (test + ".xml")))
    args = ARGV / (test + ".args")
    expected = _cpu_option(args) if args.exists() else ("error", " ".join(_text(ARGV / (test + ".err")).split()))

    def run():
        return outcome(lambda: qemu_cpu_option(prepare_for_qemu(ctx, guest_cpu(cpu, ctx))))
    return Case("xml2argv", test, expected, run)


def xml2argv_cases() -> List[Case]:
    cases = [_real_caps_case(version) for version in XML2ARGV_VERSIONS]
    cases += [
        _fake_caps_case("cpu-host-model", "cpuDefaultData", False),
        _fake_caps_case("cpu-host-model-vendor", "cpuDefaultData", False),
        _fake_caps_case("cpu-host-model-fallback", "cpuDefaultData", True),
        _fake_caps_case("cpu-host-model-nofallback", "cpuDefaultData", True),
        _fake_caps_case("cpu-host-model-cmt", "cpuHaswellData", False),
    ]
    return cases


# ---------------------------------------------------------------------------------------------
# cputest: update and guest CPU


def _c_calls(macro: str) -> List[List[str]]:
    source = _text(TESTS / "cputest.c")
    calls = re.findall(r"%s\(VIR_ARCH_X86_64,([^;]*)\);" % re.escape(macro), source)
    return [[part.strip().strip('"') for part in call.split(",")] for call in calls]


def _test_xml(name: str) -> Path:
    return CPUTEST / ("x86_64-%s.xml" % name)


def update_cases() -> List[Case]:
    """cpuTestUpdate: virCPUUpdate(guest, virCPUCopyMigratable(host)) against host+guest.xml."""
    cases = []
    for host, guest in [call[:2] for call in _c_calls("DO_TEST_UPDATE_ONLY")] + [call[:2] for call in _c_calls("DO_TEST_UPDATE")]:
        host_cpu = host_cpu_from_xml(_text(_test_xml(host)))
        ctx = make_context(migratable(host_cpu, cpu_map()["non_migratable"]), full_host(host_cpu), None)
        text = _text(_test_xml(guest))

        def run(ctx=ctx, text=text):
            cpu = parsed_guest(text)
            if cpu.mode not in ("host-passthrough", "maximum"):
                update_guest(ctx, cpu)
            return comparable(cpu.as_dict())
        cases.append(Case("update", "%s+%s" % (host, guest), expected_cpu(_test_xml("%s+%s" % (host, guest))), run))
    return cases


def guest_cases() -> List[Case]:
    """cpuTestGuestCPU: compare with the host (incompatible fails), virCPUUpdate, virCPUTranslate."""
    cases = []
    for call in _c_calls("DO_TEST_GUESTCPU"):
        host, guest, models, result = call[0], call[1], call[2], int(call[3])
        host_cpu = host_cpu_from_xml(_text(_test_xml(host)))
        allowed = None if models == "NULL" else CPUTEST_MODELS[models]
        ctx = make_context(host_cpu, full_host(host_cpu), allowed)
        text = _text(_test_xml(guest))
        label = "%s+%s%s" % (host, guest, "" if models == "NULL" else "," + models)
        expected = ("error", "fails") if result < 0 else expected_cpu(_test_xml(label + "-result"))

        def run(ctx=ctx, text=text):
            try:
                cpu = parsed_guest(text)
                compare_with_host(ctx, cpu)
                update_guest(ctx, cpu)
                translate_model(ctx, cpu)
            except CPUError:
                return ("error", "fails")
            return comparable(cpu.as_dict())
        cases.append(Case("guest", label, expected, run))
    return cases


# ---------------------------------------------------------------------------------------------
# cputest: update live


def _cpudata(path: Path) -> int:
    bits = cpu_map()["bits"]
    root = parse_xml(_text(path), path.name)
    value = 0
    for element in root:
        if element.tag == "cpuid":
            key = (int(element.get("eax_in"), 16), int(element.get("ecx_in") or "0", 16))
            registers = {register: int(element.get(register) or "0", 16) for register in ("eax", "ebx", "ecx", "edx")}
            for name, bit in bits.items():
                if bit[0] == "cpuid" and (bit[1], bit[2]) == key and registers[bit[3]] >> bit[4] & 1:
                    value |= mask([name])
        elif element.tag == "msr":
            index = int(element.get("index"), 16)
            msr = (int(element.get("edx") or "0", 16) << 32) | int(element.get("eax") or "0", 16)
            for name, bit in bits.items():
                if bit[0] == "msr" and bit[1] == index and msr >> bit[2] & 1:
                    value |= mask([name])
    return value


def _qmp_definitions(path: Path) -> Dict[str, List[str]]:
    """query-cpu-definitions' unavailable-features from a file of QMP replies."""
    if not path.exists():
        return {}
    text = _text(path)
    decoder = json.JSONDecoder()
    position = 0
    found: Dict[str, List[str]] = {}
    while position < len(text):
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            break
        reply, position = decoder.raw_decode(text, position)
        if reply.get("id") == "definitions":
            for item in reply["return"]:
                found[item["name"]] = [QEMU_NAMES.get(name, name) for name in item.get("unavailable-features") or ()]
    return found


def _expanded(cpu: Dict[str, Any]) -> Dict[str, str]:
    """virCPUExpandFeatures of a guest CPU: the model's features required, then the listed policies."""
    model = (cpu.get("model") or {}).get("name")
    names = cpu_map()["features"]
    policies = {}
    model_mask = cpu_map()["models"][model]["mask"] if model else 0
    for position, name in enumerate(names):
        if model_mask >> position & 1:
            policies[name] = "require"
    for feature in cpu.get("features") or ():
        if feature.get("policy", "require") in ("require", "disable"):
            policies[feature["name"]] = feature.get("policy", "require")
    for name in cpu_map()["models"][model]["removed"] if model else ():
        policies.setdefault(name, "disable")
    return policies


def live_difference(actual: Dict[str, Any], expected: Dict[str, Any]) -> List[str]:
    """cpuTestUpdateLiveCompare: same model; features compared after expansion, extra disabled ones ignored."""
    problems = []
    if (actual.get("model") or {}).get("name") != (expected.get("model") or {}).get("name"):
        problems.append("model %s, expected %s" % ((actual.get("model") or {}).get("name"), (expected.get("model") or {}).get("name")))
    got, want = _expanded(actual), _expanded(expected)
    for name in sorted(set(got) | set(want)):
        mine, theirs = got.get(name), want.get(name)
        if theirs == "require" and mine != "require":
            problems.append("lacks %s" % name)
        elif mine == "require" and theirs != "require":
            problems.append("has extra %s" % name)
        elif theirs == "disable" and mine is None:
            problems.append("has extra %s (not disabled)" % name)
    return problems


def _run_updatelive(base: str, expected: Dict[str, Any], models: Dict[str, List[str]]) -> Any:
    cpu = parsed_guest(_text(_test_xml(base + "-guest")))
    target = expected["model"]["name"]
    if cpu.model != target:
        ctx = make_context(None, None, [target])
        ctx.allowed = {target: mask(models.get(target, ()))}
        cpu.fallback = "allow"
        translate_model(ctx, cpu)
        cpu.fallback = "forbid"
    ctx = make_context(None, None, None)
    update_live(ctx, cpu, _cpudata(_test_xml(base + "-enabled")), _cpudata(_test_xml(base + "-disabled")))
    return live_difference(cpu.as_dict(), expected) or "same"


def updatelive_cases() -> List[Case]:
    cases = []
    for call in _c_calls("DO_TEST_CPUID"):
        host, json_flag = call[0], call[1]
        if json_flag == "JSON_NONE":
            continue
        base = "cpuid-%s" % host
        expected = cpu_from_xml(_text(_test_xml(base + "-json")))
        with_models = json_flag in ("JSON_MODELS", "JSON_MODELS_REQUIRED")
        models = _qmp_definitions(CPUTEST / ("x86_64-%s.json" % base)) if with_models else {}
        cases.append(Case("updatelive", host, "same", functools.partial(_run_updatelive, base, expected, models)))
    return cases


def all_cases() -> List[Case]:
    return xml2argv_cases() + update_cases() + guest_cases() + updatelive_cases()
