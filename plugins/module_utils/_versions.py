# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What libvirt does differently from one version to the next, as one table of rules.

Every answer about a host is computed with the rules of that host's libvirt, chosen from the
version in its facts by ``rules_for``. A row holds the whole set of rules from its ``since``
version up to the next row; each row is written as the changes against the row before it, with
the place in libvirt's source (or the measurement) that shows the change. Nothing outside this
table compares libvirt versions.

Rows between measured versions (7.0, 9.0, 11.3, 12.8 on the test fleet; 9.0 and 11.3 test data)
take the release that introduced the change from libvirt's NEWS where it names one; where it does
not, the first measured version that shows it.
"""

from __future__ import annotations

from typing import FrozenSet, NamedTuple, Optional, Tuple, Union

from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError

Version = Tuple[int, int, int]


class UnsupportedLibvirtVersion(CPUError):
    """The facts name a libvirt older than the oldest this collection knows the rules of."""


class LibvirtRules(NamedTuple):
    """The rules of one libvirt version range (from ``since`` to the next row)."""

    since: Version
    # XPaths (below index.xml's <arch>) of the CPU map files libvirt loads (src/cpu/cpu_map.c, loadIncludes)
    cpu_map_includes: Tuple[str, ...]
    # <cpu mode=...> values libvirt's grammar accepts (src/conf/cpu_conf.c, virCPUMode)
    modes: Tuple[str, ...]
    # features libvirt never passes to QEMU and drops from the guest CPU (qemu_capabilities.c,
    # virQEMUCapsCPUFilterFeatures)
    ignored_features: FrozenSet[str]
    # a model's <feature added='yes'/> is kept out of the model's data and check='full' does not
    # complain about it (src/cpu/cpu_x86.c, x86ModelParseFeatures and virCPUx86UpdateLive)
    added_model_features: bool
    # how check='partial' compares a custom CPU with the host (qemu_domain.c, qemuDomainCheckCPU):
    # "compare": the whole model against the host CPU (virCPUCompare);
    # "blockers": for models without <check partial='compat'/> only QEMU's blockers of the model and
    # the explicitly required features (virCPUCompareUnusable)
    partial_check: str
    # <topology clusters=...> exists (src/conf/cpu_conf.c)
    topology_clusters: bool
    # decoding CPU data into a model prefers fewer disabled features, not only a shorter list
    # (src/cpu/cpu_x86.c, virCPUx86CompareCandidateFeatureList; 7.0's x86DecodeUseCandidate counts)
    decode_penalizes_disabled: bool
    # disabled features QEMU does not know stay in the CPU definition (and the live XML) and are only
    # left off QEMU's -cpu (qemu_command.c, qemuBuildCpuModelArgStr); before, libvirt dropped them
    keeps_unknown_disabled_features: bool
    # <maxphysaddr> exists (NEWS 8.7.0); older versions drop the element at define
    maxphysaddr: bool
    # forbid features the host CPU lists fail the start before any comparison (qemu_process.c,
    # virCPUCheckForbiddenFeatures: "Host CPU provides forbidden feature 'x'"); before, only the
    # check='partial' comparison refuses them ("Host CPU provides forbidden features: x")
    checks_forbidden_features: bool
    # features check='full' does not compare with what QEMU enabled (virCPUx86UpdateLive never
    # sees them); the features of ignored_features up to 11.3 are compared (libvirt's cputest data)
    unchecked_features: FrozenSet[str]


def _changed(previous: LibvirtRules, since: Version, **changes) -> LibvirtRules:
    return previous._replace(since=since, **changes)


_LIBVIRT_7_0 = LibvirtRules(
    since=(7, 0, 0),
    cpu_map_includes=("include",),
    modes=("custom", "host-model", "host-passthrough"),
    ignored_features=frozenset(("cmt", "mbm_total", "mbm_local", "osxsave", "ospke")),
    added_model_features=False,
    partial_check="compare",
    topology_clusters=False,
    decode_penalizes_disabled=False,
    keeps_unknown_disabled_features=False,
    maxphysaddr=False,
    checks_forbidden_features=False,
    unchecked_features=frozenset(),
)
# NEWS 7.1.0: "Introduce maximum CPU mode" (7.0 refuses "Invalid mode attribute 'maximum'").
_LIBVIRT_7_1 = _changed(_LIBVIRT_7_0, (7, 1, 0), modes=_LIBVIRT_7_0.modes + ("maximum",))
# NEWS 7.2.0: "Check host CPU for forbidden features" (virCPUCheckForbiddenFeatures before start).
_LIBVIRT_7_2 = _changed(_LIBVIRT_7_1, (7, 2, 0), checks_forbidden_features=True)
# cpu_x86 "Penalize disabled features when computing CPU model" (libvirt 8.3.0): 7.0 lacks it, 9.0
# has it (conformance: libvirt 7.0's test data agrees only with the plain count).
_LIBVIRT_8_3 = _changed(_LIBVIRT_7_2, (8, 3, 0), decode_penalizes_disabled=True)
# NEWS 8.7.0: <maxphysaddr>.
_LIBVIRT_8_7 = _changed(_LIBVIRT_8_3, (8, 7, 0), maxphysaddr=True)
# NEWS 10.1.0: CPU clusters in <topology>.
_LIBVIRT_10_1 = _changed(_LIBVIRT_8_7, (10, 1, 0), topology_clusters=True)
# NEWS 10.5.0: "Fix migration with disabled vmx-* CPU features" (disabled unknown features are kept).
_LIBVIRT_10_5 = _changed(_LIBVIRT_10_1, (10, 5, 0), keeps_unknown_disabled_features=True)
# NEWS 10.10.0: versioned CPU models (-vN), which came with the grouped CPU map index, added='yes'
# features, <check partial='compat'/> and the blockers-based partial check (domcapabilities report
# blockers since 10.9.0); the three vmx-* features QEMU never supported joined the ignored list
# (first measured in 11.3; no 10.x tree was available to date these more precisely).
_LIBVIRT_10_10 = _changed(
    _LIBVIRT_10_5, (10, 10, 0),
    cpu_map_includes=("include", "group[@name]/include"),
    ignored_features=_LIBVIRT_10_1.ignored_features | {"vmx-ept-uc", "vmx-ept-wb", "vmx-invvpid-single-context"},
    added_model_features=True,
    partial_check="blockers",
)

# Measured on libvirt 12.8 + QEMU 11.1 (no 12.x source could be had): cmp_legacy and ht, whatever
# their policy, are no longer passed to QEMU and are gone from the live CPU, also when QEMU turns
# them on for a multi-core package (11.3 + QEMU 10.0 passes and lists them), like the features of
# virQEMUCapsCPUFilterFeatures; versions 12.0-12.7 were not measured. A 2-core guest with check='full'
# starts although QEMU 11.1 turned both on: check='full' does not compare them either.
_LIBVIRT_12_8 = _changed(_LIBVIRT_10_10, (12, 8, 0), ignored_features=_LIBVIRT_10_10.ignored_features | {"cmp_legacy", "ht"},
                         unchecked_features=frozenset(("cmp_legacy", "ht")))

RULES: Tuple[LibvirtRules, ...] = (_LIBVIRT_7_0, _LIBVIRT_7_1, _LIBVIRT_7_2, _LIBVIRT_8_3, _LIBVIRT_8_7, _LIBVIRT_10_1,
                                   _LIBVIRT_10_5, _LIBVIRT_10_10, _LIBVIRT_12_8)
OLDEST_SUPPORTED: Version = RULES[0].since
# The newest libvirt whose rules were measured; newer ones get these rules and a warning.
NEWEST_KNOWN: Version = (12, 8, 0)


class QemuRules(NamedTuple):
    """What QEMU does differently from one version to the next, where the probe cannot measure it."""

    since: Version
    # x86_cpu_expand_features sets ht, and cmp_legacy for a non-Intel vendor, when a package has more
    # than one logical CPU (dies x clusters x cores x threads > 1); before, only the CPUID answer had them
    topology_sets_ht: bool


_QEMU_5_2 = QemuRules(since=(5, 2, 0), topology_sets_ht=False)
# Measured on the testbed: QEMU 10.0 and 11.1 list ht (and cmp_legacy on AMD-vendor models) in the
# live CPU of a guest with cores=2 or threads=2, QEMU 7.2 does not ("i386/cpu: Set up CPUID_HT in
# x86_cpu_expand_features()", QEMU 10.0).
_QEMU_10_0 = _QEMU_5_2._replace(since=(10, 0, 0), topology_sets_ht=True)
QEMU_RULES: Tuple[QemuRules, ...] = (_QEMU_5_2, _QEMU_10_0)


def qemu_rules_for(version: Union[str, int, Tuple[int, ...], None]) -> QemuRules:
    """The rules of QEMU *version* (libvirt's hypervisor version); unknown: the newest."""
    parsed = _parsed(version)
    return QEMU_RULES[-1] if parsed is None else _row_for(QEMU_RULES, parsed)


def _parsed(version: Union[str, int, Tuple[int, ...], None]) -> Optional[Tuple[int, ...]]:
    return parse_version(version) if not isinstance(version, tuple) else tuple(version)[:3]


def _row_for(rows, parsed: Tuple[int, ...]):
    """The last row whose ``since`` is not newer than *parsed* (the first row for anything older)."""
    chosen = rows[0]
    for row in rows:
        if row.since <= parsed:
            chosen = row
    return chosen


def parse_version(text: Union[str, int, None]) -> Optional[Version]:
    """'9.0.0' or libvirt's integer 9000000 -> (9, 0, 0); None stays None."""
    if text is None:
        return None
    if isinstance(text, int):
        return (text // 1000000, (text // 1000) % 1000, text % 1000)
    parts = [int(part) for part in str(text).split(".")[:3] if part.isdigit()]
    while len(parts) < 3:
        parts.append(0)
    return (parts[0], parts[1], parts[2])


def _text(version: Version) -> str:
    return ".".join(str(part) for part in version)


def rules_for(version: Union[str, int, Tuple[int, ...], None]) -> LibvirtRules:
    """The rules of libvirt *version*; facts without a version get the newest rules."""
    parsed = _parsed(version)
    if parsed is None:
        return RULES[-1]
    if parsed < OLDEST_SUPPORTED:
        raise UnsupportedLibvirtVersion(
            "libvirt %s is older than %s, the oldest version hostcpu.libvirt knows the CPU rules of; upgrade "
            "libvirt on that host" % (_text(parsed), _text(OLDEST_SUPPORTED)))
    return _row_for(RULES, parsed)


def version_warning(version: Union[str, int, None]) -> Optional[str]:
    """A warning for a libvirt newer than the newest whose rules are known, else None."""
    parsed = parse_version(version)
    if parsed is None or parsed[:2] <= NEWEST_KNOWN[:2]:
        return None
    return ("libvirt %s is newer than %s, the newest version hostcpu.libvirt was tested with: its answers for "
            "this host use the rules of %s and may miss what changed since" % (
                _text(parsed), _text(NEWEST_KNOWN), _text(NEWEST_KNOWN)))
