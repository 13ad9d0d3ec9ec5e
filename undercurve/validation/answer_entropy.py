"""Answer entropy and correctness entropy over N samples per question (EAS paper section 3).

H_answer = -sum_k p_k log2 p_k over the distinct normalised answers of one question;
H_correct = binary entropy (bits) of the pass fraction. Both 0 when every sample agrees.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import polars as pl

from undercurve.answers import extract_answer, is_equivalent, last_number, normalize_answer

MISSING = "<no answer>"
_LETTER = re.compile(r"^\(?\s*([A-Da-d])\s*[\).:]?(?:\s|$)")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*\(?\s*([A-D])\b", re.IGNORECASE)
_LONE_LETTER = re.compile(r"(?<![A-Za-z])([A-D])(?![A-Za-z])")
OPTION_LETTERS = ("A", "B", "C", "D")


def mc_letter(ans: str | None) -> str | None:
    """'B', '(b)', 'B) 42', '\\text{C}' -> the option letter; anything else -> None."""
    if ans is None:
        return None
    s = normalize_answer(ans) or ""
    s = s.replace("\\text{", "").replace("}", "").strip()
    m = _LETTER.match(s + " ")
    return m.group(1).upper() if m else None


def extract(text: str, kind: str = "free", last_number_fallback: bool = True) -> str | None:
    """The raw final answer of a response: last \\boxed{} / '####'; MC also 'the answer is X'.
    With ``last_number_fallback`` a free answer falls back to the last number in the text and
    a multiple-choice one to the last stand-alone letter A-D."""
    ans = extract_answer(text or "")
    if kind == "mc":
        letter = mc_letter(ans)
        if letter is None:
            found = _ANSWER_IS.findall(text or "")
            letter = found[-1].upper() if found else None
        if letter is None and last_number_fallback:  # lenient: the last stand-alone A-D
            lone = _LONE_LETTER.findall(text or "")
            letter = lone[-1] if lone else None
        return letter
    if ans is None and last_number_fallback:
        ans = last_number(text)
    return ans


def canonical(ans: str | None, kind: str = "free") -> str | None:
    """The key answers are grouped by for the entropy: normalised string (MC: the letter)."""
    if ans is None:
        return None
    if kind == "mc":
        return mc_letter(ans)
    s = normalize_answer(ans)
    return s or None


def is_correct(ans: str | None, gold: str | None, kind: str = "free") -> bool:
    if ans is None or gold is None:
        return False
    if kind == "mc":
        return mc_letter(ans) == mc_letter(gold)
    return is_equivalent(ans, gold)


def answer_entropy(answers, missing: str = "category") -> float:
    """Entropy (bits) of the empirical distribution of canonical answers.

    ``None`` entries are samples without an answer: ``missing="category"`` counts them as one
    more answer ("no answer"), ``"drop"`` leaves them out. No answer at all -> 0.
    """
    if missing not in ("category", "drop"):
        raise ValueError(f"missing must be 'category' or 'drop', not {missing!r}")
    keys = [a if a is not None else MISSING for a in answers if a is not None or missing == "category"]
    if not keys:
        return 0.0
    n = len(keys)
    return float(-sum(c / n * math.log2(c / n) for c in Counter(keys).values()) + 0.0)


def binary_entropy(p: float) -> float:
    """H(p) in bits; 0 at p = 0 or 1, 1 at p = 0.5."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if p in (0.0, 1.0):
        return 0.0
    return float(-(p * math.log2(p) + (1 - p) * math.log2(1 - p)))


def correctness_entropy(correct) -> float:
    """Binary entropy (bits) of the pass fraction of a question's samples."""
    c = [bool(x) for x in correct]
    return binary_entropy(sum(c) / len(c)) if c else 0.0


def question_stats(samples: pl.DataFrame, missing: str = "category") -> pl.DataFrame:
    """Per question: n, answered, distinct answers, answer entropy, pass rate, correctness
    entropy, majority answer. ``samples``: id, rollout, answer (canonical, null = none), correct."""
    rows = []
    for (qid,), g in samples.sort("rollout").group_by("id", maintain_order=True):
        answers = g["answer"].to_list()
        correct = g["correct"].fill_null(False).to_list()
        given = [a for a in answers if a is not None]
        counts = Counter(given)
        rows.append({
            "id": qid, "n": len(answers), "answered": len(given), "distinct": len(counts),
            "answer_entropy": answer_entropy(answers, missing),
            "pass_rate": sum(correct) / len(correct) if correct else 0.0,
            "correctness_entropy": correctness_entropy(correct),
            "majority": max(counts, key=lambda a: (counts[a], -given.index(a))) if counts else None,
        })
    return pl.DataFrame(rows, schema={"id": pl.Utf8, "n": pl.Int64, "answered": pl.Int64, "distinct": pl.Int64,
                                      "answer_entropy": pl.Float64, "pass_rate": pl.Float64,
                                      "correctness_entropy": pl.Float64, "majority": pl.Utf8})
