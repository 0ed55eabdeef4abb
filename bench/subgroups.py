"""The subgroup gate's error and power by simulation (decision/gate_subgroups.py under the default policy).

Null: candidates equal to their parent in distribution (same latent score per film plus independent noise, so
the two models' scores correlate about 0.9 and disagree on some positives both ways): the share that fails any
subgroup check is the family-wise false rejection, reported with its 95 % Wilson upper bound against the
policy's alpha. Power: the same candidates, but missing 10 points of recall in PA films only (that many of the PA
positives it caught are pushed below its threshold), at several numbers of PA positives.

    python bench/subgroups.py [--quick] [--json] [--null 1000] [--power-sims 300] [--seed 0]
"""

from __future__ import annotations

import math
import time

import _common
import numpy as np
from scipy.stats import norm

from decision.evaluate import evaluate_scores
from decision.gate_subgroups import subgroup_checks
from decision.subgroups import SubgroupInput, SubgroupSettings, group_columns
from policies import load_policy

PREVALENCE, THRESHOLD, N_AP = 0.3, 0.6, 1500


def wilson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    z = norm.ppf(1 - alpha / 2)
    p = k / n
    mid, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (mid - half) / (1 + z * z / n), (mid + half) / (1 + z * z / n)


def _one(rng, n_pa_pos: int, drop: float, policy) -> tuple[bool, bool]:
    """One candidate: (any subgroup check failed, the PA recall check failed)."""
    n_pa = round(n_pa_pos / PREVALENCE)
    n = N_AP + n_pa
    view = np.array(["AP"] * N_AP + ["PA"] * n_pa)
    y = np.zeros(n)
    y[rng.choice(N_AP, round(N_AP * PREVALENCE), replace=False)] = 1
    y[N_AP + rng.choice(n_pa, n_pa_pos, replace=False)] = 1
    sex = np.where(rng.random(n) < 0.5, "F", "M")
    cols = group_columns(sex, rng.uniform(20, 90, n), view, ["site-a"] * n, SubgroupSettings())
    latent = 1.2 * y + rng.normal(size=n)
    par, cand = latent + 0.33 * rng.normal(size=n), latent + 0.33 * rng.normal(size=n)
    if drop:
        caught = np.flatnonzero((view == "PA") & (y == 1) & (cand >= THRESHOLD) & (par >= THRESHOLD))
        k = min(caught.size, round(drop * n_pa_pos))
        cand[rng.choice(caught, k, replace=False)] = THRESHOLD - 0.5
    ev = evaluate_scores(y[:, None], cand[:, None], par[:, None], [THRESHOLD], ["Cardiomegaly"],
                         parent_thresholds=[THRESHOLD], subgroups=SubgroupInput(cols, SubgroupSettings()))
    checks = subgroup_checks(ev, "Cardiomegaly", policy)
    return (any(not c.passed for c in checks),
            any(not c.passed and c.name == "subgroup_recall[Cardiomegaly|view=PA]" for c in checks))


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--null", type=int, default=1000, help="candidates equal to their parent")
    p.add_argument("--power-sims", type=int, default=300, help="candidates per point of the power curve")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    sizes = [20, 40, 80, 160, 320, 640]
    if args.quick:
        args.null, args.power_sims, sizes = 400, 50, [40, 160, 640]
    policy, rng, t0 = load_policy(), np.random.default_rng(args.seed), time.perf_counter()
    alpha = policy.gate.alpha
    null_k = sum(_one(rng, 80, 0.0, policy)[0] for _ in range(args.null))
    lo, hi = wilson(null_k, args.null)
    rows = [{"scenario": "equal to parent (80 PA positives)", "candidates": args.null, "rejected": null_k,
             "rate": null_k / args.null, "wilson_lo": lo, "wilson_hi": hi}]
    curve = {}
    for n_pos in sizes:
        runs = [_one(rng, n_pos, 0.10, policy) for _ in range(args.power_sims)]
        k = sum(r[0] for r in runs)
        lo_p, hi_p = wilson(k, args.power_sims)
        curve[n_pos] = k / args.power_sims
        rows.append({"scenario": f"10-point recall drop, {n_pos} PA positives", "candidates": args.power_sims,
                     "rejected": k, "rate": k / args.power_sims, "wilson_lo": lo_p, "wilson_hi": hi_p,
                     "by_pa_recall_check": sum(r[1] for r in runs)})
    first = next((n for n in sizes if curve[n] >= 0.8), None)
    figures = {"alpha": alpha, "fwer": null_k / args.null, "fwer_wilson_upper": hi,
               "fwer_goal_met": hi <= alpha + 0.02, "power_curve": curve,
               "pa_positives_for_80pct_power": first, "seconds": round(time.perf_counter() - t0, 1),
               "setup": f"{N_AP} AP films + PA films, prevalence {PREVALENCE}, sex and age bands, "
                        f"threshold {THRESHOLD}, score correlation about 0.9, default policy"}
    _common.output("subgroup gate: false rejection and power", rows, figures, args.json)


if __name__ == "__main__":
    main()
