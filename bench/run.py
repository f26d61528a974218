# Copyright: hostcpu.libvirt contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""make bench: hostcpu.libvirt against what operators use today, on this machine's libvirtd.

    make bench                                 # everything, about 10 minutes on 2 cores
    make bench BENCH_ARGS=--quick              # a short run that checks the bench works
    .venv/bin/python bench/run.py --help       # (PYTHONPATH=.collections, as make sets it)

Sections (all by default, --sections to choose):

* converge: the CPU mode of N shut-off domains (bench/converge.py);
* facts: cpu_facts against the raw libvirt calls it makes, and probing against reusing the
  expansion data of an unchanged host (cache hit, previous:) (bench/facts.py);
* live: live_cpu predictions per second (bench/live_cpu_prediction.py);
* fleet: fleet_baseline over 1000 synthetic hosts and 10,000 of mixed versions (bench/fleet_baseline_1000.py);
* role: the fleet role over 50 and 200 inventory hosts, the controller's time per host (bench/fleet_role.py).

Prints medians, ratios and each target with its status, and writes them to
bench/results/latest.md and latest.json (--output to write elsewhere, --output - for none).
--update-readme also replaces the block between the bench markers in README.md.
Timing never goes into the tests: this only prints figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

# pylint: disable=wrong-import-position
from common import (ROOT, URI, BenchError, LoadSampler, leftover_bench_domains, machine, machine_text, reference_loop_ms,  # noqa: E402
                    seconds_text, silence_libvirt, terminate_as_interrupt)

RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
README_START = "<!-- bench:start (written by bench/run.py --update-readme) -->"
README_END = "<!-- bench:end -->"
SECTIONS = ("converge", "facts", "live", "fleet", "role")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, of %s" % ", ".join(SECTIONS))
    parser.add_argument("--sizes", default="10,50,200,1000", help="domain counts N (default 10,50,200,1000)")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of (a) and the bare task per N (default 5)")
    parser.add_argument("--slow-repeat", default="10:3,50:1,200:1,1000:0",
                        help="repetitions of (b), (c), (d) per N, as N:count,... (default 10:3,50:1,200:1,1000:0: at N=1000 only "
                             "(a) and the bare task, the others would take about 10 minutes each)")
    parser.add_argument("--slow-first-max", type=int, default=50,
                        help="largest N at which the first runs of (b), (c), (d) are measured; above it only their no-op "
                             "reruns (default 50: their first runs over 200 domains would take another ~5 minutes)")
    parser.add_argument("--full", action="store_true", help="also the first runs of (b), (c), (d) at every N, and 2 repetitions at N=50")
    parser.add_argument("--facts-repeat", type=int, default=5, help="rounds of cpu_facts and its raw calls (default 5)")
    parser.add_argument("--live-repeat", type=int, default=20, help="rounds over the live_cpu matrix (default 20)")
    parser.add_argument("--fleet-repeat", type=int, default=5, help="cold+warm rounds of fleet_baseline (default 5)")
    parser.add_argument("--role-hosts", default="50,200", help="inventory sizes of the fleet role bench (default 50,200)")
    parser.add_argument("--quick", action="store_true", help="N=10 only, one repetition of everything: checks the bench works")
    parser.add_argument("--output", default=str(RESULTS), help="directory for latest.md/latest.json; '-' writes nothing")
    parser.add_argument("--update-readme", action="store_true", help="also write the summary into README.md's Performance section")
    parser.add_argument("--render", metavar="JSON", help="measure nothing: write the report again from a latest.json "
                        "(after a change of the report's format)")
    args = parser.parse_args(argv)
    if args.full:
        args.slow_repeat, args.slow_first_max = "10:3,50:2,200:1,1000:1", 1 << 30
    if args.quick:
        args.sizes, args.repeat, args.slow_repeat = "10", 1, "10:1"
        args.facts_repeat, args.live_repeat, args.fleet_repeat, args.role_hosts = 1, 3, 1, "10,20"
    args.sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = [name for name in args.sections if name not in SECTIONS]
    if unknown:
        parser.error("unknown section(s) %s; choose from %s" % (", ".join(unknown), ", ".join(SECTIONS)))
    args.sizes = sorted(int(size) for size in args.sizes.split(","))
    args.role_hosts = sorted(int(size) for size in args.role_hosts.split(","))
    args.slow_repeat = {int(key): int(value) for key, value in (item.split(":") for item in args.slow_repeat.split(","))}
    return args


# ---------------------------------------------------------------------------------------------
# sections


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_live(repeat: int) -> Dict[str, Any]:
    try:
        import live_cpu_prediction  # pylint: disable=import-outside-toplevel
    except ImportError as exc:
        return {"available": False, "why": str(exc)}
    return dict(live_cpu_prediction.measure(repeat), available=True)


def run_fleet(repeat: int) -> Dict[str, Any]:
    try:
        import fleet_baseline_1000  # pylint: disable=import-outside-toplevel
    except ImportError as exc:
        return {"available": False, "why": str(exc)}
    return dict(fleet_baseline_1000.measure(1000, 20, repeat), available=True)


def run_sections(args: argparse.Namespace, conn, load: LoadSampler, results: Dict[str, Any]) -> None:
    if "converge" in args.sections:
        import converge  # pylint: disable=import-outside-toplevel
        profile_dir = Path(args.output) if args.output != "-" else None
        if profile_dir:
            profile_dir.mkdir(parents=True, exist_ok=True)
        results["converge"] = converge.measure(conn, args.sizes, args.repeat, args.slow_repeat, args.slow_first_max, log, load,
                                               profile_dir)
    if "facts" in args.sections:
        import facts  # pylint: disable=import-outside-toplevel
        log("cpu_facts: %d rounds" % args.facts_repeat)
        results["facts"] = facts.measure(conn, args.facts_repeat, log, load)
    if "live" in args.sections:
        log("live_cpu: %d rounds" % args.live_repeat)
        load.mark()
        results["live_cpu"] = run_live(args.live_repeat)
    if "fleet" in args.sections:
        log("fleet_baseline: %d rounds" % args.fleet_repeat)
        load.mark()
        results["fleet_baseline"] = run_fleet(args.fleet_repeat)
    if "role" in args.sections:
        import fleet_role  # pylint: disable=import-outside-toplevel
        log("fleet role: %s inventory hosts" % ", ".join(map(str, args.role_hosts)))
        load.mark()
        results["fleet_role"] = fleet_role.measure(args.role_hosts)
        load.mark()


# ---------------------------------------------------------------------------------------------
# targets


def size_entry(results: Dict[str, Any], count: int) -> Optional[Dict[str, Any]]:
    for entry in results.get("converge", {}).get("sizes", []):
        if entry["domains"] == count:
            return entry
    return None


def method_ratio(results: Dict[str, Any], count: int, method: str, which: str) -> Optional[float]:
    entry = size_entry(results, count)
    if entry is None or method not in entry["methods"]:
        return None
    return entry["methods"][method]["%s_vs_a" % which]


def targets(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Each target: what, the measured value, the limit, whether it is met (None: not measured)."""
    def entry_value(count: int, key: str) -> Optional[float]:
        entry = size_entry(results, count)
        return entry[key] if entry else None

    live = results.get("live_cpu") or {}
    fleet = results.get("fleet_baseline") or {}
    reuse = (results.get("facts") or {}).get("reuse") or {}
    role_growth = (results.get("fleet_role") or {}).get("growth") or {}
    rows: List[Tuple[str, Optional[float], str, float, str]] = [
        ("(a) no-op rerun of 50 domains vs the bare task", entry_value(50, "a_rerun_vs_floor"), "<=", 2, "x"),
        ("(a) no-op rerun of 200 domains vs the bare task", entry_value(200, "a_rerun_vs_floor"), "<=", 3, "x"),
        ("(a) no-op rerun of 1000 domains vs the bare task", entry_value(1000, "a_rerun_vs_floor"), "<=", 2, "x"),
        ("(c) vs (a) at N=50, first run", method_ratio(results, 50, "c", "first"), ">=", 10, "x"),
        ("(c) vs (a) at N=50, no-op rerun", method_ratio(results, 50, "c", "rerun"), ">=", 10, "x"),
        ("(d) vs (a) at N=50, first run", method_ratio(results, 50, "d", "first"), ">", 1, "x"),
        ("(d) vs (a) at N=50, no-op rerun", method_ratio(results, 50, "d", "rerun"), ">", 1, "x"),
        ("cpu_facts, unchanged host, cache hit: task time, first host of a run", reuse.get("cache"), "<", 0.5, "s"),
        ("cpu_facts, unchanged host, previous: task time, first host of a run", reuse.get("previous"), "<", 0.5, "s"),
        ("cpu_facts probing vs cache hit, first host of a run", reuse.get("cache_speedup"), ">=", 10, "x"),
        ("cpu_facts probing vs previous:, first host of a run", reuse.get("previous_speedup"), ">=", 10, "x"),
        ("cpu_facts, unchanged host, cache hit: task time, each further host", reuse.get("cache_built"), "<", 0.5, "s"),
        ("cpu_facts, unchanged host, previous: task time, each further host", reuse.get("previous_built"), "<", 0.5, "s"),
        ("cpu_facts probing vs cache hit, each further host", reuse.get("cache_built_speedup"), ">=", 10, "x"),
        ("cpu_facts probing vs previous:, each further host", reuse.get("previous_built_speedup"), ">=", 10, "x"),
        ("live_cpu per prediction, cold (new facts every call)", live.get("cold", {}).get("median_ms"), "<", 1, "ms"),
        ("live_cpu per prediction, warm (one host's facts)", live.get("warm", {}).get("median_ms"), "<", 1, "ms"),
        ("fleet_baseline, 1000 hosts of 20 kinds, cold", _ms(fleet.get("kinds", {}).get("cold")), "<", 100, "ms"),
        ("fleet_baseline, 1000 hosts all different, cold", _ms(fleet.get("distinct", {}).get("cold")), "<", 100, "ms"),
        ("fleet_baseline, 10000 hosts of 50 kinds, 4 libvirt versions, cold", _ms(fleet.get("mixed", {}).get("cold")), "<", 300, "ms"),
        ("fleet role, time per host at the largest inventory over the smallest", role_growth.get("wall"), "<=", 1.25, "x"),
    ]
    checks: Dict[str, Callable[[float, float], bool]] = {
        "<=": lambda v, limit: v <= limit, ">=": lambda v, limit: v >= limit,
        "<": lambda v, limit: v < limit, ">": lambda v, limit: v > limit,
    }
    return [{"target": name, "value": value, "op": op, "limit": limit, "unit": unit,
             "met": None if value is None else checks[op](value, limit)} for name, value, op, limit, unit in rows]


def _ms(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else seconds * 1000


# ---------------------------------------------------------------------------------------------
# the report


def fmt_value(value: Optional[float], unit: str) -> str:
    if value is None:
        return "not measured"
    # Ratios near their limit need the second decimal (2.02x is not within 2x).
    return ("%.2fx" % value if value < 10 else "%.1fx" % value) if unit == "x" else ("%.3g %s" % (value, unit))


def status(met: Optional[bool]) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[met]


def targets_table(rows: List[Dict[str, Any]]) -> List[str]:
    lines = ["| target | measured | limit | status |", "|---|---:|---:|---|"]
    for row in rows:
        lines.append("| %s | %s | %s %s | %s |" % (row["target"], fmt_value(row["value"], row["unit"]), row["op"],
                                                   fmt_value(row["limit"], row["unit"]), status(row["met"])))
    return lines


def converge_lines(converge: Dict[str, Any]) -> List[str]:
    from converge import METHOD_TEXT  # pylint: disable=import-outside-toplevel
    lines = ["### Converging the CPU mode of N shut-off domains", "",
             "Each domain starts as `%s` and is set to mode `%s`: first run (every domain changes), then the no-op "
             "rerun. Each method and run is a fresh ansible-playbook with the bare task; task durations from the json callback, "
             "median of the runs shown (the slow methods have fewer); ratios against (a). Above N=%s the first runs of "
             "(b), (c), (d) are not measured (`--full` does; each takes minutes): their reruns start from converged domains (`%s`)."
             % (converge["initial_cpu"], converge["target_mode"], converge["slow_first_max"], converge["converged_cpu"]), ""]
    for entry in converge["sizes"]:
        lines += ["**N = %d** (%s guests)" % (entry["domains"], entry["virt_type"]), "",
                  "| method | runs | first run | x (a) | no-op rerun | x (a) |", "|---|---:|---:|---:|---:|---:|",
                  "| %s | %d | %s | | %s | |" % (
                      METHOD_TEXT["floor"], len(entry["floor_samples"]), seconds_text(entry["floor"]), seconds_text(entry["floor"]))]
        for method, row in entry["methods"].items():
            lines.append("| %s | %d | %s | %s | %s | %.1fx |" % (
                METHOD_TEXT[method], row["runs"], seconds_text(row["first"]) if row["first"] is not None else "not measured",
                "%.1fx" % row["first_vs_a"] if row["first_vs_a"] is not None else "", seconds_text(row["rerun"]), row["rerun_vs_a"]))
        process = entry["module_process"]
        built = entry["built"]
        lines += ["", "(a) against the bare task: first run %.1fx, no-op rerun %.1fx (both in a fresh ansible-playbook, where each "
                  "module's payload is built on its first use). Once the payloads are built, as for each further host of a fleet in "
                  "the same run: (a) no-op %s, bare task %s, %.1fx." % (
                      entry["a_first_vs_floor"], entry["a_rerun_vs_floor"], seconds_text(built["a_rerun"]), seconds_text(built["floor"]),
                      built["a_rerun_vs_floor"]),
                  "The first use of domain_cpu in a run costs %s more than the bare module's (Ansible building its payload: finding, "
                  "parsing and zipping the module_utils it imports). " % seconds_text(
                      (entry["methods"]["a"]["rerun"] - built["a_rerun"]) - (entry["floor"] - built["floor"])),
                  "Inside Ansible, (a) costs %.2f ms per domain on "
                  "the first run and %.2f ms on the no-op rerun above the bare task. The module process alone (its AnsiballZ payload "
                  "run directly, median of %d): first run %s, no-op %s, bare ping module %s."
                  % (entry["a_per_domain"]["first"] * 1000,
                     entry["a_per_domain"]["rerun"] * 1000, process["runs"], seconds_text(process["first"]),
                     seconds_text(process["rerun"]), seconds_text(process["ping"])), ""]
    lines += per_domain_lines(converge) + profile_lines(converge)
    return lines


def per_domain_lines(converge: Dict[str, Any]) -> List[str]:
    sizes = converge["sizes"]
    if len(sizes) < 2:
        return []
    small, large = sizes[0], sizes[-1]
    span = large["domains"] - small["domains"]
    lines = []
    for which, text in (("first", "first run"), ("rerun", "no-op")):
        slope = (large["module_process"][which] - small["module_process"][which]) / span
        fixed = small["module_process"][which] - slope * small["domains"] - small["module_process"]["ping"]
        lines.append("- %s: %.2f ms per domain, plus %s per task above the bare module process (slope of the module process "
                     "between N=%d and N=%d)" % (text, slope * 1000, seconds_text(fixed), small["domains"], large["domains"]))
    return ["Per-domain cost inside domain_cpu:", ""] + lines + [""]


def profile_lines(converge: Dict[str, Any]) -> List[str]:
    entry = converge["sizes"][-1]
    process = entry["module_process"]
    lines = ["Where the module's time goes (N=%d):" % entry["domains"], "",
             "- start-up: `python -X importtime` of the payload gives %s of imports against %s for the bare ping module; "
             "the collection's own module_utils take %s (%s), compiled from the payload's zip on every run."
             % (seconds_text(process["imports"]), seconds_text(process["imports_ping"]), seconds_text(process["imports_collection"]),
                ", ".join("%s %s" % (name, seconds_text(seconds)) for name, seconds in list(process["imports_by_module_util"].items())[:5]))]
    for which, text in (("first", "first run"), ("rerun", "no-op")):
        profile = entry.get("profile", {}).get(which)
        if not profile:
            continue
        calls = ", ".join("%s %d" % (item["call"], item["calls"]) for item in profile["libvirt_by_call"])
        lines.append("- %s, cProfile of main(): %s, of which libvirt calls %s (%d calls: %s) and our Python %s"
                     % (text, seconds_text(profile["main"]), seconds_text(profile["libvirt_calls"]), profile["libvirt_call_count"],
                        calls, seconds_text(profile["our_python"])))
    return lines + [""]


def facts_lines(facts: Dict[str, Any]) -> List[str]:
    from facts import CONFIG_TEXT  # pylint: disable=import-outside-toplevel
    lines = ["### cpu_facts against the raw libvirt calls it makes", "",
             "The floor is the very libvirt calls cpu_facts' probe made (recorded once), replayed directly with libvirt-python in "
             "one process with the same threads. The module's own time is its task minus the bare task (%s), median of %d rounds."
             % (seconds_text(facts["floor_task"]), facts["runs"]), "",
             "| cpu_facts | libvirt calls | task | module's own | raw calls | x raw |", "|---|---:|---:|---:|---:|---:|"]
    for config, row in facts["configs"].items():
        lines.append("| %s | %d | %s | %s | %s | %.2fx |" % (
            CONFIG_TEXT.get(config, config), row["call_count"], seconds_text(row["task"]), seconds_text(row["module_own"]),
            seconds_text(row["raw_calls"]), row["own_vs_raw"]))
    reuse = facts.get("reuse")
    if reuse:
        lines += ["", "Reusing the expansion data of an unchanged host (task time, median): probing %s, cache hit %s (%.1fx faster), "
                  "previous: %s (%.1fx faster), for the first host of a run (which builds the module's payload); the reused data "
                  "of all virt types is %d kB of JSON." % (seconds_text(reuse["probing"]), seconds_text(reuse["cache"]),
                                                           reuse["cache_speedup"], seconds_text(reuse["previous"]),
                                                           reuse["previous_speedup"], reuse["expansion_data_bytes"] // 1000)]
        if "probing_built" in reuse:
            lines.append("Each further host of a run (payload built): probing %s, cache hit %s (%.1fx faster), previous: %s "
                         "(%.1fx faster), bare task %s." % (
                             seconds_text(reuse["probing_built"]), seconds_text(reuse["cache_built"]), reuse["cache_built_speedup"],
                             seconds_text(reuse["previous_built"]), reuse["previous_built_speedup"], seconds_text(reuse["floor_built"])))
    return lines + [""]


def live_lines(live: Dict[str, Any]) -> List[str]:
    lines = ["### live_cpu", ""]
    if not live.get("available"):
        return lines + ["not available yet (%s)" % live.get("why"), ""]
    for label, text in (("warm", "warm (one host's facts, cached context)"), ("cold", "cold (context rebuilt every call)")):
        lines.append("- %s: %.3f ms per prediction, %d predictions per second (median of %d rounds over %d CPUs)"
                     % (text, live[label]["median_ms"], live[label]["per_second"], live["rounds"], live["cpus"]))
    return lines + [""]


def fleet_lines(fleet: Dict[str, Any]) -> List[str]:
    lines = ["### fleet_baseline over synthetic hosts", ""]
    if not fleet.get("available"):
        return lines + ["not available yet (%s)" % fleet.get("why"), ""]
    texts = (("kinds", "%s hosts of 20 kinds" % fleet.get("hosts", 1000)), ("distinct", "%s hosts, every one different" % fleet.get("hosts", 1000)),
             ("mixed", "%s hosts of %s kinds from the four testbed hosts (libvirt 7.0 to 12.8)" % (fleet.get("large"), fleet.get("large_kinds"))))
    for label, text in texts:
        row = fleet.get(label)
        if row is None:
            continue
        decodes = "; %d CPU maps decoded" % row["map_decodes"] if "map_decodes" in row else ""
        lines.append("- %s (%d distinct): cold %s, warm %s (median of %d)%s; the result: %s, %d required, %d disabled features"
                     % (text, row["distinct"], seconds_text(row["cold"]), seconds_text(row["warm"]), fleet["rounds"], decodes,
                        row["model"], row["required"], row["disabled"]))
        if row.get("profile"):
            lines.append("  - cProfile of one cold call (cumulative, profiler overhead included): %s"
                         % ", ".join("%s %s" % (item["function"], seconds_text(item["seconds"])) for item in row["profile"]))
    return lines + [""]


def role_lines(role: Dict[str, Any]) -> List[str]:
    lines = ["### The fleet role over many inventory hosts", "",
             "Each host's facts come from Ansible's jsonfile fact cache (variants of the four testbed hosts, %d kinds, one guest "
             "each; `hostcpu_fleet_probe: false`), forks %d, connection local: the controller does all the work. Time per host of "
             "each phase of the role (probe: the facts checked and the host's record; plan: fleet_compatibility over all hosts; "
             "report: the Markdown and HTML report), of the whole run, and the controller's CPU time per host "
             "(ansible-playbook and its workers)." % (role["kinds"], role["forks"]), "",
             "| hosts | run | probe | plan | report | whole run | controller CPU |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for entry in role["sizes"]:
        per_host = entry["per_host_ms"]
        lines.append("| %d | %s | %.1f ms | %.1f ms | %.1f ms | %.1f ms | %.1f ms |" % (
            entry["hosts"], seconds_text(entry["wall"]), per_host["probe"], per_host["plan"], per_host["report"], per_host["wall"],
            per_host["cpu"]))
    sizes = role["sizes"]
    lines += ["", "Growth of the time per host from %d to %d hosts (1.00x: linear): %s." % (
        sizes[0]["hosts"], sizes[-1]["hosts"], ", ".join("%s %.2fx" % item for item in role["growth"].items()))]
    return lines + [""]


def render(results: Dict[str, Any]) -> str:
    load = results["load"]
    lines = ["# hostcpu.libvirt benchmarks", "",
             "Run %s (%s), %.0f s. Machine: %s." % (results["finished"], " ".join(results["command"]), results["seconds"],
                                                    machine_text(results["machine"])),
             "Load average (1 min) during the run: min %s, median %s, max %s (the bench itself keeps about one core busy); other "
             "test suites were running at %s of %s samples." % (load.get("min"), load.get("median"), load.get("max"),
                                                                load.get("with_other_suites"), load.get("samples")),
             "CPU speed: a fixed pure-Python reference loop took %s ms at the start and %s ms at the end (a shared virtual machine "
             "is not always as fast; compare runs with similar figures)." % (
                 results["reference_loop_ms"]["start"], results["reference_loop_ms"]["end"]),
             "", "## Targets", ""] + targets_table(results["targets"]) + ["", "## Figures", ""]
    if "converge" in results:
        lines += converge_lines(results["converge"])
    if "facts" in results:
        lines += facts_lines(results["facts"])
    if "live_cpu" in results:
        lines += live_lines(results["live_cpu"])
    if "fleet_baseline" in results:
        lines += fleet_lines(results["fleet_baseline"])
    if "fleet_role" in results:
        lines += role_lines(results["fleet_role"])
    return "\n".join(lines).rstrip() + "\n"


def readme_block(results: Dict[str, Any]) -> str:
    """The short summary README.md shows: machine, targets, and where the full figures are."""
    load = results["load"]
    lines = [README_START, "",
             "Measured %s with `make bench` on %s; load average %s-%s during the run (other test suites running at %s of %s "
             "samples). Full figures: [bench/results/latest.md](bench/results/latest.md)."
             % (results["finished"][:10], machine_text(results["machine"]), load.get("min"), load.get("max"),
                load.get("with_other_suites"), load.get("samples")), ""]
    lines += targets_table(results["targets"])
    entry = size_entry(results, 50)
    if entry:
        from converge import METHOD_TEXT  # pylint: disable=import-outside-toplevel
        lines += ["", "Setting the CPU mode of 50 shut-off domains (task time, median):", "",
                  "| method | first run | no-op rerun |", "|---|---:|---:|",
                  "| %s | %s | %s |" % (METHOD_TEXT["floor"], seconds_text(entry["floor"]), seconds_text(entry["floor"]))]
        for method, row in entry["methods"].items():
            lines.append("| %s | %s | %s |" % (METHOD_TEXT[method], seconds_text(row["first"]) if row["first"] is not None else "not measured",
                                               seconds_text(row["rerun"])))
    return "\n".join(lines + ["", README_END])


def update_readme(block: str) -> None:
    text = README.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        raise BenchError("README.md has no bench block (%s ... %s) to replace" % (README_START, README_END))
    head, rest = text.split(README_START, 1)
    _old, tail = rest.split(README_END, 1)
    README.write_text(head + block + tail, encoding="utf-8")


def write_results(results: Dict[str, Any], text: str, output: str) -> None:
    if output == "-":
        return
    directory = Path(output)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "latest.json").write_text(json.dumps(results, indent=1, sort_keys=False, default=str) + "\n", encoding="utf-8")
    (directory / "latest.md").write_text(text, encoding="utf-8")
    log("written: %s, %s" % (directory / "latest.md", directory / "latest.json"))


# ---------------------------------------------------------------------------------------------


def connect():
    try:
        import libvirt  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise BenchError("libvirt-python is missing: run the bench with the venv's Python (make bench)") from None
    silence_libvirt()
    try:
        return libvirt.open(URI)
    except libvirt.libvirtError as exc:
        raise BenchError("no libvirt daemon at %s (%s): run 'make daemons'" % (URI, exc)) from None


def render_again(args: argparse.Namespace) -> int:
    """The report, the results file and README's section from a saved latest.json."""
    results = json.loads(Path(args.render).read_text(encoding="utf-8"))
    results["targets"] = targets(results)
    text = render(results)
    print(text)
    write_results(results, text, args.output)
    if args.update_readme:
        update_readme(readme_block(results))
        log("README.md's Performance section updated")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render_again(args)
    terminate_as_interrupt()
    try:
        conn = connect()
    except BenchError as exc:
        log("bench: %s" % exc)
        return 2
    stale = leftover_bench_domains(conn)
    if stale:
        log("note: %d domains of an earlier, killed bench run are still defined (%s ...); remove them with "
            "'virsh undefine NAME' (this run only ever removes its own)" % (len(stale), stale[0]))
    load = LoadSampler()
    load.mark()
    started = time.perf_counter()
    results: Dict[str, Any] = {"machine": machine(conn), "command": ["bench/run.py"] + (argv if argv is not None else sys.argv[1:]),
                               "settings": {key: value for key, value in vars(args).items() if key != "output"}}
    results["reference_loop_ms"] = {"start": reference_loop_ms()}
    log("bench on %s; load average %s; reference loop %s ms" % (
        machine_text(results["machine"]), load.samples[-1], results["reference_loop_ms"]["start"]))
    try:
        run_sections(args, conn, load, results)
    except KeyboardInterrupt:
        log("bench: interrupted; its domains were removed")
        return 130
    except BenchError as exc:
        log("bench: %s (its domains were removed)" % exc)
        return 1
    load.mark()
    results["reference_loop_ms"]["end"] = reference_loop_ms()
    results["seconds"] = time.perf_counter() - started
    results["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results["load"] = load.summary()
    results["load_samples"] = load.samples
    results["targets"] = targets(results)
    text = render(results)
    print(text)
    write_results(results, text, args.output)
    if args.update_readme:
        update_readme(readme_block(results))
        log("README.md's Performance section updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
