# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""hostcpu.libvirt.cpu_facts through real Ansible against the real libvirtd.

What the module reports is compared with what libvirt-python says in the test itself, and
verify_modes with guests the test really starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest
from lxml import etree

from conftest import URI, libvirt, module_task, run_playbook

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "tests" / "unit" / "fixtures" / "real"
ARCH = "x86_64"
VERIFY_PREFIX = "hostcpu-verify-"
GUEST_LOG_DIR = Path("/var/log/libvirt/qemu")


def cpu_facts(tmp_path: Path, args: Dict[str, Any], extra=None, **options: Any) -> Dict[str, Any]:
    return run_playbook([module_task("cpu_facts", args, **options)], tmp_path, extra)[0]


def hostcpu(result: Dict[str, Any]) -> Dict[str, Any]:
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is False
    return result["ansible_facts"]["hostcpu"]


def domcaps_root(conn, virt_type: str):
    return etree.fromstring(conn.getDomainCapabilities(None, ARCH, None, virt_type, 0).encode())


def feature_list(element):
    return [{"name": f.get("name"), "policy": f.get("policy")} for f in element.findall("feature")]


@pytest.fixture(scope="module")
def facts(tmp_path_factory) -> Dict[str, Any]:
    return hostcpu(cpu_facts(tmp_path_factory.mktemp("facts"), {}))


@pytest.fixture(scope="module")
def verified(tmp_path_factory) -> Dict[str, Any]:
    facts = hostcpu(cpu_facts(tmp_path_factory.mktemp("verify"), {"verify_modes": True}))
    return dict(facts, _logs_before=LOGS_BEFORE_VERIFY)


def _verify_logs() -> set:
    if not GUEST_LOG_DIR.is_dir():
        return set()
    return {p.name for p in GUEST_LOG_DIR.iterdir() if p.name.startswith(VERIFY_PREFIX)}


# Logs an earlier, interrupted run left on this machine are not this run's to answer for.
LOGS_BEFORE_VERIFY = _verify_logs()


# --- the facts equal what libvirt says --------------------------------------------------------


def test_host_cpu_is_libvirts(conn, facts):
    cpu = etree.fromstring(conn.getCapabilities().encode()).find("host/cpu")
    assert facts["arch"] == cpu.findtext("arch") == ARCH
    assert facts["vendor"] == cpu.findtext("vendor")
    assert facts["model"] == cpu.findtext("model")
    assert facts["features"] == [f.get("name") for f in cpu.findall("feature")]
    assert facts["signature"]["family"] == int(cpu.find("signature").get("family"))
    assert facts["topology"]["cores"] == int(cpu.find("topology").get("cores"))


def test_versions_are_libvirts(conn, facts):
    def text(number: int) -> str:
        return "%d.%d.%d" % (number // 1000000, number // 1000 % 1000, number % 1000)
    assert facts["libvirt_version"] == text(conn.getLibVersion())
    assert facts["hypervisor_version"] == text(conn.getVersion())


def test_virt_types_are_the_usable_ones(facts, virt_types):
    assert list(facts["virt_types"]) == virt_types
    assert "qemu" in facts["virt_types"]
    assert set(facts["unavailable_virt_types"]) == {"kvm", "qemu"} - set(virt_types)


@pytest.mark.parametrize("virt_type", ["kvm", "qemu"])
def test_domcapabilities_are_libvirts(conn, facts, virt_types, virt_type):
    if virt_type not in virt_types:
        pytest.skip("virt type %s is not usable on this machine" % virt_type)
    root = domcaps_root(conn, virt_type)
    entry = facts["virt_types"][virt_type]
    assert entry["domain_type"] == virt_type
    assert entry["emulator"] == root.findtext("path")
    assert entry["machine"] == root.findtext("machine")
    assert entry["libvirt_version"] == facts["libvirt_version"]
    for mode in entry["modes"]:
        assert entry["modes"][mode]["supported"] == bool(root.xpath("cpu/mode[@name='%s' and @supported='yes']" % mode))
    host_model = root.xpath("cpu/mode[@name='host-model']")[0]
    cpu = entry["modes"]["host-model"]["cpu"]
    assert cpu["model"]["name"] == host_model.findtext("model")
    assert cpu["vendor"] == host_model.findtext("vendor")
    assert cpu["features"] == feature_list(host_model)
    usable = {m["name"] for m in entry["modes"]["custom"]["models"] if m["usable"]}
    assert usable == set(root.xpath("cpu/mode[@name='custom']/model[@usable='yes']/text()"))
    assert usable, "libvirt reports no usable named model"


@pytest.mark.parametrize("virt_type", ["kvm", "qemu"])
def test_expansions_are_libvirts(conn, facts, virt_types, virt_type):
    if virt_type not in virt_types:
        pytest.skip("virt type %s is not usable on this machine" % virt_type)
    entry = facts["virt_types"][virt_type]
    host_model = domcaps_root(conn, virt_type).xpath("cpu/mode[@name='host-model']")[0]
    cpu_xml = "<cpu mode='custom' match='exact'><model fallback='forbid'>%s</model><vendor>%s</vendor>%s</cpu>" % (
        host_model.findtext("model"), host_model.findtext("vendor"),
        "".join("<feature policy='%(policy)s' name='%(name)s'/>" % f for f in feature_list(host_model)))
    flags = libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES
    for key, extra in (("host_model_expanded", 0), ("host_model_migratable", libvirt.VIR_CONNECT_BASELINE_CPU_MIGRATABLE)):
        expected = etree.fromstring(conn.baselineHypervisorCPU(entry["emulator"], ARCH, entry["machine"], virt_type,
                                                               [cpu_xml], flags | extra).encode())
        assert entry[key]["model"]["name"] == expected.findtext("model")
        assert entry[key]["features"] == feature_list(expected), key
    dropped = {f["name"] for f in entry["host_model_expanded"]["features"]} - \
        {f["name"] for f in entry["host_model_migratable"]["features"]}
    assert set(entry["non_migratable_features"]) == dropped


def test_kvm_and_qemu_give_different_cpus(facts, virt_types):
    if "kvm" not in virt_types:
        pytest.skip("no usable /dev/kvm: only one virt type here")
    kvm, qemu = facts["virt_types"]["kvm"], facts["virt_types"]["qemu"]
    assert kvm["fingerprint"] != qemu["fingerprint"]
    assert kvm["host_model_migratable"]["model"] != qemu["host_model_migratable"]["model"] or \
        kvm["host_model_migratable"]["features"] != qemu["host_model_migratable"]["features"]
    assert {f["name"] for f in kvm["host_model_expanded"]["features"]} != \
        {f["name"] for f in qemu["host_model_expanded"]["features"]}


def test_fingerprint_repeats(facts, tmp_path):
    again = hostcpu(cpu_facts(tmp_path, {}))
    assert {vt: e["fingerprint"] for vt, e in again["virt_types"].items()} == \
        {vt: e["fingerprint"] for vt, e in facts["virt_types"].items()}


def test_virt_types_option_limits_the_probe(tmp_path):
    limited = hostcpu(cpu_facts(tmp_path, {"virt_types": ["qemu"]}))
    assert list(limited["virt_types"]) == ["qemu"]


def test_check_mode_reads_the_same(facts, tmp_path):
    checked = hostcpu(cpu_facts(tmp_path, {}, check_mode=True))
    assert checked == facts


def test_offline_xml_gives_the_same_facts(conn, facts, virt_types, tmp_path):
    args = {"capabilities_xml": conn.getCapabilities(),
            "domain_capabilities_xml": {vt: conn.getDomainCapabilities(None, ARCH, None, vt, 0) for vt in virt_types}}
    offline = hostcpu(cpu_facts(tmp_path, args))
    for entry in offline["virt_types"].values():
        assert entry["host_model_expanded"] is None and entry["host_model_migratable"] is None
    assert offline["libvirt_version"] is None
    # expansion: measured through a probe guest, so only with a connection
    strip = ("host_model_expanded", "host_model_migratable", "non_migratable_features", "libvirt_version", "expansion",
             "expansion_source")
    assert {vt: {k: v for k, v in e.items() if k not in strip} for vt, e in offline["virt_types"].items()} == \
        {vt: {k: v for k, v in e.items() if k not in strip} for vt, e in facts["virt_types"].items()}
    assert offline["features"] == facts["features"] and offline["model"] == facts["model"]


# --- verify_modes against guests started by the test -----------------------------------------


def test_verify_modes_reports_every_supported_mode(verified):
    for virt_type, entry in verified["virt_types"].items():
        for mode in ("host-passthrough", "maximum", "host-model"):
            result = entry["modes"][mode].get("verified")
            assert (result is not None) == entry["modes"][mode]["supported"], (virt_type, mode)
            if result is None:
                continue
            assert verified["verify_modes"][virt_type][mode] in ("starts", "starts_with_fix", "fails")
            if result["starts"]:
                assert result["error"] is None and result["live_cpu"]
            else:
                assert result["error"] and result["live_cpu"] is None
            if result["fix"]:
                assert result["fix"]["live_cpu"], (virt_type, mode)
        assert "verified" not in entry["modes"]["custom"]


def test_verify_modes_leaves_nothing_behind(conn, verified):
    assert not [d.name() for d in conn.listAllDomains() if d.name().startswith(VERIFY_PREFIX)]
    assert not _verify_logs() - verified["_logs_before"]


def _cpu_block(mode: str, features) -> str:
    inner = "".join("<feature policy='%(policy)s' name='%(name)s'/>" % f for f in features or [])
    return "<cpu mode='%s'>%s</cpu>" % (mode, inner)


def _start(domains, conn, suffix: str, virt_type: str, entry, mode: str, features=None):
    """(started, live <cpu> as text) of a real paused guest the test defines and removes."""
    dom = domains.define(suffix, virt_type, _cpu_block(mode, features), machine=entry["machine"])
    try:
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
    except libvirt.libvirtError as exc:
        return False, exc.get_error_message()
    return True, dom.XMLDesc(0)


@pytest.mark.parametrize("virt_type", ["kvm", "qemu"])
def test_verify_modes_agrees_with_a_real_start(conn, domains, verified, virt_types, virt_type):
    """host-model of each virt type: the reported outcome, error and live CPU match a guest started here."""
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import cpu_from_xml, ordered

    if virt_type not in virt_types:
        pytest.skip("virt type %s is not usable on this machine" % virt_type)
    entry = verified["virt_types"][virt_type]
    result = entry["modes"]["host-model"]["verified"]
    started, output = _start(domains, conn, "plain", virt_type, entry, "host-model")
    assert started == result["starts"], output
    if started:
        assert ordered(cpu_from_xml(output)) == result["live_cpu"]
        return
    assert result["error"].split(":")[0] in output
    if result["fix"] is None:
        return
    started, output = _start(domains, conn, "fixed", virt_type, entry, "host-model", result["fix"]["features"])
    assert started, output
    assert ordered(cpu_from_xml(output)) == result["fix"]["live_cpu"]


def test_kvm_host_cpu_modes_start_or_the_failure_is_explained(verified, virt_types):
    """Nested KVM on some hosts (AMD EPYC) cannot set MSR 0x10a: disabling arch-capabilities is the fix.
    Where KVM starts host-model and host-passthrough as they are (Intel here), verify_modes says so."""
    if "kvm" not in virt_types:
        pytest.skip("no usable /dev/kvm")
    results = {mode: verified["virt_types"]["kvm"]["modes"][mode]["verified"] for mode in ("host-model", "host-passthrough")}
    failing = {mode: r for mode, r in results.items() if not r["starts"]}
    for mode, result in results.items():
        if result["starts"]:
            assert verified["verify_modes"]["kvm"][mode] == "starts", (mode, verified["verify_modes"]["kvm"])
            assert result["error"] is None and result["fix"] is None, (mode, result)
    for mode, result in failing.items():
        assert "MSR 0x10a" in result["error"], (mode, result["error"])
        assert result["fix"]["features"] == [{"name": "arch-capabilities", "policy": "disable"}], mode
        assert verified["verify_modes"]["kvm"][mode] == "starts_with_fix"


# --- one clear message per bad input ----------------------------------------------------------


def failure(result: Dict[str, Any]) -> str:
    assert result.get("failed") is True, result
    assert "Traceback" not in (result.get("module_stderr") or ""), result
    return result["msg"]


BAD_INPUTS = {
    "unknown virt type": ({"virt_types": ["kvm", "xen"]}, ["xen", "kvm, qemu"]),
    "uri refused": ({"uri": "qemu+tcp://127.0.0.1:1/system"},
                    ["cannot connect to libvirt at 'qemu+tcp://127.0.0.1:1/system'", "option 'uri'"]),
    "uri without a daemon": ({"uri": "test:///nonexistent-file"},
                             ["cannot connect to libvirt at 'test:///nonexistent-file'", "option 'uri'"]),
    "malformed capabilities": ({"capabilities_xml": "<capabilities><host>"}, ["capabilities_xml is not well-formed XML"]),
    "malformed domcapabilities": ({"domain_capabilities_xml": {"kvm": "<domainCapabilities>"}},
                                  ["domain capabilities of 'kvm'", "not well-formed XML"]),
    "hostile XML": ({"domain_capabilities_xml": {"kvm": "<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/shadow'>]><domainCapabilities/>"}},
                    ["contains a DOCTYPE or ENTITY declaration"]),
    "unknown offline virt type": ({"domain_capabilities_xml": {"lxc": "<domainCapabilities/>"}},
                                  ["unknown virt type 'lxc'; valid virt types are: kvm, qemu"]),
    "offline under the wrong key": ({"domain_capabilities_xml": {"kvm": (REAL / "domcapabilities-qemu.xml").read_text()}},
                                    ["put them under the key 'qemu'"]),
    "offline not text": ({"domain_capabilities_xml": {"kvm": 5}}, ["domain_capabilities_xml.kvm must be the XML text"]),
    "uri and offline": ({"uri": URI, "capabilities_xml": "<capabilities/>"}, ["uri cannot be combined with capabilities_xml"]),
    "verify offline": ({"verify_modes": True, "domain_capabilities_xml": {}}, ["verify_modes needs a libvirt connection"]),
}


@pytest.fixture(scope="module")
def bad_input_results(tmp_path_factory) -> Dict[str, Dict[str, Any]]:
    """Every bad input in one ansible-playbook run (each task ignore_errors)."""
    names = list(BAD_INPUTS)
    results = run_playbook([module_task("cpu_facts", BAD_INPUTS[name][0]) for name in names],
                           tmp_path_factory.mktemp("bad"))
    return dict(zip(names, results))


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_gets_one_clear_message(bad_input_results, name):
    message = failure(bad_input_results[name])
    for words in BAD_INPUTS[name][1]:
        assert words in message, message


@pytest.fixture(scope="module")
def python_without_libvirt(tmp_path_factory) -> Path:
    """A real interpreter without libvirt-python (a venv without site packages), with lxml linked in."""
    import lxml

    venv = tmp_path_factory.mktemp("nolibvirt") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    os.symlink(os.path.dirname(lxml.__file__), os.path.join(site, "lxml"))
    probe = subprocess.run([str(python), "-c", "import lxml.etree\ntry:\n import libvirt\nexcept ImportError:\n print('no libvirt')"],
                           capture_output=True, text=True, env={"PATH": os.environ["PATH"]}, check=False)
    assert probe.stdout.strip() == "no libvirt", probe.stderr
    return python


def test_missing_libvirt_python(tmp_path, python_without_libvirt):
    result = cpu_facts(tmp_path, {}, ["-e", "ansible_python_interpreter=%s" % python_without_libvirt])
    message = failure(result)
    assert "libvirt-python" in message and "required" in message


def test_offline_input_needs_no_libvirt_python(tmp_path, python_without_libvirt):
    args = {"capabilities_xml": (REAL / "capabilities.xml").read_text(),
            "domain_capabilities_xml": {"kvm": (REAL / "domcapabilities-kvm.xml").read_text()}}
    facts = hostcpu(cpu_facts(tmp_path, args, ["-e", "ansible_python_interpreter=%s" % python_without_libvirt]))
    assert facts["virt_types"]["kvm"]["modes"]["host-model"]["cpu"]["model"]["name"] == "kvm64"


def test_missing_lxml(tmp_path, python_without_libvirt):
    bare = python_without_libvirt.parent.parent.parent / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    args = {"domain_capabilities_xml": {"kvm": (REAL / "domcapabilities-kvm.xml").read_text()}}
    message = failure(cpu_facts(tmp_path, args, ["-e", "ansible_python_interpreter=%s" % (bare / "bin" / "python")]))
    assert "lxml" in message and "required" in message
