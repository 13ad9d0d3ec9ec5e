"""The generated demo corpus at any size: the held-out benchmark never shares a question with
the corpus (apart from the two planted leaks), however many rows the corpus takes."""

import json

import pytest

from undercurve.demo import write_demo_inputs


@pytest.mark.parametrize("size", [48, 1100])
def test_benchmark_is_held_out_at_any_corpus_size(tmp_path, size):
    corpus, bench = write_demo_inputs(tmp_path, size=size)  # 1,100 uses up the one-digit sums
    text = corpus.read_text()  # JSON lines (and a few broken ones): search the escaped question
    held = [json.loads(line) for line in bench.read_text().splitlines()]
    assert len(held) == 24 and len({h["question"] for h in held}) == 24
    leaked = [h for h in held if json.dumps(h["question"])[1:-1] in text]
    assert len(leaked) == 2 and {h["level"] for h in leaked} == {4}  # exactly the planted ones


def test_an_impossible_size_is_a_clear_error(tmp_path, monkeypatch):
    import undercurve.demo as demo

    monkeypatch.setattr(demo, "_item", lambda level, rng: {"question": "same", "level": level})
    with pytest.raises(ValueError, match="corpus.demo_size 5"):
        write_demo_inputs(tmp_path, size=5)
