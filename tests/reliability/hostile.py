# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hostile and malformed XML, the same set for every plugin that reads XML.

Each builder takes the canary file (a file nobody but an XML entity resolver would open) and the
port of a TCP listener that records connections, so a test can prove that nothing was read and
nobody connected. ``ROOTS`` are the documents the inputs are dressed as (a ``<cpu>``, a whole
``<domain>``, capabilities, domain capabilities), since each plugin expects one of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, NamedTuple

# How many bytes "very large" is: well beyond the 8 MiB _xml.parse_xml accepts.
LARGE_BYTES = 20 * 1024 * 1024


class Hostile(NamedTuple):
    name: str
    text: str
    words: tuple  # what the error message must say (any one of them, lower case)


DOCTYPE_WORDS = ("doctype or entity",)


def _wrap(root: str, body: str) -> str:
    if root == "cpu":
        return "<cpu mode='custom' match='exact'><model fallback='forbid'>%s</model></cpu>" % body
    if root == "domain":
        return ("<domain type='qemu'><name>%s</name><memory>65536</memory><os><type arch='x86_64'>hvm</type></os>"
                "<cpu mode='custom'><model>EPYC</model></cpu></domain>" % body)
    if root == "capabilities":
        return "<capabilities><host><cpu><arch>x86_64</arch><model>%s</model></cpu></host></capabilities>" % body
    return ("<domainCapabilities><path>/usr/bin/qemu-system-x86_64</path><domain>kvm</domain><arch>x86_64</arch>"
            "<cpu><mode name='host-model' supported='yes'><model>%s</model></mode></cpu></domainCapabilities>" % body)


def hostile_inputs(root: str, canary: Path, port: int) -> List[Hostile]:
    """Every hostile/malformed document for a plugin that reads <*root*> XML."""
    url = "http://127.0.0.1:%d" % port
    entity = "&x;"
    inputs = [
        Hostile("xxe-file", '<?xml version="1.0"?>\n<!DOCTYPE %s [<!ENTITY x SYSTEM "file://%s">]>\n%s'
                % (root, canary, _wrap(root, entity)), DOCTYPE_WORDS),
        Hostile("xxe-passwd", '<!DOCTYPE %s [<!ENTITY x SYSTEM "file:///etc/passwd">]>%s' % (root, _wrap(root, entity)),
                DOCTYPE_WORDS),
        Hostile("external-dtd", '<!DOCTYPE %s SYSTEM "%s/x.dtd">%s' % (root, url, _wrap(root, "EPYC")), DOCTYPE_WORDS),
        Hostile("external-dtd-file", '<!DOCTYPE %s SYSTEM "file://%s">%s' % (root, canary, _wrap(root, "EPYC")),
                DOCTYPE_WORDS),
        Hostile("xxe-http", '<!DOCTYPE %s [<!ENTITY x SYSTEM "%s/entity">]>%s' % (root, url, _wrap(root, entity)),
                DOCTYPE_WORDS),
        Hostile("parameter-entity", '<!DOCTYPE %s [<!ENTITY %% p SYSTEM "%s/p.dtd"> %%p;]>%s'
                % (root, url, _wrap(root, "EPYC")), DOCTYPE_WORDS),
        Hostile("billion-laughs", _billion_laughs(root), DOCTYPE_WORDS),
        Hostile("quadratic-blowup", '<!DOCTYPE %s [<!ENTITY a "%s">]>%s'
                % (root, "A" * 50000, _wrap(root, "&a;" * 2000)), DOCTYPE_WORDS),
        Hostile("xinclude", ('<cpu xmlns:xi="http://www.w3.org/2001/XInclude"><xi:include href="file://%s" parse="text"/>'
                             '<xi:include href="%s/xi"/></cpu>' % (canary, url)) if root == "cpu" else
                _wrap(root, '<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="file://%s" parse="text"/>'
                      % canary), ()),
        Hostile("schema-location", _wrap(root, "EPYC").replace(
            "<%s" % root, '<%s xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="urn:x %s/s.xsd"'
            % (root, url), 1), ()),
        Hostile("large", _wrap(root, "EPYC") + "<!--%s-->" % ("x" * LARGE_BYTES), ("bytes", "more than")),
        Hostile("not-well-formed", "<%s><model>EPYC</model>" % root, ("not well-formed",)),
        Hostile("not-xml", "EPYC, please", ("not well-formed",)),
        Hostile("nul", "<%s>\x00</%s>" % (root, root), ("not well-formed",)),
        Hostile("wrong-root", "<network><name>default</name></network>", ("expected", "<network>")),
        Hostile("deep", "<%s>%s%s</%s>" % (root, "<a>" * 5000, "</a>" * 5000, root), ()),
    ]
    return inputs


def _billion_laughs(root: str) -> str:
    lines = ['<!ENTITY lol0 "lol">']
    for level in range(1, 10):
        lines.append('<!ENTITY lol%d "%s">' % (level, ("&lol%d;" % (level - 1)) * 10))
    return '<?xml version="1.0"?>\n<!DOCTYPE %s [\n%s\n]>\n%s' % (root, "\n".join(lines), _wrap(root, "&lol9;"))


def utf16_doctype(canary: Path) -> bytes:
    """A DOCTYPE the plain-text check cannot see: the document is UTF-16 encoded bytes."""
    text = ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE cpu [<!ENTITY x SYSTEM "file://%s">]>'
            '<cpu mode="custom"><model>&x;</model></cpu>' % canary)
    return text.encode("utf-16")


ROOT_OF: Dict[str, str] = {
    "cpu_from_xml": "cpu",
    "live_cpu": "cpu",
    "cpu_blockers": "cpu",
    "runs_on": "cpu",
    "cpu_baseline.cpus": "cpu",
    "cpu_baseline.compare": "cpu",
    "domain_cpu.xml": "domain",
    "cpu_facts.capabilities_xml": "capabilities",
    "cpu_facts.domain_capabilities_xml": "domainCapabilities",
}

Builder = Callable[[str, Path, int], List[Hostile]]
