"""Ladder statistics of a decide home: per rung and issue kind, tried / accepted / held / rejected and the top
rejection reasons (failing gate checks, counted).

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
        stats = ladder_stats(repo.list_runs(s), repo.run_kinds(s))
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
                                       "reasons": {f"{r.treatment}/{r.kind}": r.reasons for r in stats}}, args.json)


if __name__ == "__main__":
    main()
