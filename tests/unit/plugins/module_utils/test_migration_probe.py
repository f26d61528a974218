# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_migration_probe: the probe guest's XML, reading what libvirt and QEMU answered, and the outcome.

The data is what libvirt and QEMU printed on the testbed (make testbed) for a probe guest with the
fleet CPU of the four hosts (pentium3 + 25 features, kvm, pc-i440fx-5.2), started paused on
libvirt 9.0 / QEMU 7.2 (testbed-bookworm) and migrated live to libvirt 12.8 / QEMU 11.1
(testbed-sid): once with 1 vCPU (kept), once with 1 socket x 2 cores (the guest gained ht and
cmp_legacy in its CPUID on the way, and libvirt 12.8 added clusters='1' to the topology). The
feature words are QMP ``qom-get feature-words`` replies of the first vCPU, written as
[cpuid-input-eax, cpuid-input-ecx (None: not in the reply), cpuid-register, features].
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List

import pytest

from ansible_collections.hostcpu.libvirt.plugins.module_utils import _migration_probe as probe
from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import cpu_from_xml, ordered
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError
from ansible_collections.hostcpu.libvirt.plugins.module_utils._xml import parse_xml

# virsh dumpxml of the probe guest on libvirt 9.0 (its XML is probe_domain_xml's).
DOMAIN_9_0 = """\
<domain type='kvm' id='375'>
  <name>hostcpu-probe-capture-6146c6</name>
  <uuid>2e22bc0e-ff32-4c4b-b588-5aa2cee081cb</uuid>
  <description>hostcpu.libvirt.migration_probe: a transient probe guest, destroyed at the end of the task</description>
  <memory unit='KiB'>32768</memory>
  <currentMemory unit='KiB'>32768</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <resource>
    <partition>/machine</partition>
  </resource>
  <os>
    <type arch='x86_64' machine='pc-i440fx-5.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <cpu mode='custom' match='exact' check='full'>
    <model fallback='forbid'>pentium3</model>
    <vendor>AMD</vendor>
    <feature policy='require' name='apic'/>
    <feature policy='require' name='clflush'/>
    <feature policy='require' name='sse2'/>
    <feature policy='require' name='cx16'/>
    <feature policy='require' name='x2apic'/>
    <feature policy='require' name='tsc-deadline'/>
    <feature policy='require' name='hypervisor'/>
    <feature policy='require' name='arat'/>
    <feature policy='require' name='tsc_adjust'/>
    <feature policy='require' name='clflushopt'/>
    <feature policy='require' name='clwb'/>
    <feature policy='require' name='umip'/>
    <feature policy='require' name='gfni'/>
    <feature policy='require' name='syscall'/>
    <feature policy='require' name='nx'/>
    <feature policy='require' name='mmxext'/>
    <feature policy='require' name='fxsr_opt'/>
    <feature policy='require' name='lm'/>
    <feature policy='require' name='lahf_lm'/>
    <feature policy='require' name='cr8legacy'/>
    <feature policy='require' name='misalignsse'/>
    <feature policy='require' name='3dnowprefetch'/>
    <feature policy='require' name='osvw'/>
    <feature policy='require' name='clzero'/>
    <feature policy='require' name='xsaveerptr'/>
  </cpu>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' index='0' model='piix3-uhci'>
      <alias name='usb'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x2'/>
    </controller>
    <controller type='pci' index='0' model='pci-root'>
      <alias name='pci.0'/>
    </controller>
    <input type='mouse' bus='ps2'>
      <alias name='input0'/>
    </input>
    <input type='keyboard' bus='ps2'>
      <alias name='input1'/>
    </input>
    <audio id='1' type='none'/>
    <memballoon model='none'/>
  </devices>
  <seclabel type='dynamic' model='dac' relabel='yes'>
    <label>+64055:+64055</label>
    <imagelabel>+64055:+64055</imagelabel>
  </seclabel>
</domain>
"""

# Its <cpu> after the migration, on libvirt 12.8.
CPU_12_8 = """\
<cpu mode='custom' match='exact' check='full'>
    <model fallback='forbid'>pentium3</model>
    <vendor>AMD</vendor>
    <feature policy='require' name='apic'/>
    <feature policy='require' name='clflush'/>
    <feature policy='require' name='sse2'/>
    <feature policy='require' name='cx16'/>
    <feature policy='require' name='x2apic'/>
    <feature policy='require' name='tsc-deadline'/>
    <feature policy='require' name='hypervisor'/>
    <feature policy='require' name='arat'/>
    <feature policy='require' name='tsc_adjust'/>
    <feature policy='require' name='clflushopt'/>
    <feature policy='require' name='clwb'/>
    <feature policy='require' name='umip'/>
    <feature policy='require' name='gfni'/>
    <feature policy='require' name='syscall'/>
    <feature policy='require' name='nx'/>
    <feature policy='require' name='mmxext'/>
    <feature policy='require' name='fxsr_opt'/>
    <feature policy='require' name='lm'/>
    <feature policy='require' name='lahf_lm'/>
    <feature policy='require' name='cr8legacy'/>
    <feature policy='require' name='misalignsse'/>
    <feature policy='require' name='3dnowprefetch'/>
    <feature policy='require' name='osvw'/>
    <feature policy='require' name='clzero'/>
    <feature policy='require' name='xsaveerptr'/>
  </cpu>"""

# The 2-core probe guest's <cpu> on libvirt 9.0 and, after the migration, on libvirt 12.8.
CPU_9_0_2CORES = """\
<cpu mode='custom' match='exact' check='full'>
    <model fallback='forbid'>pentium3</model>
    <vendor>AMD</vendor>
    <topology sockets='1' dies='1' cores='2' threads='1'/>
    <feature policy='require' name='apic'/>
    <feature policy='require' name='clflush'/>
    <feature policy='require' name='sse2'/>
    <feature policy='require' name='cx16'/>
    <feature policy='require' name='x2apic'/>
    <feature policy='require' name='tsc-deadline'/>
    <feature policy='require' name='hypervisor'/>
    <feature policy='require' name='arat'/>
    <feature policy='require' name='tsc_adjust'/>
    <feature policy='require' name='clflushopt'/>
    <feature policy='require' name='clwb'/>
    <feature policy='require' name='umip'/>
    <feature policy='require' name='gfni'/>
    <feature policy='require' name='syscall'/>
    <feature policy='require' name='nx'/>
    <feature policy='require' name='mmxext'/>
    <feature policy='require' name='fxsr_opt'/>
    <feature policy='require' name='lm'/>
    <feature policy='require' name='lahf_lm'/>
    <feature policy='require' name='cr8legacy'/>
    <feature policy='require' name='misalignsse'/>
    <feature policy='require' name='3dnowprefetch'/>
    <feature policy='require' name='osvw'/>
    <feature policy='require' name='clzero'/>
    <feature policy='require' name='xsaveerptr'/>
  </cpu>"""

CPU_12_8_2CORES = """\
<cpu mode='custom' match='exact' check='full'>
    <model fallback='forbid'>pentium3</model>
    <vendor>AMD</vendor>
    <topology sockets='1' dies='1' clusters='1' cores='2' threads='1'/>
    <feature policy='require' name='apic'/>
    <feature policy='require' name='clflush'/>
    <feature policy='require' name='sse2'/>
    <feature policy='require' name='cx16'/>
    <feature policy='require' name='x2apic'/>
    <feature policy='require' name='tsc-deadline'/>
    <feature policy='require' name='hypervisor'/>
    <feature policy='require' name='arat'/>
    <feature policy='require' name='tsc_adjust'/>
    <feature policy='require' name='clflushopt'/>
    <feature policy='require' name='clwb'/>
    <feature policy='require' name='umip'/>
    <feature policy='require' name='gfni'/>
    <feature policy='require' name='syscall'/>
    <feature policy='require' name='nx'/>
    <feature policy='require' name='mmxext'/>
    <feature policy='require' name='fxsr_opt'/>
    <feature policy='require' name='lm'/>
    <feature policy='require' name='lahf_lm'/>
    <feature policy='require' name='cr8legacy'/>
    <feature policy='require' name='misalignsse'/>
    <feature policy='require' name='3dnowprefetch'/>
    <feature policy='require' name='osvw'/>
    <feature policy='require' name='clzero'/>
    <feature policy='require' name='xsaveerptr'/>
  </cpu>"""

# query-cpus-fast of the 2-core guest on QEMU 7.2.
CPUS_2CORES = {"return": [
    {"thread-id": 13388, "props": {"core-id": 0, "thread-id": 0, "socket-id": 0}, "qom-path": "/machine/unattached/device[0]",
     "cpu-index": 0, "target": "x86_64"},
    {"thread-id": 13389, "props": {"core-id": 1, "thread-id": 0, "socket-id": 0}, "qom-path": "/machine/unattached/device[2]",
     "cpu-index": 1, "target": "x86_64"}], "id": "libvirt-410"}

# QEMU 7.2's answer to a qom-get of a property that does not exist.
QMP_ERROR = {"id": "libvirt-381", "error": {"class": "GenericError", "desc": "Property 'pc-i440fx-5.2-machine.nope' not found"}}

# libvirt 9.0 refusing the incoming migration of a TCG host-model guest from the testbed-bookworm to testbed-trixie.
PCOMMIT = "operation failed: guest CPU doesn't match specification: missing features: pcommit"

# The feature words of the first vCPU: 1 vCPU on QEMU 7.2 and on QEMU 11.1 after the migration; the
# same for the 2-core guest.
WORDS_9_0 = [
    [13, 1, "EDX", 0], [13, 1, "ECX", 0], [18, 1, "EAX", 0], [18, 0, "EBX", 0], [18, 0, "EAX", 0],
    [20, 0, "ECX", 0], [13, 0, "EDX", 0], [13, 0, "EAX", 0], [6, None, "EAX", 4], [13, 1, "EAX", 0],
    [2147483658, None, "EDX", 0], [1073741825, None, "EDX", 0], [1073741825, None, "EAX", 16777339],
    [3221225473, None, "EDX", 0], [2147483656, None, "EBX", 5], [2147483655, None, "EDX", 0],
    [2147483649, None, "ECX", 913], [2147483649, None, "EDX", 601095167], [7, 1, "EAX", 0], [7, 0, "EDX", 0],
    [7, 0, "ECX", 260], [7, 0, "EBX", 25165826], [1, None, "ECX", 2166366208], [1, None, "EDX", 126614527]
]

WORDS_12_8 = [
    [36, 1, "ECX", 0], [30, 1, "EAX", 0], [41, 0, "EBX", 0], [36, 0, "EBX", 0], [7, 2, "EDX", 0], [7, 1, "EDX", 0],
    [7, 1, "ECX", 0], [13, 1, "EDX", 0], [13, 1, "ECX", 0], [18, 1, "EAX", 0], [18, 0, "EBX", 0],
    [18, 0, "EAX", 0], [20, 0, "ECX", 0], [13, 0, "EDX", 0], [13, 0, "EAX", 0], [6, None, "EAX", 4],
    [13, 1, "EAX", 0], [2147483658, None, "EDX", 0], [1073741825, None, "EDX", 0],
    [1073741825, None, "EAX", 16777339], [3221225473, None, "EDX", 0], [2147483682, None, "EAX", 0],
    [2147483681, None, "ECX", 0], [2147483681, None, "EBX", 0], [2147483681, None, "EAX", 0],
    [2147483656, None, "EBX", 5], [2147483655, None, "EDX", 0], [2147483655, None, "EBX", 0],
    [2147483649, None, "ECX", 913], [2147483649, None, "EDX", 601095167], [7, 1, "EAX", 0], [7, 0, "EDX", 0],
    [7, 0, "ECX", 260], [7, 0, "EBX", 25165826], [1, None, "ECX", 2166366208], [1, None, "EDX", 126614527]
]

WORDS_9_0_2CORES = [
    [13, 1, "EDX", 0], [13, 1, "ECX", 0], [18, 1, "EAX", 0], [18, 0, "EBX", 0], [18, 0, "EAX", 0],
    [20, 0, "ECX", 0], [13, 0, "EDX", 0], [13, 0, "EAX", 0], [6, None, "EAX", 4], [13, 1, "EAX", 0],
    [2147483658, None, "EDX", 0], [1073741825, None, "EDX", 0], [1073741825, None, "EAX", 16777339],
    [3221225473, None, "EDX", 0], [2147483656, None, "EBX", 5], [2147483655, None, "EDX", 0],
    [2147483649, None, "ECX", 913], [2147483649, None, "EDX", 601095167], [7, 1, "EAX", 0], [7, 0, "EDX", 0],
    [7, 0, "ECX", 260], [7, 0, "EBX", 25165826], [1, None, "ECX", 2166366208], [1, None, "EDX", 126614527]
]

WORDS_12_8_2CORES = [
    [36, 1, "ECX", 0], [30, 1, "EAX", 0], [41, 0, "EBX", 0], [36, 0, "EBX", 0], [7, 2, "EDX", 0], [7, 1, "EDX", 0],
    [7, 1, "ECX", 0], [13, 1, "EDX", 0], [13, 1, "ECX", 0], [18, 1, "EAX", 0], [18, 0, "EBX", 0],
    [18, 0, "EAX", 0], [20, 0, "ECX", 0], [13, 0, "EDX", 0], [13, 0, "EAX", 0], [6, None, "EAX", 4],
    [13, 1, "EAX", 0], [2147483658, None, "EDX", 0], [1073741825, None, "EDX", 0],
    [1073741825, None, "EAX", 16777339], [3221225473, None, "EDX", 0], [2147483682, None, "EAX", 0],
    [2147483681, None, "ECX", 0], [2147483681, None, "EBX", 0], [2147483681, None, "EAX", 0],
    [2147483656, None, "EBX", 5], [2147483655, None, "EDX", 0], [2147483655, None, "EBX", 0],
    [2147483649, None, "ECX", 915], [2147483649, None, "EDX", 601095167], [7, 1, "EAX", 0], [7, 0, "EDX", 0],
    [7, 0, "ECX", 260], [7, 0, "EBX", 25165826], [1, None, "ECX", 2166366208], [1, None, "EDX", 395049983]
]


HT = "+0x1.0.EDX[28]"          # CPUID 1 EDX bit 28: ht
CMP_LEGACY = "+0x80000001.0.ECX[1]"  # CPUID 0x80000001 ECX bit 1: cmp_legacy


def reply(words: List[List[Any]]) -> Dict[str, Any]:
    """The QMP reply the compact words were written from."""
    entries = []
    for eax, ecx, register, features in words:
        entry: Dict[str, Any] = {"cpuid-register": register, "cpuid-input-eax": eax, "features": features}
        if ecx is not None:
            entry["cpuid-input-ecx"] = ecx
        entries.append(entry)
    return {"return": entries, "id": "libvirt-411"}


def fleet_cpu() -> Dict[str, Any]:
    return cpu_from_xml(DOMAIN_9_0)


def good_params(**changes: Any) -> Dict[str, Any]:
    params = {"source_uri": "qemu+ssh://root@hv1/system", "dest_uri": "qemu+ssh://root@hv2/system", "cpu": None,
              "virt_type": "kvm", "machine": "pc-i440fx-5.2", "emulator": "/usr/bin/qemu-system-x86_64", "arch": "x86_64",
              "memory_mib": 32, "vcpus": 1, "dest_address": "10.0.0.2", "source_address": "10.0.0.1", "port": 49152,
              "source_port": None, "back": True, "name_prefix": "hostcpu-probe-", "timeout": 120}
    params.update(changes)
    return params


# --- the probe guest ---------------------------------------------------------------------------

def test_the_probe_guest_is_what_libvirt_started():
    """What libvirt printed for the started guest keeps what probe_domain_xml asked for."""
    ours = parse_xml(probe.probe_domain_xml("hostcpu-probe-capture-6146c6", fleet_cpu(), "kvm", "pc-i440fx-5.2",
                                            "/usr/bin/qemu-system-x86_64"))
    live = parse_xml(DOMAIN_9_0)
    for path in ("name", "description", "os/type", "on_crash", "devices/emulator"):
        assert ours.findtext(path) == live.findtext(path), path
    assert ours.get("type") == live.get("type") == "kvm"
    assert ours.find("os/type").attrib == live.find("os/type").attrib
    assert live.findtext("memory") == "32768" and ours.findtext("memory") == "32" and ours.find("memory").get("unit") == "MiB"
    assert ours.findtext("vcpu") == live.findtext("vcpu") == "1"
    assert live.find("devices/memballoon").get("model") == ours.find("devices/memballoon").get("model") == "none"
    assert live.findtext("description") == probe.DESCRIPTION
    assert probe.live_cpu(DOMAIN_9_0) == ordered(cpu_from_xml(probe.probe_domain_xml(
        "x", fleet_cpu(), "kvm", "pc-i440fx-5.2", "/usr/bin/qemu-system-x86_64")))


def test_the_probe_guest_has_no_disk_no_network_and_a_transient_life():
    root = parse_xml(probe.probe_domain_xml("p", {}, "qemu", "pc-q35-7.2", "/usr/bin/qemu-system-x86_64", vcpus=2, memory_mib=64))
    assert [child.tag for child in root.find("devices")] == ["emulator", "memballoon"]
    assert root.find("cpu") is None, "no CPU given: no <cpu> (QEMU's default CPU)"
    assert root.findtext("vcpu") == "2" and root.findtext("memory") == "64"
    assert root.findtext("on_crash") == "destroy"


def test_values_are_escaped_in_the_probe_guest():
    root = parse_xml(probe.probe_domain_xml("p", {}, "kvm", "pc", "/opt/q&emu/bin/qemu"))
    assert root.findtext("devices/emulator") == "/opt/q&emu/bin/qemu"


def test_the_live_cpu_of_the_captured_guests():
    cpu = probe.live_cpu(DOMAIN_9_0)
    assert cpu["model"] == {"name": "pentium3", "fallback": "forbid"} and cpu["check"] == "full"
    assert len(cpu["features"]) == 25
    assert probe.live_cpu("<domain type='kvm'><name>x</name></domain>") == {}
    with pytest.raises(CPUError, match="DOCTYPE or ENTITY"):
        probe.live_cpu('<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><domain>&x;</domain>')


def test_host_uuid_of_capabilities():
    from pathlib import Path
    capabilities = (Path(__file__).resolve().parents[2] / "fixtures" / "real" / "capabilities.xml").read_text()
    assert probe.host_uuid(capabilities) == "11120ab7-3961-4723-aa56-4a62949ef2a8"
    assert probe.host_uuid("<capabilities><host/></capabilities>") is None


# --- CPUID through QMP -----------------------------------------------------------------------------

def test_the_first_vcpu_path():
    assert probe.first_vcpu_path(CPUS_2CORES) == "/machine/unattached/device[0]"
    with pytest.raises(probe.ProbeDataError, match="no vCPU"):
        probe.first_vcpu_path({"return": []})


@pytest.mark.parametrize("answer, words", [
    (QMP_ERROR, "QEMU refused query-cpus-fast: Property 'pc-i440fx-5.2-machine.nope' not found"),
    ({"id": "libvirt-1"}, "has no return"),
    ("not a reply", "not a QMP reply"),
])
def test_qmp_answers_that_are_not_results(answer, words):
    with pytest.raises(probe.ProbeDataError, match=words.replace(".", "\\.")):
        probe.first_vcpu_path(answer)


def test_feature_words_are_read_per_leaf_subleaf_and_register():
    words = probe.feature_words(reply(WORDS_9_0))
    assert len(words) == len(WORDS_9_0)
    assert words[(1, 0, "EDX")] == 126614527 and words[(0x80000001, 0, "ECX")] == 913
    with pytest.raises(probe.ProbeDataError, match="cannot read"):
        probe.feature_words({"return": [{"cpuid-register": "EAX"}]})
    with pytest.raises(probe.ProbeDataError, match="not a list"):
        probe.feature_words({"return": {"features": 1}})


def test_words_a_newer_qemu_adds_empty_are_no_change():
    """QEMU 11.1 reports 12 more words than 7.2, all zero: the guest sees the same CPUID."""
    before, after = probe.feature_words(reply(WORDS_9_0)), probe.feature_words(reply(WORDS_12_8))
    assert len(after) == len(before) + 12
    assert probe.words_changes(before, after) == []


def test_the_two_core_guest_gained_ht_and_cmp_legacy():
    on_9_0, on_12_8 = probe.feature_words(reply(WORDS_9_0_2CORES)), probe.feature_words(reply(WORDS_12_8_2CORES))
    assert probe.words_changes(on_9_0, on_12_8) == [HT, CMP_LEGACY]
    # the way back, had it come back: the same bits lost
    assert probe.words_changes(on_12_8, on_9_0) == [HT.replace("+", "-"), CMP_LEGACY.replace("+", "-")]


# --- the outcome of a direction --------------------------------------------------------------------

def test_kept():
    result = probe.direction(True, None, probe.live_cpu(DOMAIN_9_0), cpu_from_xml(CPU_12_8),
                             probe.feature_words(reply(WORDS_9_0)), probe.feature_words(reply(WORDS_12_8)), "kvm")
    assert result["outcome"] == "kept" and result["cpuid_kept"] is True and result["changes"] == []
    assert result["migrated"] is True and result["error"] is None and result["fresh"] is False


def test_changed_by_the_cpuid_only():
    """libvirt 12.8's clusters='1' is libvirt's default, not a change; the guest's new CPUID bits are."""
    before, after = cpu_from_xml(CPU_9_0_2CORES), cpu_from_xml(CPU_12_8_2CORES)
    assert before["topology"] != after["topology"]
    assert probe.cpu_changes(before, after, "kvm") == []
    result = probe.direction(True, None, before, after, probe.feature_words(reply(WORDS_9_0_2CORES)),
                             probe.feature_words(reply(WORDS_12_8_2CORES)), "kvm")
    assert result["outcome"] == "changed" and result["cpuid_kept"] is False
    assert result["changes"] == ["CPUID %s %s" % (HT, CMP_LEGACY)]


def test_changed_by_the_live_cpu():
    """The live CPU without one of its features (as libvirt 12.8 drops cmp_legacy from a live CPU)."""
    before = probe.live_cpu(DOMAIN_9_0)
    after = copy.deepcopy(before)
    after["features"] = [feature for feature in after["features"] if feature["name"] != "clzero"]
    result = probe.direction(True, None, before, after, virt_type="kvm")
    assert result["outcome"] == "changed" and result["cpuid_kept"] is None
    assert result["changes"] == ["feature clzero: require -> -"]


def test_the_order_of_features_is_no_change():
    before = probe.live_cpu(DOMAIN_9_0)
    after = dict(before, features=list(reversed(before["features"])))
    assert probe.direction(True, None, before, after, virt_type="kvm")["outcome"] == "kept"


def test_other_keys_that_change_are_named():
    before = probe.live_cpu(DOMAIN_9_0)
    after = dict(before, model={"name": "qemu64", "fallback": "forbid"})
    assert probe.cpu_changes(before, after, "kvm") == ["model {name: pentium3, fallback: forbid} -> {name: qemu64, fallback: forbid}"]


def test_refused_keeps_libvirts_text():
    result = probe.direction(False, PCOMMIT, probe.live_cpu(DOMAIN_9_0), virt_type="qemu")
    assert result["outcome"] == "refused" and result["error"] == PCOMMIT
    assert result["cpu_after"] is None and result["cpuid_kept"] is None and result["migrated"] is False


def test_not_tried():
    result = probe.not_tried("the probe guest does not start on the destination")
    assert result["outcome"] is None and result["fresh"] is True and result["error"].startswith("the probe guest")
    assert set(result) == set(probe.direction(False, "x"))


def test_every_outcome_is_one_of_the_predictions():
    assert probe.OUTCOMES == ("kept", "changed", "refused")


# --- options ---------------------------------------------------------------------------------------

def test_good_options_pass():
    probe.check_options(good_params())
    probe.check_options(good_params(dest_address="[fe80::1%eth0]", source_address="hv1.example.com"))


@pytest.mark.parametrize("changes, words", [
    ({"dest_uri": "qemu+ssh://root@hv1/system"}, "both 'qemu+ssh://root@hv1/system'"),
    ({"source_uri": " "}, "source_uri must be a libvirt uri"),
    ({"dest_uri": None}, "dest_uri must be a libvirt uri"),
    ({"virt_type": "xen"}, "virt_type must be one of kvm, qemu"),
    ({"machine": "pc' onload='x"}, "is not a machine type"),
    ({"machine": ""}, "is not a machine type"),
    ({"arch": "x86 64"}, "not an architecture"),
    ({"emulator": "qemu-system-x86_64"}, "absolute path"),
    ({"name_prefix": "../x"}, "domain name prefix"),
    ({"name_prefix": "a" * 49}, "domain name prefix"),
    ({"dest_address": "10.0.0.2; rm"}, "host name or an ip address"),
    ({"memory_mib": 0}, "memory_mib must be a whole number from 1 to 65536"),
    ({"vcpus": 65}, "vcpus must be a whole number from 1 to 64"),
    ({"port": 70000}, "port must be a whole number from 1 to 65535"),
    ({"source_port": 0}, "source_port must be"),
    ({"timeout": 0}, "timeout must be"),
    ({"timeout": True}, "timeout must be"),
])
def test_bad_options_are_refused_by_name(changes, words):
    with pytest.raises(probe.ProbeInputError) as caught:
        probe.check_options(good_params(**changes))
    assert words in str(caught.value).lower()


def test_the_cpu_option():
    assert probe.probe_cpu(None) == {}
    assert probe.probe_cpu("") == {}
    assert probe.probe_cpu(CPU_12_8) == cpu_from_xml(CPU_12_8)
    assert probe.probe_cpu({"mode": "host-model"}) == {"mode": "host-model"}
    for bad, words in (({"mode": "bogus"}, "cpu: mode 'bogus' is not valid"),
                       ('<!DOCTYPE cpu [<!ENTITY x SYSTEM "file:///etc/passwd">]><cpu>&x;</cpu>', "doctype or entity"),
                       ("<cpu><model>EPYC</model>", "not well-formed"),
                       (5, "cpu must be a cpu dict")):
        with pytest.raises(probe.ProbeInputError) as caught:
            probe.probe_cpu(bad)
        assert words in str(caught.value).lower(), caught.value


@pytest.mark.parametrize("address, port, expected", [
    ("10.0.0.2", 49152, {"migrate_uri": "tcp://10.0.0.2:49152", "listen_address": "10.0.0.2"}),
    ("hv2.example.com", 49153, {"migrate_uri": "tcp://hv2.example.com:49153", "listen_address": "hv2.example.com"}),
    ("::1", 49160, {"migrate_uri": "tcp://[::1]:49160", "listen_address": "::1"}),
    ("[::1]", 49160, {"migrate_uri": "tcp://[::1]:49160", "listen_address": "::1"}),
    (None, 49152, {}),
])
def test_stream_params(address, port, expected):
    assert probe.stream_params(address, port) == expected


def test_a_lost_monitor_is_tried_again():
    assert probe.is_retried_start_error("internal error: process exited while connecting to monitor: "
                                        "failed to connect to monitor socket: No such process")
    assert not probe.is_retried_start_error(PCOMMIT)
