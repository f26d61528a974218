# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Faults: libvirtd killed and restarted during a play, someone else changing or removing a domain
between domain_cpu's read and its write, a guest that does not start with its new CPU.

Everything runs against the suite's private libvirtd (conftest.PrivateDaemon), which this suite
started and may kill: the daemon other suites use is never touched. It is the same libvirtd
binary (session mode, as the QEMU user), with real kvm and TCG guests.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional

import libvirt
import pytest

from conftest import (
    NOARCH,
    assert_no_crash,
    cpu_of,
    define,
    domain_name,
    finish_playbook,
    local_play,
    remove,
    run_playbook,
    start_playbook,
)

from ansible_collections.hostcpu.libvirt.plugins.module_utils._connection import LibvirtCallError
from ansible_collections.hostcpu.libvirt.plugins.module_utils._domain import without_cpu
from ansible_collections.hostcpu.libvirt.plugins.module_utils._errors import CPUError
from ansible_collections.hostcpu.libvirt.plugins.module_utils._watch import ConcurrentChangeError, open_watch
from ansible_collections.hostcpu.libvirt.plugins.module_utils._domain_cpu import read_job, write_job
from ansible_collections.hostcpu.libvirt.plugins.module_utils._throwaway import DefaultModels

INACTIVE = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
VERSION = (9, 0, 0)
FAULTS: Dict[str, int] = {}


def fault(kind: str) -> None:
    FAULTS[kind] = FAULTS.get(kind, 0) + 1


def qemu_pid(name: str) -> Optional[int]:
    """The pid of the QEMU process of guest *name*, from /proc."""
    needle = ("guest=%s," % name).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                return int(entry.name)
        except OSError:
            continue
    return None


def inactive(conn, name: str) -> str:
    return conn.lookupByName(name).XMLDesc(INACTIVE)


def wait_until(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(0.05)


def cpu_task(name: str, **args: Any) -> Dict[str, Any]:
    return {"name": "%s %s" % (name, args.get("mode", "")), "hostcpu.libvirt.domain_cpu": dict(args, name=name),
            "ignore_errors": True}


# ---------------------------------------------------------------------------------------------
# libvirtd killed and restarted during a play


def test_libvirtd_killed_during_a_task_and_restarted_between_tasks(private_daemon, kvm_usable, tmp_path):
    conn = private_daemon.open()
    running, stopped, later, survivor = (domain_name("fault-" + label) for label in ("running", "stopped", "later", "kvm"))
    env = {"LIBVIRT_DEFAULT_URI": private_daemon.uri}
    flag = tmp_path / "restarted"
    try:
        dom = define(conn, running, "qemu", "<cpu mode='host-model'/>")
        dom.create()  # running, not paused: SeaBIOS without a disk ignores the ACPI request, the module waits
        define(conn, stopped, "qemu", "<cpu mode='host-model'/>")
        define(conn, later, "qemu", "<cpu mode='host-model'/>")
        guests = [running]
        if kvm_usable:
            define(conn, survivor, "kvm", "<cpu mode='host-model'>%s</cpu>" % NOARCH, start=True)
            guests.append(survivor)
        pids = {name: qemu_pid(name) for name in guests}
        lives = {name: conn.lookupByName(name).XMLDesc(0) for name in guests}
        assert all(pids.values()), pids

        # 1. killed while domain_cpu waits for the guest to shut down (after it wrote the definition);
        #    the next task finds no daemon. 2. restarted while the play waits; the task after it works.
        marker = tmp_path / "waiting"
        tasks = [cpu_task(running, mode="maximum", restart=True, shutdown_timeout=20),
                 cpu_task(stopped, mode="maximum"),
                 {"name": "say the play waits", "ansible.builtin.copy": {"dest": str(marker), "content": "waiting\n", "mode": "0644"}},
                 {"name": "wait for the restart", "ansible.builtin.wait_for": {"path": str(flag), "timeout": 120}},
                 cpu_task(later, mode="maximum")]
        started = start_playbook([local_play(tasks)], tmp_path, env)
        wait_until(lambda: cpu_of(inactive(conn, running)).get("mode") == "maximum", 60, "the new definition")
        time.sleep(0.5)  # the module is in its shutdown wait
        private_daemon.kill(signal.SIGKILL)
        fault("libvirtd killed during a task")
        assert all(qemu_pid(name) == pid for name, pid in pids.items()), "the guests run on without libvirtd"
        wait_until(marker.exists, 120, "the play to reach its wait")
        seconds = private_daemon.start()
        fault("libvirtd restarted during a play")
        flag.write_text("restarted")
        run = finish_playbook(started)
        assert_no_crash(run.text)
        during, no_daemon, _marker, _wait, after_restart = run.results()
        assert during.get("failed"), during
        assert "libvirt" in during["msg"] and "connection" in during["msg"].lower(), during["msg"]
        assert "run the task again" in during["msg"], during["msg"]
        assert no_daemon.get("failed") and "cannot connect to libvirt" in no_daemon["msg"], no_daemon
        assert not after_restart.get("failed") and after_restart["changed"], after_restart

        # the guests' QEMU processes survived, libvirtd found them again
        conn = private_daemon.open()
        for name in guests:
            assert qemu_pid(name) == pids[name], name
            dom = conn.lookupByName(name)
            assert dom.isActive(), name
            assert cpu_of(dom.XMLDesc(0)) == cpu_of(lives[name]), "%s runs with the CPU it had" % name

        # the rerun converges: the restart happens, the other domain is changed; a third run changes nothing
        rerun = [cpu_task(running, mode="maximum", restart=True, shutdown_timeout=1), cpu_task(stopped, mode="maximum")]
        first = run_playbook([local_play(rerun)], tmp_path, env)
        second = run_playbook([local_play(rerun)], tmp_path, env)
        assert_no_crash(first.text + second.text)
        restarted, changed = first.results()
        assert restarted["changed"] and restarted["domains"][0]["restarted"], restarted
        assert restarted["domains"][0]["live_cpu"]["mode"] == "maximum"
        assert changed["changed"], changed
        assert [result["changed"] for result in second.results()] == [False, False], second.results()
        print("\nprivate libvirtd restarted in %.2f s; guests kept their QEMU processes: %s" % (seconds, pids))
    finally:
        conn = private_daemon.open()
        for name in (running, stopped, later, survivor):
            remove(conn, name)
        conn.close()


# ---------------------------------------------------------------------------------------------
# someone else between domain_cpu's read and its write


def _read(conn, name: str, uri: str, mode: str = "maximum"):
    return read_job(conn, name, uri, {"mode": mode}, {"state": "present"}, "merge", VERSION, DefaultModels(conn, print))


def test_a_change_between_read_and_write_is_refused_and_kept(private_daemon):
    """domain_cpu's own read (read_job) and write (write_job), someone else's change in between."""
    conn = private_daemon.open()
    other = private_daemon.open()
    names = [domain_name("between-" + label) for label in ("desc", "cpu", "removed")]
    try:
        for name in names:
            define(conn, name, "qemu", "<cpu mode='host-model'/>", description="before")
        jobs = {name: _read(conn, name, private_daemon.uri) for name in names}
        assert all(job.plan.changed for job in jobs.values())

        desc, cpu, removed = names
        other.lookupByName(desc).setMetadata(libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, "changed by someone else", None, None,
                                             libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        theirs = inactive(other, desc)
        other.defineXML(inactive(other, cpu).replace("<cpu mode='host-model' check='partial'/>",
                                                     "<cpu mode='custom' match='exact' check='none'>\n    <model fallback='forbid'>qemu64</model>\n  </cpu>"))
        their_cpu = inactive(other, cpu)
        other.lookupByName(removed).undefine()
        fault("changed between read and write")
        fault("changed between read and write")
        fault("removed between read and write")

        for name in (desc, cpu):
            with pytest.raises(CPUError, match="was changed by someone else while this task ran.*it was not written"):
                write_job(conn, jobs[name])
        assert inactive(conn, desc) == theirs
        assert inactive(conn, cpu) == their_cpu
        with pytest.raises(LibvirtCallError, match="reading the persistent definition of '%s' failed: Domain not found" % removed):
            write_job(conn, jobs[removed])
        assert removed not in [dom.name() for dom in conn.listAllDomains()], "the removed domain was not defined again"
    finally:
        for name in names:
            remove(conn, name)
        conn.close()
        other.close()


def test_changes_in_the_write_window_are_reported(private_daemon):
    """libvirt cannot make a define conditional: a change landing after domain_cpu's last read and
    before its define takes effect is replaced. Another client changes the description as fast
    as it can while domain_cpu writes the CPU over and over; every description update that was
    lost (the other client sees its own value go back) must have been reported by domain_cpu."""
    conn = private_daemon.open()
    name = domain_name("window")
    stop = threading.Event()
    counts = {"writes": 0, "lost": 0, "last": 0}

    def describe() -> None:
        other = private_daemon.open()
        dom = other.lookupByName(name)
        while not stop.is_set():
            now = int(dom.metadata(libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, None, libvirt.VIR_DOMAIN_AFFECT_CONFIG))
            if now != counts["last"]:
                counts["lost"] += 1
            counts["last"] += 1
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, str(counts["last"]), None, None,
                            libvirt.VIR_DOMAIN_AFFECT_CONFIG)
            counts["writes"] += 1
            time.sleep(0.002)
        other.close()

    try:
        define(conn, name, "qemu", "<cpu mode='host-model'/>", description="0")
        watch = open_watch(private_daemon.uri)
        writer = threading.Thread(target=describe, daemon=True)
        writer.start()
        written = refused = reported = attempts = 0
        message = ""
        began = time.monotonic()
        while time.monotonic() - began < 5:
            attempts += 1
            try:
                job = _read(conn, name, private_daemon.uri, "maximum" if attempts % 2 else "host-model")
                write_job(conn, job, watch)
                written += 1
            except ConcurrentChangeError as exc:
                reported += 1
                message = str(exc)
            except CPUError:
                refused += 1
        stop.set()
        writer.join(10)
        watch.close()
        final = conn.lookupByName(name).metadata(libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, None, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        if final != str(counts["last"]):
            counts["lost"] += 1  # the last write went back after the other client stopped looking
        fault("concurrent description writes during domain_cpu writes (%d)" % counts["writes"])
        print("\nwrite window: %d domain_cpu writes, %d refused (changed before the last read), %d reported (changed in "
              "the window), %d description writes by the other client, %d of them lost"
              % (written, refused, reported, counts["writes"], counts["lost"]))
        assert counts["lost"] > 0, "the window was not hit: this run proves nothing about it"
        assert reported >= counts["lost"], "a lost update was not reported"
        assert "a metadata change" in message and "redo the other change" in message
        final = conn.lookupByName(name).metadata(libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, None, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        assert final == str(counts["last"]) or reported > 0, "the other client's last write stands, or its loss was reported"
    finally:
        stop.set()
        remove(conn, name)
        conn.close()


WINDOW_HIT = "removed in the write window: removed again"


def test_a_removal_is_never_undone(private_daemon):
    """Someone removes the domain at a random moment around domain_cpu's read and write (many
    times). Whatever the moment, the domain is gone afterwards: a write that would define it again
    (the removal landed in the write window) is detected and the domain is removed again."""
    conn = private_daemon.open()
    other = private_daemon.open()
    name = domain_name("removal")
    watch = open_watch(private_daemon.uri)
    outcomes: Dict[str, int] = {}
    rng = __import__("random").Random(8)
    try:
        cycle = 0
        while cycle < 100 or (outcomes.get(WINDOW_HIT, 0) < 2 and cycle < 400):
            cycle += 1
            dom = define(conn, name, "qemu", "<cpu mode='host-model'/>")
            remover = threading.Timer(rng.uniform(0, 0.006), lambda: other.lookupByName(name).undefine())
            try:
                job = _read(conn, name, private_daemon.uri, "maximum" if cycle % 2 else "custom")
                remover.start()
                write_job(conn, job, watch)
                outcome = "written before the removal"
            except ConcurrentChangeError as exc:
                assert "its removal" in str(exc) and ("It was removed again" in str(exc) or "It is removed" in str(exc)), str(exc)
                outcome = WINDOW_HIT
            except LibvirtCallError as exc:
                if "is already being removed" in str(exc):
                    outcome = "removed while being defined: libvirt refused the define"
                else:
                    assert "Domain not found" in str(exc), str(exc)
                    outcome = "removed before the last read: not written"
            finally:
                if not remover.is_alive() and not remover.finished.is_set():
                    remover.start()
                remover.join(5)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            assert name not in [d.name() for d in conn.listAllDomains()], "cycle %d (%s): the removal was undone" % (cycle, outcome)
            del dom
        fault("removals around domain_cpu's write (%d)" % cycle)
        print("\nremovals at random moments: %s" % outcomes)
        assert outcomes.get(WINDOW_HIT, 0) > 0, "the window was not hit: nothing proven"
    finally:
        watch.close()
        remove(conn, name)
        conn.close()
        other.close()


# ---------------------------------------------------------------------------------------------
# a guest that does not start with its new CPU


def test_a_guest_that_does_not_start_gets_its_previous_cpu_back(private_daemon, kvm_usable, tmp_path):
    """kvm: host-model with cvt16 forced (in libvirt 9.0's CPU map, unknown to QEMU 7.2, which
    refuses the property on any host). TCG: a custom model with check='full' that QEMU's TCG
    cannot give fully fails the start."""
    conn = private_daemon.open()
    cases = [("tcg", "qemu", "<cpu mode='host-model'/>",
              {"mode": "custom", "model": "Skylake-Server", "check": "full", "restart": True, "features_mode": "replace"})]
    if kvm_usable:
        cases.append(("kvm", "kvm", "<cpu mode='host-model'>%s</cpu>" % NOARCH,
                      {"mode": "host-model", "features": {"cvt16": "force"}, "features_mode": "replace", "restart": True}))
    names = {label: domain_name("nostart-" + label) for label, _vt, _cpu, _args in cases}
    try:
        before = {}
        for label, virt_type, cpu_xml, _args in cases:
            dom = define(conn, names[label], virt_type, cpu_xml, start=True)
            before[label] = (dom.XMLDesc(INACTIVE), dom.XMLDesc(0), qemu_pid(names[label]))
        run = run_playbook([local_play([cpu_task(names[label], **args) for label, _vt, _cpu, args in cases])], tmp_path,
                           {"LIBVIRT_DEFAULT_URI": private_daemon.uri})
        assert_no_crash(run.text)
        for (label, _vt, _cpu, _args), result in zip(cases, run.results()):
            fault("guest that does not start with its new CPU")
            name = names[label]
            assert result.get("failed"), result
            assert "did not start with its new CPU" in result["msg"], result["msg"]
            assert "previous CPU definition was restored and it was started again paused" in result["msg"], result["msg"]
            [entry] = result["domains"]
            assert entry["rolled_back"] and entry["state"] == "paused", entry
            dom = conn.lookupByName(name)
            old_inactive, old_live, _old_pid = before[label]
            assert dom.XMLDesc(INACTIVE) == old_inactive, "%s: the definition is the previous one, byte for byte" % label
            assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
            assert cpu_of(dom.XMLDesc(0)) == cpu_of(old_live), "%s runs with its previous CPU" % label
            assert without_cpu(dom.XMLDesc(INACTIVE)) == without_cpu(old_inactive)
    finally:
        for name in names.values():
            remove(conn, name)
        conn.close()


def test_zz_fault_counts():
    """Not a check: prints the faults injected (for the reliability note)."""
    print("\nfaults injected: %s (total %d)" % (FAULTS, sum(FAULTS.values())))
