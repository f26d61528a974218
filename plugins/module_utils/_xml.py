# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Safe XML parsing: no entity resolution, no DTD loading, no network, bounded size."""

from __future__ import annotations

from typing import Union

try:
    from lxml import etree
    HAS_LXML = True
    LXML_IMPORT_ERROR = None
except ImportError as _exc:  # pragma: no cover - exercised on hosts without lxml
    etree = None
    HAS_LXML = False
    LXML_IMPORT_ERROR = _exc

from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError

MAX_XML_BYTES = 8 * 1024 * 1024


class XMLInputError(CPUError):
    """The text given as XML cannot be read safely."""


def _parser() -> "etree.XMLParser":
    return etree.XMLParser(
        resolve_entities=False,
        load_dtd=False,
        no_network=True,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=False,
    )


def parse_xml(text: Union[str, bytes], what: str = "XML") -> "etree._Element":
    """Parse *text* and return the root element, refusing anything that is not plain XML."""
    if not HAS_LXML:
        raise CPUError("the Python library lxml is required to read %s; install python3-lxml or 'pip install lxml'" % what)
    if not isinstance(text, (str, bytes)):
        raise XMLInputError("%s must be XML text, got %s" % (what, type(text).__name__))
    try:
        data = text.encode("utf-8") if isinstance(text, str) else text
    except UnicodeEncodeError as exc:
        raise XMLInputError("%s is not valid text: %s" % (what, exc.reason)) from None
    if len(data) > MAX_XML_BYTES:
        raise XMLInputError("%s is %d bytes, more than the %d bytes accepted" % (what, len(data), MAX_XML_BYTES))
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise XMLInputError("%s contains a DOCTYPE or ENTITY declaration; libvirt never prints one, remove it" % what)
    if isinstance(text, str) and text.lstrip().startswith("<?xml"):
        data = text.encode("utf-8")
    try:
        root = etree.fromstring(data.strip(), parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise XMLInputError("%s is not well-formed XML: %s" % (what, exc)) from None
    if root is None:
        raise XMLInputError("%s is empty" % what)
    if root.getroottree().docinfo.doctype:
        # an encoding other than UTF-8 hides the declaration from the byte check above
        raise XMLInputError("%s contains a DOCTYPE or ENTITY declaration; libvirt never prints one, remove it" % what)
    return root


def element_to_string(element: "etree._Element") -> str:
    return etree.tostring(element, encoding="unicode")
