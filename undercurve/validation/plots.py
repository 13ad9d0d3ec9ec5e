"""The validation figures (matplotlib, Agg backend), written as PNG files."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from undercurve.validation.correlation import pearson, regression_line  # noqa: E402

METRIC_LABELS = {"eas": "EAS (bits)", "mean_eas": "Mean EAS (bits/token)", "ppl": "Perplexity",
                 "response_tokens": "Length (response tokens)", "edis": "EDIS (score)"}
STRATEGY_LABELS = {"mean": "mean (random pick)", "majority": "majority vote", "edis": "EDIS (lowest k, weighted Borda)",
                   "mean_entropy": "mean entropy (lowest k)", "self_certainty": "self-certainty (highest k)"}


def _save(fig, path: Path, dpi: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def entropy_curve(row: dict, path: Path, mode: str = "probe", dpi: int = 110) -> Path:
    """Fig. 1: H_t along one response, the area under it (= EAS) shaded."""
    H = np.asarray(row["entropy"] or [], dtype=np.float64)
    t = np.arange(1, H.size + 1)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    if mode == "probe" and row.get("plain_entropy"):
        plain = np.asarray(row["plain_entropy"], dtype=np.float64)
        ax.plot(np.arange(1, plain.size + 1), plain, color="0.6", lw=0.8, label="plain next-token entropy")
    ax.plot(t, H, color="tab:blue", lw=1.4, label=f"{mode} entropy $H_t$")
    ax.fill_between(t, 0, H, color="tab:blue", alpha=0.25, label=f"area = EAS = {row['eas']:.1f} bits")
    ax.set_xlabel("response token t")
    ax.set_ylabel("entropy (bits)")
    ax.set_xlim(1, max(t.max() if t.size else 1, 2))
    ax.set_ylim(bottom=0)
    ax.set_title(f"Entropy under the curve, question {row['id']}: EAS {row['eas']:.1f} bits over {H.size} steps, "
                 f"answer entropy {row.get('answer_entropy', float('nan')):.2f} bits", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    return _save(fig, path, dpi)


def metric_scatter(df: pl.DataFrame, path: Path, dpi: int = 110, target: str = "answer_entropy") -> Path:
    """Fig. 2: every metric against answer entropy, regression line, Pearson r and p."""
    metrics = [m for m in METRIC_LABELS if m in df.columns]
    cols = 3
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    x = df[target].cast(pl.Float64).to_numpy()
    for ax, m in zip(axes.flat, metrics):
        y = df[m].cast(pl.Float64).fill_null(float("nan")).to_numpy()
        ax.scatter(x, y, s=22, alpha=0.75, color="tab:blue", edgecolor="white", lw=0.4)
        line = regression_line(x, y)
        if line is not None:
            xs = np.linspace(np.nanmin(x), np.nanmax(x), 50)
            ax.plot(xs, line[0] * xs + line[1], color="tab:red", lw=1.5)
        r, p, n = pearson(x, y)
        ax.set_title(f"{METRIC_LABELS[m]}: r = {r:.3f}, p = {p:.2g} (n={n})", fontsize=9)
        ax.set_xlabel("answer entropy (bits)")
        ax.set_ylabel(METRIC_LABELS[m])
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle("Metric of one response vs answer entropy across questions (red: least-squares line)", fontsize=11)
    fig.tight_layout()
    return _save(fig, path, dpi)


def option_curves(curves: pl.DataFrame, path: Path, alpha: float = 0.5, dpi: int = 110) -> Path:
    """Fig. 3: decayed cumulative option probability along the response, one panel per question."""
    ids = curves["id"].unique(maintain_order=True).to_list()
    cols = min(2, len(ids))
    rows = math.ceil(len(ids) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.3 * rows), squeeze=False)
    colors = dict(zip("ABCD", ("tab:blue", "tab:orange", "tab:green", "tab:purple")))
    for ax, qid in zip(axes.flat, ids):
        g = curves.filter(pl.col("id") == qid)
        for (letter,), o in g.group_by("option", maintain_order=True):
            gold = bool(o["gold"][0])
            ax.plot(o["t"], o["decayed"], color=colors.get(letter, "k"), lw=2.4 if gold else 1.2,
                    label=f"{letter}{' (correct)' if gold else ''}")
        ax.set_title(f"question {qid} (T = {g['T'][0]} tokens)", fontsize=9)
        ax.set_xlabel("response token t (probe after x_1..x_t + \"\\boxed{\")")
        ax.set_ylabel(f"decayed cum. probability (alpha={alpha})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(ids):]:
        ax.axis("off")
    fig.suptitle(r"Decayed cumulative option probability $\tilde P_t(v)=\sum_{k\leq t}(t-k+1)^{-\alpha}P_k(v)$", fontsize=11)
    fig.tight_layout()
    return _save(fig, path, dpi)


def best_of_n(bon: pl.DataFrame, path: Path, dpi: int = 110) -> Path:
    """Accuracy of each selection strategy against the number of candidates N = m*k."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for (strategy,), g in bon.group_by("strategy", maintain_order=True):
        ax.plot(g["N"], 100 * g["accuracy"], marker="o", lw=2.2 if strategy == "edis" else 1.3,
                label=STRATEGY_LABELS.get(strategy, strategy))
    ax.set_xscale("log", base=2)
    ax.set_xticks(bon["N"].unique().sort().to_list())
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel(f"candidates per question N = m x k (k = {bon['k'][0]})")
    ax.set_ylabel("accuracy (% of questions)")
    ax.set_title(f"Best-of-N answer selection ({bon['questions'][0]} questions)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path, dpi)
