"""Offline demo inputs: a GSM8K-style corpus from reasoning-gym and a held-out benchmark.

The corpus is written in the AM-DeepSeek-R1-0528-Distilled chat format (think + \\boxed{}),
with a few GSM8K-format rows, two benchmark problems planted verbatim (the contamination
filter must catch them) and a few broken lines (ingestion must set them aside), so the
demo run exercises every path a real corpus takes.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

from undercurve.io import write_text_atomic

BROKEN_LINES = [
    '{"messages": [{"role": "user", "content": "truncated record',  # malformed JSON
    json.dumps({"messages": [{"role": "user", "content": "What is 2+2?"},
                             {"role": "assistant", "content": "<think>2+2=4</think> It is four."}]}),
    json.dumps({"id": "empty-1", "prompt": "", "response": "\\boxed{1}", "answer": "1"}),
]


def _template(problem: dict) -> int:
    # gsm_symbolic does not name its templates; the set of variable names identifies one
    names = ",".join(sorted(problem["metadata"]["variables"]))
    return zlib.crc32(names.encode())


def _problems(size: int, seed: int, benchmark: bool) -> list[dict]:
    """Problems whose template is (or is not) reserved for the benchmark, so corpus and
    benchmark share no template text except where a leak is planted on purpose."""
    import reasoning_gym

    pool = reasoning_gym.create_dataset("gsm_symbolic", size=size * 8, seed=seed)
    return [p for p in pool if (_template(p) % 4 == 0) == benchmark][:size]


def _am_record(rid: str, question: str, cot: str, answer: str) -> dict:
    reasoning = cot.rsplit("####", 1)[0].strip()
    content = (
        f"<think>\n{reasoning}\n</think>\n\n"
        f"{reasoning.splitlines()[-1] if reasoning else ''}\n\nThe final answer is $\\boxed{{{answer}}}$."
    )
    return {
        "id": rid,
        "messages": [
            {"role": "user", "content": question, "info": {"source": "demo", "reference_answer": answer}},
            {"role": "assistant", "content": content, "info": {"source": "demo", "reference_answer": answer}},
        ],
    }


def write_demo_inputs(out_dir: str | Path, size: int = 48, seed: int = 0) -> tuple[Path, Path]:
    """Write ``corpus.jsonl`` and ``benchmark_gsm8k.jsonl`` (idempotent); return their paths."""
    out = Path(out_dir)
    corpus, bench = out / "corpus.jsonl", out / "benchmark_gsm8k.jsonl"
    if corpus.exists() and bench.exists():
        return corpus, bench
    out.mkdir(parents=True, exist_ok=True)
    held_out = _problems(8, seed + 1000, benchmark=True)
    bench_lines = [json.dumps({"id": f"bench-{i}", "question": p["question"], "answer": p["metadata"]["answer_cot"]})
                   for i, p in enumerate(held_out)]
    lines = []
    for i, p in enumerate(_problems(size, seed, benchmark=False)):
        cot, ans = p["metadata"]["answer_cot"], str(p["answer"])
        if i % 6 == 5:  # GSM8K-format rows
            lines.append(json.dumps({"id": f"demo-{i}", "question": p["question"], "answer": cot}))
        else:
            lines.append(json.dumps(_am_record(f"demo-{i}", p["question"], cot, ans)))
    for j, p in enumerate(held_out[:2]):  # planted contamination
        lines.append(json.dumps(_am_record(f"leak-{j}", p["question"], p["metadata"]["answer_cot"], str(p["answer"]))))
    lines += BROKEN_LINES
    lines.append(lines[0])  # duplicate id
    # atomic: concurrent runs may prepare the same demo inputs
    write_text_atomic("\n".join(bench_lines) + "\n", bench)
    write_text_atomic("\n".join(lines) + "\n", corpus)
    return corpus, bench


def tokenizer_texts(corpus_path: str | Path) -> list[str]:
    """Texts to train the demo tokenizer on (every string in the corpus)."""
    texts = []
    for line in Path(corpus_path).read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        for m in rec.get("messages", []):
            texts.append(m.get("content", ""))
        texts += [str(rec.get(k, "")) for k in ("question", "answer", "prompt", "response")]
    return [t for t in texts if t]
