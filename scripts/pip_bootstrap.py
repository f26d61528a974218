#!/usr/bin/env python
"""Give ansible-test a pip bootstrap script without downloading one.

ansible-test creates its virtual environments without pip and installs pip into them with a
``get-pip.py`` that it downloads from a host this project's machines cannot reach. Before
downloading, it looks for a cached copy (``~/.ansible/test/cache/get_pip_<version>.py``, the
path is read from ansible-test's own source below). This script writes that cached copy: a
small stand-in for ``get-pip.py`` that carries the pip wheel bundled with Python's standard
library (``ensurepip``), unpacks it into a temporary directory and runs
``pip install --upgrade --force-reinstall <what ansible-test asked for>`` from it, exactly as
``get-pip.py`` does. That pip then installs the pip version ansible-test wants, and the sanity
tests' requirements, from the package index, which is reachable.

Usage: python scripts/pip_bootstrap.py   (with the python of the venv that has ansible-test)
Prints the path of the bootstrap script. Leaves a real downloaded get-pip alone.
"""

from __future__ import annotations

import base64
import glob
import os
import re
import sys

MARKER = '# made by hostcpu.libvirt scripts/pip_bootstrap.py'

TEMPLATE = '''#!/usr/bin/env python
{marker} from {wheel_name} (ensurepip)
"""Offline stand-in for get-pip.py: runs the embedded pip wheel's ``pip install``."""
import base64
import io
import shutil
import sys
import tempfile
import zipfile

WHEEL = {wheel!r}

# get-pip.py options that are not pip options: pip installs only what it is asked for anyway.
GET_PIP_ONLY = ('--no-setuptools', '--no-wheel', '--no-pip')


def main():
    args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
    tmp = tempfile.mkdtemp(prefix='pip-bootstrap-')
    try:
        with zipfile.ZipFile(io.BytesIO(base64.b64decode(WHEEL))) as wheel:
            wheel.extractall(tmp)
        sys.path.insert(0, tmp)
        from pip._internal.cli.main import main as pip_main
        return pip_main(['install', '--upgrade', '--force-reinstall'] + args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
'''


def fail(message: str) -> None:
    """Stop with a message that says what to look at."""
    sys.stderr.write('pip_bootstrap: ERROR: %s\n' % message)
    sys.exit(1)


def ansible_test_cache_path() -> str:
    """Return the path where ansible-test looks for its cached pip bootstrap script."""
    try:
        import ansible_test  # pylint: disable=import-outside-toplevel
        from ansible_test._internal.python_requirements import get_venv_packages  # pylint: disable=import-outside-toplevel
    except ImportError as ex:
        fail('ansible-test is not importable (%s): run this with the venv python (make venv)' % ex)

    class _Python:  # pylint: disable=too-few-public-methods
        version = '%d.%d' % sys.version_info[:2]

    pip_version = get_venv_packages(_Python())['pip']

    setup = os.path.join(os.path.dirname(ansible_test.__file__), '_util', 'target', 'setup', 'requirements.py')
    with open(setup, encoding='utf-8') as source:
        match = re.search(r"cache_path = os\.path\.expanduser\('([^']*%s[^']*)' % pip_version\.replace\(\"\.\", \"_\"\)\)", source.read())
    if not match:
        fail('ansible-test no longer caches get-pip where this script expects (%s): see DEVELOPERS.md, '
             '"ansible-test sanity offline"' % setup)
    return os.path.expanduser(match.group(1) % pip_version.replace('.', '_'))


def ensurepip_wheel() -> str:
    """Return the path of the newest pip wheel that ships with this Python (or the distribution's copy)."""
    import ensurepip  # pylint: disable=import-outside-toplevel

    candidates = glob.glob(os.path.join(os.path.dirname(ensurepip.__file__), '_bundled', 'pip-*.whl'))
    candidates += glob.glob('/usr/share/python-wheels/pip-*.whl')  # Debian's python3-pip-whl
    if not candidates:
        fail('no pip wheel found in ensurepip or /usr/share/python-wheels (install python3-venv)')

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r'\d+', os.path.basename(path).split('-')[1]))

    return max(candidates, key=version)


def main() -> None:
    """Write the bootstrap script unless a usable one is cached already."""
    cache_path = ansible_test_cache_path()
    wheel_path = ensurepip_wheel()

    if os.path.exists(cache_path):
        with open(cache_path, encoding='utf-8', errors='replace') as cached:
            head = cached.read(4096)
        if MARKER not in head or os.path.basename(wheel_path) in head:
            print(cache_path)  # a real get-pip.py, or ours from the same wheel
            return

    with open(wheel_path, 'rb') as wheel:
        content = TEMPLATE.format(marker=MARKER, wheel_name=os.path.basename(wheel_path),
                                  wheel=base64.b64encode(wheel.read()).decode('ascii'))

    os.makedirs(os.path.dirname(cache_path), exist_ok=True)
    temp_path = cache_path + '.tmp'
    with open(temp_path, 'w', encoding='utf-8') as script:
        script.write(content)
    os.replace(temp_path, cache_path)
    print(cache_path)


if __name__ == '__main__':
    main()
