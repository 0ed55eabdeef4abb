"""How fast `decide` answers: wall time of each command that does not touch a model, run as a process
(median of several runs), against `python -c pass` on the same machine, with the ratio; with --against,
the same commands of other checkouts side by side, in the same run.

Goal (issue 12): `decide --help`, `decide reports --json` and `decide history cxr --json` each ≤ 0.8 s
median. The child's CPU time (user + system) is printed too: on a shared machine wall time includes
waiting for a core, CPU time does not.

--against DIR (repeatable) times DIR's `decide` too: the children run with PYTHONPATH=DIR, so that
DIR's packages are imported before this tree's (e.g. `git worktree add /tmp/base HEAD~1`, or any
read-only copy of a commit). Every command runs for each checkout in turn, run after run, who goes
first rotating, on the one registry, so that a busy minute on a shared machine slows them all alike.
Nothing is written into a checkout: every child keeps its bytecode under a temporary
PYTHONPYCACHEPREFIX (warmed by one untimed run per command and checkout, as for any command typed a
second time).

    python bench/cli.py [--quick] [--json] [--runs N] [--against DIR ...] [--only "reports --json" ...]
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
from datetime import timedelta
from pathlib import Path

from _common import output, parser

GOAL_S = 0.8
GOAL_COMMANDS = ("--help", "reports --json", "history cxr --json")
THIS = "this tree"


def _decide() -> list[str]:
    script = Path(sys.executable).with_name("decide")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli"]


def _once(cmd: list[str], env: dict) -> tuple[float, float]:
    """Wall and child CPU seconds of one run; a failing command stops the bench."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    res = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {res.returncode} ({env.get('PYTHONPATH') or THIS}): "
                         f"{res.stderr.decode()[-500:]}")
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def _time(cmd: list[str], envs: dict[str, dict], runs: int) -> dict[str, tuple[float, float]]:
    """Median wall and CPU seconds of `cmd` per checkout, the checkouts taking turns run by run, who goes
    first rotating (after one untimed warm-up run each: the file cache and the bytecode cache are warm)."""
    for env in envs.values():
        _once(cmd, env)
    walls: dict[str, list[float]] = {k: [] for k in envs}
    cpus: dict[str, list[float]] = {k: [] for k in envs}
    names = list(envs)
    for i in range(runs):
        for name in names[i % len(names):] + names[:i % len(names)]:
            wall, cpu = _once(cmd, envs[name])
            walls[name].append(wall)
            cpus[name].append(cpu)
    return {k: (statistics.median(walls[k]), statistics.median(cpus[k])) for k in envs}


def _registry(home: Path) -> None:
    """A small real registry: two versions of a tiny DenseNet, a report, a decision, an export target."""
    os.environ["DECIDE_HOME"] = str(home)
    os.environ.pop("DECIDE_DATABASE_URL", None)
    from cxr import clock
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
    now = clock.now()  # last week's window, whatever the date
    line = {"model": "cxr", "version": 1, "pathology": "Effusion", "kind": "false_positives", "metric": "fpr",
            "value": 0.6, "target": 0.2, "site": "site-b", "window_start": (now - timedelta(days=8)).isoformat(),
            "window_end": (now - timedelta(days=1)).isoformat(), "counts": {"tp": 5, "fp": 60, "tn": 40, "fn": 1}}
    (home / "reports.jsonl").write_text(json.dumps(line) + "\n")
    with session_scope() as s:
        rid = error_reports.ingest_file(s, home / "reports.jsonl").ids[0]
        repo.create_decision(s, [rid], "0" * 64, [{"treatment": "head_retrain"}], "head_retrain", "bench")
    dispose_engines()


def _checkout(path: str) -> dict:
    """What `path` is: its resolved path and, when git knows it, its commit (read-only git calls)."""
    p = Path(path).resolve()
    if not (p / "cli" / "app.py").is_file():
        raise SystemExit(f"--against {path}: no cli/app.py there (a checkout of this project is expected)")
    rev = subprocess.run(["git", "-C", str(p), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         check=False).stdout.strip()
    return {"path": str(p), "commit": rev or None}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=None, help="Runs per command and checkout (default 7, --quick 3).")
    p.add_argument("--against", action="append", default=[], metavar="DIR",
                   help="Another checkout to time side by side (PYTHONPATH=DIR); repeatable.")
    p.add_argument("--only", action="append", default=[], metavar="COMMAND",
                   help='Time only this command (as in the table, without "decide "); repeatable.')
    args = p.parse_args()
    runs = args.runs or (3 if args.quick else 7)
    others = {f"{Path(d).resolve().name}": _checkout(d) for d in args.against}
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        home = Path(tmp) / "home"
        _registry(home)
        env = {**os.environ, "DECIDE_HOME": str(home), "DECIDE_ACTOR": "bench",
               "PYTHONPYCACHEPREFIX": str(Path(tmp) / "pycache")}
        env.pop("DECIDE_DATABASE_URL", None)
        # Python writes each module's bytecode on first import unless told not to; some CI and sandbox images
        # set PYTHONDONTWRITEBYTECODE, which makes every start re-compile the project's ~50 modules from source
        # (a fifth of a second here). The children run as an installed tool does: with the cache.
        bytecode_env_was_set = env.pop("PYTHONDONTWRITEBYTECODE", None) is not None
        envs = {THIS: env} | {name: {**env, "PYTHONPATH": os.pathsep.join(filter(None, (c["path"],
                                                                                         env.get("PYTHONPATH"))))}
                              for name, c in others.items()}
        commands = ["--help", "reports --json", "history cxr --json", "show cxr:1 --json", "lineage cxr:2 --json",
                    "diff cxr:1 cxr:2 --json", "decisions --json", "costs --json", "audit verify --json",
                    f"ingest {home / 'reports.jsonl'} --json", f"export --out {home / 'export.json'}"]
        if args.only:
            commands = [c for c in commands if c.replace(str(home), "HOME") in args.only]
            if len(commands) != len(set(args.only)):
                raise SystemExit(f"--only: not among the bench's commands: {args.only}")
        base_wall, base_cpu = _time([sys.executable, "-c", "pass"], {THIS: env}, runs)[THIS]
        rows = [{"command": "python -c pass", "median s": base_wall, "cpu s": base_cpu, "× python": 1.0,
                 "goal": ""}]
        for c in commands:
            timed = _time([*_decide(), *c.split()], envs, runs)
            wall, cpu = timed[THIS]
            goal = ("ok" if wall <= GOAL_S else "MISSED") if c in GOAL_COMMANDS else ""
            row = {"command": f"decide {c.replace(str(home), 'HOME')}", "median s": wall, "cpu s": cpu,
                   "× python": wall / base_wall, "goal": goal}
            for name in others:
                o_wall, o_cpu = timed[name]
                row |= {f"{name} median s": o_wall, f"{name} cpu s": o_cpu, f"÷ {name}": wall / o_wall}
            rows.append(row)
    figures = {"runs_per_command": runs, "goal_s": GOAL_S,
               "goal_met": all(r["goal"] != "MISSED" for r in rows),
               "load_average": os.getloadavg(), "bytecode_cache": "written under a temporary PYTHONPYCACHEPREFIX"
               + (" (PYTHONDONTWRITEBYTECODE unset for the children)" if bytecode_env_was_set else "")}
    if others:
        figures["against"] = others
        figures["interleaved"] = "each run times every checkout in turn (who goes first rotates), on one registry"
    output("decide start-up: median wall and CPU seconds per command, as a process", rows, figures, args.json)


if __name__ == "__main__":
    main()
