# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Converging the CPU mode of N shut-off domains: domain_cpu against what operators do today.

Every domain starts as ``<cpu mode='host-model'/>`` and is converged to ``host-passthrough``;
first run (every domain changes), then the same again (nothing to do). Methods:

* (a) ``hostcpu.libvirt.domain_cpu`` with the list of names, one task;
* (b) ``hostcpu.libvirt.domain_cpu`` in a loop, one domain per item;
* (c) ``community.libvirt.virt`` get_xml, ``community.general.xml`` setting ``/domain/cpu/@mode``,
  ``community.libvirt.virt`` define when the XML changed: three looped tasks;
* (d) a shell loop of ``virt-xml NAME --edit --cpu host-passthrough --define`` (virtinst), run as
  one ``ansible.builtin.shell`` task;
* the floor: ``ansible.builtin.ping``, a module that does nothing, in the same playbooks.

Each method has its own N domains, reset to the starting definition before every repetition. A
repetition is two fresh ansible-playbook runs, the first runs and then the reruns, each with the
bare task and the methods side by side (a fresh run, because Ansible builds a module's payload
once per run: every module pays that on its first use, as in a real run); each task's own
duration comes from the json callback. After the first runs every domain is checked to be
host-passthrough, and the reruns to have reported no change. The module's own per-domain cost is measured twice:
inside Ansible ((a) minus the floor, over N), and as the module process alone: the AnsiballZ
payloads Ansible ran for (a) and for the bare task (kept with ANSIBLE_KEEP_REMOTE_FILES) are run
again directly, with ``python -X importtime`` for the start-up; for the largest N a cProfile of
the module's main() splits its work into libvirt calls and our own Python.
"""

from __future__ import annotations

import io
import json
import pstats
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from common import (ROOT, BenchDomains, BenchError, LoadSampler, ansible_env, domain_xml, floor_task, median, ratio, run_playbook,
                    usable_kvm)

INITIAL_CPU = "<cpu mode='host-model'/>"
TARGET_MODE = "host-passthrough"
# What libvirt stores for mode host-passthrough: the start of the reruns that have no first run.
CONVERGED_CPU = "<cpu mode='host-passthrough' check='none' migratable='on'/>"
METHODS = ("a", "b", "c", "d")
METHOD_TEXT = {
    "floor": "bare task (ansible.builtin.ping)",
    "a": "(a) domain_cpu, list of names, one task",
    "b": "(b) domain_cpu in a loop",
    "c": "(c) virt get_xml + xml + virt define, looped",
    "d": "(d) shell loop of virt-xml --edit --cpu --define",
}
XML_WITHOUT_DECLARATION = "{{ item.xmlstring | regex_replace('^<\\?xml[^>]*\\?>\\s*', '') }}"
MODULE = ROOT / "plugins" / "modules" / "domain_cpu.py"
Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# the tasks of each method


def method_tasks(method: str, run: str) -> List[Dict[str, Any]]:
    """The tasks of *method* for *run* (``first`` or ``rerun``); their names start with ``<method>-<run>``."""
    names = "{{ names }}"
    label = "%s-%s" % (method, run)
    if method == "a":
        return [{"name": label, "hostcpu.libvirt.domain_cpu": {"name": names, "mode": TARGET_MODE}, "register": "a_" + run}]
    if method == "b":
        return [{"name": label, "hostcpu.libvirt.domain_cpu": {"name": "{{ item }}", "mode": TARGET_MODE},
                 "loop": names, "register": "b_" + run}]
    if method == "c":
        got, edited = "c_%s_get" % run, "c_%s_xml" % run
        return [
            {"name": label + "-get", "community.libvirt.virt": {"command": "get_xml", "name": "{{ item }}"},
             "loop": names, "register": got},
            {"name": label + "-xml",
             "community.general.xml": {"xmlstring": "{{ item.get_xml }}", "xpath": "/domain/cpu", "attribute": "mode", "value": TARGET_MODE},
             "loop": "{{ %s.results }}" % got, "loop_control": {"label": "{{ item.item }}"}, "register": edited},
            # community.general.xml writes an XML declaration, which virt define's lxml refuses in a str.
            {"name": label + "-define", "community.libvirt.virt": {"command": "define", "xml": XML_WITHOUT_DECLARATION},
             "loop": "{{ %s.results }}" % edited, "loop_control": {"label": "{{ item.item.item }}"}, "when": "item is changed"},
        ]
    if method == "d":
        script = ('for name in {{ names | join(" ") }}; do virt-xml "$name" --edit --cpu %s --define --quiet || exit 1; done'
                  % TARGET_MODE)
        return [{"name": label, "ansible.builtin.shell": script}]
    raise ValueError(method)


def task_names(run: Any, method: str, which: str) -> List[str]:
    return [name for name in run.tasks if name == "%s-%s" % (method, which) or name.startswith("%s-%s-" % (method, which))]


def tasks_seconds(run: Any) -> List[Tuple[str, float]]:
    return [(name, seconds) for name, (seconds, _result) in run.tasks.items()]


def playbook_tasks(method: str, which: str) -> List[Dict[str, Any]]:
    """A fresh ansible-playbook per method and run: every module pays its first use, as in a real run.

    The warm-up (debug, no module) takes the play's one-time start; then the bare task and the
    method. The rerun of (a) is followed by the bare task and (a) once more, payloads built: what
    each further host of a fleet pays in the same run.
    """
    tasks = [{"name": "warm-up", "ansible.builtin.debug": {"msg": "warm-up"}}, floor_task("floor")] + method_tasks(method, which)
    if method == "a" and which == "rerun":
        tasks += [floor_task("floor-again"), dict(method_tasks("a", "rerun")[0], name="a-again", register="a_again")]
    return tasks


# ---------------------------------------------------------------------------------------------
# checks: every method did the job, and the reruns said "nothing to do"


def changed_items(result: Dict[str, Any]) -> int:
    if "results" in result:
        return sum(1 for item in result["results"] if item.get("changed"))
    if "domains" in result:
        return sum(1 for item in result["domains"] if item["changed"])
    return int(bool(result.get("changed")))


# The task whose report says how many domains a first run changed (virt-xml reports nothing).
REPORTING_TASK = {"a": "a-first", "b": "b-first", "c": "c-first-define"}


def check_first(run: Any, method: str, count: int) -> None:
    if method in REPORTING_TASK:
        changed = changed_items(run.result(REPORTING_TASK[method]))
        if changed != count:
            raise BenchError("%s: the first run changed %d of %d domains" % (METHOD_TEXT[method], changed, count))


def check_rerun(run: Any, method: str) -> None:
    if method not in REPORTING_TASK:
        return
    for name in task_names(run, method, "rerun") + (["a-again"] if method == "a" else []):
        if changed_items(run.result(name)):
            raise BenchError("%s: the rerun reported a change (%s)" % (METHOD_TEXT[method], name))


def check_converged(domains: BenchDomains, names: List[str], method: str) -> None:
    wrong = [name for name in names if "<cpu mode='%s'" % TARGET_MODE not in domains.inactive_xml(name)]
    if wrong:
        raise BenchError("%s left %d domains without mode %s, e.g. %s:\n%s"
                         % (METHOD_TEXT[method], len(wrong), TARGET_MODE, wrong[0], domains.inactive_xml(wrong[0])))


# ---------------------------------------------------------------------------------------------
# the module process as Ansible runs it (the AnsiballZ payload), without Ansible around it


def ansiballz_payloads(names: List[str], keep_dir: Path) -> Dict[str, Path]:
    """The AnsiballZ files Ansible runs for the bare task and for (a) over *names* (this converges them)."""
    tasks = [floor_task("ping"), {"name": "a", "hostcpu.libvirt.domain_cpu": {"name": names, "mode": TARGET_MODE}}]
    run_playbook(tasks, extra_env={"ANSIBLE_KEEP_REMOTE_FILES": "1", "ANSIBLE_REMOTE_TMP": str(keep_dir)})
    found = {path.name: path for path in keep_dir.glob("ansible-tmp-*/AnsiballZ_*.py")}
    try:
        return {"ping": found["AnsiballZ_ping.py"], "domain_cpu": found["AnsiballZ_domain_cpu.py"]}
    except KeyError:
        raise BenchError("ANSIBLE_KEEP_REMOTE_FILES left no AnsiballZ payloads in %s (found %s)" % (keep_dir, sorted(found))) from None


def payload_seconds(payload: Path, options: Optional[List[str]] = None) -> Tuple[float, str]:
    """Wall time of one run of *payload* with the venv's Python, and its stderr."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable] + (options or []) + [str(payload)], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        raise BenchError("%s printed no JSON (rc %d): %s" % (payload.name, proc.returncode, proc.stderr[-2000:])) from None
    if result.get("failed"):
        raise BenchError("%s failed: %s" % (payload.name, result.get("msg")))
    return seconds, proc.stderr


def import_times(stderr: str) -> Dict[str, float]:
    """``python -X importtime`` output: seconds per module (its own time, without what it imports)."""
    times = {}
    for line in stderr.splitlines():
        found = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)$", line)
        if found:
            times[found.group(4)] = int(found.group(1)) / 1e6
    return times


def module_process(payloads: Dict[str, Path], reset: Callable[[], None], repeat: int) -> Dict[str, Any]:
    """The payloads run directly: bare ping, domain_cpu's first run after a reset, then its no-op."""
    times: Dict[str, List[float]] = {"ping": [], "first": [], "rerun": []}
    for _round in range(repeat):
        reset()
        times["ping"].append(payload_seconds(payloads["ping"])[0])
        times["first"].append(payload_seconds(payloads["domain_cpu"])[0])
        times["rerun"].append(payload_seconds(payloads["domain_cpu"])[0])
    ours = import_times(payload_seconds(payloads["domain_cpu"], ["-X", "importtime"])[1])
    bare = import_times(payload_seconds(payloads["ping"], ["-X", "importtime"])[1])
    collection = {name.rsplit(".", 1)[-1]: seconds for name, seconds in ours.items() if name.startswith("ansible_collections.hostcpu")}
    return {
        "runs": repeat,
        "ping": median(times["ping"]),
        "first": median(times["first"]),
        "rerun": median(times["rerun"]),
        "samples": times,
        "imports": sum(ours.values()),
        "imports_ping": sum(bare.values()),
        "imports_collection": sum(collection.values()),
        "imports_by_module_util": dict(sorted(collection.items(), key=lambda item: -item[1])),
    }


def profile_summary(path: Path, top: int = 12) -> Dict[str, Any]:
    """Where domain_cpu's main() spends its time: libvirt calls against our own Python."""
    stats = pstats.Stats(str(path))
    raw = stats.stats  # type: ignore[attr-defined]  # {(file, line, func): (cc, nc, tt, ct, callers)}
    main = sum(entry[3] for key, entry in raw.items() if key[0].endswith("domain_cpu.py") and key[2] == "main")
    libvirt_calls = [(key[2], entry[1], entry[2]) for key, entry in raw.items() if "libvirtmod" in key[2]]
    libvirt_seconds = sum(seconds for _name, _calls, seconds in libvirt_calls)
    buffer = io.StringIO()
    pstats.Stats(str(path), stream=buffer).sort_stats("tottime").print_stats(top)
    return {
        "main": main,
        "libvirt_calls": libvirt_seconds,
        "libvirt_call_count": sum(calls for _name, calls, _seconds in libvirt_calls),
        "libvirt_by_call": sorted(({"call": name.replace("<built-in method libvirtmod.", "").rstrip(">"), "calls": calls, "seconds": seconds}
                                   for name, calls, seconds in libvirt_calls), key=lambda item: -item["seconds"])[:8],
        "our_python": main - libvirt_seconds,
        "top_tottime": buffer.getvalue(),
    }


def profile_module(names: List[str], reset: Callable[[], None], out_dir: Path) -> Dict[str, Any]:
    """cProfile of domain_cpu (the module file, run directly) over *names*: first run and no-op."""
    result = {}
    reset()
    with tempfile.TemporaryDirectory(prefix="hostcpu-bench-") as tmp:
        args = Path(tmp) / "args.json"
        args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"name": names, "mode": TARGET_MODE}}), encoding="utf-8")
        for run in ("first", "rerun"):
            path = out_dir / ("domain_cpu-%s-%d.prof" % (run, len(names)))
            proc = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(path), str(MODULE), str(args)],
                                  capture_output=True, text=True, check=False, env=ansible_env())
            if '"failed": true' in proc.stdout or proc.returncode:
                raise BenchError("domain_cpu under cProfile failed: %s %s" % (proc.stdout[-1000:], proc.stderr[-1000:]))
            result[run] = profile_summary(path)
    return result


# ---------------------------------------------------------------------------------------------
# one size


class Samples:
    """Task seconds per method and run, and the bare task's, over every playbook of one N."""

    def __init__(self) -> None:
        self.methods: Dict[str, Dict[str, List[float]]] = {}
        self.floor: List[float] = []
        self.overhead: List[float] = []
        self.built: Dict[str, List[float]] = {"floor": [], "a": []}

    def add(self, method: str, which: str, run: Any) -> None:
        self.floor.append(run.seconds("floor"))
        self.overhead.append(run.overhead())
        self.methods.setdefault(method, {"first": [], "rerun": []})[which].append(run.seconds(*task_names(run, method, which)))
        if "a-again" in run.tasks:
            self.built["floor"].append(run.seconds("floor-again"))
            self.built["a"].append(run.seconds("a-again"))


def summarize(count: int, samples: Samples, process: Dict[str, Any]) -> Dict[str, Any]:
    floor = median(samples.floor)
    methods = {}
    for method in METHODS:
        if method not in samples.methods:
            continue
        taken = samples.methods[method]
        entry: Dict[str, Any] = {"runs": len(taken["rerun"]), "first_runs": len(taken["first"])}
        for which in ("first", "rerun"):
            entry[which] = median(taken[which]) if taken[which] else None
            entry[which + "_samples"] = taken[which]
        methods[method] = entry
    a = methods["a"]
    for method, entry in methods.items():
        entry["first_vs_a"] = ratio(entry["first"], a["first"]) if entry["first"] is not None else None
        entry["rerun_vs_a"] = ratio(entry["rerun"], a["rerun"])
    built_floor, built_a = median(samples.built["floor"]), median(samples.built["a"])
    return {
        "domains": count,
        "floor": floor,
        "floor_samples": samples.floor,
        "playbook_overhead": median(samples.overhead),
        "methods": methods,
        "a_rerun_vs_floor": ratio(a["rerun"], floor),
        "a_first_vs_floor": ratio(a["first"], floor),
        "built": {"floor": built_floor, "a_rerun": built_a, "a_rerun_vs_floor": ratio(built_a, built_floor)},
        "a_per_domain": {which: (a[which] - floor) / count for which in ("first", "rerun")},
        "module_process": dict(process, per_domain={which: (process[which] - process["ping"]) / count for which in ("first", "rerun")}),
    }


class SizeRun:
    """The domains of one N: defined for one method at a time (community.libvirt.virt lists every domain on each call)."""

    def __init__(self, conn, count: int, log: Log, load: LoadSampler) -> None:
        self.domains = BenchDomains(conn)
        self.count = count
        self.names = self.domains.names("n%d" % count, count)
        self.virt_type = "kvm" if usable_kvm(conn) else "qemu"
        self.log = log
        self.load = load
        self.samples = Samples()

    def define(self, cpu_xml: str) -> None:
        self.domains.define(self.names, lambda name: domain_xml(name, self.virt_type, cpu_xml))

    def method(self, method: str, first: bool) -> None:
        """One repetition of *method*: first run and rerun (or, with first=False, the rerun of converged domains)."""
        self.define(INITIAL_CPU if first else CONVERGED_CPU)
        variables = {"names": self.names}
        self.load.mark()
        started = time.perf_counter()
        timings = []
        try:
            if first:
                run = run_playbook(playbook_tasks(method, "first"), variables)
                check_first(run, method, self.count)
                self.samples.add(method, "first", run)
                timings += tasks_seconds(run)
            check_converged(self.domains, self.names, method)
            run = run_playbook(playbook_tasks(method, "rerun"), variables)
            check_rerun(run, method)
            check_converged(self.domains, self.names, method)
            self.samples.add(method, "rerun", run)
            timings += tasks_seconds(run)
        finally:
            self.domains.remove(self.names)
        self.load.mark()
        self.log("  N=%d %s: %.1f s (%s)" % (self.count, METHOD_TEXT[method], time.perf_counter() - started,
                                             ", ".join("%s %.2f" % item for item in timings if item[0] != "warm-up")))

    def module_process(self, repeat: int, profile_dir: Optional[Path]) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
        def reset() -> None:
            self.define(INITIAL_CPU)

        reset()
        try:
            with tempfile.TemporaryDirectory(prefix="hostcpu-bench-") as keep:
                process = module_process(ansiballz_payloads(self.names, Path(keep)), reset, repeat)
            check_converged(self.domains, self.names, "a")
            profile = profile_module(self.names, reset, profile_dir) if profile_dir is not None else None
            return process, profile
        finally:
            self.domains.remove(self.names)


def schedule(repeat: int, slow: int) -> List[str]:
    """The order of the runs: (a)'s repetitions spread evenly between the slow methods' (which take minutes),
    so that a burst of load from elsewhere on the machine does not fall on all of (a)'s runs at once."""
    slow_runs = [method for _round in range(slow) for method in ("b", "c", "d")]
    total = len(slow_runs) + repeat
    a_slots = {index * total // repeat for index in range(repeat)} if repeat else set()
    order, pending = [], iter(slow_runs)
    for slot in range(total):
        order.append("a" if slot in a_slots else next(pending))
    return order


def measure_size(conn, count: int, plan: Dict[str, Any], log: Log, load: LoadSampler, profile_dir: Optional[Path] = None) -> Dict[str, Any]:
    """(a) and the floor *plan["repeat"]* times; (b), (c), (d) *plan["slow"]* times (first runs only when plan["slow_first"])."""
    size = SizeRun(conn, count, log, load)
    try:
        for method in schedule(plan["repeat"], plan["slow"]):
            size.method(method, method == "a" or plan["slow_first"])
        process, profile = size.module_process(plan["repeat"], profile_dir)
        summary = summarize(count, size.samples, process)
        if profile:
            summary["profile"] = profile
        summary["virt_type"] = size.virt_type
        return summary
    finally:
        size.domains.close()


def measure(conn, sizes: List[int], repeat: int, slow_repeats: Dict[int, int], slow_first_max: int, log: Log, load: LoadSampler,
            profile_dir: Optional[Path] = None) -> Dict[str, Any]:
    results = []
    for count in sizes:
        plan = {"repeat": repeat, "slow": slow_repeats.get(count, 1), "slow_first": count <= slow_first_max}
        log("converge: %d domains, %d repetitions of (a) and the floor, %d of (b), (c), (d)%s"
            % (count, repeat, plan["slow"], "" if plan["slow_first"] else " (their no-op reruns only)"))
        results.append(measure_size(conn, count, plan, log, load, profile_dir if count == max(sizes) else None))
    return {"sizes": results, "target_mode": TARGET_MODE, "initial_cpu": INITIAL_CPU, "converged_cpu": CONVERGED_CPU,
            "slow_first_max": slow_first_max}
