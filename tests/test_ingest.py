import json

import polars as pl

from undercurve.ingest import ingest, to_sample


def _write(path, lines):
    with open(path, "wb") as fh:
        for line in lines:
            fh.write((line if isinstance(line, bytes) else line.encode()) + b"\n")
    return path


AM = {"id": "am-1", "messages": [
    {"role": "user", "content": "What is 6*7?", "info": {"reference_answer": "42"}},
    {"role": "assistant", "content": "<think>6*7=42</think>\n\\boxed{42}"}]}


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
        json.dumps({"foo": 1}),                                            # unknown format
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
                     "record is not a JSON object", "unknown record format"]:
        assert expected in reasons
    assert reasons.count("response has no \\boxed{} final answer") == 2
    assert set(aside["stage"]) == {"ingest"}
    assert all(d for d in aside["detail"].to_list())  # every set-aside row carries evidence


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


def test_parquet_through_datasets(tmp_path):
    path = tmp_path / "c.parquet"
    pl.DataFrame({"prompt": ["a", "b"], "response": ["\\boxed{1}", "none"], "answer": ["1", "2"]}).write_parquet(path)
    samples, aside = ingest(str(path))
    assert samples.height == 1 and aside.height == 1


def test_limit(tmp_path):
    path = _write(tmp_path / "c.jsonl", [json.dumps({**AM, "id": f"a{i}"}) for i in range(5)])
    samples, aside = ingest(str(path), limit=3)
    assert samples.height == 3 and aside.height == 0
