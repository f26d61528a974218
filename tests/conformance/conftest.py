# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Conformance with libvirt's own test data: the agreement per tree and family, printed at the end
of the run and written to tests/output/conformance.txt."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

REPORT = Path(__file__).resolve().parents[1] / "output" / "conformance.txt"
# (tree label, family) -> one bool per case run: does _expansion agree with libvirt?
RESULTS: Dict[Tuple[str, str], List[bool]] = {}
# tree label -> the tree's path
TREES: Dict[str, str] = {}
MISSES: List[str] = []


def record(tree: str, family: str, agreed: bool) -> None:
    RESULTS.setdefault((tree, family), []).append(agreed)


def _line(label: str, outcomes: List[bool]) -> str:
    agreed = sum(outcomes)
    return "    %-10s %3d cases, %3d agree (%.1f%%)" % (label, len(outcomes), agreed, 100.0 * agreed / len(outcomes))


def summary_lines() -> List[str]:
    lines = ["live_cpu conformance with libvirt's own test data"]
    for tree in sorted({tree for tree, _family in RESULTS}, key=_tree_order):
        lines.append("  libvirt %s (%s)" % (tree, TREES.get(tree, "?")))
        every: List[bool] = []
        for (label, family), outcomes in sorted(RESULTS.items()):
            if label == tree:
                lines.append(_line(family, outcomes))
                every += outcomes
        lines.append(_line("all", every))
    lines.extend("  MISS " + miss for miss in MISSES)
    return lines


def _tree_order(label: str) -> Tuple[int, ...]:
    numbers = label.split("@")[0].split(".")
    return tuple(int(part) if part.isdigit() else 0 for part in numbers)


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # pylint: disable=unused-argument
    if not RESULTS:
        return
    text = "\n".join(summary_lines())
    terminalreporter.write_sep("=", "live_cpu conformance")
    terminalreporter.write_line(text)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(text + "\n", encoding="utf-8")
