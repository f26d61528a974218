# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every case of the matrix, started for real on each virt type, against live_cpu's prediction: 100% or fail."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from . import harness
from .matrix import matrix

VIRT_TYPES = ("kvm", "qemu")
# Two guests start side by side (2 cores); the slow destroys run in the reaper's threads.
WORKERS = 2


@pytest.mark.timeout(900)
@pytest.mark.parametrize("virt_type", VIRT_TYPES)
def test_live_cpu_matches_started_guests(conn, facts, results, virt_type):
    if virt_type not in facts["virt_types"]:
        pytest.fail("this host offers no '%s' guests (%s); the accuracy run needs both kvm and qemu: run 'make daemons' "
                    "and check /dev/kvm" % (virt_type, facts["unavailable_virt_types"].get(virt_type)), pytrace=False)
    entry = facts["virt_types"][virt_type]
    token = harness.run_token()
    reaper = harness.Reaper(conn)
    cases = matrix(virt_type)

    def one(numbered):
        number, (label, cpu) = numbered
        name = "%s%s-%s-%02d" % (harness.PREFIX, token, virt_type, number)
        actual = harness.run_real(conn, reaper, entry, name, cpu)
        predicted = harness.run_prediction(facts, virt_type, cpu)
        return harness.compare(virt_type, label, cpu, predicted, actual)

    try:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            mine = list(pool.map(one, enumerate(cases)))
    finally:
        reaper.close()
    results.extend(mine)
    leftovers = [name for name in conn.listDefinedDomains() + [d.name() for d in conn.listAllDomains()]
                 if name.startswith("%s%s-" % (harness.PREFIX, token))]
    assert not leftovers, "case domains left behind: %s" % leftovers
    failed = [r for r in mine if not r.matches]
    assert not failed, "%d of %d %s cases differ from the real guests:\n%s" % (
        len(failed), len(mine), virt_type, harness.report(failed))
