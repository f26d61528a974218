# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""domain_cpu's main(): its argument spec, the option combinations it refuses, and XML mode (which
needs no libvirt), run the way Ansible runs the module. What the module does with a libvirt
connection is tested against real daemons (tests/integration, tests/reliability, tests/testbed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import pytest
from ansible.module_utils import basic

from ansible_collections.hostcpu.libvirt.plugins.modules import domain_cpu

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "domain"


class Exited(Exception):
    """exit_json or fail_json was called; *result* is what the module returned."""

    def __init__(self, result: Dict[str, Any]) -> None:
        super().__init__(result)
        self.result = result


def exit_json(_module: Any, **result: Any) -> None:
    raise Exited(result)


def fail_json(_module: Any, msg: str, **result: Any) -> None:
    raise Exited(dict(result, failed=True, msg=msg))


def run_main(monkeypatch, args: Dict[str, Any]) -> Dict[str, Any]:
    """main() with *args* as the module arguments; its result (failed: true when it failed)."""
    try:
        from ansible.module_utils.testing import patch_module_args  # ansible-core 2.19+
    except ImportError:
        patch_module_args = None
    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)
    with pytest.raises(Exited) as caught:
        if patch_module_args is not None:
            with patch_module_args(args):
                domain_cpu.main()
        else:
            monkeypatch.setattr(basic, "_ANSIBLE_ARGS", json.dumps({"ANSIBLE_MODULE_ARGS": args}).encode())
            domain_cpu.main()
    return caught.value.result


def i686_xml() -> str:
    return (FIXTURES / "qemu-i686-default.inactive.xml").read_text()


def test_xml_mode_sets_the_cpu_in_the_text(monkeypatch):
    result = run_main(monkeypatch, {"xml": i686_xml(), "mode": "maximum"})
    assert result["changed"] and result["cpu"] == {"mode": "maximum", "topology": {"sockets": 1, "dies": 1, "cores": 2, "threads": 1}}
    assert "<cpu mode='maximum'>" in result["xml"]


def test_xml_mode_absent_knows_qemu_system_i386s_default(monkeypatch):
    text = i686_xml().replace("    <topology sockets='1' dies='1' cores='2' threads='1'/>\n", "")
    assert not run_main(monkeypatch, {"xml": text, "state": "absent"})["changed"]


def test_xml_mode_merges_features_onto_the_default_model(monkeypatch):
    result = run_main(monkeypatch, {"xml": i686_xml(), "features": {"pae": "disable"}})
    assert result["cpu"]["model"] == {"name": "qemu32", "fallback": "forbid"}
    assert result["cpu"]["features"] == [{"name": "pae", "policy": "disable"}]


@pytest.mark.parametrize("args, words", [
    ({"xml": "<domain/>", "name": ["web1"], "mode": "maximum"}, "mutually exclusive: name|xml"),
    ({"mode": "maximum"}, "one of the following is required: name, xml"),
    ({"xml": "<domain/>", "cpu": {"mode": "maximum"}, "model": "EPYC"}, "mutually exclusive: cpu|model"),
    ({"xml": "<domain/>", "state": "absent", "mode": "maximum"}, "state absent removes <cpu>; do not combine it with CPU options (mode)"),
    ({"xml": "<cpu/>", "mode": "maximum"}, "pass what 'virsh dumpxml --inactive' prints"),
    ({"xml": "<domain", "mode": "maximum"}, "domain XML"),
])
def test_bad_arguments_fail_with_the_fix_and_no_traceback(monkeypatch, args, words):
    result = run_main(monkeypatch, args)
    assert result["failed"] and words in result["msg"], result["msg"]


def test_a_feature_typo_in_xml_mode_is_refused_with_a_suggestion(monkeypatch):
    result = run_main(monkeypatch, {"xml": i686_xml(), "features": {"pea": "disable"}})
    assert result["failed"] and result["msg"].startswith("nothing was changed: hostcpu-fixture-qemu-i686-default: unknown CPU feature 'pea'")
    assert "did you mean 'pse'" in result["msg"]
