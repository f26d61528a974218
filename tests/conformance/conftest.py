# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Conformance with libvirt's own test data: the match rate, printed at the end of the run."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

REPORT = Path(__file__).resolve().parents[1] / "output" / "conformance.txt"
RESULTS: Dict[str, List[bool]] = {}
MISSES: List[str] = []


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # pylint: disable=unused-argument
    if not RESULTS:
        return
    lines = ["live_cpu conformance with libvirt 9.0's test data"]
    total = matched = 0
    for family, outcomes in sorted(RESULTS.items()):
        lines.append("  %-10s %3d/%3d match (%.1f%%)" % (family, sum(outcomes), len(outcomes), 100.0 * sum(outcomes) / len(outcomes)))
        total += len(outcomes)
        matched += sum(outcomes)
    lines.append("  all        %3d/%3d match (%.1f%%)" % (matched, total, 100.0 * matched / total))
    lines.extend("  MISS " + miss for miss in MISSES)
    text = "\n".join(lines)
    terminalreporter.write_sep("=", "live_cpu conformance")
    terminalreporter.write_line(text)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(text + "\n", encoding="utf-8")
