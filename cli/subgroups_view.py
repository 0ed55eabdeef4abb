"""Rendering of per-subgroup results for `decide show` and `decide diff` (tables only; the data is the registry's).

By default each command prints one summary line (how many groups, how many too small to judge); with
`--subgroups` it lists them. `--json` always carries every group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cli.output import Table, console, fmt_float


def _ci(v: float | None, lo: float | None, hi: float | None) -> str:
    return "—" if v is None else f"{v:.3f} [{fmt_float(lo)}, {fmt_float(hi)}]"


def _verdict(g: dict[str, Any]) -> str:
    need = g.get("positives_needed")
    need_text = ">10,000,000" if need is None else f"~{need:,}"
    if not g.get("judgeable"):
        return f"too small ({g['n_pos']}+ < {need_text}+ for ±{g['margin']:.3f})"
    return "ok" if need is not None and need <= g["n_pos"] else f"CI wider than ±{g['margin']:.3f} (needs {need_text}+)"


def show_subgroups(evals: Sequence[Any], listed: bool) -> None:
    """Summary line, and with `listed` a table, of the subgroup results stored with `evals`."""
    rows = [(e, g) for e in evals for g in (e.subgroups or [])]
    if not rows:
        console.print("subgroups: not evaluated per subgroup")
        return
    small = sum(not g.get("judgeable") for _, g in rows)
    console.print(f"subgroups: {len(rows)} results ({small} too small to judge; never dropped)"
                  + ("" if listed else " — `--subgroups` lists them"))
    if not listed:
        return
    t = Table("dataset", "pathology", "attribute", "group", "n+/n−", "AUROC [95% CI]", "recall [exact CI]",
              "FPR [exact CI]", "verdict", title="per subgroup (recall and FPR at the operating point)")
    for e, g in rows:
        t.add_row(e.dataset, e.pathology, g["attribute"], g["group"], f"{g['n_pos']}/{g['n_neg']}",
                  _ci(g.get("auroc"), g.get("auroc_lo"), g.get("auroc_hi")),
                  _ci(g.get("recall"), g.get("recall_lo"), g.get("recall_hi")),
                  _ci(g.get("fpr"), g.get("fpr_lo"), g.get("fpr_hi")), _verdict(g))
    console.print(t)


def diff_subgroups(rows: Sequence[dict[str, Any]], dataset: str | None, listed: bool) -> None:
    """Summary line, and with `listed` a table, of `VersionDiff.subgroups`."""
    if not rows:
        console.print("subgroups: not compared (a version was not evaluated per subgroup on the same data set)")
        return
    console.print(f"subgroups on {dataset}: {len(rows)} compared" + ("" if listed else " — `--subgroups` lists them"))
    if not listed:
        return
    t = Table("pathology", "attribute", "group", "n+", "AUROC", "Δ", "recall", "Δ", "FPR", "Δ", "judgeable",
              title=f"per subgroup on {dataset}")
    for r in rows:
        cells = []
        for k in ("auroc", "recall", "fpr"):
            cells += [fmt_float(r[k]["b"]), fmt_float(r[k]["delta"])]
        j = r["judgeable"]
        t.add_row(r["pathology"], r["attribute"], r["group"], f"{r['n_pos']['a']} → {r['n_pos']['b']}", *cells,
                  f"{j['a']} → {j['b']}")
    console.print(t)
