# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_expansion replays libvirt 9.0's own CPU tests: qemuxml2argv host-model, cputest update,
guest CPU and update-live cases. Fails (never skips) without the test data: run `make testdata`."""

from __future__ import annotations

import pytest

from . import conftest, testdata

MISSING = testdata.missing_reason()
CASES = [] if MISSING else testdata.all_cases()
# Every case that differs from libvirt, with the reason; a listed case that starts to match fails too.
KNOWN_MISSES = {}


def test_libvirt_testdata_is_there():
    assert MISSING is None, MISSING


def test_every_family_has_cases():
    if MISSING:
        pytest.fail(MISSING, pytrace=False)
    families = {case.family for case in CASES}
    assert families == {"xml2argv", "update", "guest", "updatelive"}
    assert len(CASES) >= 60


@pytest.mark.parametrize("case", CASES, ids=[case.family + ":" + case.name for case in CASES])
def test_libvirt_case(case):
    got = case.run()
    matched = got == case.expected
    conftest.RESULTS.setdefault(case.family, []).append(matched)
    key = "%s:%s" % (case.family, case.name)
    if not matched:
        conftest.MISSES.append("%s: expected %r, got %r%s" % (key, case.expected, got,
                                                              " (known: %s)" % KNOWN_MISSES[key] if key in KNOWN_MISSES else ""))
    if key in KNOWN_MISSES:
        assert not matched, "%s matches libvirt now: drop it from KNOWN_MISSES" % key
    else:
        assert matched, "expected %r, got %r" % (case.expected, got)
