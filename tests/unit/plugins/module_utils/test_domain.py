# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_domain on domain XML that libvirt and virt-install printed.

* tests/unit/fixtures/domain: whole domains (virt-install output, libvirt's inactive XML, and
  libvirt's inactive XML after defining the edit _domain made), see its README.md;
* tests/unit/fixtures/real/define: <cpu> elements libvirt stored and the live CPUs it started.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import KNOWN_DEFAULT_MODELS, cpu_from_xml, normalize_cpu
from ansible_collections.hostcpu.libvirt.plugins.module_utils._throwaway import default_model_of, renamed_copy, throwaway_copy
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError
from ansible_collections.hostcpu.libvirt.plugins.module_utils._domain import (
    DomainXMLError,
    apply_plan,
    cpu_diff,
    cpu_element_text,
    cpu_from_options,
    cpu_from_whole,
    cpu_span,
    domain_info,
    effective_features_mode,
    graceful_shutdown_possible,
    is_libvirt_default,
    kept_cpu_children,
    live_matches_definition,
    merge_base,
    needs_default_model,
    numa_of,
    outside_cpu_differences,
    plan_cpu,
    predicted_cpu_text,
    read_cpu,
    replace_cpu,
    without_cpu,
)
from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_map import cpu_map_from_xml, read_cpu_map_files
from ansible_collections.hostcpu.libvirt.plugins.module_utils._expansion_data import dependencies_from_map
from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts import host_model_cpu, parse_domain_capabilities

FIXTURES = Path(__file__).resolve().parents[3] / "unit" / "fixtures"
DOMAIN = FIXTURES / "domain"
REAL = FIXTURES / "real"
DEFINE = REAL / "define"
VERSION = (9, 0, 0)
CASES = json.loads((DOMAIN / "cases.json").read_text())
LIBVIRT_DEFAULT = {"mode": "custom", "match": "exact", "check": "none", "model": {"name": "qemu64", "fallback": "forbid"}}


def fixture(case: str, kind: str) -> str:
    return (DOMAIN / ("%s.%s.xml" % (case, kind))).read_text()


def emulator_default(text: str) -> str:
    """The default model libvirt 9.0 filled in for these fixtures' emulators (what the host answered)."""
    return KNOWN_DEFAULT_MODELS[domain_info(text).arch]


def plan_for(case: str):
    inactive = fixture(case, "inactive")
    wish = CASES[case]
    return inactive, plan_cpu(read_cpu(inactive), wish["wish"], "present", wish["features_mode"],
                              domain_info(inactive).virt_type, VERSION, emulator_default(inactive))


# ---------------------------------------------------------------------------------------------
# reading


def test_domain_info_reads_where_the_cpu_runs():
    info = domain_info(fixture("qemu-custom-uefi", "inactive"))
    assert (info.name, info.virt_type, info.arch) == ("hostcpu-fixture-qemu-custom-uefi", "qemu", "x86_64")
    assert info.machine.startswith("pc-q35-") and info.emulator == "/usr/bin/qemu-system-x86_64"


def test_read_cpu_of_a_domain_and_of_one_without_cpu():
    assert read_cpu(fixture("kvm-passthrough", "inactive")) == {
        "mode": "host-passthrough", "check": "none", "migratable": False, "cache": {"mode": "passthrough"}}
    no_cpu = replace_cpu(fixture("kvm-passthrough", "inactive"), None)
    assert read_cpu(no_cpu) == {} and cpu_span(no_cpu) is None


def test_not_a_domain_is_refused_with_the_fix():
    with pytest.raises(DomainXMLError, match="virsh dumpxml --inactive"):
        read_cpu("<cpu mode='host-model'/>")


def test_numa_is_a_kept_child_and_owned_children_are_not():
    kept = kept_cpu_children(fixture("kvm-hostmodel-numa", "inactive"))
    assert len(kept) == 1 and kept[0].startswith("<numa>") and kept[0].count("<cell ") == 2


# ---------------------------------------------------------------------------------------------
# editing: only <cpu> changes, and libvirt stores exactly what was predicted


@pytest.mark.parametrize("case", sorted(CASES))
def test_edit_changes_no_byte_outside_cpu(case):
    inactive, plan = plan_for(case)
    edited = apply_plan(inactive, plan)
    span = cpu_span(inactive)
    assert plan.changed
    assert edited[:span.start] == inactive[:span.start]
    assert edited.endswith(inactive[span.end:])
    assert edited != inactive


@pytest.mark.parametrize("case", sorted(CASES))
def test_libvirt_kept_everything_outside_cpu(case):
    inactive = fixture(case, "inactive")
    changed = fixture(case, "changed.inactive")
    assert without_cpu(inactive) == without_cpu(changed)
    assert outside_cpu_differences(inactive, changed) == []
    assert numa_of(inactive) == numa_of(changed)


@pytest.mark.parametrize("case", sorted(CASES))
def test_predicted_cpu_is_what_libvirt_stored_byte_for_byte(case):
    inactive, plan = plan_for(case)
    assert predicted_cpu_text(inactive, plan) == cpu_element_text(fixture(case, "changed.inactive"))
    assert plan.desired_normalized == read_cpu(fixture(case, "changed.inactive"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_second_run_on_what_libvirt_stored_changes_nothing(case):
    changed = fixture(case, "changed.inactive")
    wish = CASES[case]
    plan = plan_cpu(read_cpu(changed), wish["wish"], "present", wish["features_mode"], domain_info(changed).virt_type, VERSION,
                    emulator_default(changed))
    assert not plan.changed
    assert apply_plan(changed, plan) is changed


def test_numa_survives_a_mode_change_and_removal():
    inactive = fixture("kvm-hostmodel-numa", "inactive")
    removed = replace_cpu(inactive, None)
    assert numa_of(removed) == numa_of(inactive)
    assert read_cpu(removed) == {}
    assert "<cpu>\n    <numa>" in removed


def test_virt_install_xml_with_double_quotes_is_edited_in_place():
    given = fixture("kvm-hostmodel-numa", "given")
    edited = replace_cpu(given, {"mode": "host-passthrough"})
    assert '<cpu mode=\'host-passthrough\'>\n    <numa>\n      <cell cpus="0-1" memory="131072"/>' in edited
    assert without_cpu(edited) == without_cpu(given)


def test_comments_cdata_and_tricky_attributes_outside_cpu_are_kept():
    inactive = fixture("kvm-passthrough", "inactive")
    tricky = inactive.replace("<name>", "<!-- a <cpu mode='maximum'/> in a comment -->\n  <name>", 1).replace(
        "<on_poweroff>", "<description><![CDATA[<cpu/> </cpu>]]></description>\n  <on_poweroff>", 1).replace(
        "<clock offset='utc'>", "<clock offset='utc' x-note='a>b'>", 1)
    edited = replace_cpu(tricky, {"mode": "maximum"})
    assert read_cpu(edited) == {"mode": "maximum"}
    assert "<!-- a <cpu mode='maximum'/> in a comment -->" in edited and "<![CDATA[<cpu/> </cpu>]]>" in edited
    assert without_cpu(edited) == without_cpu(tricky)


@pytest.mark.parametrize("case", ["kvm-passthrough", "qemu-custom-uefi"])
def test_inserting_into_a_domain_without_cpu_puts_it_where_libvirt_prints_it(case):
    inactive = fixture(case, "inactive")
    removed = replace_cpu(inactive, None)
    assert "<cpu" not in removed
    assert replace_cpu(removed, read_cpu(inactive)) == inactive


def test_removing_without_numa_drops_the_whole_line():
    inactive = fixture("kvm-passthrough", "inactive")
    removed = replace_cpu(inactive, None)
    assert "  </features>\n  <clock offset='utc'>" in removed
    assert replace_cpu(removed, None) == removed


# ---------------------------------------------------------------------------------------------
# planning


def test_absent_on_libvirts_default_cpu_changes_nothing_and_on_others_it_does():
    default = cpu_from_xml((DEFINE / "kvm-no-cpu.inactive.xml").read_text())
    assert default == LIBVIRT_DEFAULT
    for virt_type in ("kvm", "qemu"):
        assert not plan_cpu(default, {}, "absent", virt_type=virt_type, libvirt_version=VERSION).changed
        assert not plan_cpu({}, {}, "absent", virt_type=virt_type, libvirt_version=VERSION).changed
    plan = plan_cpu({"mode": "host-model", "check": "partial"}, {}, "absent", virt_type="kvm", libvirt_version=VERSION)
    assert plan.changed and plan.desired is None and plan.desired_normalized == LIBVIRT_DEFAULT


def test_qemu_domains_without_cpu_store_the_same_default():
    assert cpu_from_xml((DEFINE / "qemu-no-cpu.inactive.xml").read_text()) == LIBVIRT_DEFAULT
    assert is_libvirt_default(LIBVIRT_DEFAULT, "qemu", VERSION)


def test_a_wish_on_libvirts_default_starts_from_scratch_but_keeps_topology():
    stored = cpu_from_xml((DEFINE / "kvm-c-topology-only.inactive.xml").read_text())
    assert is_libvirt_default(stored, "kvm", VERSION)
    base = merge_base(stored, "kvm", VERSION)
    assert base == {"topology": stored["topology"]}
    plan = plan_cpu(stored, {"model": {"name": "EPYC"}}, virt_type="kvm", libvirt_version=VERSION)
    assert plan.desired_normalized["model"] == {"name": "EPYC", "fallback": "allow"}
    assert plan.desired_normalized["check"] == "partial"
    assert plan.desired_normalized["topology"] == stored["topology"]


def test_a_chosen_cpu_is_merged_onto_not_replaced():
    stored = cpu_from_xml((DEFINE / "kvm-c-EPYC-disable-svm.inactive.xml").read_text())
    assert not is_libvirt_default(stored, "kvm", VERSION)
    plan = plan_cpu(stored, {"features": [{"name": "x2apic", "policy": "require"}]}, virt_type="kvm", libvirt_version=VERSION)
    assert [f["name"] for f in plan.desired["features"]] == ["svm", "x2apic"]
    replace = plan_cpu(stored, {"features": [{"name": "x2apic", "policy": "require"}]}, "present", "replace", "kvm", VERSION)
    assert replace.desired["features"] == [{"name": "x2apic", "policy": "require"}]


def test_passthrough_cache_carried_into_host_model_is_dropped_but_an_asked_one_is_kept():
    stored = read_cpu(fixture("kvm-passthrough", "inactive"))
    plan = plan_cpu(stored, {"mode": "host-model"}, virt_type="kvm", libvirt_version=VERSION)
    assert "cache" not in plan.desired
    asked = plan_cpu(stored, {"mode": "host-model", "cache": {"mode": "passthrough"}}, virt_type="kvm", libvirt_version=VERSION)
    assert asked.desired["cache"] == {"mode": "passthrough"}


ACCEPTED = sorted(path.name[:-len(".given.xml")] for path in DEFINE.glob("*.given.xml")
                  if path.with_name(path.name.replace(".given.", ".inactive.")).exists())


@pytest.mark.parametrize("case", ACCEPTED)
def test_asking_for_the_given_cpu_again_is_no_change(case):
    """For every <cpu> libvirt accepted: asking for it again (replace) on what libvirt stored changes nothing."""
    virt_type = case.split("-", 1)[0]
    stored = cpu_from_xml((DEFINE / (case + ".inactive.xml")).read_text())
    given = cpu_from_xml((DEFINE / (case + ".given.xml")).read_text())
    assert not plan_cpu(stored, given, "present", "replace", virt_type, VERSION).changed
    assert not plan_cpu(stored, given, "present", "merge", virt_type, VERSION).changed


# ---------------------------------------------------------------------------------------------
# options


def test_single_options_become_a_cpu_dict():
    options = {"mode": "custom", "model": "EPYC", "fallback": "forbid", "vendor_id": None, "check": None,
               "topology": {"sockets": 1, "dies": None, "clusters": None, "cores": 2, "threads": 1},
               "features": {"svm": "disable", "x2apic": "require"}}
    assert cpu_from_options(options) == {
        "mode": "custom", "topology": {"sockets": 1, "cores": 2, "threads": 1},
        "model": {"name": "EPYC", "fallback": "forbid"},
        "features": [{"name": "svm", "policy": "disable"}, {"name": "x2apic", "policy": "require"}]}


def test_whole_cpu_accepts_a_feature_mapping_and_refuses_a_non_mapping():
    assert cpu_from_whole({"mode": "host-model", "features": {"pcid": "disable"}, "check": None}) == {
        "mode": "host-model", "features": [{"name": "pcid", "policy": "disable"}]}
    with pytest.raises(DomainXMLError, match="must be a CPU mapping"):
        cpu_from_whole("host-model")


def test_features_mode_defaults_by_option_kind():
    assert effective_features_mode(None, False) == "merge"
    assert effective_features_mode(None, True) == "replace"
    assert effective_features_mode("merge", True) == "merge"
    with pytest.raises(DomainXMLError):
        effective_features_mode("append", False)


# ---------------------------------------------------------------------------------------------
# reporting


def test_diff_names_the_domain_and_shows_cpu_before_and_after():
    inactive, plan = plan_for("qemu-custom-uefi")
    diff = cpu_diff("web1", cpu_element_text(inactive), predicted_cpu_text(inactive, plan))
    assert diff["before_header"].startswith("web1") and diff["after_header"].startswith("web1")
    assert diff["before"].startswith("<cpu mode='custom'") and diff["after"] == "<cpu mode='maximum' check='none'/>\n"


def test_changes_outside_cpu_are_reported():
    inactive = fixture("kvm-hostmodel-numa", "inactive")
    other = inactive.replace("<vcpu placement='static'>4</vcpu>", "<vcpu placement='static'>2</vcpu>")
    lines = outside_cpu_differences(inactive, other)
    assert any(line.startswith("-") and ">4</vcpu>" in line for line in lines)
    renumbered = inactive.replace("memory='131072' unit='KiB'/>\n    </numa>", "memory='65536' unit='KiB'/>\n    </numa>")
    assert any("<cpu><numa>" in line for line in outside_cpu_differences(inactive, renumbered))


def test_graceful_shutdown_needs_acpi_or_a_connected_agent():
    inactive = fixture("kvm-hostmodel-numa", "inactive")
    assert graceful_shutdown_possible(inactive)
    no_acpi = inactive.replace("    <acpi/>\n", "")
    assert not graceful_shutdown_possible(no_acpi)
    connected = no_acpi.replace("name='org.qemu.guest_agent.0'/>", "name='org.qemu.guest_agent.0' state='connected'/>")
    assert graceful_shutdown_possible(connected)


# ---------------------------------------------------------------------------------------------
# live CPU vs definition (real started guests)


def _host_model(virt_type: str) -> dict:
    entry = parse_domain_capabilities((REAL / ("domcapabilities-%s.xml" % virt_type)).read_text())
    return host_model_cpu(entry)


# libvirt's CPU map as the expansion fixtures hold it (tests/unit/fixtures/expansion/cpu_map)
DEPENDENCIES = dependencies_from_map(cpu_map_from_xml(read_cpu_map_files(str(FIXTURES / "expansion" / "cpu_map"))))


STARTED = sorted(path.name[:-len(".live.xml")] for path in DEFINE.glob("*.live.xml"))


@pytest.mark.parametrize("case", STARTED)
def test_a_guest_started_from_its_definition_needs_no_restart(case):
    virt_type = case.split("-", 1)[0]
    definition = cpu_from_xml((DEFINE / (case + ".inactive.xml")).read_text())
    live = cpu_from_xml((DEFINE / (case + ".live.xml")).read_text())
    assert live_matches_definition(definition, live, virt_type, VERSION, _host_model(virt_type), DEPENDENCIES)


@pytest.mark.parametrize("definition_case,live_case", [
    ("kvm-c-pentium3", "kvm-c-EPYC-disable-svm"),      # other model
    ("kvm-hm-noarch", "kvm-c-kvm64"),                  # custom guest, host-model definition: same model, no arch-cap disable
    ("kvm-hp-noarch", "kvm-hm-noarch"),                # passthrough definition, host-model guest
    ("qemu-max", "qemu-hm"),                           # maximum definition, host-model guest
    ("kvm-hm-noarch-topology", "kvm-hm-noarch"),       # topology changed
    ("qemu-hm-noarch-disable-has", "qemu-hm-noarch"),  # a feature newly disabled
    ("qemu-hm", "qemu-c-Westmere"),                    # host-model definition, other model running
    ("kvm-hm", "kvm-hm-noarch"),                       # a disabled feature no longer disabled
    ("kvm-hm-noarch", "kvm-hm-noarch-disable-has"),    # one more no longer disabled
])
def test_a_guest_running_another_cpu_needs_a_restart(definition_case, live_case):
    virt_type = definition_case.split("-", 1)[0]
    definition = cpu_from_xml((DEFINE / (definition_case + ".inactive.xml")).read_text())
    live = cpu_from_xml((DEFINE / (live_case + ".live.xml")).read_text())
    assert not live_matches_definition(definition, live, virt_type, VERSION, _host_model(virt_type), DEPENDENCIES)


def test_devices_moved_by_libvirt_are_no_change_but_a_changed_device_is():
    inactive = fixture("kvm-passthrough", "inactive")
    sata = "    <controller type='sata' index='0'>\n      <address type='pci' domain='0x0000' bus='0x00' slot='0x1f' function='0x2'/>\n    </controller>\n"
    assert sata in inactive
    moved = inactive.replace(sata, "").replace("  </devices>", sata + "  </devices>")
    assert moved != inactive and outside_cpu_differences(inactive, moved) == []
    readdressed = inactive.replace("slot='0x1f' function='0x2'", "slot='0x1e' function='0x2'")
    assert outside_cpu_differences(inactive, readdressed) != []


# ---------------------------------------------------------------------------------------------
# the emulator's default CPU (qemu-system-i386: qemu32), not a constant


def test_absent_on_a_domain_with_its_emulators_default_changes_nothing():
    stored = {key: value for key, value in read_cpu(fixture("qemu-i686-default", "inactive")).items() if key != "topology"}
    assert not plan_cpu(stored, {}, "absent", "merge", "qemu", VERSION, "qemu32").changed
    # assuming qemu64 (what domain_cpu did before) reports a change on every run
    assert plan_cpu(stored, {}, "absent", "merge", "qemu", VERSION, "qemu64").changed
    # removing <cpu> removes its topology too
    assert plan_cpu(read_cpu(fixture("qemu-i686-default", "inactive")), {}, "absent", "merge", "qemu", VERSION, "qemu32").changed


def test_absent_predicts_the_emulators_default_model():
    inactive = fixture("qemu-i686-default", "changed.inactive")
    plan = plan_cpu(read_cpu(inactive), {}, "absent", "merge", "qemu", VERSION, "qemu32")
    assert plan.changed and plan.desired is None
    assert plan.desired_normalized["model"] == {"name": "qemu32", "fallback": "forbid"}


@pytest.mark.parametrize("virt_type, check", [("qemu", "none"), ("kvm", "partial")])
def test_features_merged_onto_the_default_keep_its_model(virt_type, check):
    current = read_cpu(fixture("qemu-i686-default", "inactive"))
    plan = plan_cpu(current, {"features": [{"name": "pae", "policy": "disable"}]}, "present", "merge", virt_type, VERSION, "qemu32")
    assert plan.desired["model"] == {"name": "qemu32", "fallback": "forbid"}
    assert plan.desired_normalized["check"] == check
    assert plan.desired_normalized["features"] == [{"name": "pae", "policy": "disable"}]


def test_a_model_wish_onto_the_default_replaces_it():
    current = read_cpu(fixture("qemu-i686-default", "inactive"))
    plan = plan_cpu(current, {"model": {"name": "pentium3"}}, "present", "merge", "qemu", VERSION, "qemu32")
    assert plan.desired_normalized["model"] == {"name": "pentium3", "fallback": "allow"}


def test_no_default_model_leaves_a_custom_cpu_without_one():
    assert "model" not in normalize_cpu({"topology": {"sockets": 1, "cores": 2, "threads": 1}}, "qemu", VERSION, None)
    assert normalize_cpu({}, "qemu", VERSION, "qemu32")["model"] == {"name": "qemu32", "fallback": "forbid"}
    # no default model and nothing else: libvirt stores no <cpu> (riscv64 virt guests in the corpus)
    assert normalize_cpu({}, "qemu", VERSION, None) == {}
    assert not plan_cpu({}, {}, "absent", "merge", "qemu", VERSION, None).changed
    assert plan_cpu({"mode": "maximum"}, {}, "absent", "merge", "qemu", VERSION, None).desired_normalized == {}


@pytest.mark.parametrize("current, wanted, state, needed", [
    ({"mode": "host-model"}, {}, "absent", True),
    ({}, {"mode": "maximum"}, "present", True),
    ({"mode": "custom", "model": {"name": "qemu32", "fallback": "forbid"}}, {"mode": "maximum"}, "present", True),
    ({"mode": "custom", "model": {"name": "EPYC", "fallback": "allow"}}, {"features": [{"name": "svm"}]}, "present", False),
    ({"mode": "host-model"}, {"mode": "maximum"}, "present", False),
    ({"mode": "host-model"}, {"mode": "custom"}, "present", True),
])
def test_the_default_model_is_asked_only_when_planning_depends_on_it(current, wanted, state, needed):
    assert needs_default_model(current, wanted, state) is needed


def test_the_throwaway_copy_differs_only_in_name_uuid_and_cpu():
    inactive = fixture("kvm-hostmodel-numa", "inactive")
    copy = throwaway_copy(inactive, "hostcpu-throwaway-0123")
    info = domain_info(copy)
    old_uuid = domain_info(inactive).uuid
    assert info.name == "hostcpu-throwaway-0123" and re.fullmatch(r"[0-9a-f-]{36}", info.uuid) and info.uuid != old_uuid
    assert read_cpu(copy) == {"topology": {"sockets": 1, "dies": 1, "cores": 2, "threads": 2}}
    assert numa_of(copy) == numa_of(inactive)
    renamed = replace_cpu(inactive, None).replace("hostcpu-fixture-kvm-hostmodel-numa", "hostcpu-throwaway-0123")
    assert without_cpu(copy) == without_cpu(renamed.replace(old_uuid, info.uuid))


def test_a_renamed_copy_repeats_its_new_uuid_where_the_definition_repeated_the_old():
    inactive = fixture("kvm-passthrough", "inactive")
    old_uuid = domain_info(inactive).uuid
    with_sysinfo = inactive.replace("  <os>", "  <sysinfo type='smbios'><system><entry name='uuid'>%s</entry></system></sysinfo>\n  <os>"
                                    % old_uuid, 1)
    copy = renamed_copy(with_sysinfo, "hostcpu-throwaway-4567")
    new_uuid = domain_info(copy).uuid
    assert old_uuid not in copy and copy.count(new_uuid) == 2
    assert read_cpu(copy) == read_cpu(inactive)


def test_a_default_that_is_no_named_model_is_refused_with_the_fix():
    assert default_model_of({"mode": "custom", "model": {"name": "qemu32", "fallback": "forbid"}}) == "qemu32"
    assert default_model_of({}) is None
    with pytest.raises(CPUError, match="give the CPU explicitly"):
        default_model_of({"mode": "host-passthrough"})
