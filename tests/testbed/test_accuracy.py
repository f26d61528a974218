# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The accuracy matrix of tests/accuracy on every testbed host and each virt type it offers.

The prediction comes from the facts users have: hostcpu.libvirt.cpu_facts run by Ansible against
that host (over SSH for the chroot hosts, with the host's own Python, libvirt and CPU map); the
real guests start on that host's own libvirtd, at most two alive at once per host and virt type,
named
``hostcpu-testbed-<run>-acc-<suite>-<virt type>-<n>``, machine type and emulator from the host's
facts. Model names a host's libvirt or QEMU does not know stay cases: the expected answer is the
refusal libvirt gives there. The matrices of PARALLEL_RUNS hosts run at once (a run mostly waits
for libvirt and QEMU, not for the CPU); each test waits for its own. The figures per host and virt
type end up in the terminal summary and in tests/output/accuracy-testbed.txt.

Every host and virt type must predict every case exactly (refusals with libvirt's reason).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Dict, Iterator, List, Tuple, Union

import pytest

from ansible_collections.hostcpu.libvirt.tests.accuracy import harness

from conftest import HOSTS, AccuracyRun, Host, guest_name

VIRT_TYPES = ("kvm", "qemu")
ALIVE_GUESTS_PER_HOST = 2
PARALLEL_RUNS = 4


def host_facts(cpu_facts_results: Dict[str, Dict[str, Any]], host: Host, accuracy: AccuracyRun) -> Dict[str, Any]:
    """ansible_facts.hostcpu of *host* as cpu_facts returned them; its warnings go into the report."""
    result = cpu_facts_results[host.name]
    if result.get("failed"):
        pytest.fail("cpu_facts failed on %s: %s" % (host, result.get("msg")), pytrace=False)
    accuracy.notes.setdefault(host.name, ["cpu_facts warned: %s" % warning for warning in result.get("warnings") or []])
    return result["ansible_facts"]["hostcpu"]


def _run(host: Host, virt_type: str, cpu_facts_results, connect, accuracy: AccuracyRun) -> Union[str, List[harness.Result]]:
    """The matrix of *host* and *virt_type*, or why the host offers no such guests."""
    facts = host_facts(cpu_facts_results, host, accuracy)
    if virt_type not in facts["virt_types"]:
        return "%s offers no %s guests: %s" % (host, virt_type, facts["unavailable_virt_types"].get(virt_type))
    target = harness.Target.of(host.name, facts, virt_type)
    name_prefix = guest_name("acc-%s-%s-" % (host.suite, virt_type))
    return harness.run_matrix(connect(host), facts, target, name_prefix, harness.guest_log_dir(host.tree),
                              alive=ALIVE_GUESTS_PER_HOST)


@pytest.fixture(scope="session")
def matrix_runs(cpu_facts_results, connect, accuracy) -> Iterator[Dict[Tuple[str, str], Future]]:
    """Every host's and virt type's run, started together (the hosts of one virt type side by side)."""
    for host in HOSTS:
        connect(host)
    pool = ThreadPoolExecutor(max_workers=PARALLEL_RUNS)
    runs = {(host.name, virt_type): pool.submit(_run, host, virt_type, cpu_facts_results, connect, accuracy)
            for virt_type in VIRT_TYPES for host in HOSTS}
    yield runs
    pool.shutdown(wait=True)


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("virt_type", VIRT_TYPES)
@pytest.mark.parametrize("host", HOSTS, ids=str)
def test_live_cpu_matches_started_guests(host, virt_type, matrix_runs, accuracy):
    outcome = matrix_runs[(host.name, virt_type)].result()
    if isinstance(outcome, str):
        pytest.skip(outcome)
    accuracy.results.extend(outcome)
    harness.fail_on_differences(outcome)
