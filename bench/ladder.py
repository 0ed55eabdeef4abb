"""Ladder statistics of a decide home: per rung and issue kind, tried / accepted / held / rejected and the top
rejection reasons (failing gate checks, counted); per site, the network-sized runs spent (a backbone trained:
F re-optimization, augmentation retrain, full retrain) and the share of its reports resolved.

    python bench/ladder.py --home .decide-demo [--json]

Reads the registry only (run `make demo` first for the demo's numbers). `--quick` is accepted for
`make bench`: the script is always quick.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import output, parser


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--home", default=os.environ.get("DECIDE_HOME", ".decide-demo"), help="The decide home to read.")
    args = p.parse_args()
    home = Path(args.home)
    if not (home / "registry.db").is_file() and not os.environ.get("DECIDE_DATABASE_URL"):
        print(f"no registry in {home}: run `make demo` (or pass --home)", file=sys.stderr)
        sys.exit(2)
    from decision.ladder import ladder_stats
    from registry import repo
    from registry.session import session_scope

    url = os.environ.get("DECIDE_DATABASE_URL") or f"sqlite:///{home / 'registry.db'}"
    with session_scope(url, read_only=True) as s:
        runs = repo.list_runs(s)
        stats = ladder_stats(runs, repo.run_kinds(s))
        reports = repo.list_reports(s)
        decisions = {d.id: d for d in repo.list_decisions(s)}
    rows = [{"treatment": r.treatment, "kind": r.kind, "tried": r.tried, "accepted": r.accepted, "held": r.held,
             "rejected": r.rejected, "failed": r.failed, "site_scoped": r.site_scoped,
             "top_reasons": "; ".join(f"{name} ×{n}" for name, n in r.top_reasons(3))} for r in stats]
    totals: dict[str, dict[str, int]] = {}
    for r in stats:
        t = totals.setdefault(r.treatment, {"tried": 0, "accepted": 0})
        t["tried"] += r.tried
        t["accepted"] += r.accepted
    per_treatment = {k: f"{v['accepted']}/{v['tried']} accepted" for k, v in totals.items()}
    output("ladder statistics", rows, {"home": str(home), "per_treatment": per_treatment,
                                       "per_site": per_site(runs, reports, decisions),
                                       "reasons": {f"{r.treatment}/{r.kind}": r.reasons for r in stats}}, args.json)


NETWORK_SIZED = ("f_reoptimization", "augmentation_retrain", "full_retrain")


def per_site(runs, reports, decisions) -> dict[str, dict]:
    """Per site: network-sized runs (how many, for how many reports, wall seconds) and reports resolved."""
    site_of = {r.id: r.site for r in reports}
    out: dict[str, dict] = {}
    for r in reports:
        row = out.setdefault(r.site, {"reports": 0, "resolved": 0, "network_runs": {}, "network_wall_s": 0.0,
                                      "reports_per_network_run": []})
        row["reports"] += 1
        row["resolved"] += r.status.value == "resolved"
    for run in runs:
        d = decisions.get(run.decision_id)
        if run.treatment not in NETWORK_SIZED or d is None or not d.report_ids:
            continue
        row = out[site_of[d.report_ids[0]]]
        row["network_runs"][run.treatment] = row["network_runs"].get(run.treatment, 0) + 1
        row["network_wall_s"] = round(row["network_wall_s"] + (run.wall_seconds or 0.0), 1)
        row["reports_per_network_run"].append(len(d.report_ids))
    for row in out.values():
        row["share_resolved"] = f"{row['resolved']}/{row['reports']}"
    return out


if __name__ == "__main__":
    main()
