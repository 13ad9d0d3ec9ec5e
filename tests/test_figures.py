"""A curate run's figures (undercurve.figures): a run folder built by hand from engine-shaped score
rows (split_scores; the per-token lists in a cache part named by score/entropies.json, the layout
the score stage writes and scan_entropies reads) and the real selection (strategies.select), then
the PNGs checked for what they claim to show."""

import base64
import json

import matplotlib.image as mpimg
import numpy as np
import polars as pl
import pytest

from tasks.figures import artifact_key, figure_markdown
from undercurve import eas, figures
from undercurve.io import write_parquet_atomic
from undercurve.scoring.score import SCORE_SCHEMA, split_scores
from undercurve.strategies import select

N, BUDGET, SUFFIX = 12, 8, 2


def _score_rows(mode: str, rng) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Engine-shaped rows (scoring.score.SCORE_SCHEMA) and, per id, the curve EAS sums."""
    rows, curves = [], {}
    for k in range(N):
        T = int(rng.integers(4, 15))
        plain = rng.uniform(0, 3, T)  # H_1..H_T
        suffix = rng.uniform(0, 3, (T - 1, SUFFIX))  # probe: [T-1][suffix position]
        H = suffix[:, -1] if mode == "probe" else plain[: T - 1]
        rows.append({"id": f"s{k}", "engine": "torch", "mode": mode, "T": T, "response_tokens": T + 5,  # text after x_T
                     **eas.scores(H, plain, rng.normal(-1, 0.3, T + 5)),
                     "entropy": H.tolist(), "plain_entropy": plain.tolist(),
                     "suffix_entropy": suffix.tolist() if mode == "probe" else None})
        curves[f"s{k}"] = H
    return rows, curves


def _run_dir(tmp_path, mode="probe", scored=True, entropies=True):
    """features/features.parquet, select/<s>.parquet and (``scored``) the score stage's files."""
    rng = np.random.default_rng(7)
    rows, curves = _score_rows(mode, rng)
    summary, tokens = split_scores(pl.DataFrame(rows, schema=SCORE_SCHEMA))
    feats = pl.DataFrame({"id": summary["id"], "chat_tokens": rng.integers(20, 400, N)})
    if scored:
        write_parquet_atomic(summary, tmp_path / "score" / "scores.parquet")
        if entropies:  # one cache part keyed by content (here: the id)
            write_parquet_atomic(tokens.with_columns(key=pl.col("id")), tmp_path / "cache" / "part-0.entropies.parquet")
            write_parquet_atomic(summary.select("id", key=pl.col("id")), tmp_path / "score" / "keys.parquet")
            (tmp_path / "score" / "entropies.json").write_text(json.dumps({"parts": ["../cache/part-0.entropies.parquet"]}))
        feats = feats.join(summary.select("id", "eas", "mean_eas", "ppl", "edis", "edis_exact"), on="id")
    write_parquet_atomic(feats, tmp_path / "features" / "features.parquet")
    strategies = ["eas", "length", "random"] if scored else ["length", "random"]
    for s in strategies:
        write_parquet_atomic(select(feats, s, BUDGET, seed=0), tmp_path / "select" / f"{s}.parquet")
    return tmp_path, strategies, summary, curves


def _stored_tol(H: np.ndarray) -> float:
    """EAS from the stored curve vs the float64 one: each H_t rounded to float32 then float16
    (relative 2**-24 + 2**-11, or 2**-25 absolute in float16's subnormals); all H_t >= 0, so
    the sum inherits the terms' relative bound; plus float64 summation."""
    u = 2.0**-24 + 2.0**-11 * (1 + 2.0**-24) + H.size * float(np.finfo(np.float64).eps)
    return u * float(np.abs(H).sum()) + H.size * 2.0**-25


def _decodes(path) -> None:
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.01  # something was drawn on it


def test_score_distributions_one_png_per_signal(tmp_path):
    run_dir, strategies, _, _ = _run_dir(tmp_path)
    figs = figures.score_distributions(run_dir, strategies)
    assert set(figs) == {f"scores-{c}" for c in ("chat_tokens", "eas", "mean_eas", "ppl", "edis")}  # no pass_rate column
    for name, f in figs.items():
        assert f.path == run_dir / "figures" / f"{name}.png" and not f.missing
        _decodes(f.path)
        # one panel per strategy: every eligible row against the strategy's own selection
        assert f.marks == [{"strategy": s, "eligible": N, "selected": BUDGET} for s in strategies]


@pytest.mark.parametrize("mode", ["probe", "plain"])
def test_entropy_curves_mark_x_T_and_the_area(tmp_path, mode):
    run_dir, strategies, summary, curves = _run_dir(tmp_path, mode)
    figs = figures.entropy_curves(run_dir, strategies)
    assert set(figs) == {f"entropy-{s}" for s in strategies}
    stored = {r["id"]: r for r in summary.iter_rows(named=True)}
    for s in strategies:
        f = figs[f"entropy-{s}"]
        _decodes(f.path)
        ranked = pl.read_parquet(run_dir / "select" / f"{s}.parquet").sort("rank")
        # the 3 best and the 3 worst of the selection, by the strategy's own rank
        assert [m["rank"] for m in f.marks] == [1, 2, 3, BUDGET - 2, BUDGET - 1, BUDGET]
        ends = [0, 1, 2, BUDGET - 3, BUDGET - 2, BUDGET - 1]
        assert [m["id"] for m in f.marks] == ranked["id"].gather(ends).to_list()
        for m in f.marks:
            H = curves[m["id"]]  # H_1..H_{T-1}: x_T is the step after the curve's last point (SPEC 1)
            assert m["x_T"] == stored[m["id"]]["T"] == H.size + 1 and m["steps"] == H.size
            assert m["eas"] == pytest.approx(eas.eas(H), abs=_stored_tol(H))
            assert m["eas"] == pytest.approx(stored[m["id"]]["eas"], abs=_stored_tol(H))


def test_no_score_stage_gives_no_entropy_figure_and_says_why(tmp_path):
    """Even where an earlier scored run of this name left its figures behind."""
    _run_dir(tmp_path)
    figures.curation_figures(tmp_path, ["eas"])
    assert (tmp_path / "figures" / "entropy-eas.png").exists()
    run_dir, strategies, _, _ = _run_dir(tmp_path, scored=False)
    (run_dir / "score" / "scores.parquet").unlink()  # what prepare_inputs(fresh=True) clears
    figs = figures.curation_figures(run_dir, strategies)
    assert figs["entropy"].path is None and "no score stage" in figs["entropy"].missing
    assert not list((run_dir / "figures").glob("entropy-*.png"))
    assert set(figs) == {"scores-chat_tokens", "entropy"}
    _decodes(figs["scores-chat_tokens"].path)
    assert "entropy: figure missing: no entropy curves: this run has no score stage" in figures.markdown_links(figs)


def test_no_stored_entropies_says_so(tmp_path):
    run_dir, strategies, _, _ = _run_dir(tmp_path, entropies=False)
    figs = figures.entropy_curves(run_dir, strategies)
    assert list(figs) == ["entropy"] and figs["entropy"].path is None
    assert "stored no entropies" in figs["entropy"].missing


def test_a_plotting_error_is_a_missing_figure_not_a_failed_run(tmp_path, monkeypatch):
    run_dir, strategies, _, _ = _run_dir(tmp_path)

    def broken(fig, title, path):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(figures, "_save", broken)
    figs = figures.curation_figures(run_dir, strategies)
    assert set(figs) == {"scores", "entropy"}
    for f in figs.values():
        assert f.path is None and f.missing == "plotting failed: RuntimeError: disk on fire"
        md = figure_markdown("x", f.path, f.title, f.missing)
        assert "Figure missing: plotting failed: RuntimeError: disk on fire" in md and "data:image" not in md


def test_figure_markdown_embeds_the_png(tmp_path):
    run_dir, strategies, _, _ = _run_dir(tmp_path)
    f = figures.entropy_curves(run_dir, strategies)["entropy-eas"]
    md = figure_markdown("entropy-eas", f.path, f.title)
    data = md.split("data:image/png;base64,")[1].split(")")[0]
    assert base64.b64decode(data) == f.path.read_bytes() and md.startswith(f"### {f.title}")
    assert "Figure missing" in figure_markdown("gone", tmp_path / "gone.png", "t")  # unreadable file: missing
    assert artifact_key("curation-fig", "scores-mean_eas") == "curation-fig-scores-mean-eas"
    assert artifact_key("curation-fig", "entropy-pkg.mod:My") == "curation-fig-entropy-pkg-mod-my"
