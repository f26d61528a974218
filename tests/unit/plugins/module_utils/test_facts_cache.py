# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_facts_cache: the fingerprint of the expansion data's inputs, which source wins, the cache file.

The inputs are built from what libvirt 9.0 printed on the test machine (tests/unit/fixtures/versions/9.0.0:
capabilities, domain capabilities, its CPU map) and the expansion data is the real data cpu_facts
measured there.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict

import pytest

from ansible_collections.hostcpu.libvirt.plugins.module_utils import _facts_cache, _facts_key, _probe
from ansible_collections.hostcpu.libvirt.plugins.module_utils._expansion_data import DATA_FORMAT
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts import parse_capabilities
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts_cache import (
    CACHE_FORMAT,
    INPUT_KEYS,
    PROBE_VERSION,
    ExpansionReuse,
    cache_key,
    collect_inputs,
    compact_inputs,
    cpu_map_identity,
    decide,
    file_identity,
    inputs_fingerprint,
    is_local_uri,
    previous_expansions,
    read_cache,
    reuse_problem,
    write_cache,
)

FIXTURES = Path(__file__).resolve().parents[3] / "unit" / "fixtures" / "versions" / "9.0.0"
VERSIONS = {"libvirt_version": 9000000, "hypervisor_version": 7002022}
VIRT_TYPES = ("kvm", "qemu")
LOCAL = "qemu:///system"
REMOTE = "qemu+ssh://root@host2.example/system"


def _read(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def real_facts() -> Dict[str, Any]:
    return json.loads(_read("cpu_facts.json"))


@pytest.fixture
def cpu_map(tmp_path) -> Path:
    directory = tmp_path / "cpu_map"
    shutil.copytree(FIXTURES / "cpu_map", directory)
    return directory


@pytest.fixture
def emulator(tmp_path) -> Path:
    path = tmp_path / "qemu-system-x86_64"
    path.write_bytes(b"\x7fELF not really QEMU")
    return path


@pytest.fixture
def inputs(cpu_map, emulator) -> Dict[str, Dict[str, Any]]:
    """The raw inputs of both virt types, as cpu_facts collects them for a local URI."""
    host = parse_capabilities(_read("capabilities.xml"))["host"]
    domcaps = {vt: _read("domcapabilities-%s.xml" % vt) for vt in VIRT_TYPES}
    return collect_inputs(LOCAL, VERSIONS, host, domcaps, {vt: str(emulator) for vt in VIRT_TYPES}, str(cpu_map))


def _data(real_facts, virt_type: str, inputs: Dict[str, Any]) -> Dict[str, Any]:
    """The real expansion data of *virt_type*, as cpu_facts stores it: with its inputs' fingerprint."""
    data = copy.deepcopy(real_facts["virt_types"][virt_type]["expansion"])
    data["inputs"] = inputs_fingerprint(inputs)
    data["inputs_detail"] = compact_inputs(inputs)
    return data


# --- the inputs -------------------------------------------------------------------------------


def test_collect_inputs_gives_every_key_for_every_virt_type(inputs, emulator):
    assert sorted(inputs) == ["kvm", "qemu"]
    for virt_type, found in inputs.items():
        assert tuple(found) == INPUT_KEYS
        assert found["virt_type"] == virt_type
        assert found["libvirt_version"] == 9000000 and found["hypervisor_version"] == 7002022
        assert found["domcapabilities"] == _read("domcapabilities-%s.xml" % virt_type)
        assert found["emulator"] == file_identity(str(emulator))
        assert set(found["emulator"]) == {"path", "size", "mtime_ns", "inode"}
        assert found["kernel"] == {"release": os.uname().release, "version": os.uname().version}
        assert found["data_format"] == DATA_FORMAT and found["probe_version"] == PROBE_VERSION
    host = inputs["kvm"]["host_cpu"]
    assert tuple(host) == _facts_cache.HOST_CPU_KEYS and host["model"] and host["vendor"]
    assert "tsc" not in host and host["microcode"] and host["features"] and host["signature"] and host["topology"]


def test_cpu_map_identity_is_each_files_stat(cpu_map):
    identity = cpu_map_identity(str(cpu_map))
    assert [item[0] for item in identity] == sorted(os.listdir(cpu_map))
    first = cpu_map / identity[0][0]
    assert identity[0][1:] == [first.stat().st_size, first.stat().st_mtime_ns, first.stat().st_ino]


def test_the_cpu_map_is_read_where_the_cpu_map_code_reads_it():
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_map import CPU_MAP_DIR  # pylint: disable=import-outside-toplevel
    assert _facts_cache.CPU_MAP_DIR == CPU_MAP_DIR


def test_the_data_format_and_fingerprint_are_those_the_data_is_built_with(real_facts):
    from ansible_collections.hostcpu.libvirt.plugins.module_utils import _expansion_data  # pylint: disable=import-outside-toplevel
    data = real_facts["virt_types"]["kvm"]["expansion"]
    content = {key: value for key, value in data.items() if key not in ("inputs", "inputs_detail")}
    assert _facts_cache.EXPANSION_DATA_FORMAT == _expansion_data.DATA_FORMAT == data["format"]
    assert _facts_cache.expansion_data_fingerprint(content) == data["fingerprint"]
    rebuilt = _expansion_data.expansion_data_from_parts({"features": [], "bits": {}, "models": {}}, "kvm", None, None, {})
    assert rebuilt["fingerprint"] == _facts_cache.expansion_data_fingerprint(rebuilt)


def test_unreadable_things_are_inputs_too(tmp_path):
    assert file_identity(str(tmp_path / "missing"))["error"]
    assert cpu_map_identity(str(tmp_path / "missing"))["error"]
    assert file_identity(None) is None


@pytest.mark.parametrize("uri, local", [
    (LOCAL, True), ("qemu:///session", True), ("qemu+unix:///system", True), ("test:///default", True), ("", True), (None, True),
    (REMOTE, False), ("qemu+tcp://10.0.0.2/system", False), ("qemu+ssh://host/system?keyfile=/k", False),
])
def test_a_uri_with_a_host_part_is_remote(uri, local):
    assert is_local_uri(uri) is local


def test_remote_uris_leave_out_the_qemu_binary_and_the_kernel_but_not_the_cpu_map(inputs, cpu_map, emulator):
    host = parse_capabilities(_read("capabilities.xml"))["host"]
    remote = collect_inputs(REMOTE, VERSIONS, host, {"kvm": _read("domcapabilities-kvm.xml")}, {"kvm": str(emulator)}, str(cpu_map))
    assert remote["kvm"]["emulator"] is None and remote["kvm"]["kernel"] is None
    assert remote["kvm"]["cpu_map"] == inputs["kvm"]["cpu_map"]  # the module reads this host's map whatever the URI
    assert inputs_fingerprint(remote["kvm"]) != inputs_fingerprint(inputs["kvm"])


def test_the_fingerprint_is_stable_and_per_virt_type(inputs):
    assert inputs_fingerprint(inputs["kvm"]) == inputs_fingerprint(copy.deepcopy(inputs["kvm"]))
    assert len(inputs_fingerprint(inputs["kvm"])) == 64
    assert inputs_fingerprint(inputs["kvm"]) != inputs_fingerprint(inputs["qemu"])


def test_the_detail_is_compact_and_names_the_inputs(inputs):
    detail = compact_inputs(inputs["kvm"])
    assert tuple(detail) == INPUT_KEYS
    assert len(json.dumps(detail)) < 1000
    for key in ("host_cpu", "domcapabilities", "cpu_map"):
        assert len(detail[key]) == 64
    assert detail["emulator"] == inputs["kvm"]["emulator"] and detail["kernel"] == inputs["kvm"]["kernel"]


def _set(path: str, value: Any) -> Callable[[Dict[str, Any]], None]:
    """A change of the inputs: *path* ('emulator.size') set to *value*."""
    def change(found: Dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = found
        for key in parents:
            target = target[key]
        target[last] = value
    return change


def _edit(key: str, function: Callable[[Any], Any]) -> Callable[[Dict[str, Any]], None]:
    def change(found: Dict[str, Any]) -> None:
        found[key] = function(found[key])
    return change


# Every input, one at a time, changed the way a real host changes it.
CHANGES = {
    "virt_type": _set("virt_type", "qemu"),
    "libvirt_version": _set("libvirt_version", 9000001),
    "hypervisor_version": _set("hypervisor_version", 7002023),
    "host_cpu.arch": _set("host_cpu.arch", "i686"),
    "host_cpu.vendor": _set("host_cpu.vendor", "Intel"),
    "host_cpu.model": _set("host_cpu.model", "EPYC-Milan"),
    "host_cpu.signature": _set("host_cpu.signature", {"family": 25, "model": 1, "stepping": 2}),
    "host_cpu.microcode": _set("host_cpu.microcode", "167776666"),
    "host_cpu.features": _edit("host_cpu", lambda host: dict(host, features=host["features"] + ["ibrs"])),
    "host_cpu.topology": _set("host_cpu.topology", {"sockets": 1, "dies": 1, "cores": 4, "threads": 1}),
    "host_cpu.maxphysaddr": _set("host_cpu.maxphysaddr", {"mode": "emulate", "bits": 43}),
    "domcapabilities": _edit("domcapabilities", lambda xml: xml.replace("<feature policy='require' name='", "<feature policy='disable' name='", 1)),
    "emulator.path": _set("emulator.path", "/usr/local/bin/qemu-system-x86_64"),
    "emulator.size": _edit("emulator", lambda found: dict(found, size=found["size"] + 1)),
    "emulator.mtime_ns": _edit("emulator", lambda found: dict(found, mtime_ns=found["mtime_ns"] + 1)),
    "emulator.inode": _edit("emulator", lambda found: dict(found, inode=found["inode"] + 1)),
    "kernel.release": _set("kernel.release", "6.12.99-amd64"),
    "kernel.version": _set("kernel.version", "#1 SMP PREEMPT_DYNAMIC Debian 6.12.99-1"),
    "cpu_map.size": _edit("cpu_map", lambda files: [files[0][:1] + [files[0][1] + 1] + files[0][2:]] + files[1:]),
    "cpu_map.mtime_ns": _edit("cpu_map", lambda files: [files[0][:2] + [files[0][2] + 1] + files[0][3:]] + files[1:]),
    "cpu_map.inode": _edit("cpu_map", lambda files: [files[0][:3] + [files[0][3] + 1]] + files[1:]),
    "cpu_map.new file": _edit("cpu_map", lambda files: files + [["x86_Zen9.xml", 1, 1, 1]]),
    "data_format": _set("data_format", DATA_FORMAT + 1),
    "probe_version": _set("probe_version", PROBE_VERSION + 1),
}


def test_every_input_key_has_a_change():
    assert {name.split(".")[0] for name in CHANGES} == set(INPUT_KEYS)
    assert {name.split(".")[1] for name in CHANGES if name.startswith("host_cpu.")} == set(_facts_cache.HOST_CPU_KEYS)


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_changing_any_input_changes_the_fingerprint_and_measures_again(change, inputs, real_facts):
    before = inputs["kvm"]
    stored = _data(real_facts, "kvm", before)
    assert decide("kvm", inputs_fingerprint(before), stored, stored)[1] == "previous"
    assert decide("kvm", inputs_fingerprint(before), None, stored)[1] == "cache"
    after = copy.deepcopy(before)
    CHANGES[change](after)
    assert after != before
    fingerprint = inputs_fingerprint(after)
    assert fingerprint != inputs_fingerprint(before)
    data, source, warnings = decide("kvm", fingerprint, stored, stored)
    assert (data, source, warnings) == (None, "probed", [])
    assert compact_inputs(after) != compact_inputs(before)


def test_the_tsc_frequency_libvirt_calibrates_at_boot_is_no_input(inputs, cpu_map):
    host = parse_capabilities(_read("capabilities.xml"))["host"]
    other = dict(host, tsc={"frequency": (host.get("tsc") or {}).get("frequency", 0) + 4000, "scaling": False})
    domcaps = {"kvm": inputs["kvm"]["domcapabilities"]}
    emulators = {"kvm": inputs["kvm"]["emulator"]["path"]}
    first = collect_inputs(LOCAL, VERSIONS, host, domcaps, emulators, str(cpu_map))
    second = collect_inputs(LOCAL, VERSIONS, other, domcaps, emulators, str(cpu_map))
    assert inputs_fingerprint(first["kvm"]) == inputs_fingerprint(second["kvm"])


def test_real_changes_on_disk_are_seen(inputs, emulator, cpu_map, monkeypatch):
    host = parse_capabilities(_read("capabilities.xml"))["host"]
    domcaps = {"kvm": inputs["kvm"]["domcapabilities"]}

    def fingerprint() -> str:
        return inputs_fingerprint(collect_inputs(LOCAL, VERSIONS, host, domcaps, {"kvm": str(emulator)}, str(cpu_map))["kvm"])

    first = fingerprint()
    assert fingerprint() == first
    # A new QEMU package: a new file renamed over the old one.
    replacement = emulator.with_name("new-qemu")
    replacement.write_bytes(emulator.read_bytes())
    os.replace(replacement, emulator)
    second = fingerprint()
    assert second != first
    # A libvirt update rewriting one CPU map file.
    target = cpu_map / "x86_EPYC-Rome.xml"
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 1_000_000_000))
    third = fingerprint()
    assert third != second
    # A new kernel.
    real = os.uname()
    monkeypatch.setattr(os, "uname", lambda: os.uname_result((real.sysname, real.nodename, real.release + "+1", real.version, real.machine)))
    assert fingerprint() != third


# --- which source wins ------------------------------------------------------------------------


def test_matching_previous_facts_win(inputs, real_facts):
    fingerprint = inputs_fingerprint(inputs["kvm"])
    previous = _data(real_facts, "kvm", inputs["kvm"])
    cached = copy.deepcopy(previous)
    data, source, warnings = decide("kvm", fingerprint, previous, cached)
    assert source == "previous" and data == previous and data is not previous and warnings == []


def test_a_matching_cache_entry_is_reused_when_the_previous_facts_do_not_match(inputs, real_facts):
    fingerprint = inputs_fingerprint(inputs["kvm"])
    cached = _data(real_facts, "kvm", inputs["kvm"])
    stale = dict(cached, inputs="0" * 64)
    assert decide("kvm", fingerprint, stale, cached)[1:] == ("cache", [])
    assert decide("kvm", fingerprint, None, cached)[1:] == ("cache", [])
    assert decide("kvm", fingerprint, {"no": "expansion"}, cached)[1:] == ("cache", [])


def test_nothing_matching_measures_again(inputs, real_facts):
    fingerprint = inputs_fingerprint(inputs["kvm"])
    assert decide("kvm", fingerprint) == (None, "probed", [])
    old = dict(real_facts["virt_types"]["kvm"]["expansion"])  # facts of before this feature: no inputs
    assert decide("kvm", fingerprint, old, old) == (None, "probed", [])


@pytest.mark.parametrize("damage, words", [
    (lambda data: data["qemu"].update(supported="ffff"), "does not match its fingerprint"),
    (lambda data: data.update(fingerprint="0" * 32), "does not match its fingerprint"),
    (lambda data: data.update(format=DATA_FORMAT + 1), "format"),
    (lambda data: data.update(virt_type="qemu"), "virt type"),
    (lambda data: data.update(models=None, features={1, 2}), "does not match its fingerprint"),
])
def test_damaged_data_with_the_right_fingerprint_is_measured_again_with_a_warning(damage, words, inputs, real_facts):
    fingerprint = inputs_fingerprint(inputs["kvm"])
    data = _data(real_facts, "kvm", inputs["kvm"])
    damage(data)
    for previous, cached, where in ((data, None, "previous facts"), (None, data, "cache")):
        found, source, warnings = decide("kvm", fingerprint, previous, cached)
        assert (found, source) == (None, "probed")
        assert len(warnings) == 1 and words in warnings[0] and where in warnings[0] and "kvm" in warnings[0]


def test_the_inputs_kept_in_the_data_are_not_part_of_its_content(inputs, real_facts):
    data = _data(real_facts, "kvm", inputs["kvm"])
    data["inputs_detail"] = {"anything": "else"}
    assert reuse_problem(data, "kvm", inputs_fingerprint(inputs["kvm"])) is None


@pytest.mark.parametrize("previous", [
    None, "facts", [], {}, {"virt_types": []}, {"virt_types": {"kvm": "x"}}, {"hostcpu": "x"},
])
def test_previous_facts_of_any_shape_never_fail(previous):
    assert previous_expansions(previous) == {}


def test_previous_may_be_hostcpu_or_ansible_facts(real_facts):
    expansions = previous_expansions(real_facts)
    assert sorted(expansions) == ["kvm", "qemu"] and expansions["kvm"] is real_facts["virt_types"]["kvm"]["expansion"]
    assert previous_expansions({"hostcpu": real_facts, "other": 1}) == expansions


# --- the cache file ---------------------------------------------------------------------------


def _cache_text(entries: Dict[str, Any]) -> str:
    return json.dumps({"format": CACHE_FORMAT, "entries": entries})


def test_a_missing_cache_is_empty_without_a_warning(tmp_path):
    assert read_cache(str(tmp_path / "none" / "cpu_facts.json")) == ({}, [])


@pytest.mark.parametrize("content", [
    b"", b"{not json", b"\xff\xfe\x00", b"[]", b'{"format": 99, "entries": {}}', b'{"format": 1, "entries": []}',
    b'{"format": 1, "entries": {"": []}}', b'{"format": 1}', b"null",
])
def test_a_corrupt_cache_is_ignored_with_a_warning(tmp_path, content):
    path = tmp_path / "cpu_facts.json"
    path.write_bytes(content)
    entries, warnings = read_cache(str(path))
    assert entries == {} and len(warnings) == 1 and str(path) in warnings[0] and "ignored" in warnings[0]


def test_an_unreadable_or_huge_cache_is_ignored_with_a_warning(tmp_path, monkeypatch):
    entries, warnings = read_cache(str(tmp_path))  # a directory
    assert entries == {} and "cannot be read" in warnings[0]
    path = tmp_path / "cpu_facts.json"
    path.write_text(_cache_text({"": {}}))
    monkeypatch.setattr(_facts_key, "MAX_CACHE_BYTES", 10)
    entries, warnings = read_cache(str(path))
    assert entries == {} and "larger than" in warnings[0]


def test_write_creates_the_directory_0700_and_the_file_0600(tmp_path, inputs, real_facts):
    path = tmp_path / "new" / "sub" / "cpu_facts.json"
    data = _data(real_facts, "kvm", inputs["kvm"])
    old_umask = os.umask(0)
    try:
        assert write_cache(str(path), None, {"kvm": data}) == []
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_cache(str(path)) == ({"": {"kvm": data}}, [])
    assert os.listdir(path.parent) == ["cpu_facts.json"]


def test_an_existing_directory_keeps_its_mode(tmp_path, inputs, real_facts):
    tmp_path.chmod(0o755)
    path = tmp_path / "cpu_facts.json"
    assert write_cache(str(path), None, {"kvm": _data(real_facts, "kvm", inputs["kvm"])}) == []
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


def test_write_is_atomic(tmp_path, inputs, real_facts, monkeypatch):
    """The file is replaced by a rename of a complete temporary file: a failure leaves the old one whole."""
    path = tmp_path / "cache" / "cpu_facts.json"
    old = _data(real_facts, "kvm", inputs["kvm"])
    assert write_cache(str(path), None, {"kvm": old}) == []
    before = path.read_bytes()
    renamed = []

    def replace(source, target):
        renamed.append((source, target))
        assert json.loads(Path(source).read_text())["entries"][""]["qemu"]  # complete before it is renamed
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", replace)
    warnings = write_cache(str(path), None, {"qemu": _data(real_facts, "qemu", inputs["qemu"])})
    assert len(renamed) == 1 and renamed[0][1] == str(path) and os.path.dirname(renamed[0][0]) == str(path.parent)
    assert len(warnings) == 1 and "cannot be written" in warnings[0] and "No space left on device" in warnings[0]
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == ["cpu_facts.json"]  # no temporary file left behind


def test_an_unwritable_cache_is_a_warning(tmp_path, inputs, real_facts):
    blocker = tmp_path / "file"
    blocker.write_text("")
    warnings = write_cache(str(blocker / "cpu_facts.json"), None, {"kvm": _data(real_facts, "kvm", inputs["kvm"])})
    assert len(warnings) == 1 and "cannot be written" in warnings[0] and "cache: false" in warnings[0]
    assert write_cache(str(tmp_path / "x.json"), None, {}) == [] and not (tmp_path / "x.json").exists()


def test_entries_are_keyed_by_uri_and_virt_type(tmp_path, inputs, real_facts):
    path = str(tmp_path / "cpu_facts.json")
    kvm = _data(real_facts, "kvm", inputs["kvm"])
    qemu = _data(real_facts, "qemu", inputs["qemu"])
    assert cache_key(None) == cache_key("") == ""
    assert write_cache(path, None, {"kvm": kvm}) == []
    assert write_cache(path, "qemu:///session", {"qemu": qemu}) == []
    assert write_cache(path, "", {"qemu": qemu}) == []
    assert read_cache(path)[0] == {"": {"kvm": kvm, "qemu": qemu}, "qemu:///session": {"qemu": qemu}}
    fingerprint = inputs_fingerprint(inputs["kvm"])
    assert ExpansionReuse(None, None, path).lookup("kvm", fingerprint) == kvm
    assert ExpansionReuse("", None, path).lookup("kvm", fingerprint) == kvm
    other = ExpansionReuse("qemu:///session", None, path)
    assert other.lookup("kvm", fingerprint) is None and other.sources == {"kvm": "probed"}
    # A new entry replaces its URI's own entry of the virt type, nothing else.
    newer = dict(kvm, inputs="1" * 64)
    assert write_cache(path, None, {"kvm": newer}) == []
    assert read_cache(path)[0] == {"": {"kvm": newer, "qemu": qemu}, "qemu:///session": {"qemu": qemu}}


def test_a_corrupt_cache_is_written_again(tmp_path, inputs, real_facts):
    path = tmp_path / "cpu_facts.json"
    path.write_text("{garbage")
    reuse = ExpansionReuse(None, None, str(path))
    assert reuse.lookup("kvm", inputs_fingerprint(inputs["kvm"])) is None
    assert len(reuse.warnings) == 1 and "not JSON" in reuse.warnings[0]
    assert reuse.store({"kvm": _data(real_facts, "kvm", inputs["kvm"])}) is True
    assert read_cache(str(path))[0][""]["kvm"]["inputs"] == inputs_fingerprint(inputs["kvm"])


# --- ExpansionReuse: what cpu_facts does ------------------------------------------------------


def test_probed_data_is_stored_and_reused_next_time(tmp_path, inputs, real_facts):
    path = str(tmp_path / "cpu_facts.json")
    fingerprints = {vt: inputs_fingerprint(inputs[vt]) for vt in VIRT_TYPES}
    first = ExpansionReuse(None, None, path)
    assert [first.lookup(vt, fingerprints[vt]) for vt in VIRT_TYPES] == [None, None]
    assert first.sources == {"kvm": "probed", "qemu": "probed"}
    measured = {vt: _data(real_facts, vt, inputs[vt]) for vt in VIRT_TYPES}
    assert first.store(measured) is True and first.warnings == []
    second = ExpansionReuse(None, None, path)
    assert {vt: second.lookup(vt, fingerprints[vt]) for vt in VIRT_TYPES} == measured
    assert second.sources == {"kvm": "cache", "qemu": "cache"}
    mtime = os.stat(path).st_mtime_ns
    assert second.store(measured) is False  # nothing new: not written
    assert os.stat(path).st_mtime_ns == mtime


def test_previous_facts_are_reused_without_reading_the_cache_and_then_cached(tmp_path, inputs, real_facts):
    measured = {vt: _data(real_facts, vt, inputs[vt]) for vt in VIRT_TYPES}
    previous = copy.deepcopy(real_facts)
    for vt in VIRT_TYPES:
        previous["virt_types"][vt]["expansion"] = measured[vt]
    unreadable = ExpansionReuse(None, previous, str(tmp_path))  # a directory: reading it would warn
    assert unreadable.lookup("kvm", inputs_fingerprint(inputs["kvm"])) == measured["kvm"]
    assert unreadable.sources == {"kvm": "previous"} and unreadable.warnings == []
    path = str(tmp_path / "cpu_facts.json")
    reuse = ExpansionReuse(None, previous, path)
    assert {vt: reuse.lookup(vt, inputs_fingerprint(inputs[vt])) for vt in VIRT_TYPES} == measured
    assert reuse.store(measured) is True
    assert read_cache(path)[0] == {"": measured}


def test_without_the_cache_nothing_is_read_or_written(tmp_path, inputs, real_facts):
    path = tmp_path / "cpu_facts.json"
    path.write_text("{garbage")  # would warn if read
    reuse = ExpansionReuse(None, None, None)
    assert reuse.lookup("kvm", inputs_fingerprint(inputs["kvm"])) is None
    assert reuse.store({"kvm": _data(real_facts, "kvm", inputs["kvm"])}) is False
    assert reuse.warnings == [] and path.read_text() == "{garbage"


def test_failed_measurements_are_not_stored(tmp_path):
    reuse = ExpansionReuse(None, None, str(tmp_path / "cpu_facts.json"))
    assert reuse.lookup("kvm", "f" * 64) is None
    assert reuse.store({"kvm": None}) is False and not (tmp_path / "cpu_facts.json").exists()


# --- _probe: reused virt types start no probe guest -------------------------------------------


class FakeConnection:
    def getURI(self) -> str:  # noqa: N802 (libvirt's name)
        return LOCAL


def test_the_probe_measures_only_what_it_cannot_reuse(inputs, real_facts, emulator, cpu_map, monkeypatch):
    host = parse_capabilities(_read("capabilities.xml"))["host"]
    domcaps = {vt: _read("domcapabilities-%s.xml" % vt) for vt in VIRT_TYPES}
    entries = {vt: {"emulator": str(emulator)} for vt in VIRT_TYPES}
    monkeypatch.setattr(_probe, "collect_inputs", lambda *args: collect_inputs(*args, cpu_map_dir=str(cpu_map)))
    measured = []

    def gather(conn, wanted, capabilities_xml, domcaps, rules=None):
        measured.append(sorted(wanted))
        return {vt: copy.deepcopy(real_facts["virt_types"][vt]["expansion"]) for vt in wanted}, {}

    monkeypatch.setattr(_probe, "gather_expansion_data", gather)
    cached = _data(real_facts, "qemu", inputs["qemu"])
    asked = []

    def reuse(virt_type: str, fingerprint: str):
        asked.append((virt_type, fingerprint))
        return copy.deepcopy(cached) if virt_type == "qemu" and fingerprint == cached["inputs"] else None

    data, errors = _probe.reuse_or_gather(FakeConnection(), entries, _read("capabilities.xml"), domcaps, VERSIONS, host, reuse)
    assert measured == [["kvm"]] and errors == {}
    assert asked == [(vt, inputs_fingerprint(inputs[vt])) for vt in VIRT_TYPES]
    assert data["qemu"] == cached
    assert data["kvm"]["inputs"] == inputs_fingerprint(inputs["kvm"]) and data["kvm"]["inputs_detail"] == compact_inputs(inputs["kvm"])
    assert list(data) == ["kvm", "qemu"]


REUSE_ONLY = """
import json, sys
from pathlib import Path
from ansible_collections.hostcpu.libvirt.plugins.modules import cpu_facts
from ansible_collections.hostcpu.libvirt.plugins.module_utils import _probe
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts import build_facts, parse_capabilities

class Connection:
    def getURI(self):
        return "qemu:///system"

fixtures = Path(sys.argv[1])
facts = json.loads((fixtures / "cpu_facts.json").read_text())
capabilities = (fixtures / "capabilities.xml").read_text()
domcaps = {vt: (fixtures / ("domcapabilities-%s.xml" % vt)).read_text() for vt in ("kvm", "qemu")}
entries = {vt: {"emulator": "/usr/bin/qemu-system-x86_64"} for vt in domcaps}
data, errors = _probe.reuse_or_gather(Connection(), entries, capabilities, domcaps, {}, parse_capabilities(capabilities)["host"],
                                      lambda virt_type, inputs: dict(facts["virt_types"][virt_type]["expansion"]))
assert set(data) == set(domcaps) and not errors
build_facts(capabilities, domcaps, None, None, None, data)
print(json.dumps(sorted(name.rsplit(".", 1)[-1] for name in sys.modules if name.startswith("ansible_collections.hostcpu"))
                 + [name for name in ("concurrent.futures", "secrets") if name in sys.modules]))
"""


def test_reusing_the_data_loads_none_of_the_measuring_code():
    """An unchanged host's run compiles none of what only measuring needs (the module's payload ships it as source)."""
    collections_root = Path(os.path.abspath(_facts_cache.__file__)).parents[5]  # holds ansible_collections/
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(collections_root), os.environ.get("PYTHONPATH")))))
    found = subprocess.run([sys.executable, "-c", REUSE_ONLY, str(FIXTURES)], capture_output=True, text=True, check=True, env=env)
    loaded = set(json.loads(found.stdout))
    assert "_facts_cache" in loaded and "_probe" in loaded
    assert not loaded & {"_probe_qemu", "_expansion_data", "_cpu_map", "_expansion", "concurrent.futures", "secrets"}


def test_only_the_most_recently_written_uris_are_kept(tmp_path, monkeypatch):
    """A daemon on a socket in a temporary directory has a new URI every run: its entries do not pile up."""
    monkeypatch.setattr(_facts_cache, "MAX_CACHE_URIS", 3)
    path = str(tmp_path / "cpu_facts.json")
    for number in range(5):
        assert write_cache(path, "qemu:///session?socket=/tmp/run-%d/sock" % number, {"qemu": {"n": number}}) == []
    assert list(read_cache(path)[0]) == ["qemu:///session?socket=/tmp/run-%d/sock" % number for number in (2, 3, 4)]
    assert write_cache(path, "qemu:///session?socket=/tmp/run-2/sock", {"kvm": {"n": 9}}) == []
    entries = read_cache(path)[0]
    assert list(entries) == ["qemu:///session?socket=/tmp/run-%d/sock" % number for number in (3, 4, 2)]
    assert entries["qemu:///session?socket=/tmp/run-2/sock"] == {"qemu": {"n": 2}, "kvm": {"n": 9}}
