# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""domain_cpu over a corpus nobody here wrote: the domain XMLs of libvirt's own tests.

The files come from the libvirt source trees of `make testdata` (9.0 and 11.3): qemuxml2argvdata,
qemuxml2xmloutdata, qemuxmlconfdata, genericxml2xmlindata and domainschemadata. Each distinct
<domain> is renamed, loses its UUID (the tests share a few) and is defined in the private libvirtd;
what libvirt refuses to define here (an emulator this machine lacks, a newer element) is counted
by cause and left out. Then, for every step, one domain_cpu task over all of them:

1. check mode over all: the domains refused, by cause (each named in domains[].error);
2. for real over all: refused the same way, and nothing written (no partial writes);
3. check mode over the others: no refusal left (the refusals were complete);
4. for real over the others: each domain's changed and CPU as check mode said, and nothing
   outside <cpu> changed (compared with --security-info);
5. again: nothing changed.
"""

from __future__ import annotations

import collections
import hashlib
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import libvirt
from lxml import etree

from ansible_collections.hostcpu.libvirt.plugins.module_utils._domain import outside_cpu_differences, read_cpu, without_cpu
from ansible_collections.hostcpu.libvirt.plugins.module_utils._throwaway import renamed_copy

ROOT = Path(__file__).resolve().parents[2]
TREES = ROOT / ".cache" / "libvirt-src"
CORPUS_DIRS = ("qemuxml2argvdata", "qemuxml2xmloutdata", "qemuxmlconfdata", "genericxml2xmlindata", "domainschemadata")
SUITES = {"bookworm": "9.0", "trixie": "11.3"}
INACTIVE = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
STEPS: List[Tuple[str, Dict[str, Any]]] = [
    ("host-model", {"mode": "host-model"}),
    ("custom qemu64, one feature disabled", {"cpu": {"mode": "custom", "model": {"name": "qemu64"},
                                                     "features": [{"name": "svm", "policy": "disable"}]}}),
    ("maximum", {"mode": "maximum"}),
    ("merge of one feature", {"features": {"x2apic": "disable"}}),
    ("state absent", {"state": "absent"}),
]


class Source:
    """One domain XML of the corpus."""

    def __init__(self, version: str, path: Path, root: Any) -> None:
        self.version = version
        self.path = path
        self.root = root

    @property
    def label(self) -> str:
        return "%s %s/%s" % (self.version, self.path.parent.name, self.path.name)

    def renamed(self, name: str) -> str:
        """The domain as *name* with a UUID of its own (the tests share a few)."""
        return renamed_copy(etree.tostring(self.root, encoding="unicode"), name)


def collect(sample: Optional[int] = None, match: str = "") -> List[Source]:
    """The distinct <domain> files of every suite's tree whose path contains *match*; with
    *sample*, about that many of each version, spread evenly over the sorted files (the same ones
    every run)."""
    sources: List[Source] = []
    seen = set()
    parser = etree.XMLParser(remove_blank_text=False, resolve_entities=False, no_network=True)
    for suite, version in SUITES.items():
        tree = TREES / suite
        paths = sorted(path for directory in CORPUS_DIRS for path in (tree / "tests" / directory).glob("*.xml") if match in str(path))
        if sample:
            paths = paths[::max(1, len(paths) // sample)][:sample]
        for path in paths:
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            try:
                root = etree.fromstring(data, parser)
            except etree.XMLSyntaxError:
                continue
            if root.tag == "domain":
                sources.append(Source(version, path, root))
    return sources


def cause(message: str) -> str:
    """The cause of a refusal without what is particular to one domain (names, numbers, quoted values)."""
    text = re.sub(r"hostcpu-test-[\w-]+", "<domain>", message)
    text = re.sub(r"'[^']*'", "'…'", text)
    text = re.sub(r"\d+", "N", text)
    return text[:160]


class Corpus:
    """The corpus defined in one libvirtd, and the comparisons of every step."""

    def __init__(self, daemon, prefix: str, sources: List[Source]) -> None:
        self.daemon = daemon
        self.conn = daemon.open()
        self.prefix = prefix
        self.sources = sources
        self.names: List[str] = []
        self.label_of: Dict[str, str] = {}
        self.not_defined: Dict[str, List[str]] = collections.defaultdict(list)
        self.crashed: List[str] = []
        self.unsettled: List[str] = []
        self.not_redefinable: Dict[str, List[str]] = collections.defaultdict(list)

    def define_all(self) -> None:
        for index, source in enumerate(self.sources):
            name = "%s%04d" % (self.prefix, index)
            try:
                self.conn.defineXML(source.renamed(name))
            except libvirt.libvirtError as exc:
                if not self.conn.isAlive() or self.daemon.process.poll() is not None:
                    self.revive(source)
                else:
                    self.not_defined[cause(exc.get_error_message())].append(source.label)
                continue
            self.names.append(name)
            self.label_of[name] = source.label
            self.settle(name, source)

    def settle(self, name: str, source: Source) -> None:
        """Define libvirt's own output once more: where that changes the definition (libvirt 9.0
        reads back a shmem size it printed rounded to 0 M as its default 4 M), the corpus starts from
        the settled one, so that a step compares only what domain_cpu did (domain_cpu warns about
        such changes when it writes)."""
        printed = self.conn.lookupByName(name).XMLDesc(INACTIVE)
        try:
            self.conn.defineXML(printed)
        except libvirt.libvirtError as exc:
            self.not_redefinable[cause(exc.get_error_message())].append(source.label)
            return
        if self.conn.lookupByName(name).XMLDesc(INACTIVE) != printed:
            self.unsettled.append(source.label)

    def revive(self, source: Source) -> None:
        """libvirtd died on *source* (a libvirt bug, counted apart): start it again."""
        self.crashed.append(source.label)
        self.daemon.process.wait(timeout=60)
        self.daemon.start()
        self.conn = self.daemon.open()

    def remove_all(self) -> None:
        for name in self.names:
            try:
                self.conn.lookupByName(name).undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
            except libvirt.libvirtError:
                pass

    def definitions(self, names: Iterable[str]) -> Dict[str, str]:
        return {name: self.conn.lookupByName(name).XMLDesc(INACTIVE) for name in names}


class StepReport:
    """The counts of one step, and every broken promise (which must stay empty)."""

    def __init__(self, step: str, domains: int) -> None:
        self.step = step
        self.domains = domains
        self.refused: Dict[str, List[str]] = collections.defaultdict(list)
        self.changed = 0
        self.broken: List[str] = []

    def line(self) -> str:
        return "| %s | %d | %d | %d | %d |" % (self.step, self.domains, sum(map(len, self.refused.values())), self.changed,
                                               len(self.broken))


def results_by_name(result: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {item["name"]: item for item in result.get("domains") or []}


def compare_step(report: StepReport, labels: Dict[str, str], before: Dict[str, str], check: Dict[str, Any], real_all: Dict[str, Any],
                 after_refusal: Dict[str, str], check_rest: Dict[str, Any], real: Dict[str, Any],
                 after: Dict[str, str], again: Dict[str, Any]) -> None:
    """Fill *report* from the five runs of one step (see the module's docstring)."""
    refused = {name for name, item in results_by_name(check).items() if item.get("error")}
    for name in sorted(refused):
        report.refused[cause(results_by_name(check)[name]["error"])].append(name)
    if bool(refused) != bool(check.get("failed")):
        report.broken.append("check mode failed=%s with %d refused domains: %s" % (check.get("failed"), len(refused), check.get("msg")))
    real_refused = {name for name, item in results_by_name(real_all).items() if item.get("error")}
    if refused and real_refused != refused:
        report.broken.append("the real run refused %d domains, check mode %d" % (len(real_refused), len(refused)))
    if refused:
        report.broken += ["%s: written although the task was refused" % name for name in before if after_refusal[name] != before[name]]
    runs = ((check_rest, "check mode over the accepted domains"), (real, "the real run over the accepted domains"),
            (again, "the second run"))
    failed = [(what, run) for run, what in runs if run.get("failed")]
    report.broken += ["%s failed: %s" % (what, run.get("msg", "")[:500]) for what, run in failed]
    if failed:
        return
    predicted, done, second = results_by_name(check_rest), results_by_name(real), results_by_name(again)
    for name, item in done.items():
        report.changed += bool(item["changed"])
        if name in predicted and (predicted[name]["changed"], predicted[name]["cpu"]) != (item["changed"], item["cpu"]):
            report.broken.append("%s: check mode said changed=%s cpu=%s, the real run changed=%s cpu=%s"
                                 % (name, predicted[name]["changed"], predicted[name]["cpu"], item["changed"], item["cpu"]))
        if item["cpu"] != read_cpu(after[name]):
            report.broken.append("%s: the result's cpu %s is not the stored one %s" % (name, item["cpu"], read_cpu(after[name])))
        if without_cpu(after[name]) != without_cpu(before[name]):
            report.broken.append("%s (%s): changed outside <cpu>: %s" % (name, labels.get(name), outside_cpu_differences(before[name], after[name])))
    report.broken += ["%s: changed again on the second run" % name for name, item in second.items() if item["changed"]]
