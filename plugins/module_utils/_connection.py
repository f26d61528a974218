# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The libvirt connection of a module: the uri option, missing libraries, errors as messages."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, Optional

try:
    import libvirt
    HAS_LIBVIRT = True
    LIBVIRT_IMPORT_ERROR = None
except ImportError as _exc:
    libvirt = None
    HAS_LIBVIRT = False
    LIBVIRT_IMPORT_ERROR = _exc

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError
from ansible_collections.hostcpu.libvirt.plugins.module_utils._libvirt_host import OPEN_TIMEOUT_SECONDS, open_within, resolve_uri
from ansible_collections.hostcpu.libvirt.plugins.module_utils._xml import HAS_LXML, LXML_IMPORT_ERROR

# The oldest Python the modules run on (managed hosts); older ones get a message, not a traceback.
MIN_PYTHON = (3, 9)


class LibvirtCallError(CPUError):
    """A libvirt call failed; the message says which call and libvirt's reason."""


class _NoLibvirtError(Exception):
    """Stands for libvirt.libvirtError where libvirt-python is missing (never raised)."""


# For except clauses that must also work without libvirt-python (offline inputs).
LibvirtError = libvirt.libvirtError if HAS_LIBVIRT else _NoLibvirtError


def connection_lost_message(exc: Exception) -> str:
    """A libvirt call outside call() failed, typically because libvirtd went away during the task."""
    return ("a libvirt call failed while this task ran (%s); the connection to libvirtd may have been lost (libvirtd "
            "stopped or restarted). What was done until then is in the result: run the task again once libvirtd answers"
            % libvirt_message(exc))


def connection_argument_spec() -> Dict[str, Any]:
    return {"uri": {"type": "str"}}


def python_too_old(version: Any = None) -> Optional[str]:
    """Why this Python cannot run the modules (older than MIN_PYTHON), or None."""
    version = tuple(sys.version_info[:3] if version is None else version)
    if version >= MIN_PYTHON:
        return None
    return ("hostcpu.libvirt modules need Python %s or newer on the managed host; %s is Python %s. Set "
            "ansible_python_interpreter to a Python %s+ that has lxml and libvirt-python (for example "
            "/usr/bin/python3 of Debian 11+, Ubuntu 22.04+ or EL 9+)"
            % (".".join(map(str, MIN_PYTHON)), sys.executable or "this interpreter", ".".join(map(str, version)),
               ".".join(map(str, MIN_PYTHON))))


def require_libraries(module, need_libvirt: bool = True) -> None:
    """Fail the module when its Python is too old, or with missing_required_lib when libvirt-python or lxml is absent."""
    too_old = python_too_old()
    if too_old:
        module.fail_json(msg=too_old)
    if need_libvirt and not HAS_LIBVIRT:
        module.fail_json(msg="%s (%s)" % (missing_required_lib("libvirt-python (python3-libvirt)"), LIBVIRT_IMPORT_ERROR))
    if not HAS_LXML:
        module.fail_json(msg="%s (%s)" % (missing_required_lib("lxml (python3-lxml)"), LXML_IMPORT_ERROR))


def _silence_libvirt_stderr() -> None:
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def libvirt_message(exc: Exception) -> str:
    """One line with libvirt's own reason, without the 'libvirt:' prefixes."""
    if libvirt is not None and isinstance(exc, libvirt.libvirtError):
        text = exc.get_error_message() or str(exc)
    else:
        text = str(exc)
    return " ".join(text.split())


def call(what: str, function: Callable[..., Any], *args: Any) -> Any:
    """Run a libvirt call; a failure becomes LibvirtCallError naming *what* was attempted."""
    try:
        return function(*args)
    except libvirt.libvirtError as exc:
        raise LibvirtCallError("%s failed: %s" % (what, libvirt_message(exc))) from None


def _open_within(opener: Callable[[str], Any], target: str, seconds: float) -> Any:
    """_libvirt_host.open_within, a libvirt that does not answer in time as LibvirtCallError."""
    try:
        return open_within(opener, target, seconds)
    except TimeoutError:
        raise LibvirtCallError(
            "libvirt at '%s' did not answer within %d seconds: something accepts the connection but does not answer "
            "like libvirtd (a frozen or overloaded daemon, or another service). Check that libvirtd runs and answers "
            "('virsh -c %s version') and that the uri is right (option 'uri' or LIBVIRT_DEFAULT_URI)"
            % (target, seconds, target)) from None


def open_connection(uri: Optional[str], readonly: bool = False):
    """Open a connection or raise LibvirtCallError with the uri and the fix."""
    _silence_libvirt_stderr()
    target = resolve_uri(uri)
    opener = libvirt.openReadOnly if readonly else libvirt.open
    try:
        conn = _open_within(opener, target, OPEN_TIMEOUT_SECONDS)
    except libvirt.libvirtError as exc:
        raise LibvirtCallError(
            "cannot connect to libvirt at '%s': %s. Check that libvirtd (or virtqemud) runs on the host "
            "and that the uri is right (option 'uri' or LIBVIRT_DEFAULT_URI)" % (target, libvirt_message(exc))
        ) from None
    if conn is None:
        raise LibvirtCallError("cannot connect to libvirt at '%s'" % target)
    return conn


@contextmanager
def connection(uri: Optional[str], readonly: bool = False) -> Iterator[Any]:
    """A connection that is closed whatever happens inside the block."""
    conn = open_connection(uri, readonly)
    try:
        yield conn
    finally:
        try:
            conn.close()
        except libvirt.libvirtError:
            pass
