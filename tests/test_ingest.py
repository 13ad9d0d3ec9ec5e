import bz2
import gzip
import json
import lzma
from collections import Counter
from types import SimpleNamespace

import polars as pl
import pytest
import zstandard

from undercurve import ingest as ingest_mod
from undercurve.ingest import (DETAIL_CHARS, MAX_FIELD_CHARS, IngestCounts, NoUsableRows, SourceError, ingest,
                               ingest_to, to_sample)
from undercurve.schema import SAMPLE_SCHEMA, SET_ASIDE_SCHEMA

BOM = b"\xef\xbb\xbf"


def _write(path, lines):
    with open(path, "wb") as fh:
        for line in lines:
            fh.write((line if isinstance(line, bytes) else line.encode()) + b"\n")
    return path


AM = {"id": "am-1", "messages": [
    {"role": "user", "content": "What is 6*7?", "info": {"reference_answer": "42"}},
    {"role": "assistant", "content": "<think>6*7=42</think>\n\\boxed{42}"}]}


def _pr(i, **kw):
    """A canonical prompt/response record."""
    return {"id": f"r{i}", "prompt": f"What is {i}+0?", "response": f"<think>{i}</think> \\boxed{{{i}}}", **kw}


def test_bad_rows_are_set_aside_with_reasons_and_counted(tmp_path):
    path = _write(tmp_path / "c.jsonl", [
        json.dumps(AM),
        '{"messages": [',                                                   # malformed JSON
        b'{"prompt": "caf\xe9", "response": "\\\\boxed{1}", "answer": "1"}',  # not UTF-8
        json.dumps({"prompt": "", "response": "\\boxed{1}"}),              # empty prompt
        json.dumps({"prompt": "q", "response": ""}),                       # empty response
        json.dumps({"prompt": "q", "response": "no box", "answer": "3"}),  # no final answer
        json.dumps({"prompt": "q", "response": "\\boxed{1"}),              # unbalanced box
        json.dumps([1, 2]),                                                # not an object
        json.dumps({"foo": 1}),                                            # unknown layout
        json.dumps(AM),                                                    # duplicate id
        "",                                                                # blank line: not a row
        json.dumps({"question": "Q?", "answer": "Work: 2+2=4\n#### 4"}),   # GSM8K
        json.dumps({"problem": "P?", "solution": "so \\boxed{\\frac{1}{2}}"}),  # MATH style
    ])
    samples, aside = ingest(str(path))
    assert samples.height + aside.height == 12
    assert samples["id"].to_list()[0] == "am-1"
    assert samples.height == 3
    reasons = aside["reason"].to_list()
    assert any(r.startswith("malformed JSON") for r in reasons)
    assert any(r.startswith("not UTF-8") for r in reasons)
    for expected in ["missing or empty prompt", "missing or empty response", "duplicate id",
                     "record is not a JSON object", "unknown record layout"]:
        assert expected in reasons
    assert reasons.count("response has no \\boxed{} final answer") == 2
    assert set(aside["stage"]) == {"ingest"}
    assert all(d for d in aside["detail"].to_list())  # every set-aside row carries evidence


def _every_bad_kind(path, monkeypatch) -> tuple[int, int, dict[str, int]]:
    """A JSONL corpus mixing good rows with every kind of bad row; -> (rows, kept, reasons)."""
    monkeypatch.setattr(ingest_mod, "MAX_RECORD_CHARS", 5_000_000)
    good = [
        BOM + json.dumps(AM).encode(),                                      # BOM at the start of the file
        json.dumps(_pr(1, answer=3)),                                       # int answer -> "3"
        json.dumps(_pr(2, answer=3.0)),                                     # float answer -> "3"
        json.dumps(_pr(3, answer=0.5)),                                     # -> "0.5"
        json.dumps(_pr(4)),                                                 # answer from the response's box
        BOM + json.dumps(_pr(5, answer="5")).encode(),                      # BOM at the start of a line
        json.dumps(_pr(6, answer="6")) + "\r",                              # CRLF line end
        json.dumps({"question": "Q?", "answer": "2+2=4\n#### 4"}),         # GSM8K
        json.dumps({"problem": "P?", "solution": "\\boxed{7}", "answer": "7"}),  # MATH
        json.dumps({"id": "oai", "messages": [                              # OpenAI content parts
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "1+1?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "\\boxed{2}"}]}]}),
        json.dumps({"id": "sg", "conversations": [                          # ShareGPT
            {"from": "system", "value": "sys"}, {"from": "human", "value": "Hi?"},
            {"from": "gpt", "value": "\\boxed{hi}"}]}),
    ]
    bad = {
        "malformed JSON": ['{"prompt": "q",', "{'prompt': 'q'}", '{"prompt": "q"} trailing'],
        "not UTF-8": [b'{"prompt": "caf\xe9?", "response": "\\\\boxed{1}"}', b"\xff\xfe{}"],
        "invalid Unicode (lone surrogate)": ['{"id": "s1", "prompt": "a \\ud800 b", "response": "\\\\boxed{1}"}',
                                             '{"id": "s2", "prompt": "q", "response": "\\\\boxed{\\udfff}"}'],
        "NUL byte in text": [b'{"prompt": "a\x00b", "response": "\\\\boxed{1}"}',
                             '{"id": "n2", "prompt": "a\\u0000b", "response": "\\\\boxed{1}"}'],
        "nested too deep": ['{"prompt": "q", "response": "\\\\boxed{1}", "x": ' + "[" * 5000 + "]" * 5000 + "}"],
        "integer too long": ['{"prompt": "q", "response": "\\\\boxed{1}", "answer": ' + "7" * 5000 + "}"],
        "record too long": [json.dumps(_pr(90, pad="x" * 5_000_001))],
        "field too long: prompt": [json.dumps({**_pr(91), "prompt": "p" * (MAX_FIELD_CHARS + 1)})],
        "wrong type: prompt is int": [json.dumps({**_pr(92), "prompt": 5})],
        "wrong type: prompt is list": [json.dumps({**_pr(93), "prompt": ["a"]})],
        "wrong type: response is object": [json.dumps({**_pr(94), "response": {"t": "\\boxed{1}"}})],
        "wrong type: id is list": [json.dumps({**_pr(95), "id": [1]})],
        "wrong type: message is str": [json.dumps({"messages": ["hi", "there"]})],
        "wrong type: messages is str": [json.dumps({"messages": "hi"})],
        "missing or empty prompt": [json.dumps({"response": "\\boxed{1}"}), json.dumps({**_pr(96), "prompt": "  "}),
                                    json.dumps({**_pr(97), "prompt": None})],
        "missing or empty response": [json.dumps({"prompt": "q", "response": ""}),
                                      json.dumps({"problem": "q"})],
        "answer is a list": [json.dumps(_pr(98, answer=[1, 2]))],
        "answer is an object": [json.dumps(_pr(99, answer={"v": 1}))],
        "answer is a bool": [json.dumps(_pr(100, answer=True))],
        "answer is not a finite number": ['{"prompt": "q", "response": "\\\\boxed{1}", "answer": NaN}'],
        "GSM8K answer has no final number": [json.dumps({"question": "Q?", "answer": "work ####"})],
        "unknown record layout": [json.dumps({"instruction": "x", "output": "y"})],
        "record is not a JSON object": ["[1, 2]", '"just a string"', "42"],
        "multi-turn conversation": [json.dumps({"messages": [
            {"role": "user", "content": "a"}, {"role": "assistant", "content": "\\boxed{1}"},
            {"role": "user", "content": "b"}, {"role": "assistant", "content": "\\boxed{2}"}]})],
        "unknown message role": [json.dumps({"messages": [{"role": "tool", "content": "x"}]})],
        "non-text message content": [json.dumps({"messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": "\\boxed{1}"}]})],
        "response has no \\boxed{} final answer": [json.dumps({"prompt": "q", "response": "no box"}),
                                                   json.dumps({"prompt": "q", "response": "\\boxed{1"})],
        "duplicate id": [json.dumps(_pr(1, answer=3)), json.dumps(AM)],
    }
    blanks = ["", "   ", "\t", BOM]
    lines = list(good)
    for i, rows in enumerate(bad.values()):  # interleave good, bad and blank lines
        lines += rows + [blanks[i % len(blanks)]]
    _write(path, lines)
    return sum(len(v) for v in bad.values()) + len(good), len(good), {k: len(v) for k, v in bad.items()}


def test_every_kind_of_bad_row_costs_one_row(tmp_path, monkeypatch):
    path = tmp_path / "mixed.jsonl"
    rows, kept, reasons = _every_bad_kind(path, monkeypatch)
    counts = ingest_to(str(path), tmp_path / "out" / "s.parquet", tmp_path / "out" / "a.parquet")
    assert (counts.rows_in, counts.kept, counts.set_aside) == (rows, kept, rows - kept) and counts.balanced
    assert counts.reasons == reasons
    samples = pl.read_parquet(tmp_path / "out" / "s.parquet")
    aside = pl.read_parquet(tmp_path / "out" / "a.parquet")
    assert samples.schema == pl.Schema(SAMPLE_SCHEMA) and aside.schema == pl.Schema(SET_ASIDE_SCHEMA)
    assert samples.height == kept and aside.height == rows - kept
    assert dict(Counter(aside["reason"])) == reasons
    assert all(0 < len(d) <= DETAIL_CHARS for d in aside["detail"])  # truncated evidence, every row
    assert aside.filter(pl.col("reason") == "malformed JSON")["detail"].str.contains("trailing").any()
    assert set(aside.filter(pl.col("reason") == "invalid Unicode (lone surrogate)")["id"]) == {"s1", "s2"}
    by_id = {r["id"]: r for r in samples.to_dicts()}
    assert by_id["am-1"]["answer"] == "42" and by_id["am-1"]["answer_source"] == "reference_answer"
    assert [by_id[f"r{i}"]["answer"] for i in (1, 2, 3, 4, 5, 6)] == ["3", "3", "0.5", "4", "5", "6"]
    assert by_id["r4"]["answer_source"] == "response_boxed" and by_id["r1"]["answer_source"] == "field"
    assert by_id["oai"]["prompt"] == "What is 1+1?" and by_id["oai"]["answer"] == "2"
    assert by_id["sg"]["prompt"] == "Hi?" and by_id["sg"]["response"] == "\\boxed{hi}"
    assert set(samples["answer_source"]) == {"reference_answer", "field", "response_boxed", "gsm8k"}
    for col in ("id", "prompt", "response", "answer"):
        assert all(v and "\x00" not in v for v in samples[col])


def test_numeric_answers_are_canonical_and_answer_source_is_recorded():
    cases = [(3, "3"), (3.0, "3"), (0.5, "0.5"), (-2, "-2"), (1e20, "1e+20"), ("  7 ", "7")]
    for raw, want in cases:
        s, reason = to_sample(_pr(1, answer=raw), "x")
        assert reason is None and s["answer"] == want and s["answer_source"] == "field"
    for raw, reason in [([1], "answer is a list"), ({"a": 1}, "answer is an object"), (False, "answer is a bool"),
                        (float("inf"), "answer is not a finite number")]:
        assert to_sample(_pr(1, answer=raw), "x") == (None, reason)
    s, _ = to_sample(_pr(8), "x")
    assert s["answer"] == "8" and s["answer_source"] == "response_boxed"
    s, _ = to_sample(_pr(8, answer=""), "x")  # blank answer: the response's box, and the row says so
    assert s["answer"] == "8" and s["answer_source"] == "response_boxed"
    s, _ = to_sample({"question": "Q", "answer": "x\n#### 12"}, "x")
    assert s["answer"] == "12" and s["answer_source"] == "gsm8k"


def test_unknown_layout_names_its_keys_and_the_accepted_layouts(tmp_path):
    path = _write(tmp_path / "c.jsonl", [json.dumps({"instruction": "x", "output": "y", "input": ""})])
    samples, aside = ingest(str(path))
    assert samples.height == 0 and aside["reason"].to_list() == ["unknown record layout"]
    detail = aside["detail"][0]
    assert "instruction, output, input" in detail
    assert "messages" in detail and "conversations" in detail and "####" in detail and "problem" in detail


def test_chat_layouts_map():
    oai = {"messages": [{"role": "system", "content": "s"},
                        {"role": "user", "content": [{"type": "text", "text": "Q"}, {"type": "text", "text": "?"}]},
                        {"role": "assistant", "content": "<think>t</think> \\boxed{5}"}], "answer": 5}
    s, reason = to_sample(oai, "x")
    assert reason is None and (s["prompt"], s["answer"], s["answer_source"]) == ("Q?", "5", "field")
    sg = {"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "\\boxed{3}"}]}
    s, reason = to_sample(sg, "x")
    assert reason is None and (s["prompt"], s["response"], s["answer"]) == ("Q?", "\\boxed{3}", "3")
    assert s["answer_source"] == "response_boxed"
    sg["conversations"][0]["from"] = "bot"
    assert to_sample(sg, "x") == (None, "unknown message role")


def test_formats_render_to_canonical_samples():
    s, reason = to_sample(AM, "x")
    assert reason is None and s["answer"] == "42" and s["prompt"] == "What is 6*7?"
    s, _ = to_sample({"question": "Q?", "answer": "2+2=4\n#### 4"}, "gsm8k")
    assert s["answer"] == "4" and "\\boxed{4}" in s["response"] and "<think>" in s["response"]
    s, _ = to_sample({"problem": "P", "solution": "\\boxed{7}", "answer": "7"}, "math")
    assert s["answer"] == "7"
    s1, _ = to_sample({"prompt": "p", "response": "\\boxed{1}"}, "x")
    s2, _ = to_sample({"prompt": "p", "response": "\\boxed{1}"}, "x")
    assert s1["id"] == s2["id"]  # content-derived ids are stable


# ---------------------------------------------------------------- every source format, same samples
MIXED = [AM, _pr(1, answer=3), _pr(2), {"question": "Q?", "answer": "2+2=4\n#### 4"},
         {"problem": "P?", "solution": "\\boxed{7}"},
         {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "\\boxed{hi}"}]},
         {"foo": 1}, _pr(3, response="no box"), _pr(1, answer=3)]
FLAT = [_pr(1, answer="1"), _pr(2, answer=None), _pr(3, response="no box", answer="3"), _pr(4, answer="4"),
        _pr(1, answer="1")]


def _jsonl_bytes(recs) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in recs)


def _canon(samples, aside):
    return samples.drop("source").to_dicts(), aside["reason"].to_list()


def _make(kind: str, d, recs):
    """Write ``recs`` as source ``kind`` under folder ``d``; -> the source string."""
    d.mkdir(parents=True, exist_ok=True)
    data = _jsonl_bytes(recs)
    if kind == "jsonl":
        (d / "c.jsonl").write_bytes(data)
    elif kind == "ndjson":
        (d / "c.ndjson").write_bytes(data)
    elif kind == "json-array-pretty":
        (d / "c.json").write_text(json.dumps(recs, indent=2))
    elif kind == "json-array-compact":
        (d / "c.json").write_text(json.dumps(recs))
    elif kind == "json-concatenated":
        (d / "c.json").write_text("\n".join(json.dumps(r, indent=1) for r in recs))
    elif kind == "jsonl.gz":
        (d / "c.jsonl.gz").write_bytes(gzip.compress(data))
    elif kind == "JSONL.ZST":
        (d / "c.JSONL.ZST").write_bytes(zstandard.ZstdCompressor().compress(data))
    elif kind == "Json.GZ":
        (d / "c.Json.GZ").write_bytes(gzip.compress(json.dumps(recs, indent=2).encode()))
    elif kind == "jsonl.bz2":
        (d / "c.jsonl.bz2").write_bytes(bz2.compress(data))
    elif kind == "json.xz":
        (d / "c.json.xz").write_bytes(lzma.compress(json.dumps(recs).encode()))
    elif kind == "JSONL":
        (d / "C.JSONL").write_bytes(data)
    elif kind in ("folder", "glob"):  # split over files in nested folders; sorted order keeps the row order
        (d / "b").mkdir()
        (d / "a-1.jsonl").write_bytes(_jsonl_bytes(recs[:3]))
        (d / "b" / "c.json").write_text(json.dumps(recs[3:5]))
        (d / "b" / "d.jsonl.gz").write_bytes(gzip.compress(_jsonl_bytes(recs[5:])))
        (d / "b" / "notes.txt").write_text("not a corpus file")
        (d / ".hidden.jsonl").write_text("garbage\n")
        return str(d / "**" / "*.*") if kind == "glob" else str(d)
    elif kind == "parquet":
        pl.DataFrame(recs).write_parquet(d / "c.parquet", row_group_size=2)
    elif kind == "datasets":
        import datasets

        datasets.Dataset.from_list(recs).save_to_disk(str(d / "ds"))
        return str(d / "ds")
    elif kind == "datasets-dict":
        import datasets

        datasets.DatasetDict({"train": datasets.Dataset.from_list(recs)}).save_to_disk(str(d / "dsd"))
        return str(d / "dsd")
    return str(next(p for p in d.iterdir()))


@pytest.mark.parametrize("kind", ["ndjson", "json-array-pretty", "json-array-compact", "json-concatenated",
                                  "jsonl.gz", "JSONL.ZST", "Json.GZ", "jsonl.bz2", "json.xz", "JSONL", "folder",
                                  "glob"])
def test_every_text_format_gives_the_same_samples_as_jsonl(tmp_path, kind):
    want = _canon(*ingest(_make("jsonl", tmp_path / "ref", MIXED)))
    assert len(want[0]) == 6 and want[1] == ["unknown record layout", "response has no \\boxed{} final answer",
                                             "duplicate id"]
    assert _canon(*ingest(_make(kind, tmp_path / kind, MIXED))) == want


@pytest.mark.parametrize("kind", ["parquet", "datasets", "datasets-dict"])
def test_parquet_and_saved_datasets_give_the_same_samples_as_jsonl(tmp_path, kind):
    want = _canon(*ingest(_make("jsonl", tmp_path / "ref", FLAT)))
    assert len(want[0]) == 3 and want[1] == ["response has no \\boxed{} final answer", "duplicate id"]
    assert _canon(*ingest(_make(kind, tmp_path / kind, FLAT))) == want


def test_folder_rows_name_their_file(tmp_path):
    samples, _ = ingest(_make("folder", tmp_path / "corpus", MIXED))
    assert samples["source"].to_list()[:2] == ["corpus/a-1.jsonl", "corpus/a-1.jsonl"]
    assert samples["source"].to_list()[-1] == "corpus/b/d.jsonl.gz"


def test_json_array_with_a_broken_element_sets_the_rest_aside_as_one_row(tmp_path):
    good = [json.dumps(_pr(i)) for i in range(3)]
    (tmp_path / "c.json").write_text("[\n" + ",\n".join(good[:2]) + ',\n{"prompt": oops},\n' + good[2] + "\n]")
    samples, aside = ingest(str(tmp_path / "c.json"))
    assert samples.height == 2 and aside["reason"].to_list() == ["malformed JSON"]
    assert "rest of the file" in aside["detail"][0] and "oops" in aside["detail"][0]
    # a too-deep element is valid JSON: its end is found and the array goes on
    (tmp_path / "d.json").write_text("[" + good[0] + ", " + "[" * 3000 + "]" * 3000 + ", " + good[1] + "]")
    samples, aside = ingest(str(tmp_path / "d.json"))
    assert samples.height == 2 and aside["reason"].to_list() == ["nested too deep"]
    # objects one after another (JSON Lines named .json): one bad line costs one row
    (tmp_path / "e.json").write_bytes(BOM + "\n".join([good[0], '{"prompt": ', good[1], good[2]]).encode())
    samples, aside = ingest(str(tmp_path / "e.json"))
    assert samples.height == 3 and aside["reason"].to_list() == ["malformed JSON"]


def test_json_read_in_chunks_across_element_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_mod, "CHUNK", 7)  # every element and number straddles chunks
    recs = [_pr(i, answer=i * 1000003) for i in range(20)]
    (tmp_path / "c.json").write_text(json.dumps(recs, indent=2, ensure_ascii=False).replace("What", "Wh\u00e4t"))
    samples, aside = ingest(str(tmp_path / "c.json"))
    assert samples.height == 20 and aside.height == 0
    assert samples["answer"].to_list() == [str(i * 1000003) for i in range(20)]
    assert samples["prompt"][0] == "Wh\u00e4t is 0+0?"
    bad = json.dumps(recs[:2]).encode().replace(b"What", b"Wh\xe4t", 1)  # invalid UTF-8 in element 0 only
    (tmp_path / "d.json").write_bytes(bad)
    samples, aside = ingest(str(tmp_path / "d.json"))
    assert samples.height == 1 and aside["reason"].to_list() == ["not UTF-8"]


# ---------------------------------------------------------------- empty and missing sources
EMPTY = {
    "empty.jsonl": b"", "blank.jsonl": b"\n  \n\t\n", "bom.jsonl": BOM + b"\n", "empty.json": b"",
    "blank.json": b" \n ", "array.json": b"[]", "pretty-array.json": b"[\n]\n", "empty.jsonl.gz": gzip.compress(b""),
    "empty.json.zst": zstandard.ZstdCompressor().compress(b""), "zero-bytes.parquet": b"",
}


@pytest.mark.parametrize("name", [*EMPTY, "rows0.parquet", "folder", "folder-of-empty", "datasets"])
def test_empty_sources_give_zero_rows_the_same_way(tmp_path, name):
    src = tmp_path / name
    if name in EMPTY:
        src.write_bytes(EMPTY[name])
    elif name == "rows0.parquet":
        pl.DataFrame(schema={"prompt": pl.Utf8, "response": pl.Utf8}).write_parquet(src)
    elif name == "folder":
        src.mkdir()
    elif name == "folder-of-empty":
        src.mkdir()
        (src / "a.jsonl").write_bytes(b"")
        (src / "b.json").write_bytes(b"[]")
    else:
        import datasets

        datasets.Dataset.from_dict({"prompt": [], "response": []}).save_to_disk(str(src))
    counts = ingest_to(str(src), tmp_path / "o" / "s.parquet", tmp_path / "o" / "a.parquet")
    assert counts == IngestCounts(0, 0, 0, {})
    samples, aside = ingest(str(src))
    assert samples.height == 0 and aside.height == 0 and samples.columns == list(SAMPLE_SCHEMA)
    with pytest.raises(NoUsableRows, match="the source is empty"):
        ingest_to_stage(tmp_path, str(src))


def test_missing_and_unreadable_sources_are_refused_clearly(tmp_path):
    for missing in [tmp_path / "nope.jsonl", tmp_path / "nope.JSON.gz", tmp_path / "nope" / "x.csv"]:
        with pytest.raises(FileNotFoundError, match="not found"):
            ingest(str(missing))
    with pytest.raises(FileNotFoundError, match="matches no file"):
        ingest(str(tmp_path / "*.jsonl"))
    (tmp_path / "c.csv").write_text("prompt,response\n")
    with pytest.raises(SourceError, match="unsupported file type"):
        ingest(str(tmp_path / "c.csv"))
    (tmp_path / "u16.jsonl").write_bytes(json.dumps(_pr(1)).encode("utf-16"))
    with pytest.raises(SourceError, match="UTF-16"):
        ingest(str(tmp_path / "u16.jsonl"))
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(_jsonl_bytes([_pr(i) for i in range(50)]))[:-30])
    with pytest.raises(SourceError, match="corrupt or truncated"):
        ingest(str(tmp_path / "cut.jsonl.gz"))
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(SourceError, match="not a readable Parquet"):
        ingest(str(tmp_path / "bad.parquet"))
    assert not list(tmp_path.rglob(".*.tmp-*"))  # no temporary output left behind


# ---------------------------------------------------------------- the stage
def _ctx(tmp_path, limit=None):
    """What the ingest stage reads of a run context, with a real registry file."""
    from undercurve.registry import Registry

    reg = Registry(tmp_path / "registry.duckdb", create=True)

    def stage_dir(stage):
        d = tmp_path / "run" / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    settings = SimpleNamespace(corpus=SimpleNamespace(split="train", limit=limit),
                               answers=SimpleNamespace(box_openers=["\\boxed{"]))
    run_id = reg.start_run("curate", "t", {}, "h")
    return SimpleNamespace(settings=settings, run_id=run_id, registry=reg, stage_dir=stage_dir), reg


def ingest_to_stage(tmp_path, source, limit=None):
    """-> (stage result, the run's artifacts as (stage, kind, rows), its set-aside counts)."""
    from undercurve.stages import ingest_stage

    ctx, reg = _ctx(tmp_path, limit)
    res = ingest_stage(ctx, source)
    arts = reg.query("SELECT stage, kind, rows FROM artifacts WHERE run_id = ? ORDER BY rowid", [ctx.run_id])
    aside = reg.query("SELECT stage, reason, n FROM set_aside WHERE run_id = ?", [ctx.run_id])
    return res, arts.rows(), {(st, r): n for st, r, n in aside.rows()}


def test_stage_streams_to_files_and_records_like_finish(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_mod, "BATCH_ROWS", 2)  # several Parquet row groups
    path = _write(tmp_path / "c.jsonl", [json.dumps(r) for r in MIXED])
    res, arts, aside = ingest_to_stage(tmp_path, str(path))
    assert (res.rows_in, res.rows_out, res.set_aside) == (9, 6, 3)
    assert pl.read_parquet(res.path).height == 6
    assert arts == [("ingest", "samples", 6), ("ingest", "set_aside", 3)]
    assert aside == {("ingest", "unknown record layout"): 1, ("ingest", "response has no \\boxed{} final answer"): 1,
                     ("ingest", "duplicate id"): 1}
    assert res.extra["set_aside_reasons"]["duplicate id"] == 1
    res, arts, aside = ingest_to_stage(tmp_path, str(path), limit=3)
    assert (res.rows_in, res.rows_out, res.set_aside) == (3, 3, 0)
    assert not (tmp_path / "run" / "ingest" / "set_aside.parquet").exists()  # as _finish: none when none set aside
    assert arts == [("ingest", "samples", 3)] and aside == {}


def test_a_source_of_only_bad_rows_fails_with_the_reasons(tmp_path):
    path = _write(tmp_path / "bad.jsonl", ["{oops", "{oops", json.dumps({"foo": 1}), b"\xff"])
    assert ingest_to(str(path), tmp_path / "s.parquet", tmp_path / "a.parquet").kept == 0  # no error here
    with pytest.raises(NoUsableRows) as err:
        ingest_to_stage(tmp_path, str(path))
    msg = str(err.value)
    assert "bad.jsonl" in msg and "4 rows read, 0 kept" in msg
    assert "2 x 'malformed JSON'" in msg and "1 x 'unknown record layout'" in msg and "1 x 'not UTF-8'" in msg
    assert isinstance(err.value, ValueError)


def test_parquet_through_pyarrow(tmp_path):
    path = tmp_path / "c.parquet"
    pl.DataFrame({"prompt": ["a", "b"], "response": ["\\boxed{1}", "none"], "answer": ["1", "2"]}).write_parquet(path)
    samples, aside = ingest(str(path))
    assert samples.height == 1 and aside.height == 1


def test_parquet_wrong_column_types_are_set_aside(tmp_path):
    path = tmp_path / "c.parquet"
    pl.DataFrame({"prompt": [1, 2], "response": ["\\boxed{1}", "\\boxed{2}"]}).write_parquet(path)
    samples, aside = ingest(str(path))
    assert samples.height == 0 and aside["reason"].to_list() == ["wrong type: prompt is int"] * 2
    assert aside["detail"][0].startswith("c.parquet:row 1: ")


def test_limit(tmp_path):
    path = _write(tmp_path / "c.jsonl", [json.dumps({**AM, "id": f"a{i}"}) for i in range(5)])
    samples, aside = ingest(str(path), limit=3)
    assert samples.height == 3 and aside.height == 0


def test_ingest_reports_progress_while_streaming(tmp_path, monkeypatch):
    """A stream's length is known at its end: counts while reading (total 0), then done/done."""
    import json

    import undercurve.ingest as ing

    src = tmp_path / "c.jsonl"
    src.write_text("\n".join(json.dumps({"id": f"r{i}", "prompt": "q", "response": "a \\boxed{1}", "answer": "1"})
                             for i in range(10)) + "\nnot json\n")
    monkeypatch.setattr(ing, "PROGRESS_ROWS", 3)
    calls = []
    counts = ing.ingest_to(str(src), tmp_path / "s.parquet", tmp_path / "a.parquet", progress=lambda d, t: calls.append((d, t)))
    assert counts.rows_in == 11 and calls == [(3, 0), (6, 0), (9, 0), (11, 11)]
