"""Selections in the formats users load: a `datasets` dataset with a dataset card."""

from pathlib import Path

import datasets
import polars as pl
import pytest
import yaml

from undercurve.export import export_hf_dataset
from undercurve.strategies import select

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def samples():
    return pl.DataFrame({"id": [f"s{i}" for i in range(6)], "source": ["demo"] * 6,
                         "prompt": [f"q{i}" for i in range(6)], "response": [f"r{i} \\boxed{{{i}}}" for i in range(6)],
                         "answer": [str(i) for i in range(6)]})


@pytest.fixture
def feats(samples):
    return pl.DataFrame({"id": samples["id"], "chat_tokens": [10, 20, 30, 40, 50, 60],
                         "eas": [3.0, 9.0, 1.0, 7.0, None, 5.0]})


CARD = {"source": "demo", "strategy": "eas", "budget": 3, "config": {"selection": {"budget": 3}},
        "counts": {"eligible": 5, "selected": 3}}


def _card_header(folder: Path) -> dict:
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_hf_dataset_loads_back_in_rank_order_with_its_card(tmp_path, samples, feats):
    chosen = select(feats, "eas", 3).join(feats.select("id", "eas"), on="id")
    out, n = export_hf_dataset(samples, chosen, tmp_path / "eas.hf", CARD)
    ds = datasets.load_from_disk(str(out))
    assert n == ds.num_rows == 3
    assert ds["id"] == ["s1", "s3", "s5"] and ds["rank"] == [1, 2, 3]  # highest EAS first
    assert ds["prompt"] == ["q1", "q3", "q5"] and ds["answer"] == ["1", "3", "5"]
    assert ds[0]["messages"] == [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "r1 \\boxed{1}"}]
    # written without `datasets`: the same features and rows as its own writer gives
    ref = datasets.Dataset.from_polars(pl.read_parquet(out / "data" / "train.parquet"))
    assert ds.features == ref.features and ds.to_list() == ref.to_list()
    parquet = datasets.load_dataset("parquet", data_files=str(out / "data" / "train.parquet"), split="train",
                                    cache_dir=str(tmp_path / "cache"))
    assert parquet["id"] == ds["id"] and parquet.column_names == ds.column_names
    meta = _card_header(out)["undercurve"]
    assert meta == {"source": "demo", "strategy": "eas", "budget": 3, "rows": 3, "counts": CARD["counts"]}
    body = (out / "README.md").read_text(encoding="utf-8")
    assert "| eas | 5 | 7 | 9 |" in body and "| score | 5 | 7 | 9 |" in body
    assert "| rank |" not in body  # ranks order, they do not score


def test_export_does_not_import_datasets(tmp_path):
    """A select task in a fresh process pays no ``import datasets`` (seconds) for its export."""
    import subprocess
    import sys

    code = ("import sys, polars as pl; from undercurve.export import export_hf_dataset; "
            "s = pl.DataFrame({'id': ['a'], 'prompt': ['q'], 'response': ['r']}); "
            "export_hf_dataset(s, pl.DataFrame({'id': ['a'], 'rank': [1], 'score': [0.5]}), sys.argv[1], "
            "{'source': 'x', 'strategy': 'eas', 'budget': 1, 'config': {}, 'counts': {}}); "
            "assert 'datasets' not in sys.modules, 'datasets was imported'")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.hf")], check=True, cwd=REPO)
    assert datasets.load_from_disk(str(tmp_path / "a.hf"))["id"] == ["a"]


def test_a_rerun_replaces_the_folder_and_a_missing_sample_is_an_error(tmp_path, samples, feats):
    out, _ = export_hf_dataset(samples, select(feats, "length", 4), tmp_path / "x.hf", CARD)
    export_hf_dataset(samples, select(feats, "length", 2), out, CARD)
    assert datasets.load_from_disk(str(out))["id"] == ["s5", "s4"]
    assert [p.name for p in tmp_path.iterdir()] == ["x.hf"]  # no temporary folder left behind
    with pytest.raises(ValueError, match="not in the sample table"):
        export_hf_dataset(samples.head(2), select(feats, "length", 2), tmp_path / "y.hf", CARD)
    assert not (tmp_path / "y.hf").exists()


def test_select_stage_writes_and_records_the_dataset(tmp_path, samples, feats, monkeypatch):
    """... reading of the samples only the chosen rows (never the whole table), with the
    exports that the whole table in memory gives."""
    import undercurve.export as export
    from undercurve.config import load_settings
    from undercurve.registry import Registry
    from undercurve.run import RunContext
    from undercurve.stages import StageResult, select_stage

    settings = load_settings(REPO / "configs" / "demo.yaml", {"workdir": str(tmp_path), "selection.budget": 3})
    reg = Registry(settings.registry_path, create=True)
    ctx = RunContext(settings, reg.start_run("curate", "t", {}, "h"), str(settings.registry_path))
    inputs = {}
    for stage, df in (("length_cap", samples), ("features", feats)):
        path = ctx.stage_dir(stage) / f"{stage}.parquet"
        df.write_parquet(path)
        inputs[stage] = StageResult(stage, str(path), reg.add_artifact(ctx.run_id, stage, stage, path, df.height),
                                    df.height, df.height)
    read, loaded = pl.read_parquet, []

    def no_whole_samples(source, *a, **k):
        assert str(source) != inputs["length_cap"].path, "select read the whole sample table"
        return read(source, *a, **k)

    monkeypatch.setattr(pl, "read_parquet", no_whole_samples)
    chosen_only = export.read_selected
    monkeypatch.setattr(export, "read_selected", lambda p, sel: loaded.append(chosen_only(p, sel)) or loaded[-1])
    res = select_stage(ctx, inputs["features"], inputs["length_cap"], "eas")
    monkeypatch.undo()
    assert (res.rows_in, res.rows_out, res.set_aside) == (6, 3, 0)
    assert [f["id"].sort().to_list() for f in loaded] == [["s1", "s3", "s5"]]  # the budget's rows, not the corpus
    chosen = pl.read_parquet(res.path)
    _, n = export.export_swift_jsonl(samples, chosen, tmp_path / "whole.jsonl")  # from the whole table in memory
    assert n == 3 and Path(res.extra["jsonl"]).read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    whole, _ = export.export_hf_dataset(samples, chosen.join(feats.select("id", "eas"), on="id"), tmp_path / "w.hf", CARD)
    assert pl.read_parquet(Path(res.extra["hf_dataset"]) / "data" / "train.parquet").equals(
        pl.read_parquet(whole / "data" / "train.parquet"))
    hf = Path(res.extra["hf_dataset"])
    assert hf == settings.run_dir / "select" / "eas.hf"
    ds = datasets.load_from_disk(str(hf))
    assert ds["id"] == ["s1", "s3", "s5"] and ds["eas"] == [9.0, 7.0, 5.0]
    meta = _card_header(hf)["undercurve"]
    assert (meta["strategy"], meta["budget"], meta["rows"]) == ("eas", 3, 3)
    assert meta["counts"] == {"rows_in": 6, "selected": 3}
    art = reg.query("SELECT a.rows, a.path, p.kind AS parent FROM artifacts a JOIN lineage l ON l.child_id = a.artifact_id "
                    "JOIN artifacts p ON p.artifact_id = l.parent_id WHERE a.kind = 'hf_dataset:eas' ORDER BY parent")
    assert art["rows"].to_list() == [3, 3] and art["path"][0] == str(hf.resolve())
    assert art["parent"].to_list() == ["length_cap", "selection:eas"]
