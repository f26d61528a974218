# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The hostcpu.libvirt.fleet role against the real libvirtd, and its HTML report in headless Chromium.

The fleet is this machine twice: inventory hosts kvm-host and qemu-host on localhost, each with its
virt type. The role applies the fleet CPU to one shut-off guest per host (domain_cpu), the guests
then really start with it, a second run changes nothing, and the report renders in Chromium
(Debian's chromium, --dump-dom and --screenshot) listing every host group and every guest with
where it can run. The screenshot is kept as tests/output/fleet-report.png for a person to look at.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest
from lxml import html as lxml_html

from conftest import ansible_env, libvirt

from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import cpu_from_xml, cpus_equal, ordered

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "tests" / "output"
SCREENSHOT = OUTPUT / "fleet-report.png"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HOSTS = {"kvm-host": "kvm", "qemu-host": "qemu"}


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "chromium is not installed: run `make system` (scripts/install-system.sh installs Debian's chromium)"
    return found


def chromium(page: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium on *page* with a fresh profile directory (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="hostcpu-chromium-") as profile:
        command = [chromium_binary(), *CHROMIUM_FLAGS, "--user-data-dir=%s" % profile, *args, page.as_uri()]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, "chromium failed (rc %d): %s" % (proc.returncode, proc.stderr[-2000:])
    return proc


def run_role(tmp_path: Path, role_vars: Dict[str, Any], label: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Run the fleet role on kvm-host and qemu-host; (stats per host, last-seen result of each task name per host)."""
    work = tmp_path / label
    work.mkdir()
    inventory = {"all": {
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
        "children": {"fleet": {"hosts": {name: {"hostcpu_fleet_virt_type": vt} for name, vt in HOSTS.items()}},
                     "tcg": {"hosts": {"qemu-host": {}}}}}}
    (work / "inventory.json").write_text(json.dumps(inventory))
    play = [{"hosts": "fleet", "gather_facts": False,
             "roles": [{"role": "hostcpu.libvirt.fleet", "vars": role_vars}],
             "post_tasks": [{"name": "show the fleet", "ansible.builtin.debug": {"var": "hostcpu_fleet"}},
                            {"name": "show the fleet CPU", "ansible.builtin.debug": {"var": "hostcpu_fleet_cpu"}}]}]
    (work / "play.json").write_text(json.dumps(play))
    command = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(work / "inventory.json"), str(work / "play.json")]
    proc = subprocess.run(command, capture_output=True, text=True, env=ansible_env(), cwd=str(work), timeout=900, check=False)
    try:
        output = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError("ansible-playbook printed no JSON (rc %d):\n%s\n%s" % (proc.returncode, proc.stdout, proc.stderr))
    results: Dict[str, Any] = {}
    for play_output in output["plays"]:
        for task in play_output["tasks"]:
            results[task["task"]["name"]] = task["hosts"]
    return output["stats"], results


def failures(stats: Dict[str, Any]) -> int:
    return sum(host["failures"] + host["unreachable"] for host in stats.values())


def changes(stats: Dict[str, Any]) -> int:
    return sum(host["changed"] for host in stats.values())


def inactive_cpu(conn, name: str) -> Dict[str, Any]:
    return ordered(cpu_from_xml(conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))


@pytest.fixture
def guests(conn, domains) -> Dict[str, str]:
    """One shut-off guest per inventory host, of that host's virt type, with libvirt's default CPU."""
    names = {}
    for host, vt in HOSTS.items():
        names[host] = domains.define(vt, vt).name()
    return names


def test_fleet_role_applies_reports_and_renders(conn, guests, tmp_path):
    report_dir = tmp_path / "report"
    role_vars = {
        "hostcpu_fleet_apply": True,
        "hostcpu_fleet_report_dir": str(report_dir),
        "hostcpu_fleet_guests": [
            {"name": guests["kvm-host"], "host": "kvm-host"},
            {"name": guests["qemu-host"], "host": "qemu-host", "cpu": "fleet"},
            {"name": "judged-host-model", "host": "qemu-host", "cpu": {"mode": "host-model"}},
            {"name": "judged-epyc", "cpu": "<cpu mode='custom'><model>EPYC</model></cpu>"},
        ],
    }
    stats, results = run_role(tmp_path, role_vars, "first")
    assert failures(stats) == 0, json.dumps(results, indent=1)[-4000:]
    fleet = results["show the fleet"]["kvm-host"]["hostcpu_fleet"]
    fleet_cpu = results["show the fleet CPU"]["qemu-host"]["hostcpu_fleet_cpu"]
    assert fleet_cpu == fleet["baseline"]["cpu"] == results["show the fleet CPU"]["kvm-host"]["hostcpu_fleet_cpu"]
    assert [group["hosts"] for group in fleet["groups"]] == [["kvm-host"], ["qemu-host"]]

    # domain_cpu gave both guests the fleet CPU, and they really start with it, as the same CPU.
    lives = {}
    for host, name in guests.items():
        assert cpus_equal(inactive_cpu(conn, name), fleet_cpu, HOSTS[host])
        dom = conn.lookupByName(name)
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        lives[host] = ordered(cpu_from_xml(dom.XMLDesc(0)))
    assert lives["kvm-host"] == lives["qemu-host"]

    # The second run changes nothing (the guests now run the fleet CPU).
    stats, _results = run_role(tmp_path, role_vars, "second")
    assert failures(stats) == 0
    assert changes(stats) == 0, stats

    markdown = (report_dir / "fleet-report.md").read_text(encoding="utf-8")
    page = report_dir / "fleet-report.html"
    assert "<script" not in page.read_text(encoding="utf-8") and "http" not in page.read_text(encoding="utf-8")
    dom_text = chromium(page, "--dump-dom").stdout
    document = lxml_html.fromstring(dom_text)

    # Every host group, with its hosts.
    rows = document.xpath("//section[@id='groups']//tr[@class='group']")
    assert [(row.get("data-group"), row.get("data-hosts")) for row in rows] == \
        [(group["id"], " ".join(group["hosts"])) for group in fleet["groups"]]
    for group in fleet["groups"]:
        assert "| %s | %s |" % (group["id"], ", ".join(group["hosts"])) in markdown

    # Every guest, with where it can run (the attribute and the visible text), and why not.
    rows = {row.get("data-guest"): row for row in document.xpath("//section[@id='guests']//tr[@class='guest']")}
    assert list(rows) == [guest["name"] for guest in fleet["guests"]]
    assert list(rows)[0] == "fleet CPU"
    for guest in fleet["guests"]:
        row = rows[guest["name"]]
        assert row.get("data-runs-on") == " ".join(guest["runs_on"])
        assert row.xpath("string(td[@class='runs-on'])").strip() == (", ".join(guest["runs_on"]) or "nowhere")
        for group in fleet["groups"]:
            cell = row.xpath("td[@data-group='%s']" % group["id"])[0]
            assert cell.get("class") == ("yes" if group["id"] in guest["runs_on"] else "no")
        assert guest["name"] in markdown
    assert rows["fleet CPU"].get("data-runs-on") == "G1 G2"
    assert rows["fleet CPU"].get("data-migrates-to") == "G2"
    why_not = document.xpath("//li[@class='why-not']")
    assert {(li.get("data-guest"), li.get("data-group")) for li in why_not} == {
        (guest["name"], gid) for guest in fleet["guests"] for gid, verdict in guest["groups"].items() if not verdict["runs"]}
    assert document.xpath("string(//strong[@id='fleet-model'])") == fleet_cpu["model"]["name"]

    OUTPUT.mkdir(parents=True, exist_ok=True)
    if SCREENSHOT.exists():
        SCREENSHOT.unlink()
    chromium(page, "--screenshot=%s" % SCREENSHOT, "--window-size=1400,2000", "--hide-scrollbars")
    data = SCREENSHOT.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20000


def test_fleet_role_refuses_guests_where_the_fleet_cpu_does_not_run(conn, guests, tmp_path):
    """Fleet CPU of the group 'tcg' (qemu-host only) applied to a guest on kvm-host: refused when it cannot run there."""
    before = {name: inactive_cpu(conn, name) for name in guests.values()}
    role_vars = {"hostcpu_fleet_apply": True, "hostcpu_fleet_report_dir": "", "hostcpu_fleet_baseline_group": "tcg",
                 "hostcpu_fleet_guests": [{"name": guests["qemu-host"], "host": "qemu-host"},
                                          {"name": guests["kvm-host"], "host": "kvm-host"}]}
    stats, results = run_role(tmp_path, role_vars, "tcg")
    names = [name for name in results if name.endswith("Refuse guests whose host cannot run the fleet CPU, before anything changes")]
    assert names, sorted(results)
    check = next(iter(results[names[0]].values()))
    kvm_row = [item for item in check["results"] if item["__hostcpu_fleet_row"]["name"] == guests["kvm-host"]][0]
    runs_there = kvm_row["__hostcpu_fleet_row"]["source_group"] in kvm_row["__hostcpu_fleet_row"]["runs_on"]
    if runs_there:
        assert failures(stats) == 0
        return
    assert failures(stats) > 0
    assert "the fleet CPU does not start on kvm-host" in kvm_row["msg"]
    assert "Put kvm-host in hostcpu_fleet_baseline_group" in kvm_row["msg"]
    # Nothing changed, on either guest.
    assert {name: inactive_cpu(conn, name) for name in guests.values()} == before
