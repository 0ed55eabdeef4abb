"""Whether demo runs decided the same: for each error report (site, pathology, kind, week), the rungs its
decision tried and how each ended, compared across `decide export` files; ids and times are ignored.

    python bench/same_ladders.py A.json B.json [C.json ...] [--json]

A refactor must not change what the engine does. Two runs of the same code may still differ where the
planner reads measured wall times (a rung's learned cost): for every report whose ladders differ, the
score (expected cost / p(success)) and rank of each candidate whose rank differs between the runs is
shown, so the cause can be read off. `make bench` runs it with `--quick` and no files: it then says what
it needs and exits 0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import output, parser


def ladders(path: Path) -> dict[tuple, dict]:
    """Report key → its status, each decision's status and tried rungs, and every candidate's rank and score."""
    e = json.loads(path.read_text())
    weeks: dict[str, list[str]] = {}
    for r in e["reports"]:
        weeks.setdefault(r["site"], []).append(r["window_start"])
    runs: dict[int, list[dict]] = {}
    for run in sorted(e["runs"], key=lambda x: x["id"]):
        runs.setdefault(run["decision_id"], []).append(run)
    out: dict[tuple, dict] = {}
    for r in e["reports"]:
        week = sorted(set(weeks[r["site"]])).index(r["window_start"]) + 1
        out[(r["site"], r["pathology"], r["kind"], f"week {week}")] = {"report": r["status"], "decisions": []}
        r["key"] = (r["site"], r["pathology"], r["kind"], f"week {week}")
    by_id = {r["id"]: r for r in e["reports"]}
    for d in e["decisions"]:
        for rid in d["report_ids"]:
            out[by_id[rid]["key"]]["decisions"].append({
                "status": d["status"],
                "tried": [(x["treatment"], x["outcome"]) for x in runs.get(d["id"], [])],
                "candidates": {c["treatment"]: (c["rank"], c["score"]) for c in d["candidates"] if c["applicable"]},
            })
    return out


def _ladder_text(entry: dict) -> str:
    return " | ".join(" → ".join(f"{t} {o}" for t, o in d["tried"]) + f" ({d['status']})"
                      for d in entry["decisions"]) or "no decision"


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("exports", nargs="*", type=Path, help="`decide export` files of the runs to compare.")
    args = p.parse_args()
    if len(args.exports) < 2:
        print("give two or more `decide export` files to compare", file=sys.stderr)
        sys.exit(0 if args.quick else 2)  # `make bench` runs every script with --quick and no arguments
    runs = [ladders(x) for x in args.exports]
    keys = sorted(set().union(*runs))
    rows, differing = [], []
    for key in keys:
        entries = [run.get(key) for run in runs]
        plain = [None if x is None else (x["report"], [(d["status"], d["tried"]) for d in x["decisions"]])
                 for x in entries]
        same = all(x == plain[0] for x in plain)
        row = {"report": " ".join(key), "same": same}
        for path, x in zip(args.exports, entries, strict=True):
            row[path.stem] = "absent" if x is None else _ladder_text(x)
        if not same:
            cands = [d["candidates"] for x in entries if x for d in x["decisions"]]
            moved = sorted({t for c in cands for t in c if len({(c2.get(t) or (None,))[0] for c2 in cands}) > 1})
            row["why"] = "; ".join(
                f"{path.stem}: " + ", ".join(f"{t} rank {d['candidates'][t][0]} score {d['candidates'][t][1]:.2f}"
                                             for t in moved if t in d["candidates"])
                for path, x in zip(args.exports, entries, strict=True) if x for d in x["decisions"])
            differing.append(row["report"])
        rows.append(row)
    output("same ladders across runs", rows, {"reports": len(keys), "identical": len(keys) - len(differing),
                                             "differing": differing}, args.json)


if __name__ == "__main__":
    main()
