# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every case of the matrix, started for real on each virt type, against live_cpu's prediction: 100% or fail."""

from __future__ import annotations

import pytest

from . import harness
from .conftest import URI

VIRT_TYPES = ("kvm", "qemu")


@pytest.mark.timeout(900)
@pytest.mark.parametrize("virt_type", VIRT_TYPES)
def test_live_cpu_matches_started_guests(conn, facts, results, virt_type):
    if virt_type not in facts["virt_types"]:
        pytest.fail("this host offers no '%s' guests (%s); the accuracy run needs both kvm and qemu: run 'make daemons' "
                    "and check /dev/kvm" % (virt_type, facts["unavailable_virt_types"].get(virt_type)), pytrace=False)
    target = harness.Target.of(URI, facts, virt_type)
    name_prefix = "%s%s-%s-" % (harness.PREFIX, harness.run_token(), virt_type)
    mine = harness.run_matrix(conn, facts, target, name_prefix, harness.guest_log_dir())
    results.extend(mine)
    harness.fail_on_differences(mine)
