# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""hostcpu.libvirt.domain_cpu through ansible-playbook against the real libvirtd, kvm and qemu.

Each test defines its own hostcpu-test-<random>-... domains (started paused where they must run)
and removes them. Tasks that belong together run in one ansible-playbook to keep the suite short.
"""

from __future__ import annotations

from typing import Any, Dict, List

import pytest
from lxml import etree

from conftest import domain_xml, libvirt, module_task

from ansible_collections.hostcpu.libvirt.plugins.module_utils._domain import read_cpu, without_cpu

FLAGS = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
LIBVIRT_DEFAULT = {"mode": "custom", "match": "exact", "check": "none", "model": {"name": "qemu64", "fallback": "forbid"}}
NO_ARCH_CAPS = {"arch-capabilities": "disable"}
# A CPU of each mode that libvirt 9.0 accepts for that virt type on this machine; kvm's custom
# model is the first of KVM_CUSTOM_MODELS that libvirt says the host CPU can run (kvm_model).
KVM_CUSTOM_MODELS = ("Westmere", "kvm64", "pentium3")
# A CPU every QEMU 7.2 refuses to start: cvt16 is in libvirt 9.0's CPU map but unknown to QEMU
# ("Property '...-x86_64-cpu.cvt16' not found"), and force skips libvirt's own host check.
UNSTARTABLE = {"mode": "host-model", "features": {"cvt16": "force"}}
MODE_ARGS = {
    "kvm": {
        "custom": {"mode": "custom", "model": "KVM_MODEL"},
        "host-model": {"mode": "host-model", "features": NO_ARCH_CAPS},
        "host-passthrough": {"mode": "host-passthrough", "migratable": False},
        "maximum": {"mode": "maximum"},
    },
    "qemu": {
        "custom": {"mode": "custom", "model": "Westmere", "check": "partial"},
        "host-model": {"mode": "host-model"},
        "maximum": {"mode": "maximum", "migratable": True},
    },
}


def inactive(dom) -> str:
    return dom.XMLDesc(FLAGS)


def stored_cpu(dom) -> Dict[str, Any]:
    return read_cpu(inactive(dom))


def live_cpu(dom) -> Dict[str, Any]:
    return read_cpu(dom.XMLDesc(0))


def only(result: Dict[str, Any]) -> Dict[str, Any]:
    assert not result.get("failed"), result.get("msg")
    [domain] = result["domains"]
    return domain


@pytest.fixture(scope="module")
def kvm_model(conn) -> str:
    """The first of KVM_CUSTOM_MODELS that libvirt's compareCPU says this host's CPU runs."""
    for model in KVM_CUSTOM_MODELS:
        try:
            conn.compareCPU("<cpu><model>%s</model></cpu>" % model, libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE)
        except libvirt.libvirtError:
            continue
        return model
    raise AssertionError("the host CPU runs none of %s under kvm" % ", ".join(KVM_CUSTOM_MODELS))


def mode_args(virt_type: str, mode: str, kvm_model: str) -> Dict[str, Any]:
    args = dict(MODE_ARGS[virt_type][mode])
    if args.get("model") == "KVM_MODEL":
        args["model"] = kvm_model
    return args


def start_error(conn, name: str, virt_type: str, cpu_xml: str) -> str:
    """libvirt's own refusal to start a guest with *cpu_xml* (the oracle for validation messages)."""
    try:
        dom = conn.createXML(domain_xml(name, virt_type, cpu_xml), libvirt.VIR_DOMAIN_START_PAUSED)
    except libvirt.libvirtError as exc:
        return str(exc)
    dom.destroy()
    raise AssertionError("libvirt started %s with %s" % (name, cpu_xml))


def cpu_task(names, check_mode: bool = False, diff_mode: bool = False, **args: Any) -> Dict[str, Any]:
    """A domain_cpu task; *args* are the module's options."""
    return module_task("domain_cpu", dict(args, name=names), check_mode=check_mode, diff=diff_mode)


# ---------------------------------------------------------------------------------------------
# every mode, idempotent


@pytest.mark.parametrize("virt_type", ["kvm", "qemu"])
def test_every_mode_is_set_once_then_never_again(virt_type, virt_types, kvm_model, domains, run_tasks):
    if virt_type not in virt_types:
        pytest.skip("no usable /dev/kvm")
    doms = {mode: domains.define(mode, virt_type) for mode in MODE_ARGS[virt_type]}
    tasks = []
    for check in (False, False, True):
        tasks += [cpu_task(dom.name(), check_mode=check, **mode_args(virt_type, mode, kvm_model)) for mode, dom in doms.items()]
    results = run_tasks(tasks)
    count = len(doms)
    for index, (mode, dom) in enumerate(doms.items()):
        first, second, third = (only(results[index + count * run]) for run in range(3))
        assert first["changed"] and first["cpu_before"] == LIBVIRT_DEFAULT
        assert first["cpu"] == stored_cpu(dom) and first["cpu"]["mode"] == mode
        assert not second["changed"] and second["cpu"] == first["cpu"]
        assert not third["changed"], "check mode reports a change on the second run of %s" % mode
        assert not first["restart_required"] and "live_cpu" not in first


# ---------------------------------------------------------------------------------------------
# features: merge and replace


def test_features_merge_keeps_others_and_replace_makes_them_exact(domains, run_tasks):
    dom = domains.define("a", "qemu")
    name = dom.name()
    results = run_tasks([
        cpu_task(name, mode="host-model", features={"svm": "disable", "vme": "disable"}),
        cpu_task(name, features=[{"name": "avx2", "policy": "disable"}, {"name": "svm", "policy": "require"}]),
        cpu_task(name, features={"vme": "disable"}, features_mode="replace"),
        cpu_task(name, features={"vme": "disable"}, features_mode="replace"),
    ])
    merged, replaced, again = only(results[1]), only(results[2]), only(results[3])
    assert merged["cpu"]["features"] == [{"name": "svm", "policy": "require"}, {"name": "vme", "policy": "disable"},
                                         {"name": "avx2", "policy": "disable"}]
    assert replaced["changed"] and replaced["cpu"]["features"] == [{"name": "vme", "policy": "disable"}]
    assert not again["changed"]
    assert stored_cpu(dom) == {"mode": "host-model", "check": "partial", "features": [{"name": "vme", "policy": "disable"}]}


def test_a_whole_cpu_from_the_facts_goes_straight_in(domains, run_tasks):
    dom = domains.define("a", "qemu", "<cpu><topology sockets='1' cores='2' threads='1'/></cpu>", vcpus=2)
    host_model = "{{ facts.ansible_facts.hostcpu.virt_types.qemu.modes['host-model'].cpu }}"
    results = run_tasks([
        dict(module_task("cpu_facts", {"virt_types": ["qemu"]}), register="facts"),
        cpu_task(dom.name(), cpu=host_model),
        cpu_task(dom.name(), cpu=host_model),
    ])
    facts_cpu = results[0]["ansible_facts"]["hostcpu"]["virt_types"]["qemu"]["modes"]["host-model"]["cpu"]
    first, second = only(results[1]), only(results[2])
    assert first["changed"] and not second["changed"]
    stored = stored_cpu(dom)
    assert stored["mode"] == "custom" and stored["model"]["name"] == facts_cpu["model"]["name"]
    assert stored["features"] == [{"name": f["name"], "policy": f["policy"]} for f in facts_cpu["features"]]
    assert stored["topology"] == {"sockets": 1, "dies": 1, "cores": 2, "threads": 1}


# ---------------------------------------------------------------------------------------------
# absent


@pytest.mark.parametrize("virt_type", ["kvm", "qemu"])
def test_absent_leaves_libvirts_default_and_is_then_a_no_op(virt_type, virt_types, domains, run_tasks):
    if virt_type not in virt_types:
        pytest.skip("no usable /dev/kvm")
    plain = domains.define("plain", virt_type, "<cpu mode='host-model'/>")
    numa = domains.define("numa", virt_type, vcpus=2, cpu_xml=(
        "<cpu mode='maximum'><topology sockets='1' cores='2' threads='1'/>"
        "<numa><cell id='0' cpus='0-1' memory='64' unit='MiB'/></numa></cpu>"))
    numa_before = inactive(numa)
    names = [plain.name(), numa.name()]
    results = run_tasks([cpu_task(names, state="absent"), cpu_task(names, state="absent"),
                         cpu_task(names, state="absent", check_mode=True)])
    assert [d["changed"] for d in results[0]["domains"]] == [True, True]
    assert stored_cpu(plain) == LIBVIRT_DEFAULT
    assert stored_cpu(numa) == LIBVIRT_DEFAULT
    assert "<cell id='0' cpus='0-1' memory='65536' unit='KiB'/>" in inactive(numa)
    assert without_cpu(inactive(numa)) == without_cpu(numa_before)
    assert not results[1]["changed"] and not results[2]["changed"]


I386_EMULATOR = "/usr/bin/qemu-system-i386"
# (arch, emulator, machine, a CPU to start from, QEMU 7.2's default CPU there, where feature names come from)
OTHER_ARCHES = [("aarch64", "/usr/bin/qemu-system-aarch64", "virt", "<cpu mode='maximum'/>", "cortex-a15", "arm_features.xml"),
                ("ppc64", "/usr/bin/qemu-system-ppc64", "pseries", "<cpu><model>POWER8</model></cpu>", "POWER9", "ppc64 guests"),
                ("s390x", "/usr/bin/qemu-system-s390x", "s390-ccw-virtio", "<cpu mode='maximum'/>", "qemu", "s390x guests")]


@pytest.mark.parametrize("arch, emulator, machine, start_cpu, default, names_from", OTHER_ARCHES)
def test_other_architectures_get_their_own_default_and_feature_names(
        arch, emulator, machine, start_cpu, default, names_from, domains, run_tasks):
    """TCG guests of other architectures: absent leaves their emulator's default (not qemu64) and
    is then a no-op; an x86 feature name is refused for them (nothing written)."""
    dom = domains.define(arch, "qemu", start_cpu, arch=arch, emulator=emulator, machine=machine, memory_mib=256)
    name = dom.name()
    results = run_tasks([cpu_task(name, state="absent", check_mode=True), cpu_task(name, state="absent"),
                         cpu_task(name, state="absent"), cpu_task(name, features={"pae": "disable"})])
    assert [result["changed"] for result in results[:3]] == [True, True, False]
    assert results[0]["domains"][0]["cpu"] == results[1]["domains"][0]["cpu"] == stored_cpu(dom) == dict(
        LIBVIRT_DEFAULT, model={"name": default, "fallback": "forbid"})
    assert results[3]["failed"] and "unknown CPU feature 'pae'" in results[3]["msg"] and names_from in results[3]["msg"]
    assert stored_cpu(dom)["model"]["name"] == default


@pytest.mark.parametrize("virt_type", ["kvm", "qemu"])
def test_the_default_cpu_comes_from_the_emulator_not_a_constant(conn, virt_type, virt_types, domains, run_tasks):
    """qemu-system-i386's default CPU is qemu32: absent predicts it, is then a no-op, and a feature
    merged onto that default keeps the model (check mode says what the real run does)."""
    if virt_type not in virt_types:
        pytest.skip("no usable /dev/kvm")
    i386 = domains.define("i386", virt_type, "<cpu mode='host-model'/>", arch="i686", emulator=I386_EMULATOR)
    qemu32 = dict(LIBVIRT_DEFAULT, model={"name": "qemu32", "fallback": "forbid"})
    name = i386.name()
    results = run_tasks([cpu_task(name, state="absent", check_mode=True), cpu_task(name, state="absent"),
                         cpu_task(name, state="absent"), cpu_task(name, features={"pae": "disable"}, check_mode=True),
                         cpu_task(name, features={"pae": "disable"}), cpu_task(name, features={"pae": "disable"})])
    assert [result["changed"] for result in results] == [True, True, False, True, True, False]
    assert results[0]["domains"][0]["cpu"] == results[1]["domains"][0]["cpu"] == qemu32
    merged = dict(qemu32, check="none" if virt_type == "qemu" else "partial", features=[{"name": "pae", "policy": "disable"}])
    assert results[3]["domains"][0]["cpu"] == results[4]["domains"][0]["cpu"] == merged
    assert stored_cpu(i386) == merged
    assert not [dom.name() for dom in conn.listAllDomains() if dom.name().startswith("hostcpu-throwaway-")]


# ---------------------------------------------------------------------------------------------
# many domains in one task


def test_a_list_of_domains_converges_in_one_task(virt_types, domains, run_tasks):
    doms = [domains.define("d%d" % index, virt_types[index % len(virt_types)]) for index in range(4)]
    names = [dom.name() for dom in doms]
    already = cpu_task(names[1], mode="host-model", features=NO_ARCH_CAPS)
    results = run_tasks([already, cpu_task(names, mode="host-model", features=NO_ARCH_CAPS),
                         cpu_task(names, mode="host-model", features=NO_ARCH_CAPS)])
    first, second = results[1], results[2]
    assert [d["name"] for d in first["domains"]] == names
    assert [d["changed"] for d in first["domains"]] == [True, False, True, True]
    assert first["changed"] and not second["changed"]
    # shut-off domains report their state without a state() round trip each (bench/README.md)
    assert [d["state"] for d in second["domains"]] == ["shutoff"] * len(names)
    assert not any("live_cpu" in d or d["restart_required"] for d in second["domains"])
    for dom in doms:
        assert stored_cpu(dom) == {"mode": "host-model", "check": "partial", "features": [{"name": "arch-capabilities", "policy": "disable"}]}


def test_one_invalid_domain_in_the_list_changes_none(domains, run_module):
    good = [domains.define("good%d" % index, "qemu") for index in range(2)]
    bad = domains.define("bad", "qemu", "<cpu mode='host-model'/>")
    before = {dom.name(): inactive(dom) for dom in good + [bad]}
    # host-passthrough is fine for nothing here: qemu (TCG) does not support it
    result = run_module("domain_cpu", {"name": [good[0].name(), bad.name(), good[1].name()], "mode": "host-passthrough"})
    assert result["failed"] and result["msg"].startswith("nothing was changed: ")
    assert result["msg"].count("CPU mode 'host-passthrough' is not supported for qemu guests") == 3
    assert {dom.name(): inactive(dom) for dom in good + [bad]} == before


# ---------------------------------------------------------------------------------------------
# validation: one clear message each, the domain byte for byte as it was


VALIDATION_ERRORS = [
    ("kvm", {"mode": "custom", "model": "EPYCC"}, "did you mean 'EPYC'"),
    ("kvm", {"mode": "custom", "model": "NoSuchModel"}, "models usable here: USABLE_MODELS"),
    ("kvm", {"mode": "host-model", "features": {"arch-capabilitis": "disable"}}, "did you mean 'arch-capabilities'"),
    ("kvm", {"mode": "host-model", "features": {"sse3": "disable"}}, "libvirt calls it 'pni'"),
    ("qemu", {"mode": "host-passthrough"}, "CPU mode 'host-passthrough' is not supported for qemu guests"),
    ("kvm", {"mode": "custom", "model": "pentium3", "migratable": True}, "migratable is only supported with host-passthrough or maximum"),
    ("kvm", {"mode": "custom", "vendor": "AMD"}, "CPU vendor specified without CPU model"),
    ("kvm", {"mode": "host-model", "match": "exact"}, "match applies to mode custom only"),
    ("kvm", {"mode": "custom", "model": "pentium3", "vendor_id": "AuthenticAM"}, "vendor_id must be exactly 12 characters"),
    ("kvm", {"mode": "host-model", "features": {"svm": "maybe"}}, "feature 'svm' policy 'maybe' is not valid"),
    ("kvm", {"mode": "host-model", "features": {"arch-capabilities": "disable", "clwb": "forbid"}}, "forbidden feature"),
    ("qemu", {"mode": "host-model", "features": {"pcid": "require"}}, "the host does not provide required features pcid"),
    ("kvm", {"state": "absent", "mode": "maximum"}, "state absent removes <cpu>; do not combine it with CPU options (mode)"),
    ("kvm", {"mode": "maximum", "cpu": {"mode": "maximum"}}, "mutually exclusive"),
]


def usable_kvm_models(conn) -> List[str]:
    """The models libvirt's kvm domain capabilities call usable='yes', in libvirt's order."""
    caps = etree.fromstring(conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0).encode())
    return [model.text for model in caps.findall("./cpu/mode[@name='custom']/model") if model.get("usable") == "yes"]


def test_each_validation_error_is_clear_and_changes_nothing(conn, virt_types, domains, run_tasks):
    usable = ", ".join(usable_kvm_models(conn)) if "kvm" in virt_types else ""
    doms = {vt: domains.define(vt, vt, "<cpu mode='maximum'/>", start=False) for vt in virt_types}
    before = {vt: inactive(dom) for vt, dom in doms.items()}
    cases = [case for case in VALIDATION_ERRORS if case[0] in doms]
    results = run_tasks([cpu_task(doms[vt].name(), **args) for vt, args, _words in cases])
    for (vt, args, words), result in zip(cases, results):
        assert result.get("failed"), (args, result)
        assert words.replace("USABLE_MODELS", usable) in result["msg"], (args, result["msg"])
        # ansible-core 2.19+ puts "(traceback unavailable)" in every failure without -vvv
        assert "Traceback" not in result["msg"] and result.get("exception") in (None, "(traceback unavailable)"), result
    assert {vt: inactive(dom) for vt, dom in doms.items()} == before


def test_a_model_the_host_cannot_run_is_refused_with_libvirts_own_missing_features(conn, virt_types, domains, run_tasks):
    """The missing features domain_cpu names (and tells to disable) are the ones libvirt names at start.
    One of the models is of the other CPU vendor, so some host CPU feature is always missing."""
    if "kvm" not in virt_types:
        pytest.skip("no usable /dev/kvm")
    mark = "Host CPU does not provide required features: "
    refused = {}
    for model in ("EPYC", "Cascadelake-Server-noTSX"):
        real = start_error(conn, domains.name("oracle"), "kvm", "<cpu check='partial'><model>%s</model></cpu>" % model)
        assert mark in real, (model, real)
        refused[model] = real.split(mark, 1)[1].split("\n")[0].strip().rstrip(".").split(", ")
    dom = domains.define("a", "kvm", "<cpu mode='maximum'/>")
    before = inactive(dom)
    results = run_tasks([cpu_task(dom.name(), mode="custom", model=model) for model in refused])
    for (model, missing), result in zip(refused.items(), results):
        assert result.get("failed"), (model, result)
        expected = "the host does not provide required features %s. Disable them (features: {%s})" % (
            ", ".join(missing), ", ".join("%s: disable" % name for name in missing))
        assert expected in result["msg"], (model, missing, result["msg"])
    assert inactive(dom) == before


def test_unknown_and_transient_domains_are_refused(conn, domains, run_tasks):
    defined = domains.define("defined", "qemu", "<cpu mode='host-model'/>")
    transient_name = domains.name("transient")
    conn.createXML(domain_xml(transient_name, "qemu"), libvirt.VIR_DOMAIN_START_PAUSED)
    before = inactive(defined)
    results = run_tasks([cpu_task([defined.name(), domains.name("missing")], mode="maximum"),
                         cpu_task(transient_name, mode="maximum")])
    assert results[0]["failed"] and "no domain named '%s'" % domains.names[-1] in results[0]["msg"]
    assert results[1]["failed"] and "is transient" in results[1]["msg"]
    assert inactive(defined) == before


def test_a_long_list_is_listed_once_and_read_side_by_side_with_the_same_answers(conn, domains, run_tasks):
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._domain_cpu import LIST_ALL_FROM  # pylint: disable=import-outside-toplevel
    doms = [domains.define("long%d" % index, "qemu", "<cpu mode='host-model'/>", start=index == 0)
            for index in range(LIST_ALL_FROM + 1)]
    names = [dom.name() for dom in doms]
    transient_name = domains.name("long-transient")
    conn.createXML(domain_xml(transient_name, "qemu"), libvirt.VIR_DOMAIN_START_PAUSED)
    before = {name: inactive(dom) for name, dom in zip(names, doms)}
    refused = run_tasks([cpu_task(names + [domains.name("long-missing"), transient_name], mode="maximum")])[0]
    assert refused["failed"] and "no domain named '%s'" % domains.names[-1] in refused["msg"]
    assert "'%s' is transient" % transient_name in refused["msg"]
    assert {name: inactive(dom) for name, dom in zip(names, doms)} == before
    applied = run_tasks([cpu_task(names, mode="maximum")])[0]
    assert [d["changed"] for d in applied["domains"]] == [True] * len(names)
    # the running one was told apart from the shut-off ones by its ID from the listing
    assert [(d["state"], d["restart_required"]) for d in applied["domains"]] == [("paused", True)] + [("shutoff", False)] * LIST_ALL_FROM
    assert all(stored_cpu(dom)["mode"] == "maximum" for dom in doms)


class CountingDomain:
    """A libvirt domain that counts its XMLDesc calls (libvirt's own object does everything)."""

    def __init__(self, domain) -> None:
        self.domain = domain
        self.reads = 0

    def XMLDesc(self, flags: int) -> str:  # pylint: disable=invalid-name
        self.reads += 1
        return self.domain.XMLDesc(flags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.domain, name)


def test_a_listed_definition_that_cannot_be_read_is_refused_with_the_error_of_its_one_read(conn, domains):
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._domain_cpu import (  # pylint: disable=import-outside-toplevel
        read_job, read_side_by_side)
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError  # pylint: disable=import-outside-toplevel
    dom = CountingDomain(domains.define("vanished", "qemu", "<cpu mode='host-model'/>"))
    listed = {dom.name(): dom}
    # undefined by someone else between the listing and the read
    dom.undefine()
    definitions = read_side_by_side(listed, [dom.name()])
    failed_read = definitions[dom.name()]
    assert isinstance(failed_read, CPUError) and "reading the persistent definition of '%s'" % dom.name() in str(failed_read)
    with pytest.raises(CPUError) as raised:
        read_job(conn, dom.name(), "qemu:///system", {"mode": "maximum"}, {"state": "present"}, "merge", (9, 0, 0), None,
                 dom, failed_read)
    assert raised.value is failed_read
    assert dom.reads == 1


# ---------------------------------------------------------------------------------------------
# check mode and diff


def test_check_mode_predicts_and_writes_nothing_and_diff_shows_cpu(domains, run_tasks):
    dom = domains.define("a", "qemu", "<cpu mode='host-model'/>")
    before = inactive(dom)
    results = run_tasks([cpu_task(dom.name(), check_mode=True, diff_mode=True, mode="maximum", migratable=False)])
    predicted = results[0]
    assert inactive(dom) == before
    results = run_tasks([cpu_task(dom.name(), diff_mode=True, mode="maximum", migratable=False)])
    real = results[0]
    assert predicted["changed"] and real["changed"]
    assert only(predicted)["cpu"] == only(real)["cpu"] == stored_cpu(dom) == {"mode": "maximum", "check": "none", "migratable": False}
    [diff] = predicted["diff"]
    assert diff["before_header"] == "%s: <cpu> before" % dom.name()
    assert diff["before"] == "<cpu mode='host-model' check='partial'/>\n"
    assert diff["after"] == "<cpu mode='maximum' check='none' migratable='off'/>\n"
    assert real["diff"] == predicted["diff"]


# ---------------------------------------------------------------------------------------------
# running domains


@pytest.mark.parametrize("virt_type,start_cpu,args,new_model", [
    ("kvm", "<cpu mode='host-model'><feature policy='disable' name='arch-capabilities'/></cpu>",
     {"mode": "custom", "model": "KVM_MODEL", "features_mode": "replace"}, "KVM_MODEL"),
    ("qemu", "", {"mode": "host-model"}, "EPYC"),
], ids=["kvm-host-model-to-custom", "qemu-default-to-host-model"])
def test_running_guest_gets_the_new_cpu_on_restart_only(virt_type, start_cpu, args, new_model, virt_types, kvm_model,
                                                        domains, run_tasks):
    if virt_type not in virt_types:
        pytest.skip("no usable /dev/kvm")
    args = {key: kvm_model if value == "KVM_MODEL" else value for key, value in args.items()}
    new_model = kvm_model if new_model == "KVM_MODEL" else new_model
    dom = domains.define("a", virt_type, start_cpu, start=True)
    old_live = live_cpu(dom)
    name = dom.name()
    results = run_tasks([cpu_task(name, **args), cpu_task(name, **args),
                         cpu_task(name, check_mode=True, restart=True, **args),
                         cpu_task(name, restart=True, **args), cpu_task(name, restart=True, **args)])
    changed, pending, check_restart, restarted, settled = (only(result) for result in results)
    assert changed["changed"] and changed["restart_required"] and not changed["restarted"]
    assert changed["live_cpu"] == old_live and changed["state"] == "paused"
    assert not pending["changed"] and pending["restart_required"]
    assert check_restart["changed"] and check_restart["restarted"] and not check_restart["restart_required"]
    assert restarted["changed"] and restarted["restarted"] and not restarted["restart_required"]
    assert restarted["state"] == "paused" and dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
    assert restarted["live_cpu"] == live_cpu(dom) != old_live
    assert restarted["live_cpu"]["model"]["name"] == new_model
    assert not settled["changed"] and not settled["restart_required"] and not settled["restarted"]


def test_a_running_guest_that_ignores_shutdown_is_destroyed_after_the_timeout(domains, run_module):
    dom = domains.define("a", "qemu")
    dom.create()  # running, not paused: SeaBIOS without a disk never answers the ACPI request
    result = only(run_module("domain_cpu", {"name": dom.name(), "mode": "maximum", "restart": True, "shutdown_timeout": 1}))
    assert result["restarted"] and result["state"] == "running"
    assert live_cpu(dom)["mode"] == "maximum"


def test_a_failed_start_restores_the_previous_cpu_and_the_guest(domains, run_module):
    dom = domains.define("a", "qemu", "<cpu mode='host-model'/>", start=True)
    before, old_live = inactive(dom), live_cpu(dom)
    result = run_module("domain_cpu", dict(UNSTARTABLE, name=dom.name(), restart=True))
    assert result["failed"]
    assert "did not start with its new CPU" in result["msg"] and "cvt16" in result["msg"], result["msg"]
    assert "previous CPU definition was restored and it was started again paused" in result["msg"]
    [entry] = result["domains"]
    assert entry["rolled_back"] and not entry["restarted"] and entry["cpu"] == entry["cpu_before"] == stored_cpu(dom)
    assert entry["live_cpu"] == old_live and entry["state"] == "paused"
    assert inactive(dom) == before
    assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED and live_cpu(dom) == old_live


# ---------------------------------------------------------------------------------------------
# xml mode


def test_xml_mode_edits_text_without_libvirt(domains, run_tasks):
    dom = domains.define("a", "qemu", "<cpu mode='host-model'/>")
    before = inactive(dom)
    text = "<!-- templated -->\n" + before
    results = run_tasks([
        dict(module_task("domain_cpu", {"xml": text, "mode": "maximum"}, diff=True), register="edited"),
        module_task("domain_cpu", {"xml": "{{ edited.xml }}", "mode": "maximum"}),
        module_task("domain_cpu", {"xml": "{{ edited.xml }}", "state": "absent"}),
        module_task("domain_cpu", {"xml": text, "mode": "custom", "model": "EPYC", "features": {"svm": "mabye"}}),
    ])
    edited, again, absent, bad = results
    assert edited["changed"] and edited["cpu"] == {"mode": "maximum"}
    assert edited["xml"].startswith("<!-- templated -->\n") and without_cpu(edited["xml"]) == without_cpu(text)
    assert edited["diff"]["after"] == "<cpu mode='maximum'/>\n"
    assert not again["changed"] and again["xml"] == edited["xml"]
    assert absent["changed"] and "<cpu" not in absent["xml"]
    assert bad["failed"] and "policy 'mabye' is not valid" in bad["msg"]
    assert inactive(dom) == before  # the domain the XML came from was not touched


def test_a_topology_that_does_not_fit_vcpus_is_refused_for_every_such_domain(domains, run_tasks):
    """libvirt refuses a topology whose product is not <vcpu> at define; the check comes before any
    write, names every refused domain, and the result has each domain with its error."""
    fits = domains.define("fits", "qemu", "<cpu mode='host-model'/>", vcpus=4)
    short = [domains.define("short%d" % index, "qemu", "<cpu mode='host-model'/>", vcpus=2) for index in range(2)]
    names = [fits.name()] + [dom.name() for dom in short]
    before = {dom.name(): inactive(dom) for dom in [fits] + short}
    topology = {"sockets": 1, "cores": 4, "threads": 1}
    checked, real = run_tasks([cpu_task(names, topology=topology, check_mode=True), cpu_task(names, topology=topology)])
    for result in (checked, real):
        assert result["failed"]
        assert result["msg"].startswith("nothing was changed: 2 of 3 domains cannot take this CPU (%s, %s;" % tuple(names[1:]))
        assert "gives 4 vCPUs but the domain's <vcpu> (its maximum) is 2" in result["msg"]
        assert [domain["name"] for domain in result["domains"]] == names
        assert result["domains"][0]["error"] is None
        assert all("doesn't match maximum vcpu count" in domain["error"] for domain in result["domains"][1:])
    assert {dom.name(): inactive(dom) for dom in [fits] + short} == before


class StubModule:
    """What domain_cpu's Runner takes from AnsibleModule."""

    def __init__(self, names: List[str], **params: Any) -> None:
        self.params = dict({"name": names, "uri": "qemu:///system", "state": "present", "restart": False,
                            "shutdown_timeout": 60, "predict": False}, **params)
        self.check_mode = False
        self._diff = False
        self.warnings: List[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)


class RefusingConnection:
    """The real connection, except that the new definition of one domain gets a <vcpu> placement
    libvirt refuses (a define that fails after validation passed)."""

    def __init__(self, conn, refused: str, meanwhile: Any = None) -> None:
        self.conn = conn
        self.refused = refused
        self.meanwhile = meanwhile  # what another client does right before that define

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.conn, attribute)

    def defineXML(self, text: str):  # pylint: disable=invalid-name
        if "<name>%s</name>" % self.refused in text:
            text = text.replace("<vcpu", "<vcpu placement='nowhere'", 1)
            if self.meanwhile is not None:
                self.meanwhile()
        return self.conn.defineXML(text)


def test_a_define_refused_part_way_puts_back_the_domains_written_before_it(conn, domains):
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._domain_cpu import Runner
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError

    doms = [domains.define(label, "qemu", "<cpu mode='host-model'/>") for label in ("first", "second", "third")]
    names = [dom.name() for dom in doms]
    before = {dom.name(): inactive(dom) for dom in doms}
    runner = Runner(StubModule(names), RefusingConnection(conn, names[1]), {"mode": "maximum"}, "merge")
    with pytest.raises(CPUError) as caught:
        runner.run()
    message = str(caught.value)
    assert message.startswith("defining '%s' failed: " % names[1]) and "nowhere" in message
    assert message.endswith("got their previous definitions back, byte for byte: %s" % names[0])
    assert {dom.name(): inactive(dom) for dom in doms} == before
    results = runner.outcome()["domains"]
    assert [(item["name"], item["changed"], item.get("rolled_back", False)) for item in results] == [
        (names[0], False, True), (names[1], False, False), (names[2], False, False)]
    assert results[1]["error"] == message.split("; the domains written", maxsplit=1)[0] and results[0]["error"] is None
    assert not runner.outcome()["changed"]


def test_a_domain_changed_by_someone_else_after_the_write_is_not_rolled_back_over_that_change(conn, domains):
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._domain_cpu import Runner
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError

    doms = [domains.define(label, "qemu", "<cpu mode='host-model'/>") for label in ("first", "second")]
    names = [dom.name() for dom in doms]

    def other_change() -> None:
        doms[0].setMetadata(libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, "set by someone else", None, None, libvirt.VIR_DOMAIN_AFFECT_CONFIG)

    runner = Runner(StubModule(names), RefusingConnection(conn, names[1], other_change), {"mode": "maximum"}, "merge")
    with pytest.raises(CPUError) as caught:
        runner.run()
    assert "NOT restored, check them: %s (changed by someone else since this task wrote it; left as it is)" % names[0] in str(caught.value)
    assert "set by someone else" in inactive(doms[0]) and stored_cpu(doms[0])["mode"] == "maximum"
    first = runner.outcome()["domains"][0]
    assert first["changed"] and first["cpu"]["mode"] == "maximum" and "someone else" in first["error"]


# ---------------------------------------------------------------------------------------------
# a change by someone else between read and write


def test_a_concurrent_change_is_not_overwritten(conn, domains):
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._versions import parse_version
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._domain_cpu import read_job, write_job
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._throwaway import DefaultModels

    dom = domains.define("a", "qemu", "<cpu mode='host-model'/>")
    version = parse_version(conn.getLibVersion())
    job = read_job(conn, dom.name(), "qemu:///system", {"mode": "maximum"}, {"state": "present"}, "merge", version,
                   DefaultModels(conn, print))
    assert job.plan.changed
    conn.defineXML(inactive(dom).replace("<memory unit='KiB'>65536</memory>", "<memory unit='KiB'>131072</memory>"))
    changed_by_other = inactive(dom)
    with pytest.raises(CPUError, match="was changed by someone else"):
        write_job(conn, job)
    assert inactive(dom) == changed_by_other


# ---------------------------------------------------------------------------------------------
# predict: the live CPU (or the refusal) before any start


def test_predict_tells_the_start_failure_before_a_restart(domains, run_module):
    dom = domains.define("a", "qemu", "<cpu mode='host-model'/>", start=True)
    before = inactive(dom)
    entry = only(run_module("domain_cpu", dict(UNSTARTABLE, name=dom.name(), predict=True), check=True))
    assert "Property 'EPYC-x86_64-cpu.cvt16' not found" in entry["predicted_start_error"], entry
    assert inactive(dom) == before


def test_predicted_live_cpu_is_what_the_restart_gives(domains, run_module):
    dom = domains.define("a", "qemu", start=True)
    entry = only(run_module("domain_cpu", {"name": dom.name(), "mode": "host-model", "predict": True, "restart": True}))
    assert entry["restarted"] and entry["predicted_live_cpu"] == entry["live_cpu"] == live_cpu(dom)


def test_a_failed_restart_of_an_earlier_change_starts_the_guest_with_the_cpu_it_ran(domains, run_tasks):
    dom = domains.define("a", "qemu", "<cpu mode='host-model'/>", start=True)
    old_live = live_cpu(dom)
    changed, failed = run_tasks([cpu_task(dom.name(), **UNSTARTABLE), cpu_task(dom.name(), restart=True, **UNSTARTABLE)])
    assert only(changed)["restart_required"]
    new_definition = inactive(dom)
    assert failed["failed"] and "cvt16" in failed["msg"], failed["msg"]
    assert "started again paused with the CPU it ran with; its definition is unchanged" in failed["msg"]
    assert inactive(dom) == new_definition
    assert stored_cpu(dom) == {"mode": "host-model", "check": "partial", "features": [{"name": "cvt16", "policy": "force"}]}
    assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
    assert live_cpu(dom) == old_live
