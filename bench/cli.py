"""How fast `decide` answers: wall time of each command that does not touch a model, run as a process
(median of several runs), against `python -c pass` on the same machine, with the ratio.

Goal (issue 12): `decide --help`, `decide reports --json` and `decide history cxr --json` each ≤ 0.8 s
median. The child's CPU time (user + system) is printed too: on a shared machine wall time includes
waiting for a core, CPU time does not.

    python bench/cli.py [--quick] [--json] [--runs N]
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import output, parser

GOAL_S = 0.8
GOAL_COMMANDS = ("--help", "reports --json", "history cxr --json")


def _decide() -> list[str]:
    script = Path(sys.executable).with_name("decide")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli"]


def _time(cmd: list[str], env: dict, runs: int) -> tuple[float, float, int]:
    """Median wall seconds, median child CPU seconds, exit code of the last run (after one untimed warm-up run:
    the file cache and the bytecode cache are warm, as for any command typed a second time)."""
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    walls, cpus, code = [], [], 0
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        res = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        walls.append(time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        code = res.returncode
        if code not in (0,):
            raise SystemExit(f"{' '.join(cmd)} exited {code}: {res.stderr.decode()[-500:]}")
    return statistics.median(walls), statistics.median(cpus), code


def _registry(home: Path) -> None:
    """A small real registry: two versions of a tiny DenseNet, a report, a decision, an export target."""
    os.environ["DECIDE_HOME"] = str(home)
    os.environ.pop("DECIDE_DATABASE_URL", None)
    from cxr.model import build_model
    from cxr.spec import preset
    from cxr.weights import save_model
    from decision import error_reports, registration
    from registry import repo
    from registry.session import dispose_engines, init_registry, session_scope

    init_registry()
    for seed in (0, 1):
        save_model(home / f"m{seed}.safetensors", build_model(preset("tiny"), seed=seed))
    with session_scope() as s:
        v1 = registration.register_weights_file(s, home / "m0.safetensors", "cxr", promote=True)
        registration.register_weights_file(s, home / "m1.safetensors", "cxr", parent=v1.ref)
    line = {"model": "cxr", "version": 1, "pathology": "Effusion", "kind": "false_positives", "metric": "fpr",
            "value": 0.6, "target": 0.2, "site": "site-b", "window_start": "2026-02-01T00:00:00Z",
            "window_end": "2026-02-08T00:00:00Z", "counts": {"tp": 5, "fp": 60, "tn": 40, "fn": 1}}
    (home / "reports.jsonl").write_text(json.dumps(line) + "\n")
    with session_scope() as s:
        rid = error_reports.ingest_file(s, home / "reports.jsonl").ids[0]
        repo.create_decision(s, [rid], "0" * 64, [{"treatment": "head_retrain"}], "head_retrain", "bench")
    dispose_engines()


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=None, help="Runs per command (default 7, --quick 3).")
    args = p.parse_args()
    runs = args.runs or (3 if args.quick else 7)
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        home = Path(tmp) / "home"
        _registry(home)
        env = {**os.environ, "DECIDE_HOME": str(home), "DECIDE_ACTOR": "bench"}
        env.pop("DECIDE_DATABASE_URL", None)
        # Python writes each module's bytecode on first import unless told not to; some CI and sandbox images
        # set PYTHONDONTWRITEBYTECODE, which makes every start re-compile the project's ~50 modules from source
        # (a fifth of a second here). The children run as an installed tool does: with the cache.
        bytecode_env_was_set = env.pop("PYTHONDONTWRITEBYTECODE", None) is not None
        commands = ["--help", "reports --json", "history cxr --json", "show cxr:1 --json", "lineage cxr:2 --json",
                    "diff cxr:1 cxr:2 --json", "decisions --json", "costs --json", "audit verify --json",
                    f"ingest {home / 'reports.jsonl'} --json", f"export --out {home / 'export.json'}"]
        base_wall, base_cpu, _ = _time([sys.executable, "-c", "pass"], env, runs)
        rows = [{"command": "python -c pass", "median s": base_wall, "cpu s": base_cpu, "× python": 1.0,
                 "goal": ""}]
        for c in commands:
            wall, cpu, _ = _time([*_decide(), *c.split()], env, runs)
            shown = c.replace(str(home), "HOME")
            goal = ("ok" if wall <= GOAL_S else "MISSED") if c in GOAL_COMMANDS else ""
            rows.append({"command": f"decide {shown}", "median s": wall, "cpu s": cpu,
                         "× python": wall / base_wall, "goal": goal})
    figures = {"runs_per_command": runs, "goal_s": GOAL_S,
               "goal_met": all(r["goal"] != "MISSED" for r in rows),
               "load_average": os.getloadavg(), "bytecode_cache": "written (PYTHONDONTWRITEBYTECODE unset for the "
               "children)" if bytecode_env_was_set else "written (Python's default)"}
    output("decide start-up: median wall and CPU seconds per command, as a process", rows, figures, args.json)


if __name__ == "__main__":
    main()
