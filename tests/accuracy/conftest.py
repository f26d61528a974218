# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""`make accuracy`: the real libvirtd, this host's facts, and the report at the end of the run.

Not skippable: without a libvirt daemon (or kvm) the suite fails and says what to run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is missing; run 'make venv'")

from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts import build_facts  # noqa: E402
from ansible_collections.hostcpu.libvirt.plugins.module_utils._probe import probe  # noqa: E402

from . import harness  # noqa: E402

URI = "qemu:///system"
REPORT = Path(__file__).resolve().parents[1] / "output" / "accuracy.txt"
RESULTS: List[harness.Result] = []


def _silence(_ctx: Any, _err: Any) -> None:
    return None


@pytest.fixture(scope="session")
def conn():
    libvirt.registerErrorHandler(_silence, None)
    try:
        connection = libvirt.open(URI)
    except libvirt.libvirtError as exc:
        pytest.fail("no libvirt daemon at %s (%s); run 'make daemons' first" % (URI, exc), pytrace=False)
    yield connection
    connection.close()


@pytest.fixture(scope="session")
def facts(conn) -> Dict[str, Any]:
    """ansible_facts.hostcpu as cpu_facts sets it (its module_utils, run here directly)."""
    found = probe(conn, None, False, True)
    if found["expansion_errors"]:
        pytest.fail("cpu_facts could not measure the expansion data: %s" % found["expansion_errors"], pytrace=False)
    facts = build_facts(found["capabilities_xml"], found["domcaps"], found["versions"], found["expansions"],
                        found["verified"], found["expansion_data"])
    facts["unavailable_virt_types"] = found["unavailable"]
    return facts


@pytest.fixture(scope="session")
def results() -> List[harness.Result]:
    return RESULTS


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # pylint: disable=unused-argument
    harness.write_report(terminalreporter, RESULTS, REPORT, "live_cpu accuracy: predictions vs. guests started on this host")
