# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt's own test data, read the way that libvirt's tests read it, and the conformance cases
built from it: one ``Tree`` per libvirt source tree (Debian's source packages, unpacked by
``make testdata`` into .cache/libvirt-src, or any tree named by HOSTCPU_LIBVIRT_SRC).

Four families, each replaying a libvirt test on _expansion's code, built the way THAT tree's test
programs build them (their case lists are parsed from the tree's C sources):

* ``xml2argv``: the cpu-host-model* cases of tests/qemuxml2argvtest.c (older libvirt, data in
  tests/qemuxml2argvdata) or tests/qemuxmlconftest.c (data in tests/qemuxmlconfdata, names like
  ``.x86_64-latest.args``): started with the host-model of tests/domaincapsdata (real QEMU
  capabilities of each version) or with the fake host CPUs of tests/testutilshostcpus.h, against
  the ``-cpu`` option of the matching .args file (or the .err).
* ``update`` / ``guest``: tests/cputestdata host + guest pairs (cputest.c cpuTestUpdate and
  cpuTestGuestCPU: compare with the host, update, translate) against the -result files.
* ``updatelive``: tests/cputestdata x86_64-cpuid-<cpu>: the guest CPU, the features QEMU enabled
  and disabled, against the CPU libvirt computed (cputest.c cpuTestUpdateLive).

Which trees: HOSTCPU_LIBVIRT_SRC (one path, or several separated by ':') when set; otherwise
HOSTCPU_CONFORMANCE_TREES: ``all`` (default: every tree scripts/fetch-testdata.sh unpacked, at
least the libvirt versions of EXPECTED_VERSIONS), ``current`` (the tree of this machine's libvirt), or a comma-separated list of versions ("11.3",
"9.0.0"), Debian suites ("trixie") or tree directory names.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import cpu_from_xml
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError, GuestWouldNotStart
from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_map import cpu_map_from_xml, to_hex
from ansible_collections.hostcpu.libvirt.plugins.module_utils._expansion import (
    Context,
    GuestCPU,
    compare_with_host,
    guest_cpu,
    prepare_for_qemu,
    qemu_cpu_option,
    translate_model,
    update_guest,
    update_live,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._expansion_data import expansion_data_from_parts
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts import parse_domain_capabilities
from ansible_collections.hostcpu.libvirt.plugins.module_utils._versions import rules_for
from ansible_collections.hostcpu.libvirt.plugins.module_utils._xml import parse_xml

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "libvirt-src"
SOURCE_VARIABLE = "HOSTCPU_LIBVIRT_SRC"
TREES_VARIABLE = "HOSTCPU_CONFORMANCE_TREES"
# The libvirt versions make testdata fetches (bullseye, bookworm, trixie): a default run without one fails.
EXPECTED_VERSIONS = ("7.0.0", "9.0.0", "11.3.0")
FAMILIES = ("xml2argv", "update", "guest", "updatelive")
XML2ARGV_PROGRAMS = (("qemuxmlconftest.c", "qemuxmlconfdata"), ("qemuxml2argvtest.c", "qemuxml2argvdata"))
# tests/testutilsqemu.h qemuTestCPUDef (or, up to 7.x, the variable given to qemuTestSetHostCPU) -> the
# virCPUDef of tests/testutilshostcpus.h and its features
HOST_CPU_DEFS = {"QEMU_CPU_DEF_DEFAULT": ("cpuDefaultData", "cpuDefaultFeatures"),
                 "QEMU_CPU_DEF_HASWELL": ("cpuHaswellData", "cpuHaswellFeatures")}
HOST_CPU_VARIABLES = {"cpuDefault": "QEMU_CPU_DEF_DEFAULT", "cpuHaswell": "QEMU_CPU_DEF_HASWELL"}
ACCELERATORS = {"kvm": "kvm", "qemu": "tcg"}


class Case(NamedTuple):
    tree: str              # the tree's label (its libvirt version)
    family: str
    name: str
    expected: Any          # -cpu text, a CPU dict, or ("error", message)
    run: Callable[[], Any]  # -> the same kind of value

    @property
    def id(self) -> str:
        return "%s/%s/%s" % (self.tree, self.family, self.name)


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def read_version(path: Path) -> Optional[str]:
    """The libvirt version of a source tree: meson.build's ``version:``, else debian/changelog's."""
    meson = path / "meson.build"
    if meson.is_file():
        found = re.search(r"\bversion\s*:\s*'(\d+\.\d+\.\d+)'", _text(meson))
        if found:
            return found.group(1)
    changelog = path / "debian" / "changelog"
    if changelog.is_file():
        found = re.match(r"\S+ \((?:\d+:)?(\d+\.\d+\.\d+)", _text(changelog))
        if found:
            return found.group(1)
    return None


def _version_key(version: Optional[str]) -> Tuple[int, ...]:
    return tuple(int(part) for part in (version or "0").split("."))


# ---------------------------------------------------------------------------------------------
# C sources of the tree: case lists, arrays, function bodies


def c_strings(text: str) -> List[str]:
    return re.findall(r'"([^"]*)"', text)


def c_array(source: str, name: str) -> str:
    """The initializer text of ``name[] = { ... };``."""
    found = re.search(r"\b%s\[\]\s*=\s*\{(.*?)\};" % re.escape(name), source, re.S)
    if not found:
        raise LookupError("no array %s[] in the C source" % name)
    return found.group(1)


def c_function_body(source: str, name: str) -> str:
    found = re.search(r"^%s\s*\([^)]*\)\s*\{(.*?)^\}" % re.escape(name), source, re.S | re.M)
    if not found:
        raise LookupError("no function %s in the C source" % name)
    return found.group(1)


def c_arguments(text: str) -> List[str]:
    """A macro call's arguments split at the top-level commas, stripped."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        current += char
    parts.append(current.strip())
    return parts


def c_statements(source: str) -> str:
    """The C source without comments and preprocessor lines (macro definitions span lines with '\\')."""
    source = re.sub(r"/\*.*?\*/", " ", source, flags=re.S)
    return re.sub(r"^[ \t]*#(?:[^\n]*\\\n)*[^\n]*", "", source, flags=re.M)


def c_calls(source: str, names: str) -> List[Tuple[str, List[str]]]:
    """Every ``NAME(args);`` statement whose NAME matches the regex *names*, in source order."""
    return [(found.group(1), c_arguments(found.group(2)))
            for found in re.finditer(r"\b(%s)\s*\(([^;]*)\)\s*;" % names, c_statements(source))]


def unquote(argument: str) -> str:
    return argument.strip().strip('"')


# ---------------------------------------------------------------------------------------------
# one libvirt source tree


class Tree:
    """A libvirt source tree (its test data, CPU map and test programs) and its version."""

    def __init__(self, path: Path, label: Optional[str] = None):
        self.path = path
        self.version = read_version(path)
        self.label = label or self.version or path.name
        self.tests = path / "tests"
        self.cputestdata = self.tests / "cputestdata"

    def __repr__(self) -> str:
        return "Tree(%s, libvirt %s)" % (self.path, self.version)

    def missing_reason(self) -> Optional[str]:
        needed = [self.path / "src" / "cpu_map" / "index.xml", self.cputestdata / "x86_64-host.xml",
                  self.tests / "cputest.c", self.tests / "testutilshostcpus.h",
                  self.path / "src" / "qemu" / "qemu_capabilities.c"]
        missing = [str(path.relative_to(self.path)) for path in needed if not path.exists()]
        if self.version is None:
            missing.append("meson.build or debian/changelog (the libvirt version)")
        if self.xml2argv_program() is None:
            missing.append("tests/qemuxmlconftest.c or tests/qemuxml2argvtest.c")
        if not missing:
            return None
        return ("libvirt's source and test data are not complete in %s (missing: %s); run `make testdata` (it "
                "downloads Debian's libvirt source packages into .cache/libvirt-src)" % (self.path, ", ".join(missing)))

    def source(self, relative: str) -> str:
        return _text(self.path / relative)

    def xml2argv_program(self) -> Optional[Tuple[Path, Path]]:
        """(test program, its data directory) of the qemu command-line tests of this tree."""
        for program, data in XML2ARGV_PROGRAMS:
            if (self.tests / program).is_file():
                return self.tests / program, self.tests / data
        return None

    # -- CPU map -------------------------------------------------------------------------------

    @functools.cached_property
    def cpu_map(self) -> Dict[str, Any]:
        """The tree's src/cpu_map read by the collection's cpu_map_from_xml, as that version's libvirt reads it."""
        files = {path.name: _text(path) for path in (self.path / "src" / "cpu_map").glob("*.xml")}
        return cpu_map_from_xml(files, rules=rules_for(self.version))

    @functools.cached_property
    def feature_index(self) -> Dict[str, int]:
        return {name: position for position, name in enumerate(self.cpu_map["features"])}

    def mask(self, names: Iterable[str]) -> int:
        value = 0
        for name in names:
            if name in self.feature_index:
                value |= 1 << self.feature_index[name]
        return value

    def cpu_data(self, model: Optional[str], features: Sequence[Sequence[str]]) -> int:
        value = self.cpu_map["models"][model]["mask"] if model else 0
        for name, policy in features:
            if policy in ("require", "force"):
                value |= self.mask([name])
            elif policy in ("disable", "forbid"):
                value &= ~self.mask([name])
        return value

    def full_host(self, host_model: Dict[str, Any]) -> Dict[str, Any]:
        listed = [name for name, policy in host_model["features"] if policy not in ("disable", "forbid")]
        return {"vendor": host_model["vendor"], "features": to_hex(self.cpu_data(host_model["model"], host_model["features"])),
                "listed": to_hex(self.mask(listed))}

    def make_context(self, host_model: Optional[Dict[str, Any]], host: Optional[Dict[str, Any]],
                     models: Optional[Iterable[Any]], unknown: Iterable[str] = (), virt_type: str = "kvm") -> Context:
        """A Context like one built from facts of a host with this tree's libvirt; *models* (names or
        domcapabilities model dicts) None means every model of the CPU map is allowed."""
        listed = list(self.cpu_map["models"]) if models is None else list(models)
        data = expansion_data_from_parts(self.cpu_map, virt_type, host_model, host, {"unknown": list(unknown)})
        entry = {"domain_type": virt_type, "arch": "x86_64", "libvirt_version": self.version, "expansion": data,
                 "modes": {"host-passthrough": {"supported": True}, "maximum": {"supported": True},
                           "host-model": {"supported": host_model is not None},
                           "custom": {"supported": True,
                                      "models": [model if isinstance(model, dict) else {"name": model} for model in listed]}}}
        return Context(entry)

    # -- what the tree's qemu driver says ---------------------------------------------------------

    @functools.cached_property
    def ignored_features(self) -> Tuple[str, ...]:
        """qemu_capabilities.c virQEMUCapsCPUFilterFeatures: features never passed to QEMU (a list of
        STREQs in the function up to 10.x, the ignoredFeatures array it walks since)."""
        source = self.source("src/qemu/qemu_capabilities.c")
        body = c_function_body(source, "virQEMUCapsCPUFilterFeatures")
        names = c_strings(body)
        if "ignoredFeatures" in body:
            names += c_strings(c_array(source, "ignoredFeatures"))
        return tuple(names)

    @functools.cached_property
    def qemu_feature_names(self) -> Dict[str, str]:
        """QEMU property name -> libvirt feature name (qemu_capabilities.c virQEMUCapsCPUFeaturesX86)."""
        table = c_array(self.source("src/qemu/qemu_capabilities.c"), "virQEMUCapsCPUFeaturesX86")
        pairs = re.findall(r'\{\s*"([^"]+)"\s*,\s*"([^"]+)"\s*\}', table)
        return {qemu: libvirt for libvirt, qemu in pairs}

    def libvirt_name(self, qemu_name: str) -> str:
        return self.qemu_feature_names.get(qemu_name, qemu_name)

    def qemu_name(self, libvirt_name: str) -> str:
        for qemu, libvirt in self.qemu_feature_names.items():
            if libvirt == libvirt_name:
                return qemu
        return libvirt_name

    def cases(self) -> List[Case]:
        return xml2argv_cases(self) + update_cases(self) + guest_cases(self) + updatelive_cases(self)


# ---------------------------------------------------------------------------------------------
# which trees


def fetched_trees() -> List[Path]:
    """Every tree scripts/fetch-testdata.sh unpacked under .cache/libvirt-src, oldest libvirt first."""
    paths = [path for path in CACHE.glob("libvirt-*") if path.is_dir() and not path.is_symlink()
             and not path.name.endswith((".tmp", ".unpacked"))]
    return sorted(paths, key=lambda path: _version_key(read_version(path)))


def _matches(path: Path, wanted: str) -> bool:
    version = read_version(path) or ""
    if wanted in (version, path.name) or version.startswith(wanted + "."):
        return True
    link = CACHE / wanted
    return link.is_symlink() and link.resolve() == path.resolve()


def selected_paths() -> List[Path]:
    given = os.environ.get(SOURCE_VARIABLE)
    if given:
        return [Path(part) for part in given.split(":") if part]
    choice = os.environ.get(TREES_VARIABLE, "all").strip() or "all"
    if choice == "current":
        return [CACHE / "current"]
    if choice == "all":
        return fetched_trees() or [CACHE / "current"]
    wanted = [part.strip() for part in choice.split(",") if part.strip()]
    return [next((path for path in fetched_trees() if _matches(path, name)), CACHE / name) for name in wanted]


def _tree_label(path: Path, version: Optional[str], versions: List[Optional[str]]) -> str:
    """The version; version@directory when several trees have it; the directory name without one."""
    if version is None:
        return path.name
    if versions.count(version) > 1:
        return "%s@%s" % (version, path.name)
    return version


def selected_trees() -> List[Tree]:
    """The trees of this run, each with a label of its own."""
    paths = selected_paths()
    versions = [read_version(path) for path in paths]
    trees: List[Tree] = []
    for path, version in zip(paths, versions):
        label = _tree_label(path, version, versions)
        while label in [tree.label for tree in trees]:
            label += "+"
        trees.append(Tree(path, label))
    return trees


def outcome(function: Callable[[], Any]) -> Any:
    try:
        return function()
    except CPUError as exc:
        return ("error", exc.reason if isinstance(exc, GuestWouldNotStart) else str(exc))


def host_cpu_from_xml(text: str) -> Dict[str, Any]:
    """A host CPU of the test data as the migratable-host-model shape (every listed feature required)."""
    cpu = cpu_from_xml(text)
    return {"model": (cpu.get("model") or {}).get("name"), "vendor": cpu.get("vendor"),
            "features": [[f["name"], f.get("policy") or "require"] for f in cpu.get("features") or ()]}


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


# ---------------------------------------------------------------------------------------------
# qemuxml2argv / qemuxmlconf: cpu-host-model*


class HostModelTest(NamedTuple):
    """One cpu-host-model* call of the test program."""
    name: str                     # the input XML's name
    output: str                   # the expected output's name without .args / .err
    caps: Optional[str]           # QEMU capabilities version ("latest"), None: the program's fake caps
    host_cpu: str                 # qemuTestCPUDef of the test driver's host CPU
    host_model_from_host: bool    # host-model built from that host CPU, not from QEMU's data
    skip_legacy: bool             # FLAG_SKIP_LEGACY_CPUS (fake caps without the legacy models)


def _caps_test(name: str, macro: str, arguments: List[str], host_cpu: str) -> Optional[HostModelTest]:
    """DO_TEST_CAPS_[ARCH_](VER|LATEST)[_FULL|_FAILURE](name[, arch][, ver], ...)."""
    rest = arguments[1:]
    arch = "x86_64"
    if "_ARCH_" in macro:
        arch, rest = unquote(rest[0]), rest[1:]
    if arch != "x86_64" or "ABI_UPDATE" in macro or "PARSE_ERROR" in macro:
        return None
    version = "latest" if "LATEST" in macro else unquote(rest[0])
    from_host = "ARG_CAPS_HOST_CPU_MODEL" in arguments
    if from_host:
        host_cpu = arguments[arguments.index("ARG_CAPS_HOST_CPU_MODEL") + 1]
    return HostModelTest(name, "%s.%s-%s" % (name, arch, version), version, host_cpu, from_host, False)


def _host_model_test(macro: str, arguments: List[str], host_cpu: str) -> Optional[HostModelTest]:
    name = unquote(arguments[0])
    if macro.startswith("DO_TEST_CAPS_"):
        return _caps_test(name, macro, arguments, host_cpu)
    # DO_TEST_FULL(name, suffix, ARG_...) since 8.x; DO_TEST_FULL(name, ARG_...) before
    suffix = unquote(arguments[1]) if macro == "DO_TEST_FULL" and arguments[1].startswith('"') else ""
    return HostModelTest(name, name + suffix, None, host_cpu, True, "FLAG_SKIP_LEGACY_CPUS" in " ".join(arguments))


def _host_cpu_def(argument: str) -> str:
    """qemuTestSetHostCPU's CPU argument as a qemuTestCPUDef (NULL: the default host CPU)."""
    chosen = re.search(r"QEMU_CPU_DEF_\w+", argument)
    if chosen:
        return chosen.group(0)
    return HOST_CPU_VARIABLES.get(argument.strip(), "QEMU_CPU_DEF_DEFAULT")


def host_model_tests(tree: Tree) -> List[HostModelTest]:
    """The cpu-host-model* calls of mymain(), with the host CPU qemuTestSetHostCPU set before each."""
    program, _data = tree.xml2argv_program()
    main = _text(program).split("\nmymain(void)", 1)[-1]
    host_cpu = "QEMU_CPU_DEF_DEFAULT"
    tests = []
    for macro, arguments in c_calls(main, r"DO_TEST\w*|qemuTestSetHostCPU"):
        if macro == "qemuTestSetHostCPU":
            host_cpu = _host_cpu_def(arguments[-1])
        elif unquote(arguments[0]).startswith("cpu-host-model"):
            test = _host_model_test(macro, arguments, host_cpu)
            if test:
                tests.append(test)
    return tests


def modern_cpu_option(tree: Tree, option: str) -> str:
    """A -cpu value in QEMU's ``name=on|off`` syntax with QEMU's canonical feature names (one spelling
    for what QEMU takes as the same property): libvirt up to 7.x gave QEMU without the
    query-cpu-model-expansion capability (the fake capabilities of its tests) ``+name`` / ``-name``,
    and QEMU without canonical feature names (QEMU < 4.1 in its tests) libvirt's own names."""
    parts = option.split(",")
    for position, part in enumerate(parts[1:], 1):
        if part[:1] in ("+", "-"):
            parts[position] = "%s=%s" % (tree.qemu_name(part[1:]), "on" if part[0] == "+" else "off")
        elif part.endswith(("=on", "=off")):
            name, _sep, state = part.rpartition("=")
            parts[position] = "%s=%s" % (tree.qemu_name(name), state)
    return ",".join(parts)


def _cpu_option(tree: Tree, args_path: Path) -> str:
    text = _text(args_path).replace("\\\n", "")  # libvirt up to 7.x wraps long .args lines with '\'
    found = re.search(r"-cpu ('[^']*'|\S+)", text)
    return modern_cpu_option(tree, found.group(1).strip("'"))


def _expected_command_line(tree: Tree, data: Path, output: str) -> Any:
    args = data / (output + ".args")
    if args.exists():
        return _cpu_option(tree, args)
    err = data / (output + ".err")
    if err.exists():
        return ("error", " ".join(_text(err).split()))
    return None


_CAPS_NAME = re.compile(r"caps_(\d+\.\d+\.\d+)[._]x86_64\.xml$")


def caps_files(tree: Tree) -> Dict[str, Path]:
    """QEMU version -> tests/qemucapabilitiesdata/caps_<ver>.x86_64.xml (9.x) or caps_<ver>_x86_64.xml
    (10.x+); variants (+hvf, +amdsev, ...) are not what "latest" means."""
    files = {}
    for path in (tree.tests / "qemucapabilitiesdata").glob("caps_*x86_64.xml"):
        found = _CAPS_NAME.match(path.name)
        if found:
            files[found.group(1)] = path
    return files


def qemu_version(tree: Tree, caps: str) -> str:
    return max(caps_files(tree), key=_version_key) if caps == "latest" else caps


def _domcaps_entry(tree: Tree, version: str, virt_type: str, machine: str) -> Dict[str, Any]:
    variant = "-tcg" if virt_type == "qemu" else ("-q35" if machine.startswith(("q35", "pc-q35")) else "")
    return parse_domain_capabilities(_text(tree.tests / "domaincapsdata" / ("qemu_%s%s.x86_64.xml" % (version, variant))))


def _qemu_host_cpu_props(tree: Tree, version: str, virt_type: str) -> Tuple[List[str], List[str]]:
    """(every feature property QEMU reported for the accelerator, the ones it marked non-migratable), libvirt names."""
    caps = caps_files(tree)[version]
    root = parse_xml(_text(caps), caps.name)
    host = root.find("hostCPU[@type='%s']" % ACCELERATORS[virt_type])
    props = host.findall("property") if host is not None else []
    names = [tree.libvirt_name(p.get("name")) for p in props if p.get("type") == "boolean"]
    non_migratable = [tree.libvirt_name(p.get("name")) for p in props if p.get("migratable") == "no"]
    return names, non_migratable


def _reported_host_model(entry: Dict[str, Any]) -> Dict[str, Any]:
    reported = entry["modes"]["host-model"]["cpu"]
    return {"model": reported["model"]["name"], "vendor": reported.get("vendor"),
            "features": [[f["name"], f.get("policy") or "require"] for f in reported.get("features") or ()]}


def _real_caps_context(tree: Tree, version: str, virt_type: str, machine: str) -> Context:
    """The host of a DO_TEST_CAPS_* case: domcapabilities' host-model (migratable: without the properties
    QEMU marked non-migratable), the models QEMU reported, the features it does not know."""
    entry = _domcaps_entry(tree, version, virt_type, machine)
    known, non_migratable = _qemu_host_cpu_props(tree, version, virt_type)
    host_model = _reported_host_model(entry)
    unknown = [name for name in tree.cpu_map["features"] if name not in set(known)]
    return tree.make_context(migratable(host_model, non_migratable), tree.full_host(host_model),
                             entry["modes"]["custom"]["models"], unknown, virt_type)


def _c_host(header: str, name: str, array: str) -> Dict[str, Any]:
    body = re.search(r"static virCPUDef %s = \{(.*?)\};" % re.escape(name), header, re.S).group(1)
    model = re.search(r'\.model = \(char \*\) "([^"]+)"', body).group(1)
    vendor = re.search(r'\.vendor = \(char \*\) "([^"]+)"', body)
    return {"model": model, "vendor": vendor.group(1) if vendor else None,
            "features": [[feature, "require"] for feature in c_strings(c_array(header, array))]}


def fake_host_model(tree: Tree, host_cpu: str) -> Dict[str, Any]:
    """virQEMUCapsInitHostCPUModel without QEMU data: the test driver's host CPU
    (tests/testutilshostcpus.h) copied without the features virQEMUCapsCPUFilterFeatures drops."""
    data_name, features_name = HOST_CPU_DEFS[host_cpu]
    host = _c_host(tree.source("tests/testutilshostcpus.h"), data_name, features_name)
    ignored = set(tree.ignored_features)
    return dict(host, features=[f for f in host["features"] if f[0] not in ignored])


def _fake_caps_models(tree: Tree, program: Path, skip_legacy: bool) -> List[str]:
    """qemuxml2argvtest.c testAddCPUModels: the x86 models of the fake capabilities."""
    source = _text(program)
    models = c_strings(c_array(source, "x86Models"))
    return models if skip_legacy else models + c_strings(c_array(source, "x86LegacyModels"))


def _fake_host_context(tree: Tree, test: HostModelTest, virt_type: str, machine: str) -> Context:
    """The host of a test whose host-model comes from the host CPU: migratable = without the CPU map's
    non-migratable features; QEMU's model list from the program's fake caps or from real ones."""
    host_model = fake_host_model(tree, test.host_cpu)
    if test.caps is None:
        models: List[Any] = _fake_caps_models(tree, tree.xml2argv_program()[0], test.skip_legacy)
    else:
        models = _domcaps_entry(tree, qemu_version(tree, test.caps), virt_type, machine)["modes"]["custom"]["models"]
    return tree.make_context(migratable(host_model, tree.cpu_map["non_migratable"]), tree.full_host(host_model),
                             models, (), virt_type)


def _domain_of(text: str) -> Tuple[str, str]:
    """(domain type, machine) of a test domain XML."""
    root = parse_xml(text, "domain XML")
    type_el = root.find("os/type")
    return root.get("type") or "kvm", (type_el.get("machine") if type_el is not None else None) or ""


def _run_host_model_test(tree: Tree, test: HostModelTest) -> Any:
    _program, data = tree.xml2argv_program()
    text = _text(data / (test.name + ".xml"))
    virt_type, machine = _domain_of(text)
    if test.host_model_from_host:
        ctx = _fake_host_context(tree, test, virt_type, machine)
    else:
        ctx = _real_caps_context(tree, qemu_version(tree, test.caps), virt_type, machine)
    cpu = cpu_from_xml(text)
    return outcome(lambda: qemu_cpu_option(prepare_for_qemu(ctx, guest_cpu(cpu, ctx)), ctx))


def xml2argv_cases(tree: Tree) -> List[Case]:
    _program, data = tree.xml2argv_program()
    cases = []
    for test in host_model_tests(tree):
        expected = _expected_command_line(tree, data, test.output)
        if expected is None:  # the harness misread the call: fail, naming what it looked for
            expected = ("missing", "%s/%s.args or .err" % (data, test.output))
        cases.append(Case(tree.label, "xml2argv", test.output, expected, functools.partial(_run_host_model_test, tree, test)))
    return cases


# ---------------------------------------------------------------------------------------------
# cputest: update and guest CPU


def cputest_calls(tree: Tree, macro: str) -> List[List[str]]:
    """The x86_64 calls of *macro* in the tree's tests/cputest.c, arguments unquoted."""
    source = tree.source("tests/cputest.c")
    return [[unquote(argument) for argument in arguments[1:]]
            for _name, arguments in c_calls(source, re.escape(macro)) if arguments[0] == "VIR_ARCH_X86_64"]


def cputest_models(tree: Tree, name: str) -> Tuple[str, ...]:
    """A model list of cputest.c by the name DO_TEST_GUESTCPU gives it (``models`` is
    ``models_list[] = { "qemu64", ..., NULL }``)."""
    return tuple(c_strings(c_array(tree.source("tests/cputest.c"), name + "_list")))


def _test_xml(tree: Tree, name: str) -> Path:
    return tree.cputestdata / ("x86_64-%s.xml" % name)


def _run_update(tree: Tree, host: str, guest: str) -> Any:
    """cpuTestUpdate: virCPUUpdate(guest, virCPUCopyMigratable(host))."""
    host_cpu = host_cpu_from_xml(_text(_test_xml(tree, host)))
    ctx = tree.make_context(migratable(host_cpu, tree.cpu_map["non_migratable"]), tree.full_host(host_cpu), None)
    cpu = parsed_guest(_text(_test_xml(tree, guest)))
    if cpu.mode not in ("host-passthrough", "maximum"):
        update_guest(ctx, cpu)
    return comparable(cpu.as_dict())


def update_cases(tree: Tree) -> List[Case]:
    pairs = [call[:2] for call in cputest_calls(tree, "DO_TEST_UPDATE_ONLY") + cputest_calls(tree, "DO_TEST_UPDATE")]
    return [Case(tree.label, "update", "%s+%s" % (host, guest), expected_cpu(_test_xml(tree, "%s+%s" % (host, guest))),
                 functools.partial(_run_update, tree, host, guest))
            for host, guest in pairs]


def _run_guest(tree: Tree, host: str, guest: str, models: Optional[Tuple[str, ...]]) -> Any:
    """cpuTestGuestCPU: compare with the host (incompatible fails), virCPUUpdate, virCPUTranslate."""
    host_cpu = host_cpu_from_xml(_text(_test_xml(tree, host)))
    ctx = tree.make_context(host_cpu, tree.full_host(host_cpu), models)
    try:
        cpu = parsed_guest(_text(_test_xml(tree, guest)))
        compare_with_host(ctx, cpu)
        update_guest(ctx, cpu)
        translate_model(ctx, cpu)
    except CPUError:
        return ("error", "fails")
    return comparable(cpu.as_dict())


def guest_cases(tree: Tree) -> List[Case]:
    cases = []
    for call in cputest_calls(tree, "DO_TEST_GUESTCPU"):
        host, guest, models, result = call[0], call[1], call[2], int(call[3])
        label = "%s+%s%s" % (host, guest, "" if models == "NULL" else "," + models)
        expected = ("error", "fails") if result < 0 else expected_cpu(_test_xml(tree, label + "-result"))
        allowed = None if models == "NULL" else cputest_models(tree, models)
        cases.append(Case(tree.label, "guest", label, expected, functools.partial(_run_guest, tree, host, guest, allowed)))
    return cases


# ---------------------------------------------------------------------------------------------
# cputest: update live


def _cpudata(tree: Tree, path: Path) -> int:
    """virCPUDataParse of an -enabled / -disabled file: the CPU map features whose bits it sets."""
    bits = tree.cpu_map["bits"]
    root = parse_xml(_text(path), path.name)
    value = 0
    for element in root:
        if element.tag == "cpuid":
            key = (int(element.get("eax_in"), 16), int(element.get("ecx_in") or "0", 16))
            registers = {register: int(element.get(register) or "0", 16) for register in ("eax", "ebx", "ecx", "edx")}
            for name, bit in bits.items():
                if bit[0] == "cpuid" and (bit[1], bit[2]) == key and registers[bit[3]] >> bit[4] & 1:
                    value |= tree.mask([name])
        elif element.tag == "msr":
            index = int(element.get("index"), 16)
            msr = (int(element.get("edx") or "0", 16) << 32) | int(element.get("eax") or "0", 16)
            for name, bit in bits.items():
                if bit[0] == "msr" and bit[1] == index and msr >> bit[2] & 1:
                    value |= tree.mask([name])
    return value


def _qmp_replies(text: str) -> Iterable[Dict[str, Any]]:
    decoder = json.JSONDecoder()
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            return
        reply, position = decoder.raw_decode(text, position)
        yield reply


def _qmp_definitions(tree: Tree, path: Path) -> Dict[str, List[str]]:
    """query-cpu-definitions' unavailable-features from a file of QMP replies."""
    if not path.exists():
        return {}
    found: Dict[str, List[str]] = {}
    for reply in _qmp_replies(_text(path)):
        if reply.get("id") == "definitions":
            for item in reply["return"]:
                found[item["name"]] = [tree.libvirt_name(name) for name in item.get("unavailable-features") or ()]
    return found


def _expanded(tree: Tree, cpu: Dict[str, Any]) -> Dict[str, str]:
    """virCPUExpandFeatures of a guest CPU: the model's features required, then the listed policies."""
    model = (cpu.get("model") or {}).get("name")
    policies = {}
    model_mask = tree.cpu_map["models"][model]["mask"] if model else 0
    for position, name in enumerate(tree.cpu_map["features"]):
        if model_mask >> position & 1:
            policies[name] = "require"
    for feature in cpu.get("features") or ():
        if feature.get("policy", "require") in ("require", "disable"):
            policies[feature["name"]] = feature.get("policy", "require")
    for name in tree.cpu_map["models"][model]["removed"] if model else ():
        policies.setdefault(name, "disable")
    return policies


def live_difference(tree: Tree, actual: Dict[str, Any], expected: Dict[str, Any]) -> List[str]:
    """cpuTestUpdateLiveCompare: same model; features compared after expansion, extra disabled ones ignored."""
    problems = []
    if (actual.get("model") or {}).get("name") != (expected.get("model") or {}).get("name"):
        problems.append("model %s, expected %s" % ((actual.get("model") or {}).get("name"), (expected.get("model") or {}).get("name")))
    got, want = _expanded(tree, actual), _expanded(tree, expected)
    for name in sorted(set(got) | set(want)):
        mine, theirs = got.get(name), want.get(name)
        if theirs == "require" and mine != "require":
            problems.append("lacks %s" % name)
        elif mine == "require" and theirs != "require":
            problems.append("has extra %s" % name)
        elif theirs == "disable" and mine is None:
            problems.append("has extra %s (not disabled)" % name)
    return problems


def _run_updatelive(tree: Tree, host: str, with_models: bool) -> Any:
    base = "cpuid-%s" % host
    expected = cpu_from_xml(_text(_test_xml(tree, base + "-json")))
    models = _qmp_definitions(tree, tree.cputestdata / ("x86_64-%s.json" % base)) if with_models else {}
    cpu = parsed_guest(_text(_test_xml(tree, base + "-guest")))
    target = expected["model"]["name"]
    if cpu.model != target:
        ctx = tree.make_context(None, None, [target])
        ctx.allowed = {target: tree.mask(models.get(target, ()))}
        cpu.fallback = "allow"
        translate_model(ctx, cpu)
        cpu.fallback = "forbid"
    ctx = tree.make_context(None, None, None)
    update_live(ctx, cpu, _cpudata(tree, _test_xml(tree, base + "-enabled")), _cpudata(tree, _test_xml(tree, base + "-disabled")))
    return live_difference(tree, cpu.as_dict(), expected) or "same"


def updatelive_cases(tree: Tree) -> List[Case]:
    cases = []
    for call in cputest_calls(tree, "DO_TEST_CPUID"):
        host, json_flag = call[0], call[1]
        if json_flag == "JSON_NONE":
            continue
        with_models = json_flag in ("JSON_MODELS", "JSON_MODELS_REQUIRED")
        cases.append(Case(tree.label, "updatelive", host, "same", functools.partial(_run_updatelive, tree, host, with_models)))
    return cases
