"""Offline demo inputs: a graded arithmetic corpus and a held-out benchmark of the same kind.

Five levels, from one-digit sums to two-step word problems, so a small real model
(SmolLM2-135M-Instruct) solves some problems always, some sometimes and some never: pass
rates strictly between 0 and 1 exist, and entropy has something to tell. Each response is a
worked, step-by-step solution in the AM-DeepSeek-R1-0528-Distilled chat format
(``<think>`` + ``\\boxed{}``); every sixth row is in GSM8K format instead. Two benchmark
problems are planted verbatim (the contamination filter must catch them) and a few broken
lines are appended (ingestion must set them aside), so the demo exercises every path a real
corpus takes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Iterator

from undercurve.io import write_text_atomic

BROKEN_LINES = [
    '{"messages": [{"role": "user", "content": "truncated record',  # malformed JSON
    json.dumps({"messages": [{"role": "user", "content": "What is 2+2?"},
                             {"role": "assistant", "content": "<think>2+2=4</think> It is four."}]}),
    json.dumps({"id": "empty-1", "prompt": "", "response": "\\boxed{1}", "answer": "1"}),
]
INSTRUCTION = "Put the final answer in \\boxed{}."
NAMES = ["Tom", "Ana", "Li", "Sara", "Omar", "Mia", "Ravi", "Eva"]
ITEMS = ["apples", "stamps", "marbles", "books", "coins", "shells"]


def _add_steps(a: int, b: int) -> list[str]:
    """Column addition, one line per column, with carries."""
    steps, carry, place = [], 0, 0
    names = ["ones", "tens", "hundreds", "thousands"]
    while a or b or carry:
        da, db = a % 10, b % 10
        s = da + db + carry
        with_carry = f" + {carry}" if carry else ""
        carry_note = f", write {s % 10} and carry {s // 10}" if s >= 10 else ""
        steps.append(f"Add the {names[place]}: {da} + {db}{with_carry} = {s}{carry_note}.")
        a, b, carry, place = a // 10, b // 10, s // 10, place + 1
    return steps


def _sub_steps(a: int, b: int) -> list[str]:
    tens = b // 10 * 10
    return [f"Subtract the tens first: {a} - {tens} = {a - tens}.", f"Then the ones: {a - tens} - {b % 10} = {a - b}."]


def _mul_steps(a: int, b: int) -> list[str]:
    if b < 10:
        return [f"{a} x {b} is {b} groups of {a}.", f"{a} x {b} = {a * b}."]
    return [f"Split {b} into {b // 10 * 10} + {b % 10}.", f"{a} x {b // 10 * 10} = {a * (b // 10 * 10)}.",
            f"{a} x {b % 10} = {a * (b % 10)}.", f"{a * (b // 10 * 10)} + {a * (b % 10)} = {a * b}."]


def problem(level: int, rng: random.Random) -> tuple[str, list[str], int]:
    """(question, solution steps, answer) of difficulty ``level`` 0 (easiest) .. 4."""
    r = rng.randint
    if level == 0:
        a, b = r(1, 9), r(1, 9)
        return f"What is {a} + {b}?", [f"{a} + {b} = {a + b}."], a + b
    if level == 1:
        a, b = r(10, 49), r(10, 49)
        return f"What is {a} + {b}?", [*_add_steps(a, b), f"So {a} + {b} = {a + b}."], a + b
    if level == 2:
        a, b = r(30, 99), r(11, 29)
        return f"What is {a} - {b}?", [*_sub_steps(a, b), f"So {a} - {b} = {a - b}."], a - b
    if level == 3:
        a, b = r(3, 12), r(3, 15)
        return f"What is {a} x {b}?", [*_mul_steps(a, b), f"So {a} x {b} = {a * b}."], a * b
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = r(12, 60), r(5, 30)
    c = r(2, a + b - 1)
    # short text between the numbers: no 13-gram of one problem is free of numbers, so two
    # different problems never look like a leak to the n-gram filter
    question = f"{name} has {a} {item}, gets {b} more and gives away {c}. How many {item} are left?"
    steps = [f"{name} starts with {a} {item}.", f"After getting {b} more: {a} + {b} = {a + b}.",
             f"After giving away {c}: {a + b} - {c} = {a + b - c}."]
    return question, steps, a + b - c


def _item(level: int, rng: random.Random) -> dict:
    question, steps, answer = problem(level, rng)
    return {"question": question, "steps": steps, "answer": str(answer), "level": level}


def _am_record(rid: str, p: dict) -> dict:
    reasoning = "\n".join(p["steps"])
    content = (f"<think>\n{reasoning}\n</think>\n\n{p['steps'][-1]}\n\n"
               f"The final answer is $\\boxed{{{p['answer']}}}$.")
    info = {"source": "demo", "reference_answer": p["answer"], "level": p["level"]}
    return {"id": rid, "messages": [{"role": "user", "content": f"{p['question']} {INSTRUCTION}", "info": info},
                                    {"role": "assistant", "content": content, "info": info}]}


def _gsm8k_record(rid: str, p: dict, instruction: bool = True) -> dict:
    cot = "\n".join(p["steps"]) + f"\n#### {p['answer']}"
    return {"id": rid, "question": f"{p['question']} {INSTRUCTION}" if instruction else p["question"], "answer": cot}


MAX_MISSES = 500  # draws of one level before its questions count as used up (one-digit sums: 81)


def write_demo_inputs(out_dir: str | Path, size: int = 48, seed: int = 0, bench_size: int = 24) -> tuple[Path, Path]:
    """Write ``corpus.jsonl`` and ``benchmark_gsm8k.jsonl`` (idempotent); return their paths.

    Levels cycle, so every difficulty is in both files; benchmark problems are drawn from
    their own seed and any that also occur in the corpus are dropped, except the two leaks
    planted on purpose."""
    out = Path(out_dir)
    corpus, bench = out / "corpus.jsonl", out / "benchmark_gsm8k.jsonl"
    if corpus.exists() and bench.exists():
        return corpus, bench
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    train = [_item(i % 5, rng) for i in range(size)]
    seen = {p["question"] for p in train}
    brng = random.Random(seed + 1000)
    held_out: list[dict] = []
    level, misses, skipped = 0, 0, 0
    while len(held_out) < bench_size:
        p = _item(level % 5, brng)
        if p["question"] not in seen:
            seen.add(p["question"])
            held_out.append(p)
            level, misses, skipped = level + 1, 0, 0
            continue
        misses += 1
        if misses >= MAX_MISSES:  # a large corpus holds every question of this level: the next level
            level, misses, skipped = level + 1, 0, skipped + 1
            if skipped >= 5:
                raise ValueError(f"corpus.demo_size {size}: no held-out problem left that the corpus lacks")
    # the benchmark's own prompt template asks for the box: its questions are bare
    bench_lines = [json.dumps(_gsm8k_record(f"bench-{i}", p, instruction=False) | {"level": p["level"]})
                   for i, p in enumerate(held_out)]
    lines = [json.dumps(_gsm8k_record(f"demo-{i}", p) if i % 6 == 5 else _am_record(f"demo-{i}", p))
             for i, p in enumerate(train)]
    # planted contamination: the two word problems of the benchmark (long enough for 13-grams)
    leaks = [p for p in held_out if p["level"] == 4][:2]
    lines += [json.dumps(_am_record(f"leak-{j}", p)) for j, p in enumerate(leaks)]
    lines += BROKEN_LINES
    lines.append(lines[0])  # duplicate id
    # atomic: concurrent runs may prepare the same demo inputs
    write_text_atomic("\n".join(bench_lines) + "\n", bench)
    write_text_atomic("\n".join(lines) + "\n", corpus)
    return corpus, bench


def tokenizer_texts(corpus_path: str | Path) -> Iterator[str]:
    """Texts to train the tiny model's tokenizer on (every string in the corpus), read lazily:
    only a model that is not built yet reads them."""
    with open(corpus_path, encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(rec, dict):
                continue
            texts = [m.get("content", "") for m in rec.get("messages", [])]
            texts += [str(rec.get(k, "")) for k in ("question", "answer", "prompt", "response")]
            yield from (t for t in texts if t)
