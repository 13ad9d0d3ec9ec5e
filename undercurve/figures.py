"""The figures of a curate run (matplotlib, Agg backend), PNGs under ``<run_dir>/figures/``.

- ``score_distributions``: per signal of ``features/features.parquet``, one panel per strategy:
  the distribution over all eligible rows against the strategy's selection.
- ``entropy_curves``: per strategy, its top and bottom samples by rank: the curve EAS sums,
  H_1..H_{T-1} (``scoring.score.entropy_curve``), the area under it shaded (``eas.eas``) and
  x_T marked at t = T, the token holding the final answer's last byte (SPEC section 1; T is the
  score stage's own, from ``score/scores.parquet``).

Reads summary columns lazily, and the per-token entropies of the drawn ids only; never the
texts. ``curation_figures`` never raises: a figure it cannot draw comes back without a path,
with the reason (and the error is logged).
"""

from __future__ import annotations

import logging
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from undercurve import eas  # noqa: E402
from undercurve.explain import SIGNALS  # noqa: E402
from undercurve.scoring.score import scan_entropies  # noqa: E402

log = logging.getLogger("undercurve")
DPI = 90


@dataclass
class Figure:
    title: str  # what it shows (or would have shown)
    path: Path | None = None  # None: not drawn, ``missing`` says why
    missing: str = ""
    marks: list[dict] = field(default_factory=list)  # what each panel shows (values drawn, x_T, ...)


def _selections(run_dir: Path, strategies: list[str]) -> dict[str, pl.DataFrame]:
    """``id, rank`` of each strategy's selection, best first (``strategies.select`` numbers ranks)."""
    paths = {s: run_dir / "select" / f"{s}.parquet" for s in strategies}
    return {s: pl.read_parquet(p, columns=["id", "rank"]).sort("rank") for s, p in paths.items() if p.exists()}


def _label(ax, title: str, xlabel: str, ylabel: str, size: int) -> None:
    ax.set_title(title, fontsize=size)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="upper right")  # "best" searches every artist: a third of the drawing time
    ax.grid(alpha=0.3)


def _save(fig, title: str, path: Path) -> Path:
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()  # fits the panels and the title; bbox_inches="tight" would lay out twice
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _grid(n: int, cols: int, size: tuple[float, float]):
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes


def _finite(s: pl.Series) -> np.ndarray:
    a = s.cast(pl.Float64).drop_nulls().to_numpy()
    return a[np.isfinite(a)]


def score_distributions(run_dir: Path, strategies: list[str]) -> dict[str, Figure]:
    """``scores-<signal>``: all eligible rows (grey) vs each strategy's selection, same bins."""
    run_dir = Path(run_dir)
    feats = pl.scan_parquet(run_dir / "features" / "features.parquet")
    cols = [c for c in SIGNALS if c in feats.collect_schema().names()]
    df = feats.select("id", *cols).collect()  # summary columns only
    chosen = _selections(run_dir, strategies)
    out: dict[str, Figure] = {}
    for c in cols:
        fig_ = out[f"scores-{c}"] = Figure(f"Distribution of {c}: all {df.height} eligible rows vs each selection")
        everyone = _finite(df[c])
        if not chosen or not everyone.size:
            fig_.missing = "no selection to compare" if not chosen else f"no finite {c} value"
            continue
        bins = np.histogram_bin_edges(everyone, bins=min(30, max(5, everyone.size // 4)))
        fig, axes = _grid(len(chosen), 3, (4.0, 2.8))
        for ax, (s, sel) in zip(axes.flat, chosen.items()):
            mine = _finite(df.filter(pl.col("id").is_in(sel["id"].implode()))[c])
            fig_.marks.append({"strategy": s, "eligible": everyone.size, "selected": mine.size})
            ax.hist(everyone, bins=bins, density=True, color="0.75", label=f"eligible (n={everyone.size})")
            if mine.size:
                ax.hist(mine, bins=bins, density=True, histtype="step", lw=1.8, color="tab:blue",
                        label=f"{s} (n={mine.size})")
            _label(ax, s, c, "density", 9)
        fig_.path = _save(fig, fig_.title, run_dir / "figures" / f"scores-{c}.png")
    return out


def _ends(sel: pl.DataFrame, n: int) -> list[tuple[str, int, str]]:
    """(id, rank, "top"/"bottom"): the first ``n`` ranks, then the last ``n`` not already taken."""
    top = sel.head(n)
    bottom = sel.slice(top.height).tail(n)
    return [(i, r, "top") for i, r in top.iter_rows()] + [(i, r, "bottom") for i, r in bottom.iter_rows()]


def entropy_curves(run_dir: Path, strategies: list[str], n: int = 3) -> dict[str, Figure]:
    """``entropy-<strategy>``: the entropy curves of its ``n`` top and ``n`` bottom samples.

    A run without a score stage, or without stored entropies, gives one ``entropy`` entry
    without a path saying so."""
    run_dir = Path(run_dir)
    score_dir = run_dir / "score"
    feats = pl.read_parquet_schema(run_dir / "features" / "features.parquet")
    if "eas" not in feats:  # features.parquet is this run's; score/ may hold an earlier run's shards
        return {"entropy": Figure("Entropy curves", missing="no entropy curves: this run has no score stage")}
    picks = {s: _ends(sel, n) for s, sel in _selections(run_dir, strategies).items()}
    ids = sorted({i for p in picks.values() for i, _, _ in p})
    wanted = pl.col("id").is_in(ids)
    curves = dict(scan_entropies(score_dir, ids).select("id", "entropy").collect().iter_rows())
    if not curves:
        return {"entropy": Figure("Entropy curves", missing="no entropy curves: the score stage stored no entropies")}
    summ = pl.scan_parquet(score_dir / "scores.parquet").select("id", "T", "mode").filter(wanted).collect()
    T = dict(zip(summ["id"], summ["T"]))
    mode = summ["mode"][0] if summ.height else "?"
    out: dict[str, Figure] = {}
    for s, p in picks.items():
        fig_ = out[f"entropy-{s}"] = Figure(
            f"{s}: entropy curves ({mode}) of its top and bottom {n} samples by rank; shaded area = EAS, dashed = x_T")
        if not p:
            fig_.missing = "the selection is empty"
            continue
        fig, axes = _grid(len(p), n, (4.0, 2.6))
        for ax, (i, rank, end) in zip(axes.flat, p):
            if curves.get(i) is None or T.get(i) is None:
                ax.set_title(f"{end} #{rank} {i}: no entropies stored", fontsize=8)
                continue
            H = np.asarray(curves[i], dtype=np.float64)
            x_T, area = int(T[i]), eas.eas(H)
            fig_.marks.append({"id": i, "rank": rank, "end": end, "x_T": x_T, "eas": area, "steps": H.size})
            t = np.arange(1, H.size + 1)
            ax.plot(t, H, color="tab:blue", lw=1.2)
            ax.fill_between(t, 0, H, color="tab:blue", alpha=0.25, label=f"EAS = {area:.1f} bits")
            ax.axvline(x_T, color="tab:red", ls="--", lw=1.2, label=f"x_T = token {x_T}")
            ax.set_xlim(0.5, x_T + 0.5)
            ax.set_ylim(bottom=0)
            _label(ax, f"{end} #{rank} {i}", "response token t", "H_t (bits)", 8)
        fig_.path = _save(fig, fig_.title, run_dir / "figures" / f"entropy-{s}.png")
    return out


def curation_figures(run_dir: Path, strategies: list[str]) -> dict[str, Figure]:
    """Every figure of the run; never raises (a failed group comes back missing, with the error)."""
    for old in (Path(run_dir) / "figures").glob("*.png"):  # an earlier run's under this name
        with suppress(OSError):
            old.unlink()
    out: dict[str, Figure] = {}
    for group, draw in (("scores", score_distributions), ("entropy", entropy_curves)):
        try:
            out.update(draw(Path(run_dir), strategies))
        except Exception as e:  # a figure must never fail a run
            log.exception("figures: %s could not be drawn", group)
            out[group] = Figure(f"{group} figures", missing=f"plotting failed: {type(e).__name__}: {e}")
    return out


def markdown_links(figs: dict[str, Figure]) -> str:
    """A "Figures" section for ``<run_dir>/curation.md``: each PNG linked relative to it."""
    lines = ["## Figures", ""]
    for name, f in figs.items():
        lines += [f"![{f.title}](figures/{f.path.name})" if f.path else f"{name}: figure missing: {f.missing}", ""]
    return "\n".join(lines)
