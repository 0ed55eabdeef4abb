"""Analysis commands: `analyze exclusivity`, `analyze channels`, `analyze figures`, and the per-study
clinical document `findings` (`report`, its old name, is a hidden alias for one release: it was one
letter away from `reports`, the error reports).

Everything heavy (torch, matplotlib, pandas, the NIH metadata) is imported inside the command
functions: `decide --help` must stay fast.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import typer

from cli.options import JSON_OPT
from cli.output import Table, console, emit, err_console, esc, fmt_float
from cxr.errors import InvalidInput

REFERENCE = "nih-metadata"
PERFECT_OPT = typer.Option(
    0.0, "--perfect-below", min=0.0, max=0.1,
    help="Count J below this as Perfect (J = 0). 0 (default): exactly zero; 0.005 reproduces the paper's rounding "
         "(it calls Hernia–Cardiomegaly, J = 0.0023, 'J = 0').")

analyze_app = typer.Typer(
    help=(
        "Label statistics and classifier-channel analysis, as in the paper this product grew from.\n\n"
        "exclusivity: which pathologies co-occur and which practically never do (pairwise Jaccard). "
        "channels: a version's polarized classifier channels, each classified by its pathology pair's Jaccard "
        "(Perfect J = 0, Legitimate < 0.1, Mixed < 0.3, Conflict ≥ 0.3). figures: the paper's figures from the "
        "registry."
    ),
    no_args_is_help=True,
)
commands = typer.Typer()
commands.add_typer(analyze_app, name="analyze")


def _stats(source: str, split: str | None, n: int | None):
    """Label statistics of `source` (the shipped NIH metadata by default)."""
    from cxr.labelstats import label_stats, nih_reference_stats

    if source == REFERENCE:
        return nih_reference_stats()
    from cxr.sources import ALL, open_source
    from registry.settings import get_settings

    kind = source.partition(":")[0]
    part = split or ("train" if kind == "phantom" else ALL)
    ds = open_source(source, resolution=64, split=part, n=n, cache_dir=get_settings().home_dir / "cache")
    import numpy as np

    known = [j for j in range(len(ds.label_names)) if not np.isnan(ds.labels[:, j]).all()]
    return label_stats(ds.labels[:, known], [ds.label_names[j] for j in known],
                       source=f"{source} ({part} split)" if kind == "phantom" else source)


def _write_png(path: Path, png: bytes) -> Path:
    from cxr.files import atomic_write

    if path.suffix.lower() != ".png":
        raise InvalidInput("the plot is a PNG: give a file name ending in .png", field="plot")
    atomic_write(path, png)
    return path


@analyze_app.command("exclusivity")
def exclusivity_cmd(
    source: str = typer.Option(REFERENCE, "--source", help=f"Whose labels: {REFERENCE} (NIH ChestX-ray14's 112,120 "
                               "rows that torchxrayvision ships), phantom:SITE, folder:DIR[:CSV] or nih:DIR."),
    split: str | None = typer.Option(None, "--split", help="For a data source: all (folder/nih default) or a patient "
                                     "split (train, calibration, evaluation, feedback; phantom default train)."),
    n: int | None = typer.Option(None, "--n", min=1, help="For a data source: at most this many films."),
    show: int = typer.Option(10, "--show", min=1, help="Pairs per table: the most exclusive and the most frequent."),
    perfect_below: float = PERFECT_OPT,
    plot: Path | None = typer.Option(None, "--plot", help="Write the Jaccard heatmap to this PNG file."),
    as_json: bool = JSON_OPT,
) -> None:
    """Pairwise co-occurrence and Jaccard index of the pathology labels.

    Example: decide analyze exclusivity --plot jaccard.png

    J(A, B) = films positive for both / films positive for either. J = 0: never reported together, so a
    classifier channel that votes for one and against the other is a bipolar axis, not a conflict.
    """
    st = _stats(source, split, n)
    data: dict[str, Any] = st.as_dict(perfect_below)
    if plot is not None:
        from decision.documents.plots import jaccard_heatmap

        data["plot"] = str(_write_png(plot, jaccard_heatmap(st)))

    def render() -> None:
        from collections import Counter

        pairs = [p for p in data["pairs"] if p["jaccard"] is not None]
        cats = Counter(p["category"] for p in data["pairs"])
        console.print(f"[bold]{esc(st.source)}[/]: {st.n:,} films, {len(st.names)} labels, {len(data['pairs'])} "
                      f"pairs — " + ", ".join(f"{k} {v}" for k, v in sorted(cats.items())))
        for title, rows in (("most exclusive pairs (lowest Jaccard)", pairs[:show]),
                            ("most frequent pairs (highest Jaccard)", pairs[::-1][:show])):
            t = Table("pathology A", "pathology B", "both", "either", "Jaccard", "category",
                      title=title, right=("both", "either", "Jaccard"), fold=True)
            for p in rows:
                t.add_row(p["a"], p["b"], f"{p['both']:,}", f"{p['either']:,}", f"{p['jaccard']:.4f}", p["category"])
            console.print(t)
        if plot is not None:
            console.print(f"heatmap: {esc(data['plot'])}")

    emit(data, as_json, render)


@analyze_app.command("channels")
def channels_cmd(
    version: str = typer.Argument(..., help="A registered version: cxr:3, cxr@production."),
    top: int = typer.Option(100, "--top", min=0, help="Keep the N most polarized channels (0 = every qualifying one)."),
    min_weight: float | None = typer.Option(
        None, "--min-weight", min=0.0, help="Only channels with a weight ≥ W for one pathology and ≤ −W for another."),
    reference: str = typer.Option(REFERENCE, "--reference", help="Label statistics behind the Jaccard: "
                                  f"{REFERENCE} (default) or a data source as in `analyze exclusivity --source`."),
    perfect_below: float = PERFECT_OPT,
    show: int = typer.Option(15, "--show", min=0, help="Channels listed in the table (JSON lists all)."),
    plot: Path | None = typer.Option(None, "--plot", help="Write the figure (category bars beside the paper's; "
                                     "Jaccard vs channel usage mirror) to this PNG file."),
    as_json: bool = JSON_OPT,
) -> None:
    """A version's polarized classifier channels and their legitimacy by label exclusivity.

    Example: decide analyze channels cxr@production --plot channels.png

    A channel is polarized when it votes strongly for one pathology and strongly against another:
    polarity = min(strongest positive weight, −strongest negative weight). Each links a pathology pair,
    classified by the pair's Jaccard: Perfect (J = 0), Legitimate (J < 0.1), Mixed (0.1 ≤ J < 0.3),
    Conflict (J ≥ 0.3). The paper: 48 / 41 / 11 / 0 of DenseNet121's 100 most polarized.
    """
    from cxr.channels import PAPER_COUNTS, polarized_channels
    from decision.scoring import load_version

    loaded = load_version(version)
    st = _stats(reference, None, None)
    w = loaded.weights.state["classifier.weight"].numpy()
    an = polarized_channels(w, loaded.weights.spec.pathologies, st, top=top or None, min_weight=min_weight,
                            perfect_below=perfect_below)
    data = {"version": loaded.ref, "reference": f"{st.source} ({st.n:,} films)", **an.as_dict()}
    if plot is not None:
        from decision.documents.plots import channel_figure

        data["plot"] = str(_write_png(plot, channel_figure(an, st, title=f"{loaded.ref}: polarized channels")))

    def render() -> None:
        total = sum(an.counts.values())
        console.print(f"[bold]{loaded.ref}[/]: {total} polarized of {an.n_channels} classifier channels "
                      f"({esc(an.selection)}); Jaccard from {esc(data['reference'])}")
        t = Table("category", "Jaccard of the pair", "channels", "share", "paper", right=("channels", "share", "paper"),
                  title="legitimacy of the polarized channels (paper: DenseNet121's 100 most polarized)")
        rule = {"Perfect": "J = 0" if not perfect_below else f"J < {perfect_below:g}", "Legitimate": "J < 0.1",
                "Mixed": "0.1 ≤ J < 0.3", "Conflict": "J ≥ 0.3", "Unknown": "no statistics"}
        for k, v in an.counts.items():
            t.add_row(k, rule[k], str(v), f"{v / total:.0%}" if total else "—", str(PAPER_COUNTS.get(k, "—")))
        console.print(t)
        if an.excluded_outputs:
            console.print(f"[dim]outputs without label statistics, left out: {', '.join(an.excluded_outputs)}[/]")
        if show:
            c = Table("channel", "votes for (weight)", "against (weight)", "Jaccard", "category",
                      title=f"the {min(show, len(an.channels))} most polarized channels", right=("channel", "Jaccard"),
                      fold=True)
            for ch in an.channels[:show]:
                c.add_row(str(ch.channel), f"{ch.positive} {ch.positive_weight:+.3f}",
                          f"{ch.negative} {ch.negative_weight:+.3f}", fmt_float(ch.jaccard, 4), ch.category)
            console.print(c)
        if plot is not None:
            console.print(f"figure: {esc(data['plot'])}")

    emit(data, as_json, render)


@analyze_app.command("figures")
def figures_cmd(
    out: Path = typer.Option(Path("figures"), "--out", help="Folder for the PNG files."),
    version: str = typer.Option("cxr@production", "--version", help="Whose classifier the channel figure shows."),
    as_json: bool = JSON_OPT,
) -> None:
    """The paper's figures from the registry: Jaccard heatmap, polarized channels (legitimacy bars and the
    Jaccard vs channel-usage mirror), per-pathology treatment recommendations, version AUROC history.

    Example: decide analyze figures --out figures/
    """
    from decision.documents.paper import paper_figures

    written = paper_figures(out, version)

    def render() -> None:
        for name, path in written.items():
            console.print(f"{name}: {esc(str(path))}")
        if not written:
            console.print("[dim]no figure: the registry has nothing to draw yet[/]")

    emit({"out": str(out), "figures": {k: str(v) for k, v in written.items()}}, as_json, render)


@commands.command("findings")
def findings_cmd(
    films: list[Path] = typer.Argument(None, help="Films (PNG, JPEG, DICOM) or folders of them."),
    version: str | None = typer.Option(None, "--version", help="Registered version: cxr:3, cxr@production (default; "
                                       "with --from-report: the version the report is about)."),
    site: str | None = typer.Option(None, "--site", help="The site's own alias and operating points."),
    from_report: int | None = typer.Option(
        None, "--from-report", help="Instead of files: the films an error report lists as cases (found in the "
        "site's registered feedback sets)."),
    max_cases: int = typer.Option(10, "--max-cases", min=1, help="With --from-report: at most this many cases, "
                                  "in the report's order (worst first)."),
    out: Path | None = typer.Option(None, "--out", help="One film: the HTML file (default clinical-report.html). "
                                    "Several: a folder with one page per study and index.html (default "
                                    "clinical-reports/)."),
    keep_going: bool = typer.Option(False, "--keep-going", help="Report on the films that can be read and list the "
                                    "rest (exit 1 when some failed)."),
    as_json: bool = JSON_OPT,
) -> None:
    """The per-study clinical report: findings at the version's operating points, Grad-CAM regions,
    contributing channels, findings excluded by mutual exclusivity, lineage, evaluation, disclaimer.

    Example: decide findings film.dcm --version cxr@production --out film.html

    Self-contained HTML (images inline), readable on a phone and printable. Decision support, never a diagnosis.
    Each page opens with a banner when the film lies outside what the version was validated on (its reference
    statistics, at the policy's per-study OOD rate); a film that is no frontal chest radiograph (DICOM header)
    or is degenerate gets no findings, only the banner.
    """
    from decision.documents.clinical_run import report_films, report_from_error_report

    if from_report is not None:
        if films:
            raise InvalidInput("give films or --from-report, not both", field="films")
        res = report_from_error_report(from_report, version=version, site=site, out=out, max_cases=max_cases)
    else:
        if not films:
            raise InvalidInput("give at least one film or folder (or --from-report ID)", field="films")
        res = report_films(films, version=version or "cxr@production", site=site, out=out, keep_going=keep_going)

    def render() -> None:
        for s in res["studies"]:
            ood = s.get("ood") or {}
            if s.get("withheld"):  # not a chest film or degenerate: no finding was computed
                console.print(f"[bold]{esc(s['study'])}[/]: [bold red]no findings — {esc(s['withheld'])}[/]")
                continue
            if ood.get("outside"):
                console.print(f"[bold]{esc(s['study'])}[/]: [bold yellow]⚠ outside what {esc(res['version'])} was "
                              f"validated on: {esc('; '.join(ood['reasons']))}; the findings below may be "
                              "meaningless[/]")
            calls = ", ".join(f"{f['pathology']} {f['probability']:.2f}" + (f" ({f['region']})" if f["region"] else "")
                              for f in s["findings"]) or "no positive finding"
            line = f"[bold]{esc(s['study'])}[/]: {esc(calls)}"
            if s["excluded"]:
                line += f"; excluded: {esc(', '.join(f['pathology'] for f in s['excluded']))}"
            console.print(line)
            for f in s["findings"]:
                for w in f["warnings"]:
                    console.print(f"  [yellow]⚠ {esc(f['pathology'])}: {esc(w)}[/]")
        for note in dict.fromkeys((s.get("ood") or {}).get("note") for s in res["studies"]):
            if note:
                console.print(f"[yellow]{esc(note)}[/]")
        for _path, reason in res["failed"]:
            err_console.print(f"[yellow]not read:[/] {esc(reason)}")
        console.print(f"{len(res['studies'])} stud{'y' if len(res['studies']) == 1 else 'ies'} by {res['version']}"
                      f" → {esc(res['out'])}")

    emit(res, as_json, render)
    if res["failed"]:
        raise typer.Exit(1)



#: what the hidden alias says on stderr before it runs `findings`
RENAMED = "`decide report` is now `decide findings`; the old name goes in the next release"


@commands.command("report", hidden=True)
@functools.wraps(findings_cmd)
def report_cmd(*args: Any, **kwargs: Any) -> None:
    err_console.print(RENAMED, markup=False, highlight=False, soft_wrap=True)
    findings_cmd(*args, **kwargs)
