# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The hostcpu.libvirt.fleet role against the real libvirtd, and its HTML report in headless Chromium.

The fleet is this machine twice: inventory hosts kvm-host and qemu-host on localhost, each with its
virt type. The role applies the fleet CPU to one shut-off guest per host (domain_cpu), the guests
then really start with it, a second run changes nothing, and the report renders in Chromium
(Debian's chromium, --dump-dom and --screenshot) listing every host group and every guest with
where it can run and its migration paths between the groups (kvm to qemu and back: refused, a guest
keeps its virt type), and the fleet machine type. A run with a hand-written
hostcpu_fleet_verification shows the "Migration verified" section. The screenshot is kept as
tests/output/fleet-report.png for a person to look at.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

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


def run_role(tmp_path: Path, role_vars: Dict[str, Any], label: str,
             extra_vars: Optional[Dict[str, Any]] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Run the fleet role on kvm-host and qemu-host; (stats per host, last-seen result of each task name per host).

    *extra_vars* go to ansible-playbook as --extra-vars JSON."""
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
    if extra_vars is not None:
        command += ["--extra-vars", json.dumps(extra_vars)]
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


def classes(element) -> List[str]:
    return (element.get("class") or "").split()


def has_class(name: str) -> str:
    """An XPath predicate: the element's class attribute lists *name*."""
    return "contains(concat(' ', normalize-space(@class), ' '), ' %s ')" % name


def render(tmp_path: Path, label: str, extra_vars: Optional[Dict[str, Any]] = None) -> Tuple[Dict[str, Any], str, Any]:
    """The role's report (no guests but the fleet CPU, nothing applied): (hostcpu_fleet, Markdown, Chromium's DOM)."""
    report_dir = tmp_path / label / "report"
    stats, results = run_role(tmp_path, {"hostcpu_fleet_report_dir": str(report_dir)}, label, extra_vars)
    assert failures(stats) == 0, json.dumps(results, indent=1)[-4000:]
    page = report_dir / "fleet-report.html"
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text and "http" not in text
    return (results["show the fleet"]["kvm-host"]["hostcpu_fleet"], (report_dir / "fleet-report.md").read_text(encoding="utf-8"),
            lxml_html.fromstring(chromium(page, "--dump-dom").stdout))


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
    # From its group, a guest keeps its CPU on the groups in migrates_to, its CPU changes on the
    # 'changed' ones; kvm-host and qemu-host run their guests under different virt types, which
    # no migration changes: the fleet CPU starts in both groups but migrates between neither.
    for guest in fleet["guests"]:
        row = rows[guest["name"]]
        changed_to = [gid for gid, path in guest["migration"].items() if path["outcome"] == "changed"]
        assert row.get("data-migrates-to") == " ".join(guest["migrates_to"])
        assert row.get("data-changes-to") == " ".join(changed_to)
        assert [span.get("data-group") for span in row.xpath("td[@class='migrates-to']/span[@class='kept']")] == guest["migrates_to"]
        assert [span.get("data-group") for span in row.xpath("td[@class='migrates-to']/span[@class='changed']")] == changed_to
        assert row.xpath("string(td[@class='machine'])").strip() == (guest["machine"] or "-")
    assert rows["fleet CPU"].get("data-migrates-to") == ""
    assert rows["fleet CPU"].xpath("string(td[@class='migrates-to'])").strip() == "from G1: nowhere"
    assert {gid: path["outcome"] for gid, path in fleet["guests"][0]["migration"].items()} == {"G2": "refused"}

    why_not = document.xpath("//li[@class='why-not']")
    assert {(li.get("data-guest"), li.get("data-group")) for li in why_not} == {
        (guest["name"], gid) for guest in fleet["guests"] for gid, verdict in guest["groups"].items() if not verdict["runs"]}
    assert document.xpath("string(//strong[@id='fleet-model'])") == fleet_cpu["model"]["name"]

    # The fleet machine type, with the families every host offers.
    machine = fleet["machine"]
    assert machine["guest_machine"] and machine["error"] is None, machine
    assert document.xpath("string(//section[@id='fleet-cpu']//code[@id='fleet-machine'])") == machine["guest_machine"]
    assert {row.get("data-family"): row.get("data-machine")
            for row in document.xpath("//table[@id='machine-families']//tr[@class='machine-family']")} == machine["families"]
    assert not document.xpath("//*[@id='fleet-machine-error']")
    assert "judged with %s" % machine["guest_machine"] in markdown
    for family, name in machine["families"].items():
        assert "| %s | %s |" % (family, name) in markdown

    # The migration paths of each guest: rows = the groups it starts in, columns = every group.
    group_ids = [group["id"] for group in fleet["groups"]]
    tables = document.xpath("//section[@id='migration-paths']//table[%s]" % has_class("paths"))
    assert [table.get("data-guest") for table in tables] == [guest["name"] for guest in fleet["guests"]]
    for guest, table in zip(fleet["guests"], tables):
        assert [tr.get("data-from") for tr in table.xpath(".//tr[@class='path-from']")] == guest["runs_on"]
        expected = {(path["from"], path["to"]): path for path in guest["paths"]}
        assert set(expected) == {(origin, gid) for origin in guest["runs_on"] for gid in group_ids if gid != origin}
        for tr in table.xpath(".//tr[@class='path-from']"):
            origin = tr.get("data-from")
            cells = tr.xpath("td")
            assert [cell.get("data-to") for cell in cells] == group_ids
            for cell in cells:
                target = cell.get("data-to")
                if target == origin:
                    assert classes(cell) == ["self"] and cell.text_content().strip() == "-"
                    continue
                path = expected[(origin, target)]
                assert classes(cell) == ["path", path["outcome"]] and cell.get("data-outcome") == path["outcome"]
                assert cell.text.strip() == path["outcome"]
                small = cell.xpath("string(small)")
                assert small == ("" if path["outcome"] == "kept" else "; ".join(path["blockers"]))
    fleet_table = tables[0]
    for origin, target, virt_type in (("G1", "G2", "kvm"), ("G2", "G1", "qemu")):
        cell = fleet_table.xpath(".//tr[@data-from='%s']/td[@data-to='%s']" % (origin, target))
        assert len(cell) == 1 and classes(cell[0]) == ["path", "refused"], [c.get("class") for c in cell]
        assert "the guest runs under %s" % virt_type in cell[0].xpath("string(small)")

    # Why a path is not kept: one item per refused or changed path, read back from its attributes.
    migrate_items = document.xpath("//section[@id='why-not']//li[%s]" % has_class("why-not-migrate"))
    assert [(li.get("data-guest"), li.get("data-from"), li.get("data-to"), li.get("data-outcome")) for li in migrate_items] == [
        (guest["name"], path["from"], path["to"], path["outcome"]) for guest in fleet["guests"] for path in guest["paths"]
        if path["outcome"] != "kept"]
    assert len({li.get("id") for li in migrate_items}) == len(migrate_items)
    for li in migrate_items:
        assert classes(li) == ["why-not-migrate", li.get("data-outcome")]
        guest = next(guest for guest in fleet["guests"] if guest["name"] == li.get("data-guest"))
        path = next(path for path in guest["paths"] if (path["from"], path["to"]) == (li.get("data-from"), li.get("data-to")))
        verb = "cannot migrate from" if path["outcome"] == "refused" else "moves from"
        assert " ".join(li.text_content().split()).startswith("%s %s %s to %s" % (guest["name"], verb, path["from"], path["to"]))
        assert "; ".join(path["blockers"]) in li.text_content()
    fleet_items = {(li.get("data-from"), li.get("data-to")): li for li in migrate_items if li.get("data-guest") == "fleet CPU"}
    assert set(fleet_items) == {("G1", "G2"), ("G2", "G1")}
    assert "fleet CPU cannot migrate from G1 to G2: " in fleet_items[("G1", "G2")].text_content()
    assert "the guest runs under kvm" in fleet_items[("G1", "G2")].text_content()

    # The Markdown report has the same paths: the matrix of each guest and the reasons.
    assert "### Migration paths" in markdown
    assert "| from \\ to | G1 | G2 |\n|---|---|---|\n| G1 | - | refused |\n| G2 | refused | - |\n" in markdown
    for guest in fleet["guests"]:
        for path in guest["paths"]:
            reasons = "; ".join(path["blockers"])
            if path["outcome"] == "refused":
                assert "- **%s** cannot migrate from %s to %s: %s" % (guest["name"], path["from"], path["to"], reasons) in markdown
            elif path["outcome"] == "changed":
                assert "- **%s** moves from %s to %s but its CPU changes: %s" % (guest["name"], path["from"], path["to"], reasons) in markdown

    # No verification given: no "Migration verified" section.
    assert not document.xpath("//*[@id='migration-verified']") and "## Migration verified" not in markdown

    OUTPUT.mkdir(parents=True, exist_ok=True)
    if SCREENSHOT.exists():
        SCREENSHOT.unlink()
    chromium(page, "--screenshot=%s" % SCREENSHOT, "--window-size=1400,2800", "--hide-scrollbars")
    data = SCREENSHOT.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20000


VERIFIED = [
    {"from": "kvm-host", "to": "qemu-host", "from_group": "G1", "to_group": "G2", "predicted": "kept",
     "predicted_blockers": [], "real": "kept", "error": None, "agrees": True},
    {"from": "qemu-host", "to": "kvm-host", "from_group": "G2", "to_group": "G1", "predicted": "refused",
     "predicted_blockers": ["unsupported configuration: <virt type> & co"], "real": "changed", "error": None, "agrees": False},
]


@pytest.mark.parametrize("verification", [VERIFIED, []], ids=["two-directions", "one-group"])
def test_fleet_report_shows_the_migration_verification(conn, tmp_path, verification):
    """hostcpu_fleet_verification (hand-written here, as the role's verification step sets it) in its own section."""
    _fleet, markdown, document = render(tmp_path, "verified", {"hostcpu_fleet_verification": verification})
    section = document.xpath("//section[@id='migration-verified']")
    assert len(section) == 1
    summary = section[0].xpath("string(.//*[@id='verification-summary'])").strip()
    rows = section[0].xpath(".//table[@id='verification']/tbody/tr")
    if not verification:
        assert summary == "one host group: nothing to migrate between" and rows == []
        assert "## Migration verified\n\none host group: nothing to migrate between" in markdown
        return
    assert summary == "1 of 2 directions verified as predicted"
    assert "1 of 2 directions verified as predicted" in markdown
    assert [row.get("class") for row in rows] == ["agrees", "disagrees"]
    for row, item in zip(rows, verification):
        assert (row.get("data-from"), row.get("data-to"), row.get("data-from-group"), row.get("data-to-group"),
                row.get("data-predicted"), row.get("data-real")) == \
            (item["from"], item["to"], item["from_group"], item["to_group"], item["predicted"], item["real"])
        assert row.xpath("td[%s]" % has_class("predicted"))[0].get("class").split()[-1] == item["predicted"]
        assert row.xpath("td[%s]" % has_class("real"))[0].get("class").split()[-1] == item["real"]
        assert row.xpath("string(td[@class='agreement'])").strip() == ("yes" if item["agrees"] else "no")
        assert "| %s | %s | %s -> %s |" % (item["from"], item["to"], item["from_group"], item["to_group"]) in markdown
    # The blockers are shown escaped: the text comes back as written.
    assert rows[1].xpath("string(td[%s]/small)" % has_class("predicted")) == VERIFIED[1]["predicted_blockers"][0]


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
