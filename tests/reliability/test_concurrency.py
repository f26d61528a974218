# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Several ansible-playbook runs at once, on different domains and on the same one, while another
client keeps changing the domains' description and <metadata>.

Proven: every run ends with its result or one of domain_cpu's two concurrency messages (changed
before its last read: nothing written; changed in the write window: reported), never a crash;
each domain's final CPU is one that was asked for; everything outside <cpu> is what it was, except
the other client's description and <metadata>, which hold its last values; and every update of
the other client that a define replaced was reported by the run that replaced it (the other
client notices its own value going back, and that count is compared with the reports).
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any, Dict, List

import libvirt

from conftest import assert_no_crash, define, domain_name, finish_playbook, local_play, remove, start_playbook

from ansible_collections.hostcpu.libvirt.plugins.module_utils._cpu_model import cpus_equal
from ansible_collections.hostcpu.libvirt.plugins.module_utils._domain import read_cpu, without_cpu

INACTIVE = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
CONFIG = libvirt.VIR_DOMAIN_AFFECT_CONFIG
NAMESPACE = "https://hostcpu.example/reliability"
SHARED_CPUS = [{"mode": "maximum"}, {"mode": "custom", "model": {"name": "qemu64"}}, {"mode": "maximum", "migratable": False},
               {"mode": "host-model"}]
OWN_CPUS = [[{"mode": "maximum"}, {"mode": "custom", "model": {"name": "qemu64"}}], [{"mode": "custom", "model": {"name": "qemu64"}}, {"mode": "maximum"}],
            [{"mode": "maximum", "migratable": False}, {"mode": "host-model"}], [{"mode": "host-model"}, {"mode": "maximum"}]]
BEFORE_READ = "was changed by someone else while this task ran"
IN_WINDOW = "after this task's last read of it and before its new definition took effect"


class OtherClient:
    """Another libvirt client changing description and <metadata> of some domains, as fast as it can,
    and noticing when a value it wrote went back (a lost update)."""

    def __init__(self, daemon, names: List[str]) -> None:
        self.daemon, self.names = daemon, names
        self.last: Dict[str, int] = {name: 0 for name in names}
        self.writes = self.lost = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _element(value: int) -> str:
        return "<counter>%d</counter>" % value

    def _run(self) -> None:
        conn = self.daemon.open()
        doms = [conn.lookupByName(name) for name in self.names]
        while not self.stop.is_set():
            for dom in doms:
                name = dom.name()
                description = dom.metadata(libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, None, CONFIG)
                element = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE, CONFIG)
                expected = str(self.last[name])
                if description != expected or re.sub(r"\s|xmlns=\"[^\"]*\"", "", element) != self._element(self.last[name]):
                    self.lost += 1
                self.last[name] += 1
                value = self.last[name]
                dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, str(value), None, None, CONFIG)
                dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, self._element(value), "hc", NAMESPACE, CONFIG)
                self.writes += 2
            time.sleep(0.003)
        conn.close()


def cpu_task(name: str, cpu: Dict[str, Any]) -> Dict[str, Any]:
    return {"name": "%s %s" % (name, cpu), "hostcpu.libvirt.domain_cpu": {"name": name, "cpu": cpu}, "ignore_errors": True}


def test_concurrent_runs_lose_nothing(private_daemon, tmp_path):
    conn = private_daemon.open()
    shared = domain_name("conc-shared")
    own = [domain_name("conc-own%d" % index) for index in range(len(OWN_CPUS))]
    watched = [shared, own[0]]
    try:
        for name in [shared] + own:
            dom = define(conn, name, "qemu", "<cpu mode='host-model'/>", description="0")
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, OtherClient._element(0), "hc", NAMESPACE, CONFIG)
        initial = {name: conn.lookupByName(name).XMLDesc(INACTIVE) for name in [shared] + own}
        other = OtherClient(private_daemon, watched)
        env = {"LIBVIRT_DEFAULT_URI": private_daemon.uri}
        plays = []
        for index, cpu in enumerate(SHARED_CPUS):  # the same domain, each run its own CPU and a common one
            plays.append([cpu_task(shared, cpu), cpu_task(shared, SHARED_CPUS[(index + 1) % len(SHARED_CPUS)]), cpu_task(shared, cpu)])
        for name, cpus in zip(own, OWN_CPUS):  # different domains
            plays.append([cpu_task(name, cpu) for cpu in cpus])
        other.thread.start()
        began = time.monotonic()
        runs = [start_playbook([local_play(tasks)], tmp_path, env) for tasks in plays]
        outcomes = [finish_playbook(run) for run in runs]
        seconds = time.monotonic() - began
        other.stop.set()
        other.thread.join(10)

        reports = {"done": 0, "refused before the last read": 0, "reported in the write window": 0}
        for outcome in outcomes:
            assert_no_crash(outcome.text)
            for result in outcome.results():
                if not result.get("failed"):
                    reports["done"] += 1
                elif BEFORE_READ in result["msg"]:
                    reports["refused before the last read"] += 1
                elif IN_WINDOW in result["msg"]:
                    reports["reported in the write window"] += 1
                    assert "a metadata change" in result["msg"] or "a new definition" in result["msg"], result["msg"]
                else:
                    raise AssertionError("unexpected failure: %s" % result["msg"])

        # The final CPU is one that was asked for; where the other client kept every run from writing
        # (each refused: changed before its last read), the domain keeps the CPU it had.
        final = {name: conn.lookupByName(name).XMLDesc(INACTIVE) for name in [shared] + own}
        unchanged = [read_cpu(initial[shared])]
        assert any(cpus_equal(read_cpu(final[shared]), cpu, "qemu") for cpu in SHARED_CPUS + unchanged), read_cpu(final[shared])
        for name, cpus in zip(own, OWN_CPUS):
            allowed = cpus + unchanged if name in watched else cpus[-1:]
            assert any(cpus_equal(read_cpu(final[name]), cpu, "qemu") for cpu in allowed), (name, read_cpu(final[name]))

        for name in [shared] + own:
            dom = conn.lookupByName(name)
            if name in watched:
                assert dom.metadata(libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, None, CONFIG) == str(other.last[name])
                assert "<counter>%d</counter>" % other.last[name] in dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE, CONFIG)
            assert _outside(final[name]) == _outside(initial[name]), "%s: something outside <cpu> changed" % name

        assert other.lost <= reports["reported in the write window"], (
            "the other client lost %d updates but only %d were reported" % (other.lost, reports["reported in the write window"]))
        print("\n%d ansible-playbook runs at once (%d domain_cpu tasks) in %.1f s; %s; the other client made %d writes, "
              "%d were lost and reported" % (len(plays), sum(len(tasks) for tasks in plays), seconds, reports, other.writes, other.lost))
    finally:
        for name in [shared] + own:
            remove(conn, name)
        conn.close()


def _outside(text: str) -> str:
    """The domain without <cpu>, description and <metadata> (which the other client changes)."""
    text = without_cpu(text)
    text = re.sub(r"\s*<description>.*?</description>", "", text, flags=re.S)
    return re.sub(r"\s*<metadata>.*?</metadata>", "", text, flags=re.S)
