# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""domain_cpu over libvirt's own test domains (corpus.py says what each step runs and compares).

`make test` runs a sample (CORPUS_SAMPLE files of each libvirt version, default 40); `make corpus`
runs every file (CORPUS_SAMPLE=0); CORPUS_MATCH=<text> keeps only the files whose path has it. The counts per step and per cause go to the terminal and to
tests/output/corpus.md; every broken promise fails the test.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List

import pytest

from conftest import assert_no_crash, domain_name, local_play, run_playbook
from corpus import STEPS, SUITES, TREES, Corpus, StepReport, collect, compare_step

OUTPUT = Path(__file__).resolve().parents[1] / "output" / "corpus.md"


def task(names: List[str], args: Dict[str, Any], check_mode: bool) -> Dict[str, Any]:
    return {"name": "domain_cpu", "hostcpu.libvirt.domain_cpu": dict(args, name=names), "check_mode": check_mode,
            "ignore_errors": True}


def run(names: List[str], args: Dict[str, Any], check_mode: bool, tmp_path: Path, env: Dict[str, str]) -> Dict[str, Any]:
    if not names:
        return {"changed": False, "domains": []}
    outcome = run_playbook([local_play([task(names, args, check_mode)])], tmp_path, env, timeout=1800)
    assert_no_crash(outcome.text)
    return outcome.results()[0]


def run_step(corpus: Corpus, step: str, args: Dict[str, Any], tmp_path: Path, env: Dict[str, str]) -> StepReport:
    names = corpus.names
    report = StepReport(step, len(names))
    before = corpus.definitions(names)
    check = run(names, args, True, tmp_path, env)
    refused = {item["name"] for item in check.get("domains") or [] if item.get("error")}
    real_all = run(names, args, False, tmp_path, env) if refused else {}
    after_refusal = corpus.definitions(names) if refused else before
    accepted = [name for name in names if name not in refused]
    check_rest = run(accepted, args, True, tmp_path, env) if refused else check
    real = run(accepted, args, False, tmp_path, env)
    after = corpus.definitions(names)
    again = run(accepted, args, False, tmp_path, env)
    compare_step(report, corpus.label_of, before, check, real_all, after_refusal, check_rest, real, after, again)
    return report


def write_report(corpus: Corpus, reports: List[StepReport]) -> str:
    lines = ["# domain_cpu over libvirt's test domains", "",
             "%d files with a distinct <domain> (%s), %d defined here; not defined, by cause:" % (
                 len(corpus.sources), ", ".join("libvirt %s" % version for version in SUITES.values()), len(corpus.names)), ""]
    lines += ["- %d: %s" % (len(labels), text) for text, labels in sorted(corpus.not_defined.items(), key=lambda item: -len(item[1]))]
    if corpus.crashed:
        lines += ["", "libvirtd died defining (a libvirt bug, restarted): %s" % ", ".join(corpus.crashed)]
    if corpus.unsettled:
        lines += ["", "libvirt changed its own output when it was defined again (the corpus starts from the second "
                      "definition): %s" % ", ".join(corpus.unsettled)]
    if corpus.not_redefinable:
        lines += ["", "libvirt refuses to define its own output again (domain_cpu refuses these domains, see the steps):"]
        lines += ["- %d: %s: %s" % (len(labels), text, ", ".join(labels)) for text, labels in corpus.not_redefinable.items()]
    lines += ["", "| step | domains | refused | changed | broken promises |", "|---|---|---|---|---|"]
    lines += [report.line() for report in reports]
    for report in reports:
        if report.refused:
            lines += ["", "Refused in step %s, by cause:" % report.step, ""]
            lines += ["- %d: %s" % (len(names), text) for text, names in sorted(report.refused.items(), key=lambda item: -len(item[1]))]
        if report.broken:
            lines += ["", "Broken in step %s:" % report.step, ""] + ["- %s" % item for item in report.broken[:200]]
    text = "\n".join(lines) + "\n"
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    return text


def test_domain_cpu_over_libvirts_own_test_domains(private_daemon, tmp_path):
    if not all((TREES / suite).is_dir() for suite in SUITES):
        pytest.fail("libvirt's test data is missing: run 'make testdata'")
    sample = int(os.environ.get("CORPUS_SAMPLE", "40"))
    corpus = Corpus(private_daemon, domain_name("corpus-"), collect(sample or None, os.environ.get("CORPUS_MATCH", "")))
    env = {"LIBVIRT_DEFAULT_URI": private_daemon.uri}
    try:
        corpus.define_all()
        assert len(corpus.names) >= min(len(corpus.sources), 20) // 2, corpus.not_defined
        reports = [run_step(corpus, step, args, tmp_path, env) for step, args in STEPS]
    finally:
        corpus.remove_all()
        corpus.conn.close()
    print(write_report(corpus, reports))
    assert all(not report.broken for report in reports), write_report(corpus, reports)
    assert any(report.changed for report in reports)
