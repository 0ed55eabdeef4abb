"""bench/drift.py's table: one row per figure, ours beside the peer's where one ran on the same windows."""

from __future__ import annotations


def _pct(s: dict) -> str:
    return f"{100 * s['rate']:.1f} % [{100 * s['wilson'][0]:.1f}, {100 * s['wilson'][1]:.1f}]"


def _share(c: dict | None) -> str:
    return "-" if not c or c["inside_both"] is None else f"{100 * c['inside_both']:.1f} % of {c['pairs']}"


def table(fig: dict) -> list[dict]:
    """One row per figure: ours beside the peer's where one ran on the same windows."""
    rows, ev, nml = [], fig["evidently"], fig["nannyml_cbpe"]

    def row(figure, windows, ours, peer, goal, met=""):
        rows.append({"figure": figure, "windows": windows, "ours": ours, "peer": peer, "goal": goal, "met": met})

    for n, v in fig["false_alarms"].items():
        e = ev["groups"].get(f"site-a/null-{n}") if ev["run"] else None
        peer = (f"Evidently {_pct(e['preset (>= 50 % of score columns drift)'])}; +emb "
                f"{100 * e['preset or embeddings']['rate']:.1f} %") if e else ev.get("why", "")
        for part in ("first", "more"):
            if part in v:
                s = v[part]
                extra = f" + {s['n'] - s['disjoint_windows']} resampled" if s["n"] > s["disjoint_windows"] else ""
                row(f"false alarms site-a n={n}", f"{s['k']}/{s['disjoint_windows']} disjoint{extra}", _pct(s),
                    peer if part == "first" else "", "<= 5 %, Wilson <= 8 %",
                    s["rate"] <= 0.05 and s["wilson"][1] <= 0.08)
    for key, s in fig["detection"].items():
        site, n = key.split(" n=")
        e = ev["groups"].get(f"{site}/det-{n}") if ev["run"] else None
        peer = (f"Evidently {_pct(e['preset (>= 50 % of score columns drift)'])}; +emb "
                f"{100 * e['preset or embeddings']['rate']:.1f} %") if e else ""
        row(f"detection {site} n={n}", f"{s['k']}/{s['n']}", _pct(s), peer, ">= 90 % at <= 200",
            s["rate"] >= 0.9 if n == "200" else "")
    for key, e in fig["estimation"].items():
        ours = e["ours (valid pairs)"]
        g = nml["groups"].get(key) if nml["run"] else None
        peer = (f"CBPE {_share(g['CBPE (pairs where ours is valid)'])} (all: {_share(g['CBPE (all pairs)'])})"
                if g else nml.get("why", ""))
        row(f"estimate in realised 95 % CP, {key}", f"{e['windows']} x {e['pairs'] // max(e['windows'], 1)} pairs",
            f"{_share(ours)} valid; {e['not_valid_pairs']} not valid; unchecked "
            f"{_share(e['ours without the validity rules (all pairs)'])}", peer, ">= 90 % of valid",
            "" if ours["inside_both"] is None else ours["inside_both"] >= 0.9)
        if key.startswith("site-a"):
            for q, c in e["concept_shift"].items():
                if q.startswith("negatives"):
                    row(f"concept shift {key}: {e['concept_shift']['finding']}, {q}", f"{c['windows_checked']}",
                        f"{c['contradicted_after_holm']} contradicted (alone {c['contradicted_alone']}); clean "
                        f"labels {e['windows_contradicted_clean_labels']}", "", "says: not trusted")
    for site, s in fig["ood_share"].items():
        row(f"OOD share {site} (rate {fig['ood_rate_used']:g})", str(s["n"]), _pct(s), "", "information")
    tm = fig["timing"]
    med = tm["median_ms"]
    row("label-free assessment of a window of 200", str(tm["windows"]),
        f"{tm['label_free_assessment_ms']['median']} ms (drift {med['drift tests']}, estimates {med['estimates']}, "
        f"OOD {med['ood checks']}, pixels {med['pixel summaries']}); inference {med['inference']} ms",
        f"Evidently {1000 * ev['seconds_per_window']:.0f} ms" if ev["run"] else "", "information")
    return rows
