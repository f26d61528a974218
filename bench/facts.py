# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cpu_facts against the raw libvirt calls it makes.

The floor is found, not guessed: cpu_facts' probe (``_probe.probe``, what the module runs) is run
once in this process on a recording proxy of the connection (and of ``libvirt_qemu``'s QMP call),
which notes every libvirt call, its arguments, its outcome and the thread it ran in. The floor is
then those same calls replayed directly on libvirt-python in one process, nothing else in
between, with the same concurrency (each worker thread of the probe replays its own calls in a
thread of its own, the main thread's calls run in order between them).

The module itself is timed as an Ansible task (its duration minus the bare task's), in a fresh
playbook with the bare task, for these configurations: reads only (``expansion: false``), the
default probing (``expansion: true``, ``cache: false``: one probe guest per virt type measures
QEMU), the default on an unchanged host whose data is in the cache (``cache: true``, a cache file
of the bench's own, written by a probing run first), the same with ``previous:`` (the facts of that
first run as a play variable, ``cache: false``), and ``verify_modes: true`` (plus a transient paused
guest per CPU mode, ``cache: false``). Every task's ``expansion_source`` and ``facts_source`` are
checked: probing must have probed, the reusing configurations must have reused the whole facts (the
cpu_facts action's small module cpu_facts_cached found them unchanged; its raw calls are the reads of
the key's inputs). The ratios probing / cache hit and probing / previous are the reuse speed-up.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from common import GUEST_LOG_DIR, BenchError, LoadSampler, floor_task, median, ratio, run_playbook

# The bench's own cache file goes where CACHE_PATH stands; "previous" gets the facts of a probing run.
CACHE_PATH = "__CACHE_PATH__"
PREVIOUS_VAR = "hostcpu_bench_previous"
CONFIGS = {
    "reads": {"expansion": False},
    "default": {"cache": False},
    "cache": {"cache_path": CACHE_PATH},
    "previous": {"cache": False, "previous": "{{ %s }}" % PREVIOUS_VAR},
    "verify_modes": {"verify_modes": True, "cache": False},
}
CONFIG_TEXT = {
    "reads": "reads only (expansion: false)",
    "default": "default, probing (cache: false)",
    "cache": "default, unchanged host, cache hit",
    "previous": "default, unchanged host, previous: (cache: false)",
    "verify_modes": "verify_modes: true (cache: false)",
}
# The expansion_source every virt type must report, per configuration (None: expansion off).
EXPECTED_SOURCE = {"reads": None, "default": "probed", "cache": "cache", "previous": "previous", "verify_modes": "probed"}
REUSE = ("cache", "previous")
# Run a second time in the same playbook, payload built: what each further host of a run pays.
BUILT = ("default",) + REUSE
Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# recording


class Call:
    """One libvirt call: on the connection (target None) or on the domain made by call *target*."""

    __slots__ = ("number", "thread", "target", "method", "args", "made", "failed")

    def __init__(self, number: int, thread: str, target: Optional[int], method: str, args: Tuple[Any, ...]) -> None:
        self.number = number
        self.thread = thread
        self.target = target
        self.method = method
        self.args = args
        self.made: Optional[int] = None  # this call returned a domain, known by this number
        self.failed = False


class Recorder:
    def __init__(self) -> None:
        self.calls: List[Call] = []
        self.lock = threading.Lock()

    def add(self, target: Optional[int], method: str, args: Tuple[Any, ...]) -> Call:
        with self.lock:
            call = Call(len(self.calls), threading.current_thread().name, target, method, args)
            self.calls.append(call)
        return call

    def wrap(self, call: Call, result: Any) -> Any:
        """A domain a call returned is recorded too, known by the number of that call."""
        import libvirt  # pylint: disable=import-outside-toplevel
        if isinstance(result, libvirt.virDomain):
            call.made = call.number
            return RecordedDomain(result, self, call.number)
        return result


class _Recorded:
    _target: Optional[int] = None

    def __init__(self, real: Any, recorder: Recorder) -> None:
        self._real = real
        self._recorder = recorder

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._real, name)
        if not callable(attr):
            return attr

        def recorded(*args: Any) -> Any:
            call = self._recorder.add(self._target, name, args)
            try:
                result = attr(*args)
            except Exception:
                call.failed = True
                raise
            return self._recorder.wrap(call, result)
        return recorded


class RecordedConnection(_Recorded):
    pass


class RecordedDomain(_Recorded):
    def __init__(self, real: Any, recorder: Recorder, target: int) -> None:
        super().__init__(real, recorder)
        self._target = target


def record_probe(conn, options: Dict[str, Any], reuse: Optional[Callable[[str, str], Any]] = None) -> Tuple[List[Call], float]:
    """Run cpu_facts' probe with *options* on a recording connection: its calls and its wall time.
    *reuse*: the module's lookup of expansion data to reuse (``ExpansionReuse.lookup``)."""
    import libvirt_qemu  # pylint: disable=import-outside-toplevel
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._probe import probe  # pylint: disable=import-outside-toplevel

    recorder = Recorder()
    original = libvirt_qemu.qemuMonitorCommand

    def qmp(domain: Any, command: str, flags: int) -> Any:
        call = recorder.add(domain._target, "qmp", (command, flags))  # pylint: disable=protected-access
        try:
            return original(domain._real, command, flags)  # pylint: disable=protected-access
        except Exception:
            call.failed = True
            raise

    libvirt_qemu.qemuMonitorCommand = qmp
    try:
        start = time.perf_counter()
        probe(RecordedConnection(conn, recorder), None, options.get("verify_modes", False), options.get("expansion", True), reuse)
        seconds = time.perf_counter() - start
    finally:
        libvirt_qemu.qemuMonitorCommand = original
    return recorder.calls, seconds


# ---------------------------------------------------------------------------------------------
# replaying


def phases(calls: List[Call]) -> List[Tuple[str, Dict[str, List[int]]]]:
    """The calls as phases in order: ("main", {thread: [call numbers]}) or ("pool", {worker thread: [...]})."""
    result: List[Tuple[str, Dict[str, List[int]]]] = []
    current = None
    for number, call in enumerate(calls):
        pool = re.match(r"(ThreadPoolExecutor-\d+)_\d+$", call.thread)
        key = pool.group(1) if pool else "main"
        if current != key:
            result.append(("pool" if pool else "main", {}))
            current = key
        result[-1][1].setdefault(call.thread, []).append(number)
    return result


class Replay:
    """The recorded calls made again on the real connection; domains it made are destroyed at the end."""

    def __init__(self, conn, calls: List[Call]) -> None:
        self.conn = conn
        self.calls = calls
        self.domains: Dict[int, Any] = {}
        self.lock = threading.Lock()

    def one(self, number: int) -> None:
        import libvirt  # pylint: disable=import-outside-toplevel
        import libvirt_qemu  # pylint: disable=import-outside-toplevel
        call = self.calls[number]
        try:
            if call.method == "qmp":
                libvirt_qemu.qemuMonitorCommand(self.domains[call.target], *call.args)
                return
            target = self.conn if call.target is None else self.domains[call.target]
            result = getattr(target, call.method)(*call.args)
        except (libvirt.libvirtError, KeyError):
            return
        if call.made is not None:
            with self.lock:
                self.domains[call.made] = result

    def sequence(self, numbers: List[int]) -> None:
        for number in numbers:
            self.one(number)

    def run(self) -> float:
        start = time.perf_counter()
        try:
            for kind, threads in phases(self.calls):
                if kind == "main":
                    for numbers in threads.values():
                        self.sequence(numbers)
                    continue
                workers = [threading.Thread(target=self.sequence, args=(numbers,)) for numbers in threads.values()]
                for worker in workers:
                    worker.start()
                for worker in workers:
                    worker.join()
            return time.perf_counter() - start
        finally:
            self.clean_up()

    def clean_up(self) -> None:
        """Destroy what a replay left running (it should not) and remove the QEMU logs of its guests."""
        import libvirt  # pylint: disable=import-outside-toplevel
        for domain in self.domains.values():
            try:
                name = domain.name()
                if domain.isActive():
                    domain.destroy()
            except libvirt.libvirtError:
                continue
            try:
                (GUEST_LOG_DIR / (name + ".log")).unlink()
            except OSError:
                pass


def call_summary(calls: List[Call]) -> Dict[str, int]:
    counted: Dict[str, int] = {}
    for call in calls:
        counted[call.method] = counted.get(call.method, 0) + 1
    return dict(sorted(counted.items(), key=lambda item: -item[1]))


# ---------------------------------------------------------------------------------------------
# the measurement


def options_of(config: str, cache_path: str) -> Dict[str, Any]:
    return {key: cache_path if value == CACHE_PATH else value for key, value in CONFIGS[config].items()}


def facts_tasks(config: str, cache_path: str) -> List[Dict[str, Any]]:
    """A fresh playbook per configuration: cpu_facts pays its payload build (first use) every time, as the bare task does.
    Probing and the reusing configurations run once more, payload built: what each further host of a run pays."""
    tasks = [{"name": "warm-up", "ansible.builtin.debug": {"msg": "warm-up"}}, floor_task("floor"),
             {"name": config, "hostcpu.libvirt.cpu_facts": options_of(config, cache_path)}]
    if config in BUILT:
        tasks += [floor_task("floor built"), {"name": config + " built", "hostcpu.libvirt.cpu_facts": options_of(config, cache_path)}]
    return tasks


def sources(result: Dict[str, Any]) -> Dict[str, Optional[str]]:
    return {virt_type: entry.get("expansion_source")
            for virt_type, entry in result["ansible_facts"]["hostcpu"]["virt_types"].items()}


def check_sources(config: str, result: Dict[str, Any]) -> None:
    """Each configuration did what it is measured for: probing probed, reusing reused (the whole facts,
    through cpu_facts_cached: ``facts_source``)."""
    found = sources(result)
    wrong = {virt_type: source for virt_type, source in found.items() if source != EXPECTED_SOURCE[config]}
    if not found or wrong:
        raise BenchError("cpu_facts %s: expansion_source %s, expected %s for every virt type"
                         % (CONFIG_TEXT[config], found, EXPECTED_SOURCE[config]))
    expected_path = config if config in REUSE else "probed"
    if result.get("facts_source") != expected_path:
        raise BenchError("cpu_facts %s: facts_source %r, expected %r" % (CONFIG_TEXT[config], result.get("facts_source"), expected_path))


def prime(cache_path: str) -> Dict[str, Any]:
    """A probing run that writes the bench's cache file; its facts are the previous facts of "previous"."""
    run = run_playbook([{"name": "prime", "hostcpu.libvirt.cpu_facts": {"cache_path": cache_path}}])
    result = run.result("prime")
    check_sources("default", result)
    return result["ansible_facts"]["hostcpu"]


def record_reuse(conn) -> List[Call]:
    """The libvirt calls of a reuse (cache hit or previous:): cpu_facts_cached reads the inputs of the whole-facts key."""
    import libvirt  # pylint: disable=import-outside-toplevel
    from ansible_collections.hostcpu.libvirt.plugins.module_utils._facts_key import read_key_inputs  # pylint: disable=import-outside-toplevel
    recorder = Recorder()
    read_key_inputs(RecordedConnection(conn, recorder), None, libvirt.libvirtError)
    return recorder.calls


def measure(conn, repeat: int, log: Log, load: LoadSampler) -> Dict[str, Any]:
    """*repeat* rounds of, per configuration: a playbook with the bare task and cpu_facts, then its raw calls."""
    directory = tempfile.mkdtemp(prefix="hostcpu-bench-facts-")
    try:
        return _measure(conn, repeat, log, load, str(Path(directory) / "cpu_facts.json"))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _measure(conn, repeat: int, log: Log, load: LoadSampler, cache_path: str) -> Dict[str, Any]:
    previous = prime(cache_path)
    recorded = {}
    for config, options in CONFIGS.items():
        if config in REUSE:
            calls = record_reuse(conn)
        else:
            calls, _seconds = record_probe(conn, options)
        recorded[config] = calls
        counted = ", ".join("%s %d" % item for item in call_summary(calls).items())
        log("  cpu_facts %s: %d libvirt calls recorded (%s)" % (CONFIG_TEXT[config], len(calls), counted))
    floors: List[float] = []
    built: Dict[str, List[float]] = {config: [] for config in BUILT + ("floor",)}
    tasks: Dict[str, List[float]] = {config: [] for config in CONFIGS}
    raws: Dict[str, List[float]] = {config: [] for config in CONFIGS}
    for index in range(repeat):
        load.mark()
        for config in CONFIGS:
            # Which goes first alternates: the guests of the one before may still be exiting.
            if index % 2:
                raws[config].append(Replay(conn, recorded[config]).run())
            run = run_playbook(facts_tasks(config, cache_path), variables={PREVIOUS_VAR: previous} if config == "previous" else None)
            if EXPECTED_SOURCE[config] is not None:
                check_sources(config, run.result(config))
            floors.append(run.seconds("floor"))
            tasks[config].append(run.seconds(config))
            if config in BUILT:
                check_sources(config, run.result(config + " built"))
                built[config].append(run.seconds(config + " built"))
                built["floor"].append(run.seconds("floor built"))
            if not index % 2:
                raws[config].append(Replay(conn, recorded[config]).run())
        load.mark()
        timings = ", ".join("%s task %.2f s, raw %.2f s" % (config, tasks[config][-1], raws[config][-1]) for config in CONFIGS)
        log("  cpu_facts round %d/%d: %s" % (index + 1, repeat, timings))
    results: Dict[str, Any] = {"floor_task": median(floors), "floor_task_samples": floors, "runs": repeat, "configs": {}}
    for config in CONFIGS:
        own = median(tasks[config]) - results["floor_task"]
        raw = median(raws[config])
        results["configs"][config] = {
            "options": {key: ("<bench cache file>" if value == cache_path else value) for key, value in options_of(config, cache_path).items()},
            "task": median(tasks[config]),
            "task_samples": tasks[config],
            "module_own": own,
            "raw_calls": raw,
            "raw_samples": raws[config],
            "own_vs_raw": ratio(own, raw),
            "calls": call_summary(recorded[config]),
            "call_count": len(recorded[config]),
        }
    probing = results["configs"]["default"]["task"]
    results["reuse"] = {"probing": probing, "expansion_data_bytes": len(json.dumps(
        {virt_type: entry.get("expansion") for virt_type, entry in previous["virt_types"].items()})),
        "floor_built": median(built["floor"]), "floor_built_samples": built["floor"],
        "probing_built": median(built["default"]), "probing_built_samples": built["default"]}
    for config in REUSE:
        results["reuse"][config] = results["configs"][config]["task"]
        results["reuse"]["%s_speedup" % config] = ratio(probing, results["configs"][config]["task"])
        results["reuse"]["%s_built" % config] = median(built[config])
        results["reuse"]["%s_built_samples" % config] = built[config]
        results["reuse"]["%s_built_speedup" % config] = ratio(results["reuse"]["probing_built"], median(built[config]))
    reuse = results["reuse"]
    log("  cpu_facts reuse, first host of a run: probing %.2f s, cache hit %.3f s (%.1fx), previous %.3f s (%.1fx); payload built: "
        "probing %.2f s, cache hit %.3f s (%.1fx), previous %.3f s (%.1fx)" % (
            probing, reuse["cache"], reuse["cache_speedup"], reuse["previous"], reuse["previous_speedup"],
            reuse["probing_built"], reuse["cache_built"], reuse["cache_built_speedup"], reuse["previous_built"],
            reuse["previous_built_speedup"]))
    return results
