# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bad input for every filter and the test plugin, called through their plugin classes.

Every call either returns or raises ``AnsibleFilterError`` whose message names the plugin and the
problem, is short (never the input echoed back) and is one message; no other exception escapes
(Ansible would show it as "Unexpected templating type error"). Hostile XML is also proven to read
no file (inotify on a canary file the XML points at) and to open no connection (a TCP listener
the XML points at records every connection).
"""

from __future__ import annotations

import copy
import itertools
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
from ansible.errors import AnsibleFilterError

from conftest import UNIT, FileWatch, TCPRecorder
from hostile import hostile_inputs, utf16_doctype

sys.path.insert(0, str(UNIT / "plugins" / "module_utils"))
from fleet_facts import real_facts  # noqa: E402  pylint: disable=wrong-import-position,import-error

from ansible_collections.hostcpu.libvirt.plugins.filter.cpu import FilterModule as CPUFilters  # noqa: E402
from ansible_collections.hostcpu.libvirt.plugins.filter.fleet import FilterModule as FleetFilters  # noqa: E402
from ansible_collections.hostcpu.libvirt.plugins.test.cpu import TestModule as RunsOnPlugin  # noqa: E402

PLUGINS: Dict[str, Callable[..., Any]] = {**CPUFilters().filters(), **FleetFilters().filters(), **RunsOnPlugin().tests()}
MAX_MESSAGE = 8100
COUNTS: Dict[str, int] = {}


@pytest.fixture(scope="module")
def facts() -> Dict[str, Any]:
    return real_facts()


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory) -> Iterator[Tuple[Path, TCPRecorder, FileWatch]]:
    canary = tmp_path_factory.mktemp("canary") / "secret.txt"
    canary.write_text("CANARY-%s\n" % id(canary))
    recorder = TCPRecorder()
    watch = FileWatch([canary])
    yield canary, recorder, watch
    watch.close()
    recorder.close()


def outcome(plugin: str, *args: Any, **kwargs: Any) -> Tuple[str, Any]:
    """('ok', value) or ('error', message); any other exception fails the test."""
    try:
        return "ok", PLUGINS[plugin](*args, **kwargs)
    except AnsibleFilterError as exc:
        message = str(exc)
        assert message.startswith(plugin + ":"), message[:300]
        assert len(message) <= MAX_MESSAGE, "%s echoes its input: %d characters" % (plugin, len(message))
        assert "Traceback" not in message
        return "error", message
    except Exception as exc:  # noqa: BLE001  pylint: disable=broad-except
        raise AssertionError("%s raised %s: %s (args %s)"
                             % (plugin, type(exc).__name__, str(exc)[:300], repr(args)[:300])) from None


def count(kind: str, number: int = 1) -> None:
    COUNTS[kind] = COUNTS.get(kind, 0) + number


# ---------------------------------------------------------------------------------------------
# hostile XML: one clear message, nothing read, nobody called


XML_CALLS: Dict[str, Callable[[Any, Dict[str, Any]], Tuple[str, Any]]] = {
    "cpu_from_xml": lambda text, facts: outcome("cpu_from_xml", text),
    "live_cpu": lambda text, facts: outcome("live_cpu", text, facts, "qemu"),
    "cpu_blockers": lambda text, facts: outcome("cpu_blockers", text, facts, "qemu"),
    "runs_on": lambda text, facts: outcome("runs_on", text, facts, "qemu"),
    "fleet_compatibility": lambda text, facts: outcome(
        "fleet_compatibility", [{"name": "h", "facts": facts, "virt_type": "qemu"}], [{"name": "g", "cpu": text, "host": "h"}]),
}
HOSTILE_NAMES = [h.name for h in hostile_inputs("cpu", Path("/nonexistent"), 9)]


@pytest.mark.parametrize("plugin", sorted(XML_CALLS))
@pytest.mark.parametrize("hostile", HOSTILE_NAMES)
def test_hostile_xml(plugin, hostile, facts, sentinels):
    canary, recorder, watch = sentinels
    [case] = [h for h in hostile_inputs("cpu", canary, recorder.port) if h.name == hostile]
    kind, value = XML_CALLS[plugin](case.text, facts)
    count("hostile XML")
    if case.words:
        assert kind == "error", "%s accepted %s: %r" % (plugin, hostile, value)
        assert any(word in value.lower() for word in case.words), value
    if kind == "ok":
        assert "CANARY" not in repr(value) and "root:x:0:0" not in repr(value)
    assert watch.poll() == [], watch.events
    assert recorder.connections == []


def test_utf16_doctype_is_refused_too(sentinels):
    canary, recorder, watch = sentinels
    kind, value = outcome("cpu_from_xml", utf16_doctype(canary))
    count("hostile XML")
    assert kind == "error" and "doctype or entity" in value.lower(), value
    assert watch.poll() == []
    assert recorder.connections == []


def test_the_canary_watch_sees_a_real_read(sentinels):
    """The inotify proof is not vacuous: reading the canary is recorded."""
    canary, _recorder, watch = sentinels
    before = len(watch.poll())
    canary.read_text()
    events = watch.poll()[before:]
    assert (str(canary), "open") in events
    watch.events[before:] = []


def test_the_tcp_recorder_sees_a_real_connection(sentinels):
    import socket  # pylint: disable=import-outside-toplevel
    _canary, recorder, _watch = sentinels
    with socket.create_connection(("127.0.0.1", recorder.port), timeout=2) as sock:
        sock.sendall(b"probe")
    import time  # pylint: disable=import-outside-toplevel
    deadline = time.monotonic() + 2
    while not recorder.connections and time.monotonic() < deadline:
        time.sleep(0.02)
    assert recorder.connections and recorder.connections[0][1] == b"probe"
    recorder.connections.clear()


# ---------------------------------------------------------------------------------------------
# wrong types in every argument position


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque>"


def _deep(levels: int) -> Dict[str, Any]:
    value: Dict[str, Any] = {"mode": "custom"}
    for _level in range(levels):
        value = {"model": value}
    return value


WRONG_VALUES: List[Tuple[str, Any]] = [
    ("none", None), ("true", True), ("int", 3), ("negative", -1), ("float", 2.5), ("nan", float("nan")),
    ("huge-int", 10 ** 100), ("empty-str", ""), ("blank-str", "  \n"), ("word", "host-model"),
    ("bytes", b"\xff\xfe"), ("surrogate", "\ud800"), ("empty-list", []), ("list", [1, "a", None]),
    ("empty-dict", {}), ("dict", {"a": 1}), ("int-keys", {1: 2}), ("set", {"kvm"}), ("tuple", ("kvm",)),
    ("object", Opaque()), ("deep", _deep(200)), ("bad-mode", {"mode": "bogus"}), ("long-str", "x" * 100000),
    ("features-str", {"mode": "host-model", "features": "svm"}), ("features-ints", {"mode": "host-model", "features": [1, 2]}),
    ("feature-no-name", {"mode": "host-model", "features": [{"policy": "disable"}]}),
    ("model-list", {"mode": "custom", "model": ["EPYC"]}), ("topology-str", {"mode": "custom", "topology": "1,2,1"}),
    ("long-mode", {"mode": "x" * 100000}), ("long-feature", {"mode": "host-model", "features": [{"name": "f" * 100000}]}),
    ("long-words", {"mode": "custom", "model": {"name": "x " * 50000}}),
]


def _valid_args(facts: Dict[str, Any]) -> Dict[str, List[Any]]:
    hosts = [{"name": "k", "facts": facts, "virt_type": "kvm"}, {"name": "q", "facts": facts, "virt_type": "qemu"}]
    return {
        "cpu_xml": [{"mode": "host-model"}, 2],
        "cpu_from_xml": ["<cpu mode='host-model'/>"],
        "live_cpu": [{"mode": "host-model"}, facts, "qemu"],
        "live_cpu_prediction": [{"mode": "host-model"}, facts, "qemu", None],
        "cpu_problems": [{"mode": "host-model"}, facts, "qemu", False],
        "runs_on": [{"mode": "host-model"}, facts, "qemu"],
        "cpu_blockers": [{"mode": "host-model"}, facts, "qemu"],
        "fleet_baseline": [[facts], "qemu", "full", None],
        "fleet_compatibility": [hosts, [{"name": "g", "cpu": {"mode": "host-model"}, "host": "q"}], ["q"], None, "full", None,
                                "q35"],
        "migration_blockers": [{"mode": "host-model"}, facts, "qemu", facts, "pc-i440fx-5.2"],
        "migrates_to": [{"mode": "host-model"}, facts, "qemu", facts, "pc-i440fx-5.2"],
        "fleet_machine": [hosts, "q35", None],
    }


def test_every_plugin_is_in_the_table(facts):
    assert set(_valid_args(facts)) == set(PLUGINS), "a plugin was added; add it to the bad-input table"


def test_wrong_types_in_every_position(facts):
    """Each plugin, each argument position, each wrong value: a value or AnsibleFilterError, nothing else."""
    tried = errors = 0
    failures = []
    for plugin, valid in _valid_args(facts).items():
        assert outcome(plugin, *valid)[0] == "ok", plugin
        for position, (label, wrong) in itertools.product(range(len(valid)), WRONG_VALUES):
            args = list(valid)
            args[position] = copy.deepcopy(wrong)
            tried += 1
            try:
                kind, _value = outcome(plugin, *args)
            except AssertionError as exc:
                failures.append("%s argument %d %s: %s" % (plugin, position, label, str(exc)[:160]))
                continue
            errors += kind == "error"
    count("wrong types", tried)
    assert not failures, "%d of %d:\n%s" % (len(failures), tried, "\n".join(failures))
    assert errors > tried // 2, "most wrong values are refused (%d of %d)" % (errors, tried)


# ---------------------------------------------------------------------------------------------
# unknown modes, models, features, virt types and conflicting options: the message names them


SEMANTIC_CASES: List[Tuple[str, Callable[[Dict[str, Any]], Tuple[Any, ...]], Tuple[str, ...]]] = [
    ("cpu_xml", lambda f: ({"mode": "bogus"},), ("mode 'bogus' is not valid", "custom, host-model")),
    ("cpu_xml", lambda f: ({"mode": "custom", "model": {"name": "EPYC"}, "features": [{"name": "svm", "policy": "maybe"}]},),
     ("feature 'svm' policy 'maybe' is not valid",)),
    ("cpu_xml", lambda f: ({"mode": "host-model", "match": "exact"},), ("match applies to mode custom only",)),
    ("cpu_xml", lambda f: ({"mode": "custom", "vendor": "AMD"},), ("vendor specified without cpu model",)),
    ("cpu_xml", lambda f: ({"mode": "host-passthrough", "model": {"name": "EPYC"}},), ("only meaningful with mode custom",)),
    ("cpu_xml", lambda f: ({"mode": "custom", "model": {"name": "EPYC"}, "migratable": True},), ("migratable is only supported",)),
    ("cpu_xml", lambda f: ({"mode": "custom", "model": {"name": "EPYC"},
                            "features": [{"name": "svm", "policy": "disable"}, {"name": "svm", "policy": "require"}]},),
     ("listed twice",)),
    ("cpu_xml", lambda f: ({"mode": "custom", "model": {"name": "EPYC"}, "topology": {"sockets": 1}},), ("missing: cores, threads",)),
    ("cpu_xml", lambda f: ({"mode": "custom", "model": {"name": "EPYC"}, "topology": {"sockets": 0, "cores": 1, "threads": 1}},),
     ("topology.sockets must be a whole number >= 1",)),
    ("cpu_xml", lambda f: ({"mode": "host-model", "cache": {"mode": "passthrough"}},), ("cache mode passthrough",)),
    ("cpu_xml", lambda f: ({"mode": "maximum", "maxphysaddr": {"mode": "emulate"}},), ("needs bits",)),
    ("cpu_xml", lambda f: ({"mode": "host-model", "sockets": 2},), ("unknown cpu keys sockets",)),
    ("cpu_xml", lambda f: ({"mode": "custom", "model": {"name": "EPYC", "vendor_id": "AuthenticAM"}},), ("exactly 12 characters",)),
    ("cpu_xml", lambda f: ({"mode": "custom", "features": [{"name": "svm", "policy": "disable"}]},), ("features in mode custom need a model",)),
    ("cpu_xml", lambda f: ({"mode": "custom", "model": {"name": "EPYC"}}, -1), ("indent must be a whole number",)),
    ("cpu_from_xml", lambda f: ("<cpu mode='custom' migratable='maybe'/>",), ("migratable='maybe' is invalid",)),
    ("cpu_from_xml", lambda f: ("<cpu><topology sockets='two' cores='1' threads='1'/></cpu>",), ("not a whole number",)),
    ("cpu_from_xml", lambda f: ("<domain><devices/></domain><extra/>",), ("not well-formed",)),
    ("live_cpu", lambda f: ({"mode": "host-model"}, f, "xen"), ("unknown virt type 'xen'",)),
    ("live_cpu", lambda f: ({"mode": "custom", "model": {"name": "NoSuchModel"}}, f, "kvm"), ("nosuchmodel",)),
    ("live_cpu", lambda f: ({"mode": "host-passthrough"}, f, "qemu"), ("host-passthrough",)),
    ("live_cpu", lambda f: ({"mode": "bogus"}, f, "qemu"), ("mode 'bogus' is not valid",)),
    ("live_cpu", lambda f: ({"mode": "host-model"}, {"virt_types": {}}, None), ("no virt type 'kvm'",)),
    ("live_cpu", lambda f: ({"mode": "host-model"}, {"hostname": "x"}, None), ("neither 'virt_types' nor 'modes'",)),
    ("live_cpu", lambda f: ({"mode": "host-model"}, f["virt_types"]["qemu"], "kvm"), ("those of virt type 'qemu', not 'kvm'",)),
    ("runs_on", lambda f: ({"mode": "bogus"}, f, "qemu"), ("mode 'bogus' is not valid",)),
    ("runs_on", lambda f: ({"mode": "host-model"}, f, "xen"), ("unknown virt type 'xen'",)),
    ("runs_on", lambda f: (3, f, "qemu"), ("must be a cpu dict",)),
    ("cpu_blockers", lambda f: ({"mode": "custom", "model": {"name": "EPYC"}, "features": [{"name": "svm", "policy": "maybe"}]}, f, "kvm"),
     ("policy 'maybe' is not valid",)),
    ("fleet_baseline", lambda f: ([],), ("the list of hosts is empty",)),
    ("fleet_baseline", lambda f: ([f], "qemu", "none"), ("check must be one of full, partial",)),
    ("fleet_baseline", lambda f: ([f], "qemu", "full", "NoSuchModel"), ("model 'nosuchmodel' is not in libvirt's cpu map",)),
    ("fleet_baseline", lambda f: ("kvm",), ("the hosts must be a list",)),
    ("migration_blockers", lambda f: ({"mode": "host-model"}, f, "qemu"), ("a host-model cpu is filled in when the guest starts",
                                                                           "source=")),
    ("migration_blockers", lambda f: ({}, f, "qemu", None, ["pc"]), ("machine must be a machine type name",)),
    ("migration_blockers", lambda f: ({}, f, "xen"), ("unknown virt type 'xen'",)),
    ("migration_blockers", lambda f: ({"mode": "custom", "model": {"name": "Skylake-Server"}}, f, "kvm", f),
     ("does not start on the source host",)),
    ("migrates_to", lambda f: ({"mode": "bogus"}, f, "qemu", f), ("mode 'bogus' is not valid",)),
    ("fleet_machine", lambda f: ([f], "virt"), ("unknown machine type family 'virt'", "pc-q35")),
    ("fleet_machine", lambda f: ([],), ("the list of hosts is empty",)),
    ("fleet_machine", lambda f: ([{k: v for k, v in f["virt_types"]["kvm"].items() if k != "machines"}],),
     ("carry no machine types", "cpu_facts")),
    ("fleet_compatibility", lambda f: ([{"name": "q", "facts": f, "virt_type": "qemu"}], "web1"), ("guests must be a list",)),
    ("fleet_compatibility", lambda f: ([{"name": "q", "facts": f, "virt_type": "qemu"}], [], ["nosuch"]),
     ("baseline hosts nosuch are not among",)),
    ("fleet_compatibility", lambda f: ([{"name": "q", "facts": f, "virt_type": "qemu"}], [{"name": "g", "cpu": "fleet", "host": "z"}]),
     ("host 'z' is not one of the fleet's hosts",)),
    ("fleet_compatibility", lambda f: ([{"name": "q", "facts": f, "virt_type": "qemu"}], [{"cpu": {"mode": "bogus"}}]),
     ("each guest must be a mapping with a name",)),
]


@pytest.mark.parametrize("plugin, make_args, words", SEMANTIC_CASES,
                         ids=["%s-%d" % (case[0], index) for index, case in enumerate(SEMANTIC_CASES)])
def test_semantic_errors_name_the_problem(plugin, make_args, words, facts):
    kind, message = outcome(plugin, *make_args(facts))
    count("semantic")
    assert kind == "error", message
    assert all(word in message.lower() for word in words), message


# ---------------------------------------------------------------------------------------------
# damaged facts: every key of a real virt_types entry deleted or given a wrong type


def _paths(value: Any, prefix: Tuple[Any, ...] = (), depth: int = 0) -> Iterator[Tuple[Any, ...]]:
    if depth >= 5:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            yield prefix + (key,)
            yield from _paths(item, prefix + (key,), depth + 1)
    elif isinstance(value, list) and value:
        yield prefix + (0,)
        yield from _paths(value[0], prefix + (0,), depth + 1)


DAMAGE: Dict[str, Callable[[Any, Any], None]] = {
    "deleted": lambda parent, key: parent.pop(key),
    "none": lambda parent, key: parent.__setitem__(key, None),
    "str": lambda parent, key: parent.__setitem__(key, "x"),
    "int": lambda parent, key: parent.__setitem__(key, 7),
    "list": lambda parent, key: parent.__setitem__(key, [None]),
}


def damaged_entries(entry: Dict[str, Any]) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """Copies of *entry* with one key damaged; the expansion data's fingerprint is changed too
    (a damaged copy with the old fingerprint would be answered from the prediction cache)."""
    text = json.dumps(entry)  # json.loads is a faster deep copy than copy.deepcopy
    for number, path in enumerate(p for p in _paths(entry) if p != ("expansion", "fingerprint")):
        for how, damage in DAMAGE.items():
            damaged = json.loads(text)
            parent = damaged
            for key in path[:-1]:
                parent = parent[key]
            damage(parent, path[-1])
            if isinstance(damaged.get("expansion"), dict):
                damaged["expansion"]["fingerprint"] = "damaged-%d-%s" % (number, how)
            yield "%s:%s" % ("/".join(map(str, path)), how), damaged


DAMAGED_CALLS: Dict[str, Callable[[Dict[str, Any]], Tuple[str, Any]]] = {
    "live_cpu": lambda entry: outcome("live_cpu", {"mode": "host-model"}, entry),
    "runs_on": lambda entry: outcome("runs_on", {"mode": "custom", "model": {"name": "EPYC"}}, entry),
    "cpu_blockers": lambda entry: outcome("cpu_blockers", {"mode": "host-model", "features": {"pcid": "require"}}, entry),
    "fleet_baseline": lambda entry: outcome("fleet_baseline", [entry]),
}


@pytest.mark.parametrize("plugin", sorted(DAMAGED_CALLS))
def test_damaged_facts(plugin, facts):
    failures = []
    tried = 0
    for virt_type in ("kvm", "qemu"):
        for label, entry in damaged_entries(facts["virt_types"][virt_type]):
            if plugin == "fleet_baseline" and not label.startswith(("expansion/host_model", "expansion/qemu/supported",
                                                                    "modes", "domain_type", "arch", "expansion/format")):
                continue  # the fleet baseline is slower; the other keys go through the same reader as live_cpu
            tried += 1
            try:
                DAMAGED_CALLS[plugin](entry)
            except AssertionError as exc:
                failures.append("%s %s: %s" % (virt_type, label, str(exc)[:200]))
    count("damaged facts", tried)
    assert not failures, "%d of %d damaged entries escaped as Python errors:\n%s" % (len(failures), tried, "\n".join(failures[:40]))


# ---------------------------------------------------------------------------------------------
# a few of them through Ansible's own templating


def test_through_ansible_templating(facts, sentinels, tmp_path):
    """debug tasks template the filters and the test as a playbook does; each fails with its message."""
    from conftest import assert_no_crash, local_play, run_playbook  # pylint: disable=import-outside-toplevel
    canary, recorder, watch = sentinels
    cases = {case.name: case.text for case in hostile_inputs("cpu", canary, recorder.port)}
    damaged = copy.deepcopy(facts)
    damaged["virt_types"]["qemu"]["modes"] = "x"
    variables = {"facts": facts, "damaged": damaged, "xxe": cases["xxe-file"], "laughs": cases["billion-laughs"],
                 "dtd": cases["external-dtd"], "large": cases["large"], "surrogate_json": '"\\ud800"'}
    (tmp_path / "vars.json").write_text(json.dumps(variables))
    checks = [
        ("cpu_from_xml xxe", "{{ xxe | hostcpu.libvirt.cpu_from_xml }}", "cpu_from_xml: cpu xml contains a doctype"),
        ("cpu_from_xml billion laughs", "{{ laughs | hostcpu.libvirt.cpu_from_xml }}", "cpu_from_xml: cpu xml contains a doctype"),
        ("cpu_from_xml 20 MB", "{{ large | hostcpu.libvirt.cpu_from_xml }}", "more than the 8388608 bytes accepted"),
        # ansible-core 2.19+ refuses the lone surrogate itself, before the filter sees it.
        ("cpu_from_xml surrogate", "{{ surrogate_json | from_json | hostcpu.libvirt.cpu_from_xml }}",
         ("cpu xml is not valid text", "invalid utf8 string value")),
        ("cpu_xml bad mode", "{{ {'mode': 'bogus'} | hostcpu.libvirt.cpu_xml }}", "cpu_xml: mode 'bogus' is not valid"),
        ("live_cpu damaged facts", "{{ {'mode': 'host-model'} | hostcpu.libvirt.live_cpu(damaged, 'qemu') }}",
         "live_cpu: host_facts (virt type qemu) are damaged: modes must be a mapping"),
        ("live_cpu external dtd", "{{ dtd | hostcpu.libvirt.live_cpu(facts, 'qemu') }}", "live_cpu: cpu xml contains a doctype"),
        ("live_cpu xen", "{{ {'mode': 'host-model'} | hostcpu.libvirt.live_cpu(facts, 'xen') }}", "unknown virt type 'xen'"),
        ("fleet_baseline empty", "{{ [] | hostcpu.libvirt.fleet_baseline }}", "fleet_baseline: the list of hosts is empty"),
        ("fleet_compatibility guests", "{{ [facts] | hostcpu.libvirt.fleet_compatibility('web1') }}", "guests must be a list"),
        ("cpu_blockers number", "{{ 3 | hostcpu.libvirt.cpu_blockers(facts, 'qemu') }}", "must be a cpu dict"),
        ("runs_on xen", "{{ {'mode': 'host-model'} is hostcpu.libvirt.runs_on(facts, 'xen') }}", "runs_on: host facts: unknown virt type"),
    ]
    tasks = [{"name": label, "ansible.builtin.debug": {"msg": template}, "ignore_errors": True} for label, template, _words in checks]
    tasks.append({"name": "runs_on in when", "ansible.builtin.debug": {"msg": "ran"}, "ignore_errors": True,
                  "when": "xxe is hostcpu.libvirt.runs_on(facts, 'qemu')"})
    run = run_playbook([local_play(tasks, vars_files=[str(tmp_path / "vars.json")])], tmp_path)
    results = run.by_name()
    for label, _template, words in checks:
        result = results[label]
        assert result.get("failed"), (label, result)
        alternatives = words if isinstance(words, tuple) else (words,)
        assert any(word in result["msg"].lower() for word in alternatives), (label, result["msg"][:500])
        assert len(result["msg"]) < 8200, label
    when = results["runs_on in when"]
    assert when.get("failed") and "doctype" in when["msg"].lower(), when
    count("through Ansible templating", len(checks) + 1)
    assert_no_crash(run.text)
    assert watch.poll() == [] and recorder.connections == []


def test_zz_counts():
    """Not a check: prints how many inputs this file tried (for the reliability note)."""
    print("\nplugin inputs tried: %s (total %d)" % (COUNTS, sum(COUNTS.values())))
