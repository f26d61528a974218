# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_expansion replays libvirt's own CPU tests, per libvirt source tree: qemuxml2argv / qemuxmlconf
host-model, cputest update, guest CPU and update-live cases. Fails (never skips) without the
test data: run `make testdata`.

Trees: every tree scripts/fetch-testdata.sh unpacked by default (libvirt 7.0, 9.0 and 11.3; a
default run without one of them fails); HOSTCPU_CONFORMANCE_TREES=current (this machine's libvirt),
=11.3, =trixie or =9.0,11.3 for some of them;
HOSTCPU_LIBVIRT_SRC=/path[:/path...] for any libvirt tree (7.0 to 12.x). Case ids are
`<libvirt version>/<family>/<name>`.
"""

from __future__ import annotations

from typing import Dict, List

import pytest

from . import conftest, testdata

TREES = testdata.selected_trees()
# tree label -> why its cases cannot be built (data missing, or a test program the harness cannot read)
MISSING: Dict[str, str] = {tree.label: reason for tree in TREES for reason in [tree.missing_reason()] if reason}


def _cases_of(tree: testdata.Tree) -> List[testdata.Case]:
    try:
        return tree.cases()
    except (OSError, LookupError, ValueError, AttributeError) as exc:
        MISSING[tree.label] = "cannot build the cases of %r: %s: %s" % (tree, type(exc).__name__, exc)
        return []


CASES: List[testdata.Case] = [case for tree in TREES if tree.label not in MISSING for case in _cases_of(tree)]
conftest.TREES.update((tree.label, str(tree.path)) for tree in TREES)


def _tree_ids(trees: List[testdata.Tree]) -> List[str]:
    return [tree.label for tree in trees]


def test_the_default_run_has_every_expected_version():
    if testdata.os.environ.get(testdata.SOURCE_VARIABLE) or testdata.os.environ.get(testdata.TREES_VARIABLE, "all") != "all":
        return
    assert {tree.version for tree in TREES} >= set(testdata.EXPECTED_VERSIONS), (
        "make testdata fetches libvirt %s; found %s" % (", ".join(testdata.EXPECTED_VERSIONS),
                                                        ", ".join(sorted(str(tree.version) for tree in TREES))))


@pytest.mark.parametrize("tree", TREES, ids=_tree_ids(TREES))
def test_libvirt_testdata_is_there(tree):
    assert tree.label not in MISSING, MISSING.get(tree.label)


@pytest.mark.parametrize("tree", TREES, ids=_tree_ids(TREES))
def test_every_family_has_cases(tree):
    if tree.label in MISSING:
        pytest.fail(MISSING[tree.label], pytrace=False)
    families = {case.family for case in CASES if case.tree == tree.label}
    assert families == set(testdata.FAMILIES)
    assert len([case for case in CASES if case.tree == tree.label]) >= 60


@pytest.mark.parametrize("tree", TREES, ids=_tree_ids(TREES))
def test_cpu_map_is_read(tree):
    """The collection's cpu_map_from_xml finds the tree's models (libvirt 11.x puts index.xml's
    includes inside <group> elements)."""
    if tree.label in MISSING:
        pytest.fail(MISSING[tree.label], pytrace=False)
    cpu_map = tree.cpu_map
    assert cpu_map["models"] and cpu_map["features"], (
        "cpu_map_from_xml read %d models and %d features from %s/src/cpu_map"
        % (len(cpu_map["models"]), len(cpu_map["features"]), tree.path))


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_libvirt_case(case):
    agreed = False
    try:
        got = case.run()
        agreed = got == case.expected
        if not agreed:
            conftest.MISSES.append("%s: expected %r, got %r" % (case.id, case.expected, got))
        assert agreed, "expected %r, got %r" % (case.expected, got)
    except Exception as exc:  # pylint: disable=broad-except
        if not isinstance(exc, AssertionError):
            conftest.MISSES.append("%s: %s: %s" % (case.id, type(exc).__name__, exc))
        raise
    finally:
        conftest.record(case.tree, case.family, agreed)
