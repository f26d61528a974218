# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The domain CPUs `make accuracy` starts on each virt type: every mode, feature overrides the host
has, lacks and that depend on other features, optional features, check values, topology,
match minimum and strict, several custom models, and definitions libvirt refuses.

Feature choices, meaningful on both test machines (nested KVM on an AMD EPYC and on an Intel Xeon,
libvirt 9.0, QEMU 7.2; the nested KVM of both gives neither svm nor vmx, and TCG emulates svm
whatever the host): clwb (every virt type gives it), pcid (neither KVM there nor TCG gives it),
avx512-fp16 (nobody gives it), sse4.2 (inside the models), invtsc (non-migratable), the dependants
rdctl-no (MSR 0x10a, on arch-capabilities), npt (on svm: given by TCG, absent under KVM) and
vmx-entry-ia32e-mode (on vmx and lm: absent everywhere there, given with nested vmx), cvt16 (in
libvirt's CPU map, unknown to QEMU 7.2), ht and topoext (never enabled by 'max' on its own). MSR
0x10a: the AMD host's KVM refuses every nonzero write (so kvm cases disable arch-capabilities), the
Intel host's only for a guest whose CPUID level stops below leaf 7 (486, pentium3: the c-486-* and
c-pentium3-* cases; erms raises QEMU's level to 7, md-clear does not).
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

Case = Tuple[str, Any]

NOARCH = {"name": "arch-capabilities", "policy": "disable"}
TOPOLOGY = {"sockets": 1, "dies": 1, "cores": 2, "threads": 1}
CUSTOM_MODELS = ("qemu64", "kvm64", "486", "pentium3", "Opteron_G2", "Westmere", "Haswell-noTSX", "EPYC",
                 "EPYC-Rome", "Cascadelake-Server-noTSX")


def _f(name: str, policy: str = "require") -> Dict[str, str]:
    return {"name": name, "policy": policy}


def _host_model(fix: List[Dict[str, str]], **extra: Any) -> Dict[str, Any]:
    features = list(fix) + list(extra.pop("features", []))
    cpu = {"mode": "host-model", **extra}
    if features:
        cpu["features"] = features
    return cpu


def host_model_cases(virt_type: str) -> List[Case]:
    fix = [NOARCH] if virt_type == "kvm" else []
    cases: List[Case] = [
        ("hm", {"mode": "host-model"}),
        ("hm-check-full", {"mode": "host-model", "check": "full"}),
        ("hm-fix", _host_model(fix)),
        ("hm-fix-check-none", _host_model(fix, check="none")),
        ("hm-fix-check-full", _host_model(fix, check="full")),
        ("hm-fix-topology", _host_model(fix, topology=dict(TOPOLOGY))),
        ("hm-fix-topology-threads", _host_model(fix, topology={"sockets": 1, "dies": 1, "cores": 1, "threads": 2})),
        ("hm-fix-vendor-id", _host_model(fix, model={"vendor_id": "HostCPUTest1"})),
        ("hm-fix-fallback-allow", _host_model(fix, model={"fallback": "allow"})),
        ("hm-fix-maxphysaddr", _host_model(fix, maxphysaddr={"mode": "emulate", "bits": 42})),
        ("hm-fix-cache-emulate", _host_model(fix, cache={"mode": "emulate", "level": 3})),
        ("hm-require-has", _host_model(fix, features=[_f("clwb")])),
        ("hm-require-first", _host_model([], features=[_f("x2apic")] + fix)),
        ("hm-require-not-given", _host_model(fix, features=[_f("pcid")])),
        ("hm-require-lacks", _host_model(fix, features=[_f("avx512-fp16")])),
        ("hm-require-invtsc", _host_model(fix, features=[_f("invtsc")])),
        ("hm-disable-listed", _host_model(fix, features=[_f("clwb", "disable")])),
        ("hm-disable-model-feature", _host_model(fix, features=[_f("sse4.2", "disable")])),
        ("hm-force-lacks", _host_model(fix, features=[_f("avx512-fp16", "force")])),
        ("hm-forbid-has", _host_model(fix, features=[_f("clwb", "forbid")])),
        ("hm-forbid-lacks", _host_model(fix, features=[_f("avx512-fp16", "forbid")])),
        ("hm-optional-has", _host_model(fix, features=[_f("clwb", "optional")])),
        ("hm-optional-lacks", _host_model(fix, features=[_f("avx512-fp16", "optional")])),
        ("hm-optional-pcid", _host_model(fix, features=[_f("pcid", "optional")])),
        ("hm-policies", _host_model(fix, features=[_f("avx512-fp16", "force"), _f("clwb", "optional"),
                                                   _f("avx2", "optional"), _f("umip", "disable")])),
        ("hm-unknown-feature", _host_model(fix, features=[_f("no-such-feature")])),
        ("hm-duplicate-feature", _host_model(fix, features=[_f("clwb"), _f("clwb", "disable")])),
    ]
    cases.append(("hm-disable-vmx", _host_model(fix, features=[_f("vmx", "disable")])))
    if virt_type == "kvm":
        cases += [
            ("hm-dependant-kept", _host_model(fix, features=[_f("rdctl-no")])),
            ("hm-dependant-disabled", {"mode": "host-model",
                                       "features": [_f("rdctl-no", "disable"), _f("mds-no", "disable"),
                                                    _f("skip-l1dfl-vmentry", "disable"), _f("pschange-mc-no", "disable")]}),
        ]
    else:
        cases += [
            ("hm-dependant-svm-off", _host_model(fix, features=[_f("svm", "disable")])),
            ("hm-dependant-npt-kept", _host_model(fix, features=[_f("svm", "disable"), _f("npt")])),
        ]
    return cases


def passthrough_cases(virt_type: str) -> List[Case]:
    fix = [NOARCH] if virt_type == "kvm" else []
    cases: List[Case] = []
    for mode, short in (("host-passthrough", "hp"), ("maximum", "max")):
        cases += [
            (short, {"mode": mode}),
            (short + "-fix", {"mode": mode, "features": fix} if fix else {"mode": mode}),
            (short + "-migratable-off", {"mode": mode, "migratable": False}),
            (short + "-fix-migratable-off", dict({"mode": mode, "migratable": False}, **({"features": fix} if fix else {}))),
            (short + "-fix-check-partial", dict({"mode": mode, "check": "partial"}, **({"features": fix} if fix else {}))),
            (short + "-fix-check-full", dict({"mode": mode, "check": "full"}, **({"features": fix} if fix else {}))),
            (short + "-require-lacks", {"mode": mode, "features": fix + [_f("avx512-fp16")]}),
            (short + "-require-lacks-check-full", {"mode": mode, "check": "full", "features": fix + [_f("avx512-fp16")]}),
            (short + "-disable-has", {"mode": mode, "features": fix + [_f("clwb", "disable")]}),
            (short + "-topology", {"mode": mode, "topology": dict(TOPOLOGY), "features": list(fix)}),
        ]
    return [(label, {k: v for k, v in cpu.items() if v != []}) for label, cpu in cases]


def custom_cases(virt_type: str) -> List[Case]:
    cases: List[Case] = [
        ("no-cpu", {}),
        ("topology-only", {"topology": dict(TOPOLOGY)}),
        ("vendor-id-only", {"model": {"vendor_id": "HostCPUTest1"}}),
    ]
    for model in CUSTOM_MODELS:
        cases += [
            ("c-%s" % model, {"model": {"name": model}}),
            ("c-%s-check-none" % model, {"check": "none", "model": {"name": model}}),
        ]
    for model in ("qemu64", "EPYC", "Westmere"):
        cases += [
            ("c-%s-check-full" % model, {"check": "full", "model": {"name": model}}),
            ("c-%s-forbid" % model, {"model": {"name": model, "fallback": "forbid"}}),
            ("c-%s-minimum" % model, {"match": "minimum", "model": {"name": model}}),
            ("c-%s-optional-has" % model, {"check": "none", "model": {"name": model}, "features": [_f("clwb", "optional")]}),
            ("c-%s-optional-lacks" % model, {"check": "none", "model": {"name": model},
                                             "features": [_f("avx512-fp16", "optional")]}),
            ("c-%s-require-lacks" % model, {"model": {"name": model}, "features": [_f("avx512-fp16")]}),
        ]
    cases += [
        ("c-EPYC-disable-svm", {"model": {"name": "EPYC"}, "features": [_f("svm", "disable")]}),
        ("c-EPYC-require-svm-npt", {"check": "none", "model": {"name": "EPYC"}, "features": [_f("svm"), _f("npt")]}),
        ("c-EPYC-Rome-disable-svm", {"check": "none", "model": {"name": "EPYC-Rome"}, "features": [_f("svm", "disable")]}),
        ("c-EPYC-strict", {"match": "strict", "model": {"name": "EPYC"}}),
        ("c-EPYC-vendor-amd", {"check": "none", "model": {"name": "EPYC"}, "vendor": "AMD"}),
        ("c-EPYC-vendor-intel", {"model": {"name": "EPYC"}, "vendor": "Intel"}),
        ("c-qemu64-require-vmx-dependant", {"check": "none", "model": {"name": "qemu64"},
                                            "features": [_f("vmx"), _f("vmx-entry-ia32e-mode")]}),
        ("c-qemu64-disable-vmx-require-dependant", {"check": "none", "model": {"name": "qemu64"},
                                                    "features": [_f("vmx", "disable"), _f("vmx-entry-ia32e-mode")]}),
        ("c-qemu64-disable-svm-pni", {"model": {"name": "qemu64"}, "features": [_f("svm", "disable"), _f("pni", "disable")]}),
        ("c-qemu64-topology", {"check": "none", "model": {"name": "qemu64"}, "topology": dict(TOPOLOGY)}),
        ("c-qemu64-vendor-id", {"check": "none", "model": {"name": "qemu64", "vendor_id": "HostCPUTest1"}}),
        ("c-qemu64-require-not-in-qemu", {"check": "none", "model": {"name": "qemu64"}, "features": [_f("cvt16")]}),
        ("c-qemu64-disable-not-in-qemu", {"check": "none", "model": {"name": "qemu64"}, "features": [_f("cvt16", "disable")]}),
        ("c-qemu64-no-autoenable", {"check": "none", "model": {"name": "qemu64"}, "features": [_f("ht"), _f("topoext")]}),
        ("max-no-autoenable", {"mode": "maximum", "check": "full", "features": [_f("ht"), _f("topoext")]
                               + ([NOARCH] if virt_type == "kvm" else [])}),
        ("c-kvm64-require-invtsc", {"check": "none", "model": {"name": "kvm64"}, "features": [_f("invtsc")]}),
        ("c-kvm64-forbid-has", {"model": {"name": "kvm64"}, "features": [_f("clwb", "forbid")]}),
        ("c-486-pcid", {"check": "none", "model": {"name": "486"}, "features": [_f("pcid")]}),
        ("c-486-arch-capabilities", {"check": "none", "model": {"name": "486"}, "features": [_f("arch-capabilities")]}),
        ("c-486-arch-capabilities-mds-no", {"check": "none", "model": {"name": "486"},
                                            "features": [_f("arch-capabilities"), _f("mds-no")]}),
        ("c-486-arch-capabilities-mds-no-erms", {"check": "none", "model": {"name": "486"},
                                                 "features": [_f("arch-capabilities"), _f("mds-no"), _f("erms")]}),
        ("c-486-arch-capabilities-mds-no-md-clear", {"check": "none", "model": {"name": "486"},
                                                     "features": [_f("arch-capabilities"), _f("mds-no"), _f("md-clear")]}),
        ("c-pentium3-arch-capabilities-rdctl-no", {"check": "none", "model": {"name": "pentium3"},
                                                   "features": [_f("arch-capabilities"), _f("rdctl-no")]}),
        ("c-Westmere-arch-capabilities-mds-no", {"check": "none", "model": {"name": "Westmere"},
                                                 "features": [_f("arch-capabilities"), _f("mds-no")]}),
        ("c-Cascadelake-noTSX-fix", {"check": "none", "model": {"name": "Cascadelake-Server-noTSX"}, "features": [NOARCH]}),
        ("c-Icelake-Client-allow", {"check": "none", "model": {"name": "Icelake-Client"}}),
        ("c-Icelake-Client-forbid", {"check": "none", "model": {"name": "Icelake-Client", "fallback": "forbid"}}),
        ("c-unknown-model", {"model": {"name": "NoSuchModel"}}),
        ("c-features-no-model", {"features": [_f("clwb")]}),
        ("c-vendor-no-model", {"vendor": "AMD"}),
        ("c-migratable-on", {"migratable": True, "model": {"name": "qemu64"}}),
    ]
    return cases


def matrix(virt_type: str) -> List[Case]:
    """Every case for *virt_type*, labels unique."""
    cases = host_model_cases(virt_type) + passthrough_cases(virt_type) + custom_cases(virt_type)
    labels = [label for label, _cpu in cases]
    assert len(labels) == len(set(labels)), "duplicate case labels"
    return cases
